/* The palm-code 1:N kernels of bit_search.py in C: masked Hamming distances of packed Johnson-code planes with a
 * hardware popcount, normalised exactly as bit_search._normalised does (double division, then float32), so the
 * figures are bit-identical to the numpy path. Why: numpy costs about 2 ns a 64-bit word plus buffer copies, and
 * Pi OS bookworm's numpy 1.24 has no bitwise_count (its table fallback is many times slower); this loop costs
 * well under 1 ns a word. The GIL is released around every loop, so bit_search's thread pool still splits a pass.
 *
 * No numpy headers: bit_search.py passes data pointers and element strides of arrays it checked (uint64, the
 * entries or variants axis contiguous) and keeps them alive during the call. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>

#define BITS 3
#define BLOCK 64 /* gallery entries a block: their words of one variant stay in L1 */

static inline float normalised(uint32_t diff, uint32_t count, Py_ssize_t min_bits)
{
    if ((Py_ssize_t)count < min_bits)
        return 1.0f;
    return (float)((double)diff / (double)(BITS * (uint64_t)(count ? count : 1)));
}

/* popcount(x0 & c) + popcount(x1 & c) + popcount(x2 & c) with two popcounts, not three: per bit position,
 * x0 + x1 + x2 = (x0 ^ x1 ^ x2) + 2 * majority(x0, x1, x2) (a carry-save adder), exact. */
static inline uint32_t differing_bits(uint64_t x0, uint64_t x1, uint64_t x2, uint64_t c)
{
    const uint64_t half = x0 ^ x1;
    return __builtin_popcountll((half ^ x2) & c) + 2 * __builtin_popcountll(((x0 & x1) | (x2 & half)) & c);
}

/* The inner loops, portable: one probe variant against gallery entries 0..m of a block stored word-major (plane
 * stride ps, word stride ws, mask word stride mws), distances into o[0..m] ... */
static void wide_portable(const uint64_t *p, const uint64_t *mask, Py_ssize_t words, const uint64_t *g,
                          Py_ssize_t ps, Py_ssize_t ws, const uint64_t *gm, Py_ssize_t mws, Py_ssize_t m,
                          Py_ssize_t min_bits, float *o)
{
    uint32_t counts[BLOCK], diff[BLOCK];
    for (Py_ssize_t j = 0; j < m; j++)
        counts[j] = diff[j] = 0;
    for (Py_ssize_t w = 0; w < words; w++) {
        const uint64_t pw = mask[w], p0 = p[w], p1 = p[words + w], p2 = p[2 * words + w];
        const uint64_t *g0 = g + w * ws, *g1 = g0 + ps, *g2 = g1 + ps, *gmw = gm + w * mws;
        for (Py_ssize_t j = 0; j < m; j++) {
            const uint64_t c = gmw[j] & pw;
            counts[j] += __builtin_popcountll(c);
            diff[j] += differing_bits(g0[j] ^ p0, g1[j] ^ p1, g2[j] ^ p2, c);
        }
    }
    for (Py_ssize_t j = 0; j < m; j++)
        o[j] = normalised(diff[j], counts[j], min_bits);
}

/* ... and every probe variant (word-major (3, W, V) / (W, V)) against one gallery row: counts and differing bits
 * per variant into counts[V], diff[V]. */
static void deep_portable(const uint64_t *pp, const uint64_t *pm, Py_ssize_t variants, Py_ssize_t words,
                          const uint64_t *g, const uint64_t *gmask, uint32_t *counts, uint32_t *diff)
{
    for (Py_ssize_t v = 0; v < variants; v++)
        counts[v] = diff[v] = 0;
    for (Py_ssize_t w = 0; w < words; w++) {
        const uint64_t gw = gmask[w], g0 = g[w], g1 = g[words + w], g2 = g[2 * words + w];
        const uint64_t *m = pm + w * variants, *p0 = pp + w * variants, *p1 = p0 + words * variants,
                       *p2 = p1 + words * variants;
        for (Py_ssize_t v = 0; v < variants; v++) {
            const uint64_t c = m[v] & gw;
            counts[v] += __builtin_popcountll(c);
            diff[v] += differing_bits(p0[v] ^ g0, p1[v] ^ g1, p2[v] ^ g2, c);
        }
    }
}

