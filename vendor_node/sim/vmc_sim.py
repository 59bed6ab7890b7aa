"""A vending machine (its controller plus the MDB adapter in front of it) on the far end of a pty.

Why: the purchase loop, its tests and ``vendor-node simulate`` need a machine that answers like the
real one, faults included, on a real serial port. The simulator owns a pty pair (``os.openpty()``),
keeps a stable symlink to the slave (like /dev/serial/by-id) for the unit to open with
``SerialTransport``, and runs in its own thread speaking the adapter's lines as documented in
docs/mdb-protocol.md: it answers C,1 with INACTIVE/DISABLED/ENABLED (with the r,ACK chatter, after
``status_delay_s``), opens sessions on C,START (busy first ``start_busy`` times per session, or at
``start_busy_rate``), sends vend requests for customers' selections in the adapter's configured price
format, vends on approval and reports success or a jam, and ends the session (c,STATUS,IDLE then
c,STATUS,ENABLED). Selection first reaches the bus only when the machine supports it (``always_idle``)
and the adapter was set to ``mdb-always-idle=1`` since its last power-up (``power_cycle()``).

The adapter's answers to the unit's commands are vmc_adapter.py's (``AdapterCommands``, the base
class); purchase orders and customer behaviours are described on ``Customer`` (vmc_records.py).
Line faults: ``send_garbage()``, ``reply_delay_s`` (a slow adapter) and ``disconnect()`` (the pty is
closed and recreated under the same path after ``down_s``; the adapter comes back switched off, as
after a USB replug; a vend approved before the cut still drops but its success line is lost). Where
the protocol's sources are silent the simulator follows board.py's stated assumptions
(docs/mdb-protocol.md), so it cannot prove them right: only a real adapter can.

The record lists keep everything, or only the last ``keep_history`` entries (set it for long runs:
a Customer costs ~1.7 kB, 10,000 of them ~17 MB), while ``vended_count``/``vended_cents``,
``vended_reported_count``/``_cents`` and ``outcome_counts`` keep exact totals, so a long simulation
checks charges == successful vends with them.
"""
from __future__ import annotations

import os
import re
import time
from collections import Counter, deque

import random

from ..devices.board_format import format_price
from .vmc_adapter import POWER_UP_SETTINGS, AdapterCommands
from .vmc_pty import PtyLine
from .vmc_records import BEHAVIOURS, ORDERS, Customer, History, Vended  # noqa: F401 (re-exported)

DEFAULT_GARBAGE = b"\x00\xff\xfe#@!\r\nc,STAT\xc3\x28US,\x01\n\r\n\x1b[2J~~~ noise ~~~\r\nc,STATUS,VEND,abc,\n"


