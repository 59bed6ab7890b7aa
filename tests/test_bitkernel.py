"""The compiled palm-code kernel (vendor_node/hand/_bitkernel.c) gives bit for bit the numpy kernels' distances,
along the gallery (sift, coarse pass, with and without chosen columns, on every 2nd word) and along the variants
(the full search), split over threads or not. Skipped only where the extension is not built, never in CI."""
import os

import numpy as np
import pytest

from vendor_node.hand import bit_search

needs_kernel = pytest.mark.skipif(bit_search.native is None, reason="_bitkernel not built "
                                  "(python setup.py build_ext --inplace)")


def random_bits(rng, *shape):
    return rng.integers(0, 2 ** 63, size=shape, dtype=np.uint64) | rng.integers(0, 2, size=shape, dtype=np.uint64) << 63


def test_ci_runs_the_compiled_kernel():
    """CI (.ci/run -> scripts/dev.sh, an editable install) must build it, or the tests below would all skip."""
    if os.environ.get("CI") == "true":
        assert bit_search.native is not None, "CI=true but vendor_node/hand/_bitkernel was not built"
    assert bit_search.KERNEL.startswith("compiled" if bit_search.native is not None else "numpy")


@pytest.fixture(params=["avx512", "portable"])
def kernel_loops(request):
    """Each test below runs with the AVX-512 loops (where this CPU has them) and with the portable ones."""
    if bit_search.native is None:
        pytest.skip("_bitkernel not built")
    kernel = bit_search.native  # numpy_only() hides it during a test
    if kernel.set_simd(request.param == "avx512") != request.param:
        kernel.set_simd(True)
        pytest.skip(f"this CPU has no {request.param} loops")
    yield request.param
    kernel.set_simd(True)


def numpy_only(monkeypatch):
    monkeypatch.setattr(bit_search, "native", None)


@needs_kernel
@pytest.mark.parametrize("variants,entries,words", [(1, 700, 16), (25, 300, 16), (441, 7, 16), (3, 1, 16),
                                                    (49, 9000, 16), (24, 2500, 5), (9, 130, 1),
                                                    (2, 8, 16), (5, 71, 3)])
