/*
 * corral-scheduler: the control plane of one machine (BLUEPRINT.md).
 *
 * `--check FILE` reads the cluster config, validates all of it against the file and
 * this machine, and prints the plan (the router, the admin API, health and rollout
 * settings with defaults filled in, and each replica's device and cores) without
 * starting anything. `--config FILE` validates the same way (and refuses to start on
 * any error), then runs the cluster: the router and every replica as children,
 * supervised (supervisor.h) until SIGTERM or SIGINT.
 *
 * Exit status: --check: 0 the config is valid (and the plan printed), 1 it is not
 * (every error on stderr, one per line, "JSON.PATH: what was expected, got what").
 * --config: 0 the cluster was stopped cleanly by a signal, 1 it never started (a bad
 * config, no binaries, no state directory) or the router failed. 2 a usage error.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "log.h"
#include "placement.h"
#include "supervisor.h"

#define EXIT_USAGE 2

static void usage(FILE *f)
{
    fprintf(f,
            "usage: corral-scheduler --check FILE\n"
            "       corral-scheduler --config FILE [--state-dir DIR] [--bin-dir DIR]\n"
            "\n"
            "The control plane of one machine: reads the cluster config FILE (JSON), places\n"
            "each model's replicas on devices (CUDA_VISIBLE_DEVICES for a GPU, a core set\n"
            "for the CPU), starts the router and the replicas and keeps them running.\n"
            "\n"
            "  --check FILE    validate FILE completely (every key, the model repository,\n"
            "                  whether the replicas fit the cores and GPUs this process may\n"
            "                  use) and print the plan without starting anything. Exit 0\n"
            "                  when valid; 1 with every error on stderr, one per line,\n"
            "                  naming its JSON path (models[1].replicas: expected an\n"
            "                  integer >= 0, got \"two\")\n"
            "  --config FILE   validate FILE as --check does (nothing starts on an error,\n"
            "                  exit 1), then run the cluster it describes: the router, then\n"
            "                  each replica, added to the router's table once ready; a\n"
            "                  child that exits is restarted with backoff (100 ms to 10 s),\n"
            "                  marked failed after %d exits in a row. SIGTERM/SIGINT drains\n"
            "                  and stops every replica, then the router; exit 0. An\n"
            "                  applied config (corralctl apply, SIGHUP) scales, and a\n"
            "                  changed version rolls out: surge first, soak, then drain\n"
            "  --state-dir DIR where the children's logs go (router.log, MODEL-N.log,\n"
            "                  rotated past 10 MiB to .1); default CONFIG_DIR/.corral-state/\n"
            "                  CONFIG_NAME (the config file's name without .json)\n"
            "  --bin-dir DIR   where corral-router and corral-replica are; default: beside\n"
            "                  this executable, then ../router and ../replica from it (a\n"
            "                  build tree), then PATH\n"
            "  -h, --help      this text\n"
            "\n"
            "The config's keys, defaults and placement rules: docs/operations.md, \"Cluster\n"
            "config\" and \"Running a cluster\"; an example: deploy/cluster.json.\n",
            SCHED_CRASH_LIMIT);
}

/* --test-break-rule surge-first: a rollout drains an old replica before its successor
 * serves (CONTROL-PLANE.md rule 5 broken, for the test that shows requests fail then). */
static int break_surge_first;

static int bad_usage(const char *msg)
{
    fprintf(stderr, "corral-scheduler: %s\n", msg);
    usage(stderr);
    return EXIT_USAGE;
}

static void print_replica(const struct sched_config *cfg, const struct sched_replica *r)
{
    const struct sched_model *mo = &cfg->models[r->model];
    char who[SCHED_NAME_MAX + 16], dev[64], cores[256];
    snprintf(who, sizeof who, "%s#%d", mo->name, r->index);
    sched_device_format(&r->dev, dev, sizeof dev);
    if (r->dev.kind == SCHED_DEV_CUDA) {
        printf("  %-25s device %s, CUDA_VISIBLE_DEVICES=%s (cuda:0 inside the replica), "
               "--threads %d%s\n", who, dev, r->cuda_visible, mo->threads,
               r->shared ? ", shared (oversubscribe)" : "");
        return;
    }
    sched_cpuset_format(&r->cpus, cores, sizeof cores);
    printf("  %-25s device %s, cores %s, --threads %d%s\n", who, dev, cores, mo->threads,
           r->shared ? ", shared (oversubscribe)" : "");
}

