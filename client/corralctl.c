/*
 * corralctl: operator CLI.
 *
 *     corralctl infer  --rpc URL --model NAME [--version V] [--timeout-ms N]
 *                      [--id ID] [--output NAME ...] [--repeat N] [--token-file F] FILE|-
 *         Sends the OIP infer body in FILE (JSON {"inputs": [...]}) over RPC with
 *         libcorral and prints the answer as OIP JSON; --token-file for a router
 *         started with --token-file.
 *     corralctl health --rpc URL
 *     corralctl status --http HOST:PORT [--token-file F]
 *         Prints the router's replica table (model, version, state, in flight).
 *     corralctl status --admin HOST:PORT [--token-file F]
 *         Prints corral-scheduler's status (its admin API, GET /v1/status): one row
 *         per replica (model, version, device, state, pid, uptime, restarts, URL,
 *         last error), then each model's desired and ready replicas.
 *     corralctl apply --admin HOST:PORT [--token-file F] [--dry-run] FILE
 *         Posts the cluster config FILE to corral-scheduler (POST /v1/apply) and prints
 *         the changes it makes (or, with --dry-run, would make), "no changes", or why
 *         it was refused (every error with its JSON path). Exit 0 applied, dry run or
 *         no changes; 1 refused or no answer.
 *     corralctl promote --admin HOST:PORT [--token-file F] MODEL
 *         Finishes MODEL's canary (POST /v1/promote): the router's split is cleared
 *         and the rolling update goes on. Exit 0 promoted; 1 no canary waits or no
 *         answer.
 *     corralctl replicas --control HOST:PORT [--token-file F]
 *                        [add MODEL VERSION URL | drain URL | remove URL]
 *         Lists the router's replica table (its control endpoint), or changes it;
 *         a change returns once every router thread applied it. VERSION "-" or ""
 *         means whatever the replica serves.
 *     corralctl alias set|remove|list --repo DIR MODEL [ALIAS [VERSION]]
 *         A model's version aliases in the repository (ctl_alias.h).
 *
 * Exit status: 0 success; 1 the request failed (401: the admin API refused the
 * token); 2 usage; 3 (status) some model (with --admin: with desired > 0) has no
 * ready replica.
 */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"
#include "ctl_alias.h"
#include "token.h"
#include "corral/client.h"
#include "oip_codec.h"

static const char synopsis[] =
    "usage: corralctl infer --rpc URL --model NAME [--version V] [--timeout-ms N] [--id ID]\n"
    "                       [--output NAME ...] [--repeat N] [--token-file F] FILE|-\n"
    "       corralctl health --rpc URL\n"
    "       corralctl status --http HOST:PORT [--token-file F]\n"
    "       corralctl status --admin HOST:PORT [--token-file F]\n"
    "       corralctl apply --admin HOST:PORT [--token-file F] [--dry-run] FILE\n"
    "       corralctl promote --admin HOST:PORT [--token-file F] MODEL\n"
    "       corralctl replicas --control HOST:PORT [--token-file F]\n"
    "                          [add MODEL VERSION URL | drain URL | remove URL]\n";

static int usage_error(const char *msg, const char *arg)
{
    fprintf(stderr, "corralctl: ");
    fprintf(stderr, msg, arg);
    fprintf(stderr, "\n%s%s", synopsis, ctl_alias_synopsis);
    return 2;
}

static char *read_all(const char *path, size_t *len)
{
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
    struct buf b = {0};
    char chunk[65536];
    size_t n;
    if (!f)
        return NULL;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        buf_append(&b, chunk, n);
    if (f != stdin)
        fclose(f);
    return buf_steal(&b, len);
}

