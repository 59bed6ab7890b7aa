"""The dim parts of a lit hand: a close-up under the unit's LEDs gets far less light on its fingers than on its palm,
so Otsu's split cuts them off halfway; hysteresis takes in the dimmer parts touching what Otsu found.
Split from preprocess.py (segmentation); working pixels."""
from __future__ import annotations

import cv2
import numpy as np

MAX_COMPARED = 4  # labels touching the hand compared one by one (mostly one: the hand's own); more: a lookup table


def grow(smooth: np.ndarray, hand: np.ndarray, threshold: float, fraction: float, shared: dict | None = None) -> np.ndarray:
    """``hand`` (0/255) with the parts of ``smooth`` touching it added, down to ``fraction`` of the way from the
    background's level to Otsu's ``threshold`` (not on light backgrounds, where that would take in the hand's
    shadow). ``shared`` keeps what depends only on the Otsu split for the frame's other reading."""
    shared = {} if shared is None else shared
    if "grow" not in shared:
        shared["grow"] = _level_and_outside(smooth, hand)
    level, outside = shared["grow"]
    if level is None:
        return hand
    # (an 8-bit threshold is taken down to a whole grey level: the same pixels are above it)
    weak = cv2.threshold(smooth, level + fraction * (threshold - level), 1, cv2.THRESH_BINARY)[1]
    count, labels = cv2.connectedComponents(weak, connectivity=8, ltype=cv2.CV_16U)
    if count <= 1:
        return hand
    # The weak parts touching what Otsu found: the labels found under the hand.
    touching = np.flatnonzero(cv2.calcHist([labels], [0], hand, [count], [0, count]).ravel()[1:]) + 1
    if len(touching) <= MAX_COMPARED:
        grown = np.zeros_like(hand)
        for label in touching:
            grown = cv2.bitwise_or(grown, cv2.compare(labels, int(label), cv2.CMP_EQ))
    else:
        keep = np.zeros(count, np.uint8)
        keep[touching] = 255
        grown = keep[labels]  # a lookup table: much faster than np.isin over every pixel
    return cv2.bitwise_or(cv2.bitwise_and(grown, outside), hand)


def _level_and_outside(smooth: np.ndarray, hand: np.ndarray) -> tuple[float | None, np.ndarray]:
    """The background's median grey level (None: no background) and what lies outside the hand's outline (gaps
    enclosed by the hand, between fingers closed off by a peg, stay gaps)."""
    counts = np.cumsum(cv2.calcHist([smooth], [0], cv2.bitwise_not(hand), [256], [0, 256]).ravel().astype(np.int64))
    level = float(np.searchsorted(counts, counts[-1] / 2)) if counts[-1] else None
    filled = np.zeros_like(hand)
    cv2.drawContours(filled, cv2.findContours(hand, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0], -1, 255,
                     thickness=cv2.FILLED)
    return level, cv2.bitwise_not(filled)
