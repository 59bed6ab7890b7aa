"""Hands the project draws itself: for tests, for the simulator when no real photos exist, and for augmentation.

A *person* (``person_seed``) fixes the hand's shape (palm size, finger lengths
and widths) and its palm texture (principal lines, creases, mottling); a
*sample* (``sample_seed``) varies what changes between presentations: pose
(rotation, shift, scale, finger spread), lighting, noise and slight blur. The
default look is the unit's: a bright palm lit by the IR LEDs over a dark
background, the forearm leaving the frame.

The hand is drawn once in a canonical canvas (palm width ``PALM`` pixels, palm
centre at ``CENTER``) and warped into the frame, so a person's texture sits in
the same place of the palm in every sample.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

PALM = 200  # palm width in canvas pixels
CANVAS = (900, 600)  # canvas (height, width)
CENTER = np.array([300.0, 400.0])  # palm centre in the canvas (x, y)
FINGER_ORDER = ("index", "middle", "ring", "little")


@dataclass(frozen=True)
class Person:
    """What stays the same between presentations of one hand (in palm widths)."""

    palm_height: float
    finger_lengths: dict[str, float]
    finger_widths: dict[str, float]
    finger_angles: dict[str, float]  # degrees from the palm axis when spread
    thumb_angle: float
    skin: float  # grey level of the lit palm


def person(person_seed: int) -> Person:
    rng = np.random.default_rng([int(person_seed), 7919])
    jitter = lambda spread: float(rng.uniform(1 - spread, 1 + spread))  # noqa: E731
    lengths = {"thumb": 0.72 * jitter(0.08), "index": 0.86 * jitter(0.08), "middle": 0.97 * jitter(0.07),
               "ring": 0.90 * jitter(0.08), "little": 0.70 * jitter(0.09)}
    widths = {"thumb": 0.27 * jitter(0.08), "index": 0.23 * jitter(0.07), "middle": 0.235 * jitter(0.07),
              "ring": 0.22 * jitter(0.07), "little": 0.19 * jitter(0.08)}
    angles = {"index": -14 + rng.normal(0, 2), "middle": -3 + rng.normal(0, 2), "ring": 8 + rng.normal(0, 2),
              "little": 20 + rng.normal(0, 2.5)}
    return Person(
        palm_height=1.05 * jitter(0.06), finger_lengths=lengths, finger_widths=widths,
        finger_angles={k: float(v) for k, v in angles.items()}, thumb_angle=float(-48 + rng.normal(0, 4)),
        skin=float(rng.uniform(165, 200)),
    )


# --- shapes -------------------------------------------------------------------
def _capsule(base: np.ndarray, angle_deg: float, length: float, width: float) -> np.ndarray:
    """A finger: a rectangle with a round tip, pointing ``angle_deg`` from straight up (canvas pixels)."""
    a = np.deg2rad(angle_deg)
    along = np.array([np.sin(a), -np.cos(a)])
    across = np.array([along[1], -along[0]])
    r = width / 2
    tip_center = base + along * (length - r)
    arc = [tip_center + r * (np.cos(t) * across + np.sin(t) * along) for t in np.linspace(0, np.pi, 16)]
    start = base - along * r * 0.5  # reach into the palm so the finger joins it without a seam
    return np.array([start + across * r] + arc + [start - across * r], dtype=np.float64)


def _palm_polygon(p: Person) -> np.ndarray:
    """A rounded-square palm (superellipse) with the forearm running to the canvas bottom."""
    half_w, half_h = PALM / 2, p.palm_height * PALM / 2
    t = np.linspace(0, 2 * np.pi, 90, endpoint=False)
    c, s = np.cos(t), np.sin(t)
    xs = half_w * np.sign(c) * np.abs(c) ** 0.5
    ys = half_h * np.sign(s) * np.abs(s) ** 0.5
    return np.stack([xs, ys], axis=1) + CENTER


def _finger_layout(p: Person, spread: float, curl: bool) -> dict[str, tuple[np.ndarray, float, float, float]]:
    """Each finger's (base point, angle from straight up, length, width) in canvas pixels."""
    half_h = p.palm_height * PALM / 2
    offsets = {"index": -0.375, "middle": -0.125, "ring": 0.125, "little": 0.375}
    drop = {"index": 0.03, "middle": 0.0, "ring": 0.01, "little": 0.08}  # finger bases sit on an arch
    layout = {}
    for name in FINGER_ORDER:
        width = p.finger_widths[name] * PALM
        length = p.finger_lengths[name] * PALM * (0.32 if curl else 1.0)
        base = CENTER + np.array([offsets[name] * PALM * 0.96, -half_h + (0.06 + drop[name]) * PALM])
        angle = p.finger_angles[name] * spread
        if spread < 0.3:  # held together: the fingers lean onto each other and touch
            angle = {"index": 1.5, "middle": 0.0, "ring": -1.5, "little": -3.0}[name]
        layout[name] = (base, angle, length, width)
    thumb_base = CENTER + np.array([-0.42 * PALM, 0.18 * half_h])
    if curl:
        layout["thumb"] = (thumb_base, 20.0, p.finger_lengths["thumb"] * PALM * 0.8, p.finger_widths["thumb"] * PALM)
    else:
        angle = -18 + (p.thumb_angle + 18) * min(spread, 1.3)
        layout["thumb"] = (thumb_base, angle, p.finger_lengths["thumb"] * PALM, p.finger_widths["thumb"] * PALM)
    return layout