/* The same loops with AVX-512 VPOPCNTQ where the CPU has it (x86-64 since Ice Lake; chosen when the module loads,
 * set_simd(False) turns it off): eight neighbours along the contiguous axis (gallery entries in wide, probe
 * variants in deep) a vector, their sums kept in registers over all the words: about 2.5x fewer cycles here, the
 * same integers. Compilers without the target attribute (and the Pi's ARM) keep the portable loops. */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define HAVE_AVX512_PATH 1
#define LANES 8

/* Eight neighbours on the vector side (masks vm + w * vm_ws, planes vp + k * vp_ps + w * vp_ws, eight contiguous
 * words each) against one code on the scalar side (masks sm[w], planes sp[k * words + w]), over `words` words:
 * their shared-cell counts and differing bits (the carry-save split of differing_bits). */
__attribute__((target("avx512f,avx512vpopcntdq")))
static inline void eight_sums(const uint64_t *vm, Py_ssize_t vm_ws, const uint64_t *vp, Py_ssize_t vp_ps,
                              Py_ssize_t vp_ws, const uint64_t *sm, const uint64_t *sp, Py_ssize_t words,
                              __m512i *counts, __m512i *diff)
{
    __m512i sums = _mm512_setzero_si512(), odd = sums, two = sums;
    for (Py_ssize_t w = 0; w < words; w++) {
        const uint64_t *v0 = vp + w * vp_ws;
        const __m512i c = _mm512_and_si512(_mm512_loadu_si512(vm + w * vm_ws), _mm512_set1_epi64((long long)sm[w]));
        const __m512i x0 = _mm512_xor_si512(_mm512_loadu_si512(v0), _mm512_set1_epi64((long long)sp[w]));
        const __m512i x1 = _mm512_xor_si512(_mm512_loadu_si512(v0 + vp_ps), _mm512_set1_epi64((long long)sp[words + w]));
        const __m512i x2 = _mm512_xor_si512(_mm512_loadu_si512(v0 + 2 * vp_ps),
                                            _mm512_set1_epi64((long long)sp[2 * words + w]));
        const __m512i half = _mm512_xor_si512(x0, x1);
        sums = _mm512_add_epi64(sums, _mm512_popcnt_epi64(c));
        odd = _mm512_add_epi64(odd, _mm512_popcnt_epi64(_mm512_and_si512(_mm512_xor_si512(half, x2), c)));
        two = _mm512_add_epi64(two, _mm512_popcnt_epi64(
            _mm512_and_si512(_mm512_or_si512(_mm512_and_si512(x0, x1), _mm512_and_si512(x2, half)), c)));
    }
    *counts = sums;
    *diff = _mm512_add_epi64(odd, _mm512_add_epi64(two, two));
}

__attribute__((target("avx512f,avx512vpopcntdq")))
static void wide_avx512(const uint64_t *p, const uint64_t *mask, Py_ssize_t words, const uint64_t *g,
                        Py_ssize_t ps, Py_ssize_t ws, const uint64_t *gm, Py_ssize_t mws, Py_ssize_t m,
                        Py_ssize_t min_bits, float *o)
{
    Py_ssize_t j = 0;
    for (; j + LANES <= m; j += LANES) {
        __m512i counts, diffs;
        uint64_t count[LANES], diff[LANES];
        eight_sums(gm + j, mws, g + j, ps, ws, mask, p, words, &counts, &diffs);
        _mm512_storeu_si512(count, counts);
        _mm512_storeu_si512(diff, diffs);
        for (int k = 0; k < LANES; k++)
            o[j + k] = normalised((uint32_t)diff[k], (uint32_t)count[k], min_bits);
    }
    if (j < m)
        wide_portable(p, mask, words, g + j, ps, ws, gm + j, mws, m - j, min_bits, o + j);
}

__attribute__((target("avx512f,avx512vpopcntdq")))
static void deep_avx512(const uint64_t *pp, const uint64_t *pm, Py_ssize_t variants, Py_ssize_t words,
                        const uint64_t *g, const uint64_t *gmask, uint32_t *counts, uint32_t *diff)
{
    const Py_ssize_t plane = words * variants;
    Py_ssize_t v = 0;
    for (; v + LANES <= variants; v += LANES) {
        __m512i sums, diffs;
        eight_sums(pm + v, variants, pp + v, plane, variants, gmask, g, words, &sums, &diffs);
        _mm256_storeu_si256((__m256i *)(counts + v), _mm512_cvtepi64_epi32(sums));
        _mm256_storeu_si256((__m256i *)(diff + v), _mm512_cvtepi64_epi32(diffs));
    }
    for (; v < variants; v++) { /* the last few variants one at a time */
        uint32_t count = 0, d = 0;
        for (Py_ssize_t w = 0; w < words; w++) {
            const uint64_t c = pm[w * variants + v] & gmask[w];
            const uint64_t *p0 = pp + w * variants + v;
            count += __builtin_popcountll(c);
            d += differing_bits(p0[0] ^ g[w], p0[plane] ^ g[words + w], p0[2 * plane] ^ g[2 * words + w], c);
        }
        counts[v] = count, diff[v] = d;
    }
}

