"""`vendor-node eval --robustness`: what each way a probe can differ from its enrollment costs.

Enrollment stays as photographed; only the probes change: turned +-15/+-30 degrees, held nearer or
further (scaled 0.7/1.3/1.5), blurred, darkened, infrared-like (low contrast, soft, noisy, vignetted),
and a close-up like the unit's own camera (a window over the palm so fingertips and wrist leave the
frame, 1.0-1.6x, turned up to +-30 degrees, infrared-like). Turning and zooming in crop from the photo
itself; only zooming out and the corners of a turned frame are filled from the photo's own border.
One line each: failure to acquire, rank-1 counting failures as misses, EER, with their counts.
Transformed frames live in memory only (never written, unless a debug folder is asked for).
"""
from __future__ import annotations

import zlib

import cv2
import numpy as np

__all__ = ["TRANSFORMS", "transform_named", "robustness_rows", "format_robustness", "closeup_pose", "warp_matrix",
           "within_photo"]

BLUR_FRACTION = 0.006  # Gaussian sigma as a share of the frame's long side (about 4 px at 640)
CLOSEUP_SIZE = (480, 640)  # the unit's frame (height, width)
CLOSEUP_PALM_SPAN = 0.45  # palm diameter over the frame height at zoom 1.0 (nir_dev frames: 0.55-0.71)
CLOSEUP_ZOOM = (1.0, 1.6)
CLOSEUP_TURN = 30.0


def _border_value(image: np.ndarray) -> int:
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    return int(np.median(border))


def _warp(image: np.ndarray, angle: float, scale: float, center=None, size=None) -> np.ndarray:
    """Turn by ``angle`` degrees and zoom by ``scale`` about ``center``, into a frame of ``size`` (h, w)."""
    matrix, (out_h, out_w) = warp_matrix(image.shape, angle, scale, center, size)
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.warpAffine(image, matrix, (out_w, out_h), flags=interpolation, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=_border_value(image))


def warp_matrix(shape: tuple[int, int], angle: float, scale: float, center=None, size=None):
    """_warp's affine matrix (2, 3) from the photo's pixels to the frame's, and the frame's size (h, w)."""
    h, w = shape[:2]
    out_h, out_w = size or (h, w)
    cx, cy = center if center is not None else (w / 2, h / 2)
    matrix = cv2.getRotationMatrix2D((float(cx), float(cy)), float(angle), float(scale))
    matrix[:, 2] += (out_w / 2 - cx, out_h / 2 - cy)
    return matrix, (out_h, out_w)


def turned(angle: float):
    return lambda image, sample=None: _warp(image, angle, 1.0)


def scaled(factor: float):
    return lambda image, sample=None: _warp(image, 0.0, factor)


def nearer(factor: float):
    """A hand held nearer the camera over the same spot: zoomed about its palm (found on the photo as it
    is), as at the unit, where a hand comes nearer over the camera; "scaled" zooms about the frame's
    centre instead, so a palm away from the centre also moves out of the frame. The zoomed window is moved
    (as little as it takes) to lie within the photo, as a camera's frame does: a window running past the
    photo's edge would show that edge inside the frame, cutting the arm off short of the frame's edge,
    which no frame of the unit shows."""
    def transform(image, sample=None):
        return _warp(image, 0.0, factor, within_photo(_palm_center(image), factor, image.shape))
    return transform


def within_photo(center, factor: float, shape: tuple[int, int]) -> tuple[float, float]:
    """The zoom centre nearest ``center`` whose window (the frame over ``factor``) lies within the photo."""
    h, w = shape
    half_w, half_h = w / (2 * factor), h / (2 * factor)
    if half_w > w / 2 or half_h > h / 2:  # zoomed out: the window is larger than the photo whatever the centre
        return float(center[0]), float(center[1])
    return float(np.clip(center[0], half_w, w - half_w)), float(np.clip(center[1], half_h, h - half_h))


def _palm_center(image: np.ndarray):
    from ..errors import HandRejected
    from .preprocess import extract_hand

    try:
        return extract_hand(image).keypoints["roi_center"]
    except HandRejected:
        return image.shape[1] / 2, image.shape[0] / 2


def blurred(image: np.ndarray, sample=None) -> np.ndarray:
    return cv2.GaussianBlur(image, (0, 0), BLUR_FRACTION * max(image.shape))


def darkened(image: np.ndarray, sample=None) -> np.ndarray:
    """A third of the light, with the sensor's noise: what a dim LED or a short exposure gives."""
    rng = np.random.default_rng(_seed(sample))
    dark = image.astype(np.float32) * 0.33 + rng.normal(0, 2.0, image.shape)
    return np.clip(dark, 0, 255).astype(np.uint8)


