#include "batcher.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "wire.h"

#define WARMUP_MAX_RUNS 4096
#define STALL_FLOOR_MS 300
#define FIRST_RUN_STALL_NS (10000ull * 1000000ull)

/* One queued infer request. Only the batcher thread touches the fields below
 * `rows` once the request is queued; the queue links are guarded by mu. */
struct breq {
    Corral__Request *msg; /* owned */
    void *owner;
    /* Views into msg, in model input order, and the request's own outputs: n_in and
     * n_out entries placed after the struct, so that a request costs what the model
     * needs rather than MODEL_MAX_IO tensors to clear and release. */
    struct tensor *in, *out;
    size_t n_out;
    int64_t rows;                   /* batch axis size (0 when not batching) */
    int64_t key[MODEL_MAX_VAR_DIMS];/* padded size per variable dimension */
    uint64_t out_mask;
    int prio;                       /* 0 = highest */
    uint64_t seq, enq_ns, deadline_ns, stall_ms;
    /* Reported to the router in the reply's parameters (corral_queue_us, corral_compute_us). */
    int64_t queue_us, compute_us;
    int64_t taken;                  /* rows handed to batches (guarded by mu) */
    int64_t done_rows;              /* rows whose outputs are in */
    int queued;                     /* linked in a priority queue (guarded by mu) */
    int started;                    /* queue time already counted */
    int failed;
    struct cerr err;
    enum batcher_reject why;
    uint8_t *reply;
    size_t reply_len;
    int finished;
    struct breq *qprev, *qnext;     /* priority queue */
    struct breq *fdone;             /* list of requests finish_list completes */
    struct breq *oprev, *onext;     /* outstanding list in arrival order */
};

struct bpart {
    struct breq *r;
    int64_t row0, rows, brow; /* request rows [row0, row0+rows) at batch row brow */
};

enum slot_state { SLOT_FREE, SLOT_READY, SLOT_RUNNING, SLOT_DONE };

struct slot {
    enum slot_state state;
    uint64_t order;              /* formation order, so compute takes slots in turn */
    size_t n_parts;
    struct bpart *parts;         /* max(max_batch_size, 1) entries */
    int64_t rows, bucket_rows;
    int64_t key[MODEL_MAX_VAR_DIMS];
    struct tensor in[MODEL_MAX_IO];
    void *buf[MODEL_MAX_IO];
    size_t cap[MODEL_MAX_IO];
    struct tensor out[MODEL_MAX_IO];
    int rc;
    int skipped;                 /* every request expired: the engine did not run */
    int cut;                     /* the drain was cut before the engine ran: EDRAINING */
    struct cerr err;
    uint64_t stall_ms;
    uint64_t t_compute0, t_compute1;
    uint64_t real_el, padded_el;
};

struct group {
    int64_t key[MODEL_MAX_VAR_DIMS];
    uint64_t out_mask;
    struct breq *head;
    int64_t rows;
};

struct batcher {
    struct engine *eng;
    const struct model_config *cfg;
    const struct model_batching *bc;
    struct batcher_options opt;
    batcher_reply_fn reply;
    int batching;      /* max_batch_size > 0 */
    size_t n_in, n_out;
    size_t n_slots;
    struct slot slots[2];

    pthread_mutex_t mu;
    pthread_cond_t cv_batch, cv_compute;
    pthread_cond_t cv_idle; /* on the monotonic clock: the last outstanding request left */
    pthread_t th_batch, th_compute;
    int started_batch, started_compute;
    int stopping, warmed;
    /* Draining refuses new requests; cut (read without mu by the test stall) also ends
     * the work still accepted. The texts go into the answers. */
    int draining;
    atomic_int cut;
    char drain_cause[32], cut_why[160];
    size_t outstanding;   /* accepted and not yet answered (linked on ohead..otail) */
    struct breq *qhead[MODEL_MAX_PRIORITY], *qtail[MODEL_MAX_PRIORITY];
    size_t depth;
    int64_t queued_rows;  /* rows waiting in the queue (not yet taken into a batch) */
    /* The batcher thread is waiting on cv_batch: until sleep_until (0: no timer), and
     * with a free batch buffer or not. A submit wakes it only when the new request can
     * change what it does: the first request, a full batch's worth of rows, or an
     * earlier deadline. One futex wake per request would cost more than the request. */
    int sleeping, sleep_slot_free;
    uint64_t sleep_until;
    struct breq *ohead, *otail;
    uint64_t next_seq, next_order, compute_order;
    struct batcher_stats st;