/* 64 cell bytes (3 Johnson bits, valid bit 3) into the 4 words of their bits: one byte test a plane. */
__attribute__((target("avx512f,avx512bw")))
static void pack_word_avx512(const uint8_t *bytes, uint64_t out[BITS + 1])
{
    const __m512i v = _mm512_loadu_si512(bytes);
    for (int k = 0; k <= BITS; k++)
        out[k] = _mm512_test_epi8_mask(v, _mm512_set1_epi8((char)(1 << k)));
}
#endif

static int use_simd = 0;

static void wide_entries(const uint64_t *p, const uint64_t *mask, Py_ssize_t words, const uint64_t *g,
                         Py_ssize_t ps, Py_ssize_t ws, const uint64_t *gm, Py_ssize_t mws, Py_ssize_t m,
                         Py_ssize_t min_bits, float *o)
{
#ifdef HAVE_AVX512_PATH
    if (use_simd) {
        wide_avx512(p, mask, words, g, ps, ws, gm, mws, m, min_bits, o);
        return;
    }
#endif
    wide_portable(p, mask, words, g, ps, ws, gm, mws, m, min_bits, o);
}

static void deep_variants(const uint64_t *pp, const uint64_t *pm, Py_ssize_t variants, Py_ssize_t words,
                          const uint64_t *g, const uint64_t *gmask, uint32_t *counts, uint32_t *diff)
{
#ifdef HAVE_AVX512_PATH
    if (use_simd) {
        deep_avx512(pp, pm, variants, words, g, gmask, counts, diff);
        return;
    }
#endif
    deep_portable(pp, pm, variants, words, g, gmask, counts, diff);
}

static int simd_available(void)
{
#ifdef HAVE_AVX512_PATH
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vpopcntdq") &&
           __builtin_cpu_supports("avx512bw");
#else
    return 0;
#endif
}

/* set_simd(on) -> the path now used ("avx512" or "portable"); on is honoured only where the CPU has it. */
static PyObject *set_simd(PyObject *self, PyObject *args)
{
    int on;
    if (!PyArg_ParseTuple(args, "p", &on))
        return NULL;
    use_simd = on && simd_available();
    return PyUnicode_FromString(use_simd ? "avx512" : "portable");
}

/* wide(p_planes, p_masks, variants, words, g_planes, g_plane_stride, g_word_stride, g_masks, g_mask_word_stride,
 *      entries, columns, first, stop, min_bits, out, out_row):
 * probe variants row-major contiguous (V, 3, W) / (V, W); gallery word-major (3, W, N) / (W, N) with the given
 * element strides and entries contiguous; columns: 0 or int64 indexes into the N entries. For j in first:stop,
 * out[v * out_row + j] = the distance of variant v to entry j (or columns[j]). */
