#include "model_repo.h"

#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

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
