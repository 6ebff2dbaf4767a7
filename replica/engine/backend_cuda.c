#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend_cuda.h"
#include "log.h"

/*
 * The CUDA backend: one stream, one cuBLAS handle and (when cuDNN was found
 * at build time) one cuDNN handle per backend; weights uploaded once; each
 * plan compiled into fixed device and pinned host blocks; every step a
 * kernel launch, a cuBLAS or a cuDNN call enqueued on the stream. Ops that
 * have no device kernel here (the shape arithmetic that plans normally fold
 * away: Shape, Size, Range, ConstantOfShape) run the engine's reference
 * kernel on host copies, so any model the CPU backend accepts also runs
 * here. See backend_cuda.h for the memory layout.
 */

#define DALIGN 256
#define HALIGN 64

static size_t align_up(size_t n, size_t a)
{
    return (n + a - 1) & ~(a - 1);
}

/* ---- backend ops ---- */

static int set_dev(struct cuda_ctx *c, struct cerr *e)
{
    return cuda_check(cudaSetDevice(c->dev), "cudaSetDevice", NULL, e);
}

static void cuda_plan_free(struct backend *b, void *compiled)
{
    struct cuda_ctx *c = b->ctx;
    struct cuda_plan *P = compiled;
    if (!P)
        return;
    pthread_mutex_lock(&c->lock);
    (void)cudaSetDevice(c->dev);
    if (P->steps) {
        for (int s = 0; s < P->g->n_steps; s++) {
            struct cuda_step *cs = &P->steps[s];
            cuda_conv_free(cs->conv);
            free(cs->tin);
            free(cs->tout);
            free(cs->hin);
            free(cs->hout);
        }
    }
    if (P->dmem)
        (void)cudaFree(P->dmem);
    if (P->hmem)
        (void)cudaFreeHost(P->hmem);
    pthread_mutex_unlock(&c->lock);
    free(P->steps);
    free(P->vptr);
    free(P->in_hoff);
    free(P->out_hoff);
    free(P);
}

/* Host-fallback bookkeeping for step s; pinned offsets counted from *hb. */
static int prepare_host_step(struct cuda_plan *P, int s, size_t *hb, struct cerr *e)
{
    const struct plan_step *st = &P->g->steps[s];
    struct cuda_step *cs = &P->steps[s];
    cs->kind = CS_HOST;
    cs->tin = calloc((size_t)st->n_in + 1, sizeof *cs->tin);
    cs->tout = calloc((size_t)st->n_out + 1, sizeof *cs->tout);
    cs->hin = calloc((size_t)st->n_in + 1, sizeof *cs->hin);
    cs->hout = calloc((size_t)st->n_out + 1, sizeof *cs->hout);
    if (!cs->tin || !cs->tout || !cs->hin || !cs->hout)
        return cerr_set(e, CORRAL_ENOMEM, "out of memory compiling a plan");
    for (int k = 0; k < st->n_in; k++) {
        const struct plan_value *v = cuda_inv(P, st, k);
        cs->hin[k] = SIZE_MAX;
        if (!v)
            continue; /* dtype DT_INVALID (calloc) marks it omitted */
        cs->tin[k] = (struct tensor){.name = v->name, .dtype = v->dtype, .ndim = v->ndim,
                                     .nbytes = v->nbytes};
        memcpy(cs->tin[k].dims, v->dims, sizeof v->dims);
        if (v->kind == PV_TEMP) {
            cs->hin[k] = *hb;
            *hb += align_up(v->nbytes, HALIGN);
        }
    }
    for (int k = 0; k < st->n_out; k++) {
        const struct plan_value *v = cuda_outv(P, st, k);
        cs->hout[k] = SIZE_MAX;
        if (!v)
            continue;
        cs->tout[k] = (struct tensor){.name = v->name, .dtype = v->dtype, .ndim = v->ndim,
                                      .nbytes = v->nbytes};
        memcpy(cs->tout[k].dims, v->dims, sizeof v->dims);
        cs->hout[k] = *hb;
        *hb += align_up(v->nbytes, HALIGN);
    }
    return CORRAL_OK;
}

static int grow_workspace(struct cuda_ctx *c, size_t need, struct cerr *e)
{
    if (need <= c->ws_bytes)
        return CORRAL_OK;
    if (c->ws)
        (void)cudaFree(c->ws);
    c->ws = NULL;
    c->ws_bytes = 0;
    int rc = cuda_check(cudaMalloc(&c->ws, need), "cudaMalloc (workspace)", NULL, e);
    if (rc) {
        c->ws = NULL;
        return rc;
    }
    c->ws_bytes = need;
    return CORRAL_OK;
}