static void print_result(const struct corral_infer_result *res, const char *model)
{
    struct buf b = {0};
    struct cerr e = {0};
    const char *version = corral_result_model_version(res);
    const char *id = corral_result_id(res);
    buf_puts(&b, "{\"model_name\":");
    buf_json_string(&b, model, strlen(model));
    buf_puts(&b, ",\"model_version\":");
    buf_json_string(&b, version, strlen(version));
    if (id[0]) {
        buf_puts(&b, ",\"id\":");
        buf_json_string(&b, id, strlen(id));
    }
    buf_puts(&b, ",\"outputs\":[");
    for (size_t i = 0; i < corral_result_output_count(res); i++) {
        struct corral_tensor t;
        corral_result_output(res, i, &t);
        buf_puts(&b, i ? ",{\"name\":" : "{\"name\":");
        buf_json_string(&b, t.name, strlen(t.name));
        const char *dn = corral_datatype_name(t.datatype);
        buf_printf(&b, ",\"datatype\":\"%s\",\"shape\":[", dn ? dn : "?");
        for (size_t d = 0; d < t.ndim; d++)
            buf_printf(&b, d ? ",%lld" : "%lld", (long long)t.shape[d]);
        buf_puts(&b, "],\"data\":");
        if (oip_tensor_to_json(&b, "output", (enum dtype)t.datatype, t.data, t.nbytes, &e))
            buf_puts(&b, "null");
        buf_putc(&b, '}');
    }
    buf_puts(&b, "]}");
    size_t len = 0;
    char *s = buf_steal(&b, &len);
    if (s)
        printf("%s\n", s);
    free(s);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static int cmd_infer(int argc, char **argv)
{
    static const struct option opts[] = {
        {"rpc", required_argument, NULL, 'r'},      {"model", required_argument, NULL, 'm'},
        {"version", required_argument, NULL, 'v'},  {"timeout-ms", required_argument, NULL, 't'},
        {"id", required_argument, NULL, 'i'},       {"output", required_argument, NULL, 'o'},
        {"repeat", required_argument, NULL, 'n'},   {"token-file", required_argument, NULL, 'k'},
        {NULL, 0, NULL, 0},
    };
    const char *url = NULL, *model = NULL, *version = "", *id = NULL, *token_file = NULL;
    char *token = NULL;
    const char **outs = calloc((size_t)argc + 1, sizeof *outs);
    size_t n_outs = 0;
    long timeout = 0, repeat = 1;
    int c, rc = 1;
    char *body = NULL;
    struct oip_infer in;
    struct corral_tensor *ts = NULL;
    struct corral_client *cl = NULL;
    memset(&in, 0, sizeof in);
    if (!outs)
        return 1;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'r': url = optarg; break;
        case 'm': model = optarg; break;
        case 'v': version = optarg; break;
        case 'i': id = optarg; break;
        case 'o': outs[n_outs++] = optarg; break;
        case 'k': token_file = optarg; break;
        case 't':
            timeout = strtol(optarg, NULL, 10);
            if (timeout <= 0) {
                rc = usage_error("--timeout-ms '%s' is not a positive number", optarg);
                goto out;
            }
            break;
        case 'n':
            repeat = strtol(optarg, NULL, 10);
            if (repeat <= 0) {
                rc = usage_error("--repeat '%s' is not a positive number", optarg);
                goto out;
            }
            break;
        default: rc = usage_error("unknown or incomplete option '%s'", argv[optind - 1]); goto out;
        }
    }
    if (!url || !model || optind != argc - 1) {
        rc = usage_error("%s", "infer needs --rpc URL, --model NAME and one input FILE (or -)");
        goto out;
    }
    size_t len = 0;
    body = read_all(argv[optind], &len);
    if (!body) {
        fprintf(stderr, "corralctl: cannot read '%s': %s\n", argv[optind], strerror(errno));
        goto out;
    }
    struct cerr e = {0};
    if (oip_infer_parse(body, len, NULL, 0, model, version, &in, &e)) {
        fprintf(stderr, "corralctl: %s: %s\n", argv[optind], e.msg);
        goto out;
    }
    ts = calloc(in.ir.n_inputs, sizeof *ts);
    if (!ts)
        goto out;
    for (size_t i = 0; i < in.ir.n_inputs; i++) {
        const Corral__Tensor *t = in.ir.inputs[i];
        ts[i] = (struct corral_tensor){t->name, (int)t->datatype, t->shape, t->n_shape,
                                       t->data.data, t->data.len};
    }
    if (token_file && token_read(token_file, &token, &e)) {
        fprintf(stderr, "corralctl: %s\n", e.msg);
        goto out;
    }
    struct corral_error err;
    struct corral_client_options copt = {.token = token};
    if (corral_connect(&cl, url, &copt, &err)) {
        fprintf(stderr, "corralctl: %s\n", err.message);
        goto out;
    }
    struct corral_infer_request rq = {
        .model = model, .version = version, .id = id ? id : in.id, .inputs = ts,
        .n_inputs = in.ir.n_inputs, .outputs = outs, .n_outputs = n_outs,
        .timeout_ms = (unsigned)timeout,
    };
    double *lat = calloc((size_t)repeat, sizeof *lat);
    if (!lat)
        goto out;
    double t0 = now_s();
    for (long k = 0; k < repeat; k++) {
        struct corral_infer_result *res = NULL;
        double t1 = now_s();
        int irc = corral_infer(cl, &rq, &res, &err);
        lat[k] = now_s() - t1;
        if (irc) {
            free(lat);
            fprintf(stderr, "corralctl: infer failed: %s: %s\n", corral_status_name(err.status),
                    err.message);
            goto out;
        }
        if (k == repeat - 1)
            print_result(res, model);
        corral_result_free(res);
    }
    if (repeat > 1) {
        /* Closed loop, one request at a time: the latency figures the benchmarks quote. */
        double total = now_s() - t0;
        qsort(lat, (size_t)repeat, sizeof *lat, cmp_double);
        fprintf(stderr, "RESULT requests=%ld seconds=%.3f p50_us=%.1f p90_us=%.1f p99_us=%.1f\n",
                repeat, total, lat[repeat / 2] * 1e6, lat[repeat * 9 / 10] * 1e6,
                lat[repeat * 99 / 100] * 1e6);
    }
    free(lat);
    rc = 0;
