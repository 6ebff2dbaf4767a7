/*
 * Internals of the CUDA backend (backend_cuda.c: context, weights, plan
 * memory, compiler and executor; backend_cuda_step.c: how each step runs,
 * the elementwise/shape/reduction dispatch; backend_cuda_conv.c: Gemm and
 * MatMul on cuBLAS, convolution on cuDNN or im2col + cuBLAS;
 * backend_cuda_err.c: error mapping; backend_cuda_kern*.cu: the device
 * kernels). Not a public header: the engine reaches this backend only
 * through backend_create().
 *
 * Memory of a compiled plan: one device block holds the engine's dense arena
 * (every PV_TEMP at its planned offset), a staging copy of each model input,
 * the plan-local constants and a small status area; weights live in the
 * context, uploaded once by weight_upload. One pinned host block holds the
 * input and output staging copies and the buffers of steps that run on the
 * host. All device addresses are fixed at compile time, so a run allocates
 * nothing. A shared workspace (cuDNN, im2col) belongs to the context and
 * only grows while a plan is compiled.
 *
 * Threads: every entry point takes the context's mutex, so one run (or one
 * compile) uses the stream, the cuBLAS and cuDNN handles and the workspace
 * at a time, and sets the context's device on the calling thread first.
 */
#ifndef CORRAL_BACKEND_CUDA_H
#define CORRAL_BACKEND_CUDA_H

#include <pthread.h>

#include <cublas_v2.h>
#include <cuda_runtime.h>
#ifdef CORRAL_HAVE_CUDNN
#include <cudnn.h>
#endif

#include "backend.h"
#include "backend_cuda_kern.h"
#include "engine_internal.h"

struct cuda_weight {
    void *dptr;
    size_t bytes;
};

struct cuda_ctx {
    int dev;
    int tf32;                 /* CORRAL_CUDA_TF32=1: TF32 tensor cores for GEMM and conv */
    cudaStream_t stream;
    cublasHandle_t blas;
#ifdef CORRAL_HAVE_CUDNN
    cudnnHandle_t dnn;
#endif
    int have_dnn;
    struct cuda_weight *w;    /* by weight_id */
    size_t n_w;
    void *ws;                 /* shared workspace */
    size_t ws_bytes;
    pthread_mutex_t lock;
};

/* How one step runs. */
enum cuda_step_kind {
    CS_GPU,  /* a kernel, cuBLAS or cuDNN call */
    CS_HOST, /* the engine's reference kernel on host copies (ops without a device kernel) */
};

struct cuda_conv {
    int use_dnn;
    int direct;               /* 1x1, stride 1, no padding: the input is the im2col matrix */
#ifdef CORRAL_HAVE_CUDNN
    cudnnTensorDescriptor_t xd, yd;
    cudnnFilterDescriptor_t wd;
    cudnnConvolutionDescriptor_t cd;
    cudnnConvolutionFwdAlgo_t algo;
#endif
    struct ck_window win;
    int64_t n, c, m, groups, cg, mg, ksz, isp, osp;
    size_t ws;                /* workspace bytes this step needs */
};

struct cuda_step {
    enum cuda_step_kind kind;
    struct cuda_conv *conv;   /* Conv steps */
    /* CS_HOST: tensors handed to the reference kernel and their pinned staging offsets
     * (SIZE_MAX where the data is used in place: constants and model inputs). */
    struct tensor *tin, *tout;
    size_t *hin, *hout;
};

struct cuda_plan {
    struct cuda_ctx *c;
    const struct plan_graph *g;
    void **vptr;              /* device address of every value */
    char *dmem;               /* the plan's device block */
    size_t dbytes;
    void *dzero;              /* 8 zero bytes on the device */
    int *derr;                /* Gather's out-of-range flag: step index + 1 */
    char *hmem;               /* pinned host block */
    size_t hbytes;
    size_t *in_hoff, *out_hoff;
    int *herr;                /* pinned copy of *derr */
    struct cuda_step *steps;
    size_t ws_need;
};

/* Error mapping at the CUDA boundary (backend_cuda_err.c); `st` (may be NULL) names
 * the step. */
int cuda_check(cudaError_t r, const char *what, const struct plan_step *st, struct cerr *e);
int cuda_blas_check(cublasStatus_t s, const char *what, const struct plan_step *st,
                    struct cerr *e);
/* Maps the int status of a ck_* launcher. */
int cuda_launch_check(int r, const struct plan_step *st, struct cerr *e);

/* Device address of step input/output k; NULL for an omitted one. */
static inline void *cuda_in(const struct cuda_plan *P, const struct plan_step *st, int k)
{
    return k < st->n_in && st->in[k] >= 0 ? P->vptr[st->in[k]] : NULL;
}

static inline void *cuda_out(const struct cuda_plan *P, const struct plan_step *st, int k)
{
    return k < st->n_out && st->out[k] >= 0 ? P->vptr[st->out[k]] : NULL;
}

static inline const struct plan_value *cuda_inv(const struct cuda_plan *P,
                                                const struct plan_step *st, int k)
{
    return k < st->n_in && st->in[k] >= 0 ? &P->g->vals[st->in[k]] : NULL;
}

static inline const struct plan_value *cuda_outv(const struct cuda_plan *P,
                                                 const struct plan_step *st, int k)
{
    return k < st->n_out && st->out[k] >= 0 ? &P->g->vals[st->out[k]] : NULL;
}

/* backend_cuda_step.c */
/* Non-zero when step st runs on the device (CS_GPU); otherwise on host copies (CS_HOST). */
int cuda_gpu_runs(const struct cuda_plan *P, const struct plan_step *st);
/* Enqueues device step s on the context's stream. */
int cuda_run_gpu_step(struct cuda_plan *P, int s, struct cerr *e);
/* Runs host step s: its inputs come back from the device, its outputs go up again. `in`
 * holds the plan's host inputs, which the step reads in place. */
int cuda_run_host_step(struct cuda_plan *P, int s, const struct tensor *in, struct cerr *e);

/* backend_cuda_conv.c */
int cuda_conv_prepare(struct cuda_plan *P, int s, struct cerr *e);
void cuda_conv_free(struct cuda_conv *cv);
int cuda_run_conv(struct cuda_plan *P, int s, struct cerr *e);
int cuda_run_gemm(struct cuda_plan *P, const struct plan_step *st, struct cerr *e);
int cuda_run_matmul(struct cuda_plan *P, const struct plan_step *st, struct cerr *e);

#endif
