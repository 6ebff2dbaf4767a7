/*
 * Triton's model configuration and model repository extensions, rendered from
 * what the replicas report (their metadata answers, with the batching section
 * of config.json) and from the replica table: the router never reads the
 * model repository itself.
 *
 * Triton prints its ModelConfig protobuf with proto field names, every
 * primitive field present, and its 64-bit fields turned back into JSON
 * numbers; perf_analyzer and tritonclient read that form, so it is what is
 * written here (fields corral has no counterpart for keep Triton's defaults).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "oip.h"

/* ---- model configuration ---- */

/* Triton's DataType enum name of an OIP datatype; BYTES is TYPE_STRING there. */
static void put_config_type(struct buf *b, int32_t dt)
{
    if (dt == DT_BYTES)
        buf_puts(b, "\"TYPE_STRING\"");
    else if (!dtype_valid((int)dt))
        buf_puts(b, "\"TYPE_INVALID\"");
    else
        buf_printf(b, "\"TYPE_%s\"", dtype_name((enum dtype)dt));
}

/* "cuda:N" -> N; -1 for anything else. */
static int cuda_ordinal(const char *dev)
{
    if (!dev || strncmp(dev, "cuda:", 5) != 0)
        return -1;
    const char *p = dev + 5;
    int n = 0;
    if (!*p)
        return -1;
    for (; *p; p++) {
        if (*p < '0' || *p > '9' || n > 9999)
            return -1;
        n = n * 10 + (*p - '0');
    }
    return n;
}

void oip_serving_collect(const struct upstream *up, const char *model,
                         const Corral__MetadataResponse *md, struct oip_serving *s)
{
    memset(s, 0, sizeof *s);
    upstream_model_versions(up, model, NULL, s->versions, sizeof s->versions);
    const char *version = md && md->n_versions && md->versions[0] ? md->versions[0] : "";
    for (size_t i = 0; i < upstream_replica_count(up); i++) {
        struct upstream_replica_info ri;
        upstream_replica_info(up, i, &ri);
        const Corral__MetadataResponse *rm = upstream_replica_metadata(up, i);
        /* Only replicas that have described themselves count: the others' device is unknown. */
        if (!rm || strcmp(ri.model, model) != 0 || strcmp(ri.state, "removed") == 0 ||
            (version[0] && strcmp(ri.version, version) != 0))
            continue;
        const char *dev = rm->device ? rm->device : "";
        int g = cuda_ordinal(dev);
        if (g >= 0) {
            s->gpu++;
            size_t k = 0;
            while (k < s->n_gpus && s->gpus[k] != g)
                k++;
            if (k == s->n_gpus && s->n_gpus < OIP_MAX_GPUS)
                s->gpus[s->n_gpus++] = g;
        } else if (strcmp(dev, "cpu") == 0) {
            s->cpu++;
        } else {
            s->other++;
        }
    }
}

/* A version as Triton's int64 version numbers: digits only, at most 18 of them. */
static int version_number(const char *v, size_t len, long long *out)
{
    long long n = 0;
    if (len == 0 || len > 18)
        return 0;
    for (size_t i = 0; i < len; i++) {
        if (v[i] < '0' || v[i] > '9')
            return 0;
        n = n * 10 + (v[i] - '0');
    }
    *out = n;
    return 1;
}

static void put_version_policy(struct buf *b, const char *versions)
{
    long long nums[32];
    size_t n = 0;
    int all = 1;
    for (const char *p = versions; *p;) {
        size_t l = strcspn(p, ",");
        if (n == 32 || !version_number(p, l, &nums[n]))
            all = 0;
        else
            n++;
        p += l;
        while (*p == ',' || *p == ' ')
            p++;
    }
    if (!all || n == 0) {
        buf_puts(b, "{\"latest\":{\"num_versions\":1}}");
        return;
    }
    buf_puts(b, "{\"specific\":{\"versions\":[");
    for (size_t i = 0; i < n; i++)
        buf_printf(b, i ? ",%lld" : "%lld", nums[i]);
    buf_puts(b, "]}}");
}

/* Dimensions of one tensor, leaving out the batch dimension when the model batches. */
static void put_dims(struct buf *b, const Corral__TensorMetadata *t, int batching)
{
    buf_puts(b, "\"dims\":[");
    size_t first = batching && t->n_shape > 0 ? 1 : 0;
    for (size_t d = first; d < t->n_shape; d++)
        buf_printf(b, d > first ? ",%lld" : "%lld", (long long)t->shape[d]);
    buf_putc(b, ']');
}

