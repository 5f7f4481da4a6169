/* ownllm's quantised matmul: y = x W^T for decode-sized x (a few rows), W in q4_0, q4_1,
 * q8_0 (GGUF's own blocks) or int8 (per-output-channel scale), dequantised in registers;
 * and the tiled dequantisation that feeds prompt chunks to the dense GEMM.
 *
 * Compiled into the same library as cpu_kernels.c (see ownllm/engine/cpu_kernels.py).
 * Blocks (per weight row, 32 elements each, ggml's layout, see ownllm/formats/quant.py):
 *   q4_0  18 bytes: fp16 d, 16 bytes of nibbles (byte j: element j low, j + 16 high);
 *         w = d (q - 8)
 *   q4_1  20 bytes: fp16 d, fp16 m, 16 bytes of nibbles; w = d q + m
 *   q8_0  34 bytes: fp16 d, 32 int8; w = d q
 *   int8  a row of K int8 (K need not be a multiple of 32); w = scale[n] q
 * x is [M, K] rows (row stride given), out [M, N] rows (row stride given); both float32
 * (suffix f32) or bfloat16 (suffix bf16, widened to float32). Sums are float32: the
 * weights are dequantised exactly (d q + m in one rounding, as the reference does), so
 * a result differs from dequantise-then-matmul in float32 only by summation order.
 *
 * Three builds of the inner loop, chosen when compiling: AVX-512F (16 lanes), AVX2 + FMA
 * (8 lanes; -DOWNLLM_NO_AVX512 forces it where AVX-512 is present) and a portable loop
 * (-DOWNLLM_NO_AVX2 as well). With AVX512-BF16 (-DOWNLLM_NO_BF16DOT turns it off), bf16 x
 * times q4_0 / q4_1 runs vdpbf16ps on the nibbles as exact bf16 integers (q4_matmul_bf16dot).
 * Not used: VNNI, which needs x quantised to int8 (what llama.cpp does); the weights stay
 * the reference's exact ones.
 */
#include "quant_common.h"

/* One block (32 elements) dequantised to float32, in the reference's arithmetic. */
INLINE void q_block(const int type, const uint8_t *b, float *w) {
    if (type == QT_Q4_0) {
        const float d = q_half(b);
        for (int j = 0; j < 16; j++) {
            w[j] = d * (float)((int)(b[2 + j] & 15) - 8);
            w[j + 16] = d * (float)((int)(b[2 + j] >> 4) - 8);
        }
    } else if (type == QT_Q4_1) {
        const float d = q_half(b), m = q_half(b + 2);
        for (int j = 0; j < 16; j++) {
            w[j] = d * (float)(b[4 + j] & 15) + m;
            w[j + 16] = d * (float)(b[4 + j] >> 4) + m;
        }
    } else if (type == QT_Q8_0) {
        const float d = q_half(b);
        for (int j = 0; j < 32; j++) w[j] = (float)(int8_t)b[2 + j] * d;
    } else {
        for (int j = 0; j < 32; j++) w[j] = (float)(int8_t)b[j];
    }
}

/* The dot products of an NT x MT tile: out[i * NT + r] = x[i] . W[r] for MT rows of x
 * (packed float32, K each) and NT weight rows (row_bytes apart). NT and MT are constants
 * at every call, so the loops unroll and the accumulators stay in registers. */
