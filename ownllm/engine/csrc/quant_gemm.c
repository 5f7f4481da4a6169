/* ownllm's batched quantised matmul: y = x W^T for x of many rows (a decode step of dozens
 * of sequences, a prompt chunk), W in q4_0, q4_1, q8_0 or int8 with K a multiple of 32: the
 * standard GEMM design, with the dequantisation as the packing of W.
 *
 * Each thread takes panels of QG_COLS output columns: it dequantises the panel's weight rows
 * (all of K) into a buffer in the microkernel's layout, then runs the microkernel over x,
 * QG_MR rows at a time (tiles as even as they come), one or two vector loads of W and QG_MR
 * broadcasts of x a step. W is dequantised once per call, whatever the number of rows.
 *
 * The weights are what quant_dequantize gives in the dtype (the reference's d q + m; for
 * bf16 rounded to bf16), so a result is F.linear(x, dequantize(W, dtype)) with float32 sums
 * in another order. The loops:
 *   AVX-512F:    a vector is 4 columns x 4 consecutive k (a 128-bit lane per column), so a
 *                dequantised row becomes panel lanes by a 4x4 transpose of 128-bit lanes
 *                (where 16 columns of one k take a 16x16 dword transpose, twice the
 *                shuffles); x broadcast 4 k at a time (vbroadcastf32x4), 12 rows x 2 vectors
 *                of accumulators, each output the sum of its 4 lanes once per tile;
 *   AVX512-BF16: the same with bf16 pairs (4 columns x 4 pairs of k a vector, vdpbf16ps, x's
 *                own pairs broadcast 4 at a time), for bf16 x; a q4 block of 4 rows becomes
 *                its 4 vectors by table lookups (vpermt2w), no transposes;
 *   AVX2 + FMA:  float32 [K][16], 6 rows x 2 ymm, rows transposed into columns 8x8;
 * bf16 x without AVX512-BF16 is widened once and runs the float32 loop. The portable build
 * has none (quant_gemm_path() answers 0, and the caller keeps its tiles).
 */
#include "quant_common.h"

#define QG_EINVAL 22 /* K not a multiple of 32, or a build without this kernel */

#if QPATH == 2 && defined(__AVX512BF16__) && !defined(OWNLLM_NO_BF16DOT)
#define QG_DOT 1
#else
#define QG_DOT 0
#endif

#if QPATH == 2
#define QG_MR 12 /* rows a tile */
#define QG_NV 2  /* vectors a tile, 4 columns each (4 x 6 rows measured the same) */
#define QG_COLS (4 * QG_NV) /* columns a panel */
#elif QPATH == 1
#define QG_MR 6
#define QG_COLS 16 /* two ymm */
#endif

#if QPATH > 0
/* Row tiles of at most QG_MR rows, as even as they come (64 rows: 11,11,11,11,10,10), so no
 * tile is left with too few accumulators to hide the FMA latency. */
static inline int64_t qg_tiles(int64_t num_rows) { return (num_rows + QG_MR - 1) / QG_MR; }
static inline int64_t qg_tile_start(int64_t num_rows, int64_t t) {
    const int64_t tiles = qg_tiles(num_rows), base = num_rows / tiles, extra = num_rows % tiles;
    return t * base + (t < extra ? t : extra);
}

/* float32 -> bfloat16 -> float32 in round-to-nearest-even (f32_to_bf16's rounding; the
 * weights are finite), for bf16 weights on the float32 microkernel. */
#if QPATH == 2
INLINE __m512 qg_round_bf16(__m512 v) {
    const __m512i u = _mm512_castps_si512(v);
    const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    const __m512i r = _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), odd);
    return _mm512_castsi512_ps(_mm512_and_si512(r, _mm512_set1_epi32((int)0xffff0000u)));
}
#else
INLINE __m256 qg_round_bf16(__m256 v) {
    const __m256i u = _mm256_castps_si256(v);
    const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    const __m256i r = _mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), odd);
    return _mm256_castsi256_ps(_mm256_and_si256(r, _mm256_set1_epi32((int)0xffff0000u)));
}
#endif
#endif

