#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "backend_cuda.h"
#include "log.h"

/*
 * Matrix products and convolution for the CUDA backend. cuBLAS is
 * column-major and the engine's tensors are row-major, so every product
 * Y = A * B is issued as Y^T = B^T * A^T: a row-major matrix read as
 * column-major is its transpose, with the leading dimension equal to its
 * row length. Epilogues (bias, residual, activation) are one extra kernel
 * over the output.
 */

/* Largest cuDNN workspace a convolution may ask for before we prefer another algorithm. */
#define CONV_WS_LIMIT ((size_t)1 << 30)

static int fits_int(int64_t v)
{
    return v >= 0 && v <= INT_MAX;
}

static int too_big(const struct plan_step *st, struct cerr *e)
{
    return cerr_set(e, CORRAL_EUNSUPP, "%s: a matrix dimension exceeds cuBLAS's 32-bit limit",
                    st->label);
}

/* Row-major Y[m,n] = alpha * op(A) * op(B) + beta * Y. */
static int sgemm_rm(struct cuda_plan *P, const struct plan_step *st, int ta, int tb, int64_t m,
                    int64_t n, int64_t k, float alpha, const float *A, int64_t lda,
                    const float *B, int64_t ldb, float beta, float *Y, int64_t ldy,
                    struct cerr *e)
{
    if (!fits_int(m) || !fits_int(n) || !fits_int(k) || !fits_int(lda) || !fits_int(ldb) ||
        !fits_int(ldy))
        return too_big(st, e);
    return cuda_blas_check(cublasSgemm(P->c->blas, tb ? CUBLAS_OP_T : CUBLAS_OP_N,
                                       ta ? CUBLAS_OP_T : CUBLAS_OP_N, (int)n, (int)m, (int)k,
                                       &alpha, B, (int)ldb, A, (int)lda, &beta, Y, (int)ldy),
                           "cublasSgemm", st, e);
}

static int epilogue(struct cuda_plan *P, const struct plan_step *st, float *y, int64_t n,
                    const float *bias, int64_t channels, int64_t inner, const float *res,
                    struct cerr *e)
{
    const struct eng_attrs *a = &st->a;
    return cuda_launch_check(ck_epilogue(y, n, bias, channels, inner, res, (int)a->act,
                                         a->act_alpha, a->act_beta, P->c->stream),
                             st, e);
}

/* K == 0: the product is empty, Y is beta * C (or zeros). */
static int zero_product(struct cuda_plan *P, const struct plan_step *st, float *y, size_t bytes,
                        struct cerr *e)
{
    return cuda_check(cudaMemsetAsync(y, 0, bytes, P->c->stream), "cudaMemsetAsync", st, e);
}

int cuda_run_gemm(struct cuda_plan *P, const struct plan_step *st, struct cerr *e)
{
    const struct eng_attrs *a = &st->a;
    const struct plan_value *va = cuda_inv(P, st, 0), *vb = cuda_inv(P, st, 1);
    const struct plan_value *vc = cuda_inv(P, st, 2), *vy = cuda_outv(P, st, 0);
    float *y = cuda_out(P, st, 0);
    int64_t M = vy->dims[0], N = vy->dims[1], K = a->trans_a ? va->dims[0] : va->dims[1];
    float beta = 0.0f;
    int rc;
    if (M == 0 || N == 0)
        return CORRAL_OK;
    if (vc && a->beta != 0.0f) {
        int64_t cm = vc->ndim == 2 ? vc->dims[0] : 1;
        int64_t cn = vc->ndim >= 1 ? vc->dims[vc->ndim - 1] : 1;
        if ((rc = cuda_launch_check(ck_bias_fill(y, M, N, cuda_in(P, st, 2), cm, cn, a->beta,
                                                 P->c->stream),
                                    st, e)))
            return rc;
        beta = 1.0f;
    } else if (K == 0 && (rc = zero_product(P, st, y, vy->nbytes, e))) {
        return rc;
    }
    if (K > 0 &&
        (rc = sgemm_rm(P, st, a->trans_a, a->trans_b, M, N, K, a->alpha, cuda_in(P, st, 0),
                       va->dims[1], cuda_in(P, st, 1), vb->dims[1], beta, y, N, e)))
        return rc;
    return epilogue(P, st, y, M * N, NULL, 1, 1, NULL, e);
}