#if QPATH == 2
INLINE void q_tile(const int type, const int NT, const int MT, const float *x, int64_t k,
                   const uint8_t *w, int64_t row_bytes, float *out) {
    __m512 acc[4][4][2];
    for (int r = 0; r < NT; r++)
        for (int i = 0; i < MT; i++) acc[r][i][0] = acc[r][i][1] = _mm512_setzero_ps();
    const int64_t nb = k / QB;
    const int bb = q_block_bytes(type);
    for (int64_t blk = 0; blk < nb; blk++) {
        __m512 w0[4], w1[4];
        for (int r = 0; r < NT; r++) {
            q_prefetch(w + r * row_bytes + blk * bb);
            q_deq512(type, w + r * row_bytes + blk * bb, &w0[r], &w1[r]);
        }
        for (int i = 0; i < MT; i++) {
            const __m512 x0 = _mm512_loadu_ps(x + i * k + blk * QB);
            const __m512 x1 = _mm512_loadu_ps(x + i * k + blk * QB + 16);
            for (int r = 0; r < NT; r++) {
                acc[r][i][0] = _mm512_fmadd_ps(x0, w0[r], acc[r][i][0]);
                acc[r][i][1] = _mm512_fmadd_ps(x1, w1[r], acc[r][i][1]);
            }
        }
    }
    for (int r = 0; r < NT; r++)
        for (int i = 0; i < MT; i++)
            out[i * NT + r] = _mm512_reduce_add_ps(_mm512_add_ps(acc[r][i][0], acc[r][i][1]));
}
#elif QPATH == 1
static inline float q_hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

INLINE void q_tile(const int type, const int NT, const int MT, const float *x, int64_t k,
                   const uint8_t *w, int64_t row_bytes, float *out) {
    __m256 acc[4][4][2];
    for (int r = 0; r < NT; r++)
        for (int i = 0; i < MT; i++) acc[r][i][0] = acc[r][i][1] = _mm256_setzero_ps();
    const int64_t nb = k / QB;
    const int bb = q_block_bytes(type);
    for (int64_t blk = 0; blk < nb; blk++) {
        __m256 wv[4][4];
        for (int r = 0; r < NT; r++) {
            q_prefetch(w + r * row_bytes + blk * bb);
            q_deq256(type, w + r * row_bytes + blk * bb, wv[r]);
        }
        for (int i = 0; i < MT; i++) {
            const float *xb = x + i * k + blk * QB;
            for (int p = 0; p < 4; p++) {
                const __m256 xv = _mm256_loadu_ps(xb + 8 * p);
                for (int r = 0; r < NT; r++)
                    acc[r][i][p & 1] = _mm256_fmadd_ps(xv, wv[r][p], acc[r][i][p & 1]);
            }
        }
    }
    for (int r = 0; r < NT; r++)
        for (int i = 0; i < MT; i++)
            out[i * NT + r] = q_hsum256(_mm256_add_ps(acc[r][i][0], acc[r][i][1]));
}
#else
INLINE void q_tile(const int type, const int NT, const int MT, const float *x, int64_t k,
                   const uint8_t *w, int64_t row_bytes, float *out) {
    float acc[4][4];
    for (int r = 0; r < NT; r++)
        for (int i = 0; i < MT; i++) acc[r][i] = 0.f;
    const int64_t nb = k / QB;
    const int bb = q_block_bytes(type);
    for (int64_t blk = 0; blk < nb; blk++) {
        for (int r = 0; r < NT; r++) {
            float wb[QB];
            q_prefetch(w + r * row_bytes + blk * bb);
            q_block(type, w + r * row_bytes + blk * bb, wb);
            for (int i = 0; i < MT; i++) {
                const float *xb = x + i * k + blk * QB;
                float s = 0.f;
                _Pragma("omp simd reduction(+ : s)")
                for (int j = 0; j < QB; j++) s += xb[j] * wb[j];
                acc[r][i] += s;
            }
        }
    }
    for (int r = 0; r < NT; r++)
        for (int i = 0; i < MT; i++) out[i * NT + r] = acc[r][i];
}
#endif

/* q4_0 and q4_1 against bfloat16 x, with AVX512-BF16's vdpbf16ps (32 products a block in
 * one instruction, where the float path converts and multiplies 16 at a time): each
 * nibble q becomes the bf16 word of q (q4_1) or q - 8 (q4_0) by one vpermw from a table
 * (small integers are exact in bf16), and a bf16 x bf16 product is exact in float32, so
 * a block contributes d * sum_j x_j q_j (+ m * sum_j x_j for q4_1, the block sums of x
 * computed once per call): x times the exact dequantised weights, summed in another
 * order. Float32 x keeps the float path. */