out:
    corral_close(cl);
    free(token);
    free(ts);
    oip_infer_free(&in);
    free(body);
    free(outs);
    return rc;
}

static int cmd_health(int argc, char **argv)
{
    static const struct option opts[] = {{"rpc", required_argument, NULL, 'r'}, {NULL, 0, NULL, 0}};
    const char *url = NULL;
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (c != 'r')
            return usage_error("unknown or incomplete option '%s'", argv[optind - 1]);
        url = optarg;
    }
    if (!url)
        return usage_error("%s", "health needs --rpc URL");
    struct corral_client *cl;
    struct corral_error err;
    int live = 0, ready = 0;
    if (corral_connect(&cl, url, NULL, &err) ||
        corral_health(cl, 3000, &live, &ready, &err)) {
        fprintf(stderr, "corralctl: %s\n", err.message);
        return 1;
    }
    corral_close(cl);
    printf("live: %s\nready: %s\n", live ? "yes" : "no", ready ? "yes" : "no");
    return ready ? 0 : 3;
}

/*
 * One blocking request over a fresh connection (GET without a body, POST with a JSON
 * one); returns the answer's body (malloc'd) and its status, or NULL when no answer
 * came.
 */
static char *http_call(const char *hostport, const char *method, const char *path,
                       const char *token, const char *body, int *status)
{
    char host[256], port[16];
    const char *colon = strrchr(hostport, ':');
    if (!colon || (size_t)(colon - hostport) >= sizeof host || strlen(colon + 1) >= sizeof port)
        return NULL;
    memcpy(host, hostport, (size_t)(colon - hostport));
    host[colon - hostport] = '\0';
    snprintf(port, sizeof port, "%s", colon + 1);
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_socktype = SOCK_STREAM;
    if (getaddrinfo(host, port, &hints, &res) != 0 || !res)
        return NULL;
    int fd = socket(res->ai_family, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, res->ai_addr, res->ai_addrlen) != 0) {
        if (fd >= 0)
            close(fd);
        freeaddrinfo(res);
        return NULL;
    }
    freeaddrinfo(res);
    struct buf rq = {0};
    buf_printf(&rq, "%s %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n", method, path,
               hostport);
    if (token)
        buf_printf(&rq, "Authorization: Bearer %s\r\n", token);
    if (body)
        buf_printf(&rq, "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
                   strlen(body), body);
    else
        buf_puts(&rq, "\r\n");
    size_t rlen = 0;
    char *req = buf_steal(&rq, &rlen);
    if (!req || write(fd, req, rlen) != (ssize_t)rlen) {
        free(req);
        close(fd);
        return NULL;
    }
    free(req);
    struct buf b = {0};
    char chunk[65536];
    ssize_t got;
    while ((got = read(fd, chunk, sizeof chunk)) > 0)
        buf_append(&b, chunk, (size_t)got);
    close(fd);
    size_t len = 0;
    char *all = buf_steal(&b, &len);
    if (!all)
        return NULL;
    *status = 0;
    sscanf(all, "HTTP/1.%*d %d", status);
    char *sep = strstr(all, "\r\n\r\n");
    char *out = strdup(sep ? sep + 4 : "");
    free(all);
    return out;
}

