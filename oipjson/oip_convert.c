/*
 * JSON <-> wire tensor conversions for the infer endpoint.
 *
 * Tensor bytes on the wire are little-endian; every corral host is, and the
 * build refuses a big-endian target rather than silently swapping nothing.
 */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "oip_codec.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "corral's wire tensors are little-endian; this host is not"
#endif

/* ---- half precision ---- */

uint16_t oip_f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t exp = (x >> 23) & 0xffu;
    uint32_t mant = x & 0x7fffffu;
    if (exp == 0xff)
        return (uint16_t)(sign | 0x7c00u | (mant ? 0x200u : 0));
    int32_t e = (int32_t)exp - 127 + 15;
    if (e >= 0x1f)
        return (uint16_t)(sign | 0x7c00u);
    if (e <= 0) {
        if (e < -10)
            return (uint16_t)sign;
        /* Subnormal half: shift the full significand into place, rounding to even. */
        mant |= 0x800000u;
        int shift = 14 - e;
        uint32_t h = mant >> shift;
        uint32_t rem = mant & ((1u << shift) - 1);
        uint32_t mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (h & 1)))
            h++;
        return (uint16_t)(sign | h);
    }
    uint32_t h = ((uint32_t)e << 10) | (mant >> 13);
    uint32_t rem = mant & 0x1fffu;
    /* A carry out of the significand correctly bumps the exponent (up to infinity). */
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1)))
        h++;
    return (uint16_t)(sign | h);
}

float oip_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    uint32_t x;
    if (exp == 0) {
        if (mant == 0) {
            x = sign;
        } else {
            int e = -1;
            do {
                e++;
                mant <<= 1;
            } while (!(mant & 0x400u));
            mant &= 0x3ffu;
            x = sign | ((uint32_t)(127 - 15 - e) << 23) | (mant << 13);
        }
    } else if (exp == 0x1f) {
        x = sign | 0x7f800000u | (mant << 13);
    } else {
        x = sign | ((exp - 15 + 127) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &x, 4);
    return f;
}

uint16_t oip_f32_to_bf16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7f800000u) == 0x7f800000u && (x & 0x7fffffu))
        return (uint16_t)((x >> 16) | 0x40u); /* keep NaN a NaN */
    x += 0x7fffu + ((x >> 16) & 1u);
    return (uint16_t)(x >> 16);
}

float oip_bf16_to_f32(uint16_t h)
{
    uint32_t x = (uint32_t)h << 16;
    float f;
    memcpy(&f, &x, 4);
    return f;
}


/* ---- tensor -> JSON ---- */

static void put_float(struct buf *b, double v, int single)
{
    if (!isfinite(v)) {
        /* JSON has no NaN or infinity; null keeps the document valid. */
        buf_puts(b, "null");
        return;
    }
    char s[40];
    if (single) {
        jnum_format_float(s, (float)v);
        buf_puts(b, s);
        return;
    }
    /* The shortest precision that reads back to the same value keeps answers compact. */
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(s, sizeof s, "%.*g", prec, v);
        if (strtod(s, NULL) == v)
            break;
    }
    buf_puts(b, s);
}

static int utf8_valid(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        size_t len;
        uint32_t cp;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            len = 2;
            cp = c & 0x1f;
        } else if ((c & 0xf0) == 0xe0) {
            len = 3;
            cp = c & 0x0f;
        } else if ((c & 0xf8) == 0xf0) {
            len = 4;
            cp = c & 0x07;
        } else {
            return 0;
        }
        if (n - i < len)
            return 0;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return 0;
            cp = cp << 6 | (s[i + k] & 0x3f);
        }
        if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
            cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return 0;
        i += len;
    }
    return 1;
}

