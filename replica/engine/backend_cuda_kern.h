/*
 * The CUDA backend's device kernels (backend_cuda_kern*.cu), callable from C.
 *
 * Usage: backend_cuda.c computes shapes, strides and pointers on the host and
 * calls one launcher per step; each launcher enqueues its kernel on `stream`
 * (a cudaStream_t passed as void *) and returns the launch status as an int
 * cudaError_t (0 = cudaSuccess), which the caller maps to a corral error. A
 * launcher never synchronizes and never allocates. Element counts of zero
 * enqueue nothing. Pointers are device pointers unless stated otherwise.
 *
 * Datatypes are `enum dtype` values (tensor.h); op codes are `enum eng_op`
 * and `enum eng_act` values (engine_ir.h), so the host side passes its enums
 * through unchanged.
 */
#ifndef CORRAL_BACKEND_CUDA_KERN_H
#define CORRAL_BACKEND_CUDA_KERN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CK_MAXD 8
/* Internal unary code (not an eng_op): y = x * alpha (the division of Mean). */
#define CK_UNARY_SCALE (-1)

/*
 * An n-D iteration space over an output of `dims` (dense, row-major order),
 * with element strides for up to three inputs (`in`, 0 where an input is
 * broadcast) and for the output (`out`, dense unless a copy scatters into a
 * larger tensor). `mod[i]` > 0 wraps input index i modulo mod[i] (Tile).
 */
struct ck_iter {
    int nd;
    int64_t dims[CK_MAXD];
    int64_t in[3][CK_MAXD];
    int64_t out[CK_MAXD];
    int64_t mod[CK_MAXD];
    int64_t total;
    int contiguous; /* every operand is dense with the output's shape: no index arithmetic */
};

/* A reduction: kept dims (output order) and reduced dims, with input strides. */
struct ck_rdesc {
    int nk, nr;
    int64_t kdims[CK_MAXD], kstr[CK_MAXD];
    int64_t rdims[CK_MAXD], rstr[CK_MAXD];
    int64_t nout, rcount;
};

/* A window op (pooling, im2col) over up to 3 spatial dims; unused dims have size 1. */
struct ck_window {
    int64_t in[3], out[3], k[3], s[3], d[3], pb[3], pe[3];
};

/* Unary math and activations on FP32 (and Neg/Abs/Sign on INT32/INT64). lo/hi: Clip
 * bounds read from device scalars when not NULL, else alpha/beta. */
int ck_unary(int op, float alpha, float beta, float gamma, const float *lo, const float *hi,
             int dtype, const void *x, void *y, int64_t n, void *stream);

/* y = op(a, b) with broadcasting over `it` (in[0] for a, in[1] for b; y dense). */
int ck_binary(int op, int fmod, int dta, int dtb, int dty, const void *a, const void *b, void *y,
              const struct ck_iter *it, void *stream);

/* y = cond ? x : z with broadcasting (in[0] cond, in[1] x, in[2] z); es: bytes per element. */
int ck_where(const uint8_t *cond, const void *x, const void *z, void *y, int es,
             const struct ck_iter *it, void *stream);

/* Strided copy: y[ybase + sum idx*out] = x[xbase + sum idx*in[0]] (in elements of es bytes). */
int ck_copy(const void *x, int64_t xbase, void *y, int64_t ybase, int es,
            const struct ck_iter *it, void *stream);

/* Pad of an nd-dim tensor: begin pads, mode (enum eng_pad_mode), fill bit pattern. */
int ck_pad(const void *x, void *y, int es, int nd, const int64_t *xdims, const int64_t *ydims,
           const int64_t *begin, int mode, uint64_t fill, void *stream);

/*
 * Gather along an axis: x viewed as [outer, dim, inner] (inner in elements),
 * indices (INT32 or INT64, n of them) -> y [outer, n, inner]. An index outside
 * [-dim, dim) writes zeros and stores `tag` into *err (first one wins).
 */
int ck_gather(const void *x, const void *idx, int idx_dtype, void *y, int es, int64_t outer,
              int64_t dim, int64_t inner, int64_t n, int *err, int tag, void *stream);

/* Elementwise conversion between numeric datatypes and BOOL (Cast semantics). */
int ck_cast(const void *x, int dtx, void *y, int dty, int64_t n, void *stream);

/* Softmax or LogSoftmax of x viewed as [outer, len, inner] along len. */
int ck_softmax(const float *x, float *y, int64_t outer, int64_t len, int64_t inner, int log_sm,
               void *stream);

/*
 * Normalises each of `rows` rows of `len` values: (x - mean) / sqrt(var + eps)
 * * scale + bias. channels == 0: LayerNormalization, scale/bias indexed by
 * position in the row (sn/bn == 1: one value for all); channels > 0:
 * InstanceNormalization, scale/bias indexed by row % channels. mean/invstd
 * (may be NULL) receive one value per row.
 */
int ck_rownorm(const float *x, float *y, int64_t rows, int64_t len, float eps,
               const float *scale, int64_t sn, const float *bias, int64_t bn, int64_t channels,
               float *mean, float *invstd, void *stream);

/* BatchNormalization (inference) of x [n, c, sp]. */
int ck_batchnorm(const float *x, float *y, const float *scale, const float *bias,
                 const float *mean, const float *var, float eps, int64_t n, int64_t c,
                 int64_t sp, void *stream);

/* Reduce* (op = enum eng_op) of x (FP32, INT32 or INT64) into y of the same datatype. */
int ck_reduce(int op, int dtype, const void *x, void *y, const struct ck_rdesc *r,
              void *stream);

/* ArgMax/ArgMin of x viewed as [outer, len, inner] along len, into INT64 y. */
int ck_argext(const void *x, int dtype, int64_t *y, int64_t outer, int64_t len, int64_t inner,
              int is_min, int select_last, void *stream);

/* MaxPool (is_max) or AveragePool of x [nc, spatial...] into y [nc, out spatial...]. */
int ck_pool(const float *x, float *y, int64_t nc, const struct ck_window *w, int is_max,
            int count_include_pad, void *stream);

/* im2col for one image of c channels: col [c * k0*k1*k2, out0*out1*out2]. */
int ck_im2col(const float *x, float *col, int64_t c, const struct ck_window *w, void *stream);

/*
 * Epilogue of Conv/Gemm/MatMul in place on y (n values):
 * y = act(y + bias[(i / inner) % channels] + res[i]); bias and res may be NULL.
 */
int ck_epilogue(float *y, int64_t n, const float *bias, int64_t channels, int64_t inner,
                const float *res, int act, float alpha, float beta, void *stream);

/* Fills y [m, n] with scale * c broadcast, where c is [cm, cn] with cm in {1, m}, cn in {1, n}. */
int ck_bias_fill(float *y, int64_t m, int64_t n, const float *c, int64_t cm, int64_t cn,
                 float scale, void *stream);

/* Fills n elements of es bytes with the low es bytes of `pattern`. */
int ck_fill(void *y, int es, int64_t n, uint64_t pattern, void *stream);

#ifdef __cplusplus
}
#endif

#endif
