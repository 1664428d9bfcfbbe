/* fp16.h - IEEE half and bfloat16 <-> float conversion.
 * Scalar *_ref functions are the specification; the row functions pick an
 * F16C/AVX-512 path at run time when the CPU has it. */
#ifndef KN_FP16_H
#define KN_FP16_H

#include <stddef.h>
#include <stdint.h>

typedef uint16_t kn_fp16;
typedef uint16_t kn_bf16;

float kn_fp16_to_fp32_ref(kn_fp16 h);
kn_fp16 kn_fp32_to_fp16_ref(float f); /* round to nearest even */
float kn_bf16_to_fp32_ref(kn_bf16 h);
kn_bf16 kn_fp32_to_bf16_ref(float f); /* round to nearest even, NaN kept */

/* Rows: n elements from src to dst. */
void kn_fp16_to_fp32_row(const kn_fp16 *src, float *dst, size_t n);
void kn_bf16_to_fp32_row(const kn_bf16 *src, float *dst, size_t n);
void kn_fp32_to_fp16_row(const float *src, kn_fp16 *dst, size_t n);

#endif