static int compile_locked(struct cuda_ctx *c, struct cuda_plan *P, size_t *arena_bytes,
                          struct cerr *e)
{
    const struct plan_graph *g = P->g;
    size_t db = align_up(g->arena_bytes, DALIGN), hb = 0;
    size_t *doff = calloc((size_t)g->n_vals + 1, sizeof *doff);
    int rc = CORRAL_OK;
    if (!doff)
        return cerr_set(e, CORRAL_ENOMEM, "out of memory compiling a plan");
    /* Device layout: the arena, then input staging and plan-local constants, then status. */
    for (int v = 0; v < g->n_vals; v++) {
        const struct plan_value *pv = &g->vals[v];
        doff[v] = SIZE_MAX;
        if (pv->kind == PV_TEMP) {
            doff[v] = pv->offset;
        } else if (pv->kind == PV_INPUT ||
                   (pv->kind == PV_CONST &&
                    !(pv->weight_id >= 0 && (size_t)pv->weight_id < c->n_w &&
                      c->w[pv->weight_id].dptr && c->w[pv->weight_id].bytes == pv->nbytes))) {
            doff[v] = db;
            db += align_up(pv->nbytes ? pv->nbytes : 1, DALIGN);
        }
    }
    size_t status_off = db;
    db += DALIGN;
    for (int k = 0; k < g->n_inputs; k++) {
        P->in_hoff[k] = hb;
        hb += align_up(g->vals[g->inputs[k]].nbytes, HALIGN);
    }
    for (int k = 0; k < g->n_outputs; k++) {
        P->out_hoff[k] = hb;
        hb += align_up(g->vals[g->outputs[k]].nbytes, HALIGN);
    }
    size_t herr_off = hb;
    hb += HALIGN;
    if ((rc = cuda_check(cudaMalloc((void **)&P->dmem, db), "cudaMalloc (plan memory)", NULL,
                         e))) {
        P->dmem = NULL;
        cerr_prefix(e, "cannot allocate %zu bytes of device memory for a plan", db);
        goto done;
    }
    P->dbytes = db;
    P->dzero = P->dmem + status_off;
    P->derr = (int *)(P->dmem + status_off + 64);
    if ((rc = cuda_check(cudaMemset(P->dmem + status_off, 0, DALIGN), "cudaMemset", NULL, e)))
        goto done;
    for (int v = 0; v < g->n_vals; v++) {
        const struct plan_value *pv = &g->vals[v];
        if (doff[v] != SIZE_MAX)
            P->vptr[v] = P->dmem + doff[v];
        else if (pv->kind == PV_CONST)
            P->vptr[v] = c->w[pv->weight_id].dptr;
        if (pv->kind == PV_CONST && doff[v] != SIZE_MAX && pv->nbytes &&
            (rc = cuda_check(cudaMemcpy(P->vptr[v], pv->data, pv->nbytes,
                                        cudaMemcpyHostToDevice),
                             "upload of a plan constant", NULL, e)))
            goto done;
    }
    for (int s = 0; s < g->n_steps && !rc; s++) {
        const struct plan_step *st = &g->steps[s];
        if (cuda_gpu_runs(P, st)) {
            P->steps[s].kind = CS_GPU;
            if (st->op == EOP_CONV && (rc = cuda_conv_prepare(P, s, e)))
                goto done;
            if (P->steps[s].conv && P->steps[s].conv->ws > P->ws_need)
                P->ws_need = P->steps[s].conv->ws;
        } else if (eng_opdef(st->op) && eng_opdef(st->op)->kernel) {
            rc = prepare_host_step(P, s, &hb, e);
        } else {
            rc = cerr_set(e, CORRAL_EUNSUPP, "%s: the CUDA backend cannot run %s with these "
                          "datatypes", st->label, eng_op_name(st->op));
        }
    }
    if (rc)
        goto done;
    if ((rc = cuda_check(cudaHostAlloc((void **)&P->hmem, hb, cudaHostAllocDefault),
                         "cudaHostAlloc (pinned staging)", NULL, e))) {
        P->hmem = NULL;
        goto done;
    }
    P->hbytes = hb;
    P->herr = (int *)(P->hmem + herr_off);
    if ((rc = grow_workspace(c, P->ws_need, e)))
        goto done;
    *arena_bytes = P->dbytes + P->ws_need;
done:
    free(doff);
    return rc;
}

