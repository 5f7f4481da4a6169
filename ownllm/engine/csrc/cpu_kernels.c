/* ownllm's CPU kernels: rotary + KV-cache write, and paged decode attention.
 *
 * Compiled on first use by ownllm/engine/cpu_kernels.py with the system C
 * compiler (-O3 -march=native -fopenmp) and called through ctypes on tensors'
 * data pointers. OpenMP here resolves to the libgomp that torch already loaded,
 * so both share one thread pool. Each function exists for float32 (suffix f32)
 * and bfloat16 (suffix bf16, stored as uint16, computed in float32).
 *
 * Layouts (all row-major, contiguous unless a stride is given):
 *   qkv       [T, row_stride]: per row H query heads, then Hkv key heads, then
 *             Hkv value heads, D each
 *   rope      [T, D] float32: cos (D/2) then sin (D/2), attention factor applied
 *   k/v cache [num_slots, Hkv, D] (slot = block * block_size + offset)
 *   tables    [B, max_blocks] int32 block ids; ctx_lens [B] int32
 *   out       [B, H * D]
 *
 * Nothing here checks shapes, dtypes or strides: the Python wrappers do. The kernels
 * that need scratch (decode_attention, lora) allocate it once per thread per call and
 * return 0, or OWNLLM_ENOMEM when an allocation failed (their output is then partial).
 */
#include <math.h>

#include "kernels_common.h"

#define TILE 16
#define MAX_GROUP 64

/* Every kernel family is defined for both storage types: fp32, and bf16 widened to fp32 in
 * registers. DEFINE takes (SUFFIX, storage type, LOAD to fp32, STORE from fp32). */
#define FOR_EACH_DTYPE(DEFINE)                                                                 \
    DEFINE(f32, float, f32_id, f32_id)                                                         \
    DEFINE(bf16, uint16_t, bf16_to_f32, f32_to_bf16)

/* Per-thread fp32 scratch inside an OpenMP region. When malloc fails the pointer is NULL and
 * FAILED is set: the thread skips its share of the loop and the kernel returns OWNLLM_ENOMEM. */
#define THREAD_SCRATCH(PTR, COUNT, FAILED)                                                     \
    float *PTR = malloc(sizeof(float) * (COUNT));                                              \
    if (PTR == NULL) {                                                                         \
        _Pragma("omp atomic write")                                                            \
        FAILED = 1;                                                                            \
    }

/* exp(x), relative error < 2e-7 for x in [-87, 88] (clamped outside), written so the
 * compiler vectorises it: exp(x) = 2^n * exp(r), |r| <= ln2 / 2, degree-6 polynomial. */
static inline float fast_exp(float x) {
    x = x < -87.f ? -87.f : (x > 88.f ? 88.f : x);
    const float n = (x * 1.44269504f + 12582912.f) - 12582912.f; /* round to nearest */
    const float r = x - n * 0.693145752f - n * 1.42860677e-6f;
    float p = 1.38888889e-3f;
    p = p * r + 8.33333333e-3f;
    p = p * r + 4.16666667e-2f;
    p = p * r + 1.66666667e-1f;
    p = p * r + 0.5f;
    p = p * r + 1.f;
    p = p * r + 1.f;
    union { uint32_t u; float f; } scale;
    scale.u = (uint32_t)((int32_t)n + 127) << 23;
    return p * scale.f;
}

/* The unnormalised softmax of n scores in place: s[j] = exp(s[j] - max s); returns the sum. */
static inline float exp_shifted(float *restrict s, int n) {
    float m = -INFINITY, sum = 0.f;
    for (int j = 0; j < n; j++) m = s[j] > m ? s[j] : m;
#pragma omp simd reduction(+ : sum)
    for (int j = 0; j < n; j++) {
        s[j] = fast_exp(s[j] - m);
        sum += s[j];
    }
    return sum;
}


