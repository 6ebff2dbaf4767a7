#include "model_repo.h"

#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define LABELS_MAX 100000

static char *path_join(const char *a, const char *b)
{
    size_t n = strlen(a) + strlen(b) + 2;
    char *p = malloc(n);
    if (p)
        snprintf(p, n, "%s/%s", a, b);
    return p;
}

static int is_file(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

/* A version directory name is a positive decimal number without sign or leading zeros. */
static long parse_version(const char *s)
{
    if (!s[0] || s[0] == '0' || strlen(s) > 15)
        return 0;
    for (const char *p = s; *p; p++)
        if (*p < '0' || *p > '9')
            return 0;
    return strtol(s, NULL, 10);
}

static int parse_io(json_t *arr, const char *field, struct model_io *out, size_t *n,
                    struct cerr *e)
{
    if (!json_is_array(arr))
        return cerr_set(e, CORRAL_EINVAL, "config.json: '%s' must be an array of {name, datatype, shape}",
                        field);
    if (json_array_size(arr) == 0 || json_array_size(arr) > MODEL_MAX_IO)
        return cerr_set(e, CORRAL_EINVAL, "config.json: '%s' has %zu entries, expected 1 to %d",
                        field, json_array_size(arr), MODEL_MAX_IO);
    *n = json_array_size(arr);
    for (size_t i = 0; i < *n; i++) {
        json_t *t = json_array_get(arr, i);
        json_t *nm = json_object_get(t, "name"), *dt = json_object_get(t, "datatype"),
               *sh = json_object_get(t, "shape");
        if (!json_is_string(nm) || json_string_length(nm) == 0 ||
            json_string_length(nm) >= MODEL_NAME_MAX)
            return cerr_set(e, CORRAL_EINVAL,
                            "config.json: %s[%zu].name must be a string of 1 to %d characters",
                            field, i, MODEL_NAME_MAX - 1);
        snprintf(out[i].name, sizeof out[i].name, "%s", json_string_value(nm));
        out[i].dtype = json_is_string(dt) ? dtype_from_name(json_string_value(dt)) : DT_INVALID;
        if (out[i].dtype == DT_INVALID)
            return cerr_set(e, CORRAL_EINVAL,
                            "config.json: %s '%s' has no valid datatype (expected FP32, INT64, ...)",
                            field, out[i].name);
        if (!json_is_array(sh) || json_array_size(sh) > TENSOR_MAX_DIMS)
            return cerr_set(e, CORRAL_EINVAL,
                            "config.json: %s '%s' shape must be an array of at most %d integers",
                            field, out[i].name, TENSOR_MAX_DIMS);
        out[i].ndim = (int)json_array_size(sh);
        for (int d = 0; d < out[i].ndim; d++) {
            json_t *v = json_array_get(sh, (size_t)d);
            if (!json_is_integer(v) || json_integer_value(v) < -1)
                return cerr_set(e, CORRAL_EINVAL,
                                "config.json: %s '%s' shape[%d] must be an integer >= -1 (-1 = variable)",
                                field, out[i].name, d);
            out[i].dims[d] = json_integer_value(v);
        }
    }
    return CORRAL_OK;
}

static int load_labels(struct model_config *cfg, const char *file, struct cerr *e)
{
    int rc = CORRAL_OK;
    char *path = path_join(cfg->dir, file);
    FILE *f = NULL;
    char line[1024];
    if (!path)
        return cerr_set(e, CORRAL_ENOMEM, "out of memory");
    if (strchr(file, '/') || strcmp(file, "..") == 0) {
        rc = cerr_set(e, CORRAL_EINVAL, "config.json: labels must name a file in the model directory, got '%s'", file);
        goto out;
    }
    f = fopen(path, "r");
    if (!f) {
        rc = cerr_set(e, CORRAL_EIO, "cannot open labels file %s: %s", path, strerror(errno));
        goto out;
    }
    while (fgets(line, sizeof line, f)) {
        size_t l = strcspn(line, "\r\n");
        line[l] = '\0';
        if (cfg->n_labels >= LABELS_MAX) {
            rc = cerr_set(e, CORRAL_EINVAL, "labels file %s has more than %d lines", path, LABELS_MAX);
            goto out;
        }
        char **nl = realloc(cfg->labels, sizeof(char *) * (cfg->n_labels + 1));
        if (!nl) {
            rc = cerr_set(e, CORRAL_ENOMEM, "out of memory");
            goto out;
        }
        cfg->labels = nl;
        cfg->labels[cfg->n_labels] = strdup(line);
        if (!cfg->labels[cfg->n_labels]) {
            rc = cerr_set(e, CORRAL_ENOMEM, "out of memory");
            goto out;
        }
        cfg->n_labels++;
    }
out:
    if (f)
        fclose(f);
    free(path);
    return rc;
}


/* Reads an integer field in [lo, hi]; a missing field keeps *out. */
static int get_int(json_t *obj, const char *key, int64_t lo, int64_t hi, int64_t *out,
                   struct cerr *e)
{
    json_t *v = json_object_get(obj, key);
    if (!v)
        return CORRAL_OK;
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi)
        return cerr_set(e, CORRAL_EINVAL,
                        "config.json: batching.%s must be an integer from %lld to %lld", key,
                        (long long)lo, (long long)hi);
    *out = json_integer_value(v);
    return CORRAL_OK;
}

