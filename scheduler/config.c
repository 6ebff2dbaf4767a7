#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "aliases.h"
#include "hostport.h"
#include "token.h"


/* ---- error list ----------------------------------------------------------------- */

void sched_errs_add(struct sched_errs *errs, const char *path, const char *fmt, ...)
{
    char msg[CERR_MSG_MAX], line[CERR_MSG_MAX + 160];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (path && path[0])
        snprintf(line, sizeof line, "%s: %s", path, msg);
    else
        snprintf(line, sizeof line, "%s", msg);
    /* Keys and strings come from the file: a newline in one must not split an error
     * into two lines, nor an escape sequence reach the operator's terminal. */
    for (unsigned char *p = (unsigned char *)line; *p; p++)
        if (*p < 0x20 || *p == 0x7f)
            *p = '?';
    if (errs->n >= SCHED_ERRS_MAX) {
        errs->dropped++;
        return;
    }
    char **grown = realloc(errs->lines, (errs->n + 1) * sizeof *grown);
    char *copy = grown ? strdup(line) : NULL;
    if (grown)
        errs->lines = grown;
    if (!copy) {
        errs->oom = 1;
        errs->dropped++;
        return;
    }
    errs->lines[errs->n++] = copy;
}

size_t sched_errs_count(const struct sched_errs *errs)
{
    return errs->n + errs->dropped;
}

void sched_errs_print(const struct sched_errs *errs, FILE *f)
{
    for (size_t i = 0; i < errs->n; i++)
        fprintf(f, "%s\n", errs->lines[i]);
    if (errs->dropped)
        fprintf(f, "... and %zu more error%s\n", errs->dropped, errs->dropped == 1 ? "" : "s");
}

void sched_errs_free(struct sched_errs *errs)
{
    for (size_t i = 0; i < errs->n; i++)
        free(errs->lines[i]);
    free(errs->lines);
    memset(errs, 0, sizeof *errs);
}

/* ---- small parsers --------------------------------------------------------------- */

/* A decimal number without sign, without leading zeros (but "0"), at most `hi`. */
static int parse_dec(const char *s, size_t n, long hi, long *out)
{
    long v = 0;
    if (n == 0 || n > 9 || (n > 1 && s[0] == '0'))
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    if (v > hi)
        return -1;
    *out = v;
    return 0;
}

int sched_addr_parse(const char *s, struct sched_addr *out)
{
    memset(out, 0, sizeof *out);
    if (strlen(s) >= sizeof out->text || hostport_parse(s, out->host, sizeof out->host, &out->port))
        return -1;
    snprintf(out->text, sizeof out->text, "%s", s);
    return 0;
}

void sched_device_format(const struct sched_device *d, char *buf, size_t len)
{
    switch (d->kind) {
    case SCHED_DEV_CPU: snprintf(buf, len, "cpu"); break;
    case SCHED_DEV_CPU_FIXED:
        if (d->lo == d->hi)
            snprintf(buf, len, "cpu:%d", d->lo);
        else
            snprintf(buf, len, "cpu:%d-%d", d->lo, d->hi);
        break;
    case SCHED_DEV_CUDA: snprintf(buf, len, "cuda:%d", d->gpu); break;
    }
}

/* "cpu", "cpu:N", "cpu:LO-HI" (LO <= HI) or "cuda:N". */
static int parse_device(const char *s, struct sched_device *d)
{
    long a, b;
    memset(d, 0, sizeof *d);
    if (strcmp(s, "cpu") == 0) {
        d->kind = SCHED_DEV_CPU;
        d->valid = 1;
        return 0;
    }
    if (strncmp(s, "cpu:", 4) == 0) {
        const char *r = s + 4, *dash = strchr(r, '-');
        if (!dash) {
            if (parse_dec(r, strlen(r), SCHED_MAX_CPU, &a))
                return -1;
            b = a;
        } else if (parse_dec(r, (size_t)(dash - r), SCHED_MAX_CPU, &a) ||
                   parse_dec(dash + 1, strlen(dash + 1), SCHED_MAX_CPU, &b) || a > b) {
            return -1;
        }
        d->kind = SCHED_DEV_CPU_FIXED;
        d->lo = (int)a;
        d->hi = (int)b;
        d->valid = 1;
        return 0;
    }
    if (strncmp(s, "cuda:", 5) == 0) {
        if (parse_dec(s + 5, strlen(s + 5), SCHED_MAX_GPU, &a))
            return -1;
        d->kind = SCHED_DEV_CUDA;
        d->gpu = (int)a;
        d->valid = 1;
        return 0;
    }
    return -1;
}

