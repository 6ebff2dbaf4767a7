/*
 * OIP routing: a decoded path to an endpoint and the methods it allows (oip.h's
 * oip_route_parse and oip_route_allows). Pure string work, tested alone.
 */
#include <stdio.h>
#include <string.h>

#include "oip.h"

#define ALLOW_GET "GET, HEAD"
#define ALLOW_POST "POST"

/* ---- routing ---- */

/* Splits the path into at most `max` segments; 0 on an empty segment or too many. */
static int split_path(const char *path, char seg[][OIP_NAME_MAX], int max, int *n)
{
    *n = 0;
    if (path[0] != '/')
        return 0;
    const char *p = path + 1;
    while (*p) {
        size_t len = strcspn(p, "/");
        if (len == 0 || len >= OIP_NAME_MAX || *n >= max)
            return 0;
        memcpy(seg[*n], p, len);
        seg[*n][len] = '\0';
        (*n)++;
        p += len;
        if (*p == '/') {
            p++;
            if (!*p)
                return 0; /* trailing slash: no endpoint has one */
        }
    }
    return 1;
}

void oip_route_parse(const char *path, struct oip_route *rt)
{
    char seg[7][OIP_NAME_MAX];
    int n = 0;
    memset(rt, 0, sizeof *rt);
    rt->kind = OIP_NOT_FOUND;
    if (!split_path(path, seg, 7, &n) || n < 1)
        return;
    rt->allow = ALLOW_GET;
    /* Every early return below that finds no endpoint clears allow again. */
    if (n == 1 && strcmp(seg[0], "metrics") == 0) {
        rt->kind = OIP_METRICS;
        return;
    }
    if (n == 1 && strcmp(seg[0], "predict") == 0) {
        rt->kind = OIP_PREDICT;
        rt->allow = ALLOW_POST;
        return;
    }
    if (n == 3 && strcmp(seg[0], "v1") == 0 && strcmp(seg[1], "models") == 0) {
        /* KServe v1 puts the verb after a colon: /v1/models/NAME:predict. */
        const char *colon = strrchr(seg[2], ':');
        size_t ml = colon ? (size_t)(colon - seg[2]) : strlen(seg[2]);
        if (ml == 0 || (colon && strcmp(colon, ":predict") != 0)) {
            rt->allow = NULL;
            return;
        }
        memcpy(rt->model, seg[2], ml);
        rt->model[ml] = '\0';
        rt->kind = colon ? OIP_V1_PREDICT : OIP_V1_MODEL;
        rt->allow = colon ? ALLOW_POST : ALLOW_GET;
        return;
    }
    if (strcmp(seg[0], "v2") != 0) {
        rt->allow = NULL;
        return;
    }
    if (n == 1) {
        rt->kind = OIP_SERVER_META;
        return;
    }
    if (n == 3 && strcmp(seg[1], "corral") == 0 && strcmp(seg[2], "replicas") == 0) {
        rt->kind = OIP_REPLICAS;
        return;
    }
    if (n == 3 && strcmp(seg[1], "models") == 0 && strcmp(seg[2], "stats") == 0) {
        rt->kind = OIP_ALL_STATS;
        return;
    }
    if (n == 3 && strcmp(seg[1], "repository") == 0 && strcmp(seg[2], "index") == 0) {
        rt->kind = OIP_REPO_INDEX;
        rt->allow = ALLOW_POST;
        return;
    }
    if (n == 5 && strcmp(seg[1], "repository") == 0 && strcmp(seg[2], "models") == 0 &&
        (strcmp(seg[4], "load") == 0 || strcmp(seg[4], "unload") == 0)) {
        snprintf(rt->model, sizeof rt->model, "%s", seg[3]);
        rt->kind = OIP_REPO_CONTROL;
        rt->allow = ALLOW_POST;
        return;
    }
    if (n == 3 && strcmp(seg[1], "health") == 0) {
        if (strcmp(seg[2], "live") == 0)
            rt->kind = OIP_HEALTH_LIVE;
        else if (strcmp(seg[2], "ready") == 0)
            rt->kind = OIP_HEALTH_READY;
        return;
    }
    if (n < 3 || strcmp(seg[1], "models") != 0)
        return;
    snprintf(rt->model, sizeof rt->model, "%s", seg[2]);
    int rest = 3;
    if (n >= 5 && strcmp(seg[3], "versions") == 0) {
        size_t vl = strlen(seg[4]);
        if (vl >= sizeof rt->version) {
            rt->model[0] = '\0';
            rt->allow = NULL;
            return;
        }
        memcpy(rt->version, seg[4], vl + 1);
        rest = 5;
    }
    if (n == rest) {
        rt->kind = OIP_MODEL_META;
    } else if (n == rest + 1 && strcmp(seg[rest], "ready") == 0) {
        rt->kind = OIP_MODEL_READY;
    } else if (n == rest + 1 && strcmp(seg[rest], "infer") == 0) {
        rt->kind = OIP_MODEL_INFER;
        rt->allow = ALLOW_POST;
    } else if (n == rest + 1 && strcmp(seg[rest], "stats") == 0) {
        rt->kind = OIP_MODEL_STATS;
    } else if (n == rest + 1 && strcmp(seg[rest], "config") == 0) {
        rt->kind = OIP_MODEL_CONFIG;
    } else if (n == rest + 1 && strcmp(seg[rest], "classify") == 0) {
        rt->kind = OIP_CLASSIFY;
        rt->allow = ALLOW_POST;
    }
    if (rt->kind == OIP_NOT_FOUND) {
        rt->model[0] = rt->version[0] = '\0';
        rt->allow = NULL;
    }
}

int oip_route_allows(const struct oip_route *rt, const char *method)
{
    if (!rt->allow || !method)
        return 0;
    size_t n = strlen(method);
    const char *p = rt->allow;
    while (*p) {
        size_t len = strcspn(p, ",");
        if (len == n && strncmp(p, method, n) == 0)
            return 1;
        p += len;
        while (*p == ',' || *p == ' ')
            p++;
    }
    return 0;
}
