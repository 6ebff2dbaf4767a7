/*
 * The request side of the HTTP message layer: http-parser's callbacks, which build a
 * `struct http_request` from the bytes of one connection and enforce what the server
 * promises about them (header and body limits, a deadline for the whole request, token
 * field names, no smuggling through Content-Length with chunked bodies, trailers read
 * and dropped, CRLF after every chunk), then hand each complete request to the handler.
 * The connection and its I/O are http.c's; what both see is in http_internal.h.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "http_internal.h"
#include "log.h"

/* ---- parser callbacks ---- */

static int reject(struct http_conn *c, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int reject(struct http_conn *c, int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err_msg, sizeof c->err_msg, fmt, ap);
    va_end(ap);
    c->err_status = status;
    return -1;
}

static int head_append(struct http_conn *c, char **p, size_t *len, size_t *cap, const char *at,
                       size_t n)
{
    struct http_request *r = c->cur;
    size_t lim = c->srv->lim.max_header_bytes;
    if (r->url_len + r->hbuf_len + n > lim)
        return reject(c, 431, "request line and headers exceed the %zu byte limit", lim);
    if (*len + n + 1 > *cap) {
        size_t nc = *cap ? *cap : 256;
        while (nc < *len + n + 1)
            nc *= 2;
        char *np = realloc(*p, nc);
        if (!np)
            return reject(c, 500, "out of memory while reading the request headers");
        *p = np;
        *cap = nc;
    }
    memcpy(*p + *len, at, n);
    *len += n;
    (*p)[*len] = '\0';
    return 0;
}

static int on_message_begin(http_parser *p)
{
    struct http_conn *c = p->data;
    if (c->closing)
        return -1;
    http_request_free(c->cur);
    c->msg_active = 1;
    c->msg_start_ms = uv_now(c->srv->loop);
    c->cur = calloc(1, sizeof *c->cur);
    if (!c->cur)
        return reject(c, 500, "out of memory while reading a request");
    c->cur->hoff = calloc(2 * (size_t)c->srv->lim.max_headers + 2, sizeof(size_t));
    if (!c->cur->hoff)
        return reject(c, 500, "out of memory while reading a request");
    return 0;
}

static int on_url(http_parser *p, const char *at, size_t n)
{
    struct http_conn *c = p->data;
    if (c->closing)
        return -1;
    struct http_request *r = c->cur;
    return head_append(c, &r->target, &r->url_len, &r->url_cap, at, n);
}

/*
 * Header names and values may arrive in several pieces (a read can end in the
 * middle of either), so they are collected into one buffer as "name\0value\0"
 * pairs and turned into pointers once the header block is complete.
 */
/* Trailer fields of a chunked body are read and dropped (nothing here uses them), within
 * the same byte limit as the header block. */
static int trailer_bytes(struct http_conn *c, struct http_request *r, size_t n)
{
    r->trailer_len += n;
    if (r->trailer_len > c->srv->lim.max_header_bytes)
        return reject(c, 431, "chunked trailer fields exceed the %zu byte limit",
                      c->srv->lim.max_header_bytes);
    return 0;
}

/* RFC 9110 token characters, the only ones a field name may hold. */
static int is_token(const char *s)
{
    if (!*s)
        return 0;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              strchr("!#$%&'*+-.^_`|~", *s)))
            return 0;
    return 1;
}

static int on_header_field(http_parser *p, const char *at, size_t n)
{
    struct http_conn *c = p->data;
    if (c->closing)
        return -1;
    struct http_request *r = c->cur;
    if (r->hstate == HS_DONE)
        return trailer_bytes(c, r, n);
    if (r->hstate != HS_FIELD) {
        if (r->hstate == HS_VALUE && head_append(c, &r->hbuf, &r->hbuf_len, &r->hbuf_cap, "", 1))
            return -1;
        if ((unsigned)r->n_headers >= c->srv->lim.max_headers)
            return reject(c, 431, "request has more than %u header fields", c->srv->lim.max_headers);
        r->hoff[2 * r->n_headers] = r->hbuf_len;
        r->n_headers++;
        r->hstate = HS_FIELD;
    }
    return head_append(c, &r->hbuf, &r->hbuf_len, &r->hbuf_cap, at, n);
}

static int on_header_value(http_parser *p, const char *at, size_t n)
{
    struct http_conn *c = p->data;
    if (c->closing)
        return -1;
    struct http_request *r = c->cur;
    if (r->hstate == HS_DONE)
        return trailer_bytes(c, r, n);
    if (r->hstate != HS_VALUE) {
        if (head_append(c, &r->hbuf, &r->hbuf_len, &r->hbuf_cap, "", 1))
            return -1;
        r->hoff[2 * (r->n_headers - 1) + 1] = r->hbuf_len;
        r->hstate = HS_VALUE;
    }
    return head_append(c, &r->hbuf, &r->hbuf_len, &r->hbuf_cap, at, n);
}