static PyObject *wide(PyObject *self, PyObject *args)
{
    unsigned long long pp_a, pm_a, gp_a, gm_a, col_a, out_a;
    Py_ssize_t variants, words, gps, gws, gmws, entries, first, stop, min_bits, out_row;
    if (!PyArg_ParseTuple(args, "KKnnKnnKnnKnnnKn", &pp_a, &pm_a, &variants, &words, &gp_a, &gps, &gws, &gm_a,
                          &gmws, &entries, &col_a, &first, &stop, &min_bits, &out_a, &out_row))
        return NULL;
    const uint64_t *pp = (const uint64_t *)(uintptr_t)pp_a, *pm = (const uint64_t *)(uintptr_t)pm_a;
    const uint64_t *gp = (const uint64_t *)(uintptr_t)gp_a, *gm = (const uint64_t *)(uintptr_t)gm_a;
    const int64_t *columns = (const int64_t *)(uintptr_t)col_a;
    float *out = (float *)(uintptr_t)out_a;
    if (variants < 0 || words <= 0 || first < 0 || stop < first || entries < 0) {
        PyErr_SetString(PyExc_ValueError, "_bitkernel.wide: bad shape");
        return NULL;
    }
    if (columns) {
        for (Py_ssize_t j = first; j < stop; j++)
            if (columns[j] < 0 || columns[j] >= entries) {
                PyErr_Format(PyExc_IndexError, "_bitkernel.wide: column %lld outside the %zd gallery entries",
                             (long long)columns[j], entries);
                return NULL;
            }
    } else if (stop > entries) {
        PyErr_SetString(PyExc_IndexError, "_bitkernel.wide: entries past the gallery's end");
        return NULL;
    }
    /* a gathered block (columns): planes (3, W, BLOCK), masks (W, BLOCK) */
    uint64_t *gathered = columns ? malloc(sizeof(uint64_t) * (BITS + 1) * words * BLOCK) : NULL;
    if (columns && !gathered)
        return PyErr_NoMemory();
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t start = first; start < stop; start += BLOCK) {
        Py_ssize_t m = stop - start < BLOCK ? stop - start : BLOCK;
        const uint64_t *bp, *bm;
        Py_ssize_t bps, bws, bmws;
        if (columns) {
            for (Py_ssize_t k = 0; k < BITS; k++)
                for (Py_ssize_t w = 0; w < words; w++)
                    for (Py_ssize_t j = 0; j < m; j++)
                        gathered[(k * words + w) * BLOCK + j] = gp[k * gps + w * gws + columns[start + j]];
            for (Py_ssize_t w = 0; w < words; w++)
                for (Py_ssize_t j = 0; j < m; j++)
                    gathered[(BITS * words + w) * BLOCK + j] = gm[w * gmws + columns[start + j]];
            bp = gathered, bm = gathered + BITS * words * BLOCK, bps = words * BLOCK, bws = BLOCK, bmws = BLOCK;
        } else {
            bp = gp + start, bm = gm + start, bps = gps, bws = gws, bmws = gmws;
        }
        for (Py_ssize_t v = 0; v < variants; v++)
            wide_entries(pp + v * BITS * words, pm + v * words, words, bp, bps, bws, bm, bmws, m, min_bits,
                         out + v * out_row + start);
    }
    Py_END_ALLOW_THREADS
    free(gathered);
    Py_RETURN_NONE;
}

/* deep(p_planes_t, p_masks_t, variants, words, g_planes, g_masks, first, stop, min_bits, out):
 * probe variants word-major contiguous (3, W, V) / (W, V); gallery rows contiguous (N, 3, W) / (N, W).
 * For n in first:stop, out[n] = the smallest distance over the variants to row n. */
static PyObject *deep(PyObject *self, PyObject *args)
{
    unsigned long long pp_a, pm_a, gp_a, gm_a, out_a;
    Py_ssize_t variants, words, first, stop, min_bits;
    if (!PyArg_ParseTuple(args, "KKnnKKnnnK", &pp_a, &pm_a, &variants, &words, &gp_a, &gm_a, &first, &stop,
                          &min_bits, &out_a))
        return NULL;
    const uint64_t *pp = (const uint64_t *)(uintptr_t)pp_a, *pm = (const uint64_t *)(uintptr_t)pm_a;
    const uint64_t *gp = (const uint64_t *)(uintptr_t)gp_a, *gm = (const uint64_t *)(uintptr_t)gm_a;
    float *out = (float *)(uintptr_t)out_a;
    if (variants <= 0 || words <= 0 || first < 0 || stop < first) {
        PyErr_SetString(PyExc_ValueError, "_bitkernel.deep: bad shape");
        return NULL;
    }
    uint32_t *counts = malloc(sizeof(uint32_t) * 2 * variants);
    if (!counts)
        return PyErr_NoMemory();
    uint32_t *diff = counts + variants;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t n = first; n < stop; n++) {
        const uint64_t *g = gp + n * BITS * words, *gmask = gm + n * words;
        deep_variants(pp, pm, variants, words, g, gmask, counts, diff);
        float best = normalised(diff[0], counts[0], min_bits);
        for (Py_ssize_t v = 1; v < variants; v++) {
            float d = normalised(diff[v], counts[v], min_bits);
            if (d < best)
                best = d;
        }
        out[n] = best;
    }
    Py_END_ALLOW_THREADS
    free(counts);
    Py_RETURN_NONE;
}

