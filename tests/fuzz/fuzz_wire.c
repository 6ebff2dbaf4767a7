/*
 * The RPC wire (proto/wire.c): Request and Response protobuf messages as a
 * replica and the router decode them, and the SP frame's backtrace
 * (sp/sp_proto.h) in front of them. Byte 0 picks Request or Response. A
 * message that decodes must pack again; when that packed message decodes, it packs to
 * the same bytes. (Not always: protobuf-c keeps an unknown field numbered 0 whose tag
 * is written in two bytes, packs it in one and then refuses it, see
 * regressions/wire/field-zero-tag.)
 */

#include "fuzz.h"
#include "sp_proto.h"
#include "wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    int response = data[0] & 1;
    data++, size--;
    /* The replica strips the backtrace before decoding; both readings are tried. */
    size_t bt = sp_backtrace_len(data, size);
    CHECK(bt <= size && bt % 4 == 0, "backtrace of %zu bytes in %zu", bt, size);
    uint8_t *msg = (uint8_t *)fuzz_copy(data, size);
    if (!msg)
        return 0;
    struct cerr e = {0};
    uint8_t *p1 = NULL, *p2 = NULL;
    size_t l1 = 0, l2 = 0;
    if (response) {
        Corral__Response *r = NULL, *r2 = NULL;
        if (wire_decode_response(msg, size, &r, &e) == CORRAL_OK) {
            CHECK(wire_pack_response(r, &p1, &l1) == CORRAL_OK, "a decoded response does not pack");
            if (wire_decode_response(p1, l1, &r2, &e) == CORRAL_OK) {
                CHECK(wire_pack_response(r2, &p2, &l2) == CORRAL_OK, "a redecoded response does not pack");
                CHECK(l1 == l2 && memcmp(p1, p2, l1) == 0, "response packs to %zu then %zu bytes", l1,
                      l2);
                corral__response__free_unpacked(r2, NULL);
            }
            corral__response__free_unpacked(r, NULL);
        }
    } else {
        Corral__Request *r = NULL, *r2 = NULL;
        if (wire_decode_request(msg + bt, size - bt, &r, &e) == CORRAL_OK) {
            CHECK(wire_pack_request(r, &p1, &l1) == CORRAL_OK, "a decoded request does not pack");
            if (wire_decode_request(p1, l1, &r2, &e) == CORRAL_OK) {
                CHECK(wire_pack_request(r2, &p2, &l2) == CORRAL_OK, "a redecoded request does not pack");
                CHECK(l1 == l2 && memcmp(p1, p2, l1) == 0, "request packs to %zu then %zu bytes", l1,
                      l2);
                corral__request__free_unpacked(r2, NULL);
            }
            corral__request__free_unpacked(r, NULL);
        }
    }
    free(p1);
    free(p2);
    free(msg);
    return 0;
}
