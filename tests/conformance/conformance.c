/*
 * corral-conformance: runs ONNX's own backend test data through the engine.
 *
 * Usage: corral-conformance [-q] [-f SUBSTRING] [-d DEVICE] [-b FILE | -B FILE] [-w FILE]
 *                           [DATA_ROOT]
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
 * with CORRAL_EUNSUPP at run time is skipped with that reason too.
 *
 * A skip alone cannot tell "never supported" from "support was lost", so the
 * committed baseline (tests/conformance/baseline-cpu.txt: one suite/name per
 * line, '#' comments) lists the tests that pass today. -b FILE enforces it:
 * every listed test (within -f's filter) that does not pass, failed or
 * skipped, is printed as a "LOST" line with its reason and fails the run; a
 * test that passes but is not listed is printed as a "NEW" line, to be added.
 * -B FILE is -b for a baseline that may not exist yet (a device whose first
 * run has not been recorded): a missing FILE is reported and nothing is
 * enforced. -w FILE writes the sorted list of passing tests, with a header
 * saying how it was made, whatever the verdict; it needs the whole run (no
 * -f). Regenerating the CPU baseline is one command from the source root:
 *
 *     build/tests/corral-conformance -q -w tests/conformance/baseline-cpu.txt
 *
 * Exit status: 0 when no claimed test failed and no baseline test was lost, 1
 * otherwise, 2 for bad arguments or an unreadable/unwritable list, 77 when
 * DATA_ROOT is missing or the device cannot be opened (no such device, or no
 * backend for it in this build): then one line "skipped: <reason>" is printed
 * and nothing runs.
 */
#include <dirent.h>
#include <errno.h>
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

/* One test's outcome, kept for the baseline check and the written list. */
struct result {
    char *name; /* "suite/name", owned */
    enum verdict v;
    char *why;  /* reason for a failure or a skip, owned ("" for a pass) */
};

struct list {
    char **s;
    size_t n, cap;
};

static int list_add(struct list *l, const char *s)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 256;
        char **ns = realloc(l->s, cap * sizeof *ns);
        if (!ns)
            return -1;
        l->s = ns;
        l->cap = cap;
    }
    if (!(l->s[l->n] = strdup(s)))
        return -1;
    l->n++;
    return 0;
}

static void list_free(struct list *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->s[i]);
    free(l->s);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int in_sorted(const struct list *l, const char *s)
{
    return l->n && bsearch(&s, l->s, l->n, sizeof *l->s, cmp_str) != NULL;
}

/*
 * Reads a baseline: one suite/name per line; blank lines and '#' comments are
 * ignored, surrounding blanks trimmed. Returns 0, 1 when the file does not
 * exist (so -B can tolerate it), -1 on another error (message printed).
 */
static int read_baseline(const char *path, struct list *out)
{
    FILE *f = fopen(path, "r");
    char line[1024];
    if (!f) {
        if (errno == ENOENT)
            return 1;
        fprintf(stderr, "conformance: cannot read baseline '%s': %s\n", path, strerror(errno));
        return -1;
    }
    while (fgets(line, sizeof line, f)) {
        char *b = line, *e;
        while (*b == ' ' || *b == '\t')
            b++;
        e = b + strlen(b);
        while (e > b && (e[-1] == '\n' || e[-1] == '\r' || e[-1] == ' ' || e[-1] == '\t'))
            *--e = '\0';
        if (!*b || *b == '#')
            continue;
        if (list_add(out, b)) {
            fclose(f);
            fprintf(stderr, "conformance: out of memory reading '%s'\n", path);
            return -1;
        }
    }
    fclose(f);
    qsort(out->s, out->n, sizeof *out->s, cmp_str);
    return 0;
}

/* The committed baseline's name for a device: baseline-cpu.txt, baseline-cuda.txt. */
static const char *baseline_name(const char *dev)
{
    return strncmp(dev, "cuda", 4) == 0 ? "baseline-cuda.txt" : "baseline-cpu.txt";
}

/* Writes the sorted passing list through a temporary file, so a failed write keeps the old one. */
static int write_passing(const char *path, const char *root, const struct result *r, size_t n)
{
    char tmp[4096];
    struct list pass = {0};
    int rc = -1;
    for (size_t i = 0; i < n; i++)
        if (r[i].v == V_PASS && list_add(&pass, r[i].name))
            goto done;
    if (pass.n)
        qsort(pass.s, pass.n, sizeof *pass.s, cmp_str);
    fmt(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f) {
        fprintf(stderr, "conformance: cannot write '%s': %s\n", tmp, strerror(errno));
        goto done;
    }
    fprintf(f,
            "# ONNX backend tests (libonnx-testdata) that pass on device %s: one suite/name\n"
            "# per line, sorted. The conformance ctest fails when a listed test stops passing\n"
            "# (fails, or is skipped because the engine refuses it), and prints tests that pass\n"
            "# but are not listed as NEW. After the engine gains (or deliberately drops) support,\n"
            "# regenerate from the source root with one command:\n"
            "#   build/tests/corral-conformance -q%s%s -w tests/conformance/%s %s\n"
            "# (%d tests)\n",
            device, strcmp(device, "cpu") ? " -d " : "", strcmp(device, "cpu") ? device : "",
            baseline_name(device), root, (int)pass.n);
    for (size_t i = 0; i < pass.n; i++)
        fprintf(f, "%s\n", pass.s[i]);
    if (ferror(f) | fclose(f) || rename(tmp, path)) {
        fprintf(stderr, "conformance: cannot write '%s': %s\n", path, strerror(errno));
        remove(tmp);
        goto done;
    }
    rc = 0;
done:
    list_free(&pass);
    return rc;
}

