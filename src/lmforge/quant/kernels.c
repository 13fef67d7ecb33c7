/* lmforge's CPU kernels for decoding: matrix-vector products for a few input rows (a decode step)
 * against int8, int4, fp32 or bf16 weights, AVX2 + FMA, parallel over output rows with OpenMP
 * (the runtime PyTorch has loaded). `ops.cpp` makes them PyTorch operators; both are built on
 * first use by `lmforge/quant/native.py`.
 *
 * A decode step reads every weight once, so a kernel's job is to stream the weights as near the
 * memory's speed as its arithmetic allows: nothing is dequantized to memory, int8 and int4 load
 * each code once per input row with four output rows sharing each load of the input, and w8a8
 * loads each code once per four input rows.
 *
 * Layouts (those of `QuantizedLinear`): weights are row-major [rows, k]; int8 codes in [-127, 127]
 * with one scale a row; int4 codes two a byte (the even input in the low nibble) with a scale and a
 * zero a group of `group` inputs, w = (q - 8) * scale + zero.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>

#include "kernels.h"

#define ROWS 4 /* output rows that share each load of the input (int8, int4) */
#define PREFETCH 1024 /* bytes ahead of the loads: the hardware prefetcher alone leaves the core waiting */
#define FLOAT_PREFETCH 4096 /* the same for fp32 and bf16 weights, four rows' streams at once (measured: bf16 12 GB/s at 1 KiB, 15 at 4) */

static inline float sum_ps(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* ---- w8a8: uint8 inputs (7-bit) times int8 codes, exact int32 sums ----
 * The codes are interleaved ([rows / 8][k / 4][8][4], rows padded to a multiple of 8: `interleave`
 * in native.py), so one 32-byte load holds 4 inputs' codes for 8 rows: multiplied by those 4
 * inputs broadcast, it adds to 8 rows' sums at once, and the weights are read as one stream. */

/* Up to 4 input rows against 8 weight rows: each load of codes serves every input row. */
static inline __attribute__((always_inline)) void dot8_u8s8(const uint8_t *x, int64_t k, const int8_t *w, int rows,
                                                            __m256i *sums) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i acc[4];
    for (int r = 0; r < rows; r++) acc[r] = _mm256_setzero_si256();
    for (int64_t i = 0; i < k; i += 4) {
        if ((i & 7) == 0) _mm_prefetch((const char *)(w + 8 * i + PREFETCH), _MM_HINT_T0);
        __m256i codes = _mm256_loadu_si256((const __m256i *)(w + 8 * i));
        for (int r = 0; r < rows; r++) {
            __m256i inputs = _mm256_set1_epi32(*(const int32_t *)(x + r * k + i));
            /* pairs of u8 * s8 products summed in int16: |sum| <= 2 * 128 * 127 < 2^15, as 7-bit
               inputs (at most 128 after rounding) and codes in [-127, 127] keep it */
            acc[r] = _mm256_add_epi32(acc[r], _mm256_madd_epi16(_mm256_maddubs_epi16(inputs, codes), ones));
        }
    }
    for (int r = 0; r < rows; r++) sums[r] = acc[r];
}

/* The input's scale and zero point as PyTorch's dynamic quantization chooses them
 * (`torch._choose_qparams_per_tensor(x, reduce_range=True)`): codes 0..127 span [min(x, 0),
 * max(x, 0)]; the zero point is the integer nearest to where 0 falls, computed from whichever end
 * adds less rounding error. */
static void choose_input_scale(const float *x, int64_t n, float *scale_out, int32_t *zero_point_out) {
    const double qmin = 0.0, qmax = 127.0, small = 6.1e-5;
    float low = 0.0f, high = 0.0f;
    for (int64_t i = 0; i < n; i++) {
        low = x[i] < low ? x[i] : low;
        high = x[i] > high ? x[i] : high;
    }
    double min = low, max = high;
    double scale = (max - min) / (qmax - qmin);
    if ((float)scale == 0.0f || isinf(1.0f / (float)scale)) scale = 0.1;
    if (scale < small) { /* a tiny range: the smallest scale, the range stretched to match */
        const double original = scale;
        scale = small;
        if (min == 0.0) max = small * (qmax - qmin);
        else if (max == 0.0) min = -small * (qmax - qmin);
        else min *= small / original, max *= small / original;
    }
    const double from_min = qmin - min / scale, from_max = qmax - max / scale;
    const double from_min_error = fabs(qmin) - fabs(min / scale), from_max_error = fabs(qmax) - fabs(max / scale);
    const double zero_point = from_min_error < from_max_error ? from_min : from_max;
    *zero_point_out = zero_point < qmin ? (int32_t)qmin : zero_point > qmax ? (int32_t)qmax : (int32_t)nearbyint(zero_point);
    *scale_out = (float)scale;
}