#if defined(__AVX512F__) && !defined(OWNLLM_NO_AVX512)
#include <immintrin.h>
#define HAVE_AVX512_TASK 1
static inline __m512 load16_bf16(const uint16_t *p) {
    __m256i h = _mm256_loadu_si256((const __m256i *)p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
static inline __m512 load16_f32(const float *p) { return _mm512_loadu_ps(p); }

/* r[j] = sum of the 16 lanes of a[j], for 16 vectors at once (transpose-and-add). */
static inline __m512 hsum16(const __m512 a[16]) {
    __m512 t[8], u[4];
    for (int i = 0; i < 8; i++)
        t[i] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]),
                             _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1]));
    for (int i = 0; i < 4; i++) {
        const __m512d x = _mm512_castps_pd(t[2 * i]), y = _mm512_castps_pd(t[2 * i + 1]);
        u[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)),
                             _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
    }
    /* u[i], per 128-bit lane L: the lane-L sums of a[4i .. 4i + 3] */
    const __m512 w0 = _mm512_add_ps(_mm512_shuffle_f32x4(u[0], u[1], 0x88),
                                    _mm512_shuffle_f32x4(u[0], u[1], 0xdd));
    const __m512 w1 = _mm512_add_ps(_mm512_shuffle_f32x4(u[2], u[3], 0x88),
                                    _mm512_shuffle_f32x4(u[2], u[3], 0xdd));
    return _mm512_add_ps(_mm512_shuffle_f32x4(w0, w1, 0x88), _mm512_shuffle_f32x4(w0, w1, 0xdd));
}

/* The body of qk16_*: 16 q.k dot products as fp32 FMAs into a[16], LOADK widening 16 keys to
 * fp32, then one transposed reduction. */
#define QK16_FMA(LOADK)                                                                        \
    for (int j = 0; j < 16; j++) {                                                             \
        __m512 acc = _mm512_mul_ps(_mm512_loadu_ps(q), LOADK(k[j]));                           \
        for (int c = 1; c < chunks; c++)                                                       \
            acc = _mm512_fmadd_ps(_mm512_loadu_ps(q + c * 16), LOADK(k[j] + c * 16), acc);     \
        a[j] = acc;                                                                            \
    }                                                                                          \
    return hsum16(a);

/* Scores of one query head against 16 key rows `k[j]`, float32 cache: q pre-scaled. */
static inline __m512 qk16_f32(const float *q, const uint16_t *qb, const float *const k[16],
                              int chunks, float scale) {
    __m512 a[16];
    QK16_FMA(load16_f32)
}

/* The same for a bfloat16 cache: with AVX512-BF16 the bf16 query (unscaled, `qb`) and keys
 * go straight into vdpbf16ps, two products per lane; the scale is applied to the scores. */
static inline __m512 qk16_bf16(const float *q, const uint16_t *qb, const uint16_t *const k[16],
                               int chunks, float scale) {
    __m512 a[16];
#if defined(__AVX512BF16__)
    if (chunks % 2 == 0) {
        for (int j = 0; j < 16; j++) {
            __m512 acc = _mm512_setzero_ps();
            for (int c = 0; c < chunks / 2; c++)
                acc = _mm512_dpbf16_ps(acc, (__m512bh)_mm512_loadu_si512(qb + c * 32),
                                       (__m512bh)_mm512_loadu_si512(k[j] + c * 32));
            a[j] = acc;
        }
        return _mm512_mul_ps(hsum16(a), _mm512_set1_ps(scale));
    }
#endif
    QK16_FMA(load16_bf16)
}

/* One (sequence, kv head) of decode attention, AVX-512: q [group][D] (scaled, float32),
 * head_dim a multiple of 16 and at most 256, group at most 8. Scores to `scores`
 * [group][n], the softmax-weighted values to acc [group][D]. */
#define TASK_CALL(SUFFIX, CH, G)                                                               \
    decode_task_avx512_inline_##SUFFIX(q, q_raw, scale, G, head_dim, k_cache, v_cache, kv_size,\
                                       head_off, table, block_size, first, n, scores, acc, CH)
