"""A unit's side of the signed-request API, small and standard-library only: the load bench and the
office's tests use it to play units (the unit's own sync client lives in money/sync.py)."""
from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
import urllib.error
import urllib.request

from cryptography.hazmat.primitives import serialization

REQUEST_PREFIX = b"vendor-node-request-v1\n"


def raw_public_key(signing_key) -> bytes:
    return signing_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def fingerprint(signing_key) -> str:
    return hashlib.sha256(raw_public_key(signing_key)).hexdigest()


def signed_headers(signing_key, unit_id: str, method: str, path_with_query: str, body: bytes,
                   timestamp: int | None = None, nonce: str | None = None) -> dict[str, str]:
    timestamp = str(int(time.time()) if timestamp is None else timestamp)
    nonce = nonce or secrets.token_hex(16)
    message = REQUEST_PREFIX + "\n".join([method, path_with_query, timestamp, nonce,
                                          hashlib.sha256(body).hexdigest()]).encode()
    return {"X-VN-Unit": unit_id, "X-VN-Timestamp": timestamp, "X-VN-Nonce": nonce,
            "X-VN-Public-Key": base64.b64encode(raw_public_key(signing_key)).decode(),
            "X-VN-Signature": base64.b64encode(signing_key.sign(message)).decode()}


class UnitClient:
    """Signed requests for one unit against a running office (``base`` like http://127.0.0.1:8000)."""

    def __init__(self, base: str, unit_id: str, signing_key, timeout: float = 30.0):
        self.base, self.unit_id, self.key, self.timeout = base.rstrip("/"), unit_id, signing_key, timeout

    def request(self, method: str, what: str, body: bytes = b"", query: str = "") -> tuple[int, bytes]:
        path = f"/api/v1/units/{self.unit_id}/{what}" + (f"?{query}" if query else "")
        headers = signed_headers(self.key, self.unit_id, method, path, body)
        if body:
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.base + path, data=body if method == "POST" else None, method=method,
                                     headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as response:
                return response.status, response.read(64 * 1024 * 1024)
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(1024 * 1024)

    def post_json(self, what: str, obj) -> tuple[int, dict]:
        status, data = self.request("POST", what, json.dumps(obj).encode())
        return status, json.loads(data) if data else {}
