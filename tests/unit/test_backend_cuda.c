/*
 * Unit tests for the CUDA backend.
 *
 * Without a CUDA device (the CI machines): backend_cuda_create and
 * backend_create("cuda:N") must fail cleanly with CORRAL_EUNAVAIL and one
 * sentence naming the device; then the program prints "skipped: no CUDA
 * device" and exits 77, which ctest reports as skipped.
 *
 * With a device: every kernel family runs on single-step plans built here
 * (shapes from the engine's own shape inference, random data) on the CPU
 * backend and on cuda:0, and the outputs must agree (FP32 within atol 1e-4 +
 * rtol 1e-3, other datatypes exactly). CORRAL_TEST_CUDA_PEER=cpu swaps the
 * device under test for a second CPU backend, which checks the harness
 * itself on a machine without a GPU.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <cuda_runtime.h>

#include "backend.h"
#include "engine_internal.h"

/* ---- cases ---- */

enum src { RAND, POS, INTS, GIVEN, BOOLS };

struct spec {
    enum dtype dt; /* DT_INVALID: an omitted optional input */
    int nd;
    int64_t d[TENSOR_MAX_DIMS];
    int is_const;
    enum src src;
    int64_t lo, hi;      /* INTS: uniform in [lo, hi) */
    const void *given;   /* GIVEN: nbytes of data */
};

struct tcase {
    const char *name;
    enum eng_op op;
    struct eng_attrs a;
    int n_in, n_out;
    struct spec in[6];
};

#define F32(...) {.dt = DT_FP32, .nd = sizeof((int64_t[]){__VA_ARGS__}) / 8, .d = {__VA_ARGS__}}
#define F32C(...)                                                                             \
    {.dt = DT_FP32, .nd = sizeof((int64_t[]){__VA_ARGS__}) / 8, .d = {__VA_ARGS__},           \
     .is_const = 1}
#define POS32(...)                                                                            \
    {.dt = DT_FP32, .nd = sizeof((int64_t[]){__VA_ARGS__}) / 8, .d = {__VA_ARGS__}, .src = POS}
#define POS32C(...)                                                                           \
    {.dt = DT_FP32, .nd = sizeof((int64_t[]){__VA_ARGS__}) / 8, .d = {__VA_ARGS__},           \
     .src = POS, .is_const = 1}
#define I64(l, h, ...)                                                                        \
    {.dt = DT_INT64, .nd = sizeof((int64_t[]){__VA_ARGS__}) / 8, .d = {__VA_ARGS__},          \
     .src = INTS, .lo = l, .hi = h}
#define BOOLV(...)                                                                            \
    {.dt = DT_BOOL, .nd = sizeof((int64_t[]){__VA_ARGS__}) / 8, .d = {__VA_ARGS__}, .src = BOOLS}
/* A constant INT64 vector (shapes, axes, pads). */
#define IVEC(n, arr) {.dt = DT_INT64, .nd = 1, .d = {n}, .is_const = 1, .src = GIVEN, .given = arr}
#define FSCALAR(p) {.dt = DT_FP32, .nd = 0, .is_const = 1, .src = GIVEN, .given = p}
#define NONE {.dt = DT_INVALID}

static const int64_t shape_2x12[] = {2, 12}, shape_exp[] = {2, 3, 4}, reps[] = {2, 1, 3};
static const int64_t sl_start[] = {0, 5}, sl_end[] = {2, -1}, sl_axes[] = {0, 2},
                     sl_steps[] = {1, -2};
static const int64_t pads4[] = {0, 0, 1, 2, 0, 0, 2, 1}, split_sz[] = {1, 3};
static const int64_t rng[] = {0, 7, 2};
static const float clip_lo = -0.25f, clip_hi = 0.5f;

/* Attributes as the loader's setup leaves them for each op family. */
static struct eng_attrs base(void)
{
    struct eng_attrs a;
    memset(&a, 0, sizeof a);
    a.sum_input = -1;
    a.n_ints = -1;
    a.act = EACT_NONE;
    return a;
}

static struct eng_attrs A_axis(int axis)
{
    struct eng_attrs a = base();
    a.axis = axis;
    return a;
}

static struct eng_attrs A_alpha(float alpha, float beta)
{
    struct eng_attrs a = base();
    a.alpha = alpha;
    a.beta = beta;
    return a;
}

static struct eng_attrs A_clip(void)
{
    return A_alpha(-INFINITY, INFINITY);
}