/* A bucket list: 1..MODEL_MAX_BUCKETS strictly increasing integers in [1, hi]. */
static int get_buckets(json_t *arr, const char *what, int64_t hi, int64_t *out, size_t *n,
                       struct cerr *e)
{
    if (!json_is_array(arr) || json_array_size(arr) == 0 || json_array_size(arr) > MODEL_MAX_BUCKETS)
        return cerr_set(e, CORRAL_EINVAL,
                        "config.json: %s must be an array of 1 to %d increasing integers", what,
                        MODEL_MAX_BUCKETS);
    *n = json_array_size(arr);
    for (size_t i = 0; i < *n; i++) {
        json_t *v = json_array_get(arr, i);
        if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > hi ||
            (i > 0 && json_integer_value(v) <= out[i - 1]))
            return cerr_set(e, CORRAL_EINVAL,
                            "config.json: %s[%zu] must be an integer from 1 to %lld, greater than "
                            "the entry before it",
                            what, i, (long long)hi);
        out[i] = json_integer_value(v);
    }
    return CORRAL_OK;
}

int model_find_io(const struct model_io *io, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(io[i].name, name) == 0)
            return (int)i;
    return -1;
}

/* A dimension key of batching.inputs.X.dims / outputs.X.dims: a decimal index >= 1. */
static int parse_dim_key(const char *key, const struct model_io *io, const char *what,
                         struct cerr *e)
{
    char *end;
    long d = strtol(key, &end, 10);
    if (!key[0] || *end || d < 1 || d >= io->ndim || io->dims[d] != -1)
        return cerr_set(e, CORRAL_EINVAL,
                        "config.json: %s '%s' dims key '%s' must name a variable (-1) dimension "
                        "other than the batch axis (1 to %d)",
                        what, io->name, key, io->ndim - 1);
    return (int)d;
}

int model_check_keys(const json_t *obj, const char *what, const char *const *allowed,
                     struct cerr *e)
{
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)obj, key, v) {
        size_t i;
        for (i = 0; allowed[i]; i++)
            if (strcmp(key, allowed[i]) == 0)
                break;
        if (!allowed[i]) {
            char list[256] = "";
            size_t off = 0;
            for (size_t k = 0; allowed[k] && off < sizeof list; k++)
                off += (size_t)snprintf(list + off, sizeof list - off, "%s%s", k ? ", " : "",
                                        allowed[k]);
            return cerr_set(e, CORRAL_EINVAL, "config.json: %s has unknown key '%.64s' (expected %s)",
                            what, key, list);
        }
    }
    return CORRAL_OK;
}

