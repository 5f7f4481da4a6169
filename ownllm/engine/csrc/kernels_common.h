/* What cpu_kernels.c and quant_kernels.c share: bfloat16 <-> float32, the identity for
 * float32 storage, and the status a kernel returns when its scratch allocation failed.
 * Both files are compiled into one library (ownllm/engine/cpu_kernels.py), each as its
 * own translation unit, so everything here is static inline. */
#ifndef OWNLLM_KERNELS_COMMON_H
#define OWNLLM_KERNELS_COMMON_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* What a kernel that allocates returns when malloc fails (0: done). */
#define OWNLLM_ENOMEM 12

static inline float bf16_to_f32(uint16_t h) {
    union { uint32_t u; float f; } v;
    v.u = (uint32_t)h << 16;
    return v.f;
}

static inline uint16_t f32_to_bf16(float f) {
    union { uint32_t u; float f; } v;
    v.f = f;
    if ((v.u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((v.u >> 16) | 0x40u); /* NaN */
    v.u += 0x7fffu + ((v.u >> 16) & 1u); /* round to nearest even */
    return (uint16_t)(v.u >> 16);
}

static inline float f32_id(float x) { return x; }

#endif
