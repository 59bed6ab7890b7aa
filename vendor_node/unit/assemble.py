"""Assembling the unit: the devices and stores named by the config around a PurchaseLoop.

``run_unit`` is ``vendor-node run`` (under systemd); ``open_board`` is also used by
``vendor-node selftest`` and the simulator. A device that is not there yet (the
serial adapter, the camera) leaves the unit out of service and is retried by the loop.
"""
from __future__ import annotations

import logging
import threading

from ..errors import BoardLinkError, CameraError
from ..devices.notify import Notifier
from .service import PurchaseLoop

log = logging.getLogger("vendor_node.unit")


def open_board(cfg, *, port: str | None = None, stop_event: threading.Event | None = None):
    """The board link from [board]; a port that cannot be opened yet is retried by the loop (out of service)."""
    from ..devices.board import BoardLink, SerialTransport

    path = str(port or cfg.board.port)

    def open_transport():
        return SerialTransport(path, cfg.board.baudrate, write_timeout_s=cfg.board.reply_timeout_s)

    try:
        transport = open_transport()
    except BoardLinkError as exc:
        log.error("board link: %s (retrying with backoff)", exc)
        transport = None
    return BoardLink(transport, price_format=cfg.board.price_format, reply_timeout_s=cfg.board.reply_timeout_s,
                     reopen_transport=open_transport, max_backoff_s=cfg.board.reconnect_max_backoff_s)


def run_unit(cfg, stop_event: threading.Event, *, board_port: str | None = None,
             notifier: Notifier | None = None) -> int:
    """The unit on the hardware named by cfg.unit.hardware, until ``stop_event`` is set."""
    from ..money.accounts import AccountStore
    from ..money.authorize import AbuseGuard
    from ..devices.camera import open_camera
    from ..money.journal import Journal
    from ..devices.panel import open_panel
    from ..hand.recognition import Recognizer
    from ..money.storage import open_db

    recognizer = Recognizer.from_config(cfg)  # ModelError: exit non-zero, `vendor-node selftest` says why
    notifier = notifier or Notifier()
    conn = open_db(cfg.state_dir)
    camera = None
    try:
        journal = Journal(conn)
        accounts = AccountStore(cfg, conn, journal)

        def camera_factory():
            return open_camera(cfg)

        try:
            camera = camera_factory()
        except CameraError as exc:
            log.error("camera: %s (out of service until it answers)", exc)
        with open_panel(cfg) as panel, open_board(cfg, port=board_port, stop_event=stop_event) as board:
            abuse = AbuseGuard(cfg, state_file=cfg.state_dir / "abuse_state.json")  # survives restarts
            loop = PurchaseLoop(cfg, camera=camera, panel=panel, board=board, recognizer=recognizer,
                                accounts=accounts, journal=journal, abuse=abuse, stop_event=stop_event,
                                notifier=notifier, open_camera=camera_factory)
            try:
                return loop.run()
            finally:
                camera = loop.camera
    finally:
        if camera is not None:
            camera.close()
        conn.close()
        notifier.close()
