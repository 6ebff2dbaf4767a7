/*
 * The batch's bytes: padding requests into a bucket and cutting the outputs back.
 * The engine runs prebuilt plans for fixed shapes (the buckets), so a batch of rows
 * from several requests is copied into one buffer per input of the bucket's shape,
 * filled with the input's pad value wherever no request has data, and each request's
 * outputs are cut out of the batch's outputs afterwards, following the dimensions
 * config.json says they follow. Without batching nothing is copied: the request's own
 * tensors go to the engine and its outputs come back as they are.
 *
 * The slot's input buffers only grow, so that a replica under steady load does no
 * allocation per batch. These functions run on the batcher or compute thread without
 * mu; batcher_copy_block and batcher_fill are public for the unit tests.
 */
#include "batcher_internal.h"

#include <stdlib.h>
#include <string.h>

void batcher_copy_block(void *dst, const int64_t *ddims, int64_t drow, const void *src,
                        const int64_t *sdims, int64_t srow, const int64_t *extent, int ndim,
                        size_t es)
{
    int64_t dstride[TENSOR_MAX_DIMS], sstride[TENSOR_MAX_DIMS], idx[TENSOR_MAX_DIMS];
    if (ndim < 1)
        return;
    for (int k = 0; k < ndim; k++)
        if (extent[k] <= 0)
            return;
    dstride[ndim - 1] = sstride[ndim - 1] = 1;
    for (int k = ndim - 2; k >= 0; k--) {
        dstride[k] = dstride[k + 1] * ddims[k + 1];
        sstride[k] = sstride[k + 1] * sdims[k + 1];
    }
    /* The innermost dimension is one contiguous run on both sides: copy it in one go
     * and walk the outer dimensions like an odometer. */
    size_t run = (size_t)extent[ndim - 1] * es;
    memset(idx, 0, sizeof idx);
    for (;;) {
        int64_t doff = (drow + idx[0]) * dstride[0], soff = (srow + idx[0]) * sstride[0];
        for (int k = 1; k < ndim - 1; k++) {
            doff += idx[k] * dstride[k];
            soff += idx[k] * sstride[k];
        }
        if (ndim == 1) {
            memcpy((char *)dst + (size_t)drow * es, (const char *)src + (size_t)srow * es, run);
            return;
        }
        memcpy((char *)dst + (size_t)doff * es, (const char *)src + (size_t)soff * es, run);
        int k = ndim - 2;
        while (k >= 0 && ++idx[k] == extent[k])
            idx[k--] = 0;
        if (k < 0)
            return;
    }
}

void batcher_fill(void *dst, enum dtype dt, size_t n, double v)
{
    size_t es = dtype_size(dt);
    if (v == 0 || es == 0) {
        memset(dst, 0, n * es);
        return;
    }
    unsigned char one[8];
    switch (dt) {
    case DT_FP32: { float x = (float)v; memcpy(one, &x, 4); break; }
    case DT_FP64: memcpy(one, &v, 8); break;
    case DT_INT8: { int8_t x = (int8_t)v; memcpy(one, &x, 1); break; }
    case DT_INT16: { int16_t x = (int16_t)v; memcpy(one, &x, 2); break; }
    case DT_INT32: { int32_t x = (int32_t)v; memcpy(one, &x, 4); break; }
    case DT_INT64: { int64_t x = (int64_t)v; memcpy(one, &x, 8); break; }
    case DT_UINT8: case DT_BOOL: { uint8_t x = (uint8_t)v; memcpy(one, &x, 1); break; }
    case DT_UINT16: { uint16_t x = (uint16_t)v; memcpy(one, &x, 2); break; }
    case DT_UINT32: { uint32_t x = (uint32_t)v; memcpy(one, &x, 4); break; }
    case DT_UINT64: { uint64_t x = (uint64_t)v; memcpy(one, &x, 8); break; }
    default: memset(dst, 0, n * es); return;
    }
    for (size_t i = 0; i < n; i++)
        memcpy((char *)dst + i * es, one, es);
}

static int ensure_cap(struct slot *s, size_t i, size_t n, struct cerr *e)
{
    if (s->cap[i] >= n)
        return CORRAL_OK;
    void *p = realloc(s->buf[i], n ? n : 1);
    if (!p)
        return cerr_set(e, CORRAL_ENOMEM, "out of memory for a %zu byte batch buffer", n);
    s->buf[i] = p;
    s->cap[i] = n;
    return CORRAL_OK;
}

/* Shapes of the bucket the slot runs: batch bucket rows and the group's padded sizes. */
static void bucket_shape(const struct batcher *b, const struct slot *s, size_t i, int64_t *dims)
{
    const struct model_io *io = &b->cfg->inputs[i];
    memcpy(dims, io->dims, sizeof(int64_t) * (size_t)io->ndim);
    dims[0] = s->bucket_rows;
    for (size_t k = 0; k < b->bc->n_var_dims; k++)
        if ((size_t)b->bc->var_dims[k].input == i)
            dims[b->bc->var_dims[k].dim] = s->key[k];
}

