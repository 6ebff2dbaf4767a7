/*
 * scrape: each model's request rate and p99 latency as the router measures them, for
 * the admin API's status (GET /v1/status carries them per model as "traffic") and so
 * for the operator page. A small non-blocking HTTP/1.1 client that the admin server
 * (admin.h) owns and drives from its own poll set, so the supervisor's loop never
 * waits on it.
 *
 * Usage:
 *     struct sched_scrape sc;
 *     sched_scrape_init(&sc);
 *     ...on every GET /v1/status:
 *     sched_scrape_wanted(&sc, now);
 *     json_t *t = sched_scrape_traffic(&sc, "digits"); // {"rate_rps", "p99_ms", "window_s"}
 *                                                       // or null (fewer than two samples)
 *     ...on every turn of the loop:
 *     if (sched_scrape_due(&sc, now))
 *         sched_scrape_start(&sc, router_http, now);   // "http://127.0.0.1:8000", or NULL
 *     struct pollfd p;
 *     if (sched_scrape_pollfd(&sc, &p)) ...add p to the poll set...
 *     ...after the poll:
 *     sched_scrape_step(&sc, now);
 *     sched_scrape_free(&sc);
 *
 * Work happens only while someone reads the status: a scrape is due every
 * SCHED_SCRAPE_EVERY_MS while the last sched_scrape_wanted() is at most
 * SCHED_SCRAPE_IDLE_MS old; once idle, no scrape starts and the samples are dropped
 * (a later reader sees "traffic": null until two fresh samples exist), so an idle
 * cluster does no work. One scrape is GET /metrics on the router's HTTP address
 * ("Connection: close"), which must be answered whole within SCHED_SCRAPE_DEADLINE_MS
 * and with a body of at most SCHED_SCRAPE_MAX_BYTES; otherwise it is dropped. Each
 * kind of failure is logged once (warn), until a scrape succeeds again.
 *
 * The host of the URL must be an IP address or "localhost" (a wildcard, 0.0.0.0 or
 * ::, is dialled on loopback): resolving another name could block the loop.
 *
 * The body is another process's output and parsed as untrusted text
 * (sched_scrape_parse): lines of `corral_router_requests_total{model="M",...} V` are
 * summed per model (every version, protocol and code) and
 * `corral_router_request_duration_seconds_bucket{model="M",...,le="B"} V` per model
 * and bound (every version). A line longer than SCHED_SCRAPE_LINE_MAX, a label that is
 * not terminated, a missing brace, a value that is not a finite number in
 * [0, SCHED_SCRAPE_VALUE_MAX], an `le` that is not a number >= 0 or +Inf, an empty or
 * over-long model name: that line is skipped and counted, the rest of the text used.
 * At most SCHED_SCRAPE_MODELS_MAX models and SCHED_SCRAPE_BUCKETS_MAX bounds per model
 * are kept (the rest skipped and counted).
 *
 * The last two samples are kept. Between them, per model: rate_rps is the increase of
 * the request counter over window_s (the seconds between the samples); p99_ms is the
 * 0.99 quantile of the bucket increases, linearly interpolated inside the bucket that
 * holds it (the lowest bucket starting at 0; one in +Inf gives the highest finite
 * bound), null when no request was observed in the window. A counter that went down
 * (the router restarted) counts from zero.
 *
 * Ownership: the scraper owns its socket, buffers and samples; sched_scrape_traffic
 * returns a new reference.
 */
#ifndef CORRAL_SCHEDULER_SCRAPE_H
#define CORRAL_SCHEDULER_SCRAPE_H

#include <jansson.h>
#include <poll.h>
#include <stddef.h>

#include "config.h"

#define SCHED_SCRAPE_EVERY_MS 2000
#define SCHED_SCRAPE_IDLE_MS 30000          /* no status read this long: scraping stops */
#define SCHED_SCRAPE_DEADLINE_MS 1000       /* from connect to the whole answer */
#define SCHED_SCRAPE_MAX_BYTES (4u << 20)   /* the answer's body */
#define SCHED_SCRAPE_HEAD_MAX 16384         /* the answer's status line and headers */
#define SCHED_SCRAPE_LINE_MAX 4096          /* one line of the body */
#define SCHED_SCRAPE_MODELS_MAX 256
#define SCHED_SCRAPE_BUCKETS_MAX 64
#define SCHED_SCRAPE_VALUE_MAX 9007199254740992.0 /* 2^53: counts beyond lose precision */

