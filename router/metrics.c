#include "metrics.h"

#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define M_NAME 128
#define M_VERSION 64
#define M_CODES 32

static const double g_bounds[] = {0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025,
                                  0.005,   0.01,   0.025,   0.05,   0.1,   0.25,
                                  0.5,     1,      2.5,     5,      10};
#define M_BUCKETS (sizeof g_bounds / sizeof g_bounds[0])

struct hist {
    uint64_t counts[M_BUCKETS + 1]; /* per bucket, not cumulative; last is +Inf */
    uint64_t n;
    double sum;
};

struct code_count {
    int proto; /* 0 http, 1 rpc */
    int status;
    uint64_t count;
};

struct series {
    char model[M_NAME];
    char version[M_VERSION];
    struct code_count codes[M_CODES];
    int n_codes;
    struct hist total, upstream, queue, compute;
    uint64_t retries, ejections;
    uint64_t last_ok_ms;
};

/* Requests sent to one replica (each attempt). When a replica is released its count
 * moves to its model's "retired" series, so the series stay as many as the replicas in
 * the table (a restarted replica comes back on a new port) while every counter only
 * grows and their sum stays the number of requests sent. */
#define RETIRED "retired"

struct rsent {
    char model[M_NAME];
    char url[256];
    uint64_t n;
};

struct shard {
    pthread_mutex_t mu;
    struct series *s;
    size_t n, cap;
    struct rsent *r;
    size_t rn, rcap;
    int64_t inflight;
};

struct metrics {
    unsigned n_shards;
    struct shard *shards;
};

int metrics_new(struct metrics **out, unsigned shards, struct cerr *e)
{
    struct metrics *m = calloc(1, sizeof *m);
    if (m)
        m->shards = calloc(shards ? shards : 1, sizeof *m->shards);
    if (!m || !m->shards) {
        free(m);
        return cerr_set(e, CORRAL_ENOMEM, "cannot allocate the metrics registry");
    }
    m->n_shards = shards ? shards : 1;
    for (unsigned i = 0; i < m->n_shards; i++)
        pthread_mutex_init(&m->shards[i].mu, NULL);
    *out = m;
    return CORRAL_OK;
}

void metrics_free(struct metrics *m)
{
    if (!m)
        return;
    for (unsigned i = 0; i < m->n_shards; i++) {
        pthread_mutex_destroy(&m->shards[i].mu);
        free(m->shards[i].s);
        free(m->shards[i].r);
    }
    free(m->shards);
    free(m);
}

/* Finds or adds the series; NULL when out of memory. Caller holds the shard lock. */
static struct series *series_get(struct shard *sh, const char *model, const char *version)
{
    for (size_t i = 0; i < sh->n; i++)
        if (strcmp(sh->s[i].model, model) == 0 && strcmp(sh->s[i].version, version) == 0)
            return &sh->s[i];
    if (sh->n == sh->cap) {
        size_t nc = sh->cap ? sh->cap * 2 : 8;
        struct series *ns = realloc(sh->s, nc * sizeof *ns);
        if (!ns)
            return NULL;
        sh->s = ns;
        sh->cap = nc;
    }
    struct series *s = &sh->s[sh->n++];
    memset(s, 0, sizeof *s);
    snprintf(s->model, sizeof s->model, "%s", model);
    snprintf(s->version, sizeof s->version, "%s", version);
    return s;
}

static void hist_add(struct hist *h, double v)
{
    size_t i = 0;
    while (i < M_BUCKETS && v > g_bounds[i])
        i++;
    h->counts[i]++;
    h->n++;
    h->sum += v;
}