class VendingMachineSimulator(AdapterCommands):
    """The machine behind a pty; a context manager. ``port_path`` is what the unit opens."""

    def __init__(self, *, always_idle: bool = True, reply_delay_s: float = 0.0, vend_time_s: float = 0.05,
                 think_s: float = 0.02, slow_s: float = 0.3, cancel_after_s: float = 0.3,
                 patience_s: float = 10.0, reader_timeout_s: float = 10.0, session_timeout_s: float = 30.0,
                 price_format: str = "decimal", link_dir: str | os.PathLike | None = None,
                 keep_history: int | None = None, start_busy: int = 0, start_busy_rate: float = 0.0,
                 status_delay_s: float = 0.01, change_after_s: float = 0.1, seed: int = 0):
        self.always_idle = always_idle  # the machine supports selection first (the adapter must agree)
        self.start_busy, self.start_busy_rate = start_busy, start_busy_rate
        self.status_delay_s, self.change_after_s = status_delay_s, change_after_s
        self._rng = random.Random(seed)
        # the adapter's volatile settings; "cents" machines' adapters print minor units at power-up
        self._power_up = dict(POWER_UP_SETTINGS, **({"mdb-decimal-places": "0"} if price_format == "cents" else {}))
        self.settings: dict[str, str] = dict(self._power_up)
        self.set_since_power_up: set[str] = set()
        self.refused_settings: list[str] = []
        self.display_refused: list[str] = History(keep_history)
        self.revalue_answers: list[str] = []
        self.cash_sales: list[tuple[str, str]] = []
        self.start_busy_answers = 0
        self.wrong_price_vends = 0  # approvals that vended an item priced otherwise
        self._busy_left: int | None = None
        self._session_begun = True  # False between C,START and its (possibly delayed) answer
        self._ghost_success = False  # a success line the machine withheld, released in the next session
        self.reply_delay_s, self.vend_time_s, self.think_s = reply_delay_s, vend_time_s, think_s
        self.slow_s, self.cancel_after_s, self.patience_s = slow_s, cancel_after_s, patience_s
        self.reader_timeout_s, self.session_timeout_s = reader_timeout_s, session_timeout_s
        self.price_format = price_format
        # records read by tests from other threads, appended only on the line's thread; bounded by
        # ``keep_history`` while the counters below keep exact totals
        self.vended: list[Vended] = History(keep_history)
        self.display_lines: list[str] = History(keep_history)
        self.machine_messages: list[str] = History(keep_history)
        self.commands: list[str] = History(keep_history)
        self.outcomes: list[Customer] = History(keep_history)
        self.protocol_errors: list[str] = []
        self.outcome_counts: Counter = Counter()
        self.vended_count = 0
        self.vended_cents = 0  # approved amounts of everything that physically dropped
        self.vended_reported_count = 0  # ... of which the unit saw c,VEND,SUCCESS
        self.vended_reported_cents = 0
        self._line = PtyLine(self._on_command, self.protocol_errors.append, link_dir=link_dir)
        self.port_path = self._line.port_path
        # simulator state, touched only on the line's thread
        self._adapter_on = False
        self.reader_state = "off"  # off | enabled | session | vend | vending | ending
        self._funds: int | None = None
        self._session_id = 0
        self._session_timer: list | None = None
        self._link_epoch = 0
        self._request: Customer | None = None
        self._approved_cents = 0
        self._current: Customer | None = None
        self._queue: deque[Customer] = deque()

    # --- lifecycle ---------------------------------------------------------------
    def start(self) -> "VendingMachineSimulator":
        self._line.start()
        return self

    def stop(self) -> None:
        self._line.stop()

    @property
    def running(self) -> bool:
        return self._line.running

    @property
    def pending_timers(self) -> int:
        return self._line.pending_timers

    @property
    def connections(self) -> int:
        """How many times the port appeared (1 + reconnects after disconnect())."""
        return self._line.connections

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()

    # --- scripting API (any thread) ------------------------------------------------
    def next_customer(self, selection: tuple[int, str], behaviour: str = "normal",
                      order: str = "hand_first") -> Customer:
        """Queue a customer who will buy ``selection`` = (price_cents, item)."""
        price_cents, item = selection
        if behaviour not in BEHAVIOURS:
            raise ValueError(f"behaviour must be one of {BEHAVIOURS}, got {behaviour!r}")
        if order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
        if not isinstance(price_cents, int) or price_cents <= 0 or not re.fullmatch(r"[0-9A-Za-z]{1,8}", str(item)):
            raise ValueError(f"a selection is (positive cents, short alphanumeric item), got {selection!r}")
        customer = Customer(price_cents, str(item), behaviour, order)
        self._call(lambda: (self._queue.append(customer), self._next_customer()))
        return customer

    def send_garbage(self, data: bytes | None = None) -> None:
        """Line noise towards the unit (ends with a line end so the next real line survives)."""
        self._call(lambda: self._write_raw(DEFAULT_GARBAGE if data is None else data))

    def send_raw(self, data: bytes) -> None:
        self._call(lambda: self._write_raw(data))

    def power_cycle(self) -> None:
        """The adapter loses power (the port stays, as on a Pi Hat's UART): its settings are forgotten,
        the cashless comes back off, an open session is lost."""
        self._call(self._power_off)

    @property
    def selection_first_on_bus(self) -> bool:
        """Selection first needs the machine's support and the adapter's mdb-always-idle=1 [Q3]."""
        return self.always_idle and self.settings.get("mdb-always-idle") == "1"

    def disconnect(self, down_s: float = 0.3) -> None:
        """Cut the line: close the pty, recreate it under the same path after ``down_s``."""
        self._call(lambda: self._cut(down_s))

    def wait_until(self, predicate, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        return True

    def wait_idle(self, timeout: float) -> bool:
        """True once no customer is at the machine or queued and the reader is not in a session."""
        return self.wait_until(lambda: self._current is None and not self._queue
                               and self.reader_state in ("enabled", "off"), timeout)

    # --- on the line's thread --------------------------------------------------------
    def _call(self, action) -> None:
        self._line.call(action)

    def _after(self, delay_s: float, action) -> list:
        return self._line.after(delay_s, action)

    def _customer_after(self, customer: Customer, delay_s: float, action) -> None:
        """A customer's timer: runs only if the customer is still at the same step; dropped when they leave."""
        customer.timers.append(self._after(delay_s, self._guard(customer, action)))

    def _write_raw(self, data: bytes) -> None:
        self._line.write(data)

    def _emit(self, line: str) -> None:
        self._write_raw(line.encode("ascii") + b"\r\n")

    def _reply(self, line: str) -> None:
        if self.reply_delay_s > 0:
            self._after(self.reply_delay_s, lambda: self._emit(line))
        else:
            self._emit(line)

    # --- the machine and its customers ---------------------------------------------
    def _next_customer(self) -> None:
        if self._current is not None or not self._queue or self.reader_state not in ("enabled", "session"):
            return
        if self.reader_state == "session" and not self._session_begun:
            return  # the session's answer is not out yet: the machine starts nothing before it
        customer = self._current = self._queue.popleft()
        if self.reader_state == "session":
            self._in_session(customer)
        elif customer.order == "hand_first":
            self._set_phase(customer, "waiting_session")
            self._customer_after(customer, self.patience_s, lambda: self._no_session(customer))
        elif self.selection_first_on_bus:
            self._set_phase(customer, "selecting")
            self._customer_after(customer, self._think_time(customer), lambda: self._select(customer))
        else:
            self._set_phase(customer, "prompting")
            self.machine_messages.append(f"{format_price(customer.price_cents)} - present payment")
            self._customer_after(customer, self.patience_s, lambda: self._no_session(customer))

    def _in_session(self, customer: Customer, immediately: bool = False) -> None:
        self._set_phase(customer, "in_session")
        if customer.behaviour == "cancel" and customer.order == "hand_first":
            self._customer_after(customer, self._think_time(customer), lambda: self._walk_away(customer))
            return
        delay = 0.0 if immediately else self._think_time(customer)
        self._customer_after(customer, delay, lambda: self._select(customer))

    def _think_time(self, customer: Customer) -> float:
        return self.slow_s if customer.behaviour == "slow" else self.think_s

    def _set_phase(self, customer: Customer, phase: str) -> None:
        customer.phase = phase
        customer.step += 1

    def _guard(self, customer: Customer, action):
        """An action that runs only if the customer is still at the same step."""
        step = customer.step
        return lambda: action() if self._current is customer and customer.step == step else None

    def _select(self, customer: Customer) -> None:
        if self.reader_state == "session" and self._funds is not None and customer.price_cents > self._funds:
            self.machine_messages.append("insufficient funds")
            self._finish(customer, "insufficient_funds")
            self._end_session()
            return
        if self.reader_state not in ("session", "enabled"):
            return
        self._set_phase(customer, "requested")
        self.reader_state, self._request = "vend", customer
        self._emit(f"c,STATUS,VEND,{self.price_text(customer.price_cents)},{customer.item}")
        self._customer_after(customer, self.reader_timeout_s, lambda: self._cancel_request(customer, "timeout"))
        if customer.behaviour == "change":
            customer.timers.append(self._after(self.change_after_s, lambda: self._change_if_pending(customer)))
        if customer.behaviour == "cancel":
            self._customer_after(customer, self.cancel_after_s, lambda: self._cancel_request(customer, "cancelled"))

    def _change_if_pending(self, customer: Customer) -> None:
        if self._request is customer and self.reader_state == "vend" and not customer.changed:
            self._change_request(customer)

    def _change_request(self, customer: Customer) -> None:
        """The customer pressed another selection while the first was pending: a new request replaces it."""
        customer.price_cents, customer.item = customer.change_to or (customer.price_cents + 150, "D1")
        customer.changed = True
        self._emit(f"c,STATUS,VEND,{self.price_text(customer.price_cents)},{customer.item}")

    def _approve(self, customer: Customer, amount: int) -> None:
        """Credit given for the pending request: the machine vends its current item for ``amount``."""
        self.reader_state, self._approved_cents = "vending", amount
        self._reply("r,ACK")
        if self._ghost_success:  # a confused machine: the last session's success, reported in this one
            self._ghost_success = False
            self._emit("c,VEND,SUCCESS")
        vend_time = self.slow_s * 2 if customer.behaviour == "slow" else self.vend_time_s
        step = customer.step
        customer.timers.append(self._after(vend_time, lambda: self._vend_done(customer, step)))

    def _cancel_request(self, customer: Customer, outcome: str) -> None:
        if self.reader_state != "vend":
            return
        self._emit("c,ERR,VEND 1")
        self._finish(customer, outcome)
        self._end_session()

    def _walk_away(self, customer: Customer) -> None:
        self.machine_messages.append("cancelled")
        self._finish(customer, "cancelled")
        self._end_session()

    def _deny(self) -> None:
        customer = self._request
        self.machine_messages.append("payment refused")
        if customer is not None:
            self._finish(customer, "vended" if customer.vends else "denied")
        self._end_session()

    def _vend_done(self, customer: Customer, step: int) -> None:
        if self._current is not customer or customer.step != step or self.reader_state != "vending":
            return
        if customer.behaviour == "jam":
            self._emit("c,ERR,VEND 3")
            self._finish(customer, "failed")
        elif customer.behaviour == "ghost":  # it dropped, but the machine reports it only later
            self._record_vend(customer, reported=False)
            self._ghost_success = True
            self._finish(customer, "vended_unreported")
        else:
            self._record_vend(customer, reported=True)
            self._emit("c,VEND,SUCCESS")
            if customer.behaviour == "multi" and customer.vends == 1:  # a second selection, same session
                self._set_phase(customer, "requested")
                customer.price_cents, customer.item = customer.change_to or (customer.price_cents, "M2")
                self.reader_state, self._request = "vend", customer
                self._emit(f"c,STATUS,VEND,{self.price_text(customer.price_cents)},{customer.item}")
                self._customer_after(customer, self.reader_timeout_s, lambda: self._cancel_request(customer, "vended"))
                return
            self._finish(customer, "vended")
        self._end_session()

    def _record_vend(self, customer: Customer, reported: bool) -> None:
        self.wrong_price_vends += self._approved_cents != customer.price_cents
        customer.vends += 1
        self.vended.append(Vended(customer.item, customer.price_cents, self._approved_cents, reported, time.time()))
        self.vended_count += 1
        self.vended_cents += self._approved_cents
        if reported:
            self.vended_reported_count += 1
            self.vended_reported_cents += self._approved_cents

    def _no_session(self, customer: Customer) -> None:
        self.machine_messages.append("selection timed out")
        self._finish(customer, "no_session")
        self._next_customer()

    def _session_timed_out(self, session_id: int) -> None:
        if self._session_id == session_id and self.reader_state == "session" and self._current is None:
            self._end_session()

    def _finish(self, customer: Customer, outcome: str) -> None:
        customer.outcome, customer.phase = outcome, "done"
        customer.step += 1
        for timer in customer.timers:
            self._line.cancel(timer)
        customer.timers.clear()
        if self._current is customer:
            self._current = None
        if self._request is customer:
            self._request = None
        self.outcomes.append(customer)
        self.outcome_counts[outcome] += 1
        customer.done.set()

    def _end_session(self) -> None:
        """The machine closes the session: IDLE, then ENABLED, then the next customer."""
        self.reader_state, self._funds, self._request, self._busy_left = "ending", None, None, None
        if self._session_timer is not None:
            self._line.cancel(self._session_timer)
            self._session_timer = None
        self._emit("c,STATUS,IDLE")
        epoch = self._link_epoch

        def back_to_enabled():
            if self._link_epoch == epoch and self._adapter_on:
                self._emit("c,STATUS,ENABLED")
                self.reader_state = "enabled"
                self._next_customer()

        self._after(self.status_delay_s, back_to_enabled)

    def _abort(self, why: str) -> None:
        """The reader vanished from the bus: the session is lost; an approved vend still drops."""
        customer = self._current
        if customer is not None and customer.phase not in ("waiting_session", "queued"):
            if self.reader_state == "vending" and customer.behaviour != "jam":
                self._record_vend(customer, reported=False)
                self._finish(customer, "vended_unreported")
            elif self.reader_state == "vending":
                self._finish(customer, "failed")
            else:
                self._finish(customer, "interrupted")
            self.machine_messages.append(f"reader lost: {why}")
        self.reader_state, self._funds, self._request = "off", None, None

    def _power_off(self) -> None:
        self._link_epoch += 1
        if self._adapter_on:
            self._abort("adapter lost power")
        self._adapter_on = False
        self.reader_state = "off"
        self.settings, self.set_since_power_up = dict(self._power_up), set()

    def _cut(self, down_s: float) -> None:
        self._line.cut(down_s)
        self._link_epoch += 1
        if self._adapter_on:
            self._abort("line cut")
        self._adapter_on = False  # it comes back from a reboot, switched off and with its settings lost
        self.reader_state = "off"
        self.settings, self.set_since_power_up = dict(self._power_up), set()
