#include <stdlib.h>
#include <string.h>

#include "backend_cpu.h"

/*
 * The forms of a CPU plan's values while the plan is compiled: oneDNN memory
 * descriptors for plain layouts, arena buffers placed later by liveness,
 * memory objects on arena buffers or on caller slots, plain shadows made by
 * reorders before the steps that need them, weights reordered once into the
 * layout a primitive chose (and shared by every plan), and the list of
 * primitives and kernels a plan runs. The step compilers (backend_cpu.c for
 * reference kernels, backend_cpu_dnnl.c for oneDNN primitives) build on these;
 * nothing here calls back into them.
 */

int cpu_dnnl_check(dnnl_status_t s, const char *what, const struct plan_step *st,
                   struct cerr *e)
{
    if (s == dnnl_success)
        return CORRAL_OK;
    return cerr_set(e, s == dnnl_out_of_memory ? CORRAL_ENOMEM : CORRAL_EUNSUPP,
                    "%s: oneDNN %s failed (status %d)", st ? st->label : "plan", what, (int)s);
}

static const dnnl_format_tag_t plain_tags[] = {dnnl_a, dnnl_a, dnnl_ab, dnnl_abc, dnnl_abcd,
                                              dnnl_abcde, dnnl_abcdef};

dnnl_data_type_t cpu_dnnl_dt(enum dtype t)
{
    switch (t) {
    case DT_FP32: return dnnl_f32;
    case DT_INT32: return dnnl_s32;
    case DT_INT8: return dnnl_s8;
    case DT_UINT8:
    case DT_BOOL: return dnnl_u8;
    default: return dnnl_data_type_undef;
    }
}

int cpu_plain_md(const struct plan_value *pv, dnnl_memory_desc_t *md, struct cerr *e)
{
    dnnl_dims_t d;
    int nd = pv->ndim ? pv->ndim : 1;
    if (nd > 6)
        return cerr_set(e, CORRAL_EUNSUPP, "value '%s' has too many dimensions for oneDNN",
                        pv->name);
    for (int i = 0; i < nd; i++)
        d[i] = pv->ndim ? pv->dims[i] : 1;
    dnnl_data_type_t dt = cpu_dnnl_dt(pv->dtype);
    if (dt == dnnl_data_type_undef)
        return cerr_set(e, CORRAL_EUNSUPP, "value '%s' is %s, which oneDNN primitives do not "
                        "take", pv->name, dtype_name(pv->dtype));
    return cpu_dnnl_check(dnnl_memory_desc_init_by_tag(md, nd, d, dt, plain_tags[nd]),
                          "memory_desc_init", NULL, e);
}

int cpu_new_buf(struct cpu_plan *P, size_t bytes, int first, int last)
{
    if (GROW(P->bufs, P->n_bufs, P->cap_bufs))
        return -1;
    P->bufs[P->n_bufs] = (struct cpu_buf){bytes, first, last < first ? first : last, 0};
    return P->n_bufs++;
}

static int track_mem(struct cpu_plan *P, dnnl_memory_t m, struct cerr *e)
{
    if (GROW(P->mems, P->n_mems, P->cap_mems)) {
        dnnl_memory_destroy(m);
        return cerr_set(e, CORRAL_ENOMEM, "out of memory compiling a plan");
    }
    P->mems[P->n_mems++] = m;
    return CORRAL_OK;
}

int cpu_mem_on_buf(struct cpu_plan *P, const dnnl_memory_desc_t *md, int buf, dnnl_memory_t *out,
                   struct cerr *e)
{
    int rc = cpu_dnnl_check(dnnl_memory_create(out, md, P->ctx->eng, DNNL_MEMORY_NONE),
                            "memory_create", NULL, e);
    if (rc || (rc = track_mem(P, *out, e)))
        return rc;
    if (GROW(P->bound, P->n_bound, P->cap_bound))
        return cerr_set(e, CORRAL_ENOMEM, "out of memory compiling a plan");
    P->bound[P->n_bound].mem = *out;
    P->bound[P->n_bound++].buf = buf;
    return CORRAL_OK;
}

