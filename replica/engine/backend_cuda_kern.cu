/*
 * Elementwise and data-movement kernels of the CUDA backend: unary math and
 * activations, broadcasting binary ops and comparisons, Where, strided copies
 * (Transpose, Slice, Concat, Tile, Expand), Pad, Gather, Cast and fills. See
 * backend_cuda_kern.h for the contract of each launcher; the reductions,
 * normalisation, pooling and epilogues are in backend_cuda_kern_nn.cu.
 * Datatype and op switches are made at run time inside the kernels (they are
 * uniform across a launch, so they cost a predictable branch) rather than
 * through templates, which keeps these files quick to compile for every
 * target architecture.
 *
 * The arithmetic follows the engine's reference kernels (engine_k_*.c) so
 * that both backends agree: the activation, unary and Cast formulas are the
 * very ones of engine_scalar.h, integer arithmetic wraps, and Min/Max keep
 * the reference kernels' NaN handling.
 */
#include "backend_cuda_kern.cuh"

/* CK_UNARY_SCALE is the backend's own code (Mean's division); a != 0 selects Gelu's tanh form. */
__global__ void k_unary_f(int op, float a, float b, float g, const float *x, float *y, int64_t n)
{
    GRID_LOOP(i, n)
    {
        y[i] = op == CK_UNARY_SCALE ? x[i] * a
                                    : eng_unary_apply((enum eng_op)op, x[i], a, b, g, a != 0.0f);
    }
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
            ((float *)y)[i] =
                eng_binary_f((enum eng_op)op, ld_f(a, dta, off[0]), ld_f(b, dtb, off[1]));
        } else {
            st_int(y, dty, i,
                   eng_binary_i((enum eng_op)op, ld_i(a, dta, off[0]), ld_i(b, dtb, off[1]), fm));
        }
    }
}

/* Same-shape FP32 Add/Sub/Mul/Div, the common case in residual blocks and attention. */
__global__ void k_binary_flat_f(int op, const float *a, const float *b, float *y, int64_t n)
{
    GRID_LOOP(i, n) y[i] = eng_binary_f((enum eng_op)op, a[i], b[i]);
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

__global__ void k_pad(const void *x, void *y, int es, pad_args p, uint64_t fill, int64_t total)
{
    GRID_LOOP(i, total)
    {
        int64_t rem = i, off = 0, xs = 1;
        int inside = 1;
        for (int d = p.nd - 1; d >= 0; d--) {
            int64_t q = rem / p.yd[d], id = rem - q * p.yd[d];
            rem = q;
            int64_t s = eng_pad_src(id - p.b[d], p.xd[d], (enum eng_pad_mode)p.mode);
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

/* Cast: loads any supported type as a double or an int64 and stores it (engine_scalar.h). */
__global__ void k_cast(const void *x, int dtx, void *y, int dty, int64_t n)
{
    GRID_LOOP(i, n)
    {
        double v;
        int64_t iv;
        int isint = eng_cast_load(x, (enum dtype)dtx, i, (enum dtype)dty, &v, &iv);
        eng_cast_store(y, (enum dtype)dty, i, v, iv, isint);
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
