/*
 * corral-conformance: runs ONNX's own backend test data through the engine.
 *
 * Usage: corral-conformance [-q] [-f SUBSTRING] [-d DEVICE] [DATA_ROOT]
 *
 * DATA_ROOT (default: the libonnx-testdata package's data directory) holds the
 * suites node/, pytorch-converted/, pytorch-operator/ and simple/, each a
 * directory of tests: model.onnx plus test_data_set_N/{input,output}_K.pb. A
 * test whose model the engine refuses with CORRAL_EUNSUPP is skipped with the
 * engine's reason; every other test is claimed and must reproduce each output
 * within |got - want| <= atol + rtol * |want| (rtol 1e-3, atol 1e-5; integer
 * and boolean outputs exactly). One line per test (-q: skipped tests are not
 * listed), then a summary; -f runs only tests whose suite/name contains SUBSTRING; -d picks
 * the engine's device ("cpu", "cuda:0"). A test whose inputs the engine refuses
 * with CORRAL_EUNSUPP at run time (shapes that depend on input values) is
 * skipped with that reason too. Exit status:
 * 0 when no claimed test failed, 1 otherwise, 77 when DATA_ROOT is missing or
 * the device cannot be opened (no such device, or no backend for it in this
 * build): then one line "skipped: <reason>" is printed and nothing runs.
 */
#include <dirent.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "backend.h"
#include "engine.h"

#define DEFAULT_ROOT "/usr/share/libonnx-testdata/data"
#define RTOL 1e-3
#define ATOL 1e-5
#define MAX_IO 16

/* snprintf into a path or message buffer; long names are cut, which only affects messages. */
static void fmt(char *buf, size_t len, const char *f, ...) __attribute__((format(printf, 3, 4)));
static void fmt(char *buf, size_t len, const char *f, ...)
{
    va_list ap;
    va_start(ap, f);
    vsnprintf(buf, len, f, ap);
    va_end(ap);
}

static const char *suites[] = {"node", "pytorch-converted", "pytorch-operator", "simple"};

