/*
 * supervisor: runs the single-machine cluster of a validated config and plan, and
 * keeps it running, as one reconciliation loop (CONTROL-PLANE.md): each tick it
 * observes (children that exited, through waitpid(WNOHANG); what each says in its
 * log file), then takes the next idempotent step toward the desired state, and
 * repeats. A signalfd wakes it for SIGTERM, SIGINT and SIGCHLD; otherwise it ticks
 * every SCHED_TICK_MS.
 *
 * Usage:
 *     struct sched_sup_opts o = {.cfg = &cfg, .plan = &plan, .router_bin = ...,
 *                                .replica_bin = ..., .state_dir = ...};
 *     int status = sched_sup_run(&o);   // returns at SIGTERM/SIGINT: 0 stopped cleanly
 *
 * The steps, in the order the loop takes them:
 *  - the router starts first with an empty table (--listen, --rpc-listen, --threads,
 *    --control-listen, --drain-timeout-ms) and is ready once its log says where it
 *    listens (HTTP and control; a port 0 in the config is learned here, and kept for
 *    its restarts, so clients find it again);
 *  - each replica of the plan then starts (CPU: pinned with sched_setaffinity to its
 *    cores, --threads N; GPU: CUDA_VISIBLE_DEVICES, --device cuda:0), on
 *    tcp://127.0.0.1:0; once its log says `serving model ... on tcp://...` (it is
 *    loaded, warm and verified) it is added to the router's table (POST /v1/replicas,
 *    answered once every router thread applied it). No replica takes traffic before
 *    it said ready (rule 1);
 *  - a child that exits is restarted after a backoff (100 ms, doubling to 10 s; reset
 *    once it stayed ready for SCHED_STABLE_MS). A replica is removed from the table
 *    (acknowledged) before its successor starts. After SCHED_CRASH_LIMIT exits in a
 *    row it is marked failed, its last log lines logged as the reason, and the others
 *    keep serving. A router that exits is restarted with the replicas that serve in its
 *    table from its start (--replica); a router that fails SCHED_CRASH_LIMIT times stops the
 *    cluster (exit 1);
 *  - each ready replica is asked for its own health (probe.h) every
 *    health.interval_ms, with health.timeout_ms for the answer; no answer or "not
 *    live" is a miss, and health.failure_threshold misses in a row take it out of the
 *    router's table (acknowledged), SIGKILL it and restart it like any exit;
 *  - at SIGTERM or SIGINT, each replica is drained in the table (acknowledged), sent
 *    SIGTERM and waited for (it answers what it holds), then the router; status 0.
 * Every step is logged on one line (log.h, on stderr).
 *
 *  - SIGHUP re-reads the config file, and POST /v1/apply (admin.h) takes an edited
 *    one: validated completely, then a changed replica count, an added or a removed
 *    model is applied (new replicas placed around the cores in use and started;
 *    extra ones out of the table, acknowledged, then stopped, those not ready first);
 *    any other difference is refused by key, nothing applied.
 *
 *  - at start, the state file a previous scheduler left (STATE_DIR/scheduler-state.json,
 *    rewritten through a temporary file, fsync and rename on every change) is read and
 *    the router and replicas still running (same pid and /proc start time) are adopted
 *    instead of started again; adopted children are watched by pid and start time
 *    (never waitpid) and health probes, and stopped like the others at SIGTERM.
 *
 *  - a model whose replicas run another version than the config asks for rolls out
 *    (sup_rollout.c): surge first, soak, join, then one old replica drains; a new
 *    version that fails aborts it and the old version is restored at full count.
 */
#ifndef CORRAL_SCHEDULER_SUPERVISOR_H
#define CORRAL_SCHEDULER_SUPERVISOR_H

#include "config.h"
#include "placement.h"

#define SCHED_TICK_MS 50
#define SCHED_BACKOFF_MIN_MS 100
#define SCHED_BACKOFF_MAX_MS 10000
#define SCHED_STABLE_MS 10000   /* ready this long: its crash count and backoff start over */
#define SCHED_CRASH_LIMIT 5     /* exits in a row before a child is marked failed */
#define SCHED_CTL_TIMEOUT_MS 15000 /* the router answers a change within 10 s, or 504 */
#define SCHED_STOP_GRACE_MS 10000  /* past the drain timeout, before SIGKILL */

struct sched_sup_opts {
    const struct sched_config *cfg;
    const struct sched_plan *plan;
    const struct sched_machine *mach; /* what plan was placed on; apply places there too */
    const char *router_bin;
    const char *replica_bin;
    const char *state_dir; /* exists; the children's logs and the state file go here */
    int break_surge_first; /* tests only: drain before the new replica serves (rule 5) */
};

/* Runs the cluster until SIGTERM/SIGINT. Returns the scheduler's exit status. */
int sched_sup_run(const struct sched_sup_opts *o);

#endif
