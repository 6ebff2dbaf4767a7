/*
 * batching_load: closed-loop load over NNG against one corral-replica, for
 * bench/batching.sh.
 *
 *   batching_load write REPO NAME seq|mlp [BATCHING_JSON]
 *       writes a test model into a model repository (bench/batching_models.h)
 *   batching_load run URL INPUT_NAME CONCURRENCY SECONDS D1[,D2...] [SEQ_MIN SEQ_MAX]
 *       CONCURRENCY clients, each sending one request and waiting for its answer
 *       before the next, for SECONDS; the input shape is [1, D1, D2...] FP32, and
 *       with SEQ_MIN/SEQ_MAX its first non-batch dimension is drawn uniformly from
 *       that range. Each client packs 32 random requests up front and cycles
 *       through them. Prints requests/s, p50 and p99 latency and
 *       the replica's batching statistics.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>

#include "batching_models.h"
#include "wire.h"

#define MAX_CLIENTS 512
/* Requests each client packs before it starts and then sends in turn, so that the
 * load generator, which shares the CPUs with the replica, spends its time sending
 * rather than drawing random numbers and packing. */
#define PREPACKED 32

struct cfg {
    const char *url, *input;
    int conc;
    double seconds;
    int64_t dims[TENSOR_MAX_DIMS];
    int ndim;
    long seq_min, seq_max;
};

