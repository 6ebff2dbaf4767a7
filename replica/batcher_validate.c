/*
 * Checks an infer request against the model before it may enter the queue, and turns
 * it into the batcher's own record (struct breq): tensor views in model input order,
 * the padded size of each variable dimension (the key that decides which requests
 * may share a batch), the outputs asked for, the deadline and the priority level.
 * Everything the batcher thread later relies on without checking is established
 * here, on the I/O thread that read the request, so that a bad request is answered
 * at once and never costs a batch. It runs without the batcher's lock: it reads only
 * the model's config, which does not change while the batcher exists.
 */
#include "batcher_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wire.h"

static int param_int(const Corral__Parameter *p, int64_t *out)
{
    switch (p->value_case) {
    case CORRAL__PARAMETER__VALUE_INT64_VALUE: *out = p->int64_value; return 0;
    case CORRAL__PARAMETER__VALUE_DOUBLE_VALUE:
        if (p->double_value != p->double_value || p->double_value < -9e18 || p->double_value > 9e18)
            return -1;
        *out = (int64_t)p->double_value;
        return 0;
    case CORRAL__PARAMETER__VALUE_STRING_VALUE: {
        char *end;
        if (!p->string_value || !p->string_value[0])
            return -1;
        long long v = strtoll(p->string_value, &end, 10);
        if (*end)
            return -1;
        *out = v;
        return 0;
    }
    default: return -1;
    }
}