static struct eng_attrs A_gemm(float alpha, float beta, int ta, int tb)
{
    struct eng_attrs a = A_alpha(alpha, beta);
    a.trans_a = ta;
    a.trans_b = tb;
    return a;
}

static struct eng_attrs A_act(enum eng_act act)
{
    struct eng_attrs a = base();
    a.act = act;
    return a;
}

static struct eng_attrs A_eps(int axis, float eps)
{
    struct eng_attrs a = A_axis(axis);
    a.epsilon = eps;
    return a;
}

static struct eng_attrs A_ints(int n, const int64_t *v)
{
    struct eng_attrs a = base();
    a.n_ints = n;
    for (int i = 0; i < n; i++)
        a.ints[i] = v[i];
    return a;
}

static struct eng_attrs A_reduce(int keep, int n, const int64_t *axes)
{
    struct eng_attrs a = A_ints(n, axes);
    a.keepdims = keep;
    return a;
}

/* Conv/pool window attributes: nsp spatial dims; NULL arrays mean "attribute absent". */
static struct eng_attrs A_win(int nsp, const int64_t *k, const int64_t *s, const int64_t *d,
                              const int64_t *p, int64_t group)
{
    struct eng_attrs a = base();
    a.n_ints = 0;
    a.nsp = k ? nsp : -1;
    a.ints[0] = s ? nsp : -1;
    a.ints[1] = d ? nsp : -1;
    a.ints[2] = p ? 2 * nsp : -1;
    a.ints[3] = -1;
    for (int i = 0; i < nsp; i++) {
        if (k)
            a.kernel[i] = k[i];
        if (s)
            a.strides[i] = s[i];
        if (d)
            a.dilations[i] = d[i];
    }
    for (int i = 0; p && i < 2 * nsp; i++)
        a.pads[i] = p[i];
    a.group = group;
    return a;
}

static struct eng_attrs A_pool(int nsp, const int64_t *k, const int64_t *s, const int64_t *p,
                               int ceil_mode, int cip)
{
    struct eng_attrs a = A_win(nsp, k, s, NULL, p, 1);
    a.ceil_mode = ceil_mode;
    a.count_include_pad = cip;
    return a;
}

static struct eng_attrs A_pad(enum eng_pad_mode m)
{
    struct eng_attrs a = base();
    a.pad_mode = m;
    return a;
}

static struct eng_attrs A_cast(enum dtype to)
{
    struct eng_attrs a = base();
    a.to = to;
    return a;
}

static struct eng_attrs A_gelu(int tanh_approx)
{
    struct eng_attrs a = base();
    a.approximate_tanh = tanh_approx;
    return a;
}

static struct eng_attrs A_argmax(int axis, int keep, int last)
{
    struct eng_attrs a = A_axis(axis);
    a.keepdims = keep;
    a.select_last_index = last;
    return a;
}

static struct eng_attrs A_conv_epi(int nsp, const int64_t *s, const int64_t *p)
{
    struct eng_attrs a = A_win(nsp, NULL, s, NULL, p, 1);
    a.sum_input = 3;
    a.act = EACT_RELU;
    return a;
}

static struct eng_attrs A_mod(void)
{
    struct eng_attrs a = base();
    a.fmod = 1;
    return a;
}

static const int64_t k3[] = {3, 3}, k2[] = {2, 2}, s2[] = {2, 2}, s1[] = {1, 1}, d2[] = {2, 2};
static const int64_t p1[] = {1, 1, 1, 1}, p_asym[] = {0, 1, 1, 0}, k3_1d[] = {3}, s2_1d[] = {2};
static const int64_t p1_1d[] = {1, 1}, ax1[] = {1}, ax02[] = {0, 2}, perm[] = {2, 0, 1};