#if QPATH == 2
/* [c0, c1, c2, c3] (4 rows' 512 bits, 128-bit lanes 0-3 each) -> out[l] = lane l of c0..c3:
 * a 4x4 transpose of 128-bit lanes, 8 shuffles. */
INLINE void qg_lanes4(const __m512i c[4], __m512i out[4]) {
    const __m512i t0 = _mm512_shuffle_i64x2(c[0], c[1], 0x44);
    const __m512i t1 = _mm512_shuffle_i64x2(c[0], c[1], 0xee);
    const __m512i t2 = _mm512_shuffle_i64x2(c[2], c[3], 0x44);
    const __m512i t3 = _mm512_shuffle_i64x2(c[2], c[3], 0xee);
    out[0] = _mm512_shuffle_i64x2(t0, t2, 0x88);
    out[1] = _mm512_shuffle_i64x2(t0, t2, 0xdd);
    out[2] = _mm512_shuffle_i64x2(t1, t3, 0x88);
    out[3] = _mm512_shuffle_i64x2(t1, t3, 0xdd);
}

/* Rows i and i + 1's outputs from their accumulators (a, b: row i's two vectors; c, d: row
 * i + 1's; or a-d one row's four), each output the sum of its column's 4 lanes: [a's 4
 * columns, b's, c's, d's]. */
INLINE __m512 qg_sum_lanes(__m512 a, __m512 b, __m512 c, __m512 d) {
    const __m512 ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
    const __m512 cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
    const __m512 s = _mm512_add_ps(
        _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(ab), _mm512_castps_pd(cd))),
        _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(ab), _mm512_castps_pd(cd))));
    /* s lane 4l + q: column l of a, b, c, d for q = 0, 1, 2, 3 */
    const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    return _mm512_permutexvar_ps(order, s);
}

/* panel [k/4][QG_NV][16] float32, vector (t, v) lane 4c + j = weight row n0 + 4v + c at
 * k = 4t + j, as quant_dequantize computes it (int8: times the row's scale; bf16: rounded);
 * rows past `cols` zero. */
INLINE void qg_panel_f32(const int type, const int round, const uint8_t *w, int64_t row_bytes,
                         const float *scale, int64_t n0, int cols, int64_t k, float *panel) {
    const int64_t nb = k / QB;
    const int bb = q_block_bytes(type);
    for (int64_t blk = 0; blk < nb; blk++)
        for (int v = 0; v < QG_NV; v++) {
            __m512i lo[4], hi[4], out[4];
            for (int c = 0; c < 4; c++) {
                const int col = 4 * v + c;
                __m512 w0 = _mm512_setzero_ps(), w1 = _mm512_setzero_ps();
                if (col < cols) {
                    const uint8_t *b = w + (n0 + col) * row_bytes + blk * bb;
                    q_prefetch(b);
                    q_deq512(type, b, &w0, &w1);
                    if (type == QT_INT8) {
                        w0 = _mm512_mul_ps(w0, _mm512_set1_ps(scale[n0 + col]));
                        w1 = _mm512_mul_ps(w1, _mm512_set1_ps(scale[n0 + col]));
                    }
                    if (round) {
                        w0 = qg_round_bf16(w0);
                        w1 = qg_round_bf16(w1);
                    }
                }
                lo[c] = _mm512_castps_si512(w0);
                hi[c] = _mm512_castps_si512(w1);
            }
            float *dst = panel + (blk * 8 * QG_NV + v) * 16; /* 8 steps of 4 k a block */
            qg_lanes4(lo, out);
            for (int t = 0; t < 4; t++) _mm512_storeu_si512((void *)(dst + t * 16 * QG_NV), out[t]);
            qg_lanes4(hi, out);
            for (int t = 0; t < 4; t++)
                _mm512_storeu_si512((void *)(dst + (4 + t) * 16 * QG_NV), out[t]);
        }
}

