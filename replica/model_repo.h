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
 */
#ifndef CORRAL_REPLICA_MODEL_REPO_H
#define CORRAL_REPLICA_MODEL_REPO_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "tensor.h"

#define MODEL_MAX_IO 64
#define MODEL_NAME_MAX 128

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
};

int model_repo_load(const char *repo, const char *name, long version, struct model_config *cfg,
                    struct cerr *e);
void model_config_free(struct model_config *cfg);

#endif
