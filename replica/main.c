/*
 * corral-replica: serves one version of one model over SP request/reply (what NNG
 * REQ sockets and the router speak).
 *
 * Start-up order matters: the socket opens first, answering health with state
 * "starting" (and refusing everything else with EUNAVAIL), while the model is
 * loaded, checked against its config, its parity vectors replayed and every
 * bucket warmed; only then does it say ready and take infer requests, so a
 * replica that takes work is always one whose numbers were verified. Any
 * failure before that prints one line naming the problem and exits 1.
 *
 * Signals (SIGTERM, SIGINT) are taken by one thread with sigwait, never by a
 * handler. While starting, nothing has been accepted: the process exits 0 at
 * once. Once ready, the first signal starts a drain (health says draining, new
 * infer requests are refused with EDRAINING, everything accepted is answered)
 * and main exits 0 when the last answer has left; after --drain-timeout-ms, or
 * at a second signal, what is left is answered EDRAINING instead.
 */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "batcher.h"
#include "engine.h"
#include "health_http.h"
#include "hostport.h"
#include "log.h"
#include "model_repo.h"
#include "parity.h"
#include "image_pool.h"
#include "server.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: corral-replica --model-repo DIR --model NAME [--version N] --listen URL\n"
            "                      [--device cpu] [--threads N] [--contexts N] [--log-level LEVEL]\n"
            "                      [--overlap on|off] [--stall-ms N] [--drain-timeout-ms N]\n"
            "                      [--health-listen HOST:PORT]\n"
            "                      [--image-threads N] [--max-image-pixels N]\n"
            "                      [--test-hooks [--test-hold-start FILE]]\n"
            "       corral-replica --model-repo DIR --model NAME [--version N] --verify\n"
            "\n"
            "Loads models/NAME/<version>/model.onnx (the highest version when none is given),\n"
            "replays its parity vectors and, when they match, serves infer, metadata and health\n"
            "requests over SP request/reply (what NNG REQ sockets speak) at URL, tcp://HOST:PORT\n"
            "(e.g. tcp://127.0.0.1:9101; port 0 picks one). URL answers health from the start\n"
            "(state starting); infer requests are taken once the model is verified and warm.\n"
            "On SIGTERM or SIGINT it drains: new infer requests are refused (draining), those\n"
            "accepted are answered, then it exits 0; a second signal ends the drain at once.\n"
            "\n"
            "  --model-repo DIR   model repository root (holds NAME/config.json)\n"
            "  --model NAME       model to serve\n"
            "  --version N        version directory to load (default: highest)\n"
            "  --listen URL       tcp://HOST:PORT to serve on (HOST an address, [IPv6], a name or *)\n"
            "  --health-listen HOST:PORT  also answer HTTP probes and scrapes there, from the\n"
            "                     start: GET /live (200 while the executor makes progress),\n"
            "                     GET /ready (200 once loaded, warmed and parity verified, and\n"
            "                     not draining; 503 with the state and reason otherwise) and\n"
            "                     GET /metrics (Prometheus text); port 0 picks one\n"
            "  --device DEV       cpu (default); cuda:N needs a CUDA build and device\n"
            "  --threads N        compute threads for the CPU backend (default 1)\n"
            "  --contexts N       requests accepted and not yet answered; at this many the replica\n"
            "                     stops reading until replies free room (default: enough for\n"
            "                     the batching queue, max_queue_size + 2 * max_batch_size + 16,\n"
            "                     at least 64)\n"
            "  --image-threads N  for a model that takes images (config.json preprocess):\n"
            "                     threads decoding and preprocessing them (default 1)\n"
            "  --max-image-pixels N  largest decoded image, width x height (default 40000000);\n"
            "                     larger ones are refused as too large (HTTP 413) before\n"
            "                     anything the size of the image is allocated\n"
            "  --verify           check the parity vectors, print the max abs difference per\n"
            "                     output and exit 0 (within tolerance) or 1\n"
            "  --log-level L      debug, info, warn or error (default info)\n"
            "  --overlap on|off   run the engine on its own thread so that padding the next\n"
            "                     batch and cutting up the last one overlap compute (default on)\n"
            "  --stall-ms N       report not live when one batch computes longer than this\n"
            "                     (default: 4x the slowest warm-up bucket, at least 300)\n"
            "  --drain-timeout-ms N  after a signal, how long accepted requests may take to be\n"
            "                     answered; those left then are answered draining (default\n"
            "                     30000, 0..3600000)\n"
            "  --test-hooks       FOR TESTS ONLY: honour the infer parameter\n"
            "                     corral_test_stall_ms, which stalls the compute section\n"
            "  --test-hold-start FILE  FOR TESTS ONLY (needs --test-hooks): stay in state\n"
            "                     starting, before loading, until FILE exists\n");
}

