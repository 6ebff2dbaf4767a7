/*
 * The dynamic batcher through real corral-replica processes, spoken to over NNG
 * on loopback: results of concurrent batched requests against running each
 * request alone in-process, and the queue policies (delay bound, queue full,
 * timeouts, priority, preserve_ordering, liveness under a stalled executor).
 *
 * Usage: test_batching_nng REPLICA_BINARY DIGITS_VERSION_DIR [TRANSFORMER_VERSION_DIR]
 *
 * TRANSFORMER_VERSION_DIR is an export of bench/models/zoo.py:transformer_masked
 * (deploy/export/export.py, inputs ids and mask); without it that test is skipped.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>

#include "batching_models.h"
#include "engine.h"
#include "wire.h"

static const char *replica_bin, *digits_dir, *transformer_dir;
static char repo[256];
/* Replicas started and not yet stopped: a failed test leaves them to the teardown. */
static pid_t running[16];

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* ---- processes -------------------------------------------------------------------------- */

struct proc {
    pid_t pid;
    char url[128];
    char log[512];
};

/* Starts a replica with its output in a log file and waits for its "serving ... on URL" line. */
static void start_replica(const char *model, struct proc *p, const char *overlap)
{
    snprintf(p->log, sizeof p->log, "%s/%s.log", repo, model);
    /* A log left by an earlier replica of this model would announce a dead URL. */
    unlink(p->log);
    p->pid = fork();
    assert_true(p->pid >= 0);
    for (size_t i = 0; p->pid > 0 && i < sizeof running / sizeof running[0]; i++)
        if (!running[i]) {
            running[i] = p->pid;
            break;
        }
    if (p->pid == 0) {
        FILE *f = freopen(p->log, "w", stderr);
        if (!f)
            _exit(127);
        dup2(STDERR_FILENO, STDOUT_FILENO);
        execl(replica_bin, replica_bin, "--model-repo", repo, "--model", model, "--listen",
              "tcp://127.0.0.1:0", "--test-hooks", "--overlap", overlap ? overlap : "on",
              (char *)NULL);
        _exit(127);
    }
    uint64_t deadline = now_ms() + 60000;
    while (now_ms() < deadline) {
        FILE *f = fopen(p->log, "r");
        char line[1024];
        while (f && fgets(line, sizeof line, f)) {
            char *s = strstr(line, "serving model");
            char *u = s ? strstr(s, " on tcp://") : NULL;
            /* The line may still be half written: take the URL only once what follows it is there. */
            if (u && strstr(u, " (device") && sscanf(u + 4, "%127[^ ]", p->url) == 1) {
                fclose(f);
                return;
            }
        }
        if (f)
            fclose(f);
        int st;
        if (waitpid(p->pid, &st, WNOHANG) == p->pid) {
            char cmd[600];
            snprintf(cmd, sizeof cmd, "cat '%s' >&2", p->log);
            if (system(cmd) != 0)
                fprintf(stderr, "(no log)\n");
            fail_msg("replica for %s exited before serving", model);
        }
        sleep_ms(20);
    }
    kill(p->pid, SIGKILL);
    fail_msg("replica for %s did not start within 60 s", model);
}

/* SIGTERM; the replica must exit 0 (under the sanitizers, with no leak). */
static void stop_replica(struct proc *p)
{
    int st = 0;
    kill(p->pid, SIGTERM);
    assert_int_equal(waitpid(p->pid, &st, 0), p->pid);
    for (size_t i = 0; i < sizeof running / sizeof running[0]; i++)
        if (running[i] == p->pid)
            running[i] = 0;
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        char cmd[600];
        snprintf(cmd, sizeof cmd, "tail -n 40 '%s' >&2", p->log);
        if (system(cmd) != 0)
            fprintf(stderr, "(no log)\n");
    }
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
}

/* ---- RPC -------------------------------------------------------------------------------- */

struct client {
    nng_socket s;
};

static void client_open(struct client *c, const char *url)
{
    assert_int_equal(nng_req0_open(&c->s), 0);
    nng_socket_set_ms(c->s, NNG_OPT_RECVTIMEO, 30000);
    nng_socket_set_ms(c->s, NNG_OPT_REQ_RESENDTIME, 600000);
    nng_socket_set_size(c->s, NNG_OPT_RECVMAXSZ, WIRE_MAX_MESSAGE);
    assert_int_equal(nng_dial(c->s, url, NULL, 0), 0);
}

static void client_close(struct client *c) { nng_close(c->s); }

/* Sends one packed Request (freed here); NULL on a transport failure. Thread-safe. */
static Corral__Response *client_call(struct client *c, uint8_t *buf, size_t len)
{
    void *rb = NULL;
    size_t rl = 0;
    int rv = nng_send(c->s, buf, len, 0);
    free(buf);
    if (rv == 0)
        rv = nng_recv(c->s, &rb, &rl, NNG_FLAG_ALLOC);
    if (rv != 0) {
        fprintf(stderr, "  rpc failed: %s\n", nng_strerror(rv));
        return NULL;
    }
    Corral__Response *r = corral__response__unpack(NULL, rl, rb);
    nng_free(rb, rl);
    return r;
}

struct req_opts {
    const char *id;
    const char *only_output;
    int64_t timeout_us, priority, stall_ms;
};