def ir_like(image: np.ndarray, sample=None) -> np.ndarray:
    """Infrared-like grey: low contrast, soft focus, noise and the LEDs' vignetting."""
    rng = np.random.default_rng(_seed(sample))
    h, w = image.shape
    grey = image.astype(np.float32) * 0.6 + 20.0
    grey = cv2.GaussianBlur(grey, (0, 0), 0.003 * max(h, w))
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    r2 = ((xs - w / 2) / (w / 2)) ** 2 + ((ys - h / 2) / (h / 2)) ** 2
    grey *= 1.0 - 0.35 * np.clip(r2 / 2, 0, 1)
    grey += rng.normal(0, 3.0, grey.shape)
    return np.clip(grey, 0, 255).astype(np.uint8)


def closeup(image: np.ndarray, sample=None) -> np.ndarray:
    """The unit's framing from a whole-hand photo: a 640x480 window over the palm (found on the photo as it
    is), 1.0-1.6x, turned up to +-30 degrees, infrared-like; fingertips and wrist leave the frame."""
    return ir_like(_warp(image, *closeup_pose(image, sample)), sample)


def closeup_pose(image: np.ndarray, sample=None) -> tuple[float, float, tuple[float, float], tuple[int, int]]:
    """The close-up's turn (degrees), zoom, centre on the photo and frame size, drawn from the sample's seed."""
    from ..errors import HandRejected
    from .preprocess import extract_hand

    rng = np.random.default_rng(_seed(sample))
    try:
        hand = extract_hand(image)
        center, radius = hand.keypoints["roi_center"], hand.measures["palm_radius"]
    except HandRejected:
        center, radius = (image.shape[1] / 2, image.shape[0] / 2), 0.2 * min(image.shape)
    zoom = rng.uniform(*CLOSEUP_ZOOM)
    scale = CLOSEUP_PALM_SPAN * zoom * CLOSEUP_SIZE[0] / (2 * radius)
    angle = rng.uniform(-CLOSEUP_TURN, CLOSEUP_TURN)
    return angle, scale, center, CLOSEUP_SIZE


def _seed(sample) -> int:
    return zlib.crc32(str(getattr(sample, "path", "")).encode())


TRANSFORMS = {
    "as photographed": None,
    "turned -30": turned(-30), "turned -15": turned(-15), "turned +15": turned(15), "turned +30": turned(30),
    "scaled 0.7": scaled(0.7), "scaled 1.3": scaled(1.3), "scaled 1.5": scaled(1.5),
    "nearer 1.3": nearer(1.3), "nearer 1.5": nearer(1.5),
    "blurred": blurred, "darkened": darkened, "infrared-like": ir_like, "close-up (unit-like)": closeup,
}


def transform_named(name: str):
    return TRANSFORMS[name]


def robustness_rows(evaluate, recognizer, dataset, enroll_n: int, not_impostors=(), names=None,
                    on_image=None) -> list[dict]:
    """One row per transform: the figures of ``evaluate`` (evaluation.evaluate) with only the probes
    transformed."""
    acquired: dict = {}
    rows = []
    for name in names or TRANSFORMS:
        hook = (lambda sample, image, probe, name=name: on_image(name, sample, image, probe)) if on_image else None
        report = evaluate(recognizer, dataset, enroll_n, not_impostors=not_impostors,
                          probe_transform=TRANSFORMS[name], acquired=acquired, on_image=hook)
        ident, verification = report["identification"], report["verification"]
        probes = ident["mated_probes"]
        failed = [f for f in report["failed_images"] if f["path"] not in _enrolling(dataset, enroll_n)]
        rows.append({
            "probes": name,
            "mated_probes": probes,
            "failed_to_acquire": len(failed),
            "failure_reasons": dict(_count(f["reason"] for f in failed)),
            "rank1_counting_fta": ident["rank1_counting_fta"],
            "rank1_hits": round((ident["rank1_counting_fta"] or 0) * probes),
            "eer": verification.get("eer"),
            "genuine": verification["genuine"],
            "impostor": verification["impostor"],
        })
    return rows


def _enrolling(dataset, enroll_n: int) -> set[str]:
    groups: dict = {}
    for sample in dataset:
        groups.setdefault((sample.extra, sample.subject), []).append(sample)
    return {str(s.path) for samples in groups.values() for s in samples[:enroll_n]}


def _count(items) -> dict:
    out: dict = {}
    for item in items:
        out[item] = out.get(item, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def format_robustness(rows: list[dict]) -> str:
    """The table: one line per transform."""
    def pct(value):
        return "-" if value is None else f"{100 * value:.2f}%"

    lines = [f"{'probes':<22} {'FTA':>16} {'rank-1 (FTA=miss)':>22} {'EER':>8} {'genuine/impostor':>17}  refusals"]
    for row in rows:
        probes = row["mated_probes"]
        fta = f"{row['failed_to_acquire']}/{probes}"
        rank1 = f"{pct(row['rank1_counting_fta'])} ({row['rank1_hits']}/{probes})"
        pairs = f"{row['genuine']}/{row['impostor']}"
        reasons = ", ".join(f"{k} {v}" for k, v in row["failure_reasons"].items())
        lines.append(f"{row['probes']:<22} {fta:>16} {rank1:>22} {pct(row['eer']):>8} {pairs:>17}  {reasons}")
    return "\n".join(lines)
