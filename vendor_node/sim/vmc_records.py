"""The vending-machine simulator's records: who came (``Customer``), what dropped (``Vended``).

Split from vmc_sim.py, which re-exports them. ``History`` bounds a record list for long runs while the
simulator's counters keep exact totals.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

BEHAVIOURS = ("normal", "jam", "cancel", "slow", "change", "change_on_approval", "ghost", "multi")
ORDERS = ("hand_first", "selection_first")


class History(list):
    """A list that keeps only its last ``limit`` items (None: all); still compares like a list."""

    def __init__(self, limit: int | None):
        super().__init__()
        self.limit = limit

    def append(self, item) -> None:
        super().append(item)
        if self.limit is not None and len(self) > self.limit:
            del self[: len(self) - self.limit]


@dataclass(frozen=True)
class Vended:
    """An item that physically dropped; ``reported`` is False when its success line was lost."""

    item: str
    price_cents: int
    approved_cents: int
    reported: bool
    at: float


@dataclass(eq=False)
class Customer:
    """One person at the machine; ``wait()`` returns how it ended.

    Orders: "hand_first" customers wait for the unit to start a session, then select.
    "selection_first" customers select with the reader merely enabled. A machine with ``always_idle``
    (the default; [Q3] in docs/mdb-protocol.md) then sends the vend request at once, and the unit must
    answer it before the machine's reader timeout (``reader_timeout_s``). Without always-idle the real
    bus carries nothing for a selection: the machine only shows a prompt and sends the request once the
    unit starts a session within ``patience_s``; the simulator models both.

    Behaviours: "normal", "jam" (approved, the item does not drop: c,ERR,VEND 3), "cancel" (hand
    first: presses cancel instead of selecting, the session ends with no request; selection first:
    cancels the pending request after ``cancel_after_s`` unless approved by then: c,ERR,VEND 1),
    "slow" (waits ``slow_s`` before selecting and takes twice that to vend). A confused machine (issue 11):
    "change" (presses another selection ``change_after_s`` after the first, while it is pending: a second
    request replaces the first), "change_on_approval" (the same, crossing the unit's approval on the wire:
    the machine vends the new selection for the amount approved for the old one), "ghost" (the item
    drops but the success line is withheld; the session closes without an outcome and the line comes
    during the next approved vend, whoever's it is), "multi" (after the success, selects a second item in
    the same session: multi-vend; the unit must approve or deny it). ``change_to`` is the new (price, item).

    Outcomes: "vended", "failed" (jam), "denied", "cancelled", "timeout" (the unit did not answer the
    vend request in time), "insufficient_funds", "no_session" (no session within patience),
    "session_ended" (the unit ended the session), "interrupted" (link cut or reader disabled),
    "vended_unreported" (dropped during a cut; the unit never saw the success line).
    """

    price_cents: int
    item: str
    behaviour: str = "normal"
    order: str = "hand_first"
    outcome: str | None = None
    done: threading.Event = field(default_factory=threading.Event, repr=False)
    phase: str = "queued"
    step: int = 0
    timers: list = field(default_factory=list, repr=False)
    change_to: tuple[int, str] | None = None
    changed: bool = False
    vends: int = 0  # items dropped for this customer (a multi-vend customer may get a second)

    def wait(self, timeout: float) -> str | None:
        self.done.wait(timeout)
        return self.outcome
