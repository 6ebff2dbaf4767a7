#include "scrape.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "hostport.h"
#include "httphead.h"
#include "log.h"

/* Kinds of failure, each logged once until a scrape succeeds. */
enum {
    W_URL = 1u << 0,
    W_CONNECT = 1u << 1,
    W_DEADLINE = 1u << 2,
    W_BIG = 1u << 3,
    W_ANSWER = 1u << 4,
    W_OOM = 1u << 5,
    W_SKIPPED = 1u << 6, /* kept across successes: one line per scheduler is enough */
};

#define WARN_ONCE(sc, kind, ...)                                                              \
    do {                                                                                      \
        if (!((sc)->warned & (kind))) {                                                       \
            (sc)->warned |= (kind);                                                           \
            LOG_WARN(__VA_ARGS__);                                                            \
        }                                                                                     \
    } while (0)

static const char k_requests[] = "corral_router_requests_total";
static const char k_buckets[] = "corral_router_request_duration_seconds_bucket";

/* ---- the parser ---------------------------------------------------------------------- */

void sched_scrape_sample_free(struct sched_scrape_sample *s)
{
    free(s->m);
    memset(s, 0, sizeof *s);
}

enum { LINE_OK, LINE_SKIP, LINE_IGNORE, LINE_OOM };

static struct sched_scrape_model *model_get(struct sched_scrape_sample *s, const char *name,
                                            size_t *hint, int *oom)
{
    /* The router writes each model's lines together: the last one found is the likely one. */
    if (*hint < s->n && strcmp(s->m[*hint].name, name) == 0)
        return &s->m[*hint];
    for (size_t i = 0; i < s->n; i++)
        if (strcmp(s->m[i].name, name) == 0) {
            *hint = i;
            return &s->m[i];
        }
    if (s->n >= SCHED_SCRAPE_MODELS_MAX) {
        s->skipped_models++;
        return NULL;
    }
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 4;
        if (cap > SCHED_SCRAPE_MODELS_MAX)
            cap = SCHED_SCRAPE_MODELS_MAX;
        struct sched_scrape_model *m = realloc(s->m, cap * sizeof *m);
        if (!m) {
            *oom = 1;
            return NULL;
        }
        s->m = m;
        s->cap = cap;
    }
    struct sched_scrape_model *m = &s->m[s->n];
    memset(m, 0, sizeof *m);
    snprintf(m->name, sizeof m->name, "%s", name);
    *hint = s->n++;
    return m;
}

/* A sample value: a finite number in [0, SCHED_SCRAPE_VALUE_MAX], written whole. */
static int number(const char *p, size_t n, double *out)
{
    char buf[64];
    if (n == 0 || n >= sizeof buf)
        return -1;
    memcpy(buf, p, n);
    buf[n] = '\0';
    char *end = NULL;
    double v = strtod(buf, &end);
    if (end != buf + n || !isfinite(v) || v < 0 || v > SCHED_SCRAPE_VALUE_MAX)
        return -1;
    *out = v;
    return 0;
}

/* One line of a family we read, from its '{' (p[0]) to the end of the line (n bytes,
 * no newline): {LABEL="VALUE",...} VALUE [TIMESTAMP]. Every index is checked against
 * n: the text is another process's output. */
