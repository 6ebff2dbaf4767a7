/*
 * The replica's own states and its drain, through real corral-replica processes spoken
 * to over NNG on loopback (the SP request/reply wire the router uses):
 *
 *   - starting: health answers "starting" (with what it is doing) before the model is
 *     loaded, and infer, metadata and stats are refused with EUNAVAIL; a signal then
 *     ends the process at once with 0;
 *   - failed: an executor stalled past its stall limit reads "failed" with the reason;
 *   - draining: on SIGTERM health says "draining" (not ready, still live), new infer
 *     requests get EDRAINING, every request accepted before gets its real result, and
 *     the process exits 0; after --drain-timeout-ms, or at a second SIGTERM, the ones
 *     left are answered EDRAINING instead.
 *
 * Every request sent is counted and must come back (a result or a corral error, never
 * lost). Steps wait for what the previous one caused (the replica's stats, its health
 * answers, its log), not for time; a request that stalls compute on purpose
 * (corral_test_stall_ms, --test-hooks) is the long timer the other steps run inside.
 *
 * Usage: test_replica_drain REPLICA_BINARY DIGITS_VERSION_DIR
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
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

static const char *replica_bin, *digits_dir;
static char repo[256];
/* Replicas started and not yet reaped: a failed test leaves them to the teardown. */
static pid_t running[8];

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
    int reaped, status;
    char url[128];
    char log[512];
};

static void forget(pid_t pid)
{
    for (size_t i = 0; i < sizeof running / sizeof running[0]; i++)
        if (running[i] == pid)
            running[i] = 0;
}

static void dump_log(const struct proc *p)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "tail -n 40 '%s' >&2", p->log);
    if (system(cmd) != 0)
        fprintf(stderr, "(no log)\n");
}

/* Reaps the replica if it has exited: 1 then (status in p->status). */
static int proc_exited(struct proc *p)
{
    if (p->reaped)
        return 1;
    if (waitpid(p->pid, &p->status, WNOHANG) != p->pid)
        return 0;
    p->reaped = 1;
    forget(p->pid);
    return 1;
}

/* Whether the replica's log has a line containing `what` (and, when url is given, the
 * URL after `marker` on that line, once the line is whole: `tail` follows it). */
static int log_has(const struct proc *p, const char *what, const char *marker, const char *tail,
                   char *url, size_t url_len)
{
    FILE *f = fopen(p->log, "r");
    char line[2048];
    int found = 0;
    while (f && !found && fgets(line, sizeof line, f)) {
        char *s = strstr(line, what);
        if (!s)
            continue;
        if (!marker) {
            found = 1;
            break;
        }
        char *u = strstr(s, marker);
        char fmt[32];
        snprintf(fmt, sizeof fmt, "%%%zu[^ ]", url_len - 1);
        if (u && strstr(u, tail) && sscanf(u + strlen(marker) - strlen("tcp://"), fmt, url) == 1)
            found = 1;
    }
    if (f)
        fclose(f);
    return found;
}

/*
 * Starts a replica of `model` with the given extra arguments (NULL-terminated), its
 * output in a log file, and waits for the line that carries its URL: the debug
 * "starting: answering health at URL" one when want_starting, else "serving ... on URL".
 */
