"""Training data for the learned palm embedding: synthetic palms, the augmentation the unit needs, person splits.

Training-only (imported by scripts/train_model.py and its tests, never by the unit). Everything is seeded:
the same seed gives the same palms, the same split and the same augmented batches.

- ``synthetic_palm(identity, sample, seed)``: a 128x128 palm ROI drawn from crease curves (three principal
  lines and wrinkles as Bezier curves, per-identity parameters, per-sample jitter of the curves, skin and
  lighting), the published idea (RPG-Palm/RegPalm: pretraining on synthetic creases) in a few lines of OpenCV.
- ``augment``: the changes between two presentations at the unit: shift, rotation +-15 deg, scale 0.9-1.1,
  blur (soft near-IR focus), contrast and gamma, noise.
- ``split_palms``: train / calibrate / test by PERSON: Tongji palms 2i and 2i+1 (one person's two hands)
  always land on the same side.
"""
from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np

SIZE = 128


# --- synthetic palms ------------------------------------------------------------
def _bezier(points: np.ndarray, n: int = 40) -> np.ndarray:
    """Points along a quadratic or cubic Bezier curve with the given control points (k, 2)."""
    t = np.linspace(0.0, 1.0, n)[:, None]
    if len(points) == 3:
        return (1 - t) ** 2 * points[0] + 2 * (1 - t) * t * points[1] + t ** 2 * points[2]
    return ((1 - t) ** 3 * points[0] + 3 * (1 - t) ** 2 * t * points[1] + 3 * (1 - t) * t ** 2 * points[2]
            + t ** 3 * points[3])


def _identity(identity: int, seed: int, medium: int = 0) -> dict:
    """What stays the same for one synthetic palm: its creases (control points in [0, 1]), depths and skin."""
    rng = np.random.default_rng([seed, identity, 1])
    # Principal lines of a right palm seen from the camera (fingers up): heart, head, life.
    heart = np.array([[1.0, 0.30], [0.65, 0.22], [0.35, 0.18], [0.12, 0.05]]) + rng.normal(0, 0.05, (4, 2))
    head = np.array([[0.95, 0.48], [0.65, 0.40], [0.35, 0.35], [0.10, 0.25]]) + rng.normal(0, 0.06, (4, 2))
    life = np.array([[0.15, 0.28], [0.40, 0.45], [0.55, 0.70], [0.55, 1.0]]) + rng.normal(0, 0.06, (4, 2))
    lines = [(p, rng.uniform(1.6, 3.2), rng.uniform(35, 70)) for p in (heart, head, life)]
    for _ in range(int(rng.integers(0, 3))):  # some palms have a fate line or a simian-like crease
        start = rng.uniform([0.35, 0.55], [0.65, 1.0])
        lines.append((np.array([start, start + rng.normal([0, -0.25], 0.08), start + rng.normal([0, -0.5], 0.1)]),
                      rng.uniform(1.0, 2.2), rng.uniform(20, 45)))
    wrinkles = []
    for _ in range(int(rng.integers(30, 90))):
        centre = rng.uniform(0, 1, 2)
        angle = rng.uniform(0, np.pi)
        length = rng.uniform(0.05, 0.25)
        d = np.array([np.cos(angle), np.sin(angle)]) * length / 2
        bend = rng.normal(0, 0.03, 2)
        wrinkles.append((np.array([centre - d, centre + bend, centre + d]), rng.uniform(0.6, 1.4), rng.uniform(8, 25)))
    for _ in range(medium):  # version 2: the longer, softer secondary creases real palm centres show
        centre, angle = rng.uniform(0, 1, 2), rng.uniform(0, np.pi)
        d = np.array([np.cos(angle), np.sin(angle)]) * rng.uniform(0.25, 0.6) / 2
        wrinkles.append((np.array([centre - d, centre + rng.normal(0, 0.06, 2), centre + d]),
                         rng.uniform(1.5, 3.0), rng.uniform(12, 30)))
    mottle = rng.normal(0, 1, (8, 8)).astype(np.float32)
    return {"lines": lines, "wrinkles": wrinkles, "mottle": mottle, "skin": rng.uniform(70, 190),
            "gradient": rng.normal(0, 12, 2)}


