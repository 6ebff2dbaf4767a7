/*
 * The router's options: the usage text, the defaults and the parsing of argv. The
 * usage text is the reference for every option, so it sits beside the code that
 * enforces each option's limits, and a new option is added in one file. Errors name the option and the value given and end with the synopsis,
 * since the person reading them is at a shell prompt.
 */
#include "options.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dns.h"
#include "hostport.h"
#include "log.h"
#include "oip.h"
#include "upstream.h"

#define DEFAULT_RPC "tcp://0.0.0.0:8001"
#define DEFAULT_CONTROL "127.0.0.1:8003"

static const char synopsis[] =
    "usage: corral-router --listen HOST:PORT [--replica NAME=URL ...] [--dns-refresh-ms N]\n"
    "                     [--control-listen HOST:PORT|off] [--control-token-file FILE]\n"
    "                     [--token-file FILE]\n"
    "                     [--threads N] [--rpc-listen URL|off] [--timeout-ms N]\n"
    "                     [--max-inflight N] [--eject-after N] [--health-interval-ms N]\n"
    "                     [--max-body-bytes N] [--max-header-bytes N] [--max-connections N]\n"
    "                     [--max-image-bytes N]\n"
    "                     [--idle-timeout-ms N] [--request-timeout-ms N] [--drain-timeout-ms N]\n"
    "                     [--log-level debug|info|warn|error] [--help]\n";

static void usage(FILE *f)
{
    fputs(synopsis, f);
    fprintf(f,
            "\n"
            "Serves the Open Inference Protocol (KServe v2) over HTTP/1.1, an RPC endpoint for\n"
            "services (libcorral, or any NNG REQ socket) and Prometheus metrics, and forwards\n"
            "inference to corral-replica processes. RPC and replicas speak SP request/reply\n"
            "over TCP, the protocol of NNG's REQ and REP sockets.\n"
            "\n"
            "  --listen HOST:PORT       address to serve HTTP on (port 0: any free port;\n"
            "                           IPv6 as [::1]:8000)\n"
            "  --replica NAME=URL       a replica serving model NAME at tcp://HOST:PORT, e.g.\n"
            "                           digits=tcp://127.0.0.1:9101 (repeat for more); seeds\n"
            "                           the replica table, which the control endpoint changes;\n"
            "                           HTTP connections are accepted once each answered a\n"
            "                           health request (at most 2 s after start);\n"
            "                           NAME=dns://HOST:PORT follows HOST in DNS instead:\n"
            "                           each of its A and AAAA addresses is a replica at PORT,\n"
            "                           added when it appears, drained and removed when it\n"
            "                           goes (a Kubernetes headless Service)\n"
            "  --dns-refresh-ms N       how often dns:// replicas are resolved again (default\n"
            "                           5000); a failed resolution keeps the addresses it had\n"
            "  --control-listen H:P     the control endpoint, where replicas are added, marked\n"
            "                           draining and removed at run time (default " DEFAULT_CONTROL ";\n"
            "                           port 0: any free port; off: none, and then at least one\n"
            "                           --replica is required)\n"
            "  --control-token-file F   require \"Authorization: Bearer TOKEN\" on the control\n"
            "                           endpoint, TOKEN read from file F\n"
            "  --token-file F           require the bearer token in file F on every inference\n"
            "                           request: HTTP \"Authorization: Bearer TOKEN\" (401\n"
            "                           without it; health, readiness and /metrics stay open),\n"
            "                           RPC Request.auth_token (corralctl --token-file)\n"
            "  --threads N              router threads, each with its own event loop and\n"
            "                           listener on the same port (default 1)\n"
            "  --rpc-listen URL         tcp://HOST:PORT of the RPC endpoint (default " DEFAULT_RPC ";\n"
            "                           port 0: any free port; off: none)\n"
            "  --rpc-contexts N         RPC requests in flight at once, split between the\n"
            "                           threads (default 1024); at the limit RPC connections\n"
            "                           are not read until answers free room\n"
            "  --timeout-ms N           deadline for one inference request (default 30000;\n"
            "                           the OIP 'timeout' parameter in us may shorten it)\n"
            "  --max-inflight N         requests in flight to one replica from one thread\n"
            "                           before it is skipped (default 1024; 0: no cap)\n"
            "  --eject-after N          consecutive transport failures that eject a replica\n"
            "                           until a health probe succeeds (default 2)\n"
            "  --health-interval-ms N   how often replicas are health-checked (default 500)\n"
            "  --max-body-bytes N       largest request body (default 67108864; 413 above)\n"
            "  --max-image-bytes N      largest image a classify request may carry (default\n"
            "                           16777216; 413 above); the decoded size is limited by\n"
            "                           the replicas' --max-image-pixels\n"
            "  --max-header-bytes N     largest request line + headers (default 16384; 431)\n"
            "  --max-connections N      open client connections per thread (default 4096)\n"
            "  --idle-timeout-ms N      close idle keep-alive connections (default 60000)\n"
            "  --request-timeout-ms N   a request must arrive whole within this (default\n"
            "                           30000; 408 otherwise)\n"
            "  --drain-timeout-ms N     on SIGTERM/SIGINT, how long requests in flight may take\n"
            "                           to be answered before they are cut (default 30000);\n"
            "                           a second signal cuts them at once\n"
            "  --log-level LEVEL        debug (one line per request), info (default), warn,\n"
            "                           error\n"
            "  --test-apply-delay-ms N  FOR TESTS ONLY: every thread but the first applies a\n"
            "                           replica table change N ms late\n"
            "  --help                   show this text\n");
}