static int parse_batch_inputs(struct model_config *cfg, json_t *ins, struct cerr *e)
{
    struct model_batching *b = &cfg->batching;
    static const char *const keys[] = {"pad_value", "dims", NULL};
    const char *name;
    json_t *spec;
    int rc;
    if (!json_is_object(ins))
        return cerr_set(e, CORRAL_EINVAL,
                        "config.json: batching.inputs must be an object keyed by input name");
    json_object_foreach(ins, name, spec) {
        int i = model_find_io(cfg->inputs, cfg->n_inputs, name);
        if (i < 0)
            return cerr_set(e, CORRAL_EINVAL, "config.json: batching.inputs names '%.128s', which "
                            "is not one of the model's inputs", name);
        if (!json_is_object(spec))
            return cerr_set(e, CORRAL_EINVAL, "config.json: batching.inputs '%s' must be an object "
                            "{pad_value, dims}", name);
        if ((rc = model_check_keys(spec, "batching.inputs entry", keys, e)))
            return rc;
        json_t *pv = json_object_get(spec, "pad_value");
        if (pv) {
            if (!json_is_number(pv))
                return cerr_set(e, CORRAL_EINVAL, "config.json: batching.inputs '%s' pad_value "
                                "must be a number", name);
            b->pad_value[i] = json_number_value(pv);
            enum dtype dt = cfg->inputs[i].dtype;
            if ((dt == DT_FP16 || dt == DT_BF16) && b->pad_value[i] != 0)
                return cerr_set(e, CORRAL_EINVAL, "config.json: batching.inputs '%s' is %s: only "
                                "pad_value 0 is supported for it", name, dtype_name(dt));
        }
        json_t *dims = json_object_get(spec, "dims");
        if (!dims)
            continue;
        if (!json_is_object(dims))
            return cerr_set(e, CORRAL_EINVAL, "config.json: batching.inputs '%s' dims must be an "
                            "object mapping a dimension index to its buckets, e.g. {\"1\": [16, 32]}",
                            name);
        const char *dk;
        json_t *bl;
        json_object_foreach(dims, dk, bl) {
            int d = parse_dim_key(dk, &cfg->inputs[i], "batching.inputs", e);
            if (d < 0)
                return d;
            struct model_var_dim *vd = NULL;
            for (size_t k = 0; k < b->n_var_dims; k++)
                if (b->var_dims[k].input == i && b->var_dims[k].dim == d)
                    vd = &b->var_dims[k];
            if (!vd)
                return cerr_set(e, CORRAL_EINVAL, "config.json: too many variable dimensions");
            char what[200];
            snprintf(what, sizeof what, "batching.inputs '%s' dims '%s'", name, dk);
            if ((rc = get_buckets(bl, what, (int64_t)1 << 30, vd->buckets, &vd->n_buckets, e)))
                return rc;
        }
    }
    return CORRAL_OK;
}

static int parse_batch_outputs(struct model_config *cfg, json_t *outs, struct cerr *e)
{
    struct model_batching *b = &cfg->batching;
    static const char *const keys[] = {"dims", NULL};
    const char *name;
    json_t *spec;
    int rc;
    if (!json_is_object(outs))
        return cerr_set(e, CORRAL_EINVAL,
                        "config.json: batching.outputs must be an object keyed by output name");
    json_object_foreach(outs, name, spec) {
        int j = model_find_io(cfg->outputs, cfg->n_outputs, name);
        if (j < 0)
            return cerr_set(e, CORRAL_EINVAL, "config.json: batching.outputs names '%.128s', which "
                            "is not one of the model's outputs", name);
        if (!json_is_object(spec) || (rc = model_check_keys(spec, "batching.outputs entry", keys, e)))
            return json_is_object(spec)
                       ? rc
                       : cerr_set(e, CORRAL_EINVAL, "config.json: batching.outputs '%s' must be an "
                                  "object {dims}", name);
        json_t *dims = json_object_get(spec, "dims");
        if (!json_is_object(dims))
            return cerr_set(e, CORRAL_EINVAL, "config.json: batching.outputs '%s' dims must be an "
                            "object like {\"1\": {\"input\": \"ids\", \"dim\": 1}}", name);
        const char *dk;
        json_t *f;
        json_object_foreach(dims, dk, f) {
            int d = parse_dim_key(dk, &cfg->outputs[j], "batching.outputs", e);
            if (d < 0)
                return d;
            struct model_follow *mf = &b->follow[j][d];
            if (json_is_string(f) && strcmp(json_string_value(f), "computed") == 0) {
                mf->kind = MODEL_FOLLOW_COMPUTED;
                continue;
            }
            json_t *in = json_object_get(f, "input"), *id = json_object_get(f, "dim");
            int i = json_is_string(in) ? model_find_io(cfg->inputs, cfg->n_inputs, json_string_value(in)) : -1;
            if (!json_is_object(f) || i < 0 || !json_is_integer(id) || json_integer_value(id) < 1 ||
                json_integer_value(id) >= cfg->inputs[i].ndim ||
                cfg->inputs[i].dims[json_integer_value(id)] != -1)
                return cerr_set(e, CORRAL_EINVAL,
                                "config.json: batching.outputs '%s' dims '%s' must be \"computed\" or "
                                "{\"input\": NAME, \"dim\": D} naming a model input and one of its "
                                "variable non-batch dimensions", name, dk);
            mf->kind = MODEL_FOLLOW_INPUT;
            mf->input = i;
            mf->dim = (int)json_integer_value(id);
        }
    }
    return CORRAL_OK;
}

