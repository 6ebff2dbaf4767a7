#include <stdio.h>
#include <string.h>

#include "backend_cpu.h"

/*
 * oneDNN primitives of the CPU backend: convolution and deconvolution with
 * their fused epilogue (bias, residual sum, activation) and pooling. Sources
 * and destinations are created with format_tag_any so oneDNN picks its
 * fastest (blocked) layouts; the value keeps that layout for the next
 * primitive, and a model output is always requested plain.
 */

static int md_any(dnnl_memory_desc_t *md, int nd, const int64_t *dims, struct cerr *e,
                  const struct plan_step *st)
{
    dnnl_dims_t d;
    for (int i = 0; i < nd; i++)
        d[i] = dims[i];
    return cpu_dnnl_check(dnnl_memory_desc_init_by_tag(md, nd, d, dnnl_f32, dnnl_format_tag_any),
                          "memory_desc_init", st, e);
}

static int md_tag(dnnl_memory_desc_t *md, int nd, const int64_t *dims, dnnl_format_tag_t tag,
                  struct cerr *e, const struct plan_step *st)
{
    dnnl_dims_t d;
    for (int i = 0; i < nd; i++)
        d[i] = dims[i];
    return cpu_dnnl_check(dnnl_memory_desc_init_by_tag(md, nd, d, dnnl_f32, tag),
                          "memory_desc_init", st, e);
}

/* Appends the step's activation as oneDNN eltwise post-ops; 0 when it has none. */
static int append_act(dnnl_post_ops_t po, const struct eng_attrs *a)
{
    switch (a->act) {
    case EACT_NONE: return 0;
    case EACT_RELU: return dnnl_post_ops_append_eltwise(po, 1.0f, dnnl_eltwise_relu, 0, 0);
    case EACT_LEAKYRELU:
        return dnnl_post_ops_append_eltwise(po, 1.0f, dnnl_eltwise_relu, a->act_alpha, 0);
    case EACT_CLIP:
        return dnnl_post_ops_append_eltwise(po, 1.0f, dnnl_eltwise_clip_v2, a->act_alpha,
                                            a->act_beta);
    case EACT_SIGMOID: return dnnl_post_ops_append_eltwise(po, 1.0f, dnnl_eltwise_logistic, 0, 0);
    case EACT_TANH: return dnnl_post_ops_append_eltwise(po, 1.0f, dnnl_eltwise_tanh, 0, 0);
    case EACT_HARDSWISH:
        return dnnl_post_ops_append_eltwise(po, 1.0f, dnnl_eltwise_hardswish, 0, 0);
    case EACT_HARDSIGMOID:
        if (dnnl_post_ops_append_eltwise(po, 1.0f, dnnl_eltwise_linear, a->act_alpha,
                                         a->act_beta))
            return 1;
        return dnnl_post_ops_append_eltwise(po, 1.0f, dnnl_eltwise_clip_v2, 0.0f, 1.0f);
    case EACT_ELU: return dnnl_post_ops_append_eltwise(po, 1.0f, dnnl_eltwise_elu, a->act_alpha, 0);
    case EACT_GELU_ERF: return dnnl_post_ops_append_eltwise(po, 1.0f, dnnl_eltwise_gelu_erf, 0, 0);
    case EACT_GELU_TANH:
        return dnnl_post_ops_append_eltwise(po, 1.0f, dnnl_eltwise_gelu_tanh, 0, 0);
    }
    return 0;
}

static const dnnl_format_tag_t plain_w[] = {0, 0, 0, dnnl_abc, dnnl_abcd, dnnl_abcde,
                                            dnnl_abcdef};