/* pack(padded, rotations, padded_size, index, shifts, cells, flip, words, planes, masks): palmcode.packed_variants'
 * gather and packing in one pass, no temporaries. padded: (rotations, padded_size) uint8 cell bytes (3 Johnson bits,
 * valid bit 3); index: (shifts, cells) int64 into a rotation's padded bytes; flip: 0 or (cells,) uint8 XORed into
 * each gathered byte; out: planes (V, 3, words), masks (V, words) uint64, V = rotations x shifts, variant r * shifts
 * + s; cell c is bit c % 64 of word c / 64 (numpy's little-endian packbits), cells past the last are zero. */
static PyObject *pack(PyObject *self, PyObject *args)
{
    unsigned long long pad_a, idx_a, flip_a, planes_a, masks_a;
    Py_ssize_t rotations, padded_size, shifts, cells, words;
    if (!PyArg_ParseTuple(args, "KnnKnnKnKK", &pad_a, &rotations, &padded_size, &idx_a, &shifts, &cells, &flip_a,
                          &words, &planes_a, &masks_a))
        return NULL;
    const uint8_t *padded = (const uint8_t *)(uintptr_t)pad_a, *flip = (const uint8_t *)(uintptr_t)flip_a;
    const int64_t *index = (const int64_t *)(uintptr_t)idx_a;
    uint64_t *planes = (uint64_t *)(uintptr_t)planes_a, *masks = (uint64_t *)(uintptr_t)masks_a;
    if (rotations < 0 || shifts < 0 || cells < 0 || words * 64 < cells || padded_size <= 0) {
        PyErr_SetString(PyExc_ValueError, "_bitkernel.pack: bad shape");
        return NULL;
    }
    for (Py_ssize_t k = 0; k < shifts * cells; k++)
        if (index[k] < 0 || index[k] >= padded_size) {
            PyErr_Format(PyExc_IndexError, "_bitkernel.pack: index %lld outside the %zd padded cells",
                         (long long)index[k], padded_size);
            return NULL;
        }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t r = 0; r < rotations; r++) {
        const uint8_t *code = padded + r * padded_size;
        for (Py_ssize_t s = 0; s < shifts; s++) {
            const int64_t *at = index + s * cells;
            const Py_ssize_t v = r * shifts + s;
            uint64_t *p = planes + v * BITS * words, *m = masks + v * words;
            for (Py_ssize_t w = 0; w < words; w++) {
                uint64_t bits[BITS + 1] = {0};
                uint8_t bytes[64]; /* the word's 64 cells, gathered (0 past the last cell) */
                for (Py_ssize_t i = 0; i < 64; i++) {
                    const Py_ssize_t c = w * 64 + i;
                    bytes[i] = c < cells ? (uint8_t)(code[at[c]] ^ (flip ? flip[c] : 0)) : 0;
                }
#ifdef HAVE_AVX512_PATH
                if (use_simd)
                    pack_word_avx512(bytes, bits);
                else
#endif
                    for (Py_ssize_t b = 0; b < 64; b += 8) {
                        uint64_t eight = 0; /* the bytes of 8 cells, cell c in byte c % 8 */
                        for (int i = 0; i < 8; i++)
                            eight |= (uint64_t)bytes[b + i] << (8 * i);
                        for (int k = 0; k <= BITS; k++) /* bit k of each byte, gathered into 8 bits by one multiply */
                            bits[k] |= ((((eight >> k) & 0x0101010101010101ULL) * 0x0102040810204080ULL) >> 56) << b;
                    }
                p[w] = bits[0], p[words + w] = bits[1], p[2 * words + w] = bits[2], m[w] = bits[BITS];
            }
        }
    }
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"wide", wide, METH_VARARGS, "bit_search.wide_distances' entries first:stop (see _bitkernel.c)"},
    {"set_simd", set_simd, METH_VARARGS, "use the AVX-512 loops where the CPU has them (True) or the portable ones; returns which"},
    {"pack", pack, METH_VARARGS, "palmcode.packed_variants' gather and packing (see _bitkernel.c)"},
    {"deep", deep, METH_VARARGS, "bit_search.deep_distances' rows first:stop (see _bitkernel.c)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_bitkernel",
    "Compiled palm-code 1:N kernels (masked Hamming distances with a hardware popcount); see bit_search.py.", -1,
    methods,
};

PyMODINIT_FUNC PyInit__bitkernel(void)
{
    use_simd = simd_available();
    return PyModule_Create(&module);
}
