"""Money and text in the MDB adapter's formats: prices as integer cents, safe display text.

Re-exported by board.py, so ``from vendor_node.devices.board import parse_price`` keeps working. The formats
and their sources are in docs/mdb-protocol.md.
"""
from __future__ import annotations

import re
import unicodedata
from decimal import Decimal, InvalidOperation

from ..errors import ProtocolError

DISPLAY_WIDTH = 32  # [P1]: the display request carries at most 32 characters
_DECIMAL_PRICE = re.compile(r"\d{1,7}(\.\d{1,2})?")
_CENTS_PRICE = re.compile(r"\d{1,9}")
_STRICT_DECIMAL_PRICE = re.compile(r"\d{1,7}\.\d{1,2}")
DECIMAL_PLACES = 2  # money is integer cents: "decimal" prices carry two places (mdb-decimal-places=2)


def adapter_decimal_places(price_format: str) -> int:
    """The adapter's ``mdb-decimal-places`` that makes it print prices in ``price_format``."""
    if price_format == "cents":
        return 0  # the bus's scaled integer, printed as is ("150"): an assumption, see docs/mdb-protocol.md
    if price_format == "decimal":
        return DECIMAL_PLACES
    raise ValueError(f"unknown price format {price_format!r}")


def parse_price(text: str, price_format: str = "decimal", *, strict: bool = False) -> int:
    """The adapter's price text as integer cents; ProtocolError when it is not a price.

    ``strict`` (what BoardLink uses): a "decimal" price must carry its decimal point and one or two
    decimals, as the adapter prints them once configured with ``mdb-decimal-places=2``, so "500" (a
    scaled integer from an adapter set up otherwise) or "1.000" (three places) is refused, never guessed.
    """
    text = text.strip()
    if price_format == "cents":
        if not _CENTS_PRICE.fullmatch(text):
            raise ProtocolError(f"price {text!r} is not a whole number of cents")
        return int(text)
    if price_format != "decimal":
        raise ValueError(f"unknown price format {price_format!r}")
    if strict and not _STRICT_DECIMAL_PRICE.fullmatch(text):
        raise ProtocolError(f"price {text!r} is not in the configured format (currency units with "
                            f"{DECIMAL_PLACES} decimal places)")
    if not _DECIMAL_PRICE.fullmatch(text):
        raise ProtocolError(f"price {text!r} is not a decimal amount with at most 2 decimal places")
    try:
        return int(Decimal(text) * 100)
    except InvalidOperation:  # pragma: no cover - the regex already rules this out
        raise ProtocolError(f"price {text!r} is not a number") from None


def format_price(cents: int, price_format: str = "decimal") -> str:
    """Integer cents as the adapter writes them ("1.50" or "150")."""
    if isinstance(cents, bool) or not isinstance(cents, int) or cents < 0:
        raise ValueError(f"an amount must be a non-negative whole number of cents, got {cents!r}")
    if price_format == "cents":
        return str(cents)
    return f"{cents // 100}.{cents % 100:02d}"


def display_text(text: str) -> str:
    """Text safe for one display request: printable ASCII on one line (no CR/LF), at most 32 characters."""
    ascii_text = unicodedata.normalize("NFKD", str(text)).encode("ascii", "ignore").decode("ascii")
    cleaned = "".join(ch if " " <= ch <= "~" else " " for ch in ascii_text)
    return " ".join(cleaned.split())[:DISPLAY_WIDTH]