static int parse_batching(struct model_config *cfg, json_t *bj, struct cerr *e)
{
    struct model_batching *b = &cfg->batching;
    static const char *const keys[] = {
        "max_batch_size", "batch_buckets", "max_queue_delay_us", "max_queue_size",
        "default_timeout_us", "priority_levels", "default_priority", "preserve_ordering",
        "inputs", "outputs", NULL};
    int rc;
    int64_t v;
    memset(b, 0, sizeof *b);
    b->max_queue_size = 1024;
    b->priority_levels = 1;
    /* Every variable non-batch input dimension is recorded, bucketed or not. */
    for (size_t i = 0; i < cfg->n_inputs; i++)
        for (int d = 1; d < cfg->inputs[i].ndim; d++) {
            if (cfg->inputs[i].dims[d] != -1)
                continue;
            if (b->n_var_dims == MODEL_MAX_VAR_DIMS)
                return cerr_set(e, CORRAL_EINVAL, "config.json: the inputs have more than %d "
                                "variable non-batch dimensions", MODEL_MAX_VAR_DIMS);
            b->var_dims[b->n_var_dims].input = (int)i;
            b->var_dims[b->n_var_dims].dim = d;
            b->n_var_dims++;
        }
    if (!bj) {
        b->default_priority = 1;
        return CORRAL_OK;
    }
    if (!json_is_object(bj))
        return cerr_set(e, CORRAL_EINVAL, "config.json: batching must be an object");
    if ((rc = model_check_keys(bj, "batching", keys, e)) ||
        (rc = get_int(bj, "max_batch_size", 0, 1 << 20, &b->max_batch_size, e)) ||
        (rc = get_int(bj, "max_queue_delay_us", 0, 60000000, &b->max_queue_delay_us, e)) ||
        (rc = get_int(bj, "max_queue_size", 1, 1 << 20, &b->max_queue_size, e)) ||
        (rc = get_int(bj, "default_timeout_us", 0, (int64_t)3600 * 1000000, &b->default_timeout_us, e)))
        return rc;
    v = 1;
    if ((rc = get_int(bj, "priority_levels", 1, MODEL_MAX_PRIORITY, &v, e)))
        return rc;
    b->priority_levels = (int)v;
    v = b->priority_levels;
    if ((rc = get_int(bj, "default_priority", 1, b->priority_levels, &v, e)))
        return rc;
    b->default_priority = (int)v;
    json_t *po = json_object_get(bj, "preserve_ordering");
    if (po && !json_is_boolean(po))
        return cerr_set(e, CORRAL_EINVAL, "config.json: batching.preserve_ordering must be true or false");
    b->preserve_ordering = json_is_true(po);

    json_t *bb = json_object_get(bj, "batch_buckets");
    if (bb && b->max_batch_size == 0)
        return cerr_set(e, CORRAL_EINVAL, "config.json: batching.batch_buckets needs "
                        "max_batch_size > 0");
    if (bb) {
        if ((rc = get_buckets(bb, "batching.batch_buckets", b->max_batch_size, b->batch_buckets,
                              &b->n_batch_buckets, e)))
            return rc;
        if (b->batch_buckets[b->n_batch_buckets - 1] != b->max_batch_size)
            return cerr_set(e, CORRAL_EINVAL, "config.json: the last of batching.batch_buckets "
                            "must equal max_batch_size (%lld)", (long long)b->max_batch_size);
    } else if (b->max_batch_size > 0) {
        /* Powers of two up to max_batch_size, and max_batch_size itself. */
        for (int64_t s = 1; s < b->max_batch_size && b->n_batch_buckets < MODEL_MAX_BUCKETS - 1; s *= 2)
            b->batch_buckets[b->n_batch_buckets++] = s;
        b->batch_buckets[b->n_batch_buckets++] = b->max_batch_size;
    }
    json_t *ins = json_object_get(bj, "inputs"), *outs = json_object_get(bj, "outputs");
    if ((ins || outs) && b->max_batch_size == 0)
        return cerr_set(e, CORRAL_EINVAL, "config.json: batching.inputs and batching.outputs "
                        "need max_batch_size > 0");
    if ((ins && (rc = parse_batch_inputs(cfg, ins, e))) ||
        (outs && (rc = parse_batch_outputs(cfg, outs, e))))
        return rc;
    if (b->max_batch_size == 0)
        return CORRAL_OK;

    /* Batching concatenates requests along dimension 0, so every tensor needs that axis. */
    for (size_t k = 0; k < cfg->n_inputs + cfg->n_outputs; k++) {
        int is_in = k < cfg->n_inputs;
        const struct model_io *io = is_in ? &cfg->inputs[k] : &cfg->outputs[k - cfg->n_inputs];
        if (io->ndim < 1 || io->dims[0] != -1)
            return cerr_set(e, CORRAL_EINVAL, "config.json: batching needs dimension 0 of %s '%s' "
                            "to be the variable batch axis (-1)", is_in ? "input" : "output", io->name);
        if (io->dtype == DT_BYTES)
            return cerr_set(e, CORRAL_EINVAL, "config.json: %s '%s' is BYTES, which cannot be "
                            "batched", is_in ? "input" : "output", io->name);
    }
    int padded = 0;
    for (size_t k = 0; k < b->n_var_dims; k++)
        padded |= b->var_dims[k].n_buckets > 0;
    for (size_t j = 0; j < cfg->n_outputs; j++)
        for (int d = 1; d < cfg->outputs[j].ndim; d++) {
            const struct model_follow *f = &b->follow[j][d];
            /* A dimension following an unpadded input dimension is cut to what it already is. */
            if (padded && cfg->outputs[j].dims[d] == -1 && f->kind == MODEL_FOLLOW_NONE)
                return cerr_set(e, CORRAL_EINVAL,
                                "config.json: output '%s' dimension %d is variable and inputs are "
                                "padded: batching.outputs must say which input dimension it follows "
                                "({\"input\": NAME, \"dim\": D}) or \"computed\"",
                                cfg->outputs[j].name, d);
        }
    return CORRAL_OK;
}