static int is_dir(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static int file_exists(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

/* Sorted subdirectory names of `dir` that start with `prefix`; caller frees. */
static char **list_dirs(const char *dir, const char *prefix, int *n)
{
    struct dirent **ents = NULL;
    char **out = NULL;
    *n = 0;
    int m = scandir(dir, &ents, NULL, alphasort);
    if (m < 0)
        return NULL;
    out = calloc((size_t)m + 1, sizeof *out);
    for (int i = 0; i < m; i++) {
        char p[4096];
        fmt(p, sizeof p, "%s/%s", dir, ents[i]->d_name);
        if (out && ents[i]->d_name[0] != '.' &&
            strncmp(ents[i]->d_name, prefix, strlen(prefix)) == 0 && is_dir(p))
            out[(*n)++] = strdup(ents[i]->d_name);
        free(ents[i]);
    }
    free(ents);
    return out;
}

static void free_list(char **l, int n)
{
    for (int i = 0; i < n; i++)
        free(l[i]);
    free(l);
}

static int close_enough(double got, double want)
{
    if (isnan(got) || isnan(want))
        return isnan(got) && isnan(want);
    if (isinf(got) || isinf(want))
        return got == want;
    return fabs(got - want) <= ATOL + RTOL * fabs(want);
}

/* Compares one output; fills `why` and returns non-zero on a mismatch. */
static int compare(const struct tensor *got, const struct tensor *want, char *why, size_t len)
{
    char s1[160], s2[160];
    if (got->dtype != want->dtype) {
        fmt(why, len, "output '%s' is %s, expected %s", got->name, dtype_name(got->dtype),
                 dtype_name(want->dtype));
        return 1;
    }
    int same = got->ndim == want->ndim;
    for (int i = 0; same && i < got->ndim; i++)
        same = got->dims[i] == want->dims[i];
    if (!same) {
        fmt(why, len, "output '%s' has shape %s, expected %s", got->name,
                 tensor_shape_str(got->dims, got->ndim, s1, sizeof s1),
                 tensor_shape_str(want->dims, want->ndim, s2, sizeof s2));
        return 1;
    }
    size_t n = got->nbytes / (dtype_size(got->dtype) ? dtype_size(got->dtype) : 1);
    for (size_t i = 0; i < n; i++) {
        double g, w;
        if (got->dtype == DT_FP32) {
            g = ((const float *)got->data)[i];
            w = ((const float *)want->data)[i];
        } else if (got->dtype == DT_FP64) {
            g = ((const double *)got->data)[i];
            w = ((const double *)want->data)[i];
        } else {
            size_t es = dtype_size(got->dtype);
            if (memcmp((const char *)got->data + i * es, (const char *)want->data + i * es, es)) {
                fmt(why, len, "output '%s' differs at element %zu (exact match required "
                         "for %s)", got->name, i, dtype_name(got->dtype));
                return 1;
            }
            continue;
        }
        if (!close_enough(g, w)) {
            fmt(why, len, "output '%s' element %zu is %.9g, expected %.9g", got->name, i, g,
                     w);
            return 1;
        }
    }
    return 0;
}

enum verdict { V_PASS, V_FAIL, V_SKIP };

/*
 * Runs one data set; returns V_PASS or V_FAIL with `why` filled, or V_SKIP
 * when the engine refuses the inputs with CORRAL_EUNSUPP (a shape that
 * depends on input values, which plans cannot express).
 */
static enum verdict run_set(struct engine *eng, const char *dir, char *why, size_t len)
{
    struct tensor in[MAX_IO], want[MAX_IO], got[MAX_IO];
    char *names[2 * MAX_IO] = {0};
    int n_in = 0, n_want = 0;
    enum verdict v = V_FAIL;
    struct cerr e = {0};
    char p[4096];
    size_t n_out = engine_num_outputs(eng);
    memset(got, 0, sizeof got);
    if (n_out > MAX_IO) {
        fmt(why, len, "model has %zu outputs, the runner handles %d", n_out, MAX_IO);
        return V_FAIL;
    }
    for (;;) {
        fmt(p, sizeof p, "%s/input_%d.pb", dir, n_in);
        if (!file_exists(p) || n_in == MAX_IO)
            break;
        if (engine_read_tensor_pb(p, &in[n_in], &names[n_in], &e)) {
            fmt(why, len, "%s", e.msg);
            goto done;
        }
        /* ONNX's runners feed inputs by position, so the file's own name is advisory. */
        if ((size_t)n_in < engine_num_inputs(eng))
            in[n_in].name = engine_input(eng, (size_t)n_in)->name;
        n_in++;
    }
    for (;;) {
        fmt(p, sizeof p, "%s/output_%d.pb", dir, n_want);
        if (!file_exists(p) || n_want == MAX_IO)
            break;
        if (engine_read_tensor_pb(p, &want[n_want], &names[MAX_IO + n_want], &e)) {
            fmt(why, len, "%s", e.msg);
            goto done;
        }
        n_want++;
    }
    if ((size_t)n_want != n_out) {
        fmt(why, len, "test data has %d outputs, the model %zu", n_want, n_out);
        goto done;
    }
    if (engine_run(eng, in, (size_t)n_in, got, &e)) {
        fmt(why, len, "%s%s", e.code == CORRAL_EUNSUPP ? "" : "run failed: ", e.msg);
        if (e.code == CORRAL_EUNSUPP)
            v = V_SKIP;
        goto done;
    }
    for (int i = 0; i < n_want; i++)
        if (compare(&got[i], &want[i], why, len))
            goto done;
    v = V_PASS;
done:
    for (int i = 0; i < n_in; i++)
        tensor_release(&in[i]);
    for (int i = 0; i < n_want; i++)
        tensor_release(&want[i]);
    for (size_t i = 0; i < n_out; i++)
        tensor_release(&got[i]);
    for (int i = 0; i < 2 * MAX_IO; i++)
        free(names[i]);
    return v;
}

static const char *device = "cpu";

static enum verdict run_test(const char *dir, char *why, size_t len, int *n_sets)
{
    char p[4096];
    struct cerr e = {0};
    struct engine *eng = NULL;
    struct engine_options opt = ENGINE_OPTIONS_DEFAULT;
    opt.threads = 1;
    opt.device = device;
    *n_sets = 0;
    fmt(p, sizeof p, "%s/model.onnx", dir);
    int rc = engine_load_file(p, &opt, &eng, &e);
    if (rc == CORRAL_EUNSUPP) {
        /* Keep the reason short: drop the engine's list of supported ops. */
        char *cut = strstr(e.msg, " (the engine supports");
        if (cut)
            *cut = '\0';
        /* The message starts "cannot load <path>: "; the table already names the test. */
        const char *reason = strstr(e.msg, "model.onnx: ");
        fmt(why, len, "%s", reason ? reason + 12 : e.msg);
        return V_SKIP;
    }
    if (rc) {
        fmt(why, len, "load failed: %s", e.msg);
        return V_FAIL;
    }
    int n = 0;
    char **sets = list_dirs(dir, "test_data_set_", &n);
    enum verdict v = V_PASS;
    for (int i = 0; i < n && v == V_PASS; i++) {
        char sd[4096];
        fmt(sd, sizeof sd, "%s/%s", dir, sets[i]);
        v = run_set(eng, sd, why, len);
        if (v == V_FAIL) {
            char tmp[600];
            fmt(tmp, sizeof tmp, "%s: %s", sets[i], why);
            fmt(why, len, "%s", tmp);
        }
        (*n_sets)++;
    }
    if (n == 0 && v == V_PASS) {
        fmt(why, len, "no test_data_set_* directories");
        v = V_SKIP;
    }
    free_list(sets, n);
    engine_free(eng);
    return v;
}

int main(int argc, char **argv)
{
    const char *root = DEFAULT_ROOT, *filter = NULL;
    int quiet = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-q") == 0)
            quiet = 1;
        else if (strcmp(argv[i], "-f") == 0 && i + 1 < argc)
            filter = argv[++i];
        else if (strcmp(argv[i], "-d") == 0 && i + 1 < argc)
            device = argv[++i];
        else if (argv[i][0] == '-') {
            fprintf(stderr, "usage: %s [-q] [-f SUBSTRING] [-d DEVICE] [DATA_ROOT]\n", argv[0]);
            return 2;
        } else
            root = argv[i];
    }
    if (!is_dir(root)) {
        printf("conformance: data directory '%s' is missing; nothing to run\n", root);
        return 77;
    }
    /* Open the device once up front, so a missing one is one skip, not a failure per test. */
    struct backend be;
    struct backend_options bo = {.threads = 1};
    struct cerr de = {0};
    int drc = backend_create(device, &bo, &be, &de);
    if (drc == CORRAL_EUNAVAIL || drc == CORRAL_EUNSUPP) {
        printf("skipped: %s\n", de.msg);
        return 77;
    }
    if (drc) {
        fprintf(stderr, "conformance: %s\n", de.msg);
        return 2;
    }
    be.ops->destroy(&be);
    int counts[3] = {0};
    for (size_t s = 0; s < sizeof suites / sizeof suites[0]; s++) {
        char sd[4096];
        fmt(sd, sizeof sd, "%s/%s", root, suites[s]);
        if (!is_dir(sd))
            continue;
        int n = 0;
        char **tests = list_dirs(sd, "", &n);
        for (int i = 0; i < n; i++) {
            char td[4096], why[700] = "", name[600];
            fmt(name, sizeof name, "%s/%s", suites[s], tests[i]);
            if (filter && !strstr(name, filter))
                continue;
            fmt(td, sizeof td, "%s/%s", sd, tests[i]);
            int sets = 0;
            enum verdict v = run_test(td, why, sizeof why, &sets);
            counts[v]++;
            if (v == V_PASS)
                printf("PASS  %-58s %d data set%s\n", name, sets, sets == 1 ? "" : "s");
            else if (v == V_FAIL)
                printf("FAIL  %-58s %s\n", name, why);
            else if (!quiet)
                printf("SKIP  %-58s %s\n", name, why);
        }
        free_list(tests, n);
    }
    printf("conformance: %d passed, %d failed, %d skipped (%d tests)\n", counts[V_PASS],
           counts[V_FAIL], counts[V_SKIP], counts[V_PASS] + counts[V_FAIL] + counts[V_SKIP]);
    return counts[V_FAIL] ? 1 : 0;
}