/* ---- JSON helpers ------------------------------------------------------------------ */

/* The JSON text of a value as the file gave it, shortened, for "got ..." in messages. */
static void got(const json_t *v, char *buf, size_t len)
{
    /* ASCII only, so that shortening it cannot cut a character in two. */
    char *s = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT | JSON_ENSURE_ASCII);
    if (!s) {
        snprintf(buf, len, "a value");
        return;
    }
    if (strlen(s) > 60)
        snprintf(buf, len, "%.57s...", s);
    else
        snprintf(buf, len, "%s", s);
    free(s);
}

/* Appends ".key" or "[i]" to a JSON path. Keys come from the file, so they are cut
 * short: the path is for people to find the spot, and stays bounded. */
static void path_key(char *out, size_t len, const char *parent, const char *key)
{
    if (parent[0])
        snprintf(out, len, "%s.%.64s", parent, key);
    else
        snprintf(out, len, "%.64s", key);
}

static void path_index(char *out, size_t len, const char *parent, size_t i)
{
    snprintf(out, len, "%s[%zu]", parent, i);
}

/* Reports every key of `obj` not in the NULL-terminated `allowed`. */
static void check_keys(const json_t *obj, const char *path, const char *const *allowed,
                       struct sched_errs *errs)
{
    const char *key;
    json_t *v;
    char p[512], list[512];
    size_t off = 0;
    list[0] = '\0';
    for (size_t i = 0; allowed[i] && off < sizeof list; i++)
        off += (size_t)snprintf(list + off, sizeof list - off, "%s%s", i ? ", " : "", allowed[i]);
    json_object_foreach((json_t *)obj, key, v) {
        size_t i = 0;
        while (allowed[i] && strcmp(allowed[i], key) != 0)
            i++;
        if (!allowed[i]) {
            path_key(p, sizeof p, path, key);
            sched_errs_add(errs, p, "unknown key (expected one of %s)", list);
        }
    }
}

/* An integer member in lo..hi, or `dflt` when absent (when `required`, absence is
 * an error). Returns 0 when *out holds a valid value (given or default). */
static int get_int(const json_t *obj, const char *path, const char *key, long lo, long hi,
                   long dflt, int required, long *out, struct sched_errs *errs)
{
    char p[512], g[80];
    json_t *v = json_object_get(obj, key);
    path_key(p, sizeof p, path, key);
    *out = dflt;
    if (!v) {
        if (!required)
            return 0;
        sched_errs_add(errs, p, "missing (expected an integer >= %ld)", lo);
        return -1;
    }
    if (!json_is_integer(v) || json_integer_value(v) < lo) {
        got(v, g, sizeof g);
        sched_errs_add(errs, p, "expected an integer >= %ld, got %s", lo, g);
        return -1;
    }
    if (json_integer_value(v) > hi) {
        got(v, g, sizeof g);
        sched_errs_add(errs, p, "expected an integer <= %ld, got %s", hi, g);
        return -1;
    }
    *out = (long)json_integer_value(v);
    return 0;
}

/* A string member; NULL when absent or not a string (the latter reported, as is
 * absence when `required`). `what` is the expectation ("HOST:PORT"). */
static const char *get_str(const json_t *obj, const char *path, const char *key, int required,
                           const char *what, struct sched_errs *errs)
{
    char p[512], g[80];
    json_t *v = json_object_get(obj, key);
    path_key(p, sizeof p, path, key);
    if (!v) {
        if (required)
            sched_errs_add(errs, p, "missing (expected %s)", what);
        return NULL;
    }
    if (!json_is_string(v)) {
        got(v, g, sizeof g);
        sched_errs_add(errs, p, "expected %s, got %s", what, g);
        return NULL;
    }
    return json_string_value(v);
}

/* An object member, or NULL when absent or of another type (the latter reported). */
static const json_t *get_obj(const json_t *obj, const char *key, struct sched_errs *errs)
{
    char g[80];
    json_t *v = json_object_get(obj, key);
    if (v && !json_is_object(v)) {
        got(v, g, sizeof g);
        sched_errs_add(errs, key, "expected an object, got %s", g);
        return NULL;
    }
    return v;
}