static int parse_long(const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || end == s || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

/* The config is what clients are told; the graph is what runs: they must agree. */
static int check_config_matches(const struct model_config *cfg, const struct engine *eng,
                                struct cerr *e)
{
    if (cfg->n_inputs != engine_num_inputs(eng) || cfg->n_outputs != engine_num_outputs(eng))
        return cerr_set(e, CORRAL_EINVAL,
                        "config.json declares %zu inputs and %zu outputs, model.onnx has %zu and %zu",
                        cfg->n_inputs, cfg->n_outputs, engine_num_inputs(eng),
                        engine_num_outputs(eng));
    for (size_t i = 0; i < cfg->n_inputs + cfg->n_outputs; i++) {
        int is_in = i < cfg->n_inputs;
        size_t k = is_in ? i : i - cfg->n_inputs;
        const struct model_io *c = is_in ? &cfg->inputs[k] : &cfg->outputs[k];
        const struct engine_io_info *g = is_in ? engine_input(eng, k) : engine_output(eng, k);
        if (strcmp(c->name, g->name) != 0 || c->dtype != g->dtype || c->ndim != g->ndim)
            return cerr_set(e, CORRAL_EINVAL,
                            "config.json %s %zu is '%s' %s rank %d, model.onnx has '%s' %s rank %d",
                            is_in ? "input" : "output", k, c->name, dtype_name(c->dtype), c->ndim,
                            g->name, dtype_name(g->dtype), g->ndim);
    }
    return CORRAL_OK;
}

/* Summarises the engine's plans ("input[8,64]:4096;...") into the server options. */
static void describe_plans(const struct engine *eng, struct replica_server_options *so, char *buf,
                           size_t len)
{
    size_t off = 0, n = engine_plan_count(eng);
    buf[0] = '\0';
    for (size_t i = 0; i < n; i++) {
        struct engine_plan_info info;
        if (engine_plan_info(eng, i, &info))
            continue;
        so->plan_count++;
        if ((int64_t)info.arena_bytes > so->arena_bytes_max)
            so->arena_bytes_max = (int64_t)info.arena_bytes;
        for (size_t k = 0; k < info.n_inputs && off + 1 < len; k++) {
            char sh[128];
            const struct engine_io_info *io = &info.inputs[k];
            int m = snprintf(buf + off, len - off, "%s%s%s", off && k == 0 ? ";" : (k ? "," : ""),
                             io->name, tensor_shape_str(io->dims, io->ndim, sh, sizeof sh));
            off = m < 0 || (size_t)m >= len - off ? len - 1 : off + (size_t)m;
        }
        if (off + 1 < len) {
            int m = snprintf(buf + off, len - off, ":%zu", info.arena_bytes);
            off = m < 0 || (size_t)m >= len - off ? len - 1 : off + (size_t)m;
        }
    }
    LOG_INFO("plans: %lld built at warm-up, largest arena %lld bytes (the engine's plans share one "
             "arena of that size)", (long long)so->plan_count, (long long)so->arena_bytes_max);
}

/*
 * What the signal thread shares with main. While `serving` is 0 a signal ends the
 * process (nothing was accepted); once main has set it, together with srv and bat,
 * the first signal starts the drain and the second cuts it.
 */
struct sigctl {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    sigset_t set;
    int serving, quit;
    int n, sig; /* signals taken since serving, and the first one */
    struct replica_server *srv;
    struct batcher *bat;
};

static const char *sig_name(int sig)
{
    return sig == SIGTERM ? "SIGTERM" : sig == SIGINT ? "SIGINT" : "signal";
}

static void *signal_main(void *arg)
{
    struct sigctl *c = arg;
    for (;;) {
        int sig = 0;
        if (sigwait(&c->set, &sig) != 0)
            continue;
        pthread_mutex_lock(&c->mu);
        if (c->quit) {
            pthread_mutex_unlock(&c->mu);
            return NULL;
        }
        if (!c->serving) {
            /* The lock is held to the end, so main cannot start serving meanwhile: no
             * request is ever accepted and left unanswered by this exit. */
            LOG_INFO("%s while starting: nothing was accepted; exiting", sig_name(sig));
            _exit(0);
        }
        if (++c->n == 1) {
            c->sig = sig;
            /* Refusing starts here, not when main next runs: health and new requests see
             * the drain from this point on. */
            replica_server_drain(c->srv, sig_name(sig));
            batcher_drain(c->bat, sig_name(sig));
        } else {
            char why[64];
            snprintf(why, sizeof why, "a second signal, %s", sig_name(sig));
            LOG_WARN("%s during the drain: ending it now, %zu requests left are answered "
                     "draining", sig_name(sig), batcher_outstanding(c->bat));
            batcher_cut(c->bat, why);
        }
        pthread_cond_broadcast(&c->cv);
        pthread_mutex_unlock(&c->mu);
    }
}

/* Wakes the signal thread with a signal of its own and joins it. */
static void signal_thread_stop(struct sigctl *c, pthread_t th)
{
    pthread_mutex_lock(&c->mu);
    c->quit = 1;
    pthread_mutex_unlock(&c->mu);
    pthread_kill(th, SIGTERM);
    pthread_join(th, NULL);
}

/* The --test-hold-start gate: stays in "starting" until the file exists. */
static void hold_start(const char *path)
{
    while (access(path, F_OK) != 0) {
        struct timespec ts = {0, 10 * 1000000};
        nanosleep(&ts, NULL);
    }
}

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/*
 * Once ready: waits for the first signal, then for every accepted request to be
 * answered (the signal thread has already made the server and batcher refuse new
 * ones), cutting what is left after drain_ms. 0 when everything accepted was
 * answered; -1 when an engine run never came back even after the cut.
 */
static int drain(struct sigctl *c, struct batcher *bat, long drain_ms)
{
    struct batcher_stats *st = malloc(sizeof *st);
    pthread_mutex_lock(&c->mu);
    while (c->n == 0)
        pthread_cond_wait(&c->cv, &c->mu);
    int sig = c->sig;
    pthread_mutex_unlock(&c->mu);
    int64_t t0 = mono_ms();
    LOG_INFO("%s: draining: not ready, new infer requests refused, %zu accepted ones to answer "
             "(drain timeout %ld ms)", sig_name(sig), batcher_outstanding(bat), drain_ms);
    if (!batcher_wait_idle(bat, drain_ms)) {
        char why[96];
        snprintf(why, sizeof why, "the drain timeout of %ld ms passed", drain_ms);
        LOG_WARN("drain: %s with %zu requests unanswered; answering them draining", why,
                 batcher_outstanding(bat));
        batcher_cut(bat, why);
        /* Only an engine run already under way can hold it now; one that takes well past
         * the stall limit will not come back. */
        if (!batcher_wait_idle(bat, 2 * batcher_stall_ms(bat) + 2000)) {
            LOG_ERROR("drain: %zu requests are stuck in an engine run that does not return; "
                      "exiting without their answers", batcher_outstanding(bat));
            free(st);
            return -1;
        }
    }
    if (st) {
        batcher_get_stats(bat, st);
        LOG_INFO("drained in %lld ms: %llu accepted requests cut (answered draining), %llu new "
                 "ones refused; exiting", (long long)(mono_ms() - t0),
                 (unsigned long long)st->cut,
                 (unsigned long long)(st->rejected[BATCHER_REJECT_DRAINING] - st->cut));
        free(st);
    }
    return 0;
}

int main(int argc, char **argv)
{
    static char plans_desc[4096];
    const char *repo = NULL, *model = NULL, *listen = NULL, *device = "cpu", *hold = NULL;
    const char *health_listen = NULL;
    struct health_http *hh = NULL;
    long version = 0, threads = 1, contexts = 0, stall_ms = 0, drain_ms = 30000;
    long image_threads = 1, max_image_pixels = 40000000;
    int verify = 0, rc = 1;
    struct batcher_options bo = BATCHER_OPTIONS_DEFAULT;
    struct batcher *bat = NULL;
    struct model_config cfg;
    struct engine *eng = NULL;
    struct replica_server *srv = NULL;
    struct cerr e = {0};
    int have_cfg = 0, have_sigthread = 0;
    struct sigctl ctl = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};
    pthread_t sigthread;

    static const struct option opts[] = {
        {"model-repo", required_argument, 0, 'r'}, {"model", required_argument, 0, 'm'},
        {"version", required_argument, 0, 'v'},    {"listen", required_argument, 0, 'l'},
        {"device", required_argument, 0, 'd'},     {"threads", required_argument, 0, 't'},
        {"contexts", required_argument, 0, 'c'},   {"verify", no_argument, 0, 'V'},
        {"log-level", required_argument, 0, 'L'},  {"help", no_argument, 0, 'h'},
        {"overlap", required_argument, 0, 'O'},    {"stall-ms", required_argument, 0, 'S'},
        {"test-hooks", no_argument, 0, 'T'},       {"drain-timeout-ms", required_argument, 0, 'D'},
        {"test-hold-start", required_argument, 0, 'H'},
        {"health-listen", required_argument, 0, 'P'},
        {"image-threads", required_argument, 0, 'I'},
        {"max-image-pixels", required_argument, 0, 'X'},
        {0, 0, 0, 0}};
    log_init("replica");
    int c;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'r': repo = optarg; break;
        case 'm': model = optarg; break;
        case 'l': listen = optarg; break;
        case 'd': device = optarg; break;
        case 'V': verify = 1; break;
        case 'v':
            if (parse_long(optarg, 1, 1000000000L, &version)) {
                fprintf(stderr, "corral-replica: --version '%s' is not a positive integer\n", optarg);
                return 2;
            }
            break;
        case 't':
            if (parse_long(optarg, 1, 1024, &threads)) {
                fprintf(stderr, "corral-replica: --threads '%s' is not an integer in 1..1024\n", optarg);
                return 2;
            }
            break;
        case 'c':
            if (parse_long(optarg, 1, 4096, &contexts)) {
                fprintf(stderr, "corral-replica: --contexts '%s' is not an integer in 1..4096\n", optarg);
                return 2;
            }
            break;
        case 'L': {
            int l = log_parse_level(optarg);
            if (l < 0) {
                fprintf(stderr, "corral-replica: --log-level '%s' is not debug, info, warn or error\n", optarg);
                return 2;
            }
            log_set_level((enum log_level)l);
            break;
        }
        case 'O':
            if (strcmp(optarg, "on") != 0 && strcmp(optarg, "off") != 0) {
                fprintf(stderr, "corral-replica: --overlap '%s' is not on or off\n", optarg);
                return 2;
            }
            bo.overlap = strcmp(optarg, "on") == 0;
            break;
        case 'S':
            if (parse_long(optarg, 1, 3600000, &stall_ms)) {
                fprintf(stderr, "corral-replica: --stall-ms '%s' is not an integer in 1..3600000\n", optarg);
                return 2;
            }
            bo.stall_ms = stall_ms;
            break;
        case 'D':
            if (parse_long(optarg, 0, 3600000, &drain_ms)) {
                fprintf(stderr, "corral-replica: --drain-timeout-ms '%s' is not an integer in 0..3600000\n", optarg);
                return 2;
            }
            break;
        case 'T': bo.test_hooks = 1; break;
        case 'H': hold = optarg; break;
        case 'P': health_listen = optarg; break;
        case 'I':
            if (parse_long(optarg, 1, 64, &image_threads)) {
                fprintf(stderr, "corral-replica: --image-threads '%s' is not an integer in 1..64\n", optarg);
                return 2;
            }
            break;
        case 'X':
            if (parse_long(optarg, 1, 1000000000L, &max_image_pixels)) {
                fprintf(stderr, "corral-replica: --max-image-pixels '%s' is not an integer in "
                        "1..1000000000\n", optarg);
                return 2;
            }
            break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "corral-replica: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    if (!repo || !model || (!verify && !listen)) {
        fprintf(stderr, "corral-replica: --model-repo, --model and --listen (or --verify) are required\n");
        usage(stderr);
        return 2;
    }
    if (health_listen) {
        char hhost[256];
        int hport;
        if (verify) {
            fprintf(stderr, "corral-replica: --health-listen serves a running replica; --verify "
                            "only checks parity and exits\n");
            return 2;
        }
        if (hostport_parse(health_listen, hhost, sizeof hhost, &hport)) {
            fprintf(stderr, "corral-replica: --health-listen '%s' is not HOST:PORT (e.g. "
                            "0.0.0.0:8080, or [::]:8080)\n", health_listen);
            return 2;
        }
    }
    if (hold && !bo.test_hooks) {
        fprintf(stderr, "corral-replica: --test-hold-start needs --test-hooks\n");
        return 2;
    }
    if (model_repo_load(repo, model, version, &cfg, &e)) {
        fprintf(stderr, "corral-replica: %s\n", e.msg);
        goto out;
    }
    have_cfg = 1;
    if (!verify) {
        /* Signals are taken synchronously by sigwait on one thread, so every thread started
         * from here on (the server's, the batcher's, the CUDA runtime's) blocks them. */
        sigemptyset(&ctl.set);
        sigaddset(&ctl.set, SIGINT);
        sigaddset(&ctl.set, SIGTERM);
        pthread_sigmask(SIG_BLOCK, &ctl.set, NULL);
        signal(SIGPIPE, SIG_IGN);
        if (contexts == 0) {
            /* A request only reaches the queue through a free slot, so there must be more
             * slots than the queue holds for max_queue_size (and 429s) to mean anything. */
            int64_t mb = cfg.batching.max_batch_size > 0 ? cfg.batching.max_batch_size : 1;
            int64_t want = cfg.batching.max_queue_size + 2 * mb + 16;
            contexts = want < 64 ? 64 : want > 4096 ? 4096 : (long)want;
        }
        /* Open before loading, so that health can say "starting" and why, and a port
         * that is taken fails before minutes of loading. */
        if (replica_server_start(&srv, listen, &cfg, (int)contexts, &e)) {
            fprintf(stderr, "corral-replica: %s\n", e.msg);
            goto out;
        }
        /* Debug only: a start that fails must print one line, the failure. This line must
         * not read like the "serving ... on URL" one that says ready. */
        LOG_DEBUG("starting: answering health at %s while the model loads",
                  replica_server_url(srv));
        /* Probes see "starting" and why from here on, as the SP health answer does. */
        if (health_listen && health_http_start(&hh, health_listen, srv, &e)) {
            fprintf(stderr, "corral-replica: %s\n", e.msg);
            goto out;
        }
        if (pthread_create(&sigthread, NULL, signal_main, &ctl) != 0) {
            fprintf(stderr, "corral-replica: cannot start the signal thread\n");
            goto out;
        }
        have_sigthread = 1;
        if (hold) {
            replica_server_starting(srv, "loading %s (held by the test hook until %s exists)",
                                    cfg.model_path, hold);
            hold_start(hold);
        }
        replica_server_starting(srv, "loading %s", cfg.model_path);
    }
    struct engine_options eo = ENGINE_OPTIONS_DEFAULT;
    eo.threads = (int)threads;
    eo.device = device;
    if (engine_load_file(cfg.model_path, &eo, &eng, &e)) {
        /* The engine's message already names the file. */
        fprintf(stderr, "corral-replica: %s\n", e.msg);
        goto out;
    }
    if (check_config_matches(&cfg, eng, &e)) {
        fprintf(stderr, "corral-replica: %s: %s\n", cfg.model_path, e.msg);
        goto out;
    }

    size_t nout = engine_num_outputs(eng), nsets = 0;
    struct parity_result *pr = calloc(nout, sizeof *pr);
    if (!pr) {
        fprintf(stderr, "corral-replica: out of memory\n");
        goto out;
    }
    if (srv)
        replica_server_starting(srv, "verifying parity (%s)", cfg.vectors_dir);
    int prc = parity_check(eng, cfg.vectors_dir, cfg.parity_atol, cfg.parity_rtol, pr, &nsets, &e);
    if (verify) {
        for (size_t j = 0; j < nout && (prc == 0 || prc == CORRAL_EMISMATCH); j++)
            printf("output '%s': max abs diff %.3g over %zu vectors (tolerance atol %.3g rtol %.3g): %s\n",
                   pr[j].output, pr[j].max_abs_diff, nsets, cfg.parity_atol, cfg.parity_rtol,
                   pr[j].ok ? "ok" : "MISMATCH");
    }
    free(pr);
    if (prc) {
        fprintf(stderr, "corral-replica: %s/%s: %s\n", cfg.name, cfg.version_str, e.msg);
        goto out;
    }
    if (verify) {
        printf("verified %s version %s: %zu parity vectors within tolerance\n", cfg.name,
               cfg.version_str, nsets);
        rc = 0;
        goto out;
    }

    /* Every bucket runs once before the replica says ready, so the first requests meet
     * warm plans. */
    if (batcher_create(&bat, eng, &cfg, &bo, replica_server_reply, &e)) {
        fprintf(stderr, "corral-replica: %s/%s: %s\n", cfg.name, cfg.version_str, e.msg);
        goto out;
    }
    size_t nbuckets = batcher_bucket_count(bat);
    if (nbuckets)
        replica_server_starting(srv, "warming %zu buckets", nbuckets);
    else
        replica_server_starting(srv, "warming up");
    if (batcher_warmup(bat, &e)) {
        fprintf(stderr, "corral-replica: %s/%s: %s\n", cfg.name, cfg.version_str, e.msg);
        goto out;
    }
    struct replica_server_options so = REPLICA_SERVER_OPTIONS_DEFAULT;
    /* The plan list is read before the batcher starts: the engine's plan cache is
     * the executor's alone once it runs. */
    describe_plans(eng, &so, plans_desc, sizeof plans_desc);
    if (batcher_start(bat, &e)) {
        fprintf(stderr, "corral-replica: %s/%s: %s\n", cfg.name, cfg.version_str, e.msg);
        goto out;
    }
    if (bo.test_hooks)
        LOG_WARN("test hooks are enabled: requests may stall the executor on purpose");
    so.batcher = bat;
    so.device = device;
    if (cfg.image.enabled) {
        struct image_pool_options io = {.threads = (int)image_threads,
                                        .max_pixels = (uint64_t)max_image_pixels};
        if (replica_server_images(srv, &io, &e)) {
            fprintf(stderr, "corral-replica: %s/%s: %s\n", cfg.name, cfg.version_str, e.msg);
            goto out;
        }
        LOG_INFO("takes images: %lldx%lld %s into input '%s', %ld image thread%s, at most %ld "
                 "pixels", (long long)cfg.image.out_h, (long long)cfg.image.out_w,
                 cfg.image.nhwc ? "NHWC" : "NCHW", cfg.inputs[cfg.image.input].name,
                 image_threads, image_threads == 1 ? "" : "s", max_image_pixels);
    }
    if (cfg.batching.max_batch_size > 0)
        LOG_INFO("batching: max_batch_size %lld, max_queue_delay_us %lld, overlap %s, stall limit %lld ms",
                 (long long)cfg.batching.max_batch_size, (long long)cfg.batching.max_queue_delay_us,
                 bo.overlap ? "on" : "off", (long long)batcher_stall_ms(bat));
    /* Under the signal thread's lock: a signal that came while starting has ended the
     * process already, and one from now on drains. */
    pthread_mutex_lock(&ctl.mu);
    ctl.srv = srv;
    ctl.bat = bat;
    ctl.serving = 1;
    replica_server_ready(srv, &so);
    pthread_mutex_unlock(&ctl.mu);
    LOG_INFO("serving model %s version %s on %s (device %s, %ld threads, %zu parity vectors ok)",
             cfg.name, cfg.version_str, replica_server_url(srv), device, threads, nsets);
    if (drain(&ctl, bat, drain_ms) != 0) {
        /* The engine holds the batcher's threads: they cannot be joined, and the process
         * must not wait for them. */
        _exit(1);
    }
    rc = 0;
out:
    if (have_sigthread)
        signal_thread_stop(&ctl, sigthread);
    health_http_stop(hh);
    replica_server_stop(srv);
    batcher_free(bat);
    engine_free(eng);
    if (have_cfg)
        model_config_free(&cfg);
    return rc;
}