static int on_headers_complete(http_parser *p)
{
    struct http_conn *c = p->data;
    if (c->closing)
        return -1;
    struct http_request *r = c->cur;
    struct http_server *s = c->srv;
    if (r->hstate == HS_FIELD) /* a name without a value cannot pass the parser, but be safe */
        return reject(c, 400, "malformed HTTP request: header field without a value");
    if (r->hstate == HS_VALUE && head_append(c, &r->hbuf, &r->hbuf_len, &r->hbuf_cap, "", 1))
        return -1;
    if (r->n_headers) {
        r->headers = calloc((size_t)r->n_headers, sizeof *r->headers);
        if (!r->headers)
            return reject(c, 500, "out of memory while reading the request headers");
        for (int i = 0; i < r->n_headers; i++) {
            r->headers[i].name = r->hbuf + r->hoff[2 * i];
            r->headers[i].value = r->hbuf + r->hoff[2 * i + 1];
            /* A name with spaces ("Content-Length :") is read differently by different
             * parsers, which is how requests are smuggled past a proxy. */
            if (!is_token(r->headers[i].name))
                return reject(c, 400, "header field name '%.40s' is not a token (no spaces or "
                              "separators before the colon)", r->headers[i].name);
        }
    }
    if (!r->target)
        return reject(c, 400, "malformed HTTP request: empty request target");
    r->path = malloc(r->url_len + 2);
    if (!r->path)
        return reject(c, 500, "out of memory while reading the request target");
    const char *q = "";
    if (http_split_target(r->target, r->path, r->url_len + 2, &q) != 0)
        return reject(c, 400,
                      "request target '%.200s' is not a valid path (expected /v2/... with "
                      "well-formed percent escapes)",
                      r->target);
    r->query = (char *)q;
    r->method = (int)p->method;
    r->method_name = http_method_str((enum http_method)p->method);
    r->http_major = p->http_major;
    r->http_minor = p->http_minor;
    if (p->http_major != 1)
        return reject(c, 505, "HTTP/%d.%d is not supported (expected HTTP/1.0 or HTTP/1.1)",
                      p->http_major, p->http_minor);
    int has_len = (p->flags & F_CONTENTLENGTH) != 0;
    if (has_len && p->content_length > s->lim.max_body_bytes)
        return reject(c, 413, "request body of %llu bytes exceeds the %zu byte limit",
                      (unsigned long long)p->content_length, s->lim.max_body_bytes);
    if (has_len && p->content_length > 0) {
        r->body = malloc((size_t)p->content_length + 1);
        r->body_cap = (size_t)p->content_length + 1;
        if (!r->body)
            return reject(c, 500, "out of memory for a request body of %llu bytes",
                          (unsigned long long)p->content_length);
    }
    const char *expect = http_request_header(r, "Expect");
    if (expect && strcasecmp(expect, "100-continue") == 0 && !c->head) {
        /* Only when nothing is queued ahead: an interim answer must not overtake one. */
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        char *h = malloc(sizeof cont);
        if (h) {
            memcpy(h, cont, sizeof cont);
            http_conn_write_raw(c, h, sizeof cont - 1, NULL, 0);
        }
        if (c->closing)
            return -1;
    }
    r->hstate = HS_DONE;
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t n)
{
    struct http_conn *c = p->data;
    if (c->closing)
        return -1;
    struct http_request *r = c->cur;
    size_t lim = c->srv->lim.max_body_bytes;
    if (n == 0)
        return 0;
    if (n > lim - r->body_len)
        return reject(c, 413, "request body exceeds the %zu byte limit", lim);
    if ((p->flags & F_CHUNKED) && p->content_length == 0) {
        /* The end of a chunk's data: a CRLF must follow, here or in the next bytes read. */
        const char *after = at + n;
        size_t avail = (size_t)(c->feed_end - after);
        for (size_t k = 0; k < 2 && k < avail; k++)
            if (after[k] != "\r\n"[k])
                return reject(c, 400, "malformed chunked body: a chunk's data is not followed "
                              "by CRLF");
        c->crlf_due = avail >= 2 ? 0 : 2 - (int)avail;
    }
    if (r->body_len + n + 1 > r->body_cap) {
        /* Chunked bodies grow geometrically; declared lengths were allocated up front. */
        size_t nc = r->body_cap ? r->body_cap : 4096;
        while (nc < r->body_len + n + 1)
            nc *= 2;
        uint8_t *nb = realloc(r->body, nc);
        if (!nb)
            return reject(c, 500, "out of memory while reading the request body");
        r->body = nb;
        r->body_cap = nc;
    }
    memcpy(r->body + r->body_len, at, n);
    r->body_len += n;
    return 0;
}

/* A chunk larger than the room left is refused when its size is read, not after its
 * bytes have been waited for. */
static int on_chunk_header(http_parser *p)
{
    struct http_conn *c = p->data;
    if (c->closing)
        return -1;
    size_t lim = c->srv->lim.max_body_bytes;
    if (p->content_length > lim - c->cur->body_len)
        return reject(c, 413, "request body exceeds the %zu byte limit (a chunk of %llu bytes)",
                      lim, (unsigned long long)p->content_length);
    return 0;
}

static int on_message_complete(http_parser *p)
{
    struct http_conn *c = p->data;
    if (c->closing)
        return -1;
    struct http_server *s = c->srv;
    struct http_request *r = c->cur;
    c->cur = NULL;
    c->msg_active = 0;
    if (!r->body) {
        r->body = malloc(1);
        if (!r->body) {
            http_request_free(r);
            return reject(c, 500, "out of memory while reading a request");
        }
    }
    r->body[r->body_len] = '\0';
    free(r->hoff);
    r->hoff = NULL;
    r->keep_alive = http_should_keep_alive(p) && !p->upgrade && !s->draining;
    r->seq = ++s->seq;
    r->start_ns = uv_hrtime();
    http_conn_enqueue(c, r);
    if (!r->keep_alive)
        c->stop_reading = 1;
    s->handler(s->arg, r);
    /* Pausing stops the parser after this message; conn_process decides whether to go on. */
    if (c->closing || c->stop_reading || !http_conn_can_parse(c))
        http_parser_pause(p, 1);
    return 0;
}

/* The callbacks above, as every connection's parser runs them. */
const http_parser_settings http_parse_settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_chunk_header = on_chunk_header,
    .on_message_complete = on_message_complete,
};
