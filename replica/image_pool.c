/*
 * A plain FIFO under one mutex feeds the workers; a request's conversion happens with
 * no lock held, and its completion callback too. Stopping sets a flag the workers see
 * at their next wait, joins them, and completes whatever is still queued.
 */
#include "image_pool.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "image_decode.h"
#include "image_prep.h"
#include "log.h"

struct image_job {
    struct image_job *next;
    Corral__Request *req;
    void *owner;
};

struct image_pool {
    const struct model_config *cfg;
    struct image_pool_options opt;
    image_done_fn done;
    void *arg;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct image_job *head, *tail; /* guarded by mu */
    int stopping;                  /* guarded by mu */
    int n_threads;
    pthread_t *threads;
};

static Corral__Tensor *image_tensor(const struct model_config *cfg, const Corral__Request *req)
{
    if (!cfg->image.enabled || req->kind_case != CORRAL__REQUEST__KIND_INFER)
        return NULL;
    const char *name = cfg->inputs[cfg->image.input].name;
    const Corral__InferRequest *ir = req->infer;
    for (size_t i = 0; i < ir->n_inputs; i++)
        if (ir->inputs[i]->name && strcmp(ir->inputs[i]->name, name) == 0)
            return ir->inputs[i]->datatype == CORRAL__DATA_TYPE__TYPE_BYTES ? ir->inputs[i]
                                                                             : NULL;
    return NULL;
}

int image_request_wanted(const struct model_config *cfg, const Corral__Request *req)
{
    return image_tensor(cfg, req) != NULL;
}

int image_request_convert(const struct model_config *cfg, uint64_t max_pixels,
                          Corral__Request *req, struct cerr *e)
{
    Corral__Tensor *t = image_tensor(cfg, req);
    const struct image_prep *p = &cfg->image;
    if (!t)
        return cerr_set(e, CORRAL_EINVAL, "the request carries no encoded image");
    /* The wire decoder checked the BYTES framing; an image is one element. */
    int64_t n = 1;
    for (size_t d = 0; d < t->n_shape; d++)
        n *= t->shape[d];
    if (n != 1 || t->data.len < 4)
        return cerr_set(e, CORRAL_EINVAL, "input '%s' takes one encoded image (a BYTES tensor "
                        "of one element), got %lld elements", t->name, (long long)n);
    const uint8_t *img = t->data.data + 4;
    size_t len = t->data.len - 4;
    struct image_rgb im;
    int rc = image_decode(img, len, max_pixels, &im, e);
    if (rc)
        return rc;
    size_t nf = image_prep_floats(p);
    float *x = malloc(nf * sizeof *x);
    int64_t *shape = malloc(4 * sizeof *shape);
    if (!x || !shape) {
        rc = cerr_set(e, CORRAL_ENOMEM, "out of memory for a preprocessed image");
        goto fail;
    }
    if ((rc = image_prep_run(p, &im, x, e)))
        goto fail;
    shape[0] = 1;
    shape[1] = p->nhwc ? p->out_h : 3;
    shape[2] = p->nhwc ? p->out_w : p->out_h;
    shape[3] = p->nhwc ? 3 : p->out_w;
    free(t->data.data);
    free(t->shape);
    t->data.data = (uint8_t *)x;
    t->data.len = nf * sizeof *x;
    t->shape = shape;
    t->n_shape = 4;
    t->datatype = CORRAL__DATA_TYPE__TYPE_FP32;
    image_rgb_free(&im);
    return CORRAL_OK;
fail:
    free(x);
    free(shape);
    image_rgb_free(&im);
    return rc;
}

static void *worker(void *arg)
{
    struct image_pool *p = arg;
    for (;;) {
        pthread_mutex_lock(&p->mu);
        while (!p->head && !p->stopping)
            pthread_cond_wait(&p->cv, &p->mu);
        struct image_job *j = p->stopping ? NULL : p->head;
        if (j) {
            p->head = j->next;
            if (!p->head)
                p->tail = NULL;
        }
        pthread_mutex_unlock(&p->mu);
        if (!j)
            return NULL;
        struct cerr e = {0};
        int rc = image_request_convert(p->cfg, p->opt.max_pixels, j->req, &e);
        if (rc)
            LOG_DEBUG("image request refused: %s", e.msg);
        p->done(p->arg, j->req, j->owner, rc, rc ? e.msg : NULL);
        free(j);
    }
}

int image_pool_start(struct image_pool **out, const struct model_config *cfg,
                     const struct image_pool_options *opt, image_done_fn done, void *arg,
                     struct cerr *e)
{
    *out = NULL;
    struct image_pool *p = calloc(1, sizeof *p);
    int n = opt->threads > 0 ? opt->threads : 1;
    if (!p || !(p->threads = calloc((size_t)n, sizeof *p->threads))) {
        free(p);
        return cerr_set(e, CORRAL_ENOMEM, "out of memory starting the image workers");
    }
    p->cfg = cfg;
    p->opt = *opt;
    p->done = done;
    p->arg = arg;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    for (; p->n_threads < n; p->n_threads++) {
        if (pthread_create(&p->threads[p->n_threads], NULL, worker, p) != 0) {
            image_pool_stop(p);
            return cerr_set(e, CORRAL_EINTERNAL, "cannot start image worker thread %d of %d",
                            p->n_threads + 1, n);
        }
    }
    *out = p;
    return CORRAL_OK;
}

int image_pool_push(struct image_pool *p, Corral__Request *req, void *owner, struct cerr *e)
{
    struct image_job *j = malloc(sizeof *j);
    if (!j)
        return cerr_set(e, CORRAL_ENOMEM, "out of memory queueing an image");
    j->next = NULL;
    j->req = req;
    j->owner = owner;
    pthread_mutex_lock(&p->mu);
    if (p->stopping) {
        pthread_mutex_unlock(&p->mu);
        free(j);
        return cerr_set(e, CORRAL_EUNAVAIL, "replica is stopping");
    }
    if (p->tail)
        p->tail->next = j;
    else
        p->head = j;
    p->tail = j;
    pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->mu);
    return CORRAL_OK;
}

void image_pool_stop(struct image_pool *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    p->stopping = 1;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->n_threads; i++)
        pthread_join(p->threads[i], NULL);
    struct image_job *j = p->head;
    while (j) {
        struct image_job *next = j->next;
        p->done(p->arg, j->req, j->owner, CORRAL_EDRAINING, "replica stopped before decoding "
                "the image");
        free(j);
        j = next;
    }
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    free(p->threads);
    free(p);
}