/* dst [MR][QG_COLS] (row stride dst_stride) = x's MR rows (float32) times the panel. */
INLINE void qg_tile_f32(const int MR, const float *x, int64_t x_stride, const float *panel,
                        int64_t k, float *dst, int64_t dst_stride) {
    __m512 acc[QG_MR + 1][QG_NV];
    for (int i = 0; i < MR + 1; i++)
        for (int v = 0; v < QG_NV; v++) acc[i][v] = _mm512_setzero_ps();
    for (int64_t t = 0; t < k / 4; t++) {
        __m512 wv[QG_NV];
        for (int v = 0; v < QG_NV; v++) wv[v] = _mm512_loadu_ps(panel + (t * QG_NV + v) * 16);
        for (int i = 0; i < MR; i++) {
            const __m512 b = _mm512_broadcast_f32x4(_mm_loadu_ps(x + i * x_stride + 4 * t));
            for (int v = 0; v < QG_NV; v++) acc[i][v] = _mm512_fmadd_ps(b, wv[v], acc[i][v]);
        }
    }
    for (int i = 0; i < MR; i += 2) {
        const __m512 s = qg_sum_lanes(acc[i][0], acc[i][1], acc[i + 1][0], acc[i + 1][1]);
        _mm256_storeu_ps(dst + i * dst_stride, _mm512_castps512_ps256(s));
        if (i + 1 < MR)
            _mm256_storeu_pd((double *)(dst + (i + 1) * dst_stride),
                             _mm512_extractf64x4_pd(_mm512_castps_pd(s), 1));
    }
}
#elif QPATH == 1
/* r[i] lane j -> r[j] lane i, for 8 vectors of 8 floats. */
INLINE void qg_transpose8(__m256 r[8]) {
    __m256 t[8], u[8];
    for (int i = 0; i < 4; i++) {
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 2; i++) { /* u[4i + e], 128-bit lane L: rows 4i..4i+3 of float 4L + e */
        u[4 * i] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
        u[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0xee);
        u[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
        u[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xee);
    }
    for (int e = 0; e < 4; e++) {
        r[e] = _mm256_permute2f128_ps(u[e], u[4 + e], 0x20);
        r[4 + e] = _mm256_permute2f128_ps(u[e], u[4 + e], 0x31);
    }
}

/* panel [k][16] float32 = weight rows [n0, n0 + cols) (the rest zero), k by k. */
INLINE void qg_panel_f32(const int type, const int round, const uint8_t *w, int64_t row_bytes,
                         const float *scale, int64_t n0, int cols, int64_t k, float *panel) {
    const int64_t nb = k / QB;
    const int bb = q_block_bytes(type);
    for (int64_t blk = 0; blk < nb; blk++)
        for (int half = 0; half < 2; half++) {
            __m256 v[4][8];
            for (int c = 0; c < 8; c++) {
                const int col = half * 8 + c;
                __m256 wv[4];
                for (int p = 0; p < 4; p++) wv[p] = _mm256_setzero_ps();
                if (col < cols) {
                    const uint8_t *b = w + (n0 + col) * row_bytes + blk * bb;
                    q_prefetch(b);
                    q_deq256(type, b, wv);
                    const __m256 s = _mm256_set1_ps(scale != NULL ? scale[n0 + col] : 1.0f);
                    for (int p = 0; p < 4; p++) {
                        if (type == QT_INT8) wv[p] = _mm256_mul_ps(wv[p], s);
                        if (round) wv[p] = qg_round_bf16(wv[p]);
                    }
                }
                for (int p = 0; p < 4; p++) v[p][c] = wv[p];
            }
            float *dst = panel + blk * QB * QG_COLS + half * 8;
            for (int p = 0; p < 4; p++) {
                qg_transpose8(v[p]);
                for (int j = 0; j < 8; j++) _mm256_storeu_ps(dst + (p * 8 + j) * QG_COLS, v[p][j]);
            }
        }
}

/* dst [MR][16] (row stride dst_stride) = x's MR rows (float32) times the panel. */
INLINE void qg_tile_f32(const int MR, const float *x, int64_t x_stride, const float *panel,
                        int64_t k, float *dst, int64_t dst_stride) {
    __m256 acc[QG_MR][2];
    for (int i = 0; i < MR; i++) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
    for (int64_t c = 0; c < k; c++) {
        const __m256 w0 = _mm256_loadu_ps(panel + c * QG_COLS);
        const __m256 w1 = _mm256_loadu_ps(panel + c * QG_COLS + 8);
        for (int i = 0; i < MR; i++) {
            const __m256 b = _mm256_broadcast_ss(x + i * x_stride + c);
            acc[i][0] = _mm256_fmadd_ps(b, w0, acc[i][0]);
            acc[i][1] = _mm256_fmadd_ps(b, w1, acc[i][1]);
        }
    }
    for (int i = 0; i < MR; i++) {
        _mm256_storeu_ps(dst + i * dst_stride, acc[i][0]);
        _mm256_storeu_ps(dst + i * dst_stride + 8, acc[i][1]);
    }
}
#endif

#if QPATH > 0
static void qg_panel_f32_any(int type, int round, const uint8_t *w, int64_t row_bytes,
                             const float *scale, int64_t n0, int cols, int64_t k, float *panel) {
#define QG_FILL(T)                                                                             \
    (round ? qg_panel_f32(T, 1, w, row_bytes, scale, n0, cols, k, panel)                       \
           : qg_panel_f32(T, 0, w, row_bytes, scale, n0, cols, k, panel))
    switch (type) {
    case QT_Q4_0: QG_FILL(QT_Q4_0); break;
    case QT_Q4_1: QG_FILL(QT_Q4_1); break;
    case QT_Q8_0: QG_FILL(QT_Q8_0); break;
    default: QG_FILL(QT_INT8); break;
    }
#undef QG_FILL
}

/* The float32 microkernel for mr (1..QG_MR) rows, mr a constant in each case. */
static void qg_rows_f32(int mr, const float *x, int64_t x_stride, const float *panel, int64_t k,
                        float *dst, int64_t dst_stride) {
    switch (mr) {
#define QG_CASE(M)                                                                             \
    case M: qg_tile_f32(M, x, x_stride, panel, k, dst, dst_stride); break;
        QG_CASE(1) QG_CASE(2) QG_CASE(3) QG_CASE(4) QG_CASE(5) QG_CASE(6)
#if QG_MR > 6
        QG_CASE(7) QG_CASE(8) QG_CASE(9) QG_CASE(10) QG_CASE(11) QG_CASE(12)
#endif
#undef QG_CASE
    default: break;
    }
}

/* The float32 GEMM: xf [num_rows, k] float32 (row stride xf_stride); each tile's results go
 * through STORE into out, or straight in when float32 and whole (`direct`). */
#define DEFINE_QG_F32(SUFFIX, T_, STORE, ROUND)                                                \
static int qg_gemm_f32_##SUFFIX(const float *xf, int64_t xf_stride, int64_t num_rows,          \
                                const uint8_t *w, int type, int64_t n, int64_t k,              \
                                const float *scale, T_ *out, int64_t out_stride,               \
                                int num_threads, int direct) {                                 \
    const int64_t row_bytes = q_row_bytes(type, k), panels = (n + QG_COLS - 1) / QG_COLS;      \
    const int64_t tiles = qg_tiles(num_rows);                                                  \
    int failed = 0;                                                                            \
    _Pragma("omp parallel num_threads(num_threads)")                                           \
    {                                                                                          \
        float *panel = aligned_alloc(64, sizeof(float) * (size_t)(k * QG_COLS));               \
        float tmp[QG_MR * QG_COLS];                                                            \
        if (panel == NULL) {                                                                   \
            _Pragma("omp atomic write")                                                        \
            failed = 1;                                                                        \
        }                                                                                      \
        _Pragma("omp for schedule(static)")                                                    \
        for (int64_t pn = 0; pn < panels; pn++) {                                              \
            if (panel == NULL) continue;                                                       \
            const int64_t n0 = pn * QG_COLS;                                                   \
            const int cols = n - n0 < QG_COLS ? (int)(n - n0) : QG_COLS;                       \
            qg_panel_f32_any(type, ROUND, w, row_bytes, scale, n0, cols, k, panel);            \
            for (int64_t t = 0; t < tiles; t++) {                                              \
                const int64_t m0 = qg_tile_start(num_rows, t);                                 \
                const int mr = (int)(qg_tile_start(num_rows, t + 1) - m0);                     \
                const float *xt = xf + m0 * xf_stride;                                         \
                if (direct && cols == QG_COLS) {                                               \
                    float *direct_out = (float *)(out + m0 * out_stride + n0);                 \
                    qg_rows_f32(mr, xt, xf_stride, panel, k, direct_out, out_stride);          \
                    continue;                                                                  \
                }                                                                              \
                qg_rows_f32(mr, xt, xf_stride, panel, k, tmp, QG_COLS);                        \
                for (int i = 0; i < mr; i++)                                                   \
                    for (int c = 0; c < cols; c++)                                             \
                        out[(m0 + i) * out_stride + n0 + c] = STORE(tmp[i * QG_COLS + c]);     \
            }                                                                                  \
        }                                                                                      \
        free(panel);                                                                           \
    }                                                                                          \
    return failed ? OWNLLM_ENOMEM : 0;                                                         \
}