static uint8_t *pack_infer_n(const struct tensor *in, size_t n_in, const struct req_opts *o,
                             size_t *len)
{
    Corral__Request req = CORRAL__REQUEST__INIT;
    Corral__InferRequest ir = CORRAL__INFER_REQUEST__INIT;
    Corral__Tensor t[2], *tp[2];
    Corral__RequestedOutput ro = CORRAL__REQUESTED_OUTPUT__INIT, *rop = &ro;
    Corral__Parameter p[3], *pp[3];
    size_t np = 0;
    assert_true(n_in >= 1 && n_in <= 2);
    for (size_t i = 0; i < n_in; i++) {
        corral__tensor__init(&t[i]);
        t[i].name = (char *)in[i].name;
        t[i].datatype = (Corral__DataType)in[i].dtype;
        t[i].n_shape = (size_t)in[i].ndim;
        t[i].shape = (int64_t *)in[i].dims;
        t[i].data.data = in[i].data;
        t[i].data.len = in[i].nbytes;
        tp[i] = &t[i];
    }
    ir.id = (char *)(o && o->id ? o->id : "");
    ir.n_inputs = n_in;
    ir.inputs = tp;
    if (o && o->only_output) {
        ro.name = (char *)o->only_output;
        ir.n_outputs = 1;
        ir.outputs = &rop;
    }
    const char *keys[3] = {"timeout", "priority", "corral_test_stall_ms"};
    int64_t vals[3] = {o ? o->timeout_us : 0, o ? o->priority : 0, o ? o->stall_ms : 0};
    for (int k = 0; k < 3; k++) {
        if (!vals[k])
            continue;
        corral__parameter__init(&p[np]);
        p[np].key = (char *)keys[k];
        p[np].value_case = CORRAL__PARAMETER__VALUE_INT64_VALUE;
        p[np].int64_value = vals[k];
        pp[np] = &p[np];
        np++;
    }
    ir.n_parameters = np;
    ir.parameters = pp;
    req.kind_case = CORRAL__REQUEST__KIND_INFER;
    req.infer = &ir;
    uint8_t *buf = NULL;
    assert_int_equal(wire_pack_request(&req, &buf, len), 0);
    return buf;
}

static uint8_t *pack_infer(const struct tensor *in, const struct req_opts *o, size_t *len)
{
    return pack_infer_n(in, 1, o, len);
}

static uint8_t *pack_kind(Corral__Request__KindCase kind, size_t *len)
{
    Corral__Request req = CORRAL__REQUEST__INIT;
    Corral__HealthRequest h = CORRAL__HEALTH_REQUEST__INIT;
    Corral__StatsRequest s = CORRAL__STATS_REQUEST__INIT;
    req.kind_case = kind;
    if (kind == CORRAL__REQUEST__KIND_HEALTH)
        req.health = &h;
    else
        req.stats = &s;
    uint8_t *buf = NULL;
    assert_int_equal(wire_pack_request(&req, &buf, len), 0);
    return buf;
}

static Corral__Response *get_stats(const char *url)
{
    struct client c;
    size_t len;
    client_open(&c, url);
    uint8_t *buf = pack_kind(CORRAL__REQUEST__KIND_STATS, &len);
    Corral__Response *r = client_call(&c, buf, len);
    client_close(&c);
    assert_non_null(r);
    if (r->kind_case == CORRAL__RESPONSE__KIND_ERROR)
        fail_msg("stats answered with error %d: %s", r->error->code, r->error->message);
    assert_int_equal(r->kind_case, CORRAL__RESPONSE__KIND_STATS);
    return r;
}

static uint64_t rejections(const Corral__StatsResponse *s, const char *reason)
{
    for (size_t i = 0; i < s->n_rejections; i++)
        if (strcmp(s->rejections[i]->reason, reason) == 0)
            return s->rejections[i]->count;
    fail_msg("no rejection reason '%s' in the stats", reason);
    return 0;
}

static int err_code(const Corral__Response *r)
{
    if (!r)
        return 1; /* transport failure: neither a result nor a corral error */
    return r->kind_case == CORRAL__RESPONSE__KIND_ERROR ? r->error->code : 0;
}

/* ---- deterministic inputs --------------------------------------------------------------- */

static uint32_t rng = 1;
static uint32_t rnd(void)
{
    rng = rng * 1103515245u + 12345u;
    return rng >> 8;
}

static void make_input(struct tensor *t, const char *name, const int64_t *dims, int nd)
{
    assert_int_equal(tensor_alloc(t, name, DT_FP32, dims, nd, NULL), 0);
    for (size_t i = 0; i < t->nbytes / 4; i++)
        ((float *)t->data)[i] = (float)(rnd() % 20001) / 10000.0f - 1.0f;
}

/* ---- concurrency: each request gets its own result -------------------------------------- */

struct job {
    struct tensor in;
    struct tensor in2;      /* a second input (the transformer's mask), when in2.data */
    const char *only;       /* one requested output, or NULL for all */
    struct tensor ref[2];   /* the request run alone, in-process */
    Corral__Response *resp;
};

struct pool {
    const char *url;
    struct job *jobs;
    size_t n_jobs, n_threads, next;
    pthread_mutex_t mu;
};

/* One client thread of a pool and what became of the requests it sent. */
struct pool_thread {
    struct pool *p;
    pthread_t th;
    int connected;
    size_t sent, results, errors, lost; /* lost: no answer at all (transport) */
};