#define DEFINE_AVX512_TASK(SUFFIX, T_)                                                          \
static inline __attribute__((always_inline)) void decode_task_avx512_inline_##SUFFIX(        \
    const float *q, const T_ *q_raw, float scale, int group, int head_dim, const T_ *k_cache,  \
    const T_ *v_cache, int64_t kv_size, int64_t head_off, const int32_t *table,                \
    int block_size, int first, int n, float *scores, float *acc, const int chunks) {           \
    /* scores [group][padded]: 16 key rows at a time, one transposed reduction per head */ \
    const int padded = (n + 15) / 16 * 16;                                                     \
    int bi = first / block_size, off = first % block_size;                                     \
    for (int j0 = 0; j0 < n; j0 += 16) {                                                       \
        const T_ *k[16];                                                                       \
        for (int j = 0; j < 16; j++) {                                                         \
            k[j] = k_cache + ((int64_t)table[bi] * block_size + off) * kv_size + head_off;     \
            if (j0 + j + 1 < n && ++off == block_size) off = 0, bi++;                          \
        }                                                                                      \
        for (int g = 0; g < group; g++)                                                        \
            _mm512_storeu_ps(scores + g * padded + j0,                                         \
                             qk16_##SUFFIX(q + g * head_dim, (const uint16_t *)q_raw           \
                                           + g * head_dim, k, chunks, scale));                 \
    }                                                                                          \
    for (int g = 0; g < group; g++) {                                                          \
        float *sg = scores + g * padded;                                                       \
        const float inv = 1.f / exp_shifted(sg, n);                                            \
        for (int j = 0; j < n; j++) sg[j] *= inv;                                              \
    }                                                                                          \
    if (group * chunks <= 24) {                                                                \
        /* every (query head, 16 dims) sum in a register for the whole pass over the values */ \
        __m512 a[24];                                                                          \
        for (int i = 0; i < group * chunks; i++) a[i] = _mm512_setzero_ps();                   \
        int vb = first / block_size, voff = first % block_size;                                \
        for (int j = 0; j < n; j++) {                                                          \
            const T_ *v = v_cache + ((int64_t)table[vb] * block_size + voff) * kv_size + head_off; \
            __m512 vc[16];                                                                     \
            for (int c = 0; c < chunks; c++) vc[c] = load16_##SUFFIX(v + c * 16);              \
            for (int g = 0; g < group; g++) {                                                  \
                const __m512 w = _mm512_set1_ps(scores[g * padded + j]);                       \
                for (int c = 0; c < chunks; c++)                                               \
                    a[g * chunks + c] = _mm512_fmadd_ps(w, vc[c], a[g * chunks + c]);          \
            }                                                                                  \
            if (++voff == block_size) voff = 0, vb++;                                          \
        }                                                                                      \
        for (int i = 0; i < group * chunks; i++) _mm512_storeu_ps(acc + i * 16, a[i]);         \
        return;                                                                                \
    }                                                                                          \
    for (int i = 0; i < group * head_dim; i++) acc[i] = 0.f;                                   \
    /* a block's run of positions at a time; per (query head, 16 dims) one register sum */    \
    for (int j0 = 0; j0 < n;) {                                                                \
        const int p0 = first + j0, bi = p0 / block_size, off = p0 % block_size;                \
        const int count = (block_size - off) < (n - j0) ? (block_size - off) : (n - j0);       \
        const T_ *v0 = v_cache + ((int64_t)table[bi] * block_size + off) * kv_size + head_off; \
        for (int g = 0; g < group; g++) {                                                      \
            const float *w = scores + g * padded + j0;                                              \
            __m512 a[16];                                                                      \
            for (int c = 0; c < chunks; c++) a[c] = _mm512_loadu_ps(acc + g * head_dim + c * 16); \
            for (int j = 0; j < count; j++) {                                                  \
                const __m512 wj = _mm512_set1_ps(w[j]);                                        \
                for (int c = 0; c < chunks; c++)                                               \
                    a[c] = _mm512_fmadd_ps(wj, load16_##SUFFIX(v0 + j * kv_size + c * 16), a[c]); \
            }                                                                                  \
            for (int c = 0; c < chunks; c++) _mm512_storeu_ps(acc + g * head_dim + c * 16, a[c]); \
        }                                                                                      \
        j0 += count;                                                                           \
    }                                                                                          \
}                                                                                              \
static void decode_task_avx512_##SUFFIX(const float *q, const T_ *q_raw, float scale,         \
                                        int group, int head_dim,                               \
                                        const T_ *k_cache, const T_ *v_cache, int64_t kv_size, \
                                        int64_t head_off, const int32_t *table, int block_size,\
                                        int first, int n, float *scores, float *acc) {          \
    /* constant head sizes and group sizes let the compiler keep the sums in registers */    \
    if (head_dim == 64) {                                                                      \
        switch (group) {                                                                       \
        case 1: TASK_CALL(SUFFIX, 4, 1); return;                                               \
        case 2: TASK_CALL(SUFFIX, 4, 2); return;                                               \
        case 3: TASK_CALL(SUFFIX, 4, 3); return;                                               \
        case 4: TASK_CALL(SUFFIX, 4, 4); return;                                               \
        case 5: TASK_CALL(SUFFIX, 4, 5); return;                                               \
        case 6: TASK_CALL(SUFFIX, 4, 6); return;                                               \
        }                                                                                      \
    } else if (head_dim == 128) {                                                              \
        switch (group) {                                                                       \
        case 1: TASK_CALL(SUFFIX, 8, 1); return;                                               \
        case 2: TASK_CALL(SUFFIX, 8, 2); return;                                               \
        case 3: TASK_CALL(SUFFIX, 8, 3); return;                                               \
        }                                                                                      \
    }                                                                                          \
    TASK_CALL(SUFFIX, head_dim / 16, group);                                                   \
}
DEFINE_AVX512_TASK(f32, float)
DEFINE_AVX512_TASK(bf16, uint16_t)
#else
#define HAVE_AVX512_TASK 0
#endif
/* Whether the AVX-512 decode task takes this shape (else the portable tiled loop). */
#define AVX512_FITS(head_dim, group) \
    (HAVE_AVX512_TASK && (head_dim) % 16 == 0 && (head_dim) <= 256 && (group) <= 8)
