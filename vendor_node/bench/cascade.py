"""`bench recognition`, cascade part: the palm-code 1:N with the embedding's shortlist vs without, same run.

Why in the same run: on a busy machine wall-clock figures drift, the ratio of the two searches over the same
gallery and probes much less. The gallery is the drawn probes' own templates (both models, as enrollment
makes them) among filler employees (random palm codes and random embeddings): a search's cost depends on how
many templates it scores, and the fillers make sure the right answer has to be found among them.
"""
from __future__ import annotations

import time

import numpy as np

from .figures import record

SIZES = (1_000, 10_000)


def fillers(recognizer, count: int, rng: np.random.Generator) -> dict[str, bytes]:
    """Template sets (a random palm code, a random shortlist embedding), as the cascade's enrollment makes."""
    from ..hand.templates import EmbeddingTemplate, Template, TemplateSet, model_tag

    h, w = recognizer.grid
    lister = recognizer.shortlist.matcher
    out = {}
    for i in range(count):
        code = Template(rng.integers(0, 6, (h, w), dtype=np.uint8), rng.random((h, w)) < 0.8,
                        np.zeros(0, np.float32), 1, recognizer.feature_id).to_bytes()
        vector = np.clip(np.round(rng.normal(0, 11, lister.dim)), -127, 127).astype(np.int8)
        embedding = EmbeddingTemplate(vector, lister.model_tag).to_bytes()
        out[f"synthetic-{i:06d}"] = TemplateSet((code, embedding), model_tag(recognizer.model_id)).to_bytes()
    return out


def run(recognizer, frames: list, own: dict[str, bytes], sizes=SIZES) -> list[dict]:
    """Frame -> decision time with and without the shortlist at each gallery size; prints the table."""
    from ..hand.gallery import Gallery
    from ..hand.recognition import Recognizer

    plain = Recognizer(recognizer.embedder, recognizer.threshold, recognizer.margin, recognizer.params)
    rng = np.random.default_rng(2)
    rows = []
    pool = fillers(recognizer, max(sizes) - len(own), rng)
    names = list(pool)
    for size in sizes:
        gallery = Gallery.from_templates({**own, **{n: pool[n] for n in names[: size - len(own)]}})
        times = {"cascade": [], "palm codes": []}
        right = {"cascade": 0, "palm codes": 0}
        same = 0
        for p, frame in enumerate(frames):
            decided = {}
            for name, rec in (("cascade", recognizer), ("palm codes", plain)):
                start = time.perf_counter()
                decided[name] = rec.identify(rec.features(frame), gallery)
                times[name].append(time.perf_counter() - start)
                right[name] += decided[name].employee_id == f"person-{p}"
            same += decided["cascade"].employee_id == decided["palm codes"].employee_id
        row = {"size": size, "same": same, "probes": len(frames), "right": right,
               **{name: (1e3 * float(np.median(t)), 1e3 * float(np.percentile(t, 95))) for name, t in times.items()}}
        rows.append(row)
        record(f"frame->decision p95 at {size:,}, cascade (K={recognizer.shortlist.keep})", row["cascade"][1], "ms",
               None, median=row["cascade"][0], palm_codes_p95_ms=row["palm codes"][1],
               palm_codes_median_ms=row["palm codes"][0], speedup_p95=row["palm codes"][1] / row["cascade"][1],
               same_decision=same, probes=len(frames), found_right=right["cascade"],
               found_right_palm_codes=right["palm codes"])
    print(f"\ncascade: {recognizer.shortlist.model_id} keeps {recognizer.shortlist.keep}, {recognizer.model_id} "
          f"decides; frame -> decision (preprocess, both models, 1:N), drawn probes among filler employees:")
    print(f"{'employees':>10} {'cascade p50':>12} {'p95':>8} {'palm codes p50':>15} {'p95':>8} {'ratio p95':>10} "
          f"{'same payer':>11} {'right (cascade/full)':>21}")
    for r in rows:
        print(f"{r['size']:>10,} {r['cascade'][0]:12.1f} {r['cascade'][1]:8.1f} {r['palm codes'][0]:15.1f} "
              f"{r['palm codes'][1]:8.1f} {r['palm codes'][1] / r['cascade'][1]:10.1f} {r['same']:>7}/{r['probes']} "
              f"{r['right']['cascade']:>14}/{r['right']['palm codes']}")
    return rows