static void hist_merge(struct hist *dst, const struct hist *src)
{
    for (size_t i = 0; i <= M_BUCKETS; i++)
        dst->counts[i] += src->counts[i];
    dst->n += src->n;
    dst->sum += src->sum;
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

void metrics_request(struct metrics *m, unsigned shard, const char *model, const char *version,
                     const char *protocol, int status, uint64_t total_ns, uint64_t upstream_ns,
                     int64_t queue_us, int64_t compute_us)
{
    struct shard *sh = &m->shards[shard % m->n_shards];
    int proto = protocol && strcmp(protocol, "rpc") == 0;
    pthread_mutex_lock(&sh->mu);
    struct series *s = series_get(sh, model ? model : "", version ? version : "");
    if (!s)
        goto out;
    int k;
    for (k = 0; k < s->n_codes; k++)
        if (s->codes[k].proto == proto && s->codes[k].status == status)
            break;
    if (k == s->n_codes && k < M_CODES) {
        s->codes[k].proto = proto;
        s->codes[k].status = status;
        s->codes[k].count = 0;
        s->n_codes++;
    }
    if (k < M_CODES)
        s->codes[k].count++;
    if (model && model[0]) {
        hist_add(&s->total, (double)total_ns / 1e9);
        if (upstream_ns)
            hist_add(&s->upstream, (double)upstream_ns / 1e9);
        if (queue_us >= 0)
            hist_add(&s->queue, (double)queue_us / 1e6);
        if (compute_us >= 0)
            hist_add(&s->compute, (double)compute_us / 1e6);
        if (status == 200)
            s->last_ok_ms = now_ms();
    }
out:
    pthread_mutex_unlock(&sh->mu);
}

void metrics_inflight(struct metrics *m, unsigned shard, int delta)
{
    struct shard *sh = &m->shards[shard % m->n_shards];
    pthread_mutex_lock(&sh->mu);
    sh->inflight += delta;
    pthread_mutex_unlock(&sh->mu);
}

/* Finds or adds the replica's counter; NULL when out of memory. Caller holds the lock. */
static struct rsent *rsent_get(struct shard *sh, const char *model, const char *url)
{
    for (size_t i = 0; i < sh->rn; i++)
        if (strcmp(sh->r[i].url, url) == 0 && strcmp(sh->r[i].model, model) == 0)
            return &sh->r[i];
    if (sh->rn == sh->rcap) {
        size_t nc = sh->rcap ? sh->rcap * 2 : 8;
        struct rsent *nr = realloc(sh->r, nc * sizeof *nr);
        if (!nr)
            return NULL;
        sh->r = nr;
        sh->rcap = nc;
    }
    struct rsent *x = &sh->r[sh->rn++];
    memset(x, 0, sizeof *x);
    snprintf(x->model, sizeof x->model, "%s", model);
    snprintf(x->url, sizeof x->url, "%s", url);
    return x;
}

void metrics_event(struct metrics *m, unsigned shard, const char *model, const char *replica,
                   enum upstream_event ev)
{
    struct shard *sh = &m->shards[shard % m->n_shards];
    pthread_mutex_lock(&sh->mu);
    if (ev == UPSTREAM_EV_SENT) {
        struct rsent *x = rsent_get(sh, model, replica);
        if (x)
            x->n++;
        pthread_mutex_unlock(&sh->mu);
        return;
    }
    if (ev == UPSTREAM_EV_GONE) {
        for (size_t i = 0; i < sh->rn; i++) {
            if (strcmp(sh->r[i].url, replica) != 0 || strcmp(sh->r[i].model, model) != 0)
                continue;
            uint64_t n = sh->r[i].n;
            sh->r[i] = sh->r[--sh->rn];
            struct rsent *x = rsent_get(sh, model, RETIRED);
            if (x)
                x->n += n;
            break;
        }
        pthread_mutex_unlock(&sh->mu);
        return;
    }
    /* Events are per model; they live in the model's version-less series. */
    struct series *s = series_get(sh, model, "");
    if (s) {
        if (ev == UPSTREAM_EV_RETRY)
            s->retries++;
        else
            s->ejections++;
    }
    pthread_mutex_unlock(&sh->mu);
}

uint64_t metrics_last_inference_ms(struct metrics *m, const char *model, const char *version)
{
    uint64_t last = 0;
    for (unsigned i = 0; i < m->n_shards; i++) {
        struct shard *sh = &m->shards[i];
        pthread_mutex_lock(&sh->mu);
        for (size_t j = 0; j < sh->n; j++) {
            const struct series *s = &sh->s[j];
            if (strcmp(s->model, model) == 0 &&
                (!version || !version[0] || !s->version[0] ||
                 strcmp(s->version, version) == 0) &&
                s->last_ok_ms > last)
                last = s->last_ok_ms;
        }
        pthread_mutex_unlock(&sh->mu);
    }
    return last;
}

void metrics_label(struct buf *b, const char *s)
{
    buf_putc(b, '"');
    for (; *s; s++) {
        if (*s == '\\')
            buf_puts(b, "\\\\");
        else if (*s == '"')
            buf_puts(b, "\\\"");
        else if (*s == '\n')
            buf_puts(b, "\\n");
        else
            buf_putc(b, *s);
    }
    buf_putc(b, '"');
}

static void family(struct buf *b, const char *name, const char *type, const char *help)
{
    buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void mv_labels(struct buf *b, const char *model, const char *version)
{
    buf_puts(b, "model=");
    metrics_label(b, model);
    buf_puts(b, ",version=");
    metrics_label(b, version);
}

static void hist_render(struct buf *b, const char *name, const char *model, const char *version,
                        const struct hist *h)
{
    uint64_t cum = 0;
    for (size_t i = 0; i <= M_BUCKETS; i++) {
        cum += h->counts[i];
        buf_printf(b, "%s_bucket{", name);
        mv_labels(b, model, version);
        if (i < M_BUCKETS)
            buf_printf(b, ",le=\"%g\"} %llu\n", g_bounds[i], (unsigned long long)cum);
        else
            buf_printf(b, ",le=\"+Inf\"} %llu\n", (unsigned long long)cum);
    }
    buf_printf(b, "%s_sum{", name);
    mv_labels(b, model, version);
    buf_printf(b, "} %.9g\n%s_count{", h->sum, name);
    mv_labels(b, model, version);
    buf_printf(b, "} %llu\n", (unsigned long long)h->n);
}

/* Merges every shard into one series list (caller frees). */
static struct series *merged(struct metrics *m, size_t *n_out, int64_t *inflight)
{
    struct shard acc = {0};
    *inflight = 0;
    for (unsigned i = 0; i < m->n_shards; i++) {
        struct shard *sh = &m->shards[i];
        pthread_mutex_lock(&sh->mu);
        *inflight += sh->inflight;
        for (size_t j = 0; j < sh->n; j++) {
            const struct series *src = &sh->s[j];
            struct series *d = series_get(&acc, src->model, src->version);
            if (!d)
                continue;
            for (int k = 0; k < src->n_codes; k++) {
                int q;
                for (q = 0; q < d->n_codes; q++)
                    if (d->codes[q].proto == src->codes[k].proto &&
                        d->codes[q].status == src->codes[k].status)
                        break;
                if (q == d->n_codes && q < M_CODES) {
                    d->codes[q] = src->codes[k];
                    d->codes[q].count = 0;
                    d->n_codes++;
                }
                if (q < M_CODES)
                    d->codes[q].count += src->codes[k].count;
            }
            hist_merge(&d->total, &src->total);
            hist_merge(&d->upstream, &src->upstream);
            hist_merge(&d->queue, &src->queue);
            hist_merge(&d->compute, &src->compute);
            d->retries += src->retries;
            d->ejections += src->ejections;
            if (src->last_ok_ms > d->last_ok_ms)
                d->last_ok_ms = src->last_ok_ms;
        }
        pthread_mutex_unlock(&sh->mu);
    }
    *n_out = acc.n;
    return acc.s;
}

/* Requests sent per replica, summed over the threads (a replica counted in several
 * shards appears once). */
static void render_sent(struct metrics *m, struct buf *b)
{
    struct shard acc = {0};
    for (unsigned i = 0; i < m->n_shards; i++) {
        struct shard *sh = &m->shards[i];
        pthread_mutex_lock(&sh->mu);
        for (size_t j = 0; j < sh->rn; j++) {
            struct rsent *d = rsent_get(&acc, sh->r[j].model, sh->r[j].url);
            if (d)
                d->n += sh->r[j].n;
            else
                b->oom = 1;
        }
        pthread_mutex_unlock(&sh->mu);
    }
    family(b, "corral_router_replica_requests_total", "counter",
           "Inference requests sent to each replica (a retry counts on the replica it went to).");
    for (size_t i = 0; i < acc.rn; i++) {
        buf_puts(b, "corral_router_replica_requests_total{model=");
        metrics_label(b, acc.r[i].model);
        buf_puts(b, ",replica=");
        metrics_label(b, acc.r[i].url);
        buf_printf(b, "} %llu\n", (unsigned long long)acc.r[i].n);
    }
    free(acc.r);
}

void metrics_render(struct metrics *m, struct buf *b)
{
    size_t n = 0;
    int64_t inflight = 0;
    struct series *s = merged(m, &n, &inflight);

    family(b, "corral_router_requests_total", "counter",
           "Requests answered by the router, by model, version, protocol and HTTP status.");
    for (size_t i = 0; i < n; i++)
        for (int k = 0; k < s[i].n_codes; k++) {
            buf_puts(b, "corral_router_requests_total{");
            mv_labels(b, s[i].model, s[i].version);
            buf_printf(b, ",protocol=\"%s\",code=\"%d\"} %llu\n",
                       s[i].codes[k].proto ? "rpc" : "http", s[i].codes[k].status,
                       (unsigned long long)s[i].codes[k].count);
        }
    static const struct {
        const char *name, *help;
        size_t off;
    } hs[] = {
        {"corral_router_request_duration_seconds",
         "Time from a complete request to its answer, measured in the router.",
         offsetof(struct series, total)},
        {"corral_router_upstream_duration_seconds",
         "Round trip from the router to the replica that answered.",
         offsetof(struct series, upstream)},
        {"corral_queue_duration_seconds",
         "Time requests waited in a replica's batcher queue (as the replica reports it).",
         offsetof(struct series, queue)},
        {"corral_compute_duration_seconds",
         "Engine time of the batch a request ran in (as the replica reports it).",
         offsetof(struct series, compute)},
    };
    for (size_t h = 0; h < sizeof hs / sizeof hs[0]; h++) {
        family(b, hs[h].name, "histogram", hs[h].help);
        for (size_t i = 0; i < n; i++) {
            const struct hist *hp = (const struct hist *)((const char *)&s[i] + hs[h].off);
            if (s[i].model[0] && (hp->n || h == 0))
                hist_render(b, hs[h].name, s[i].model, s[i].version, hp);
        }
    }
    family(b, "corral_router_inflight_requests", "gauge",
           "Requests the router has accepted and not yet answered.");
    buf_printf(b, "corral_router_inflight_requests %lld\n", (long long)inflight);
    family(b, "corral_router_retries_total", "counter",
           "Requests sent again to another replica after the first failed before answering.");
    for (size_t i = 0; i < n; i++)
        if (s[i].model[0] && !s[i].version[0] && (s[i].retries || s[i].ejections)) {
            buf_puts(b, "corral_router_retries_total{model=");
            metrics_label(b, s[i].model);
            buf_printf(b, "} %llu\n", (unsigned long long)s[i].retries);
        }
    family(b, "corral_router_ejections_total", "counter",
           "Replicas taken out of rotation after consecutive transport failures.");
    for (size_t i = 0; i < n; i++)
        if (s[i].model[0] && !s[i].version[0] && (s[i].retries || s[i].ejections)) {
            buf_puts(b, "corral_router_ejections_total{model=");
            metrics_label(b, s[i].model);
            buf_printf(b, "} %llu\n", (unsigned long long)s[i].ejections);
        }
    free(s);
    render_sent(m, b);
}

/* Per model and version, the sum of what its replicas reported. */
struct agg {
    const char *model;
    const char *version;
    uint64_t requests, success, batches, rows, queue_us, compute_us, real, padded, depth;
    uint64_t max_batch;
    uint64_t hist_bins[64]; /* batches by power-of-two bucket of their size */
    struct {
        const char *reason;
        uint64_t count;
    } rej[16];
    int n_rej;
};

static size_t bucket_of(uint64_t size)
{
    size_t k = 0;
    while (k < 63 && ((uint64_t)1 << k) < size)
        k++;
    return k;
}

void metrics_render_replicas(const struct upstream *u, const struct upstream_stats *st, size_t n,
                             struct buf *b)
{
    static const char *states[] = {"ready", "not_ready", "ejected", "connecting"};
    family(b, "corral_replicas", "gauge", "Replicas configured in this router, by model and state.");
    for (size_t mi = 0; mi < upstream_model_count(u); mi++) {
        const char *model = upstream_model_name(u, mi);
        for (size_t s = 0; s < 4; s++) {
            unsigned cnt = 0;
            for (size_t i = 0; i < upstream_replica_count(u); i++) {
                struct upstream_replica_info ri;
                upstream_replica_info(u, i, &ri);
                if (strcmp(ri.model, model) == 0 && strcmp(ri.state, states[s]) == 0)
                    cnt++;
            }
            buf_puts(b, "corral_replicas{model=");
            metrics_label(b, model);
            buf_printf(b, ",state=\"%s\"} %u\n", states[s], cnt);
        }
    }
    family(b, "corral_replica_outstanding_requests", "gauge",
           "Requests in flight from this router thread to each replica.");
    for (size_t i = 0; i < upstream_replica_count(u); i++) {
        struct upstream_replica_info ri;
        upstream_replica_info(u, i, &ri);
        buf_puts(b, "corral_replica_outstanding_requests{model=");
        metrics_label(b, ri.model);
        buf_puts(b, ",replica=");
        metrics_label(b, ri.url);
        buf_printf(b, "} %u\n", ri.outstanding);
    }
    family(b, "corral_replica_stats_up", "gauge",
           "1 when the replica answered the statistics request of this scrape.");
    for (size_t i = 0; i < n; i++) {
        buf_puts(b, "corral_replica_stats_up{model=");
        metrics_label(b, st[i].model);
        buf_puts(b, ",replica=");
        metrics_label(b, st[i].url);
        buf_printf(b, "} %d\n", st[i].stats ? 1 : 0);
    }

    struct agg *ag = calloc(n ? n : 1, sizeof *ag);
    size_t na = 0;
    if (!ag) {
        b->oom = 1;
        return;
    }
    for (size_t i = 0; i < n; i++) {
        const Corral__StatsResponse *sr = st[i].stats;
        if (!sr)
            continue;
        const char *version = sr->model_version && sr->model_version[0] ? sr->model_version
                                                                        : st[i].version;
        struct agg *a = NULL;
        for (size_t k = 0; k < na; k++)
            if (strcmp(ag[k].model, st[i].model) == 0 && strcmp(ag[k].version, version) == 0)
                a = &ag[k];
        if (!a) {
            a = &ag[na++];
            a->model = st[i].model;
            a->version = version;
        }
        a->requests += sr->request_count;
        a->success += sr->success_count;
        a->batches += sr->batch_count;
        a->rows += sr->batch_rows;
        a->queue_us += sr->queue_time_us;
        a->compute_us += sr->compute_time_us;
        a->real += sr->real_elements;
        a->padded += sr->padded_elements;
        a->depth += sr->queue_depth;
        if (sr->max_batch_size > a->max_batch)
            a->max_batch = sr->max_batch_size;
        for (size_t h = 0; h < sr->n_batch_size_histogram; h++) {
            const Corral__HistogramBin *bin = sr->batch_size_histogram[h];
            a->hist_bins[bucket_of(bin->size)] += bin->count;
        }
        for (size_t r = 0; r < sr->n_rejections; r++) {
            const char *reason = sr->rejections[r]->reason ? sr->rejections[r]->reason : "";
            int k;
            for (k = 0; k < a->n_rej; k++)
                if (strcmp(a->rej[k].reason, reason) == 0)
                    break;
            if (k == a->n_rej && k < 16) {
                a->rej[k].reason = reason;
                a->n_rej++;
            }
            if (k < 16)
                a->rej[k].count += sr->rejections[r]->count;
        }
    }
    static const struct {
        const char *name, *type, *help;
        size_t off;
        double scale;
    } fs[] = {
        {"corral_model_requests_total", "counter", "Infer requests the model's replicas received.",
         offsetof(struct agg, requests), 1},
        {"corral_model_success_total", "counter", "Infer requests answered with a result.",
         offsetof(struct agg, success), 1},
        {"corral_model_executions_total", "counter", "Engine runs (batches).",
         offsetof(struct agg, batches), 1},
        {"corral_model_inferences_total", "counter", "Real rows run over all batches.",
         offsetof(struct agg, rows), 1},
        {"corral_model_queue_seconds_total", "counter",
         "Sum over requests of the time from arrival to compute start.",
         offsetof(struct agg, queue_us), 1e-6},
        {"corral_model_compute_seconds_total", "counter", "Sum over batches of engine time.",
         offsetof(struct agg, compute_us), 1e-6},
        {"corral_model_real_elements_total", "counter", "Input elements the requests carried.",
         offsetof(struct agg, real), 1},
        {"corral_model_padded_elements_total", "counter",
         "Input elements run, padding to batch buckets included.",
         offsetof(struct agg, padded), 1},
        {"corral_model_queue_depth", "gauge", "Requests waiting in the replicas' queues now.",
         offsetof(struct agg, depth), 1},
    };
    for (size_t f = 0; f < sizeof fs / sizeof fs[0]; f++) {
        family(b, fs[f].name, fs[f].type, fs[f].help);
        for (size_t k = 0; k < na; k++) {
            uint64_t v = *(const uint64_t *)((const char *)&ag[k] + fs[f].off);
            buf_printf(b, "%s{", fs[f].name);
            mv_labels(b, ag[k].model, ag[k].version);
            if (fs[f].scale == 1)
                buf_printf(b, "} %llu\n", (unsigned long long)v);
            else
                buf_printf(b, "} %.6f\n", (double)v * fs[f].scale);
        }
    }
    family(b, "corral_model_rejections_total", "counter",
           "Infer requests a replica answered with an error, by reason.");
    for (size_t k = 0; k < na; k++)
        for (int r = 0; r < ag[k].n_rej; r++) {
            buf_puts(b, "corral_model_rejections_total{");
            mv_labels(b, ag[k].model, ag[k].version);
            buf_puts(b, ",reason=");
            metrics_label(b, ag[k].rej[r].reason);
            buf_printf(b, "} %llu\n", (unsigned long long)ag[k].rej[r].count);
        }
    family(b, "corral_padding_efficiency", "gauge",
           "Real input elements over elements run (1 means no padding).");
    for (size_t k = 0; k < na; k++) {
        buf_puts(b, "corral_padding_efficiency{");
        mv_labels(b, ag[k].model, ag[k].version);
        buf_printf(b, "} %.6f\n", ag[k].padded ? (double)ag[k].real / (double)ag[k].padded : 1.0);
    }
    family(b, "corral_batch_size", "histogram", "Real rows per engine run.");
    for (size_t k = 0; k < na; k++) {
        uint64_t cum = 0;
        size_t top = bucket_of(ag[k].max_batch ? ag[k].max_batch : 1);
        for (size_t i = 0; i < 64; i++)
            if (ag[k].hist_bins[i] && i > top)
                top = i;
        for (size_t i = 0; i <= top; i++) {
            cum += ag[k].hist_bins[i];
            buf_puts(b, "corral_batch_size_bucket{");
            mv_labels(b, ag[k].model, ag[k].version);
            buf_printf(b, ",le=\"%llu\"} %llu\n", (unsigned long long)1 << i,
                       (unsigned long long)cum);
        }
        /* Counts are read from replicas at different moments; keep +Inf monotone anyway. */
        uint64_t total = cum > ag[k].batches ? cum : ag[k].batches;
        buf_puts(b, "corral_batch_size_bucket{");
        mv_labels(b, ag[k].model, ag[k].version);
        buf_printf(b, ",le=\"+Inf\"} %llu\n", (unsigned long long)total);
        buf_puts(b, "corral_batch_size_sum{");
        mv_labels(b, ag[k].model, ag[k].version);
        buf_printf(b, "} %llu\n", (unsigned long long)ag[k].rows);
        buf_puts(b, "corral_batch_size_count{");
        mv_labels(b, ag[k].model, ag[k].version);
        buf_printf(b, "} %llu\n", (unsigned long long)total);
    }
    free(ag);
}