def _hand_polygons(p: Person, spread: float, curl: bool) -> list[np.ndarray]:
    half_h = p.palm_height * PALM / 2
    polys = [_palm_polygon(p)]
    forearm_w = 0.78 * PALM
    top = CENTER[1] + half_h * 0.5
    bottom = CANVAS[0] + 10  # the forearm runs off the canvas
    polys.append(np.array([[CENTER[0] - forearm_w / 2, top], [CENTER[0] + forearm_w / 2, top],
                           [CENTER[0] + forearm_w / 2 * 1.1, bottom], [CENTER[0] - forearm_w / 2 * 1.1, bottom]]))
    for base, angle, length, width in _finger_layout(p, spread, curl).values():
        polys.append(_capsule(base, angle, length, width))
    return polys


def _pegs(p: Person, spread: float) -> list[tuple[np.ndarray, float]]:
    """Guide pegs of a peg-based reader (as in the COEP photos): a small disc wedged between each pair of
    neighbouring fingers a third of the way up, closing the gap below it. (centre, radius) in canvas pixels."""
    layout = _finger_layout(p, spread, False)
    pegs = []
    for left, right in zip(FINGER_ORDER, FINGER_ORDER[1:]):
        points = []
        for name in (left, right):
            base, angle, length, width = layout[name]
            a = np.deg2rad(angle)
            points.append(base + np.array([np.sin(a), -np.cos(a)]) * 0.35 * length)
        gap = np.linalg.norm(points[1] - points[0]) - (layout[left][3] + layout[right][3]) / 2
        pegs.append(((points[0] + points[1]) / 2, max(0.05 * PALM, gap / 2 + 3.0)))
    return pegs