static void print_plan(const struct sched_config *cfg, const struct sched_machine *m,
                       const struct sched_plan *plan)
{
    char cores[256];
    size_t n_cpu = 0, n_gpu = 0;
    printf("corral-scheduler: %s is valid; the plan (--check starts nothing):\n", cfg->path);
    printf("%-27s %s\n", "model_repository", cfg->model_repository);
    printf("%-27s %s\n", "router.listen", cfg->router.listen.text);
    printf("%-27s %s\n", "router.rpc_listen", cfg->router.rpc_url);
    printf("%-27s %d\n", "router.threads", cfg->router.threads);
    printf("%-27s %s\n", "router.control_listen", cfg->router.control.text);
    printf("%-27s %s\n", "router.token_file",
           cfg->router.token_file ? cfg->router.token_file : "none (inference takes no token)");
    printf("%-27s %s\n", "admin.listen", cfg->admin.listen.text);
    printf("%-27s %s\n", "admin.token_file",
           cfg->admin.token_file ? cfg->admin.token_file : "none (the admin API takes no token)");
    printf("%-27s %ld\n", "health.interval_ms", cfg->health.interval_ms);
    printf("%-27s %ld\n", "health.timeout_ms", cfg->health.timeout_ms);
    printf("%-27s %d\n", "health.failure_threshold", cfg->health.failure_threshold);
    printf("%-27s %d\n", "rollout.max_surge", cfg->rollout.max_surge);
    printf("%-27s %ld\n", "rollout.drain_timeout_ms", cfg->rollout.drain_timeout_ms);
    printf("%-27s %ld\n", "rollout.soak_ms", cfg->rollout.soak_ms);
    printf("%-27s %d%s\n", "rollout.canary_percent", cfg->rollout.canary_percent,
           cfg->rollout.canary_percent ? "" : " (no canary)");
    printf("%-27s %ld\n", "rollout.ready_timeout_ms", cfg->rollout.ready_timeout_ms);
    printf("%-27s %s\n", "oversubscribe", cfg->oversubscribe ? "true" : "false");
    sched_cpuset_format(&m->cpus, cores, sizeof cores);
    printf("%-27s %d core%s this process may use (%s), %d GPU%s (%s)\n", "machine", m->n_cpus,
           m->n_cpus == 1 ? "" : "s", cores, m->n_gpus, m->n_gpus == 1 ? "" : "s",
           m->gpu_source);
    for (size_t i = 0; i < cfg->n_models; i++) {
        const struct sched_model *mo = &cfg->models[i];
        char label[32], devs[SCHED_MAX_DEVICES * 16];
        size_t off = 0;
        devs[0] = '\0';
        for (size_t d = 0; d < mo->n_devices && off < sizeof devs; d++) {
            char one[32];
            sched_device_format(&mo->devices[d], one, sizeof one);
            off += (size_t)snprintf(devs + off, sizeof devs - off, "%s%s", d ? " " : "", one);
        }
        snprintf(label, sizeof label, "models[%zu]", i);
        if (mo->alias[0])
            printf("%-27s %s version %s (%ld)", label, mo->name, mo->alias, mo->version);
        else
            printf("%-27s %s version %ld", label, mo->name, mo->version);
        printf(": %d replica%s, threads %d, devices %s\n", mo->replicas,
               mo->replicas == 1 ? "" : "s", mo->threads, devs);
        for (size_t r = 0; r < plan->n; r++)
            if (plan->replicas[r].model == i)
                print_replica(cfg, &plan->replicas[r]);
    }
    for (size_t r = 0; r < plan->n; r++) {
        if (plan->replicas[r].dev.kind == SCHED_DEV_CUDA)
            n_gpu++;
        else
            n_cpu++;
    }
    printf("%-27s %zu CPU replica%s on %d of %d cores, %zu GPU replica%s on %d of %d GPUs\n",
           "total", n_cpu, n_cpu == 1 ? "" : "s", plan->cpu_cores, m->n_cpus, n_gpu,
           n_gpu == 1 ? "" : "s", plan->gpus_used, m->n_gpus);
}