int cpu_mem_on_slot(struct cpu_plan *P, const dnnl_memory_desc_t *md, void **slot, int ext,
                    dnnl_memory_t *out, struct cerr *e)
{
    int rc = cpu_dnnl_check(dnnl_memory_create(out, md, P->ctx->eng,
                                               ext ? DNNL_MEMORY_NONE : *slot),
                            "memory_create", NULL, e);
    if (rc || (rc = track_mem(P, *out, e)))
        return rc;
    if (ext) {
        if (GROW(P->refresh, P->n_refresh, P->cap_refresh))
            return cerr_set(e, CORRAL_ENOMEM, "out of memory compiling a plan");
        P->refresh[P->n_refresh].mem = *out;
        P->refresh[P->n_refresh++].slot = slot;
    }
    return CORRAL_OK;
}

int cpu_is_ext(const struct cpu_plan *P, int v)
{
    const struct plan_value *pv = &P->g->vals[v];
    return pv->kind == PV_INPUT || pv->output_index >= 0;
}

int cpu_form_mem(struct cpu_plan *P, int v, struct cpu_form *f, struct cerr *e)
{
    if (f->mem)
        return CORRAL_OK;
    if (f->buf >= 0)
        return cpu_mem_on_buf(P, &f->md, f->buf, &f->mem, e);
    return cpu_mem_on_slot(P, &f->md, &f->ptr, cpu_is_ext(P, v), &f->mem, e);
}

int cpu_add_prim(struct cpu_plan *P, dnnl_primitive_desc_t pd, const dnnl_exec_arg_t *args,
                 int nargs, const struct plan_step *st, struct cerr *e)
{
    dnnl_primitive_t prim = NULL;
    int rc = cpu_dnnl_check(dnnl_primitive_create(&prim, pd), "primitive_create", st, e);
    if (rc)
        return rc;
    const dnnl_memory_desc_t *smd = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
    size_t ss = smd ? dnnl_memory_desc_get_size(smd) : 0;
    if (ss > P->scratch_bytes)
        P->scratch_bytes = ss;
    if (GROW(P->items, P->n_items, P->cap_items)) {
        dnnl_primitive_destroy(prim);
        return cerr_set(e, CORRAL_ENOMEM, "out of memory compiling a plan");
    }
    struct cpu_item *it = &P->items[P->n_items++];
    memset(it, 0, sizeof *it);
    it->kind = CIT_PRIM;
    it->prim = prim;
    it->st = st;
    it->nargs = nargs;
    memcpy(it->args, args, (size_t)nargs * sizeof *args);
    it->scratch = ss > 0;
    return CORRAL_OK;
}

static dnnl_primitive_attr_t scratch_attr(void)
{
    dnnl_primitive_attr_t attr = NULL;
    if (dnnl_primitive_attr_create(&attr) != dnnl_success)
        return NULL;
    dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user);
    return attr;
}

int cpu_add_reorder(struct cpu_plan *P, dnnl_memory_t src, dnnl_memory_t dst,
                    const struct plan_step *st, struct cerr *e)
{
    const dnnl_memory_desc_t *smd = NULL, *dmd = NULL;
    dnnl_memory_get_memory_desc(src, &smd);
    dnnl_memory_get_memory_desc(dst, &dmd);
    dnnl_primitive_desc_t pd = NULL;
    dnnl_primitive_attr_t attr = scratch_attr();
    int rc = cpu_dnnl_check(dnnl_reorder_primitive_desc_create(&pd, smd, P->ctx->eng, dmd,
                                                               P->ctx->eng, attr),
                            "reorder", st, e);
    dnnl_primitive_attr_destroy(attr);
    if (rc)
        return rc;
    dnnl_exec_arg_t args[2] = {{DNNL_ARG_SRC, src}, {DNNL_ARG_DST, dst}};
    rc = cpu_add_prim(P, pd, args, 2, st, e);
    dnnl_primitive_desc_destroy(pd);
    return rc;
}

/* The plain form of v, reordering its blocked main form before step s when needed. */
int cpu_plain_form(struct cpu_plan *P, int v, int s, struct cpu_form **out, struct cerr *e)
{
    struct cpu_val *cv = &P->v[v];
    int rc;
    if (!cv->blocked) {
        *out = &cv->main;
        return CORRAL_OK;
    }
    if (cv->has_plain) {
        if (P->bufs[cv->plain.buf].last < s)
            P->bufs[cv->plain.buf].last = s;
        *out = &cv->plain;
        return CORRAL_OK;
    }
    if ((rc = cpu_plain_md(&P->g->vals[v], &cv->plain.md, e)))
        return rc;
    cv->plain.has_md = 1;
    cv->plain.buf = cpu_new_buf(P, P->g->vals[v].nbytes, s, s);
    if (cv->plain.buf < 0)
        return cerr_set(e, CORRAL_ENOMEM, "out of memory compiling a plan");
    if ((rc = cpu_form_mem(P, v, &cv->main, e)) || (rc = cpu_form_mem(P, v, &cv->plain, e)) ||
        (rc = cpu_add_reorder(P, cv->main.mem, cv->plain.mem, &P->g->steps[s], e)))
        return rc;
    cv->has_plain = 1;
    *out = &cv->plain;
    return CORRAL_OK;
}

