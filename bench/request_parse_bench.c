/*
 * corral-parse-bench: how long the router takes to turn one OIP JSON infer
 * body into the wire request (parse, convert every value into the tensor),
 * against the same work done with a general JSON library (jansson: parse to
 * a tree, then read every number as a double and narrow it).
 *
 * Usage: corral-parse-bench BODY.json [SECONDS]
 * Prints the median time per body of 5 rounds for each, and their ratio.
 */
#include <float.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "oip_codec.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* The jansson way: a tree of the whole body, then every number of every input's data. */
static size_t count_floats(json_t *v, float *sink)
{
    if (json_is_array(v)) {
        size_t n = 0;
        for (size_t i = 0; i < json_array_size(v); i++)
            n += count_floats(json_array_get(v, i), sink);
        return n;
    }
    *sink += (float)json_number_value(v);
    return 1;
}

static int run_jansson(const char *body, size_t len, float *sink)
{
    json_error_t err;
    json_t *root = json_loadb(body, len, 0, &err);
    if (!root)
        return -1;
    json_t *inputs = json_object_get(root, "inputs");
    for (size_t i = 0; i < json_array_size(inputs); i++)
        count_floats(json_object_get(json_array_get(inputs, i), "data"), sink);
    json_decref(root);
    return 0;
}

static int run_corral(const char *body, size_t len, float *sink)
{
    struct oip_infer in;
    struct cerr e = {0};
    int rc = oip_infer_parse(body, len, NULL, 0, "m", "", &in, &e);
    if (rc == 0 && in.ir.n_inputs > 0 && in.inputs[0].data.len >= 4) {
        float f;
        memcpy(&f, in.inputs[0].data.data, 4);
        *sink += f;
    }
    oip_infer_free(&in);
    return rc;
}

static double median_per_body(int (*fn)(const char *, size_t, float *), const char *body,
                               size_t len, double seconds, float *sink)
{
    double t[5];
    for (int r = 0; r < 5; r++) {
        size_t n = 0;
        double t0 = now_s(), t1;
        do {
            for (int k = 0; k < 16; k++, n++)
                if (fn(body, len, sink)) {
                    fprintf(stderr, "corral-parse-bench: the body does not parse\n");
                    exit(1);
                }
            t1 = now_s();
        } while (t1 - t0 < seconds / 10);
        t[r] = (t1 - t0) / (double)n;
    }
    qsort(t, 5, sizeof t[0], cmp_double);
    return t[2];
}

int main(int argc, char **argv)
{
    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: corral-parse-bench BODY.json [SECONDS]\n");
        return 2;
    }
    double seconds = argc == 3 ? atof(argv[2]) : 2.0;
    if (!(seconds > 0)) {
        fprintf(stderr, "corral-parse-bench: SECONDS must be a positive number\n");
        return 2;
    }
    FILE *f = fopen(argv[1], "rb");
    if (!f) {
        perror(argv[1]);
        return 1;
    }
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *body = malloc(sz > 0 ? (size_t)sz : 1);
    if (!body || sz <= 0 || fread(body, 1, (size_t)sz, f) != (size_t)sz) {
        fprintf(stderr, "corral-parse-bench: cannot read %s\n", argv[1]);
        return 1;
    }
    fclose(f);
    float sink = 0;
    double a = 0, b = 0;
    /* Alternate so that both see the same machine. */
    for (int round = 0; round < 2; round++) {
        b = median_per_body(run_jansson, body, (size_t)sz, seconds, &sink);
        a = median_per_body(run_corral, body, (size_t)sz, seconds, &sink);
    }
    printf("body %ld bytes\n", sz);
    printf("corral (oip_infer_parse)    %.2f us per body\n", a * 1e6);
    printf("jansson tree + conversion   %.2f us per body\n", b * 1e6);
    printf("ratio jansson / corral      %.2f\n", b / a);
    free(body);
    return sink == 12345.0f; /* keeps the work from being optimised away */
}
