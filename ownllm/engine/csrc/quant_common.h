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