static void *pool_main(void *arg)
{
    struct pool_thread *pt = arg;
    struct pool *p = pt->p;
    struct client c;
    if (nng_req0_open(&c.s) != 0)
        return NULL;
    nng_socket_set_ms(c.s, NNG_OPT_RECVTIMEO, 60000);
    nng_socket_set_ms(c.s, NNG_OPT_REQ_RESENDTIME, 600000);
    nng_socket_set_size(c.s, NNG_OPT_RECVMAXSZ, WIRE_MAX_MESSAGE);
    if (nng_dial(c.s, p->url, NULL, 0) != 0) {
        nng_close(c.s);
        return NULL;
    }
    pt->connected = 1;
    for (;;) {
        pthread_mutex_lock(&p->mu);
        size_t k = p->next++;
        pthread_mutex_unlock(&p->mu);
        if (k >= p->n_jobs)
            break;
        struct req_opts o = {.only_output = p->jobs[k].only};
        size_t len;
        struct tensor ins[2] = {p->jobs[k].in, p->jobs[k].in2};
        uint8_t *buf = pack_infer_n(ins, ins[1].data ? 2 : 1, &o, &len);
        pt->sent++;
        Corral__Response *r = client_call(&c, buf, len);
        p->jobs[k].resp = r;
        if (!r)
            pt->lost++;
        else if (r->kind_case == CORRAL__RESPONSE__KIND_INFER)
            pt->results++;
        else
            pt->errors++;
    }
    nng_close(c.s);
    return NULL;
}

/*
 * Runs n jobs on `threads` client threads. Every thread must have connected, and every
 * request it sent must have come back: per thread, results + errors == sent with
 * nothing lost; in all, as many sent and answered as there are jobs, and no errors.
 */
static void run_pool(const char *url, struct job *jobs, size_t n, size_t threads)
{
    struct pool p = {.url = url, .jobs = jobs, .n_jobs = n, .n_threads = threads};
    struct pool_thread pt[256];
    size_t sent = 0, results = 0, errors = 0, lost = 0, unconnected = 0, idle = 0;
    assert_true(threads <= sizeof pt / sizeof pt[0]);
    memset(pt, 0, sizeof pt);
    pthread_mutex_init(&p.mu, NULL);
    for (size_t i = 0; i < threads; i++) {
        pt[i].p = &p;
        assert_int_equal(pthread_create(&pt[i].th, NULL, pool_main, &pt[i]), 0);
    }
    for (size_t i = 0; i < threads; i++) {
        pthread_join(pt[i].th, NULL);
        if (!pt[i].connected)
            unconnected++;
        if (!pt[i].sent)
            idle++;
        if (pt[i].results + pt[i].errors + pt[i].lost != pt[i].sent || pt[i].lost)
            fail_msg("client thread %zu: %zu sent, %zu results, %zu errors, %zu lost", i,
                     pt[i].sent, pt[i].results, pt[i].errors, pt[i].lost);
        sent += pt[i].sent;
        results += pt[i].results;
        errors += pt[i].errors;
        lost += pt[i].lost;
    }
    pthread_mutex_destroy(&p.mu);
    printf("  %zu threads (%zu sent nothing): %zu requests sent, %zu results, %zu errors, "
           "%zu lost\n", threads, idle, sent, results, errors, lost);
    for (size_t k = 0; errors && k < n; k++)
        if (jobs[k].resp && jobs[k].resp->kind_case == CORRAL__RESPONSE__KIND_ERROR) {
            printf("  job %zu (first error): %s\n", k, jobs[k].resp->error->message);
            break;
        }
    assert_int_equal(unconnected, 0);
    assert_int_equal(sent, n);
    assert_int_equal(results, n);
    assert_int_equal(errors, 0);
    assert_int_equal(lost, 0);
    for (size_t k = 0; k < n; k++)
        assert_non_null(jobs[k].resp);
}

/* Compares every answer with its in-process reference: same names, shapes, values within 1e-4. */
static void check_jobs(struct engine *eng, struct job *jobs, size_t n)
{
    double worst = 0;
    for (size_t k = 0; k < n; k++) {
        Corral__Response *r = jobs[k].resp;
        if (!r || r->kind_case != CORRAL__RESPONSE__KIND_INFER)
            fail_msg("job %zu: %s", k, r && r->kind_case == CORRAL__RESPONSE__KIND_ERROR
                                           ? r->error->message : "no infer response");
        size_t want = jobs[k].only ? 1 : engine_num_outputs(eng);
        assert_int_equal(r->infer->n_outputs, want);
        for (size_t q = 0; q < r->infer->n_outputs; q++) {
            const Corral__Tensor *t = r->infer->outputs[q];
            size_t j;
            for (j = 0; j < engine_num_outputs(eng); j++)
                if (strcmp(engine_output(eng, j)->name, t->name) == 0)
                    break;
            assert_true(j < engine_num_outputs(eng));
            if (jobs[k].only)
                assert_string_equal(t->name, jobs[k].only);
            const struct tensor *ref = &jobs[k].ref[j];
            assert_int_equal(t->n_shape, (size_t)ref->ndim);
            for (int d = 0; d < ref->ndim; d++)
                if (t->shape[d] != ref->dims[d])
                    fail_msg("job %zu output %s dim %d: got %lld, alone %lld", k, t->name, d,
                             (long long)t->shape[d], (long long)ref->dims[d]);
            assert_int_equal(t->data.len, ref->nbytes);
            const float *a = (const float *)t->data.data, *b = ref->data;
            for (size_t i = 0; i < ref->nbytes / 4; i++) {
                double d = a[i] > b[i] ? a[i] - b[i] : b[i] - a[i];
                if (d > worst)
                    worst = d;
                if (d > 1e-4)
                    fail_msg("job %zu output %s element %zu: batched %g, alone %g", k, t->name, i,
                             (double)a[i], (double)b[i]);
            }
        }
    }
    printf("  %zu requests match their run alone (max abs diff %.3g)\n", n, worst);
}