static void put_io(struct buf *b, Corral__TensorMetadata **ts, size_t n, int batching, int input)
{
    buf_putc(b, '[');
    for (size_t i = 0; i < n; i++) {
        const Corral__TensorMetadata *t = ts[i];
        buf_json_named(b, i == 0, t->name);
        buf_puts(b, ",\"data_type\":");
        put_config_type(b, t->datatype);
        buf_putc(b, ',');
        if (input)
            buf_puts(b, "\"format\":\"FORMAT_NONE\",");
        put_dims(b, t, batching);
        if (input)
            buf_puts(b, ",\"is_shape_tensor\":false,\"allow_ragged_batch\":false,"
                        "\"optional\":false,\"is_non_linear_format_io\":false}");
        else
            buf_puts(b, ",\"label_filename\":\"\",\"is_shape_tensor\":false,"
                        "\"is_non_linear_format_io\":false}");
    }
    buf_putc(b, ']');
}

static void put_dynamic_batching(struct buf *b, const Corral__BatchingInfo *bi)
{
    buf_puts(b, "\"dynamic_batching\":{\"preferred_batch_size\":[");
    for (size_t i = 0; i < bi->n_batch_buckets; i++)
        buf_printf(b, i ? ",%lld" : "%lld", (long long)bi->batch_buckets[i]);
    /* A request's parameters.timeout may only shorten the default: Triton's override. */
    buf_printf(b, "],\"max_queue_delay_microseconds\":%lld,\"preserve_ordering\":%s,"
               "\"priority_levels\":%d,\"default_priority_level\":%d,"
               "\"default_queue_policy\":{\"timeout_action\":\"REJECT\","
               "\"default_timeout_microseconds\":%lld,\"allow_timeout_override\":true,"
               "\"max_queue_size\":%lld},\"priority_queue_policy\":{}}",
               (long long)bi->max_queue_delay_us, bi->preserve_ordering ? "true" : "false",
               (int)bi->priority_levels, (int)bi->default_priority,
               (long long)bi->default_timeout_us, (long long)bi->max_queue_size);
}

static void put_group(struct buf *b, const char *model, int idx, const char *kind,
                      unsigned count, const int *gpus, size_t n_gpus)
{
    char name[OIP_NAME_MAX + 16];
    snprintf(name, sizeof name, "%s_%d", model, idx);
    buf_json_named(b, idx == 0, name);
    buf_printf(b, ",\"kind\":\"%s\",\"count\":%u,\"gpus\":[", kind, count);
    for (size_t i = 0; i < n_gpus; i++)
        buf_printf(b, i ? ",%d" : "%d", gpus[i]);
    buf_puts(b, "],\"secondary_devices\":[],\"profile\":[],\"passive\":false,"
                "\"host_policy\":\"\"}");
}

void oip_model_config_render(struct buf *b, const char *model, const Corral__MetadataResponse *md,
                             const struct oip_serving *s)
{
    const Corral__BatchingInfo *bi = md->batching;
    int64_t mbs = bi && bi->max_batch_size > 0 ? bi->max_batch_size : 0;
    /* Triton's max_batch_size is an int32; corral's limit (2^20) is far below it. */
    if (mbs > INT32_MAX)
        mbs = INT32_MAX;
    const char *pf = md->platform && md->platform[0] ? md->platform : "onnx";
    int onnx = strcmp(pf, "onnx") == 0;
    buf_puts(b, "{\"name\":");
    buf_json_string(b, model, strlen(model));
    /* Triton calls the platform of ONNX models onnxruntime_onnx, run by its onnxruntime
     * backend; corral runs them on its own engine, to the same contract. */
    buf_puts(b, ",\"platform\":");
    if (onnx)
        buf_puts(b, "\"onnxruntime_onnx\",\"backend\":\"onnxruntime\"");
    else {
        buf_json_string(b, pf, strlen(pf));
        buf_puts(b, ",\"backend\":\"\"");
    }
    buf_puts(b, ",\"runtime\":\"\",\"version_policy\":");
    put_version_policy(b, s->versions);
    buf_printf(b, ",\"max_batch_size\":%lld,\"input\":", (long long)mbs);
    put_io(b, md->inputs, md->n_inputs, mbs > 0, 1);
    buf_puts(b, ",\"output\":");
    put_io(b, md->outputs, md->n_outputs, mbs > 0, 0);
    buf_puts(b, ",\"batch_input\":[],\"batch_output\":[],");
    if (mbs > 0) {
        put_dynamic_batching(b, bi);
        buf_putc(b, ',');
    }
    buf_puts(b, "\"instance_group\":[");
    int idx = 0;
    if (s->gpu)
        put_group(b, model, idx++, "KIND_GPU", s->gpu, s->gpus, s->n_gpus);
    if (s->cpu)
        put_group(b, model, idx++, "KIND_CPU", s->cpu, NULL, 0);
    if (s->other)
        put_group(b, model, idx++, "KIND_AUTO", s->other, NULL, 0);
    buf_printf(b, "],\"default_model_filename\":\"%s\",\"cc_model_filenames\":{},"
               "\"metric_tags\":{},\"parameters\":{},\"model_warmup\":[]}",
               onnx ? "model.onnx" : "");
}