/* Appends one fixed-size element as JSON. */
static void put_elem(struct buf *b, enum dtype dt, const uint8_t *q)
{
    switch (dt) {
    case DT_BOOL: buf_puts(b, q[0] ? "true" : "false"); break;
    case DT_UINT8: buf_printf(b, "%u", (unsigned)q[0]); break;
    case DT_INT8: buf_printf(b, "%d", (int)(int8_t)q[0]); break;
    case DT_UINT16: { uint16_t v; memcpy(&v, q, 2); buf_printf(b, "%u", (unsigned)v); break; }
    case DT_INT16: { int16_t v; memcpy(&v, q, 2); buf_printf(b, "%d", (int)v); break; }
    case DT_UINT32: { uint32_t v; memcpy(&v, q, 4); buf_printf(b, "%u", v); break; }
    case DT_INT32: { int32_t v; memcpy(&v, q, 4); buf_printf(b, "%d", v); break; }
    case DT_UINT64: { uint64_t v; memcpy(&v, q, 8); buf_printf(b, "%llu", (unsigned long long)v); break; }
    case DT_INT64: { int64_t v; memcpy(&v, q, 8); buf_printf(b, "%lld", (long long)v); break; }
    case DT_FP16: { uint16_t v; memcpy(&v, q, 2); put_float(b, oip_f16_to_f32(v), 1); break; }
    case DT_BF16: { uint16_t v; memcpy(&v, q, 2); put_float(b, oip_bf16_to_f32(v), 1); break; }
    case DT_FP32: { float v; memcpy(&v, q, 4); put_float(b, v, 1); break; }
    case DT_FP64: { double v; memcpy(&v, q, 8); put_float(b, v, 0); break; }
    default: buf_puts(b, "null");
    }
}

/* Start offsets of every BYTES element (n + 1 entries: the last is the end). */
static int bytes_offsets(const char *what, const uint8_t *p, size_t nbytes, size_t **offs,
                         size_t *count, struct cerr *e)
{
    size_t cap = 16, k = 0, off = 0;
    size_t *o = malloc(cap * sizeof *o);
    if (!o)
        return cerr_set(e, CORRAL_ENOMEM, "out of memory rendering %s", what);
    while (off < nbytes) {
        if (nbytes - off < 4)
            goto trunc;
        uint32_t l = (uint32_t)p[off] | (uint32_t)p[off + 1] << 8 | (uint32_t)p[off + 2] << 16 |
                     (uint32_t)p[off + 3] << 24;
        if (l > nbytes - off - 4)
            goto trunc;
        if (k + 2 > cap) {
            size_t *no = realloc(o, 2 * cap * sizeof *o);
            if (!no) {
                free(o);
                return cerr_set(e, CORRAL_ENOMEM, "out of memory rendering %s", what);
            }
            o = no;
            cap *= 2;
        }
        o[k++] = off;
        off += 4 + (size_t)l;
    }
    o[k] = off;
    *offs = o;
    *count = k;
    return CORRAL_OK;
trunc:
    free(o);
    return cerr_set(e, CORRAL_EIO, "%s BYTES element %zu is truncated", what, k);
}

static int put_bytes_elem(struct buf *b, const char *what, const uint8_t *p, size_t off, size_t k,
                          struct cerr *e)
{
    uint32_t l = (uint32_t)p[off] | (uint32_t)p[off + 1] << 8 | (uint32_t)p[off + 2] << 16 |
                 (uint32_t)p[off + 3] << 24;
    if (!utf8_valid(p + off + 4, l))
        return cerr_set(e, CORRAL_EUNSUPP, "%s BYTES element %zu is not valid UTF-8 and cannot be "
                        "sent as JSON; request it with binary_data", what, k);
    buf_json_string(b, (const char *)p + off + 4, l);
    return CORRAL_OK;
}