/* Checks one request against the model and fills r's views, key and policy fields. */
int batcher_validate(struct batcher *b, struct breq *r, enum batcher_reject *why, struct cerr *e)
{
    const struct model_config *cfg = b->cfg;
    const struct model_batching *bc = b->bc;
    const Corral__InferRequest *ir = r->msg->infer;
    *why = BATCHER_REJECT_INVALID;
    if (ir->model_name && ir->model_name[0] && strcmp(ir->model_name, cfg->name) != 0)
        return cerr_set(e, CORRAL_ENOTFOUND, "this replica serves model '%s', not '%.128s'",
                        cfg->name, ir->model_name);
    if (ir->model_version && !model_version_matches(cfg, ir->model_version))
        return cerr_set(e, CORRAL_ENOTFOUND, "model '%s' version '%.64s' is not served here (serving %s)",
                        cfg->name, ir->model_version, cfg->version_str);
    if (ir->n_inputs != b->n_in)
        return cerr_set(e, CORRAL_EINVAL, "request has %zu inputs, model '%s' takes %zu", ir->n_inputs,
                        cfg->name, b->n_in);
    int seen[MODEL_MAX_IO] = {0};
    for (size_t k = 0; k < ir->n_inputs; k++) {
        const char *nm = ir->inputs[k]->name ? ir->inputs[k]->name : "";
        size_t i;
        for (i = 0; i < b->n_in; i++)
            if (strcmp(cfg->inputs[i].name, nm) == 0)
                break;
        if (i == b->n_in)
            return cerr_set(e, CORRAL_EINVAL, "request input '%.128s' is not an input of model '%s'",
                            nm, cfg->name);
        if (seen[i]++)
            return cerr_set(e, CORRAL_EINVAL, "request input '%.128s' is given twice", nm);
        wire_tensor_view(ir->inputs[k], &r->in[i]);
        r->in[i].name = cfg->inputs[i].name;
        const struct model_io *io = &cfg->inputs[i];
        char got[96], want[96];
        if (r->in[i].dtype != io->dtype)
            return cerr_set(e, CORRAL_EINVAL, "input '%s' has datatype %s, model expects %s", io->name,
                            dtype_name(r->in[i].dtype), dtype_name(io->dtype));
        int bad = r->in[i].ndim != io->ndim;
        for (int d = 0; !bad && d < io->ndim; d++)
            bad = io->dims[d] >= 0 && r->in[i].dims[d] != io->dims[d];
        if (bad)
            return cerr_set(e, CORRAL_EINVAL, "input '%s' has shape %s, model expects %s (-1 = any)",
                            io->name, tensor_shape_str(r->in[i].dims, r->in[i].ndim, got, sizeof got),
                            tensor_shape_str(io->dims, io->ndim, want, sizeof want));
    }
    r->rows = 1; /* without batching a request is one unit of work, whatever its shape */
    if (b->batching) {
        r->rows = r->in[0].dims[0];
        for (size_t i = 0; i < b->n_in; i++) {
            if (r->in[i].dims[0] != r->rows || r->rows < 1)
                return cerr_set(e, CORRAL_EINVAL, "input '%s' has %lld rows on the batch axis, "
                                "expected at least 1 and the same count for every input",
                                cfg->inputs[i].name, (long long)r->in[i].dims[0]);
        }
        for (size_t k = 0; k < bc->n_var_dims; k++) {
            const struct model_var_dim *vd = &bc->var_dims[k];
            int64_t s = r->in[vd->input].dims[vd->dim];
            if (s < 1)
                return cerr_set(e, CORRAL_EINVAL, "input '%s' dimension %d is %lld, expected at least 1",
                                cfg->inputs[vd->input].name, vd->dim, (long long)s);
            r->key[k] = vd->n_buckets ? batcher_pick_bucket(vd->buckets, vd->n_buckets, s) : s;
            if (r->key[k] < 0) {
                *why = BATCHER_REJECT_TOO_LARGE;
                return cerr_set(e, CORRAL_ETOOLARGE, "input '%s' dimension %d is %lld, larger than "
                                "its largest bucket %lld",
                                cfg->inputs[vd->input].name, vd->dim, (long long)s,
                                (long long)vd->buckets[vd->n_buckets - 1]);
            }
        }
    }
    r->out_mask = ir->n_outputs ? 0 : (b->n_out >= 64 ? ~(uint64_t)0 : (((uint64_t)1 << b->n_out) - 1));
    for (size_t k = 0; k < ir->n_outputs; k++) {
        const char *nm = ir->outputs[k]->name ? ir->outputs[k]->name : "";
        size_t j;
        for (j = 0; j < b->n_out; j++)
            if (strcmp(cfg->outputs[j].name, nm) == 0)
                break;
        if (j == b->n_out) {
            char names[256] = "";
            size_t off = 0;
            for (size_t q = 0; q < b->n_out && off < sizeof names; q++)
                off += (size_t)snprintf(names + off, sizeof names - off, "%s%s", q ? ", " : "",
                                        cfg->outputs[q].name);
            return cerr_set(e, CORRAL_EINVAL, "unknown output '%.128s' requested (model outputs: %s)",
                            nm, names);
        }
        if (r->out_mask & ((uint64_t)1 << j))
            return cerr_set(e, CORRAL_EINVAL, "output '%.128s' is requested twice", nm);
        r->out_mask |= (uint64_t)1 << j;
    }
    int64_t timeout = bc->default_timeout_us, prio = bc->default_priority;
    for (size_t k = 0; k < ir->n_parameters; k++) {
        const Corral__Parameter *p = ir->parameters[k];
        int64_t v;
        if (!p->key)
            continue;
        if (strcmp(p->key, "timeout") == 0) {
            if (param_int(p, &v) || v < 0)
                return cerr_set(e, CORRAL_EINVAL, "parameter 'timeout' must be a number of "
                                "microseconds >= 0");
            /* A request may only tighten the model's deadline, never extend it. */
            if (v > 0 && (timeout == 0 || v < timeout))
                timeout = v;
        } else if (strcmp(p->key, "priority") == 0) {
            if (param_int(p, &v) || v < 1 || v > bc->priority_levels)
                return cerr_set(e, CORRAL_EINVAL, "parameter 'priority' must be an integer from 1 "
                                "(highest) to %d", bc->priority_levels);
            prio = v;
        } else if (b->opt.test_hooks && strcmp(p->key, "corral_test_stall_ms") == 0) {
            if (param_int(p, &v) || v < 0 || v > 60000)
                return cerr_set(e, CORRAL_EINVAL, "parameter 'corral_test_stall_ms' must be 0 to 60000");
            r->stall_ms = (uint64_t)v;
        }
    }
    r->prio = (int)prio - 1;
    r->enq_ns = batcher_now_ns();
    r->deadline_ns = timeout > 0 ? r->enq_ns + (uint64_t)timeout * 1000u : 0;
    return CORRAL_OK;
}
