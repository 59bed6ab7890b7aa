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

Past ``REAL_PATH_MAX`` (10,000) employees the whole path would take hours here, so the rest are palm regions
drawn directly (``draw_palm_region``: principal lines and creases placed by the seed, at the unit's grey levels)
and coded by the real model as a one-image enrollment (``templates-<model id>-regions<first seed>.npz``): what is
skipped is the hand, the frame, the hand finding and the second image. They fill the gallery (memory, 1:N time,
impostor scores); nobody presents them (no drawn hand matches a region): ``is_region_seed`` tells them apart.
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
REAL_PATH_MAX = 10_000  # drawn employees enrolled through the whole path; beyond them, drawn palm regions
FIRST_REGION_SEED = 20_000_000  # person k of the region cache (far from every drawn hand's and stranger's seed)
REGION_CHUNK = 500
ROI_SIZE = 128
# The hand package's palm-finding source (what places the palm square in a frame): a change to any of them can move
# every drawn hand's square, so their text is part of the cache's id.
PALM_FINDING_MODULES = ("preprocess", "handshape", "hand_geometry", "frame_edge", "palm_circle", "palm_square",
                        "palm_finder", "area_shrink", "dim_parts", "outline_defects", "handedness", "landmarks")


def cache_dir() -> Path:
    """Where template caches live: never under a unit's state folder (deleting that must not cost an hour)."""
    if os.environ.get("VENDOR_NODE_CACHE_DIR"):
        return Path(os.environ["VENDOR_NODE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "vendor-node"


def palm_finding_digest() -> str:
    """sha256 of the palm-finding modules' source (PALM_FINDING_MODULES, in that order, each named)."""
    folder = Path(__file__).resolve().parent.parent / "hand"
    digest = hashlib.sha256()
    for name in PALM_FINDING_MODULES:
        digest.update(f"{name}\0".encode())
        digest.update((folder / f"{name}.py").read_bytes())
    return digest.hexdigest()


def model_cache_id(recognizer) -> str:
    """The digests of the models whose templates enrollment makes (the active one, and the shortlist model's
    when there is one: a template set), the matcher's code id, the landmark model placing the palm square
    (when shipped) and the palm-finding source: a new model, code format or palm finding is a new cache."""
    manifest = recognizer.embedder.manifest
    entry = {"sha256": manifest.get("sha256"), "feature": getattr(recognizer, "feature_id", None),
             "palm_finding": palm_finding_digest()}
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
    making (and saving) whatever it lacks. Past ``REAL_PATH_MAX`` the rest are drawn palm regions
    (:func:`region_templates`, seeds from ``FIRST_REGION_SEED``): they fill the gallery, nobody presents them."""
    real = drawn_hand_templates(cfg, recognizer, min(employees, REAL_PATH_MAX), first_seed, workers, progress)
    if employees <= REAL_PATH_MAX:
        return real
    return real + region_templates(cfg, recognizer, employees - len(real), workers=workers, progress=progress)


def is_region_seed(seed: int) -> bool:
    """Whether a drawn employee is a palm region only (no drawn hand matches their template)."""
    return seed >= FIRST_REGION_SEED


def is_region_person(key: str) -> bool:
    """Whether a simulated person (provision.SimPerson.key) is a drawn palm region: nobody to present."""
    return key.startswith("synthetic:") and is_region_seed(int(key.split(":", 1)[1]))


def drawn_hand_templates(cfg, recognizer, employees: int, first_seed: int = FIRST_PERSON_SEED,
                         workers: int | None = None, progress: bool = True) -> list[tuple[int, bytes]]:
    """The drawn people enrolled through the whole path (two frames drawn, found, coded and agreed)."""
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


def draw_palm_region(person_seed: int, size: int = ROI_SIZE) -> np.ndarray:
    """A palm region as the unit cuts it (uint8, mean 128, sd 40), drawn directly: three principal lines and
    20-35 creases (quadratic Bezier curves) where the seed puts them, mottling and skin grain. The
    hand, the frame, the hand finding and a second image are skipped: about 100x cheaper than a drawn hand."""
    import cv2

    rng = np.random.default_rng([int(person_seed), 271828])
    canvas = np.zeros((size, size), np.float32)
    t = np.linspace(0, 1, 24)[:, None]

    def curve(points, darkness: float, thickness: int) -> None:
        p = np.asarray(points, np.float64) * size
        bezier = (1 - t) ** 2 * p[0] + 2 * (1 - t) * t * p[1] + t ** 2 * p[2]
        cv2.polylines(canvas, [np.round(bezier * 4).astype(np.int32)], False, -darkness, thickness, cv2.LINE_AA,
                      shift=2)

    jitter = lambda: rng.normal(0, 0.08, 2)  # noqa: E731
    for start, middle, end in (((0.95, 0.2), (0.55, 0.15), (0.1, 0.3)), ((0.0, 0.35), (0.45, 0.45), (0.9, 0.6)),
                               ((0.1, 0.3), (0.25, 0.7), (0.4, 1.05))):  # heart, head and life lines
        curve([np.add(start, jitter()), np.add(middle, jitter()), np.add(end, jitter())], rng.uniform(35, 55),
              int(rng.integers(2, 4)))
    for _ in range(int(rng.integers(20, 36))):  # creases
        a = rng.uniform(0, 1, 2)
        d = rng.normal(0, 1, 2)
        d *= rng.uniform(0.08, 0.3) / (np.linalg.norm(d) + 1e-9)
        curve([a, a + d / 2 + rng.normal(0, 0.04, 2), a + d], rng.uniform(12, 28), int(rng.integers(1, 3)))
    canvas += 9.0 * cv2.resize(rng.normal(0, 1, (6, 6)).astype(np.float32), (size, size),
                               interpolation=cv2.INTER_CUBIC)
    canvas += cv2.GaussianBlur(rng.normal(0, 6, (size, size)).astype(np.float32), (0, 0), 1.0)
    canvas = cv2.GaussianBlur(canvas, (0, 0), 0.8)
    out = (canvas - canvas.mean()) * (40.0 / (float(canvas.std()) + 1e-3)) + 128.0
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def region_template(recognizer, person_seed: int) -> bytes:
    """The clear template of one drawn palm region, coded by the unit's models as at enrollment (one image)."""
    from ..hand.palm_matcher import PalmCodeMatcher

    roi = draw_palm_region(person_seed)
    guard, recognizer.guard = recognizer.guard, None
    try:
        if isinstance(recognizer.active, PalmCodeMatcher):  # one image enrolls from its pose as cut
            features = recognizer.active.features_from_roi(roi, np.zeros(0, np.float32), 1.0, None, True, poses=1)
        else:
            features = recognizer.features_from_roi(roi)
        return recognizer.enroll_features([features]).template
    finally:
        recognizer.guard = guard


def region_cache_path(recognizer) -> Path:
    return cache_dir() / f"templates-{model_cache_id(recognizer)}-regions{FIRST_REGION_SEED}.npz"


def region_templates(cfg, recognizer, count: int, workers: int | None = None,
                     progress: bool = True) -> list[tuple[int, bytes]]:
    """(seed, clear template) of ``count`` drawn palm regions, from their own cache, making what it lacks."""
    cache = TemplateCache.load(region_cache_path(recognizer))
    if len(cache) and cache.template(0) != region_template(recognizer, int(cache.seeds[0])):
        log.warning("template cache %s was made by other code: made again", cache.path)
        cache = TemplateCache(cache.path, np.zeros(0, np.int64), np.zeros(0, np.uint8), np.zeros(1, np.int64))
    missing = count - len(cache)
    if missing > 0:
        seeds = list(range(FIRST_REGION_SEED + len(cache), FIRST_REGION_SEED + count))
        workers = workers or min(len(os.sched_getaffinity(0)), max(1, missing // REGION_CHUNK))
        bar = _bar(missing, f"coding {missing} drawn palm regions (cached in {cache.path.parent})", progress)
        unsaved = 0
        try:
            for chunk_seeds, templates in _enroll_chunks(cfg, recognizer, seeds, workers, REGION_CHUNK,
                                                         _worker_regions, region_template):
                cache.extend(chunk_seeds, templates)
                bar.update(len(chunk_seeds))
                unsaved += len(chunk_seeds)
                if unsaved >= 10 * SAVE_EVERY:
                    cache.save()
                    unsaved = 0
        finally:
            if unsaved:
                cache.save()
            bar.close()
    return [(int(cache.seeds[k]), cache.template(k)) for k in range(count)]


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


def _enroll_chunks(cfg, recognizer, seeds: list[int], workers: int, size: int = CHUNK, task=None, make=None):
    task, make = task or _worker_enroll, make or enroll_drawn_person
    chunks = [seeds[i:i + size] for i in range(0, len(seeds), size)]
    if workers <= 1:
        for chunk in chunks:
            yield chunk, [make(recognizer, s) for s in chunk]
        return
    import multiprocessing

    # spawn: the model runtime in the parent is not fork-safe; each worker loads the model once
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, initializer=_worker_init, initargs=(cfg,)) as pool:
        for chunk, templates in zip(chunks, pool.imap(task, chunks)):
            yield chunk, templates


_worker_recognizer = None


def _worker_init(cfg) -> None:
    global _worker_recognizer
    from ..hand.recognition import Recognizer

    os.nice(5)  # template making yields to whatever else runs on the machine
    _worker_recognizer = Recognizer.from_config(cfg)


def _worker_enroll(seeds: list[int]) -> list[bytes | None]:
    return [enroll_drawn_person(_worker_recognizer, s) for s in seeds]


def _worker_regions(seeds: list[int]) -> list[bytes]:
    return [region_template(_worker_recognizer, s) for s in seeds]


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