static void start_replica(const char *model, struct proc *p, int want_starting, ...)
{
    const char *argv[32];
    size_t n = 0;
    va_list ap;
    memset(p, 0, sizeof *p);
    argv[n++] = replica_bin;
    argv[n++] = "--model-repo";
    argv[n++] = repo;
    argv[n++] = "--model";
    argv[n++] = model;
    argv[n++] = "--listen";
    argv[n++] = "tcp://127.0.0.1:0";
    va_start(ap, want_starting);
    for (const char *a; (a = va_arg(ap, const char *)) && n < 31;)
        argv[n++] = a;
    va_end(ap);
    argv[n] = NULL;
    snprintf(p->log, sizeof p->log, "%s/%s.log", repo, model);
    unlink(p->log); /* one left by an earlier replica would announce a dead URL */
    p->pid = fork();
    assert_true(p->pid >= 0);
    if (p->pid == 0) {
        FILE *f = freopen(p->log, "w", stderr);
        if (!f)
            _exit(127);
        dup2(STDERR_FILENO, STDOUT_FILENO);
        execv(replica_bin, (char *const *)argv);
        _exit(127);
    }
    for (size_t i = 0; i < sizeof running / sizeof running[0]; i++)
        if (!running[i]) {
            running[i] = p->pid;
            break;
        }
    for (uint64_t deadline = now_ms() + 60000; now_ms() < deadline; sleep_ms(20)) {
        int got = want_starting
                      ? log_has(p, "starting: answering health at ", "at tcp://", " while",
                                p->url, sizeof p->url)
                      : log_has(p, "serving model", " on tcp://", " (device", p->url,
                                sizeof p->url);
        if (got)
            return;
        if (proc_exited(p)) {
            dump_log(p);
            fail_msg("replica for %s exited before announcing its URL", model);
        }
    }
    dump_log(p);
    fail_msg("replica for %s did not announce its URL within 60 s", model);
}

/* Waits (60 s at most) for the replica to exit; asserts it exited with 0. */
static void expect_exit_0(struct proc *p)
{
    for (uint64_t deadline = now_ms() + 60000; !proc_exited(p) && now_ms() < deadline;)
        sleep_ms(10);
    if (!p->reaped) {
        dump_log(p);
        fail_msg("replica did not exit within 60 s");
    }
    if (!WIFEXITED(p->status) || WEXITSTATUS(p->status) != 0)
        dump_log(p);
    assert_true(WIFEXITED(p->status));
    assert_int_equal(WEXITSTATUS(p->status), 0);
}

/* ---- RPC -------------------------------------------------------------------------------- */

/* Sends one packed Request (freed here) on a fresh REQ socket; NULL on a transport failure
 * (connection refused, closed before the answer, or no answer in recv_ms). */
static Corral__Response *call(const char *url, uint8_t *buf, size_t len, int recv_ms)
{
    nng_socket s;
    void *rb = NULL;
    size_t rl = 0;
    int rv = nng_req0_open(&s);
    if (rv == 0) {
        nng_socket_set_ms(s, NNG_OPT_RECVTIMEO, recv_ms);
        /* No resend: a request must be answered once, by the replica it was sent to. */
        nng_socket_set_ms(s, NNG_OPT_REQ_RESENDTIME, 600000);
        nng_socket_set_size(s, NNG_OPT_RECVMAXSZ, WIRE_MAX_MESSAGE);
        rv = nng_dial(s, url, NULL, 0);
        if (rv == 0)
            rv = nng_send(s, buf, len, 0);
        if (rv == 0)
            rv = nng_recv(s, &rb, &rl, NNG_FLAG_ALLOC);
        nng_close(s);
    }
    free(buf);
    if (rv != 0) {
        fprintf(stderr, "  rpc to %s failed: %s\n", url, nng_strerror(rv));
        return NULL;
    }
    Corral__Response *r = corral__response__unpack(NULL, rl, rb);
    nng_free(rb, rl);
    return r;
}

static Corral__Response *call_kind(const char *url, Corral__Request__KindCase kind)
{
    Corral__Request req = CORRAL__REQUEST__INIT;
    Corral__HealthRequest h = CORRAL__HEALTH_REQUEST__INIT;
    Corral__MetadataRequest m = CORRAL__METADATA_REQUEST__INIT;
    Corral__StatsRequest st = CORRAL__STATS_REQUEST__INIT;
    req.kind_case = kind;
    if (kind == CORRAL__REQUEST__KIND_HEALTH)
        req.health = &h;
    else if (kind == CORRAL__REQUEST__KIND_METADATA)
        req.metadata = &m;
    else
        req.stats = &st;
    uint8_t *buf = NULL;
    size_t len = 0;
    assert_int_equal(wire_pack_request(&req, &buf, &len), 0);
    return call(url, buf, len, 30000);
}

