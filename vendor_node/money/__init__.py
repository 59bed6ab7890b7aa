"""The unit's money and its keys: accounts, offline authorization, signed bundles, the charging journal, the sync client.

Everything lives in the unit's one SQLite database (``storage``). Imports only ``vendor_node.errors``
and ``vendor_node.config`` from the package.
"""
from .accounts import AccountStore
from .authorize import AbuseGuard, Authorization
from .bundle import Bundle, read_bundle_file
from .journal import Journal
from .keys import KeyStore, TemplateCipher
from .sync import run_sync, transport_from

__all__ = ["AccountStore", "AbuseGuard", "Authorization", "Bundle", "read_bundle_file", "Journal", "KeyStore",
           "TemplateCipher", "run_sync", "transport_from"]
