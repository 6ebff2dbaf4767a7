/* JSON <-> tensor conversions of the OIP codec (oipjson/) behind the router's infer endpoint. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "oip_codec.h"
#include "wire.h"

/* Converts `data` and returns the error code; bytes land in *out. */
static int conv(const char *data, enum dtype dt, const int64_t *dims, int ndim, uint8_t **out,
                size_t *len, struct cerr *e)
{
    struct jdoc d;
    struct cerr pe = {0};
    if (jdoc_parse(&d, data, strlen(data), &pe))
        fail_msg("test data '%s' is not JSON: %s", data, pe.msg);
    cerr_clear(e);
    int rc = oip_json_array_to_tensor("input 'x'", &d, 0, dt, dims, ndim, out, len, e);
    jdoc_free(&d);
    return rc;
}

static void expect_ok(const char *data, enum dtype dt, const int64_t *dims, int ndim,
                      const void *want, size_t want_len)
{
    uint8_t *out = NULL;
    size_t len = 0;
    struct cerr e = {0};
    int rc = conv(data, dt, dims, ndim, &out, &len, &e);
    if (rc)
        fail_msg("%s as %s: %s", data, dtype_name(dt), e.msg);
    assert_int_equal(len, want_len);
    assert_memory_equal(out, want, want_len);
    free(out);
}

static void expect_err(const char *data, enum dtype dt, const int64_t *dims, int ndim,
                       const char *substr)
{
    uint8_t *out = NULL;
    size_t len = 0;
    struct cerr e = {0};
    int rc = conv(data, dt, dims, ndim, &out, &len, &e);
    if (rc == 0)
        fail_msg("%s as %s was accepted", data, dtype_name(dt));
    assert_int_equal(rc, CORRAL_EINVAL);
    assert_null(out);
    if (!strstr(e.msg, substr))
        fail_msg("message '%s' lacks '%s'", e.msg, substr);
}

static void test_flat_and_nested(void **state)
{
    int64_t d23[] = {2, 3};
    float want[] = {1, 2, 3, 4, 5, 6.5f};
    expect_ok("[1,2,3,4,5,6.5]", DT_FP32, d23, 2, want, sizeof want);
    expect_ok("[[1,2,3],[4,5,6.5]]", DT_FP32, d23, 2, want, sizeof want);
    int64_t d3[] = {1, 2, 3};
    expect_ok("[[[1,2,3],[4,5,6.5]]]", DT_FP32, d3, 3, want, sizeof want);
    expect_err("[[1,2],[3,4],[5,6.5]]", DT_FP32, d23, 2,
               "data has 3 values at nesting depth 0, shape [2,3] expects 2 there");
    expect_err("[[1,2,3],[4,5]]", DT_FP32, d23, 2, "has 5 values, shape [2,3] expects 6");
    expect_err("[[1,2],[3,4,5,6.5]]", DT_FP32, d23, 2, "has 2 values at nesting depth 1");
    expect_err("[[1,2,3],4,5,6]", DT_FP32, d23, 2, "data has 4 values at nesting depth 0, shape [2,3] expects 2");
    expect_err("[[1,2,3],[4,5,[6]]]", DT_FP32, d23, 2, "nested deeper than its shape");
    expect_err("[[1,2,3,4],5,6]", DT_FP32, d23, 2, "data has 3 values at nesting depth 0");
    expect_err("[[[1],[2],[3]],[[4],[5],[6]]]", DT_FP32, d23, 2, "nested deeper than its shape");
    int64_t huge[] = {1000000000};
    expect_err("[1,2]", DT_FP32, huge, 1, "has 2 values, shape [1000000000] expects 1000000000");
    expect_err("[1,[2,3],4,5,6]", DT_FP32, d23, 2, "mixes arrays and values");
    expect_err("5", DT_FP32, d23, 2, "'data' must be an array of 6 values");
    int64_t d164[] = {1, 64};
    struct cerr e = {0};
    uint8_t *out = NULL;
    size_t len = 0;
    char text[400] = "[";
    for (int i = 0; i < 63; i++)
        strcat(text, i ? ",1" : "1");
    strcat(text, "]");
    assert_int_equal(conv(text, DT_FP32, d164, 2, &out, &len, &e), CORRAL_EINVAL);
    assert_string_equal(e.msg, "input 'x' has 63 values, shape [1,64] expects 64");
    int64_t d0[] = {0, 4};
    expect_ok("[]", DT_FP32, d0, 2, "", 0);
    expect_ok("[7]", DT_INT32, NULL, 0, (int32_t[]){7}, 4); /* a scalar has one element */
}