static void get_addr(const json_t *obj, const char *path, const char *key, const char *dflt,
                     struct sched_addr *out, struct sched_errs *errs)
{
    char p[512], g[80];
    const char *s = get_str(obj, path, key, 0, "HOST:PORT (e.g. 127.0.0.1:8000)", errs);
    sched_addr_parse(dflt, out);
    if (!s)
        return;
    if (sched_addr_parse(s, out)) {
        path_key(p, sizeof p, path, key);
        got(json_object_get(obj, key), g, sizeof g);
        sched_errs_add(errs, p, "expected HOST:PORT with a port from 0 to 65535 (e.g. "
                       "127.0.0.1:8000, [::1]:8000), got %s", g);
        sched_addr_parse(dflt, out);
    }
}

/* ---- paths ------------------------------------------------------------------------- */

static char *path_join(const char *a, const char *b)
{
    size_t n = strlen(a) + strlen(b) + 2;
    char *p = malloc(n);
    if (p)
        snprintf(p, n, "%s/%s", a, b);
    return p;
}

/* `p` when absolute, else p against `dir`; malloc'd. */
static char *resolve(const char *dir, const char *p)
{
    return p[0] == '/' ? strdup(p) : path_join(dir, p);
}

/* NULL when `p` is a readable regular file, else why not. */
static const char *file_problem(const char *p)
{
    struct stat st;
    if (stat(p, &st) != 0)
        return errno == ENOENT || errno == ENOTDIR ? "does not exist" : strerror(errno);
    if (!S_ISREG(st.st_mode))
        return "is not a regular file";
    if (access(p, R_OK) != 0)
        return "is not readable";
    return NULL;
}

/* The token file must hold one line of text: an empty token would let anyone in,
 * and the check here is what makes a bad file fail before anything starts. The
 * token itself is never copied into a message. */
static void check_token_file(const char *p, const char *path, struct sched_errs *errs)
{
    const char *why = file_problem(p);
    if (why) {
        sched_errs_add(errs, path, "the token file %s %s", p, why);
        return;
    }
    char *tok = NULL;
    struct cerr e = {0};
    if (token_read(p, &tok, &e)) {
        if (e.code == CORRAL_ENOMEM)
            errs->oom = 1;
        sched_errs_add(errs, path, "%s", e.msg);
        return;
    }
    free(tok);
}

/* SECTION.token_file: a readable token file, resolved against the config's folder. */
static void get_token_file(const json_t *o, const char *section, const char *dir, char **out,
                           struct sched_errs *errs)
{
    char path[64];
    snprintf(path, sizeof path, "%s.token_file", section);
    const char *tf = get_str(o, section, "token_file", 0, "the path of a file", errs);
    if (!tf)
        return;
    if (!tf[0]) {
        sched_errs_add(errs, path, "expected the path of a file, got \"\"");
        return;
    }
    *out = resolve(dir, tf);
    if (!*out) {
        errs->oom = 1;
        return;
    }
    check_token_file(*out, path, errs);
}

/* ---- sections ---------------------------------------------------------------------- */

