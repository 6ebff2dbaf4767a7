/*
 * sp_proto: the SP (scalability protocols) request/reply protocol over TCP that
 * NNG's REQ and REP sockets speak: the framing, and the reading side of one
 * connection as a byte-stream parser that does no I/O. Every SP end in corral
 * is a driver around it: the libuv client (sp_uv_client.h) and server
 * (sp_uv_server.h) of the router, and the epoll server of the replica
 * (sp_epoll_server.h).
 *
 * A connection starts with an 8-byte header from each side:
 *   0x00 'S' 'P' 0x00, the 16-bit protocol number (big-endian), 0x00 0x00
 * then carries messages as a 64-bit big-endian length and that many bytes.
 * A request's bytes begin with 32-bit big-endian "backtrace" words, the last
 * of them the request id with its top bit set; the reply repeats them.
 *
 * Reading a connection:
 *     struct sp_stream st;
 *     sp_stream_init(&st, SP_PROTO_REQ, 0, max_frame);   // a server: the peer is a REQ
 *     // with the bytes buffered so far, in[0..len):
 *     struct sp_unit u;
 *     switch (sp_stream_next(&st, in, len, &u)) {
 *     case SP_UNIT_MORE:     ...  read more; the unit being assembled takes u.need bytes
 *     case SP_UNIT_GREETING: ...  the peer's header was right; consume u.used bytes
 *     case SP_UNIT_MESSAGE:  ...  u.msg, u.len: one message, u.head bytes of backtrace
 *                                 (0: none, the message is dropped); consume u.used
 *     default:               ...  a protocol error (u.proto, u.size say which): close
 *     }
 * The parser reads only in[0..len) and never keeps a pointer into it; it takes
 * one unit a call, so that a driver may stop between messages (a full pending
 * limit) and come back to the same bytes later.
 */
#ifndef CORRAL_SP_PROTO_H
#define CORRAL_SP_PROTO_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "error.h"

#define SP_PROTO_REQ 0x30 /* REQv0 */
#define SP_PROTO_REP 0x31 /* REPv0 */
#define SP_ID_BIT 0x80000000u

/* Writes the connection header announcing protocol `proto`. */
static inline void sp_header(uint8_t out[8], unsigned proto)
{
    out[0] = 0;
    out[1] = 'S';
    out[2] = 'P';
    out[3] = 0;
    out[4] = (uint8_t)(proto >> 8);
    out[5] = (uint8_t)proto;
    out[6] = 0;
    out[7] = 0;
}

/* The protocol a peer's header announces, or -1 when it is not an SP header. */
static inline int sp_header_proto(const uint8_t h[8])
{
    if (h[0] != 0 || h[1] != 'S' || h[2] != 'P' || h[3] != 0 || h[6] != 0 || h[7] != 0)
        return -1;
    return (int)((unsigned)h[4] << 8 | h[5]);
}

static inline void sp_put_be64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8)
        p[i] = (uint8_t)v;
}

static inline uint64_t sp_get_be64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | p[i];
    return v;
}

static inline void sp_put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static inline uint32_t sp_get_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Backtrace words searched for the request id (NNG's default hop limit). */
#define SP_MAX_HOPS 8

/* Bytes of backtrace at the head of a request frame of n bytes (up to and including
 * the first word with the id bit), or 0 when there is none within SP_MAX_HOPS words. */
static inline size_t sp_backtrace_len(const uint8_t *f, size_t n)
{
    for (size_t i = 0; i < SP_MAX_HOPS && 4 * (i + 1) <= n; i++)
        if (f[4 * i] & 0x80)
            return 4 * (i + 1);
    return 0;
}

/* Bytes in front of a message body: the length, then the backtrace. */
#define SP_HEAD_MAX (8 + 4 * SP_MAX_HOPS)

/* A request's backtrace, kept to be put in front of its reply. */
struct sp_backtrace {
    size_t len;
    uint8_t w[4 * SP_MAX_HOPS];
};

/* Writes the length and backtrace that go before a reply of `len` body bytes; returns
 * how many bytes that is. */
static inline size_t sp_reply_head(uint8_t out[SP_HEAD_MAX], const struct sp_backtrace *bt,
                                   size_t len)
{
    sp_put_be64(out, (uint64_t)bt->len + len);
    memcpy(out + 8, bt->w, bt->len);
    return 8 + bt->len;
}

/* Writes the length and id (31 bits) that go before a request of `len` body bytes. */
static inline void sp_request_head(uint8_t out[12], uint32_t id, size_t len)
{
    sp_put_be64(out, (uint64_t)len + 4);
    sp_put_be32(out + 8, id | SP_ID_BIT);
}

/* What sp_stream_next found at the head of the input. */
enum sp_unit_kind {
    SP_UNIT_MORE,        /* incomplete: more bytes are needed */
    SP_UNIT_GREETING,    /* the peer's header, announcing the expected protocol */
    SP_UNIT_MESSAGE,     /* one whole message */
    SP_UNIT_NOT_SP,      /* the peer's first 8 bytes are not an SP header */
    SP_UNIT_WRONG_PROTO, /* an SP header announcing another protocol (u.proto) */
    SP_UNIT_BAD_SIZE,    /* a message length outside the limits (u.size) */
};

struct sp_unit {
    size_t used;        /* GREETING, MESSAGE: bytes of input the unit takes */
    size_t need;        /* MORE: bytes the unit being assembled takes in all */
    int proto;          /* WRONG_PROTO */
    uint64_t size;      /* BAD_SIZE: the length announced */
    const uint8_t *msg; /* MESSAGE: its bytes (inside the input), and how many */
    size_t len;
    size_t head;        /* MESSAGE: bytes of backtrace (a server's) or of request id (a
                         * client's) at its front; 0 when it has none and is dropped */
    uint32_t id;        /* MESSAGE, for a client: the request id (id bit cleared) */
};

/* The reading state of one connection. Owned by the connection's driver. */
struct sp_stream {
    int peer_proto; /* what the peer must announce: SP_PROTO_REQ for a server */
    int greeted;    /* the peer's header has been read */
    size_t min_len, max_len; /* message lengths taken; others end the connection */
};

/* A fresh connection's state: the peer must announce `peer_proto` (SP_PROTO_REQ makes
 * this end a server, SP_PROTO_REP a client), and messages are `min_len` to `max_len`
 * bytes, backtrace or id included. */
void sp_stream_init(struct sp_stream *st, int peer_proto, size_t min_len, size_t max_len);
/* Looks at in[0..len) and says what its first unit is (see the top of this file). */
enum sp_unit_kind sp_stream_next(struct sp_stream *st, const uint8_t *in, size_t len,
                                 struct sp_unit *u);

/*
 * Splits tcp://HOST:PORT (also tcp4:// and tcp6://; HOST a name, an address,
 * [IPv6], or * or empty for any address, given back as "") into host and port
 * (digits, 0 to 65535). *family is AF_UNSPEC, AF_INET or AF_INET6 from the
 * scheme. `what` names the URL in messages ("replica URL").
 */
int sp_url_split(const char *url, const char *what, int *family, char *host, size_t hl,
                 char *port, size_t pl, struct cerr *e);

#endif
