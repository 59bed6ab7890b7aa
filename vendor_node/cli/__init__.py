"""The `vendor-node` command: one argparse entry point for the unit, technicians, developers and the sync.

The top of the house: it may import every other subpackage (lazily, so `--help` stays fast on a Pi Zero).
"""
from .main import build_parser, main

__all__ = ["build_parser", "main"]
