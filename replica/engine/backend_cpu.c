#define _GNU_SOURCE
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifdef CORRAL_ENGINE_OMP
#include <omp.h>
#endif

#include "backend_cpu.h"
#include "engine_mem.h"

/*
 * The CPU backend. Convolutions and pooling run as oneDNN primitives that
 * pick blocked layouts, and those layouts flow from one primitive to the next;
 * other ops run the engine's reference kernels on plain data, with a reorder
 * where a blocked value meets a plain consumer. See backend_cpu.h.
 */

/* A step the reference kernels run: plain inputs, plain outputs. */
static int compile_kernel(struct cpu_plan *P, int s, struct cerr *e)
{
    const struct plan_step *st = &P->g->steps[s];
    int rc;
    struct tensor *tin = calloc((size_t)st->n_in + 1, sizeof *tin);
    struct tensor *tout = calloc((size_t)st->n_out + 1, sizeof *tout);
    void ***is = calloc((size_t)st->n_in + 1, sizeof *is);
    void ***os = calloc((size_t)st->n_out + 1, sizeof *os);
    if (!tin || !tout || !is || !os) {
        rc = cerr_set(e, CORRAL_ENOMEM, "out of memory compiling a plan");
        goto fail;
    }
    /* Inputs first: making a plain shadow appends its reorder before this kernel. */
    for (int k = 0; k < st->n_in; k++) {
        int v = st->in[k];
        if (v < 0)
            continue;
        struct cpu_form *f = NULL;
        const struct plan_value *pv = &P->g->vals[v];
        /*
         * A weight the engine freed because a oneDNN primitive of an earlier plan
         * holds it cannot reach a reference kernel that reads it (an empty batch
         * reads nothing).
         */
        int any_out = 0;
        for (int k2 = 0; k2 < st->n_out; k2++)
            any_out |= st->out[k2] >= 0 && P->g->vals[st->out[k2]].nbytes > 0;
        if (pv->kind == PV_CONST && !pv->data && pv->nbytes && any_out) {
            rc = cerr_set(e, CORRAL_EINTERNAL, "%s: weight '%s' is held only in a oneDNN "
                          "layout, but this plan runs the step with the reference kernel",
                          st->label, pv->name);
            goto fail;
        }
        if ((rc = cpu_plain_form(P, v, s, &f, e)))
            goto fail;
        tin[k] = (struct tensor){.name = pv->name, .dtype = pv->dtype, .ndim = pv->ndim,
                                 .nbytes = pv->nbytes};
        memcpy(tin[k].dims, pv->dims, sizeof pv->dims);
        is[k] = &f->ptr;
    }
    for (int k = 0; k < st->n_out; k++) {
        int v = st->out[k];
        if (v < 0)
            continue;
        const struct plan_value *pv = &P->g->vals[v];
        struct cpu_val *cv = &P->v[v];
        cv->blocked = 0;
        cv->main.has_md = 0;
        if (!cpu_is_ext(P, v)) {
            int last = pv->last_use < pv->producer ? pv->producer : pv->last_use;
            cv->main.buf = cpu_new_buf(P, pv->nbytes, s, last);
            if (cv->main.buf < 0) {
                rc = cerr_set(e, CORRAL_ENOMEM, "out of memory compiling a plan");
                goto fail;
            }
        }
        /* A plain md lets oneDNN consumers read it; types oneDNN lacks never reach them. */
        struct cerr e2;
        if (cpu_dnnl_dt(pv->dtype) != dnnl_data_type_undef && pv->ndim <= 6 &&
            !cpu_plain_md(pv, &cv->main.md, &e2))
            cv->main.has_md = 1;
        tout[k] = (struct tensor){.name = pv->name, .dtype = pv->dtype, .ndim = pv->ndim,
                                  .nbytes = pv->nbytes};
        memcpy(tout[k].dims, pv->dims, sizeof pv->dims);
        os[k] = &cv->main.ptr;
    }
    if (GROW(P->items, P->n_items, P->cap_items)) {
        rc = cerr_set(e, CORRAL_ENOMEM, "out of memory compiling a plan");
        goto fail;
    }
    struct cpu_item *it = &P->items[P->n_items++];
    memset(it, 0, sizeof *it);
    it->kind = CIT_KERNEL;
    it->st = st;
    it->tin = tin, it->tout = tout, it->in_slot = is, it->out_slot = os;
    return CORRAL_OK;
fail:
    free(tin), free(tout), free(is), free(os);
    return rc;
}