/*
 * The memory this machine gives the replica: physical memory, or less where a
 * cgroup caps it (v2 memory.max, v1 memory.limit_in_bytes; "max" means none).
 */
static uint64_t machine_memory(void)
{
    static const char *const caps[] = {"/sys/fs/cgroup/memory.max",
                                       "/sys/fs/cgroup/memory/memory.limit_in_bytes"};
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
    uint64_t mem = pages > 0 && page > 0 ? (uint64_t)pages * (uint64_t)page : UINT64_MAX;
    for (size_t i = 0; i < sizeof caps / sizeof caps[0]; i++) {
        unsigned long long v;
        FILE *f = fopen(caps[i], "r");
        if (f && fscanf(f, "%llu", &v) == 1 && v < mem)
            mem = v;
        if (f)
            fclose(f);
    }
    return mem;
}

/*
 * The shape a tensor takes in the largest bucket: max_batch_size rows, each
 * bucketed dimension at its largest bucket, a followed output dimension at its
 * input's; a dimension not known before the run (unbucketed, computed) counts
 * as 1, so the figure is a lower bound. Returns the bytes, saturating at UINT64_MAX.
 */
static uint64_t largest_bucket_bytes(const struct model_config *cfg, size_t k, int64_t *dims)
{
    const struct model_batching *b = &cfg->batching;
    int is_in = k < cfg->n_inputs;
    const struct model_io *io = is_in ? &cfg->inputs[k] : &cfg->outputs[k - cfg->n_inputs];
    uint64_t bytes = dtype_size(io->dtype);
    for (int d = 0; d < io->ndim; d++) {
        int64_t n = d == 0 ? b->max_batch_size : io->dims[d] >= 0 ? io->dims[d] : 1;
        const struct model_follow *f = is_in ? NULL : &b->follow[k - cfg->n_inputs][d];
        int in = is_in ? (int)k : f->kind == MODEL_FOLLOW_INPUT ? f->input : -1;
        int dim = is_in ? d : f->dim;
        for (size_t v = 0; d > 0 && in >= 0 && v < b->n_var_dims; v++)
            if (b->var_dims[v].input == in && b->var_dims[v].dim == dim && b->var_dims[v].n_buckets)
                n = b->var_dims[v].buckets[b->var_dims[v].n_buckets - 1];
        dims[d] = n;
        if (__builtin_mul_overflow(bytes, (uint64_t)n, &bytes))
            bytes = UINT64_MAX;
    }
    return bytes;
}

