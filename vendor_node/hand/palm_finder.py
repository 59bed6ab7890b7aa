"""Finding the palm square in a frame: the classical path (preprocess.py) and the hand-landmark model together.

Two orders (the landmark manifest's ``order``): "classical_first" reads the landmarks only where the classical
path refuses the frame or places the square without all three finger valleys (the palm circle and the hand's
axis, or two valleys), so frames it places well cost nothing more and keep their square; "landmarks_first"
reads the model on every frame (once, at the remembered quarter turn) and takes the classical path where it
sees no hand. A frame both refuse is read by the model at the three other quarter turns before the classical
refusal is told. Measured on the people never used for tuning (issue 8, scripts/measure_landmarks.py, lite
model): landmarks first, its tighter crop read on every frame, is best on every photo set (COEP zoomed 1.5x
about the palm 79% -> 100% rank-1, 11k_small 62% -> 81%, 11k_full 89% -> 91%) but loses the unit's own close
near-infrared frames (nir_dev 10/10 -> 7/10; 9/10 refining only unsure readings) and smaller hands (webcam
scaled 0.7: 100% -> 89%); classical first keeps nir_dev, coep_dev and webcam_hand2 as classical and helps near
and small hands a little (COEP nearer 1.3: 94% -> 98%, 11k_small 62% -> 75%) but costs 11k_full 89% -> 83%.
Neither is better on the frames the unit sees, and the interpreter adds 10-12 MB of RSS (over the 150 MB budget
at 10,000 employees), so ``models.json`` names no landmark model: a unit runs the classical path alone until it
does (``"landmarks": "hand-landmark"``; the folder's manifest says classical first).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from . import palm_square
from .landmarks import KEYPOINT_NAMES, LandmarkFinder, Reading, square_from_landmarks
from .preprocess import GEOMETRY_SIZE, MIN_TEXTURE, MIRROR_LEFT_HANDS, Hand, extract_hand, validated, reject
from ..assets import model_set
from ..errors import HandRejected, ModelError

__all__ = ["PalmFinder"]

ORDERS = ("landmarks_first", "classical_first")  # classical_first: the landmarks only where the classical path
# refuses the frame or places the square without all three finger valleys
RIGHT_SCORE = 0.5  # the model's right-hand score above which a palm is told right


class PalmFinder:
    """``find(frame) -> Hand`` (HandRejected otherwise), by the landmark model when one is given, else classical."""

    def __init__(self, landmarks: LandmarkFinder | None = None, mirror_left: bool = MIRROR_LEFT_HANDS,
                 order: str = "landmarks_first"):
        if order not in ORDERS:
            raise ModelError(f"order: expected one of {ORDERS}, got {order!r}")
        self.landmarks = landmarks
        self.mirror_left = mirror_left
        self.order = order

    @classmethod
    def from_assets(cls, assets_dir: Path | str) -> "PalmFinder":
        """The unit's palm finder: the landmark model ``models.json`` names (hash-checked; its manifest's ``order``),
        or the classical path alone."""
        folder = model_set(assets_dir).landmarks
        if folder is None:
            return cls()
        landmarks = LandmarkFinder.load(folder)
        return cls(landmarks, order=landmarks.reader.manifest.get("order", "landmarks_first"))

    def find(self, image: np.ndarray, trace: dict | None = None) -> Hand:
        if self.landmarks is None:
            return self._mirrored(extract_hand(image, trace, mirror_left=False))
        grey = validated(image)
        if self.order == "classical_first":
            return self._mirrored(self._classical_first(grey, trace))
        reading = self.landmarks.find(grey)
        if reading is not None:
            try:
                return self._mirrored(self.hand_from(grey, reading, trace))
            except HandRejected:
                pass  # the square leaves the frame or shows no palm: the classical path may still place it
        if trace is not None:
            trace.clear()
        try:
            hand = extract_hand(grey, trace, mirror_left=False)
        except HandRejected as refusal:
            if reading is not None or (reading := self.landmarks.find(grey, other_turns=True)) is None:
                raise
            try:
                return self._mirrored(self.hand_from(grey, reading, trace))
            except HandRejected:
                raise refusal from None
        self._remember(hand)
        return self._mirrored(hand)

    def _classical_first(self, grey: np.ndarray, trace: dict | None) -> Hand:
        refusal = hand = None
        try:
            hand = extract_hand(grey, trace, mirror_left=False)
            if hand.alignment == "valleys":
                self._remember(hand)
                return hand
        except HandRejected as refused:
            refusal = refused
        reading = self.landmarks.find(grey)
        if reading is None and refusal is not None:
            reading = self.landmarks.find(grey, other_turns=True)
        if reading is not None:
            try:
                return self.hand_from(grey, reading, trace)
            except HandRejected:
                pass
        if hand is None:
            raise refusal
        return hand

    def _remember(self, hand: Hand) -> None:
        """The next hand is read the way up this one was found."""
        top = (hand.square[0] + hand.square[1]) / 2 - (hand.square[2] + hand.square[3]) / 2
        self.landmarks.remember_up(float(np.arctan2(top[0], -top[1])))

    def hand_from(self, grey: np.ndarray, reading: Reading, trace: dict | None = None) -> Hand:
        """The Hand whose palm square the landmarks place; HandRejected (cut_off, bad_image) when unusable."""
        center, axis_x, side = square_from_landmarks(reading.points, self.landmarks.fit)
        square = palm_square.square_corners(center, axis_x, side)
        keypoints = {name: (float(reading.points[i][0]), float(reading.points[i][1]))
                     for i, name in KEYPOINT_NAMES.items()}
        keypoints["roi_center"] = (float(center[0]), float(center[1]))
        hand_side = "right" if reading.right >= RIGHT_SCORE else "left"
        if trace is not None:
            trace.clear()
            trace.update(method="landmarks", keypoints=keypoints, roi_square=square, side=hand_side,
                         presence=reading.presence)
        if not palm_square.inside_frame(center, axis_x, side, grey.shape):
            raise reject("cut_off")
        mask = np.full(grey.shape, 255, np.uint8)
        roi, texture = palm_square.cut_roi(grey, mask, 1.0, center, axis_x, side)
        if texture < MIN_TEXTURE:
            raise HandRejected("bad_image", "The palm shows no detail (picture over-exposed or binarised).")
        measures = {"presence": reading.presence, "roi_side": side, "texture": texture}
        return Hand(roi, np.zeros(GEOMETRY_SIZE, np.float32), keypoints, reading.presence, "landmarks", measures,
                    square, hand_side)

    def _mirrored(self, hand: Hand) -> Hand:
        """A left hand's ROI mirrored into the right-hand frame, when mirroring is on (MIRROR_LEFT_HANDS)."""
        if self.mirror_left and hand.side == "left":  # the thumb at the square's +x, as for a right palm
            return replace(hand, roi=np.ascontiguousarray(hand.roi[:, ::-1]), square=hand.square[[1, 0, 3, 2]])
        return hand