/* Quantize x [m, k] (k a multiple of 8) with one scale and zero point, rounding to nearest even as
 * PyTorch's dynamic quantization does, then out[m, offset + row] = x_scale * scale[row] *
 * (sum_k q w - zero_point * row_sum[row]), for every row of every part. */
void lmforge_w8a8(const float *x, int64_t m, int64_t k, const Part *parts, int n_parts, int64_t out_stride,
                  float *out, uint8_t *scratch, int threads) {
    float x_scale;
    int32_t zero_point;
    choose_input_scale(x, m * k, &x_scale, &zero_point);
    const float inverse = 1.0f / x_scale;
    for (int64_t i = 0; i < m * k; i++) {
        float q = nearbyintf(x[i] * inverse) + (float)zero_point;
        scratch[i] = (uint8_t)(q < 0.0f ? 0.0f : (q > 255.0f ? 255.0f : q));
    }
#pragma omp parallel num_threads(threads)
    {
        int64_t offset = 0;
        for (int p = 0; p < n_parts; p++) {
            const Part part = parts[p];
            const int8_t *codes = (const int8_t *)part.codes;
#pragma omp for schedule(static) nowait
            for (int64_t b = 0; b < (part.rows + 7) / 8; b++) {
                const int64_t row = b * 8;
                const int n = part.rows - row < 8 ? (int)(part.rows - row) : 8;
                for (int64_t first = 0; first < m; first += 4) {
                    const int rows = m - first < 4 ? (int)(m - first) : 4;
                    __m256i vectors[4];
                    const uint8_t *x_rows = scratch + first * k;
                    switch (rows) { /* each count its own unrolled loop */
                    case 1: dot8_u8s8(x_rows, k, codes + row * k, 1, vectors); break;
                    case 2: dot8_u8s8(x_rows, k, codes + row * k, 2, vectors); break;
                    case 3: dot8_u8s8(x_rows, k, codes + row * k, 3, vectors); break;
                    default: dot8_u8s8(x_rows, k, codes + row * k, 4, vectors);
                    }
                    for (int r = 0; r < rows; r++) {
                        int32_t sums[8];
                        _mm256_storeu_si256((__m256i *)sums, vectors[r]);
                        for (int j = 0; j < n; j++) {
                            out[(first + r) * out_stride + offset + row + j] =
                                (float)(sums[j] - zero_point * part.row_sums[row + j]) * (x_scale * part.scales[row + j]);
                        }
                    }
                }
            }
            offset += part.rows;
        }
    }
}

/* ---- int8 weights, fp32 inputs: out = (x . codes) * scale ---- */

static inline __attribute__((always_inline)) void dot_f32s8(const float *x, const int8_t *w, int64_t k, int n,
                                                            float *out) {
    __m256 acc[ROWS][2];
    for (int r = 0; r < n; r++) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= k; i += 16) {
        __m256 x0 = _mm256_loadu_ps(x + i), x1 = _mm256_loadu_ps(x + i + 8);
        for (int r = 0; r < n; r++) {
            if ((i & 63) == 0) _mm_prefetch((const char *)(w + r * k + i + PREFETCH), _MM_HINT_T0);
            __m128i w0 = _mm_loadl_epi64((const __m128i *)(w + r * k + i));
            __m128i w1 = _mm_loadl_epi64((const __m128i *)(w + r * k + i + 8));
            acc[r][0] = _mm256_fmadd_ps(x0, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(w0)), acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(x1, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(w1)), acc[r][1]);
        }
    }
    for (int r = 0; r < n; r++) {
        float total = sum_ps(_mm256_add_ps(acc[r][0], acc[r][1]));
        for (int64_t j = i; j < k; j++) total += x[j] * (float)w[r * k + j];
        out[r] = total;
    }
}

void lmforge_int8(const float *x, int64_t m, int64_t k, const Part *part, float *out, int threads) {
    const int8_t *codes = (const int8_t *)part->codes;
    const int64_t blocks = (part->rows + ROWS - 1) / ROWS;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t b = 0; b < blocks; b++) {
        const int64_t row = b * ROWS;
        const int n = part->rows - row < ROWS ? (int)(part->rows - row) : ROWS;
        for (int64_t r = 0; r < m; r++) {
            float sums[ROWS];
            if (n == ROWS) dot_f32s8(x + r * k, codes + row * k, k, ROWS, sums);
            else dot_f32s8(x + r * k, codes + row * k, k, n, sums);
            for (int j = 0; j < n; j++) out[r * part->rows + row + j] = sums[j] * part->scales[row + j];
        }
    }
}

/* ---- int4 weights (groups a multiple of 32), fp32 inputs ----
 * Per group: sum_k x (q - 8) s + z = s * sum_k x q + (z - 8 s) * sum_k x. The input is reordered
 * once a call so that the low nibbles of 16 code bytes meet the 16 even inputs of their 32 and the
 * high nibbles the odd ones; `sums` holds each group's sum of inputs. */