int cpu_compile_conv(struct cpu_plan *P, int s, struct cerr *e)
{
    const struct plan_graph *g = P->g;
    const struct plan_step *st = &g->steps[s];
    const struct eng_attrs *a = &st->a;
    int tr = st->op == EOP_CONV_TRANSPOSE;
    int x = st->in[0], w = st->in[1], b = st->n_in > 2 ? st->in[2] : -1;
    int r = a->sum_input >= 0 && a->sum_input < st->n_in ? st->in[a->sum_input] : -1;
    int y = st->out[0];
    const struct plan_value *X = &g->vals[x], *W = &g->vals[w], *Y = &g->vals[y];
    int nd = X->ndim, nsp = nd - 2, rc;
    int64_t G = a->group;
    dnnl_memory_desc_t src_md, w_md, w_view, b_md, dst_md;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_post_ops_t po = NULL;
    dnnl_primitive_desc_t pd = NULL;

    if ((rc = md_any(&src_md, nd, X->dims, e, st)))
        return rc;
    /* Weights: [O, I/G, k...] (conv) or [I, O/G, k...] (deconv); grouped adds a G axis. */
    int64_t wd[TENSOR_MAX_DIMS];
    int wn = nd;
    dnnl_format_tag_t wtag;
    if (G == 1) {
        if (!tr) {
            memcpy(wd, W->dims, sizeof wd);
            wtag = plain_w[nd];
        } else {
            wd[0] = W->dims[1];
            wd[1] = W->dims[0];
            for (int i = 2; i < nd; i++)
                wd[i] = W->dims[i];
            wtag = nd == 3 ? dnnl_bac : nd == 4 ? dnnl_bacd : dnnl_bacde;
        }
    } else {
        wn = nd + 1;
        wd[0] = G;
        if (!tr) {
            wd[1] = W->dims[0] / G;
            wd[2] = W->dims[1];
            wtag = plain_w[nd + 1];
        } else {
            wd[1] = W->dims[1];
            wd[2] = W->dims[0] / G;
            wtag = nd == 3 ? dnnl_acbd : nd == 4 ? dnnl_acbde : dnnl_acbdef;
        }
        for (int i = 2; i < nd; i++)
            wd[i + 1] = W->dims[i];
    }
    if ((rc = md_any(&w_md, wn, wd, e, st)) || (rc = md_tag(&w_view, wn, wd, wtag, e, st)))
        return rc;
    int64_t bd[1] = {Y->dims[1]};
    if (b >= 0 && (rc = md_tag(&b_md, 1, bd, dnnl_a, e, st)))
        return rc;
    int want_plain = Y->output_index >= 0;
    if (want_plain)
        rc = md_tag(&dst_md, nd, Y->dims, plain_w[nd], e, st);
    else if (r >= 0 && P->v[r].blocked)
        dst_md = P->v[r].main.md;
    else
        rc = md_any(&dst_md, nd, Y->dims, e, st);
    if (rc)
        return rc;
    dnnl_dims_t strides, dil, pl, pr;
    for (int i = 0; i < nsp; i++) {
        strides[i] = a->strides[i];
        dil[i] = a->dilations[i] - 1;
        pl[i] = a->pads[i];
        pr[i] = a->pads[nsp + i] - (tr ? a->output_padding[i] : 0);
    }
    if (!tr) {
        dnnl_convolution_desc_t cd;
        rc = cpu_dnnl_check(dnnl_dilated_convolution_forward_desc_init(
                                &cd, dnnl_forward_inference, dnnl_convolution_direct, &src_md,
                                &w_md, b >= 0 ? &b_md : NULL, &dst_md, strides, dil, pl, pr),
                            "convolution descriptor", st, e);
        if (rc)
            return rc;
        if ((rc = cpu_dnnl_check(dnnl_primitive_attr_create(&attr), "attr", st, e)))
            return rc;
        dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user);
        if ((rc = cpu_dnnl_check(dnnl_post_ops_create(&po), "post_ops", st, e)))
            goto done;
        if (r >= 0 && (rc = cpu_dnnl_check(dnnl_post_ops_append_sum(po, 1.0f), "sum post-op",
                                           st, e)))
            goto done;
        if ((rc = cpu_dnnl_check((dnnl_status_t)append_act(po, a), "eltwise post-op", st, e)) ||
            (rc = cpu_dnnl_check(dnnl_primitive_attr_set_post_ops(attr, po), "post_ops", st, e)))
            goto done;
        rc = cpu_dnnl_check(dnnl_primitive_desc_create(&pd, &cd, attr, P->ctx->eng, NULL),
                            "convolution", st, e);
    } else {
        dnnl_deconvolution_desc_t dd;
        rc = cpu_dnnl_check(dnnl_dilated_deconvolution_forward_desc_init(
                                &dd, dnnl_forward_inference, dnnl_deconvolution_direct, &src_md,
                                &w_md, b >= 0 ? &b_md : NULL, &dst_md, strides, dil, pl, pr),
                            "deconvolution descriptor", st, e);
        if (rc)
            return rc;
        if ((rc = cpu_dnnl_check(dnnl_primitive_attr_create(&attr), "attr", st, e)))
            return rc;
        dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user);
        rc = cpu_dnnl_check(dnnl_primitive_desc_create(&pd, &dd, attr, P->ctx->eng, NULL),
                            "deconvolution", st, e);
    }
    if (rc)
        goto done;
    const dnnl_memory_desc_t *q_src = dnnl_primitive_desc_query_md(pd, dnnl_query_src_md, 0);
    const dnnl_memory_desc_t *q_w = dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
    const dnnl_memory_desc_t *q_dst = dnnl_primitive_desc_query_md(pd, dnnl_query_dst_md, 0);
    dnnl_memory_t m_src = NULL, m_w = NULL, m_b = NULL, m_dst = NULL;
    if ((rc = cpu_value_as(P, x, q_src, s, &m_src, e)) ||
        (rc = cpu_weights(P, w, &w_view, q_w, s, &m_w, e)))
        goto done;
    if (b >= 0 && (rc = cpu_value_as(P, b, &b_md, s, &m_b, e)))
        goto done;
    /*
     * The residual must already sit in the destination. When it is an arena
     * value in the same layout that nothing reads later, the destination
     * simply takes over its buffer; otherwise it is reordered in first.
     */
    int share = -1;
    if (r >= 0) {
        const struct plan_value *R = &g->vals[r];
        struct cpu_val *cr = &P->v[r];
        if (R->kind == PV_TEMP && R->output_index < 0 && R->last_use == s && cr->main.buf >= 0 &&
            cr->main.has_md && dnnl_memory_desc_equal(&cr->main.md, q_dst) && !want_plain)
            share = cr->main.buf;
    }
    if ((rc = cpu_set_main(P, y, q_dst, share, e)) ||
        (rc = cpu_form_mem(P, y, &P->v[y].main, e)))
        goto done;
    m_dst = P->v[y].main.mem;
    if (r >= 0 && share < 0) {
        dnnl_memory_t m_r = NULL;
        if ((rc = cpu_form_mem(P, r, &P->v[r].main, e)))
            goto done;
        m_r = P->v[r].main.mem;
        if (!P->v[r].main.has_md) {
            rc = cerr_set(e, CORRAL_EINTERNAL, "%s: residual has no layout", st->label);
            goto done;
        }
        if ((rc = cpu_add_reorder(P, m_r, m_dst, st, e)))
            goto done;
    }
    dnnl_exec_arg_t args[4] = {{DNNL_ARG_SRC, m_src}, {DNNL_ARG_WEIGHTS, m_w},
                               {DNNL_ARG_DST, m_dst}, {DNNL_ARG_BIAS, m_b}};
    rc = cpu_add_prim(P, pd, args, b >= 0 ? 4 : 3, st, e);
