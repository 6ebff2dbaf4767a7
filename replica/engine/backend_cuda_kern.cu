/*
 * Device kernels of the CUDA backend; see backend_cuda_kern.h for the
 * contract of each launcher. Datatype and op switches are made at run time
 * inside the kernels (they are uniform across a launch, so they cost a
 * predictable branch) rather than through templates, which keeps this file
 * quick to compile for every target architecture.
 *
 * The arithmetic follows the engine's reference kernels (engine_k_*.c) so
 * that both backends agree: the same activation formulas, the same NaN
 * handling in Min/Max and reductions, integer arithmetic that wraps, and
 * Cast that truncates toward zero and saturates only at the INT64 limits.
 */
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

extern "C" {
#include "engine_ir.h"
}
#include "backend_cuda_kern.h"

#define CK_BLOCK 256
/* Grid-stride loops let a bounded grid cover any element count. */
#define CK_MAX_GRID 262144

#define GRID_LOOP(i, n)                                                                       \
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n);               \
         i += (int64_t)blockDim.x * gridDim.x)

static unsigned grid_for(int64_t n)
{
    int64_t b = (n + CK_BLOCK - 1) / CK_BLOCK;
    return (unsigned)(b > CK_MAX_GRID ? CK_MAX_GRID : (b < 1 ? 1 : b));
}

static unsigned rows_grid(int64_t rows)
{
    return (unsigned)(rows > CK_MAX_GRID ? CK_MAX_GRID : rows);
}

static int launched(void)
{
    return (int)cudaGetLastError();
}

/* ---- element access ---- */

__device__ float ld_f(const void *p, int dt, int64_t i)
{
    switch (dt) {
    case DT_FP32: return ((const float *)p)[i];
    case DT_INT64: return (float)((const int64_t *)p)[i];
    case DT_INT32: return (float)((const int32_t *)p)[i];
    case DT_BOOL:
    case DT_UINT8: return (float)((const uint8_t *)p)[i];
    default: return 0.0f;
    }
}

__device__ int64_t ld_i(const void *p, int dt, int64_t i)
{
    switch (dt) {
    case DT_INT64: return ((const int64_t *)p)[i];
    case DT_INT32: return ((const int32_t *)p)[i];
    case DT_BOOL:
    case DT_UINT8: return ((const uint8_t *)p)[i];
    case DT_FP32: return (int64_t)((const float *)p)[i];
    default: return 0;
    }
}

__device__ double ld_d(const void *p, int dt, int64_t i)
{
    switch (dt) {
    case DT_FP32: return ((const float *)p)[i];
    case DT_INT64: return (double)((const int64_t *)p)[i];
    case DT_INT32: return ((const int32_t *)p)[i];
    default: return 0.0;
    }
}

__device__ void st_int(void *p, int dt, int64_t i, int64_t v)
{
    if (dt == DT_INT64)
        ((int64_t *)p)[i] = v;
    else
        ((int32_t *)p)[i] = (int32_t)(uint32_t)(uint64_t)v;
}

/* Copies one element of es bytes (1, 2, 4 or 8). */
__device__ void cp_el(void *y, int64_t yi, const void *x, int64_t xi, int es)
{
    switch (es) {
    case 1: ((uint8_t *)y)[yi] = ((const uint8_t *)x)[xi]; break;
    case 2: ((uint16_t *)y)[yi] = ((const uint16_t *)x)[xi]; break;
    case 4: ((uint32_t *)y)[yi] = ((const uint32_t *)x)[xi]; break;
    default: ((uint64_t *)y)[yi] = ((const uint64_t *)x)[xi]; break;
    }
}

__device__ void put_el(void *y, int64_t yi, uint64_t v, int es)
{
    switch (es) {
    case 1: ((uint8_t *)y)[yi] = (uint8_t)v; break;
    case 2: ((uint16_t *)y)[yi] = (uint16_t)v; break;
    case 4: ((uint32_t *)y)[yi] = (uint32_t)v; break;
    default: ((uint64_t *)y)[yi] = v; break;
    }
}

/* Offsets of the inputs for output element i of an iteration space. */
__device__ void iter_offsets(const ck_iter &it, int64_t i, int nin, int64_t *off)
{
    for (int k = 0; k < nin; k++)
        off[k] = 0;
    if (it.contiguous) {
        for (int k = 0; k < nin; k++)
            off[k] = i;
        return;
    }
    int64_t rem = i;
    for (int d = it.nd - 1; d >= 0; d--) {
        int64_t q = rem / it.dims[d], id = rem - q * it.dims[d];
        rem = q;
        for (int k = 0; k < nin; k++)
            off[k] += id * it.in[k][d];
    }
}

/* ---- activations and unary math (formulas of engine_k_elem.c) ---- */

