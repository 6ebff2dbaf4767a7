/*
 * Per-element formulas that the CPU reference kernels (engine_k_*.c) and the
 * CUDA kernels (backend_cuda_kern*.cu) both apply, written once so that the two
 * backends compute the same values: the fused activations, the unary math ops,
 * the arithmetic of the binary ops, Pad's source index and Cast's load and
 * store rules.
 *
 * Usage: include it from C or CUDA; every function is `static inline` and,
 * under nvcc, callable from host and device code (ENG_HD).
 *     y = eng_act_apply(EACT_SIGMOID, x, 0.0f, 0.0f);
 *     y = eng_unary_apply(EOP_ELU, x, alpha, beta, gamma, 0);
 *     int isint = eng_cast_load(x, DT_INT32, i, DT_FP32, &v, &iv);
 *     eng_cast_store(y, DT_FP32, i, v, iv, isint);
 *
 * FP32 is the compute type of the float formulas. The C build has no fused
 * multiply-add contraction (no -march), so inlining these formulas into the
 * CPU kernels leaves every result bit for bit as an out-of-line call gave.
 */
#ifndef CORRAL_ENGINE_SCALAR_H
#define CORRAL_ENGINE_SCALAR_H

#include <math.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif
#include "engine_ir.h"
#ifdef __cplusplus
}
#endif

#ifdef __CUDACC__
#define ENG_HD __host__ __device__
#else
#define ENG_HD
#endif

/* A fused activation applied to one value (struct eng_attrs: act, act_alpha, act_beta). */
ENG_HD static inline float eng_act_apply(enum eng_act act, float x, float alpha, float beta)
{
    switch (act) {
    case EACT_NONE: return x;
    case EACT_RELU: return x > 0.0f ? x : 0.0f;
    case EACT_LEAKYRELU: return x >= 0.0f ? x : alpha * x;
    case EACT_CLIP: return x < alpha ? alpha : (x > beta ? beta : x);
    case EACT_SIGMOID:
        /* Two branches keep expf from overflowing on either side. */
        if (x >= 0.0f)
            return 1.0f / (1.0f + expf(-x));
        else {
            float t = expf(x);
            return t / (1.0f + t);
        }
    case EACT_TANH: return tanhf(x);
    case EACT_HARDSIGMOID: {
        float y = alpha * x + beta;
        return y < 0.0f ? 0.0f : (y > 1.0f ? 1.0f : y);
    }
    case EACT_HARDSWISH: {
        float y = x / 6.0f + 0.5f;
        return x * (y < 0.0f ? 0.0f : (y > 1.0f ? 1.0f : y));
    }
    case EACT_ELU: return x >= 0.0f ? x : alpha * (expf(x) - 1.0f);
    case EACT_GELU_ERF: return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
    case EACT_GELU_TANH:
        return 0.5f * x *
               (1.0f + tanhf(0.79788456080286536f * (x + 0.044715f * x * x * x)));
    }
    return x;
}

/*
 * The FP32 unary ops (math and activations) on one value; alpha, beta and
 * gamma are the op's attributes, gelu_tanh selects Gelu's tanh approximation.
 * Ops that are not unary return x unchanged.
 */
