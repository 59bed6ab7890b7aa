"""AES-256-GCM sealing of one employee's template (storage form under the unit data key, transport form
under the fleet template key). Kept apart from keys.py so the key store stays short."""
from __future__ import annotations

import os

from ..errors import KeyFileError

SYMMETRIC_KEY_BYTES = 32
NONCE_BYTES = 12  # 96-bit random nonce, the GCM standard size
TAG_BYTES = 16


class TemplateCipher:
    """AES-256-GCM for templates: ``nonce || ciphertext+tag``, a fresh random nonce each time.

    The associated data is ``purpose | employee id``, so a sealed template moved to
    another employee's row, or from transport form into storage form, fails to open.
    """

    def __init__(self, key: bytes, purpose: bytes):
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        if len(key) != SYMMETRIC_KEY_BYTES:
            raise KeyFileError(f"a template key must be {SYMMETRIC_KEY_BYTES} bytes, got {len(key)}")
        self._aead = AESGCM(key)
        self._purpose = purpose + b"|"

    def seal(self, employee_id: str, plaintext: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plaintext, self._purpose + employee_id.encode("utf-8"))

    def open(self, employee_id: str, sealed: bytes) -> bytes:
        """The plaintext, or ``cryptography.exceptions.InvalidTag`` if key, employee or bytes differ."""
        from cryptography.exceptions import InvalidTag

        if len(sealed) < NONCE_BYTES + TAG_BYTES:
            raise InvalidTag()
        return self._aead.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:],
                                  self._purpose + employee_id.encode("utf-8"))