int cpu_value_as(struct cpu_plan *P, int v, const dnnl_memory_desc_t *md, int s,
                 dnnl_memory_t *out, struct cerr *e)
{
    struct cpu_val *cv = &P->v[v];
    int rc;
    if (dnnl_memory_desc_equal(&cv->main.md, md)) {
        if ((rc = cpu_form_mem(P, v, &cv->main, e)))
            return rc;
        *out = cv->main.mem;
        return CORRAL_OK;
    }
    if (cv->has_plain && dnnl_memory_desc_equal(&cv->plain.md, md)) {
        if (P->bufs[cv->plain.buf].last < s)
            P->bufs[cv->plain.buf].last = s;
        *out = cv->plain.mem;
        return CORRAL_OK;
    }
    int b = cpu_new_buf(P, dnnl_memory_desc_get_size(md), s, s);
    if (b < 0)
        return cerr_set(e, CORRAL_ENOMEM, "out of memory compiling a plan");
    if ((rc = cpu_form_mem(P, v, &cv->main, e)) || (rc = cpu_mem_on_buf(P, md, b, out, e)))
        return rc;
    return cpu_add_reorder(P, cv->main.mem, *out, &P->g->steps[s], e);
}

int cpu_value_view_as(struct cpu_plan *P, int v, const dnnl_memory_desc_t *view,
                      const dnnl_memory_desc_t *md, int s, dnnl_memory_t *out, struct cerr *e)
{
    struct cpu_form *pf = NULL;
    dnnl_memory_t src = NULL;
    int rc = cpu_plain_form(P, v, s, &pf, e);
    if (rc)
        return rc;
    if (pf->buf >= 0)
        rc = cpu_mem_on_buf(P, view, pf->buf, &src, e);
    else
        rc = cpu_mem_on_slot(P, view, &pf->ptr, cpu_is_ext(P, v), &src, e);
    if (rc)
        return rc;
    if (dnnl_memory_desc_equal(view, md)) {
        *out = src;
        return CORRAL_OK;
    }
    int b = cpu_new_buf(P, dnnl_memory_desc_get_size(md), s, s);
    if (b < 0)
        return cerr_set(e, CORRAL_ENOMEM, "out of memory compiling a plan");
    if ((rc = cpu_mem_on_buf(P, md, b, out, e)))
        return rc;
    return cpu_add_reorder(P, src, *out, &P->g->steps[s], e);
}

/* Reorders a host weight into md once; cached per (weight, layout) across plans. */
static int reorder_once(struct cpu_ctx *c, const void *src_data, const dnnl_memory_desc_t *view,
                        const dnnl_memory_desc_t *md, void **data, dnnl_memory_t *mem,
                        const struct plan_step *st, struct cerr *e)
{
    dnnl_memory_t src = NULL;
    dnnl_primitive_desc_t pd = NULL;
    dnnl_primitive_t prim = NULL;
    size_t sz = dnnl_memory_desc_get_size(md);
    int rc;
    *mem = NULL;
    *data = aligned_alloc(64, (sz + 63) & ~(size_t)63);
    if (!*data)
        return cerr_set(e, CORRAL_ENOMEM, "out of memory for weights");
    if ((rc = cpu_dnnl_check(dnnl_memory_create(&src, view, c->eng, (void *)src_data),
                             "memory_create", st, e)) ||
        (rc = cpu_dnnl_check(dnnl_memory_create(mem, md, c->eng, *data), "memory_create", st,
                             e)) ||
        (rc = cpu_dnnl_check(dnnl_reorder_primitive_desc_create(&pd, view, c->eng, md, c->eng,
                                                                NULL),
                             "weights reorder", st, e)) ||
        (rc = cpu_dnnl_check(dnnl_primitive_create(&prim, pd), "weights reorder", st, e)))
        goto done;
    dnnl_exec_arg_t args[2] = {{DNNL_ARG_SRC, src}, {DNNL_ARG_DST, *mem}};
    if ((rc = cpu_dnnl_check(dnnl_primitive_execute(prim, c->stream, 2, args), "weights reorder",
                             st, e)))
        goto done;
    dnnl_stream_wait(c->stream);
done:
    if (prim)
        dnnl_primitive_destroy(prim);
    if (pd)
        dnnl_primitive_desc_destroy(pd);
    if (src)
        dnnl_memory_destroy(src);
    if (rc) {
        if (*mem)
            dnnl_memory_destroy(*mem);
        *mem = NULL;
        free(*data);
        *data = NULL;
    }
    return rc;
}

