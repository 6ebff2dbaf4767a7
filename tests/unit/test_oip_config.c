/*
 * Triton's model configuration as the router renders it from a replica's
 * metadata, and the repository index request body. The JSON is read back with
 * jansson, so the tests check values, not spelling.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "oip.h"

struct md_fixture {
    Corral__MetadataResponse md;
    Corral__TensorMetadata in[2], out[1];
    Corral__TensorMetadata *inp[2], *outp[1];
    int64_t in0_shape[2], in1_shape[3], out0_shape[2];
    Corral__BatchingInfo bi;
    int64_t buckets[3];
    char *versions[1];
};

/* digits-like: input FP32 [-1, 64], a BYTES input [-1, 2, -1], output FP32 [-1, 10]. */
static void md_init(struct md_fixture *f, int64_t max_batch)
{
    memset(f, 0, sizeof *f);
    corral__metadata_response__init(&f->md);
    f->md.name = "digits";
    f->md.platform = "onnx";
    f->versions[0] = "3";
    f->md.versions = f->versions;
    f->md.n_versions = 1;
    int64_t s0[2] = {-1, 64}, s1[3] = {-1, 2, -1}, s2[2] = {-1, 10};
    memcpy(f->in0_shape, s0, sizeof s0);
    memcpy(f->in1_shape, s1, sizeof s1);
    memcpy(f->out0_shape, s2, sizeof s2);
    corral__tensor_metadata__init(&f->in[0]);
    f->in[0].name = "input";
    f->in[0].datatype = CORRAL__DATA_TYPE__TYPE_FP32;
    f->in[0].shape = f->in0_shape;
    f->in[0].n_shape = 2;
    corral__tensor_metadata__init(&f->in[1]);
    f->in[1].name = "text";
    f->in[1].datatype = CORRAL__DATA_TYPE__TYPE_BYTES;
    f->in[1].shape = f->in1_shape;
    f->in[1].n_shape = 3;
    corral__tensor_metadata__init(&f->out[0]);
    f->out[0].name = "logits";
    f->out[0].datatype = CORRAL__DATA_TYPE__TYPE_FP32;
    f->out[0].shape = f->out0_shape;
    f->out[0].n_shape = 2;
    f->inp[0] = &f->in[0];
    f->inp[1] = &f->in[1];
    f->outp[0] = &f->out[0];
    f->md.inputs = f->inp;
    f->md.n_inputs = 2;
    f->md.outputs = f->outp;
    f->md.n_outputs = 1;
    if (max_batch >= 0) {
        corral__batching_info__init(&f->bi);
        f->bi.max_batch_size = max_batch;
        f->buckets[0] = 1;
        f->buckets[1] = 4;
        f->buckets[2] = 8;
        f->bi.batch_buckets = f->buckets;
        f->bi.n_batch_buckets = 3;
        f->bi.max_queue_delay_us = 250;
        f->bi.max_queue_size = 64;
        f->bi.default_timeout_us = 1500000;
        f->bi.priority_levels = 3;
        f->bi.default_priority = 2;
        f->bi.preserve_ordering = 1;
        f->md.batching = &f->bi;
    }
}

static json_t *render(const Corral__MetadataResponse *md, const struct oip_serving *s)
{
    struct buf b = {0};
    oip_model_config_render(&b, "digits", md, s);
    size_t len = 0;
    char *text = buf_steal(&b, &len);
    assert_non_null(text);
    json_error_t err;
    json_t *j = json_loadb(text, len, 0, &err);
    if (!j)
        fail_msg("config is not JSON (%s): %s", err.text, text);
    free(text);
    return j;
}

/* The JSON text of `v`, compact, for comparing arrays and objects in one step. */
static void assert_json(const json_t *v, const char *want)
{
    char *got = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY | JSON_PRESERVE_ORDER);
    assert_non_null(got);
    if (strcmp(got, want) != 0)
        fail_msg("got %s, expected %s", got, want);
    free(got);
}