static int parse_line(const char *p, size_t n, int bucket, struct sched_scrape_sample *s,
                      size_t *hint)
{
    char model[SCHED_NAME_MAX] = "";
    int has_model = 0, has_le = 0;
    double le = 0, v;
    size_t k = 1;

    for (;;) {
        if (k >= n)
            return LINE_SKIP; /* no closing brace */
        if (p[k] == '}') {
            k++;
            break;
        }
        size_t ns = k;
        while (k < n && (p[k] == '_' || (p[k] >= 'a' && p[k] <= 'z') ||
                         (p[k] >= 'A' && p[k] <= 'Z') || (k > ns && p[k] >= '0' && p[k] <= '9')))
            k++;
        size_t nlen = k - ns;
        if (nlen == 0 || k + 1 >= n || p[k] != '=' || p[k + 1] != '"')
            return LINE_SKIP;
        k += 2;
        char val[SCHED_NAME_MAX];
        size_t vl = 0;
        int too_long = 0;
        for (;;) {
            if (k >= n)
                return LINE_SKIP; /* unterminated label value */
            char c = p[k++];
            if (c == '"')
                break;
            if (c == '\\') {
                if (k >= n)
                    return LINE_SKIP;
                c = p[k++];
                if (c == 'n')
                    c = '\n';
                else if (c != '\\' && c != '"')
                    return LINE_SKIP;
            }
            if (vl + 1 < sizeof val)
                val[vl++] = c;
            else
                too_long = 1;
        }
        val[vl] = '\0';
        if (nlen == 5 && memcmp(p + ns, "model", 5) == 0) {
            if (has_model || too_long || memchr(val, '\0', vl))
                return LINE_SKIP;
            memcpy(model, val, vl + 1);
            has_model = 1;
        } else if (bucket && nlen == 2 && memcmp(p + ns, "le", 2) == 0) {
            if (has_le || too_long)
                return LINE_SKIP;
            if (strcmp(val, "+Inf") == 0) {
                le = INFINITY;
            } else {
                char *end = NULL;
                le = strtod(val, &end);
                if (vl == 0 || end != val + vl || !isfinite(le) || le < 0)
                    return LINE_SKIP;
            }
            has_le = 1;
        }
        if (k < n && p[k] == ',')
            k++;
        else if (k >= n || p[k] != '}')
            return LINE_SKIP;
    }
    if (k >= n || p[k] != ' ')
        return LINE_SKIP;
    while (k < n && p[k] == ' ')
        k++;
    size_t vs = k;
    while (k < n && p[k] != ' ' && p[k] != '\t')
        k++;
    if (number(p + vs, k - vs, &v))
        return LINE_SKIP;
    /* An optional timestamp (integer milliseconds), then nothing but blanks. */
    while (k < n && (p[k] == ' ' || p[k] == '\t'))
        k++;
    if (k < n && p[k] == '-')
        k++;
    while (k < n && p[k] >= '0' && p[k] <= '9')
        k++;
    while (k < n && (p[k] == ' ' || p[k] == '\t'))
        k++;
    if (k != n || !has_model || (bucket && !has_le))
        return LINE_SKIP;
    if (!model[0])
        return LINE_IGNORE; /* the router counts unknown model names under model="" */

    int oom = 0;
    struct sched_scrape_model *m = model_get(s, model, hint, &oom);
    if (!m)
        return oom ? LINE_OOM : LINE_IGNORE;
    if (!bucket) {
        m->requests += v;
        return LINE_OK;
    }
    size_t i = 0;
    while (i < m->n_le && m->le[i] < le)
        i++;
    if (i < m->n_le && m->le[i] == le) {
        m->cum[i] += v;
        return LINE_OK;
    }
    if (m->n_le >= SCHED_SCRAPE_BUCKETS_MAX) {
        s->skipped_buckets++;
        return LINE_IGNORE;
    }
    memmove(&m->le[i + 1], &m->le[i], (m->n_le - i) * sizeof *m->le);
    memmove(&m->cum[i + 1], &m->cum[i], (m->n_le - i) * sizeof *m->cum);
    m->le[i] = le;
    m->cum[i] = v;
    m->n_le++;
    return LINE_OK;
}

int sched_scrape_parse(const char *text, size_t len, struct sched_scrape_sample *out)
{
    size_t hint = 0;
    out->n = 0;
    out->skipped_lines = out->skipped_models = out->skipped_buckets = 0;
    for (size_t i = 0; i < len;) {
        const char *line = text + i;
        const char *nl = memchr(line, '\n', len - i);
        size_t ll = nl ? (size_t)(nl - line) : len - i;
        i += ll + (nl ? 1 : 0);
        if (ll > SCHED_SCRAPE_LINE_MAX) {
            out->skipped_lines++;
            continue;
        }
        if (ll && line[ll - 1] == '\r')
            ll--;
        size_t name;
        int bucket;
        if (ll > sizeof k_requests - 1 && memcmp(line, k_requests, sizeof k_requests - 1) == 0 &&
            line[sizeof k_requests - 1] == '{') {
            name = sizeof k_requests - 1;
            bucket = 0;
        } else if (ll > sizeof k_buckets - 1 &&
                   memcmp(line, k_buckets, sizeof k_buckets - 1) == 0 &&
                   line[sizeof k_buckets - 1] == '{') {
            name = sizeof k_buckets - 1;
            bucket = 1;
        } else {
            continue; /* comments, blank lines and the families we do not read */
        }
        int r = parse_line(line + name, ll - name, bucket, out, &hint);
        if (r == LINE_OOM)
            return -1;
        if (r == LINE_SKIP)
            out->skipped_lines++;
    }
    return 0;
}