#if QPATH == 2 && defined(__AVX512BF16__) && !defined(OWNLLM_NO_BF16DOT)
#define Q_BF16DOT 1
static const uint16_t q4_1_words[32] = {0x0000, 0x3f80, 0x4000, 0x4040, 0x4080, 0x40a0,
                                        0x40c0, 0x40e0, 0x4100, 0x4110, 0x4120, 0x4130,
                                        0x4140, 0x4150, 0x4160, 0x4170};
static const uint16_t q4_0_words[32] = {0xc100, 0xc0e0, 0xc0c0, 0xc0a0, 0xc080, 0xc040,
                                        0xc000, 0xbf80, 0x0000, 0x3f80, 0x4000, 0x4040,
                                        0x4080, 0x40a0, 0x40c0, 0x40e0};

INLINE __m512bh q4_words(const int type, const uint8_t *b, const __m512i table) {
    const __m128i mask = _mm_set1_epi8(15);
    const __m128i v = _mm_loadu_si128((const __m128i *)(b + (type == QT_Q4_1 ? 4 : 2)));
    const __m128i lo = _mm_and_si128(v, mask), hi = _mm_and_si128(_mm_srli_epi16(v, 4), mask);
    const __m256i q = _mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1);
    return (__m512bh)_mm512_permutexvar_epi16(_mm512_cvtepu8_epi16(q), table);
}

INLINE void q4_tile_bf16(const int type, const int NT, const int MT, const uint16_t *x,
                         const float *sx, int64_t k, const uint8_t *w, int64_t row_bytes,
                         float *out) {
    __m512 acc[4][4];
    float corr[4][4];
    for (int r = 0; r < NT; r++)
        for (int i = 0; i < MT; i++) {
            acc[r][i] = _mm512_setzero_ps();
            corr[r][i] = 0.f;
        }
    const int64_t nb = k / QB;
    const int bb = q_block_bytes(type);
    const uint16_t *words = type == QT_Q4_1 ? q4_1_words : q4_0_words;
    const __m512i table = _mm512_loadu_si512((const void *)words);
    for (int64_t blk = 0; blk < nb; blk++) {
        __m512bh wv[4];
        __m512 d[4];
        float m[4];
        for (int r = 0; r < NT; r++) {
            const uint8_t *b = w + r * row_bytes + blk * bb;
            q_prefetch(b);
            wv[r] = q4_words(type, b, table);
            d[r] = _mm512_set1_ps(q_half(b));
            m[r] = type == QT_Q4_1 ? q_half(b + 2) : 0.f;
        }
        for (int i = 0; i < MT; i++) {
            const __m512bh xv = (__m512bh)_mm512_loadu_si512((const void *)(x + i * k + blk * QB));
            const float s = type == QT_Q4_1 ? sx[i * nb + blk] : 0.f;
            for (int r = 0; r < NT; r++) {
                const __m512 p = _mm512_dpbf16_ps(_mm512_setzero_ps(), xv, wv[r]);
                acc[r][i] = _mm512_fmadd_ps(p, d[r], acc[r][i]);
                if (type == QT_Q4_1) corr[r][i] += m[r] * s;
            }
        }
    }
    for (int r = 0; r < NT; r++)
        for (int i = 0; i < MT; i++) out[i * NT + r] = _mm512_reduce_add_ps(acc[r][i]) + corr[r][i];
}

#define Q4_ROWS(TYPE, NT)                                                                      \
    do {                                                                                       \
        int64_t m = 0;                                                                         \
        for (; m + 4 <= num_rows; m += 4)                                                      \
            q4_tile_bf16(TYPE, NT, 4, xb + m * k, sx + m * nb, k, wn, row_bytes, sums + m * NT); \
        for (; m + 2 <= num_rows; m += 2)                                                      \
            q4_tile_bf16(TYPE, NT, 2, xb + m * k, sx + m * nb, k, wn, row_bytes, sums + m * NT); \
        for (; m < num_rows; m++)                                                              \
            q4_tile_bf16(TYPE, NT, 1, xb + m * k, sx + m * nb, k, wn, row_bytes, sums + m * NT); \
    } while (0)