static void test_integer_types(void **state)
{
    int64_t d2[] = {2};
    expect_ok("[0,255]", DT_UINT8, d2, 1, (uint8_t[]){0, 255}, 2);
    expect_err("[0,256]", DT_UINT8, d2, 1, "value 256 at index 1 is out of range for UINT8 (0 to 255)");
    expect_err("[-1,0]", DT_UINT8, d2, 1, "out of range for UINT8");
    expect_ok("[-128,127]", DT_INT8, d2, 1, (int8_t[]){-128, 127}, 2);
    expect_err("[-129,0]", DT_INT8, d2, 1, "out of range for INT8 (-128 to 127)");
    expect_ok("[0,65535]", DT_UINT16, d2, 1, (uint16_t[]){0, 65535}, 4);
    expect_err("[65536,0]", DT_UINT16, d2, 1, "out of range for UINT16");
    expect_ok("[-32768,32767]", DT_INT16, d2, 1, (int16_t[]){-32768, 32767}, 4);
    expect_err("[32768,0]", DT_INT16, d2, 1, "out of range for INT16");
    expect_ok("[0,4294967295]", DT_UINT32, d2, 1, (uint32_t[]){0, 4294967295u}, 8);
    expect_err("[4294967296,0]", DT_UINT32, d2, 1, "out of range for UINT32");
    expect_ok("[-2147483648,2147483647]", DT_INT32, d2, 1, (int32_t[]){INT32_MIN, INT32_MAX}, 8);
    expect_err("[2147483648,0]", DT_INT32, d2, 1, "out of range for INT32");
    expect_ok("[-9223372036854775808,9223372036854775807]", DT_INT64, d2, 1,
              (int64_t[]){INT64_MIN, INT64_MAX}, 16);
    expect_ok("[0,9223372036854775807]", DT_UINT64, d2, 1, (uint64_t[]){0, INT64_MAX}, 16);
    expect_err("[-1,0]", DT_UINT64, d2, 1, "out of range for UINT64");
    /* The whole UINT64 range is accepted as JSON, not only what fits int64. */
    expect_ok("[18446744073709551615,9223372036854775808]", DT_UINT64, d2, 1,
              (uint64_t[]){UINT64_MAX, (uint64_t)INT64_MAX + 1}, 16);
    expect_err("[18446744073709551616,0]", DT_UINT64, d2, 1, "out of range for UINT64");
    expect_err("[9223372036854775808,0]", DT_INT64, d2, 1, "out of range for INT64");
    expect_ok("[-9223372036854775808,1e2]", DT_INT64, d2, 1, (int64_t[]){INT64_MIN, 100}, 16);
    expect_ok("[3.0,-2.0]", DT_INT32, d2, 1, (int32_t[]){3, -2}, 8);
    expect_err("[3.5,0]", DT_INT32, d2, 1, "value 3.5 at index 0 is not an integer");
    expect_err("[\"3\",0]", DT_INT32, d2, 1, "element 0 is a JSON string, expected an integer for datatype INT32");
    expect_err("[true,0]", DT_INT64, d2, 1, "is a JSON boolean");
    expect_err("[null,0]", DT_UINT8, d2, 1, "is a JSON null");
}

static void test_bool_float_bytes(void **state)
{
    int64_t d3[] = {3};
    expect_ok("[true,false,1]", DT_BOOL, d3, 1, (uint8_t[]){1, 0, 1}, 3);
    expect_err("[true,2,false]", DT_BOOL, d3, 1, "element 1 is not a boolean");
    expect_ok("[1.5,-2,0.1]", DT_FP64, d3, 1, (double[]){1.5, -2, 0.1}, 24);
    expect_ok("[1.5,-2,0.1]", DT_FP32, d3, 1, (float[]){1.5f, -2.0f, 0.1f}, 12);
    expect_err("[1e39,0,0]", DT_FP32, d3, 1, "out of range for FP32");
    expect_err("[\"a\",0,0]", DT_FP32, d3, 1, "is a JSON string, expected a number for datatype FP32");
    expect_ok("[1.5,-2,65504]", DT_FP16, d3, 1, (uint16_t[]){0x3e00, 0xc000, 0x7bff}, 6);
    expect_err("[70000,0,0]", DT_FP16, d3, 1, "out of range for FP16");
    expect_ok("[1.0,-2,3]", DT_BF16, d3, 1, (uint16_t[]){0x3f80, 0xc000, 0x4040}, 6);
    int64_t d2[] = {2};
    uint8_t want[] = {2, 0, 0, 0, 'a', 'b', 0, 0, 0, 0};
    expect_ok("[\"ab\",\"\"]", DT_BYTES, d2, 1, want, sizeof want);
    uint8_t wnul[] = {3, 0, 0, 0, 'a', 0, 'b', 1, 0, 0, 0, 'c'};
    expect_ok("[\"a\\u0000b\",\"c\"]", DT_BYTES, d2, 1, wnul, sizeof wnul);
    expect_err("[\"a\",1]", DT_BYTES, d2, 1, "element 1 is not a string");
    expect_err("[\"a\"]", DT_BYTES, d2, 1, "has 1 values, shape [2] expects 2");
}