/* The error text of a JSON answer {"error": ...}, or the body itself. */
static void print_error(const char *what, int status, const char *body)
{
    json_t *root = body ? json_loads(body, 0, NULL) : NULL;
    const char *msg = json_string_value(json_object_get(root, "error"));
    fprintf(stderr, "corralctl: %s: %d %s\n", what, status, msg ? msg : body ? body : "no answer");
    json_decref(root);
}

static int cmd_replicas(int argc, char **argv)
{
    static const struct option opts[] = {{"control", required_argument, NULL, 'c'},
                                         {"token-file", required_argument, NULL, 't'},
                                         {NULL, 0, NULL, 0}};
    const char *hp = NULL, *token_file = NULL;
    int c, status = 0, rc = 1;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "+", opts, NULL)) != -1) {
        if (c == 'c')
            hp = optarg;
        else if (c == 't')
            token_file = optarg;
        else
            return usage_error("unknown or incomplete option '%s'", argv[optind - 1]);
    }
    if (!hp)
        return usage_error("%s", "replicas needs --control HOST:PORT (the router's control "
                           "endpoint, 127.0.0.1:8003 by default)");
    int nargs = argc - optind;
    char **args = argv + optind;
    const char *op = nargs ? args[0] : NULL;
    json_t *req = NULL;
    const char *path = "/v1/replicas";
    if (!op) {
        /* list */
    } else if (strcmp(op, "add") == 0 && nargs == 4) {
        const char *v = strcmp(args[2], "-") == 0 ? "" : args[2];
        req = json_pack("{s:s, s:s, s:s}", "model", args[1], "version", v, "url", args[3]);
    } else if ((strcmp(op, "drain") == 0 || strcmp(op, "remove") == 0) && nargs == 2) {
        req = json_pack("{s:s}", "url", args[1]);
        path = strcmp(op, "drain") == 0 ? "/v1/replicas/drain" : "/v1/replicas/remove";
    } else {
        return usage_error("replicas: '%s' is not add MODEL VERSION URL, drain URL or remove URL",
                           op);
    }
    char *token = NULL, *body_text = NULL, *answer = NULL;
    struct cerr e = {0};
    if (token_file && token_read(token_file, &token, &e)) {
        fprintf(stderr, "corralctl: %s\n", e.msg);
        goto out;
    }
    if (req && !(body_text = json_dumps(req, JSON_COMPACT))) {
        fprintf(stderr, "corralctl: out of memory\n");
        goto out;
    }
    answer = http_call(hp, req ? "POST" : "GET", path, token, body_text, &status);
    if (!answer || status != 200) {
        print_error(req ? op : "cannot read the replica table", status, answer);
        goto out;
    }
    json_t *root = json_loads(answer, 0, NULL);
    if (!root) {
        fprintf(stderr, "corralctl: the control endpoint's answer is not JSON\n");
        goto out;
    }
    if (req) {
        printf("%s: generation %lld (acknowledged by every router thread)\n", op,
               json_integer_value(json_object_get(root, "generation")));
    } else {
        printf("generation %lld, acknowledged %lld\n",
               json_integer_value(json_object_get(root, "generation")),
               json_integer_value(json_object_get(root, "acked")));
        printf("%-16s %-8s %-9s %s\n", "MODEL", "VERSION", "STATE", "REPLICA");
        size_t i;
        json_t *r;
        json_array_foreach(json_object_get(root, "replicas"), i, r)
        {
            const char *v = json_string_value(json_object_get(r, "version"));
            printf("%-16s %-8s %-9s %s\n", json_string_value(json_object_get(r, "model")),
                   v && v[0] ? v : "-", json_string_value(json_object_get(r, "state")),
                   json_string_value(json_object_get(r, "url")));
        }
    }
    json_decref(root);
    rc = 0;