    int64_t stall_ms;
    _Atomic uint64_t compute_since_ns; /* start of the running batch, 0 when idle */
    /* The slowest engine time per input element seen so far (warm-up and real runs), in
     * picoseconds, and what the running batch may therefore take, in nanoseconds. */
    _Atomic uint64_t ps_per_elem;
    _Atomic uint64_t compute_expect_ns;
    _Atomic uint64_t batch_beat_ns;    /* last time the batcher thread went round */
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

const char *batcher_reject_name(enum batcher_reject r)
{
    static const char *const names[BATCHER_REJECT_COUNT] = {
        "queue_full", "timeout", "invalid", "too_large", "unavailable", "compute", "draining"};
    return (unsigned)r < BATCHER_REJECT_COUNT ? names[r] : "unknown";
}

/* ---- copying and filling ---------------------------------------------------------------- */

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

/* ---- requests --------------------------------------------------------------------------- */

static void breq_free(struct breq *r)
{
    if (!r)
        return;
    for (size_t j = 0; j < r->n_out; j++)
        tensor_release(&r->out[j]);
    if (r->msg)
        corral__request__free_unpacked(r->msg, NULL);
    free(r->reply);
    free(r);
}

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

static int64_t pick_bucket(const int64_t *b, size_t n, int64_t v)
{
    for (size_t i = 0; i < n; i++)
        if (b[i] >= v)
            return b[i];
    return -1;
}

/* Checks one request against the model and fills r's views, key and policy fields. */
static int validate(struct batcher *b, struct breq *r, enum batcher_reject *why, struct cerr *e)
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
            r->key[k] = vd->n_buckets ? pick_bucket(vd->buckets, vd->n_buckets, s) : s;
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
    r->enq_ns = now_ns();
    r->deadline_ns = timeout > 0 ? r->enq_ns + (uint64_t)timeout * 1000u : 0;
    return CORRAL_OK;
}

/* Packs the request's reply (result or error) into r->reply. Batcher thread only. */
static void pack_reply(struct batcher *b, struct breq *r)
{
    if (!r->failed) {
        const struct model_config *cfg = b->cfg;
        Corral__Response resp = CORRAL__RESPONSE__INIT;
        Corral__InferResponse irsp = CORRAL__INFER_RESPONSE__INIT;
        Corral__Tensor ot[MODEL_MAX_IO];
        Corral__Tensor *otp[MODEL_MAX_IO];
        size_t k = 0;
        for (size_t j = 0; j < b->n_out; j++) {
            if (!(r->out_mask & ((uint64_t)1 << j)))
                continue;
            corral__tensor__init(&ot[k]);
            ot[k].name = (char *)cfg->outputs[j].name;
            ot[k].datatype = (Corral__DataType)r->out[j].dtype;
            ot[k].n_shape = (size_t)r->out[j].ndim;
            ot[k].shape = r->out[j].dims;
            ot[k].data.data = r->out[j].data;
            ot[k].data.len = r->out[j].nbytes;
            otp[k] = &ot[k];
            k++;
        }
        irsp.id = r->msg->infer->id;
        irsp.model_name = (char *)cfg->name;
        irsp.model_version = (char *)cfg->version_str;
        irsp.n_outputs = k;
        irsp.outputs = otp;
        /* Time in the queue and in the engine, for the router's latency histograms. */
        Corral__Parameter pq = CORRAL__PARAMETER__INIT, pc = CORRAL__PARAMETER__INIT;
        Corral__Parameter *pp[2] = {&pq, &pc};
        pq.key = "corral_queue_us";
        pq.value_case = CORRAL__PARAMETER__VALUE_INT64_VALUE;
        pq.int64_value = r->queue_us;
        pc.key = "corral_compute_us";
        pc.value_case = CORRAL__PARAMETER__VALUE_INT64_VALUE;
        pc.int64_value = r->compute_us;
        irsp.n_parameters = 2;
        irsp.parameters = pp;
        resp.kind_case = CORRAL__RESPONSE__KIND_INFER;
        resp.infer = &irsp;
        if (wire_pack_response(&resp, &r->reply, &r->reply_len) == 0)
            return;
        r->failed = 1;
        r->why = BATCHER_REJECT_COMPUTE;
        cerr_set(&r->err, CORRAL_ENOMEM, "out of memory packing the response");
    }
    if (wire_pack_error(r->err.code, r->err.msg, &r->reply, &r->reply_len) != 0)
        r->reply = NULL;
}

/*
 * Requests are complete (a list linked through fdone): pack their replies, then,
 * under one lock for the whole list, count them and unlink every reply that may
 * leave now (with preserve_ordering, only an unbroken run of finished requests
 * from the oldest), and send those. Called on the batcher thread without mu held;
 * taking the lock once per batch rather than once per request keeps the I/O
 * thread that submits requests from queueing behind the batcher thread.
 */
static void finish_list(struct batcher *b, struct breq *done)
{
    struct breq *ready = NULL, **tail = &ready;
    if (!done)
        return;
    for (struct breq *r = done; r; r = r->fdone) {
        pack_reply(b, r);
        if (r->failed)
            LOG_DEBUG("request id='%.64s' failed: %s", r->msg->infer->id ? r->msg->infer->id : "",
                      r->err.msg);
    }
    pthread_mutex_lock(&b->mu);
    for (struct breq *r = done; r; r = r->fdone) {
        r->finished = 1;
        if (r->failed)
            b->st.rejected[r->why]++;
        else
            b->st.success++;
        if (r->failed && r->why == BATCHER_REJECT_DRAINING)
            b->st.cut++;
        for (struct breq *o = b->bc->preserve_ordering ? b->ohead : r; o && o->finished;) {
            struct breq *onx = o->onext;
            if (o->oprev)
                o->oprev->onext = o->onext;
            else
                b->ohead = o->onext;
            if (o->onext)
                o->onext->oprev = o->oprev;
            else
                b->otail = o->oprev;
            o->onext = NULL;
            *tail = o;
            tail = &o->onext;
            b->outstanding--;
            o = b->bc->preserve_ordering ? onx : NULL;
        }
    }
    /* A drain waits for this; its replies leave below, still on this thread, which
     * batcher_stop joins before the server closes the connections. */
    if (!b->outstanding)
        pthread_cond_broadcast(&b->cv_idle);
    pthread_mutex_unlock(&b->mu);
    while (ready) {
        struct breq *nx = ready->onext;
        uint8_t *buf = ready->reply;
        ready->reply = NULL;
        /* The callback owns the buffer; NULL (out of memory) makes the peer time out. */
        b->reply(ready->owner, buf, buf ? ready->reply_len : 0);
        breq_free(ready);
        ready = nx;
    }
}