static void test_half_conversions(void **state)
{
    assert_int_equal(oip_f32_to_f16(0.0f), 0x0000);
    assert_int_equal(oip_f32_to_f16(-0.0f), 0x8000);
    assert_int_equal(oip_f32_to_f16(1.0f), 0x3c00);
    assert_int_equal(oip_f32_to_f16(65504.0f), 0x7bff);
    assert_int_equal(oip_f32_to_f16(65520.0f), 0x7c00); /* rounds up to infinity */
    assert_int_equal(oip_f32_to_f16(INFINITY), 0x7c00);
    assert_true((oip_f32_to_f16(NAN) & 0x7c00) == 0x7c00 && (oip_f32_to_f16(NAN) & 0x3ff));
    assert_int_equal(oip_f32_to_f16(5.9604645e-8f), 0x0001); /* smallest subnormal */
    assert_int_equal(oip_f32_to_f16(2.0e-8f), 0x0000);
    assert_int_equal(oip_f32_to_f16(1.0009765625f), 0x3c01);
    assert_int_equal(oip_f32_to_f16(1.00048828125f), 0x3c00); /* tie goes to even */
    for (uint32_t h = 0; h < 0x7c00; h++) {
        float f = oip_f16_to_f32((uint16_t)h);
        if (oip_f32_to_f16(f) != h)
            fail_msg("half 0x%04x -> %g does not round-trip", h, (double)f);
    }
    assert_true(oip_f16_to_f32(0x0001) == 5.9604645e-8f);
    assert_true(isinf(oip_f16_to_f32(0xfc00)) && oip_f16_to_f32(0xfc00) < 0);
    assert_int_equal(oip_f32_to_bf16(1.0f), 0x3f80);
    assert_true(oip_bf16_to_f32(0x3f80) == 1.0f);
    assert_int_equal(oip_f32_to_bf16(1.00390625f), 0x3f80); /* tie to even */
}