DEFINE_QG_F32(f32, float, f32_id, 0)
#if !QG_DOT /* bf16 x on the float32 microkernel: AVX-512F without BF16, AVX2 */
DEFINE_QG_F32(bf16, uint16_t, f32_to_bf16, 1)
#endif
#endif

#if QG_DOT

/* The scales of a q4 row's blocks [blk0, blk0 + 16) (fewer at the row's end), d and m in
 * float32, by one gather: the block loop then broadcasts them from memory. */
INLINE void qg_scales(const int type, const uint8_t *row, int64_t blk0, int64_t nb, float *d,
                      float *m) {
    const int bb = q_block_bytes(type);
    const int count = nb - blk0 < 16 ? (int)(nb - blk0) : 16;
    const __mmask16 live = (__mmask16)((1u << count) - 1u);
    const __m512i at = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(bb));
    const __m512i g =
        _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), live, at, row + blk0 * bb, 1);
    _mm512_storeu_ps(d, _mm512_cvtph_ps(_mm512_cvtepi32_epi16(g)));
    if (type == QT_Q4_1)
        _mm512_storeu_ps(m, _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(g, 16))));
}

/* One q8_0 or int8 block of a weight row in bf16, elements 0-31 in order, as
 * quant_dequantize_bf16 computes them (int8: times the row's scale s). */
