/* Unit tests for the tensor codec and wire decoding of untrusted messages. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "tensor.h"
#include "wire.h"

static void test_dtype_names(void **state)
{
    assert_int_equal(dtype_from_name("FP32"), DT_FP32);
    assert_int_equal(dtype_from_name("INT64"), DT_INT64);
    assert_int_equal(dtype_from_name("BYTES"), DT_BYTES);
    assert_int_equal(dtype_from_name("fp32"), DT_INVALID);
    assert_int_equal(dtype_from_name(NULL), DT_INVALID);
    assert_string_equal(dtype_name(DT_UINT16), "UINT16");
    assert_string_equal(dtype_name((enum dtype)99), "INVALID");
    assert_int_equal(dtype_size(DT_FP64), 8);
    assert_int_equal(dtype_size(DT_BOOL), 1);
    assert_int_equal(dtype_size(DT_BYTES), 0);
}

static void test_numel_checks(void **state)
{
    struct cerr e = {0};
    int64_t n;
    int64_t ok[] = {2, 3, 4};
    assert_int_equal(tensor_numel(ok, 3, &n, &e), CORRAL_OK);
    assert_int_equal(n, 24);
    int64_t neg[] = {2, -1};
    assert_int_equal(tensor_numel(neg, 2, &n, &e), CORRAL_EINVAL);
    assert_non_null(strstr(e.msg, "-1"));
    int64_t huge[] = {INT64_MAX / 2, 4};
    assert_int_equal(tensor_numel(huge, 2, &n, &e), CORRAL_ETOOLARGE);
    size_t nb;
    int64_t big[] = {1 << 20, 1 << 20};
    assert_int_equal(tensor_nbytes(DT_FP32, big, 2, &nb, &e), CORRAL_ETOOLARGE);
    assert_int_equal(tensor_numel(ok, TENSOR_MAX_DIMS + 1, &n, &e), CORRAL_EINVAL);
}

static void test_check_size(void **state)
{
    struct cerr e = {0};
    float f[6] = {0};
    int64_t s[] = {2, 3};
    assert_int_equal(tensor_check_size("input 'x'", DT_FP32, s, 2, f, sizeof f, &e), CORRAL_OK);
    assert_int_equal(tensor_check_size("input 'x'", DT_FP32, s, 2, f, sizeof f - 4, &e),
                     CORRAL_EINVAL);
    assert_non_null(strstr(e.msg, "input 'x'"));
    assert_non_null(strstr(e.msg, "20 bytes"));
    assert_non_null(strstr(e.msg, "24"));
    /* BYTES: two elements "ab" and "" */
    uint8_t b[] = {2, 0, 0, 0, 'a', 'b', 0, 0, 0, 0};
    int64_t s2[] = {2};
    assert_int_equal(tensor_check_size("t", DT_BYTES, s2, 1, b, sizeof b, &e), CORRAL_OK);
    int64_t s3[] = {3};
    assert_int_equal(tensor_check_size("t", DT_BYTES, s3, 1, b, sizeof b, &e), CORRAL_EINVAL);
    /* A length prefix that runs past the end. */
    uint8_t bad[] = {9, 0, 0, 0, 'a'};
    int64_t s1[] = {1};
    assert_int_equal(tensor_check_size("t", DT_BYTES, s1, 1, bad, sizeof bad, &e), CORRAL_EINVAL);
    assert_non_null(strstr(e.msg, "claims 9 bytes"));
    uint8_t trunc[] = {1, 0};
    assert_int_equal(tensor_check_size("t", DT_BYTES, s1, 1, trunc, sizeof trunc, &e),
                     CORRAL_EINVAL);
}

static int pack_infer(int64_t *shape, size_t nshape, int dt, void *data, size_t len, uint8_t **buf,
                      size_t *blen)
{
    Corral__Tensor t = CORRAL__TENSOR__INIT;
    Corral__Tensor *tp = &t;
    Corral__InferRequest ir = CORRAL__INFER_REQUEST__INIT;
    Corral__Request r = CORRAL__REQUEST__INIT;
    t.name = "x";
    t.datatype = dt;
    t.shape = shape;
    t.n_shape = nshape;
    t.data.data = data;
    t.data.len = len;
    ir.inputs = &tp;
    ir.n_inputs = 1;
    r.kind_case = CORRAL__REQUEST__KIND_INFER;
    r.infer = &ir;
    return wire_pack_request(&r, buf, blen);
}