static const struct tcase cases[] = {
    /* elementwise, broadcasting */
    {"add_bcast", EOP_ADD, {.sum_input = -1}, 2, 1, {F32(2, 3, 4), F32(3, 1)}},
    {"add_same", EOP_ADD, {.sum_input = -1}, 2, 1, {F32(4, 5), F32(4, 5)}},
    {"sub_scalar", EOP_SUB, {.sum_input = -1}, 2, 1, {F32(3, 4), F32C(1)}},
    {"mul_bcast", EOP_MUL, {.sum_input = -1}, 2, 1, {F32(2, 1, 4), F32(3, 1)}},
    {"div", EOP_DIV, {.sum_input = -1}, 2, 1, {F32(6, 7), POS32(7)}},
    {"pow", EOP_POW, {.sum_input = -1}, 2, 1, {POS32(3, 5), F32C(5)}},
    {"mod_fmod", EOP_MOD, {.sum_input = -1, .fmod = 1}, 2, 1, {F32(4, 4), POS32(4, 4)}},
    {"add_int64", EOP_ADD, {.sum_input = -1}, 2, 1, {I64(-50, 50, 3, 4), I64(-50, 50, 4)}},
    {"div_int64", EOP_DIV, {.sum_input = -1}, 2, 1, {I64(-50, 50, 8), I64(1, 9, 8)}},
    {"max3", EOP_MAX, {.sum_input = -1}, 3, 1, {F32(2, 3), F32(3), F32(2, 1)}},
    {"mean2", EOP_MEAN, {.sum_input = -1}, 2, 1, {F32(4, 3), F32(4, 3)}},
    {"sum1", EOP_SUM, {.sum_input = -1}, 1, 1, {F32(5)}},
    {"prelu", EOP_PRELU, {.sum_input = -1}, 2, 1, {F32(2, 3, 4, 4), F32C(3, 1, 1)}},
    {"equal_i64", EOP_EQUAL, {.sum_input = -1}, 2, 1, {I64(0, 3, 10), I64(0, 3, 10)}},
    {"less_f", EOP_LESS, {.sum_input = -1}, 2, 1, {F32(3, 4), F32(4)}},
    {"and", EOP_AND, {.sum_input = -1}, 2, 1, {BOOLV(3, 4), BOOLV(4)}},
    {"not", EOP_NOT, {.sum_input = -1}, 1, 1, {BOOLV(7)}},
    {"where", EOP_WHERE, {.sum_input = -1}, 3, 1, {BOOLV(3, 1), F32(3, 4), F32(4)}},
    /* unary and activations */
    {"relu", EOP_RELU, {.sum_input = -1}, 1, 1, {F32(1000)}},
    {"sigmoid", EOP_SIGMOID, {.sum_input = -1}, 1, 1, {F32(300)}},
    {"tanh", EOP_TANH, {.sum_input = -1}, 1, 1, {F32(300)}},
    {"erf", EOP_ERF, {.sum_input = -1}, 1, 1, {F32(300)}},
    {"sqrt", EOP_SQRT, {.sum_input = -1}, 1, 1, {POS32(300)}},
    {"exp", EOP_EXP, {.sum_input = -1}, 1, 1, {F32(300)}},
    {"log", EOP_LOG, {.sum_input = -1}, 1, 1, {POS32(300)}},
    {"neg_i64", EOP_NEG, {.sum_input = -1}, 1, 1, {I64(-9, 9, 20)}},
    {"leakyrelu", EOP_LEAKYRELU, {.sum_input = -1, .alpha = 0.01f}, 1, 1, {F32(100)}},
    {"hardsigmoid", EOP_HARDSIGMOID, {.sum_input = -1, .alpha = 0.2f, .beta = 0.5f}, 1, 1,
     {F32(100)}},
    {"hardswish", EOP_HARDSWISH, {.sum_input = -1}, 1, 1, {F32(100)}},
    {"gelu_erf", EOP_GELU, {.sum_input = -1}, 1, 1, {F32(100)}},
    {"clip_inputs", EOP_CLIP, {.sum_input = -1}, 3, 1,
     {F32(50), FSCALAR(&clip_lo), FSCALAR(&clip_hi)}},
    /* normalisation and softmax */
    {"softmax_last", EOP_SOFTMAX, {.sum_input = -1, .axis = -1}, 1, 1, {F32(4, 37)}},
    {"softmax_mid", EOP_SOFTMAX, {.sum_input = -1, .axis = 1}, 1, 1, {F32(2, 5, 6)}},
    {"logsoftmax", EOP_LOGSOFTMAX, {.sum_input = -1, .axis = -1}, 1, 1, {F32(3, 300)}},
    {"layernorm", EOP_LAYERNORM, {.sum_input = -1, .axis = -1, .epsilon = 1e-5f}, 3, 1,
     {F32(2, 7, 64), F32C(64), F32C(64)}},
    {"batchnorm", EOP_BATCHNORM, {.sum_input = -1, .epsilon = 1e-5f}, 5, 1,
     {F32(2, 3, 5, 5), F32C(3), F32C(3), F32C(3), POS32C(3)}},
    {"instancenorm", EOP_INSTANCENORM, {.sum_input = -1, .epsilon = 1e-5f}, 3, 1,
     {F32(2, 3, 6, 6), F32C(3), F32C(3)}},
    /* reductions */
    {"reducemean_last", EOP_REDUCEMEAN, {.sum_input = -1, .keepdims = 1, .n_ints = 1,
                                         .ints = {-1}}, 1, 1, {F32(3, 4, 100)}},
    {"reducesum_02", EOP_REDUCESUM, {.sum_input = -1, .keepdims = 0, .n_ints = 2,
                                     .ints = {0, 2}}, 1, 1, {F32(3, 4, 5)}},
    {"reducemax_all", EOP_REDUCEMAX, {.sum_input = -1, .keepdims = 1, .n_ints = -1}, 1, 1,
     {F32(6, 7)}},
    {"reducel2", EOP_REDUCEL2, {.sum_input = -1, .keepdims = 1, .n_ints = 1, .ints = {1}}, 1,
     1, {F32(4, 9, 2)}},
    {"reducelse", EOP_REDUCELOGSUMEXP, {.sum_input = -1, .keepdims = 0, .n_ints = 1,
                                        .ints = {0}}, 1, 1, {F32(5, 6)}},
    {"argmax", EOP_ARGMAX, {.sum_input = -1, .axis = 1, .keepdims = 0}, 1, 1, {F32(3, 9, 2)}},
    /* pooling */
    {"maxpool_pad", EOP_MAXPOOL, {.sum_input = -1}, 1, 1, {F32(2, 3, 9, 9)}},
    {"avgpool_cip_ceil", EOP_AVGPOOL, {.sum_input = -1}, 1, 1, {F32(1, 2, 8, 8)}},
    {"avgpool_nopad", EOP_AVGPOOL, {.sum_input = -1}, 1, 1, {F32(1, 2, 7, 7)}},
    {"gap", EOP_GLOBALAVGPOOL, {.sum_input = -1}, 1, 1, {F32(2, 8, 7, 7)}},
    {"gmp", EOP_GLOBALMAXPOOL, {.sum_input = -1}, 1, 1, {F32(2, 8, 3, 3)}},
    /* products */
    {"gemm_tb_bias", EOP_GEMM, {.sum_input = -1}, 3, 1, {F32(5, 7), F32C(4, 7), F32C(4)}},
    {"gemm_ta_c2d", EOP_GEMM, {.sum_input = -1}, 3, 1, {F32(7, 5), F32C(7, 3), F32C(5, 1)}},
    {"matmul_2d", EOP_MATMUL, {.sum_input = -1}, 2, 1, {F32(6, 8), F32C(8, 5)}},
    {"matmul_batched", EOP_MATMUL, {.sum_input = -1}, 2, 1,
     {F32(2, 3, 4, 8), F32(2, 3, 8, 5)}},
    {"matmul_bcast_b", EOP_MATMUL, {.sum_input = -1}, 2, 1, {F32(3, 4, 8), F32(1, 8, 5)}},
    {"matmul_mixed", EOP_MATMUL, {.sum_input = -1}, 2, 1,
     {F32(2, 1, 4, 8), F32(1, 3, 8, 5)}},
    {"matmul_1d", EOP_MATMUL, {.sum_input = -1}, 2, 1, {F32(8), F32(3, 8, 5)}},
    {"matmul_bias_gelu", EOP_MATMUL, {.sum_input = -1}, 3, 1,
     {F32(2, 6, 16), F32C(16, 12), F32C(12)}},
    /* convolution */
    {"conv_3x3_pad", EOP_CONV, {.sum_input = -1}, 3, 1,
     {F32(2, 3, 10, 10), F32C(8, 3, 3, 3), F32C(8)}},
    {"conv_stride_dil", EOP_CONV, {.sum_input = -1}, 2, 1, {F32(1, 4, 13, 13), F32C(6, 4, 3, 3)}},
    {"conv_group", EOP_CONV, {.sum_input = -1}, 2, 1, {F32(2, 4, 8, 8), F32C(6, 2, 3, 3)}},
    {"conv_depthwise", EOP_CONV, {.sum_input = -1}, 3, 1,
     {F32(1, 8, 9, 9), F32C(8, 1, 3, 3), F32C(8)}},
    {"conv_1x1_batch", EOP_CONV, {.sum_input = -1}, 2, 1, {F32(3, 16, 5, 5), F32C(8, 16, 1, 1)}},
    {"conv_asym_pad", EOP_CONV, {.sum_input = -1}, 2, 1, {F32(1, 3, 8, 8), F32C(4, 3, 2, 2)}},
    {"conv_1d", EOP_CONV, {.sum_input = -1}, 3, 1, {F32(2, 3, 17), F32C(5, 3, 3), F32C(5)}},
    {"conv_bias_res_relu", EOP_CONV, {.sum_input = -1}, 4, 1,
     {F32(2, 4, 6, 6), F32C(4, 4, 3, 3), F32C(4), F32(2, 4, 6, 6)}},
    /* data movement */
    {"concat", EOP_CONCAT, {.sum_input = -1, .axis = 1}, 3, 1,
     {F32(2, 3, 4), F32(2, 1, 4), F32(2, 5, 4)}},
    {"split", EOP_SPLIT, {.sum_input = -1, .axis = 1, .n_ints = -1}, 2, 2,
     {F32(2, 4, 3), IVEC(2, split_sz)}},
    {"slice_neg_step", EOP_SLICE, {.sum_input = -1}, 5, 1,
     {F32(3, 4, 6), IVEC(2, sl_start), IVEC(2, sl_end), IVEC(2, sl_axes), IVEC(2, sl_steps)}},
    {"gather_neg", EOP_GATHER, {.sum_input = -1, .axis = 1}, 2, 1,
     {F32(3, 5, 2), I64(-5, 5, 2, 3)}},
    {"gather_rows_i64", EOP_GATHER, {.sum_input = -1, .axis = 0}, 2, 1,
     {I64(-100, 100, 10, 4), I64(0, 10, 7)}},
    {"transpose", EOP_TRANSPOSE, {.sum_input = -1}, 1, 1, {F32(2, 3, 4)}},
    {"reshape", EOP_RESHAPE, {.sum_input = -1}, 2, 1, {F32(2, 3, 4), IVEC(2, shape_2x12)}},
    {"expand", EOP_EXPAND, {.sum_input = -1}, 2, 1, {F32(3, 1), IVEC(3, shape_exp)}},
    {"tile", EOP_TILE, {.sum_input = -1}, 2, 1, {F32(2, 3, 2), IVEC(3, reps)}},
    {"pad_reflect", EOP_PAD, {.sum_input = -1}, 2, 1, {F32(1, 2, 5, 6), IVEC(8, pads4)}},
    {"pad_const", EOP_PAD, {.sum_input = -1}, 2, 1, {F32(1, 2, 3, 4), IVEC(8, pads4)}},
    {"cast_f2i", EOP_CAST, {.sum_input = -1}, 1, 1, {F32(40)}},
    {"cast_i2f", EOP_CAST, {.sum_input = -1}, 1, 1, {I64(-1000, 1000, 40)}},
    /* the host fallback (Range has no device kernel) */
    {"range_host", EOP_RANGE, {.sum_input = -1}, 3, 1,
     {{.dt = DT_INT64, .nd = 0, .is_const = 1, .src = GIVEN, .given = &rng[0]},
      {.dt = DT_INT64, .nd = 0, .is_const = 1, .src = GIVEN, .given = &rng[1]},
      {.dt = DT_INT64, .nd = 0, .is_const = 1, .src = GIVEN, .given = &rng[2]}}},
};