static void parse_router(const json_t *root, struct sched_config *cfg, const char *dir,
                         struct sched_errs *errs)
{
    static const char *const keys[] = {"listen", "rpc_listen", "threads", "control_listen",
                                       "token_file", NULL};
    const json_t *o = get_obj(root, "router", errs);
    long threads;
    char g[80];
    sched_addr_parse("127.0.0.1:8000", &cfg->router.listen);
    sched_addr_parse("127.0.0.1:8001", &cfg->router.rpc);
    snprintf(cfg->router.rpc_url, sizeof cfg->router.rpc_url, "tcp://127.0.0.1:8001");
    cfg->router.threads = 1;
    sched_addr_parse("127.0.0.1:8003", &cfg->router.control);
    if (!o)
        return;
    check_keys(o, "router", keys, errs);
    get_addr(o, "router", "listen", "127.0.0.1:8000", &cfg->router.listen, errs);
    get_addr(o, "router", "control_listen", "127.0.0.1:8003", &cfg->router.control, errs);
    const char *rpc = get_str(o, "router", "rpc_listen", 0,
                              "tcp://HOST:PORT or \"off\"", errs);
    if (rpc) {
        struct sched_addr a;
        if (strcmp(rpc, "off") == 0) {
            cfg->router.rpc_off = 1;
            snprintf(cfg->router.rpc_url, sizeof cfg->router.rpc_url, "off");
        } else if (strncmp(rpc, "tcp://", 6) == 0 && sched_addr_parse(rpc + 6, &a) == 0) {
            cfg->router.rpc = a;
            snprintf(cfg->router.rpc_url, sizeof cfg->router.rpc_url, "tcp://%s", a.text);
        } else {
            got(json_object_get(o, "rpc_listen"), g, sizeof g);
            sched_errs_add(errs, "router.rpc_listen", "expected tcp://HOST:PORT or \"off\" (e.g. "
                           "tcp://127.0.0.1:8001), got %s", g);
        }
    }
    if (get_int(o, "router", "threads", 1, 256, 1, 0, &threads, errs) == 0)
        cfg->router.threads = (int)threads;
    get_token_file(o, "router", dir, &cfg->router.token_file, errs);
}

static void parse_admin(const json_t *root, struct sched_config *cfg, const char *dir,
                        struct sched_errs *errs)
{
    static const char *const keys[] = {"listen", "token_file", NULL};
    const json_t *o = get_obj(root, "admin", errs);
    sched_addr_parse("127.0.0.1:8002", &cfg->admin.listen);
    if (!o)
        return;
    check_keys(o, "admin", keys, errs);
    get_addr(o, "admin", "listen", "127.0.0.1:8002", &cfg->admin.listen, errs);
    get_token_file(o, "admin", dir, &cfg->admin.token_file, errs);
}

static void parse_health(const json_t *root, struct sched_config *cfg, struct sched_errs *errs)
{
    static const char *const keys[] = {"interval_ms", "timeout_ms", "failure_threshold", NULL};
    const json_t *o = get_obj(root, "health", errs);
    long v;
    cfg->health.interval_ms = 500;
    cfg->health.timeout_ms = 500;
    cfg->health.failure_threshold = 3;
    if (!o)
        return;
    check_keys(o, "health", keys, errs);
    get_int(o, "health", "interval_ms", 10, SCHED_MAX_MS, 500, 0, &cfg->health.interval_ms, errs);
    get_int(o, "health", "timeout_ms", 1, SCHED_MAX_MS, 500, 0, &cfg->health.timeout_ms, errs);
    if (get_int(o, "health", "failure_threshold", 1, 1000, 3, 0, &v, errs) == 0)
        cfg->health.failure_threshold = (int)v;
}

static void parse_rollout(const json_t *root, struct sched_config *cfg, struct sched_errs *errs)
{
    static const char *const keys[] = {"max_surge", "drain_timeout_ms", "soak_ms",
                                       "canary_percent", "ready_timeout_ms", NULL};
    const json_t *o = get_obj(root, "rollout", errs);
    long v;
    cfg->rollout.max_surge = 1;
    cfg->rollout.drain_timeout_ms = 30000;
    cfg->rollout.soak_ms = 2000;
    cfg->rollout.canary_percent = 0;
    cfg->rollout.ready_timeout_ms = 300000;
    if (!o)
        return;
    check_keys(o, "rollout", keys, errs);
    /* At least 1: with no surge replica an old one would drain before its successor
     * is ready, and capacity would drop (CONTROL-PLANE.md, invariant 5). */
    if (get_int(o, "rollout", "max_surge", 1, SCHED_MAX_REPLICAS, 1, 0, &v, errs) == 0)
        cfg->rollout.max_surge = (int)v;
    get_int(o, "rollout", "drain_timeout_ms", 0, SCHED_MAX_MS, 30000, 0,
            &cfg->rollout.drain_timeout_ms, errs);
    get_int(o, "rollout", "soak_ms", 0, SCHED_MAX_MS, 2000, 0, &cfg->rollout.soak_ms, errs);
    if (get_int(o, "rollout", "canary_percent", 0, 100, 0, 0, &v, errs) == 0)
        cfg->rollout.canary_percent = (int)v;
    get_int(o, "rollout", "ready_timeout_ms", 1, SCHED_MAX_MS, 300000, 0,
            &cfg->rollout.ready_timeout_ms, errs);
}

