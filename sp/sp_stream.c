/*
 * sp_stream: the reading side of an SP connection, as a parser. See sp_proto.h.
 *
 * Both ends read the same stream shape, the peer's header and then length-prefixed
 * messages; they differ only in what leads a message: a server keeps the request's
 * whole backtrace for the reply, a client takes the one word that carries the id.
 */
#include "sp_proto.h"

void sp_stream_init(struct sp_stream *st, int peer_proto, size_t min_len, size_t max_len)
{
    st->peer_proto = peer_proto;
    st->greeted = 0;
    st->min_len = min_len;
    /* Capped so that a length with its 8-byte prefix always fits a size_t. */
    st->max_len = max_len > SIZE_MAX - 8 ? SIZE_MAX - 8 : max_len;
}

enum sp_unit_kind sp_stream_next(struct sp_stream *st, const uint8_t *in, size_t len,
                                 struct sp_unit *u)
{
    if (len < 8) {
        u->need = 8;
        return SP_UNIT_MORE;
    }
    if (!st->greeted) {
        int proto = sp_header_proto(in);
        if (proto < 0)
            return SP_UNIT_NOT_SP;
        u->proto = proto;
        if (proto != st->peer_proto)
            return SP_UNIT_WRONG_PROTO;
        st->greeted = 1;
        u->used = 8;
        return SP_UNIT_GREETING;
    }
    uint64_t n = sp_get_be64(in);
    if (n < st->min_len || n > st->max_len) {
        u->size = n;
        return SP_UNIT_BAD_SIZE;
    }
    /* n is within max_len, so the sums below cannot wrap. */
    if (len - 8 < n) {
        u->need = 8 + (size_t)n;
        return SP_UNIT_MORE;
    }
    u->msg = in + 8;
    u->len = (size_t)n;
    u->used = 8 + (size_t)n;
    if (st->peer_proto == SP_PROTO_REQ) {
        u->head = sp_backtrace_len(u->msg, u->len);
    } else {
        /* A reply without the request-id bit is not one of ours; NNG drops those too. */
        uint32_t w = u->len >= 4 ? sp_get_be32(u->msg) : 0;
        u->head = w & SP_ID_BIT ? 4 : 0;
        u->id = w & ~SP_ID_BIT;
    }
    return SP_UNIT_MESSAGE;
}
