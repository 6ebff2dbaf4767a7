/*
 * corral-router: command line, wiring of the HTTP server, the OIP handlers and
 * the upstream table on one libuv loop, and a clean exit on SIGINT/SIGTERM.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <uv.h>

#include "http.h"
#include "log.h"
#include "oip.h"
#include "upstream.h"

struct router {
    uv_loop_t *loop;
    struct http_server *http;
    struct upstream *up;
    uv_signal_t sigint, sigterm;
    int stopping;
};

static const char synopsis[] =
    "usage: corral-router --listen HOST:PORT --replica NAME=URL [--replica NAME=URL ...]\n"
    "                     [--log-level debug|info|warn|error] [--health-interval-ms N]\n"
    "                     [--timeout-ms N] [--help]\n";

static void usage(FILE *f)
{
    fputs(synopsis, f);
    fprintf(f,
            "\n"
            "Serves the Open Inference Protocol (KServe v2) over HTTP/1.1 and forwards\n"
            "inference to corral-replica processes over NNG.\n"
            "\n"
            "  --listen HOST:PORT       address to serve HTTP on (port 0: any free port;\n"
            "                           IPv6 as [::1]:8000)\n"
            "  --replica NAME=URL       a replica serving model NAME at an NNG URL, e.g.\n"
            "                           digits=tcp://127.0.0.1:9101 (repeat for more)\n"
            "  --log-level LEVEL        debug, info (default), warn or error\n"
            "  --health-interval-ms N   how often replicas are health-checked (default 500)\n"
            "  --timeout-ms N           deadline for one inference request (default 30000)\n"
            "  --help                   show this text\n");
}

static int bad_args(const char *fmt, const char *arg)
{
    fprintf(stderr, "corral-router: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n%s(corral-router --help explains every option)\n", synopsis);
    return 2;
}

static int parse_uint(const char *s, unsigned long lo, unsigned long hi, unsigned *out)
{
    char *end = NULL;
    errno = 0;
    if (!s || !*s || *s == '-')
        return -1;
    unsigned long v = strtoul(s, &end, 10);
    if (errno || *end || v < lo || v > hi)
        return -1;
    *out = (unsigned)v;
    return 0;
}

/* Splits "HOST:PORT" or "[V6]:PORT" into host (without brackets) and port. */
static int parse_listen(const char *s, char *host, size_t hlen, int *port)
{
    const char *colon;
    size_t n;
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (!close || close[1] != ':')
            return -1;
        n = (size_t)(close - s - 1);
        if (n == 0 || n >= hlen)
            return -1;
        memcpy(host, s + 1, n);
        colon = close + 1;
    } else {
        colon = strrchr(s, ':');
        if (!colon)
            return -1;
        n = (size_t)(colon - s);
        if (n == 0 || n >= hlen || memchr(s, ':', n))
            return -1;
        memcpy(host, s, n);
    }
    host[n] = '\0';
    unsigned p;
    if (parse_uint(colon + 1, 0, 65535, &p))
        return -1;
    *port = (int)p;
    return 0;
}

static void on_closed(uv_handle_t *h) {}

static void on_signal(uv_signal_t *sig, int signum)
{
    struct router *r = sig->data;
    if (r->stopping)
        return;
    r->stopping = 1;
    LOG_INFO("received %s, shutting down", signum == SIGINT ? "SIGINT" : "SIGTERM");
    /* Connections go first, so answers produced while upstream calls are cancelled are dropped. */
    http_server_close(r->http, NULL, NULL);
    upstream_close(r->up);
    uv_close((uv_handle_t *)&r->sigint, on_closed);
    uv_close((uv_handle_t *)&r->sigterm, on_closed);
}

