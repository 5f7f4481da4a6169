/* ownllm's quantised matmul with 8-bit activations (llama.cpp's scheme): y = x W^T for
 * decode-sized x, W in q4_0, q4_1 or q8_0. Each row of x is first rounded to int8 blocks
 * of 32, as ggml's q8_0 / q8_1 (d = max |x| / 127, q = round(x / d), s = d sum q), so a
 * block of W times a block of x is one integer dot product, scaled once:
 *   q8_0  dw dx sum(qw qx)
 *   q4_0  dw dx sum(qw qx) - 8 dw s      (w = dw (qw - 8))
 *   q4_1  dw dx sum(qw qx) + mw s        (w = dw qw + mw)
 * This changes the numerics: the result is the exact dequantised W times x_hat = dx qx
 * (x rounded to 8 bits a block), summed in float32 (the integer sums are exact). The float
 * path (quant_kernels.c) stays the reference; ownllm/engine/ops.py takes this one only
 * where `model.activations` asks for int8.
 *
 * Inner loops, the same integer sums in each: AVX-512 VNNI (vpdpbusd on 256-bit vectors,
 * AVX512VL; -DOWNLLM_NO_VNNI turns it off), AVX2 (vpmaddubsw + vpmaddwd: the AVX2 build,
 * -DOWNLLM_NO_AVX512, or no VNNI) and a portable loop (-DOWNLLM_NO_AVX2 as well). Both
 * vector loops multiply 32 unsigned weight bytes by 32 signed x bytes: q4's nibbles as
 * they are; for q8_0, |qw| times qx with qx's sign flipped where qw < 0 (llama.cpp's
 * trick; the pair sums of vpmaddubsw stay below 2 * 128 * 127, no saturation).
 * Left out: int8 (per-channel) weights, which keep the float path.
 */
#include <math.h>

#include "quant_common.h"

#if QPATH == 2 && defined(__AVX512VNNI__) && defined(__AVX512VL__) && !defined(OWNLLM_NO_VNNI)
#define I8_PATH 2
#elif QPATH >= 1
#define I8_PATH 1
#else
#define I8_PATH 0
#endif

#define OWNLLM_EINVAL 22 /* a weight type this path does not take */

/* One row of x (k float32, k a multiple of 32) as int8 blocks: q [k], d [k / 32] and
 * s [k / 32] = d * sum q. nearbyintf rounds half to even (ggml's roundf: half away from
 * zero; they differ only on exact halves). */
static void i8_quantize_row(const float *x, int64_t k, int8_t *q, float *d, float *s) {
    for (int64_t blk = 0; blk < k / QB; blk++) {
        const float *xb = x + blk * QB;
        float amax = 0.f;
        for (int j = 0; j < QB; j++) {
            const float a = fabsf(xb[j]);
            amax = a > amax ? a : amax;
        }
        const float dx = amax / 127.0f, id = dx != 0.f ? 1.0f / dx : 0.f;
        int sum = 0;
        for (int j = 0; j < QB; j++) {
            const int v = (int)nearbyintf(xb[j] * id);
            q[blk * QB + j] = (int8_t)v;
            sum += v;
        }
        d[blk] = dx;
        s[blk] = dx * (float)sum;
    }
}

/* What a weight block adds besides dw dx sum(qw qx), per unit of the x block's s. */
INLINE float i8_offset(const int type, const uint8_t *b, float dw) {
    return type == QT_Q4_1 ? q_half(b + 2) : type == QT_Q4_0 ? -8.f * dw : 0.f;
}

/* out[i * NT + r] = x[i] . W[r] for MT rows of quantised x (xq, xd, xs) and NT weight rows
 * (row_bytes apart); NT and MT are constants at every call, so the sums stay in registers. */
#if I8_PATH > 0
INLINE __m256i i8_dot(__m256i u, __m256i s) { /* 8 int32: sums of 4 u8 x s8 products */
#if I8_PATH == 2
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
#else
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
#endif
}

/* A block's 32 quants in element order: q4's nibbles (element j: byte j's low nibble,
 * j + 16: its high one), or q8_0's signed bytes. */
INLINE __m256i i8_weights(const int type, const uint8_t *b) {
    if (type == QT_Q8_0) return _mm256_loadu_si256((const __m256i *)(b + 2));
    const __m128i v = _mm_loadu_si128((const __m128i *)(b + (type == QT_Q4_1 ? 4 : 2)));
    const __m128i mask = _mm_set1_epi8(15);
    const __m128i lo = _mm_and_si128(v, mask), hi = _mm_and_si128(_mm_srli_epi16(v, 4), mask);
    return _mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1);
}

static inline float i8_hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