int cuda_run_matmul(struct cuda_plan *P, const struct plan_step *st, struct cerr *e)
{
    const struct plan_value *A = cuda_inv(P, st, 0), *B = cuda_inv(P, st, 1);
    const struct plan_value *vy = cuda_outv(P, st, 0);
    const float *pa = cuda_in(P, st, 0), *pb = cuda_in(P, st, 1), *bias = cuda_in(P, st, 2);
    float *py = cuda_out(P, st, 0);
    int64_t M = A->ndim == 1 ? 1 : A->dims[A->ndim - 2], K = A->dims[A->ndim - 1];
    int64_t N = B->ndim == 1 ? 1 : B->dims[B->ndim - 1];
    int abat = A->ndim > 2 ? A->ndim - 2 : 0, bbat = B->ndim > 2 ? B->ndim - 2 : 0;
    int obat = abat > bbat ? abat : bbat;
    int64_t ob[TENSOR_MAX_DIMS], as[TENSOR_MAX_DIMS], bs[TENSOR_MAX_DIMS], astr = 1, bstr = 1,
            nbatch = 1;
    float beta = 0.0f;
    int rc = CORRAL_OK;
    /* Batch dims broadcast like the reference kernel: element strides, 0 where size 1. */
    for (int i = obat - 1; i >= 0; i--) {
        int ai = i - (obat - abat), bi = i - (obat - bbat);
        int64_t ad = ai >= 0 ? A->dims[ai] : 1, bd = bi >= 0 ? B->dims[bi] : 1;
        ob[i] = ad == 1 ? bd : ad;
        as[i] = ad == 1 ? 0 : astr;
        bs[i] = bd == 1 ? 0 : bstr;
        astr *= ad;
        bstr *= bd;
        nbatch *= ob[i];
    }
    if (vy->nbytes == 0)
        return CORRAL_OK;
    if (bias) {
        if ((rc = cuda_launch_check(ck_bias_fill(py, nbatch * M, N, bias, 1, N, 1.0f,
                                                 P->c->stream),
                                    st, e)))
            return rc;
        beta = 1.0f;
    } else if (K == 0 && (rc = zero_product(P, st, py, vy->nbytes, e))) {
        return rc;
    }
    if (K == 0)
        return epilogue(P, st, py, nbatch * M * N, NULL, 1, 1, NULL, e);
    if (bbat == 0) {
        /* B is one matrix: all of A's batches stack into one taller product. */
        rc = sgemm_rm(P, st, 0, 0, nbatch * M, N, K, 1.0f, pa, K, pb, N, beta, py, N, e);
    } else if ((astr == nbatch || astr == 1) && (bstr == nbatch || bstr == 1)) {
        /* Each operand is either fully batched or one matrix for all batches. */
        long long sa = astr == 1 && nbatch > 1 ? 0 : M * K;
        long long sb = bstr == 1 && nbatch > 1 ? 0 : K * N;
        const float one = 1.0f;
        if (!fits_int(M) || !fits_int(N) || !fits_int(K) || !fits_int(nbatch))
            return too_big(st, e);
        rc = cuda_blas_check(cublasSgemmStridedBatched(P->c->blas, CUBLAS_OP_N, CUBLAS_OP_N,
                                                       (int)N, (int)M, (int)K, &one, pb, (int)N,
                                                       sb, pa, (int)K, sa, &beta, py, (int)N,
                                                       (long long)(M * N), (int)nbatch),
                             "cublasSgemmStridedBatched", st, e);
    } else {
        /* Mixed broadcasting ([2,1,..] x [1,3,..]): one product per output batch. */
        int64_t idx[TENSOR_MAX_DIMS] = {0};
        for (int64_t t = 0; t < nbatch && !rc; t++) {
            int64_t ao = 0, bo = 0;
            for (int i = 0; i < obat; i++) {
                ao += idx[i] * as[i];
                bo += idx[i] * bs[i];
            }
            rc = sgemm_rm(P, st, 0, 0, M, N, K, 1.0f, pa + ao * M * K, K, pb + bo * K * N, N,
                          beta, py + t * M * N, N, e);
            for (int i = obat - 1; i >= 0 && ++idx[i] == ob[i]; i--)
                idx[i] = 0;
        }
    }
    if (rc)
        return rc;
    return epilogue(P, st, py, nbatch * M * N, NULL, 1, 1, NULL, e);
}

