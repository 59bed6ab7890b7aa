"""Debug drawings for technicians and developers: what preprocessing found on a frame.

The hand's outline (green), fingertips (blue), finger valleys (yellow), wrist (magenta), palm circle
(cyan) and the palm square the recognizer reads (red, its top edge towards the fingers drawn thicker),
or the refusal reason when the frame was refused. A misplaced palm square can then be seen at a glance.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..errors import HandRejected

__all__ = ["draw_trace", "traced_extract", "write_debug_image"]


def traced_extract(image: np.ndarray):
    """``extract_hand`` plus its trace: (Hand or None, trace dict, HandRejected or None)."""
    from .preprocess import extract_hand

    trace: dict = {}
    try:
        return extract_hand(image, trace=trace), trace, None
    except HandRejected as refusal:
        trace.setdefault("reason", refusal.reason)
        return None, trace, refusal


def _pt(point) -> tuple[int, int]:
    return int(round(float(point[0]))), int(round(float(point[1])))


def draw_trace(image: np.ndarray, trace: dict, label: str = "") -> np.ndarray:
    """A colour copy of ``image`` with everything in ``trace`` drawn on it."""
    grey = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    out = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    thick = max(1, round(max(grey.shape) / 400))
    outline = trace.get("outline")
    if outline is not None and len(outline):
        cv2.polylines(out, [np.round(outline).astype(np.int32).reshape(-1, 1, 2)], True, (0, 200, 0), thick)
    if "palm_center" in trace:
        cv2.circle(out, _pt(trace["palm_center"]), int(trace.get("palm_radius", 0)), (200, 200, 0), thick)
    for tip in trace.get("tips", []):
        cv2.circle(out, _pt(tip), 4 * thick, (255, 80, 0), -1)
    for valley in trace.get("valleys", []):
        cv2.circle(out, _pt(valley), 3 * thick, (0, 200, 255), -1)
    for name, point in trace.get("keypoints", {}).items():
        colour = (0, 255, 255) if name.startswith("valley") else (255, 120, 0)
        cv2.circle(out, _pt(point), 6 * thick, colour, thick)
    if "wrist" in trace:
        cv2.circle(out, _pt(trace["wrist"]), 6 * thick, (255, 0, 255), -1)
    square = trace.get("roi_square")
    if square is not None:
        corners = np.round(square).astype(np.int32)
        cv2.polylines(out, [corners.reshape(-1, 1, 2)], True, (0, 0, 255), thick)
        cv2.line(out, _pt(corners[0]), _pt(corners[1]), (0, 0, 255), 3 * thick)  # the fingers' side
    text = label or ""
    if trace.get("side") in ("left", "right"):
        text = f"{text} {trace['side']} hand".strip()
    if trace.get("reason"):
        text = f"{text} refused: {trace['reason']}".strip()
    if text:
        cv2.putText(out, text, (8, 24 * thick), cv2.FONT_HERSHEY_SIMPLEX, 0.6 * thick, (0, 0, 255), thick)
    return out


def write_debug_image(path: Path, image: np.ndarray, trace: dict, label: str = "") -> None:
    """Write the debug drawing as a PNG (folders made as needed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), draw_trace(image, trace, label))
