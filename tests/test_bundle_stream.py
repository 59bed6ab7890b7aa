"""The streamed bundle reader: the same bundle and the same refusals as the in-memory reader, whatever the chunking,
and a file changed while it is applied leaves the store as it was."""
import base64
import json
import os
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from vendor_node.errors import BundleError
from vendor_node.money import bundle_stream
from vendor_node.money.bundle import HEADER, MAGIC, decode_bundle
from vendor_node.money.bundle_stream import read_bundle_streamed
from vendor_node.money.journal_schema import GENESIS_HASH

from test_accounts import STAFF, cfg, fleet, snapshot_of, store  # noqa: F401 (fixtures)

NOW = time.time()
SIGNER = Ed25519PrivateKey.generate()


def sealed_text(n: int = 64) -> str:
    return base64.b64encode(os.urandom(n)).decode()


def payload(**changes) -> dict:
    raw = {"format": 2, "unit_id": "unit-dev", "journal_position": {"seq": 0, "hash": GENESIS_HASH},
           "kind": "snapshot", "version": 3, "created": NOW, "expires": NOW + 86400, "policy": {"per_day_cap_cents": 500},
           "employees": [{"id": f"E{i}", "name": f"Name {i}", "status": "active", "funding": "prepaid",
                          "funds_cents": 1000 + i} for i in range(5)],
           "templates": [{"employee_id": f"E{i}", "sealed": sealed_text(), "consent_version": "c1",
                          "consented_at": NOW - 60} for i in range(3)],
           "deletions": ["X9"]}
    raw.update(changes)
    return raw


def signed_file(tmp_path, raw, name="b.vnb", text=None) -> tuple:
    body = (text if text is not None else json.dumps(raw)).encode("utf-8") if not isinstance(text, bytes) else text
    signed = MAGIC + HEADER.pack(len(body)) + body
    data = signed + SIGNER.sign(signed)
    path = tmp_path / name
    path.write_bytes(data)
    return path, data


def both(tmp_path, raw=None, text=None):
    """(in-memory result or error text, streamed result or error text), records as lists."""
    path, data = signed_file(tmp_path, raw, text=text)
    results = []
    for read in (lambda: decode_bundle(data, SIGNER.public_key(), str(path)),
                 lambda: read_bundle_streamed(path, SIGNER.public_key())):
        try:
            b = read()
        except BundleError as exc:
            results.append(str(exc))
            continue
        results.append({"employees": list(b.employees), "templates": list(b.templates), "deletions": b.deletions,
                        "revocations": b.template_revocations, "version": b.version, "kind": b.kind,
                        "base_version": b.base_version, "policy": b.policy, "unit_id": b.unit_id,
                        "position": b.journal_position, "sha256": b.sha256})
    return results


REFUSALS = {
    "duplicate employee": payload(employees=[{"id": "E1", "name": "A", "status": "active", "funding": "prepaid",
                                              "funds_cents": 1}] * 2),
    "template for deleted, deletions listed after templates": payload(deletions=["E1"], employees=[]),
    "revoked before consent, revocations after templates": payload(
        template_revocations=[{"employee_id": "E0", "revoked_at": NOW}]),
    "employees not a list": payload(employees={"id": "E1"}),
    "bad base64": payload(templates=[{"employee_id": "E0", "sealed": "!!", "consent_version": "c",
                                      "consented_at": 1.0}]),
    "format 1": payload(format=1),
    "delta without base": payload(kind="delta"),
    "unknown top field": payload(extra=1),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_streamed_refusals_match_the_in_memory_reader(tmp_path, case):
    in_memory, streamed = both(tmp_path, REFUSALS[case])
    assert isinstance(in_memory, str), in_memory
    assert streamed == in_memory


@pytest.mark.parametrize("chunk", [1, 3, 7, 4096])
def test_streamed_bundle_equals_the_in_memory_one_whatever_the_chunking(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(bundle_stream, "CHUNK_BYTES", chunk)
    raw = payload(kind="delta", template_revocations=[{"employee_id": "E4", "revoked_at": NOW - 3600}])
    raw["base_version"] = 2  # after the lists, as encode_bundle writes it; numbers cut at chunk ends
    in_memory, streamed = both(tmp_path, raw)
    assert isinstance(in_memory, dict) and streamed == in_memory
    assert len(in_memory["employees"]) == 5 and len(in_memory["templates"]) == 3


@pytest.mark.parametrize("text, fragment", [
    ('{"format": 2, "employees": [', "not valid JSON"),
    ('{"format": 2} []', "extra data after the payload"),
    (b'{"name": "\xff"}', "not valid JSON"),
    ('[' * 100_000 + ']' * 100_000, "not valid JSON|nests too deeply|expected"),
])
def test_broken_payloads_are_refused_by_name(tmp_path, text, fragment):
    path, _ = signed_file(tmp_path, None, text=text)
    with pytest.raises(BundleError, match=fragment):
        read_bundle_streamed(path, SIGNER.public_key())


def test_bad_signature_is_refused_before_any_parsing(tmp_path, monkeypatch):
    path, data = signed_file(tmp_path, payload())
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    monkeypatch.setattr(bundle_stream, "_scan", lambda bundle: pytest.fail("parsed an unverified file"))
    with pytest.raises(BundleError, match="bad signature"):
        read_bundle_streamed(path, SIGNER.public_key())


def test_a_file_changed_after_verification_is_refused_and_the_store_unchanged(store, fleet):  # noqa: F811
    store.import_bundle(fleet.bundle(1, STAFF, templates=[("E1", b"x" * 100)]))
    path = fleet.bundle(2, STAFF, templates=[("E1", b"y" * 100), ("E2", b"z" * 100)])
    before = snapshot_of(store)
    streamed = read_bundle_streamed(path, fleet.signer.public_key())
    data = bytearray(path.read_bytes())
    at = data.index(b'"Ann"')
    data[at + 1] = ord("B")  # same size, other bytes: only a re-read can see it
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="changed while it was read"):
        store.apply_bundle(streamed, source=str(path))
    assert snapshot_of(store) == before


def test_templates_revision_follows_every_template_change_and_only_those(store, fleet):  # noqa: F811
    revisions = [store.templates_revision()]

    def changed() -> bool:
        revisions.append(store.templates_revision())
        return revisions[-1] != revisions[-2]

    store.import_bundle(fleet.bundle(1, STAFF, templates=[("E1", b"x" * 100)]))
    assert changed()
    store.note_template_used("E1", now=time.time() + 7200)  # last-used time only: no gallery rebuild
    assert not changed()
    store.enroll("E2", b"y" * 100, "consent-1")
    assert changed()
    store.retransform_templates(lambda templates: [t[::-1] for t in templates])  # same rows, new bytes
    assert changed()
    store.unenroll("E2")
    assert changed()
    assert not changed()