#define N_CASES (sizeof cases / sizeof cases[0])

/* Attributes that need helper functions (arrays, -INFINITY) are filled in here. */
static struct eng_attrs attrs_for(const struct tcase *tc)
{
    const char *n = tc->name;
    if (!strcmp(n, "maxpool_pad"))
        return A_pool(2, k3, s2, p1, 0, 0);
    if (!strcmp(n, "avgpool_cip_ceil"))
        return A_pool(2, k3, s2, p1, 1, 1);
    if (!strcmp(n, "avgpool_nopad"))
        return A_pool(2, k2, s2, NULL, 1, 0);
    if (!strcmp(n, "gemm_tb_bias"))
        return A_gemm(0.5f, 2.0f, 0, 1);
    if (!strcmp(n, "gemm_ta_c2d"))
        return A_gemm(1.0f, 1.0f, 1, 0);
    if (!strcmp(n, "matmul_bias_gelu"))
        return A_act(EACT_GELU_ERF);
    if (!strcmp(n, "conv_3x3_pad"))
        return A_win(2, NULL, NULL, NULL, p1, 1);
    if (!strcmp(n, "conv_stride_dil"))
        return A_win(2, k3, s2, d2, p1, 1);
    if (!strcmp(n, "conv_group"))
        return A_win(2, NULL, s1, NULL, p1, 2);
    if (!strcmp(n, "conv_depthwise"))
        return A_win(2, NULL, s2, NULL, p1, 8);
    if (!strcmp(n, "conv_1x1_batch"))
        return A_win(2, NULL, NULL, NULL, NULL, 1);
    if (!strcmp(n, "conv_asym_pad"))
        return A_win(2, NULL, NULL, NULL, p_asym, 1);
    if (!strcmp(n, "conv_1d"))
        return A_win(1, k3_1d, s2_1d, NULL, p1_1d, 1);
    if (!strcmp(n, "conv_bias_res_relu"))
        return A_conv_epi(2, NULL, p1);
    if (!strcmp(n, "transpose"))
        return A_ints(3, perm);
    if (!strcmp(n, "pad_reflect"))
        return A_pad(EPADM_REFLECT);
    if (!strcmp(n, "pad_const"))
        return A_pad(EPADM_CONSTANT);
    if (!strcmp(n, "cast_f2i"))
        return A_cast(DT_INT64);
    if (!strcmp(n, "cast_i2f"))
        return A_cast(DT_FP32);
    if (!strcmp(n, "clip_inputs"))
        return A_clip();
    if (!strcmp(n, "gelu_erf"))
        return A_gelu(0);
    if (!strcmp(n, "mod_fmod"))
        return A_mod();
    if (!strcmp(n, "argmax"))
        return A_argmax(1, 0, 0);
    if (!strcmp(n, "softmax_last") || !strcmp(n, "logsoftmax"))
        return A_axis(-1);
    if (!strcmp(n, "reducesum_02"))
        return A_reduce(0, 2, ax02);
    if (!strcmp(n, "reducel2"))
        return A_reduce(1, 1, ax1);
    if (!strcmp(n, "layernorm"))
        return A_eps(-1, 1e-5f);
    struct eng_attrs a = tc->a;
    return a;
}

