"""Left or right hand, from the hand's shape: where its thumb lies across the palm.

A left hand's palm square is cut mirrored (preprocess.py), so every palm reaches the recognizer as a right
palm seen from the palm's side (thumb at the square's +x, fingers at its top): one template convention for
whichever hand a person enrolls. Works on handshape's Shape, in working pixels.
"""
from __future__ import annotations

import numpy as np

from .handshape import Shape

THUMB_SIDE_BAND = (0.0, 1.2)  # the palm's height, in palm radii below and above its centre, where the outline
# tells the thumb's side
THUMB_SIDE_MARGIN = 0.1  # palm radii further out on one side than on the other, at least


def thumb_side(shape: Shape, center: np.ndarray, radius: float, axis_x: np.ndarray) -> str | None:
    """Which hand this is, from where its thumb lies across the palm square's x axis (fingers up): a right
    palm seen from the palm's side has its thumb at +x ("right"), a left one at -x ("left"); None when
    nothing tells (the thumb out of view and the palm's outline about even on both sides).

    The thumb's tip or valley when the fingers were named; else the outline at the palm's height, which
    reaches further out on the thumb's side (the thumb and its ball)."""
    p = shape.points
    for name in ("tip_thumb", "valley_thumb_index"):
        if name in p:
            return "right" if float((p[name] - center) @ axis_x) > 0 else "left"
    if not len(shape.contour):
        return None
    up = np.array([axis_x[1], -axis_x[0]])
    rel = shape.contour - center
    level = rel @ up
    across = rel[(level > -THUMB_SIDE_BAND[0] * radius) & (level < THUMB_SIDE_BAND[1] * radius)] @ axis_x
    if not len(across):
        return None
    reach = float(across.max()) + float(across.min())  # how much further the outline reaches at +x than at -x
    if abs(reach) < THUMB_SIDE_MARGIN * radius:
        return None
    return "right" if reach > 0 else "left"