out:
    json_decref(req);
    free(body_text);
    free(answer);
    free(token);
    return rc;
}

/* A string field for a table cell: "-" when absent or null. */
static const char *cell(const json_t *o, const char *key)
{
    const char *v = json_string_value(json_object_get(o, key));
    return v && v[0] ? v : "-";
}

/* A model's last rollout, one line (and its reason when aborted). */
static void print_rollout(const char *model, const json_t *ro)
{
    if (!json_is_object(ro))
        return;
    const json_t *pct = json_object_get(ro, "canary_percent");
    printf("  rollout %s %lld -> %lld: %s after %.1f s, %lld on the new version and %lld on the "
           "old serving, %lld started, %lld drained%s",
           model, json_integer_value(json_object_get(ro, "from")),
           json_integer_value(json_object_get(ro, "to")), cell(ro, "state"),
           (double)json_integer_value(json_object_get(ro, "duration_ms")) / 1000.0,
           json_integer_value(json_object_get(ro, "serving_to")),
           json_integer_value(json_object_get(ro, "serving_from")),
           json_integer_value(json_object_get(ro, "started")),
           json_integer_value(json_object_get(ro, "drained")),
           json_is_integer(pct) ? "" : "\n");
    if (json_is_integer(pct))
        printf("; canary at %lld%% until corralctl promote\n", json_integer_value(pct));
    if (json_is_string(json_object_get(ro, "reason")))
        printf("  reason: %s\n", json_string_value(json_object_get(ro, "reason")));
}