/* ---- the arithmetic ------------------------------------------------------------------ */

int sched_scrape_quantile(const double *le, const double *d, size_t n, double q, double *out)
{
    if (n == 0 || !(q > 0 && q < 1))
        return -1;
    /* Cumulative counts never go down; a hostile or torn text may say they do, so the
     * running maximum stands for them. */
    double total = 0;
    for (size_t i = 0; i < n; i++)
        if (d[i] > total)
            total = d[i];
    if (!(total > 0))
        return -1;
    double rank = q * total, below = 0;
    for (size_t i = 0; i < n; i++) {
        double c = d[i] > below ? d[i] : below;
        if (c >= rank) {
            if (isinf(le[i])) {
                /* Beyond the highest finite bound: that bound is all that is known. */
                if (i == 0)
                    return -1;
                *out = le[i - 1];
                return 0;
            }
            double lo = i ? le[i - 1] : 0;
            *out = lo + (le[i] - lo) * (rank - below) / (c - below);
            return 0;
        }
        below = c;
    }
    return -1;
}

static const struct sched_scrape_model *model_find(const struct sched_scrape_sample *s,
                                                   const char *name)
{
    for (size_t i = 0; i < s->n; i++)
        if (strcmp(s->m[i].name, name) == 0)
            return &s->m[i];
    return NULL;
}

static double model_total(const struct sched_scrape_model *m)
{
    double t = 0;
    for (size_t i = 0; m && i < m->n_le; i++)
        if (m->cum[i] > t)
            t = m->cum[i];
    return t;
}

json_t *sched_scrape_traffic(const struct sched_scrape *sc, const char *model)
{
    if (sc->n_samples < 2)
        return json_null();
    const struct sched_scrape_sample *a = &sc->s[0], *b = &sc->s[1];
    double w = (double)(b->t_ms - a->t_ms) / 1000.0;
    if (!(w > 0))
        return json_null();
    const struct sched_scrape_model *ma = model_find(a, model), *mb = model_find(b, model);
    double ra = ma ? ma->requests : 0, rb = mb ? mb->requests : 0;
    /* A counter that went down belongs to a restarted router: it counts from zero. */
    double dr = rb >= ra ? rb - ra : rb;
    json_t *p99 = NULL;
    if (mb && mb->n_le) {
        double d[SCHED_SCRAPE_BUCKETS_MAX], q;
        int reset = model_total(mb) < model_total(ma);
        for (size_t j = 0; j < mb->n_le; j++) {
            double prev = 0;
            for (size_t k = 0; !reset && ma && k < ma->n_le; k++)
                if (ma->le[k] == mb->le[j])
                    prev = ma->cum[k];
            d[j] = mb->cum[j] > prev ? mb->cum[j] - prev : 0;
        }
        if (sched_scrape_quantile(mb->le, d, mb->n_le, 0.99, &q) == 0)
            p99 = json_real(q * 1000.0);
    }
    return json_pack("{s:f, s:o, s:f}", "rate_rps", dr / w, "p99_ms", p99 ? p99 : json_null(),
                     "window_s", w);
}

/* ---- the client ---------------------------------------------------------------------- */

void sched_scrape_init(struct sched_scrape *sc)
{
    memset(sc, 0, sizeof *sc);
    sc->fd = -1;
    /* Never wanted: far enough in the past to be idle at any `now`. */
    sc->wanted_ms = LONG_MIN / 2;
}

static void drop(struct sched_scrape *sc)
{
    if (sc->fd >= 0)
        close(sc->fd);
    sc->fd = -1;
    free(sc->in);
    sc->in = NULL;
    sc->in_len = sc->in_cap = 0;
}

void sched_scrape_free(struct sched_scrape *sc)
{
    drop(sc);
    sched_scrape_sample_free(&sc->s[0]);
    sched_scrape_sample_free(&sc->s[1]);
    sc->n_samples = 0;
}

void sched_scrape_wanted(struct sched_scrape *sc, long now)
{
    sc->wanted_ms = now;
}

static int idle(const struct sched_scrape *sc, long now)
{
    return now - sc->wanted_ms > SCHED_SCRAPE_IDLE_MS;
}