static void test_parse_request(void **state)
{
    struct oip_infer in;
    struct cerr e = {0};
    const char *ok = "{\"id\":\"r1\",\"parameters\":{\"priority\":1,\"tag\":\"x\"},"
                     "\"inputs\":[{\"name\":\"a\",\"shape\":[1,2],\"datatype\":\"INT32\","
                     "\"data\":[[1,2]]},{\"name\":\"b\",\"shape\":[2],\"datatype\":\"BYTES\","
                     "\"data\":[\"x\",\"yz\"]}],\"outputs\":[{\"name\":\"o\"}]}";
    assert_int_equal(oip_infer_parse(ok, strlen(ok), NULL, 0, "m", "1", &in, &e), 0);
    assert_string_equal(in.id, "r1");
    assert_int_equal(in.ir.n_inputs, 2);
    assert_string_equal(in.ir.inputs[0]->name, "a");
    assert_int_equal(in.ir.inputs[0]->datatype, DT_INT32);
    assert_int_equal(in.ir.inputs[0]->n_shape, 2);
    assert_int_equal(in.ir.inputs[0]->data.len, 8);
    assert_int_equal(in.ir.inputs[1]->data.len, 4 + 1 + 4 + 2);
    assert_int_equal(in.ir.n_outputs, 1);
    assert_string_equal(in.out_names[0], "o");
    assert_int_equal(in.ir.n_parameters, 2);
    assert_string_equal(in.ir.model_name, "m");
    assert_string_equal(in.ir.model_version, "1");
    /* The request must pack and decode as a valid wire message. */
    size_t n = corral__request__get_packed_size(&in.req);
    uint8_t *buf = malloc(n);
    corral__request__pack(&in.req, buf);
    Corral__Request *back = NULL;
    assert_int_equal(wire_decode_request(buf, n, &back, &e), 0);
    assert_int_equal(back->infer->n_inputs, 2);
    corral__request__free_unpacked(back, NULL);
    free(buf);
    oip_infer_free(&in);

    struct {
        const char *body;
        int code;
        const char *msg;
    } bad[] = {
        {"{\"inputs\": [", CORRAL_EINVAL, "request body is not valid JSON: "},
        {"{\n\"inputs\": x}", CORRAL_EINVAL, "at line 2 column"},
        {"[1]", CORRAL_EINVAL, "request body is an array, expected an object"},
        {"{}", CORRAL_EINVAL, "request has no 'inputs' array (expected {\"inputs\": [{\"name\", \"shape\", \"datatype\", \"data\"}]})"},
        {"{\"inputs\":[]}", CORRAL_EINVAL, "request has no 'inputs' array"},
        {"{\"id\":5,\"inputs\":[]}", CORRAL_EINVAL, "request 'id' is a number, expected a string"},
        {"{\"inputs\":[5]}", CORRAL_EINVAL, "input 0 is a number, expected an object"},
        {"{\"inputs\":[{\"shape\":[1],\"datatype\":\"FP32\",\"data\":[1]}]}", CORRAL_EINVAL, "input 0 has no 'name'"},
        {"{\"inputs\":[{\"name\":\"a\",\"datatype\":\"FP32\",\"data\":[1]}]}", CORRAL_EINVAL, "input 'a' has no 'shape'"},
        {"{\"inputs\":[{\"name\":\"a\",\"shape\":[-1],\"datatype\":\"FP32\",\"data\":[1]}]}", CORRAL_EINVAL, "input 'a' shape dimension 0 is negative"},
        {"{\"inputs\":[{\"name\":\"a\",\"shape\":[1],\"data\":[1]}]}", CORRAL_EINVAL, "input 'a' has no 'datatype'"},
        {"{\"inputs\":[{\"name\":\"a\",\"shape\":[1],\"datatype\":\"FLOAT\",\"data\":[1]}]}", CORRAL_EINVAL, "input 'a' has unknown datatype 'FLOAT'"},
        {"{\"inputs\":[{\"name\":\"a\",\"shape\":[1],\"datatype\":\"FP32\"}]}", CORRAL_EINVAL, "input 'a' has no 'data'"},
        {"{\"inputs\":[{\"name\":\"a\",\"shape\":[1],\"datatype\":\"FP32\",\"data\":[1]},{\"name\":\"a\",\"shape\":[1],\"datatype\":\"FP32\",\"data\":[1]}]}", CORRAL_EINVAL, "input 'a' appears twice"},
        {"{\"inputs\":[{\"name\":\"a\",\"shape\":[1],\"datatype\":\"FP32\",\"data\":[1]}],\"outputs\":[{\"name\":\"o\",\"parameters\":{\"classification\":0}}]}", CORRAL_EINVAL, "classification must be an integer from 1"},
        {"{\"inputs\":[{\"name\":\"a\",\"shape\":[1],\"datatype\":\"FP32\",\"data\":[1]}],\"parameters\":{\"timeout\":-5}}", CORRAL_EINVAL, "timeout must be an integer number of microseconds"},
        {"{\"inputs\":[{\"name\":\"a\",\"shape\":[1],\"datatype\":\"FP32\",\"data\":[1]}],\"outputs\":[{\"name\":\"o\"},{\"name\":\"o\"}]}", CORRAL_EINVAL, "output 'o' is requested twice"},
        {"{\"inputs\":[{\"name\":\"a\",\"shape\":[1],\"datatype\":\"FP32\",\"data\":[1]}],\"parameters\":{\"p\":[1]}}", CORRAL_EINVAL, "request parameter 'p' is an array, expected a string, number or boolean"},
        {"{\"inputs\":[{\"name\":\"a\",\"shape\":[1,1,1,1,1,1,1,1,1],\"datatype\":\"FP32\",\"data\":[1]}]}", CORRAL_EINVAL, "9 dimensions, expected at most 8"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cerr_clear(&e);
        int rc = oip_infer_parse(bad[i].body, strlen(bad[i].body), NULL, 0, "m", "", &in, &e);
        oip_infer_free(&in);
        if (rc != bad[i].code || !strstr(e.msg, bad[i].msg))
            fail_msg("case %zu: rc %d message '%s', expected %d and '%s'", i, rc, e.msg,
                     bad[i].code, bad[i].msg);
    }
    /* The parser must honour the length: trailing bytes past it are not JSON. */
    const char *trail = "{\"inputs\":[{\"name\":\"a\",\"shape\":[1],\"datatype\":\"FP32\",\"data\":[1]}]}garbage";
    assert_int_equal(oip_infer_parse(trail, strlen(trail) - 7, NULL, 0, "m", "", &in, &e), 0);
    oip_infer_free(&in);
}

static void test_parse_binary(void **state)
{
    struct oip_infer in;
    struct cerr e = {0};
    const char *j = "{\"inputs\":[{\"name\":\"a\",\"shape\":[2],\"datatype\":\"FP32\","
                    "\"parameters\":{\"binary_data_size\":8}},{\"name\":\"b\",\"shape\":[1],"
                    "\"datatype\":\"INT8\",\"data\":[3]}],\"parameters\":{\"binary_data_output\":true}}";
    float bin[2] = {1.5f, 2.5f};
    assert_int_equal(oip_infer_parse(j, strlen(j), (uint8_t *)bin, 8, "m", "", &in, &e), 0);
    assert_int_equal(in.ir.inputs[0]->data.len, 8);
    assert_memory_equal(in.ir.inputs[0]->data.data, bin, 8);
    assert_int_equal(in.binary_all, 1);
    assert_int_equal(in.ir.n_parameters, 0); /* consumed by the router, not forwarded */
    oip_infer_free(&in);
    assert_int_equal(oip_infer_parse(j, strlen(j), (uint8_t *)bin, 4, "m", "", &in, &e), CORRAL_EINVAL);
    assert_non_null(strstr(e.msg, "binary_data_size is 8, but only 4 bytes"));
    oip_infer_free(&in);
    uint8_t more[12] = {0};
    assert_int_equal(oip_infer_parse(j, strlen(j), more, 12, "m", "", &in, &e), CORRAL_EINVAL);
    assert_non_null(strstr(e.msg, "has 12 bytes, the inputs' binary_data_size values add up to 8"));
    oip_infer_free(&in);
    const char *j2 = "{\"inputs\":[{\"name\":\"a\",\"shape\":[3],\"datatype\":\"FP32\","
                     "\"parameters\":{\"binary_data_size\":8}}]}";
    assert_int_equal(oip_infer_parse(j2, strlen(j2), (uint8_t *)bin, 8, "m", "", &in, &e), CORRAL_EINVAL);
    assert_non_null(strstr(e.msg, "has 8 bytes of data, expected 12"));
    oip_infer_free(&in);
}

static Corral__Tensor mk(const char *name, enum dtype dt, int64_t *shape, size_t nd, void *data,
                         size_t len)
{
    Corral__Tensor t = CORRAL__TENSOR__INIT;
    t.name = (char *)name;
    t.datatype = (Corral__DataType)dt;
    t.shape = shape;
    t.n_shape = nd;
    t.data.data = data;
    t.data.len = len;
    return t;
}

static void test_render(void **state)
{
    int64_t s2[] = {1, 3}, s1[] = {2};
    float f[] = {0.1f, 1.0f / 3.0f, -2.5e-8f};
    uint8_t bytes[] = {2, 0, 0, 0, 'h', 'i', 1, 0, 0, 0, '"'};
    Corral__Tensor t0 = mk("logits", DT_FP32, s2, 2, f, sizeof f);
    Corral__Tensor t1 = mk("names", DT_BYTES, s1, 1, bytes, sizeof bytes);
    Corral__Tensor *outs[] = {&t0, &t1};
    Corral__InferResponse r = CORRAL__INFER_RESPONSE__INIT;
    r.model_name = "digits";
    r.model_version = "1";
    r.outputs = outs;
    r.n_outputs = 2;
    struct cerr e = {0};
    char *body = NULL;
    size_t len = 0, jlen = 0;
    assert_int_equal(oip_infer_response_render(&r, NULL, "digits", &body, &len, &jlen, &e), 0);
    assert_string_equal(body,
        "{\"model_name\":\"digits\",\"model_version\":\"1\",\"outputs\":["
        "{\"name\":\"logits\",\"datatype\":\"FP32\",\"shape\":[1,3],\"data\":[0.1,0.33333334,-2.5e-08]},"
        "{\"name\":\"names\",\"datatype\":\"BYTES\",\"shape\":[2],\"data\":[\"hi\",\"\\\"\"]}]}");
    assert_int_equal(len, jlen);
    /* Every FP32 value printed must read back bit-exactly. */
    json_t *j = json_loadb(body, len, 0, NULL);
    json_t *data = json_object_get(json_array_get(json_object_get(j, "outputs"), 0), "data");
    for (size_t i = 0; i < 3; i++)
        assert_true((float)json_number_value(json_array_get(data, i)) == f[i]);
    json_decref(j);
    free(body);

    /* Requested outputs: filtered, ordered as asked, binary where asked, id echoed. */
    struct oip_infer in;
    const char *req = "{\"id\":\"q\",\"inputs\":[{\"name\":\"a\",\"shape\":[1],\"datatype\":\"FP32\","
                      "\"data\":[1]}],\"outputs\":[{\"name\":\"names\"},{\"name\":\"logits\","
                      "\"parameters\":{\"binary_data\":true}}]}";
    assert_int_equal(oip_infer_parse(req, strlen(req), NULL, 0, "digits", "", &in, &e), 0);
    assert_int_equal(oip_infer_response_render(&r, &in, "digits", &body, &len, &jlen, &e), 0);
    const char *wantj = "{\"model_name\":\"digits\",\"model_version\":\"1\",\"id\":\"q\",\"outputs\":["
        "{\"name\":\"names\",\"datatype\":\"BYTES\",\"shape\":[2],\"data\":[\"hi\",\"\\\"\"]},"
        "{\"name\":\"logits\",\"datatype\":\"FP32\",\"shape\":[1,3],\"parameters\":{\"binary_data_size\":12}}]}";
    assert_int_equal(jlen, strlen(wantj));
    assert_memory_equal(body, wantj, jlen);
    assert_int_equal(len, jlen + 12);
    assert_memory_equal(body + jlen, f, 12);
    free(body);
    oip_infer_free(&in);

    /* A requested output the replica did not return is an internal error. */
    const char *req2 = "{\"inputs\":[{\"name\":\"a\",\"shape\":[1],\"datatype\":\"FP32\","
                       "\"data\":[1]}],\"outputs\":[{\"name\":\"nope\"}]}";
    assert_int_equal(oip_infer_parse(req2, strlen(req2), NULL, 0, "digits", "", &in, &e), 0);
    assert_int_equal(oip_infer_response_render(&r, &in, "digits", &body, &len, &jlen, &e),
                     CORRAL_EINTERNAL);
    assert_non_null(strstr(e.msg, "no output 'nope'"));
    oip_infer_free(&in);
}

static void test_tensor_to_json(void **state)
{
    struct {
        enum dtype dt;
        const void *data;
        size_t len;
        const char *want;
    } cases[] = {
        {DT_BOOL, (uint8_t[]){1, 0}, 2, "[true,false]"},
        {DT_UINT8, (uint8_t[]){0, 255}, 2, "[0,255]"},
        {DT_INT8, (int8_t[]){-128, 127}, 2, "[-128,127]"},
        {DT_UINT16, (uint16_t[]){65535}, 2, "[65535]"},
        {DT_INT16, (int16_t[]){-32768}, 2, "[-32768]"},
        {DT_UINT32, (uint32_t[]){4294967295u}, 4, "[4294967295]"},
        {DT_INT32, (int32_t[]){INT32_MIN}, 4, "[-2147483648]"},
        {DT_UINT64, (uint64_t[]){UINT64_MAX}, 8, "[18446744073709551615]"},
        {DT_INT64, (int64_t[]){INT64_MIN}, 8, "[-9223372036854775808]"},
        {DT_FP16, (uint16_t[]){0x3e00, 0x7c00}, 4, "[1.5,null]"},
        {DT_BF16, (uint16_t[]){0x3f80}, 2, "[1]"},
        {DT_FP32, (float[]){NAN, 16777216.0f, 1e-45f}, 12, "[null,16777216,1e-45]"},
        {DT_FP64, (double[]){0.1, 1.0 / 3.0}, 16, "[0.1,0.3333333333333333]"},
        {DT_BYTES, (uint8_t[]){1, 0, 0, 0, '\n'}, 5, "[\"\\n\"]"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct buf b = {0};
        struct cerr e = {0};
        assert_int_equal(oip_tensor_to_json(&b, "output 'o'", cases[i].dt, cases[i].data, cases[i].len, &e), 0);
        char *s = buf_steal(&b, NULL);
        if (strcmp(s, cases[i].want) != 0)
            fail_msg("%s: got %s, expected %s", dtype_name(cases[i].dt), s, cases[i].want);
        free(s);
    }
    struct buf b = {0};
    struct cerr e = {0};
    uint8_t bad_utf8[] = {2, 0, 0, 0, 0xc3, 0x28};
    assert_int_equal(oip_tensor_to_json(&b, "output 'o'", DT_BYTES, bad_utf8, sizeof bad_utf8, &e), CORRAL_EUNSUPP);
    assert_non_null(strstr(e.msg, "not valid UTF-8"));
    buf_free(&b);
    uint8_t trunc[] = {9, 0, 0, 0, 'a'};
    assert_int_equal(oip_tensor_to_json(&b, "output 'o'", DT_BYTES, trunc, sizeof trunc, &e), CORRAL_EIO);
    buf_free(&b);
    assert_int_equal(oip_tensor_to_json(&b, "output 'o'", DT_FP32, trunc, 5, &e), CORRAL_EIO);
    buf_free(&b);
}

static void test_classify(void **state)
{
    /* Two rows of four scores, with a tie and a NaN: highest first, ties by index. */
    float f[] = {0.1f, 0.7f, 0.7f, 0.2f, NAN, -1.0f, 3.0f, 2.0f};
    int64_t shape[] = {2, 4};
    Corral__Tensor t = mk("probs", DT_FP32, shape, 2, f, sizeof f);
    char *labels[] = {"zero", "one", "two"};
    int64_t out_shape[2];
    int nd = 0;
    uint8_t *data = NULL;
    size_t len = 0;
    struct cerr e = {0};
    assert_int_equal(oip_classify(&t, 3, labels, 3, out_shape, &nd, &data, &len, &e), 0);
    assert_int_equal(nd, 2);
    assert_int_equal(out_shape[0], 2);
    assert_int_equal(out_shape[1], 3);
    struct buf b = {0};
    assert_int_equal(oip_tensor_to_json(&b, "o", DT_BYTES, data, len, &e), 0);
    char *js = buf_steal(&b, NULL);
    assert_string_equal(js, "[\"0.700000:1:one\",\"0.700000:2:two\",\"0.200000:3\","
                            "\"3.000000:2:two\",\"2.000000:3\",\"-1.000000:1:one\"]");
    free(js);
    free(data);
    /* k larger than the classes; a 1-D output; integer scores. */
    int32_t iv[] = {5, 9, 1};
    int64_t s1[] = {3};
    Corral__Tensor ti = mk("v", DT_INT32, s1, 1, iv, sizeof iv);
    assert_int_equal(oip_classify(&ti, 10, NULL, 0, out_shape, &nd, &data, &len, &e), 0);
    assert_int_equal(nd, 1);
    assert_int_equal(out_shape[0], 3);
    assert_int_equal(oip_tensor_to_json(&b, "o", DT_BYTES, data, len, &e), 0);
    js = buf_steal(&b, NULL);
    assert_string_equal(js, "[\"9.000000:1\",\"5.000000:0\",\"1.000000:2\"]");
    free(js);
    free(data);
    uint8_t bytes[] = {1, 0, 0, 0, 'x'};
    Corral__Tensor tb = mk("s", DT_BYTES, s1, 1, bytes, sizeof bytes);
    assert_int_equal(oip_classify(&tb, 1, NULL, 0, out_shape, &nd, &data, &len, &e),
                     CORRAL_EINVAL);
    assert_non_null(strstr(e.msg, "numeric output"));
}

static Corral__MetadataResponse *meta_new(const char *name, enum dtype dt, const int64_t *shape,
                                          size_t nd, int n_inputs)
{
    static Corral__TensorMetadata tm[2];
    static Corral__TensorMetadata *tp[2];
    static int64_t sh[2][8];
    static Corral__MetadataResponse md;
    corral__metadata_response__init(&md);
    for (int i = 0; i < n_inputs; i++) {
        corral__tensor_metadata__init(&tm[i]);
        tm[i].name = (char *)(i ? "b" : name);
        tm[i].datatype = (Corral__DataType)dt;
        memcpy(sh[i], shape, nd * sizeof *shape);
        tm[i].shape = sh[i];
        tm[i].n_shape = nd;
        tp[i] = &tm[i];
    }
    md.inputs = tp;
    md.n_inputs = (size_t)n_inputs;
    return &md;
}

static void test_raw_body(void **state)
{
    struct oip_infer in;
    struct cerr e = {0};
    int64_t s[] = {-1, 4};
    Corral__MetadataResponse *md = meta_new("x", DT_FP32, s, 2, 1);
    float v[4] = {1, 2, 3, 4};
    assert_int_equal(oip_infer_raw(md, (uint8_t *)v, sizeof v, "m", "", &in, &e), 0);
    assert_int_equal(in.ir.n_inputs, 1);
    assert_int_equal(in.ir.inputs[0]->shape[0], 1);
    assert_int_equal(in.ir.inputs[0]->shape[1], 4);
    assert_memory_equal(in.ir.inputs[0]->data.data, v, sizeof v);
    oip_infer_free(&in);
    assert_int_equal(oip_infer_raw(md, (uint8_t *)v, 12, "m", "", &in, &e), CORRAL_EINVAL);
    assert_non_null(strstr(e.msg, "raw body has 12 bytes"));
    oip_infer_free(&in);
    /* One variable dimension besides the batch comes from the size. */
    int64_t s2[] = {-1, -1, 2};
    md = meta_new("x", DT_INT16, s2, 3, 1);
    int16_t w[6] = {0};
    assert_int_equal(oip_infer_raw(md, (uint8_t *)w, sizeof w, "m", "", &in, &e), 0);
    assert_int_equal(in.ir.inputs[0]->shape[1], 3);
    oip_infer_free(&in);
    int64_t sb[] = {-1};
    md = meta_new("s", DT_BYTES, sb, 1, 1);
    assert_int_equal(oip_infer_raw(md, (const uint8_t *)"hey", 3, "m", "", &in, &e), 0);
    assert_int_equal(in.ir.inputs[0]->data.len, 7);
    assert_memory_equal(in.ir.inputs[0]->data.data, "\3\0\0\0hey", 7);
    oip_infer_free(&in);
    md = meta_new("x", DT_FP32, s, 2, 2);
    assert_int_equal(oip_infer_raw(md, (uint8_t *)v, sizeof v, "m", "", &in, &e), CORRAL_EINVAL);
    assert_non_null(strstr(e.msg, "exactly one input"));
    oip_infer_free(&in);
}

static void test_predict(void **state)
{
    struct oip_infer in;
    struct cerr e = {0};
    int64_t s[] = {-1, 2, -1};
    Corral__MetadataResponse *md = meta_new("x", DT_INT32, s, 3, 1);
    const char *body = "{\"instances\": [[[1,2,3],[4,5,6]], [[7,8,9],[10,11,12]]]}";
    assert_int_equal(oip_predict_parse(md, body, strlen(body), "m", "", &in, &e), 0);
    const Corral__Tensor *t = in.ir.inputs[0];
    assert_int_equal(t->n_shape, 3);
    assert_int_equal(t->shape[0], 2);
    assert_int_equal(t->shape[1], 2);
    assert_int_equal(t->shape[2], 3);
    assert_int_equal(((int32_t *)t->data.data)[11], 12);
    assert_int_equal(in.predict, 1);

    /* The answer: one entry per row, nested like the output's own dimensions. */
    int32_t o[] = {1, 2, 3, 4};
    int64_t os[] = {2, 2};
    Corral__Tensor ot = mk("y", DT_INT32, os, 2, o, sizeof o);
    Corral__Tensor *outs[] = {&ot};
    Corral__InferResponse r = CORRAL__INFER_RESPONSE__INIT;
    r.outputs = outs;
    r.n_outputs = 1;
    char *out = NULL;
    size_t len = 0, jlen = 0;
    assert_int_equal(oip_infer_response_render(&r, &in, "m", &out, &len, &jlen, &e), 0);
    assert_string_equal(out, "{\"predictions\":[[1,2],[3,4]]}");
    free(out);
    Corral__Tensor ot2 = mk("z", DT_BOOL, (int64_t[]){2}, 1, (uint8_t[]){1, 0}, 2);
    Corral__Tensor *outs2[] = {&ot, &ot2};
    r.outputs = outs2;
    r.n_outputs = 2;
    assert_int_equal(oip_infer_response_render(&r, &in, "m", &out, &len, &jlen, &e), 0);
    assert_string_equal(out, "{\"predictions\":[{\"y\":[1,2],\"z\":true},{\"y\":[3,4],\"z\":false}]}");
    free(out);
    oip_infer_free(&in);

    const char *bad[] = {"{}", "{\"instances\": []}", "{\"instances\": [[1,2]]}",
                         "{\"instances\": [{\"q\": 1}]}", "[1"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_not_equal(oip_predict_parse(md, bad[i], strlen(bad[i]), "m", "", &in, &e), 0);
        oip_infer_free(&in);
    }
    /* Two inputs: instances name them. */
    int64_t s1[] = {-1};
    md = meta_new("a", DT_FP64, s1, 1, 2);
    const char *two = "{\"instances\": [{\"a\": 1.5, \"b\": 2}, {\"a\": 3, \"b\": 4}]}";
    assert_int_equal(oip_predict_parse(md, two, strlen(two), "m", "", &in, &e), 0);
    assert_int_equal(in.ir.n_inputs, 2);
    assert_true(((double *)in.ir.inputs[1]->data.data)[1] == 4.0);
    oip_infer_free(&in);
    const char *flat = "{\"instances\": [1, 2]}";
    assert_int_equal(oip_predict_parse(md, flat, strlen(flat), "m", "", &in, &e), CORRAL_EINVAL);
    assert_non_null(strstr(e.msg, "must be an object"));
    oip_infer_free(&in);
}

static void test_hidden_params_and_timeout(void **state)
{
    struct oip_infer in;
    struct cerr e = {0};
    const char *req = "{\"inputs\":[{\"name\":\"a\",\"shape\":[1],\"datatype\":\"FP32\",\"data\":[1]}],"
                      "\"parameters\":{\"timeout\":2500,\"priority\":2}}";
    assert_int_equal(oip_infer_parse(req, strlen(req), NULL, 0, "m", "", &in, &e), 0);
    assert_int_equal(in.timeout_us, 2500);
    assert_int_equal(in.ir.n_parameters, 2); /* forwarded: the batcher reads both */
    float f = 1;
    int64_t s[] = {1};
    Corral__Tensor t = mk("a", DT_FP32, s, 1, &f, 4);
    Corral__Tensor *outs[] = {&t};
    Corral__Parameter q = CORRAL__PARAMETER__INIT, u = CORRAL__PARAMETER__INIT;
    q.key = "corral_queue_us";
    q.value_case = CORRAL__PARAMETER__VALUE_INT64_VALUE;
    q.int64_value = 5;
    u.key = "user";
    u.value_case = CORRAL__PARAMETER__VALUE_BOOL_VALUE;
    u.bool_value = 1;
    Corral__Parameter *ps[] = {&q, &u};
    Corral__InferResponse r = CORRAL__INFER_RESPONSE__INIT;
    r.outputs = outs;
    r.n_outputs = 1;
    r.parameters = ps;
    r.n_parameters = 2;
    char *body = NULL;
    size_t len = 0, jlen = 0;
    assert_int_equal(oip_infer_response_render(&r, &in, "m", &body, &len, &jlen, &e), 0);
    assert_null(strstr(body, "corral_queue_us"));
    assert_non_null(strstr(body, "\"parameters\":{\"user\":true}"));
    free(body);
    r.n_parameters = 1; /* only hidden ones: no parameters object at all */
    assert_int_equal(oip_infer_response_render(&r, &in, "m", &body, &len, &jlen, &e), 0);
    assert_null(strstr(body, "parameters"));
    free(body);
    oip_infer_free(&in);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_classify),
        cmocka_unit_test(test_raw_body),
        cmocka_unit_test(test_predict),
        cmocka_unit_test(test_hidden_params_and_timeout),
        cmocka_unit_test(test_flat_and_nested),
        cmocka_unit_test(test_integer_types),
        cmocka_unit_test(test_bool_float_bytes),
        cmocka_unit_test(test_half_conversions),
        cmocka_unit_test(test_parse_request),
        cmocka_unit_test(test_parse_binary),
        cmocka_unit_test(test_render),
        cmocka_unit_test(test_tensor_to_json),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