int oip_tensor_to_json(struct buf *b, const char *what, enum dtype dt, const uint8_t *p,
                       size_t nbytes, struct cerr *e)
{
    size_t es = dtype_size(dt);
    int rc;
    buf_putc(b, '[');
    if (dt == DT_BYTES) {
        size_t *offs = NULL, n = 0;
        if ((rc = bytes_offsets(what, p, nbytes, &offs, &n, e)))
            return rc;
        for (size_t k = 0; k < n; k++) {
            if (k)
                buf_putc(b, ',');
            if ((rc = put_bytes_elem(b, what, p, offs[k], k, e))) {
                free(offs);
                return rc;
            }
        }
        free(offs);
        buf_putc(b, ']');
        return b->oom ? cerr_set(e, CORRAL_ENOMEM, "out of memory rendering %s", what) : 0;
    }
    if (es == 0 || nbytes % es)
        return cerr_set(e, CORRAL_EIO, "%s has %zu bytes, not a whole number of %s elements", what,
                        nbytes, dtype_name(dt));
    if (!dtype_valid((int)dt))
        return cerr_set(e, CORRAL_EIO, "%s has datatype %s, which has no JSON form", what,
                        dtype_name(dt));
    size_t n = nbytes / es;
    /* About 12 characters per element; reserving up front avoids repeated growth. */
    buf_reserve(b, n * 12 + 2);
    for (size_t i = 0; i < n; i++) {
        if (i)
            buf_putc(b, ',');
        put_elem(b, dt, p + i * es);
    }
    buf_putc(b, ']');
    return b->oom ? cerr_set(e, CORRAL_ENOMEM, "out of memory rendering %s", what) : 0;
}

/* Replica parameters named corral_* are timings for the router's metrics, not for clients. */
static int param_hidden(const Corral__Parameter *p)
{
    return p->key && strncmp(p->key, "corral_", 7) == 0;
}

static void put_params(struct buf *b, Corral__Parameter **ps, size_t n)
{
    buf_putc(b, '{');
    int first = 1;
    for (size_t i = 0; i < n; i++) {
        const Corral__Parameter *p = ps[i];
        if (param_hidden(p))
            continue;
        if (!first)
            buf_putc(b, ',');
        first = 0;
        buf_json_string(b, p->key ? p->key : "", p->key ? strlen(p->key) : 0);
        buf_putc(b, ':');
        switch (p->value_case) {
        case CORRAL__PARAMETER__VALUE_BOOL_VALUE: buf_puts(b, p->bool_value ? "true" : "false"); break;
        case CORRAL__PARAMETER__VALUE_INT64_VALUE: buf_printf(b, "%lld", (long long)p->int64_value); break;
        case CORRAL__PARAMETER__VALUE_DOUBLE_VALUE: put_float(b, p->double_value, 0); break;
        case CORRAL__PARAMETER__VALUE_STRING_VALUE:
            if (p->string_value && utf8_valid((const uint8_t *)p->string_value, strlen(p->string_value)))
                buf_json_string(b, p->string_value, strlen(p->string_value));
            else
                buf_puts(b, "null");
            break;
        default: buf_puts(b, "null");
        }
    }
    buf_putc(b, '}');
}

static void put_str(struct buf *b, const char *s)
{
    s = s ? s : "";
    size_t n = strlen(s);
    /* Names come from replicas; anything that is not UTF-8 is replaced rather than sent. */
    if (utf8_valid((const uint8_t *)s, n))
        buf_json_string(b, s, n);
    else
        buf_puts(b, "\"?\"");
}

/* ---- classification ---- */

static double elem_as_double(enum dtype dt, const uint8_t *q)
{
    switch (dt) {
    case DT_BOOL: return q[0] ? 1 : 0;
    case DT_UINT8: return q[0];
    case DT_INT8: return (int8_t)q[0];
    case DT_UINT16: { uint16_t v; memcpy(&v, q, 2); return v; }
    case DT_INT16: { int16_t v; memcpy(&v, q, 2); return v; }
    case DT_UINT32: { uint32_t v; memcpy(&v, q, 4); return v; }
    case DT_INT32: { int32_t v; memcpy(&v, q, 4); return v; }
    case DT_UINT64: { uint64_t v; memcpy(&v, q, 8); return (double)v; }
    case DT_INT64: { int64_t v; memcpy(&v, q, 8); return (double)v; }
    case DT_FP16: { uint16_t v; memcpy(&v, q, 2); return oip_f16_to_f32(v); }
    case DT_BF16: { uint16_t v; memcpy(&v, q, 2); return oip_bf16_to_f32(v); }
    case DT_FP32: { float v; memcpy(&v, q, 4); return v; }
    case DT_FP64: { double v; memcpy(&v, q, 8); return v; }
    default: return 0;
    }
}

struct scored {
    double v;
    size_t i;
};