/* ---- convolution ---- */

void cuda_conv_free(struct cuda_conv *cv)
{
    if (!cv)
        return;
#ifdef CORRAL_HAVE_CUDNN
    if (cv->xd)
        (void)cudnnDestroyTensorDescriptor(cv->xd);
    if (cv->yd)
        (void)cudnnDestroyTensorDescriptor(cv->yd);
    if (cv->wd)
        (void)cudnnDestroyFilterDescriptor(cv->wd);
    if (cv->cd)
        (void)cudnnDestroyConvolutionDescriptor(cv->cd);
#endif
    free(cv);
}

#ifdef CORRAL_HAVE_CUDNN
static int dnn_ok(cudnnStatus_t s)
{
    return s == CUDNN_STATUS_SUCCESS;
}

/*
 * Sets up cuDNN for this convolution. Returns 1 when cuDNN will run it, 0
 * when it declines (asymmetric padding, a shape or algorithm it does not
 * offer: the im2col path runs it then), or a negative corral code when
 * memory ran out.
 */
static int dnn_prepare(struct cuda_plan *P, const struct plan_step *st, struct cuda_conv *cv,
                       struct cerr *e)
{
    const struct plan_value *vx = cuda_inv(P, st, 0), *vw = cuda_inv(P, st, 1);
    const struct plan_value *vy = cuda_outv(P, st, 0);
    const struct eng_attrs *a = &st->a;
    int nsp = a->nsp, nd = nsp == 1 ? 4 : nsp + 2, ns = nd - 2;
    int xdim[5], ydim[5], wdim[5], xstr[5], ystr[5], pad[3], str[3], dil[3], got[5];
    for (int i = 0; i < nsp; i++)
        if (a->pads[i] != a->pads[nsp + i])
            return 0;
    /* 1-D convolutions run as 2-D ones with a height of 1. */
    for (int i = 0; i < nd; i++) {
        int src = nsp == 1 ? (i < 2 ? i : (i == 2 ? -1 : 2)) : i;
        int64_t xv = src < 0 ? 1 : vx->dims[src], yv = src < 0 ? 1 : vy->dims[src];
        int64_t wv = src < 0 ? 1 : vw->dims[src];
        if (!fits_int(xv) || !fits_int(yv) || !fits_int(wv))
            return 0;
        xdim[i] = (int)xv, ydim[i] = (int)yv, wdim[i] = (int)wv;
    }
    for (int i = 0; i < ns; i++) {
        int src = nsp == 1 ? i - 1 : i;
        pad[i] = src < 0 ? 0 : (int)a->pads[src];
        str[i] = src < 0 ? 1 : (int)a->strides[src];
        dil[i] = src < 0 ? 1 : (int)a->dilations[src];
    }
    xstr[nd - 1] = ystr[nd - 1] = 1;
    for (int i = nd - 2; i >= 0; i--) {
        xstr[i] = xstr[i + 1] * xdim[i + 1];
        ystr[i] = ystr[i + 1] * ydim[i + 1];
    }
    if (!dnn_ok(cudnnCreateTensorDescriptor(&cv->xd)) ||
        !dnn_ok(cudnnCreateTensorDescriptor(&cv->yd)) ||
        !dnn_ok(cudnnCreateFilterDescriptor(&cv->wd)) ||
        !dnn_ok(cudnnCreateConvolutionDescriptor(&cv->cd)))
        return cerr_set(e, CORRAL_ENOMEM, "%s: cannot create cuDNN descriptors", st->label);
    cudnnMathType_t math = P->c->tf32 ? CUDNN_DEFAULT_MATH : CUDNN_FMA_MATH;
    if (!dnn_ok(cudnnSetTensorNdDescriptor(cv->xd, CUDNN_DATA_FLOAT, nd, xdim, xstr)) ||
        !dnn_ok(cudnnSetTensorNdDescriptor(cv->yd, CUDNN_DATA_FLOAT, nd, ydim, ystr)) ||
        !dnn_ok(cudnnSetFilterNdDescriptor(cv->wd, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW, nd,
                                           wdim)) ||
        !dnn_ok(cudnnSetConvolutionNdDescriptor(cv->cd, ns, pad, str, dil,
                                                CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT)) ||
        !dnn_ok(cudnnSetConvolutionGroupCount(cv->cd, (int)cv->groups)) ||
        !dnn_ok(cudnnSetConvolutionMathType(cv->cd, math)) ||
        !dnn_ok(cudnnGetConvolutionNdForwardOutputDim(cv->cd, cv->xd, cv->wd, nd, got)))
        return 0;
    for (int i = 0; i < nd; i++)
        if (got[i] != ydim[i])
            return 0;
    cudnnConvolutionFwdAlgoPerf_t perf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
    int n = 0;
    if (!dnn_ok(cudnnGetConvolutionForwardAlgorithm_v7(P->c->dnn, cv->xd, cv->wd, cv->cd, cv->yd,
                                                       CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &n,
                                                       perf)))
        return 0;
    /* The heuristic's order is its speed estimate; TF32 results are skipped unless enabled. */
    for (int i = 0; i < n; i++) {
        if (perf[i].status != CUDNN_STATUS_SUCCESS || perf[i].memory > CONV_WS_LIMIT)
            continue;
        if (!P->c->tf32 && perf[i].mathType != CUDNN_FMA_MATH &&
            perf[i].mathType != CUDNN_DEFAULT_MATH)
            continue;
        size_t ws = 0;
        if (!dnn_ok(cudnnGetConvolutionForwardWorkspaceSize(P->c->dnn, cv->xd, cv->wd, cv->cd,
                                                            cv->yd, perf[i].algo, &ws)))
            continue;
        cv->algo = perf[i].algo;
        cv->ws = ws;
        return 1;
    }
    return 0;
}
#endif

