/*
 * Placement: which device, and which CPU cores, each replica of a cluster config gets
 * on this machine, and whether the config fits the machine at all.
 *
 * Usage:
 *     struct sched_machine mach;
 *     if (sched_machine_probe(&mach, &e)) fail with e.msg;
 *     struct sched_plan plan;
 *     if (sched_place(&cfg, &mach, &plan, &errs)) print errs;   // refused
 *     ... plan.replicas[i].cpus (for sched_setaffinity), .cuda_visible ...
 *     sched_plan_free(&plan);
 *
 * The machine is what this process may use: the cores in its affinity mask
 * (sched_getaffinity, so a scheduler started under taskset or a cgroup cpuset places
 * within it) and the GPUs nvidia-smi -L lists, or, when CUDA_VISIBLE_DEVICES is set in
 * the scheduler's environment, the devices it names (cuda:N is then its N-th entry,
 * as it would be for any CUDA program). Tests describe a machine by hand instead
 * (sched_machine_init, CPU_SET, sched_machine_gpus_*).
 *
 * Rules (docs/operations.md, "Cluster config"):
 *  - replicas go round-robin over their model's devices;
 *  - "cuda:N" must exist; each GPU replica gets CUDA_VISIBLE_DEVICES set to that one
 *    device (so inside the replica it is cuda:0);
 *  - "cpu:LO-HI" replicas get exactly those cores, which must be ones this process may
 *    use; "cpu" replicas get `threads` cores picked from those left, lowest first;
 *  - the steady state must fit: the CPU replicas' threads add up to at most the cores
 *    this process may use, fixed core sets are disjoint, and a GPU holds one replica.
 *    Otherwise the config is refused, unless it says "oversubscribe": true, in which
 *    case cores and GPUs are shared (least used first) and the plan marks who shares.
 *    The router's own cores are not counted: it is light next to a replica, and
 *    pinning it would only take a core from one.
 * Only models whose entries passed validation (sched_model.valid) are placed, so that
 * a config with errors still gets its placement errors reported beside them.
 *
 * Ownership: sched_plan owns its replicas array; free it with sched_plan_free.
 */
#ifndef CORRAL_SCHEDULER_PLACEMENT_H
#define CORRAL_SCHEDULER_PLACEMENT_H

#include <sched.h>
#include <stdio.h>

#include "config.h"
#include "error.h"

#define SCHED_GPU_ID_MAX 64 /* one CUDA_VISIBLE_DEVICES entry: an index or a GPU-/MIG- UUID */

struct sched_machine {
    cpu_set_t cpus; /* the cores this process may use */
    int n_cpus;     /* CPU_COUNT(&cpus) */
    int n_gpus;     /* 0..SCHED_MAX_GPU + 1 */
    char gpus[SCHED_MAX_GPU + 1][SCHED_GPU_ID_MAX]; /* CUDA_VISIBLE_DEVICES value of cuda:N */
    char gpu_source[64]; /* where n_gpus came from: "nvidia-smi -L", "CUDA_VISIBLE_DEVICES" */
};

/* An empty machine: no core, no GPU. */
void sched_machine_init(struct sched_machine *m);
/* This process's cores (sched_getaffinity) and GPUs (CUDA_VISIBLE_DEVICES when set,
 * else nvidia-smi -L; no nvidia-smi means no GPU). */
int sched_machine_probe(struct sched_machine *m, struct cerr *e);
/* GPUs from a CUDA_VISIBLE_DEVICES value: comma-separated indices or GPU-/MIG- UUIDs,
 * read up to the first entry that is neither (CUDA ignores the rest too); "" or "-1"
 * hide every device. */
void sched_machine_gpus_visible(struct sched_machine *m, const char *value);
/* GPUs from the output of `nvidia-smi -L`: one per line starting "GPU N:". */
void sched_machine_gpus_smi(struct sched_machine *m, FILE *out);

struct sched_replica {
    size_t model;  /* index into sched_config.models */
    int index;     /* 0..replicas-1 within its model */
    size_t device; /* index into the model's devices: index % n_devices */
    struct sched_device dev;      /* as configured */
    cpu_set_t cpus;               /* CPU replicas: the cores to pin it to */
    int n_cpus;                   /* CPU_COUNT(&cpus) */
    char cuda_visible[SCHED_GPU_ID_MAX]; /* GPU replicas: its CUDA_VISIBLE_DEVICES */
    int shared;    /* shares a core or a GPU with another replica (only with oversubscribe) */
    int from_keep;     /* sched_place_keep: this slot is keep[keep_index], running already */
    size_t keep_index;
};

struct sched_plan {
    size_t n;
    struct sched_replica *replicas; /* model order, then replica index; owned */
    int cpu_threads;  /* cores the CPU replicas need: the sum of their threads */
    int cpu_cores;    /* distinct cores they are pinned to */
    int gpus_used;    /* distinct GPUs the GPU replicas use */
};

/*
 * Places every replica of the valid models of `cfg` on `m`. Returns CORRAL_OK, or
 * CORRAL_EINVAL with each reason in `errs` (the device's JSON path, or "models" for
 * the total) when the config does not fit; CORRAL_ENOMEM when memory ran out. `plan`
 * is filled either way and must be freed.
 */
int sched_place(const struct sched_config *cfg, const struct sched_machine *m,
                struct sched_plan *plan, struct sched_errs *errs);
/*
 * As sched_place, for a cluster that runs already: `keep` (n_keep entries, `model`
 * indexing cfg->models) are running replicas that keep their device entry and cores;
 * each takes one slot of its model (the fit is checked for the whole config as
 * always), and new "cpu" replicas pick among the cores they leave. A slot given to a
 * kept replica says so (from_keep, keep_index); a kept replica beyond its model's
 * count gets no slot (the caller stops it).
 */
int sched_place_keep(const struct sched_config *cfg, const struct sched_machine *m,
                     const struct sched_replica *keep, size_t n_keep, struct sched_plan *plan,
                     struct sched_errs *errs);
void sched_plan_free(struct sched_plan *plan);

/* A core set as "cpu:0-1,4" ("cpu:" and nothing else for an empty set). */
void sched_cpuset_format(const cpu_set_t *s, char *buf, size_t len);

#endif
