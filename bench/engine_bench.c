/*
 * corral-engine-bench: times the engine on one ONNX file, in process.
 *
 *     corral-engine-bench MODEL.onnx [--batch N] [--dyn N] [--shape NAME=2x3x224x224]
 *                         [--threads N] [--warmup N] [--runs N] [--min-seconds S]
 *                         [--int-max K] [--device cpu]
 *
 * The model is loaded once, its inputs are filled with reproducible pseudo-random
 * values (FP32 roughly N(0, 1), integers uniform in [0, K)), engine_run is called
 * --warmup times untimed (at least once) and then at least --runs times and for at least
 * --min-seconds, and one line goes to stdout:
 *
 *     model=m/1/model.onnx batch=1 threads=1 runs=57 median_ms=15.2 min_ms=14.9 mean_ms=15.4
 *         load_ms=40.1 first_run_ms=60.2 backend=cpu plans=1 steps=31 arena_bytes=3211264
 *
 * (first_run_ms includes building the plan for this shape; arena_bytes is that plan's
 * working memory as engine_plan_info reports it).
 * Input shapes come from the model's declared inputs: a variable first axis takes
 * --batch, any other variable axis takes --dyn (default 16), and --shape sets one
 * input's whole shape. bench/engine_vs_ort.sh runs this beside ONNX Runtime and
 * PyTorch; the median is what it compares.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine.h"

#define MAX_SHAPES 16
#define MAX_RUNS 100000

struct shape_arg {
    char name[128];
    int ndim;
    int64_t dims[TENSOR_MAX_DIMS];
};

struct opts {
    const char *model;
    const char *device;
    long batch, dyn, threads, warmup, runs, int_max;
    double min_seconds;
    struct shape_arg shapes[MAX_SHAPES];
    int n_shapes;
};

static void usage(FILE *f)
{
    fprintf(f,
            "usage: corral-engine-bench MODEL.onnx [--batch N] [--dyn N] [--shape NAME=DIMS]\n"
            "                           [--threads N] [--warmup N] [--runs N] [--min-seconds S]\n"
            "                           [--int-max K] [--device cpu]\n"
            "\n"
            "Times engine_run on MODEL.onnx: --warmup untimed runs (default 3, at least 1), then at least\n"
            "--runs timed runs (default 10) lasting at least --min-seconds (default 2), and\n"
            "prints one line with the median, minimum and mean milliseconds per run.\n"
            "\n"
            "  --batch N        size of a variable first axis (default 1)\n"
            "  --dyn N          size of any other variable axis (default 16)\n"
            "  --shape NAME=D   whole shape of input NAME, 'x' between dimensions (repeatable)\n"
            "  --threads N      engine compute threads (default 1)\n"
            "  --int-max K      integer inputs are drawn from [0, K) (default 10)\n"
            "  --device DEV     engine device (default cpu)\n");
}

static int parse_long(const char *s, long lo, long hi, long *out)
{
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

static int parse_shape(const char *text, struct shape_arg *sa)
{
    /* NAME=AxBxC: the name is everything up to the last '='. */
    const char *eq = strrchr(text, '=');
    if (!eq || eq == text || (size_t)(eq - text) >= sizeof sa->name)
        return -1;
    memcpy(sa->name, text, (size_t)(eq - text));
    sa->name[eq - text] = '\0';
    sa->ndim = 0;
    const char *p = eq + 1;
    while (*p) {
        char *end = NULL;
        errno = 0;
        long long v = strtoll(p, &end, 10);
        if (errno || end == p || v < 1 || v > (1LL << 31) || sa->ndim == TENSOR_MAX_DIMS)
            return -1;
        sa->dims[sa->ndim++] = v;
        if (*end == 'x')
            end++;
        else if (*end)
            return -1;
        p = end;
    }
    return sa->ndim > 0 ? 0 : -1;
}