int cuda_conv_prepare(struct cuda_plan *P, int s, struct cerr *e)
{
    const struct plan_step *st = &P->g->steps[s];
    const struct eng_attrs *a = &st->a;
    const struct plan_value *vx = cuda_inv(P, st, 0), *vw = cuda_inv(P, st, 1);
    const struct plan_value *vy = cuda_outv(P, st, 0);
    struct cuda_conv *cv = calloc(1, sizeof *cv);
    int nsp = a->nsp, direct = 1;
    if (!cv)
        return cerr_set(e, CORRAL_ENOMEM, "out of memory compiling a plan");
    P->steps[s].conv = cv;
    if (nsp < 1 || nsp > 3 || vx->ndim != nsp + 2)
        return cerr_set(e, CORRAL_EUNSUPP, "%s: the CUDA backend runs 1-D to 3-D convolutions",
                        st->label);
    cv->n = vx->dims[0];
    cv->c = vx->dims[1];
    cv->m = vy->dims[1];
    cv->groups = a->group;
    cv->cg = cv->c / cv->groups;
    cv->mg = cv->m / cv->groups;
    cv->ksz = 1;
    cv->isp = cv->osp = 1;
    for (int i = 0; i < 3; i++) {
        int on = i < nsp;
        struct ck_window *w = &cv->win;
        w->in[i] = on ? vx->dims[2 + i] : 1;
        w->out[i] = on ? vy->dims[2 + i] : 1;
        w->k[i] = on ? vw->dims[2 + i] : 1;
        w->s[i] = on ? a->strides[i] : 1;
        w->d[i] = on ? a->dilations[i] : 1;
        w->pb[i] = on ? a->pads[i] : 0;
        w->pe[i] = on ? a->pads[nsp + i] : 0;
        cv->ksz *= w->k[i];
        cv->isp *= w->in[i];
        cv->osp *= w->out[i];
        if (w->k[i] != 1 || w->s[i] != 1 || w->pb[i] || w->pe[i])
            direct = 0;
    }
    cv->direct = direct;
#ifdef CORRAL_HAVE_CUDNN
    if (P->c->have_dnn) {
        int r = dnn_prepare(P, st, cv, e);
        if (r < 0)
            return r;
        cv->use_dnn = r;
        if (!r)
            LOG_DEBUG("%s: cuDNN declined; using im2col + cuBLAS", st->label);
    }
#endif
    if (!cv->use_dnn && !direct)
        cv->ws = (size_t)(cv->cg * cv->ksz * cv->osp) * sizeof(float);
    return CORRAL_OK;
}