/* Loads, validates and places `file`; 0 when it holds no error (else every error is
 * printed). cfg and plan must be freed either way. */
static int load(const char *file, struct sched_config *cfg_out, struct sched_machine *mach_out,
                struct sched_plan *plan_out)
{
    struct sched_config cfg;
    struct sched_errs errs = {0};
    struct sched_machine mach = {0};
    struct sched_plan plan = {0};
    struct cerr e = {0};
    int rc = 1;

    int lrc = sched_config_load(file, &cfg, &errs);
    /* Placement runs even when the file has errors, on the models that passed, so one
     * run lists every problem; a file that could not be read has nothing to place. */
    if (lrc != CORRAL_EIO && lrc != CORRAL_ETOOLARGE) {
        if (sched_machine_probe(&mach, &e))
            sched_errs_add(&errs, NULL, "%s", e.msg);
        else
            sched_place(&cfg, &mach, &plan, &errs);
    }
    if (sched_errs_count(&errs)) {
        size_t n = sched_errs_count(&errs);
        fprintf(stderr, "corral-scheduler: %s: %zu error%s; nothing was started\n",
                cfg.path ? cfg.path : file, n, n == 1 ? "" : "s");
        sched_errs_print(&errs, stderr);
        goto fail;
    }
    rc = 0;
fail:
    *cfg_out = cfg;
    *mach_out = mach;
    *plan_out = plan;
    sched_errs_free(&errs);
    return rc;
}

static int check(const char *file)
{
    struct sched_config cfg;
    struct sched_machine mach;
    struct sched_plan plan;
    int rc = load(file, &cfg, &mach, &plan);
    if (rc == 0) {
        print_plan(&cfg, &mach, &plan);
        if (fflush(stdout) != 0) {
            perror("corral-scheduler: writing the plan");
            rc = 1;
        }
    }
    sched_plan_free(&plan);
    sched_config_free(&cfg);
    return rc;
}

static int is_exec(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode) && access(p, X_OK) == 0;
}

/* snprintf for paths, where a cut one simply is not found. */
static void __attribute__((format(printf, 3, 4))) path_fmt(char *out, size_t len,
                                                          const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(out, len, fmt, ap);
    va_end(ap);
}

/* Where `name` is: bin_dir only, when given; else beside this executable, then in the
 * build tree's ../SUBDIR, then on PATH. Writes the path to out; 0 when found. */
static int find_bin(const char *name, const char *subdir, const char *bin_dir, char *out,
                    size_t len, char *tried, size_t tried_len)
{
    char self[PATH_MAX], dir[PATH_MAX];
    size_t off = 0;
    tried[0] = '\0';
#define TRY(...)                                                                        \
    do {                                                                                \
        path_fmt(out, len, __VA_ARGS__);                                                \
        if (is_exec(out))                                                               \
            return 0;                                                                   \
        if (off < tried_len)                                                            \
            off += (size_t)snprintf(tried + off, tried_len - off, "%s%s", off ? ", " : "", \
                                    out);                                               \
    } while (0)
    if (bin_dir) {
        TRY("%s/%s", bin_dir, name);
        return -1;
    }
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n > 0) {
        self[n] = '\0';
        snprintf(dir, sizeof dir, "%s", self);
        *strrchr(dir, '/') = '\0';
        TRY("%s/%s", dir, name);
        TRY("%s/../%s/%s", dir, subdir, name);
    }
    const char *path = getenv("PATH");
    while (path && *path) {
        size_t k = strcspn(path, ":");
        if (k)
            TRY("%.*s/%s", (int)k, path, name);
        path += k + (path[k] == ':');
    }
#undef TRY
    if (off < tried_len)
        snprintf(tried + off, tried_len - off, "%sPATH", off ? ", " : "");
    return -1;
}

/* mkdir -p */
static int make_dirs(const char *p)
{
    char buf[PATH_MAX];
    snprintf(buf, sizeof buf, "%s", p);
    for (char *q = buf + 1; *q; q++) {
        if (*q != '/')
            continue;
        *q = '\0';
        if (mkdir(buf, 0755) != 0 && errno != EEXIST)
            return -1;
        *q = '/';
    }
    return mkdir(buf, 0755) != 0 && errno != EEXIST ? -1 : 0;
}