INLINE void i8_tile(const int type, const int NT, const int MT, const int8_t *xq,
                    const float *xd, const float *xs, int64_t k, const uint8_t *w,
                    int64_t row_bytes, float *out) {
    __m256 acc[4][4];
    float corr[4][4];
    for (int r = 0; r < NT; r++)
        for (int i = 0; i < MT; i++) {
            acc[r][i] = _mm256_setzero_ps();
            corr[r][i] = 0.f;
        }
    const int64_t nb = k / QB;
    const int bb = q_block_bytes(type);
    for (int64_t blk = 0; blk < nb; blk++) {
        __m256i wv[4];
        float dw[4], cw[4];
        for (int r = 0; r < NT; r++) {
            const uint8_t *b = w + r * row_bytes + blk * bb;
            q_prefetch(b);
            wv[r] = i8_weights(type, b);
            dw[r] = q_half(b);
            cw[r] = i8_offset(type, b, dw[r]);
        }
        for (int i = 0; i < MT; i++) {
            const __m256i xv = _mm256_loadu_si256((const __m256i *)(xq + i * k + blk * QB));
            const float dx = xd[i * nb + blk], sx = xs[i * nb + blk];
            for (int r = 0; r < NT; r++) {
                const __m256i dp =
                    type == QT_Q8_0
                        ? i8_dot(_mm256_sign_epi8(wv[r], wv[r]), _mm256_sign_epi8(xv, wv[r]))
                        : i8_dot(wv[r], xv);
                acc[r][i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dp), _mm256_set1_ps(dw[r] * dx),
                                            acc[r][i]);
                if (type != QT_Q8_0) corr[r][i] += cw[r] * sx;
            }
        }
    }
    for (int r = 0; r < NT; r++)
        for (int i = 0; i < MT; i++) out[i * NT + r] = i8_hsum(acc[r][i]) + corr[r][i];
}
#else
INLINE void i8_tile(const int type, const int NT, const int MT, const int8_t *xq,
                    const float *xd, const float *xs, int64_t k, const uint8_t *w,
                    int64_t row_bytes, float *out) {
    float acc[4][4];
    for (int r = 0; r < NT; r++)
        for (int i = 0; i < MT; i++) acc[r][i] = 0.f;
    const int64_t nb = k / QB;
    const int bb = q_block_bytes(type);
    for (int64_t blk = 0; blk < nb; blk++) {
        for (int r = 0; r < NT; r++) {
            const uint8_t *b = w + r * row_bytes + blk * bb;
            q_prefetch(b);
            int qw[QB];
            if (type == QT_Q8_0) {
                for (int j = 0; j < QB; j++) qw[j] = (int8_t)b[2 + j];
            } else {
                const uint8_t *nib = b + (type == QT_Q4_1 ? 4 : 2);
                for (int j = 0; j < 16; j++) {
                    qw[j] = nib[j] & 15;
                    qw[j + 16] = nib[j] >> 4;
                }
            }
            const float dw = q_half(b), cw = i8_offset(type, b, dw);
            for (int i = 0; i < MT; i++) {
                const int8_t *xb = xq + i * k + blk * QB;
                int s = 0;
                for (int j = 0; j < QB; j++) s += qw[j] * xb[j];
                acc[r][i] += (float)s * (dw * xd[i * nb + blk]) + cw * xs[i * nb + blk];
            }
        }
    }
    for (int r = 0; r < NT; r++)
        for (int i = 0; i < MT; i++) out[i * NT + r] = acc[r][i];
}
#endif

/* Tiles over x rows for weight rows [n0, n0 + NT), NT constant: 4, 2, 1 rows of x at once. */
#define I8_ROWS(TYPE, NT)                                                                      \
    do {                                                                                       \
        int64_t m = 0;                                                                         \
        for (; m + 4 <= num_rows; m += 4)                                                      \
            i8_tile(TYPE, NT, 4, xq + m * k, xd + m * nb, xs + m * nb, k, wn, row_bytes,       \
                    sums + m * NT);                                                            \
        for (; m + 2 <= num_rows; m += 2)                                                      \
            i8_tile(TYPE, NT, 2, xq + m * k, xd + m * nb, xs + m * nb, k, wn, row_bytes,       \
                    sums + m * NT);                                                            \
        for (; m < num_rows; m++)                                                              \
            i8_tile(TYPE, NT, 1, xq + m * k, xd + m * nb, xs + m * nb, k, wn, row_bytes,       \
                    sums + m * NT);                                                            \
    } while (0)

/* Weight rows per tile: 4 where x is one row (each x block loaded once for 4 rows), else 2
 * (the sums of 2 x 4 tiles fit AVX2's 16 registers). */
#define I8_NT_ONE 4
#define I8_NT_MANY 2

