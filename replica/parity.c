#include "parity.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define PARITY_MAX_SETS 1024

static int file_exists(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

static int cmp_long(const void *a, const void *b)
{
    long x = *(const long *)a, y = *(const long *)b;
    return (x > y) - (x < y);
}

/* Compares one output; mismatched shape or type counts as a failure with an infinite difference. */
static double compare(const struct tensor *got, const struct tensor *want, double atol,
                      double rtol, int *ok)
{
    *ok = 1;
    if (got->dtype != want->dtype || got->ndim != want->ndim || got->nbytes != want->nbytes ||
        memcmp(got->dims, want->dims, sizeof(int64_t) * (size_t)got->ndim) != 0) {
        *ok = 0;
        return INFINITY;
    }
    double worst = 0;
    size_t n;
    switch (got->dtype) {
    case DT_FP32: {
        const float *a = got->data, *b = want->data;
        n = got->nbytes / 4;
        for (size_t i = 0; i < n; i++) {
            double d = fabs((double)a[i] - (double)b[i]);
            if (isnan(a[i]) != isnan(b[i]))
                d = INFINITY;
            else if (isnan(a[i]))
                d = 0;
            if (d > worst)
                worst = d;
            if (d > atol + rtol * fabs((double)b[i]))
                *ok = 0;
        }
        break;
    }
    case DT_FP64: {
        const double *a = got->data, *b = want->data;
        n = got->nbytes / 8;
        for (size_t i = 0; i < n; i++) {
            double d = fabs(a[i] - b[i]);
            if (isnan(a[i]) != isnan(b[i]))
                d = INFINITY;
            else if (isnan(a[i]))
                d = 0;
            if (d > worst)
                worst = d;
            if (d > atol + rtol * fabs(b[i]))
                *ok = 0;
        }
        break;
    }
    default:
        /* Integer and boolean outputs must match exactly. */
        if (memcmp(got->data, want->data, got->nbytes) != 0) {
            *ok = 0;
            worst = INFINITY;
        }
    }
    return worst;
}

static int check_set(struct engine *eng, const char *dir, long k, double atol, double rtol,
                     struct parity_result *res, struct cerr *e)
{
    int rc = CORRAL_OK;
    size_t nin = engine_num_inputs(eng), nout = engine_num_outputs(eng);
    struct tensor *in = calloc(nin ? nin : 1, sizeof *in);
    struct tensor *out = calloc(nout, sizeof *out);
    struct tensor *want = calloc(nout, sizeof *want);
    char **names = calloc(nin + nout + 1, sizeof *names);
    char path[4096];
    size_t got_in = 0;
    if (!in || !out || !want || !names) {
        rc = cerr_set(e, CORRAL_ENOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < nin; i++) {
        snprintf(path, sizeof path, "%s/%ld/input_%zu.pb", dir, k, i);
        if (!file_exists(path))
            break;
        if ((rc = engine_read_tensor_pb(path, &in[i], &names[i], e)))
            goto out;
        got_in++;
    }
    if (got_in != nin) {
        rc = cerr_set(e, CORRAL_EINVAL, "parity vector %ld has %zu input files, the model takes %zu",
                      k, got_in, nin);
        goto out;
    }
    for (size_t j = 0; j < nout; j++) {
        snprintf(path, sizeof path, "%s/%ld/output_%zu.pb", dir, k, j);
        if ((rc = engine_read_tensor_pb(path, &want[j], &names[nin + j], e)))
            goto out;
    }
    if ((rc = engine_run(eng, in, nin, out, e))) {
        cerr_prefix(e, "parity vector %ld", k);
        goto out;
    }
    for (size_t j = 0; j < nout; j++) {
        int ok;
        double d = compare(&out[j], &want[j], atol, rtol, &ok);
        if (d > res[j].max_abs_diff || isnan(d))
            res[j].max_abs_diff = d;
        if (!ok && res[j].ok) {
            char gs[96], ws[96];
            res[j].ok = 0;
            cerr_set(e, CORRAL_EMISMATCH,
                     "parity vector %ld: output '%s' differs from the reference (max abs diff %.3g, "
                     "shape %s vs %s, tolerance atol %.3g rtol %.3g)",
                     k, res[j].output, d, tensor_shape_str(out[j].dims, out[j].ndim, gs, sizeof gs),
                     tensor_shape_str(want[j].dims, want[j].ndim, ws, sizeof ws), atol, rtol);
        }
    }
out:
    for (size_t i = 0; in && i < nin; i++)
        tensor_release(&in[i]);
    for (size_t j = 0; j < nout; j++) {
        if (out)
            tensor_release(&out[j]);
        if (want)
            tensor_release(&want[j]);
    }
    for (size_t i = 0; names && i < nin + nout; i++)
        free(names[i]);
    free(names);
    free(in);
    free(out);
    free(want);
    return rc;
}

int parity_check(struct engine *eng, const char *vectors_dir, double atol, double rtol,
                 struct parity_result *results, size_t *n_sets, struct cerr *e)
{
    int rc = CORRAL_OK;
    long sets[PARITY_MAX_SETS];
    size_t n = 0;
    struct cerr mismatch = {0};
    DIR *d = opendir(vectors_dir);
    *n_sets = 0;
    for (size_t j = 0; j < engine_num_outputs(eng); j++) {
        results[j].output = engine_output(eng, j)->name;
        results[j].max_abs_diff = 0;
        results[j].ok = 1;
    }
    if (!d)
        return cerr_set(e, CORRAL_ENOTFOUND, "no parity vectors: cannot open %s: %s", vectors_dir,
                        strerror(errno));
    struct dirent *de;
    while ((de = readdir(d))) {
        char *end;
        if (de->d_name[0] < '0' || de->d_name[0] > '9')
            continue;
        long k = strtol(de->d_name, &end, 10);
        if (*end || k < 0)
            continue;
        if (n == PARITY_MAX_SETS) {
            rc = cerr_set(e, CORRAL_EINVAL, "%s holds more than %d vector sets", vectors_dir,
                          PARITY_MAX_SETS);
            goto out;
        }
        sets[n++] = k;
    }
    if (n == 0) {
        rc = cerr_set(e, CORRAL_ENOTFOUND, "no parity vectors in %s (expected 0/input_0.pb ...)",
                      vectors_dir);
        goto out;
    }
    qsort(sets, n, sizeof sets[0], cmp_long);
    for (size_t i = 0; i < n; i++) {
        struct cerr one = {0};
        rc = check_set(eng, vectors_dir, sets[i], atol, rtol, results, &one);
        if (rc) {
            if (e)
                *e = one;
            goto out;
        }
        if (one.code == CORRAL_EMISMATCH && mismatch.code == CORRAL_OK)
            mismatch = one;
    }
    *n_sets = n;
    if (mismatch.code) {
        rc = mismatch.code;
        if (e)
            *e = mismatch;
    }
out:
    closedir(d);
    return rc;
}