/*
 * Grows the context's shared arena and scratchpad to at least these sizes.
 * The old blocks are freed first, so the peak stays at one arena; plans that
 * pointed at them re-point before their next run (bind_shared).
 */
static int reserve_shared(struct cpu_ctx *c, size_t arena, size_t scratch, struct cerr *e)
{
    if (arena > c->arena_cap) {
        free(c->arena);
        c->arena_cap = 0;
        if (!(c->arena = aligned_alloc(64, (arena + 63) & ~(size_t)63)))
            return cerr_set(e, CORRAL_ENOMEM, "cannot allocate a %zu-byte arena", arena);
        c->arena_cap = arena;
    }
    if (scratch > c->scratch_cap) {
        free(c->scratch);
        c->scratch_cap = 0;
        if (!(c->scratch = aligned_alloc(64, (scratch + 63) & ~(size_t)63)))
            return cerr_set(e, CORRAL_ENOMEM, "cannot allocate %zu bytes of scratch memory",
                            scratch);
        c->scratch_cap = scratch;
    }
    return CORRAL_OK;
}

/* Points the plan's arena values and memory objects at the context's current blocks. */
static void bind_shared(struct cpu_plan *P)
{
    struct cpu_ctx *c = P->ctx;
    const struct plan_graph *g = P->g;
    if (P->bound_arena == c->arena && P->bound_scratch == c->scratch)
        return;
    for (int v = 0; v < g->n_vals; v++) {
        struct cpu_val *cv = &P->v[v];
        if (cv->main.buf >= 0)
            cv->main.ptr = c->arena + P->bufs[cv->main.buf].off;
        if (cv->has_plain && cv->plain.buf >= 0)
            cv->plain.ptr = c->arena + P->bufs[cv->plain.buf].off;
    }
    for (int i = 0; i < P->n_bound; i++)
        dnnl_memory_set_data_handle(P->bound[i].mem, c->arena + P->bufs[P->bound[i].buf].off);
    if (P->scratch_mem)
        dnnl_memory_set_data_handle(P->scratch_mem, c->scratch);
    P->bound_arena = c->arena;
    P->bound_scratch = c->scratch;
}

static int cpu_compile(struct backend *b, const struct plan_graph *g, void **compiled,
                       size_t *arena_bytes, struct cerr *e)
{
    struct cpu_ctx *c = b->ctx;
    struct cpu_plan *P = calloc(1, sizeof *P);
    struct mem_req *req = NULL;
    int rc = CORRAL_OK;
    *compiled = NULL;
    if (!P)
        return cerr_set(e, CORRAL_ENOMEM, "out of memory compiling a plan");
    P->ctx = c;
    P->g = g;
    P->v = calloc((size_t)g->n_vals + 1, sizeof *P->v);
    if (!P->v) {
        rc = cerr_set(e, CORRAL_ENOMEM, "out of memory compiling a plan");
        goto fail;
    }
    for (int v = 0; v < g->n_vals; v++) {
        const struct plan_value *pv = &g->vals[v];
        struct cpu_val *cv = &P->v[v];
        cv->main.buf = cv->plain.buf = -1;
        if (pv->kind == PV_CONST)
            cv->main.ptr = (void *)pv->data;
        if (pv->kind != PV_TEMP && cpu_dnnl_dt(pv->dtype) != dnnl_data_type_undef &&
            pv->ndim <= 6) {
            struct cerr e2;
            if (!cpu_plain_md(pv, &cv->main.md, &e2))
                cv->main.has_md = 1;
        }
    }
    for (int s = 0; s < g->n_steps && !rc; s++) {
        const struct plan_step *st = &g->steps[s];
        switch (st->op) {
        case EOP_CONV:
        case EOP_CONV_TRANSPOSE: rc = cpu_compile_conv(P, s, e); break;
        case EOP_MAXPOOL:
        case EOP_AVGPOOL:
        case EOP_GLOBALAVGPOOL:
        case EOP_GLOBALMAXPOOL: rc = cpu_compile_pool(P, s, e); break;
        case EOP_CONCAT:
        case EOP_GEMM:
        case EOP_MATMUL: {
            int done = 0;
            rc = st->op == EOP_CONCAT ? cpu_compile_concat(P, s, &done, e)
                                      : cpu_compile_gemm(P, s, &done, e);
            if (!rc && !done)
                rc = compile_kernel(P, s, e);
            break;
        }
        default: rc = compile_kernel(P, s, e); break;
        }
    }
    if (rc)
        goto fail;
    req = calloc((size_t)P->n_bufs + 1, sizeof *req);
    if (!req) {
        rc = cerr_set(e, CORRAL_ENOMEM, "out of memory compiling a plan");
        goto fail;
    }
    for (int i = 0; i < P->n_bufs; i++)
        req[i] = (struct mem_req){P->bufs[i].bytes, P->bufs[i].first, P->bufs[i].last, 0};
    if ((rc = plan_mem_assign(req, (size_t)P->n_bufs, 64, &P->arena_bytes, e)))
        goto fail;
    for (int i = 0; i < P->n_bufs; i++)
        P->bufs[i].off = req[i].offset;
    if ((rc = reserve_shared(c, P->arena_bytes, P->scratch_bytes, e)))
        goto fail;
    if (P->scratch_bytes) {
        dnnl_memory_desc_t smd;
        dnnl_dims_t d = {(dnnl_dim_t)P->scratch_bytes};
        if ((rc = cpu_dnnl_check(dnnl_memory_desc_init_by_tag(&smd, 1, d, dnnl_u8, dnnl_a),
                                 "scratchpad", NULL, e)) ||
            (rc = cpu_dnnl_check(dnnl_memory_create(&P->scratch_mem, &smd, c->eng,
                                                    DNNL_MEMORY_NONE),
                                 "scratchpad", NULL, e)))
            goto fail;
        for (int i = 0; i < P->n_items; i++) {
            struct cpu_item *it = &P->items[i];
            if (it->kind == CIT_PRIM && it->scratch && it->nargs < CPU_MAX_ARGS)
                it->args[it->nargs++] = (dnnl_exec_arg_t){DNNL_ARG_SCRATCHPAD, P->scratch_mem};
        }
    }
    bind_shared(P);
    free(req);
    *arena_bytes = P->arena_bytes + P->scratch_bytes;
    *compiled = P;
    return CORRAL_OK;
fail:
    free(req);
    b->ops->plan_free(b, P);
    return rc;
}

