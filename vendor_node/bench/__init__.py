"""`vendor-node bench ...`: speed and memory figures with their ratios to targets (never timed unit tests).

Imports the simulator, the unit and everything below them; never the CLI or the back office.
"""
from .suite import run

__all__ = ["run"]