/* Highest first; NaN below everything; equal scores keep the lower index first. */
static int scored_cmp(const void *a, const void *b)
{
    const struct scored *x = a, *y = b;
    int xn = isnan(x->v), yn = isnan(y->v);
    if (xn != yn)
        return xn ? 1 : -1;
    if (!xn && x->v != y->v)
        return x->v > y->v ? -1 : 1;
    return x->i < y->i ? -1 : x->i > y->i;
}

int oip_classify(const Corral__Tensor *t, int k, char *const *labels, size_t n_labels,
                 int64_t *shape, int *ndim, uint8_t **data, size_t *len, struct cerr *e)
{
    enum dtype dt = (enum dtype)t->datatype;
    size_t es = dtype_size(dt);
    const char *name = t->name ? t->name : "";
    struct buf b = {0};
    struct scored *sc = NULL;
    int rc = CORRAL_OK;
    *data = NULL;
    *len = 0;
    if (dt == DT_BYTES || es == 0 || !dtype_valid((int)dt))
        return cerr_set(e, CORRAL_EINVAL, "output '%.200s' has datatype %s; classification needs "
                        "a numeric output", name, dtype_name(dt));
    if (t->data.len % es)
        return cerr_set(e, CORRAL_EIO, "output '%.200s' has %zu bytes, not a whole number of %s "
                        "elements", name, t->data.len, dtype_name(dt));
    size_t numel = t->data.len / es, rows = 1, cols = numel;
    if (t->n_shape >= 2) {
        rows = t->shape[0] > 0 ? (size_t)t->shape[0] : 0;
        cols = rows ? numel / rows : 0;
    }
    size_t kk = (size_t)k < cols ? (size_t)k : cols;
    if (t->n_shape >= 2) {
        shape[0] = (int64_t)rows;
        shape[1] = (int64_t)kk;
        *ndim = 2;
    } else {
        shape[0] = (int64_t)kk;
        *ndim = 1;
    }
    sc = malloc((cols ? cols : 1) * sizeof *sc);
    if (!sc)
        return cerr_set(e, CORRAL_ENOMEM, "out of memory classifying output '%.200s'", name);
    for (size_t r = 0; r < rows; r++) {
        const uint8_t *row = t->data.data + r * cols * es;
        for (size_t c = 0; c < cols; c++) {
            sc[c].v = elem_as_double(dt, row + c * es);
            sc[c].i = c;
        }
        qsort(sc, cols, sizeof *sc, scored_cmp);
        for (size_t j = 0; j < kk; j++) {
            char s[64 + 1024];
            /* "%f" is what Triton prints for a score, so existing parsers read ours. */
            int n = snprintf(s, sizeof s, "%f:%zu", sc[j].v, sc[j].i);
            if (sc[j].i < n_labels && labels[sc[j].i])
                n = snprintf(s, sizeof s, "%f:%zu:%.1000s", sc[j].v, sc[j].i, labels[sc[j].i]);
            if (n < 0)
                n = 0;
            if ((size_t)n >= sizeof s)
                n = (int)sizeof s - 1;
            uint8_t l4[4] = {(uint8_t)n, (uint8_t)(n >> 8), 0, 0};
            buf_append(&b, l4, 4);
            buf_append(&b, s, (size_t)n);
        }
    }
    if (b.oom) {
        rc = cerr_set(e, CORRAL_ENOMEM, "out of memory classifying output '%.200s'", name);
        goto fail;
    }
    free(sc);
    if (b.len == 0) {
        *data = malloc(1);
        if (!*data)
            return cerr_set(e, CORRAL_ENOMEM, "out of memory classifying output '%.200s'", name);
        return CORRAL_OK;
    }
    *data = (uint8_t *)buf_steal(&b, len);
    return *data ? CORRAL_OK : cerr_set(e, CORRAL_ENOMEM, "out of memory classifying");
fail:
    free(sc);
    buf_free(&b);
    return rc;
}

/* ---- v1 predict answer ---- */

