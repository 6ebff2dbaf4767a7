/*
 * libcorral example: classifies one 8x8 digit image with the bundled digits
 * model, once synchronously and then with many requests in flight at once.
 *
 *     corral-client-example [URL]      (default tcp://127.0.0.1:8001)
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "corral/client.h"

/* A hand-written "0": the 8x8 grey levels (0..16) that the digits model expects. */
static const float zero[64] = {
    0, 0, 5, 13, 9, 1, 0, 0,  0, 0, 13, 15, 10, 15, 5, 0, 0, 3, 15, 2, 0, 11, 8, 0,
    0, 4, 12, 0, 0, 8, 8, 0,  0, 5, 8, 0, 0, 9, 8, 0,     0, 4, 11, 0, 1, 12, 7, 0,
    0, 2, 14, 5, 10, 12, 0, 0, 0, 0, 6, 13, 10, 0, 0, 0,
};

static int argmax(const struct corral_tensor *t)
{
    const float *v = t->data;
    size_t n = t->nbytes / sizeof(float);
    int best = 0;
    for (size_t i = 1; i < n; i++)
        if (v[i] > v[best])
            best = (int)i;
    return best;
}

struct tally {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int left, ok, agree;
    int want;
};

static void on_done(void *arg, int status, const char *msg, struct corral_infer_result *res)
{
    struct tally *t = arg;
    struct corral_tensor out;
    int agree = 0;
    if (status == CORRAL_STATUS_OK && corral_result_output(res, 0, &out) == CORRAL_STATUS_OK)
        agree = argmax(&out) == t->want;
    else
        fprintf(stderr, "request failed: %s: %s\n", corral_status_name(status), msg);
    corral_result_free(res);
    pthread_mutex_lock(&t->mu);
    t->ok += status == CORRAL_STATUS_OK;
    t->agree += agree;
    if (--t->left == 0)
        pthread_cond_signal(&t->cv);
    pthread_mutex_unlock(&t->mu);
}

int main(int argc, char **argv)
{
    const char *url = argc > 1 ? argv[1] : "tcp://127.0.0.1:8001";
    struct corral_client *cl;
    struct corral_error err;
    if (corral_connect(&cl, url, NULL, &err)) {
        fprintf(stderr, "connect: %s\n", err.message);
        return 1;
    }
    int64_t shape[] = {1, 64};
    struct corral_tensor in = {"input", CORRAL_TYPE_FP32, shape, 2, zero, sizeof zero};
    struct corral_infer_request rq = {.model = "digits", .id = "example", .inputs = &in,
                                      .n_inputs = 1, .timeout_ms = 5000};
    struct corral_infer_result *res = NULL;
    if (corral_infer(cl, &rq, &res, &err)) {
        fprintf(stderr, "infer: %s: %s\n", corral_status_name(err.status), err.message);
        corral_close(cl);
        return 1;
    }
    struct corral_tensor out;
    corral_result_output(res, 0, &out);
    int digit = argmax(&out);
    printf("model version %s says: %d\n", corral_result_model_version(res), digit);
    corral_result_free(res);

    enum { N = 200 };
    struct tally t = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, N, 0, 0, digit};
    for (int i = 0; i < N; i++)
        if (corral_infer_async(cl, &rq, on_done, &t, &err)) {
            fprintf(stderr, "infer_async: %s\n", err.message);
            pthread_mutex_lock(&t.mu);
            t.left--;
            pthread_mutex_unlock(&t.mu);
        }
    pthread_mutex_lock(&t.mu);
    while (t.left > 0)
        pthread_cond_wait(&t.cv, &t.mu);
    pthread_mutex_unlock(&t.mu);
    printf("%d requests in flight together: %d answered, %d with the same digit\n", N, t.ok,
           t.agree);
    corral_close(cl);
    return t.ok == N && t.agree == N ? 0 : 1;
}
