#include "dns.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hostport.h"
#include "log.h"

#define ADDR_MAX 64 /* an address as text, "[v6]" included */

struct dns_watch {
    struct dns *d;
    char model[MEMBER_MODEL_MAX];
    char url[MEMBER_SOURCE_MAX];    /* dns://HOST:PORT as given */
    char source[MEMBER_SOURCE_MAX]; /* NAME=dns://HOST:PORT: the table entries' source */
    char host[256];
    int port;
    uv_getaddrinfo_t req;
    int busy;                 /* a lookup is in flight */
    int resolved;             /* a resolution succeeded at least once */
    char error[CERR_MSG_MAX]; /* the failure last logged; "" while resolving works */
    size_t skipped;           /* addresses left to another source, last logged */
    int truncated;            /* more than DNS_MAX_ADDRS, logged */
    char (*addrs)[ADDR_MAX];  /* the last good set, sorted */
    size_t n_addrs;
};

struct dns {
    uv_loop_t *loop;
    struct membership *table;
    unsigned refresh_ms;
    void (*changed)(void *arg);
    void *arg;
    struct dns_watch *w;
    size_t n;
    uv_timer_t timer;
    int timer_open;  /* dns_start ran: the timer must be closed */
    int closing;
    unsigned pending; /* lookups in flight and the timer's close, before the free */
};

int dns_parse_url(const char *url, char *host, size_t hl, int *port, struct cerr *e)
{
    if (!url || strncmp(url, "dns://", 6) != 0)
        return cerr_set(e, CORRAL_EINVAL, "'%s' is not dns://HOST:PORT", url ? url : "");
    if (strlen(url) >= MEMBER_SOURCE_MAX - MEMBER_MODEL_MAX)
        return cerr_set(e, CORRAL_EINVAL, "'%.40s...' is longer than %d bytes", url,
                        MEMBER_SOURCE_MAX - MEMBER_MODEL_MAX - 1);
    if (hostport_parse(url + 6, host, hl, port) || *port == 0)
        return cerr_set(e, CORRAL_EINVAL, "'%s' is not dns://HOST:PORT with a port from 1 to "
                        "65535 (e.g. dns://digits.default.svc.cluster.local:9101)", url);
    return CORRAL_OK;
}

/* The address part of a replica URL: A.B.C.D or [V6]. */
static int addr_text(const struct sockaddr *sa, char *out, size_t len)
{
    char a[INET6_ADDRSTRLEN];
    if (sa->sa_family == AF_INET) {
        if (!inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, a, sizeof a))
            return -1;
        return (size_t)snprintf(out, len, "%s", a) < len ? 0 : -1;
    }
    if (sa->sa_family == AF_INET6) {
        if (!inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, a, sizeof a))
            return -1;
        return (size_t)snprintf(out, len, "[%s]", a) < len ? 0 : -1;
    }
    return -1;
}

int dns_replica_url(const struct sockaddr *sa, int port, char *out, size_t len)
{
    char a[ADDR_MAX];
    if (addr_text(sa, a, sizeof a))
        return -1;
    int n = snprintf(out, len, "tcp://%s:%d", a, port);
    return n > 0 && (size_t)n < len ? 0 : -1;
}

int dns_new(struct dns **out, uv_loop_t *loop, struct membership *table, unsigned refresh_ms,
            void (*changed)(void *arg), void *arg, struct cerr *e)
{
    struct dns *d = calloc(1, sizeof *d);
    if (!d)
        return cerr_set(e, CORRAL_ENOMEM, "out of memory");
    d->loop = loop;
    d->table = table;
    d->refresh_ms = refresh_ms ? refresh_ms : 5000;
    d->changed = changed;
    d->arg = arg;
    *out = d;
    return CORRAL_OK;
}