INLINE __m512i qg_words(const int type, const uint8_t *b, float s) {
    q_prefetch(b);
    __m512 w0, w1;
    q_deq512(type, b, &w0, &w1);
    if (type == QT_INT8) {
        w0 = _mm512_mul_ps(w0, _mm512_set1_ps(s));
        w1 = _mm512_mul_ps(w1, _mm512_set1_ps(s));
    }
    return (__m512i)_mm512_cvtne2ps_pbh(w1, w0);
}

/* One q4 block of 4 weight rows at once, as the panel's 4 vectors (4 steps of 4 pairs): the
 * rows' 16-value tables (bf16(d q + m); q4_0: d (q - 8)) two to a register, the 4 rows'
 * nibble bytes one to a 128-bit lane, and each vector one vpermt2w of the 64 table words
 * by nibble + 16 x row: no transposes. */
INLINE void qg_block4_q4(const int type, const uint8_t *const b[4], const float *d,
                         const float *m, __m512i out[4]) {
    const __m512 q = type == QT_Q4_1
                         ? _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)
                         : _mm512_setr_ps(-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7);
    __m512 v[4];
    for (int c = 0; c < 4; c++) {
        q_prefetch(b[c]);
        v[c] = type == QT_Q4_1 ? _mm512_fmadd_ps(q, _mm512_set1_ps(d[c]), _mm512_set1_ps(m[c]))
                               : _mm512_mul_ps(q, _mm512_set1_ps(d[c]));
    }
    const __m512i t01 = (__m512i)_mm512_cvtne2ps_pbh(v[1], v[0]); /* [row 0's 16 | row 1's] */
    const __m512i t23 = (__m512i)_mm512_cvtne2ps_pbh(v[3], v[2]);
    const int off = type == QT_Q4_1 ? 4 : 2;
    __m512i nib = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)(b[0] + off)));
    nib = _mm512_inserti32x4(nib, _mm_loadu_si128((const __m128i *)(b[1] + off)), 1);
    nib = _mm512_inserti32x4(nib, _mm_loadu_si128((const __m128i *)(b[2] + off)), 2);
    nib = _mm512_inserti32x4(nib, _mm_loadu_si128((const __m128i *)(b[3] + off)), 3);
    const __m512i lo = _mm512_unpacklo_epi8(nib, _mm512_setzero_si512()); /* bytes 0-7 */
    const __m512i hi = _mm512_unpackhi_epi8(nib, _mm512_setzero_si512()); /* bytes 8-15 */
    const __m512i row = _mm512_setr_epi32(0, 0, 0, 0, 0x100010, 0x100010, 0x100010, 0x100010,
                                          0x200020, 0x200020, 0x200020, 0x200020, 0x300030,
                                          0x300030, 0x300030, 0x300030); /* 16 x lane, words */
    const __m512i f = _mm512_set1_epi16(15);
    /* k 0-7: low nibbles of bytes 0-7; 8-15: of 8-15; 16-23, 24-31: the high nibbles */
    const __m512i idx[4] = {_mm512_and_si512(lo, f), _mm512_and_si512(hi, f),
                            _mm512_srli_epi16(lo, 4), _mm512_srli_epi16(hi, 4)};
    for (int t = 0; t < 4; t++)
        out[t] = _mm512_permutex2var_epi16(t01, _mm512_or_si512(idx[t], row), t23);
}