static int run(const char *file, const char *state_dir, const char *bin_dir)
{
    struct sched_config cfg;
    struct sched_machine mach;
    struct sched_plan plan;
    char router[PATH_MAX], replica[PATH_MAX], tried[2048], state[PATH_MAX];
    int rc = load(file, &cfg, &mach, &plan);
    if (rc)
        goto out;
    rc = 1;
    if (find_bin("corral-router", "router", bin_dir, router, sizeof router, tried,
                 sizeof tried)) {
        LOG_ERROR("no corral-router executable (tried %s); nothing was started", tried);
        goto out;
    }
    if (find_bin("corral-replica", "replica", bin_dir, replica, sizeof replica, tried,
                 sizeof tried)) {
        LOG_ERROR("no corral-replica executable (tried %s); nothing was started", tried);
        goto out;
    }
    if (state_dir) {
        snprintf(state, sizeof state, "%s", state_dir);
    } else {
        /* Beside the config: <its folder>/.corral-state/<its name without .json>. */
        const char *slash = strrchr(cfg.path, '/');
        const char *base = slash + 1;
        size_t bl = strlen(base);
        if (bl > 5 && strcmp(base + bl - 5, ".json") == 0)
            bl -= 5;
        snprintf(state, sizeof state, "%.*s/.corral-state/%.*s", (int)(slash - cfg.path),
                 cfg.path, (int)bl, base);
    }
    if (make_dirs(state) != 0) {
        LOG_ERROR("cannot create the state directory %s: %s; nothing was started", state,
                  strerror(errno));
        goto out;
    }
    LOG_INFO("%s is valid: %zu replica%s on this machine (%d cores, %d GPUs); binaries %s and %s",
             cfg.path, plan.n, plan.n == 1 ? "" : "s", mach.n_cpus, mach.n_gpus, router, replica);
    struct sched_sup_opts o = {.cfg = &cfg, .plan = &plan, .mach = &mach, .router_bin = router,
                               .replica_bin = replica, .state_dir = state,
                               .break_surge_first = break_surge_first};
    rc = sched_sup_run(&o);
out:
    sched_plan_free(&plan);
    sched_config_free(&cfg);
    return rc;
}

int main(int argc, char **argv)
{
    enum { O_CHECK = 256, O_CONFIG, O_STATE, O_BIN, O_BREAK };
    static const struct option opts[] = {
        {"check", required_argument, NULL, O_CHECK},
        {"config", required_argument, NULL, O_CONFIG},
        {"state-dir", required_argument, NULL, O_STATE},
        {"bin-dir", required_argument, NULL, O_BIN},
        /* Tests only: breaks a rule of CONTROL-PLANE.md on purpose (not in --help). */
        {"test-break-rule", required_argument, NULL, O_BREAK},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *check_file = NULL, *config_file = NULL, *state_dir = NULL, *bin_dir = NULL;
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case O_CHECK: check_file = optarg; break;
        case O_CONFIG: config_file = optarg; break;
        case O_STATE: state_dir = optarg; break;
        case O_BIN: bin_dir = optarg; break;
        case O_BREAK:
            if (strcmp(optarg, "surge-first") != 0)
                return bad_usage("--test-break-rule takes surge-first");
            break_surge_first = 1;
            break;
        case 'h': usage(stdout); return 0;
        default: {
            char msg[128];
            snprintf(msg, sizeof msg, "unknown option or missing value: '%.64s'",
                     argv[optind - 1]);
            return bad_usage(msg);
        }
        }
    }
    if (optind < argc) {
        char msg[128];
        snprintf(msg, sizeof msg, "unexpected argument '%.64s'", argv[optind]);
        return bad_usage(msg);
    }
    if (check_file && config_file)
        return bad_usage("give --check FILE or --config FILE, not both");
    if ((state_dir || bin_dir) && !config_file)
        return bad_usage("--state-dir and --bin-dir go with --config FILE");
    if (config_file) {
        log_init("scheduler");
        return run(config_file, state_dir, bin_dir);
    }
    if (!check_file)
        return bad_usage("nothing to do: give --check FILE or --config FILE");
    return check(check_file);
}
