"""A stand-in for a learned embedding model, for tests that must run before (or without) the shipped one.

It is the palm-code model's oriented-filter responses, pooled to 8x8 cells (each cell's mean orientation
response taken out) and projected to 128 values by a fixed random matrix: crude, but a real function of the
palm (drawn hands: genuine cosines 0.79 on average, strangers 0.09, yet some pairs of people overlap, so
tests pick people it tells apart), with a format-2 manifest read exactly as a shipped one's.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from vendor_node.config import ASSETS_DIR
from vendor_node.hand.model import Embedder

DECISION = {"threshold": 0.55, "margin": 0.05, "min_threshold": 0.45, "min_margin": 0.01,
            "fmr_points": [[1e-2, 0.40], [1e-3, 0.45], [1e-4, 0.50], [1e-5, 0.55], [1e-6, 0.60], [1e-9, 0.75]]}


class StandInEmbedder:
    kind = "embedding"

    def __init__(self, model_id: str = "palm-embed-standin", dim: int = 128, seed: int = 0):
        self.base = Embedder.load(ASSETS_DIR / "palm-gabor-1")
        self.model_id = model_id
        self.output_shape = (dim,)
        self.model_path = Path(f"/nonexistent/{model_id}/standin.tflite")
        self.manifest = {"format": 2, "model_id": model_id, "kind": "embedding", "decision": dict(DECISION),
                         "output": {"shape": [1, dim]}, "embedding": {"dim": dim}}
        self._projection = np.random.default_rng(seed).normal(size=(8 * 8 * 6, dim)).astype(np.float32)

    def embed(self, roi: np.ndarray) -> np.ndarray:
        pooled = cv2.resize(self.base.responses(roi), (8, 8), interpolation=cv2.INTER_AREA)
        return (pooled - pooled.mean(axis=-1, keepdims=True)).ravel() @ self._projection