static void free_jobs(struct job *jobs, size_t n)
{
    for (size_t k = 0; k < n; k++) {
        tensor_release(&jobs[k].in);
        tensor_release(&jobs[k].in2);
        tensor_release(&jobs[k].ref[0]);
        tensor_release(&jobs[k].ref[1]);
        if (jobs[k].resp)
            corral__response__free_unpacked(jobs[k].resp, NULL);
    }
    free(jobs);
}

static struct engine *load_model(const char *model)
{
    char path[600];
    struct engine *eng = NULL;
    struct engine_options eo = ENGINE_OPTIONS_DEFAULT;
    struct cerr e = {0};
    snprintf(path, sizeof path, "%s/%s/1/model.onnx", repo, model);
    if (engine_load_file(path, &eo, &eng, &e))
        fail_msg("%s", e.msg);
    return eng;
}

static void print_stats(const Corral__StatsResponse *s)
{
    printf("  stats: %llu requests, %llu ok, %llu batches of %llu rows, padding efficiency %.3f, "
           "queue %.3f ms/request, compute %.3f ms/batch\n   histogram:",
           (unsigned long long)s->request_count, (unsigned long long)s->success_count,
           (unsigned long long)s->batch_count, (unsigned long long)s->batch_rows,
           s->padded_elements ? (double)s->real_elements / (double)s->padded_elements : 0.0,
           s->request_count ? (double)s->queue_time_us / 1000.0 / (double)s->request_count : 0.0,
           s->batch_count ? (double)s->compute_time_us / 1000.0 / (double)s->batch_count : 0.0);
    for (size_t i = 0; i < s->n_batch_size_histogram; i++)
        printf(" %llu:%llu", (unsigned long long)s->batch_size_histogram[i]->size,
               (unsigned long long)s->batch_size_histogram[i]->count);
    printf("\n");
}

static void test_concurrent_digits(void **state)
{
    enum { N = 400 };
    struct proc p;
    struct engine *eng = load_model("digits_b8");
    struct job *jobs = calloc(N, sizeof *jobs);
    assert_non_null(jobs);
    for (size_t k = 0; k < N; k++) {
        /* Batch sizes 1..8, and now and then one larger than max_batch_size (split). */
        int64_t dims[2] = {1 + (int64_t)(rnd() % 8), 64};
        if (k % 50 == 7)
            dims[0] = 19;
        make_input(&jobs[k].in, "input", dims, 2);
        assert_int_equal(engine_run(eng, &jobs[k].in, 1, jobs[k].ref, NULL), 0);
    }
    start_replica("digits_b8", &p, NULL);
    run_pool(p.url, jobs, N, 100);
    check_jobs(eng, jobs, N);
    Corral__Response *st = get_stats(p.url);
    print_stats(st->stats);
    assert_int_equal(st->stats->success_count, N);
    assert_int_equal(st->stats->request_count, N);
    /* Under 100 concurrent clients the requests must actually have shared batches. */
    assert_true(st->stats->batch_count < N);
    assert_int_equal(st->stats->real_elements <= st->stats->padded_elements, 1);
    corral__response__free_unpacked(st, NULL);
    stop_replica(&p);
    free_jobs(jobs, N);
    engine_free(eng);
}

static void test_concurrent_seq(void **state)
{
    enum { N = 300 };
    struct proc p;
    struct engine *eng = load_model("seq");
    struct job *jobs = calloc(N, sizeof *jobs);
    assert_non_null(jobs);
    for (size_t k = 0; k < N; k++) {
        int64_t dims[3] = {1 + (int64_t)(rnd() % 8), 3 + (int64_t)(rnd() % 126), 8};
        make_input(&jobs[k].in, "x", dims, 3);
        jobs[k].only = k % 3 == 0 ? "y" : NULL;
        assert_int_equal(engine_run(eng, &jobs[k].in, 1, jobs[k].ref, NULL), 0);
    }
    start_replica("seq", &p, NULL);
    run_pool(p.url, jobs, N, 100);
    check_jobs(eng, jobs, N);

    /* Longer than the largest bucket, or the wrong width: refused, nobody else affected. */
    struct client c;
    struct tensor big = {0}, bad = {0};
    size_t len;
    int64_t bd[3] = {1, 129, 8}, wd[3] = {2, 10, 7};
    make_input(&big, "x", bd, 3);
    make_input(&bad, "x", wd, 3);
    client_open(&c, p.url);
    uint8_t *buf = pack_infer(&big, NULL, &len);
    Corral__Response *r = client_call(&c, buf, len);
    assert_int_equal(err_code(r), CORRAL_ETOOLARGE);
    printf("  too long: %s\n", r->error->message);
    corral__response__free_unpacked(r, NULL);
    buf = pack_infer(&bad, NULL, &len);
    r = client_call(&c, buf, len);
    assert_int_equal(err_code(r), CORRAL_EINVAL);
    printf("  wrong width: %s\n", r->error->message);
    corral__response__free_unpacked(r, NULL);
    client_close(&c);
    tensor_release(&big);
    tensor_release(&bad);

    Corral__Response *st = get_stats(p.url);
    print_stats(st->stats);
    assert_int_equal(st->stats->success_count, N);
    assert_int_equal(rejections(st->stats, "too_large"), 1);
    assert_int_equal(rejections(st->stats, "invalid"), 1);
    assert_true(st->stats->padded_elements > st->stats->real_elements);
    assert_true(st->stats->batch_count < N);
    corral__response__free_unpacked(st, NULL);
    stop_replica(&p);
    free_jobs(jobs, N);
    engine_free(eng);
}

