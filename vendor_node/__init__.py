"""vendor_node: pay-by-hand firmware for a Raspberry Pi inside a snack vending machine.

Importing the package needs no hardware library: each adapter imports its own
(picamera2, gpiozero pins, pyserial, LiteRT) only when it is opened.
"""

__version__ = "0.1.0"