static int cuda_compile(struct backend *b, const struct plan_graph *g, void **compiled,
                        size_t *arena_bytes, struct cerr *e)
{
    struct cuda_ctx *c = b->ctx;
    struct cuda_plan *P = calloc(1, sizeof *P);
    int rc;
    *compiled = NULL;
    if (!P)
        return cerr_set(e, CORRAL_ENOMEM, "out of memory compiling a plan");
    P->c = c;
    P->g = g;
    P->vptr = calloc((size_t)g->n_vals + 1, sizeof *P->vptr);
    P->steps = calloc((size_t)g->n_steps + 1, sizeof *P->steps);
    P->in_hoff = calloc((size_t)g->n_inputs + 1, sizeof *P->in_hoff);
    P->out_hoff = calloc((size_t)g->n_outputs + 1, sizeof *P->out_hoff);
    if (!P->vptr || !P->steps || !P->in_hoff || !P->out_hoff) {
        rc = cerr_set(e, CORRAL_ENOMEM, "out of memory compiling a plan");
        goto fail;
    }
    pthread_mutex_lock(&c->lock);
    rc = set_dev(c, e);
    if (!rc)
        rc = compile_locked(c, P, arena_bytes, e);
    pthread_mutex_unlock(&c->lock);
    if (rc)
        goto fail;
    *compiled = P;
    return CORRAL_OK;
fail:
    cuda_plan_free(b, P);
    return rc;
}

static int execute_locked(struct cuda_ctx *c, struct cuda_plan *P, const struct tensor *in,
                          struct tensor *out, struct cerr *e)
{
    const struct plan_graph *g = P->g;
    cudaStream_t stream = c->stream;
    int rc;
    if ((rc = set_dev(c, e)) ||
        (rc = cuda_check(cudaMemsetAsync(P->derr, 0, sizeof *P->derr, stream), "cudaMemsetAsync",
                         NULL, e)))
        return rc;
    for (int k = 0; k < g->n_inputs; k++) {
        const struct plan_value *v = &g->vals[g->inputs[k]];
        if (!v->nbytes)
            continue;
        memcpy(P->hmem + P->in_hoff[k], in[k].data, v->nbytes);
        if ((rc = cuda_check(cudaMemcpyAsync(P->vptr[g->inputs[k]], P->hmem + P->in_hoff[k],
                                             v->nbytes, cudaMemcpyHostToDevice, stream),
                             "input copy to the device", NULL, e)))
            return rc;
    }
    for (int s = 0; s < g->n_steps; s++) {
        rc = P->steps[s].kind == CS_HOST ? cuda_run_host_step(P, s, in, e)
                                         : cuda_run_gpu_step(P, s, e);
        if (rc)
            return rc;
    }
    for (int k = 0; k < g->n_outputs; k++) {
        const struct plan_value *v = &g->vals[g->outputs[k]];
        if (v->nbytes &&
            (rc = cuda_check(cudaMemcpyAsync(P->hmem + P->out_hoff[k], P->vptr[g->outputs[k]],
                                             v->nbytes, cudaMemcpyDeviceToHost, stream),
                             "output copy to the host", NULL, e)))
            return rc;
    }
    if ((rc = cuda_check(cudaMemcpyAsync(P->herr, P->derr, sizeof *P->herr,
                                         cudaMemcpyDeviceToHost, stream),
                         "status copy", NULL, e)) ||
        (rc = cuda_check(cudaStreamSynchronize(stream), "stream synchronize", NULL, e)))
        return rc;
    if (*P->herr > 0 && *P->herr <= g->n_steps)
        return cerr_set(e, CORRAL_EINVAL, "%s: an index is out of range for the gathered axis",
                        g->steps[*P->herr - 1].label);
    for (int k = 0; k < g->n_outputs; k++) {
        const struct plan_value *v = &g->vals[g->outputs[k]];
        if (v->nbytes)
            memcpy(out[k].data, P->hmem + P->out_hoff[k], v->nbytes);
    }
    return CORRAL_OK;
}

static int cuda_execute(struct backend *b, void *compiled, const struct tensor *in,
                        struct tensor *out, struct cerr *e)
{
    struct cuda_ctx *c = b->ctx;
    pthread_mutex_lock(&c->lock);
    int rc = execute_locked(c, compiled, in, out, e);
    if (rc) {
        /* Leaves the stream idle so the next run starts clean; its own error is secondary. */
        (void)cudaStreamSynchronize(c->stream);
        (void)cudaGetLastError();
    }
    pthread_mutex_unlock(&c->lock);
    return rc;
}

static int cuda_sync(struct backend *b, struct cerr *e)
{
    struct cuda_ctx *c = b->ctx;
    pthread_mutex_lock(&c->lock);
    int rc = set_dev(c, e);
    if (!rc)
        rc = cuda_check(cudaStreamSynchronize(c->stream), "stream synchronize", NULL, e);
    pthread_mutex_unlock(&c->lock);
    return rc;
}

