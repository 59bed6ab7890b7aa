"""Offline authorization, like a card terminal's floor limits, and the abuse cool-down.

A purchase is approved only within every limit at once: the employee's funds as
of their bundle less this unit's charges with a journal seq after the bundle's
position (the office's ledger already has the earlier ones; by seq, never by
wall clock) and its approvals in flight, the
per-purchase cap, the daily cap since local midnight, and the unit's own cap on
charges the back office has not acknowledged yet. A refusal names the limit hit.
The store's data comes from accounts.AccountStore; the money from the journal.
"""
from __future__ import annotations

import json
import logging
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from .storage import write_file_atomically

log = logging.getLogger("vendor_node.accounts")  # the store's logger, as before the split

MESSAGES = {
    "ok": "Approved",
    "unknown_employee": "Account not found",
    "suspended": "Account suspended",
    "bundle_too_old": "Out of service: accounts out of date",
    "insufficient_funds": "Not enough funds",
    "per_purchase_cap": "Over the per-purchase limit",
    "daily_limit": "Daily limit reached",
    "unit_offline_cap": "Machine offline limit reached",
}


@dataclass(frozen=True)
class Authorization:
    approved: bool
    reason_code: str
    message: str
    employee_id: str
    display_name: str
    funds_left_cents: int


def _local_midnight(now: float) -> float:
    return datetime.fromtimestamp(now).replace(hour=0, minute=0, second=0, microsecond=0).timestamp()


def committed_after_seq(journal, employee_id: str, after_seq: int) -> int:
    """What funds must count: this unit's charges with seq > ``after_seq`` (the office has the rest), every
    approval in flight and every outcome-unknown approval awaiting review (either may still be charged)."""
    charged = journal.charged_after_seq_cents(employee_id, after_seq)
    held = journal.conn.execute(
        "SELECT COALESCE(SUM(j.amount_cents), 0) FROM journal_open o JOIN journal j ON j.seq = o.seq "
        "WHERE j.employee_id = ? AND o.state IN ('approved', 'unknown')", (employee_id,)).fetchone()[0]
    return charged + held


def out_of_service_reason(store, now: float | None = None) -> str | None:
    """Why ``store`` can approve no purchase at all right now, or None (judged on the journal's trusted time)."""
    bundle = store.current_bundle()
    if bundle is None:
        return "no account bundle imported"
    if now is None:  # never earlier than when this bundle was applied either
        now = max(store.journal.trusted_now(), bundle.applied_at)
    max_age_h = store.policy()["max_offline_age_h"]
    age_h = (now - bundle.created) / 3600.0
    if age_h > max_age_h:
        return f"account bundle v{bundle.version} is {age_h:.0f} h old (at most {max_age_h:g} h offline)"
    if now >= bundle.expires:
        return f"account bundle v{bundle.version} expired"
    return None


def decide(store, employee_id: str, price_cents: int | None, now: float | None) -> Authorization:
    """Approve ``price_cents`` (None: just say how much is spendable) against every floor limit.

    Day caps and the bundle's age are judged on ``journal.trusted_now()``: a clock stepped back after a
    reboot neither reopens today's cap nor makes an old bundle young; funds never depend on the clock.
    """
    now = store.journal.trusted_now() if now is None else now
    emp = store.employee(employee_id)
    if emp is None or emp.status == "deleted":
        return answer("unknown_employee", employee_id, "", 0)
    if emp.status != "active":
        return answer("suspended", employee_id, emp.display_name, 0)
    if store.out_of_service_reason(now) is not None:
        return answer("bundle_too_old", employee_id, emp.display_name, 0)
    policy = store.policy()
    journal = store.journal
    # committed = charged + approved-but-unsettled: an approval in flight is already spent
    funds_left = emp.funds_cents - committed_after_seq(journal, employee_id, emp.funds_after_seq)
    day_cap = policy["per_day_cap_cents"] if emp.per_day_cap_cents is None else emp.per_day_cap_cents
    day_left = day_cap - journal.committed_cents(employee_id, _local_midnight(now))
    unsettled = journal.open_approvals() + journal.unknown_outcomes()
    unit_left = (policy["unsynced_total_cap_cents"] - journal.unsynced_total_cents()
                 - sum(a.amount_cents for a in unsettled))
    limits = [("insufficient_funds", funds_left), ("per_purchase_cap", emp.per_purchase_cap_cents),
              ("daily_limit", day_left), ("unit_offline_cap", unit_left)]
    spendable = max(0, min(v for _, v in limits if v is not None))
    need = 1 if price_cents is None else price_cents
    for code, left in limits:
        if left is not None and need > left:
            return answer(code, employee_id, emp.display_name, spendable)
    return answer("ok", employee_id, emp.display_name, spendable)