static void test_config_unbatched(void **state)
{
    (void)state;
    struct md_fixture f;
    md_init(&f, 0);
    struct oip_serving s = {.versions = "3, 5", .cpu = 2};
    json_t *j = render(&f.md, &s);
    assert_string_equal(json_string_value(json_object_get(j, "name")), "digits");
    assert_string_equal(json_string_value(json_object_get(j, "platform")), "onnxruntime_onnx");
    assert_string_equal(json_string_value(json_object_get(j, "backend")), "onnxruntime");
    assert_json(json_object_get(j, "version_policy"), "{\"specific\":{\"versions\":[3,5]}}");
    assert_int_equal(json_integer_value(json_object_get(j, "max_batch_size")), 0);
    json_t *in = json_object_get(j, "input");
    assert_int_equal(json_array_size(in), 2);
    /* Without batching every dimension stays, the variable one as -1. */
    assert_json(json_object_get(json_array_get(in, 0), "dims"), "[-1,64]");
    assert_string_equal(json_string_value(json_object_get(json_array_get(in, 0), "data_type")),
                        "TYPE_FP32");
    /* Triton's name for BYTES. */
    assert_string_equal(json_string_value(json_object_get(json_array_get(in, 1), "data_type")),
                        "TYPE_STRING");
    json_t *out = json_array_get(json_object_get(j, "output"), 0);
    assert_string_equal(json_string_value(json_object_get(out, "name")), "logits");
    assert_json(json_object_get(out, "dims"), "[-1,10]");
    assert_null(json_object_get(j, "dynamic_batching"));
    json_t *g = json_object_get(j, "instance_group");
    assert_int_equal(json_array_size(g), 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(g, 0), "kind")),
                        "KIND_CPU");
    assert_int_equal(json_integer_value(json_object_get(json_array_get(g, 0), "count")), 2);
    json_decref(j);
}

static void test_config_batched(void **state)
{
    (void)state;
    struct md_fixture f;
    md_init(&f, 8);
    struct oip_serving s = {.versions = "3", .cpu = 1, .gpu = 3, .gpus = {0, 1}, .n_gpus = 2};
    json_t *j = render(&f.md, &s);
    assert_int_equal(json_integer_value(json_object_get(j, "max_batch_size")), 8);
    /* The batch dimension is Triton's implicit first one: dims leave it out. */
    json_t *in = json_object_get(j, "input");
    assert_json(json_object_get(json_array_get(in, 0), "dims"), "[64]");
    assert_json(json_object_get(json_array_get(in, 1), "dims"), "[2,-1]");
    assert_json(json_object_get(json_array_get(json_object_get(j, "output"), 0), "dims"), "[10]");
    json_t *db = json_object_get(j, "dynamic_batching");
    assert_non_null(db);
    assert_json(json_object_get(db, "preferred_batch_size"), "[1,4,8]");
    assert_int_equal(json_integer_value(json_object_get(db, "max_queue_delay_microseconds")), 250);
    assert_true(json_is_true(json_object_get(db, "preserve_ordering")));
    assert_int_equal(json_integer_value(json_object_get(db, "priority_levels")), 3);
    assert_int_equal(json_integer_value(json_object_get(db, "default_priority_level")), 2);
    json_t *qp = json_object_get(db, "default_queue_policy");
    assert_int_equal(json_integer_value(json_object_get(qp, "default_timeout_microseconds")),
                     1500000);
    assert_int_equal(json_integer_value(json_object_get(qp, "max_queue_size")), 64);
    json_t *g = json_object_get(j, "instance_group");
    assert_int_equal(json_array_size(g), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(g, 0), "kind")),
                        "KIND_GPU");
    assert_int_equal(json_integer_value(json_object_get(json_array_get(g, 0), "count")), 3);
    assert_json(json_object_get(json_array_get(g, 0), "gpus"), "[0,1]");
    assert_string_equal(json_string_value(json_object_get(json_array_get(g, 0), "name")),
                        "digits_0");
    assert_string_equal(json_string_value(json_object_get(json_array_get(g, 1), "kind")),
                        "KIND_CPU");
    json_decref(j);
}