int cpu_weights(struct cpu_plan *P, int v, const dnnl_memory_desc_t *view,
                const dnnl_memory_desc_t *md, int s, dnnl_memory_t *out, struct cerr *e)
{
    const struct plan_value *pv = &P->g->vals[v];
    struct cpu_ctx *c = P->ctx;
    const struct plan_step *st = &P->g->steps[s];
    int rc;
    if (pv->kind != PV_CONST)
        return cpu_value_view_as(P, v, view, md, s, out, e);
    if (pv->weight_id >= 0) {
        for (size_t i = 0; i < c->n_wc; i++)
            if (c->wc[i].weight_id == pv->weight_id && dnnl_memory_desc_equal(&c->wc[i].md, md)) {
                *out = c->wc[i].mem;
                return CORRAL_OK;
            }
        /*
         * Once the engine has freed the host copy (cpu_weight_resident), a new
         * layout is reordered from a form this backend already holds: same
         * logical dims, since only the one convolution or GEMM reads the weight.
         */
        const void *src = pv->data;
        dnnl_memory_desc_t src_md = *view;
        if (!src) {
            for (size_t i = 0; i < c->n_wc && !src; i++)
                if (c->wc[i].weight_id == pv->weight_id) {
                    src = c->wc[i].data;
                    src_md = c->wc[i].md;
                }
            if (!src)
                return cerr_set(e, CORRAL_EINTERNAL, "%s: weight '%s' has no data", st->label,
                                pv->name);
        }
        if (GROW(c->wc, c->n_wc, c->cap_wc))
            return cerr_set(e, CORRAL_ENOMEM, "out of memory for weights");
        struct cpu_wcache *w = &c->wc[c->n_wc];
        w->weight_id = pv->weight_id;
        w->md = *md;
        if ((rc = reorder_once(c, src, &src_md, md, &w->data, &w->mem, st, e)))
            return rc;
        c->n_wc++;
        *out = w->mem;
        return CORRAL_OK;
    }
    void *data = NULL;
    dnnl_memory_t m = NULL;
    if ((rc = reorder_once(c, pv->data, view, md, &data, &m, st, e)))
        return rc;
    if (GROW(P->owned, P->n_owned, P->cap_owned)) {
        free(data);
        dnnl_memory_destroy(m);
        return cerr_set(e, CORRAL_ENOMEM, "out of memory for weights");
    }
    P->owned[P->n_owned++] = data;
    if ((rc = track_mem(P, m, e)))
        return rc;
    *out = m;
    return CORRAL_OK;
}

int cpu_set_main(struct cpu_plan *P, int v, const dnnl_memory_desc_t *md, int share_buf,
                 struct cerr *e)
{
    struct cpu_val *cv = &P->v[v];
    const struct plan_value *pv = &P->g->vals[v];
    dnnl_memory_desc_t plain;
    int rc = cpu_plain_md(pv, &plain, e);
    if (rc)
        return rc;
    cv->main.md = *md;
    cv->main.has_md = 1;
    cv->blocked = !dnnl_memory_desc_equal(md, &plain);
    if (cpu_is_ext(P, v)) {
        if (cv->blocked)
            return cerr_set(e, CORRAL_EINTERNAL, "value '%s' must be plain", pv->name);
        cv->main.buf = -1;
        return CORRAL_OK;
    }
    int last = pv->last_use < pv->producer ? pv->producer : pv->last_use;
    if (share_buf >= 0) {
        cv->main.buf = share_buf;
        if (P->bufs[share_buf].last < last)
            P->bufs[share_buf].last = last;
        return CORRAL_OK;
    }
    cv->main.buf = cpu_new_buf(P, dnnl_memory_desc_get_size(md), pv->producer, last);
    if (cv->main.buf < 0)
        return cerr_set(e, CORRAL_ENOMEM, "out of memory compiling a plan");
    return CORRAL_OK;
}
