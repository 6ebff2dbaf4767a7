/*
 * The cluster config: one JSON file that describes a single-machine cluster (the
 * router, the admin API, health and rollout settings, and each model's replicas).
 *
 * Usage:
 *     struct sched_config cfg;
 *     struct sched_errs errs = {0};
 *     if (sched_config_load("cluster.json", &cfg, &errs)) {
 *         sched_errs_print(&errs, stderr);    // every problem, one per line
 *     }
 *     ... cfg.router.listen, cfg.models[i].replicas ...
 *     sched_config_free(&cfg);
 *     sched_errs_free(&errs);
 *
 * The file is untrusted input and is validated completely before anything acts:
 * every key is type- and range-checked, unknown keys are errors (a typo must not
 * be silently ignored), and every error is collected rather than only the first,
 * each as "PATH: what was expected, got what" where PATH is the JSON path
 * (`models[1].replicas: expected an integer >= 0, got "two"`). Defaults are
 * filled in for the keys that have one (docs/operations.md, "Cluster config").
 *
 * What depends on the machine (whether a cuda:N exists, whether the cores fit) is
 * not checked here but by placement.h, so that the same config can be checked
 * against another machine's description in tests.
 *
 * Ownership: sched_config owns every string and the models array; sched_errs owns
 * its lines. Both are freed by their _free function, which is safe on a zeroed
 * struct and after a failed load.
 */
#ifndef CORRAL_SCHEDULER_CONFIG_H
#define CORRAL_SCHEDULER_CONFIG_H

#include <stddef.h>
#include <stdio.h>

#include "aliases.h"
#include "error.h"

#define SCHED_CONFIG_MAX_BYTES (1 << 20) /* a cluster config is a few KiB; refuse a huge file */
#define SCHED_ERRS_MAX 100               /* lines kept; the rest are only counted */
#define SCHED_NAME_MAX 128               /* model names, as the replica's model_repo.h */
#define SCHED_HOST_MAX 256
#define SCHED_MAX_MODELS 256
#define SCHED_MAX_REPLICAS 1024          /* per model */
#define SCHED_MAX_TOTAL_REPLICAS 4096    /* all models together */
#define SCHED_MAX_DEVICES 64             /* entries in one model's devices list */
#define SCHED_MAX_THREADS 1024           /* as corral-replica --threads */
#define SCHED_MAX_CPU 1023               /* highest core number in "cpu:LO-HI" (CPU_SETSIZE - 1) */
#define SCHED_MAX_GPU 63                 /* highest N in "cuda:N" */
#define SCHED_MAX_MS 3600000L            /* one hour: the bound of every *_ms setting */

/* The validation errors of one config, in the order they were found. */
struct sched_errs {
    size_t n;       /* lines kept (at most SCHED_ERRS_MAX) */
    size_t dropped; /* errors found beyond SCHED_ERRS_MAX */
    char **lines;   /* "PATH: message", owned */
    int oom;        /* a line could not be stored */
};

/* Adds "PATH: message" (just the message when path is NULL or empty). Control
 * characters are replaced by '?', so that one error stays one line whatever the
 * file held. */
