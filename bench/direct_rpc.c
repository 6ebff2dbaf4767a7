/*
 * corral-direct-rpc: latency of infer requests sent straight to a replica,
 * one at a time, over the same transport and the same code the router uses
 * (sp/sp_uv_client.h on a libuv loop), so that "through the router" minus this
 * is what the router adds.
 *
 * Usage: corral-direct-rpc REPLICA_URL MODEL BODY.json [REQUESTS]
 * BODY.json is an OIP infer body (as POSTed to the router). Prints
 *   requests=N p50_us=... p99_us=... errors=N
 * after a warm-up of 200 requests that are not counted.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "oip.h"
#include "sp_uv_client.h"
#include "wire.h"

#define WARMUP 200

struct run {
    uv_loop_t *loop;
    struct sp_req *conn;
    uint8_t *msg;
    size_t len;
    long total, sent, errors;
    uint64_t t0;
    double *lat;
    uint32_t id;
    int failed, closed;
    long seen; /* r->sent at the last watchdog tick */
    uv_timer_t watchdog;
};

static void finish(struct run *r)
{
    if (r->closed)
        return;
    r->closed = 1;
    sp_req_close(r->conn, NULL);
    uv_close((uv_handle_t *)&r->watchdog, NULL);
}

/* A replica that is not there, or stops answering, ends the run instead of hanging it. */
static void on_watchdog(uv_timer_t *t)
{
    struct run *r = t->data;
    if (r->sent == r->seen) {
        fprintf(stderr, "corral-direct-rpc: no answer for 5 s (is a replica listening?)\n");
        r->failed = 1;
        finish(r);
    }
    r->seen = r->sent;
}

static void send_next(struct run *r)
{
    r->id = (uint32_t)r->sent;
    r->t0 = uv_hrtime();
    if (sp_req_send(r->conn, r->id, r->msg, r->len) != 0) {
        fprintf(stderr, "corral-direct-rpc: the connection is not up\n");
        r->failed = 1;
        finish(r);
    }
}

static void on_up(void *arg)
{
    send_next(arg);
}

static void on_down(void *arg, const char *why)
{
    struct run *r = arg;
    fprintf(stderr, "corral-direct-rpc: connection lost: %s\n", why);
    r->failed = 1;
    finish(r);
}

static void on_reply(void *arg, uint32_t id, const uint8_t *body, size_t len)
{
    struct run *r = arg;
    if (id != r->id)
        return;
    uint64_t dt = uv_hrtime() - r->t0;
    Corral__Response *resp = NULL;
    struct cerr e = {0};
    if (wire_decode_response(body, len, &resp, &e) != 0 ||
        resp->kind_case != CORRAL__RESPONSE__KIND_INFER)
        r->errors++;
    if (resp)
        corral__response__free_unpacked(resp, NULL);
    if (r->sent >= WARMUP)
        r->lat[r->sent - WARMUP] = (double)dt / 1e3;
    r->sent++;
    if (r->sent < r->total + WARMUP)
        send_next(r);
    else
        finish(r);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    if (argc < 4 || argc > 5) {
        fprintf(stderr, "usage: corral-direct-rpc REPLICA_URL MODEL BODY.json [REQUESTS]\n");
        return 2;
    }
    long total = argc == 5 ? atol(argv[4]) : 10000;
    if (total < 1) {
        fprintf(stderr, "corral-direct-rpc: REQUESTS must be a positive count\n");
        return 2;
    }
    FILE *f = fopen(argv[3], "rb");
    if (!f) {
        perror(argv[3]);
        return 1;
    }
    static char body[1 << 22];
    size_t blen = fread(body, 1, sizeof body, f);
    fclose(f);
    struct oip_infer in;
    struct cerr e = {0};
    if (oip_infer_parse(body, blen, NULL, 0, argv[2], "", &in, &e) != 0) {
        fprintf(stderr, "corral-direct-rpc: %s: %s\n", argv[3], e.msg);
        return 1;
    }
    struct run r = {.loop = uv_default_loop(), .total = total};
    r.lat = malloc(sizeof *r.lat * (size_t)total);
    if (!r.lat || wire_pack_request(&in.req, &r.msg, &r.len) != 0) {
        fprintf(stderr, "corral-direct-rpc: out of memory\n");
        return 1;
    }
    oip_infer_free(&in);
    static const struct sp_req_events ev = {.up = on_up, .down = on_down, .reply = on_reply};
    if (sp_req_open(&r.conn, r.loop, argv[1], WIRE_MAX_MESSAGE, &ev, &r, &e) != 0) {
        fprintf(stderr, "corral-direct-rpc: %s\n", e.msg);
        return 1;
    }
    uv_timer_init(r.loop, &r.watchdog);
    r.watchdog.data = &r;
    r.seen = -1;
    uv_timer_start(&r.watchdog, on_watchdog, 5000, 5000);
    uv_run(r.loop, UV_RUN_DEFAULT);
    long done = r.sent > WARMUP ? r.sent - WARMUP : 0;
    if (r.failed || done < total) {
        fprintf(stderr, "corral-direct-rpc: stopped after %ld of %ld requests\n", done, total);
        return 1;
    }
    qsort(r.lat, (size_t)done, sizeof *r.lat, cmp_double);
    printf("requests=%ld p50_us=%.1f p99_us=%.1f errors=%ld\n", done, r.lat[done / 2],
           r.lat[(size_t)((double)done * 0.99)], r.errors);
    free(r.msg);
    free(r.lat);
    return r.errors ? 1 : 0;
}