INLINE void q4_block_of_rows(const int type, const uint16_t *xb, const float *sx,
                             int64_t num_rows, int64_t k, const uint8_t *w, int64_t row_bytes,
                             int64_t n0, int nt, float *sums) {
    const int64_t nb = k / QB;
    const uint8_t *wn = w + n0 * row_bytes;
    if (nt == 4) {
        Q4_ROWS(type, 4);
    } else if (nt == 2) {
        Q4_ROWS(type, 2);
    } else {
        Q4_ROWS(type, 1);
    }
}

/* quant_matmul_bf16 for q4_0 / q4_1: the same tiling over weight rows as DEFINE_QUANT. */
static int q4_matmul_bf16dot(const uint16_t *x, int64_t x_stride, int64_t num_rows,
                             const uint8_t *w, int type, int64_t n, int64_t k, uint16_t *out,
                             int64_t out_stride, int num_threads) {
    const int64_t nb = k / QB;
    uint16_t *xb = malloc(sizeof(uint16_t) * (size_t)(num_rows * k + 1));
    float *sx = malloc(sizeof(float) * (size_t)(num_rows * nb + 1));
    if (xb == NULL || sx == NULL) {
        free(xb);
        free(sx);
        return OWNLLM_ENOMEM;
    }
    for (int64_t m = 0; m < num_rows; m++) {
        memcpy(xb + m * k, x + m * x_stride, sizeof(uint16_t) * (size_t)k);
        for (int64_t blk = 0; blk < nb; blk++) {
            float s = 0.f;
            for (int j = 0; j < QB; j++) s += bf16_to_f32(xb[m * k + blk * QB + j]);
            sx[m * nb + blk] = s;
        }
    }
    const int64_t row_bytes = q_row_bytes(type, k);
    const int nt = num_rows == 1 ? 4 : 2;
    const int64_t tiles = (n + nt - 1) / nt;
    int failed = 0;
#pragma omp parallel num_threads(num_threads)
    {
        float *sums = malloc(sizeof(float) * (size_t)(num_rows * 4));
        if (sums == NULL) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int64_t t = 0; t < tiles; t++) {
            if (sums == NULL) continue;
            const int64_t n0 = t * nt;
            const int width = n0 + nt <= n ? nt : 1;
            for (int64_t c0 = n0; c0 < n0 + nt && c0 < n; c0 += width) {
                if (type == QT_Q4_1)
                    q4_block_of_rows(QT_Q4_1, xb, sx, num_rows, k, w, row_bytes, c0, width, sums);
                else
                    q4_block_of_rows(QT_Q4_0, xb, sx, num_rows, k, w, row_bytes, c0, width, sums);
                for (int64_t m = 0; m < num_rows; m++)
                    for (int r = 0; r < width; r++)
                        out[m * out_stride + c0 + r] = f32_to_bf16(sums[m * width + r]);
            }
        }
        free(sums);
    }
    free(xb);
    free(sx);
    return failed ? OWNLLM_ENOMEM : 0;
}
#define Q_FAST_bf16                                                                            \
    if (type == QT_Q4_0 || type == QT_Q4_1)                                                    \
        return q4_matmul_bf16dot(x, x_stride, num_rows, w, type, n, k, out, out_stride,        \
                                 num_threads);
#else
#define Q_BF16DOT 0
#define Q_FAST_bf16
#endif
#define Q_FAST_f32

/* The tile for weight rows [n, n + NT) and x rows [m, m + MT), the int8 tail columns
 * (k % 32) added in scalar, results into sums[i][r] (float32, x rows apart by NT). */
