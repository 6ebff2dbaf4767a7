#include "ctl_alias.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "aliases.h"

const char ctl_alias_synopsis[] =
    "       corralctl alias set --repo DIR MODEL ALIAS VERSION\n"
    "       corralctl alias remove --repo DIR MODEL ALIAS\n"
    "       corralctl alias list --repo DIR MODEL\n";

static int alias_usage(const char *msg)
{
    fprintf(stderr, "corralctl: alias: %s\nusage:\n%s", msg, ctl_alias_synopsis);
    return 2;
}

/* A model name is a directory of the repository: no path separators, no hidden names. */
static int model_name_ok(const char *s)
{
    size_t n = strlen(s);
    return n > 0 && n < 128 && !strchr(s, '/') && s[0] != '.';
}

/* VERSION as the repository names its directories: digits, no sign, no leading zero. */
static long version_arg(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 9 || s[0] == '0')
        return 0;
    for (size_t i = 0; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return 0;
    return strtol(s, NULL, 10);
}

static int is_file(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

int ctl_alias(int argc, char **argv)
{
    static const struct option opts[] = {{"repo", required_argument, NULL, 'r'},
                                         {NULL, 0, NULL, 0}};
    const char *repo = NULL;
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (ch != 'r')
            return alias_usage("unknown or incomplete option");
        repo = optarg;
    }
    int n = argc - optind;
    char **a = argv + optind;
    if (!repo)
        return alias_usage("needs --repo DIR (the model repository)");
    if (n < 2)
        return alias_usage("expected set, remove or list, and a MODEL");
    const char *op = a[0], *model = a[1];
    if (!((strcmp(op, "set") == 0 && n == 4) || (strcmp(op, "remove") == 0 && n == 3) ||
          (strcmp(op, "list") == 0 && n == 2)))
        return alias_usage("expected set MODEL ALIAS VERSION, remove MODEL ALIAS or list MODEL");
    if (!model_name_ok(model)) {
        fprintf(stderr, "corralctl: alias: '%s' is not a model name (a directory of %s)\n",
                model, repo);
        return 1;
    }

    int rc = 1;
    struct cerr e = {0};
    struct model_aliases al;
    size_t dl = strlen(repo) + strlen(model) + 2;
    char *mdir = malloc(dl), *onnx = NULL;
    if (!mdir)
        goto out;
    snprintf(mdir, dl, "%s/%s", repo, model);
    if (aliases_load(mdir, &al, &e)) {
        fprintf(stderr, "corralctl: alias: %s\n", e.msg);
        goto out;
    }
    if (strcmp(op, "list") == 0) {
        if (!al.n)
            printf("model '%s' has no aliases (%s/%s)\n", model, mdir, ALIASES_FILE);
        for (size_t i = 0; i < al.n; i++)
            printf("%-24s %ld\n", al.items[i].name, al.items[i].version);
        rc = 0;
        goto out;
    }
    const char *name = a[2];
    const struct model_alias *old = aliases_find(&al, name);
    long was = old ? old->version : 0;
    if (strcmp(op, "remove") == 0) {
        if (aliases_remove(&al, name, &e) || aliases_save(mdir, &al, &e)) {
            fprintf(stderr, "corralctl: alias: %s/%s: %s\n", mdir, ALIASES_FILE, e.msg);
            goto out;
        }
        printf("%s: alias %s removed (it named version %ld)\n", model, name, was);
        rc = 0;
        goto out;
    }
    long v = version_arg(a[3]);
    if (!v) {
        fprintf(stderr, "corralctl: alias: VERSION '%s' is not a version number (1 to %ld)\n",
                a[3], ALIAS_VERSION_MAX);
        goto out;
    }
    size_t ol = strlen(mdir) + strlen(a[3]) + 16;
    onnx = malloc(ol);
    if (!onnx)
        goto out;
    snprintf(onnx, ol, "%s/%s/model.onnx", mdir, a[3]);
    if (!is_file(onnx)) {
        fprintf(stderr, "corralctl: alias: model '%s' has no version %ld: %s does not exist\n",
                model, v, onnx);
        goto out;
    }
    if (aliases_set(&al, name, v, &e) || aliases_save(mdir, &al, &e)) {
        fprintf(stderr, "corralctl: alias: %s\n", e.msg);
        goto out;
    }
    if (was)
        printf("%s: alias %s = version %ld (was %ld)\n", model, name, v, was);
    else
        printf("%s: alias %s = version %ld\n", model, name, v);
    rc = 0;
out:
    free(onnx);
    free(mdir);
    return rc;
}