/*
 * Refuses batching buckets whose largest one could never be run here: a tensor
 * past the engine's limit on one tensor, or inputs and outputs that alone need
 * more memory than the machine has. Checked before the model is read, so such a
 * config fails in a moment with the figure rather than being killed mid warm-up.
 */
static int check_bucket_memory(const struct model_config *cfg, struct cerr *e)
{
    char sb[160];
    int64_t dims[TENSOR_MAX_DIMS];
    uint64_t total = 0, mem;
    if (cfg->batching.max_batch_size == 0)
        return CORRAL_OK;
    for (size_t k = 0; k < cfg->n_inputs + cfg->n_outputs; k++) {
        int is_in = k < cfg->n_inputs;
        const struct model_io *io = is_in ? &cfg->inputs[k] : &cfg->outputs[k - cfg->n_inputs];
        uint64_t bytes = largest_bucket_bytes(cfg, k, dims);
        if (bytes > TENSOR_MAX_BYTES)
            return cerr_set(e, CORRAL_ETOOLARGE, "config.json: in the largest batching bucket "
                            "%s '%s' is %s %s, %llu%s bytes, more than the %zu-byte limit on one "
                            "tensor; use smaller buckets or max_batch_size",
                            is_in ? "input" : "output", io->name,
                            tensor_shape_str(dims, io->ndim, sb, sizeof sb), dtype_name(io->dtype),
                            (unsigned long long)bytes, bytes == UINT64_MAX ? " or more" : "",
                            TENSOR_MAX_BYTES);
        total += bytes;
    }
    mem = machine_memory();
    if (total > mem)
        return cerr_set(e, CORRAL_ETOOLARGE, "config.json: the largest batching bucket needs at "
                        "least %llu bytes (%.1f GiB) for its inputs and outputs alone, more than "
                        "the %llu bytes (%.1f GiB) of memory this machine has; use smaller "
                        "buckets or max_batch_size", (unsigned long long)total,
                        (double)total / 1073741824.0, (unsigned long long)mem,
                        (double)mem / 1073741824.0);
    return CORRAL_OK;
}

int model_batching_parse_text(struct model_config *cfg, const char *json_text, struct cerr *e)
{
    json_error_t jerr;
    json_t *bj = NULL;
    if (json_text) {
        bj = json_loads(json_text, JSON_REJECT_DUPLICATES, &jerr);
        if (!bj)
            return cerr_set(e, CORRAL_EPARSE, "batching: %s (line %d)", jerr.text, jerr.line);
    }
    int rc = parse_batching(cfg, bj, e);
    json_decref(bj);
    return rc;
}

int model_repo_load(const char *repo, const char *name, long version, struct model_config *cfg,
                    struct cerr *e)
{
    int rc = CORRAL_OK;
    json_t *root = NULL;
    char *cfg_path = NULL, *vdir = NULL;
    DIR *d = NULL;
    json_error_t jerr;