static int cpu_execute(struct backend *b, void *compiled, const struct tensor *in,
                       struct tensor *out, struct cerr *e)
{
    struct cpu_ctx *c = b->ctx;
    struct cpu_plan *P = compiled;
    const struct plan_graph *g = P->g;
    int rc;
#ifdef CORRAL_ENGINE_OMP
    /* The OpenMP team size is per calling thread, so it is set on every run. */
    if (omp_get_max_threads() != c->threads)
        omp_set_num_threads(c->threads);
#endif
    for (int k = 0; k < g->n_inputs; k++)
        P->v[g->inputs[k]].main.ptr = in[k].data;
    for (int k = 0; k < g->n_outputs; k++)
        P->v[g->outputs[k]].main.ptr = out[k].data;
    bind_shared(P);
    for (int i = 0; i < P->n_refresh; i++)
        dnnl_memory_set_data_handle(P->refresh[i].mem, *P->refresh[i].slot);
    for (int i = 0; i < P->n_items; i++) {
        struct cpu_item *it = &P->items[i];
        if (it->kind == CIT_PRIM) {
            if ((rc = cpu_dnnl_check(dnnl_primitive_execute(it->prim, c->stream, it->nargs,
                                                            it->args),
                                     "execute", it->st, e)))
                return rc;
            continue;
        }
        for (int k = 0; k < it->st->n_in; k++)
            if (it->in_slot[k])
                it->tin[k].data = *it->in_slot[k];
        for (int k = 0; k < it->st->n_out; k++)
            if (it->out_slot[k])
                it->tout[k].data = *it->out_slot[k];
        if ((rc = eng_kernel_run(it->st, it->tin, it->tout, e)))
            return rc;
    }
    return CORRAL_OK;
}

static void cpu_plan_free(struct backend *b, void *compiled)
{
    struct cpu_plan *P = compiled;
    if (!P)
        return;
    for (int i = 0; i < P->n_items; i++) {
        struct cpu_item *it = &P->items[i];
        if (it->prim)
            dnnl_primitive_destroy(it->prim);
        free(it->tin);
        free(it->tout);
        free(it->in_slot);
        free(it->out_slot);
    }
    for (int i = 0; i < P->n_mems; i++)
        dnnl_memory_destroy(P->mems[i]);
    if (P->scratch_mem)
        dnnl_memory_destroy(P->scratch_mem);
    for (int i = 0; i < P->n_owned; i++)
        free(P->owned[i]);
    free(P->owned);
    free(P->items);
    free(P->bufs);
    free(P->bound);
    free(P->refresh);
    free(P->mems);
    free(P->v);
    free(P);
}

