"""A whole unit off the Pi: the vending-machine simulator on a pty, drawn hands, simulated people, `simulate`.

Imports the unit and everything below it; never the CLI or the back office.
"""
from .drawn_hands import draw_hand
from .simulate import SimUnit, run_simulation
from .vmc_sim import VendingMachineSimulator

__all__ = ["draw_hand", "SimUnit", "run_simulation", "VendingMachineSimulator"]