static inline __attribute__((always_inline)) void dot_f32u4(const float *xs, const float *sums, const uint8_t *w,
                                                            int64_t k, int64_t group, const float *scales,
                                                            const float *zeros, int n, float *out) {
    const int64_t groups = k / group;
    const __m128i low = _mm_set1_epi8(0x0f);
    __m256 total[ROWS];
    float constant[ROWS];
    for (int r = 0; r < n; r++) total[r] = _mm256_setzero_ps(), constant[r] = 0.0f;
    for (int64_t g = 0; g < groups; g++) {
        __m256 acc[ROWS];
        for (int r = 0; r < n; r++) acc[r] = _mm256_setzero_ps();
        for (int64_t i = g * group; i < (g + 1) * group; i += 32) {
            const float *xb = xs + i;
            __m256 x0 = _mm256_loadu_ps(xb), x1 = _mm256_loadu_ps(xb + 8);
            __m256 x2 = _mm256_loadu_ps(xb + 16), x3 = _mm256_loadu_ps(xb + 24);
            for (int r = 0; r < n; r++) {
                if ((i & 127) == 0) _mm_prefetch((const char *)(w + (r * k + i) / 2 + PREFETCH), _MM_HINT_T0);
                __m128i bytes = _mm_loadu_si128((const __m128i *)(w + (r * k + i) / 2));
                __m128i even = _mm_and_si128(bytes, low), odd = _mm_and_si128(_mm_srli_epi16(bytes, 4), low);
                acc[r] = _mm256_fmadd_ps(x0, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(even)), acc[r]);
                acc[r] = _mm256_fmadd_ps(x1, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(even, 8))), acc[r]);
                acc[r] = _mm256_fmadd_ps(x2, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(odd)), acc[r]);
                acc[r] = _mm256_fmadd_ps(x3, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(odd, 8))), acc[r]);
            }
        }
        for (int r = 0; r < n; r++) {
            const float scale = scales[r * groups + g];
            total[r] = _mm256_fmadd_ps(acc[r], _mm256_set1_ps(scale), total[r]);
            constant[r] += (zeros[r * groups + g] - 8.0f * scale) * sums[g];
        }
    }
    for (int r = 0; r < n; r++) out[r] = sum_ps(total[r]) + constant[r];
}

/* `scratch` holds m * (k + k / group) floats: the reordered inputs, then each group's sum. */
void lmforge_int4(const float *x, int64_t m, int64_t k, int64_t group, const Part *part, float *out,
                  float *scratch, int threads) {
    const int64_t groups = k / group;
    for (int64_t r = 0; r < m; r++) {
        float *xs = scratch + r * (k + groups), *sums = xs + k;
        for (int64_t i = 0; i < k; i += 32)
            for (int j = 0; j < 16; j++) xs[i + j] = x[r * k + i + 2 * j], xs[i + 16 + j] = x[r * k + i + 2 * j + 1];
        for (int64_t g = 0; g < groups; g++) {
            float s = 0.0f;
            for (int64_t i = g * group; i < (g + 1) * group; i++) s += x[r * k + i];
            sums[g] = s;
        }
    }
    const uint8_t *codes = (const uint8_t *)part->codes;
    const int64_t blocks = (part->rows + ROWS - 1) / ROWS;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t b = 0; b < blocks; b++) {
        const int64_t row = b * ROWS;
        const int n = part->rows - row < ROWS ? (int)(part->rows - row) : ROWS;
        const float *scales = part->scales + row * groups, *zeros = part->zeros + row * groups;
        for (int64_t r = 0; r < m; r++) {
            const float *xs = scratch + r * (k + groups);
            float sums[ROWS];
            if (n == ROWS) dot_f32u4(xs, xs + k, codes + row * k / 2, k, group, scales, zeros, ROWS, sums);
            else dot_f32u4(xs, xs + k, codes + row * k / 2, k, group, scales, zeros, n, sums);
            for (int j = 0; j < n; j++)
                out[r * part->rows + row + j] = sums[j];
        }
    }
}

/* ---- fp32 or bf16 weights (a model not quantized): what F.linear computes, summed in fp32 ----
 * A bf16 weight is the top half of an fp32 one: one 32-byte load holds 16 weights, its 32-bit
 * lanes shifted left 16 bits are the even ones and its lanes with the low half cleared the odd
 * ones, so the input is reordered once a call (each 16 inputs: the even, then the odd). Inputs,
 * bias and outputs are in the weights' dtype; bf16 outputs are rounded to nearest even, NaN to
 * 0x7fc0, as PyTorch rounds. */

static inline float from_bf16(uint16_t value) {
    union { uint32_t u; float f; } bits = {(uint32_t)value << 16};
    return bits.f;
}