/* The characters the replica accepts in a directory name, minus the surprising ones:
 * the name also appears in URLs, metric labels and log lines. */
static int valid_name(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n >= SCHED_NAME_MAX || s[0] == '.' || s[0] == '-')
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-' || c == '.'))
            return 0;
    }
    return 1;
}

/* m->alias through <mdir>/aliases.json into m->version; 1 when it resolved. */
static int resolve_alias(struct sched_model *m, const char *mdir, const char *path,
                         struct sched_errs *errs)
{
    struct model_aliases al;
    struct cerr e = {0};
    char p[128], names[512];
    path_key(p, sizeof p, path, "version");
    if (aliases_load(mdir, &al, &e)) {
        sched_errs_add(errs, p, "%s", e.msg);
        return 0;
    }
    const struct model_alias *a = aliases_find(&al, m->alias);
    if (!a) {
        aliases_names(&al, names, sizeof names);
        sched_errs_add(errs, p, "no alias '%s' in %s/%s (aliases: %s)", m->alias, mdir,
                       ALIASES_FILE, names);
        return 0;
    }
    m->version = a->version;
    return 1;
}

static void parse_model(const json_t *o, size_t idx, struct sched_config *cfg,
                        struct sched_errs *errs)
{
    static const char *const keys[] = {"name", "version", "replicas", "devices", "threads", NULL};
    struct sched_model *m = &cfg->models[idx];
    char path[64], p[128], g[80];
    long v;
    size_t before = sched_errs_count(errs);
    int name_ok = 0, version_ok = 0, threads_ok = 0;

    path_index(path, sizeof path, "models", idx);
    m->threads = 1;
    m->n_devices = 1;
    m->devices[0].kind = SCHED_DEV_CPU;
    m->devices[0].valid = 1;
    if (!json_is_object(o)) {
        got(o, g, sizeof g);
        sched_errs_add(errs, path, "expected an object {name, version, replicas, devices, "
                       "threads}, got %s", g);
        return;
    }
    check_keys(o, path, keys, errs);

    const char *name = get_str(o, path, "name", 1, "a model name", errs);
    path_key(p, sizeof p, path, "name");
    if (name && !valid_name(name)) {
        got(json_object_get(o, "name"), g, sizeof g);
        sched_errs_add(errs, p, "expected a model name of 1 to %d letters, digits, '_', '-' or "
                       "'.' (not starting with '.' or '-'), got %s", SCHED_NAME_MAX - 1, g);
    } else if (name) {
        snprintf(m->name, sizeof m->name, "%s", name);
        name_ok = 1;
        for (size_t j = 0; j < idx; j++)
            if (strcmp(cfg->models[j].name, name) == 0) {
                sched_errs_add(errs, p, "model '%s' is already models[%zu] (a model is listed "
                               "once, with the version that runs)", name, j);
                name_ok = 0;
                break;
            }
    }

    json_t *ver = json_object_get(o, "version");
    path_key(p, sizeof p, path, "version");
    if (!ver) {
        sched_errs_add(errs, p, "missing (expected a positive integer or a version alias)");
    } else if (json_is_string(ver) && !aliases_name_valid(json_string_value(ver))) {
        got(ver, g, sizeof g);
        sched_errs_add(errs, p, "expected a positive integer or a version alias (1 to %d letters, "
                       "digits, '_', '-' or '.', not all digits), got %s", ALIAS_NAME_MAX - 1, g);
    } else if (json_is_string(ver)) {
        /* Resolved below, against the repository's aliases.json. */
        snprintf(m->alias, sizeof m->alias, "%s", json_string_value(ver));
    } else if (get_int(o, path, "version", 1, 999999999L, 0, 1, &v, errs) == 0) {
        m->version = v;
        version_ok = 1;
    }

    if (get_int(o, path, "replicas", 0, SCHED_MAX_REPLICAS, 0, 1, &v, errs) == 0)
        m->replicas = (int)v;
    if (get_int(o, path, "threads", 1, SCHED_MAX_THREADS, 1, 0, &v, errs) == 0) {
        m->threads = (int)v;
        threads_ok = 1;
    }

