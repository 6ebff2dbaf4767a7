#include "membership.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sp_proto.h"

struct membership {
    pthread_mutex_t mu;
    struct membership_entry *e;
    size_t n, cap;
    struct membership_canary *c; /* one per model at most */
    size_t nc, ccap;
    uint64_t generation;
    unsigned threads;
    uint64_t *applied; /* per thread */
};

int membership_new(struct membership **out, unsigned threads, struct cerr *e)
{
    struct membership *m = calloc(1, sizeof *m);
    if (m)
        m->applied = calloc(threads ? threads : 1, sizeof *m->applied);
    if (!m || !m->applied) {
        free(m);
        return cerr_set(e, CORRAL_ENOMEM, "cannot allocate the replica table");
    }
    pthread_mutex_init(&m->mu, NULL);
    m->threads = threads ? threads : 1;
    *out = m;
    return CORRAL_OK;
}

void membership_free(struct membership *m)
{
    if (!m)
        return;
    pthread_mutex_destroy(&m->mu);
    free(m->e);
    free(m->c);
    free(m->applied);
    free(m);
}

/* Names travel in URLs and metric labels: printable, no '/', within the limits. */
static int check_name(const char *what, const char *s, size_t max, int may_be_empty, struct cerr *e)
{
    size_t n = s ? strlen(s) : 0;
    if (!n && !may_be_empty)
        return cerr_set(e, CORRAL_EINVAL, "%s is empty: expected a name", what);
    if (n >= max)
        return cerr_set(e, CORRAL_EINVAL, "%s is %zu bytes long: at most %zu", what, n, max - 1);
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x21 || s[i] == 0x7f || s[i] == '/' || s[i] == '"' ||
            s[i] == '\\')
            return cerr_set(e, CORRAL_EINVAL, "%s '%s' has a character that is not allowed "
                            "(expected printable ASCII without spaces, '/', '\"' or '\\\\')",
                            what, s);
    return CORRAL_OK;
}

static int check_url(const char *url, struct cerr *e)
{
    char host[MEMBER_URL_MAX], port[16];
    int family = 0;
    if (!url || !*url)
        return cerr_set(e, CORRAL_EINVAL, "url is empty: expected tcp://HOST:PORT");
    if (strlen(url) >= MEMBER_URL_MAX)
        return cerr_set(e, CORRAL_EINVAL, "url is %zu bytes long: at most %d", strlen(url),
                        MEMBER_URL_MAX - 1);
    if (sp_url_split(url, "replica URL", &family, host, sizeof host, port, sizeof port, e))
        return e->code;
    if (!host[0] || strcmp(port, "0") == 0)
        return cerr_set(e, CORRAL_EINVAL, "replica URL '%s' names no host or port 0: expected "
                        "the address a replica listens on, e.g. tcp://127.0.0.1:9101", url);
    return CORRAL_OK;
}

/* Makes room for one more element in an array of n (of `size` bytes each). */
static int grow(void **arr, size_t *cap, size_t n, size_t size, struct cerr *e)
{
    if (n < *cap)
        return CORRAL_OK;
    size_t ncap = *cap ? 2 * *cap : 8;
    void *na = realloc(*arr, ncap * size);
    if (!na)
        return cerr_set(e, CORRAL_ENOMEM, "out of memory growing the replica table");
    *arr = na;
    *cap = ncap;
    return CORRAL_OK;
}

static struct membership_entry *find(struct membership *m, const char *url)
{
    for (size_t i = 0; i < m->n; i++)
        if (strcmp(m->e[i].url, url) == 0)
            return &m->e[i];
    return NULL;
}

/* The entry of `url`, or NULL with e saying so. Caller holds the lock. */
static struct membership_entry *lookup(struct membership *m, const char *url, struct cerr *e)
{
    struct membership_entry *x = url ? find(m, url) : NULL;
    if (!x)
        cerr_set(e, CORRAL_ENOTFOUND, "replica '%s' is not in the table (GET /v1/replicas lists "
                 "it)", url ? url : "");
    return x;
}

/* Appends an entry (checked already). Caller holds the lock. */
static int append(struct membership *m, const char *model, const char *version, const char *url,
                  const char *source, struct cerr *e)
{
    int rc = grow((void **)&m->e, &m->cap, m->n, sizeof *m->e, e);
    if (rc)
        return rc;
    struct membership_entry *x = &m->e[m->n++];
    memset(x, 0, sizeof *x);
    snprintf(x->model, sizeof x->model, "%s", model);
    snprintf(x->version, sizeof x->version, "%s", version ? version : "");
    snprintf(x->url, sizeof x->url, "%s", url);
    snprintf(x->source, sizeof x->source, "%s", source);
    return CORRAL_OK;
}