done:
    if (pd)
        dnnl_primitive_desc_destroy(pd);
    if (po)
        dnnl_post_ops_destroy(po);
    if (attr)
        dnnl_primitive_attr_destroy(attr);
    return rc;
}

int cpu_compile_pool(struct cpu_plan *P, int s, struct cerr *e)
{
    const struct plan_graph *g = P->g;
    const struct plan_step *st = &g->steps[s];
    const struct eng_attrs *a = &st->a;
    int x = st->in[0], y = st->out[0];
    const struct plan_value *X = &g->vals[x], *Y = &g->vals[y];
    int nd = X->ndim, nsp = nd - 2, rc;
    struct cpu_val *cx = &P->v[x];
    dnnl_memory_desc_t dst_md;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_primitive_desc_t pd = NULL;
    if (nsp < 1 || nsp > 3 || !cx->main.has_md)
        return cerr_set(e, CORRAL_EUNSUPP, "%s: pooling needs a 3-D to 5-D FP32 input",
                        st->label);
    if (Y->output_index >= 0)
        rc = md_tag(&dst_md, nd, Y->dims, plain_w[nd], e, st);
    else
        rc = md_any(&dst_md, nd, Y->dims, e, st);
    if (rc)
        return rc;
    dnnl_dims_t strides, kernel, dil, pl, pr;
    int global = st->op == EOP_GLOBALAVGPOOL || st->op == EOP_GLOBALMAXPOOL;
    for (int i = 0; i < nsp; i++) {
        if (global) {
            strides[i] = 1, kernel[i] = X->dims[2 + i], dil[i] = 0, pl[i] = pr[i] = 0;
            continue;
        }
        strides[i] = a->strides[i];
        kernel[i] = a->kernel[i];
        dil[i] = st->op == EOP_MAXPOOL ? a->dilations[i] - 1 : 0;
        pl[i] = a->pads[i];
        /* ceil_mode: pad the end so oneDNN's floor formula yields the planned size. */
        int64_t kr = (a->kernel[i] - 1) * (dil[i] + 1) + 1;
        pr[i] = (Y->dims[2 + i] - 1) * a->strides[i] + kr - X->dims[2 + i] - pl[i];
        if (pr[i] < 0)
            pr[i] = 0;
    }
    dnnl_alg_kind_t alg = (st->op == EOP_MAXPOOL || st->op == EOP_GLOBALMAXPOOL)
                              ? dnnl_pooling_max
                              : (a->count_include_pad && !global)
                                    ? dnnl_pooling_avg_include_padding
                                    : dnnl_pooling_avg_exclude_padding;
    dnnl_pooling_v2_desc_t pdsc;
    if ((rc = cpu_dnnl_check(dnnl_pooling_v2_forward_desc_init(&pdsc, dnnl_forward_inference, alg,
                                                               &cx->main.md, &dst_md, strides,
                                                               kernel, dil, pl, pr),
                             "pooling descriptor", st, e)))
        return rc;
    if ((rc = cpu_dnnl_check(dnnl_primitive_attr_create(&attr), "attr", st, e)))
        return rc;
    dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user);
    if ((rc = cpu_dnnl_check(dnnl_primitive_desc_create(&pd, &pdsc, attr, P->ctx->eng, NULL),
                             "pooling", st, e)))
        goto done;
    const dnnl_memory_desc_t *q_dst = dnnl_primitive_desc_query_md(pd, dnnl_query_dst_md, 0);
    dnnl_memory_t m_src = NULL;
    if ((rc = cpu_value_as(P, x, &cx->main.md, s, &m_src, e)) ||
        (rc = cpu_set_main(P, y, q_dst, -1, e)) ||
        (rc = cpu_form_mem(P, y, &P->v[y].main, e)))
        goto done;
    dnnl_exec_arg_t args[2] = {{DNNL_ARG_SRC, m_src}, {DNNL_ARG_DST, P->v[y].main.mem}};
    rc = cpu_add_prim(P, pd, args, 2, st, e);