/* Weight rows [n0, n0 + cols) (the rest zero) in the kernel's layout: panel [k/8][QG_NV][16]
 * dwords, vector (t, v) lane 4c + j = the bf16 pair k = 8t + 2j, 2j + 1 of row n0 + 4v + c. */
INLINE void qg_panel_pairs(const int type, const uint8_t *w, int64_t row_bytes,
                           const float *scale, int64_t n0, int cols, int64_t k,
                           uint32_t *panel) {
    static const uint8_t zeros[QB + 8]; /* a block of a row past the weight's end */
    const int64_t nb = k / QB;
    const int bb = q_block_bytes(type);
    const int q4 = type == QT_Q4_0 || type == QT_Q4_1;
    float d[QG_COLS][16] = {{0}}, m[QG_COLS][16] = {{0}};
    for (int64_t blk = 0; blk < nb; blk++) {
        if (q4 && blk % 16 == 0)
            for (int col = 0; col < cols; col++)
                qg_scales(type, w + (n0 + col) * row_bytes, blk, nb, d[col], m[col]);
        for (int v = 0; v < QG_NV; v++) {
            __m512i out[4];
            if (q4) {
                const uint8_t *b[4];
                float d4[4], m4[4];
                for (int c = 0; c < 4; c++) {
                    const int col = 4 * v + c;
                    b[c] = col < cols ? w + (n0 + col) * row_bytes + blk * bb : zeros;
                    d4[c] = d[col][blk % 16];
                    m4[c] = m[col][blk % 16];
                }
                qg_block4_q4(type, b, d4, m4, out);
            } else {
                __m512i r[4];
                for (int c = 0; c < 4; c++) {
                    const int col = 4 * v + c;
                    r[c] = col < cols ? qg_words(type, w + (n0 + col) * row_bytes + blk * bb,
                                                 scale != NULL ? scale[n0 + col] : 1.0f)
                                      : _mm512_setzero_si512();
                }
                qg_lanes4(r, out);
            }
            uint32_t *dst = panel + (blk * 4 * QG_NV + v) * 16; /* 4 steps of 4 pairs a block */
            for (int t = 0; t < 4; t++) _mm512_storeu_si512((void *)(dst + t * 16 * QG_NV), out[t]);
        }
    }
}