static int cuda_supports(struct backend *b, enum eng_op op, const struct eng_attrs *a,
                         const enum dtype *in_dtypes, int n_in)
{
    switch (op) {
    /* Convolution and pooling have no reference kernel: only the device kernels here. */
    case EOP_CONV:
    case EOP_MAXPOOL:
    case EOP_AVGPOOL:
    case EOP_GLOBALAVGPOOL:
    case EOP_GLOBALMAXPOOL:
        for (int k = 0; k < n_in; k++)
            if (in_dtypes[k] != DT_FP32 && in_dtypes[k] != DT_INVALID)
                return 0;
        return 1;
    case EOP_CONV_TRANSPOSE: return 0;
    default: {
        /* Everything else has a device kernel or runs its reference kernel on the host. */
        const struct eng_opdef *d = eng_opdef(op);
        return op == EOP_CONSTANT || (d && d->kernel);
    }
    }
}

static int cuda_buffer_alloc(struct backend *b, size_t bytes, struct backend_buffer *out,
                             struct cerr *e)
{
    struct cuda_ctx *c = b->ctx;
    int rc;
    out->ptr = NULL;
    out->bytes = bytes;
    out->priv = NULL;
    pthread_mutex_lock(&c->lock);
    rc = set_dev(c, e);
    if (!rc && bytes)
        rc = cuda_check(cudaMalloc(&out->ptr, bytes), "cudaMalloc", NULL, e);
    pthread_mutex_unlock(&c->lock);
    if (rc)
        out->ptr = NULL;
    return rc;
}

static void cuda_buffer_free(struct backend *b, struct backend_buffer *buf)
{
    struct cuda_ctx *c = b->ctx;
    if (!buf->ptr)
        return;
    pthread_mutex_lock(&c->lock);
    (void)cudaSetDevice(c->dev);
    (void)cudaFree(buf->ptr);
    pthread_mutex_unlock(&c->lock);
    buf->ptr = NULL;
}

static int weight_upload_locked(struct cuda_ctx *c, int weight_id, const struct tensor *host,
                                struct cerr *e)
{
    int rc;
    if ((size_t)weight_id >= c->n_w) {
        size_t n = (size_t)weight_id + 64;
        struct cuda_weight *w = realloc(c->w, n * sizeof *w);
        if (!w)
            return cerr_set(e, CORRAL_ENOMEM, "out of memory");
        memset(w + c->n_w, 0, (n - c->n_w) * sizeof *w);
        c->w = w;
        c->n_w = n;
    }
    struct cuda_weight *w = &c->w[weight_id];
    if (w->dptr)
        (void)cudaFree(w->dptr);
    w->dptr = NULL;
    w->bytes = 0;
    if (!host->nbytes)
        return CORRAL_OK;
    if ((rc = set_dev(c, e)) ||
        (rc = cuda_check(cudaMalloc(&w->dptr, host->nbytes), "cudaMalloc", NULL, e))) {
        w->dptr = NULL;
        return cerr_prefix(e, "cannot upload weight '%s' (%zu bytes)",
                           host->name ? host->name : "?", host->nbytes);
    }
    if ((rc = cuda_check(cudaMemcpy(w->dptr, host->data, host->nbytes, cudaMemcpyHostToDevice),
                         "cudaMemcpy", NULL, e))) {
        (void)cudaFree(w->dptr);
        w->dptr = NULL;
        return cerr_prefix(e, "cannot upload weight '%s'", host->name ? host->name : "?");
    }
    w->bytes = host->nbytes;
    return CORRAL_OK;
}

static int cuda_weight_upload(struct backend *b, int weight_id, const struct tensor *host,
                              struct cerr *e)
{
    struct cuda_ctx *c = b->ctx;
    if (weight_id < 0)
        return cerr_set(e, CORRAL_EINVAL, "negative weight id");
    pthread_mutex_lock(&c->lock);
    int rc = weight_upload_locked(c, weight_id, host, e);
    pthread_mutex_unlock(&c->lock);
    return rc;
}

static void cuda_destroy(struct backend *b)
{
    struct cuda_ctx *c = b->ctx;
    if (!c)
        return;
    (void)cudaSetDevice(c->dev);
    for (size_t i = 0; i < c->n_w; i++)
        if (c->w[i].dptr)
            (void)cudaFree(c->w[i].dptr);
    free(c->w);
    if (c->ws)
        (void)cudaFree(c->ws);
#ifdef CORRAL_HAVE_CUDNN
    if (c->dnn)
        (void)cudnnDestroy(c->dnn);
#endif
    if (c->blas)
        (void)cublasDestroy(c->blas);
    if (c->stream)
        (void)cudaStreamDestroy(c->stream);
    pthread_mutex_destroy(&c->lock);
    free(c);
    b->ctx = NULL;
}