/* status --admin: corral-scheduler's GET /v1/status as a table. */
static int status_admin(const char *hp, const char *token_file)
{
    char *token = NULL;
    struct cerr e = {0};
    int status = 0;
    if (token_file && token_read(token_file, &token, &e)) {
        fprintf(stderr, "corralctl: %s\n", e.msg);
        return 1;
    }
    char *body = http_call(hp, "GET", "/v1/status", token, NULL, &status);
    free(token);
    if (!body || status != 200) {
        if (status == 401)
            print_error("the admin API refused the token (401 Unauthorized; give the right "
                        "one with --token-file)", status, body);
        else if (!body)
            fprintf(stderr, "corralctl: no answer from the admin API at http://%s\n", hp);
        else
            print_error("cannot read the scheduler's status", status, body);
        free(body);
        return 1;
    }
    json_t *root = json_loads(body, 0, NULL);
    free(body);
    json_t *reps = json_object_get(root, "replicas");
    json_t *models = json_object_get(root, "models");
    json_t *router = json_object_get(root, "router");
    if (!json_is_array(reps) || !json_is_array(models) || !json_is_object(router)) {
        fprintf(stderr, "corralctl: the admin API's answer is not a scheduler status\n");
        json_decref(root);
        return 1;
    }
    printf("router: %s, pid %lld, http %s, control %s, rpc %s, restarts %lld%s%s\n",
           cell(router, "state"), json_integer_value(json_object_get(router, "pid")),
           cell(router, "http"), cell(router, "control"), cell(router, "rpc"),
           json_integer_value(json_object_get(router, "restarts")),
           json_is_string(json_object_get(router, "last_error")) ? ", last error: " : "",
           json_is_string(json_object_get(router, "last_error")) ? cell(router, "last_error")
                                                                 : "");
    printf("%-16s %-7s %-10s %-10s %-8s %8s %8s  %-28s %s\n", "MODEL", "VERSION", "DEVICE",
           "STATE", "PID", "UPTIME", "RESTARTS", "URL", "ERROR");
    size_t i;
    json_t *r;
    json_array_foreach(reps, i, r)
    {
        char dev[300], pid[24], up[32];
        const char *cores = json_string_value(json_object_get(r, "cores"));
        if (cores && strcmp(cores, cell(r, "device")) != 0)
            snprintf(dev, sizeof dev, "%s", cores);
        else
            snprintf(dev, sizeof dev, "%s", cell(r, "device"));
        json_t *p = json_object_get(r, "pid");
        json_t *u = json_object_get(r, "uptime_s");
        if (json_is_integer(p))
            snprintf(pid, sizeof pid, "%lld", json_integer_value(p));
        else
            snprintf(pid, sizeof pid, "-");
        if (json_is_number(u))
            snprintf(up, sizeof up, "%.1fs", json_number_value(u));
        else
            snprintf(up, sizeof up, "-");
        printf("%-16s %-7lld %-10s %-10s %-8s %8s %8lld  %-28s %s\n", cell(r, "model"),
               json_integer_value(json_object_get(r, "version")), dev, cell(r, "state"), pid, up,
               json_integer_value(json_object_get(r, "restarts")), cell(r, "url"),
               cell(r, "last_error"));
    }
    int all_ready = 1;
    json_array_foreach(models, i, r)
    {
        long long want = json_integer_value(json_object_get(r, "desired"));
        long long ready = json_integer_value(json_object_get(r, "ready"));
        printf("model %s version %lld: %lld of %lld desired replica%s ready\n", cell(r, "name"),
               json_integer_value(json_object_get(r, "version")), ready, want,
               want == 1 ? "" : "s");
        if (want > 0 && ready < 1)
            all_ready = 0;
        print_rollout(cell(r, "name"), json_object_get(r, "rollout"));
    }
    json_decref(root);
    return all_ready ? 0 : 3;
}