static int bad_args(const char *fmt, const char *arg)
{
    fprintf(stderr, "corral-router: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n%s(corral-router --help explains every option)\n", synopsis);
    return 2;
}

static int parse_ulong(const char *s, unsigned long lo, unsigned long hi, unsigned long *out)
{
    char *end = NULL;
    errno = 0;
    if (!s || !*s || *s == '-')
        return -1;
    unsigned long v = strtoul(s, &end, 10);
    if (errno || *end || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

static int parse_uint(const char *s, unsigned long lo, unsigned long hi, unsigned *out)
{
    unsigned long v;
    if (parse_ulong(s, lo, hi, &v))
        return -1;
    *out = (unsigned)v;
    return 0;
}

void router_options_init(struct router_options *o)
{
    memset(o, 0, sizeof *o);
    o->health_ms = 500;
    o->timeout_ms = 30000;
    o->max_image_bytes = (size_t)16 << 20;
    o->threads = 1;
    o->max_inflight = 1024;
    o->eject_after = 2;
    o->rpc_contexts = 1024;
    o->drain_ms = 30000;
    o->rpc_url = DEFAULT_RPC;
    o->control = DEFAULT_CONTROL;
    o->dns_refresh_ms = 5000;
    http_limits_default(&o->lim);
}

int router_options_parse(int argc, char **argv, struct router_options *o)
{
    enum {
        O_LISTEN = 1, O_REPLICA, O_LOG, O_HEALTH, O_TIMEOUT, O_THREADS, O_RPC, O_RPC_CTX,
        O_INFLIGHT, O_EJECT, O_BODY, O_IMAGE, O_TOKEN, O_HEADER, O_CONNS, O_IDLE, O_REQTIME, O_DRAIN, O_CONTROL,
        O_CONTROL_TOKEN, O_APPLY_DELAY, O_DNS_REFRESH, O_HELP
    };
    static const struct option opts[] = {
        {"listen", required_argument, NULL, O_LISTEN},
        {"replica", required_argument, NULL, O_REPLICA},
        {"log-level", required_argument, NULL, O_LOG},
        {"health-interval-ms", required_argument, NULL, O_HEALTH},
        {"timeout-ms", required_argument, NULL, O_TIMEOUT},
        {"threads", required_argument, NULL, O_THREADS},
        {"rpc-listen", required_argument, NULL, O_RPC},
        {"rpc-contexts", required_argument, NULL, O_RPC_CTX},
        {"max-inflight", required_argument, NULL, O_INFLIGHT},
        {"eject-after", required_argument, NULL, O_EJECT},
        {"max-body-bytes", required_argument, NULL, O_BODY},
        {"max-image-bytes", required_argument, NULL, O_IMAGE},
        {"max-header-bytes", required_argument, NULL, O_HEADER},
        {"max-connections", required_argument, NULL, O_CONNS},
        {"idle-timeout-ms", required_argument, NULL, O_IDLE},
        {"request-timeout-ms", required_argument, NULL, O_REQTIME},
        {"drain-timeout-ms", required_argument, NULL, O_DRAIN},
        {"control-listen", required_argument, NULL, O_CONTROL},
        {"control-token-file", required_argument, NULL, O_CONTROL_TOKEN},
        {"token-file", required_argument, NULL, O_TOKEN},
        {"test-apply-delay-ms", required_argument, NULL, O_APPLY_DELAY},
        {"dns-refresh-ms", required_argument, NULL, O_DNS_REFRESH},
        {"help", no_argument, NULL, O_HELP},
        {NULL, 0, NULL, 0},
    };
    unsigned long ul;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case O_LISTEN: o->listen = optarg; break;
        case O_REPLICA: o->replicas[o->n_replicas++] = optarg; break;
        case O_LOG: {
            int l = log_parse_level(optarg);
            if (l < 0)
                return bad_args("--log-level '%s' is not one of debug, info, warn, error", optarg);
            log_set_level((enum log_level)l);
            break;
        }
        case O_HEALTH:
            if (parse_uint(optarg, 10, 3600000, &o->health_ms))
                return bad_args("--health-interval-ms '%s' is not a number of milliseconds from "
                                "10 to 3600000", optarg);
            break;
        case O_TIMEOUT:
            if (parse_uint(optarg, 1, 86400000, &o->timeout_ms))
                return bad_args("--timeout-ms '%s' is not a number of milliseconds from 1 to "
                                "86400000", optarg);
            break;
        case O_THREADS:
            if (parse_uint(optarg, 1, 256, &o->threads))
                return bad_args("--threads '%s' is not a number from 1 to 256", optarg);
            break;
        case O_RPC:
            o->rpc_url = strcmp(optarg, "off") == 0 ? NULL : optarg;
            o->rpc_explicit = 1;
            if (o->rpc_url && !strstr(o->rpc_url, "://"))
                return bad_args("--rpc-listen '%s' is not a URL (expected tcp://HOST:PORT, e.g. "
                                "tcp://0.0.0.0:8001, or off)", optarg);
            break;
        case O_CONTROL:
            o->control = strcmp(optarg, "off") == 0 ? NULL : optarg;
            o->control_explicit = 1;
            break;
        case O_CONTROL_TOKEN:
            o->control_token_file = optarg;
            break;
        case O_TOKEN:
            o->token_file = optarg;
            break;
        case O_APPLY_DELAY:
            if (parse_uint(optarg, 0, 60000, &o->apply_delay_ms))
                return bad_args("--test-apply-delay-ms '%s' is not a number of milliseconds "
                                "from 0 to 60000", optarg);
            break;
        case O_DNS_REFRESH:
            if (parse_uint(optarg, 100, 3600000, &o->dns_refresh_ms))
                return bad_args("--dns-refresh-ms '%s' is not a number of milliseconds from "
                                "100 to 3600000", optarg);
            break;
        case O_RPC_CTX:
            if (parse_uint(optarg, 1, 65536, &o->rpc_contexts))
                return bad_args("--rpc-contexts '%s' is not a number from 1 to 65536", optarg);
            break;
        case O_INFLIGHT:
            if (parse_uint(optarg, 0, 1000000, &o->max_inflight))
                return bad_args("--max-inflight '%s' is not a number from 0 to 1000000", optarg);
            break;
        case O_EJECT:
            if (parse_uint(optarg, 1, 1000, &o->eject_after))
                return bad_args("--eject-after '%s' is not a number from 1 to 1000", optarg);
            break;
        case O_BODY:
            if (parse_ulong(optarg, 1024, (unsigned long)1 << 31, &ul))
                return bad_args("--max-body-bytes '%s' is not a byte count from 1024 to 2 GiB",
                                optarg);
            o->lim.max_body_bytes = ul;
            break;
        case O_IMAGE:
            if (parse_ulong(optarg, 1024, (unsigned long)1 << 31, &ul))
                return bad_args("--max-image-bytes '%s' is not a byte count from 1024 to 2 GiB",
                                optarg);
            o->max_image_bytes = ul;
            break;
        case O_HEADER:
            if (parse_ulong(optarg, 256, 1 << 20, &ul))
                return bad_args("--max-header-bytes '%s' is not a byte count from 256 to 1 MiB",
                                optarg);
            o->lim.max_header_bytes = ul;
            break;
        case O_CONNS:
            if (parse_uint(optarg, 1, 1000000, &o->lim.max_connections))
                return bad_args("--max-connections '%s' is not a number from 1 to 1000000",
                                optarg);
            break;
        case O_IDLE:
            if (parse_uint(optarg, 10, 86400000, &o->lim.idle_timeout_ms))
                return bad_args("--idle-timeout-ms '%s' is not a number of milliseconds from 10 "
                                "to 86400000", optarg);
            break;
        case O_REQTIME:
            if (parse_uint(optarg, 10, 86400000, &o->lim.request_timeout_ms))
                return bad_args("--request-timeout-ms '%s' is not a number of milliseconds from "
                                "10 to 86400000", optarg);
            break;
        case O_DRAIN:
            if (parse_uint(optarg, 0, 3600000, &o->drain_ms))
                return bad_args("--drain-timeout-ms '%s' is not a number of milliseconds from "
                                "0 to 3600000", optarg);
            break;
        case O_HELP:
            usage(stdout);
            return -1;
        default:
            return bad_args("unknown or incomplete option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return bad_args("unexpected argument '%s'", argv[optind]);
    if (!o->listen)
        return bad_args("%s", "--listen HOST:PORT is required");
    if (hostport_parse(o->listen, o->host, sizeof o->host, &o->port))
        return bad_args("--listen '%s' is not HOST:PORT (e.g. 127.0.0.1:8000, or [::1]:8000)",
                        o->listen);
    if (o->control && hostport_parse(o->control, o->control_host, sizeof o->control_host,
                                   &o->control_port))
        return bad_args("--control-listen '%s' is not HOST:PORT or off (e.g. 127.0.0.1:8003)",
                        o->control);
    if (o->n_replicas == 0 && !o->control)
        return bad_args("%s", "at least one --replica NAME=URL is required when the control "
                        "endpoint is off (replicas can otherwise be added there)");
    for (int i = 0; i < o->n_replicas; i++) {
        const char *spec = o->replicas[i];
        const char *eq = strchr(spec, '=');
        size_t nl = eq ? (size_t)(eq - spec) : 0;
        if (!eq || nl == 0 || nl >= OIP_NAME_MAX || memchr(spec, '/', nl) ||
            !strstr(eq + 1, "://"))
            return bad_args("--replica '%s' is not NAME=URL (e.g. digits=tcp://127.0.0.1:9101)",
                            spec);
    }
    /* URLs are checked here too, so a typo is a usage error rather than a failed start. */
    struct upstream *probe = NULL;
    struct upstream_config pc = {0};
    struct cerr e = {0};
    int bad = 0;
    if (upstream_new(&probe, NULL, &pc, &e) == CORRAL_OK) {
        for (int i = 0; i < o->n_replicas && !bad; i++) {
            const char *spec = o->replicas[i];
            const char *eq = strchr(spec, '=');
            char name[OIP_NAME_MAX], host[256];
            int port;
            memcpy(name, spec, (size_t)(eq - spec));
            name[eq - spec] = '\0';
            if (strncmp(eq + 1, "dns://", 6) == 0)
                bad = dns_parse_url(eq + 1, host, sizeof host, &port, &e) != CORRAL_OK;
            else
                bad = upstream_add_replica(probe, name, eq + 1, &e) != CORRAL_OK;
        }
        upstream_close(probe);
    }
    if (bad)
        return bad_args("%s", e.msg);
    return 0;
}