int batcher_bucket_input(const struct batcher *b, struct slot *s, size_t i, struct cerr *e)
{
    const struct model_io *io = &b->cfg->inputs[i];
    struct tensor *t = &s->in[i];
    size_t nbytes;
    int rc;
    memset(t, 0, sizeof *t);
    t->name = io->name;
    t->dtype = io->dtype;
    t->ndim = io->ndim;
    bucket_shape(b, s, i, t->dims);
    if ((rc = tensor_nbytes(io->dtype, t->dims, t->ndim, &nbytes, e)) ||
        (rc = ensure_cap(s, i, nbytes, e)))
        return rc;
    t->data = s->buf[i];
    t->nbytes = nbytes;
    return CORRAL_OK;
}

/* Builds the slot's padded inputs from its parts (or borrows them when not batching). */
int batcher_gather(struct batcher *b, struct slot *s, struct cerr *e)
{
    s->real_el = s->padded_el = 0;
    if (!b->batching) {
        struct breq *r = s->parts[0].r;
        s->bucket_rows = 1;
        for (size_t i = 0; i < b->n_in; i++) {
            s->in[i] = r->in[i];
            s->in[i].owned = 0;
            int64_t n = 0;
            tensor_numel(r->in[i].dims, r->in[i].ndim, &n, NULL);
            s->real_el += (uint64_t)n;
        }
        s->padded_el = s->real_el;
        return CORRAL_OK;
    }
    s->bucket_rows = batcher_pick_bucket(b->bc->batch_buckets, b->bc->n_batch_buckets, s->rows);
    for (size_t i = 0; i < b->n_in; i++) {
        const struct model_io *io = &b->cfg->inputs[i];
        struct tensor *t = &s->in[i];
        size_t es = dtype_size(io->dtype);
        int64_t numel;
        int rc = batcher_bucket_input(b, s, i, e);
        if (rc)
            return rc;
        tensor_numel(t->dims, t->ndim, &numel, NULL);
        s->padded_el += (uint64_t)numel;
        int64_t real = 0;
        for (size_t k = 0; k < s->n_parts; k++) {
            int64_t n = 0;
            tensor_numel(s->parts[k].r->in[i].dims + 1, io->ndim - 1, &n, NULL);
            real += n * s->parts[k].rows;
        }
        s->real_el += (uint64_t)real;
        /* Pad only when something is padded: full exact buckets are plain copies. */
        if (real != numel)
            batcher_fill(t->data, io->dtype, (size_t)numel, b->bc->pad_value[i]);
        for (size_t k = 0; k < s->n_parts; k++) {
            const struct bpart *pt = &s->parts[k];
            int64_t ext[TENSOR_MAX_DIMS];
            memcpy(ext, pt->r->in[i].dims, sizeof ext);
            ext[0] = pt->rows;
            batcher_copy_block(t->data, t->dims, pt->brow, pt->r->in[i].data, pt->r->in[i].dims,
                               pt->row0, ext, io->ndim, es);
        }
    }
    return CORRAL_OK;
}

/* Cuts part pt's rows out of the batch outputs into its request's own outputs. */
int batcher_scatter_part(struct batcher *b, struct slot *s, const struct bpart *pt, struct cerr *e)
{
    struct breq *r = pt->r;
    for (size_t j = 0; j < b->n_out; j++) {
        if (!(r->out_mask & ((uint64_t)1 << j)))
            continue;
        const struct tensor *o = &s->out[j];
        int64_t want[TENSOR_MAX_DIMS];
        if (!b->batching) {
            r->out[j] = *o;
            s->out[j].owned = 0;
            s->out[j].data = NULL;
            r->out[j].name = b->cfg->outputs[j].name;
            continue;
        }
        if (o->ndim < 1 || o->dims[0] != s->bucket_rows)
            return cerr_set(e, CORRAL_EINTERNAL, "output '%s' has %lld rows for a batch of %lld: "
                            "the model does not keep the batch axis", b->cfg->outputs[j].name,
                            (long long)(o->ndim ? o->dims[0] : 0), (long long)s->bucket_rows);
        memcpy(want, o->dims, sizeof want);
        want[0] = r->rows;
        for (int d = 1; d < o->ndim && d < TENSOR_MAX_DIMS; d++) {
            const struct model_follow *f = &b->bc->follow[j][d];
            if (f->kind == MODEL_FOLLOW_INPUT) {
                want[d] = r->in[f->input].dims[f->dim];
                if (want[d] > o->dims[d])
                    return cerr_set(e, CORRAL_EINTERNAL, "output '%s' dimension %d is %lld, smaller "
                                    "than the %lld it follows", b->cfg->outputs[j].name, d,
                                    (long long)o->dims[d], (long long)want[d]);
            }
        }
        if (!r->out[j].data) {
            int rc = tensor_alloc(&r->out[j], b->cfg->outputs[j].name, o->dtype, want, o->ndim, e);
            if (rc)
                return rc;
        } else if (r->out[j].ndim != o->ndim || r->out[j].dtype != o->dtype ||
                   memcmp(r->out[j].dims, want, sizeof(int64_t) * (size_t)o->ndim) != 0) {
            return cerr_set(e, CORRAL_EINTERNAL, "output '%s' changed shape between the parts of a "
                            "split request", b->cfg->outputs[j].name);
        }
        int64_t ext[TENSOR_MAX_DIMS];
        memcpy(ext, want, sizeof ext);
        ext[0] = pt->rows;
        batcher_copy_block(r->out[j].data, r->out[j].dims, pt->row0, o->data, o->dims, pt->brow,
                           ext, o->ndim, dtype_size(o->dtype));
    }
    return CORRAL_OK;
}
