/*
 * The SP stream parser (sp/sp_stream.c, sp_proto.h) that every SP end reads its
 * connections with, as a server (the peer is a REQ: backtraces) and as a client (the
 * peer is a REP: request ids).
 *
 * Input: byte 0 picks the role and the message size limits, bytes 1 to 4 are the sizes
 * of the pieces the stream arrives in (cycled, 1 to 256 bytes each, as reads would
 * deliver them), the rest is the byte stream. It is read twice: whole, and piece by
 * piece the way the drivers do (the unread rest kept, the next piece appended, each
 * look given a heap block of exactly the bytes held, so AddressSanitizer sees any
 * read past them). Checked:
 *  - every message lies inside the bytes given, its length is the one its 8-byte
 *    prefix announces (read here independently) and within the limits, and it is the
 *    stream's bytes at that place;
 *  - a server's backtrace is whole words up to and including the first with the top
 *    bit, at most SP_MAX_HOPS of them; a client's id word is taken exactly when its
 *    top bit is set, and the id has that bit cleared;
 *  - "more" asks for more than is held, and never more than a whole allowed message;
 *  - the greeting comes once, first; header errors only before it, size errors only
 *    after it, for lengths outside the limits;
 *  - the pieces change nothing: both reads find the same units at the same places.
 */
#include "fuzz.h"
#include "sp_proto.h"

#define MAX_UNITS 4096

struct found {
    int kind;
    size_t at, len, head;
};

static uint64_t be64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

/* Checks one unit found at stream offset `at` with `held` bytes given from there. */
static void check_unit(const struct sp_stream *st, int was_greeted, enum sp_unit_kind k,
                       const struct sp_unit *u, const uint8_t *in, size_t held,
                       const uint8_t *stream, size_t at)
{
    switch (k) {
    case SP_UNIT_MORE:
        CHECK(u->need > held, "more: needs %zu with %zu held", u->need, held);
        CHECK(u->need <= 8 || u->need - 8 <= st->max_len, "more: needs %zu, over the limit",
              u->need);
        CHECK(u->need == 8 || (was_greeted && u->need == 8 + be64(stream + at)),
              "more: needs %zu, not what the prefix says", u->need);
        break;
    case SP_UNIT_GREETING:
        CHECK(!was_greeted && st->greeted, "greeting twice");
        CHECK(u->used == 8 && held >= 8, "greeting of %zu bytes", u->used);
        CHECK(u->proto == st->peer_proto, "greeting for protocol %d", u->proto);
        break;
    case SP_UNIT_NOT_SP:
    case SP_UNIT_WRONG_PROTO:
        CHECK(!was_greeted && held >= 8, "header error after the greeting");
        CHECK(k == SP_UNIT_NOT_SP || u->proto != st->peer_proto, "wrong protocol that is right");
        break;
    case SP_UNIT_BAD_SIZE:
        CHECK(was_greeted && held >= 8, "size error before the greeting");
        CHECK(u->size == be64(stream + at), "size error names %llu",
              (unsigned long long)u->size);
        CHECK(u->size < st->min_len || u->size > st->max_len, "size %llu refused within limits",
              (unsigned long long)u->size);
        break;
    case SP_UNIT_MESSAGE: {
        CHECK(was_greeted, "message before the greeting");
        CHECK(u->msg >= in + 8 && u->len <= held - 8 && u->msg + u->len <= in + held,
              "message outside the bytes given");
        CHECK(u->used == 8 + u->len && u->msg == in + 8, "message at the wrong place");
        CHECK(u->len == be64(stream + at), "message of %zu bytes, prefix says %llu", u->len,
              (unsigned long long)be64(stream + at));
        CHECK(u->len >= st->min_len && u->len <= st->max_len, "message of %zu bytes taken",
              u->len);
        CHECK(memcmp(u->msg, stream + at + 8, u->len) == 0, "message bytes differ");
        CHECK(u->head % 4 == 0 && u->head <= u->len, "head of %zu bytes", u->head);
        if (st->peer_proto == SP_PROTO_REQ) {
            CHECK(u->head <= 4 * SP_MAX_HOPS, "backtrace of %zu bytes", u->head);
            size_t first = 0;
            while (first < SP_MAX_HOPS && 4 * (first + 1) <= u->len && !(u->msg[4 * first] & 0x80))
                first++;
            size_t want = first < SP_MAX_HOPS && 4 * (first + 1) <= u->len ? 4 * (first + 1) : 0;
            CHECK(u->head == want, "backtrace of %zu bytes, expected %zu", u->head, want);
        } else {
            CHECK(u->head == ((u->len >= 4 && (u->msg[0] & 0x80)) ? 4u : 0u),
                  "id word taken wrongly");
            CHECK(!u->head || (u->id & SP_ID_BIT) == 0, "id keeps its marker bit");
        }
        break;
    }
    }
}