/* ---- harness ---- */

static struct backend ref, dut;
static int weight_seq;
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t next_rand(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static double uniform(void)
{
    return (double)(next_rand() >> 11) / 9007199254740992.0;
}

static void fill(const struct spec *sp, void *data, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        switch (sp->src) {
        case RAND: ((float *)data)[i] = (float)(2.0 * uniform() - 1.0); break;
        case POS: ((float *)data)[i] = (float)(0.1 + 1.9 * uniform()); break;
        case BOOLS: ((uint8_t *)data)[i] = (uint8_t)(next_rand() & 1); break;
        case INTS:
            ((int64_t *)data)[i] = sp->lo + (int64_t)(next_rand() % (uint64_t)(sp->hi - sp->lo));
            break;
        case GIVEN: break;
        }
    }
}

#define MAXV 12

struct built {
    struct plan_value v[MAXV];
    struct tensor host[MAXV];
    int inidx[6], outidx[3], inputs[6], outputs[3];
    struct plan_step st;
    struct plan_graph g;
    int n_inputs;
};

static void build(const struct tcase *tc, struct built *b)
{
    struct cerr e = {0};
    int nv = 0;
    memset(b, 0, sizeof *b);
    for (int k = 0; k < tc->n_in; k++) {
        const struct spec *sp = &tc->in[k];
        if (sp->dt == DT_INVALID) {
            b->inidx[k] = -1;
            continue;
        }
        struct plan_value *v = &b->v[nv];
        v->name = "in";
        v->dtype = sp->dt;
        v->ndim = sp->nd;
        memcpy(v->dims, sp->d, sizeof v->dims);
        v->nbytes = (size_t)eng_numel(v->dims, v->ndim) * dtype_size(v->dtype);
        v->input_index = v->output_index = v->producer = -1;
        v->weight_id = -1;
        v->last_use = 0;
        assert_int_equal(tensor_alloc(&b->host[nv], "in", v->dtype, v->dims, v->ndim, &e), 0);
        if (sp->src == GIVEN)
            memcpy(b->host[nv].data, sp->given, v->nbytes);
        else
            fill(sp, b->host[nv].data, eng_numel(v->dims, v->ndim));
        if (sp->is_const) {
            v->kind = PV_CONST;
            v->data = b->host[nv].data;
            v->weight_id = weight_seq++;
        } else {
            v->kind = PV_INPUT;
            v->input_index = b->n_inputs;
            b->inputs[b->n_inputs++] = nv;
        }
        b->inidx[k] = nv++;
    }
    for (int k = 0; k < tc->n_out; k++) {
        struct plan_value *v = &b->v[nv];
        v->name = "out";
        v->kind = PV_TEMP;
        v->weight_id = v->input_index = -1;
        v->output_index = k;
        v->producer = 0;
        v->last_use = -1;
        b->outidx[k] = b->outputs[k] = nv++;
    }
    b->st = (struct plan_step){.op = tc->op, .label = tc->name, .a = attrs_for(tc),
                               .n_in = tc->n_in, .in = b->inidx, .n_out = tc->n_out,
                               .out = b->outidx};
    const struct plan_value *ip[6] = {0};
    struct plan_value *op[3] = {0};
    for (int k = 0; k < tc->n_in; k++)
        ip[k] = b->inidx[k] >= 0 ? &b->v[b->inidx[k]] : NULL;
    for (int k = 0; k < tc->n_out; k++)
        op[k] = &b->v[b->outidx[k]];
    struct eng_infer c = {.st = &b->st, .in = ip, .out = op, .opset = 17};
    int rc = eng_opdef(tc->op)->infer(&c, &e);
    if (rc)
        print_error("%s: shape inference failed: %s\n", tc->name, e.msg);
    assert_int_equal(rc, 0);
    size_t off = 0;
    for (int k = 0; k < tc->n_out; k++) {
        struct plan_value *v = &b->v[b->outidx[k]];
        v->offset = off;
        off += (v->nbytes + 63) & ~(size_t)63;
        assert_int_equal(tensor_alloc(&b->host[b->outidx[k]], "out", v->dtype, v->dims, v->ndim,
                                      &e), 0);
    }
    b->g = (struct plan_graph){.vals = b->v, .n_vals = nv, .steps = &b->st, .n_steps = 1,
                               .n_inputs = b->n_inputs, .inputs = b->inputs,
                               .n_outputs = tc->n_out, .outputs = b->outputs,
                               .arena_bytes = off};
}