@lru_cache(maxsize=16)
def _texture(person_seed: int) -> np.ndarray:
    """The person's skin texture over the canvas (int8 grey-level offsets, 0 = no change): lines,
    creases, mottling. Kept small (half a megabyte per person) since a few are cached."""
    rng = np.random.default_rng([int(person_seed), 104729])
    p = person(person_seed)
    h, w = CANVAS
    tex = np.zeros((h, w), np.float32)
    half_h = p.palm_height * PALM / 2

    def curve(points, darkness, thickness):
        pts = np.array(points, dtype=np.float64)
        t = np.linspace(0, 1, 40)[:, None]
        bezier = (1 - t) ** 2 * pts[0] + 2 * (1 - t) * t * pts[1] + t ** 2 * pts[2]
        cv2.polylines(tex, [np.round(bezier * 4).astype(np.int32)], False, -darkness, thickness, cv2.LINE_AA, shift=2)

    j = lambda: rng.normal(0, 0.07 * PALM, size=2)  # noqa: E731
    c = CENTER
    # Heart, head and life lines: where they run is what differs most between people.
    curve([c + (0.5 * PALM, -0.45 * half_h) + j(), c + (0.1 * PALM, -0.55 * half_h) + j(), c + (-0.25 * PALM, -0.8 * half_h) + j()],
          rng.uniform(35, 55), int(rng.integers(3, 6)))
    curve([c + (-0.5 * PALM, -0.25 * half_h) + j(), c + (-0.05 * PALM, -0.15 * half_h) + j(), c + (0.35 * PALM, 0.1 * half_h) + j()],
          rng.uniform(35, 55), int(rng.integers(3, 6)))
    curve([c + (-0.42 * PALM, -0.3 * half_h) + j(), c + (-0.2 * PALM, 0.2 * half_h) + j(), c + (-0.15 * PALM, 0.95 * half_h) + j()],
          rng.uniform(35, 55), int(rng.integers(3, 6)))
    for _ in range(int(rng.integers(25, 40))):  # minor creases
        start = c + rng.uniform(-0.5, 0.5, 2) * (PALM, 2 * half_h)
        direction = rng.normal(0, 1, 2)
        direction *= rng.uniform(0.08, 0.25) * PALM / (np.linalg.norm(direction) + 1e-9)
        bend = rng.normal(0, 0.04 * PALM, 2)
        curve([start, start + direction / 2 + bend, start + direction], rng.uniform(12, 28), int(rng.integers(1, 3)))
    for name, offset in zip(FINGER_ORDER, (-0.375, -0.125, 0.125, 0.375)):  # finger joint creases
        for k in (0.35, 0.65):
            y = c[1] - half_h - k * p.finger_lengths[name] * PALM * 0.9
            x = c[0] + offset * PALM
            curve([(x - 25, y), (x, y + rng.normal(0, 3)), (x + 25, y)], 25, 2)
    mottle = cv2.resize(rng.normal(0, 1, (12, 8)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    tex += 9.0 * mottle
    tex += cv2.GaussianBlur(rng.normal(0, 6, (h, w)).astype(np.float32), (0, 0), 1.2)
    return np.clip(np.round(tex), -128, 127).astype(np.int8)


# --- drawing ------------------------------------------------------------------
def _canvas(person_seed: int, spread: float, curl: bool, pegs: bool = False,
            sleeve: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The hand on its canonical canvas: (grey float32, mask float32 0..1)."""
    p = person(person_seed)
    mask = np.zeros(CANVAS, np.uint8)
    for poly in _hand_polygons(p, spread, curl):
        cv2.fillPoly(mask, [np.round(poly * 4).astype(np.int32)], 255, cv2.LINE_AA, shift=2)
    alpha = mask.astype(np.float32) / 255.0
    grey = (p.skin + _texture(person_seed).astype(np.float32)) * alpha
    if sleeve:  # a dark sleeve over the forearm, from a little below the palm to the canvas edge
        top = int(CENTER[1] + 0.75 * p.palm_height * PALM)
        grey[top:] = np.where(alpha[top:] > 0, 0.15 * p.skin * alpha[top:], grey[top:])
    if pegs and not curl:
        peg_mask = np.zeros(CANVAS, np.uint8)
        for center, radius in _pegs(p, spread):
            cv2.circle(peg_mask, tuple(int(v) for v in np.round(center * 4)), int(round(radius * 4)), 255, -1,
                       cv2.LINE_AA, shift=2)
        peg_alpha = peg_mask.astype(np.float32) / 255.0
        grey = grey * (1 - peg_alpha) + 0.9 * p.skin * peg_alpha
        alpha = np.maximum(alpha, peg_alpha)
    return grey, alpha


def draw_hand(person_seed: int, sample_seed: int, size: tuple[int, int] = (480, 640), *,
              rotation: float | None = None, shift: tuple[float, float] | None = None, scale: float | None = None,
              spread: float | None = None, curl: bool = False, background: str = "dark",
              noise: float | None = None, blur: float | None = None, motion_blur: float = 0.0,
              gain: float | None = None, pegs: bool = False, sleeve: bool = False,
              light_falloff: float | None = None) -> np.ndarray:
    """One presentation of one person's hand as a greyscale uint8 frame of ``size`` (height, width).

    Any variation left as None is drawn from ``sample_seed``: rotation (degrees),
    shift (fractions of the frame), scale (1 = palm about 30% of the frame height),
    spread (1 = fingers apart, 0 = together), noise (grey levels), blur (pixels),
    gain (lighting). ``curl`` draws a fist, ``motion_blur`` smears the frame sideways by that many pixels,
    ``pegs`` wedges guide pegs between the fingers (they close the finger gaps, as in the COEP photos),
    ``sleeve`` covers the forearm with a dark sleeve, ``light_falloff`` dims the light towards the top of
    the frame (1.5: the top of the frame gets a seventh of the light the bottom gets).
    """
    if background not in ("dark", "light"):
        raise ValueError(f"background must be 'dark' or 'light', got {background!r}")
    rng = np.random.default_rng([int(person_seed), int(sample_seed), 31337])
    rotation = float(rng.normal(0, 8)) if rotation is None else float(rotation)
    shift = tuple(rng.uniform(-0.05, 0.05, 2)) if shift is None else shift
    scale = float(rng.uniform(0.93, 1.07)) if scale is None else float(scale)
    spread = float(rng.uniform(0.8, 1.15)) if spread is None else float(spread)
    noise = float(rng.uniform(1.5, 4.0)) if noise is None else float(noise)
    blur = float(rng.uniform(0.0, 0.7)) if blur is None else float(blur)
    gain = float(rng.uniform(0.85, 1.12)) if gain is None else float(gain)
    height, width = size
    grey, alpha = _canvas(person_seed, spread, curl, pegs, sleeve)
    matrix = canvas_to_frame(size, rotation, shift, scale)
    frame = cv2.warpAffine(grey, matrix, (width, height), flags=cv2.INTER_LINEAR)
    cover = cv2.warpAffine(alpha, matrix, (width, height), flags=cv2.INTER_LINEAR)
    # Lighting: the IR LEDs light the palm unevenly; the background is far away (dark) or a lit wall.
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    direction = rng.normal(0, 1, 2)
    if light_falloff is None:
        light_falloff = 0.12
    else:  # the light dims towards the fingertips, as with LEDs under the palm
        direction = np.array([0.0, 1.0])
    ramp = 1.0 + light_falloff * ((xs / width - 0.5) * direction[0] + (ys / height - 0.5) * direction[1])
    hand = frame * gain * ramp
    back_level = float(rng.uniform(15, 40)) if background == "dark" else float(rng.uniform(215, 240))
    image = hand + back_level * (1.0 - cover)
    if background == "light":  # a darker hand against a lit wall, as in the webcam photos
        image = (hand * 0.55) + back_level * (1.0 - cover)
    if blur > 0.05:
        image = cv2.GaussianBlur(image, (0, 0), blur)
    if motion_blur >= 1.0:
        length = int(round(motion_blur))
        kernel = np.full((1, length), 1.0 / length, np.float32)
        image = cv2.filter2D(image, -1, kernel)
    image = image + rng.normal(0, noise, image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def canvas_to_frame(size: tuple[int, int], rotation: float, shift: tuple[float, float], scale: float) -> np.ndarray:
    """The 2x3 affine map from canvas pixels to frame pixels for one pose (tests use it as ground truth)."""
    height, width = size
    s = 0.30 * height / PALM * scale
    a = np.deg2rad(rotation)
    target = np.array([width * (0.5 + shift[0]), height * (0.56 + shift[1])])
    rot = s * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return np.hstack([rot, (target - rot @ CENTER)[:, None]])


# --- frames that must be refused ----------------------------------------------
def blank_frame(size: tuple[int, int] = (480, 640), level: int = 25, noise: float = 2.0, seed: int = 0) -> np.ndarray:
    """Nothing over the camera: the dark background and sensor noise."""
    rng = np.random.default_rng(seed)
    return np.clip(level + rng.normal(0, noise, size), 0, 255).astype(np.uint8)


def draw_two_hands(person_a: int, person_b: int, sample_seed: int = 0, size: tuple[int, int] = (480, 640)) -> np.ndarray:
    """Two hands side by side, each smaller and shifted to one half of the frame."""
    left = draw_hand(person_a, sample_seed, size, shift=(-0.24, 0.05), scale=0.8, rotation=-5)
    right = draw_hand(person_b, sample_seed + 1, size, shift=(0.24, 0.05), scale=0.8, rotation=5)
    return np.maximum(left, right)


def draw_closed_fingers(person_seed: int, sample_seed: int = 0, size: tuple[int, int] = (480, 640)) -> np.ndarray:
    """A fist: fingers curled, nothing of them to measure."""
    return draw_hand(person_seed, sample_seed, size, curl=True)


def draw_fingers_together(person_seed: int, sample_seed: int = 0, size: tuple[int, int] = (480, 640)) -> np.ndarray:
    """An open hand with the fingers held together (usable: the palm is aligned from its axis)."""
    return draw_hand(person_seed, sample_seed, size, spread=0.0)


def draw_cut_off(person_seed: int, sample_seed: int = 0, size: tuple[int, int] = (480, 640)) -> np.ndarray:
    """The hand pushed over the left edge of the view: fingers and part of the palm leave the frame."""
    return draw_hand(person_seed, sample_seed, size, shift=(-0.45, -0.2), rotation=0, scale=1.0)


def draw_blurred(person_seed: int, sample_seed: int = 0, size: tuple[int, int] = (480, 640)) -> np.ndarray:
    """The hand moving fast: a sideways smear of 6% of the frame width."""
    return draw_hand(person_seed, sample_seed, size, motion_blur=0.06 * size[1])


def draw_too_far(person_seed: int, sample_seed: int = 0, size: tuple[int, int] = (480, 640)) -> np.ndarray:
    """The hand held high above the unit: small in the frame."""
    return draw_hand(person_seed, sample_seed, size, scale=0.3, shift=(0.0, -0.1))


def draw_too_close(person_seed: int, sample_seed: int = 0, size: tuple[int, int] = (480, 640)) -> np.ndarray:
    """The hand almost on the unit: it spills over the frame, its finger valleys out of view, so no palm square
    can be placed (at 2.4x the valleys still show at the frame's edge and the square is placed)."""
    return draw_hand(person_seed, sample_seed, size, scale=3.2, shift=(0.0, -0.1))