/* Adds a complete request to the list finish_list takes. */
static void done_push(struct breq ***tail, struct breq *r)
{
    **tail = r;
    *tail = &r->fdone;
}

static void fail_req(struct batcher *b, struct breq *r, enum batcher_reject why, int code,
                     const char *msg)
{
    if (!r->failed) {
        r->failed = 1;
        r->why = why;
        cerr_set(&r->err, code, "%s", msg);
    }
}

/* ---- queue ------------------------------------------------------------------------------ */

static void q_unlink(struct batcher *b, struct breq *r)
{
    if (r->qprev)
        r->qprev->qnext = r->qnext;
    else
        b->qhead[r->prio] = r->qnext;
    if (r->qnext)
        r->qnext->qprev = r->qprev;
    else
        b->qtail[r->prio] = r->qprev;
    r->qprev = r->qnext = NULL;
    r->queued = 0;
    b->depth--;
    b->queued_rows -= r->rows - r->taken;
}

int batcher_submit(struct batcher *b, Corral__Request *req, void *owner, struct cerr *e)
{
    enum batcher_reject why;
    int rc;
    struct breq *r = calloc(1, sizeof *r + (b->n_in + b->n_out) * sizeof(struct tensor));
    if (!r) {
        pthread_mutex_lock(&b->mu);
        b->st.requests++;
        b->st.rejected[BATCHER_REJECT_UNAVAILABLE]++;
        pthread_mutex_unlock(&b->mu);
        return cerr_set(e, CORRAL_ENOMEM, "out of memory");
    }
    r->in = (struct tensor *)(r + 1);
    r->out = r->in + b->n_in;
    r->n_out = b->n_out;
    r->msg = req;
    r->owner = owner;
    rc = validate(b, r, &why, e);
    pthread_mutex_lock(&b->mu);
    b->st.requests++;
    if (!rc && b->stopping) {
        /* Read from the socket after the drain ended: never run, so the router may send
         * it elsewhere like any request a draining replica refuses (rule 3). */
        why = BATCHER_REJECT_DRAINING;
        rc = cerr_set(e, CORRAL_EDRAINING, "replica is stopping; send the request to another "
                      "replica");
    } else if (!rc && b->draining) {
        /* Distinct from EUNAVAIL: the router sends it again elsewhere, as it would after a
         * transport failure, since this replica never ran it. */
        why = BATCHER_REJECT_DRAINING;
        rc = cerr_set(e, CORRAL_EDRAINING, "replica is draining (%s); send the request to "
                      "another replica", b->drain_cause);
    } else if (!rc && b->depth >= (size_t)b->bc->max_queue_size) {
        why = BATCHER_REJECT_QUEUE_FULL;
        rc = cerr_set(e, CORRAL_EQUEUEFULL, "replica queue is full (%lld requests waiting), retry later",
                      (long long)b->bc->max_queue_size);
    }
    if (rc) {
        b->st.rejected[why]++;
        pthread_mutex_unlock(&b->mu);
        r->msg = NULL; /* the caller keeps the request */
        breq_free(r);
        return rc;
    }
    r->seq = b->next_seq++;
    r->queued = 1;
    r->qprev = b->qtail[r->prio];
    if (r->qprev)
        r->qprev->qnext = r;
    else
        b->qhead[r->prio] = r;
    b->qtail[r->prio] = r;
    r->oprev = b->otail;
    if (b->otail)
        b->otail->onext = r;
    else
        b->ohead = r;
    b->otail = r;
    b->outstanding++;
    b->depth++;
    b->queued_rows += r->rows;
    int64_t cap = b->batching ? b->bc->max_batch_size : 1;
    int wake = b->sleeping &&
               ((b->sleep_slot_free && (b->depth == 1 || b->queued_rows >= cap)) ||
                (r->deadline_ns && (!b->sleep_until || r->deadline_ns < b->sleep_until)));
    if (wake) {
        b->sleeping = 0;
        pthread_cond_signal(&b->cv_batch);
    }
    pthread_mutex_unlock(&b->mu);
    return CORRAL_OK;
}

/* ---- batch formation (mu held) ---------------------------------------------------------- */

static int slot_busy(const struct batcher *b)
{
    for (size_t i = 0; i < b->n_slots; i++)
        if (b->slots[i].state == SLOT_READY || b->slots[i].state == SLOT_RUNNING)
            return 1;
    return 0;
}

/*
 * Unlinks every queued request whose deadline has passed onto *out and returns
 * the earliest deadline still ahead (0: none), so the batcher thread wakes for it
 * even while both batch buffers are busy.
 */
