"""Assembling the unit: the devices and stores named by the config around a PurchaseLoop.

``run_unit`` is ``vendor-node run`` (under systemd); ``open_board`` is also used by
``vendor-node selftest`` and the simulator. A device that is not there yet (the
serial adapter, the camera) leaves the unit out of service and is retried by the loop.
"""
from __future__ import annotations

import logging
import threading

from ..errors import AccountsError, BoardLinkError, CameraError, JournalError
from ..devices.notify import Notifier
from ..heap import keep_large_blocks_unheaped
from .service import PurchaseLoop
from .watchdog import STORE_RETRY_S, warn_unsafe_waits

log = logging.getLogger("vendor_node.unit")


def open_board(cfg, *, port: str | None = None, stop_event: threading.Event | None = None):
    """The board link from [board]; a port that cannot be opened yet is retried by the loop (out of service)."""
    from ..devices.board import BoardLink, SerialTransport, board_link_options

    path = str(port or cfg.board.port)

    def open_transport():
        return SerialTransport(path, cfg.board.baudrate, write_timeout_s=cfg.board.reply_timeout_s)

    try:
        transport = open_transport()
    except BoardLinkError as exc:
        log.error("board link: %s (retrying with backoff)", exc)
        transport = None
    return BoardLink(transport, reopen_transport=open_transport,
                     **board_link_options(cfg.board, cfg.recognition.max_attempts))


def run_unit(cfg, stop_event: threading.Event, *, board_port: str | None = None,
             notifier: Notifier | None = None, store_retry_s: float = STORE_RETRY_S) -> int:
    """The unit on the hardware named by cfg.unit.hardware, until ``stop_event`` is set."""
    from ..money.accounts import AccountStore
    from ..money.authorize import AbuseGuard
    from ..devices.camera import open_camera
    from ..money.journal import Journal
    from ..devices.panel import open_panel
    from ..hand.recognition import Recognizer
    from ..money.storage import open_db

    from .keysource import adopt_clear_templates, check_unit_keys, guarded_gallery, unit_template_guard

    keep_large_blocks_unheaped()  # frames and their copies go back to the system after each purchase (heap.py)
    keystore = check_unit_keys(cfg)  # KeyFileError (copied state dir, no OTP key): refuse to start, say why
    recognizer = Recognizer.from_config(cfg)  # ModelError: exit non-zero, `vendor-node selftest` says why
    recognizer.guard = unit_template_guard(keystore)
    notifier = notifier or Notifier()
    warn_unsafe_waits(cfg, notifier.watchdog_s)  # a configured wait that systemd would take for a hang
    opened = _open_stores_when_possible(cfg, stop_event, notifier, open_db, Journal,
                                        lambda c, conn, j: AccountStore(c, conn, j, keystore), store_retry_s)
    if opened is None:  # stopped while waiting for the disk
        notifier.stopping()
        notifier.close()
        return 0
    conn, journal, accounts = opened
    try:  # a store from before template guarding; the gallery guards them in memory meanwhile
        adopt_clear_templates(accounts, recognizer.guard)
    except AccountsError as exc:
        log.error("templates stay in the old form for now: %s", exc)
    camera = None
    try:

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
                                notifier=notifier, open_camera=camera_factory,
                                gallery_factory=guarded_gallery(recognizer.guard))
            try:
                return loop.run()
            finally:
                camera = loop.camera
    finally:
        if camera is not None:
            camera.close()
        journal.close()
        conn.close()
        notifier.close()


def _open_stores_when_possible(cfg, stop_event: threading.Event, notifier: Notifier, open_db, journal_cls,
                               store_cls, retry_s: float = STORE_RETRY_S):
    """(conn, journal, accounts) once the unit's database opens; until then out of service, not a crash.

    A full or read-only disk at boot makes even opening the WAL database fail. Exiting would only restart the
    service in a loop; instead the unit tells systemd it is up but out of service (the board is never enabled,
    so the machine shows no reader), keeps the watchdog fed while it retries, and serves once the disk takes writes.
    """
    told = None
    while not stop_event.is_set():
        conn = None
        try:
            conn = open_db(cfg.state_dir)
            journal = journal_cls(conn)
            return conn, journal, store_cls(cfg, conn, journal)
        except (JournalError, AccountsError) as exc:
            if conn is not None:
                conn.close()
            if told != str(exc):
                told = str(exc)
                log.error("out of service (journal): %s (retrying every %.0f s)", exc, retry_s)
                notifier.ready(f"out of service (journal): {exc}")
            notifier.watchdog()
            stop_event.wait(retry_s)
    return None