static inline uint16_t to_bf16(float value) {
    union { float f; uint32_t u; } bits = {value};
    if (value != value) return 0x7fc0;
    return (uint16_t)((bits.u + 0x7fff + ((bits.u >> 16) & 1)) >> 16);
}

static inline __attribute__((always_inline)) void dot_f32bf16(const float *xs, const uint16_t *w, int64_t k, int n,
                                                              float *out) {
    const __m256i high = _mm256_set1_epi32((int)0xffff0000u);
    __m256 acc[ROWS][2];
    for (int r = 0; r < n; r++) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= k; i += 16) {
        __m256 even = _mm256_loadu_ps(xs + i), odd = _mm256_loadu_ps(xs + i + 8);
        for (int r = 0; r < n; r++) {
            if ((i & 31) == 0) _mm_prefetch((const char *)(w + r * k + i) + FLOAT_PREFETCH, _MM_HINT_T0);
            __m256i v = _mm256_loadu_si256((const __m256i *)(w + r * k + i));
            acc[r][0] = _mm256_fmadd_ps(even, _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)), acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(odd, _mm256_castsi256_ps(_mm256_and_si256(v, high)), acc[r][1]);
        }
    }
    for (int r = 0; r < n; r++) {
        float total = sum_ps(_mm256_add_ps(acc[r][0], acc[r][1]));
        for (int64_t j = i; j < k; j++) total += xs[j] * from_bf16(w[r * k + j]);
        out[r] = total;
    }
}

static inline __attribute__((always_inline)) void dot_f32f32(const float *x, const float *w, int64_t k, int n,
                                                             float *out) {
    __m256 acc[ROWS][2];
    for (int r = 0; r < n; r++) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= k; i += 16) {
        __m256 x0 = _mm256_loadu_ps(x + i), x1 = _mm256_loadu_ps(x + i + 8);
        for (int r = 0; r < n; r++) {
            _mm_prefetch((const char *)(w + r * k + i) + FLOAT_PREFETCH, _MM_HINT_T0);
            acc[r][0] = _mm256_fmadd_ps(x0, _mm256_loadu_ps(w + r * k + i), acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(x1, _mm256_loadu_ps(w + r * k + i + 8), acc[r][1]);
        }
    }
    for (int r = 0; r < n; r++) {
        float total = sum_ps(_mm256_add_ps(acc[r][0], acc[r][1]));
        for (int64_t j = i; j < k; j++) total += x[j] * w[r * k + j];
        out[r] = total;
    }
}

/* x [m, k] @ weight [rows, k]^T + bias (may be NULL) -> out [m, rows]; bf16 or fp32 throughout.
 * `scratch` holds m * k floats for bf16 (the inputs in fp32, reordered). */
void lmforge_float(const void *x, int64_t m, int64_t k, const void *weight, const void *bias, int64_t rows, int bf16,
                   void *out, float *scratch, int threads) {
    const float *inputs = (const float *)x;
    if (bf16) {
        const uint16_t *xb = (const uint16_t *)x;
        for (int64_t r = 0; r < m; r++) {
            float *xs = scratch + r * k;
            int64_t i = 0;
            for (; i + 16 <= k; i += 16)
                for (int j = 0; j < 8; j++)
                    xs[i + j] = from_bf16(xb[r * k + i + 2 * j]), xs[i + 8 + j] = from_bf16(xb[r * k + i + 2 * j + 1]);
            for (; i < k; i++) xs[i] = from_bf16(xb[r * k + i]);
        }
        inputs = scratch;
    }
    const int64_t blocks = (rows + ROWS - 1) / ROWS;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t b = 0; b < blocks; b++) {
        const int64_t row = b * ROWS;
        const int n = rows - row < ROWS ? (int)(rows - row) : ROWS;
        for (int64_t r = 0; r < m; r++) {
            float sums[ROWS];
            if (bf16) {
                const uint16_t *w = (const uint16_t *)weight + row * k;
                if (n == ROWS) dot_f32bf16(inputs + r * k, w, k, ROWS, sums);
                else dot_f32bf16(inputs + r * k, w, k, n, sums);
                for (int j = 0; j < n; j++) {
                    float value = sums[j] + (bias ? from_bf16(((const uint16_t *)bias)[row + j]) : 0.0f);
                    ((uint16_t *)out)[r * rows + row + j] = to_bf16(value);
                }
            } else {
                const float *w = (const float *)weight + row * k;
                if (n == ROWS) dot_f32f32(inputs + r * k, w, k, ROWS, sums);
                else dot_f32f32(inputs + r * k, w, k, n, sums);
                for (int j = 0; j < n; j++)
                    ((float *)out)[r * rows + row + j] = sums[j] + (bias ? ((const float *)bias)[row + j] : 0.0f);
            }
        }
    }
}