static uint64_t reap_expired(struct batcher *b, uint64_t now, struct breq **out)
{
    uint64_t next = 0;
    for (int p = 0; p < b->bc->priority_levels; p++)
        for (struct breq *r = b->qhead[p], *nx; r; r = nx) {
            nx = r->qnext;
            if (!r->deadline_ns)
                continue;
            if (now >= r->deadline_ns) {
                q_unlink(b, r);
                r->qnext = *out;
                *out = r;
            } else if (!next || r->deadline_ns < next) {
                next = r->deadline_ns;
            }
        }
    return next;
}

static int same_group(const struct batcher *b, const struct breq *r, const int64_t *key, uint64_t mask)
{
    return r->out_mask == mask &&
           memcmp(r->key, key, sizeof(int64_t) * b->bc->n_var_dims) == 0;
}

/*
 * Picks what to run next. Groups are visited in priority-then-arrival order of
 * their oldest request; the first that fills a batch, or whose oldest request
 * has waited max_queue_delay_us, is dispatched. With a delay of 0 a partial
 * batch waits only while the compute section is busy, so requests that arrive
 * meanwhile join it. Returns 1 with *g filled, or 0 and *wake_ns (the next time
 * a group's delay runs out, 0 = none).
 */
static int choose_group(struct batcher *b, uint64_t now, struct group *g, uint64_t *wake_ns)
{
    enum { MAX_GROUPS = 32 };
    struct group gs[MAX_GROUPS];
    size_t ng = 0;
    int64_t cap = b->batching ? b->bc->max_batch_size : 1;
    uint64_t delay = (uint64_t)b->bc->max_queue_delay_us * 1000u;
    int busy = slot_busy(b);
    *wake_ns = 0;
    for (int p = 0; p < b->bc->priority_levels; p++)
        for (struct breq *r = b->qhead[p]; r; r = r->qnext) {
            if (!b->batching) {
                if (ng == 0) {
                    memset(&gs[0], 0, sizeof gs[0]);
                    gs[0].head = r;
                    gs[0].rows = 1;
                    ng = 1;
                }
                continue;
            }
            size_t k;
            for (k = 0; k < ng; k++)
                if (same_group(b, r, gs[k].key, gs[k].out_mask))
                    break;
            if (k == ng) {
                if (ng == MAX_GROUPS)
                    continue;
                memcpy(gs[k].key, r->key, sizeof r->key);
                gs[k].out_mask = r->out_mask;
                gs[k].head = r;
                gs[k].rows = 0;
                ng++;
            }
            gs[k].rows += r->rows - r->taken;
        }
    for (size_t k = 0; k < ng; k++) {
        uint64_t due = gs[k].head->enq_ns + delay;
        /* While draining no request can join a partial batch, so waiting for one only
         * delays the exit. */
        int full = gs[k].rows >= cap || b->draining;
        if (full || (now >= due && (delay > 0 || !busy))) {
            *g = gs[k];
            return 1;
        }
        if (delay > 0 && (!*wake_ns || due < *wake_ns))
            *wake_ns = due;
    }
    return 0;
}

/* Moves rows of group g's requests into slot s, highest priority and oldest first. */
static void take_rows(struct batcher *b, const struct group *g, struct slot *s, uint64_t now)
{
    int64_t cap = b->batching ? b->bc->max_batch_size : INT64_MAX;
    s->n_parts = 0;
    s->rows = 0;
    s->stall_ms = 0;
    memcpy(s->key, g->key, sizeof s->key);
    for (int p = 0; p < b->bc->priority_levels && s->rows < cap; p++)
        for (struct breq *r = b->qhead[p], *nx; r && s->rows < cap; r = nx) {
            nx = r->qnext;
            if (b->batching && !same_group(b, r, g->key, g->out_mask))
                continue;
            if (!b->batching && r != g->head)
                continue;
            int64_t n = r->rows - r->taken;
            if (n > cap - s->rows)
                n = cap - s->rows;
            struct bpart *pt = &s->parts[s->n_parts++];
            pt->r = r;
            pt->row0 = r->taken;
            pt->rows = n;
            pt->brow = s->rows;
            s->rows += n;
            r->taken += n;
            b->queued_rows -= n;
            if (!r->started) {
                r->started = 1;
                r->queue_us = (int64_t)((now - r->enq_ns) / 1000u);
                b->st.queue_us += (now - r->enq_ns) / 1000u;
            }
            if (r->stall_ms > s->stall_ms)
                s->stall_ms = r->stall_ms;
            if (!b->batching || r->taken == r->rows)
                q_unlink(b, r);
            if (!b->batching)
                return;
        }
}

/* ---- gather, compute, scatter ----------------------------------------------------------- */

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