/* One model in one sample. */
struct sched_scrape_model {
    char name[SCHED_NAME_MAX];
    double requests;                      /* corral_router_requests_total, summed */
    size_t n_le;                          /* histogram bounds, ascending */
    double le[SCHED_SCRAPE_BUCKETS_MAX];  /* seconds; the last is normally +Inf */
    double cum[SCHED_SCRAPE_BUCKETS_MAX]; /* cumulative count at le[i], versions summed */
};

/* What one parse kept and skipped. */
struct sched_scrape_sample {
    long t_ms;                    /* when it was taken (the caller's clock) */
    size_t n, cap;
    struct sched_scrape_model *m; /* n models, in the order first seen; owned */
    size_t skipped_lines;         /* malformed, over-long or out-of-range lines */
    size_t skipped_models;        /* lines of models beyond SCHED_SCRAPE_MODELS_MAX */
    size_t skipped_buckets;       /* bounds beyond SCHED_SCRAPE_BUCKETS_MAX */
};

struct sched_scrape {
    int fd;                      /* the scrape in flight; -1: none */
    int connected;               /* the connect finished */
    long deadline_ms;
    char host[SCHED_HOST_MAX];   /* of the scrape in flight, for the logs */
    int port;
    char req[SCHED_HOST_MAX + 160];
    size_t req_len, req_off;
    char *in;                    /* the answer so far; owned */
    size_t in_len, in_cap;
    size_t head_len;             /* > 0: the head is complete (blank line included) */
    long long content_length;    /* -1: none given (the body ends at EOF) */
    long wanted_ms;              /* the last sched_scrape_wanted(); 0: never */
    long next_ms;                /* when the next scrape is due */
    struct sched_scrape_sample s[2]; /* s[1] the newest; n_samples of them valid */
    int n_samples;
    unsigned warned;             /* kinds of failure logged since the last success */
};

void sched_scrape_init(struct sched_scrape *sc);
void sched_scrape_free(struct sched_scrape *sc);

/* Someone read the status at `now`: keep scraping for SCHED_SCRAPE_IDLE_MS. */
void sched_scrape_wanted(struct sched_scrape *sc, long now);

/* Whether a scrape should start now: wanted recently, none in flight, and
 * SCHED_SCRAPE_EVERY_MS since the last start. */
int sched_scrape_due(const struct sched_scrape *sc, long now);

/* Starts GET /metrics on `url` ("http://HOST:PORT"); NULL (no router up) or a URL that
 * cannot be dialled only schedules the next try. Never blocks. */
void sched_scrape_start(struct sched_scrape *sc, const char *url, long now);

/* The socket to wait for, when a scrape is in flight: returns 1 and fills *p. */
int sched_scrape_pollfd(const struct sched_scrape *sc, struct pollfd *p);

/* Makes progress without blocking: connect, send, read; on a whole answer the body is
 * parsed into a new sample. Also drops the samples once nobody wants them. */
void sched_scrape_step(struct sched_scrape *sc, long now);

/* {"rate_rps", "p99_ms" (or null), "window_s"} of `model` between the last two
 * samples, or null before two exist; a new reference (NULL when out of memory). */
json_t *sched_scrape_traffic(const struct sched_scrape *sc, const char *model);

/* Parses a metrics text of `len` bytes (any bytes; no NUL needed) into `out`
 * (emptied first; its memory reused). Returns 0, or -1 when out of memory. */
int sched_scrape_parse(const char *text, size_t len, struct sched_scrape_sample *out);

void sched_scrape_sample_free(struct sched_scrape_sample *s);

/* The q-quantile (0 < q < 1) of a histogram's increase: le[n] ascending bounds (the
 * last may be +Inf), d[n] the cumulative count increases at them. Returns 0 and sets
 * *out (in the unit of le), or -1 when d holds no observation or no finite bound
 * can be given. */
int sched_scrape_quantile(const double *le, const double *d, size_t n, double q, double *out);

#endif