/* Runs the built plan on one backend; out[k] receives copies of the outputs. */
static void run_on(struct backend *be, struct built *b, int n_out, struct tensor *out)
{
    struct cerr e = {0};
    struct tensor in[6];
    void *compiled = NULL;
    size_t arena = 0;
    for (int i = 0; i < b->g.n_vals; i++)
        if (b->v[i].kind == PV_CONST)
            assert_int_equal(be->ops->weight_upload(be, b->v[i].weight_id, &b->host[i], &e), 0);
    for (int k = 0; k < b->n_inputs; k++)
        in[k] = b->host[b->inputs[k]];
    for (int k = 0; k < n_out; k++) {
        const struct plan_value *v = &b->v[b->outputs[k]];
        assert_int_equal(tensor_alloc(&out[k], "out", v->dtype, v->dims, v->ndim, &e), 0);
    }
    int rc = be->ops->plan_compile(be, &b->g, &compiled, &arena, &e);
    if (rc)
        print_error("%s on %s: compile: %s\n", b->st.label, be->ops->name, e.msg);
    assert_int_equal(rc, 0);
    rc = be->ops->plan_execute(be, compiled, in, out, &e);
    if (!rc)
        rc = be->ops->synchronize(be, &e);
    if (rc)
        print_error("%s on %s: execute: %s\n", b->st.label, be->ops->name, e.msg);
    be->ops->plan_free(be, compiled);
    assert_int_equal(rc, 0);
}

