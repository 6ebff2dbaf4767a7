/*
 * corral-scheduler: the control plane of one machine (BLUEPRINT.md).
 *
 * This build does the first step only: `--check FILE` reads the cluster config,
 * validates all of it against the file and this machine, and prints the plan (the
 * router, the admin API, health and rollout settings with defaults filled in, and
 * each replica's device and cores) without starting anything. Running a cluster
 * (`--config FILE`) is not built yet; asking for it says so and exits 2, rather than
 * seeming to run.
 *
 * Exit status: 0 the config is valid (and the plan printed), 1 it is not (every
 * error on stderr, one per line, "JSON.PATH: what was expected, got what"), 2 a
 * usage error.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "placement.h"

#define EXIT_USAGE 2

static void usage(FILE *f)
{
    fprintf(f,
            "usage: corral-scheduler --check FILE\n"
            "       corral-scheduler --config FILE   (not built yet)\n"
            "\n"
            "The control plane of one machine: reads the cluster config FILE (JSON), places\n"
            "each model's replicas on devices (CUDA_VISIBLE_DEVICES for a GPU, a core set\n"
            "for the CPU), and, once running clusters is built, starts the router and the\n"
            "replicas and keeps them running.\n"
            "\n"
            "  --check FILE    validate FILE completely (every key, the model repository,\n"
            "                  whether the replicas fit the cores and GPUs this process may\n"
            "                  use) and print the plan without starting anything. Exit 0\n"
            "                  when valid; 1 with every error on stderr, one per line,\n"
            "                  naming its JSON path (models[1].replicas: expected an\n"
            "                  integer >= 0, got \"two\")\n"
            "  --config FILE   run the cluster FILE describes: NOT BUILT YET (exits 2)\n"
            "  -h, --help      this text\n"
            "\n"
            "The config's keys, defaults and placement rules: docs/operations.md, \"Cluster\n"
            "config\"; an example: deploy/cluster.json.\n");
}

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
    printf("%-27s %s\n", "admin.listen", cfg->admin.listen.text);
    printf("%-27s %s\n", "admin.token_file",
           cfg->admin.token_file ? cfg->admin.token_file : "none (the admin API takes no token)");
    printf("%-27s %ld\n", "health.interval_ms", cfg->health.interval_ms);
    printf("%-27s %ld\n", "health.timeout_ms", cfg->health.timeout_ms);
    printf("%-27s %d\n", "health.failure_threshold", cfg->health.failure_threshold);
    printf("%-27s %d\n", "rollout.max_surge", cfg->rollout.max_surge);
    printf("%-27s %ld\n", "rollout.drain_timeout_ms", cfg->rollout.drain_timeout_ms);
    printf("%-27s %ld\n", "rollout.soak_ms", cfg->rollout.soak_ms);
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
        printf("%-27s %s version %ld: %d replica%s, threads %d, devices %s\n", label, mo->name,
               mo->version, mo->replicas, mo->replicas == 1 ? "" : "s", mo->threads, devs);
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

static int check(const char *file)
{
    struct sched_config cfg;
    struct sched_errs errs = {0};
    struct sched_machine mach;
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
    print_plan(&cfg, &mach, &plan);
    if (fflush(stdout) != 0) {
        perror("corral-scheduler: writing the plan");
        goto fail;
    }
    rc = 0;
fail:
    sched_plan_free(&plan);
    sched_config_free(&cfg);
    sched_errs_free(&errs);
    return rc;
}

int main(int argc, char **argv)
{
    enum { O_CHECK = 256, O_CONFIG };
    static const struct option opts[] = {
        {"check", required_argument, NULL, O_CHECK},
        {"config", required_argument, NULL, O_CONFIG},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *check_file = NULL, *config_file = NULL;
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case O_CHECK: check_file = optarg; break;
        case O_CONFIG: config_file = optarg; break;
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
    if (config_file) {
        fprintf(stderr, "corral-scheduler: running a cluster (--config) is not built yet; this "
                "build only validates a config and prints its plan: corral-scheduler --check "
                "%s\n", config_file);
        return EXIT_USAGE;
    }
    if (!check_file)
        return bad_usage("nothing to do: give --check FILE");
    return check(check_file);
}