done:
    if (pd)
        dnnl_primitive_desc_destroy(pd);
    if (attr)
        dnnl_primitive_attr_destroy(attr);
    return rc;
}

/*
 * Gemm (transA=0, alpha=1, bias a row of N) and MatMul with a constant 2-D
 * right operand, as a oneDNN matmul: the weights are packed once, and the
 * bias and activation run in the epilogue. Other forms use the reference
 * kernel (sgemm); *done says which happened.
 */
int cpu_compile_gemm(struct cpu_plan *P, int s, int *done, struct cerr *e)
{
    const struct plan_graph *g = P->g;
    const struct plan_step *st = &g->steps[s];
    const struct eng_attrs *a = &st->a;
    int x = st->in[0], w = st->in[1], b = st->n_in > 2 ? st->in[2] : -1, y = st->out[0];
    const struct plan_value *X = &g->vals[x], *Wv = &g->vals[w], *Y = &g->vals[y];
    int rc;
    *done = 0;
    if (Wv->kind != PV_CONST || Wv->ndim != 2 || X->ndim < 2 || Y->nbytes == 0)
        return CORRAL_OK;
    int tb = 0;
    if (st->op == EOP_GEMM) {
        if (a->trans_a || a->alpha != 1.0f || (b >= 0 && a->beta != 1.0f))
            return CORRAL_OK;
        tb = a->trans_b;
    }
    int64_t K = X->dims[X->ndim - 1], N = Y->dims[Y->ndim - 1];
    int64_t M = eng_numel(X->dims, X->ndim) / (K ? K : 1);
    if (b >= 0) {
        const struct plan_value *B = &g->vals[b];
        if (B->kind != PV_CONST || eng_numel(B->dims, B->ndim) != N ||
            (B->ndim == 2 && B->dims[0] != 1) || B->ndim > 2)
            return CORRAL_OK;
    }
    if (M == 0 || K == 0)
        return CORRAL_OK;
    dnnl_memory_desc_t src_md, w_md, w_view, b_md, dst_md, y_plain;
    int64_t dmk[2] = {M, K}, dkn[2] = {K, N}, d1n[2] = {1, N}, dmn[2] = {M, N};
    if ((rc = md_tag(&src_md, 2, dmk, dnnl_ab, e, st)) ||
        (rc = md_any(&w_md, 2, dkn, e, st)) ||
        (rc = md_tag(&w_view, 2, dkn, tb ? dnnl_ba : dnnl_ab, e, st)) ||
        (rc = md_tag(&b_md, 2, d1n, dnnl_ab, e, st)) ||
        (rc = md_tag(&dst_md, 2, dmn, dnnl_ab, e, st)) ||
        (rc = cpu_plain_md(Y, &y_plain, e)))
        return rc;
    dnnl_matmul_desc_t md;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_post_ops_t po = NULL;
    dnnl_primitive_desc_t pd = NULL;
    if ((rc = cpu_dnnl_check(dnnl_matmul_desc_init(&md, &src_md, &w_md, b >= 0 ? &b_md : NULL,
                                                   &dst_md),
                             "matmul descriptor", st, e)) ||
        (rc = cpu_dnnl_check(dnnl_primitive_attr_create(&attr), "attr", st, e)))
        return rc;
    dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user);
    if ((rc = cpu_dnnl_check(dnnl_post_ops_create(&po), "post_ops", st, e)) ||
        (rc = cpu_dnnl_check((dnnl_status_t)append_act(po, a), "eltwise post-op", st, e)) ||
        (rc = cpu_dnnl_check(dnnl_primitive_attr_set_post_ops(attr, po), "post_ops", st, e)))
        goto out;
    if (dnnl_primitive_desc_create(&pd, &md, attr, P->ctx->eng, NULL) != dnnl_success) {
        pd = NULL;
        goto out; /* not available here: the reference kernel runs it */
    }
    const dnnl_memory_desc_t *q_w = dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
    dnnl_memory_t m_src = NULL, m_w = NULL, m_b = NULL, m_dst = NULL;
    if ((rc = cpu_value_view_as(P, x, &src_md, &src_md, s, &m_src, e)) ||
        (rc = cpu_weights(P, w, &w_view, q_w, s, &m_w, e)))
        goto out;
    if (b >= 0 && (rc = cpu_weights(P, b, &b_md, &b_md, s, &m_b, e)))
        goto out;
    if ((rc = cpu_set_main(P, y, &y_plain, -1, e)))
        goto out;
    struct cpu_val *cy = &P->v[y];
    if (cy->main.buf >= 0)
        rc = cpu_mem_on_buf(P, &dst_md, cy->main.buf, &m_dst, e);
    else
        rc = cpu_mem_on_slot(P, &dst_md, &cy->main.ptr, 1, &m_dst, e);
    if (rc)
        goto out;
    dnnl_exec_arg_t args[4] = {{DNNL_ARG_SRC, m_src}, {DNNL_ARG_WEIGHTS, m_w},
                               {DNNL_ARG_DST, m_dst}, {DNNL_ARG_BIAS, m_b}};
    if ((rc = cpu_add_prim(P, pd, args, b >= 0 ? 4 : 3, st, e)))
        goto out;
    *done = 1;