/* Reads stream[0..n) in pieces of the sizes `pieces` cycles through (0: all at once);
 * records the units found. Returns how many. */
static size_t read_stream(const uint8_t *stream, size_t n, const uint8_t *pieces, int peer,
                          size_t min_len, size_t max_len, struct found *out)
{
    struct sp_stream st;
    sp_stream_init(&st, peer, min_len, max_len);
    size_t base = 0, arrived = 0, nf = 0;
    int p = 0, done = 0;
    while (!done && nf < MAX_UNITS) {
        size_t piece = pieces ? (size_t)pieces[p++ % 4] + 1 : n;
        if (arrived == n)
            break;
        arrived = n - arrived < piece ? n : arrived + piece;
        /* The bytes held: from the first not yet taken to the last arrived. */
        size_t held = arrived - base;
        uint8_t *buf = (uint8_t *)fuzz_copy(stream + base, held);
        if (!buf)
            return nf;
        size_t off = 0;
        for (;;) {
            struct sp_unit u;
            int was = st.greeted;
            enum sp_unit_kind k = sp_stream_next(&st, buf + off, held - off, &u);
            check_unit(&st, was, k, &u, buf + off, held - off, stream, base + off);
            if (k == SP_UNIT_MORE)
                break;
            out[nf++] = (struct found){k, base + off, k == SP_UNIT_MESSAGE ? u.len : 0,
                                       k == SP_UNIT_MESSAGE ? u.head : 0};
            if (k != SP_UNIT_GREETING && k != SP_UNIT_MESSAGE) {
                done = 1;
                break;
            }
            off += u.used;
            if (nf == MAX_UNITS)
                break;
        }
        free(buf);
        base += off;
    }
    return nf;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct found whole[MAX_UNITS], split[MAX_UNITS];
    if (size < 5)
        return 0;
    int server = data[0] & 1;
    size_t min_len = server ? 0 : 4, max_len;
    switch ((data[0] >> 1) & 3) {
    case 0: max_len = 64; break;
    case 1: max_len = 1 << 20; break;
    case 2: max_len = (size_t)data[0] >> 3; break;
    default: max_len = SIZE_MAX; break;
    }
    const uint8_t *pieces = data + 1, *stream = data + 5;
    size_t n = size - 5;
    int peer = server ? SP_PROTO_REQ : SP_PROTO_REP;
    size_t a = read_stream(stream, n, NULL, peer, min_len, max_len, whole);
    size_t b = read_stream(stream, n, pieces, peer, min_len, max_len, split);
    CHECK(a == b || a == MAX_UNITS || b == MAX_UNITS, "%zu units whole, %zu in pieces", a, b);
    for (size_t i = 0; i < a && i < b; i++)
        CHECK(whole[i].kind == split[i].kind && whole[i].at == split[i].at &&
                  whole[i].len == split[i].len && whole[i].head == split[i].head,
              "unit %zu differs between the whole stream and its pieces", i);
    return 0;
}
