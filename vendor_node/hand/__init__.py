"""Hand recognition: find the palm in a frame, turn it into a template, match it 1:N, measure it.

Imports only ``vendor_node.errors`` and ``vendor_node.config`` from the package: never money,
devices, the unit, the simulator, the CLI or the back office.
"""
from .model import Embedder
from .preprocess import ROI_SIZE, Hand, extract_hand
from .recognition import Features, Gallery, Match, Recognizer, Template

__all__ = ["Embedder", "ROI_SIZE", "Hand", "extract_hand", "Features", "Gallery", "Match", "Recognizer", "Template"]