static void compare(const char *name, const struct tensor *r, const struct tensor *d)
{
    assert_int_equal(r->nbytes, d->nbytes);
    if (r->dtype != DT_FP32) {
        if (memcmp(r->data, d->data, r->nbytes) != 0) {
            print_error("%s: %s outputs differ\n", name, dtype_name(r->dtype));
            fail();
        }
        return;
    }
    const float *a = r->data, *b = d->data;
    size_t n = r->nbytes / sizeof(float), bad = 0;
    for (size_t i = 0; i < n; i++) {
        float tol = 1e-4f + 1e-3f * fabsf(a[i]);
        int same_nan = isnan(a[i]) && isnan(b[i]);
        if (!same_nan && !(fabsf(a[i] - b[i]) <= tol)) {
            if (bad++ < 5)
                print_error("%s: element %zu: cpu %.7g, device %.7g\n", name, i, a[i], b[i]);
        }
    }
    if (bad) {
        print_error("%s: %zu of %zu elements differ\n", name, bad, n);
        fail();
    }
}

static void test_case(void **state)
{
    const struct tcase *tc = *state;
    struct built b;
    struct tensor r[3], d[3];
    build(tc, &b);
    run_on(&ref, &b, tc->n_out, r);
    run_on(&dut, &b, tc->n_out, d);
    for (int k = 0; k < tc->n_out; k++) {
        compare(tc->name, &r[k], &d[k]);
        tensor_release(&r[k]);
        tensor_release(&d[k]);
    }
    for (int i = 0; i < b.g.n_vals; i++)
        tensor_release(&b.host[i]);
}