static void test_config_odd_metadata(void **state)
{
    (void)state;
    struct md_fixture f;
    /* A replica older than the batching field: no batching is claimed. */
    md_init(&f, -1);
    struct oip_serving s = {.versions = ""};
    json_t *j = render(&f.md, &s);
    assert_int_equal(json_integer_value(json_object_get(j, "max_batch_size")), 0);
    assert_null(json_object_get(j, "dynamic_batching"));
    assert_json(json_object_get(j, "version_policy"), "{\"latest\":{\"num_versions\":1}}");
    assert_json(json_object_get(j, "instance_group"), "[]");
    json_decref(j);
    /* A negative max_batch_size, an unknown datatype, a shapeless tensor, a version that is
     * not a number, another platform: all rendered without reading past anything. */
    md_init(&f, -5);
    f.bi.max_batch_size = -5;
    f.in[0].datatype = 99;
    f.out[0].n_shape = 0;
    f.md.platform = "custom";
    s = (struct oip_serving){.versions = "3, canary", .other = 1};
    j = render(&f.md, &s);
    assert_int_equal(json_integer_value(json_object_get(j, "max_batch_size")), 0);
    assert_string_equal(json_string_value(json_object_get(json_array_get(
                            json_object_get(j, "input"), 0), "data_type")), "TYPE_INVALID");
    assert_json(json_object_get(json_array_get(json_object_get(j, "output"), 0), "dims"), "[]");
    assert_string_equal(json_string_value(json_object_get(j, "platform")), "custom");
    assert_json(json_object_get(j, "version_policy"), "{\"latest\":{\"num_versions\":1}}");
    json_decref(j);
    /* Batching with a shapeless tensor: nothing to drop. */
    md_init(&f, 4);
    f.out[0].n_shape = 0;
    s = (struct oip_serving){.versions = "3"};
    j = render(&f.md, &s);
    assert_json(json_object_get(json_array_get(json_object_get(j, "output"), 0), "dims"), "[]");
    json_decref(j);
}

static void expect_index_body(const char *body, int rc, int ready)
{
    struct cerr e = {0};
    int r = -1;
    int got = oip_repo_index_parse(body, strlen(body), &r, &e);
    if (got != rc)
        fail_msg("'%s': rc %d, expected %d (%s)", body, got, rc, e.msg);
    if (rc == 0)
        assert_int_equal(r, ready);
    else
        assert_true(e.msg[0] != '\0');
}

static void test_index_body(void **state)
{
    (void)state;
    expect_index_body("", 0, 0);
    expect_index_body(" \r\n\t", 0, 0);
    expect_index_body("{}", 0, 0);
    expect_index_body("{\"ready\": true}", 0, 1);
    expect_index_body("{\"ready\": false}", 0, 0);
    /* Triton ignores other members. */
    expect_index_body("{\"ready\": true, \"other\": [1]}", 0, 1);
    expect_index_body("{\"ready\": 1}", CORRAL_EINVAL, 0);
    expect_index_body("{\"ready\": \"true\"}", CORRAL_EINVAL, 0);
    expect_index_body("{\"ready\": null}", CORRAL_EINVAL, 0);
    expect_index_body("[true]", CORRAL_EINVAL, 0);
    expect_index_body("true", CORRAL_EINVAL, 0);
    expect_index_body("{\"ready\": tru", CORRAL_EINVAL, 0);
    expect_index_body("{\"ready\": true} x", CORRAL_EINVAL, 0);
    /* Bytes after the stated length are not read. */
    struct cerr e = {0};
    int r = -1;
    assert_int_equal(oip_repo_index_parse("{\"ready\": true}garbage", 15, &r, &e), 0);
    assert_int_equal(r, 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_unbatched),
        cmocka_unit_test(test_config_batched),
        cmocka_unit_test(test_config_odd_metadata),
        cmocka_unit_test(test_index_body),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
