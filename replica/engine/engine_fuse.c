#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine_internal.h"

/*
 * Load-time graph rewrites, done once for every plan: nodes whose inputs are
 * all constants are evaluated (weights transposed or reshaped by the
 * exporter), and a BatchNormalization that only follows a Conv is folded
 * into the Conv's weights and bias. Constants nothing reads any more are
 * freed, so the engine holds each weight once.
 */

int eng_eval_step(struct plan_step *st, const struct plan_value *const *in,
                  struct plan_value *const *out, int opset, struct tensor *res, struct cerr *e)
{
    struct tensor tin[64], *tout = res;
    struct eng_infer c = {.st = st, .in = in, .out = out, .opset = opset};
    const struct eng_opdef *d = eng_opdef(st->op);
    int rc;
    if (st->n_in > 64 || st->n_out > 64)
        return cerr_set(e, CORRAL_EUNSUPP, "%s: too many inputs or outputs to fold", st->label);
    if ((rc = d->infer(&c, e)))
        return rc;
    for (int k = 0; k < st->n_in; k++) {
        memset(&tin[k], 0, sizeof tin[k]);
        if (!in[k])
            continue;
        tin[k].name = in[k]->name;
        tin[k].dtype = in[k]->dtype;
        tin[k].ndim = in[k]->ndim;
        memcpy(tin[k].dims, in[k]->dims, sizeof tin[k].dims);
        tin[k].data = (void *)in[k]->data;
        tin[k].nbytes = in[k]->nbytes;
    }
    for (int k = 0; k < st->n_out; k++) {
        memset(&tout[k], 0, sizeof tout[k]);
        if (!out[k])
            continue;
        if ((rc = tensor_alloc(&tout[k], out[k]->name, out[k]->dtype, out[k]->dims, out[k]->ndim,
                               e)))
            goto fail;
    }
    if ((rc = eng_kernel_run(st, tin, tout, e)))
        goto fail;
    return CORRAL_OK;
fail:
    for (int k = 0; k < st->n_out; k++)
        tensor_release(&tout[k]);
    return rc;
}

static void count_uses(struct engine *eng)
{
    for (size_t i = 0; i < eng->n_vals; i++)
        eng->vals[i].n_uses = 0;
    for (size_t i = 0; i < eng->n_nodes; i++) {
        const struct eng_node *nd = &eng->nodes[i];
        if (nd->dead)
            continue;
        for (int k = 0; k < nd->n_in; k++)
            if (nd->in[k] >= 0)
                eng->vals[nd->in[k]].n_uses++;
    }
    for (size_t i = 0; i < eng->n_outputs; i++)
        eng->vals[eng->output_val[i]].n_uses++;
}

static void const_view(const struct eng_value *v, struct plan_value *pv)
{
    memset(pv, 0, sizeof *pv);
    pv->name = v->name;
    pv->kind = PV_CONST;
    pv->dtype = v->init.dtype;
    pv->ndim = v->init.ndim;
    memcpy(pv->dims, v->init.dims, sizeof pv->dims);
    pv->nbytes = v->init.nbytes;
    pv->data = v->init.data;
}

/* Ops worth evaluating at load: their result is no larger than a few times the inputs. */
static int foldable(enum eng_op op)
{
    switch (op) {
    case EOP_CONSTANTOFSHAPE:
    case EOP_EXPAND:
    case EOP_TILE:
    case EOP_RANGE:
    case EOP_CONV:
    case EOP_CONV_TRANSPOSE:
    case EOP_MAXPOOL:
    case EOP_AVGPOOL:
    case EOP_GLOBALAVGPOOL:
    case EOP_GLOBALMAXPOOL: return 0;
    default: return 1;
    }
}

