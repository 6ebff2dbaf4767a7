#include "aliases.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int aliases_name_valid(const char *name)
{
    size_t n = strlen(name);
    int digits_only = 1;
    if (n == 0 || n >= ALIAS_NAME_MAX || name[0] == '.' || name[0] == '-')
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        int digit = c >= '0' && c <= '9';
        if (!(digit || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
              c == '-' || c == '.'))
            return 0;
        digits_only &= digit;
    }
    return !digits_only;
}

static const char *json_kind(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "a list";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a fractional number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    default: return "null";
    }
}

/* Why `name` is refused, for a message that tells what would be accepted; `path` (the
 * file) prefixes it unless NULL. */
static int bad_name(struct cerr *e, const char *path, const char *name)
{
    size_t n = strlen(name), i = 0;
    const char *sep = path ? ": " : "";
    path = path ? path : "";
    while (i < n && name[i] >= '0' && name[i] <= '9')
        i++;
    if (n > 0 && i == n)
        return cerr_set(e, CORRAL_EINVAL, "%s%salias '%.64s' is all digits, which would read "
                        "as a version number (an alias needs a letter, '_', '-' or '.')", path,
                        sep, name);
    return cerr_set(e, CORRAL_EINVAL, "%s%salias '%.64s' is not a valid name (expected 1 to %d "
                    "letters, digits, '_', '-' or '.', not starting with '.' or '-')", path, sep,
                    name, ALIAS_NAME_MAX - 1);
}

static int cmp_alias(const void *a, const void *b)
{
    return strcmp(((const struct model_alias *)a)->name, ((const struct model_alias *)b)->name);
}

int aliases_parse(const char *text, size_t len, const char *path, struct model_aliases *out,
                  struct cerr *e)
{
    json_error_t jerr;
    int rc = CORRAL_OK;
    out->n = 0;
    if (len > ALIASES_FILE_MAX)
        return cerr_set(e, CORRAL_ETOOLARGE, "%s: %zu bytes, more than the %d an aliases file "
                        "may hold", path, len, ALIASES_FILE_MAX);
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
    if (!root) {
        if (json_error_code(&jerr) == json_error_invalid_utf8)
            return cerr_set(e, CORRAL_EPARSE, "%s: not valid UTF-8 (%s)", path, jerr.text);
        return cerr_set(e, CORRAL_EPARSE, "%s: invalid JSON: %s (line %d)", path, jerr.text,
                        jerr.line);
    }
    if (!json_is_object(root)) {
        rc = cerr_set(e, CORRAL_EINVAL, "%s: expected an object mapping alias names to versions, "
                      "e.g. {\"production\": 2}, got %s", path, json_kind(root));
        goto out;
    }
    if (json_object_size(root) > ALIASES_MAX) {
        rc = cerr_set(e, CORRAL_EINVAL, "%s: %zu aliases, more than %d", path,
                      json_object_size(root), ALIASES_MAX);
        goto out;
    }
    const char *name;
    json_t *v;
    json_object_foreach(root, name, v) {
        /* jansson refuses a key with a NUL inside, so strlen sees the whole key. */
        if (!aliases_name_valid(name)) {
            rc = bad_name(e, path, name);
            goto out;
        }
        if (!json_is_integer(v) || json_integer_value(v) < 1 ||
            json_integer_value(v) > ALIAS_VERSION_MAX) {
            rc = cerr_set(e, CORRAL_EINVAL, "%s: alias '%s' must name a version (an integer from "
                          "1 to %ld), got %s", path, name, ALIAS_VERSION_MAX,
                          json_is_integer(v) ? "an integer out of range" : json_kind(v));
            goto out;
        }
        struct model_alias *a = &out->items[out->n++];
        snprintf(a->name, sizeof a->name, "%s", name);
        a->version = (long)json_integer_value(v);
    }
    qsort(out->items, out->n, sizeof out->items[0], cmp_alias);
out:
    if (rc)
        out->n = 0;
    json_decref(root);
    return rc;
}

/* <dir>/<file> into out, or an error when it does not fit. */
static int file_path(char *out, size_t len, const char *dir, const char *file, struct cerr *e)
{
    if ((size_t)snprintf(out, len, "%s/%s", dir, file) >= len)
        return cerr_set(e, CORRAL_EINVAL, "model directory path too long: %.200s...", dir);
    return CORRAL_OK;
}

int aliases_load(const char *model_dir, struct model_aliases *out, struct cerr *e)
{
    int rc, fd = -1;
    char *buf = NULL, path[PATH_MAX];
    size_t len = 0;
    out->n = 0;
    if ((rc = file_path(path, sizeof path, model_dir, ALIASES_FILE, e)))
        return rc;
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno != ENOENT)
            rc = cerr_set(e, CORRAL_EIO, "cannot open %s: %s", path, strerror(errno));
        goto out;
    }
    /* One byte more than allowed tells an oversized file from one exactly at the limit. */
    buf = malloc(ALIASES_FILE_MAX + 1);
    if (!buf) {
        rc = cerr_set(e, CORRAL_ENOMEM, "out of memory");
        goto out;
    }
    while (len <= ALIASES_FILE_MAX) {
        ssize_t r = read(fd, buf + len, ALIASES_FILE_MAX + 1 - len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            rc = cerr_set(e, CORRAL_EIO, "cannot read %s: %s", path, strerror(errno));
            goto out;
        }
        if (r == 0)
            break;
        len += (size_t)r;
    }
    if (len > ALIASES_FILE_MAX) {
        rc = cerr_set(e, CORRAL_ETOOLARGE, "%s: larger than the %d bytes an aliases file may hold",
                      path, ALIASES_FILE_MAX);
        goto out;
    }
    rc = aliases_parse(buf, len, path, out, e);
