/*
 * libcorral: the C client for corral's RPC endpoint (the router's, default
 * tcp://HOST:8001, or a replica's own).
 *
 * Usage:
 *     struct corral_client *cl;
 *     struct corral_error err;
 *     if (corral_connect(&cl, "tcp://127.0.0.1:8001", NULL, &err)) die(err.message);
 *
 *     int64_t shape[] = {1, 64};
 *     struct corral_tensor in = {"input", CORRAL_TYPE_FP32, shape, 2, pixels, sizeof pixels};
 *     struct corral_infer_request rq = {.model = "digits", .inputs = &in, .n_inputs = 1};
 *
 *     // synchronous
 *     struct corral_infer_result *res;
 *     if (corral_infer(cl, &rq, &res, &err) == CORRAL_STATUS_OK) {
 *         struct corral_tensor out;
 *         corral_result_output(res, 0, &out);   // out.data: 10 floats
 *         corral_result_free(res);
 *     }
 *
 *     // asynchronous: many requests in flight on one client
 *     corral_infer_async(cl, &rq, on_done, arg, &err);
 *     ...
 *     corral_close(cl);
 *
 * Threads: a client may be used from any number of threads at once. The
 * completion callback of corral_infer_async runs on one of the library's
 * threads, exactly once per accepted request, with no library lock held; it
 * receives the result (free it with corral_result_free) or NULL with a status
 * and message. It may start new requests, but must not call corral_close.
 * A call that returns an error never runs the callback.
 *
 * Request data is copied when the call returns (it is packed into the
 * message), so the caller's buffers may be reused at once.
 *
 * Deadlines: each request has one (its timeout_ms, else the client's
 * default); it travels to the server as the OIP "timeout" parameter, and the
 * client gives up shortly after it. Statuses are corral's error codes; their
 * numbers are part of the wire protocol.
 */
#ifndef CORRAL_CLIENT_H
#define CORRAL_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum corral_status {
    CORRAL_STATUS_OK = 0,
    CORRAL_STATUS_INVALID = -1,      /* bad request (HTTP 400) */
    CORRAL_STATUS_NOT_FOUND = -2,    /* unknown model or version (404) */
    CORRAL_STATUS_UNAVAILABLE = -3,  /* no ready replica, connection lost, cancelled (503) */
    CORRAL_STATUS_UNSUPPORTED = -4,  /* (501) */
    CORRAL_STATUS_INTERNAL = -5,     /* (500) */
    CORRAL_STATUS_NO_MEMORY = -6,
    CORRAL_STATUS_IO = -7,
    CORRAL_STATUS_PARSE = -8,        /* a malformed message */
    CORRAL_STATUS_TIMEOUT = -9,      /* the deadline passed (504) */
    CORRAL_STATUS_QUEUE_FULL = -10,  /* the server refused more work (429) */
    CORRAL_STATUS_MISMATCH = -11,
    CORRAL_STATUS_TOO_LARGE = -12,   /* (413) */
    CORRAL_STATUS_METHOD = -13,
    CORRAL_STATUS_DRAINING = -14,    /* the replica is shutting down: safe to send again (503) */
    CORRAL_STATUS_MEDIA_TYPE = -15,  /* an image in a format the server does not decode (415) */
    CORRAL_STATUS_UNAUTHORIZED = -16, /* no token, or not the router's (--token-file) (401) */
};

/* Open Inference Protocol datatypes, numbered as on the wire. */
enum corral_datatype {
    CORRAL_TYPE_BOOL = 1,
    CORRAL_TYPE_UINT8 = 2,
    CORRAL_TYPE_UINT16 = 3,
    CORRAL_TYPE_UINT32 = 4,
    CORRAL_TYPE_UINT64 = 5,
    CORRAL_TYPE_INT8 = 6,
    CORRAL_TYPE_INT16 = 7,
    CORRAL_TYPE_INT32 = 8,
    CORRAL_TYPE_INT64 = 9,
    CORRAL_TYPE_FP16 = 10,
    CORRAL_TYPE_FP32 = 11,
    CORRAL_TYPE_FP64 = 12,
    CORRAL_TYPE_BYTES = 13, /* each element: 4-byte little-endian length, then the bytes */
    CORRAL_TYPE_BF16 = 14,
};

/* "QUEUE_FULL" etc.; "UNKNOWN" outside the table. */
const char *corral_status_name(int status);
/* "FP32" etc.; NULL for a number that is no datatype. */
const char *corral_datatype_name(int datatype);
/* The datatype named (case as the OIP writes it), or 0. */
int corral_datatype_from_name(const char *name);

struct corral_error {
    int status;
    char message[512];
};

/* A tensor: raw little-endian row-major bytes. Borrowed in both directions. */
struct corral_tensor {
    const char *name;
    int datatype;          /* enum corral_datatype */
    const int64_t *shape;
    size_t ndim;
    const void *data;
    size_t nbytes;
};

struct corral_infer_request {
    const char *model;   /* required */
    const char *version; /* NULL or "": any version */
    const char *id;      /* optional, echoed in the result and in the server's logs */
    const struct corral_tensor *inputs;
    size_t n_inputs;
    const char *const *outputs; /* names of the outputs wanted; none: all */
    size_t n_outputs;
    unsigned timeout_ms; /* 0: the client's default */
    int priority;        /* 0: the model's default; 1 is the highest level */
};

struct corral_client_options {
    unsigned timeout_ms; /* default deadline per request; 0: 30000 */
    /* The bearer token of a router started with --token-file, sent with every infer
     * request (copied at connect); NULL: none. */
    const char *token;
};

struct corral_client;
struct corral_infer_result;

/*
 * Creates a client for an NNG URL. The connection is made in the background
 * (and remade after a loss), so connecting succeeds while the server is still
 * starting; requests then wait for it until their deadline.
 */
int corral_connect(struct corral_client **out, const char *url,
                   const struct corral_client_options *opt, struct corral_error *err);
/*
 * Cancels what is still in flight (those callbacks run, with
 * CORRAL_STATUS_UNAVAILABLE, before this returns) and frees the client.
 */
void corral_close(struct corral_client *cl);

int corral_infer(struct corral_client *cl, const struct corral_infer_request *req,
                 struct corral_infer_result **out, struct corral_error *err);

typedef void (*corral_infer_cb)(void *arg, int status, const char *message,
                                struct corral_infer_result *result);
int corral_infer_async(struct corral_client *cl, const struct corral_infer_request *req,
                       corral_infer_cb cb, void *arg, struct corral_error *err);

/* Requests accepted by corral_infer_async whose callback has not run yet. */
unsigned corral_inflight(const struct corral_client *cl);

/* Asks the server whether it is live and ready (a router: every model has a ready replica). */
int corral_health(struct corral_client *cl, unsigned timeout_ms, int *live, int *ready,
                  struct corral_error *err);

size_t corral_result_output_count(const struct corral_infer_result *r);
/* Fills *out with a view of output i (valid until corral_result_free). */
int corral_result_output(const struct corral_infer_result *r, size_t i, struct corral_tensor *out);
int corral_result_output_by_name(const struct corral_infer_result *r, const char *name,
                                 struct corral_tensor *out);
const char *corral_result_id(const struct corral_infer_result *r);
const char *corral_result_model_version(const struct corral_infer_result *r);
void corral_result_free(struct corral_infer_result *r);

#ifdef __cplusplus
}
#endif

#endif