#if HAVE_AVX512_TASK
#define AVX512_TASK(SUFFIX) decode_task_avx512_##SUFFIX
#else
#define AVX512_TASK(SUFFIX) decode_task_unavailable
static void decode_task_unavailable(const float *q, const void *q_raw, float scale, int group,
                                    int head_dim, const void *k,
                                    const void *v, int64_t kv_size, int64_t head_off,
                                    const int32_t *table, int block_size, int first, int n,
                                    float *scores, float *acc) {}
#endif

#define DEFINE_KERNELS(SUFFIX, T_, LOAD, STORE)                                                \
                                                                                               \
/* Rotate-half rotary on the q and k heads of each row (in place), then copy each row's      \
 * k and v heads into its cache slot. */                                                       \
void rope_cache_##SUFFIX(T_ *qkv, int64_t num_rows, int64_t row_stride, int num_heads,         \
                         int num_kv_heads, int head_dim, const float *rope,                    \
                         const int64_t *slots, T_ *k_cache, T_ *v_cache, int num_threads) {    \
    const int half = head_dim / 2, rotated = num_heads + num_kv_heads;                        \
    _Pragma("omp parallel for num_threads(num_threads) if(num_rows > 8)")                      \
    for (int64_t t = 0; t < num_rows; t++) {                                                   \
        T_ *row = qkv + t * row_stride;                                                        \
        const float *cs = rope + t * head_dim, *sn = cs + half;                                \
        for (int h = 0; h < rotated; h++) {                                                    \
            T_ *x = row + (int64_t)h * head_dim;                                               \
            for (int i = 0; i < half; i++) {                                                   \
                float a = LOAD(x[i]), b = LOAD(x[i + half]);                                   \
                x[i] = STORE(a * cs[i] - b * sn[i]);                                           \
                x[i + half] = STORE(b * cs[i] + a * sn[i]);                                    \
            }                                                                                  \
        }                                                                                      \
        int64_t kv_size = (int64_t)num_kv_heads * head_dim;                                    \
        memcpy(k_cache + slots[t] * kv_size, row + (int64_t)num_heads * head_dim,              \
               kv_size * sizeof(T_));                                                          \
        memcpy(v_cache + slots[t] * kv_size, row + (int64_t)rotated * head_dim,                \
               kv_size * sizeof(T_));                                                          \
    }                                                                                          \
}                                                                                              \
                                                                                               \
