"""One purchase as the loop sees it: its states, its record (one log line) and the words shown for it.

Shared by the purchase flows (service.py) and the unit's health side
(health.py), which settles approvals left open by a restart or a lost link.
"""
from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field


HAND_HINTS = {  # <= 32 characters: the machine's display (the camera looks up: nearer is lower)
    "no_hand": "Hold your hand flat over reader",
    "two_hands": "One hand only, please",
    "fingers_closed": "Spread your fingers a little",
    "cut_off": "Move your hand to the centre",
    "blurred": "Hold your hand still",
    "too_far": "Hold your hand a little lower",
    "too_close": "Hold your hand a little higher",
    "bad_image": "Hold your hand flat over reader",
}


def hand_hint(reason: str, fallback: str = "Hold your hand flat over reader") -> str:
    """What to tell a customer whose hand was refused for ``reason`` (preprocess.py's reasons)."""
    return HAND_HINTS.get(reason, fallback)


def first_name(display_name: str) -> str:
    return (display_name or "").split(" ")[0][:12] or "there"


class State(enum.Enum):
    IDLE = "idle"
    HAND_SEEN = "hand_seen"
    IDENTIFY = "identify"
    AUTHORIZE = "authorize"
    SESSION = "session"
    OUTCOME = "outcome"


def money(cents: int | None) -> str:
    return "-" if cents is None else f"{cents // 100}.{cents % 100:02d}"


@dataclass
class Purchase:
    """One customer's attempt; becomes one log line (no image, no template, no score)."""

    order: str  # "hand_first" | "selection_first"
    trigger_at: float | None = None
    employee_id: str | None = None
    display_name: str = ""
    session_id: str | None = None
    item: str | None = None
    price_cents: int | None = None
    approved: bool = False
    outcome: str = "abandoned"  # vended, failed, cancelled, timeout, refused, unknown, rejected, no_hand,
    reason: str = ""  #            busy, cooldown, outcome_unknown, out_of_service, interrupted
    attempts: int = 0
    trigger_to_board_ms: float | None = None  # IR trigger -> the approval written to the board
    request_to_approval_ms: float | None = None  # vend request -> approve_vend
    trigger_to_approve_vend_ms: float | None = None  # hand first: includes the customer choosing a snack
    started: float = field(default_factory=time.monotonic)
    charged: bool = False
    stages: dict = field(default_factory=dict)  # ms per step so far
    board_stages: dict = field(default_factory=dict)  # ... of the path trigger->board (for the Pi's budget)
    cpu_stages: dict = field(default_factory=dict)  # CPU ms of this thread per step: what a busy machine's
    _cpu_mark: float = field(default_factory=time.thread_time, repr=False)  # wall time hides (since the last step)

    def timed(self, stage: str, since: float) -> float:
        """Add the time since ``since`` to ``stage`` (and the thread's CPU time since the last step to its
        ``cpu_stages``); returns now (monotonic) for the next stage."""
        now, cpu = time.monotonic(), time.thread_time()
        self.stages[stage] = self.stages.get(stage, 0.0) + (now - since) * 1000
        self.cpu_stages[stage] = self.cpu_stages.get(stage, 0.0) + (cpu - self._cpu_mark) * 1000
        self._cpu_mark = cpu
        return now

    def line(self) -> str:
        shown_reason = self.reason if self.reason and self.reason != self.outcome else ""
        parts = [f"purchase {self.outcome}" + (f" ({shown_reason})" if shown_reason else ""),
                 self.order.replace("_", "-")]
        if self.employee_id:
            parts.append(f"employee {self.employee_id}")
        if self.item is not None:
            parts.append(f"item {self.item} {money(self.price_cents)}")
        if self.trigger_to_board_ms is not None:
            steps = " ".join(f"{name} {ms:.0f}" for name, ms in self.board_stages.items())
            parts.append(f"trigger->board {self.trigger_to_board_ms:.0f} ms" + (f" [{steps}]" if steps else ""))
        if self.request_to_approval_ms is not None:
            parts.append(f"request->approval {self.request_to_approval_ms:.0f} ms")
        if self.attempts > 1:
            parts.append(f"{self.attempts} presentations")
        parts.append(f"total {time.monotonic() - self.started:.1f} s")
        if self.session_id:
            parts.append(f"session {self.session_id[:8]}")
        return ", ".join(parts)
