/*
 * corral-router's command line: what each option means, its default and its limits.
 * router_options_init sets the defaults and router_options_parse reads argv over
 * them, answering --help and every usage error itself (on stdout and stderr) so that
 * main only decides the exit status. The replica URLs are checked here as well, with
 * the same parser the upstream uses, so that a typo is a usage error (status 2)
 * rather than a router that starts and then fails.
 *
 * Usage:
 *     struct router_options o;
 *     router_options_init(&o);
 *     o.replicas = calloc(argc + 1, sizeof *o.replicas);  // owned by the caller
 *     int pa = router_options_parse(argc, argv, &o);  // 0 go on, -1 --help shown, 2 bad
 */
#ifndef CORRAL_ROUTER_OPTIONS_H
#define CORRAL_ROUTER_OPTIONS_H

#include <stddef.h>

#include "http.h"

struct router_options {
    const char *listen;
    char host[256];
    int port;
    const char **replicas;
    int n_replicas;
    unsigned health_ms, timeout_ms, threads, max_inflight, eject_after, rpc_contexts, drain_ms;
    size_t max_image_bytes;
    const char *rpc_url; /* NULL: off */
    int rpc_explicit;
    const char *control;   /* HOST:PORT, NULL: off */
    int control_explicit;
    char control_host[256];
    int control_port;
    const char *control_token_file;
    const char *token_file; /* --token-file: inference needs its token */
    char *token;            /* that token, read by main (owned there); NULL: open */
    unsigned apply_delay_ms; /* tests only: threads but the first apply table changes late */
    unsigned dns_refresh_ms; /* how often dns:// replicas are resolved again */
    struct http_limits lim;
};

void router_options_init(struct router_options *o);
int router_options_parse(int argc, char **argv, struct router_options *o);

#endif
