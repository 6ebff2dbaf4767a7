/*
 * Unit tests for the batcher: the batching section of config.json, the block
 * copy used for padding and cutting back, and a batcher running the bundled
 * digits model in-process (argv[1] is its model.onnx).
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "batcher.h"
#include "model_repo.h"
#include "wire.h"

static const char *digits_onnx;

/* A config with one input x [-1,-1,8] and outputs y [-1,-1,4], z [-1,3]. */
static void seq_config(struct model_config *c)
{
    memset(c, 0, sizeof *c);
    snprintf(c->name, sizeof c->name, "m");
    c->n_inputs = 1;
    c->n_outputs = 2;
    snprintf(c->inputs[0].name, MODEL_NAME_MAX, "x");
    c->inputs[0].dtype = DT_FP32;
    c->inputs[0].ndim = 3;
    c->inputs[0].dims[0] = -1;
    c->inputs[0].dims[1] = -1;
    c->inputs[0].dims[2] = 8;
    snprintf(c->outputs[0].name, MODEL_NAME_MAX, "y");
    c->outputs[0].dtype = DT_FP32;
    c->outputs[0].ndim = 3;
    c->outputs[0].dims[0] = -1;
    c->outputs[0].dims[1] = -1;
    c->outputs[0].dims[2] = 4;
    snprintf(c->outputs[1].name, MODEL_NAME_MAX, "z");
    c->outputs[1].dtype = DT_FP32;
    c->outputs[1].ndim = 2;
    c->outputs[1].dims[0] = -1;
    c->outputs[1].dims[1] = 3;
}

static int parse(const char *json, struct model_config *c, struct cerr *e)
{
    seq_config(c);
    return model_batching_parse_text(c, json, e);
}

static void test_defaults_without_section(void **state)
{
    struct model_config c;
    struct cerr e = {0};
    assert_int_equal(parse(NULL, &c, &e), CORRAL_OK);
    assert_int_equal(c.batching.max_batch_size, 0);
    assert_int_equal(c.batching.max_queue_size, 1024);
    assert_int_equal(c.batching.priority_levels, 1);
    assert_int_equal(c.batching.default_priority, 1);
    assert_int_equal(c.batching.n_var_dims, 1);
    assert_int_equal(c.batching.var_dims[0].n_buckets, 0);
}

static void test_full_section(void **state)
{
    struct model_config c;
    struct cerr e = {0};
    const char *j = "{\"max_batch_size\": 12, \"max_queue_delay_us\": 500, \"max_queue_size\": 7,"
                    " \"default_timeout_us\": 9000, \"priority_levels\": 3, \"preserve_ordering\": true,"
                    " \"inputs\": {\"x\": {\"pad_value\": -1, \"dims\": {\"1\": [16, 32, 64]}}},"
                    " \"outputs\": {\"y\": {\"dims\": {\"1\": {\"input\": \"x\", \"dim\": 1}}}}}";
    assert_int_equal(parse(j, &c, &e), CORRAL_OK);
    const struct model_batching *b = &c.batching;
    /* Default buckets: powers of two below the maximum, then the maximum. */
    assert_int_equal(b->n_batch_buckets, 5);
    assert_int_equal(b->batch_buckets[0], 1);
    assert_int_equal(b->batch_buckets[3], 8);
    assert_int_equal(b->batch_buckets[4], 12);
    assert_int_equal(b->max_queue_delay_us, 500);
    assert_int_equal(b->max_queue_size, 7);
    assert_int_equal(b->default_timeout_us, 9000);
    assert_int_equal(b->priority_levels, 3);
    assert_int_equal(b->default_priority, 3);
    assert_true(b->preserve_ordering);
    assert_true(b->pad_value[0] == -1.0);
    assert_int_equal(b->var_dims[0].n_buckets, 3);
    assert_int_equal(b->var_dims[0].buckets[2], 64);
    assert_int_equal(b->follow[0][1].kind, MODEL_FOLLOW_INPUT);
    assert_int_equal(b->follow[0][1].dim, 1);
}

static void expect_error(const char *json, const char *fragment)
{
    struct model_config c;
    struct cerr e = {0};
    assert_int_not_equal(parse(json, &c, &e), CORRAL_OK);
    if (!strstr(e.msg, fragment))
        fail_msg("message '%s' does not mention '%s'", e.msg, fragment);
}