static int cmd_status(int argc, char **argv)
{
    static const struct option opts[] = {{"http", required_argument, NULL, 'h'},
                                         {"admin", required_argument, NULL, 'a'},
                                         {"token-file", required_argument, NULL, 't'},
                                         {NULL, 0, NULL, 0}};
    const char *hp = NULL, *admin = NULL, *token_file = NULL;
    int c, status = 0;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (c == 'h')
            hp = optarg;
        else if (c == 'a')
            admin = optarg;
        else if (c == 't')
            token_file = optarg;
        else
            return usage_error("unknown or incomplete option '%s'", argv[optind - 1]);
    }
    if (optind < argc)
        return usage_error("status: unexpected argument '%s'", argv[optind]);
    if (hp && admin)
        return usage_error("%s", "status takes --http HOST:PORT or --admin HOST:PORT, not both");
    if (admin)
        return status_admin(admin, token_file);
    if (!hp)
        return usage_error("%s", "status needs --http HOST:PORT (the router's HTTP address) or "
                           "--admin HOST:PORT (corral-scheduler's admin API)");
    /* With --http, the token is the router's own (--token-file), if it has one. */
    char *token = NULL;
    struct cerr e = {0};
    if (token_file && token_read(token_file, &token, &e)) {
        fprintf(stderr, "corralctl: %s\n", e.msg);
        return 1;
    }
    char *body = http_call(hp, "GET", "/v2/corral/replicas", token, NULL, &status);
    free(token);
    if (!body || status != 200) {
        fprintf(stderr, "corralctl: cannot read the replica table from http://%s (%s)\n", hp,
                body ? body : "no answer");
        free(body);
        return 1;
    }
    json_error_t je;
    json_t *root = json_loads(body, 0, &je);
    free(body);
    json_t *reps = json_object_get(root, "replicas");
    json_t *models = json_object_get(root, "models");
    if (!json_is_array(reps) || !json_is_array(models)) {
        fprintf(stderr, "corralctl: the router's answer is not a replica table\n");
        json_decref(root);
        return 1;
    }
    printf("%-16s %-8s %-11s %8s  %-28s %s\n", "MODEL", "VERSION", "STATE", "INFLIGHT", "REPLICA",
           "WHY");
    size_t i;
    json_t *r;
    json_array_foreach(reps, i, r)
    {
        printf("%-16s %-8s %-11s %8lld  %-28s %s\n",
               json_string_value(json_object_get(r, "model")),
               json_string_value(json_object_get(r, "version"))[0]
                   ? json_string_value(json_object_get(r, "version"))
                   : "-",
               json_string_value(json_object_get(r, "state")),
               json_integer_value(json_object_get(r, "outstanding")),
               json_string_value(json_object_get(r, "url")),
               json_string_value(json_object_get(r, "why")));
    }
    int all_ready = 1;
    json_array_foreach(models, i, r)
    {
        long long n = json_integer_value(json_object_get(r, "ready_replicas"));
        printf("model %s: %lld ready replica%s\n", json_string_value(json_object_get(r, "name")),
               n, n == 1 ? "" : "s");
        all_ready &= n > 0;
    }
    json_decref(root);
    return all_ready ? 0 : 3;
}

/* apply --admin: POST /v1/apply with FILE; prints the changes or the errors. */
/* POSTs `text` to the admin API at `path`, with the token of `token_file` when given;
 * the answer's body (malloc'd) and *status, or NULL after saying why on stderr. */
static char *admin_post(const char *admin, const char *token_file, const char *path,
                        const char *text, int *status)
{
    char *token = NULL;
    struct cerr e = {0};
    if (token_file && token_read(token_file, &token, &e)) {
        fprintf(stderr, "corralctl: %s\n", e.msg);
        return NULL;
    }
    char *body = http_call(admin, "POST", path, token, text, status);
    free(token);
    if (!body)
        fprintf(stderr, "corralctl: no answer from the admin API at http://%s\n", admin);
    return body;
}

/* promote --admin: POST /v1/promote {"model": MODEL}. */
static int cmd_promote(int argc, char **argv)
{
    static const struct option opts[] = {{"admin", required_argument, NULL, 'a'},
                                         {"token-file", required_argument, NULL, 't'},
                                         {NULL, 0, NULL, 0}};
    const char *admin = NULL, *token_file = NULL;
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (ch) {
        case 'a': admin = optarg; break;
        case 't': token_file = optarg; break;
        default: return usage_error("unknown or incomplete option '%s'", argv[optind - 1]);
        }
    }
    if (!admin || optind != argc - 1)
        return usage_error("%s", "promote needs --admin HOST:PORT (corral-scheduler's admin "
                                 "API) and one MODEL");
    json_t *req = json_pack("{s:s}", "model", argv[optind]);
    char *text = req ? json_dumps(req, JSON_COMPACT) : NULL;
    json_decref(req);
    int status = 0;
    char *body = text ? admin_post(admin, token_file, "/v1/promote", text, &status) : NULL;
    free(text);
    if (!body)
        return 1;
    json_t *root = json_loads(body, 0, NULL);
    int rc = 1;
    if (status == 200 && json_is_true(json_object_get(root, "promoted"))) {
        printf("promoted: %s version %lld; the rolling update from %lld goes on\n", argv[optind],
               json_integer_value(json_object_get(root, "to")),
               json_integer_value(json_object_get(root, "from")));
        rc = 0;
    } else if (status == 401) {
        print_error("the admin API refused the token (401 Unauthorized; give the right one "
                    "with --token-file)", status, body);
    } else {
        const char *err = json_string_value(json_object_get(root, "error"));
        fprintf(stderr, "corralctl: promote refused (%d): %s\n", status, err ? err : body);
    }
    json_decref(root);
    free(body);
    return rc;
}

