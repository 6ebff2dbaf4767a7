/*
 * libcorral against a live router: 1000 asynchronous requests in flight on one
 * client, every answer checked against its own request (the dtypes model is
 * an Identity, so each answer must carry exactly the values its request
 * sent), then the error statuses a service sees: unknown model, bad input,
 * and a deadline with nobody listening.
 *
 * Usage: test_client_async RPC_URL     (started by test_client.py)
 * Exit status 0 when every check passed.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "corral/client.h"

#define N_REQ 1000

static const char *names[12] = {"x_bool", "x_uint8", "x_uint16", "x_uint32", "x_uint64",
                                "x_int8", "x_int16", "x_int32", "x_int64", "x_fp16",
                                "x_fp32", "x_fp64"};
static const int types[12] = {CORRAL_TYPE_BOOL,  CORRAL_TYPE_UINT8, CORRAL_TYPE_UINT16,
                              CORRAL_TYPE_UINT32, CORRAL_TYPE_UINT64, CORRAL_TYPE_INT8,
                              CORRAL_TYPE_INT16, CORRAL_TYPE_INT32, CORRAL_TYPE_INT64,
                              CORRAL_TYPE_FP16,  CORRAL_TYPE_FP32,  CORRAL_TYPE_FP64};
static const size_t sizes[12] = {1, 1, 2, 4, 8, 1, 2, 4, 8, 2, 4, 8};

/*
 * What became of the requests: every one corral_infer_async accepted (submitted) must
 * get exactly one callback (callbacks), which is a correct answer (ok), a wrong one
 * (wrong) or a failure status (failed); refused submissions are counted apart.
 */
struct state {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int submitted, refused, callbacks, ok, wrong, failed;
    unsigned peak;
};

struct req_ctx {
    struct state *st;
    int calls; /* callbacks for this request (under st->mu) */
    int64_t want_i64[3];
    float want_f32[3];
};

static void on_done(void *arg, int status, const char *msg, struct corral_infer_result *res)
{
    struct req_ctx *rc = arg;
    struct state *st = rc->st;
    int good = 0;
    if (status == CORRAL_STATUS_OK) {
        struct corral_tensor a, b;
        good = corral_result_output_by_name(res, "y_int64", &a) == CORRAL_STATUS_OK &&
               corral_result_output_by_name(res, "y_fp32", &b) == CORRAL_STATUS_OK &&
               a.nbytes == sizeof rc->want_i64 && b.nbytes == sizeof rc->want_f32 &&
               memcmp(a.data, rc->want_i64, sizeof rc->want_i64) == 0 &&
               memcmp(b.data, rc->want_f32, sizeof rc->want_f32) == 0 && a.ndim == 2 &&
               a.shape[0] == 1 && a.shape[1] == 3;
        if (!good)
            fprintf(stderr, "an answer does not match its request\n");
    } else {
        fprintf(stderr, "request failed: %s: %s\n", corral_status_name(status), msg);
    }
    corral_result_free(res);
    pthread_mutex_lock(&st->mu);
    rc->calls++;
    st->callbacks++;
    st->ok += good;
    st->wrong += status == CORRAL_STATUS_OK && !good;
    st->failed += status != CORRAL_STATUS_OK;
    pthread_cond_signal(&st->cv);
    pthread_mutex_unlock(&st->mu);
}

/* Waits until every submitted request had its callback, or until the deadline (the
 * requests' own timeout plus a margin: past it a missing callback is a lost request). */
static void wait_callbacks(struct state *st, int seconds)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += seconds;
    pthread_mutex_lock(&st->mu);
    while (st->callbacks < st->submitted &&
           pthread_cond_timedwait(&st->cv, &st->mu, &until) == 0) {
    }
    pthread_mutex_unlock(&st->mu);
}

static int fails;