int membership_add(struct membership *m, const char *model, const char *version, const char *url,
                   uint64_t *generation, struct cerr *e)
{
    int rc;
    if ((rc = check_name("model", model, MEMBER_MODEL_MAX, 0, e)) ||
        (rc = check_name("version", version, MEMBER_VERSION_MAX, 1, e)) ||
        (rc = check_url(url, e)))
        return rc;
    pthread_mutex_lock(&m->mu);
    if (find(m, url)) {
        rc = cerr_set(e, CORRAL_EINVAL, "replica %s is in the table already (remove it first to "
                      "change its model or version)", url);
        goto out;
    }
    if ((rc = append(m, model, version, url, "", e)))
        goto out;
    *generation = ++m->generation;
out:
    pthread_mutex_unlock(&m->mu);
    return rc;
}

static int listed(const char *const *urls, size_t n, const char *url)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(urls[i], url) == 0)
            return 1;
    return 0;
}

int membership_sync_source(struct membership *m, const char *source, const char *model,
                           const char *const *urls, size_t n, int *changed, size_t *skipped,
                           uint64_t *generation, struct cerr *e)
{
    int rc;
    *changed = 0;
    *skipped = 0;
    if (!source || !source[0] || strlen(source) >= MEMBER_SOURCE_MAX)
        return cerr_set(e, CORRAL_EINVAL, "a discovery source must be named, in at most %d "
                        "bytes", MEMBER_SOURCE_MAX - 1);
    if ((rc = check_name("model", model, MEMBER_MODEL_MAX, 0, e)))
        return rc;
    for (size_t i = 0; i < n; i++)
        if ((rc = check_url(urls[i], e)))
            return rc;
    pthread_mutex_lock(&m->mu);
    /* Room first, so that a failure changes nothing. */
    size_t fresh = 0;
    for (size_t i = 0; i < n; i++)
        fresh += !find(m, urls[i]) && !listed(urls, i, urls[i]);
    if (m->n + fresh > m->cap) {
        size_t ncap = m->cap ? m->cap : 8;
        while (ncap < m->n + fresh)
            ncap *= 2;
        struct membership_entry *ne = realloc(m->e, ncap * sizeof *ne);
        if (!ne) {
            rc = cerr_set(e, CORRAL_ENOMEM, "out of memory growing the replica table");
            goto out;
        }
        m->e = ne;
        m->cap = ncap;
    }
    for (size_t i = 0; i < m->n;) {
        struct membership_entry *x = &m->e[i];
        if (strcmp(x->source, source) != 0) {
            i++;
            continue;
        }
        int want = listed(urls, n, x->url) && strcmp(x->model, model) == 0;
        if (want && x->vanished) {
            x->vanished = 0;
            *changed = 1;
        } else if (!want && !x->vanished) {
            x->vanished = 1;
            *changed = 1;
        } else if (!want) {
            /* Missed twice: gone. The router answers what it still holds. */
            memmove(x, x + 1, (m->n - i - 1) * sizeof *x);
            m->n--;
            *changed = 1;
            continue;
        }
        x->draining = x->drain_requested || x->vanished;
        i++;
    }
    for (size_t i = 0; i < n; i++) {
        const struct membership_entry *x = find(m, urls[i]);
        if (x) {
            *skipped += strcmp(x->source, source) != 0 || strcmp(x->model, model) != 0;
            continue;
        }
        append(m, model, "", urls[i], source, NULL); /* room was made above */
        *changed = 1;
    }
    if (*changed)
        ++m->generation;
    *generation = m->generation;
    rc = CORRAL_OK;
out:
    pthread_mutex_unlock(&m->mu);
    return rc;
}

int membership_set_draining(struct membership *m, const char *url, int draining,
                            uint64_t *generation, struct cerr *e)
{
    pthread_mutex_lock(&m->mu);
    struct membership_entry *x = lookup(m, url, e);
    if (x) {
        x->drain_requested = draining;
        x->draining = draining || x->vanished;
        *generation = ++m->generation;
    }
    pthread_mutex_unlock(&m->mu);
    return x ? CORRAL_OK : e->code;
}