static void test_wire_roundtrip_and_rejections(void **state)
{
    struct cerr e = {0};
    uint8_t *buf;
    size_t len;
    Corral__Request *req;
    float f[4] = {1, 2, 3, 4};
    int64_t shape[] = {1, 4};
    assert_int_equal(pack_infer(shape, 2, DT_FP32, f, sizeof f, &buf, &len), 0);
    assert_int_equal(wire_decode_request(buf, len, &req, &e), CORRAL_OK);
    struct tensor v;
    wire_tensor_view(req->infer->inputs[0], &v);
    assert_int_equal(v.ndim, 2);
    assert_int_equal(v.dims[1], 4);
    assert_memory_equal(v.data, f, sizeof f);
    corral__request__free_unpacked(req, NULL);
    /* Every truncation of a valid message either fails to parse or is rejected cleanly. */
    for (size_t cut = 0; cut < len; cut++) {
        if (wire_decode_request(buf, cut, &req, &e) == CORRAL_OK)
            corral__request__free_unpacked(req, NULL);
    }
    free(buf);

    /* Byte length not matching the shape. */
    int64_t shape5[] = {1, 5};
    assert_int_equal(pack_infer(shape5, 2, DT_FP32, f, sizeof f, &buf, &len), 0);
    assert_int_equal(wire_decode_request(buf, len, &req, &e), CORRAL_EINVAL);
    assert_null(req);
    assert_non_null(strstr(e.msg, "expected 20"));
    free(buf);

    /* Datatype outside the enum. */
    assert_int_equal(pack_infer(shape, 2, 77, f, sizeof f, &buf, &len), 0);
    assert_int_equal(wire_decode_request(buf, len, &req, &e), CORRAL_EINVAL);
    assert_non_null(strstr(e.msg, "datatype"));
    free(buf);

    /* Too many dimensions. */
    int64_t many[TENSOR_MAX_DIMS + 1];
    for (int i = 0; i <= TENSOR_MAX_DIMS; i++)
        many[i] = 1;
    assert_int_equal(pack_infer(many, TENSOR_MAX_DIMS + 1, DT_FP32, f, 4, &buf, &len), 0);
    assert_int_equal(wire_decode_request(buf, len, &req, &e), CORRAL_EINVAL);
    free(buf);

    /* Garbage bytes. */
    uint8_t junk[] = {0xff, 0xff, 0xff, 0xff, 0x0f};
    assert_int_equal(wire_decode_request(junk, sizeof junk, &req, &e), CORRAL_EPARSE);
    /* An empty message carries no kind. */
    assert_int_equal(wire_decode_request(junk, 0, &req, &e), CORRAL_EINVAL);
}

static void test_error_response(void **state)
{
    uint8_t *buf;
    size_t len;
    Corral__Response *r;
    struct cerr e = {0};
    assert_int_equal(wire_pack_error(CORRAL_EQUEUEFULL, "full", &buf, &len), 0);
    assert_int_equal(wire_decode_response(buf, len, &r, &e), CORRAL_OK);
    assert_int_equal(r->kind_case, CORRAL__RESPONSE__KIND_ERROR);
    assert_int_equal(r->error->code, CORRAL_EQUEUEFULL);
    assert_string_equal(r->error->message, "full");
    assert_int_equal(corral_err_http_status(r->error->code), 429);
    corral__response__free_unpacked(r, NULL);
    free(buf);
    assert_int_equal(wire_pack_error(-999, "odd", &buf, &len), 0);
    assert_int_equal(wire_decode_response(buf, len, &r, &e), CORRAL_EPARSE);
    free(buf);
}

static void test_cerr_prefix(void **state)
{
    struct cerr e = {0};
    cerr_set(&e, CORRAL_EINVAL, "bad %d", 3);
    cerr_prefix(&e, "node '%s'", "n1");
    assert_string_equal(e.msg, "node 'n1': bad 3");
    assert_int_equal(e.code, CORRAL_EINVAL);
    assert_string_equal(corral_err_name(CORRAL_ETIMEDOUT), "ETIMEDOUT");
    assert_int_equal(corral_err_http_status(CORRAL_ENOTFOUND), 404);
    assert_int_equal(corral_err_http_status(12345), 500);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dtype_names),
        cmocka_unit_test(test_numel_checks),
        cmocka_unit_test(test_check_size),
        cmocka_unit_test(test_wire_roundtrip_and_rejections),
        cmocka_unit_test(test_error_response),
        cmocka_unit_test(test_cerr_prefix),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
