"""The unit's money and its keys: accounts, offline authorization, signed bundles, the charging journal, the sync client.

Everything lives in the unit's one SQLite database (``storage``). Imports only ``vendor_node.errors``
and ``vendor_node.config`` from the package.
"""
from .accounts import AccountStore
from .authorize import AbuseGuard, Authorization
from .bundle import Bundle, read_bundle_file
from .journal import Journal
from .keys import KeyStore, TemplateCipher

__all__ = ["AccountStore", "AbuseGuard", "Authorization", "Bundle", "read_bundle_file", "Journal", "KeyStore",
           "TemplateCipher", "run_sync", "transport_from"]


def __getattr__(name: str):
    """The sync client on first use: it brings ssl and http.client (about 6 MB resident), which the unit's
    purchase loop never needs (the nightly sync is its own process)."""
    if name in ("run_sync", "transport_from"):
        from . import sync

        return getattr(sync, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