/* Renders elements [*idx, ...) of t nested along shape[depth..]. */
static int put_nested(struct buf *b, const char *what, const Corral__Tensor *t, const size_t *offs,
                      size_t *idx, size_t depth, struct cerr *e)
{
    enum dtype dt = (enum dtype)t->datatype;
    if (depth == t->n_shape) {
        int rc = CORRAL_OK;
        if (dt == DT_BYTES)
            rc = put_bytes_elem(b, what, t->data.data, offs[*idx], *idx, e);
        else
            put_elem(b, dt, t->data.data + *idx * dtype_size(dt));
        (*idx)++;
        return rc;
    }
    buf_putc(b, '[');
    for (int64_t i = 0; i < t->shape[depth]; i++) {
        if (i)
            buf_putc(b, ',');
        int rc = put_nested(b, what, t, offs, idx, depth + 1, e);
        if (rc)
            return rc;
    }
    buf_putc(b, ']');
    return CORRAL_OK;
}

static int render_predict(const Corral__InferResponse *r, struct buf *b, struct cerr *e)
{
    size_t **offs = calloc(r->n_outputs ? r->n_outputs : 1, sizeof *offs);
    size_t *idx = calloc(r->n_outputs ? r->n_outputs : 1, sizeof *idx);
    int rc = CORRAL_OK;
    int64_t rows = -1;
    if (!offs || !idx) {
        rc = cerr_set(e, CORRAL_ENOMEM, "out of memory rendering the predictions");
        goto out;
    }
    if (r->n_outputs == 0) {
        rc = cerr_set(e, CORRAL_EINTERNAL, "the replica returned no outputs");
        goto out;
    }
    for (size_t j = 0; j < r->n_outputs; j++) {
        const Corral__Tensor *t = r->outputs[j];
        enum dtype dt = (enum dtype)t->datatype;
        size_t numel = 0;
        if (t->n_shape < 1 || (rows >= 0 && t->shape[0] != rows)) {
            rc = cerr_set(e, CORRAL_EINTERNAL, "output '%.200s' has no batch dimension matching "
                          "the instances, so it cannot be split into predictions",
                          t->name ? t->name : "");
            goto out;
        }
        rows = t->shape[0];
        if (dt == DT_BYTES) {
            if ((rc = bytes_offsets("output", t->data.data, t->data.len, &offs[j], &numel, e)))
                goto out;
        } else {
            numel = dtype_size(dt) ? t->data.len / dtype_size(dt) : 0;
        }
        int64_t want = 1;
        for (size_t d = 0; d < t->n_shape; d++)
            want *= t->shape[d];
        if ((int64_t)numel != want || !dtype_valid((int)dt)) {
            rc = cerr_set(e, CORRAL_EIO, "output '%.200s' holds %zu elements, its shape %lld",
                          t->name ? t->name : "", numel, (long long)want);
            goto out;
        }
    }
    buf_puts(b, "{\"predictions\":[");
    for (int64_t row = 0; row < rows; row++) {
        if (row)
            buf_putc(b, ',');
        if (r->n_outputs > 1)
            buf_putc(b, '{');
        for (size_t j = 0; j < r->n_outputs; j++) {
            const Corral__Tensor *t = r->outputs[j];
            if (r->n_outputs > 1) {
                if (j)
                    buf_putc(b, ',');
                put_str(b, t->name);
                buf_putc(b, ':');
            }
            if ((rc = put_nested(b, "output", t, offs[j], &idx[j], 1, e)))
                goto out;
        }
        if (r->n_outputs > 1)
            buf_putc(b, '}');
    }
    buf_puts(b, "]}");
out:
    for (size_t j = 0; offs && j < r->n_outputs; j++)
        free(offs[j]);
    free(offs);
    free(idx);
    return rc;
}