static int fold_constants(struct engine *eng, struct cerr *e)
{
    for (size_t i = 0; i < eng->n_nodes; i++) {
        struct eng_node *nd = &eng->nodes[i];
        if (nd->dead || !foldable(nd->op) || nd->n_in == 0 || nd->n_in > 64 || nd->n_out > 64)
            continue;
        int all = 1;
        for (int k = 0; k < nd->n_in && all; k++)
            all = nd->in[k] < 0 || eng->vals[nd->in[k]].kind == EVK_CONST;
        if (!all)
            continue;
        struct plan_value pin[64], pout[64];
        const struct plan_value *inp[64];
        struct plan_value *outp[64];
        struct tensor res[64];
        for (int k = 0; k < nd->n_in; k++) {
            inp[k] = NULL;
            if (nd->in[k] >= 0) {
                const_view(&eng->vals[nd->in[k]], &pin[k]);
                inp[k] = &pin[k];
            }
        }
        for (int k = 0; k < nd->n_out; k++) {
            outp[k] = NULL;
            memset(&pout[k], 0, sizeof pout[k]);
            if (nd->out[k] >= 0) {
                pout[k].name = eng->vals[nd->out[k]].name;
                outp[k] = &pout[k];
            }
        }
        struct plan_step st = {.op = nd->op, .label = nd->label, .a = nd->a, .n_in = nd->n_in,
                               .in = nd->in, .n_out = nd->n_out, .out = nd->out};
        struct cerr e2 = {0};
        /* A node that fails here may still be valid for a plan (or fail there, clearly). */
        if (eng_eval_step(&st, inp, outp, eng->opset, res, &e2))
            continue;
        for (int k = 0; k < nd->n_out; k++) {
            if (nd->out[k] < 0)
                continue;
            struct eng_value *v = &eng->vals[nd->out[k]];
            v->kind = EVK_CONST;
            v->init = res[k];
            v->init.name = v->name;
            v->dtype = res[k].dtype;
        }
        nd->dead = 1;
    }
    (void)e;
    return CORRAL_OK;
}

/* Adds a constant value with an owned tensor (moved in). */
static int add_const(struct engine *eng, const char *base, const char *suffix, struct tensor *t,
                     int *out, struct cerr *e)
{
    char name[512];
    if (eng->n_vals >= eng->cap_vals)
        return cerr_set(e, CORRAL_EINTERNAL, "value table full while folding");
    snprintf(name, sizeof name, "%s/%s", base, suffix);
    struct eng_value *v = &eng->vals[eng->n_vals];
    memset(v, 0, sizeof *v);
    if (!(v->name = strdup(name)))
        return cerr_set(e, CORRAL_ENOMEM, "out of memory");
    /* Not entered in the name map: nothing in the file can refer to it. */
    v->kind = EVK_CONST;
    v->dtype = t->dtype;
    v->init = *t;
    v->init.name = v->name;
    *out = (int)eng->n_vals++;
    return CORRAL_OK;
}

static const struct tensor *const_of(const struct engine *eng, int v)
{
    if (v < 0 || eng->vals[v].kind != EVK_CONST || eng->vals[v].dtype != DT_FP32)
        return NULL;
    return &eng->vals[v].init;
}