out:
    if (pd)
        dnnl_primitive_desc_destroy(pd);
    if (po)
        dnnl_post_ops_destroy(po);
    if (attr)
        dnnl_primitive_attr_destroy(attr);
    return rc;
}

/*
 * Concat of values a convolution left in blocked layouts (SqueezeNet's fire
 * modules) stays blocked as a oneDNN concat instead of reordering every
 * input to plain and back; plain inputs use the reference kernel.
 */
int cpu_compile_concat(struct cpu_plan *P, int s, int *done, struct cerr *e)
{
    const struct plan_graph *g = P->g;
    const struct plan_step *st = &g->steps[s];
    int y = st->out[0], any_blocked = 0, rc;
    const struct plan_value *Y = &g->vals[y];
    *done = 0;
    if (Y->dtype != DT_FP32 || Y->ndim < 3 || Y->ndim > 5 || st->n_in > CPU_MAX_ARGS - 2 ||
        Y->nbytes == 0)
        return CORRAL_OK;
    dnnl_memory_desc_t srcs[CPU_MAX_ARGS], dst_md;
    for (int k = 0; k < st->n_in; k++) {
        int v = st->in[k];
        if (v < 0 || !P->v[v].main.has_md || g->vals[v].dtype != DT_FP32 || !g->vals[v].nbytes)
            return CORRAL_OK;
        any_blocked |= P->v[v].blocked;
        srcs[k] = P->v[v].main.md;
    }
    if (!any_blocked)
        return CORRAL_OK;
    if (Y->output_index >= 0)
        rc = md_tag(&dst_md, Y->ndim, Y->dims, plain_w[Y->ndim], e, st);
    else
        rc = md_any(&dst_md, Y->ndim, Y->dims, e, st);
    if (rc)
        return rc;
    dnnl_primitive_desc_t pd = NULL;
    dnnl_primitive_attr_t attr = NULL;
    if ((rc = cpu_dnnl_check(dnnl_primitive_attr_create(&attr), "attr", st, e)))
        return rc;
    dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user);
    if (dnnl_concat_primitive_desc_create(&pd, &dst_md, st->n_in, st->a.axis, srcs, attr,
                                          P->ctx->eng) != dnnl_success) {
        dnnl_primitive_attr_destroy(attr);
        return CORRAL_OK;
    }
    dnnl_exec_arg_t args[CPU_MAX_ARGS];
    const dnnl_memory_desc_t *q_dst = dnnl_primitive_desc_query_md(pd, dnnl_query_dst_md, 0);
    for (int k = 0; k < st->n_in; k++) {
        dnnl_memory_t m = NULL;
        if ((rc = cpu_value_as(P, st->in[k], &srcs[k], s, &m, e)))
            goto out;
        args[k] = (dnnl_exec_arg_t){DNNL_ARG_MULTIPLE_SRC + k, m};
    }
    if ((rc = cpu_set_main(P, y, q_dst, -1, e)) || (rc = cpu_form_mem(P, y, &P->v[y].main, e)))
        goto out;
    args[st->n_in] = (dnnl_exec_arg_t){DNNL_ARG_DST, P->v[y].main.mem};
    if ((rc = cpu_add_prim(P, pd, args, st->n_in + 1, st, e)))
        goto out;
    *done = 1;
out:
    dnnl_primitive_desc_destroy(pd);
    dnnl_primitive_attr_destroy(attr);
    return rc;
}
