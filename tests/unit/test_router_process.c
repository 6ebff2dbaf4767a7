/*
 * The real corral-router process, standalone (its only replica is down):
 * command-line errors, every endpoint's answer without a replica, error
 * bodies, limits, and a clean exit on SIGTERM. argv[1] is the binary.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;
static const char *g_bin;

/*
 * How long a wait for something that must happen (an exit, a log line, an answer) may
 * last. It ends as soon as that happens, so it only costs time when a check fails; it is
 * long so that a loaded machine (two cores, the sanitizers, a build beside) cannot fail it.
 */
#define MUST_COME_MS 20000

struct proc {
    pid_t pid;
    char log[64];
    int port;
};

static pid_t spawn_router(char *const argv[], const char *log)
{
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 2, log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    posix_spawn_file_actions_addopen(&fa, 1, log, O_WRONLY | O_CREAT | O_APPEND, 0600);
    pid_t pid;
    assert_int_equal(posix_spawn(&pid, g_bin, &fa, NULL, argv, environ), 0);
    posix_spawn_file_actions_destroy(&fa);
    return pid;
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return strdup("");
    char *b = calloc(1, 1 << 20);
    size_t n = fread(b, 1, (1 << 20) - 1, f);
    b[n] = '\0';
    fclose(f);
    return b;
}

static int wait_exit(pid_t pid, int timeout_ms)
{
    for (int i = 0; i < timeout_ms / 10; i++) {
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid)
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        usleep(10000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return -1;
}

static void test_bad_args(void **state)
{
    struct {
        char *argv[6];
        const char *msg;
    } cases[] = {
        {{"corral-router", NULL}, "--listen HOST:PORT is required"},
        {{"corral-router", "--listen", "127.0.0.1:0", "--control-listen", "off", NULL}, "at least one --replica NAME=URL is required"},
        {{"corral-router", "--listen", "127.0.0.1:0", "--control-listen", "8003", NULL}, "--control-listen '8003' is not HOST:PORT"},
        {{"corral-router", "--listen", "nocolon", "--replica", "m=tcp://127.0.0.1:1", NULL}, "is not HOST:PORT"},
        {{"corral-router", "--listen", "127.0.0.1:99999", "--replica", "m=tcp://127.0.0.1:1", NULL}, "is not HOST:PORT"},
        {{"corral-router", "--listen", "127.0.0.1:0", "--replica", "tcp://127.0.0.1:1", NULL}, "is not NAME=URL"},
        {{"corral-router", "--listen", "127.0.0.1:0", "--replica", "m=bogus://x", NULL}, "is not supported: expected tcp://HOST:PORT"},
        {{"corral-router", "--listen", "127.0.0.1:0", "--frobnicate", NULL}, "unknown or incomplete option '--frobnicate'"},
        {{"corral-router", "--listen", "127.0.0.1:0", "--timeout-ms", "abc", NULL}, "--timeout-ms 'abc'"},
        {{"corral-router", "--log-level", "loud", NULL}, "--log-level 'loud'"},
        {{"corral-router", "--listen", "127.0.0.1:0", "--threads", "0", NULL}, "--threads '0'"},
        {{"corral-router", "--listen", "127.0.0.1:0", "--rpc-listen", "nowhere", NULL}, "--rpc-listen 'nowhere'"},
        {{"corral-router", "--listen", "127.0.0.1:0", "--max-body-bytes", "12", NULL}, "--max-body-bytes '12'"},
        {{"corral-router", "--listen", "127.0.0.1:0", "--eject-after", "x", NULL}, "--eject-after 'x'"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *log = "router-args.log";
        pid_t pid = spawn_router(cases[i].argv, log);
        int rc = wait_exit(pid, MUST_COME_MS);
        char *out = slurp(log);
        if (rc != 2 || !strstr(out, cases[i].msg) || !strstr(out, "usage: corral-router"))
            fail_msg("case %zu: exit %d, output '%s', expected 2 and '%s'", i, rc, out,
                     cases[i].msg);
        free(out);
        unlink(log);
    }
    char *help[] = {"corral-router", "--help", NULL};
    pid_t pid = spawn_router(help, "router-help.log");
    assert_int_equal(wait_exit(pid, MUST_COME_MS), 0);
    char *out = slurp("router-help.log");
    assert_non_null(strstr(out, "--health-interval-ms"));
    free(out);
    unlink("router-help.log");
}

static int start(struct proc *p)
{
    snprintf(p->log, sizeof p->log, "router-%d.log", (int)getpid());
    char *argv[] = {"corral-router", "--listen", "127.0.0.1:0", "--replica",
                    "digits=tcp://127.0.0.1:1", "--health-interval-ms", "50", "--log-level",
                    "debug", "--rpc-listen", "tcp://127.0.0.1:0", "--threads", "2", NULL};
    p->pid = spawn_router(argv, p->log);
    for (int i = 0; i < MUST_COME_MS / 10; i++) {
        char *out = slurp(p->log);
        char *at = strstr(out, "listening on http://127.0.0.1:");
        if (at) {
            p->port = atoi(at + strlen("listening on http://127.0.0.1:"));
            free(out);
            return 0;
        }
        free(out);
        usleep(10000);
    }
    kill(p->pid, SIGKILL);
    waitpid(p->pid, NULL, 0);
    p->pid = 0;
    return -1;
}

static int dial(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    return fd;
}

/* Sends raw bytes and reads one answer (headers plus Content-Length bytes). */
static char *exchange(int fd, const char *req, size_t len)
{
    size_t off = 0;
    while (off < len) {
        ssize_t w = send(fd, req + off, len - off, MSG_NOSIGNAL);
        if (w <= 0)
            break;
        off += (size_t)w;
    }
    size_t cap = 1 << 16, n = 0;
    char *b = calloc(1, cap + 1);
    for (;;) {
        char *end = strstr(b, "\r\n\r\n");
        if (end) {
            char *cl = strstr(b, "Content-Length: ");
            size_t want = cl ? strtoul(cl + 16, NULL, 10) : 0;
            if (n >= (size_t)(end + 4 - b) + want)
                break;
        }
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, MUST_COME_MS) <= 0 || n == cap)
            break;
        ssize_t r = recv(fd, b + n, cap - n, 0);
        if (r <= 0)
            break;
        n += (size_t)r;
        b[n] = '\0';
    }
    return b;
}