int membership_remove(struct membership *m, const char *url, uint64_t *generation,
                      struct cerr *e)
{
    pthread_mutex_lock(&m->mu);
    struct membership_entry *x = lookup(m, url, e);
    if (x) {
        size_t i = (size_t)(x - m->e);
        memmove(&m->e[i], &m->e[i + 1], (m->n - i - 1) * sizeof *m->e);
        m->n--;
        *generation = ++m->generation;
    }
    pthread_mutex_unlock(&m->mu);
    return x ? CORRAL_OK : e->code;
}

static struct membership_canary *find_canary(struct membership *m, const char *model)
{
    for (size_t i = 0; i < m->nc; i++)
        if (strcmp(m->c[i].model, model) == 0)
            return &m->c[i];
    return NULL;
}

int membership_set_canary(struct membership *m, const char *model, const char *version,
                          int percent, uint64_t *generation, struct cerr *e)
{
    int rc;
    if ((rc = check_name("model", model, MEMBER_MODEL_MAX, 0, e)) ||
        (rc = check_name("version", version, MEMBER_VERSION_MAX, 0, e)))
        return rc;
    if (percent < 0 || percent > 100)
        return cerr_set(e, CORRAL_EINVAL, "percent: expected an integer from 0 to 100, got %d",
                        percent);
    pthread_mutex_lock(&m->mu);
    struct membership_canary *x = find_canary(m, model);
    if (!x && !(rc = grow((void **)&m->c, &m->ccap, m->nc, sizeof *m->c, e))) {
        x = &m->c[m->nc++];
        snprintf(x->model, sizeof x->model, "%s", model);
    }
    if (x) {
        snprintf(x->version, sizeof x->version, "%s", version);
        x->percent = percent;
        *generation = ++m->generation;
    }
    pthread_mutex_unlock(&m->mu);
    return rc;
}

int membership_clear_canary(struct membership *m, const char *model, uint64_t *generation,
                            struct cerr *e)
{
    pthread_mutex_lock(&m->mu);
    struct membership_canary *x = model ? find_canary(m, model) : NULL;
    if (x) {
        size_t i = (size_t)(x - m->c);
        memmove(&m->c[i], &m->c[i + 1], (m->nc - i - 1) * sizeof *m->c);
        m->nc--;
        *generation = ++m->generation;
    } else {
        cerr_set(e, CORRAL_ENOTFOUND, "model '%s' has no canary split (GET /v1/replicas lists "
                 "them)", model ? model : "");
    }
    pthread_mutex_unlock(&m->mu);
    return x ? CORRAL_OK : e->code;
}

/* A copy of n elements of `size` bytes (never NULL when it succeeds, also for n = 0). */
static void *copy_array(const void *src, size_t n, size_t size)
{
    void *p = malloc(n ? n * size : 1);
    if (p && n) /* an empty table may have no array yet */
        memcpy(p, src, n * size);
    return p;
}

int membership_snapshot(struct membership *m, struct membership_snapshot *out, struct cerr *e)
{
    int rc = CORRAL_OK;
    memset(out, 0, sizeof *out);
    pthread_mutex_lock(&m->mu);
    out->entries = copy_array(m->e, m->n, sizeof *m->e);
    out->canaries = copy_array(m->c, m->nc, sizeof *m->c);
    if (!out->entries || !out->canaries) {
        membership_snapshot_free(out);
        rc = cerr_set(e, CORRAL_ENOMEM, "out of memory copying the replica table");
    } else {
        out->n = m->n;
        out->n_canaries = m->nc;
        out->generation = m->generation;
    }
    pthread_mutex_unlock(&m->mu);
    return rc;
}

void membership_snapshot_free(struct membership_snapshot *s)
{
    free(s->entries);
    free(s->canaries);
    s->entries = NULL;
    s->canaries = NULL;
    s->n = s->n_canaries = 0;
}

void membership_applied(struct membership *m, unsigned thread, uint64_t generation)
{
    pthread_mutex_lock(&m->mu);
    if (thread < m->threads && generation > m->applied[thread])
        m->applied[thread] = generation;
    pthread_mutex_unlock(&m->mu);
}

uint64_t membership_generation(struct membership *m)
{
    pthread_mutex_lock(&m->mu);
    uint64_t g = m->generation;
    pthread_mutex_unlock(&m->mu);
    return g;
}

uint64_t membership_acked(struct membership *m)
{
    pthread_mutex_lock(&m->mu);
    uint64_t g = m->applied[0];
    for (unsigned i = 1; i < m->threads; i++)
        if (m->applied[i] < g)
            g = m->applied[i];
    pthread_mutex_unlock(&m->mu);
    return g;
}