/* Builds the slot's padded inputs from its parts (or borrows them when not batching). */
static int gather(struct batcher *b, struct slot *s, struct cerr *e)
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
    s->bucket_rows = pick_bucket(b->bc->batch_buckets, b->bc->n_batch_buckets, s->rows);
    for (size_t i = 0; i < b->n_in; i++) {
        const struct model_io *io = &b->cfg->inputs[i];
        struct tensor *t = &s->in[i];
        size_t es = dtype_size(io->dtype), nbytes;
        int64_t numel;
        memset(t, 0, sizeof *t);
        t->name = io->name;
        t->dtype = io->dtype;
        t->ndim = io->ndim;
        bucket_shape(b, s, i, t->dims);
        int rc = tensor_nbytes(io->dtype, t->dims, t->ndim, &nbytes, e);
        if (rc || (rc = ensure_cap(s, i, nbytes, e)))
            return rc;
        tensor_numel(t->dims, t->ndim, &numel, NULL);
        t->data = s->buf[i];
        t->nbytes = nbytes;
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

static void sleep_ms_interruptible(struct batcher *b, uint64_t ms)
{
    uint64_t end = now_ns() + ms * 1000000u;
    while (now_ns() < end) {
        struct timespec ts = {0, 5 * 1000000};
        nanosleep(&ts, NULL);
        pthread_mutex_lock(&b->mu);
        int stop = b->stopping;
        pthread_mutex_unlock(&b->mu);
        if (stop || atomic_load(&b->cut))
            return;
    }
}

static uint64_t input_elems(const struct tensor *in, size_t n)
{
    uint64_t elems = 0;
    for (size_t i = 0; i < n; i++) {
        size_t es = dtype_size(in[i].dtype);
        elems += es ? in[i].nbytes / es : in[i].nbytes;
    }
    return elems ? elems : 1;
}

/* Keeps the slowest time per input element, so that liveness can tell a large batch
 * that legitimately computes for a while from an executor that is stuck. */
static void note_run_time(struct batcher *b, uint64_t elems, uint64_t ns)
{
    uint64_t per = ns * 1000u / elems, old = atomic_load(&b->ps_per_elem);
    while (per > old && !atomic_compare_exchange_weak(&b->ps_per_elem, &old, per))
        ;
}

/* The compute section: the engine run (and the test stall), nothing else. */
static void compute(struct batcher *b, struct slot *s)
{
    uint64_t now = now_ns();
    uint64_t elems = input_elems(s->in, b->n_in);
    atomic_store(&b->compute_expect_ns, elems * atomic_load(&b->ps_per_elem) / 1000u);
    atomic_store(&b->compute_since_ns, now);
    memset(s->out, 0, sizeof s->out);
    s->t_compute0 = now;
    /* The test stall stands for an engine run that does not come back; the deadline check
     * below uses the time this section was entered, so the stall does not expire the very
     * batch it holds up. */
    if (s->stall_ms)
        sleep_ms_interruptible(b, s->stall_ms);
    /* Requests whose deadline passed while the batch waited are not run late (scatter
     * answers them with a timeout); when all of them expired the engine is not run. A
     * cut drain does not start the engine either: the replica is leaving. */
    int live = 0;
    s->cut = atomic_load(&b->cut);
    for (size_t k = 0; !s->cut && k < s->n_parts; k++)
        live |= !s->parts[k].r->deadline_ns || now < s->parts[k].r->deadline_ns;
    s->skipped = !live;
    uint64_t t_run = now_ns();
    s->rc = live ? engine_run(b->eng, s->in, b->n_in, s->out, &s->err) : CORRAL_OK;
    s->t_compute1 = now_ns();
    atomic_store(&b->compute_since_ns, 0);
    if (live && s->rc == CORRAL_OK)
        note_run_time(b, elems, s->t_compute1 - t_run);
}

/* Cuts part pt's rows out of the batch outputs into its request's own outputs. */
static int scatter_part(struct batcher *b, struct slot *s, const struct bpart *pt, struct cerr *e)
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

/* After compute: hands every part its rows (or the batch's error) and finishes requests. */
static void scatter(struct batcher *b, struct slot *s)
{
    uint64_t t0 = now_ns();
    /* Counted before any reply leaves, so that a client reading the statistics after its
     * answer sees the batch that produced it. */
    pthread_mutex_lock(&b->mu);
    if (!s->skipped) {
        b->st.batches++;
        b->st.rows += (uint64_t)s->rows;
        b->st.compute_us += (s->t_compute1 - s->t_compute0) / 1000u;
        b->st.real_elements += s->real_el;
        b->st.padded_elements += s->padded_el;
        int64_t bin = s->rows - 1;
        if (bin >= (int64_t)b->st.n_hist)
            bin = (int64_t)b->st.n_hist - 1;
        b->st.hist[bin]++;
    }
    pthread_mutex_unlock(&b->mu);
    struct breq *done = NULL, **dtail = &done;
    for (size_t k = 0; k < s->n_parts; k++) {
        const struct bpart *pt = &s->parts[k];
        struct breq *r = pt->r;
        struct cerr e = {0};
        if (s->cut)
            fail_req(b, r, BATCHER_REJECT_DRAINING, CORRAL_EDRAINING, b->cut_why);
        else if (r->deadline_ns && s->t_compute0 >= r->deadline_ns)
            fail_req(b, r, BATCHER_REJECT_TIMEOUT, CORRAL_ETIMEDOUT,
                     "deadline passed while the request waited in the queue; it was not run");
        else if (s->rc)
            fail_req(b, r, BATCHER_REJECT_COMPUTE, s->rc, s->err.msg);
        else if (!r->failed && scatter_part(b, s, pt, &e))
            fail_req(b, r, BATCHER_REJECT_COMPUTE, e.code, e.msg);
        r->done_rows += pt->rows;
        if (!s->skipped)
            r->compute_us += (int64_t)((s->t_compute1 - s->t_compute0) / 1000u);
        /* A request appears once per batch, so it is complete at most once here. */
        if (r->done_rows == r->rows)
            done_push(&dtail, r);
    }
    *dtail = NULL;
    finish_list(b, done);
    for (size_t j = 0; j < b->n_out; j++)
        tensor_release(&s->out[j]);
    uint64_t t1 = now_ns();
    pthread_mutex_lock(&b->mu);
    b->st.scatter_us += (t1 - t0) / 1000u;
    pthread_mutex_unlock(&b->mu);
}

/* ---- threads ---------------------------------------------------------------------------- */

static void *compute_main(void *arg)
{
    struct batcher *b = arg;
    pthread_mutex_lock(&b->mu);
    for (;;) {
        struct slot *s = NULL;
        for (size_t i = 0; i < b->n_slots; i++)
            if (b->slots[i].state == SLOT_READY && b->slots[i].order == b->compute_order)
                s = &b->slots[i];
        if (!s) {
            if (b->stopping)
                break;
            pthread_cond_wait(&b->cv_compute, &b->mu);
            continue;
        }
        s->state = SLOT_RUNNING;
        b->compute_order++;
        pthread_mutex_unlock(&b->mu);
        compute(b, s);
        pthread_mutex_lock(&b->mu);
        s->state = SLOT_DONE;
        pthread_cond_signal(&b->cv_batch);
    }
    pthread_mutex_unlock(&b->mu);
    return NULL;
}

/*
 * Fails requests taken off the queue before all their rows ran. Rows of a split
 * request may still be running: such a request finishes when they come back.
 */
static void abandon(struct batcher *b, struct breq *list, enum batcher_reject why, int code,
                    const char *msg)
{
    struct breq *done = NULL, **dtail = &done;
    while (list) {
        struct breq *nx = list->qnext;
        list->qnext = NULL;
        fail_req(b, list, why, code, msg);
        list->done_rows += list->rows - list->taken;
        list->taken = list->rows;
        if (list->done_rows == list->rows)
            done_push(&dtail, list);
        list = nx;
    }
    *dtail = NULL;
    finish_list(b, done);
}

static void *batch_main(void *arg)
{
    struct batcher *b = arg;
    pthread_mutex_lock(&b->mu);
    for (;;) {
        uint64_t now = now_ns();
        atomic_store(&b->batch_beat_ns, now);
        if (atomic_load(&b->cut) && b->depth) {
            /* The drain was cut: nothing queued will run. cut_why is written before cut
             * is raised and never again. */
            struct breq *left = NULL;
            for (int p = 0; p < b->bc->priority_levels; p++)
                while (b->qhead[p]) {
                    struct breq *r = b->qhead[p];
                    q_unlink(b, r);
                    r->qnext = left;
                    left = r;
                }
            pthread_mutex_unlock(&b->mu);
            abandon(b, left, BATCHER_REJECT_DRAINING, CORRAL_EDRAINING, b->cut_why);
            pthread_mutex_lock(&b->mu);
            continue;
        }
        struct breq *expired = NULL;
        uint64_t next_deadline = reap_expired(b, now, &expired);
        struct slot *done = NULL, *freeslot = NULL;
        for (size_t i = 0; i < b->n_slots; i++) {
            if (b->slots[i].state == SLOT_DONE && !done)
                done = &b->slots[i];
            if (b->slots[i].state == SLOT_FREE && !freeslot)
                freeslot = &b->slots[i];
        }
        if (expired || done) {
            pthread_mutex_unlock(&b->mu);
            abandon(b, expired, BATCHER_REJECT_TIMEOUT, CORRAL_ETIMEDOUT,
                    "deadline passed while the request waited in the queue; it was not run");
            if (done) {
                scatter(b, done);
                pthread_mutex_lock(&b->mu);
                done->state = SLOT_FREE;
            } else {
                pthread_mutex_lock(&b->mu);
            }
            continue;
        }
        if (b->stopping && !slot_busy(b))
            break;
        struct group g;
        uint64_t wake = 0;
        if (!b->stopping && !atomic_load(&b->cut) && freeslot && choose_group(b, now, &g, &wake)) {
            take_rows(b, &g, freeslot, now);
            freeslot->state = SLOT_RUNNING; /* neither free nor visible to compute yet */
            pthread_mutex_unlock(&b->mu);
            uint64_t t0 = now_ns();
            int rc = gather(b, freeslot, &freeslot->err);
            uint64_t t1 = now_ns();
            if (rc) {
                freeslot->rc = rc;
                freeslot->skipped = 1;
                freeslot->t_compute0 = freeslot->t_compute1 = t1;
            } else if (!b->opt.overlap) {
                compute(b, freeslot);
            }
            pthread_mutex_lock(&b->mu);
            b->st.gather_us += (t1 - t0) / 1000u;
            if (rc || !b->opt.overlap) {
                freeslot->state = SLOT_DONE;
            } else {
                freeslot->state = SLOT_READY;
                freeslot->order = b->next_order++;
                pthread_cond_signal(&b->cv_compute);
            }
            continue;
        }
        if (next_deadline && (!wake || next_deadline < wake))
            wake = next_deadline;
        b->sleeping = 1;
        b->sleep_until = wake;
        b->sleep_slot_free = freeslot != NULL && !b->stopping;
        if (wake) {
            struct timespec ts;
            /* Condition variables wait on the realtime clock; convert the monotonic target. */
            uint64_t dt = wake > now ? wake - now : 0;
            clock_gettime(CLOCK_REALTIME, &ts);
            uint64_t t = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec + dt;
            ts.tv_sec = (time_t)(t / 1000000000u);
            ts.tv_nsec = (long)(t % 1000000000u);
            pthread_cond_timedwait(&b->cv_batch, &b->mu, &ts);
        } else {
            pthread_cond_wait(&b->cv_batch, &b->mu);
        }
        b->sleeping = 0;
    }
    /* Stopping: whatever is still queued will not run. */
    struct breq *left = NULL;
    for (int p = 0; p < b->bc->priority_levels; p++)
        while (b->qhead[p]) {
            struct breq *r = b->qhead[p];
            q_unlink(b, r);
            r->qnext = left;
            left = r;
        }
    pthread_mutex_unlock(&b->mu);
    /* Never run, so safe to send elsewhere (CONTROL-PLANE.md, rule 4). */
    abandon(b, left, BATCHER_REJECT_DRAINING, CORRAL_EDRAINING,
            "replica stopped before this request ran; send it to another replica");
    return NULL;
}

/* ---- life cycle ------------------------------------------------------------------------- */

int batcher_create(struct batcher **out, struct engine *eng, const struct model_config *cfg,
                   const struct batcher_options *opt, batcher_reply_fn reply, struct cerr *e)
{
    int rc = CORRAL_OK;
    struct batcher *b = calloc(1, sizeof *b);
    *out = NULL;
    if (!b)
        return cerr_set(e, CORRAL_ENOMEM, "out of memory");
    b->eng = eng;
    b->cfg = cfg;
    b->bc = &cfg->batching;
    b->opt = *opt;
    b->reply = reply;
    b->batching = cfg->batching.max_batch_size > 0;
    b->n_in = cfg->n_inputs;
    b->n_out = cfg->n_outputs;
    b->n_slots = opt->overlap ? 2 : 1;
    b->stall_ms = opt->stall_ms > 0 ? opt->stall_ms : STALL_FLOOR_MS;
    b->st.max_queue_size = (uint64_t)cfg->batching.max_queue_size;
    b->st.n_hist = b->batching ? (size_t)cfg->batching.max_batch_size : 64;
    if (b->st.n_hist > BATCHER_HIST_MAX)
        b->st.n_hist = BATCHER_HIST_MAX;
    pthread_mutex_init(&b->mu, NULL);
    pthread_cond_init(&b->cv_batch, NULL);
    pthread_cond_init(&b->cv_compute, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&b->cv_idle, &ca);
    pthread_condattr_destroy(&ca);
    atomic_init(&b->cut, 0);
    size_t np = b->batching ? (size_t)cfg->batching.max_batch_size : 1;
    for (size_t i = 0; i < b->n_slots; i++) {
        b->slots[i].parts = calloc(np, sizeof(struct bpart));
        if (!b->slots[i].parts) {
            rc = cerr_set(e, CORRAL_ENOMEM, "out of memory");
            goto fail;
        }
    }
    *out = b;
    return CORRAL_OK;
fail:
    batcher_free(b);
    return rc;
}

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
        size_t nbytes;
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
        batcher_fill(t->data, io->dtype, nbytes / dtype_size(io->dtype), b->bc->pad_value[i]);
    }
    struct engine_plan_info info;
    if ((rc = engine_prepare(b->eng, s->in, b->n_in, &info, e)))
        return rc;
    *arena += info.arena_bytes;
    uint64_t t0 = now_ns();
    rc = engine_run(b->eng, s->in, b->n_in, s->out, e);
    *ns = now_ns() - t0;
    if (rc == CORRAL_OK)
        note_run_time(b, input_elems(s->in, b->n_in), *ns);
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