__device__ float act_apply(int act, float x, float alpha, float beta)
{
    switch (act) {
    case EACT_RELU: return x > 0.0f ? x : 0.0f;
    case EACT_LEAKYRELU: return x >= 0.0f ? x : alpha * x;
    case EACT_CLIP: return x < alpha ? alpha : (x > beta ? beta : x);
    case EACT_SIGMOID:
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
        return 0.5f * x * (1.0f + tanhf(0.79788456080286536f * (x + 0.044715f * x * x * x)));
    default: return x;
    }
}

__device__ float unary_f(int op, float x, float a, float b, float g)
{
    switch (op) {
    case CK_UNARY_SCALE: return x * a;
    case EOP_SQRT: return sqrtf(x);
    case EOP_EXP: return expf(x);
    case EOP_LOG: return logf(x);
    case EOP_ERF: return erff(x);
    case EOP_NEG: return -x;
    case EOP_ABS: return fabsf(x);
    case EOP_RECIPROCAL: return 1.0f / x;
    case EOP_FLOOR: return floorf(x);
    case EOP_CEIL: return ceilf(x);
    case EOP_ROUND: return rintf(x);
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
    case EOP_LEAKYRELU: return x >= 0.0f ? x : a * x;
    case EOP_ELU: return x >= 0.0f ? x : a * (expf(x) - 1.0f);
    case EOP_SELU: return x > 0.0f ? g * x : g * (a * expf(x) - a);
    case EOP_CELU: return fmaxf(0.0f, x) + fminf(0.0f, a * (expf(x / a) - 1.0f));
    case EOP_SIGMOID: return act_apply(EACT_SIGMOID, x, 0.0f, 0.0f);
    case EOP_HARDSIGMOID: return act_apply(EACT_HARDSIGMOID, x, a, b);
    case EOP_HARDSWISH: return act_apply(EACT_HARDSWISH, x, 0.0f, 0.0f);
    case EOP_SOFTPLUS: return x > 20.0f ? x : log1pf(expf(x));
    case EOP_SOFTSIGN: return x / (1.0f + fabsf(x));
    case EOP_THRESHOLDEDRELU: return x > a ? x : 0.0f;
    case EOP_MISH: {
        float sp = x > 20.0f ? x : log1pf(expf(x));
        return x * tanhf(sp);
    }
    /* Gelu: a != 0 selects the tanh approximation. */
    case EOP_GELU: return act_apply(a != 0.0f ? EACT_GELU_TANH : EACT_GELU_ERF, x, 0.0f, 0.0f);
    case EOP_TANH: return tanhf(x);
    default: return x;
    }
}

__global__ void k_unary_f(int op, float a, float b, float g, const float *x, float *y, int64_t n)
{
    GRID_LOOP(i, n) y[i] = unary_f(op, x[i], a, b, g);
}

__global__ void k_clip(const float *lo_p, const float *hi_p, float lo, float hi, const float *x,
                       float *y, int64_t n)
{
    if (lo_p)
        lo = *lo_p;
    if (hi_p)
        hi = *hi_p;
    GRID_LOOP(i, n)
    {
        float v = x[i];
        y[i] = v < lo ? lo : (v > hi ? hi : v);
    }
}

__global__ void k_unary_i(int op, int dt, const void *x, void *y, int64_t n)
{
    GRID_LOOP(i, n)
    {
        int64_t v = ld_i(x, dt, i), r;
        if (op == EOP_NEG)
            r = (int64_t)(0ull - (uint64_t)v);
        else if (op == EOP_ABS)
            r = v < 0 ? (int64_t)(0ull - (uint64_t)v) : v;
        else
            r = v > 0 ? 1 : (v < 0 ? -1 : 0);
        st_int(y, dt, i, r);
    }
}

extern "C" int ck_unary(int op, float alpha, float beta, float gamma, const float *lo,
                        const float *hi, int dtype, const void *x, void *y, int64_t n,
                        void *stream)
{
    if (n <= 0)
        return 0;
    cudaStream_t s = (cudaStream_t)stream;
    if (dtype == DT_INT64 || dtype == DT_INT32)
        k_unary_i<<<grid_for(n), CK_BLOCK, 0, s>>>(op, dtype, x, y, n);
    else if (op == EOP_CLIP)
        k_clip<<<grid_for(n), CK_BLOCK, 0, s>>>(lo, hi, alpha, beta, (const float *)x,
                                                 (float *)y, n);
    else
        k_unary_f<<<grid_for(n), CK_BLOCK, 0, s>>>(op, alpha, beta, gamma, (const float *)x,
                                                   (float *)y, n);
    return launched();
}

/* ---- binary ops with broadcasting ---- */

__device__ float fop(int op, float x, float z)
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

__device__ int64_t iop(int op, int64_t x, int64_t z, int fm)
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

