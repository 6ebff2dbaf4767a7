/*
 * Warm-up: before a replica says it is ready, every bucket the batcher can run (each
 * batch bucket with every combination of variable-dimension buckets) has its plan
 * built, pinned in the engine and run once on pad-filled inputs. A first request then
 * finds its plan made and its memory planned, and a model that cannot be batched as
 * configured (an output that loses the batch axis, or a dimension that does not
 * follow the input config.json says it follows) fails at start rather than on live
 * traffic. The slowest bucket's time sets the stall limit that liveness uses.
 */
#include "batcher_internal.h"

#include <string.h>

#include "log.h"

#define WARMUP_MAX_RUNS 4096

/*
 * Builds and pins the bucket's plan (engine_prepare), runs it once with pad-filled
 * inputs and checks what comes out. *arena accumulates the plans' working memory.
 */
static int warm_one(struct batcher *b, struct slot *s, uint64_t *ns, size_t *arena, struct cerr *e)
{
    int rc;
    for (size_t i = 0; i < b->n_in; i++) {
        const struct model_io *io = &b->cfg->inputs[i];
        struct tensor *t = &s->in[i];
        if ((rc = batcher_bucket_input(b, s, i, e)))
            return rc;
        batcher_fill(t->data, io->dtype, t->nbytes / dtype_size(io->dtype), b->bc->pad_value[i]);
    }
    struct engine_plan_info info;
    if ((rc = engine_prepare(b->eng, s->in, b->n_in, &info, e)))
        return rc;
    *arena += info.arena_bytes;
    uint64_t t0 = batcher_now_ns();
    rc = engine_run(b->eng, s->in, b->n_in, s->out, e);
    *ns = batcher_now_ns() - t0;
    if (rc == CORRAL_OK)
        batcher_note_run_time(b, batcher_input_elems(s->in, b->n_in), *ns);
    for (size_t j = 0; !rc && j < b->n_out; j++) {
        const struct tensor *o = &s->out[j];
        char shape[96];
        if (o->ndim < 1 || o->dims[0] != s->bucket_rows)
            rc = cerr_set(e, CORRAL_EINVAL, "warm-up: output '%s' came out with shape %s for a batch "
                          "of %lld rows: the model does not keep the batch axis, so it cannot be "
                          "batched (set max_batch_size 0)", b->cfg->outputs[j].name,
                          tensor_shape_str(o->dims, o->ndim, shape, sizeof shape),
                          (long long)s->bucket_rows);
        for (int d = 1; !rc && d < o->ndim; d++) {
            const struct model_follow *f = &b->bc->follow[j][d];
            if (f->kind == MODEL_FOLLOW_INPUT && o->dims[d] != s->in[f->input].dims[f->dim])
                rc = cerr_set(e, CORRAL_EINVAL, "warm-up: output '%s' dimension %d is %lld but "
                              "config.json says it follows input '%s' dimension %d, which is %lld",
                              b->cfg->outputs[j].name, d, (long long)o->dims[d],
                              b->cfg->inputs[f->input].name, f->dim,
                              (long long)s->in[f->input].dims[f->dim]);
        }
    }
    for (size_t j = 0; j < b->n_out; j++)
        tensor_release(&s->out[j]);
    return rc;
}

int batcher_warmup(struct batcher *b, struct cerr *e)
{
    struct slot *s = &b->slots[0];
    uint64_t worst = 0, ns;
    size_t runs = 0, arena = 0;
    int rc = CORRAL_OK;
    if (b->batching) {
        /* Every batch bucket times every combination of variable-dimension buckets; an
         * unbucketed variable dimension is warmed at size 1 (its shapes are not known). */
        const struct model_batching *bc = b->bc;
        size_t idx[MODEL_MAX_VAR_DIMS] = {0}, shapes = bc->n_batch_buckets;
        for (size_t k = 0; k < bc->n_var_dims; k++)
            if (bc->var_dims[k].n_buckets && shapes <= WARMUP_MAX_RUNS)
                shapes *= bc->var_dims[k].n_buckets;
        if (shapes > WARMUP_MAX_RUNS)
            return cerr_set(e, CORRAL_EINVAL, "config.json: the batching buckets make more than %d "
                            "shapes to warm up; use fewer buckets", WARMUP_MAX_RUNS);
        /* Every bucket's plan stays pinned; room is left for the shapes of unbatched
         * variable dimensions, which are planned on first use. */
        engine_set_max_plans(b->eng, shapes + 16);
        for (size_t bb = 0; bb < bc->n_batch_buckets; bb++) {
            memset(idx, 0, sizeof idx);
            for (;;) {
                s->bucket_rows = bc->batch_buckets[bb];
                for (size_t k = 0; k < bc->n_var_dims; k++)
                    s->key[k] = bc->var_dims[k].n_buckets ? bc->var_dims[k].buckets[idx[k]] : 1;
                if (++runs > WARMUP_MAX_RUNS)
                    return cerr_set(e, CORRAL_EINVAL, "config.json: the batching buckets make more "
                                    "than %d shapes to warm up; use fewer buckets",
                                    WARMUP_MAX_RUNS);
                if ((rc = warm_one(b, s, &ns, &arena, e)))
                    return rc;
                if (ns > worst)
                    worst = ns;
                size_t k = 0;
                while (k < bc->n_var_dims) {
                    size_t n = bc->var_dims[k].n_buckets ? bc->var_dims[k].n_buckets : 1;
                    if (++idx[k] < n)
                        break;
                    idx[k++] = 0;
                }
                if (k == bc->n_var_dims)
                    break;
            }
        }
        LOG_INFO("warm-up: %zu bucket plans built and run, slowest %.3f ms, arenas %.1f MiB in all",
                 runs, (double)worst / 1e6, (double)arena / 1048576.0);
    }
    /* A run may legitimately take the slowest bucket's time; four times that (at least
     * STALL_FLOOR_MS) without progress means the executor is stuck. */
    if (b->opt.stall_ms <= 0) {
        int64_t ms = (int64_t)(4 * worst / 1000000u);
        b->stall_ms = ms > STALL_FLOOR_MS ? ms : STALL_FLOOR_MS;
    }
    b->warmed = 1;
    return rc;
}

size_t batcher_bucket_count(const struct batcher *b)
{
    if (!b->batching)
        return 0;
    size_t shapes = b->bc->n_batch_buckets;
    for (size_t k = 0; k < b->bc->n_var_dims; k++)
        if (b->bc->var_dims[k].n_buckets)
            shapes *= b->bc->var_dims[k].n_buckets;
    return shapes;
}

