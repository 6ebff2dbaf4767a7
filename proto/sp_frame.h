/*
 * The SP (scalability protocols) framing over TCP that NNG's REQ and REP
 * sockets speak, shared by the router's requesting side (router/sp_req.c)
 * and the replica's replying side (replica/sp_rep.c).
 *
 * A connection starts with an 8-byte header from each side:
 *   0x00 'S' 'P' 0x00, the 16-bit protocol number (big-endian), 0x00 0x00
 * then carries messages as a 64-bit big-endian length and that many bytes.
 * A request's bytes begin with 32-bit big-endian "backtrace" words, the last
 * of them the request id with its top bit set; the reply repeats them.
 */
#ifndef CORRAL_SP_FRAME_H
#define CORRAL_SP_FRAME_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

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

/*
 * Makes room for `room` more bytes after the `used` ones of a buffer that grows
 * by doubling from `chunk` bytes; 0, or -1 (buffer unchanged) when out of memory.
 */
static inline int sp_buf_room(uint8_t **buf, size_t *cap, size_t used, size_t room, size_t chunk)
{
    if (*cap - used >= room)
        return 0;
    size_t c = *cap ? *cap : chunk;
    while (c - used < room)
        c *= 2;
    uint8_t *p = realloc(*buf, c);
    if (!p)
        return -1;
    *buf = p;
    *cap = c;
    return 0;
}

/*
 * Splits tcp://HOST:PORT (also tcp4:// and tcp6://; HOST a name, an address,
 * [IPv6], or * or empty for any address, given back as "") into host and port
 * (digits, 0 to 65535). *family is AF_UNSPEC, AF_INET or AF_INET6 from the
 * scheme. `what` names the URL in messages ("replica URL").
 */
int sp_url_split(const char *url, const char *what, int *family, char *host, size_t hl,
                 char *port, size_t pl, struct cerr *e);

#endif
