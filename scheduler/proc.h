/*
 * proc: starting the cluster's child processes and reading their log files.
 *
 * Usage:
 *     struct sched_spawn sp = {.argv = argv, .log_path = "/state/digits-0.log",
 *                              .cpus = &set, .cuda_visible = NULL};
 *     pid_t pid;
 *     if (sched_spawn(&sp, &pid, &e)) ... e.msg ...
 *     struct sched_logtail t;
 *     sched_logtail_start(&t, "/state/digits-0.log");   // from the file's end now
 *     sched_logtail_poll(&t, on_line, arg);              // each new complete line
 *     ... waitpid(pid, &st, WNOHANG) on each tick ...
 *
 * A child writes its stdout and stderr straight into its log file (O_APPEND), not
 * through a pipe to the scheduler, so that a child outlives a scheduler that dies
 * (CONTROL-PLANE.md, rule 7: the cluster keeps serving while the scheduler is away)
 * without a broken pipe. The scheduler reads the same file to learn what the child
 * says (its listening address, that it is ready) and rotates it by size with copy
 * and truncate, so the writer's descriptor stays valid: when a file passes
 * SCHED_LOG_MAX_BYTES its content moves to FILE.1 (one kept) and FILE starts over.
 *
 * Each child gets a process group of its own, so a Ctrl-C meant for the scheduler
 * reaches only the scheduler, which stops the children in order (drain first).
 */
#ifndef CORRAL_SCHEDULER_PROC_H
#define CORRAL_SCHEDULER_PROC_H

#include <sched.h>
#include <stddef.h>
#include <sys/types.h>

#include "error.h"

#define SCHED_LOG_MAX_BYTES (10L << 20) /* rotate a child's log past 10 MiB */
#define SCHED_LINE_MAX 4096              /* longer lines are cut when read back */

struct sched_spawn {
    char *const *argv;        /* argv[0] is the executable's path */
    const char *log_path;     /* stdout and stderr, appended */
    const cpu_set_t *cpus;    /* NULL: inherit the scheduler's affinity */
    const char *cuda_visible; /* NULL: leave CUDA_VISIBLE_DEVICES as it is */
};

/* Forks and execs; *pid is the child. An exec that fails is reported in the log file
 * and the child exits 127 (seen as a crash by the supervisor). */
int sched_spawn(const struct sched_spawn *sp, pid_t *pid, struct cerr *e);

/* Moves the log's content to PATH.1 and truncates it when it is over max_bytes. */
void sched_log_rotate(const char *path, long max_bytes);

/* The last `n` lines of a log file, joined with " | ", into buf. */
void sched_log_last_lines(const char *path, int n, char *buf, size_t len);

/* Follows a log file from a point on: complete lines only, each given once. */
struct sched_logtail {
    char path[4096];
    off_t off;                 /* next byte to read */
    size_t partial;            /* bytes of an incomplete line held in `line` */
    char line[SCHED_LINE_MAX];
};

/* From the file's current end (what a new child writes from now on). */
void sched_logtail_start(struct sched_logtail *t, const char *path);
/* Calls on_line for every complete line written since the last call. A file that
 * shrank (rotated) is read again from its start. */
void sched_logtail_poll(struct sched_logtail *t, void (*on_line)(const char *line, void *arg),
                        void *arg);

#endif