/* One query row per sequence (its last position, ctx_len - 1) against the sequence's         \
 * cached keys and values; the query heads of one kv head are done together so each key       \
 * and value row is read once. Keys are taken a tile of TILE positions at a time, transposed  \
 * to [D][TILE] so the dot products vectorise across positions. window > 0: attend only the   \
 * last `window` positions. */                                                                 \
int decode_attention_##SUFFIX(const T_ *qkv, int64_t row_stride, int num_seqs,                 \
                              int num_heads, int num_kv_heads, int head_dim,                   \
                              const T_ *k_cache, const T_ *v_cache, int block_size,            \
                              const int32_t *tables, int max_blocks,                           \
                              const int32_t *ctx_lens, int window, float scale, T_ *out,       \
                              int num_threads) {                                               \
    const int group = num_heads / num_kv_heads;                                               \
    const int64_t kv_size = (int64_t)num_kv_heads * head_dim;                                  \
    /* one scratch per thread, sized for the longest context: q, acc, kt, scores */           \
    int max_n = 0;                                                                             \
    for (int b = 0; b < num_seqs; b++) {                                                       \
        const int ctx = ctx_lens[b];                                                           \
        const int n = (window > 0 && ctx > window) ? window : ctx;                             \
        max_n = n > max_n ? n : max_n;                                                         \
    }                                                                                          \
    const size_t scratch = (size_t)group * head_dim * 2 + (size_t)head_dim * TILE              \
                           + (size_t)group * ((max_n + TILE - 1) / TILE * TILE);               \
    int failed = 0;                                                                            \
    _Pragma("omp parallel num_threads(num_threads)")                                           \
    {                                                                                          \
    THREAD_SCRATCH(buffer, scratch, failed)                                                    \
    _Pragma("omp for schedule(dynamic, 1)")                                                    \
    for (int64_t task = 0; task < (int64_t)num_seqs * num_kv_heads; task++) {                  \
        if (buffer == NULL) continue;                                                          \
        const int b = (int)(task / num_kv_heads), kvh = (int)(task % num_kv_heads);            \
        const int ctx = ctx_lens[b];                                                           \
        const int first = (window > 0 && ctx > window) ? ctx - window : 0;                     \
        const int n = ctx - first, padded = (n + TILE - 1) / TILE * TILE;                      \
        float *restrict q = buffer;                                                            \
        float *restrict acc = q + group * head_dim;                                            \
        float *restrict kt = acc + group * head_dim;                                           \
        float *restrict scores = kt + head_dim * TILE;                                         \
        const T_ *q_src = qkv + b * row_stride + (int64_t)kvh * group * head_dim;             \
        for (int i = 0; i < group * head_dim; i++) q[i] = LOAD(q_src[i]) * scale;              \
        const int32_t *table = tables + (int64_t)b * max_blocks;                               \
        T_ *o = out + (int64_t)b * num_heads * head_dim + (int64_t)kvh * group * head_dim;     \
        if (AVX512_FITS(head_dim, group)) {                                                    \
            AVX512_TASK(SUFFIX)(q, q_src, scale, group, head_dim, k_cache, v_cache, kv_size,   \
                                (int64_t)kvh * head_dim, table, block_size, first, n,          \
                                scores, acc);                                                  \
            for (int i = 0; i < group * head_dim; i++) o[i] = STORE(acc[i]);                   \
            continue;                                                                          \
        }                                                                                      \
        for (int j0 = 0; j0 < n; j0 += TILE) {                                                 \
            const int count = n - j0 < TILE ? n - j0 : TILE;                                   \
            for (int j = 0; j < TILE; j++) {                                                   \
                if (j >= count) {                                                              \
                    for (int d = 0; d < head_dim; d++) kt[d * TILE + j] = 0.f;                 \
                    continue;                                                                  \
                }                                                                              \
                const int p = first + j0 + j;                                                  \
                const int64_t slot = (int64_t)table[p / block_size] * block_size               \
                                     + p % block_size;                                         \
                const T_ *restrict k = k_cache + slot * kv_size + (int64_t)kvh * head_dim;     \
                for (int d = 0; d < head_dim; d++) kt[d * TILE + j] = LOAD(k[d]);              \
            }                                                                                  \
            for (int g = 0; g < group; g++) {                                                  \
                float s[TILE] = {0};                                                           \
                const float *qg = q + g * head_dim;                                            \
                for (int d = 0; d < head_dim; d++) {                                           \
                    const float qd = qg[d];                                                    \
                    _Pragma("omp simd")                                                        \
                    for (int j = 0; j < TILE; j++) s[j] += qd * kt[d * TILE + j];              \
                }                                                                              \
                memcpy(scores + (size_t)g * padded + j0, s, sizeof s);                         \
            }                                                                                  \
        }                                                                                      \
        float total[MAX_GROUP];                                                                \
        for (int g = 0; g < group; g++)                                                        \
            total[g] = exp_shifted(scores + (size_t)g * padded, n);                            \
        memset(acc, 0, sizeof(float) * group * head_dim);                                     \
        for (int j = 0; j < n; j++) {                                                          \
            const int p = first + j;                                                           \
            const int64_t slot = (int64_t)table[p / block_size] * block_size + p % block_size; \
            const T_ *restrict v = v_cache + slot * kv_size + (int64_t)kvh * head_dim;         \
            for (int g = 0; g < group; g++) {                                                  \
                const float w = scores[(size_t)g * padded + j];                                \
                float *restrict ag = acc + g * head_dim;                                       \
                _Pragma("omp simd")                                                            \
                for (int d = 0; d < head_dim; d++) ag[d] += w * LOAD(v[d]);                    \
            }                                                                                  \
        }                                                                                      \
        for (int g = 0; g < group; g++) {                                                      \
            const float inv = 1.f / total[g];                                                  \
            for (int d = 0; d < head_dim; d++)                                                 \
                o[g * head_dim + d] = STORE(acc[g * head_dim + d] * inv);                      \
        }                                                                                      \
    }                                                                                          \
    free(buffer);                                                                              \
    }                                                                                          \
    return failed ? OWNLLM_ENOMEM : 0;                                                         \
}