def answer(code, employee_id, name, funds_left) -> Authorization:
    if code != "ok":
        log.info("refused %s: %s (%s)", employee_id, code, MESSAGES[code])
    return Authorization(approved=code == "ok", reason_code=code, message=MESSAGES[code],
                         employee_id=employee_id, display_name=name, funds_left_cents=funds_left)


class AbuseGuard:
    """After ``max_failures`` unknown hands or refusals within ``window_s``, cool down for ``cooldown_s``.

    The window slides over failures alone: a success in between clears nothing, or an attacker could
    interleave one paying colleague with every few tries of a stolen palm image.

    Takes ``cfg.abuse`` (or the whole Config); times are ``time.monotonic()``. With ``state_file`` the
    recent failures and a running cool-down survive a restart (as wall-clock times), so pulling the
    plug is no way to try hands at speed; a clock that jumps can never stretch a cool-down past
    ``cooldown_s``. An unreadable state file is logged and ignored: the guard starts fresh.
    """

    def __init__(self, settings, state_file: Path | str | None = None):
        settings = getattr(settings, "abuse", settings)
        self.max_failures = max(1, settings.max_failures)
        self.window_s = settings.window_s
        self.cooldown_s = settings.cooldown_s
        self._failures: deque[float] = deque()
        self._cool_until = float("-inf")
        self.state_file = Path(state_file) if state_file is not None else None
        if self.state_file is not None:
            self._restore()

    def _restore(self) -> None:
        try:
            saved = json.loads(self.state_file.read_text(encoding="utf-8"))
            wall_now, mono_now = time.time(), time.monotonic()
            for at in saved.get("failures", []):
                age = wall_now - float(at)
                if 0 <= age < self.window_s:
                    self._failures.append(mono_now - age)
            left = min(float(saved.get("cool_until", 0)) - wall_now, self.cooldown_s)
            if left > 0:
                self._cool_until = mono_now + left
                log.warning("cool-down from before the restart: %.0f s left", left)
        except FileNotFoundError:
            return
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            log.warning("%s: abuse state unreadable (%s); starting fresh", self.state_file, exc)

    def _save(self, now: float) -> None:
        if self.state_file is None:
            return
        to_wall = time.time() - now  # monotonic -> wall clock at this instant
        state = {"failures": [to_wall + t for t in self._failures],
                 "cool_until": to_wall + self._cool_until if self._cool_until > now else 0}
        try:
            write_file_atomically(self.state_file, json.dumps(state).encode())
        except OSError as exc:
            log.warning("%s: cannot save the abuse state: %s", self.state_file, exc)

    def record_failure(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._failures.append(now)
        while self._failures and self._failures[0] <= now - self.window_s:
            self._failures.popleft()
        if len(self._failures) >= self.max_failures:
            self._cool_until = now + self.cooldown_s
            self._failures.clear()
            log.warning("%d failures within %.0f s: cooling down for %.0f s", self.max_failures, self.window_s,
                        self.cooldown_s)
        self._save(now)

    def cooldown_left(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        return max(0.0, self._cool_until - now)