def test_the_compiled_wide_pass_equals_numpys(variants, entries, words, monkeypatch, kernel_loops):
    rng = np.random.default_rng(variants * entries)
    p_planes, p_masks = random_bits(rng, variants, 3, words), random_bits(rng, variants, words)
    capacity = entries + 37  # a bank's arrays are longer than its live rows: the entries axis is a view
    g_planes_t, g_masks_t = random_bits(rng, 3, words, capacity), random_bits(rng, words, capacity)
    g_masks_t[:, : capacity // 3] &= random_bits(rng, words, capacity // 3)  # some share too few cells
    g_planes_t, g_masks_t = g_planes_t[:, :, :entries], g_masks_t[:, :entries]
    columns = np.sort(rng.choice(entries, size=max(1, entries // 3), replace=False))
    min_bits = 60 * words
    cases = [(p_planes, p_masks, g_planes_t, g_masks_t, cols) for cols in (None, columns)]
    if words > 1:  # the sift: every 2nd word of each plane, a strided view of the bank
        cases.append((p_planes[:, :, ::2], p_masks[:, ::2], g_planes_t[:, ::2], g_masks_t[::2], None))
    native = [bit_search.wide_distances(*case[:4], min_bits, columns=case[4]) for case in cases]
    numpy_only(monkeypatch)
    for case, got in zip(cases, native):
        want = bit_search.wide_distances(*case[:4], min_bits, chunk=512, columns=case[4])
        np.testing.assert_array_equal(got, want)
    assert (want == 1.0).any() or entries < 3  # the too-few-shared-cells rule is exercised


@needs_kernel
@pytest.mark.parametrize("variants,rows", [(441, 37), (1, 5), (24, 1), (16, 3), (23, 2)])
def test_the_compiled_full_search_equals_numpys(variants, rows, monkeypatch, kernel_loops):
    rng = np.random.default_rng(variants + rows)
    p_planes_t, p_masks_t = random_bits(rng, 3, 16, variants), random_bits(rng, 16, variants)
    g_planes, g_masks = random_bits(rng, rows, 3, 16), random_bits(rng, rows, 16)
    g_masks[::2] &= random_bits(rng, (rows + 1) // 2, 16)
    got = bit_search.deep_distances(p_planes_t, p_masks_t, g_planes, g_masks, 250)
    numpy_only(monkeypatch)
    np.testing.assert_array_equal(got, bit_search.deep_distances(p_planes_t, p_masks_t, g_planes, g_masks, 250))


@needs_kernel
@pytest.mark.parametrize("threads", [2, 4])
def test_the_compiled_kernel_split_over_threads_gives_the_same_figures(threads, monkeypatch, kernel_loops):
    monkeypatch.setattr(bit_search, "SLICE_MIN", 50)
    rng = np.random.default_rng(threads)
    p_planes, p_masks = random_bits(rng, 9, 3, 16), random_bits(rng, 9, 16)
    g_planes_t, g_masks_t = random_bits(rng, 3, 16, 3001), random_bits(rng, 16, 3001)
    columns = np.sort(rng.choice(3001, size=777, replace=False))
    pool = bit_search.match_pool(threads)
    p_planes_t, p_masks_t = random_bits(rng, 3, 16, 441), random_bits(rng, 16, 441)
    g_planes, g_masks = random_bits(rng, 37, 3, 16), random_bits(rng, 37, 16)
    split = [bit_search.wide_distances(p_planes, p_masks, g_planes_t, g_masks_t, 250, columns=cols, pool=pool)
             for cols in (None, columns)]
    split_deep = bit_search.deep_distances(p_planes_t, p_masks_t, g_planes, g_masks, 250, rows_at_once=2, pool=pool)
    numpy_only(monkeypatch)
    for cols, got in zip((None, columns), split):
        np.testing.assert_array_equal(got, bit_search.wide_distances(p_planes, p_masks, g_planes_t, g_masks_t, 250,
                                                                     columns=cols))
    np.testing.assert_array_equal(split_deep, bit_search.deep_distances(p_planes_t, p_masks_t, g_planes, g_masks, 250))


@needs_kernel
def test_bad_input_to_the_compiled_kernel_is_a_clear_error_not_a_crash():
    rng = np.random.default_rng(3)
    p_planes, p_masks = random_bits(rng, 2, 3, 16), random_bits(rng, 2, 16)
    g_planes_t, g_masks_t = random_bits(rng, 3, 16, 50), random_bits(rng, 16, 50)
    with pytest.raises(IndexError, match="column 50 outside the 50"):
        bit_search.wide_distances(p_planes, p_masks, g_planes_t, g_masks_t, 250, columns=np.array([3, 50]))
    with pytest.raises(ValueError, match="shapes disagree"):
        bit_search.wide_distances(p_planes[:, :, :8], p_masks[:, :8], g_planes_t, g_masks_t, 250)
    with pytest.raises(ValueError, match="shapes disagree"):
        bit_search.deep_distances(random_bits(rng, 3, 16, 4), random_bits(rng, 16, 4), random_bits(rng, 2, 3, 8),
                                  random_bits(rng, 2, 8), 250)


def test_selftest_names_the_kernel_that_runs(tmp_path, capsys):
    import json

    from vendor_node.cli.main import main

    main(["selftest", "--sim", "--json", "--state-dir", str(tmp_path)])  # unprovisioned: other checks fail
    check = next(c for c in json.loads(capsys.readouterr().out)["checks"] if c["name"] == "model")
    assert check["ok"] and f"palm-code 1:N kernel: {bit_search.KERNEL}" in check["detail"]


@needs_kernel
@pytest.mark.parametrize("guarded", [False, True])
def test_the_compiled_packing_equals_numpys(guarded, monkeypatch, kernel_loops):
    """palmcode.packed_variants: the compiled gather and packing gives numpy's bits, in a guard's order and XOR
    too, on a grid whose cells do not fill the last word."""
    from vendor_node.hand import palmcode

    rng = np.random.default_rng(guarded)
    for grid in ((32, 32), (10, 13)):
        codes = rng.integers(0, 6, size=(9,) + grid).astype(np.uint8)
        valid = rng.random((9,) + grid) < 0.8
        cells = grid[0] * grid[1]
        order = rng.permutation(cells) if guarded else None
        xor = rng.random((3, cells)) < 0.5 if guarded else None
        layout = palmcode.variant_layout(grid, palmcode.shifts(3), order, xor)
        got = palmcode.packed_variants(codes, valid, 7, layout)
        with monkeypatch.context() as numpy_path:
            numpy_path.setattr(bit_search, "native", None)
            want = palmcode.packed_variants(codes, valid, 7, layout)
        for g, w in zip(got, want):
            assert g.shape == w.shape and g.dtype == w.dtype
            np.testing.assert_array_equal(g, w)