__device__ int cmp_f(int op, float x, float z)
{
    switch (op) {
    case EOP_EQUAL: return x == z;
    case EOP_LESS: return x < z;
    case EOP_LESS_EQUAL: return x <= z;
    case EOP_GREATER: return x > z;
    default: return x >= z;
    }
}

__device__ int cmp_i(int op, int64_t x, int64_t z)
{
    switch (op) {
    case EOP_EQUAL: return x == z;
    case EOP_LESS: return x < z;
    case EOP_LESS_EQUAL: return x <= z;
    case EOP_GREATER: return x > z;
    default: return x >= z;
    }
}

__global__ void k_binary(int op, int fm, int dta, int dtb, int dty, const void *a,
                         const void *b, void *y, ck_iter it)
{
    int is_cmp = op == EOP_EQUAL || op == EOP_LESS || op == EOP_LESS_EQUAL ||
                 op == EOP_GREATER || op == EOP_GREATER_EQUAL;
    int is_logic = op == EOP_AND || op == EOP_OR || op == EOP_XOR;
    GRID_LOOP(i, it.total)
    {
        int64_t off[2];
        iter_offsets(it, i, 2, off);
        if (is_logic) {
            int x = ((const uint8_t *)a)[off[0]] != 0, z = ((const uint8_t *)b)[off[1]] != 0;
            int r = op == EOP_AND ? (x && z) : (op == EOP_OR ? (x || z) : (x != z));
            ((uint8_t *)y)[i] = (uint8_t)r;
        } else if (is_cmp) {
            int r = dta == DT_FP32 ? cmp_f(op, ld_f(a, dta, off[0]), ld_f(b, dtb, off[1]))
                                   : cmp_i(op, ld_i(a, dta, off[0]), ld_i(b, dtb, off[1]));
            ((uint8_t *)y)[i] = (uint8_t)r;
        } else if (dty == DT_FP32) {
            ((float *)y)[i] = fop(op, ld_f(a, dta, off[0]), ld_f(b, dtb, off[1]));
        } else {
            st_int(y, dty, i, iop(op, ld_i(a, dta, off[0]), ld_i(b, dtb, off[1]), fm));
        }
    }
}

/* Same-shape FP32 Add/Sub/Mul/Div, the common case in residual blocks and attention. */
__global__ void k_binary_flat_f(int op, const float *a, const float *b, float *y, int64_t n)
{
    GRID_LOOP(i, n) y[i] = fop(op, a[i], b[i]);
}

extern "C" int ck_binary(int op, int fmod, int dta, int dtb, int dty, const void *a,
                         const void *b, void *y, const struct ck_iter *it, void *stream)
{
    if (it->total <= 0)
        return 0;
    cudaStream_t s = (cudaStream_t)stream;
    if (it->contiguous && dta == DT_FP32 && dtb == DT_FP32 && dty == DT_FP32)
        k_binary_flat_f<<<grid_for(it->total), CK_BLOCK, 0, s>>>(
            op, (const float *)a, (const float *)b, (float *)y, it->total);
    else
        k_binary<<<grid_for(it->total), CK_BLOCK, 0, s>>>(op, fmod, dta, dtb, dty, a, b, y,
                                                          *it);
    return launched();
}

__global__ void k_where(const uint8_t *c, const void *x, const void *z, void *y, int es,
                        ck_iter it)
{
    GRID_LOOP(i, it.total)
    {
        int64_t off[3];
        iter_offsets(it, i, 3, off);
        if (c[off[0]])
            cp_el(y, i, x, off[1], es);
        else
            cp_el(y, i, z, off[2], es);
    }
}

extern "C" int ck_where(const uint8_t *cond, const void *x, const void *z, void *y, int es,
                        const struct ck_iter *it, void *stream)
{
    if (it->total <= 0)
        return 0;
    k_where<<<grid_for(it->total), CK_BLOCK, 0, (cudaStream_t)stream>>>(cond, x, z, y, es, *it);
    return launched();
}

/* ---- data movement ---- */

__global__ void k_copy(const void *x, int64_t xbase, void *y, int64_t ybase, int es, ck_iter it)
{
    GRID_LOOP(i, it.total)
    {
        int64_t rem = i, xo = xbase, yo = ybase;
        for (int d = it.nd - 1; d >= 0; d--) {
            int64_t q = rem / it.dims[d], id = rem - q * it.dims[d];
            rem = q;
            yo += id * it.out[d];
            xo += (it.mod[d] > 0 ? id % it.mod[d] : id) * it.in[0][d];
        }
        cp_el(y, yo, x, xo, es);
    }
}

extern "C" int ck_copy(const void *x, int64_t xbase, void *y, int64_t ybase, int es,
                       const struct ck_iter *it, void *stream)
{
    if (it->total <= 0)
        return 0;
    k_copy<<<grid_for(it->total), CK_BLOCK, 0, (cudaStream_t)stream>>>(x, xbase, y, ybase, es,
                                                                       *it);
    return launched();
}