static void test_errors_are_clear(void **state)
{
    expect_error("{\"max_batch\": 4}", "unknown key 'max_batch'");
    expect_error("{\"max_batch_size\": -1}", "batching.max_batch_size");
    expect_error("{\"max_batch_size\": 8, \"batch_buckets\": [1, 4, 2, 8]}", "batch_buckets[2]");
    expect_error("{\"max_batch_size\": 8, \"batch_buckets\": [1, 4]}", "must equal max_batch_size");
    expect_error("{\"batch_buckets\": [1]}", "needs max_batch_size > 0");
    expect_error("{\"max_batch_size\": 4, \"priority_levels\": 0}", "priority_levels");
    expect_error("{\"max_batch_size\": 4, \"priority_levels\": 2, \"default_priority\": 3}",
                 "default_priority");
    expect_error("{\"max_batch_size\": 4, \"preserve_ordering\": 1}", "true or false");
    expect_error("{\"max_batch_size\": 4, \"inputs\": {\"q\": {}}}", "'q'");
    expect_error("{\"max_batch_size\": 4, \"inputs\": {\"x\": {\"dims\": {\"2\": [8]}}}}",
                 "variable (-1) dimension");
    expect_error("{\"max_batch_size\": 4, \"inputs\": {\"x\": {\"pad_value\": \"0\"}}}", "pad_value");
    /* Padding the sequence axis without saying how y's variable dimension is cut back. */
    expect_error("{\"max_batch_size\": 4, \"inputs\": {\"x\": {\"dims\": {\"1\": [16]}}}}",
                 "output 'y' dimension 1");
    expect_error("{\"max_batch_size\": 4, \"inputs\": {\"x\": {\"dims\": {\"1\": [16]}}},"
                 " \"outputs\": {\"y\": {\"dims\": {\"1\": {\"input\": \"w\", \"dim\": 1}}}}}",
                 "naming a model input");
    expect_error("{\"max_batch_size\": 4, \"outputs\": {\"z\": {\"dims\": {\"1\": \"computed\"}}}}",
                 "variable (-1) dimension");
    expect_error("{\"max_batch_size\": 4, \"max_queue_size\": 0}", "max_queue_size");
}

static void test_no_batch_axis_refused(void **state)
{
    struct model_config c;
    struct cerr e = {0};
    seq_config(&c);
    c.outputs[1].dims[0] = 1;
    assert_int_equal(model_batching_parse_text(&c, "{\"max_batch_size\": 4}", &e), CORRAL_EINVAL);
    assert_non_null(strstr(e.msg, "output 'z'"));
    /* Without batching the same model is fine. */
    assert_int_equal(model_batching_parse_text(&c, "{\"max_queue_size\": 4}", &e), CORRAL_OK);
}

static void test_copy_block_pads_and_cuts(void **state)
{
    /* A [2,3,2] request into rows 1..2 of a [4,5,2] bucket, then back out. */
    float src[12], dst[40], back[12];
    int64_t sd[3] = {2, 3, 2}, dd[3] = {4, 5, 2}, ext[3] = {2, 3, 2};
    for (int i = 0; i < 12; i++)
        src[i] = (float)(i + 1);
    batcher_fill(dst, DT_FP32, 40, -7.0);
    batcher_copy_block(dst, dd, 1, src, sd, 0, ext, 3, sizeof(float));
    for (int r = 0; r < 4; r++)
        for (int s = 0; s < 5; s++)
            for (int k = 0; k < 2; k++) {
                float v = dst[(r * 5 + s) * 2 + k];
                if (r >= 1 && r <= 2 && s < 3)
                    assert_true(v == src[((r - 1) * 3 + s) * 2 + k]);
                else
                    assert_true(v == -7.0f);
            }
    memset(back, 0, sizeof back);
    batcher_copy_block(back, sd, 0, dst, dd, 1, ext, 3, sizeof(float));
    assert_memory_equal(back, src, sizeof src);
    /* One row of a split request: source row 1 to destination row 0. */
    int64_t one[3] = {1, 3, 2};
    memset(back, 0, sizeof back);
    batcher_copy_block(back, sd, 0, src, sd, 1, one, 3, sizeof(float));
    assert_memory_equal(back, src + 6, 6 * sizeof(float));
}