#define CHECK(cond, ...)                                                                      \
    do {                                                                                      \
        if (!(cond)) {                                                                        \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                             \
            fprintf(stderr, __VA_ARGS__);                                                     \
            fprintf(stderr, "\n");                                                            \
            fails++;                                                                          \
        }                                                                                     \
    } while (0)

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: test_client_async RPC_URL\n");
        return 2;
    }
    struct corral_client *cl;
    struct corral_error err;
    if (corral_connect(&cl, argv[1], NULL, &err)) {
        fprintf(stderr, "connect: %s\n", err.message);
        return 1;
    }
    int live = 0, ready = 0;
    CHECK(corral_health(cl, 3000, &live, &ready, &err) == CORRAL_STATUS_OK && live && ready,
          "health: %s", err.message);

    /* Every request owns its buffers until the call returns; the answers own theirs. */
    static uint8_t data[N_REQ][12][24];
    static struct req_ctx ctxs[N_REQ];
    static const int64_t shape[2] = {1, 3};
    struct state st = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < N_REQ; i++) {
        struct corral_tensor in[12];
        memset(data[i], 0, sizeof data[i]);
        ctxs[i].st = &st;
        for (int k = 0; k < 3; k++) {
            ctxs[i].want_i64[k] = (int64_t)i * 1000003 + k;
            ctxs[i].want_f32[k] = (float)i + 0.25f * (float)k;
        }
        memcpy(data[i][8], ctxs[i].want_i64, sizeof ctxs[i].want_i64);
        memcpy(data[i][10], ctxs[i].want_f32, sizeof ctxs[i].want_f32);
        for (int j = 0; j < 12; j++)
            in[j] = (struct corral_tensor){names[j], types[j], shape, 2, data[i][j], 3 * sizes[j]};
        const char *outs[] = {"y_int64", "y_fp32"};
        struct corral_infer_request rq = {.model = "dtypes", .inputs = in, .n_inputs = 12,
                                          .outputs = outs, .n_outputs = 2, .timeout_ms = 20000};
        /* Counted before the call: the callback may run before it returns. */
        pthread_mutex_lock(&st.mu);
        st.submitted++;
        pthread_mutex_unlock(&st.mu);
        if (corral_infer_async(cl, &rq, on_done, &ctxs[i], &err)) {
            fprintf(stderr, "infer_async %d: %s\n", i, err.message);
            pthread_mutex_lock(&st.mu);
            st.submitted--;
            st.refused++;
            pthread_mutex_unlock(&st.mu);
        }
        unsigned n = corral_inflight(cl);
        if (n > st.peak)
            st.peak = n;
    }
    wait_callbacks(&st, 20 + 40);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    pthread_mutex_lock(&st.mu);
    printf("%d async requests: %d submitted (%d refused), %d callbacks: %d correct, %d wrong, "
           "%d failed; at most %u in flight at once, %.1f ms\n", N_REQ, st.submitted,
           st.refused, st.callbacks, st.ok, st.wrong, st.failed, st.peak, secs * 1e3);
    CHECK(st.refused == 0 && st.submitted == N_REQ, "%d of %d submitted, %d refused",
          st.submitted, N_REQ, st.refused);
    CHECK(st.callbacks == st.submitted, "%d callbacks for %d requests submitted", st.callbacks,
          st.submitted);
    CHECK(st.wrong == 0, "%d answers do not match their request", st.wrong);
    CHECK(st.failed == 0, "%d requests failed", st.failed);
    CHECK(st.ok == N_REQ, "%d of %d answers correct", st.ok, N_REQ);
    int twice = 0, never = 0;
    for (int i = 0; i < N_REQ; i++) {
        twice += ctxs[i].calls > 1;
        never += ctxs[i].calls == 0;
    }
    CHECK(twice == 0 && never == 0, "%d requests called back more than once, %d never", twice,
          never);
    pthread_mutex_unlock(&st.mu);
    CHECK(st.peak >= 100, "only %u requests were in flight together", st.peak);

    /* Errors come back with the server's code and sentence. */
    float px[64] = {0};
    int64_t s64[2] = {1, 64}, s63[2] = {1, 63};
    struct corral_tensor t = {"input", CORRAL_TYPE_FP32, s64, 2, px, sizeof px};
    struct corral_infer_request rq = {.model = "nosuch", .inputs = &t, .n_inputs = 1};
    struct corral_infer_result *res = NULL;
    int rc = corral_infer(cl, &rq, &res, &err);
    CHECK(rc == CORRAL_STATUS_NOT_FOUND && strstr(err.message, "nosuch"),
          "unknown model: %s %s", corral_status_name(rc), err.message);
    t.shape = s63;
    t.nbytes = 63 * sizeof(float);
    rq.model = "digits";
    rc = corral_infer(cl, &rq, &res, &err);
    CHECK(rc == CORRAL_STATUS_INVALID && strstr(err.message, "64"), "bad shape: %s %s",
          corral_status_name(rc), err.message);
    t.nbytes = 7; /* refused by the client itself: bytes do not match the shape */
    rc = corral_infer_async(cl, &rq, on_done, NULL, &err);
    CHECK(rc == CORRAL_STATUS_INVALID, "inconsistent tensor accepted: %s", err.message);
    t.shape = s64;
    t.nbytes = sizeof px;
    rc = corral_infer(cl, &rq, &res, &err);
    CHECK(rc == CORRAL_STATUS_OK && corral_result_output_count(res) == 1, "digits: %s",
          err.message);
    corral_result_free(res);
    corral_close(cl);
    /* Closing the client brought no late or second callback. */
    pthread_mutex_lock(&st.mu);
    CHECK(st.callbacks == st.submitted, "%d callbacks for %d requests after the close",
          st.callbacks, st.submitted);
    pthread_mutex_unlock(&st.mu);

    /* Nobody listening: the request waits for its deadline and says so. */
    if (corral_connect(&cl, "tcp://127.0.0.1:1", NULL, &err) == CORRAL_STATUS_OK) {
        rq.timeout_ms = 100;
        rc = corral_infer(cl, &rq, &res, &err);
        CHECK(rc == CORRAL_STATUS_TIMEOUT, "no server: %s %s", corral_status_name(rc),
              err.message);
        corral_close(cl);
    }
    if (fails)
        fprintf(stderr, "%d checks failed\n", fails);
    return fails ? 1 : 0;
}
