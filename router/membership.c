#include "membership.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sp_frame.h"

struct membership {
    pthread_mutex_t mu;
    struct membership_entry *e;
    size_t n, cap;
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
    if (m->n == m->cap) {
        size_t cap = m->cap ? 2 * m->cap : 8;
        struct membership_entry *ne = realloc(m->e, cap * sizeof *ne);
        if (!ne) {
            rc = cerr_set(e, CORRAL_ENOMEM, "out of memory growing the replica table");
            goto out;
        }
        m->e = ne;
        m->cap = cap;
    }
    struct membership_entry *x = &m->e[m->n++];
    memset(x, 0, sizeof *x);
    snprintf(x->model, sizeof x->model, "%s", model);
    snprintf(x->version, sizeof x->version, "%s", version ? version : "");
    snprintf(x->url, sizeof x->url, "%s", url);
    *generation = ++m->generation;
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
        x->draining = draining;
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

int membership_snapshot(struct membership *m, struct membership_snapshot *out, struct cerr *e)
{
    int rc = CORRAL_OK;
    pthread_mutex_lock(&m->mu);
    out->entries = malloc((m->n ? m->n : 1) * sizeof *out->entries);
    if (!out->entries) {
        rc = cerr_set(e, CORRAL_ENOMEM, "out of memory copying the replica table");
    } else {
        if (m->n) /* an empty table has no array yet */
            memcpy(out->entries, m->e, m->n * sizeof *m->e);
        out->n = m->n;
        out->generation = m->generation;
    }
    pthread_mutex_unlock(&m->mu);
    return rc;
}

void membership_snapshot_free(struct membership_snapshot *s)
{
    free(s->entries);
    s->entries = NULL;
    s->n = 0;
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