ENG_HD static inline float eng_unary_apply(enum eng_op op, float x, float alpha, float beta,
                                           float gamma, int gelu_tanh)
{
    switch (op) {
    case EOP_SQRT: return sqrtf(x);
    case EOP_EXP: return expf(x);
    case EOP_LOG: return logf(x);
    case EOP_ERF: return erff(x);
    case EOP_NEG: return -x;
    case EOP_ABS: return fabsf(x);
    case EOP_RECIPROCAL: return 1.0f / x;
    case EOP_FLOOR: return floorf(x);
    case EOP_CEIL: return ceilf(x);
    case EOP_ROUND: return nearbyintf(x);
    case EOP_SIGN: return x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : 0.0f);
    case EOP_SIN: return sinf(x);
    case EOP_COS: return cosf(x);
    case EOP_TAN: return tanf(x);
    case EOP_SINH: return sinhf(x);
    case EOP_COSH: return coshf(x);
    case EOP_ASIN: return asinf(x);
    case EOP_ACOS: return acosf(x);
    case EOP_ATAN: return atanf(x);
    case EOP_RELU: return x > 0.0f ? x : 0.0f;
    case EOP_LEAKYRELU: return x >= 0.0f ? x : alpha * x;
    case EOP_ELU: return x >= 0.0f ? x : alpha * (expf(x) - 1.0f);
    case EOP_SELU: return x > 0.0f ? gamma * x : gamma * (alpha * expf(x) - alpha);
    case EOP_CELU: return fmaxf(0.0f, x) + fminf(0.0f, alpha * (expf(x / alpha) - 1.0f));
    case EOP_SIGMOID: return eng_act_apply(EACT_SIGMOID, x, 0, 0);
    case EOP_HARDSIGMOID: return eng_act_apply(EACT_HARDSIGMOID, x, alpha, beta);
    case EOP_HARDSWISH: return eng_act_apply(EACT_HARDSWISH, x, 0, 0);
    case EOP_SOFTPLUS: return x > 20.0f ? x : log1pf(expf(x));
    case EOP_SOFTSIGN: return x / (1.0f + fabsf(x));
    case EOP_THRESHOLDEDRELU: return x > alpha ? x : 0.0f;
    case EOP_MISH: {
        float sp = x > 20.0f ? x : log1pf(expf(x));
        return x * tanhf(sp);
    }
    case EOP_GELU: return eng_act_apply(gelu_tanh ? EACT_GELU_TANH : EACT_GELU_ERF, x, 0, 0);
    case EOP_TANH: return tanhf(x);
    default: return x;
    }
}

/*
 * The FP32 arithmetic of the broadcasting binary ops (Add, Sub, Mul, Div, Mod
 * with fmod, the variadic Min, Max, Sum and Mean folded pairwise, Pow, PRelu).
 * Min and Max propagate NaN.
 */
ENG_HD static inline float eng_binary_f(enum eng_op op, float x, float z)
{
    switch (op) {
    case EOP_ADD:
    case EOP_SUM:
    case EOP_MEAN: return x + z;
    case EOP_SUB: return x - z;
    case EOP_MUL: return x * z;
    case EOP_DIV: return x / z;
    case EOP_MOD: return fmodf(x, z);
    case EOP_MIN: return isnan(x) || isnan(z) ? NAN : (x < z ? x : z);
    case EOP_MAX: return isnan(x) || isnan(z) ? NAN : (x > z ? x : z);
    case EOP_POW: return z == 2.0f ? x * x : powf(x, z);
    case EOP_PRELU: return x >= 0.0f ? x : x * z;
    default: return 0.0f;
    }
}

/*
 * The integer arithmetic of the same ops. Signed overflow is undefined in C,
 * so sums, differences and products wrap through uint64 as ONNX runtimes do;
 * division by 0 gives 0 and by -1 negates (wrapping); Mod takes the divisor's
 * sign unless fm (fmod) asks for the dividend's.
 */
ENG_HD static inline int64_t eng_binary_i(enum eng_op op, int64_t x, int64_t z, int fm)
{
    uint64_t ux = (uint64_t)x, uz = (uint64_t)z;
    switch (op) {
    case EOP_ADD:
    case EOP_SUM:
    case EOP_MEAN: return (int64_t)(ux + uz);
    case EOP_SUB: return (int64_t)(ux - uz);
    case EOP_MUL: return (int64_t)(ux * uz);
    case EOP_DIV:
        if (z == 0)
            return 0;
        if (z == -1)
            return (int64_t)(0ull - ux);
        return x / z;
    case EOP_MOD: {
        if (z == 0 || z == -1)
            return 0;
        int64_t r = x % z;
        if (!fm && r != 0 && ((r < 0) != (z < 0)))
            r += z;
        return r;
    }
    case EOP_MIN: return x < z ? x : z;
    case EOP_MAX: return x > z ? x : z;
    default: return 0;
    }
}

