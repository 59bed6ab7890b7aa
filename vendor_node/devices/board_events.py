"""The events BoardLink.poll() returns: what the vending machine told us through the MDB adapter.

Why separate: the purchase loop, the simulator's tests and the protocol all share this vocabulary;
board.py re-exports every name, so ``from vendor_node.devices.board import VendRequest`` keeps working.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class BoardEvent:
    """Something the vending machine told us through the adapter."""


@dataclass(frozen=True)
class ReaderEnabled(BoardEvent):
    """The machine enabled our reader: customers can pay with us."""


@dataclass(frozen=True)
class ReaderDisabled(BoardEvent):
    state: str  # "inactive" | "disabled" | "off"


@dataclass(frozen=True)
class SessionStarted(BoardEvent):
    funds_cents: int


@dataclass(frozen=True)
class VendRequest(BoardEvent):
    """The machine asks for ``price_cents`` for ``item``.

    ``seq`` numbers the requests this link has seen, so an approval is bound to the one it answers: a
    request that changed since (same or other price) has another number. Not part of equality.
    """

    price_cents: int
    item: str
    seq: int = field(default=0, compare=False)


@dataclass(frozen=True)
class UnreadableVendRequest(BoardEvent):
    """A vend request whose price was not in the configured format: BoardLink already denied it."""

    line: str
    reason: str


@dataclass(frozen=True)
class VendSucceeded(BoardEvent):
    """The item dropped: the one outcome that charges.

    ``stray`` is True when no approval of this link was open (e.g. a late success of an earlier,
    timed-out session): it is not the outcome of the current request. Not part of equality.
    """

    stray: bool = field(default=False, compare=False)


@dataclass(frozen=True)
class VendFailed(BoardEvent):
    code: str  # e.g. "VEND 3": failed to dispense


@dataclass(frozen=True)
class SessionCancelled(BoardEvent):
    """The customer or the machine cancelled the pending vend (c,ERR,VEND 1)."""


@dataclass(frozen=True)
class SessionComplete(BoardEvent):
    """The session is over and the reader is enabled again.

    ``interrupted`` is "vend_requested" or "vend_approved" when it ended with no outcome line for
    an open vend (an approved one then has an unknown outcome), otherwise None.
    """

    interrupted: str | None = None


@dataclass(frozen=True)
class AdapterReset(BoardEvent):
    """The machine reset the reader; ``interrupted`` names the session stage that was lost, if any."""

    interrupted: str | None = None


@dataclass(frozen=True)
class CommandRefused(BoardEvent):
    command: str  # "START", "VEND", ...
    code: int


@dataclass(frozen=True)
class AdapterError(BoardEvent):
    message: str


@dataclass(frozen=True)
class RevalueRefused(BoardEvent):
    """The machine asked to put money back on the customer's "card"; refused on purpose (C,REVALUE,0):
    the unit holds no stored value, funds come only from the back office's signed bundles."""

    line: str


@dataclass(frozen=True)
class CashSale(BoardEvent):
    """The machine reported a sale paid in cash: not ours to charge; logged and otherwise ignored."""

    line: str


@dataclass(frozen=True)
class LinkRestored(BoardEvent):
    """The port was reopened and the reader re-synchronised (C,0 then C,1 unless it was disabled).

    ``interrupted`` is the session stage open when the link was lost ("session", "vend_requested",
    "vend_approved") or None. After "vend_approved" the outcome line may have been lost: keep
    polling for VendSucceeded/VendFailed up to the outcome timeout, then record the outcome unknown.
    """

    interrupted: str | None
    vend: VendRequest | None
    approved_cents: int | None