int dns_watch(struct dns *d, const char *model, const char *url, struct cerr *e)
{
    char host[256];
    int port = 0, rc;
    if ((rc = dns_parse_url(url, host, sizeof host, &port, e)))
        return rc;
    if (strlen(model) >= MEMBER_MODEL_MAX)
        return cerr_set(e, CORRAL_EINVAL, "model name '%.40s...' is too long", model);
    for (size_t i = 0; i < d->n; i++)
        if (strcmp(d->w[i].model, model) == 0 && strcmp(d->w[i].url, url) == 0)
            return cerr_set(e, CORRAL_EINVAL, "%s=%s is given twice", model, url);
    /* The lookups point into the array, so it never moves once they may run. */
    if (d->timer_open)
        return cerr_set(e, CORRAL_EINVAL, "watches are added before dns_start");
    struct dns_watch *nw = realloc(d->w, (d->n + 1) * sizeof *nw);
    if (!nw)
        return cerr_set(e, CORRAL_ENOMEM, "out of memory");
    d->w = nw;
    struct dns_watch *w = &d->w[d->n++];
    memset(w, 0, sizeof *w);
    w->d = d;
    w->port = port;
    snprintf(w->model, sizeof w->model, "%s", model);
    snprintf(w->url, sizeof w->url, "%s", url);
    snprintf(w->source, sizeof w->source, "%s=%s", model, url);
    snprintf(w->host, sizeof w->host, "%s", host);
    return CORRAL_OK;
}

static int cmp_addr(const void *a, const void *b) { return strcmp(a, b); }

/* A failed lookup: the set stays as it was; said once per distinct failure. */
static void failed(struct dns_watch *w, const char *why)
{
    if (strcmp(w->error, why) == 0)
        return;
    snprintf(w->error, sizeof w->error, "%s", why);
    LOG_WARN("--replica %s: cannot resolve %s: %s; keeping the %zu address%s it had (retried "
             "every %u ms, logged again when this changes)", w->source, w->host, why, w->n_addrs,
             w->n_addrs == 1 ? "" : "es", w->d->refresh_ms);
}

/* Logs the addresses of `a` (n) that are not in `b` (m), both sorted. */
static void log_diff(const struct dns_watch *w, char (*a)[ADDR_MAX], size_t n,
                     char (*b)[ADDR_MAX], size_t m, const char *what)
{
    char list[512];
    size_t off = 0, count = 0;
    list[0] = '\0';
    for (size_t i = 0; i < n; i++) {
        if (m && bsearch(a[i], b, m, ADDR_MAX, cmp_addr))
            continue;
        count++;
        if (off < sizeof list - 1) {
            int k = snprintf(list + off, sizeof list - off, "%s%s", off ? ", " : "", a[i]);
            off = k < 0 || (size_t)k >= sizeof list - off ? sizeof list - 1 : off + (size_t)k;
        }
    }
    if (count)
        LOG_INFO("--replica %s: %zu address%s %s: %s", w->source, count, count == 1 ? "" : "es",
                 what, list);
}

/* Brings the table in line with one successful answer. */
static void resolved(struct dns_watch *w, const struct addrinfo *res)
{
    struct dns *d = w->d;
    char (*now)[ADDR_MAX] = calloc(DNS_MAX_ADDRS, ADDR_MAX);
    char (*urls)[MEMBER_URL_MAX] = calloc(DNS_MAX_ADDRS, MEMBER_URL_MAX);
    const char **up = calloc(DNS_MAX_ADDRS, sizeof *up);
    size_t n = 0, more = 0;
    if (!now || !urls || !up) {
        failed(w, "out of memory");
        goto out;
    }
    for (const struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        char a[ADDR_MAX];
        if (addr_text(ai->ai_addr, a, sizeof a))
            continue;
        int dup = 0;
        for (size_t i = 0; i < n && !dup; i++)
            dup = strcmp(now[i], a) == 0;
        if (dup)
            continue;
        if (n == DNS_MAX_ADDRS) {
            more++;
            continue;
        }
        memcpy(now[n++], a, sizeof a);
    }
    if (!n) {
        failed(w, "the answer holds no IPv4 or IPv6 address");
        goto out;
    }
    if (more && !w->truncated)
        LOG_WARN("--replica %s: %s has more than %d addresses; %zu are ignored", w->source,
                 w->host, DNS_MAX_ADDRS, more);
    w->truncated = more > 0;
    qsort(now, n, ADDR_MAX, cmp_addr);
    for (size_t i = 0; i < n; i++) {
        snprintf(urls[i], MEMBER_URL_MAX, "tcp://%s:%d", now[i], w->port);
        up[i] = urls[i];
    }
    int changed = 0;
    size_t skipped = 0;
    uint64_t g = 0;
    struct cerr e = {0};
    if (membership_sync_source(d->table, w->source, w->model, (const char *const *)up, n,
                               &changed, &skipped, &g, &e)) {
        failed(w, e.msg);
        goto out;
    }
    if (w->error[0])
        LOG_INFO("--replica %s: %s resolves again", w->source, w->host);
    w->error[0] = '\0';
    if (!w->resolved)
        LOG_INFO("--replica %s: %s has %zu address%s", w->source, w->host, n,
                 n == 1 ? "" : "es");
    else {
        log_diff(w, now, n, w->addrs, w->n_addrs, "appeared: added to the replica table, "
                 "taking traffic once each says ready");
        log_diff(w, w->addrs, w->n_addrs, now, n, "gone: draining (no new requests, those in "
                 "flight answered), then removed at the next refresh");
    }
    if (skipped != w->skipped && skipped)
        LOG_WARN("--replica %s: %zu of its addresses are in the replica table already from "
                 "--replica or the control endpoint, and are left to them", w->source, skipped);
    w->skipped = skipped;
    w->resolved = 1;
    free(w->addrs);
    w->addrs = now;
    w->n_addrs = n;
    now = NULL;
    if (changed && d->changed)
        d->changed(d->arg);
out:
    free(now);
    free(urls);
    free(up);
}