struct health {
    int live, ready;
    char state[32], reason[512];
};

static void get_health(const char *url, struct health *h)
{
    Corral__Response *r = call_kind(url, CORRAL__REQUEST__KIND_HEALTH);
    assert_non_null(r);
    if (r->kind_case != CORRAL__RESPONSE__KIND_HEALTH)
        fail_msg("health answered with kind %d", r->kind_case);
    h->live = r->health->live;
    h->ready = r->health->ready;
    snprintf(h->state, sizeof h->state, "%s", r->health->state ? r->health->state : "");
    snprintf(h->reason, sizeof h->reason, "%s", r->health->reason ? r->health->reason : "");
    corral__response__free_unpacked(r, NULL);
}

static Corral__Response *get_stats(const char *url)
{
    Corral__Response *r = call_kind(url, CORRAL__REQUEST__KIND_STATS);
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

/* Polls the replica's stats until `requests` infer requests have arrived (60 s at most). */
static void wait_requests(const char *url, uint64_t requests)
{
    uint64_t got = 0;
    for (uint64_t end = now_ms() + 60000; now_ms() < end; sleep_ms(5)) {
        Corral__Response *st = get_stats(url);
        got = st->stats->request_count;
        corral__response__free_unpacked(st, NULL);
        if (got >= requests)
            return;
    }
    fail_msg("the replica saw %llu infer requests; waited for %llu", (unsigned long long)got,
             (unsigned long long)requests);
}

/* Polls health until its state is `state` (60 s at most, and only while *until_zero is 0
 * when given: the stall that keeps the state must still be on). */
static void wait_state(const char *url, const char *state, struct health *h,
                       atomic_int *until_zero)
{
    for (uint64_t end = now_ms() + 60000; now_ms() < end; sleep_ms(5)) {
        if (until_zero && atomic_load(until_zero))
            fail_msg("the stalled request came back before health said '%s' (last: '%s': %s)",
                     state, h->state, h->reason);
        get_health(url, h);
        if (strcmp(h->state, state) == 0)
            return;
    }
    fail_msg("health never said '%s' (last: '%s': %s)", state, h->state, h->reason);
}

/* ---- infer requests --------------------------------------------------------------------- */

static uint32_t rng = 7;
static float rnd_unit(void)
{
    rng = rng * 1103515245u + 12345u;
    return (float)((rng >> 8) % 20001) / 10000.0f - 1.0f;
}

static uint8_t *pack_infer(const struct tensor *in, int64_t stall_ms, size_t *len)
{
    Corral__Request req = CORRAL__REQUEST__INIT;
    Corral__InferRequest ir = CORRAL__INFER_REQUEST__INIT;
    Corral__Tensor t = CORRAL__TENSOR__INIT, *tp = &t;
    Corral__Parameter p = CORRAL__PARAMETER__INIT, *pp = &p;
    t.name = (char *)in->name;
    t.datatype = (Corral__DataType)in->dtype;
    t.n_shape = (size_t)in->ndim;
    t.shape = (int64_t *)in->dims;
    t.data.data = in->data;
    t.data.len = in->nbytes;
    ir.id = "";
    ir.n_inputs = 1;
    ir.inputs = &tp;
    if (stall_ms) {
        p.key = "corral_test_stall_ms";
        p.value_case = CORRAL__PARAMETER__VALUE_INT64_VALUE;
        p.int64_value = stall_ms;
        ir.n_parameters = 1;
        ir.parameters = &pp;
    }
    req.kind_case = CORRAL__REQUEST__KIND_INFER;
    req.infer = &ir;
    uint8_t *buf = NULL;
    assert_int_equal(wire_pack_request(&req, &buf, len), 0);
    return buf;
}

/* One infer request on its own thread, and what became of it. */
struct job {
    const char *url;
    int64_t stall_ms;
    int recv_ms;
    struct tensor in, ref; /* ref: the engine run on `in` in this process */
    pthread_t th;
    atomic_int finished;
    Corral__Response *resp;
};

static void *job_main(void *arg)
{
    struct job *j = arg;
    size_t len;
    uint8_t *buf = pack_infer(&j->in, j->stall_ms, &len);
    j->resp = call(j->url, buf, len, j->recv_ms);
    atomic_store(&j->finished, 1);
    return NULL;
}

static struct engine *digits_engine(void)
{
    char path[600];
    struct engine *eng = NULL;
    struct engine_options eo = ENGINE_OPTIONS_DEFAULT;
    struct cerr e = {0};
    snprintf(path, sizeof path, "%s/model.onnx", digits_dir);
    if (engine_load_file(path, &eo, &eng, &e))
        fail_msg("%s", e.msg);
    return eng;
}

static void job_init(struct job *j, struct engine *eng, const char *url, int64_t stall_ms)
{
    int64_t dims[2] = {1, 64};
    memset(j, 0, sizeof *j);
    j->url = url;
    j->stall_ms = stall_ms;
    j->recv_ms = 60000;
    assert_int_equal(tensor_alloc(&j->in, "input", DT_FP32, dims, 2, NULL), 0);
    for (size_t i = 0; i < 64; i++)
        ((float *)j->in.data)[i] = rnd_unit();
    if (eng)
        assert_int_equal(engine_run(eng, &j->in, 1, &j->ref, NULL), 0);
}

/* Jobs live on the heap: a test that fails leaves them (and their threads, which still
 * write to them) behind rather than let them write into the next test's stack. */
static struct job *jobs_alloc(size_t n)
{
    struct job *j = calloc(n, sizeof *j);
    assert_non_null(j);
    return j;
}

static void job_start(struct job *j)
{
    assert_int_equal(pthread_create(&j->th, NULL, job_main, j), 0);
}

/* Joins n jobs: every request started came back (a result or a corral error), none lost. */
static void jobs_join(struct job *j, size_t n)
{
    size_t answered = 0, lost = 0;
    for (size_t i = 0; i < n; i++) {
        pthread_join(j[i].th, NULL);
        if (j[i].resp)
            answered++;
        else
            lost++;
    }
    printf("  %zu requests started, %zu answered, %zu lost\n", n, answered, lost);
    assert_int_equal(lost, 0);
    assert_int_equal(answered, n);
}

static void jobs_free(struct job *j, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        tensor_release(&j[i].in);
        tensor_release(&j[i].ref);
        if (j[i].resp)
            corral__response__free_unpacked(j[i].resp, NULL);
    }
    free(j);
}

