/*
 * How requests leave the batcher: every accepted request is answered exactly once,
 * with its result or an error, from the batcher thread. Completed requests are handled
 * a list at a time: the replies are packed without the lock, then one lock counts them
 * and unlinks what may leave (with preserve_ordering only an unbroken run from the
 * oldest outstanding request, so that a client sees answers in the order it asked),
 * and the reply callback runs after the lock is dropped, as callbacks must. Requests
 * that will not run (expired, stopped, cut) are failed here too, keeping the rows of a
 * split request accounted for so that it is answered once its last part is back.
 */
#include "batcher_internal.h"

#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "wire.h"

void batcher_breq_free(struct breq *r)
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
void batcher_finish_list(struct batcher *b, struct breq *done)
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
        batcher_breq_free(ready);
        ready = nx;
    }
}

/* Marks r failed; the first reason stays, so a request split over several batches is
 * answered with the error of the part that failed first. */
void batcher_fail_req(struct batcher *b, struct breq *r, enum batcher_reject why, int code,
                      const char *msg)
{
    if (!r->failed) {
        r->failed = 1;
        r->why = why;
        cerr_set(&r->err, code, "%s", msg);
    }
}

/*
 * Fails requests taken off the queue before all their rows ran. Rows of a split
 * request may still be running: such a request finishes when they come back.
 */
void batcher_abandon(struct batcher *b, struct breq *list, enum batcher_reject why, int code,
                     const char *msg)
{
    struct breq *done = NULL, **dtail = &done;
    while (list) {
        struct breq *nx = list->qnext;
        list->qnext = NULL;
        batcher_fail_req(b, list, why, code, msg);
        list->done_rows += list->rows - list->taken;
        list->taken = list->rows;
        if (list->done_rows == list->rows)
            batcher_done_push(&dtail, list);
        list = nx;
    }
    *dtail = NULL;
    batcher_finish_list(b, done);
}