int batcher_start(struct batcher *b, struct cerr *e)
{
    if (!b->warmed && batcher_warmup(b, e))
        return e ? e->code : CORRAL_EINTERNAL;
    if (pthread_create(&b->th_batch, NULL, batch_main, b) != 0)
        return cerr_set(e, CORRAL_EINTERNAL, "cannot start the batcher thread");
    b->started_batch = 1;
    if (b->opt.overlap) {
        if (pthread_create(&b->th_compute, NULL, compute_main, b) != 0)
            return cerr_set(e, CORRAL_EINTERNAL, "cannot start the compute thread");
        b->started_compute = 1;
    }
    return CORRAL_OK;
}

void batcher_health_why(struct batcher *b, int *live, int *ready, char *why, size_t n)
{
    uint64_t now = now_ns(), lim = (uint64_t)b->stall_ms * 1000000u;
    uint64_t busy = atomic_load(&b->compute_since_ns), beat = atomic_load(&b->batch_beat_ns);
    pthread_mutex_lock(&b->mu);
    size_t depth = b->depth;
    int stopping = b->stopping, draining = b->draining, running = b->started_batch;
    pthread_mutex_unlock(&b->mu);
    if (why && n)
        why[0] = '\0';
    /* A batch may run four times longer than the slowest time per element seen says
     * it should; before any run has been timed, a generous first-run allowance applies. */
    uint64_t expect = atomic_load(&b->compute_expect_ns);
    uint64_t run_lim = atomic_load(&b->ps_per_elem) ? lim + 4 * expect
                       : (lim > FIRST_RUN_STALL_NS ? lim : FIRST_RUN_STALL_NS);
    int l = !(busy && now - busy > run_lim);
    if (!l && why && n)
        snprintf(why, n, "the executor has computed one batch for %llu ms, past its stall limit "
                 "of %llu ms", (unsigned long long)((now - busy) / 1000000u),
                 (unsigned long long)(run_lim / 1000000u));
    /* The batcher thread sleeps at most max_queue_delay_us while requests wait. */
    uint64_t slack = lim + (uint64_t)b->bc->max_queue_delay_us * 1000u;
    if (l && depth > 0 && beat && now - beat > slack && !busy) {
        l = 0;
        if (why && n)
            snprintf(why, n, "%zu requests have waited %llu ms with no batch formed, past the "
                     "stall limit of %llu ms", depth, (unsigned long long)((now - beat) / 1000000u),
                     (unsigned long long)(slack / 1000000u));
    }
    *live = l;
    *ready = l && b->warmed && running && !stopping && !draining;
}