/* The answer is the model's result, equal to the engine run in this process. */
static void expect_result(const struct job *j, size_t k)
{
    const Corral__Response *r = j->resp;
    if (r->kind_case != CORRAL__RESPONSE__KIND_INFER)
        fail_msg("request %zu: expected its result, got %s", k,
                 r->kind_case == CORRAL__RESPONSE__KIND_ERROR ? r->error->message : "another kind");
    assert_int_equal(r->infer->n_outputs, 1);
    const Corral__Tensor *t = r->infer->outputs[0];
    assert_int_equal(t->n_shape, (size_t)j->ref.ndim);
    for (int d = 0; d < j->ref.ndim; d++)
        assert_int_equal(t->shape[d], j->ref.dims[d]);
    assert_int_equal(t->data.len, j->ref.nbytes);
    const float *a = (const float *)t->data.data, *b = j->ref.data;
    for (size_t i = 0; i < j->ref.nbytes / 4; i++) {
        double d = a[i] > b[i] ? a[i] - b[i] : b[i] - a[i];
        if (d > 1e-4)
            fail_msg("request %zu element %zu: replica %g, in-process %g", k, i, (double)a[i],
                     (double)b[i]);
    }
}

static void expect_error(const Corral__Response *r, int code, const char *words)
{
    assert_non_null(r);
    if (r->kind_case != CORRAL__RESPONSE__KIND_ERROR)
        fail_msg("expected error %d (%s), got a response of kind %d", code, words, r->kind_case);
    if (r->error->code != code || !strstr(r->error->message, words))
        fail_msg("expected error %d containing '%s', got %d: %s", code, words, r->error->code,
                 r->error->message);
}

