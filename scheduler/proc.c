#include "proc.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

extern char **environ;

/* The scheduler's environment with CUDA_VISIBLE_DEVICES set to `cuda` (when given);
 * built before fork, since the child may only make async-signal-safe calls. */
static char **child_env(const char *cuda, char **own)
{
    size_t n = 0, k = 0;
    while (environ[n])
        n++;
    char **env = calloc(n + 2, sizeof *env);
    if (!env)
        return NULL;
    for (size_t i = 0; i < n; i++)
        if (!cuda || strncmp(environ[i], "CUDA_VISIBLE_DEVICES=", 21) != 0)
            env[k++] = environ[i];
    if (cuda) {
        size_t len = strlen(cuda) + 22;
        if (!(*own = malloc(len))) {
            free(env);
            return NULL;
        }
        snprintf(*own, len, "CUDA_VISIBLE_DEVICES=%s", cuda);
        env[k++] = *own;
    }
    env[k] = NULL;
    return env;
}

int sched_spawn(const struct sched_spawn *sp, pid_t *pid, struct cerr *e)
{
    char *own = NULL;
    char **env = NULL;
    int fd = -1, rc = CORRAL_EIO;

    sched_log_rotate(sp->log_path, SCHED_LOG_MAX_BYTES);
    fd = open(sp->log_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
        cerr_set(e, CORRAL_EIO, "cannot open the log %s: %s", sp->log_path, strerror(errno));
        goto fail;
    }
    if (!(env = child_env(sp->cuda_visible, &own))) {
        rc = cerr_set(e, CORRAL_ENOMEM, "out of memory");
        goto fail;
    }
    pid_t p = fork();
    if (p < 0) {
        cerr_set(e, CORRAL_EIO, "fork: %s", strerror(errno));
        goto fail;
    }
    if (p == 0) {
        /* The child: only async-signal-safe calls from here to exec. */
        sigset_t none;
        sigemptyset(&none);
        signal(SIGPIPE, SIG_DFL);
        sigprocmask(SIG_SETMASK, &none, NULL);
        setpgid(0, 0);
        int nul = open("/dev/null", O_RDONLY);
        if (nul >= 0 && nul != 0) {
            dup2(nul, 0);
            close(nul);
        }
        dup2(fd, 1);
        dup2(fd, 2);
        if (sp->cpus && sched_setaffinity(0, sizeof *sp->cpus, sp->cpus) != 0) {
            static const char msg[] = "corral-scheduler: sched_setaffinity failed\n";
            (void)!write(2, msg, sizeof msg - 1);
            _exit(127);
        }
        execve(sp->argv[0], sp->argv, env);
        static const char msg[] = "corral-scheduler: exec failed: ";
        (void)!write(2, msg, sizeof msg - 1);
        (void)!write(2, sp->argv[0], strlen(sp->argv[0]));
        (void)!write(2, "\n", 1);
        _exit(127);
    }
    *pid = p;
    rc = CORRAL_OK;
fail:
    if (fd >= 0)
        close(fd);
    free(env);
    free(own);
    return rc;
}

void sched_log_rotate(const char *path, long max_bytes)
{
    struct stat st;
    char old[4200], buf[65536];
    if (stat(path, &st) != 0 || st.st_size <= max_bytes)
        return;
    snprintf(old, sizeof old, "%s.1", path);
    /* Copy then truncate, rather than rename: a running child keeps writing through
     * its descriptor, which must keep naming the live file. A line written between
     * the copy and the truncation can be lost; a log is not worth a pipe per child. */
    int in = open(path, O_RDWR | O_CLOEXEC);
    int out = open(old, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (in >= 0 && out >= 0) {
        ssize_t r;
        while ((r = read(in, buf, sizeof buf)) > 0)
            if (write(out, buf, (size_t)r) != r)
                break;
        (void)!ftruncate(in, 0);
    }
    if (in >= 0)
        close(in);
    if (out >= 0)
        close(out);
}

void sched_log_last_lines(const char *path, int n, char *buf, size_t len)
{
    char tail[4096];
    buf[0] = '\0';
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    off_t end = lseek(fd, 0, SEEK_END);
    off_t from = end > (off_t)sizeof tail - 1 ? end - (off_t)sizeof tail + 1 : 0;
    ssize_t r = pread(fd, tail, sizeof tail - 1, from);
    close(fd);
    if (r <= 0)
        return;
    tail[r] = '\0';
    while (r > 0 && (tail[r - 1] == '\n' || tail[r - 1] == '\r'))
        tail[--r] = '\0';
    /* Back from the end over n line breaks. */
    char *start = tail;
    int seen = 0;
    for (ssize_t i = r - 1; i >= 0; i--)
        if (tail[i] == '\n' && ++seen == n) {
            start = tail + i + 1;
            break;
        }
    size_t off = 0;
    for (char *p = start; *p && off + 4 < len; p++) {
        if (*p == '\n') {
            off += (size_t)snprintf(buf + off, len - off, " | ");
        } else {
            buf[off++] = (unsigned char)*p < 0x20 ? '?' : *p;
            buf[off] = '\0';
        }
    }
}

void sched_logtail_start(struct sched_logtail *t, const char *path)
{
    struct stat st;
    memset(t, 0, sizeof *t);
    snprintf(t->path, sizeof t->path, "%s", path);
    t->off = stat(path, &st) == 0 ? st.st_size : 0;
}

void sched_logtail_poll(struct sched_logtail *t, void (*on_line)(const char *line, void *arg),
                        void *arg)
{
    char buf[16384];
    int fd = open(t->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    struct stat st;
    if (fstat(fd, &st) == 0 && st.st_size < t->off) {
        t->off = 0; /* rotated: copied away and truncated */
        t->partial = 0;
    }
    for (;;) {
        ssize_t r = pread(fd, buf, sizeof buf, t->off);
        if (r <= 0)
            break;
        t->off += r;
        for (ssize_t i = 0; i < r; i++) {
            if (buf[i] == '\n') {
                t->line[t->partial] = '\0';
                on_line(t->line, arg);
                t->partial = 0;
            } else if (t->partial < sizeof t->line - 1) {
                t->line[t->partial++] = buf[i];
            }
        }
    }
    close(fd);
}