void batcher_health(struct batcher *b, int *live, int *ready)
{
    batcher_health_why(b, live, ready, NULL, 0);
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

void batcher_drain(struct batcher *b, const char *cause)
{
    pthread_mutex_lock(&b->mu);
    if (!b->draining) {
        b->draining = 1;
        snprintf(b->drain_cause, sizeof b->drain_cause, "%s", cause ? cause : "stopping");
        /* A partial batch waiting out its max_queue_delay_us goes now (choose_group). */
        pthread_cond_signal(&b->cv_batch);
    }
    pthread_mutex_unlock(&b->mu);
}

void batcher_cut(struct batcher *b, const char *why)
{
    pthread_mutex_lock(&b->mu);
    if (!b->draining) {
        b->draining = 1;
        snprintf(b->drain_cause, sizeof b->drain_cause, "stopping");
    }
    if (!atomic_load(&b->cut)) {
        snprintf(b->cut_why, sizeof b->cut_why, "replica drain ended (%s) before this request "
                 "ran; send it to another replica", why ? why : "cut");
        atomic_store(&b->cut, 1);
        pthread_cond_broadcast(&b->cv_batch);
        pthread_cond_broadcast(&b->cv_compute);
    }
    pthread_mutex_unlock(&b->mu);
}

size_t batcher_outstanding(struct batcher *b)
{
    pthread_mutex_lock(&b->mu);
    size_t n = b->outstanding;
    pthread_mutex_unlock(&b->mu);
    return n;
}

int batcher_wait_idle(struct batcher *b, int64_t timeout_ms)
{
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_sec += (time_t)(timeout_ms / 1000);
    until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&b->mu);
    while (b->outstanding && pthread_cond_timedwait(&b->cv_idle, &b->mu, &until) == 0) {
    }
    int idle = b->outstanding == 0;
    pthread_mutex_unlock(&b->mu);
    return idle;
}

