"""Score matrices of both models (palm codes and the learned embedding) over every pair of a set's images.

For ``scripts/measure_fusion.py``: with two capture sessions every session-1 image is a single-image template
(the unit's enrollment of one image) and every session-2 image a probe; with one session every image is both.
``pc[p, t]`` is the palm-code similarity with the unit's full alignment search (probe poses x
shifts), ``emb[p, t]`` the cosine of the int8 embeddings (the unit's embedding score). The matrices are cached
under ``--cache`` (outside the repository: they are derived from the photos), in row blocks, so a stopped run
resumes where it was. Tongji regions are brought to the unit's grey levels; whole-hand sets go through the
unit's own preprocessing (frames it refuses are counted, not scored).
"""
from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import numpy as np

from vendor_node.errors import HandRejected
from vendor_node.hand.dataset import load_dataset
from vendor_node.hand.embed_matcher import EmbeddingMatcher
from vendor_node.hand.evaluation_embedding import unit_levels
from vendor_node.hand.gallery import PalmCodeBank, parse_template
from vendor_node.hand.model import Embedder, embedding_scores
from vendor_node.hand.palm_matcher import PalmCodeMatcher
from vendor_node.images import read_grey

BLOCK = 50  # probe rows per cached block
_WORK: dict = {}  # what forked workers score against (set before the pool starts)


def _score_block(rows: tuple[int, int]) -> np.ndarray:
    coder, features, bank, probes = _WORK["coder"], _WORK["features"], _WORK["bank"], _WORK["probes"]
    return np.stack([coder.scores(features[probes[p]], bank, None) for p in range(*rows)]).astype(np.float32)


def score_items(name: str, items: list[tuple[str, int, np.ndarray]], cache: Path, assets: Path, workers: int,
                progress=print, embedding: str = "palm-embed-1") -> dict:
    """{probe_subjects, template_subjects, same_list, pc (P, T), emb (P, T)} for ``items`` = [(subject, session,
    roi)], cached by ``name`` (the embedding's scores by ``name`` and the ``embedding`` model's id)."""
    folder = cache / name
    folder.mkdir(parents=True, exist_ok=True)
    meta_path = folder / "meta.json"
    subjects, sessions = [s for s, _, _ in items], [int(k) for _, k, _ in items]
    if meta_path.exists() and json.loads(meta_path.read_text()) != {"subjects": subjects, "sessions": sessions}:
        raise SystemExit(f"{folder} holds scores of other images: remove it or give another --cache")
    meta_path.write_text(json.dumps({"subjects": subjects, "sessions": sessions}))
    two = len(set(sessions)) > 1
    templates = [i for i, k in enumerate(sessions) if k == min(sessions) or not two]
    probes = [i for i, k in enumerate(sessions) if k != min(sessions) or not two]
    coder = PalmCodeMatcher(Embedder.load(assets / "palm-gabor-1"))
    lister = EmbeddingMatcher(Embedder.load(assets / embedding))
    emb_path = folder / f"emb-{embedding}.npy"
    if not emb_path.exists():
        vectors = np.array([lister.features_from_roi(roi, None, 1.0, None, False).vector for _, _, roi in items])
        np.save(emb_path, np.stack([embedding_scores(vectors[p], vectors[templates]) for p in probes]).astype(np.float32))
    blocks = [(a, min(a + BLOCK, len(probes))) for a in range(0, len(probes), BLOCK)]
    todo = [b for b in blocks if not (folder / f"pc-{b[0]:05d}.npy").exists()]
    if todo:
        progress(f"{name}: palm codes of {len(items)} images ({len(probes)} probes x {len(templates)} templates), "
                 f"{len(todo)} of {len(blocks)} blocks to score")
        zero = np.zeros(0, np.float32)
        features = [coder.features_from_roi(roi, zero, 1.0, None, False) for _, _, roi in items]
        bank = PalmCodeBank()
        bank.extend([str(i) for i in templates],
                    [parse_template(coder.enroll_features([features[i]], 0.0, None).template) for i in templates])
        _WORK.update(coder=coder, features=features, bank=bank, probes=probes)
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            for done, (block, rows) in enumerate(zip(todo, pool.imap(_score_block, todo)), 1):
                np.save(folder / f"pc-{block[0]:05d}.npy", rows)
                progress(f"{name}: block {done}/{len(todo)}")
        _WORK.clear()
    pc = np.concatenate([np.load(folder / f"pc-{a:05d}.npy") for a, _ in blocks])
    return {"probe_subjects": [subjects[i] for i in probes], "template_subjects": [subjects[i] for i in templates],
            "same_list": not two, "pc": pc, "emb": np.load(emb_path)}


def tongji_items(data: Path, palms: set[str]) -> list[tuple[str, int, np.ndarray]]:
    return [(s.subject, int(s.session or 1), unit_levels(read_grey(s.path)))
            for s in load_dataset(data / "tongji_dev") if s.subject in palms]


def unit_path_items(data: Path, name: str, people: set[str]) -> tuple[list, int]:
    """Palm regions the unit's own preprocessing cuts from a whole-hand set's frames; and how many it refused."""
    from vendor_node.hand.preprocess import extract_hand

    items, refused = [], 0
    for sample in load_dataset(data / name):
        if sample.subject not in people:
            continue
        try:
            items.append((sample.subject, 1, extract_hand(read_grey(sample.path)).roi))
        except HandRejected:
            refused += 1
    return items, refused
