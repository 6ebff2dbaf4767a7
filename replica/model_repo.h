/*
 * Model repository access for one replica: models/<name>/config.json and the
 * numbered version directories beside it.
 *
 * Usage:
 *     struct model_config cfg;
 *     if (model_repo_load(repo, name, version_or_0, &cfg, &e)) fail with e.msg;
 *     ... cfg.model_path, cfg.vectors_dir, cfg.inputs[i] ...
 *     model_config_free(&cfg);
 *
 * config.json is untrusted input: every field is type-checked, names are
 * bounded, shapes have at most TENSOR_MAX_DIMS entries, and unknown datatypes
 * are rejected with a message naming the field. A version of 0 selects the
 * highest numbered version directory holding a model.onnx.
 *
 * The optional "batching" object is validated against the declared inputs and
 * outputs (see docs/batching.md for the schema); model_batching_parse can be
 * called on its own (tests, tools) with the inputs and outputs already filled.
 *
 * models/<name>/aliases.json (common/aliases.h) is read once here: the aliases that
 * name the loaded version are kept in cfg->aliases, which the replica reports in its
 * health answers and accepts as a request's version. Changing the file later changes
 * nothing in a running replica.
 */
#ifndef CORRAL_REPLICA_MODEL_REPO_H
#define CORRAL_REPLICA_MODEL_REPO_H

#include <stddef.h>
#include <stdint.h>

#include "aliases.h"
#include "error.h"
#include "image_prep.h"
#include "tensor.h"

#define MODEL_MAX_IO 64
#define MODEL_NAME_MAX 128
#define MODEL_MAX_BUCKETS 32     /* entries in one bucket list */
#define MODEL_MAX_VAR_DIMS 16    /* variable non-batch input dimensions, all inputs together */
#define MODEL_MAX_PRIORITY 16

/*
 * A variable (-1) non-batch dimension of an input. With buckets, requests are
 * padded up to the smallest bucket that holds them (pad value per input); without,
 * only requests whose sizes are equal in this dimension share a batch.
 */
struct model_var_dim {
    int input;          /* index into model_config.inputs */
    int dim;            /* >= 1 */
    size_t n_buckets;   /* 0: no padding in this dimension */
    int64_t buckets[MODEL_MAX_BUCKETS]; /* strictly increasing, > 0 */
};

/* How a variable non-batch output dimension is cut back after padding. */
enum model_follow_kind {
    MODEL_FOLLOW_NONE = 0,  /* not declared: only allowed when nothing is padded */
    MODEL_FOLLOW_INPUT,     /* equals the request's size of input `input`, dim `dim` */
    MODEL_FOLLOW_COMPUTED,  /* kept as the batch computed it (independent of padding) */
};
struct model_follow {
    enum model_follow_kind kind;
    int input, dim;
};

/*
 * The "batching" section of config.json. Without one, max_batch_size is 0 and
 * every request runs as it came; the queue policies below still apply with their
 * defaults. max_batch_size > 0 turns on the dynamic batcher.
 */
struct model_batching {
    int64_t max_batch_size;
    size_t n_batch_buckets;
    int64_t batch_buckets[MODEL_MAX_BUCKETS]; /* increasing; the last is max_batch_size */
    size_t n_var_dims;
    struct model_var_dim var_dims[MODEL_MAX_VAR_DIMS];
    double pad_value[MODEL_MAX_IO];           /* per input (0 by default) */
    struct model_follow follow[MODEL_MAX_IO][TENSOR_MAX_DIMS]; /* per output and dim */
    int64_t max_queue_delay_us;               /* 0: dispatch as soon as the executor is free */
    int64_t max_queue_size;                   /* requests waiting; more are refused at once */
    int64_t default_timeout_us;               /* 0: no deadline */
    int priority_levels;                      /* 1..MODEL_MAX_PRIORITY; 1 = highest */
    int default_priority;                     /* level of requests that name none */
    int preserve_ordering;                    /* replies leave in arrival order */
};

struct model_io {
    char name[MODEL_NAME_MAX];
    enum dtype dtype;
    int ndim;
    int64_t dims[TENSOR_MAX_DIMS];
};

struct model_config {
    char name[MODEL_NAME_MAX];
    char platform[32];
    long version;
    char version_str[24];
    char *dir;          /* models/<name> (owned) */
    char *model_path;   /* models/<name>/<version>/model.onnx (owned) */
    char *vectors_dir;  /* models/<name>/<version>/vectors (owned) */
    size_t n_inputs, n_outputs;
    struct model_io inputs[MODEL_MAX_IO];
    struct model_io outputs[MODEL_MAX_IO];
    double parity_atol, parity_rtol;
    char **labels;      /* owned; NULL when the model has none */
    size_t n_labels;
    struct model_batching batching;
    struct image_prep image; /* preprocess/postprocess sections: image.enabled when present */
    size_t n_aliases;   /* the aliases.json names of this version, sorted */
    char aliases[ALIASES_MAX][ALIAS_NAME_MAX];
};

int model_repo_load(const char *repo, const char *name, long version, struct model_config *cfg,
                    struct cerr *e);
void model_config_free(struct model_config *cfg);
/* 1 when a request's `version` ("" for any) names the loaded version or one of its aliases. */
int model_version_matches(const struct model_config *cfg, const char *version);
/* Index of the input or output named `name` in io[n], or -1. */
int model_find_io(const struct model_io *io, size_t n, const char *name);
/* EINVAL naming the first key of `obj` not in the NULL-terminated `allowed` list. */
int model_check_keys(const json_t *obj, const char *what, const char *const *allowed,
                     struct cerr *e);
/* Parses `json_text` (the batching object alone, or NULL for defaults) into cfg->batching. */
int model_batching_parse_text(struct model_config *cfg, const char *json_text, struct cerr *e);

#endif
