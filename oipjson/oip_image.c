/*
 * The form parser reads only what it needs: the boundary from the Content-Type, then
 * each part's headers (to find the field named "file" and its declared type) and the
 * part's extent up to the next delimiter. Nothing is copied; the image stays in the
 * request body until the infer request is built from it.
 */
#define _GNU_SOURCE /* memmem */
#include "oip_image.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "buf.h"
#include "httphead.h"
#include "oip_codec.h"
#include "tensor.h"

#define BOUNDARY_MAX 70 /* RFC 2046 */

/* ---- the body ---- */

/* The value of parameter `name` in a header value ("a/b; name=v; x=\"q\""), unquoted. */
static int header_param(const char *v, size_t vlen, const char *name, char *out, size_t cap)
{
    size_t nl = strlen(name);
    const char *end = v + vlen;
    const char *p = memchr(v, ';', vlen);
    while (p && p < end) {
        p++;
        while (p < end && (*p == ' ' || *p == '\t'))
            p++;
        const char *eq = memchr(p, '=', (size_t)(end - p));
        if (!eq)
            return 0;
        const char *q = eq + 1;
        const char *stop;
        size_t n;
        if (q < end && *q == '"') {
            q++;
            stop = memchr(q, '"', (size_t)(end - q));
            if (!stop)
                return 0;
            n = (size_t)(stop - q);
        } else {
            stop = q;
            while (stop < end && *stop != ';' && *stop != ' ' && *stop != '\t')
                stop++;
            n = (size_t)(stop - q);
        }
        if ((size_t)(eq - p) == nl && strncasecmp(p, name, nl) == 0) {
            if (n >= cap)
                return -1;
            memcpy(out, q, n);
            out[n] = '\0';
            return 1;
        }
        p = memchr(stop, ';', (size_t)(end - stop));
    }
    return 0;
}

/* One part's header block [h, h + hlen): its form field name and its Content-Type. */
static void part_headers(const char *h, size_t hlen, char *name, size_t ncap, char *ctype,
                         size_t ccap)
{
    name[0] = ctype[0] = '\0';
    const char *end = h + hlen;
    while (h < end) {
        const char *eol = memmem(h, (size_t)(end - h), "\r\n", 2);
        size_t ll = eol ? (size_t)(eol - h) : (size_t)(end - h);
        const char *colon = memchr(h, ':', ll);
        if (colon) {
            size_t kl = (size_t)(colon - h);
            const char *v = colon + 1;
            size_t vl = ll - kl - 1;
            while (vl && (*v == ' ' || *v == '\t')) {
                v++;
                vl--;
            }
            if (kl == 19 && strncasecmp(h, "Content-Disposition", kl) == 0) {
                if (header_param(v, vl, "name", name, ncap) < 0)
                    name[0] = '\0';
            } else if (kl == 12 && strncasecmp(h, "Content-Type", kl) == 0) {
                size_t n = vl < ccap - 1 ? vl : ccap - 1;
                memcpy(ctype, v, n);
                ctype[n] = '\0';
            }
        }
        h += ll + (eol ? 2 : 0);
    }
}