int sched_scrape_due(const struct sched_scrape *sc, long now)
{
    return !idle(sc, now) && sc->fd < 0 && now >= sc->next_ms;
}

/* "http://HOST:PORT" as sup_status writes it: the host may be "[v6]", or a bare IPv6
 * address whose last colon starts the port. */
static int url_split(const char *url, char *host, size_t hl, int *port)
{
    if (strncmp(url, "http://", 7) != 0)
        return -1;
    const char *hp = url + 7;
    if (hp[0] == '[')
        return hostport_parse(hp, host, hl, port) || *port <= 0 ? -1 : 0;
    const char *colon = strrchr(hp, ':');
    if (!colon || colon == hp || (size_t)(colon - hp) >= hl || !colon[1] || strlen(colon) > 6)
        return -1;
    int p = 0;
    for (const char *c = colon + 1; *c; c++) {
        if (*c < '0' || *c > '9')
            return -1;
        p = p * 10 + (*c - '0');
    }
    if (p <= 0 || p > 65535)
        return -1;
    memcpy(host, hp, (size_t)(colon - hp));
    host[colon - hp] = '\0';
    *port = p;
    return 0;
}

void sched_scrape_start(struct sched_scrape *sc, const char *url, long now)
{
    sc->next_ms = now + SCHED_SCRAPE_EVERY_MS;
    if (sc->fd >= 0 || !url)
        return;
    char host[SCHED_HOST_MAX];
    int port = 0;
    if (url_split(url, host, sizeof host, &port)) {
        WARN_ONCE(sc, W_URL, "admin: cannot scrape the router's metrics: '%.300s' is not "
                             "http://HOST:PORT", url);
        return;
    }
    /* Only numeric addresses are dialled: a name lookup could block the loop. A wildcard
     * listener answers on loopback. */
    const char *dial = host;
    if (strcmp(host, "localhost") == 0 || strcmp(host, "0.0.0.0") == 0 || strcmp(host, "*") == 0)
        dial = "127.0.0.1";
    else if (strcmp(host, "::") == 0)
        dial = "::1";
    char ports[16];
    snprintf(ports, sizeof ports, "%d", port);
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
    int g = getaddrinfo(dial, ports, &hints, &res);
    if (g != 0 || !res) {
        WARN_ONCE(sc, W_URL, "admin: cannot scrape the router's metrics at %s: the host must "
                             "be an IP address or localhost (%s)", url, gai_strerror(g));
        return;
    }
    int fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int rc = fd < 0 ? -1 : connect(fd, res->ai_addr, res->ai_addrlen);
    int err = errno;
    freeaddrinfo(res);
    if (fd < 0 || (rc != 0 && err != EINPROGRESS)) {
        WARN_ONCE(sc, W_CONNECT, "admin: cannot scrape the router's metrics at %s: %s", url,
                  strerror(err));
        if (fd >= 0)
            close(fd);
        return;
    }
    sc->fd = fd;
    sc->connected = rc == 0;
    sc->deadline_ms = now + SCHED_SCRAPE_DEADLINE_MS;
    snprintf(sc->host, sizeof sc->host, "%s", host);
    sc->port = port;
    int n = snprintf(sc->req, sizeof sc->req,
                     "GET /metrics HTTP/1.1\r\nHost: %s%s%s:%d\r\nUser-Agent: corral-scheduler\r\n"
                     "Accept: text/plain\r\nConnection: close\r\n\r\n",
                     strchr(host, ':') ? "[" : "", host, strchr(host, ':') ? "]" : "", port);
    sc->req_len = n > 0 && (size_t)n < sizeof sc->req ? (size_t)n : 0;
    sc->req_off = 0;
    sc->in_len = 0;
    sc->head_len = 0;
    sc->content_length = -1;
}

int sched_scrape_pollfd(const struct sched_scrape *sc, struct pollfd *p)
{
    if (sc->fd < 0)
        return 0;
    p->fd = sc->fd;
    p->events = sc->connected && sc->req_off == sc->req_len ? POLLIN : POLLOUT;
    p->revents = 0;
    return 1;
}

