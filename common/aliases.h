/*
 * Version aliases of one model: models/<name>/aliases.json, an object mapping alias
 * names to version numbers, e.g. {"production": 2, "staging": 3}. The replica reads
 * it at start and reports the aliases of the version it serves (the router matches a
 * requested version against them); the scheduler resolves a cluster config's
 * "version": "production" through it when the config is loaded; corralctl alias
 * writes it.
 *
 * Usage:
 *     struct model_aliases a;
 *     if (aliases_load(model_dir, &a, &e)) fail with e.msg;  (no file: no aliases)
 *     const struct model_alias *p = aliases_find(&a, "production");
 *     aliases_set(&a, "staging", 3, &e); aliases_save(model_dir, &a, &e);
 *
 * The file is untrusted: at most ALIASES_FILE_MAX bytes of valid UTF-8 JSON, an
 * object of at most ALIASES_MAX entries; each name 1 to ALIAS_NAME_MAX - 1 letters,
 * digits, '_', '-' or '.', not starting with '.' or '-', and not all digits (a name of
 * digits alone would be read as a version); each value an integer from 1 to
 * ALIAS_VERSION_MAX. Errors name the file and the key. The struct owns no memory.
 */
#ifndef CORRAL_COMMON_ALIASES_H
#define CORRAL_COMMON_ALIASES_H

#include <stddef.h>

#include "error.h"

#define ALIASES_FILE "aliases.json"
#define ALIASES_MAX 64
#define ALIAS_NAME_MAX 64
#define ALIASES_FILE_MAX 65536
#define ALIAS_VERSION_MAX 999999999L

struct model_alias {
    char name[ALIAS_NAME_MAX];
    long version;
};

struct model_aliases {
    size_t n;
    struct model_alias items[ALIASES_MAX]; /* sorted by name */
};

/* 1 when `name` may be an alias (the rules above), 0 otherwise. */
int aliases_name_valid(const char *name);
/* Parses a file's text; `path` only names it in errors. */
int aliases_parse(const char *text, size_t len, const char *path, struct model_aliases *out,
                  struct cerr *e);
/* Reads <model_dir>/aliases.json; a missing file is no aliases (CORRAL_OK, n = 0). */
int aliases_load(const char *model_dir, struct model_aliases *out, struct cerr *e);
/* Writes <model_dir>/aliases.json atomically: a temporary file beside it, fsync, rename. */
int aliases_save(const char *model_dir, const struct model_aliases *a, struct cerr *e);
const struct model_alias *aliases_find(const struct model_aliases *a, const char *name);
/* Adds or changes one alias (the name checked). */
int aliases_set(struct model_aliases *a, const char *name, long version, struct cerr *e);
/* Removes one; CORRAL_ENOTFOUND when there is none of that name. */
int aliases_remove(struct model_aliases *a, const char *name, struct cerr *e);
/* "production, staging" (or "none") into buf. */
void aliases_names(const struct model_aliases *a, char *buf, size_t len);

#endif