INLINE void i8_block_of_rows(const int type, const int8_t *xq, const float *xd, const float *xs,
                             int64_t num_rows, int64_t k, const uint8_t *w, int64_t row_bytes,
                             int64_t n0, int nt, float *sums) {
    const int64_t nb = k / QB;
    const uint8_t *wn = w + n0 * row_bytes;
    if (nt == I8_NT_ONE && num_rows == 1) {
        I8_ROWS(type, I8_NT_ONE);
    } else if (nt == I8_NT_MANY) {
        I8_ROWS(type, I8_NT_MANY);
    } else {
        I8_ROWS(type, 1);
    }
}

static void i8_dispatch(int type, const int8_t *xq, const float *xd, const float *xs,
                        int64_t num_rows, int64_t k, const uint8_t *w, int64_t row_bytes,
                        int64_t n0, int nt, float *sums) {
    switch (type) {
    case QT_Q4_0: i8_block_of_rows(QT_Q4_0, xq, xd, xs, num_rows, k, w, row_bytes, n0, nt, sums); break;
    case QT_Q4_1: i8_block_of_rows(QT_Q4_1, xq, xd, xs, num_rows, k, w, row_bytes, n0, nt, sums); break;
    default: i8_block_of_rows(QT_Q8_0, xq, xd, xs, num_rows, k, w, row_bytes, n0, nt, sums); break;
    }
}

/* quant_matmul_i8_{f32,bf16}: out [num_rows, n] = x W^T with x rounded to int8 blocks; the
 * same arguments as quant_matmul_* less the int8 scale. Returns 0, OWNLLM_ENOMEM, or
 * OWNLLM_EINVAL for a type other than q4_0, q4_1, q8_0. */
#define DEFINE_I8(SUFFIX, T_, LOAD, STORE)                                                     \
int quant_matmul_i8_##SUFFIX(const T_ *x, int64_t x_stride, int64_t num_rows, const uint8_t *w,\
                             int type, int64_t n, int64_t k, T_ *out, int64_t out_stride,      \
                             int num_threads) {                                                \
    if ((type != QT_Q4_0 && type != QT_Q4_1 && type != QT_Q8_0) || k % QB) return OWNLLM_EINVAL; \
    const int64_t nb = k / QB;                                                                 \
    int8_t *xq = malloc((size_t)(num_rows * k + 1));                                           \
    float *xd = malloc(sizeof(float) * (size_t)(2 * num_rows * nb + k + 1));                   \
    if (xq == NULL || xd == NULL) {                                                            \
        free(xq);                                                                              \
        free(xd);                                                                              \
        return OWNLLM_ENOMEM;                                                                  \
    }                                                                                          \
    float *xs = xd + num_rows * nb, *xf = xs + num_rows * nb;                                  \
    for (int64_t m = 0; m < num_rows; m++) {                                                   \
        for (int64_t c = 0; c < k; c++) xf[c] = LOAD(x[m * x_stride + c]);                     \
        i8_quantize_row(xf, k, xq + m * k, xd + m * nb, xs + m * nb);                          \
    }                                                                                          \
    const int64_t row_bytes = q_row_bytes(type, k);                                            \
    const int nt = num_rows == 1 ? I8_NT_ONE : I8_NT_MANY;                                     \
    const int64_t tiles = (n + nt - 1) / nt;                                                   \
    _Pragma("omp parallel for num_threads(num_threads) schedule(static)")                      \
    for (int64_t t = 0; t < tiles; t++) {                                                      \
        float sums[4 * 16];                                                                    \
        const int64_t n0 = t * nt;                                                             \
        const int width = n0 + nt <= n ? nt : 1;                                               \
        for (int64_t c0 = n0; c0 < n0 + nt && c0 < n; c0 += width) {                           \
            for (int64_t m0 = 0; m0 < num_rows; m0 += 16) {                                    \
                const int64_t rows = num_rows - m0 < 16 ? num_rows - m0 : 16;                  \
                i8_dispatch(type, xq + m0 * k, xd + m0 * nb, xs + m0 * nb, rows, k, w,         \
                            row_bytes, c0, width, sums);                                       \
                for (int64_t m = 0; m < rows; m++)                                             \
                    for (int r = 0; r < width; r++)                                            \
                        out[(m0 + m) * out_stride + c0 + r] = STORE(sums[m * width + r]);      \
            }                                                                                  \
        }                                                                                      \
    }                                                                                          \
    free(xq);                                                                                  \
    free(xd);                                                                                  \
    return 0;                                                                                  \
}

DEFINE_I8(f32, float, f32_id, f32_id)
DEFINE_I8(bf16, uint16_t, bf16_to_f32, f32_to_bf16)

/* Which inner loop this build runs: 2 AVX-512 VNNI, 1 AVX2, 0 the portable loop. */
int quant_i8_path(void) { return I8_PATH; }