out:
    if (fd >= 0)
        close(fd);
    free(buf);
    return rc;
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

int aliases_save(const char *model_dir, const struct model_aliases *a, struct cerr *e)
{
    int rc, fd = -1;
    char *text = NULL, path[PATH_MAX], tmp[PATH_MAX], tname[64];
    json_t *root = NULL;
    snprintf(tname, sizeof tname, ".%s.tmp.%ld", ALIASES_FILE, (long)getpid());
    if ((rc = file_path(path, sizeof path, model_dir, ALIASES_FILE, e)) ||
        (rc = file_path(tmp, sizeof tmp, model_dir, tname, e)))
        return rc;
    if (!(root = json_object())) {
        rc = cerr_set(e, CORRAL_ENOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < a->n; i++)
        if (json_object_set_new(root, a->items[i].name, json_integer(a->items[i].version))) {
            rc = cerr_set(e, CORRAL_ENOMEM, "out of memory");
            goto out;
        }
    text = json_dumps(root, JSON_INDENT(2) | JSON_SORT_KEYS);
    if (!text) {
        rc = cerr_set(e, CORRAL_ENOMEM, "out of memory");
        goto out;
    }
    /* Readers see the old file or the new one, never a part: write beside it, make it
     * durable, then rename over it. */
    unlink(tmp); /* a leftover of a crashed run with the same pid, or a planted link */
    fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd < 0) {
        rc = cerr_set(e, CORRAL_EIO, "cannot create %s: %s", tmp, strerror(errno));
        goto out;
    }
    if (write_all(fd, text, strlen(text)) || write_all(fd, "\n", 1) || fsync(fd)) {
        rc = cerr_set(e, CORRAL_EIO, "cannot write %s: %s", tmp, strerror(errno));
        goto out;
    }
    if (close(fd)) {
        fd = -1;
        rc = cerr_set(e, CORRAL_EIO, "cannot write %s: %s", tmp, strerror(errno));
        goto out;
    }
    fd = -1;
    if (rename(tmp, path)) {
        rc = cerr_set(e, CORRAL_EIO, "cannot rename %s to %s: %s", tmp, path, strerror(errno));
        goto out;
    }
    /* The rename itself survives a crash only once the directory is synced. */
    int dfd = open(model_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
out:
    if (fd >= 0)
        close(fd);
    if (rc)
        unlink(tmp);
    free(text);
    json_decref(root);
    return rc;
}

const struct model_alias *aliases_find(const struct model_aliases *a, const char *name)
{
    for (size_t i = 0; i < a->n; i++)
        if (strcmp(a->items[i].name, name) == 0)
            return &a->items[i];
    return NULL;
}

int aliases_set(struct model_aliases *a, const char *name, long version, struct cerr *e)
{
    if (!aliases_name_valid(name))
        return bad_name(e, NULL, name);
    if (version < 1 || version > ALIAS_VERSION_MAX)
        return cerr_set(e, CORRAL_EINVAL, "alias '%s': version must be an integer from 1 to %ld",
                        name, ALIAS_VERSION_MAX);
    struct model_alias *p = (struct model_alias *)aliases_find(a, name);
    if (!p) {
        if (a->n == ALIASES_MAX)
            return cerr_set(e, CORRAL_EINVAL, "a model may have at most %d aliases", ALIASES_MAX);
        p = &a->items[a->n++];
        snprintf(p->name, sizeof p->name, "%s", name);
    }
    p->version = version;
    qsort(a->items, a->n, sizeof a->items[0], cmp_alias);
    return CORRAL_OK;
}

int aliases_remove(struct model_aliases *a, const char *name, struct cerr *e)
{
    const struct model_alias *p = aliases_find(a, name);
    if (!p) {
        char names[512];
        aliases_names(a, names, sizeof names);
        return cerr_set(e, CORRAL_ENOTFOUND, "no alias '%.64s' (aliases: %s)", name, names);
    }
    size_t i = (size_t)(p - a->items);
    memmove(&a->items[i], &a->items[i + 1], (a->n - i - 1) * sizeof a->items[0]);
    a->n--;
    return CORRAL_OK;
}

void aliases_names(const struct model_aliases *a, char *buf, size_t len)
{
    size_t off = 0;
    if (!len)
        return;
    snprintf(buf, len, "%s", a->n ? "" : "none");
    for (size_t i = 0; i < a->n && off < len; i++) {
        int w = snprintf(buf + off, len - off, "%s%s", i ? ", " : "", a->items[i].name);
        if (w < 0)
            break;
        off += (size_t)w;
    }
}
