"""Templates of drawn employees, made once through the real enrollment path and kept outside any state folder.

Why: enrolling a drawn hand costs about a quarter of a second (two frames drawn, found, coded and agreed), so a
10,000-employee simulation would spend most of an hour before its first customer. The templates only depend on
the model and on the drawn people, so they are made once (on every core, with a progress bar) and cached in
``$VENDOR_NODE_CACHE_DIR`` (default ``$XDG_CACHE_HOME/vendor-node``, else ``~/.cache/vendor-node``) as
``templates-<model id>-hands<first seed>.npz``. Person ``k`` of the cache is drawn from seed ``first + k`` whatever
the office size, so a 100-employee run reuses the first 100 of a 10,000-employee cache, and a bigger run extends
it (saved as it goes: an interrupted build resumes). The templates are clear (unguarded); the simulated unit
guards them as it stores them, as its enrollment would.

A cache made by other code (a new template format, a changed hand finder) is detected, not trusted: the first
cached person is enrolled again and must give the same bytes, else the cache is rebuilt.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np

from ..errors import HandRejected

log = logging.getLogger("vendor_node.simulate")

CAMERA_SIZE = (640, 480)  # (width, height) of the simulated camera's frames
FIRST_PERSON_SEED = 1000  # the drawn employees of `simulate` (person k is seed FIRST_PERSON_SEED + k)
ENROLL_SAMPLES = (0, 1)  # the presentations an employee enrolls with; the others (2..7) are presented
PRESENT_SAMPLES = tuple(range(2, 8))
CHUNK = 50  # people per worker task
SAVE_EVERY = 1000  # templates between saves of a growing cache


def cache_dir() -> Path:
    """Where template caches live: never under a unit's state folder (deleting that must not cost an hour)."""
    if os.environ.get("VENDOR_NODE_CACHE_DIR"):
        return Path(os.environ["VENDOR_NODE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "vendor-node"


def model_cache_id(recognizer) -> str:
    """The digests of the models whose templates enrollment makes (the active one, and the shortlist model's
    when there is one: a template set), the matcher's code id and the landmark model placing the palm square
    (when shipped): a new model, code format or palm finding is a new cache."""
    manifest = recognizer.embedder.manifest
    entry = {"sha256": manifest.get("sha256"), "feature": getattr(recognizer, "feature_id", None)}
    shortlist = getattr(recognizer, "shortlist", None)
    if shortlist is not None:
        entry["shortlist_sha256"] = shortlist.matcher.embedder.manifest.get("sha256")
    landmarks = getattr(getattr(recognizer, "palm_finder", None), "landmarks", None)
    if landmarks is not None:  # the palm square is placed by the landmark model first: another enrollment
        entry["landmarks"] = [getattr(landmarks.reader, "manifest", {}).get("sha256"), repr(landmarks.fit),
                              getattr(recognizer.palm_finder, "order", "")]
    block = json.dumps(entry, sort_keys=True)
    return hashlib.sha256(block.encode()).hexdigest()[:16]


def cache_path(recognizer, first_seed: int = FIRST_PERSON_SEED) -> Path:
    return cache_dir() / f"templates-{model_cache_id(recognizer)}-hands{first_seed}.npz"


def enroll_drawn_person(recognizer, person_seed: int) -> bytes | None:
    """The clear template of one drawn person enrolled as at the unit (None: their drawn hand is refused)."""
    from .drawn_hands import draw_hand

    guard, recognizer.guard = recognizer.guard, None
    try:
        images = [draw_hand(person_seed, s, size=(CAMERA_SIZE[1], CAMERA_SIZE[0])) for s in ENROLL_SAMPLES]
        return recognizer.enroll(images).template
    except HandRejected as exc:
        log.info("drawn person %d left out: %s", person_seed, exc)
        return None
    finally:
        recognizer.guard = guard


class TemplateCache:
    """The cached templates of drawn people ``first_seed, first_seed + 1, ...`` (a refused person is b"")."""

    def __init__(self, path: Path, seeds: np.ndarray, blob: np.ndarray, offsets: np.ndarray):
        self.path, self.seeds, self.blob, self.offsets = path, seeds, blob, offsets

    @classmethod
    def load(cls, path: Path) -> "TemplateCache":
        empty = cls(path, np.zeros(0, np.int64), np.zeros(0, np.uint8), np.zeros(1, np.int64))
        if not path.is_file():
            return empty
        try:
            with np.load(path, allow_pickle=False) as data:
                return cls(path, data["seeds"], data["blob"], data["offsets"])
        except (OSError, ValueError, KeyError) as exc:
            log.warning("template cache %s unreadable (%s): made again", path, exc)
            return empty

    def __len__(self) -> int:
        return len(self.seeds)

    def template(self, k: int) -> bytes:
        return self.blob[self.offsets[k]:self.offsets[k + 1]].tobytes()

    def usable(self) -> int:
        return int(np.count_nonzero(np.diff(self.offsets)))

    def extend(self, seeds: list[int], templates: list[bytes | None]) -> None:
        lengths = np.array([len(t or b"") for t in templates], np.int64)
        self.seeds = np.concatenate([self.seeds, np.asarray(seeds, np.int64)])
        self.blob = np.concatenate([self.blob, np.frombuffer(b"".join(t or b"" for t in templates), np.uint8)])
        self.offsets = np.concatenate([self.offsets, self.offsets[-1] + np.cumsum(lengths)])

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp.npz")
        np.savez(tmp, seeds=self.seeds, blob=self.blob, offsets=self.offsets)
        tmp.replace(self.path)


def drawn_templates(cfg, recognizer, employees: int, first_seed: int = FIRST_PERSON_SEED, workers: int | None = None,
                    progress: bool = True) -> list[tuple[int, bytes]]:
    """(person seed, clear template) for ``employees`` drawn people whose hands enroll, from the cache,
    making (and saving) whatever it lacks."""
    path = cache_path(recognizer, first_seed)
    cache = TemplateCache.load(path)
    if len(cache) and cache.template(0) != (enroll_drawn_person(recognizer, int(cache.seeds[0])) or b""):
        log.warning("template cache %s was made by other code: made again", path)
        cache = TemplateCache(path, np.zeros(0, np.int64), np.zeros(0, np.uint8), np.zeros(1, np.int64))
    if cache.usable() < employees:
        _grow(cache, cfg, recognizer, employees, first_seed, workers, progress)
    out = []
    for k in range(len(cache)):
        template = cache.template(k)
        if template:
            out.append((int(cache.seeds[k]), template))
            if len(out) == employees:
                break
    return out


def _grow(cache: TemplateCache, cfg, recognizer, employees: int, first_seed: int, workers: int | None,
          progress: bool) -> None:
    """Enroll drawn people (in worker processes when there are many) until ``employees`` are usable."""
    missing = employees - cache.usable()
    # a few of a thousand drawn hands are refused (fingers drawn together, too little palm): ask for a margin
    wanted = missing + max(2, missing // 50)
    next_seed = first_seed + len(cache)
    seeds = list(range(next_seed, next_seed + wanted))
    workers = workers or min(len(os.sched_getaffinity(0)), max(1, wanted // CHUNK))
    bar = _bar(missing, f"enrolling {missing} drawn employees (cached in {cache.path.parent})", progress)
    log.info("template cache %s: %d usable, making %d more with %d worker(s)", cache.path, cache.usable(),
             wanted, workers)
    unsaved = bar_done = 0
    try:
        for chunk_seeds, templates in _enroll_chunks(cfg, recognizer, seeds, workers):
            cache.extend(chunk_seeds, templates)
            unsaved += len(chunk_seeds)
            bar.update(min(sum(1 for t in templates if t), missing - bar_done))
            bar_done += min(sum(1 for t in templates if t), missing - bar_done)
            if unsaved >= SAVE_EVERY:
                cache.save()
                unsaved = 0
            if cache.usable() >= employees:
                break
    finally:
        if unsaved:
            cache.save()
        bar.close()
    if cache.usable() < employees:  # rarer than 1 in 50 refused: draw more
        _grow(cache, cfg, recognizer, employees, first_seed, workers, progress)


def _enroll_chunks(cfg, recognizer, seeds: list[int], workers: int):
    chunks = [seeds[i:i + CHUNK] for i in range(0, len(seeds), CHUNK)]
    if workers <= 1:
        for chunk in chunks:
            yield chunk, [enroll_drawn_person(recognizer, s) for s in chunk]
        return
    import multiprocessing

    # spawn: the model runtime in the parent is not fork-safe; each worker loads the model once
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, initializer=_worker_init, initargs=(cfg,)) as pool:
        for chunk, templates in zip(chunks, pool.imap(_worker_enroll, chunks)):
            yield chunk, templates


_worker_recognizer = None


def _worker_init(cfg) -> None:
    global _worker_recognizer
    from ..hand.recognition import Recognizer

    os.nice(5)  # template making yields to whatever else runs on the machine
    _worker_recognizer = Recognizer.from_config(cfg)


def _worker_enroll(seeds: list[int]) -> list[bytes | None]:
    return [enroll_drawn_person(_worker_recognizer, s) for s in seeds]


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _bar(total: int, label: str, progress: bool):
    """A tqdm bar on stderr while the simulation prepares (tqdm comes with the eval/test extras)."""
    if not progress:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        print(f"{label}: no progress bar without tqdm (pip install tqdm)", file=sys.stderr, flush=True)
        return _NoBar()
    return tqdm(total=total, desc=label, unit="employee", file=sys.stderr, dynamic_ncols=True)