static int cpu_sync(struct backend *b, struct cerr *e)
{
    struct cpu_ctx *c = b->ctx;
    return cpu_dnnl_check(dnnl_stream_wait(c->stream), "stream_wait", NULL, e);
}

static int cpu_supports(struct backend *b, enum eng_op op, const struct eng_attrs *a,
                        const enum dtype *in_dtypes, int n_in)
{
    /* Every op the engine parses has a reference kernel or a oneDNN primitive here. */
    return op < EOP_COUNT;
}

static int cpu_buffer_alloc(struct backend *b, size_t bytes, struct backend_buffer *out,
                            struct cerr *e)
{
    out->ptr = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
    out->bytes = bytes;
    out->priv = NULL;
    if (!out->ptr && bytes)
        return cerr_set(e, CORRAL_ENOMEM, "cannot allocate %zu bytes", bytes);
    return CORRAL_OK;
}

static void cpu_buffer_free(struct backend *b, struct backend_buffer *buf)
{
    free(buf->ptr);
    buf->ptr = NULL;
}

static int cpu_weight_upload(struct backend *b, int weight_id, const struct tensor *host,
                             struct cerr *e)
{
    /* Host memory is the device: keep a pointer; layouts are chosen per plan. */
    struct cpu_ctx *c = b->ctx;
    if (weight_id < 0)
        return cerr_set(e, CORRAL_EINVAL, "negative weight id");
    if ((size_t)weight_id >= c->n_w) {
        size_t n = (size_t)weight_id + 64;
        const struct tensor **w = realloc(c->w, n * sizeof *w);
        if (!w)
            return cerr_set(e, CORRAL_ENOMEM, "out of memory");
        memset(w + c->n_w, 0, (n - c->n_w) * sizeof *w);
        c->w = w;
        c->n_w = n;
    }
    c->w[weight_id] = host;
    return CORRAL_OK;
}

/* The engine may free a weight's host copy once a reordered form of it is cached here. */
static int cpu_weight_resident(struct backend *b, int weight_id)
{
    struct cpu_ctx *c = b->ctx;
    for (size_t i = 0; i < c->n_wc; i++)
        if (c->wc[i].weight_id == weight_id)
            return 1;
    return 0;
}

static void cpu_destroy(struct backend *b)
{
    struct cpu_ctx *c = b->ctx;
    if (!c)
        return;
    for (size_t i = 0; i < c->n_wc; i++) {
        dnnl_memory_destroy(c->wc[i].mem);
        free(c->wc[i].data);
    }
    free(c->wc);
    free(c->w);
    free(c->arena);
    free(c->scratch);
    if (c->stream)
        dnnl_stream_destroy(c->stream);
    if (c->eng)
        dnnl_engine_destroy(c->eng);
    free(c);
    b->ctx = NULL;
}

static const struct backend_ops cpu_ops = {
    .name = "cpu",
    .destroy = cpu_destroy,
    .supports_op = cpu_supports,
    .buffer_alloc = cpu_buffer_alloc,
    .buffer_free = cpu_buffer_free,
    .weight_upload = cpu_weight_upload,
    .weight_resident = cpu_weight_resident,
    .plan_compile = cpu_compile,
    .plan_execute = cpu_execute,
    .plan_free = cpu_plan_free,
    .synchronize = cpu_sync,
};

int backend_cpu_count(void)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        int n = CPU_COUNT(&set);
        if (n > 0)
            return n;
    }
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

static int cpu_create(int ordinal, const struct backend_options *opt, struct backend *out,
                      struct cerr *e)
{
    struct cpu_ctx *c = calloc(1, sizeof *c);
    int rc;
    if (!c)
        return cerr_set(e, CORRAL_ENOMEM, "out of memory");
    c->threads = opt && opt->threads > 0 ? opt->threads : backend_cpu_count();
    out->ops = &cpu_ops;
    out->ctx = c;
    if ((rc = cpu_dnnl_check(dnnl_engine_create(&c->eng, dnnl_cpu, 0), "engine_create", NULL,
                             e)) ||
        (rc = cpu_dnnl_check(dnnl_stream_create(&c->stream, c->eng, dnnl_stream_default_flags),
                             "stream_create", NULL, e))) {
        cpu_destroy(out);
        out->ops = NULL;
        return rc;
    }
    return CORRAL_OK;
}

const struct backend_kind backend_kind_cpu = {
    .name = "cpu",
    .ordinal = 0,
    .create = cpu_create,
};