static int conv_im2col(struct cuda_plan *P, const struct plan_step *st, struct cuda_conv *cv,
                       const float *x, const float *w, float *y, struct cerr *e)
{
    int64_t kdim = cv->cg * cv->ksz;
    int rc = CORRAL_OK;
    if (cv->direct && cv->groups == 1 && cv->n > 1) {
        /* 1x1 convolutions of a whole batch: one strided batched product. */
        const float one = 1.0f, zero = 0.0f;
        if (!fits_int(cv->osp) || !fits_int(cv->m) || !fits_int(kdim) || !fits_int(cv->n))
            return too_big(st, e);
        return cuda_blas_check(cublasSgemmStridedBatched(P->c->blas, CUBLAS_OP_N, CUBLAS_OP_N,
                                                         (int)cv->osp, (int)cv->m, (int)kdim,
                                                         &one, x, (int)cv->osp,
                                                         (long long)(cv->c * cv->isp), w,
                                                         (int)kdim, 0, &zero, y, (int)cv->osp,
                                                         (long long)(cv->m * cv->osp),
                                                         (int)cv->n),
                               "cublasSgemmStridedBatched", st, e);
    }
    for (int64_t n = 0; n < cv->n && !rc; n++)
        for (int64_t g = 0; g < cv->groups && !rc; g++) {
            const float *xg = x + (n * cv->c + g * cv->cg) * cv->isp;
            const float *col = xg;
            if (!cv->direct) {
                if ((rc = cuda_launch_check(ck_im2col(xg, P->c->ws, cv->cg, &cv->win,
                                                      P->c->stream),
                                            st, e)))
                    break;
                col = P->c->ws;
            }
            /* Y_g[mg, osp] = W_g[mg, kdim] * col[kdim, osp] */
            rc = sgemm_rm(P, st, 0, 0, cv->mg, cv->osp, kdim, 1.0f, w + g * cv->mg * kdim, kdim,
                          col, cv->osp, 0.0f, y + (n * cv->m + g * cv->mg) * cv->osp, cv->osp,
                          e);
        }
    return rc;
}

int cuda_run_conv(struct cuda_plan *P, int s, struct cerr *e)
{
    const struct plan_step *st = &P->g->steps[s];
    struct cuda_conv *cv = P->steps[s].conv;
    const struct plan_value *vy = cuda_outv(P, st, 0);
    const float *x = cuda_in(P, st, 0), *w = cuda_in(P, st, 1), *bias = cuda_in(P, st, 2);
    const float *res = st->a.sum_input >= 0 ? cuda_in(P, st, st->a.sum_input) : NULL;
    float *y = cuda_out(P, st, 0);
    int rc = CORRAL_OK;
    if (vy->nbytes == 0)
        return CORRAL_OK;
    if (cv->cg * cv->ksz == 0) {
        rc = cuda_check(cudaMemsetAsync(y, 0, vy->nbytes, P->c->stream), "cudaMemsetAsync", st,
                        e);
    } else if (cv->use_dnn) {
#ifdef CORRAL_HAVE_CUDNN
        const float one = 1.0f, zero = 0.0f;
        cudnnStatus_t r = cudnnConvolutionForward(P->c->dnn, &one, cv->xd, x, cv->wd, w, cv->cd,
                                                  cv->algo, P->c->ws, cv->ws, &zero, cv->yd, y);
        if (r != CUDNN_STATUS_SUCCESS)
            rc = cerr_set(e, r == CUDNN_STATUS_ALLOC_FAILED ? CORRAL_ENOMEM : CORRAL_EINTERNAL,
                          "%s: cudnnConvolutionForward failed: %s", st->label,
                          cudnnGetErrorString(r));
#endif
    } else {
        rc = conv_im2col(P, st, cv, x, w, y, e);
    }
    if (rc)
        return rc;
    return epilogue(P, st, y, cv->n * cv->m * cv->osp, bias, cv->m, cv->osp, res, e);
}