static int parse_args(int argc, char **argv, struct opts *o)
{
    *o = (struct opts){.device = "cpu", .batch = 1, .dyn = 16, .threads = 1, .warmup = 3,
                       .runs = 10, .int_max = 10, .min_seconds = 2.0};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        long *target = NULL;
        long lo = 1, hi = 1L << 30;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            exit(0);
        } else if (a[0] != '-') {
            if (o->model) {
                fprintf(stderr, "corral-engine-bench: more than one model given ('%s' and '%s')\n",
                        o->model, a);
                return -1;
            }
            o->model = a;
            continue;
        }
        if (!v) {
            fprintf(stderr, "corral-engine-bench: option '%s' needs a value\n", a);
            return -1;
        }
        if (!strcmp(a, "--batch")) {
            target = &o->batch;
        } else if (!strcmp(a, "--dyn")) {
            target = &o->dyn;
        } else if (!strcmp(a, "--threads")) {
            target = &o->threads;
            hi = 1024;
        } else if (!strcmp(a, "--warmup")) {
            target = &o->warmup;
            lo = 0;
            hi = MAX_RUNS;
        } else if (!strcmp(a, "--runs")) {
            target = &o->runs;
            hi = MAX_RUNS;
        } else if (!strcmp(a, "--int-max")) {
            target = &o->int_max;
        } else if (!strcmp(a, "--device")) {
            o->device = v;
        } else if (!strcmp(a, "--min-seconds")) {
            char *end = NULL;
            o->min_seconds = strtod(v, &end);
            if (end == v || *end || !(o->min_seconds >= 0 && o->min_seconds <= 3600)) {
                fprintf(stderr, "corral-engine-bench: --min-seconds '%s' is not a number of seconds "
                                "from 0 to 3600\n", v);
                return -1;
            }
        } else if (!strcmp(a, "--shape")) {
            if (o->n_shapes == MAX_SHAPES || parse_shape(v, &o->shapes[o->n_shapes])) {
                fprintf(stderr, "corral-engine-bench: --shape '%s' is not NAME=DIMS with positive "
                                "dimensions separated by 'x' (at most %d dimensions, %d shapes)\n",
                        v, TENSOR_MAX_DIMS, MAX_SHAPES);
                return -1;
            }
            o->n_shapes++;
        } else {
            fprintf(stderr, "corral-engine-bench: unknown option '%s'\n", a);
            usage(stderr);
            return -1;
        }
        if (target && parse_long(v, lo, hi, target)) {
            fprintf(stderr, "corral-engine-bench: %s '%s' is not an integer from %ld to %ld\n", a, v,
                    lo, hi);
            return -1;
        }
        i++;
    }
    if (!o->model) {
        fprintf(stderr, "corral-engine-bench: no model given\n");
        usage(stderr);
        return -1;
    }
    return 0;
}

/* xorshift64*: the same inputs on every run of the tool, whatever the libc. */
static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ULL;
}

static double rng_unit(uint64_t *s)
{
    return (double)(rng_next(s) >> 11) * (1.0 / 9007199254740992.0);
}

static void fill_input(struct tensor *t, long int_max, uint64_t *s)
{
    size_t n = t->nbytes / (dtype_size(t->dtype) ? dtype_size(t->dtype) : 1);
    for (size_t i = 0; i < n; i++) {
        switch (t->dtype) {
        case DT_FP32: {
            /* Irwin-Hall: the sum of 12 uniforms minus 6 is close enough to N(0, 1). */
            double x = -6.0;
            for (int k = 0; k < 12; k++)
                x += rng_unit(s);
            ((float *)t->data)[i] = (float)x;
            break;
        }
        case DT_FP64:
            ((double *)t->data)[i] = rng_unit(s) * 2.0 - 1.0;
            break;
        case DT_INT64:
            ((int64_t *)t->data)[i] = (int64_t)(rng_next(s) % (uint64_t)int_max);
            break;
        case DT_INT32:
            ((int32_t *)t->data)[i] = (int32_t)(rng_next(s) % (uint64_t)int_max);
            break;
        case DT_BOOL:
        case DT_UINT8:
            ((uint8_t *)t->data)[i] = (uint8_t)(rng_next(s) % 2);
            break;
        default:
            /* Other types keep tensor_alloc's zeros. */
            break;
        }
    }
}