/* One infer request, waited for. */
static Corral__Response *infer_now(const char *url, struct engine *eng)
{
    struct job j;
    job_init(&j, eng, url, 0);
    size_t len;
    uint8_t *buf = pack_infer(&j.in, 0, &len);
    Corral__Response *r = call(url, buf, len, 30000);
    tensor_release(&j.in);
    tensor_release(&j.ref);
    return r;
}

/* ---- starting --------------------------------------------------------------------------- */

static void test_starting_is_told(void **state)
{
    /* Held before loading by the test hook: health must say starting and why, the rest
     * must be refused as unavailable; once the hold ends, health says ready and infer
     * works. */
    char gate[300];
    struct proc p;
    struct health h;
    snprintf(gate, sizeof gate, "%s/gate-starting", repo);
    unlink(gate);
    start_replica("digits_d", &p, 1, "--test-hooks", "--test-hold-start", gate, "--log-level",
                  "debug", (char *)NULL);
    get_health(p.url, &h);
    printf("  while held: state '%s' (%s), live %d ready %d\n", h.state, h.reason, h.live, h.ready);
    assert_string_equal(h.state, "starting");
    assert_non_null(strstr(h.reason, "loading"));
    assert_true(h.live);
    assert_false(h.ready);
    Corral__Response *r = infer_now(p.url, NULL);
    expect_error(r, CORRAL_EUNAVAIL, "replica is starting: loading");
    corral__response__free_unpacked(r, NULL);
    r = call_kind(p.url, CORRAL__REQUEST__KIND_METADATA);
    expect_error(r, CORRAL_EUNAVAIL, "replica is starting");
    corral__response__free_unpacked(r, NULL);
    r = call_kind(p.url, CORRAL__REQUEST__KIND_STATS);
    expect_error(r, CORRAL_EUNAVAIL, "replica is starting");
    corral__response__free_unpacked(r, NULL);
    /* Still held: it has not announced itself as serving. */
    assert_false(log_has(&p, "serving model", NULL, NULL, NULL, 0));

    FILE *f = fopen(gate, "w");
    assert_non_null(f);
    fclose(f);
    char url[128];
    snprintf(url, sizeof url, "%s", p.url);
    for (uint64_t end = now_ms() + 60000;
         !log_has(&p, "serving model", " on tcp://", " (device", p.url, sizeof p.url);
         sleep_ms(20))
        if (now_ms() > end || proc_exited(&p))
            fail_msg("the replica did not become ready after the hold ended");
    assert_string_equal(p.url, url);
    get_health(p.url, &h);
    assert_string_equal(h.state, "ready");
    assert_string_equal(h.reason, "");
    assert_true(h.live);
    assert_true(h.ready);
    struct engine *eng = digits_engine();
    struct job *j = jobs_alloc(1);
    job_init(j, eng, p.url, 0);
    job_start(j);
    jobs_join(j, 1);
    expect_result(j, 0);
    jobs_free(j, 1);
    engine_free(eng);
    kill(p.pid, SIGTERM);
    expect_exit_0(&p);
}