static void usage(const char *argv0)
{
    fprintf(stderr, "usage: %s [-q] [-f SUBSTRING] [-d DEVICE] [-b FILE | -B FILE] [-w FILE] "
            "[DATA_ROOT]\n", argv0);
}

int main(int argc, char **argv)
{
    const char *root = DEFAULT_ROOT, *filter = NULL, *base_path = NULL, *write_path = NULL;
    int quiet = 0, base_optional = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-q") == 0)
            quiet = 1;
        else if (strcmp(argv[i], "-f") == 0 && i + 1 < argc)
            filter = argv[++i];
        else if (strcmp(argv[i], "-d") == 0 && i + 1 < argc)
            device = argv[++i];
        else if ((strcmp(argv[i], "-b") == 0 || strcmp(argv[i], "-B") == 0) && i + 1 < argc) {
            base_optional = argv[i][1] == 'B';
            base_path = argv[++i];
        } else if (strcmp(argv[i], "-w") == 0 && i + 1 < argc)
            write_path = argv[++i];
        else if (argv[i][0] == '-') {
            usage(argv[0]);
            return 2;
        } else
            root = argv[i];
    }
    if (write_path && filter) {
        /* A filtered list would silently shrink the baseline it is meant to regenerate. */
        fprintf(stderr, "conformance: -w writes the whole passing list and cannot be combined "
                "with -f\n");
        return 2;
    }
    if (!is_dir(root)) {
        printf("conformance: data directory '%s' is missing; nothing to run\n", root);
        return 77;
    }
    struct list base = {0};
    int have_base = 0;
    if (base_path) {
        int brc = read_baseline(base_path, &base);
        if (brc < 0)
            return 2;
        if (brc > 0 && !base_optional) {
            fprintf(stderr, "conformance: baseline '%s' does not exist (write it with -w)\n",
                    base_path);
            return 2;
        }
        have_base = brc == 0;
    }
    /* Open the device once up front, so a missing one is one skip, not a failure per test. */
    struct backend be;
    struct backend_options bo = {.threads = 1};
    struct cerr de = {0};
    int drc = backend_create(device, &bo, &be, &de);
    if (drc == CORRAL_EUNAVAIL || drc == CORRAL_EUNSUPP) {
        printf("skipped: %s\n", de.msg);
        list_free(&base);
        return 77;
    }
    if (drc) {
        fprintf(stderr, "conformance: %s\n", de.msg);
        list_free(&base);
        return 2;
    }
    be.ops->destroy(&be);
    int counts[3] = {0};
    struct result *res = NULL;
    size_t n_res = 0, cap_res = 0;
    int oom = 0;
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
            if (n_res == cap_res) {
                size_t cap = cap_res ? 2 * cap_res : 1024;
                struct result *nr = realloc(res, cap * sizeof *nr);
                if (!nr) {
                    oom = 1;
                    continue;
                }
                res = nr;
                cap_res = cap;
            }
            res[n_res] = (struct result){.name = strdup(name), .v = v, .why = strdup(why)};
            if (!res[n_res].name || !res[n_res].why)
                oom = 1;
            n_res++;
        }
        free_list(tests, n);
    }
    if (oom) {
        fprintf(stderr, "conformance: out of memory recording results\n");
        return 2;
    }
    printf("conformance: %d passed, %d failed, %d skipped (%d tests)\n", counts[V_PASS],
           counts[V_FAIL], counts[V_SKIP], counts[V_PASS] + counts[V_FAIL] + counts[V_SKIP]);

    int lost = 0, fresh = 0, listed = 0, status = counts[V_FAIL] ? 1 : 0;
    if (have_base) {
        /* Results come in suite order, names sorted within each: look each listed test up. */
        for (size_t b = 0; b < base.n; b++) {
            if (filter && !strstr(base.s[b], filter))
                continue;
            listed++;
            const struct result *r = NULL;
            for (size_t i = 0; i < n_res && !r; i++)
                if (strcmp(res[i].name, base.s[b]) == 0)
                    r = &res[i];
            if (r && r->v == V_PASS)
                continue;
            lost++;
            printf("LOST  %-58s %s%s\n", base.s[b],
                   !r ? "not found under " : r->v == V_FAIL ? "failed: " : "skipped: ",
                   !r ? root : r->why);
        }
        for (size_t i = 0; i < n_res; i++) {
            if (res[i].v != V_PASS || in_sorted(&base, res[i].name))
                continue;
            fresh++;
            printf("NEW   %-58s passes but is not in %s: add it (-w regenerates the list)\n",
                   res[i].name, base_path);
        }
        printf("conformance: baseline %s: %d listed, %d lost, %d new\n", base_path, listed,
               lost, fresh);
        if (lost) {
            printf("conformance: %d baseline test%s no longer pass%s (LOST lines above); fix "
                   "the engine, or if the loss is intended, regenerate the baseline with -w\n",
                   lost, lost == 1 ? "" : "s", lost == 1 ? "es" : "");
            status = 1;
        }
    } else if (base_path) {
        printf("conformance: no baseline at %s, so none was enforced for device %s%s%s\n",
               base_path, device, write_path ? "; this run's passing list is in " : "",
               write_path ? write_path : "");
    }
    if (write_path) {
        if (write_passing(write_path, root, res, n_res))
            status = status ? status : 2;
        else
            printf("conformance: wrote the %d passing tests to %s\n", counts[V_PASS],
                   write_path);
    }
    for (size_t i = 0; i < n_res; i++) {
        free(res[i].name);
        free(res[i].why);
    }
    free(res);
    list_free(&base);
    return status;
}