/* The head is complete: 200, no chunking, a Content-Length within the limit. */
static int head_check(struct sched_scrape *sc)
{
    char v[64];
    if (sc->head_len < 12 || strncmp(sc->in, "HTTP/1.", 7) != 0 || sc->in[8] != ' ' ||
        strncmp(sc->in + 9, "200", 3) != 0) {
        size_t i = 0;
        for (; i < sizeof v - 1 && i < sc->head_len && sc->in[i] != '\r'; i++)
            v[i] = sc->in[i] >= ' ' && sc->in[i] < 0x7f ? sc->in[i] : '?';
        v[i] = '\0';
        WARN_ONCE(sc, W_ANSWER, "admin: the router's GET /metrics at %s:%d answered '%s' "
                                "instead of 200; scrape dropped", sc->host, sc->port, v);
        return -1;
    }
    if (httphead_get(sc->in, sc->head_len, "Transfer-Encoding", v, sizeof v) == 0) {
        WARN_ONCE(sc, W_ANSWER, "admin: the router's GET /metrics at %s:%d answered with "
                                "Transfer-Encoding %s, which this scraper does not read; "
                                "scrape dropped", sc->host, sc->port, v);
        return -1;
    }
    if (httphead_get(sc->in, sc->head_len, "Content-Length", v, sizeof v) == 0) {
        char *end = NULL;
        errno = 0;
        unsigned long long cl = strtoull(v, &end, 10);
        if (errno || end == v || *end || v[0] == '-') {
            WARN_ONCE(sc, W_ANSWER, "admin: the router's GET /metrics at %s:%d has a "
                                    "Content-Length of '%s'; scrape dropped", sc->host, sc->port,
                      v);
            return -1;
        }
        if (cl > SCHED_SCRAPE_MAX_BYTES) {
            WARN_ONCE(sc, W_BIG, "admin: the router's GET /metrics at %s:%d is %llu bytes, "
                                 "over the scraper's limit of %u; scrape dropped", sc->host,
                      sc->port, cl, SCHED_SCRAPE_MAX_BYTES);
            return -1;
        }
        sc->content_length = (long long)cl;
    }
    return 0;
}

/* The answer is whole (or the router closed): the body becomes the newest sample. */
static void finish(struct sched_scrape *sc, long now)
{
    size_t body = sc->in_len - sc->head_len;
    if (sc->content_length >= 0) {
        if (body < (size_t)sc->content_length) {
            WARN_ONCE(sc, W_ANSWER, "admin: the router's GET /metrics at %s:%d closed after "
                                    "%zu of %lld bytes; scrape dropped", sc->host, sc->port,
                      body, sc->content_length);
            drop(sc);
            return;
        }
        body = (size_t)sc->content_length;
    }
    /* Parsed into the older sample's memory, then swapped in as the newest. */
    struct sched_scrape_sample *t = &sc->s[0];
    if (sched_scrape_parse(sc->in + sc->head_len, body, t)) {
        WARN_ONCE(sc, W_OOM, "admin: out of memory parsing the router's metrics; scrape "
                             "dropped");
        if (sc->n_samples > 1)
            sc->n_samples = 1;
        drop(sc);
        return;
    }
    t->t_ms = now;
    struct sched_scrape_sample newest = *t;
    sc->s[0] = sc->s[1];
    sc->s[1] = newest;
    if (sc->n_samples < 2)
        sc->n_samples++;
    if (newest.skipped_lines || newest.skipped_models || newest.skipped_buckets)
        WARN_ONCE(sc, W_SKIPPED, "admin: the router's metrics at %s:%d: skipped %zu malformed "
                                 "or over-long lines, %zu models beyond %d, %zu buckets beyond "
                                 "%d (logged once)", sc->host, sc->port, newest.skipped_lines,
                  newest.skipped_models, SCHED_SCRAPE_MODELS_MAX, newest.skipped_buckets,
                  SCHED_SCRAPE_BUCKETS_MAX);
    sc->warned &= W_SKIPPED;
    drop(sc);
}