static void test_fill_types(void **state)
{
    int64_t i64[3];
    int32_t i32[2];
    uint8_t u8[4];
    batcher_fill(i64, DT_INT64, 3, 5);
    batcher_fill(i32, DT_INT32, 2, -2);
    batcher_fill(u8, DT_BOOL, 4, 1);
    assert_int_equal(i64[2], 5);
    assert_int_equal(i32[1], -2);
    assert_int_equal(u8[3], 1);
}

/* ---- in-process batcher over the digits model ------------------------------------------ */

/* Replies as they come: n in all, per request how many (exactly one each is right). */
struct sink {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int n, errors;
    int calls[64];
    Corral__Response *resp[64];
};

static struct sink sink;

static void sink_reply(void *owner, uint8_t *buf, size_t len)
{
    size_t k = (size_t)(uintptr_t)owner;
    Corral__Response *r = buf ? corral__response__unpack(NULL, len, buf) : NULL;
    free(buf);
    pthread_mutex_lock(&sink.mu);
    if (k < 64 && !sink.calls[k]++)
        sink.resp[k] = r;
    else if (r)
        corral__response__free_unpacked(r, NULL); /* a second reply: counted in calls */
    if (!r || r->kind_case != CORRAL__RESPONSE__KIND_INFER)
        sink.errors++;
    sink.n++;
    pthread_cond_signal(&sink.cv);
    pthread_mutex_unlock(&sink.mu);
}

static Corral__Request *make_req(int64_t rows, float v)
{
    Corral__Request req = CORRAL__REQUEST__INIT;
    Corral__InferRequest ir = CORRAL__INFER_REQUEST__INIT;
    Corral__Tensor t = CORRAL__TENSOR__INIT, *tp = &t;
    int64_t dims[2] = {rows, 64};
    float *x = calloc((size_t)rows * 64, sizeof(float));
    for (int64_t i = 0; i < rows * 64; i++)
        x[i] = v + (float)(i % 7);
    t.name = "input";
    t.datatype = CORRAL__DATA_TYPE__TYPE_FP32;
    t.n_shape = 2;
    t.shape = dims;
    t.data.data = (uint8_t *)x;
    t.data.len = (size_t)rows * 64 * sizeof(float);
    ir.n_inputs = 1;
    ir.inputs = &tp;
    req.kind_case = CORRAL__REQUEST__KIND_INFER;
    req.infer = &ir;
    uint8_t *buf;
    size_t len;
    assert_int_equal(wire_pack_request(&req, &buf, &len), 0);
    free(x);
    Corral__Request *out = NULL;
    assert_int_equal(wire_decode_request(buf, len, &out, NULL), 0);
    free(buf);
    return out;
}