static int fold_batchnorm(struct engine *eng, struct cerr *e)
{
    count_uses(eng);
    int *producer = calloc(eng->n_vals + 1, sizeof *producer);
    int rc = CORRAL_OK;
    if (!producer)
        return cerr_set(e, CORRAL_ENOMEM, "out of memory");
    for (size_t i = 0; i < eng->n_vals; i++)
        producer[i] = -1;
    for (size_t i = 0; i < eng->n_nodes; i++)
        if (!eng->nodes[i].dead)
            for (int k = 0; k < eng->nodes[i].n_out; k++)
                if (eng->nodes[i].out[k] >= 0)
                    producer[eng->nodes[i].out[k]] = (int)i;
    for (size_t i = 0; i < eng->n_nodes; i++) {
        struct eng_node *bn = &eng->nodes[i];
        if (bn->dead || bn->op != EOP_BATCHNORM || bn->n_out != 1)
            continue;
        int x = bn->in[0];
        int pi = producer[x];
        if (pi < 0 || eng->vals[x].n_uses != 1 || eng->vals[x].is_output)
            continue;
        struct eng_node *cv = &eng->nodes[pi];
        if (cv->op != EOP_CONV)
            continue;
        const struct tensor *W = const_of(eng, cv->in[1]);
        const struct tensor *B = cv->n_in > 2 ? const_of(eng, cv->in[2]) : NULL;
        const struct tensor *sc = const_of(eng, bn->in[1]), *bb = const_of(eng, bn->in[2]);
        const struct tensor *mu = const_of(eng, bn->in[3]), *var = const_of(eng, bn->in[4]);
        if (!W || (cv->n_in > 2 && cv->in[2] >= 0 && !B) || !sc || !bb || !mu || !var ||
            W->ndim < 3)
            continue;
        int64_t M = W->dims[0], per = eng_numel(W->dims + 1, W->ndim - 1);
        if (eng_numel(sc->dims, sc->ndim) != M || eng_numel(bb->dims, bb->ndim) != M ||
            eng_numel(mu->dims, mu->ndim) != M || eng_numel(var->dims, var->ndim) != M ||
            (B && eng_numel(B->dims, B->ndim) != M))
            continue;
        struct tensor nw, nb;
        if ((rc = tensor_alloc(&nw, NULL, DT_FP32, W->dims, W->ndim, e)))
            goto done;
        int64_t bd[1] = {M};
        if ((rc = tensor_alloc(&nb, NULL, DT_FP32, bd, 1, e))) {
            tensor_release(&nw);
            goto done;
        }
        const float *w = W->data, *s = sc->data, *b0 = B ? B->data : NULL, *be = bb->data,
                    *m = mu->data, *vr = var->data;
        float *ow = nw.data, *ob = nb.data;
        for (int64_t o = 0; o < M; o++) {
            float k = s[o] / sqrtf(vr[o] + bn->a.epsilon);
            for (int64_t j = 0; j < per; j++)
                ow[o * per + j] = w[o * per + j] * k;
            ob[o] = ((b0 ? b0[o] : 0.0f) - m[o]) * k + be[o];
        }
        int wv, bv;
        if ((rc = add_const(eng, eng->vals[bn->out[0]].name, "folded_weight", &nw, &wv, e))) {
            tensor_release(&nw);
            tensor_release(&nb);
            goto done;
        }
        if ((rc = add_const(eng, eng->vals[bn->out[0]].name, "folded_bias", &nb, &bv, e))) {
            tensor_release(&nb);
            goto done;
        }
        if (cv->n_in < 3) {
            int *ni = realloc(cv->in, 4 * sizeof *ni);
            if (!ni) {
                rc = cerr_set(e, CORRAL_ENOMEM, "out of memory");
                goto done;
            }
            cv->in = ni;
            cv->n_in = 3;
        }
        /*
         * The unfused weight, bias and BatchNorm parameters are freed as soon
         * as nothing reads them any more, so at most one layer's weights exist
         * twice while the model is folded.
         */
        int gone[6] = {cv->in[1], cv->n_in > 2 ? cv->in[2] : -1, bn->in[1], bn->in[2], bn->in[3],
                       bn->in[4]};
        cv->in[1] = wv;
        cv->in[2] = bv;
        cv->out[0] = bn->out[0];
        bn->dead = 1;
        for (int k = 0; k < 6; k++) {
            struct eng_value *ov = gone[k] >= 0 ? &eng->vals[gone[k]] : NULL;
            if (ov && ov->n_uses > 0 && --ov->n_uses == 0 && !ov->is_output)
                tensor_release(&ov->init);
        }
    }
done:
    free(producer);
    return rc;
}

int engine_graph_optimize(struct engine *eng, struct cerr *e)
{
    int rc;
    if ((rc = fold_constants(eng, e)) || (rc = fold_batchnorm(eng, e)))
        return rc;
    count_uses(eng);
    for (size_t i = 0; i < eng->n_vals; i++) {
        struct eng_value *v = &eng->vals[i];
        if (v->kind == EVK_CONST && !v->n_uses)
            tensor_release(&v->init);
    }
    return CORRAL_OK;
}