int main(int argc, char **argv)
{
    enum { O_LISTEN = 1, O_REPLICA, O_LOG, O_HEALTH, O_TIMEOUT, O_HELP };
    static const struct option opts[] = {
        {"listen", required_argument, NULL, O_LISTEN},
        {"replica", required_argument, NULL, O_REPLICA},
        {"log-level", required_argument, NULL, O_LOG},
        {"health-interval-ms", required_argument, NULL, O_HEALTH},
        {"timeout-ms", required_argument, NULL, O_TIMEOUT},
        {"help", no_argument, NULL, O_HELP},
        {NULL, 0, NULL, 0},
    };
    const char *listen = NULL;
    const char **replicas = calloc((size_t)argc + 1, sizeof *replicas);
    int n_replicas = 0, rc = 1;
    unsigned health_ms = 500, timeout_ms = 30000;
    char host[256];
    int port = 0;
    struct cerr e = {0};
    struct router r;
    memset(&r, 0, sizeof r);

    log_init("router");
    if (!replicas)
        return 1;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case O_LISTEN: listen = optarg; break;
        case O_REPLICA: replicas[n_replicas++] = optarg; break;
        case O_LOG: {
            int l = log_parse_level(optarg);
            if (l < 0) {
                rc = bad_args("--log-level '%s' is not one of debug, info, warn, error", optarg);
                goto out;
            }
            log_set_level((enum log_level)l);
            break;
        }
        case O_HEALTH:
            if (parse_uint(optarg, 10, 3600000, &health_ms)) {
                rc = bad_args("--health-interval-ms '%s' is not a number of milliseconds from 10 "
                              "to 3600000", optarg);
                goto out;
            }
            break;
        case O_TIMEOUT:
            if (parse_uint(optarg, 1, 86400000, &timeout_ms)) {
                rc = bad_args("--timeout-ms '%s' is not a number of milliseconds from 1 to "
                              "86400000", optarg);
                goto out;
            }
            break;
        case O_HELP:
            usage(stdout);
            rc = 0;
            goto out;
        default:
            rc = bad_args("unknown or incomplete option '%s'", argv[optind - 1]);
            goto out;
        }
    }
    if (optind < argc) {
        rc = bad_args("unexpected argument '%s'", argv[optind]);
        goto out;
    }
    if (!listen) {
        rc = bad_args("%s", "--listen HOST:PORT is required");
        goto out;
    }
    if (parse_listen(listen, host, sizeof host, &port)) {
        rc = bad_args("--listen '%s' is not HOST:PORT (e.g. 127.0.0.1:8000, or [::1]:8000)",
                      listen);
        goto out;
    }
    if (n_replicas == 0) {
        rc = bad_args("%s", "at least one --replica NAME=URL is required");
        goto out;
    }

    signal(SIGPIPE, SIG_IGN);
    /* Every client connection is a descriptor; allow as many as the hard limit permits. */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
            LOG_WARN("cannot raise the open file limit: %s", strerror(errno));
    }
    r.loop = uv_default_loop();
    struct upstream_config ucfg = {.health_interval_ms = health_ms};
    if (upstream_new(&r.up, r.loop, &ucfg, &e))
        goto fail;
    for (int i = 0; i < n_replicas; i++) {
        const char *spec = replicas[i];
        const char *eq = strchr(spec, '=');
        char name[OIP_NAME_MAX];
        size_t nl = eq ? (size_t)(eq - spec) : 0;
        if (!eq || nl == 0 || nl >= sizeof name || memchr(spec, '/', nl) || !strstr(eq + 1, "://")) {
            upstream_close(r.up);
            rc = bad_args("--replica '%s' is not NAME=URL (e.g. digits=tcp://127.0.0.1:9101)",
                          spec);
            goto out;
        }
        memcpy(name, spec, nl);
        name[nl] = '\0';
        if (upstream_add_replica(r.up, name, eq + 1, &e)) {
            upstream_close(r.up);
            rc = bad_args("%s", e.msg);
            goto out;
        }
    }
    struct oip_ctx octx = {.up = r.up, .timeout_ms = timeout_ms};
    struct http_limits lim;
    http_limits_default(&lim);
    if (http_server_new(&r.http, r.loop, &lim, oip_handle, &octx, &e))
        goto fail_up;
    int bound = 0;
    if (http_server_listen(r.http, host, port, &bound, &e))
        goto fail_http;
    if (upstream_start(r.up, &e))
        goto fail_http;
    uv_signal_init(r.loop, &r.sigint);
    uv_signal_init(r.loop, &r.sigterm);
    r.sigint.data = r.sigterm.data = &r;
    uv_signal_start(&r.sigint, on_signal, SIGINT);
    uv_signal_start(&r.sigterm, on_signal, SIGTERM);
    LOG_INFO("corral-router listening on http://%s%s%s:%d", strchr(host, ':') ? "[" : "", host,
             strchr(host, ':') ? "]" : "", bound);
    uv_run(r.loop, UV_RUN_DEFAULT);
    rc = uv_loop_close(r.loop) == 0 ? 0 : 1;
    if (rc)
        LOG_WARN("event loop closed with handles still open");
    LOG_INFO("stopped");
    goto out;

fail_http:
    http_server_close(r.http, NULL, NULL);
fail_up:
    upstream_close(r.up);
    uv_run(r.loop, UV_RUN_DEFAULT);
fail:
    LOG_ERROR("%s", e.msg);
    rc = 1;
out:
    free(replicas);
    return rc;
}