    json_t *devs = json_object_get(o, "devices");
    path_key(p, sizeof p, path, "devices");
    if (devs && (!json_is_array(devs) || json_array_size(devs) == 0 ||
                 json_array_size(devs) > SCHED_MAX_DEVICES)) {
        got(devs, g, sizeof g);
        sched_errs_add(errs, p, "expected a list of 1 to %d devices (\"cpu\", \"cpu:LO-HI\" or "
                       "\"cuda:N\"), got %s", SCHED_MAX_DEVICES, g);
    } else if (devs) {
        m->n_devices = json_array_size(devs);
        for (size_t i = 0; i < m->n_devices; i++) {
            json_t *d = json_array_get(devs, i);
            char dp[160];
            path_index(dp, sizeof dp, p, i);
            if (!json_is_string(d) || parse_device(json_string_value(d), &m->devices[i])) {
                got(d, g, sizeof g);
                sched_errs_add(errs, dp, "expected \"cpu\", \"cpu:LO-HI\" (LO <= HI <= %d) or "
                               "\"cuda:N\" (N <= %d), got %s", SCHED_MAX_CPU, SCHED_MAX_GPU, g);
                continue;
            }
            const struct sched_device *dv = &m->devices[i];
            if (dv->kind == SCHED_DEV_CPU_FIXED && threads_ok && dv->hi - dv->lo + 1 != m->threads)
                sched_errs_add(errs, dp, "%s has %d core%s but threads is %d (a fixed core set "
                               "must have exactly threads cores)", json_string_value(d),
                               dv->hi - dv->lo + 1, dv->hi == dv->lo ? "" : "s", m->threads);
        }
    }

    /* The model and version must be in the repository now: a typo found when a replica
     * starts would be found only after the cluster began to change. */
    if (name_ok && cfg->model_repository) {
        char *mdir = path_join(cfg->model_repository, m->name);
        char *cj = mdir ? path_join(mdir, "config.json") : NULL;
        char vname[32], *vdir = NULL, *onnx = NULL;
        const char *why;
        if (!cj) {
            errs->oom = 1;
        } else if ((why = file_problem(cj))) {
            path_key(p, sizeof p, path, "name");
            sched_errs_add(errs, p, "no model '%s' in the model repository: %s %s", m->name, cj,
                           why);
        } else if (m->alias[0]) {
            version_ok = resolve_alias(m, mdir, path, errs);
        }
        if (cj && version_ok && !file_problem(cj)) {
            snprintf(vname, sizeof vname, "%ld", m->version);
            vdir = path_join(mdir, vname);
            onnx = vdir ? path_join(vdir, "model.onnx") : NULL;
            if (!onnx)
                errs->oom = 1;
            else if ((why = file_problem(onnx))) {
                path_key(p, sizeof p, path, "version");
                if (m->alias[0])
                    sched_errs_add(errs, p, "alias '%s' names version %ld of model '%s', which "
                                   "is not in the repository: %s %s", m->alias, m->version,
                                   m->name, onnx, why);
                else
                    sched_errs_add(errs, p, "no version %ld of model '%s': %s %s", m->version,
                                   m->name, onnx, why);
            }
        }
        free(onnx);
        free(vdir);
        free(cj);
        free(mdir);
    }
    m->valid = sched_errs_count(errs) == before;
}

static void parse_models(const json_t *root, struct sched_config *cfg, struct sched_errs *errs)
{
    char g[80];
    json_t *ms = json_object_get(root, "models");
    if (!ms) {
        sched_errs_add(errs, "models", "missing (expected a list of {name, version, replicas, "
                       "devices, threads})");
        return;
    }
    if (!json_is_array(ms) || json_array_size(ms) > SCHED_MAX_MODELS) {
        got(ms, g, sizeof g);
        sched_errs_add(errs, "models", "expected a list of at most %d models {name, version, "
                       "replicas, devices, threads}, got %s", SCHED_MAX_MODELS, g);
        return;
    }
    if (json_array_size(ms) == 0)
        return;
    cfg->models = calloc(json_array_size(ms), sizeof *cfg->models);
    if (!cfg->models) {
        errs->oom = 1;
        sched_errs_add(errs, "models", "out of memory");
        return;
    }
    cfg->n_models = json_array_size(ms);
    long total = 0;
    for (size_t i = 0; i < cfg->n_models; i++) {
        parse_model(json_array_get(ms, i), i, cfg, errs);
        total += cfg->models[i].replicas;
    }
    /* One machine, one scheduler: the bound keeps placement and supervision small. */
    if (total > SCHED_MAX_TOTAL_REPLICAS) {
        sched_errs_add(errs, "models", "%ld replicas in all; at most %d", total,
                       SCHED_MAX_TOTAL_REPLICAS);
        for (size_t i = 0; i < cfg->n_models; i++)
            cfg->models[i].valid = 0;
    }
}

