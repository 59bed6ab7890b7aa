"""The unit's one loop: sensor -> hand -> authorization -> MDB vend -> charge, and its health.

Imports hand, money and devices; never the simulator, the CLI or the back office.
"""
from .assemble import open_board, run_unit
from .purchase import Purchase, State
from .service import PurchaseLoop

__all__ = ["open_board", "run_unit", "Purchase", "State", "PurchaseLoop"]