struct pad_args {
    int nd, mode;
    int64_t xd[CK_MAXD], yd[CK_MAXD], b[CK_MAXD];
};

/* Source index along one axis for output index o, or -1 for the constant fill. */
__device__ int64_t pad_src(int64_t o, int64_t n, int m)
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

__global__ void k_pad(const void *x, void *y, int es, pad_args p, uint64_t fill, int64_t total)
{
    GRID_LOOP(i, total)
    {
        int64_t rem = i, off = 0, xs = 1;
        int inside = 1;
        for (int d = p.nd - 1; d >= 0; d--) {
            int64_t q = rem / p.yd[d], id = rem - q * p.yd[d];
            rem = q;
            int64_t s = pad_src(id - p.b[d], p.xd[d], p.mode);
            if (s < 0)
                inside = 0;
            else
                off += s * xs;
            xs *= p.xd[d];
        }
        if (inside)
            cp_el(y, i, x, off, es);
        else
            put_el(y, i, fill, es);
    }
}

extern "C" int ck_pad(const void *x, void *y, int es, int nd, const int64_t *xdims,
                      const int64_t *ydims, const int64_t *begin, int mode, uint64_t fill,
                      void *stream)
{
    pad_args p;
    int64_t total = 1;
    p.nd = nd;
    p.mode = mode;
    for (int d = 0; d < CK_MAXD; d++) {
        p.xd[d] = d < nd ? xdims[d] : 1;
        p.yd[d] = d < nd ? ydims[d] : 1;
        p.b[d] = d < nd ? begin[d] : 0;
        total *= p.yd[d];
    }
    if (total <= 0)
        return 0;
    k_pad<<<grid_for(total), CK_BLOCK, 0, (cudaStream_t)stream>>>(x, y, es, p, fill, total);
    return launched();
}

__global__ void k_gather(const void *x, const void *idx, int idt, void *y, int es,
                         int64_t outer, int64_t dim, int64_t inner, int64_t n, int *err, int tag)
{
    GRID_LOOP(i, outer * n * inner)
    {
        int64_t j = i % inner, t = i / inner, k = t % n, o = t / n;
        int64_t ix = idt == DT_INT64 ? ((const int64_t *)idx)[k] : ((const int32_t *)idx)[k];
        if (ix < -dim || ix >= dim) {
            put_el(y, i, 0, es);
            atomicCAS(err, 0, tag);
            continue;
        }
        if (ix < 0)
            ix += dim;
        cp_el(y, i, x, (o * dim + ix) * inner + j, es);
    }
}

extern "C" int ck_gather(const void *x, const void *idx, int idx_dtype, void *y, int es,
                         int64_t outer, int64_t dim, int64_t inner, int64_t n, int *err, int tag,
                         void *stream)
{
    int64_t total = outer * n * inner;
    if (total <= 0)
        return 0;
    k_gather<<<grid_for(total), CK_BLOCK, 0, (cudaStream_t)stream>>>(x, idx, idx_dtype, y, es,
                                                                     outer, dim, inner, n, err,
                                                                     tag);
    return launched();
}