static const struct addrinfo lookup_hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};

void dns_resolve_now(struct dns *d)
{
    for (size_t i = 0; i < d->n; i++) {
        struct dns_watch *w = &d->w[i];
        uv_getaddrinfo_t req;
        memset(&req, 0, sizeof req);
        /* Without a callback libuv resolves on this thread: no loop runs yet. */
        int rc = uv_getaddrinfo(d->loop, &req, NULL, w->host, NULL, &lookup_hints);
        if (rc) {
            failed(w, uv_strerror(rc));
            continue;
        }
        resolved(w, req.addrinfo);
        uv_freeaddrinfo(req.addrinfo);
    }
}

static void release(struct dns *d)
{
    if (--d->pending)
        return;
    for (size_t i = 0; i < d->n; i++)
        free(d->w[i].addrs);
    free(d->w);
    free(d);
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    struct dns_watch *w = req->data;
    struct dns *d = w->d;
    w->busy = 0;
    if (d->closing) {
        uv_freeaddrinfo(res);
        release(d);
        return;
    }
    if (status)
        failed(w, uv_strerror(status));
    else
        resolved(w, res);
    uv_freeaddrinfo(res);
}

static void on_tick(uv_timer_t *t)
{
    struct dns *d = t->data;
    for (size_t i = 0; i < d->n; i++) {
        struct dns_watch *w = &d->w[i];
        if (w->busy)
            continue; /* a slow resolver: this refresh is skipped */
        w->req.data = w;
        int rc = uv_getaddrinfo(d->loop, &w->req, on_resolved, w->host, NULL, &lookup_hints);
        if (rc) {
            failed(w, uv_strerror(rc));
            continue;
        }
        w->busy = 1;
    }
}

void dns_start(struct dns *d)
{
    if (!d || d->timer_open || !d->n)
        return;
    uv_timer_init(d->loop, &d->timer);
    d->timer.data = d;
    d->timer_open = 1;
    uv_timer_start(&d->timer, on_tick, d->refresh_ms, d->refresh_ms);
}

static void on_timer_closed(uv_handle_t *h)
{
    release(h->data);
}

void dns_close(struct dns *d)
{
    if (!d)
        return;
    d->closing = 1;
    d->pending = 1; /* this call's own, dropped at the end */
    for (size_t i = 0; i < d->n; i++) {
        if (!d->w[i].busy)
            continue;
        /* A lookup already running cannot be stopped: it completes on the pool and
         * on_resolved drops its answer. */
        uv_cancel((uv_req_t *)&d->w[i].req);
        d->pending++;
    }
    if (d->timer_open) {
        d->pending++;
        uv_close((uv_handle_t *)&d->timer, on_timer_closed);
    }
    release(d);
}