static void parse_repository(const json_t *root, struct sched_config *cfg, const char *dir,
                             struct sched_errs *errs)
{
    const char *what = "the path of the model repository directory";
    const char *s = get_str(root, "", "model_repository", 1, what, errs);
    struct stat st;
    char *p = NULL;
    if (!s)
        return;
    if (!s[0]) {
        sched_errs_add(errs, "model_repository", "expected %s, got \"\"", what);
        return;
    }
    if (!(p = resolve(dir, s))) {
        errs->oom = 1;
        return;
    }
    if (stat(p, &st) != 0)
        sched_errs_add(errs, "model_repository", "%s: %s (expected a directory; a relative path "
                       "is resolved against the config file's folder, %s)", p, strerror(errno),
                       dir);
    else if (!S_ISDIR(st.st_mode))
        sched_errs_add(errs, "model_repository", "%s is not a directory", p);
    else
        cfg->model_repository = realpath(p, NULL);
    free(p);
}

/* Two listeners that would bind the same port on the same address (or one of them on
 * every address) cannot both start; say so now rather than when the second fails. */
static int addr_clash(const struct sched_addr *a, const struct sched_addr *b)
{
    static const char *const any[] = {"0.0.0.0", "::", "*", NULL};
    if (a->port == 0 || a->port != b->port)
        return 0;
    if (strcmp(a->host, b->host) == 0)
        return 1;
    for (size_t i = 0; any[i]; i++)
        if (strcmp(a->host, any[i]) == 0 || strcmp(b->host, any[i]) == 0)
            return 1;
    return 0;
}

static void check_clashes(struct sched_config *cfg, struct sched_errs *errs)
{
    if (addr_clash(&cfg->admin.listen, &cfg->router.listen))
        sched_errs_add(errs, "admin.listen", "%s takes the same port as router.listen %s",
                       cfg->admin.listen.text, cfg->router.listen.text);
    if (!cfg->router.rpc_off && addr_clash(&cfg->router.rpc, &cfg->router.listen))
        sched_errs_add(errs, "router.rpc_listen", "%s takes the same port as router.listen %s",
                       cfg->router.rpc_url, cfg->router.listen.text);
    if (!cfg->router.rpc_off && addr_clash(&cfg->router.rpc, &cfg->admin.listen))
        sched_errs_add(errs, "router.rpc_listen", "%s takes the same port as admin.listen %s",
                       cfg->router.rpc_url, cfg->admin.listen.text);
    if (addr_clash(&cfg->router.control, &cfg->router.listen))
        sched_errs_add(errs, "router.control_listen", "%s takes the same port as router.listen "
                       "%s", cfg->router.control.text, cfg->router.listen.text);
    if (!cfg->router.rpc_off && addr_clash(&cfg->router.control, &cfg->router.rpc))
        sched_errs_add(errs, "router.control_listen", "%s takes the same port as "
                       "router.rpc_listen %s", cfg->router.control.text, cfg->router.rpc_url);
    if (addr_clash(&cfg->router.control, &cfg->admin.listen))
        sched_errs_add(errs, "router.control_listen", "%s takes the same port as admin.listen "
                       "%s", cfg->router.control.text, cfg->admin.listen.text);
}

/* ---- entry points ------------------------------------------------------------------ */

int sched_config_parse(const char *text, size_t len, const char *path, struct sched_config *cfg,
                       struct sched_errs *errs)
{
    static const char *const keys[] = {"model_repository", "router", "admin", "health",
                                       "rollout", "models", "oversubscribe", NULL};
    json_t *root = NULL;
    json_error_t jerr;
    char *dir = NULL, g[80];
    size_t before = sched_errs_count(errs);