/* ---- repository index ---- */

int oip_repo_index_parse(const char *body, size_t len, int *ready_only, struct cerr *e)
{
    struct jdoc d = {0};
    int rc;
    *ready_only = 0;
    size_t i = 0;
    while (i < len && (body[i] == ' ' || body[i] == '\t' || body[i] == '\r' || body[i] == '\n'))
        i++;
    if (i == len)
        return CORRAL_OK;
    struct cerr pe = {0};
    if ((rc = jdoc_parse(&d, body, len, &pe)))
        return cerr_set(e, rc, "repository index request is not valid JSON: %s", pe.msg);
    if (jdoc_type(&d, 0) != JT_OBJECT) {
        rc = cerr_set(e, CORRAL_EINVAL, "repository index request must be a JSON object such "
                      "as {\"ready\": true}, got %s", jdoc_type_name(&d, 0));
        goto done;
    }
    uint32_t r = jdoc_get(&d, 0, "ready");
    if (r != JDOC_NONE) {
        enum jtype t = jdoc_type(&d, r);
        if (t != JT_TRUE && t != JT_FALSE) {
            rc = cerr_set(e, CORRAL_EINVAL, "repository index 'ready' must be true or false, "
                          "got %s", jdoc_type_name(&d, r));
            goto done;
        }
        *ready_only = t == JT_TRUE;
    }
done:
    jdoc_free(&d);
    return rc;
}

struct index_entry {
    const char *model;
    const char *version; /* "" when no replica has reported one */
    int ready;
    const char *reason;
};

/* Digit strings compare as numbers; anything else as bytes. */
static int version_cmp(const char *a, const char *b)
{
    long long x, y;
    if (version_number(a, strlen(a), &x) && version_number(b, strlen(b), &y))
        return x < y ? -1 : x > y;
    return strcmp(a, b);
}

static int entry_cmp(const void *pa, const void *pb)
{
    const struct index_entry *a = pa, *b = pb;
    int c = strcmp(a->model, b->model);
    return c ? c : version_cmp(a->version, b->version);
}

void oip_repo_index_render(struct buf *b, const struct upstream *up, int ready_only)
{
    size_t n = upstream_replica_count(up), ne = 0;
    struct index_entry *ents = calloc(n ? n : 1, sizeof *ents);
    if (!ents) {
        b->oom = 1;
        return;
    }
    /* One entry per model version the table's replicas serve; replicas that have not
     * reported a version yet make an entry of their own only for a model with none. */
    for (int pass = 0; pass < 2; pass++) {
        for (size_t i = 0; i < n; i++) {
            struct upstream_replica_info ri;
            upstream_replica_info(up, i, &ri);
            if (strcmp(ri.state, "removed") == 0 || (pass == 0) != (ri.version[0] != 0))
                continue;
            size_t k = 0;
            while (k < ne && !(strcmp(ents[k].model, ri.model) == 0 &&
                               (pass == 1 || strcmp(ents[k].version, ri.version) == 0)))
                k++;
            /* "ready" is the one state in which a replica takes traffic. */
            int takes = strcmp(ri.state, "ready") == 0;
            const char *why = ri.why[0] ? ri.why : ri.state;
            if (k < ne) {
                /* Pass 1 only fills models pass 0 found nothing for. */
                if (pass == 1 && ents[k].version[0])
                    continue;
                if (takes && !ents[k].ready) {
                    ents[k].ready = 1;
                    ents[k].reason = "";
                }
                continue;
            }
            ents[ne].model = ri.model;
            ents[ne].version = ri.version;
            ents[ne].ready = takes;
            ents[ne].reason = takes ? "" : why;
            ne++;
        }
    }
    qsort(ents, ne, sizeof *ents, entry_cmp);
    buf_putc(b, '[');
    int first = 1;
    for (size_t k = 0; k < ne; k++) {
        if (ready_only && !ents[k].ready)
            continue;
        buf_json_named(b, first, ents[k].model);
        first = 0;
        if (ents[k].version[0]) {
            buf_puts(b, ",\"version\":");
            buf_json_string(b, ents[k].version, strlen(ents[k].version));
        }
        buf_printf(b, ",\"state\":\"%s\",\"reason\":", ents[k].ready ? "READY" : "UNAVAILABLE");
        buf_json_string(b, ents[k].reason, strlen(ents[k].reason));
        buf_putc(b, '}');
    }
    buf_putc(b, ']');
    free(ents);
}