static void test_signal_while_starting_exits(void **state)
{
    /* Nothing is accepted while starting, so a SIGTERM ends the process at once, with 0,
     * without it ever serving (the hold is never released). */
    char gate[300];
    struct proc p;
    struct health h;
    snprintf(gate, sizeof gate, "%s/gate-never", repo);
    unlink(gate);
    start_replica("digits_d", &p, 1, "--test-hooks", "--test-hold-start", gate, "--log-level",
                  "debug", (char *)NULL);
    get_health(p.url, &h);
    assert_string_equal(h.state, "starting");
    kill(p.pid, SIGTERM);
    expect_exit_0(&p);
    assert_false(log_has(&p, "serving model", NULL, NULL, NULL, 0));
}

/* ---- failed ----------------------------------------------------------------------------- */

static void test_stalled_executor_is_failed(void **state)
{
    /* With a 300 ms stall limit, a 4 s stall must read "failed" (not live, not ready)
     * with the reason, while it lasts; once it ends the replica is ready again. */
    struct proc p;
    struct health h;
    struct job *j = jobs_alloc(1);
    start_replica("digits_d", &p, 0, "--test-hooks", "--stall-ms", "300", (char *)NULL);
    get_health(p.url, &h);
    assert_string_equal(h.state, "ready");
    struct engine *eng = digits_engine();
    job_init(j, eng, p.url, 4000);
    job_start(j);
    wait_state(p.url, "failed", &h, &j->finished);
    printf("  during the stall: state '%s' (%s)\n", h.state, h.reason);
    assert_false(h.live);
    assert_false(h.ready);
    assert_non_null(strstr(h.reason, "stall limit"));
    jobs_join(j, 1);
    expect_result(j, 0);
    get_health(p.url, &h);
    assert_string_equal(h.state, "ready");
    assert_true(h.live && h.ready);
    jobs_free(j, 1);
    engine_free(eng);
    kill(p.pid, SIGTERM);
    expect_exit_0(&p);
}

/* ---- draining --------------------------------------------------------------------------- */

static void test_drain_answers_what_it_accepted(void **state)
{
    /* max_batch_size 1: request 0 stalls compute for 4 s, requests 1..3 wait behind it.
     * SIGTERM meanwhile: health says draining (live: the stall limit is a minute), a new
     * request is refused with EDRAINING and counted so, and all four accepted requests
     * still get their results before the process exits 0. */
    enum { K = 4 };
    struct proc p;
    struct health h;
    struct job *j = jobs_alloc(K);
    struct engine *eng = digits_engine();
    start_replica("digits_d", &p, 0, "--test-hooks", "--stall-ms", "60000", (char *)NULL);
    for (size_t k = 0; k < K; k++) {
        job_init(&j[k], eng, p.url, k == 0 ? 4000 : 0);
        job_start(&j[k]);
        /* In order: the stalled one is taken first and the others queue behind it. */
        wait_requests(p.url, k + 1);
    }
    kill(p.pid, SIGTERM);
    wait_state(p.url, "draining", &h, &j[0].finished);
    printf("  draining: '%s', live %d ready %d\n", h.reason, h.live, h.ready);
    assert_true(h.live);
    assert_false(h.ready);
    assert_non_null(strstr(h.reason, "SIGTERM"));
    assert_non_null(strstr(h.reason, "4 requests left"));
    Corral__Response *r = infer_now(p.url, NULL);
    expect_error(r, CORRAL_EDRAINING, "draining");
    printf("  refused: %s\n", r->error->message);
    corral__response__free_unpacked(r, NULL);
    /* Still draining: the stall holds the accepted requests, and statistics are served. */
    assert_int_equal(atomic_load(&j[0].finished), 0);
    Corral__Response *st = get_stats(p.url);
    assert_int_equal(st->stats->request_count, K + 1);
    assert_int_equal(rejections(st->stats, "draining"), 1);
    assert_int_equal(st->stats->success_count, 0);
    corral__response__free_unpacked(st, NULL);

    jobs_join(j, K);
    for (size_t k = 0; k < K; k++)
        expect_result(&j[k], k);
    expect_exit_0(&p);
    assert_true(log_has(&p, "0 accepted requests cut", NULL, NULL, NULL, 0));
    jobs_free(j, K);
    engine_free(eng);
}