int oip_infer_response_render(const Corral__InferResponse *r, const struct oip_infer *in,
                              const char *model, char **body, size_t *len, size_t *json_len,
                              struct cerr *e)
{
    struct buf b = {0};
    struct buf bin = {0};
    int rc = CORRAL_OK;
    int any_binary = 0;
    uint8_t *cdata = NULL;
    size_t n = in && in->out_names ? in->n_out : r->n_outputs;
    *body = NULL;
    if (in && in->predict) {
        if ((rc = render_predict(r, &b, e)))
            goto fail;
        goto done;
    }
    buf_puts(&b, "{\"model_name\":");
    put_str(&b, r->model_name && r->model_name[0] ? r->model_name : model);
    buf_puts(&b, ",\"model_version\":");
    put_str(&b, r->model_version && r->model_version[0] ? r->model_version
                : in && in->ir.model_version ? in->ir.model_version : "");
    const char *id = in && in->id ? in->id : (r->id && r->id[0] ? r->id : NULL);
    if (id) {
        buf_puts(&b, ",\"id\":");
        /* The id may carry NUL bytes from JSON escapes; its length is not strlen then, but
         * it was valid JSON text, so echoing the C string part is the safe subset. */
        put_str(&b, id);
    }
    size_t visible = 0;
    for (size_t i = 0; i < r->n_parameters; i++)
        visible += !param_hidden(r->parameters[i]);
    if (visible) {
        buf_puts(&b, ",\"parameters\":");
        put_params(&b, r->parameters, r->n_parameters);
    }
    buf_puts(&b, ",\"outputs\":[");
    for (size_t i = 0; i < n; i++) {
        const Corral__Tensor *t = NULL;
        Corral__Tensor ct;
        int64_t cshape[2];
        int binary = in ? in->binary_all : 0;
        int cls = 0;
        if (in && in->out_names) {
            for (size_t j = 0; j < r->n_outputs; j++)
                if (r->outputs[j]->name && strcmp(r->outputs[j]->name, in->out_names[i]) == 0)
                    t = r->outputs[j];
            if (!t) {
                rc = cerr_set(e, CORRAL_EINTERNAL, "the replica returned no output '%s', which "
                              "the request asked for", in->out_names[i]);
                goto fail;
            }
            binary = in->out_binary[i];
            cls = in->out_class ? in->out_class[i] : 0;
        } else {
            t = r->outputs[i];
        }
        if (cls) {
            int cnd = 0;
            size_t clen = 0;
            free(cdata);
            cdata = NULL;
            if ((rc = oip_classify(t, cls, in->labels, in->n_labels, cshape, &cnd, &cdata, &clen,
                                   e)))
                goto fail;
            ct = *t;
            ct.datatype = CORRAL__DATA_TYPE__TYPE_BYTES;
            ct.shape = cshape;
            ct.n_shape = (size_t)cnd;
            ct.data.data = cdata;
            ct.data.len = clen;
            t = &ct;
        }
        char what[OIP_NAME_MAX + 16];
        snprintf(what, sizeof what, "output '%.*s'", OIP_NAME_MAX - 1, t->name ? t->name : "");
        if (i)
            buf_putc(&b, ',');
        buf_puts(&b, "{\"name\":");
        put_str(&b, t->name);
        buf_printf(&b, ",\"datatype\":\"%s\",\"shape\":[", dtype_name((enum dtype)t->datatype));
        for (size_t d = 0; d < t->n_shape; d++)
            buf_printf(&b, d ? ",%lld" : "%lld", (long long)t->shape[d]);
        buf_putc(&b, ']');
        if (binary) {
            any_binary = 1;
            buf_printf(&b, ",\"parameters\":{\"binary_data_size\":%zu}}", t->data.len);
            buf_append(&bin, t->data.data, t->data.len);
            continue;
        }
        buf_puts(&b, ",\"data\":");
        if ((rc = oip_tensor_to_json(&b, what, (enum dtype)t->datatype, t->data.data, t->data.len,
                                     e)))
            goto fail;
        buf_putc(&b, '}');
    }
    buf_puts(&b, "]}");
done:
    *json_len = b.len;
    if (any_binary)
        buf_append(&b, bin.data, bin.len);
    if (b.oom || bin.oom) {
        rc = cerr_set(e, CORRAL_ENOMEM, "out of memory rendering the answer");
        goto fail;
    }
    buf_free(&bin);
    free(cdata);
    *body = buf_steal(&b, len);
    if (!*body)
        return cerr_set(e, CORRAL_ENOMEM, "out of memory rendering the answer");
    return CORRAL_OK;
fail:
    free(cdata);
    buf_free(&b);
    buf_free(&bin);
    return rc;
}