static void test_concurrent_transformer(void **state)
{
    /* bench/models/zoo.py:transformer_masked: padded keys get a large negative attention
     * bias and the pooling is the masked mean, so a request padded into a 16/32/64/128
     * bucket (ids 0, mask 0) must come back with the logits it has alone. Some requests
     * carry trailing mask zeros of their own, which the padding must not disturb either. */
    enum { N = 300 };
    struct proc p;
    if (!transformer_dir) {
        printf("  skipped: no transformer_masked export given (needs the tooling python)\n");
        skip();
    }
    struct engine *eng = load_model("transformer_masked");
    struct job *jobs = calloc(N, sizeof *jobs);
    assert_non_null(jobs);
    for (size_t k = 0; k < N; k++) {
        int64_t dims[2] = {1 + (int64_t)(rnd() % 8), 3 + (int64_t)(rnd() % 126)};
        int64_t own_pad = k % 5 == 0 ? (int64_t)(rnd() % 3) : 0;
        assert_int_equal(tensor_alloc(&jobs[k].in, "ids", DT_INT64, dims, 2, NULL), 0);
        assert_int_equal(tensor_alloc(&jobs[k].in2, "mask", DT_INT64, dims, 2, NULL), 0);
        int64_t *ids = jobs[k].in.data, *mask = jobs[k].in2.data;
        for (int64_t i = 0; i < dims[0] * dims[1]; i++) {
            ids[i] = (int64_t)(rnd() % 1000);
            mask[i] = i % dims[1] < dims[1] - own_pad;
        }
        struct tensor ins[2] = {jobs[k].in, jobs[k].in2};
        assert_int_equal(engine_run(eng, ins, 2, jobs[k].ref, NULL), 0);
    }
    start_replica("transformer_masked", &p, NULL);
    run_pool(p.url, jobs, N, 100);
    check_jobs(eng, jobs, N);
    Corral__Response *st = get_stats(p.url);
    print_stats(st->stats);
    assert_int_equal(st->stats->success_count, N);
    assert_true(st->stats->batch_count < N);
    assert_true(st->stats->padded_elements > st->stats->real_elements);
    corral__response__free_unpacked(st, NULL);
    stop_replica(&p);
    free_jobs(jobs, N);
    engine_free(eng);
}

/* ---- queue policies --------------------------------------------------------------------- */

/*
 * The policies are checked on the order of events, not on how many milliseconds they
 * took, so that a loaded machine (two cores, the sanitizers, a build beside) cannot fail
 * them: each request waits at a gate until the test opens it, and the test opens the
 * next one only once the replica's own stats show the previous one where it should be
 * (taken for compute, gathered into the second buffer, queued). A request that stalls
 * compute on purpose stands for the "much longer timer" the others are ordered against.
 * Where a duration is the behaviour (a delay bound, a timeout), its lower bound holds
 * exactly (the replica's clock for a request starts after the client sent it).
 */
struct timed {
    const char *url;
    struct req_opts o;
    atomic_int ready, go; /* ready: 1 connected, -1 could not connect */
    atomic_int finished;  /* its answer (or a failure) came back */
    uint64_t sent, done;  /* ms */
    int seq;              /* the order in which the answers came back, from 1 */
    Corral__Response *resp;
    pthread_t th;
};

static atomic_int answer_seq;

static void *timed_main(void *arg)
{
    struct timed *t = arg;
    struct client c;
    struct tensor in = {0};
    int64_t dims[2] = {1, 64};
    size_t len;
    if (nng_req0_open(&c.s) != 0) {
        atomic_store(&t->ready, -1);
        return NULL;
    }
    nng_socket_set_ms(c.s, NNG_OPT_RECVTIMEO, 60000);
    nng_socket_set_ms(c.s, NNG_OPT_REQ_RESENDTIME, 600000);
    if (nng_dial(c.s, t->url, NULL, 0) != 0 || tensor_alloc(&in, "input", DT_FP32, dims, 2, NULL)) {
        nng_close(c.s);
        atomic_store(&t->ready, -1);
        return NULL;
    }
    atomic_store(&t->ready, 1);
    while (!atomic_load(&t->go))
        sleep_ms(1);
    uint8_t *buf = pack_infer(&in, &t->o, &len);
    t->sent = now_ms();
    t->resp = client_call(&c, buf, len);
    t->done = now_ms();
    t->seq = atomic_fetch_add(&answer_seq, 1) + 1;
    atomic_store(&t->finished, 1);
    nng_close(c.s);
    tensor_release(&in);
    return NULL;
}

/* Starts n requests' threads; each connects and waits at its gate. */
static void timed_start(const char *url, struct timed *t, size_t n)
{
    atomic_store(&answer_seq, 0);
    for (size_t i = 0; i < n; i++) {
        t[i].url = url;
        assert_int_equal(pthread_create(&t[i].th, NULL, timed_main, &t[i]), 0);
    }
    for (size_t i = 0; i < n; i++) {
        for (uint64_t end = now_ms() + 60000; !atomic_load(&t[i].ready) && now_ms() < end;)
            sleep_ms(1);
        assert_int_equal(atomic_load(&t[i].ready), 1);
    }
}

static void timed_go(struct timed *t) { atomic_store(&t->go, 1); }

/* Joins the threads: every request started came back with an answer (a result or a corral
 * error, which the tests look at), none was lost to the transport. */
static void timed_join(struct timed *t, size_t n)
{
    size_t answered = 0, lost = 0;
    for (size_t i = 0; i < n; i++) {
        pthread_join(t[i].th, NULL);
        if (t[i].resp)
            answered++;
        else
            lost++;
    }
    assert_int_equal(lost, 0);
    assert_int_equal(answered, n);
}

/* Opens every gate at once and waits for the answers. */
static void run_timed(const char *url, struct timed *t, size_t n)
{
    timed_start(url, t, n);
    for (size_t i = 0; i < n; i++)
        timed_go(&t[i]);
    timed_join(t, n);
}

