"""`vendor-node bench template-guard`: renewing the fleet's template guard secret on a 10,000-template unit.

Target: under 5 s for the whole renewal as `vendor-node keys renew-template-guard` runs it (open every sealed
template, re-transform, reseal, one transaction, scrub, replace the key), and recognition scores unchanged.
"""
from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from .figures import record

TEMPLATES = 10_000
TARGET_S = 5.0


def random_templates(grid, count: int, feature_id: int, seed: int = 7) -> list[bytes]:
    """Valid clear templates with random codes (speed only; the score check below uses drawn hands)."""
    from ..hand.recognition import Template

    rng = np.random.default_rng(seed)
    return [Template(rng.integers(0, 6, grid).astype(np.uint8), rng.random(grid) < 0.8,
                     rng.random(23).astype(np.float32), 3, feature_id).to_bytes() for _ in range(count)]


def random_embedding_templates(count: int, seed: int = 7) -> list[bytes]:
    """Valid clear v2 templates of random int8 embeddings (152 bytes each)."""
    from ..hand.templates import EmbeddingTemplate, model_tag

    rng = np.random.default_rng(seed)
    vectors = np.clip(np.round(rng.normal(0, 11, (count, 128))), -127, 127).astype(np.int8)
    return [EmbeddingTemplate(v, model_tag("palm-embed-1"), 3).to_bytes() for v in vectors]


def renew_store_seconds(clear: list[bytes], old, new, runs: int) -> list[float]:
    """Seconds to renew a unit store holding ``clear`` (sealed, under ``old``) to ``new``, as the CLI does it."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from ..config import Config
    from ..money.accounts import AccountStore
    from ..money.bundle import TEMPLATE_TRANSPORT_PURPOSE, Bundle, EmployeeRecord, TemplateRecord, encode_bundle
    from ..money.keys import KeyStore, TemplateCipher, public_key_to_pem
    from ..unit.keysource import renew_templates

    signer, template_key = Ed25519PrivateKey.generate(), os.urandom(32)
    transport = TemplateCipher(template_key, TEMPLATE_TRANSPORT_PURPOSE)
    now = time.time()
    staff = [EmployeeRecord(f"E{i:05d}", f"Employee {i}", funds_cents=1000) for i in range(len(clear))]
    records = [TemplateRecord(e.id, transport.seal(e.id, old.protect(t)), "consent-1", now)
               for e, t in zip(staff, clear)]
    data = encode_bundle(Bundle(kind="snapshot", version=1, created=now, expires=now + 86400, policy={},
                                unit_id=Config().unit.unit_id, employees=staff, templates=records), signer)
    seconds = []
    with tempfile.TemporaryDirectory(prefix="bench-guard-") as tmp:
        (Path(tmp) / "b.vnb").write_bytes(data)
        for run_index in range(runs):
            unit_cfg = Config().replace(unit={"state_dir": Path(tmp) / f"state{run_index}"})
            keys = KeyStore.from_config(unit_cfg)
            keys.pin_fleet_public_key(public_key_to_pem(signer.public_key()))
            keys.install_fleet_template_key(template_key)
            with AccountStore.open(unit_cfg) as store:
                store.import_bundle(Path(tmp) / "b.vnb")
                t0 = time.perf_counter()
                count = store.retransform_templates(lambda templates: renew_templates(templates, old, new))
                keys.replace_template_guard_key(os.urandom(32))  # the CLI's last step (a key file write)
                seconds.append(time.perf_counter() - t0)
                stored = store.templates()
            if count != len(clear) or any(new.reveal(stored[e.id]) != t for e, t in zip(staff[:200], clear)):
                raise RuntimeError("renewal changed a template's content")
    return seconds


def run(args, cfg, runs: int = 3) -> int:
    from ..hand.recognition import Gallery, Recognizer
    from ..hand.template_guard import TemplateGuard
    from ..sim.drawn_hands import draw_hand
    from ..unit.keysource import renew_templates

    recognizer = Recognizer.from_config(cfg)
    old, new = TemplateGuard(os.urandom(32)), TemplateGuard(os.urandom(32))
    codes = random_templates(recognizer.grid, TEMPLATES, recognizer.feature_id)
    embeddings = random_embedding_templates(TEMPLATES)
    print(f"{TEMPLATES} guarded templates in a unit store, palm codes ({len(codes[0])} bytes clear) and "
          f"embeddings ({len(embeddings[0])} bytes); {runs} runs each")
    seconds = {"palm codes": renew_store_seconds(codes, old, new, runs),
               "embeddings": renew_store_seconds(embeddings, old, new, runs)}

    people = range(1, 9)
    enrolled = {f"p{p}": recognizer.enroll([draw_hand(p, 0), draw_hand(p, 1)]).template for p in people}
    probes = [recognizer.features(draw_hand(p, 7)) for p in people]
    before = recognizer.score_matrix(probes, Gallery.from_templates(enrolled))
    recognizer.guard = old
    under_old = {k: old.protect(t) for k, t in enrolled.items()}
    renewed = dict(zip(under_old, renew_templates(list(under_old.values()), old, new)))
    recognizer.guard = new
    after = recognizer.score_matrix(probes, Gallery.from_templates(renewed))
    same = bool(np.array_equal(before, after))
    latency = _identify_latency_ms(recognizer, new, probes[0])
    rows = [row for kind, runs_s in seconds.items()
            for row in ((f"renew {TEMPLATES} {kind}, median", statistics.median(runs_s), TARGET_S),
                        (f"renew {TEMPLATES} {kind}, worst run", max(runs_s), TARGET_S))]
    print(f"{'measure':50} {'value':>9} {'target':>8} {'ratio':>6}")
    for name, value, target in rows:
        record(name, value, "s", target)
        print(f"{name:50} {value:8.2f}s {target:7.1f}s {value / target:6.2f}")
    print(f"drawn hands ({len(probes)} probes x {len(enrolled)} templates): scores clear vs after renewal "
          f"{'identical' if same else 'DIFFERENT'}; max |diff| {float(np.abs(before - after).max()):.6f}")
    print(f"identify against 1,000 templates, median of 30: clear {latency[0]:.1f} ms, guarded {latency[1]:.1f} ms "
          f"(the guard transforms every probe variant)")
    return 0 if same and max(max(v) for v in seconds.values()) < TARGET_S else 1


def _identify_latency_ms(recognizer, guard, probe, runs: int = 30) -> tuple[float, float]:
    from ..hand.recognition import Gallery

    clear = {f"e{i}": t for i, t in enumerate(random_templates(recognizer.grid, 1000, recognizer.feature_id))}
    galleries = ((None, Gallery.from_templates(clear)),
                 (guard, Gallery.from_templates({k: guard.protect(t) for k, t in clear.items()})))
    out = []
    for with_guard, gallery in galleries:
        recognizer.guard = with_guard
        samples = []
        for _ in range(runs):
            t0 = time.perf_counter()
            recognizer.identify(probe, gallery)
            samples.append((time.perf_counter() - t0) * 1e3)
        out.append(statistics.median(samples))
    return out[0], out[1]