static void test_drain_timeout_cuts(void **state)
{
    /* A 60 s stall holds request 0, request 1 waits behind it; --drain-timeout-ms 300:
     * both are answered EDRAINING soon after the SIGTERM (nominally 300 ms; the bound is
     * 20 s, far below the stall, under the clients' own 30 s wait) and it exits 0. */
    enum { K = 2 };
    struct proc p;
    struct job *j = jobs_alloc(K);
    start_replica("digits_d", &p, 0, "--test-hooks", "--stall-ms", "60000",
                  "--drain-timeout-ms", "300", (char *)NULL);
    for (size_t k = 0; k < K; k++) {
        job_init(&j[k], NULL, p.url, k == 0 ? 60000 : 0);
        j[k].recv_ms = 30000;
        job_start(&j[k]);
        wait_requests(p.url, k + 1);
    }
    uint64_t t0 = now_ms();
    kill(p.pid, SIGTERM);
    jobs_join(j, K);
    uint64_t took = now_ms() - t0;
    printf("  answered %llu ms after SIGTERM (drain timeout 300 ms)\n", (unsigned long long)took);
    for (size_t k = 0; k < K; k++)
        expect_error(j[k].resp, CORRAL_EDRAINING, "drain timeout of 300 ms passed");
    assert_true(took >= 300);
    assert_true(took < 20000);
    expect_exit_0(&p);
    assert_true(log_has(&p, "2 accepted requests cut", NULL, NULL, NULL, 0));
    jobs_free(j, K);
}

static void test_second_signal_ends_drain(void **state)
{
    /* The default drain timeout (30 s) and a 60 s stall: a second SIGTERM during the drain
     * answers what is left with EDRAINING at once (the bound, 20 s, is under the drain
     * timeout) and the process exits 0. */
    enum { K = 2 };
    struct proc p;
    struct health h;
    struct job *j = jobs_alloc(K);
    start_replica("digits_d", &p, 0, "--test-hooks", "--stall-ms", "60000", (char *)NULL);
    for (size_t k = 0; k < K; k++) {
        job_init(&j[k], NULL, p.url, k == 0 ? 60000 : 0);
        j[k].recv_ms = 45000;
        job_start(&j[k]);
        wait_requests(p.url, k + 1);
    }
    uint64_t t0 = now_ms();
    kill(p.pid, SIGTERM);
    wait_state(p.url, "draining", &h, &j[0].finished);
    kill(p.pid, SIGTERM);
    jobs_join(j, K);
    uint64_t took = now_ms() - t0;
    printf("  answered %llu ms after the first SIGTERM\n", (unsigned long long)took);
    for (size_t k = 0; k < K; k++)
        expect_error(j[k].resp, CORRAL_EDRAINING, "second signal");
    assert_true(took < 20000);
    expect_exit_0(&p);
    jobs_free(j, K);
}

/* ---- setup ------------------------------------------------------------------------------ */

static int setup(void **state)
{
    struct cerr e = {0};
    snprintf(repo, sizeof repo, "/tmp/corral-drain-XXXXXX");
    if (!mkdtemp(repo))
        return -1;
    if (bmodel_link_digits(repo, "digits_d", digits_dir,
                           "{\"max_batch_size\": 1, \"max_queue_size\": 16}", &e)) {
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
    if (argc != 3) {
        fprintf(stderr, "usage: test_replica_drain REPLICA_BINARY DIGITS_VERSION_DIR\n");
        return 2;
    }
    replica_bin = argv[1];
    digits_dir = argv[2];
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_starting_is_told),
        cmocka_unit_test(test_signal_while_starting_exits),
        cmocka_unit_test(test_stalled_executor_is_failed),
        cmocka_unit_test(test_drain_answers_what_it_accepted),
        cmocka_unit_test(test_drain_timeout_cuts),
        cmocka_unit_test(test_second_signal_ends_drain),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