static int form_file(const char *ctype, const uint8_t *body, size_t len, const uint8_t **img,
                     size_t *ilen, char *part_type, size_t ptcap, struct cerr *e)
{
    char bnd[BOUNDARY_MAX + 1], delim[BOUNDARY_MAX + 5];
    int rc = header_param(ctype, strlen(ctype), "boundary", bnd, sizeof bnd);
    if (rc <= 0 || !bnd[0])
        return cerr_set(e, CORRAL_EINVAL, "multipart/form-data needs a boundary parameter of 1 "
                        "to %d characters in its Content-Type", BOUNDARY_MAX);
    int dl = snprintf(delim, sizeof delim, "\r\n--%s", bnd);
    const uint8_t *end = body + len;
    /* The first delimiter may open the body without the CRLF before it. */
    const uint8_t *p;
    if (len >= (size_t)dl - 2 && memcmp(body, delim + 2, (size_t)dl - 2) == 0)
        p = body + dl - 2;
    else if ((p = memmem(body, len, delim, (size_t)dl)))
        p += dl;
    else
        return cerr_set(e, CORRAL_EINVAL, "multipart body has no '--%s' delimiter", bnd);
    char fields[200] = "";
    size_t fl = 0;
    for (int parts = 0; parts < 64; parts++) {
        if (end - p >= 2 && p[0] == '-' && p[1] == '-')
            break; /* the closing delimiter */
        if (end - p < 2 || p[0] != '\r' || p[1] != '\n')
            return cerr_set(e, CORRAL_EINVAL, "multipart body: a delimiter is not followed by "
                            "CRLF or '--'");
        p += 2;
        const uint8_t *hend;
        if (end - p >= 2 && p[0] == '\r' && p[1] == '\n')
            hend = p - 2; /* a part without headers */
        else
            hend = memmem(p, (size_t)(end - p), "\r\n\r\n", 4);
        if (!hend)
            return cerr_set(e, CORRAL_EINVAL, "multipart body: a part's headers do not end "
                            "with an empty line (truncated?)");
        char name[64], pt[128];
        part_headers((const char *)p, hend >= p ? (size_t)(hend - p) : 0, name, sizeof name, pt,
                     sizeof pt);
        const uint8_t *data = hend + 4;
        const uint8_t *next = memmem(data, (size_t)(end - data), delim, (size_t)dl);
        if (!next)
            return cerr_set(e, CORRAL_EINVAL, "multipart body: part '%s' has no closing "
                            "'--%s' delimiter (truncated?)", name, bnd);
        if (strcmp(name, "file") == 0) {
            *img = data;
            *ilen = (size_t)(next - data);
            snprintf(part_type, ptcap, "%s", pt);
            return CORRAL_OK;
        }
        if (fl < sizeof fields - 1)
            fl += (size_t)snprintf(fields + fl, sizeof fields - fl, "%s'%s'", fl ? ", " : "",
                                   name);
        p = next + dl;
    }
    return cerr_set(e, CORRAL_EINVAL, "multipart form has no field named 'file' (fields: %s); "
                    "send the image as file=@IMAGE", fl ? fields : "none");
}

int oip_image_extract(const char *content_type, const uint8_t *body, size_t len,
                      size_t max_bytes, struct oip_image *out, struct cerr *e)
{
    int rc;
    const char *ct = content_type ? content_type : "";
    char part_type[128] = "";
    const char *declared = ct;
    memset(out, 0, sizeof *out);
    if (strncasecmp(ct, "multipart/form-data", 19) == 0) {
        if ((rc = form_file(ct, body, len, &out->data, &out->len, part_type, sizeof part_type,
                            e)))
            return rc;
        declared = part_type;
    } else if (image_format_of_mime(ct) != IMAGE_UNKNOWN ||
               strncasecmp(ct, "application/octet-stream", 24) == 0) {
        out->data = body;
        out->len = len;
    } else {
        return cerr_set(e, CORRAL_EMEDIATYPE, "Content-Type '%.60s' is not an image upload: send "
                        "image/jpeg, image/png or image/webp bytes, or a multipart/form-data "
                        "field 'file'", ct[0] ? ct : "(none)");
    }
    if (out->len > max_bytes)
        return cerr_set(e, CORRAL_ETOOLARGE, "image of %zu bytes exceeds the %zu byte limit "
                        "(--max-image-bytes)", out->len, max_bytes);
    if (out->len == 0)
        return cerr_set(e, CORRAL_EINVAL, "the image is empty (0 bytes)");
    out->fmt = image_sniff(out->data, out->len);
    if (out->fmt != IMAGE_UNKNOWN)
        return CORRAL_OK;
    const char *other = image_sniff_other(out->data, out->len);
    if (other)
        return cerr_set(e, CORRAL_EMEDIATYPE, "%s images are not supported (expected JPEG, PNG "
                        "or WebP)", other);
    enum image_format claimed = image_format_of_mime(declared);
    if (claimed != IMAGE_UNKNOWN)
        return cerr_set(e, CORRAL_EINVAL, "the body is declared %s but is not a %s image (it "
                        "starts with bytes %02x %02x %02x %02x)", image_format_mime(claimed),
                        image_format_name(claimed), out->data[0],
                        out->len > 1 ? out->data[1] : 0, out->len > 2 ? out->data[2] : 0,
                        out->len > 3 ? out->data[3] : 0);
    return cerr_set(e, CORRAL_EMEDIATYPE, "the %zu uploaded bytes are not a JPEG, PNG or WebP "
                    "image%s%.60s%s", out->len, declared[0] ? " (declared '" : "", declared,
                    declared[0] ? "')" : "");
}