def synthetic_palm(identity: int, sample: int, seed: int = 0, version: int = 1) -> np.ndarray:
    """One 128x128 uint8 presentation of synthetic palm ``identity`` (same arguments, same pixels).

    ``version`` 2 (palm-embed-2) is more palm-like: a fixed fine skin texture per identity, a smooth elastic
    warp per sample (skin stretching between presentations) and the unit's soft near-IR focus; version 1 is
    palm-embed-1's generator, kept so that its manifest's command still draws the same palms.
    """
    if version == 2:
        return _synthetic_palm_v2(identity, sample, seed)
    return _draw(_identity(identity, seed), identity, sample, seed, 1.0)


def _draw(ident: dict, identity: int, sample: int, seed: int, width_scale: float) -> np.ndarray:
    """Render an identity's creases with one sample's jitter, skin and lighting."""
    rng = np.random.default_rng([seed, identity, sample, 2])
    scale = 2  # draw at 2x and shrink: anti-aliased creases of sub-pixel width
    big = SIZE * scale
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / SIZE - 0.5
    skin = ident["skin"] * rng.uniform(0.9, 1.1)
    base = skin + ident["gradient"][0] * xx + ident["gradient"][1] * yy
    base += 6 * cv2.resize(ident["mottle"], (SIZE, SIZE), interpolation=cv2.INTER_CUBIC)
    creases = np.zeros((big, big), np.float32)
    for points, width, depth in ident["lines"] + ident["wrinkles"]:
        jittered = points + rng.normal(0, 0.008, points.shape)
        curve = (_bezier(jittered, 24) * big).astype(np.int32)
        value, thickness = float(depth * rng.uniform(0.8, 1.2)), width * width_scale * scale * rng.uniform(0.85, 1.15)
        if width_scale == 1.0:  # version 1: a later, shallower wrinkle overwrites a line it crosses (kept as it was)
            cv2.polylines(creases, [curve], False, value, max(1, int(round(thickness))), cv2.LINE_AA)
        else:  # the deeper crease wins where two cross: no dashed principal lines
            layer = np.zeros_like(creases)
            cv2.polylines(layer, [curve], False, value, max(1, int(round(thickness))), cv2.LINE_AA)
            np.maximum(creases, layer, out=creases)
    creases = cv2.resize(cv2.GaussianBlur(creases, (0, 0), scale * rng.uniform(0.5, 1.2)), (SIZE, SIZE),
                         interpolation=cv2.INTER_AREA)
    image = base - creases + rng.normal(0, 2.0, base.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _smooth_field(rng: np.random.Generator, cells: int, amplitude: float) -> np.ndarray:
    """A smooth random 128x128 field (cubic upsampling of cells x cells normal values)."""
    return amplitude * cv2.resize(rng.normal(0, 1, (cells, cells)).astype(np.float32), (SIZE, SIZE),
                                  interpolation=cv2.INTER_CUBIC)


def elastic(image: np.ndarray, rng: np.random.Generator, amplitude: float) -> np.ndarray:
    """Warp by a smooth random displacement field of about ``amplitude`` pixels: skin stretching, not a rigid move."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    dx, dy = _smooth_field(rng, 4, amplitude), _smooth_field(rng, 4, amplitude)
    return cv2.remap(image, xx + dx, yy + dy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def _synthetic_palm_v2(identity: int, sample: int, seed: int) -> np.ndarray:
    """Version 1's creases plus an identity's fine skin texture, a per-sample elastic warp and soft focus."""
    base = _draw(_identity(identity, seed, medium=int(np.random.default_rng([seed, identity, 5]).integers(4, 12))),
                 identity, sample, seed, 1.6).astype(np.float32)
    texture_rng = np.random.default_rng([seed, identity, 3])
    texture = cv2.GaussianBlur(texture_rng.normal(0, 1, (SIZE, SIZE)).astype(np.float32), (0, 0), 0.8)
    rng = np.random.default_rng([seed, identity, sample, 4])
    image = base + texture_rng.uniform(2.0, 6.0) * texture / max(float(texture.std()), 1e-6)
    image = elastic(image, rng, rng.uniform(0.5, 2.0))
    image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.6, 1.6))  # the unit's soft near-IR focus
    image += _smooth_field(rng, 3, rng.uniform(5, 25))  # uneven illumination, the palm's curvature
    return np.clip(image + rng.normal(0, 1.5, image.shape), 0, 255).astype(np.uint8)


# --- augmentation ---------------------------------------------------------------
def augment(roi: np.ndarray, rng: np.random.Generator, strength: float = 1.0, session: float = 0.0) -> np.ndarray:
    """A plausible other presentation of the same palm at the unit (uint8 128x128 in and out).

    ``session`` > 0 adds what changes between sessions weeks apart, with that probability: a smooth elastic
    warp of up to 2 px (skin stretch, another hand pose) and uneven illumination (up to 16 grey levels).
    """
    if session and rng.random() < session:
        warped = elastic(roi.astype(np.float32), rng, rng.uniform(0.5, 2.0))
        roi = np.clip(warped + _smooth_field(rng, 3, rng.uniform(0, 16)), 0, 255).astype(np.uint8)
    angle = rng.uniform(-15, 15) * strength
    scale = 1.0 + rng.uniform(-0.1, 0.1) * strength
    matrix = cv2.getRotationMatrix2D(((SIZE - 1) / 2, (SIZE - 1) / 2), angle, scale)
    matrix[:, 2] += rng.normal(0, 4 * strength, 2)
    out = cv2.warpAffine(roi, matrix, (SIZE, SIZE), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    out = out.astype(np.float32)
    if rng.random() < 0.5 * strength:
        out = cv2.GaussianBlur(out, (0, 0), rng.uniform(0.3, 1.5))
    mean = float(out.mean())
    out = (out - mean) * rng.uniform(0.7, 1.3) + mean + rng.normal(0, 12 * strength)
    out = 255.0 * (np.clip(out, 0, 255) / 255.0) ** rng.uniform(0.75, 1.33)
    out += rng.normal(0, rng.uniform(0, 4 * strength), out.shape)
    return np.clip(out, 0, 255).astype(np.uint8)


# --- person splits --------------------------------------------------------------
def split_palms(palms: list[str], seed: int, calibrate: int, test: int) -> dict[str, list[str]]:
    """Seeded train/calibrate/test split of Tongji palm ids ("000".."299") by PERSON.

    Palms 2i and 2i+1 are probably one person's two hands: they move together. ``calibrate`` and ``test``
    count palms (rounded down to whole people).
    """
    people: dict[int, list[str]] = {}
    for palm in palms:
        people.setdefault(int(palm) // 2, []).append(palm)
    order = [sorted(people)[i] for i in np.random.default_rng(seed).permutation(len(people))]
    n_test, n_cal = test // 2, calibrate // 2
    if n_test + n_cal >= len(order):
        raise ValueError(f"{len(palms)} palms cannot give {test} test and {calibrate} calibration palms and still train")
    pick = lambda chosen: sorted(p for person in chosen for p in people[person])  # noqa: E731
    return {"test": pick(order[:n_test]), "calibrate": pick(order[n_test:n_test + n_cal]),
            "train": pick(order[n_test + n_cal:])}


def hard_negative_batch(palm_ids: list[str], labels_by_class: dict[int, np.ndarray], rng: np.random.Generator,
                        people: int, per_class: int) -> list[tuple[int, bool]]:
    """(image index, mirrored) of a batch built from ``people`` whole people: each person's palms (2i and 2i+1,
    the same person's two hands) both as they are and mirrored, ``per_class`` images of each.

    Why: a mirrored left hand looks most like the same person's right hand, so these four identities are the
    hardest negatives there are; a pair loss within the batch (palm_net.batch_hard) then works on them.
    ``palm_ids[c]`` is class c's Tongji palm id; ``labels_by_class[c]`` its image indices.
    """
    by_person: dict[int, list[int]] = {}
    for c, palm in enumerate(palm_ids):
        by_person.setdefault(int(palm) // 2, []).append(c)
    persons = sorted(by_person)
    out = []
    for person in rng.choice(persons, size=min(people, len(persons)), replace=False):
        for c in by_person[int(person)]:
            for mirrored in (False, True):
                images = labels_by_class[c]
                out += [(int(i), mirrored) for i in rng.choice(images, size=per_class, replace=len(images) < per_class)]
    return out


def load_tongji(folder: Path) -> dict[str, dict[int, list[np.ndarray]]]:
    """Tongji ROIs as {palm: {session: [128x128 uint8, ...]}} in path order (the set's manifest.csv)."""
    folder = Path(folder)
    with open(folder / "manifest.csv", newline="") as fh:
        rows = sorted(csv.DictReader(fh), key=lambda r: r["path"])
    palms: dict[str, dict[int, list[np.ndarray]]] = {}
    for row in rows:
        image = cv2.imread(str(folder / row["path"]), cv2.IMREAD_GRAYSCALE)
        if image is None or image.shape != (SIZE, SIZE):
            raise ValueError(f"{folder / row['path']}: not a {SIZE}x{SIZE} grey image")
        palms.setdefault(row["subject"], {}).setdefault(int(row["session"]), []).append(image)
    return palms