    memset(cfg, 0, sizeof *cfg);
    cfg->parity_atol = 1e-4;
    if (!name[0] || strlen(name) >= MODEL_NAME_MAX || strchr(name, '/') || name[0] == '.')
        return cerr_set(e, CORRAL_EINVAL, "model name '%s' is not a valid directory name", name);
    snprintf(cfg->name, sizeof cfg->name, "%s", name);
    cfg->dir = path_join(repo, name);
    cfg_path = cfg->dir ? path_join(cfg->dir, "config.json") : NULL;
    if (!cfg_path) {
        rc = cerr_set(e, CORRAL_ENOMEM, "out of memory");
        goto fail;
    }
    root = json_load_file(cfg_path, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        rc = cerr_set(e, is_file(cfg_path) ? CORRAL_EPARSE : CORRAL_ENOTFOUND, "%s: %s (line %d)",
                      cfg_path, jerr.text, jerr.line);
        goto fail;
    }
    if (!json_is_object(root)) {
        rc = cerr_set(e, CORRAL_EPARSE, "%s: expected a JSON object", cfg_path);
        goto fail;
    }
    json_t *plat = json_object_get(root, "platform");
    snprintf(cfg->platform, sizeof cfg->platform, "%s",
             json_is_string(plat) ? json_string_value(plat) : "onnx");
    if ((rc = parse_io(json_object_get(root, "inputs"), "inputs", cfg->inputs, &cfg->n_inputs, e)) ||
        (rc = parse_io(json_object_get(root, "outputs"), "outputs", cfg->outputs, &cfg->n_outputs, e)))
        goto fail;
    json_t *par = json_object_get(root, "parity");
    if (par) {
        json_t *a = json_object_get(par, "atol"), *r = json_object_get(par, "rtol");
        if ((a && (!json_is_number(a) || json_number_value(a) < 0)) ||
            (r && (!json_is_number(r) || json_number_value(r) < 0))) {
            rc = cerr_set(e, CORRAL_EINVAL, "config.json: parity.atol and parity.rtol must be numbers >= 0");
            goto fail;
        }
        if (a)
            cfg->parity_atol = json_number_value(a);
        if (r)
            cfg->parity_rtol = json_number_value(r);
    }
    if ((rc = parse_batching(cfg, json_object_get(root, "batching"), e)) ||
        (rc = check_bucket_memory(cfg, e)))
        goto fail;
    if ((rc = image_prep_parse(json_object_get(root, "preprocess"),
                               json_object_get(root, "postprocess"), cfg, &cfg->image, e)))
        goto fail;
    json_t *lab = json_object_get(root, "labels");
    if (lab) {
        if (!json_is_string(lab)) {
            rc = cerr_set(e, CORRAL_EINVAL, "config.json: labels must be a file name string");
            goto fail;
        }
        if ((rc = load_labels(cfg, json_string_value(lab), e)))
            goto fail;
    }

    if (version == 0) {
        d = opendir(cfg->dir);
        if (!d) {
            rc = cerr_set(e, CORRAL_ENOTFOUND, "cannot open model directory %s: %s", cfg->dir,
                          strerror(errno));
            goto fail;
        }
        struct dirent *de;
        while ((de = readdir(d))) {
            long v = parse_version(de->d_name);
            if (v <= version)
                continue;
            char *p = path_join(cfg->dir, de->d_name), *m = p ? path_join(p, "model.onnx") : NULL;
            if (m && is_file(m))
                version = v;
            free(p);
            free(m);
        }
        if (version == 0) {
            rc = cerr_set(e, CORRAL_ENOTFOUND,
                          "model '%s' has no version directory with a model.onnx under %s", name,
                          cfg->dir);
            goto fail;
        }
    }
    cfg->version = version;
    snprintf(cfg->version_str, sizeof cfg->version_str, "%ld", version);
    vdir = path_join(cfg->dir, cfg->version_str);
    cfg->model_path = vdir ? path_join(vdir, "model.onnx") : NULL;
    cfg->vectors_dir = vdir ? path_join(vdir, "vectors") : NULL;
    if (!cfg->model_path || !cfg->vectors_dir) {
        rc = cerr_set(e, CORRAL_ENOMEM, "out of memory");
        goto fail;
    }
    if (!is_file(cfg->model_path)) {
        rc = cerr_set(e, CORRAL_ENOTFOUND, "model '%s' version %ld not found: no file %s", name,
                      version, cfg->model_path);
        goto fail;
    }
    struct model_aliases al;
    if ((rc = aliases_load(cfg->dir, &al, e)))
        goto fail;
    for (size_t i = 0; i < al.n; i++)
        if (al.items[i].version == version)
            memcpy(cfg->aliases[cfg->n_aliases++], al.items[i].name, ALIAS_NAME_MAX);
    goto out;
fail:
    model_config_free(cfg);
out:
    if (d)
        closedir(d);
    json_decref(root);
    free(cfg_path);
    free(vdir);
    return rc;
}

int model_version_matches(const struct model_config *cfg, const char *version)
{
    if (!version[0] || strcmp(version, cfg->version_str) == 0)
        return 1;
    for (size_t i = 0; i < cfg->n_aliases; i++)
        if (strcmp(version, cfg->aliases[i]) == 0)
            return 1;
    return 0;
}

void model_config_free(struct model_config *cfg)
{
    free(cfg->dir);
    free(cfg->model_path);
    free(cfg->vectors_dir);
    for (size_t i = 0; i < cfg->n_labels; i++)
        free(cfg->labels[i]);
    free(cfg->labels);
    cfg->dir = cfg->model_path = cfg->vectors_dir = NULL;
    cfg->labels = NULL;
    cfg->n_labels = 0;
}