FOR_EACH_DTYPE(DEFINE_KERNELS)


/* Elementwise kernels, per dtype: the residual add + RMSNorm and SiLU(gate) * up. */
#define DEFINE_ELEMENTWISE(SUFFIX, T_, LOAD, STORE)                                            \
/* x += delta (when delta is not NULL), then out = x / rms(x) * weight, per row. */            \
void add_rms_norm_##SUFFIX(T_ *x, const T_ *delta, const T_ *weight, T_ *out,                 \
                           int64_t num_rows, int64_t hidden, float eps, int num_threads) {     \
    _Pragma("omp parallel for num_threads(num_threads) if(num_rows > 16)")                     \
    for (int64_t t = 0; t < num_rows; t++) {                                                   \
        T_ *xr = x + t * hidden;                                                               \
        float sum = 0.f;                                                                       \
        if (delta != NULL) {                                                                   \
            const T_ *dr = delta + t * hidden;                                                 \
            for (int64_t i = 0; i < hidden; i++) xr[i] = STORE(LOAD(xr[i]) + LOAD(dr[i]));     \
        }                                                                                      \
        _Pragma("omp simd reduction(+ : sum)")                                                 \
        for (int64_t i = 0; i < hidden; i++) {                                                 \
            const float v = LOAD(xr[i]);                                                       \
            sum += v * v;                                                                      \
        }                                                                                      \
        const float inv = 1.f / sqrtf(sum / (float)hidden + eps);                              \
        T_ *o = out + t * hidden;                                                              \
        for (int64_t i = 0; i < hidden; i++) o[i] = STORE(LOAD(xr[i]) * inv * LOAD(weight[i])); \
    }                                                                                          \
}                                                                                              \
                                                                                               \
/* out[t, i] = silu(gu[t, i]) * gu[t, inter + i] for gu [T, 2 * inter] (rows gu_stride apart). */\
void silu_mul_##SUFFIX(const T_ *gu, int64_t gu_stride, T_ *out, int64_t num_rows,            \
                       int64_t inter, int num_threads) {                                       \
    _Pragma("omp parallel for num_threads(num_threads) if(num_rows > 16)")                     \
    for (int64_t t = 0; t < num_rows; t++) {                                                   \
        const T_ *g = gu + t * gu_stride, *u = g + inter;                                      \
        T_ *o = out + t * inter;                                                               \
        _Pragma("omp simd")                                                                    \
        for (int64_t i = 0; i < inter; i++) {                                                  \
            const float a = LOAD(g[i]);                                                        \
            o[i] = STORE(a / (1.f + fast_exp(-a)) * LOAD(u[i]));                               \
        }                                                                                      \
    }                                                                                          \
}