/* ---- the query ---- */

int oip_query_get(const char *query, const char *key, char *out, size_t cap, struct cerr *e)
{
    size_t kl = strlen(key);
    const char *p = query;
    while (p && *p) {
        size_t len = strcspn(p, "&");
        const char *eq = memchr(p, '=', len);
        size_t nl = eq ? (size_t)(eq - p) : len;
        if (nl == kl && strncmp(p, key, kl) == 0) {
            const char *v = eq ? eq + 1 : p + len;
            const char *vend = p + len;
            size_t o = 0;
            for (; v < vend; v++) {
                int c = (unsigned char)*v;
                if (c == '%') {
                    int hi = vend - v >= 3 ? httphead_hex(v[1]) : -1;
                    int lo = hi >= 0 ? httphead_hex(v[2]) : -1;
                    if (hi < 0 || lo < 0 || (hi == 0 && lo == 0))
                        return cerr_set(e, CORRAL_EINVAL, "query parameter '%s' has a bad "
                                        "percent escape", key);
                    c = hi * 16 + lo;
                    v += 2;
                } else if (c == '+') {
                    c = ' ';
                }
                if (o + 1 >= cap)
                    return cerr_set(e, CORRAL_EINVAL, "query parameter '%s' is longer than %zu "
                                    "characters", key, cap - 1);
                out[o++] = (char)c;
            }
            out[o] = '\0';
            return 1;
        }
        p += len;
        if (*p == '&')
            p++;
    }
    return 0;
}

int oip_query_top_k(const char *query, int *top_k, struct cerr *e)
{
    char v[16];
    int rc = oip_query_get(query, "top_k", v, sizeof v, e);
    *top_k = OIP_TOP_K_DEFAULT;
    if (rc < 0)
        return rc;
    if (rc == 0)
        return CORRAL_OK;
    char *end = NULL;
    long k = strtol(v, &end, 10);
    if (!v[0] || *end || k < 1 || k > OIP_TOP_K_MAX)
        return cerr_set(e, CORRAL_EINVAL, "top_k '%s' is not an integer in 1..%d", v,
                        OIP_TOP_K_MAX);
    *top_k = (int)k;
    return CORRAL_OK;
}

/* ---- the request and the answer ---- */

int oip_image_request(const Corral__MetadataResponse *md, const struct oip_image *img,
                      const char *model, const char *version, struct oip_infer *out,
                      struct cerr *e)
{
    /* The image input as a one-element BYTES tensor: the raw-body request of a model
     * with that one input, which is what the replica's image path takes. */
    int64_t one = 1;
    Corral__TensorMetadata tm = CORRAL__TENSOR_METADATA__INIT;
    tm.name = md->image->input;
    tm.datatype = CORRAL__DATA_TYPE__TYPE_BYTES;
    tm.n_shape = 1;
    tm.shape = &one;
    Corral__TensorMetadata *tmp = &tm;
    Corral__MetadataResponse as_bytes = CORRAL__METADATA_RESPONSE__INIT;
    as_bytes.n_inputs = 1;
    as_bytes.inputs = &tmp;
    return oip_infer_raw(&as_bytes, img->data, img->len, model, version, out, e);
}

