/*
 * The supervisor's insides, shared by its files (not for other modules):
 *   supervisor.c  the reconciliation loop: start, observe, health, retire, stop;
 *   sup_state.c   the state file and re-adoption of processes that outlived a
 *                 scheduler (identified by pid and start time);
 *   sup_apply.c   applying an edited config (POST /v1/apply, SIGHUP);
 *   sup_status.c  the admin API's status document;
 *   sup_rollout.c rolling updates: surge, soak, drain, abort, canary and promote.
 * Everything runs on the loop thread.
 */
#ifndef CORRAL_SCHED_SUPERVISOR_INTERNAL_H
#define CORRAL_SCHED_SUPERVISOR_INTERNAL_H

#include <jansson.h>
#include <sys/types.h>

#include "admin.h"
#include "ctl.h"
#include "probe.h"
#include "proc.h"
#include "supervisor.h"

enum child_state {
    C_DOWN,     /* not running; starts at next_start_ms (once out of the table) */
    C_STARTING, /* spawned; waiting for its log to say it listens / is ready */
    C_READY,    /* router: listening; replica: said ready (in the table or about to be) */
    C_FAILED,   /* crashed SCHED_CRASH_LIMIT times in a row; not restarted */
};

struct child {
    int is_router;
    char name[SCHED_NAME_MAX + 16]; /* "router", "digits#0" */
    char log_path[4200];
    struct sched_replica rep;        /* replicas only: its placement (rep.model indexes cfg) */
    struct sched_model m;            /* replicas only: its model's entry, as it was started */
    int retiring;                    /* apply scaled it away: out of the table, then stopped */
    enum child_state state;
    pid_t pid;                       /* 0: none */
    unsigned long long start_time;   /* pid's start time (/proc/PID/stat field 22) */
    int adopted;                     /* a previous scheduler's child: watched by pid and
                                        start time, never waited for */
    long started_ms, ready_ms, next_start_ms, retry_ms;
    int crashes;                     /* exits in a row */
    long backoff_ms;
    struct sched_logtail tail;
    char url[256];                   /* replica: tcp://127.0.0.1:PORT it said it serves on */
    int in_table;                    /* replica: in the router's table (acknowledged) */
    int term_sent;                   /* shutdown: SIGTERM sent */
    long term_ms;
    int killed;                      /* shutdown: SIGKILL sent */
    /* Health checks (replicas in C_READY): one probe in flight at a time. */
    struct sched_probe probe;
    long next_probe_ms;
    int misses;                      /* failed probes in a row */
    int unhealthy;                   /* failure_threshold reached: SIGKILL sent */
    char last_miss[300];
    /* Rollouts (sup_rollout.c): a replica of a version being rolled out joins the
     * router's table only once `hold` is clear (it stayed ready and healthy for
     * rollout.soak_ms, and a canary split is in place when one is asked for). */
    int hold;
    long soak_from_ms;               /* its soak started (ready, or its last health miss) */
    /* For the admin API. */
    int starts;                      /* successful spawns; restarts = starts - 1 */
    char last_error[1400];           /* the last exit, failure or health verdict; "" none */
};

enum rollout_state {
    RO_ROLLING,  /* surge, soak, join, drain an old one; repeat */
    RO_CANARY,   /* new replicas serve rollout.canary_percent of the traffic until promoted */
    RO_ABORTING, /* the new version failed: the old one restored at full count first */
    RO_DONE,
    RO_ABORTED,
};

/* A model's last rollout: from the version its replicas ran to the one the config asks. */
struct rollout {
    char model[SCHED_NAME_MAX];
    long from, to;
    enum rollout_state state;
    int split_set;      /* the router's canary split for `to` is in force */
    long retry_ms;      /* a failed split change is tried again from then */
    long started_ms, ended_ms;
    int started, retired; /* new replicas started, old ones drained so far */
    char reason[1400];  /* why it was aborted; "" none */
};

struct sup {
    const struct sched_sup_opts *o;
    struct sched_config *cfg;  /* the config in force: o->cfg, then the last one applied */
    int cfg_owned;             /* cfg is ours to free (not o->cfg) */
    struct child router;
    struct child **reps;       /* each allocated on its own: a probe's aio points into it */
    size_t n, cap;
    int stopping, status;
    int http_port, rpc_port, ctl_port; /* learned from the router's log; 0: not yet */
    int seen_http, seen_ctl;           /* this run of the router said so */
    char ctl_host[SCHED_HOST_MAX];
    struct sched_admin admin;
    char state_path[4200];
    char *last_state;          /* what the state file holds (JSON), to write changes only */
    struct rollout *ro;        /* one per model that has had a rollout */
    size_t n_ro;
    /* Replicas restarted, per model, since this scheduler started: only ever grows (a
     * replica drained by a rollout or a scale-down takes its restarts with it). */
    struct sup_restarts {
        char model[SCHED_NAME_MAX];
        long long n;
    } *restarts;
    size_t n_restarts;
};

/* ---- supervisor.c ---- */
long sup_now_ms(void);
int sup_port_or_learned(int configured, int learned);
/* "HOST:PORT", or "[HOST]:PORT" for an IPv6 host. */
void sup_fmt_addr(char *buf, size_t len, const char *host, int port);
/* One call to the router's control endpoint; 0, or -1 with why filled. */
int sup_control(struct sup *s, const char *path, char *body, int ok_too, char *why,
                size_t why_len);
struct child *sup_add_child(struct sup *s, const struct sched_model *m,
                            const struct sched_replica *r);
void sup_count_restart(struct sup *s, const char *model);
long long sup_restarts_of(const struct sup *s, const char *model);

/* ---- sup_state.c ---- */
/* A process's start time (/proc/PID/stat field 22); 0 when it is gone. */
unsigned long long sup_proc_start_time(pid_t pid);
int sup_same_process(pid_t pid, unsigned long long start_time);
void sup_write_state(struct sup *s);
void sup_adopt(struct sup *s, long now);

/* ---- sup_apply.c ---- */
json_t *sup_apply(void *arg, const char *body, size_t len, int dry_run, int *http);
void sup_reload(struct sup *s);

/* ---- sup_rollout.c ---- */
/* One step of every model's rollout: called each tick before the replicas' own steps. */
void sup_rollout_step(struct sup *s, long now);
/* The model's rollout in progress (ROLLING, CANARY or ABORTING), or NULL. */
struct rollout *sup_rollout_active(struct sup *s, const char *model);
/* The model's last rollout (any state), or NULL. */
const struct rollout *sup_rollout_last(const struct sup *s, const char *model);
/* Stops the model's rollout in progress: the new version's replicas go, the old
 * version is restored at full count; `reason` is shown in status. */
void sup_rollout_abort(struct sup *s, struct rollout *ro, const char *reason);
/* POST /v1/promote: finishes a canary. */
json_t *sup_promote(void *arg, const char *model, int *http);
const char *sup_rollout_state_name(enum rollout_state st);
json_t *sup_rollout_json(const struct sup *s, const char *model, long now);

/* ---- sup_status.c ---- */
const char *sup_state_name(const struct sup *s, const struct child *c);
json_t *sup_jtext(const char *t);
json_t *sup_status(void *arg);

#endif