void batcher_get_stats(struct batcher *b, struct batcher_stats *s)
{
    pthread_mutex_lock(&b->mu);
    *s = b->st;
    s->queue_depth = b->depth;
    pthread_mutex_unlock(&b->mu);
}

int64_t batcher_stall_ms(const struct batcher *b) { return b->stall_ms; }

void batcher_stop(struct batcher *b)
{
    if (!b)
        return;
    pthread_mutex_lock(&b->mu);
    b->stopping = 1;
    pthread_cond_broadcast(&b->cv_batch);
    pthread_cond_broadcast(&b->cv_compute);
    pthread_mutex_unlock(&b->mu);
    /* The batcher thread drains running batches before it leaves; compute then exits. */
    if (b->started_batch)
        pthread_join(b->th_batch, NULL);
    /* Under the lock: the I/O thread reads it for health answers until it stops. */
    pthread_mutex_lock(&b->mu);
    b->started_batch = 0;
    pthread_cond_broadcast(&b->cv_compute);
    pthread_mutex_unlock(&b->mu);
    if (b->started_compute)
        pthread_join(b->th_compute, NULL);
    b->started_compute = 0;
}

void batcher_free(struct batcher *b)
{
    if (!b)
        return;
    batcher_stop(b);
    for (size_t i = 0; i < b->n_slots; i++) {
        for (size_t k = 0; k < MODEL_MAX_IO; k++)
            free(b->slots[i].buf[k]);
        free(b->slots[i].parts);
    }
    /* Requests still outstanding were answered by the stopping batcher thread; any left
     * here (never started) are freed without a reply. */
    for (struct breq *o = b->ohead, *nx; o; o = nx) {
        nx = o->onext;
        breq_free(o);
    }
    pthread_mutex_destroy(&b->mu);
    pthread_cond_destroy(&b->cv_batch);
    pthread_cond_destroy(&b->cv_compute);
    pthread_cond_destroy(&b->cv_idle);
    free(b);
}