static void run_digits(int overlap)
{
    struct model_config c;
    struct engine *eng = NULL;
    struct batcher *b = NULL;
    struct cerr e = {0};
    struct engine_options eo = ENGINE_OPTIONS_DEFAULT;
    struct batcher_options bo = BATCHER_OPTIONS_DEFAULT;
    int64_t rows[] = {1, 3, 8, 2, 13, 1, 5, 4};
    enum { N = sizeof rows / sizeof rows[0] };

    memset(&c, 0, sizeof c);
    snprintf(c.name, sizeof c.name, "digits");
    snprintf(c.version_str, sizeof c.version_str, "1");
    c.n_inputs = c.n_outputs = 1;
    snprintf(c.inputs[0].name, MODEL_NAME_MAX, "input");
    c.inputs[0].dtype = DT_FP32;
    c.inputs[0].ndim = 2;
    c.inputs[0].dims[0] = -1;
    c.inputs[0].dims[1] = 64;
    snprintf(c.outputs[0].name, MODEL_NAME_MAX, "logits");
    c.outputs[0].dtype = DT_FP32;
    c.outputs[0].ndim = 2;
    c.outputs[0].dims[0] = -1;
    c.outputs[0].dims[1] = 10;
    assert_int_equal(model_batching_parse_text(&c, "{\"max_batch_size\": 8, \"max_queue_delay_us\": 20000}", &e), 0);
    assert_int_equal(engine_load_file(digits_onnx, &eo, &eng, &e), 0);
    bo.overlap = overlap;
    memset(&sink, 0, sizeof sink);
    pthread_mutex_init(&sink.mu, NULL);
    pthread_cond_init(&sink.cv, NULL);
    assert_int_equal(batcher_create(&b, eng, &c, &bo, sink_reply, &e), 0);
    assert_int_equal(batcher_warmup(b, &e), 0);
    assert_int_equal(batcher_start(b, &e), 0);
    int submitted = 0;
    for (size_t k = 0; k < N; k++) {
        Corral__Request *r = make_req(rows[k], (float)k);
        if (batcher_submit(b, r, (void *)(uintptr_t)k, &e))
            fail_msg("%s", e.msg);
        submitted++;
    }
    /* Every request submitted is answered exactly once (bounded: 60 s, then the counts
     * below say which are missing), and none with an error. */
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 60;
    pthread_mutex_lock(&sink.mu);
    while (sink.n < submitted && pthread_cond_timedwait(&sink.cv, &sink.mu, &until) == 0) {
    }
    int replies = sink.n, errors = sink.errors;
    pthread_mutex_unlock(&sink.mu);
    assert_int_equal(submitted, N);
    assert_int_equal(replies, submitted);
    assert_int_equal(errors, 0);
    for (size_t k = 0; k < N; k++)
        assert_int_equal(sink.calls[k], 1);

    /* Every answer equals the engine run on that request alone. */
    for (size_t k = 0; k < N; k++) {
        Corral__Response *r = sink.resp[k];
        assert_non_null(r);
        assert_int_equal(r->kind_case, CORRAL__RESPONSE__KIND_INFER);
        const Corral__Tensor *o = r->infer->outputs[0];
        assert_int_equal(o->shape[0], rows[k]);
        Corral__Request *q = make_req(rows[k], (float)k);
        struct tensor in, out[1];
        wire_tensor_view(q->infer->inputs[0], &in);
        assert_int_equal(engine_run(eng, &in, 1, out, NULL), 0);
        assert_int_equal(out[0].nbytes, o->data.len);
        const float *a = out[0].data, *g = (const float *)o->data.data;
        for (size_t i = 0; i < out[0].nbytes / 4; i++)
            assert_true(a[i] - g[i] < 1e-4 && g[i] - a[i] < 1e-4);
        tensor_release(&out[0]);
        corral__request__free_unpacked(q, NULL);
        corral__response__free_unpacked(r, NULL);
    }
    struct batcher_stats st;
    batcher_get_stats(b, &st);
    assert_int_equal(st.requests, N);
    assert_int_equal(st.success, N);
    assert_int_equal(st.rows, 37);
    /* 37 rows need at least five batches of at most 8. */
    assert_true(st.batches >= 5 && st.batches < N + 2);
    assert_true(st.real_elements == 37 * 64);
    assert_true(st.padded_elements >= st.real_elements);

    /* Requests refused before they are queued: the caller keeps them. */
    Corral__Request *bad = make_req(1, 0);
    bad->infer->inputs[0]->name[0] = 'X';
    assert_int_equal(batcher_submit(b, bad, NULL, &e), CORRAL_EINVAL);
    assert_non_null(strstr(e.msg, "not an input"));
    corral__request__free_unpacked(bad, NULL);

    int live, ready;
    batcher_health(b, &live, &ready);
    assert_true(live && ready);
    batcher_free(b);
    /* Nothing more was answered, up to the batcher's end. */
    assert_int_equal(sink.n, N);
    engine_free(eng);
    pthread_mutex_destroy(&sink.mu);
    pthread_cond_destroy(&sink.cv);
}

static void test_digits_overlap(void **state) { run_digits(1); }
static void test_digits_serial(void **state) { run_digits(0); }

int main(int argc, char **argv)
{
    digits_onnx = argc > 1 ? argv[1] : "models/digits/1/model.onnx";
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults_without_section),
        cmocka_unit_test(test_full_section),
        cmocka_unit_test(test_errors_are_clear),
        cmocka_unit_test(test_no_batch_axis_refused),
        cmocka_unit_test(test_copy_block_pads_and_cuts),
        cmocka_unit_test(test_fill_types),
        cmocka_unit_test(test_digits_overlap),
        cmocka_unit_test(test_digits_serial),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