/* out [MR][QG_COLS] (bf16, row stride out_stride) = x's MR rows (bf16) times the panel. */
INLINE void qg_tile_pairs(const int MR, const uint16_t *x, int64_t x_stride,
                          const uint32_t *panel, int64_t steps, uint16_t *out,
                          int64_t out_stride) {
    __m512 acc[QG_MR + 1][QG_NV];
    for (int i = 0; i < MR + 1; i++)
        for (int v = 0; v < QG_NV; v++) acc[i][v] = _mm512_setzero_ps();
    for (int64_t t = 0; t < steps; t++) {
        __m512bh wv[QG_NV];
        for (int v = 0; v < QG_NV; v++)
            wv[v] = (__m512bh)_mm512_loadu_si512((const void *)(panel + (t * QG_NV + v) * 16));
        for (int i = 0; i < MR; i++) {
            const __m128i p = _mm_loadu_si128((const __m128i *)(x + i * x_stride + 8 * t));
            const __m512bh b = (__m512bh)_mm512_broadcast_i32x4(p);
            for (int v = 0; v < QG_NV; v++) acc[i][v] = _mm512_dpbf16_ps(acc[i][v], b, wv[v]);
        }
    }
#if QG_NV == 2
    for (int i = 0; i < MR; i += 2) {
        const __m512 s = qg_sum_lanes(acc[i][0], acc[i][1], acc[i + 1][0], acc[i + 1][1]);
        const __m256i h = (__m256i)_mm512_cvtneps_pbh(s);
        _mm_storeu_si128((__m128i *)(out + i * out_stride), _mm256_castsi256_si128(h));
        if (i + 1 < MR)
            _mm_storeu_si128((__m128i *)(out + (i + 1) * out_stride),
                             _mm256_extracti128_si256(h, 1));
    }
#else
    for (int i = 0; i < MR; i++) {
        const __m512 s = qg_sum_lanes(acc[i][0], acc[i][1], acc[i][2], acc[i][3]);
        _mm256_storeu_si256((__m256i *)(out + i * out_stride), (__m256i)_mm512_cvtneps_pbh(s));
    }
#endif
}

static void qg_panel_pairs_any(int type, const uint8_t *w, int64_t row_bytes, const float *scale,
                               int64_t n0, int cols, int64_t k, uint32_t *panel) {
    switch (type) {
    case QT_Q4_0: qg_panel_pairs(QT_Q4_0, w, row_bytes, scale, n0, cols, k, panel); break;
    case QT_Q4_1: qg_panel_pairs(QT_Q4_1, w, row_bytes, scale, n0, cols, k, panel); break;
    case QT_Q8_0: qg_panel_pairs(QT_Q8_0, w, row_bytes, scale, n0, cols, k, panel); break;
    default: qg_panel_pairs(QT_INT8, w, row_bytes, scale, n0, cols, k, panel); break;
    }
}

static void qg_rows_pairs(int mr, const uint16_t *x, int64_t x_stride, const uint32_t *panel,
                          int64_t steps, uint16_t *out, int64_t out_stride) {
    switch (mr) {
#define QG_CASE(M)                                                                             \
    case M: qg_tile_pairs(M, x, x_stride, panel, steps, out, out_stride); break;
        QG_CASE(1) QG_CASE(2) QG_CASE(3) QG_CASE(4) QG_CASE(5) QG_CASE(6)
#if QG_MR > 6
        QG_CASE(7) QG_CASE(8) QG_CASE(9) QG_CASE(10) QG_CASE(11) QG_CASE(12)
#endif
#undef QG_CASE
    default: break;
    }
}

