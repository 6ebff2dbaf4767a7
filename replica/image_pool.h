/*
 * The replica's image workers: infer requests that carry an encoded image in place
 * of the model's image input are decoded and preprocessed here (replica/image_decode.h,
 * replica/image_prep.h), off the server's I/O thread, and come out as ordinary
 * requests whose input is the FP32 tensor the model takes, ready for the batcher: so
 * image requests batch with each other and with tensor requests alike.
 *
 * Decoding happens in the replica rather than in the router because it is the costly
 * step (milliseconds per photo against microseconds for the rest of a request): the
 * router's one event loop serves every model and would stall on it, while replicas are
 * many, already hold the preprocessing config, and receive the compressed bytes (tens
 * of kilobytes) instead of a decoded tensor (600 KB for 224x224x3 floats).
 *
 * Usage:
 *     if (image_request_wanted(cfg, req))       // the image input is a BYTES element
 *         image_pool_push(pool, req, owner, &e); // refused: answer e, free req
 *     // later, on a worker thread: done(arg, req, owner, rc, msg); rc == 0: req now
 *     // holds the tensor (submit it); else answer rc/msg and free req.
 *     image_pool_stop(pool);  // joins; what is still queued gets done(..., EDRAINING)
 *
 * The queue is not bounded here: every entry is a request the server accepted and
 * has not answered, which the server's `contexts` limit already bounds.
 */
#ifndef CORRAL_REPLICA_IMAGE_POOL_H
#define CORRAL_REPLICA_IMAGE_POOL_H

#include <stdint.h>

#include "corral.pb-c.h"
#include "error.h"
#include "model_repo.h"

struct image_pool;

/* Called once per pushed request, on a worker thread (or in image_pool_stop), with no
 * lock held. rc == 0: the image input now holds its FP32 tensor. */
typedef void (*image_done_fn)(void *arg, Corral__Request *req, void *owner, int rc,
                              const char *msg);

struct image_pool_options {
    int threads;          /* workers (>= 1) */
    uint64_t max_pixels;  /* decoded width x height above this: CORRAL_ETOOLARGE */
};

/* True when cfg takes images and req's image input is a BYTES tensor (an encoded image). */
int image_request_wanted(const struct model_config *cfg, const Corral__Request *req);
/* Decodes and preprocesses req's image in place (what a worker does; exposed for tests). */
int image_request_convert(const struct model_config *cfg, uint64_t max_pixels,
                          Corral__Request *req, struct cerr *e);

int image_pool_start(struct image_pool **out, const struct model_config *cfg,
                     const struct image_pool_options *opt, image_done_fn done, void *arg,
                     struct cerr *e);
int image_pool_push(struct image_pool *p, Corral__Request *req, void *owner, struct cerr *e);
void image_pool_stop(struct image_pool *p);

#endif