/*
 * Polls the replica's stats until at least `requests` infer requests have arrived and
 * exactly `depth` wait in its queue (60 s at most: it ends as soon as that holds).
 */
static void wait_queue(const char *url, uint64_t requests, uint64_t depth)
{
    uint64_t end = now_ms() + 60000, got_req = 0, got_depth = 0;
    do {
        Corral__Response *st = get_stats(url);
        got_req = st->stats->request_count;
        got_depth = st->stats->queue_depth;
        corral__response__free_unpacked(st, NULL);
        if (got_req >= requests && got_depth == depth)
            return;
        sleep_ms(2);
    } while (now_ms() < end);
    fail_msg("replica stats: %llu requests, %llu queued; waited for %llu and %llu",
             (unsigned long long)got_req, (unsigned long long)got_depth,
             (unsigned long long)requests, (unsigned long long)depth);
}

static void free_timed(struct timed *t, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (t[i].resp)
            corral__response__free_unpacked(t[i].resp, NULL);
}

static uint64_t histogram_count(const Corral__StatsResponse *s, uint64_t size)
{
    for (size_t i = 0; i < s->n_batch_size_histogram; i++)
        if (s->batch_size_histogram[i]->size == size)
            return s->batch_size_histogram[i]->count;
    return 0;
}

static void test_delay_bound(void **state)
{
    /* max_queue_delay_us is 150 ms: a lone request waits that long for company. It cannot
     * leave sooner (exact, but for the millisecond steps of the clocks); a loaded machine
     * gets ten times that. */
    struct proc p;
    struct timed one[1], full[8];
    memset(one, 0, sizeof one);
    memset(full, 0, sizeof full);
    start_replica("digits_delay", &p, NULL);
    run_timed(p.url, one, 1);
    assert_int_equal(err_code(one[0].resp), 0);
    uint64_t lat = one[0].done - one[0].sent;
    printf("  lone request: %llu ms (delay bound 150 ms)\n", (unsigned long long)lat);
    assert_true(lat >= 148);
    assert_true(lat <= 10 * 150);
    free_timed(one, 1);
    stop_replica(&p);

    /* A full batch leaves at once: with a delay bound of 20 s, eight requests of one row
     * (max_batch_size 8) come back in one batch well before that bound could have sent
     * them, whenever the eight threads get to run. */
    start_replica("digits_full", &p, NULL);
    run_timed(p.url, full, 8);
    uint64_t worst = 0;
    for (int i = 0; i < 8; i++) {
        assert_int_equal(err_code(full[i].resp), 0);
        if (full[i].done - full[i].sent > worst)
            worst = full[i].done - full[i].sent;
    }
    printf("  8 concurrent requests (a full batch, delay bound 20 s): slowest %llu ms\n",
           (unsigned long long)worst);
    assert_true(worst < 10000);
    Corral__Response *st = get_stats(p.url);
    assert_int_equal(st->stats->success_count, 8);
    assert_int_equal(st->stats->batch_count, 1);
    assert_int_equal(histogram_count(st->stats, 8), 1);
    corral__response__free_unpacked(st, NULL);
    free_timed(full, 8);
    stop_replica(&p);
}

static void test_queue_full(void **state)
{
    /* max_batch_size 1, max_queue_size 4. Request 0 stalls the compute section for 2 s,
     * request 1 is then gathered into the second buffer, and of the next eight exactly four
     * fit the queue: the other four are refused at once, before the stall ends. */
    struct proc p;
    struct timed t[10];
    memset(t, 0, sizeof t);
    t[0].o.stall_ms = 2000;
    start_replica("digits_q", &p, NULL);
    timed_start(p.url, t, 10);
    timed_go(&t[0]);
    wait_queue(p.url, 1, 0); /* taken for compute */
    timed_go(&t[1]);
    wait_queue(p.url, 2, 0); /* gathered into the second buffer */
    for (int i = 2; i < 10; i++)
        timed_go(&t[i]);
    timed_join(t, 10);
    int full = 0, ok = 0;
    for (int i = 0; i < 10; i++) {
        int c = err_code(t[i].resp);
        if (c == CORRAL_EQUEUEFULL) {
            full++;
            /* At once: before the request that holds compute came back. */
            assert_true(t[i].seq < t[0].seq);
        } else {
            assert_int_equal(c, 0);
            ok++;
        }
    }
    printf("  %d answered, %d refused with EQUEUEFULL\n", ok, full);
    assert_int_equal(full, 4);
    assert_int_equal(ok, 6);
    Corral__Response *st = get_stats(p.url);
    assert_int_equal(rejections(st->stats, "queue_full"), 4);
    assert_int_equal(st->stats->request_count, 10);
    assert_int_equal(st->stats->success_count, 6);
    corral__response__free_unpacked(st, NULL);
    free_timed(t, 10);
    stop_replica(&p);
}