static const struct backend_ops cuda_ops = {
    .name = "cuda",
    .destroy = cuda_destroy,
    .supports_op = cuda_supports,
    .buffer_alloc = cuda_buffer_alloc,
    .buffer_free = cuda_buffer_free,
    .weight_upload = cuda_weight_upload,
    .plan_compile = cuda_compile,
    .plan_execute = cuda_execute,
    .plan_free = cuda_plan_free,
    .synchronize = cuda_sync,
};

/* Finds the device; a missing driver or device is the common case on CPU-only hosts. */
static int open_device(int device, struct cerr *e)
{
    int count = 0;
    cudaError_t r = cudaGetDeviceCount(&count);
    if (r != cudaSuccess) {
        (void)cudaGetLastError();
        return cerr_set(e, CORRAL_EUNAVAIL, "device cuda:%d is not available: no CUDA device "
                        "(%s)", device, cudaGetErrorString(r));
    }
    if (device >= count)
        return cerr_set(e, CORRAL_EUNAVAIL, "device cuda:%d is not available: this machine has "
                        "%d CUDA device%s", device, count, count == 1 ? "" : "s");
    r = cudaSetDevice(device);
    if (r != cudaSuccess) {
        (void)cudaGetLastError();
        return cerr_set(e, CORRAL_EUNAVAIL, "device cuda:%d is not available: %s", device,
                        cudaGetErrorString(r));
    }
    return CORRAL_OK;
}

int backend_cuda_create(int device, struct backend *out, struct cerr *e)
{
    struct cuda_ctx *c = NULL;
    int rc;
    memset(out, 0, sizeof *out);
    if (device < 0)
        return cerr_set(e, CORRAL_EINVAL, "CUDA device ordinal %d is negative", device);
    if ((rc = open_device(device, e)))
        return rc;
    c = calloc(1, sizeof *c);
    if (!c)
        return cerr_set(e, CORRAL_ENOMEM, "out of memory");
    if (pthread_mutex_init(&c->lock, NULL) != 0) {
        free(c);
        return cerr_set(e, CORRAL_ENOMEM, "cannot create a mutex");
    }
    c->dev = device;
    const char *tf = getenv("CORRAL_CUDA_TF32");
    c->tf32 = tf && strcmp(tf, "1") == 0;
    out->ops = &cuda_ops;
    out->ctx = c;
    if ((rc = cuda_check(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking),
                         "cudaStreamCreate", NULL, e))) {
        c->stream = NULL;
        goto fail;
    }
    if ((rc = cuda_blas_check(cublasCreate(&c->blas), "cublasCreate", NULL, e))) {
        c->blas = NULL;
        goto fail;
    }
    /* FP32 GEMMs stay in FP32 unless TF32 was asked for: parity with the CPU comes first. */
    if ((rc = cuda_blas_check(cublasSetStream(c->blas, c->stream), "cublasSetStream", NULL, e)) ||
        (rc = cuda_blas_check(cublasSetMathMode(c->blas, c->tf32 ? CUBLAS_TF32_TENSOR_OP_MATH
                                                                 : CUBLAS_DEFAULT_MATH),
                              "cublasSetMathMode", NULL, e)))
        goto fail;
#ifdef CORRAL_HAVE_CUDNN
    /* Without a usable cuDNN, convolutions take the im2col + cuBLAS path. */
    if (cudnnCreate(&c->dnn) == CUDNN_STATUS_SUCCESS) {
        if (cudnnSetStream(c->dnn, c->stream) == CUDNN_STATUS_SUCCESS)
            c->have_dnn = 1;
    } else {
        c->dnn = NULL;
    }
    if (!c->have_dnn)
        LOG_WARN("cuDNN could not be initialised on cuda:%d; convolutions use im2col + cuBLAS",
                 device);
#endif
    {
        struct cudaDeviceProp prop;
        if (cudaGetDeviceProperties(&prop, device) == cudaSuccess)
            LOG_INFO("CUDA backend on cuda:%d (%s, compute capability %d.%d)%s%s", device,
                     prop.name, prop.major, prop.minor, c->have_dnn ? ", cuDNN" : "",
                     c->tf32 ? ", TF32 enabled" : "");
    }
    return CORRAL_OK;
fail:
    cuda_destroy(out);
    out->ops = NULL;
    return rc;
}