static void expect(int fd, const char *req, const char *status, const char *body_part)
{
    char *out = exchange(fd, req, strlen(req));
    if (strncmp(out, status, strlen(status)) != 0 || !strstr(out, body_part))
        fail_msg("request '%.60s...': got '%s', expected '%s' with '%s'", req, out, status,
                 body_part);
    free(out);
}

static int setup_proc(void **state)
{
    struct proc *p = calloc(1, sizeof *p);
    *state = p;
    return start(p);
}

/* Runs even when a check failed, so no router outlives the test. */
static int teardown_proc(void **state)
{
    struct proc *p = *state;
    if (p->pid > 0) {
        kill(p->pid, SIGKILL);
        waitpid(p->pid, NULL, 0);
    }
    unlink(p->log);
    free(p);
    return 0;
}

static void test_standalone(void **state)
{
    struct proc *pp = *state;
    struct proc p = *pp;
    /* The answers below are those after the router has tried the missing replica (its
     * health check says so in the log), not those of a router that has not looked yet. */
    char *seen = NULL;
    for (int i = 0; i < MUST_COME_MS / 10; i++) {
        seen = slurp(p.log);
        if (strstr(seen, "of model 'digits' still not ready"))
            break;
        free(seen);
        seen = NULL;
        usleep(10000);
    }
    if (!seen)
        fail_msg("no failed health check of the missing replica in the log");
    free(seen);
    int fd = dial(p.port);
    expect(fd, "GET /v2/health/live HTTP/1.1\r\n\r\n", "HTTP/1.1 200", "{\"live\":true}");
    expect(fd, "GET /v2/health/ready HTTP/1.1\r\n\r\n", "HTTP/1.1 503", "\"ready\":false");
    expect(fd, "GET /v2 HTTP/1.1\r\n\r\n", "HTTP/1.1 200", "\"name\":\"corral\"");
    expect(fd, "GET /v2/models/digits/ready HTTP/1.1\r\n\r\n", "HTTP/1.1 503", "\"ready\":false");
    expect(fd, "GET /v2/models/digits HTTP/1.1\r\n\r\n", "HTTP/1.1 503", "metadata of model 'digits' is not available yet");
    expect(fd, "GET /v2/models/foo HTTP/1.1\r\n\r\n", "HTTP/1.1 404", "{\"error\":\"unknown model 'foo' (serving: digits)\"}");
    expect(fd, "GET /v2/nope HTTP/1.1\r\n\r\n", "HTTP/1.1 404", "no such endpoint: GET /v2/nope");
    expect(fd, "DELETE /v2/health/live HTTP/1.1\r\n\r\n", "HTTP/1.1 405", "Allow: GET, HEAD");
    expect(fd, "GET /v2/models/digits/infer HTTP/1.1\r\n\r\n", "HTTP/1.1 405", "method GET is not allowed on /v2/models/digits/infer (allowed: POST)");
    expect(fd, "POST /v2/models/digits/infer HTTP/1.1\r\nContent-Length: 9\r\n\r\n{\"inputs\"", "HTTP/1.1 400", "request body is not valid JSON");
    expect(fd, "POST /v2/models/digits/infer HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", "HTTP/1.1 400", "request has no 'inputs' array");
    const char *body = "{\"inputs\":[{\"name\":\"input\",\"shape\":[1],\"datatype\":\"FP32\","
                       "\"data\":[1]}]}";
    char infer[512];
    snprintf(infer, sizeof infer, "POST /v2/models/digits/infer HTTP/1.1\r\nContent-Length: %zu\r\n\r\n%s",
             strlen(body), body);
    expect(fd, infer, "HTTP/1.1 503", "model 'digits' has no ready replica");
    expect(fd, "POST /v2/models/foo/infer HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", "HTTP/1.1 404", "unknown model 'foo'");
    /* The same connection is still usable after all those errors. */
    expect(fd, "GET /v2/health/live HTTP/1.1\r\n\r\n", "HTTP/1.1 200", "live");
    close(fd);

    char big[20000];
    int n = snprintf(big, sizeof big, "GET /v2/health/live HTTP/1.1\r\nX-Big: ");
    memset(big + n, 'a', 17000);
    strcpy(big + n + 17000, "\r\n\r\n");
    fd = dial(p.port);
    expect(fd, big, "HTTP/1.1 431", "exceed the 16384 byte limit");
    close(fd);
    fd = dial(p.port);
    expect(fd, "POST /v2/models/digits/infer HTTP/1.1\r\nContent-Length: 67108865\r\n\r\n",
           "HTTP/1.1 413", "exceeds the 67108864 byte limit");
    close(fd);

    assert_int_equal(kill(p.pid, SIGTERM), 0);
    int rc = wait_exit(p.pid, MUST_COME_MS);
    pp->pid = 0; /* reaped */
    assert_int_equal(rc, 0);
    char *log = slurp(p.log);
    assert_non_null(strstr(log, "ERROR router: request"));   /* error responses are logged */
    assert_non_null(strstr(log, "DEBUG router: request"));   /* and every request at debug */
    assert_null(strstr(log, "Sanitizer"));
    free(log);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s PATH-TO-corral-router\n", argv[0]);
        return 2;
    }
    g_bin = argv[1];
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_args),
        cmocka_unit_test_setup_teardown(test_standalone, setup_proc, teardown_proc),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