static void test_timeouts(void **state)
{
    /* default_timeout_us is 400 ms. While request 0 stalls compute for 2 s:
     * request 1 (in the second buffer, default deadline) expires before compute reaches
     * it and is answered ETIMEDOUT without running; request 3 asks for 5 s, which may not
     * extend the default, so it expires at 400 ms too, before the stall ends; request 2,
     * sent after request 3 arrived, asks for 100 ms and is answered on time by the
     * batcher thread, so before request 3. */
    struct proc p;
    struct timed t[4];
    memset(t, 0, sizeof t);
    t[0].o.stall_ms = 2000;
    t[2].o.timeout_us = 100000;
    t[3].o.timeout_us = 5000000;
    start_replica("digits_t", &p, NULL);
    timed_start(p.url, t, 4);
    timed_go(&t[0]);
    wait_queue(p.url, 1, 0); /* taken for compute */
    timed_go(&t[1]);
    wait_queue(p.url, 2, 0); /* gathered into the second buffer */
    timed_go(&t[3]);
    wait_queue(p.url, 3, 1); /* queued */
    timed_go(&t[2]);
    timed_join(t, 4);
    assert_int_equal(err_code(t[0].resp), 0);
    for (int i = 1; i < 4; i++) {
        printf("  request %d: code %d after %llu ms, answer %d of 4\n", i, err_code(t[i].resp),
               (unsigned long long)(t[i].done - t[i].sent), t[i].seq);
        assert_int_equal(err_code(t[i].resp), CORRAL_ETIMEDOUT);
    }
    uint64_t l2 = t[2].done - t[2].sent, l3 = t[3].done - t[3].sent;
    /* Not before their deadlines (exact, but for the clocks' millisecond steps). */
    assert_true(l2 >= 95);
    assert_true(l3 >= 395);
    /* 100 ms before 400 ms, and 400 ms (not 5 s) before the 2 s stall ended. */
    assert_true(t[2].seq < t[3].seq);
    assert_true(t[3].seq < t[0].seq);
    Corral__Response *st = get_stats(p.url);
    assert_int_equal(rejections(st->stats, "timeout"), 3);
    /* Only request 0 ran. */
    assert_int_equal(st->stats->batch_count, 1);
    corral__response__free_unpacked(st, NULL);
    free_timed(t, 4);
    stop_replica(&p);
}

/*
 * Request 0 stalls compute for 1.5 s, request 1 waits in the second buffer; then A
 * (priority 2) and B (priority 1), each stalling 500 ms, queue up in that order.
 */
#define AB_STALL_MS 500

static void priority_case(const char *model, struct timed *t)
{
    struct proc p;
    memset(t, 0, 4 * sizeof *t);
    t[0].o.stall_ms = 1500;
    t[2].o.priority = 2;
    t[2].o.stall_ms = AB_STALL_MS;
    t[3].o.priority = 1;
    t[3].o.stall_ms = AB_STALL_MS;
    start_replica(model, &p, NULL);
    timed_start(p.url, t, 4);
    timed_go(&t[0]);
    wait_queue(p.url, 1, 0); /* taken for compute */
    timed_go(&t[1]);
    wait_queue(p.url, 2, 0); /* gathered into the second buffer */
    timed_go(&t[2]);
    wait_queue(p.url, 3, 1); /* A queued */
    timed_go(&t[3]);
    wait_queue(p.url, 4, 2); /* B queued behind it */
    timed_join(t, 4);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(err_code(t[i].resp), 0);
        printf("  %s request %d done %lld ms after request 0 was sent, answer %d of 4\n", model,
               i, (long long)(t[i].done - t[0].sent), t[i].seq);
    }
    /* The two that did not wait in the queue came back first (a few ms apart: their
     * order between them is the clients' threads' to decide). */
    assert_true(t[0].seq <= 2 && t[1].seq <= 2);
    Corral__Response *st = get_stats(p.url);
    assert_int_equal(st->stats->success_count, 4);
    assert_int_equal(st->stats->batch_count, 4);
    corral__response__free_unpacked(st, NULL);
    stop_replica(&p);
}

static void test_priority(void **state)
{
    struct timed t[4];
    priority_case("digits_p", t);
    /* B overtook A: B's answer came first, a whole stall (500 ms) before A's, since A ran
     * only after B. Half of that is left to the clients' threads. */
    assert_true(t[3].seq < t[2].seq);
    assert_true(t[3].done + AB_STALL_MS / 2 <= t[2].done);
    free_timed(t, 4);
}

static void test_preserve_ordering(void **state)
{
    struct timed t[4];
    priority_case("digits_po", t);
    /* B still ran first, but its reply was held until A's could leave: the two came back
     * together, not a stall apart either way (B alone first: without the hold; B a stall
     * after A: B did not run first). Half a stall is left to the clients' threads. */
    assert_true(t[3].done + AB_STALL_MS / 2 >= t[2].done);
    assert_true(t[3].done <= t[2].done + AB_STALL_MS / 2);
    free_timed(t, 4);
}

static int health_live(const char *url, int *ready)
{
    struct client c;
    size_t len;
    client_open(&c, url);
    uint8_t *buf = pack_kind(CORRAL__REQUEST__KIND_HEALTH, &len);
    Corral__Response *r = client_call(&c, buf, len);
    client_close(&c);
    assert_non_null(r);
    assert_int_equal(r->kind_case, CORRAL__RESPONSE__KIND_HEALTH);
    int live = r->health->live;
    *ready = r->health->ready;
    corral__response__free_unpacked(r, NULL);
    return live;
}

/* The replica's stall limit, from its "stall limit N ms" log line. */
static long stall_limit_ms(const struct proc *p)
{
    FILE *f = fopen(p->log, "r");
    char line[1024];
    long ms = -1;
    while (f && fgets(line, sizeof line, f)) {
        char *at = strstr(line, "stall limit ");
        if (at)
            ms = strtol(at + strlen("stall limit "), NULL, 10);
    }
    if (f)
        fclose(f);
    return ms;
}