struct client {
    const struct cfg *c;
    pthread_t th;
    unsigned seed;
    double *lat;      /* milliseconds */
    size_t n, cap;
    size_t errors;
    char first_error[256];
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint8_t *pack(const struct cfg *c, unsigned *seed, size_t *len)
{
    Corral__Request req = CORRAL__REQUEST__INIT;
    Corral__InferRequest ir = CORRAL__INFER_REQUEST__INIT;
    Corral__Tensor t = CORRAL__TENSOR__INIT, *tp = &t;
    int64_t dims[TENSOR_MAX_DIMS];
    size_t n = 1;
    memcpy(dims, c->dims, sizeof dims);
    if (c->seq_max > 0)
        dims[1] = c->seq_min + (int64_t)(rand_r(seed) % (unsigned)(c->seq_max - c->seq_min + 1));
    for (int d = 0; d < c->ndim; d++)
        n *= (size_t)dims[d];
    float *x = malloc(n * sizeof(float));
    if (!x)
        return NULL;
    for (size_t i = 0; i < n; i++)
        x[i] = (float)(rand_r(seed) % 2001) / 1000.0f - 1.0f;
    t.name = (char *)c->input;
    t.datatype = CORRAL__DATA_TYPE__TYPE_FP32;
    t.n_shape = (size_t)c->ndim;
    t.shape = dims;
    t.data.data = (uint8_t *)x;
    t.data.len = n * sizeof(float);
    ir.n_inputs = 1;
    ir.inputs = &tp;
    req.kind_case = CORRAL__REQUEST__KIND_INFER;
    req.infer = &ir;
    uint8_t *buf = NULL;
    if (wire_pack_request(&req, &buf, len) != 0)
        buf = NULL;
    free(x);
    return buf;
}

static void *client_main(void *arg)
{
    struct client *cl = arg;
    const struct cfg *c = cl->c;
    nng_socket s;
    if (nng_req0_open(&s) != 0)
        return NULL;
    nng_socket_set_ms(s, NNG_OPT_RECVTIMEO, 60000);
    nng_socket_set_ms(s, NNG_OPT_REQ_RESENDTIME, 600000);
    nng_socket_set_size(s, NNG_OPT_RECVMAXSZ, WIRE_MAX_MESSAGE);
    if (nng_dial(s, c->url, NULL, 0) != 0) {
        snprintf(cl->first_error, sizeof cl->first_error, "cannot dial %s", c->url);
        cl->errors++;
        nng_close(s);
        return NULL;
    }
    uint8_t *bufs[PREPACKED];
    size_t lens[PREPACKED], nbufs = 0, next = 0;
    for (; nbufs < PREPACKED; nbufs++)
        if (!(bufs[nbufs] = pack(c, &cl->seed, &lens[nbufs])))
            break;
    double end = now_s() + c->seconds;
    while (nbufs && now_s() < end) {
        size_t k = next++ % nbufs;
        double t0 = now_s();
        void *rb = NULL;
        size_t rl = 0;
        /* Without NNG_FLAG_ALLOC nng_send copies the buffer, which stays ours to reuse. */
        int rv = nng_send(s, bufs[k], lens[k], 0);
        if (rv == 0)
            rv = nng_recv(s, &rb, &rl, NNG_FLAG_ALLOC);
        double t1 = now_s();
        Corral__Response *r = rv == 0 ? corral__response__unpack(NULL, rl, rb) : NULL;
        if (rb)
            nng_free(rb, rl);
        if (!r || r->kind_case != CORRAL__RESPONSE__KIND_INFER) {
            if (!cl->errors++)
                snprintf(cl->first_error, sizeof cl->first_error, "%s",
                         r && r->kind_case == CORRAL__RESPONSE__KIND_ERROR ? r->error->message
                                                                           : nng_strerror(rv));
        } else {
            if (cl->n == cl->cap) {
                size_t nc = cl->cap ? cl->cap * 2 : 1024;
                double *nl = realloc(cl->lat, nc * sizeof *nl);
                if (!nl)
                    break;
                cl->lat = nl;
                cl->cap = nc;
            }
            cl->lat[cl->n++] = (t1 - t0) * 1000.0;
        }
        if (r)
            corral__response__free_unpacked(r, NULL);
    }
    for (size_t k = 0; k < nbufs; k++)
        free(bufs[k]);
    nng_close(s);
    return NULL;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void print_stats(const char *url)
{
    nng_socket s;
    Corral__Request req = CORRAL__REQUEST__INIT;
    Corral__StatsRequest sr = CORRAL__STATS_REQUEST__INIT;
    uint8_t *buf = NULL;
    size_t len;
    void *rb = NULL;
    size_t rl = 0;
    req.kind_case = CORRAL__REQUEST__KIND_STATS;
    req.stats = &sr;
    if (nng_req0_open(&s) != 0)
        return;
    nng_socket_set_ms(s, NNG_OPT_RECVTIMEO, 10000);
    if (nng_dial(s, url, NULL, 0) != 0 || wire_pack_request(&req, &buf, &len) != 0 ||
        nng_send(s, buf, len, 0) != 0 || nng_recv(s, &rb, &rl, NNG_FLAG_ALLOC) != 0) {
        free(buf);
        nng_close(s);
        return;
    }
    free(buf);
    Corral__Response *r = corral__response__unpack(NULL, rl, rb);
    nng_free(rb, rl);
    nng_close(s);
    if (!r || r->kind_case != CORRAL__RESPONSE__KIND_STATS) {
        if (r)
            corral__response__free_unpacked(r, NULL);
        return;
    }
    const Corral__StatsResponse *st = r->stats;
    printf("replica: %llu batches, mean batch %.2f rows, padding efficiency %.3f, "
           "compute %.3f ms/batch, gather %.1f us/batch, scatter %.1f us/batch\n",
           (unsigned long long)st->batch_count,
           st->batch_count ? (double)st->batch_rows / (double)st->batch_count : 0.0,
           st->padded_elements ? (double)st->real_elements / (double)st->padded_elements : 0.0,
           st->batch_count ? (double)st->compute_time_us / 1000.0 / (double)st->batch_count : 0.0,
           st->batch_count ? (double)st->gather_time_us / (double)st->batch_count : 0.0,
           st->batch_count ? (double)st->scatter_time_us / (double)st->batch_count : 0.0);
    corral__response__free_unpacked(r, NULL);
}

static int run(int argc, char **argv)
{
    struct cfg c = {0};
    static struct client cl[MAX_CLIENTS];
    if (argc < 7)
        return 2;
    c.url = argv[2];
    c.input = argv[3];
    c.conc = atoi(argv[4]);
    c.seconds = atof(argv[5]);
    if (c.conc < 1 || c.conc > MAX_CLIENTS || c.seconds <= 0) {
        fprintf(stderr, "batching_load: concurrency must be 1..%d and seconds > 0\n", MAX_CLIENTS);
        return 2;
    }
    c.dims[0] = 1;
    c.ndim = 1;
    for (char *p = argv[6], *end; *p && c.ndim < TENSOR_MAX_DIMS; p = *end ? end + 1 : end) {
        c.dims[c.ndim++] = strtol(p, &end, 10);
        if (c.dims[c.ndim - 1] < 1 || (*end && *end != ',')) {
            fprintf(stderr, "batching_load: bad dimension list '%s'\n", argv[6]);
            return 2;
        }
    }
    if (argc >= 9) {
        c.seq_min = atol(argv[7]);
        c.seq_max = atol(argv[8]);
        if (c.seq_min < 1 || c.seq_max < c.seq_min || c.ndim < 2) {
            fprintf(stderr, "batching_load: bad sequence range\n");
            return 2;
        }
    }
    double t0 = now_s();
    for (int i = 0; i < c.conc; i++) {
        cl[i].c = &c;
        cl[i].seed = 1000u + (unsigned)i;
        if (pthread_create(&cl[i].th, NULL, client_main, &cl[i]) != 0) {
            fprintf(stderr, "batching_load: cannot start client threads\n");
            return 1;
        }
    }
    size_t total = 0, errors = 0;
    for (int i = 0; i < c.conc; i++) {
        pthread_join(cl[i].th, NULL);
        total += cl[i].n;
        errors += cl[i].errors;
    }
    double el = now_s() - t0;
    double *all = malloc((total ? total : 1) * sizeof *all);
    if (!all)
        return 1;
    size_t k = 0;
    for (int i = 0; i < c.conc; i++) {
        memcpy(all + k, cl[i].lat, cl[i].n * sizeof *all);
        k += cl[i].n;
        free(cl[i].lat);
    }
    qsort(all, total, sizeof *all, cmp_double);
    printf("concurrency %d: %zu requests in %.1f s: %.0f req/s, p50 %.3f ms, p99 %.3f ms, %zu errors\n",
           c.conc, total, el, (double)total / el, total ? all[total / 2] : 0.0,
           total ? all[(size_t)((double)total * 0.99)] : 0.0, errors);
    for (int i = 0; i < c.conc && errors; i++)
        if (cl[i].errors) {
            printf("first error: %s\n", cl[i].first_error);
            break;
        }
    free(all);
    print_stats(c.url);
    return errors ? 1 : 0;
}

int main(int argc, char **argv)
{
    if (argc >= 5 && strcmp(argv[1], "write") == 0) {
        struct cerr e = {0};
        enum bmodel_kind k = strcmp(argv[4], "seq") == 0 ? BMODEL_SEQ : BMODEL_MLP;
        if (bmodel_write(argv[2], argv[3], k, argc >= 6 ? argv[5] : NULL, &e)) {
            fprintf(stderr, "batching_load: %s\n", e.msg);
            return 1;
        }
        return 0;
    }
    if (argc >= 7 && strcmp(argv[1], "run") == 0)
        return run(argc, argv);
    fprintf(stderr, "usage: batching_load write REPO NAME seq|mlp [BATCHING_JSON]\n"
                    "       batching_load run URL INPUT CONCURRENCY SECONDS D1[,D2..] [SEQ_MIN SEQ_MAX]\n");
    return 2;
}