void sched_scrape_step(struct sched_scrape *sc, long now)
{
    if (idle(sc, now) && sc->n_samples) {
        /* Nobody looks: what is kept would only describe a stale window. */
        sched_scrape_sample_free(&sc->s[0]);
        sched_scrape_sample_free(&sc->s[1]);
        sc->n_samples = 0;
    }
    if (sc->fd < 0)
        return;
    if (now > sc->deadline_ms) {
        WARN_ONCE(sc, W_DEADLINE, "admin: the router's GET /metrics at %s:%d was not answered "
                                  "within %d ms; scrape dropped", sc->host, sc->port,
                  SCHED_SCRAPE_DEADLINE_MS);
        drop(sc);
        return;
    }
    if (!sc->connected) {
        /* A poll with no timeout: whether the connect finished, without waiting. */
        struct pollfd p = {.fd = sc->fd, .events = POLLOUT};
        if (poll(&p, 1, 0) <= 0)
            return;
        int err = 0;
        socklen_t l = sizeof err;
        if (getsockopt(sc->fd, SOL_SOCKET, SO_ERROR, &err, &l) != 0)
            err = errno;
        if (err) {
            WARN_ONCE(sc, W_CONNECT, "admin: cannot scrape the router's metrics at %s:%d: %s",
                      sc->host, sc->port, strerror(err));
            drop(sc);
            return;
        }
        sc->connected = 1;
    }
    while (sc->req_off < sc->req_len) {
        ssize_t n = send(sc->fd, sc->req + sc->req_off, sc->req_len - sc->req_off, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (n <= 0) {
            WARN_ONCE(sc, W_CONNECT, "admin: cannot scrape the router's metrics at %s:%d: %s",
                      sc->host, sc->port, strerror(errno));
            drop(sc);
            return;
        }
        sc->req_off += (size_t)n;
    }
    /* One byte past the limits, so that an answer over them is seen as such. */
    const size_t most = SCHED_SCRAPE_HEAD_MAX + SCHED_SCRAPE_MAX_BYTES + 1;
    for (;;) {
        if (sc->in_len == sc->in_cap) {
            size_t cap = sc->in_cap ? sc->in_cap * 2 : 65536;
            if (cap > most)
                cap = most;
            char *p = cap > sc->in_cap ? realloc(sc->in, cap) : NULL;
            if (!p) {
                WARN_ONCE(sc, W_OOM, "admin: out of memory reading the router's metrics; "
                                     "scrape dropped");
                drop(sc);
                return;
            }
            sc->in = p;
            sc->in_cap = cap;
        }
        ssize_t got = read(sc->fd, sc->in + sc->in_len, sc->in_cap - sc->in_len);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (got < 0) {
            WARN_ONCE(sc, W_CONNECT, "admin: reading the router's metrics at %s:%d: %s",
                      sc->host, sc->port, strerror(errno));
            drop(sc);
            return;
        }
        if (got == 0) {
            if (!sc->head_len) {
                WARN_ONCE(sc, W_ANSWER, "admin: the router's GET /metrics at %s:%d closed "
                                        "before a whole answer; scrape dropped", sc->host,
                          sc->port);
                drop(sc);
                return;
            }
            finish(sc, now);
            return;
        }
        size_t from = sc->in_len > 3 ? sc->in_len - 3 : 0;
        sc->in_len += (size_t)got;
        if (!sc->head_len) {
            size_t lim = sc->in_len < SCHED_SCRAPE_HEAD_MAX ? sc->in_len : SCHED_SCRAPE_HEAD_MAX;
            for (size_t i = from; i + 4 <= lim; i++)
                if (memcmp(sc->in + i, "\r\n\r\n", 4) == 0) {
                    sc->head_len = i + 4;
                    break;
                }
            if (!sc->head_len && sc->in_len >= SCHED_SCRAPE_HEAD_MAX) {
                WARN_ONCE(sc, W_ANSWER, "admin: the router's GET /metrics at %s:%d has no "
                                        "end of head within %d bytes; scrape dropped", sc->host,
                          sc->port, SCHED_SCRAPE_HEAD_MAX);
                drop(sc);
                return;
            }
            if (sc->head_len && head_check(sc)) {
                drop(sc);
                return;
            }
        }
        if (sc->head_len && sc->in_len - sc->head_len > SCHED_SCRAPE_MAX_BYTES) {
            WARN_ONCE(sc, W_BIG, "admin: the router's GET /metrics at %s:%d is over the "
                                 "scraper's limit of %u bytes; scrape dropped", sc->host,
                      sc->port, SCHED_SCRAPE_MAX_BYTES);
            drop(sc);
            return;
        }
        if (sc->head_len && sc->content_length >= 0 &&
            sc->in_len - sc->head_len >= (size_t)sc->content_length) {
            finish(sc, now);
            return;
        }
    }
}