static void test_stalled_executor_not_live(void **state)
{
    /* A stalled executor must read not-live: not before the stall limit (exact: the
     * executor is busy only after t0), and while the stall still lasts (4 s, many times
     * the limit), whatever the load. */
    struct proc p;
    struct timed t[1];
    int ready;
    memset(t, 0, sizeof t);
    t[0].o.stall_ms = 4000;
    start_replica("digits_q", &p, NULL);
    long limit = stall_limit_ms(&p);
    printf("  stall limit %ld ms\n", limit);
    assert_true(limit > 0 && limit < 4000 / 2);
    assert_true(health_live(p.url, &ready));
    assert_true(ready);
    timed_start(p.url, t, 1);
    uint64_t t0 = now_ms();
    timed_go(&t[0]);
    uint64_t went = 0;
    /* Only while the stalled request has not come back: a not-live answer has to be seen
     * during the stall, or the loop ends without one. */
    while (!atomic_load(&t[0].finished)) {
        if (!health_live(p.url, &ready)) {
            went = now_ms() - t0;
            assert_false(ready);
            break;
        }
        sleep_ms(20);
    }
    printf("  not live %llu ms after the executor stalled\n", (unsigned long long)went);
    assert_true(went > 0);
    assert_true(went + 2 >= (uint64_t)limit); /* 2: the clocks' millisecond steps */
    timed_join(t, 1);
    assert_int_equal(err_code(t[0].resp), 0);
    assert_true(health_live(p.url, &ready));
    assert_true(ready);
    free_timed(t, 1);
    stop_replica(&p);
}

/* ---- setup ------------------------------------------------------------------------------ */

static int setup(void **state)
{
    struct cerr e = {0};
    snprintf(repo, sizeof repo, "/tmp/corral-batching-XXXXXX");
    if (!mkdtemp(repo))
        return -1;
    const char *b8 = "{\"max_batch_size\": 8, \"max_queue_delay_us\": 2000}";
    const char *seq = "{\"max_batch_size\": 8, \"max_queue_delay_us\": 2000,"
                      " \"inputs\": {\"x\": {\"pad_value\": 0, \"dims\": {\"1\": [16, 32, 64, 128]}}},"
                      " \"outputs\": {\"h\": {\"dims\": {\"1\": {\"input\": \"x\", \"dim\": 1}}},"
                      "             \"y\": {\"dims\": {\"1\": {\"input\": \"x\", \"dim\": 1}}}}}";
    if (bmodel_link_digits(repo, "digits_b8", digits_dir, b8, &e) ||
        bmodel_link_digits(repo, "digits_delay", digits_dir,
                           "{\"max_batch_size\": 8, \"max_queue_delay_us\": 150000}", &e) ||
        bmodel_link_digits(repo, "digits_full", digits_dir,
                           "{\"max_batch_size\": 8, \"max_queue_delay_us\": 20000000}", &e) ||
        bmodel_link_digits(repo, "digits_q", digits_dir,
                           "{\"max_batch_size\": 1, \"max_queue_size\": 4}", &e) ||
        bmodel_link_digits(repo, "digits_t", digits_dir,
                           "{\"max_batch_size\": 1, \"default_timeout_us\": 400000}", &e) ||
        bmodel_link_digits(repo, "digits_p", digits_dir,
                           "{\"max_batch_size\": 1, \"priority_levels\": 2, \"default_priority\": 2}", &e) ||
        bmodel_link_digits(repo, "digits_po", digits_dir,
                           "{\"max_batch_size\": 1, \"priority_levels\": 2, \"default_priority\": 2,"
                           " \"preserve_ordering\": true}", &e) ||
        bmodel_write(repo, "seq", BMODEL_SEQ, seq, &e) ||
        (transformer_dir &&
         bmodel_link_version(repo, "transformer_masked", transformer_dir,
                             "\"inputs\": [{\"name\": \"ids\", \"datatype\": \"INT64\", \"shape\": [-1, -1]},"
                             " {\"name\": \"mask\", \"datatype\": \"INT64\", \"shape\": [-1, -1]}],\n"
                             " \"outputs\": [{\"name\": \"logits\", \"datatype\": \"FP32\", \"shape\": [-1, 10]}]",
                             "{\"max_batch_size\": 8, \"max_queue_delay_us\": 2000,"
                             " \"inputs\": {\"ids\": {\"pad_value\": 0, \"dims\": {\"1\": [16, 32, 64, 128]}},"
                             "            \"mask\": {\"pad_value\": 0, \"dims\": {\"1\": [16, 32, 64, 128]}}}}",
                             &e))) {
        fprintf(stderr, "setup: %s\n", e.msg);
        return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    char cmd[400];
    for (size_t i = 0; i < sizeof running / sizeof running[0]; i++)
        if (running[i] > 0) {
            kill(running[i], SIGKILL);
            waitpid(running[i], NULL, 0);
            running[i] = 0;
        }
    if (getenv("CORRAL_KEEP_TEST_DIR")) {
        printf("kept %s\n", repo);
        return 0;
    }
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", repo);
    return system(cmd) == 0 ? 0 : -1;
}

int main(int argc, char **argv)
{
    if (argc != 3 && argc != 4) {
        fprintf(stderr, "usage: test_batching_nng REPLICA_BINARY DIGITS_VERSION_DIR "
                        "[TRANSFORMER_VERSION_DIR]\n");
        return 2;
    }
    replica_bin = argv[1];
    digits_dir = argv[2];
    transformer_dir = argc == 4 ? argv[3] : NULL;
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_concurrent_digits),
        cmocka_unit_test(test_concurrent_seq),
        cmocka_unit_test(test_concurrent_transformer),
        cmocka_unit_test(test_delay_bound),
        cmocka_unit_test(test_queue_full),
        cmocka_unit_test(test_timeouts),
        cmocka_unit_test(test_priority),
        cmocka_unit_test(test_preserve_ordering),
        cmocka_unit_test(test_stalled_executor_not_live),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