struct ranked {
    double p;
    size_t i;
};

static int by_prob(const void *a, const void *b)
{
    const struct ranked *x = a, *y = b;
    if (x->p != y->p)
        return x->p > y->p ? -1 : 1;
    return x->i < y->i ? -1 : x->i > y->i;
}

int oip_classify_render(const Corral__InferResponse *resp, const Corral__MetadataResponse *md,
                        int top_k, const char *model, char **body, size_t *len, struct cerr *e)
{
    const char *want = md->image ? md->image->output : NULL;
    const Corral__Tensor *t = NULL;
    *body = NULL;
    for (size_t i = 0; resp && want && i < resp->n_outputs; i++)
        if (resp->outputs[i]->name && strcmp(resp->outputs[i]->name, want) == 0)
            t = resp->outputs[i];
    if (!t)
        return cerr_set(e, CORRAL_EINTERNAL, "the replica's answer has no output '%s'",
                        want ? want : "");
    size_t n = 0, es = 0;
    if (t->datatype == CORRAL__DATA_TYPE__TYPE_FP32)
        es = 4;
    else if (t->datatype == CORRAL__DATA_TYPE__TYPE_FP64)
        es = 8;
    else
        return cerr_set(e, CORRAL_EINTERNAL, "output '%s' is %s; classification ranks FP32 or "
                        "FP64 scores", want, dtype_name((enum dtype)t->datatype));
    n = t->data.len / es;
    if (n == 0)
        return cerr_set(e, CORRAL_EINTERNAL, "output '%s' is empty", want);
    struct ranked *r = malloc(n * sizeof *r);
    if (!r)
        return cerr_set(e, CORRAL_ENOMEM, "out of memory ranking %zu classes", n);
    double mx = -INFINITY, sum = 0.0;
    for (size_t i = 0; i < n; i++) {
        if (es == 4) {
            float f;
            memcpy(&f, t->data.data + i * 4, 4);
            r[i].p = f;
        } else {
            memcpy(&r[i].p, t->data.data + i * 8, 8);
        }
        r[i].i = i;
        if (isnan(r[i].p)) {
            free(r);
            return cerr_set(e, CORRAL_EINTERNAL, "output '%s' holds NaN at class %zu", want, i);
        }
        if (r[i].p > mx)
            mx = r[i].p;
    }
    int softmax = md->image->postprocess && strcmp(md->image->postprocess, "softmax") == 0;
    if (softmax) {
        for (size_t i = 0; i < n; i++)
            sum += (r[i].p = exp(r[i].p - mx));
        for (size_t i = 0; i < n; i++)
            r[i].p /= sum;
    }
    qsort(r, n, sizeof *r, by_prob);
    size_t k = (size_t)top_k < n ? (size_t)top_k : n;
    struct buf b = {0};
    buf_puts(&b, "{\"model_name\":");
    buf_json_string(&b, model, strlen(model));
    const char *v = resp->model_version ? resp->model_version : "";
    buf_puts(&b, ",\"model_version\":");
    buf_json_string(&b, v, strlen(v));
    buf_puts(&b, ",\"predictions\":[");
    for (size_t j = 0; j < k; j++) {
        size_t i = r[j].i;
        char idx[24];
        snprintf(idx, sizeof idx, "%zu", i);
        const char *label = i < md->n_labels && md->labels[i] ? md->labels[i] : idx;
        buf_puts(&b, j ? ",{\"label\":" : "{\"label\":");
        buf_json_string(&b, label, strlen(label));
        buf_printf(&b, ",\"index\":%zu,\"prob\":%.9g}", i, r[j].p);
    }
    buf_puts(&b, "]}");
    free(r);
    *body = buf_steal(&b, len);
    if (!*body)
        return cerr_set(e, CORRAL_ENOMEM, "out of memory rendering the classification");
    return CORRAL_OK;
}