/* Pad: the source index along one axis of length n for output index o (already shifted
 * by the leading pad), or -1 for the constant fill. */
ENG_HD static inline int64_t eng_pad_src(int64_t o, int64_t n, enum eng_pad_mode m)
{
    if (o >= 0 && o < n)
        return o;
    switch (m) {
    case EPADM_EDGE: return o < 0 ? 0 : n - 1;
    case EPADM_WRAP: return ((o % n) + n) % n;
    case EPADM_REFLECT: {
        if (n == 1)
            return 0;
        int64_t p = 2 * (n - 1);
        o = ((o % p) + p) % p;
        return o < n ? o : p - o;
    }
    default: return -1;
    }
}

/*
 * Cast's load: element i of x (datatype dtx) as a double (*v, returns 0) or
 * as an integer (*iv, returns 1). UINT64 headed for a float type is read as a
 * double so that values above INT64_MAX keep their magnitude.
 */
ENG_HD static inline int eng_cast_load(const void *x, enum dtype dtx, int64_t i, enum dtype dty,
                                       double *v, int64_t *iv)
{
    int isint = 1;
    *v = 0;
    *iv = 0;
    switch (dtx) {
    case DT_FP32: *v = ((const float *)x)[i], isint = 0; break;
    case DT_FP64: *v = ((const double *)x)[i], isint = 0; break;
    case DT_INT64: *iv = ((const int64_t *)x)[i]; break;
    case DT_UINT64: *iv = (int64_t)((const uint64_t *)x)[i]; break;
    case DT_INT32: *iv = ((const int32_t *)x)[i]; break;
    case DT_UINT32: *iv = ((const uint32_t *)x)[i]; break;
    case DT_INT16: *iv = ((const int16_t *)x)[i]; break;
    case DT_UINT16: *iv = ((const uint16_t *)x)[i]; break;
    case DT_INT8: *iv = ((const int8_t *)x)[i]; break;
    case DT_UINT8:
    case DT_BOOL: *iv = ((const uint8_t *)x)[i]; break;
    default: break;
    }
    if (dtx == DT_UINT64 && (dty == DT_FP32 || dty == DT_FP64)) {
        *v = (double)((const uint64_t *)x)[i];
        isint = 0;
    }
    return isint;
}

/*
 * Cast's store: writes element i of y (datatype dt) from what eng_cast_load
 * read. Float to integer truncates toward zero, NaN becomes 0 and values
 * beyond INT64's range saturate; narrower integers keep the low bits.
 */
ENG_HD static inline void eng_cast_store(void *y, enum dtype dt, int64_t i, double v, int64_t iv,
                                         int isint)
{
    switch (dt) {
    case DT_FP32: ((float *)y)[i] = isint ? (float)iv : (float)v; break;
    case DT_FP64: ((double *)y)[i] = isint ? (double)iv : v; break;
    case DT_BOOL: ((uint8_t *)y)[i] = isint ? iv != 0 : v != 0; break;
    default: {
        int64_t q = iv;
        if (!isint) {
            if (isnan(v))
                q = 0;
            else if (v >= 9.2233720368547758e18)
                q = INT64_MAX;
            else if (v <= -9.2233720368547758e18)
                q = INT64_MIN;
            else
                q = (int64_t)v;
        }
        uint64_t u = (uint64_t)q;
        switch (dt) {
        case DT_INT64: ((int64_t *)y)[i] = q; break;
        case DT_UINT64: ((uint64_t *)y)[i] = u; break;
        case DT_INT32: ((int32_t *)y)[i] = (int32_t)(uint32_t)u; break;
        case DT_UINT32: ((uint32_t *)y)[i] = (uint32_t)u; break;
        case DT_INT16: ((int16_t *)y)[i] = (int16_t)(uint16_t)u; break;
        case DT_UINT16: ((uint16_t *)y)[i] = (uint16_t)u; break;
        case DT_INT8: ((int8_t *)y)[i] = (int8_t)(uint8_t)u; break;
        case DT_UINT8: ((uint8_t *)y)[i] = (uint8_t)u; break;
        default: break;
        }
    }
    }
}

#endif