/* ---- without a device ---- */

static void test_create_fails_cleanly(void **state)
{
    struct backend b;
    struct cerr e = {0};
    memset(&b, 0xab, sizeof b);
    assert_int_equal(backend_cuda_create(0, &b, &e), CORRAL_EUNAVAIL);
    assert_null(b.ops);
    assert_non_null(strstr(e.msg, "cuda:0"));
    assert_null(strchr(e.msg, '\n'));
    cerr_clear(&e);
    assert_int_equal(backend_create("cuda:3", NULL, &b, &e), CORRAL_EUNAVAIL);
    assert_non_null(strstr(e.msg, "cuda:3"));
    cerr_clear(&e);
    assert_int_equal(backend_create("cuda", NULL, &b, &e), CORRAL_EUNAVAIL);
    assert_non_null(strstr(e.msg, "cuda:0"));
}

/* ---- with or without a device ---- */

static void test_bad_device_strings(void **state)
{
    struct backend b;
    struct cerr e = {0};
    assert_int_equal(backend_create("cuda:x", NULL, &b, &e), CORRAL_EINVAL);
    assert_int_equal(backend_create("cuda:-1", NULL, &b, &e), CORRAL_EINVAL);
    assert_int_equal(backend_cuda_create(-1, &b, &e), CORRAL_EINVAL);
    /* An ordinal past the last device is unavailable, with or without a GPU. */
    assert_int_equal(backend_create("cuda:1000", NULL, &b, &e), CORRAL_EUNAVAIL);
    assert_non_null(strstr(e.msg, "cuda:1000"));
}

static void test_supports_op(void **state)
{
    enum dtype f[3] = {DT_FP32, DT_FP32, DT_FP32};
    struct eng_attrs a = base();
    assert_true(dut.ops->supports_op(&dut, EOP_CONV, &a, f, 3));
    assert_true(dut.ops->supports_op(&dut, EOP_MATMUL, &a, f, 2));
    assert_true(dut.ops->supports_op(&dut, EOP_LAYERNORM, &a, f, 3));
    if (strcmp(dut.ops->name, "cuda") == 0)
        assert_false(dut.ops->supports_op(&dut, EOP_CONV_TRANSPOSE, &a, f, 2));
}

static int have_device(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return n > 0;
}

int main(void)
{
    const char *peer = getenv("CORRAL_TEST_CUDA_PEER");
    struct cerr e = {0};
    int fails = 0;
    const struct CMUnitTest always[] = {cmocka_unit_test(test_bad_device_strings)};
    fails += cmocka_run_group_tests_name("backend_cuda_always", always, NULL, NULL);
    if (!have_device() && !peer) {
        const struct CMUnitTest nodev[] = {cmocka_unit_test(test_create_fails_cleanly)};
        fails += cmocka_run_group_tests_name("backend_cuda_without_device", nodev, NULL, NULL);
        if (fails)
            return 1;
        printf("skipped: no CUDA device\n");
        return 77;
    }
    struct backend_options opt = {.threads = 1};
    if (backend_create("cpu", &opt, &ref, &e) ||
        backend_create(peer ? peer : "cuda:0", &opt, &dut, &e)) {
        fprintf(stderr, "cannot create the backends: %s\n", e.msg);
        return 1;
    }
    struct CMUnitTest *t = calloc(N_CASES + 1, sizeof *t);
    if (!t)
        return 1;
    for (size_t i = 0; i < N_CASES; i++)
        t[i] = (struct CMUnitTest){.name = cases[i].name, .test_func = test_case,
                                   .initial_state = (void *)&cases[i]};
    t[N_CASES] = (struct CMUnitTest){.name = "supports_op", .test_func = test_supports_op};
    fails += _cmocka_run_group_tests("backend_cuda_vs_cpu", t, N_CASES + 1, NULL, NULL);
    free(t);
    dut.ops->destroy(&dut);
    ref.ops->destroy(&ref);
    return fails ? 1 : 0;
}
