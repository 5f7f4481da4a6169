/* What quant_kernels.c and quant_i8.c share: the weight types' codes and block sizes, the
 * fp16 scale of a block, and which inner loop a build compiles (QPATH: 2 AVX-512F, 1 AVX2 +
 * FMA, 0 portable; -DOWNLLM_NO_AVX512 / -DOWNLLM_NO_AVX2 force the narrower ones). */
#ifndef OWNLLM_QUANT_COMMON_H
#define OWNLLM_QUANT_COMMON_H

#include "kernels_common.h"

#if defined(__AVX512F__) && !defined(OWNLLM_NO_AVX512)
#define QPATH 2
#include <immintrin.h>
#elif defined(__AVX2__) && defined(__FMA__) && !defined(OWNLLM_NO_AVX2)
#define QPATH 1
#include <immintrin.h>
#else
#define QPATH 0
#endif

#define QT_Q4_0 0
#define QT_Q4_1 1
#define QT_Q8_0 2
#define QT_INT8 3
#define QB 32
#define INLINE static inline __attribute__((always_inline))

#if QPATH > 0 && defined(__F16C__)
static inline float q_half(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h); /* one vcvtph2ps */
}
#else
static inline float q_half(const uint8_t *p) {
    const uint32_t h = (uint32_t)p[0] | (uint32_t)p[1] << 8;
    const uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
    union { uint32_t u; float f; } v;
    if (exp == 0) { /* zero or subnormal: mant * 2^-24 */
        v.f = (float)mant * (1.0f / 16777216.0f);
        v.u |= sign;
    } else if (exp == 31) {
        v.u = sign | 0x7f800000u | (mant << 13);
    } else {
        v.u = sign | ((exp + 112u) << 23) | (mant << 13);
    }
    return v.f;
}
#endif

static inline int64_t q_row_bytes(int type, int64_t k) {
    switch (type) {
    case QT_Q4_0: return k / QB * 18;
    case QT_Q4_1: return k / QB * 20;
    case QT_Q8_0: return k / QB * 34;
    default: return k;
    }
}

static inline int q_block_bytes(int type) {
    return type == QT_Q4_0 ? 18 : type == QT_Q4_1 ? 20 : type == QT_Q8_0 ? 34 : 32;
}

/* One block (32 weights) dequantised into vector registers, exactly (d q + m in one
 * rounding; int8: q, its scale applied by the caller): w0 elements 0-15, w1 16-31 (AVX-512);
 * w[0..3] elements 0-7, ..., 24-31 (AVX2). Shared by quant_kernels.c and quant_gemm.c. */
#if QPATH == 2
INLINE void q_deq512(const int type, const uint8_t *b, __m512 *w0, __m512 *w1) {
    if (type == QT_Q8_0 || type == QT_INT8) {
        const uint8_t *q = type == QT_INT8 ? b : b + 2;
        const __m256i v = _mm256_loadu_si256((const __m256i *)q);
        __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(v)));
        __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256(v, 1)));
        if (type == QT_Q8_0) {
            const __m512 d = _mm512_set1_ps(q_half(b));
            lo = _mm512_mul_ps(lo, d);
            hi = _mm512_mul_ps(hi, d);
        }
        *w0 = lo;
        *w1 = hi;
        return;
    }
    const __m128i mask = _mm_set1_epi8(15);
    const __m128i v = _mm_loadu_si128((const __m128i *)(b + (type == QT_Q4_1 ? 4 : 2)));
    const __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(v, mask)));
    const __m512 hi =
        _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(v, 4), mask)));
    const __m512 d = _mm512_set1_ps(q_half(b));
    if (type == QT_Q4_1) {
        const __m512 m = _mm512_set1_ps(q_half(b + 2));
        *w0 = _mm512_fmadd_ps(lo, d, m);
        *w1 = _mm512_fmadd_ps(hi, d, m);
    } else {
        const __m512 eight = _mm512_set1_ps(8.0f);
        *w0 = _mm512_mul_ps(_mm512_sub_ps(lo, eight), d);
        *w1 = _mm512_mul_ps(_mm512_sub_ps(hi, eight), d);
    }
}
#elif QPATH == 1
INLINE void q_deq256(const int type, const uint8_t *b, __m256 *w) {
    if (type == QT_Q8_0 || type == QT_INT8) {
        const uint8_t *q = type == QT_INT8 ? b : b + 2;
        const __m128i v0 = _mm_loadu_si128((const __m128i *)q);
        const __m128i v1 = _mm_loadu_si128((const __m128i *)(q + 16));
        w[0] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v0));
        w[1] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(v0, 8)));
        w[2] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v1));
        w[3] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(v1, 8)));
        if (type == QT_Q8_0) {
            const __m256 d = _mm256_set1_ps(q_half(b));
            for (int p = 0; p < 4; p++) w[p] = _mm256_mul_ps(w[p], d);
        }
        return;
    }
    const __m128i mask = _mm_set1_epi8(15);
    const __m128i v = _mm_loadu_si128((const __m128i *)(b + (type == QT_Q4_1 ? 4 : 2)));
    const __m128i lo = _mm_and_si128(v, mask), hi = _mm_and_si128(_mm_srli_epi16(v, 4), mask);
    w[0] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo));
    w[1] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8)));
    w[2] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi));
    w[3] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8)));
    const __m256 d = _mm256_set1_ps(q_half(b));
    if (type == QT_Q4_1) {
        const __m256 m = _mm256_set1_ps(q_half(b + 2));
        for (int p = 0; p < 4; p++) w[p] = _mm256_fmadd_ps(w[p], d, m);
    } else {
        const __m256 eight = _mm256_set1_ps(8.0f);
        for (int p = 0; p < 4; p++) w[p] = _mm256_mul_ps(_mm256_sub_ps(w[p], eight), d);
    }
}
#endif

/* The weights a few tiles ahead, asked for while this tile computes: a decode step streams
 * ~100 MB of blocks that no cache holds, and with the hardware prefetcher alone one thread
 * read them at about half its copy bandwidth. Q_PREFETCH bytes ahead of each block (4 KiB:
 * the best of 0.5-16 KiB on the dev box); a prefetch never faults, so past the end of W is
 * harmless. */
#ifndef Q_PREFETCH
#define Q_PREFETCH 4096
#endif
#define q_prefetch(p) __builtin_prefetch((const char *)(p) + Q_PREFETCH, 0, 3)

#endif