static int make_input(const struct engine_io_info *info, const struct opts *o, struct tensor *t,
                      struct cerr *e)
{
    int ndim = info->ndim;
    int64_t dims[TENSOR_MAX_DIMS];
    const struct shape_arg *sa = NULL;
    for (int k = 0; k < o->n_shapes; k++)
        if (!strcmp(o->shapes[k].name, info->name))
            sa = &o->shapes[k];
    if (sa) {
        ndim = sa->ndim;
        memcpy(dims, sa->dims, sizeof dims);
    } else if (ndim < 0) {
        return cerr_set(e, CORRAL_EINVAL, "input '%s' declares no shape; give one with --shape %s=DIMS",
                        info->name, info->name);
    } else {
        for (int d = 0; d < ndim; d++)
            dims[d] = info->dims[d] >= 0 ? info->dims[d] : d == 0 ? o->batch : o->dyn;
    }
    return tensor_alloc(t, info->name, info->dtype, dims, ndim, e);
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int run_once(struct engine *eng, const struct tensor *in, size_t n_in, struct tensor *out,
                    size_t n_out, struct cerr *e)
{
    int rc = engine_run(eng, in, n_in, out, e);
    if (rc == 0)
        for (size_t j = 0; j < n_out; j++)
            tensor_release(&out[j]);
    return rc;
}

int main(int argc, char **argv)
{
    struct opts o;
    struct cerr e = {0};
    struct engine *eng = NULL;
    struct tensor *in = NULL, *out = NULL;
    double *times = NULL;
    size_t n_in = 0, n_out = 0, n_times = 0, cap = 0;
    int rc = 1;

    if (parse_args(argc, argv, &o))
        return 2;
    struct engine_options eo = ENGINE_OPTIONS_DEFAULT;
    eo.threads = (int)o.threads;
    eo.device = o.device;
    double t_load = now_ms();
    if (engine_load_file(o.model, &eo, &eng, &e)) {
        fprintf(stderr, "corral-engine-bench: %s\n", e.msg);
        goto fail;
    }
    t_load = now_ms() - t_load;

    n_in = engine_num_inputs(eng);
    n_out = engine_num_outputs(eng);
    in = calloc(n_in ? n_in : 1, sizeof *in);
    out = calloc(n_out ? n_out : 1, sizeof *out);
    if (!in || !out) {
        fprintf(stderr, "corral-engine-bench: out of memory\n");
        goto fail;
    }
    uint64_t seed = 0x9e3779b97f4a7c15ULL;
    for (size_t i = 0; i < n_in; i++) {
        if (make_input(engine_input(eng, i), &o, &in[i], &e)) {
            fprintf(stderr, "corral-engine-bench: %s\n", e.msg);
            goto fail;
        }
        fill_input(&in[i], o.int_max, &seed);
    }

    /* The first run builds whatever the engine prepares lazily; it is reported apart. */
    double t_first = now_ms();
    for (long w = 0; w < (o.warmup > 0 ? o.warmup : 1); w++) {
        if (run_once(eng, in, n_in, out, n_out, &e)) {
            fprintf(stderr, "corral-engine-bench: %s\n", e.msg);
            goto fail;
        }
        if (w == 0)
            t_first = now_ms() - t_first;
    }

    double start = now_ms();
    while (n_times < (size_t)o.runs || (now_ms() - start < o.min_seconds * 1e3 && n_times < MAX_RUNS)) {
        if (n_times == cap) {
            size_t ncap = cap ? cap * 2 : 64;
            double *nt = realloc(times, ncap * sizeof *nt);
            if (!nt) {
                fprintf(stderr, "corral-engine-bench: out of memory\n");
                goto fail;
            }
            times = nt;
            cap = ncap;
        }
        double t0 = now_ms();
        if (run_once(eng, in, n_in, out, n_out, &e)) {
            fprintf(stderr, "corral-engine-bench: %s\n", e.msg);
            goto fail;
        }
        times[n_times++] = now_ms() - t0;
    }
    double sum = 0;
    for (size_t i = 0; i < n_times; i++)
        sum += times[i];
    qsort(times, n_times, sizeof *times, cmp_double);
    double median = n_times % 2 ? times[n_times / 2]
                                : (times[n_times / 2 - 1] + times[n_times / 2]) / 2.0;
    /* Only this shape was run, so the largest plan is the one that was timed. */
    size_t arena = 0, steps = 0, n_plans = engine_plan_count(eng);
    for (size_t i = 0; i < n_plans; i++) {
        struct engine_plan_info pi;
        if (engine_plan_info(eng, i, &pi) == 0 && pi.arena_bytes >= arena) {
            arena = pi.arena_bytes;
            steps = pi.n_steps;
        }
    }
    printf("model=%s batch=%ld threads=%ld runs=%zu median_ms=%.4f min_ms=%.4f mean_ms=%.4f "
           "load_ms=%.1f first_run_ms=%.3f backend=%s plans=%zu steps=%zu arena_bytes=%zu\n",
           o.model, o.batch, o.threads, n_times, median, times[0], sum / (double)n_times, t_load,
           t_first, engine_backend_name(eng), n_plans, steps, arena);
    rc = 0;
fail:
    for (size_t i = 0; in && i < n_in; i++)
        tensor_release(&in[i]);
    free(in);
    free(out);
    free(times);
    engine_free(eng);
    return rc;
}
