"""The unit's hardware, each behind a small interface with its simulated twin beside it.

Camera (picamera2 or a folder-playing camera), the IR sensor / LED / buzzer panel (gpiozero, MockFactory
in simulation), the MDB adapter link over serial, and systemd's sd_notify. Hardware libraries are imported
only when a device is opened. Imports only ``vendor_node.errors`` and ``vendor_node.config``.
"""
from .board import BoardLink, ReconnectingBoardLink, open_board_link
from .camera import Camera, SimCamera, open_camera
from .notify import Notifier
from .panel import Panel, open_panel

__all__ = ["BoardLink", "ReconnectingBoardLink", "open_board_link", "Camera", "SimCamera", "open_camera",
           "Notifier", "Panel", "open_panel"]
