"""The palm-code 1:N search: the fast kernels give exactly the reference distances, and the coarse-then-fine
search decides as the full alignment search over everyone does, in clear and guarded galleries."""
import dataclasses
import os
import types

import numpy as np
import pytest

from vendor_node.config import ASSETS_DIR
from vendor_node.hand import bit_search, palmcode
from vendor_node.hand.gallery import Gallery, PalmCodeBank, parse_template
from vendor_node.hand.model import Embedder
from vendor_node.hand.palm_matcher import PalmCodeMatcher
from vendor_node.hand.recognition import Recognizer
from vendor_node.hand.template_guard import TemplateGuard
from vendor_node.sim.drawn_hands import draw_hand
from vendor_node.sim.template_cache import FIRST_REGION_SEED, draw_palm_region, region_template

PEOPLE = range(1, 9)
PADS = 150  # drawn palm regions: the gallery is bigger than the shortlist, so the coarse pass must choose


def random_bits(rng, *shape):
    return rng.integers(0, 2 ** 63, size=shape, dtype=np.uint64) | rng.integers(0, 2, size=shape, dtype=np.uint64) << 63


@pytest.mark.parametrize("variants,entries", [(1, 700), (25, 300), (441, 7), (3, 1), (49, 9000)])
def test_fast_kernels_equal_the_reference(variants, entries):
    rng = np.random.default_rng(variants)
    p_planes, p_masks = random_bits(rng, variants, 3, 16), random_bits(rng, variants, 16)
    g_planes, g_masks = random_bits(rng, entries, 3, 16), random_bits(rng, entries, 16)
    g_masks[: entries // 3] &= random_bits(rng, entries // 3, 16) & random_bits(rng, entries // 3, 16)  # few shared
    min_bits = 250
    want = bit_search.variant_distances(p_planes, p_masks, g_planes, g_masks, min_bits)
    assert (want == 1.0).any() or entries < 3  # the too-few-shared-cells rule is exercised
    wide = bit_search.wide_distances(p_planes, p_masks, np.ascontiguousarray(g_planes.transpose(1, 2, 0)),
                                   np.ascontiguousarray(g_masks.T), min_bits, chunk=128)
    np.testing.assert_array_equal(wide, want)
    deep = bit_search.deep_distances(np.ascontiguousarray(p_planes.transpose(1, 2, 0)), np.ascontiguousarray(p_masks.T),
                                   g_planes, g_masks, min_bits, rows_at_once=3)
    np.testing.assert_array_equal(deep, want.min(axis=0))
    columns = np.sort(rng.choice(entries, size=max(1, entries // 3), replace=False))
    some = bit_search.wide_distances(p_planes, p_masks, np.ascontiguousarray(g_planes.transpose(1, 2, 0)),
                                   np.ascontiguousarray(g_masks.T), min_bits, chunk=128, columns=columns)
    np.testing.assert_array_equal(some, want[:, columns])


@pytest.mark.parametrize("threads", [2, 3, 4])
def test_a_pass_split_over_threads_gives_the_single_threads_figures(threads, monkeypatch):
    monkeypatch.setattr(bit_search, "SLICE_MIN", 50)
    rng = np.random.default_rng(threads)
    p_planes, p_masks = random_bits(rng, 9, 3, 16), random_bits(rng, 9, 16)
    g_planes_t, g_masks_t = random_bits(rng, 3, 16, 3001), random_bits(rng, 16, 3001)
    g_masks_t[:, ::3] &= random_bits(rng, 16, 1001)  # some entries share too few cells
    columns = np.sort(rng.choice(3001, size=777, replace=False))
    pool = bit_search.match_pool(threads)
    assert pool is bit_search.match_pool(threads) and pool.threads == threads  # one persistent pool per size
    for cols in (None, columns):
        one = bit_search.wide_distances(p_planes, p_masks, g_planes_t, g_masks_t, 250, chunk=256, columns=cols)
        split = bit_search.wide_distances(p_planes, p_masks, g_planes_t, g_masks_t, 250, chunk=256, columns=cols,
                                        pool=pool)
        np.testing.assert_array_equal(split, one)
    p_planes_t, p_masks_t = random_bits(rng, 3, 16, 441), random_bits(rng, 16, 441)
    g_planes, g_masks = random_bits(rng, 37, 3, 16), random_bits(rng, 37, 16)
    one = bit_search.deep_distances(p_planes_t, p_masks_t, g_planes, g_masks, 250)
    np.testing.assert_array_equal(bit_search.deep_distances(p_planes_t, p_masks_t, g_planes, g_masks, 250, pool=pool), one)
    assert bit_search.match_pool(1) is None and bit_search.match_threads(1) == 1
    assert 1 <= bit_search.match_threads(0) <= bit_search.MAX_THREADS


def _split_pass_in_child(queue) -> None:
    rng = np.random.default_rng(0)
    g_planes_t, g_masks_t = random_bits(rng, 3, 16, 400), random_bits(rng, 16, 400)
    p_planes, p_masks = random_bits(rng, 2, 3, 16), random_bits(rng, 2, 16)
    split = bit_search.wide_distances(p_planes, p_masks, g_planes_t, g_masks_t, 250, chunk=64,
                                    pool=bit_search.match_pool(2))
    queue.put(bool(np.array_equal(split, bit_search.wide_distances(p_planes, p_masks, g_planes_t, g_masks_t, 250))))


def test_a_forked_child_splits_passes_over_threads_of_its_own(monkeypatch):
    """A pool made before a fork (the template cache's workers fork) has no threads in the child: not used."""
    import multiprocessing

    monkeypatch.setattr(bit_search, "SLICE_MIN", 50)
    monkeypatch.setattr(bit_search, "SMALL_PASS", 0)
    bit_search.match_pool(2).executor.submit(int).result()  # the parent's pool has its thread
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_split_pass_in_child, args=(queue,))
    child.start()
    assert queue.get(timeout=120) is True
    child.join(timeout=60)
    assert child.exitcode == 0


def test_np_quantile_is_reproduced_bit_for_bit():
    rng = np.random.default_rng(5)
    for trial in range(3000):
        values = rng.normal(size=int(rng.integers(1, 1200))).astype(np.float32)
        if trial % 3 == 0:
            values = np.round(values * 8) / 8  # ties
        q = (0.15, 0.0, 1.0, 0.5, 0.37)[trial % 5]
        want, got = np.quantile(values, q), palmcode.quantile(values, q)
        assert want == got and np.asarray(want).dtype == np.asarray(got).dtype


def test_the_bank_keeps_rows_in_step_when_employees_come_and_go():
    recognizer = Recognizer(Embedder.load(ASSETS_DIR / "palm-gabor-1"))
    templates = {f"r{k}": region_template(recognizer, FIRST_REGION_SEED + k) for k in range(5)}
    gallery = Gallery.from_templates(templates)
    gallery.remove("r1")
    gallery.add("r9", templates["r1"])
    bank = gallery.codes
    assert bank.ids == ["r0", "r2", "r3", "r4", "r9"]
    for employee_id in bank.ids:
        t = parse_template(templates[employee_id if employee_id != "r9" else "r1"])
        row = bank.row(employee_id)
        assert np.array_equal(bank.planes[row], palmcode.pack_cells(t.bit_planes()))
        assert np.array_equal(bank.masks[row], palmcode.pack_cells(t.valid[None])[0])
    planes, masks = bank.rows(np.array([4, 0]))
    assert np.array_equal(planes, bank.planes[[4, 0]]) and np.array_equal(masks, bank.masks[[4, 0]])


@pytest.fixture(scope="module")
def office():
    """Drawn employees (two frames enrolled, later frames presented) among drawn palm regions."""
    recognizer = Recognizer(Embedder.load(ASSETS_DIR / "palm-gabor-1"))
    templates = {f"p{p}": recognizer.enroll([draw_hand(p, s) for s in (0, 1)]).template for p in PEOPLE}
    templates.update({f"pad{k}": region_template(recognizer, FIRST_REGION_SEED + k) for k in range(PADS)})
    probes = [recognizer.features(draw_hand(p, s)) for p in PEOPLE for s in (2, 5)]
    probes += [recognizer.features(draw_hand(500 + k, 3)) for k in range(3)]  # strangers
    probes += [recognizer.features_from_roi(draw_palm_region(FIRST_REGION_SEED + 7))]  # a pad's own region
    return types.SimpleNamespace(recognizer=recognizer, templates=templates, probes=probes)


SIFTS = {  # None: the manifest's passes (the drawn office is smaller than its sift keeps)
    "no sift": None, "square, all words": {"sift_word_step": 1, "coarse_first_step": 0},
    "square, every 2nd word": {"sift_word_step": 2, "coarse_first_step": 0},
    "every 2nd word, coarse pass in two stages": {"sift_word_step": 2, "coarse_first_step": 2, "coarse_first_keep": 36},
}
SAME_BEST = ("no sift", "square, all words")  # the shortlist holds everyone's best, strangers' too


@pytest.mark.parametrize("guarded", [False, True])
@pytest.mark.parametrize("sift", list(SIFTS))
def test_the_coarse_pass_decides_as_the_full_search(office, guarded, sift, monkeypatch):
    recognizer = office.recognizer
    matcher = recognizer.active
    assert isinstance(matcher, PalmCodeMatcher) and matcher.params.candidates < len(office.templates)
    if SIFTS[sift] is not None:  # the sift keeps 40 of the gallery for the coarse pass (at the unit: 1,000 or a tenth)
        matcher = PalmCodeMatcher(matcher.embedder, dataclasses.replace(matcher.params, sift_keep=40,
                                                                        sift_fraction=0.0, **SIFTS[sift]))
        monkeypatch.setattr(recognizer, "active", matcher)
        monkeypatch.setattr(recognizer, "matchers", [matcher])
        monkeypatch.setattr(recognizer, "deciders", [matcher])
    guard = TemplateGuard(os.urandom(32)) if guarded else None
    gallery = Gallery.from_templates({k: guard.protect(t) if guard else t for k, t in office.templates.items()})
    everyone = PalmCodeMatcher(matcher.embedder, dataclasses.replace(matcher.params, candidates=10 ** 6))
    named = 0
    recognizer.guard = guard
    try:
        for probe in office.probes:
            row, best, runner_up = matcher.best_two(probe, gallery.codes, guard)
            full = everyone.scores(probe, gallery.codes, guard)
            if sift in SAME_BEST or full.max() >= recognizer.threshold:
                assert row == int(np.argmax(full)) and best == full.max()
            else:  # a sift on half the words may shortlist another impostor for a stranger: still nobody
                assert best <= full.max() < recognizer.threshold
            assert runner_up <= np.sort(full)[-2] + 1e-7  # the best of the shortlist's others
            decided = recognizer.identify(probe, gallery)
            if decided.employee_id:
                named += 1
                assert decided.employee_id == gallery.codes.ids[int(np.argmax(full))]
    finally:
        recognizer.guard = None
    assert named >= len(PEOPLE)  # most presentations of the employees are recognised


@pytest.mark.parametrize("guarded", [False, True])
def test_a_threaded_matcher_decides_as_a_single_threaded_one(office, guarded, monkeypatch):
    monkeypatch.setattr(bit_search, "SLICE_MIN", 16)  # the drawn office is small: split it anyway
    monkeypatch.setattr(bit_search, "SMALL_PASS", 0)
    guard = TemplateGuard(os.urandom(32)) if guarded else None
    gallery = Gallery.from_templates({k: guard.protect(t) if guard else t for k, t in office.templates.items()})
    params = dataclasses.replace(office.recognizer.active.params, sift_keep=60, sift_fraction=0.0)
    one, four = (PalmCodeMatcher(office.recognizer.embedder, params, threads) for threads in (1, 4))
    assert one.threads == 1 and four.threads == 4
    for probe in office.probes:
        assert np.array_equal(four.candidates(probe, gallery.codes, guard), one.candidates(probe, gallery.codes, guard))
        assert four.best_two(probe, gallery.codes, guard) == one.best_two(probe, gallery.codes, guard)
        np.testing.assert_array_equal(four.scores(probe, gallery.codes, guard), one.scores(probe, gallery.codes, guard))


@pytest.mark.skipif(bit_search.native is None, reason="_bitkernel not built (python setup.py build_ext --inplace)")
@pytest.mark.parametrize("threads", [1, 4])
@pytest.mark.parametrize("guarded", [False, True])
def test_the_compiled_kernel_decides_as_numpy_on_drawn_galleries(office, guarded, threads, monkeypatch):
    """Sift, coarse pass and full search in C: the numpy path's exact scores, shortlists and decisions."""
    monkeypatch.setattr(bit_search, "SLICE_MIN", 16)
    guard = TemplateGuard(os.urandom(32)) if guarded else None
    gallery = Gallery.from_templates({k: guard.protect(t) if guard else t for k, t in office.templates.items()})
    for sift in ({"sift_keep": 60, "sift_fraction": 0.0, "sift_word_step": 2}, {}):
        matcher = PalmCodeMatcher(office.recognizer.embedder, dataclasses.replace(office.recognizer.active.params,
                                                                                  **sift), threads)
        compiled = [(matcher.candidates(p, gallery.codes, guard), matcher.best_two(p, gallery.codes, guard),
                     matcher.scores(p, gallery.codes, guard)) for p in office.probes]
        with monkeypatch.context() as numpy_only:
            numpy_only.setattr(bit_search, "native", None)
            for probe, (candidates, best_two, scores) in zip(office.probes, compiled):
                np.testing.assert_array_equal(candidates, matcher.candidates(probe, gallery.codes, guard))
                assert best_two == matcher.best_two(probe, gallery.codes, guard)
                np.testing.assert_array_equal(scores, matcher.scores(probe, gallery.codes, guard))


def test_a_probe_is_prepared_once_for_the_coarse_pass_and_the_full_search(office, monkeypatch):
    matcher = office.recognizer.active
    gallery = Gallery.from_templates(office.templates)
    calls = []
    real = palmcode.packed_variants
    monkeypatch.setattr(palmcode, "packed_variants", lambda *a: calls.append(1) or real(*a))
    probe = office.probes[0]
    matcher.best_two(probe, gallery.codes, None)
    matcher.best_two_among(probe, gallery.codes, np.arange(3), None)
    assert len(calls) == 1


def test_probe_variants_packed_in_a_guards_domain_equal_the_guards_transform(office):
    guard = TemplateGuard(os.urandom(32))
    probe, matcher = office.probes[0], office.recognizer.active
    shifts = palmcode.shifts(3)
    clear = palmcode.probe_variants(probe.codes, probe.valid, shifts, 3)
    order, xor = guard.layout(matcher.grid)
    direct = palmcode.probe_variants(probe.codes, probe.valid, shifts, 3, order, xor)
    protected = guard.protect_variants(clear[0], clear[1], matcher.grid)
    assert np.array_equal(direct[0], protected[0]) and np.array_equal(direct[1], protected[1])
    assert direct[2] == clear[2]


def test_probe_variants_are_the_probe_moved_cell_by_cell(office):
    probe = office.probes[1]
    planes, masks, what = palmcode.probe_variants(probe.codes, probe.valid, palmcode.shifts(3), len(probe.codes))
    for v in (0, 17, 60, len(what) - 1):
        r, dy, dx = what[v]
        mask = palmcode.pack_cells(palmcode.shift_cells(probe.valid[r], dy, dx, False)[None])[0]
        code = palmcode.shift_cells(probe.codes[r], dy, dx, 0)
        assert np.array_equal(masks[v], mask)
        assert np.array_equal(planes[v] & mask, palmcode.pack_cells(palmcode.johnson_planes(code)) & mask)


def test_competitive_code_strength_equals_the_sorted_responses():
    rng = np.random.default_rng(1)
    for trial in range(30):
        responses = rng.normal(size=(32, 32, 6)).astype(np.float32)
        if trial % 3 == 0:
            responses = np.round(responses * 4) / 4  # ties between the winner and the runner-up
        valid = rng.random((32, 32)) > 0.3
        ordered = np.sort(responses, axis=-1)
        strength = ordered[..., 1] - ordered[..., 0]
        code, kept = palmcode.competitive_code(responses, valid, 0.15)
        assert np.array_equal(code, np.argmin(responses, axis=-1))
        assert np.array_equal(kept, valid & (strength >= np.quantile(strength[valid], 0.15)))
    poses = rng.normal(size=(4, 32, 32, 6)).astype(np.float32)  # a probe's poses coded at once, each on its own
    valid = rng.random((4, 32, 32)) > 0.3
    valid[2] = False  # a pose with no palm left
    codes, kept = palmcode.competitive_code(poses, valid, 0.15)
    for k in range(4):
        code, each = palmcode.competitive_code(poses[k], valid[k], 0.15)
        assert np.array_equal(codes[k], code) and np.array_equal(kept[k], each)


def test_the_poses_coded_at_once_equal_each_pose_coded_alone(office):
    matcher = office.recognizer.active
    roi = draw_palm_region(FIRST_REGION_SEED + 3)
    probe = matcher.features_from_roi(roi, np.zeros(0, np.float32), 1.0, None, False)
    for k, (angle, zoom) in enumerate(matcher.params.poses()):
        turned = palmcode.rotate_roi(roi, angle, zoom)
        code, valid = palmcode.competitive_code(matcher.embedder.responses(turned),
                                                palmcode.valid_cells(turned, matcher.grid, matcher.params.mask_erode),
                                                matcher.params.fragile_fraction)
        assert np.array_equal(probe.codes[k], code) and np.array_equal(probe.valid[k], valid)


@pytest.mark.parametrize("guarded", [False, True])
def test_a_gallery_built_in_bulk_holds_what_each_template_says(office, guarded):
    guard = TemplateGuard(os.urandom(32)) if guarded else None
    templates = {k: guard.protect(t) if guard else t for k, t in office.templates.items()}
    odd = office.recognizer.enroll_features([office.probes[0]]).template  # another images-used count
    templates["odd"] = guard.protect(odd) if guard else odd
    bulk = Gallery.from_templates(templates).codes
    one_by_one = PalmCodeBank()
    for employee_id, blob in templates.items():
        one_by_one.extend([employee_id], [parse_template(blob)])
    assert bulk.ids == one_by_one.ids and bulk.guard_id == one_by_one.guard_id
    for name in ("planes", "masks", "feature_ids", "geometry"):
        np.testing.assert_array_equal(getattr(bulk, name), getattr(one_by_one, name))
    broken = dict(templates)
    blob = bytearray(broken["pad7"])
    blob[40] ^= 1
    broken["pad7"] = bytes(blob)
    with pytest.raises(Exception, match="pad7"):
        Gallery.from_templates(broken)


def test_the_winning_orientation_and_its_margin_are_numpys_argmin_and_partition():
    """palmcode.winners (one running scan) picks what np.argmin and np.partition pick, ties included."""
    rng = np.random.default_rng(9)
    dequantized = (rng.integers(-128, 128, (9, 32, 32, 6)).astype(np.float32) - 7) * np.float32(0.0044)
    for responses in (dequantized, np.round(dequantized * 40) / 40, rng.normal(size=(4, 5, 3)).astype(np.float32)):
        code, strength = palmcode.winners(responses)
        ordered = np.partition(responses, 1, axis=-1)
        np.testing.assert_array_equal(code, np.argmin(responses, axis=-1).astype(np.uint8))
        np.testing.assert_array_equal(strength, ordered[..., 1] - ordered[..., 0])
        assert code.dtype == np.uint8 and strength.dtype == responses.dtype
    ties = np.round(dequantized * 40) / 40
    assert (palmcode.winners(ties)[1] == 0).any()  # equal smallest responses are exercised