void sched_errs_add(struct sched_errs *errs, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* The total number of errors found, kept or not. */
size_t sched_errs_count(const struct sched_errs *errs);
/* Prints every line, then "... and N more errors" when some were dropped. */
void sched_errs_print(const struct sched_errs *errs, FILE *f);
void sched_errs_free(struct sched_errs *errs);

/* A "HOST:PORT" address, split. */
struct sched_addr {
    char text[SCHED_HOST_MAX + 16]; /* as written: "127.0.0.1:8000", "[::1]:8000" */
    char host[SCHED_HOST_MAX];      /* without IPv6 brackets */
    int port;                       /* 0..65535; 0 = any free port */
};

enum sched_dev_kind {
    SCHED_DEV_CPU,       /* "cpu": the scheduler picks `threads` cores */
    SCHED_DEV_CPU_FIXED, /* "cpu:LO-HI": exactly these cores */
    SCHED_DEV_CUDA,      /* "cuda:N" */
};

struct sched_device {
    enum sched_dev_kind kind;
    int lo, hi; /* SCHED_DEV_CPU_FIXED: cores lo..hi, inclusive */
    int gpu;    /* SCHED_DEV_CUDA: N */
    int valid;  /* the entry parsed (an entry that did not is reported and never placed) */
};

struct sched_model {
    char name[SCHED_NAME_MAX];
    long version;      /* >= 1: the directory <model_repository>/<name>/<version> */
    char alias[ALIAS_NAME_MAX]; /* the alias "version" named, resolved into version through
                                   <model_repository>/<name>/aliases.json at load; "" for a
                                   number */
    int replicas;      /* 0..SCHED_MAX_REPLICAS */
    int threads;       /* 1..SCHED_MAX_THREADS; the CPU cores (and --threads) of each CPU replica */
    size_t n_devices;  /* >= 1: absent "devices" means ["cpu"] */
    struct sched_device devices[SCHED_MAX_DEVICES];
    int valid;         /* every field of this entry passed; placement considers only these */
};

struct sched_config {
    char *path;             /* the config file, absolute */
    char *model_repository; /* absolute, resolved against the config file's folder */
    struct {
        struct sched_addr listen;      /* HTTP; default 127.0.0.1:8000 */
        int rpc_off;                   /* "off" */
        struct sched_addr rpc;         /* default tcp://127.0.0.1:8001, kept without "tcp://" */
        char rpc_url[SCHED_HOST_MAX + 32]; /* "tcp://HOST:PORT", or "off" */
        int threads;                   /* 1..256, default 1 */
        struct sched_addr control;     /* the router's control endpoint; default 127.0.0.1:8003 */
        char *token_file;              /* --token-file: absolute, or NULL: inference is open */
    } router;
    struct {
        struct sched_addr listen; /* default 127.0.0.1:8002 */
        char *token_file;         /* absolute, or NULL: no token */
    } admin;
    struct {
        long interval_ms;      /* default 500 */
        long timeout_ms;       /* default 500 */
        int failure_threshold; /* default 3 */
    } health;
    struct {
        int max_surge;         /* default 1 */
        long drain_timeout_ms; /* default 30000 */
        long soak_ms;          /* default 2000 */
        int canary_percent;    /* 0..100, default 0 (no canary): the share of a model's
                                  unversioned traffic the new version takes until promoted */
        long ready_timeout_ms; /* default 300000: a new version's replica not ready by then
                                  aborts the rollout */
    } rollout;
    int oversubscribe;         /* default 0 */
    size_t n_models;
    struct sched_model *models; /* n_models entries, owned */
};

/*
 * Reads and validates the config at `path`. Returns CORRAL_OK when it holds no error;
 * otherwise CORRAL_EINVAL (CORRAL_ENOMEM when memory ran out) with every problem in
 * `errs`. `cfg` is filled as far as the file allowed either way (defaults where a key
 * was absent or wrong), so that later checks can still report their own errors, and
 * must be freed with sched_config_free.
 */
int sched_config_load(const char *path, struct sched_config *cfg, struct sched_errs *errs);

/* As sched_config_load, on a file's text already in memory. `path` names the file
 * (relative paths in it resolve against its folder); it need not exist beyond that. */
int sched_config_parse(const char *text, size_t len, const char *path, struct sched_config *cfg,
                       struct sched_errs *errs);

void sched_config_free(struct sched_config *cfg);

/* Parses "HOST:PORT" or "[V6]:PORT" (port 0..65535). Returns 0, or -1 when malformed. */
int sched_addr_parse(const char *s, struct sched_addr *out);

/* "cpu", "cpu:LO-HI" or "cuda:N" as a string ("cpu:3-3" is written "cpu:3"). */
void sched_device_format(const struct sched_device *d, char *buf, size_t len);

#endif