FOR_EACH_DTYPE(DEFINE_ELEMENTWISE)


/* Multi-LoRA for a step: out[t] += (x[t] A[s]) B[s] for every row t whose slot s = slots[t]
 * is not negative; A [num_slots, in, R], B [num_slots, R, out_features] (scaling folded
 * into B). Rows are independent; the runner sorts them by slot, so consecutive rows reuse
 * the slot's A and B from cache. */
#define DEFINE_LORA(SUFFIX, T_, LOAD, STORE)                                                   \
int lora_##SUFFIX(const T_ *x, int64_t x_stride, T_ *out, int64_t out_stride,                 \
                  const int32_t *slots, int64_t num_rows, const T_ *a, const T_ *b,            \
                  int64_t in_features, int64_t rank, int64_t out_features, int num_threads) {  \
    int failed = 0;                                                                            \
    _Pragma("omp parallel num_threads(num_threads) if(num_rows > 4)")                         \
    {                                                                                          \
        THREAD_SCRATCH(h, rank + out_features, failed)                                         \
        float *acc = h == NULL ? NULL : h + rank;                                              \
        _Pragma("omp for schedule(static)")                                                    \
        for (int64_t t = 0; t < num_rows; t++) {                                               \
            const int32_t s = slots[t];                                                        \
            if (s < 0 || h == NULL) continue;                                                  \
            const T_ *xr = x + t * x_stride;                                                   \
            const T_ *as = a + (int64_t)s * in_features * rank;                                \
            const T_ *bs = b + (int64_t)s * rank * out_features;                               \
            for (int64_t r = 0; r < rank; r++) h[r] = 0.f;                                     \
            for (int64_t i = 0; i < in_features; i++) {                                        \
                const float xi = LOAD(xr[i]);                                                  \
                const T_ *ai = as + i * rank;                                                  \
                _Pragma("omp simd")                                                            \
                for (int64_t r = 0; r < rank; r++) h[r] += xi * LOAD(ai[r]);                   \
            }                                                                                  \
            T_ *o = out + t * out_stride;                                                      \
            _Pragma("omp simd")                                                                \
            for (int64_t j = 0; j < out_features; j++) acc[j] = LOAD(o[j]);                    \
            for (int64_t r = 0; r < rank; r++) {                                               \
                const float hr = h[r];                                                         \
                if (hr == 0.f) continue;                                                       \
                const T_ *br = bs + r * out_features;                                          \
                _Pragma("omp simd")                                                            \
                for (int64_t j = 0; j < out_features; j++) acc[j] += hr * LOAD(br[j]);         \
            }                                                                                  \
            _Pragma("omp simd")                                                                \
            for (int64_t j = 0; j < out_features; j++) o[j] = STORE(acc[j]);                   \
        }                                                                                      \
        free(h);                                                                               \
    }                                                                                          \
    return failed ? OWNLLM_ENOMEM : 0;                                                         \
}

FOR_EACH_DTYPE(DEFINE_LORA)

/* The largest query-group size decode_attention supports (num_heads / num_kv_heads). */
int max_query_group(void) { return MAX_GROUP; }

/* Which decode-attention loop this build runs for a model's shape, for the startup log:
 * 3 AVX-512 with AVX512-BF16 dot products (bf16 caches), 2 AVX-512, 1 the portable loop
 * compiled with AVX2 (or wider), 0 the portable loop without. */
int decode_path(int head_dim, int group, int is_bf16) {
    if (AVX512_FITS(head_dim, group)) {
#if defined(__AVX512BF16__)
        if (is_bf16 && (head_dim / 16) % 2 == 0) return 3;
#endif
        return 2;
    }
#if defined(__AVX2__)
    return 1;
#else
    return 0;
#endif
}