static int qg_gemm_pairs(const uint16_t *x, int64_t x_stride, int64_t num_rows, const uint8_t *w,
                         int type, int64_t n, int64_t k, const float *scale, uint16_t *out,
                         int64_t out_stride, int num_threads) {
    const int64_t row_bytes = q_row_bytes(type, k), panels = (n + QG_COLS - 1) / QG_COLS;
    const int64_t tiles = qg_tiles(num_rows);
    int failed = 0;
#pragma omp parallel num_threads(num_threads)
    {
        uint32_t *panel = aligned_alloc(64, sizeof(uint16_t) * (size_t)(k * QG_COLS));
        uint16_t tmp[QG_MR * QG_COLS];
        if (panel == NULL) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int64_t pn = 0; pn < panels; pn++) {
            if (panel == NULL) continue;
            const int64_t n0 = pn * QG_COLS;
            const int cols = n - n0 < QG_COLS ? (int)(n - n0) : QG_COLS;
            qg_panel_pairs_any(type, w, row_bytes, scale, n0, cols, k, panel);
            for (int64_t t = 0; t < tiles; t++) {
                const int64_t m0 = qg_tile_start(num_rows, t);
                const int mr = (int)(qg_tile_start(num_rows, t + 1) - m0);
                const uint16_t *xt = x + m0 * x_stride;
                if (cols == QG_COLS) {
                    qg_rows_pairs(mr, xt, x_stride, panel, k / 8, out + m0 * out_stride + n0,
                                  out_stride);
                    continue;
                }
                qg_rows_pairs(mr, xt, x_stride, panel, k / 8, tmp, QG_COLS);
                for (int i = 0; i < mr; i++)
                    memcpy(out + (m0 + i) * out_stride + n0, tmp + i * QG_COLS,
                           sizeof(uint16_t) * (size_t)cols);
            }
        }
        free(panel);
    }
    return failed ? OWNLLM_ENOMEM : 0;
}
#endif

/* out [num_rows, n] (row stride out_stride) = x [num_rows, k] (row stride x_stride) W^T;
 * 0, OWNLLM_ENOMEM, or QG_EINVAL (k % 32, or the portable build). */
int quant_gemm_f32(const float *x, int64_t x_stride, int64_t num_rows, const uint8_t *w,
                   int type, int64_t n, int64_t k, const float *scale, float *out,
                   int64_t out_stride, int num_threads) {
#if QPATH > 0
    if (k % QB != 0 || k == 0) return QG_EINVAL;
    return qg_gemm_f32_f32(x, x_stride, num_rows, w, type, n, k, scale, out, out_stride,
                           num_threads, 1);
#else
    (void)x, (void)x_stride, (void)num_rows, (void)w, (void)type, (void)n, (void)k;
    (void)scale, (void)out, (void)out_stride, (void)num_threads;
    return QG_EINVAL;
#endif
}

int quant_gemm_bf16(const uint16_t *x, int64_t x_stride, int64_t num_rows, const uint8_t *w,
                    int type, int64_t n, int64_t k, const float *scale, uint16_t *out,
                    int64_t out_stride, int num_threads) {
#if QG_DOT
    if (k % QB != 0 || k == 0) return QG_EINVAL;
    return qg_gemm_pairs(x, x_stride, num_rows, w, type, n, k, scale, out, out_stride,
                         num_threads);
#elif QPATH > 0
    if (k % QB != 0 || k == 0) return QG_EINVAL;
    /* x widened once: [num_rows, k] float32 */
    float *xf = malloc(sizeof(float) * (size_t)(num_rows * k));
    if (xf == NULL) return OWNLLM_ENOMEM;
    for (int64_t m = 0; m < num_rows; m++)
        for (int64_t c = 0; c < k; c++) xf[m * k + c] = bf16_to_f32(x[m * x_stride + c]);
    const int code = qg_gemm_f32_bf16(xf, k, num_rows, w, type, n, k, scale, out, out_stride,
                                      num_threads, 0);
    free(xf);
    return code;
#else
    (void)x, (void)x_stride, (void)num_rows, (void)w, (void)type, (void)n, (void)k;
    (void)scale, (void)out, (void)out_stride, (void)num_threads;
    return QG_EINVAL;
#endif
}

/* Which loop quant_gemm runs: 3 bf16 pairs in vdpbf16ps (bf16; float32 runs 2), 2 AVX-512F,
 * 1 AVX2 + FMA, 0 none (the portable build). */
int quant_gemm_path(void) {
#if QG_DOT
    return 3;
#else
    return QPATH;
#endif
}