INLINE void q_tile_tail(const int type, const int NT, const int MT, const float *x, int64_t k,
                        const uint8_t *w, int64_t row_bytes, float *sums) {
    q_tile(type, NT, MT, x, k, w, row_bytes, sums);
    const int64_t done = k / QB * QB;
    if (type == QT_INT8 && done < k) {
        for (int i = 0; i < MT; i++)
            for (int r = 0; r < NT; r++) {
                float s = 0.f;
                for (int64_t c = done; c < k; c++)
                    s += x[i * k + c] * (float)(int8_t)w[r * row_bytes + c];
                sums[i * NT + r] += s;
            }
    }
}

/* Tiles over x rows for weight rows [n, n + NT), NT constant: 4, 2, 1 rows of x at a time. */
#define Q_ROWS(TYPE, NT)                                                                       \
    do {                                                                                       \
        int64_t m = 0;                                                                         \
        for (; m + 4 <= num_rows; m += 4)                                                      \
            q_tile_tail(TYPE, NT, 4, xf + m * k, k, wn, row_bytes, sums + m * NT);             \
        for (; m + 2 <= num_rows; m += 2)                                                      \
            q_tile_tail(TYPE, NT, 2, xf + m * k, k, wn, row_bytes, sums + m * NT);             \
        for (; m < num_rows; m++)                                                              \
            q_tile_tail(TYPE, NT, 1, xf + m * k, k, wn, row_bytes, sums + m * NT);             \
    } while (0)

/* Weight rows per tile: where x is one row, more weight rows share each load of x
 * (independent sums hide the FMA latency); AVX2 has half the registers. */
#if QPATH == 2
#define Q_NT_ONE 4
#define Q_NT_MANY 2
#elif QPATH == 1
#define Q_NT_ONE 2
#define Q_NT_MANY 1
#else
#define Q_NT_ONE 4
#define Q_NT_MANY 2
#endif

/* sums [num_rows, NT] of weight rows [n0, n0 + NT) for one type (constant after inlining). */
INLINE void q_block_of_rows(const int type, const float *xf, int64_t num_rows, int64_t k,
                            const uint8_t *w, int64_t row_bytes, int64_t n0, int nt,
                            float *sums) {
    const uint8_t *wn = w + n0 * row_bytes;
    if (nt == Q_NT_ONE && num_rows == 1) {
        Q_ROWS(type, Q_NT_ONE);
    } else if (nt == Q_NT_MANY) {
        Q_ROWS(type, Q_NT_MANY);
    } else {
        Q_ROWS(type, 1);
    }
}

static void q_dispatch(int type, const float *xf, int64_t num_rows, int64_t k, const uint8_t *w,
                       int64_t row_bytes, int64_t n0, int nt, float *sums) {
    switch (type) {
    case QT_Q4_0: q_block_of_rows(QT_Q4_0, xf, num_rows, k, w, row_bytes, n0, nt, sums); break;
    case QT_Q4_1: q_block_of_rows(QT_Q4_1, xf, num_rows, k, w, row_bytes, n0, nt, sums); break;
    case QT_Q8_0: q_block_of_rows(QT_Q8_0, xf, num_rows, k, w, row_bytes, n0, nt, sums); break;
    default: q_block_of_rows(QT_INT8, xf, num_rows, k, w, row_bytes, n0, nt, sums); break;
    }
}

#define Q_MAX_NT 4