/* Cast: loads any supported type as (double or int64), stores with engine_k_shape's rules. */
__global__ void k_cast(const void *x, int dtx, void *y, int dty, int64_t n)
{
    GRID_LOOP(i, n)
    {
        double v = 0.0;
        int64_t iv = 0;
        int isint = 1;
        switch (dtx) {
        case DT_FP32: v = ((const float *)x)[i], isint = 0; break;
        case DT_FP64: v = ((const double *)x)[i], isint = 0; break;
        case DT_INT64: iv = ((const int64_t *)x)[i]; break;
        case DT_UINT64: iv = (int64_t)((const uint64_t *)x)[i]; break;
        case DT_INT32: iv = ((const int32_t *)x)[i]; break;
        case DT_UINT32: iv = ((const uint32_t *)x)[i]; break;
        case DT_INT16: iv = ((const int16_t *)x)[i]; break;
        case DT_UINT16: iv = ((const uint16_t *)x)[i]; break;
        case DT_INT8: iv = ((const int8_t *)x)[i]; break;
        case DT_UINT8:
        case DT_BOOL: iv = ((const uint8_t *)x)[i]; break;
        default: break;
        }
        if (dtx == DT_UINT64 && (dty == DT_FP32 || dty == DT_FP64)) {
            v = (double)((const uint64_t *)x)[i];
            isint = 0;
        }
        switch (dty) {
        case DT_FP32: ((float *)y)[i] = isint ? (float)iv : (float)v; break;
        case DT_FP64: ((double *)y)[i] = isint ? (double)iv : v; break;
        case DT_BOOL: ((uint8_t *)y)[i] = isint ? iv != 0 : v != 0.0; break;
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
            switch (dty) {
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
}

extern "C" int ck_cast(const void *x, int dtx, void *y, int dty, int64_t n, void *stream)
{
    if (n <= 0)
        return 0;
    k_cast<<<grid_for(n), CK_BLOCK, 0, (cudaStream_t)stream>>>(x, dtx, y, dty, n);
    return launched();
}

__global__ void k_fill(void *y, int es, int64_t n, uint64_t pattern)
{
    GRID_LOOP(i, n) put_el(y, i, pattern, es);
}

extern "C" int ck_fill(void *y, int es, int64_t n, uint64_t pattern, void *stream)
{
    if (n <= 0)
        return 0;
    k_fill<<<grid_for(n), CK_BLOCK, 0, (cudaStream_t)stream>>>(y, es, n, pattern);
    return launched();
}

/* ---- block reductions ---- */

/* Sum (is_max = 0) or max of v over the block; every thread gets the result. */
__device__ float block_reduce_f(float v, int is_max, float *sh)
{
    for (int o = 16; o > 0; o >>= 1) {
        float t = __shfl_down_sync(0xffffffffu, v, o);
        v = is_max ? fmaxf(v, t) : v + t;
    }
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    if (lane == 0)
        sh[w] = v;
    __syncthreads();
    if (w == 0) {
        v = lane < nw ? sh[lane] : (is_max ? -INFINITY : 0.0f);
        for (int o = 16; o > 0; o >>= 1) {
            float t = __shfl_down_sync(0xffffffffu, v, o);
            v = is_max ? fmaxf(v, t) : v + t;
        }
        if (lane == 0)
            sh[0] = v;
    }
    __syncthreads();
    float r = sh[0];
    __syncthreads();
    return r;
}

/* Combines two partial results of a Reduce* op. */
__device__ double red_combine(int op, double a, double b)
{
    switch (op) {
    case EOP_REDUCEMAX: return isnan(a) || isnan(b) ? NAN : (a > b ? a : b);
    case EOP_REDUCEMIN: return isnan(a) || isnan(b) ? NAN : (a < b ? a : b);
    case EOP_REDUCEPROD: return a * b;
    default: return a + b;
    }
}

__device__ double red_identity(int op)
{
    switch (op) {
    case EOP_REDUCEMAX: return -INFINITY;
    case EOP_REDUCEMIN: return INFINITY;
    case EOP_REDUCEPROD: return 1.0;
    default: return 0.0;
    }
}

__device__ double block_reduce_d(int op, double v, double *sh)
{
    for (int o = 16; o > 0; o >>= 1)
        v = red_combine(op, v, __shfl_down_sync(0xffffffffu, v, o));
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    if (lane == 0)
        sh[w] = v;
    __syncthreads();
    if (w == 0) {
        v = lane < nw ? sh[lane] : red_identity(op);
        for (int o = 16; o > 0; o >>= 1)
            v = red_combine(op, v, __shfl_down_sync(0xffffffffu, v, o));
        if (lane == 0)
            sh[0] = v;
    }
    __syncthreads();
    double r = sh[0];
    __syncthreads();
    return r;
}

/* ---- softmax ---- */

__global__ void k_softmax_rows(const float *x, float *y, int64_t rows, int64_t len, int log_sm)
{
    __shared__ float sh[32];
    for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const float *xr = x + r * len;
        float *yr = y + r * len;
        float mx = -INFINITY;
        for (int64_t j = threadIdx.x; j < len; j += blockDim.x)
            mx = fmaxf(mx, xr[j]);
        mx = block_reduce_f(mx, 1, sh);
        float sum = 0.0f;
        for (int64_t j = threadIdx.x; j < len; j += blockDim.x)
            sum += expf(xr[j] - mx);
        sum = block_reduce_f(sum, 0, sh);
        if (log_sm) {
            float ls = logf(sum);
            for (int64_t j = threadIdx.x; j < len; j += blockDim.x)
                yr[j] = xr[j] - mx - ls;
        } else {
            float inv = 1.0f / sum;
            for (int64_t j = threadIdx.x; j < len; j += blockDim.x)
                yr[j] = expf(xr[j] - mx) * inv;
        }
    }
}

__global__ void k_softmax_cols(const float *x, float *y, int64_t outer, int64_t len,
                               int64_t inner, int log_sm)
{
    GRID_LOOP(i, outer * inner)
    {
        int64_t o = i / inner, in = i - o * inner;
        const float *xr = x + o * len * inner + in;
        float *yr = y + o * len * inner + in;
        float mx = -INFINITY, sum = 0.0f;
        for (int64_t j = 0; j < len; j++)
            mx = fmaxf(mx, xr[j * inner]);
        for (int64_t j = 0; j < len; j++)
            sum += expf(xr[j * inner] - mx);
        float ls = logf(sum), inv = 1.0f / sum;
        for (int64_t j = 0; j < len; j++)
            yr[j * inner] = log_sm ? xr[j * inner] - mx - ls : expf(xr[j * inner] - mx) * inv;
    }
}

extern "C" int ck_softmax(const float *x, float *y, int64_t outer, int64_t len, int64_t inner,
                          int log_sm, void *stream)
{
    if (outer <= 0 || len <= 0 || inner <= 0)
        return 0;
    cudaStream_t s = (cudaStream_t)stream;
    if (inner == 1)
        k_softmax_rows<<<rows_grid(outer), CK_BLOCK, 0, s>>>(x, y, outer, len, log_sm);
    else
        k_softmax_cols<<<grid_for(outer * inner), CK_BLOCK, 0, s>>>(x, y, outer, len, inner,
                                                                    log_sm);
    return launched();
}

/* ---- normalisation ---- */

__global__ void k_rownorm(const float *x, float *y, int64_t rows, int64_t len, float eps,
                          const float *scale, int64_t sn, const float *bias, int64_t bn,
                          int64_t channels, float *mean_out, float *inv_out)
{
    __shared__ float sh[32];
    for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const float *xr = x + r * len;
        float *yr = y + r * len;
        float s = 0.0f;
        for (int64_t j = threadIdx.x; j < len; j += blockDim.x)
            s += xr[j];
        s = block_reduce_f(s, 0, sh);
        float mean = len ? s / (float)len : 0.0f;
        float s2 = 0.0f;
        for (int64_t j = threadIdx.x; j < len; j += blockDim.x) {
            float d = xr[j] - mean;
            s2 += d * d;
        }
        s2 = block_reduce_f(s2, 0, sh);
        float inv = 1.0f / sqrtf((len ? s2 / (float)len : 0.0f) + eps);
        int64_t c = channels > 0 ? r % channels : 0;
        for (int64_t j = threadIdx.x; j < len; j += blockDim.x) {
            float sc, bi = 0.0f;
            if (channels > 0) {
                sc = scale[c];
                bi = bias ? bias[c] : 0.0f;
            } else {
                sc = scale[sn == 1 ? 0 : j];
                bi = bias ? bias[bn == 1 ? 0 : j] : 0.0f;
            }
            yr[j] = (xr[j] - mean) * inv * sc + bi;
        }
        if (threadIdx.x == 0) {
            if (mean_out)
                mean_out[r] = mean;
            if (inv_out)
                inv_out[r] = inv;
        }
    }
}

extern "C" int ck_rownorm(const float *x, float *y, int64_t rows, int64_t len, float eps,
                          const float *scale, int64_t sn, const float *bias, int64_t bn,
                          int64_t channels, float *mean, float *invstd, void *stream)
{
    if (rows <= 0)
        return 0;
    k_rownorm<<<rows_grid(rows), CK_BLOCK, 0, (cudaStream_t)stream>>>(
        x, y, rows, len, eps, scale, sn, bias, bn, channels, mean, invstd);
    return launched();
}

__global__ void k_batchnorm(const float *x, float *y, const float *sc, const float *bi,
                            const float *mu, const float *var, float eps, int64_t n, int64_t c,
                            int64_t sp)
{
    GRID_LOOP(i, n * c * sp)
    {
        int64_t ch = (i / sp) % c;
        float k = sc[ch] / sqrtf(var[ch] + eps);
        float off = bi[ch] - mu[ch] * k;
        y[i] = x[i] * k + off;
    }
}

extern "C" int ck_batchnorm(const float *x, float *y, const float *scale, const float *bias,
                            const float *mean, const float *var, float eps, int64_t n, int64_t c,
                            int64_t sp, void *stream)
{
    int64_t total = n * c * sp;
    if (total <= 0)
        return 0;
    k_batchnorm<<<grid_for(total), CK_BLOCK, 0, (cudaStream_t)stream>>>(x, y, scale, bias, mean,
                                                                        var, eps, n, c, sp);
    return launched();
}

/* ---- Reduce*, ArgMax/ArgMin ---- */

__device__ int64_t red_offset(const int64_t *dims, const int64_t *str, int n, int64_t t)
{
    int64_t off = 0;
    for (int d = n - 1; d >= 0; d--) {
        int64_t q = t / dims[d];
        off += (t - q * dims[d]) * str[d];
        t = q;
    }
    return off;
}

__device__ double red_term(int op, double v, double mx)
{
    switch (op) {
    case EOP_REDUCESUMSQUARE:
    case EOP_REDUCEL2: return v * v;
    case EOP_REDUCEL1: return fabs(v);
    case EOP_REDUCELOGSUMEXP: return exp(v - mx);
    default: return v;
    }
}

/* One block per output element; the reduction runs in double as the reference kernel does. */
__global__ void k_reduce(int op, int dt, const void *x, void *y, ck_rdesc r)
{
    __shared__ double sh[32];
    for (int64_t o = blockIdx.x; o < r.nout; o += gridDim.x) {
        int64_t base = red_offset(r.kdims, r.kstr, r.nk, o);
        double mx = 0.0;
        if (op == EOP_REDUCELOGSUMEXP) {
            double m = -INFINITY;
            for (int64_t t = threadIdx.x; t < r.rcount; t += blockDim.x) {
                double v = ld_d(x, dt, base + red_offset(r.rdims, r.rstr, r.nr, t));
                m = v > m ? v : m;
            }
            m = block_reduce_d(EOP_REDUCEMAX, m, sh);
            mx = isfinite(m) ? m : 0.0;
        }
        int cop = op == EOP_REDUCELOGSUMEXP ? EOP_REDUCESUM : op;
        double acc = red_identity(cop);
        for (int64_t t = threadIdx.x; t < r.rcount; t += blockDim.x) {
            double v = ld_d(x, dt, base + red_offset(r.rdims, r.rstr, r.nr, t));
            acc = red_combine(cop, acc, red_term(op, v, mx));
        }
        acc = block_reduce_d(cop, acc, sh);
        if (threadIdx.x == 0) {
            if (op == EOP_REDUCEMEAN)
                acc = r.rcount ? acc / (double)r.rcount : NAN;
            else if (op == EOP_REDUCEL2)
                acc = sqrt(acc);
            else if (op == EOP_REDUCELOGSUMEXP)
                acc = log(acc) + mx;
            if (dt == DT_FP32)
                ((float *)y)[o] = (float)acc;
            else
                st_int(y, dt, o, (int64_t)(dt != DT_FP32 && op == EOP_REDUCEMEAN ? trunc(acc)
                                                                                 : acc));
        }
    }
}

extern "C" int ck_reduce(int op, int dtype, const void *x, void *y, const struct ck_rdesc *r,
                         void *stream)
{
    if (r->nout <= 0)
        return 0;
    /* A warp suffices for short reductions; longer ones get a full block. */
    int threads = r->rcount <= 64 ? 32 : CK_BLOCK;
    k_reduce<<<rows_grid(r->nout), threads, 0, (cudaStream_t)stream>>>(op, dtype, x, y, *r);
    return launched();
}

__global__ void k_argext(const void *x, int dt, int64_t *y, int64_t outer, int64_t len,
                         int64_t inner, int is_min, int last)
{
    GRID_LOOP(i, outer * inner)
    {
        int64_t o = i / inner, k = i - o * inner, best = 0;
        double bv = ld_d(x, dt, o * len * inner + k);
        for (int64_t j = 1; j < len; j++) {
            double v = ld_d(x, dt, (o * len + j) * inner + k);
            int better = is_min ? v < bv : v > bv;
            if (better || (last && v == bv)) {
                bv = v;
                best = j;
            }
        }
        y[i] = best;
    }
}

extern "C" int ck_argext(const void *x, int dtype, int64_t *y, int64_t outer, int64_t len,
                         int64_t inner, int is_min, int select_last, void *stream)
{
    if (outer * inner <= 0 || len <= 0)
        return 0;
    k_argext<<<grid_for(outer * inner), CK_BLOCK, 0, (cudaStream_t)stream>>>(
        x, dtype, y, outer, len, inner, is_min, select_last);
    return launched();
}

/* ---- pooling and im2col ---- */

__global__ void k_pool(const float *x, float *y, int64_t nc, ck_window w, int is_max, int cip)
{
    int64_t osp = w.out[0] * w.out[1] * w.out[2], isp = w.in[0] * w.in[1] * w.in[2];
    GRID_LOOP(i, nc * osp)
    {
        int64_t ch = i / osp, r = i - ch * osp;
        int64_t o2 = r % w.out[2], o1 = (r / w.out[2]) % w.out[1], o0 = r / (w.out[2] * w.out[1]);
        int64_t st0 = o0 * w.s[0] - w.pb[0], st1 = o1 * w.s[1] - w.pb[1],
                st2 = o2 * w.s[2] - w.pb[2];
        const float *xc = x + ch * isp;
        float best = -INFINITY, sum = 0.0f;
        int64_t valid = 0, padded = 0;
        for (int64_t j0 = 0; j0 < w.k[0]; j0++) {
            int64_t p0 = st0 + j0 * w.d[0];
            if (p0 >= w.in[0] + w.pe[0])
                break;
            for (int64_t j1 = 0; j1 < w.k[1]; j1++) {
                int64_t p1 = st1 + j1 * w.d[1];
                if (p1 >= w.in[1] + w.pe[1])
                    break;
                for (int64_t j2 = 0; j2 < w.k[2]; j2++) {
                    int64_t p2 = st2 + j2 * w.d[2];
                    if (p2 >= w.in[2] + w.pe[2])
                        break;
                    padded++;
                    if (p0 < 0 || p0 >= w.in[0] || p1 < 0 || p1 >= w.in[1] || p2 < 0 ||
                        p2 >= w.in[2])
                        continue;
                    float v = xc[(p0 * w.in[1] + p1) * w.in[2] + p2];
                    valid++;
                    if (is_max)
                        best = v > best || isnan(v) ? v : best;
                    else
                        sum += v;
                }
            }
        }
        if (is_max)
            y[i] = best;
        else {
            int64_t div = cip ? padded : valid;
            y[i] = div ? sum / (float)div : 0.0f;
        }
    }
}

extern "C" int ck_pool(const float *x, float *y, int64_t nc, const struct ck_window *w,
                       int is_max, int count_include_pad, void *stream)
{
    int64_t total = nc * w->out[0] * w->out[1] * w->out[2];
    if (total <= 0)
        return 0;
    k_pool<<<grid_for(total), CK_BLOCK, 0, (cudaStream_t)stream>>>(x, y, nc, *w, is_max,
                                                                   count_include_pad);
    return launched();
}

__global__ void k_im2col(const float *x, float *col, int64_t c, ck_window w)
{
    int64_t ksz = w.k[0] * w.k[1] * w.k[2], osp = w.out[0] * w.out[1] * w.out[2];
    int64_t isp = w.in[0] * w.in[1] * w.in[2];
    GRID_LOOP(i, c * ksz * osp)
    {
        int64_t o = i % osp, row = i / osp, kk = row % ksz, ch = row / ksz;
        int64_t o2 = o % w.out[2], o1 = (o / w.out[2]) % w.out[1], o0 = o / (w.out[2] * w.out[1]);
        int64_t j2 = kk % w.k[2], j1 = (kk / w.k[2]) % w.k[1], j0 = kk / (w.k[2] * w.k[1]);
        int64_t p0 = o0 * w.s[0] - w.pb[0] + j0 * w.d[0];
        int64_t p1 = o1 * w.s[1] - w.pb[1] + j1 * w.d[1];
        int64_t p2 = o2 * w.s[2] - w.pb[2] + j2 * w.d[2];
        int ok = p0 >= 0 && p0 < w.in[0] && p1 >= 0 && p1 < w.in[1] && p2 >= 0 && p2 < w.in[2];
        col[i] = ok ? x[ch * isp + (p0 * w.in[1] + p1) * w.in[2] + p2] : 0.0f;
    }
}

extern "C" int ck_im2col(const float *x, float *col, int64_t c, const struct ck_window *w,
                         void *stream)
{
    int64_t total = c * w->k[0] * w->k[1] * w->k[2] * w->out[0] * w->out[1] * w->out[2];
    if (total <= 0)
        return 0;
    k_im2col<<<grid_for(total), CK_BLOCK, 0, (cudaStream_t)stream>>>(x, col, c, *w);
    return launched();
}

/* ---- GEMM and convolution epilogues ---- */

__global__ void k_epilogue(float *y, int64_t n, const float *bias, int64_t channels,
                           int64_t inner, const float *res, int act, float alpha, float beta)
{
    GRID_LOOP(i, n)
    {
        float v = y[i];
        if (bias)
            v += bias[(i / inner) % channels];
        if (res)
            v += res[i];
        y[i] = act_apply(act, v, alpha, beta);
    }
}

extern "C" int ck_epilogue(float *y, int64_t n, const float *bias, int64_t channels,
                           int64_t inner, const float *res, int act, float alpha, float beta,
                           void *stream)
{
    if (n <= 0 || (!bias && !res && act == EACT_NONE))
        return 0;
    if (channels < 1)
        channels = 1;
    if (inner < 1)
        inner = 1;
    k_epilogue<<<grid_for(n), CK_BLOCK, 0, (cudaStream_t)stream>>>(y, n, bias, channels, inner,
                                                                   res, act, alpha, beta);
    return launched();
}

__global__ void k_bias_fill(float *y, int64_t m, int64_t n, const float *c, int64_t cm,
                            int64_t cn, float scale)
{
    GRID_LOOP(i, m * n)
    {
        int64_t r = i / n, j = i - r * n;
        y[i] = scale * c[(cm == 1 ? 0 : r) * cn + (cn == 1 ? 0 : j)];
    }
}

extern "C" int ck_bias_fill(float *y, int64_t m, int64_t n, const float *c, int64_t cm,
                            int64_t cn, float scale, void *stream)
{
    if (m * n <= 0)
        return 0;
    k_bias_fill<<<grid_for(m * n), CK_BLOCK, 0, (cudaStream_t)stream>>>(y, m, n, c, cm, cn,
                                                                        scale);
    return launched();
}
