/* types.h - tensor element types and their traits (ggml numbering, so a GGUF
 * type id maps straight onto kn_type), and ggml-compatible block formats. */
#ifndef KN_TYPES_H
#define KN_TYPES_H

#include <stddef.h>
#include <stdint.h>

#include "fp16.h"

typedef enum kn_type {
	KN_TYPE_F32 = 0,
	KN_TYPE_F16 = 1,
	KN_TYPE_Q4_0 = 2,
	KN_TYPE_Q4_1 = 3,
	KN_TYPE_Q8_0 = 8,
	KN_TYPE_BF16 = 30,
	KN_TYPE_COUNT = 31,
} kn_type;

#define QK4_0 32
typedef struct {
	kn_fp16 d;             /* scale */
	uint8_t qs[QK4_0 / 2]; /* nibbles: low = element j, high = element j+16 */
} block_q4_0;
_Static_assert(sizeof(block_q4_0) == 2 + QK4_0 / 2, "wrong q4_0 block size");

#define QK4_1 32
typedef struct {
	kn_fp16 d;             /* scale */
	kn_fp16 m;             /* min */
	uint8_t qs[QK4_1 / 2];
} block_q4_1;
_Static_assert(sizeof(block_q4_1) == 4 + QK4_1 / 2, "wrong q4_1 block size");

#define QK8_0 32
typedef struct {
	kn_fp16 d;
	int8_t qs[QK8_0];
} block_q8_0;
_Static_assert(sizeof(block_q8_0) == 2 + QK8_0, "wrong q8_0 block size");

typedef void (*kn_to_float_fn)(const void *src, float *dst, size_t n);
typedef void (*kn_from_float_fn)(const float *src, void *dst, size_t n);

typedef struct kn_type_traits {
	const char *name;       /* "f16", "q4_0", ... (NULL: not supported) */
	size_t block_size;      /* elements per block */
	size_t type_size;       /* bytes per block */
	kn_to_float_fn to_float;     /* n must be a multiple of block_size */
	kn_from_float_fn from_float; /* reference (round-to-nearest) quantizer */
} kn_type_traits;

/* Traits of t, or NULL when t is out of range or not supported. */
const kn_type_traits *kn_traits(int t);

/* Bytes of a row of n elements of type t; 0 if n is not a multiple of the
 * block size or t is unsupported. */
size_t kn_row_size(int t, size_t n);

/* Reference (ggml-compatible) quantizers and dequantizers; n % 32 == 0. */
void kn_quantize_row_q4_0_ref(const float *x, block_q4_0 *y, size_t n);
void kn_quantize_row_q4_1_ref(const float *x, block_q4_1 *y, size_t n);
void kn_quantize_row_q8_0_ref(const float *x, block_q8_0 *y, size_t n);
void kn_dequantize_row_q4_0(const block_q4_0 *x, float *y, size_t n);
void kn_dequantize_row_q4_1(const block_q4_1 *x, float *y, size_t n);
void kn_dequantize_row_q8_0(const block_q8_0 *x, float *y, size_t n);

#endif