#define DEFINE_QUANT(SUFFIX, T_, LOAD, STORE)                                                  \
int quant_matmul_##SUFFIX(const T_ *x, int64_t x_stride, int64_t num_rows, const uint8_t *w,   \
                          int type, int64_t n, int64_t k, const float *scale, T_ *out,         \
                          int64_t out_stride, int num_threads) {                               \
    Q_FAST_##SUFFIX                                                                            \
    /* x widened and packed once: [num_rows, k] float32 */                                     \
    float *xf = malloc(sizeof(float) * (size_t)(num_rows * k + 1));                            \
    if (xf == NULL) return OWNLLM_ENOMEM;                                                      \
    for (int64_t m = 0; m < num_rows; m++)                                                     \
        for (int64_t c = 0; c < k; c++) xf[m * k + c] = LOAD(x[m * x_stride + c]);             \
    const int64_t row_bytes = q_row_bytes(type, k);                                            \
    const int nt = num_rows == 1 ? Q_NT_ONE : Q_NT_MANY;                                       \
    const int64_t tiles = (n + nt - 1) / nt;                                                   \
    int failed = 0;                                                                            \
    _Pragma("omp parallel num_threads(num_threads)")                                           \
    {                                                                                          \
        float *sums = malloc(sizeof(float) * (size_t)(num_rows * Q_MAX_NT));                   \
        if (sums == NULL) {                                                                    \
            _Pragma("omp atomic write")                                                        \
            failed = 1;                                                                        \
        }                                                                                      \
        _Pragma("omp for schedule(static)")                                                    \
        for (int64_t t = 0; t < tiles; t++) {                                                  \
            if (sums == NULL) continue;                                                        \
            const int64_t n0 = t * nt;                                                         \
            const int width = n0 + nt <= n ? nt : 1;                                           \
            for (int64_t c0 = n0; c0 < n0 + nt && c0 < n; c0 += width) {                       \
                q_dispatch(type, xf, num_rows, k, w, row_bytes, c0, width, sums);              \
                for (int64_t m = 0; m < num_rows; m++)                                         \
                    for (int r = 0; r < width; r++) {                                          \
                        float v = sums[m * width + r];                                         \
                        if (scale != NULL) v *= scale[c0 + r];                                 \
                        out[m * out_stride + c0 + r] = STORE(v);                               \
                    }                                                                          \
            }                                                                                  \
        }                                                                                      \
        free(sums);                                                                            \
    }                                                                                          \
    free(xf);                                                                                  \
    return failed ? OWNLLM_ENOMEM : 0;                                                         \
}                                                                                              \
                                                                                               \
/* out [n, k] (contiguous) = W's rows [0, n) dequantised (int8: times scale). */               \
void quant_dequantize_##SUFFIX(const uint8_t *w, int type, int64_t n, int64_t k,               \
                               const float *scale, T_ *out, int num_threads) {                 \
    const int64_t row_bytes = q_row_bytes(type, k), nb = k / QB;                               \
    const int bb = q_block_bytes(type);                                                        \
    _Pragma("omp parallel for num_threads(num_threads) schedule(static)")                      \
    for (int64_t r = 0; r < n; r++) {                                                          \
        const uint8_t *row = w + r * row_bytes;                                                \
        T_ *dst = out + r * k;                                                                 \
        const float s = scale != NULL ? scale[r] : 1.0f;                                       \
        float wb[QB];                                                                          \
        for (int64_t blk = 0; blk < nb; blk++) {                                               \
            switch (type) {                                                                    \
            case QT_Q4_0: q_block(QT_Q4_0, row + blk * bb, wb); break;                         \
            case QT_Q4_1: q_block(QT_Q4_1, row + blk * bb, wb); break;                         \
            case QT_Q8_0: q_block(QT_Q8_0, row + blk * bb, wb); break;                         \
            default: q_block(QT_INT8, row + blk * bb, wb); break;                              \
            }                                                                                  \
            for (int j = 0; j < QB; j++)                                                       \
                dst[blk * QB + j] = STORE(scale != NULL ? wb[j] * s : wb[j]);                  \
        }                                                                                      \
        for (int64_t c = nb * QB; c < k; c++) dst[c] = STORE((float)(int8_t)row[c] * s);       \
    }                                                                                          \
}

DEFINE_QUANT(f32, float, f32_id, f32_id)
DEFINE_QUANT(bf16, uint16_t, bf16_to_f32, f32_to_bf16)

/* Which inner loop this build runs: 2 AVX-512F, 1 AVX2 + FMA, 0 the portable loop. */
int quant_path(void) { return QPATH; }

/* 1 where bf16 x times q4_0 / q4_1 runs vdpbf16ps (q4_matmul_bf16dot), else 0. */
int quant_bf16_dot(void) { return Q_BF16DOT; }