    memset(cfg, 0, sizeof *cfg);
    if (path[0] == '/') {
        cfg->path = strdup(path);
    } else {
        char cwd[PATH_MAX];
        if (!getcwd(cwd, sizeof cwd)) {
            sched_errs_add(errs, path, "cannot tell the current directory: %s", strerror(errno));
            goto fail;
        }
        cfg->path = path_join(cwd, path);
    }
    if (!cfg->path || !(dir = strdup(cfg->path))) {
        errs->oom = 1;
        sched_errs_add(errs, path, "out of memory");
        goto fail;
    }
    *strrchr(dir, '/') = '\0';
    if (!dir[0])
        strcpy(dir, "/");

    /* Defaults first, so that a file that stops early still leaves a usable struct. */
    parse_router(NULL, cfg, dir, errs);
    sched_addr_parse("127.0.0.1:8002", &cfg->admin.listen);
    parse_health(NULL, cfg, errs);
    parse_rollout(NULL, cfg, errs);

    root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        sched_errs_add(errs, cfg->path, "line %d, column %d: %s", jerr.line, jerr.column,
                       jerr.text);
        goto fail;
    }
    if (!json_is_object(root)) {
        got(root, g, sizeof g);
        sched_errs_add(errs, cfg->path, "expected a JSON object {model_repository, router, "
                       "admin, health, rollout, models, oversubscribe}, got %s", g);
        goto fail;
    }
    check_keys(root, "", keys, errs);
    parse_repository(root, cfg, dir, errs);
    parse_router(root, cfg, dir, errs);
    parse_admin(root, cfg, dir, errs);
    parse_health(root, cfg, errs);
    parse_rollout(root, cfg, errs);
    json_t *ov = json_object_get(root, "oversubscribe");
    if (ov && !json_is_boolean(ov)) {
        got(ov, g, sizeof g);
        sched_errs_add(errs, "oversubscribe", "expected true or false, got %s", g);
    } else if (ov) {
        cfg->oversubscribe = json_is_true(ov);
    }
    parse_models(root, cfg, errs);
    check_clashes(cfg, errs);

fail:
    json_decref(root);
    free(dir);
    if (errs->oom)
        return CORRAL_ENOMEM;
    return sched_errs_count(errs) == before ? CORRAL_OK : CORRAL_EINVAL;
}

int sched_config_load(const char *path, struct sched_config *cfg, struct sched_errs *errs)
{
    int rc;
    char *buf = NULL, *abs = NULL;
    size_t n = 0;
    FILE *f = NULL;
    struct stat st;

    memset(cfg, 0, sizeof *cfg);
    /* Reading at most one byte past the limit keeps the bound even if the file grows
     * between the stat and the read. */
    if (!(f = fopen(path, "rb")) || fstat(fileno(f), &st) != 0) {
        sched_errs_add(errs, path, "cannot read the config: %s", strerror(errno));
        rc = CORRAL_EIO;
        goto fail;
    }
    if (!S_ISREG(st.st_mode)) {
        sched_errs_add(errs, path, "cannot read the config: not a regular file");
        rc = CORRAL_EIO;
        goto fail;
    }
    if (!(buf = malloc(SCHED_CONFIG_MAX_BYTES + 1))) {
        sched_errs_add(errs, path, "out of memory");
        rc = CORRAL_ENOMEM;
        goto fail;
    }
    n = fread(buf, 1, SCHED_CONFIG_MAX_BYTES + 1, f);
    if (ferror(f)) {
        sched_errs_add(errs, path, "cannot read the config: %s", strerror(errno));
        rc = CORRAL_EIO;
        goto fail;
    }
    if (n > SCHED_CONFIG_MAX_BYTES) {
        sched_errs_add(errs, path, "the config is over %d bytes", SCHED_CONFIG_MAX_BYTES);
        rc = CORRAL_ETOOLARGE;
        goto fail;
    }
    /* The real path, so that the folder relative paths resolve against is the file's
     * own even when it was named through a symlink or from another directory. */
    abs = realpath(path, NULL);
    rc = sched_config_parse(buf, n, abs ? abs : path, cfg, errs);
fail:
    if (f)
        fclose(f);
    free(buf);
    free(abs);
    return rc;
}

void sched_config_free(struct sched_config *cfg)
{
    free(cfg->path);
    free(cfg->model_repository);
    free(cfg->admin.token_file);
    free(cfg->router.token_file);
    free(cfg->models);
    memset(cfg, 0, sizeof *cfg);
}