static int cmd_apply(int argc, char **argv)
{
    static const struct option opts[] = {{"admin", required_argument, NULL, 'a'},
                                         {"token-file", required_argument, NULL, 't'},
                                         {"dry-run", no_argument, NULL, 'n'},
                                         {NULL, 0, NULL, 0}};
    const char *admin = NULL, *token_file = NULL;
    int dry = 0, ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (ch) {
        case 'a': admin = optarg; break;
        case 't': token_file = optarg; break;
        case 'n': dry = 1; break;
        default: return usage_error("unknown or incomplete option '%s'", argv[optind - 1]);
        }
    }
    if (!admin || optind != argc - 1)
        return usage_error("%s", "apply needs --admin HOST:PORT (corral-scheduler's admin API) "
                                 "and one config FILE");
    size_t len = 0;
    char *text = read_all(argv[optind], &len);
    if (!text) {
        fprintf(stderr, "corralctl: cannot read %s: %s\n", argv[optind], strerror(errno));
        return 1;
    }
    if (strlen(text) != len) {
        fprintf(stderr, "corralctl: %s holds a NUL byte; not a JSON config\n", argv[optind]);
        free(text);
        return 1;
    }
    int status = 0;
    char *body = admin_post(admin, token_file, dry ? "/v1/apply?dry_run=1" : "/v1/apply", text,
                            &status);
    free(text);
    if (!body)
        return 1;
    json_t *root = json_loads(body, 0, NULL);
    const json_t *changes = json_object_get(root, "changes"), *errors = json_object_get(root,
                                                                                       "errors");
    const char *err = json_string_value(json_object_get(root, "error"));
    int applied = json_is_true(json_object_get(root, "applied"));
    const json_t *v;
    size_t i;
    int rc = 1;
    if (status == 200 && root) {
        if (json_array_size(changes) == 0) {
            printf("no changes\n");
        } else {
            printf("%s:\n", applied ? "applied" : "dry run, nothing changed; would apply");
            json_array_foreach(changes, i, v)
                printf("  %s\n", json_string_value(v));
        }
        rc = 0;
    } else if (status == 401) {
        print_error("the admin API refused the token (401 Unauthorized; give the right one "
                    "with --token-file)", status, body);
    } else if (json_array_size(errors)) {
        fprintf(stderr, "corralctl: refused (%d), nothing was changed:\n", status);
        json_array_foreach(errors, i, v)
            fprintf(stderr, "  %s\n", json_string_value(v));
    } else {
        fprintf(stderr, "corralctl: apply failed: %d %s\n", status, err ? err : body);
    }
    json_decref(root);
    free(body);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "help") == 0) {
        fputs(synopsis, argc < 2 ? stderr : stdout);
        fputs(ctl_alias_synopsis, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (strcmp(argv[1], "infer") == 0)
        return cmd_infer(argc - 1, argv + 1);
    if (strcmp(argv[1], "health") == 0)
        return cmd_health(argc - 1, argv + 1);
    if (strcmp(argv[1], "status") == 0)
        return cmd_status(argc - 1, argv + 1);
    if (strcmp(argv[1], "replicas") == 0)
        return cmd_replicas(argc - 1, argv + 1);
    if (strcmp(argv[1], "apply") == 0)
        return cmd_apply(argc - 1, argv + 1);
    if (strcmp(argv[1], "promote") == 0)
        return cmd_promote(argc - 1, argv + 1);
    if (strcmp(argv[1], "alias") == 0)
        return ctl_alias(argc - 1, argv + 1);
    return usage_error("unknown command '%s' (expected infer, health, status, apply, promote, "
                       "replicas or alias)",
                       argv[1]);
}
