/* lmforge's CPU decode kernels (kernels.c), as the operators of ops.cpp call them. */
#ifndef LMFORGE_KERNELS_H
#define LMFORGE_KERNELS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    const void *codes;       /* int8 [rows, k], or uint8 [rows, k / 2] for int4; w8a8: interleaved */
    int64_t rows;
    const float *scales;     /* [rows], or [rows, k / group] for int4 */
    const float *zeros;      /* int4: [rows, k / group] */
    const int32_t *row_sums; /* w8a8: the sum of each row's codes */
} Part;

/* x [m, k] fp32 times the weights of `parts` side by side -> out [m, out_stride]; `scratch` m * k bytes */
void lmforge_w8a8(const float *x, int64_t m, int64_t k, const Part *parts, int n_parts, int64_t out_stride,
                  float *out, uint8_t *scratch, int threads);
/* x [m, k] fp32 times int8 codes -> out [m, rows] */
void lmforge_int8(const float *x, int64_t m, int64_t k, const Part *part, float *out, int threads);
/* x [m, k] fp32 times int4 codes -> out [m, rows]; `scratch` m * (k + k / group) floats */
void lmforge_int4(const float *x, int64_t m, int64_t k, int64_t group, const Part *part, float *out,
                  float *scratch, int threads);
/* F.linear: x [m, k] @ weight [rows, k]^T + bias (or NULL), all fp32 or all bf16 -> out [m, rows];
   `scratch` m * k floats for bf16 */
void lmforge_float(const void *x, int64_t m, int64_t k, const void *weight, const void *bias, int64_t rows, int bf16,
                   void *out, float *scratch, int threads);

#ifdef __cplusplus
}
#endif

#endif
