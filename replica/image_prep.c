/*
 * The resize is the one place where "close" is not good enough: a model fed pixels that
 * differ from its training pipeline's by one level in many places drifts. So it repeats
 * Pillow's arithmetic: per output pixel a triangle filter widened by the scale factor
 * (antialiasing when shrinking), weights normalised in double and then fixed to 22
 * fractional bits, sums in 32-bit integers starting at one half, each pass clamped and
 * truncated to 8 bits, the horizontal pass over only the rows the vertical pass reads.
 */
#include "image_prep.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model_repo.h"

#define PREP_FRAC_BITS 22 /* 32 bits less 8 for the sample, less 2 of headroom */

/* One axis of a resize: for each output index, the first source index it reads, how
 * many it reads, and their fixed-point weights (ksize per output, zero-filled). */
struct axis {
    int ksize;
    int *lo, *n;
    int32_t *k;
};

static void axis_free(struct axis *a)
{
    free(a->lo);
    free(a->n);
    free(a->k);
}

static double triangle(double x)
{
    x = fabs(x);
    return x < 1.0 ? 1.0 - x : 0.0;
}

static int axis_init(struct axis *a, int in, int out, struct cerr *e)
{
    double scale = (double)in / out;
    double fscale = scale < 1.0 ? 1.0 : scale;
    double support = fscale; /* the triangle's support (1) widened by the scale */
    memset(a, 0, sizeof *a);
    a->ksize = (int)ceil(support) * 2 + 1;
    a->lo = malloc(sizeof(int) * (size_t)out);
    a->n = malloc(sizeof(int) * (size_t)out);
    a->k = calloc((size_t)out * (size_t)a->ksize, sizeof(int32_t));
    double *w = malloc(sizeof(double) * (size_t)a->ksize);
    if (!a->lo || !a->n || !a->k || !w) {
        free(w);
        axis_free(a);
        return cerr_set(e, CORRAL_ENOMEM, "out of memory for resize weights");
    }
    for (int o = 0; o < out; o++) {
        double center = (o + 0.5) * scale;
        int lo = (int)(center - support + 0.5);
        int hi = (int)(center + support + 0.5);
        if (lo < 0)
            lo = 0;
        if (hi > in)
            hi = in;
        int n = hi - lo;
        if (n > a->ksize)
            n = a->ksize;
        double sum = 0.0, inv = 1.0 / fscale;
        for (int i = 0; i < n; i++) {
            w[i] = triangle((i + lo - center + 0.5) * inv);
            sum += w[i];
        }
        int32_t *k = a->k + (size_t)o * (size_t)a->ksize;
        for (int i = 0; i < n; i++) {
            double v = sum != 0.0 ? w[i] / sum : w[i];
            double f = v * (double)(1 << PREP_FRAC_BITS);
            k[i] = (int32_t)(v < 0 ? f - 0.5 : f + 0.5);
        }
        a->lo[o] = lo;
        a->n[o] = n;
    }
    free(w);
    return CORRAL_OK;
}

static inline uint8_t clip8(int32_t s)
{
    int32_t v = s >> PREP_FRAC_BITS;
    return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
}

/* src: sw x rows RGB; dst: dw x rows, reading columns through `a`. */
static void pass_h(const uint8_t *src, int sw, int rows, const struct axis *a, int dw,
                   uint8_t *dst)
{
    for (int y = 0; y < rows; y++) {
        const uint8_t *s = src + (size_t)y * (size_t)sw * 3;
        uint8_t *d = dst + (size_t)y * (size_t)dw * 3;
        for (int x = 0; x < dw; x++) {
            const int32_t *k = a->k + (size_t)x * (size_t)a->ksize;
            const uint8_t *p = s + (size_t)a->lo[x] * 3;
            int32_t r = 1 << (PREP_FRAC_BITS - 1), g = r, b = r;
            for (int i = 0; i < a->n[x]; i++) {
                r += p[i * 3] * k[i];
                g += p[i * 3 + 1] * k[i];
                b += p[i * 3 + 2] * k[i];
            }
            d[x * 3] = clip8(r);
            d[x * 3 + 1] = clip8(g);
            d[x * 3 + 2] = clip8(b);
        }
    }
}

/* src: w x (whatever rows `a` reads, first row `first`); dst: w x dh. */
static void pass_v(const uint8_t *src, int w, int first, const struct axis *a, int dh,
                   uint8_t *dst)
{
    size_t stride = (size_t)w * 3;
    for (int y = 0; y < dh; y++) {
        const int32_t *k = a->k + (size_t)y * (size_t)a->ksize;
        const uint8_t *s = src + (size_t)(a->lo[y] - first) * stride;
        uint8_t *d = dst + (size_t)y * stride;
        for (size_t x = 0; x < stride; x++) {
            int32_t acc = 1 << (PREP_FRAC_BITS - 1);
            for (int i = 0; i < a->n[y]; i++)
                acc += s[(size_t)i * stride + x] * k[i];
            d[x] = clip8(acc);
        }
    }
}

int image_resize_bilinear(const struct image_rgb *src, int dw, int dh, uint8_t *dst,
                          struct cerr *e)
{
    int sw = src->width, sh = src->height, rc;
    if (dw <= 0 || dh <= 0 || sw <= 0 || sh <= 0)
        return cerr_set(e, CORRAL_EINVAL, "cannot resize %dx%d to %dx%d", sw, sh, dw, dh);
    if (sw == dw && sh == dh) {
        memcpy(dst, src->px, (size_t)sw * (size_t)sh * 3);
        return CORRAL_OK;
    }
    struct axis ax, ay;
    if ((rc = axis_init(&ax, sw, dw, e)))
        return rc;
    if ((rc = axis_init(&ay, sh, dh, e))) {
        axis_free(&ax);
        return rc;
    }
    uint8_t *tmp = NULL;
    if (sw == dw) {
        pass_v(src->px, sw, 0, &ay, dh, dst);
    } else if (sh == dh) {
        pass_h(src->px, sw, sh, &ax, dw, dst);
    } else {
        /* Only the source rows some output row reads go through the first pass. */
        int first = ay.lo[0], last = ay.lo[dh - 1] + ay.n[dh - 1];
        tmp = malloc((size_t)dw * (size_t)(last - first) * 3);
        if (!tmp) {
            rc = cerr_set(e, CORRAL_ENOMEM, "out of memory resizing a %dx%d image", sw, sh);
        } else {
            pass_h(src->px + (size_t)first * (size_t)sw * 3, sw, last - first, &ax, dw, tmp);
            pass_v(tmp, dw, first, &ay, dh, dst);
        }
    }
    free(tmp);
    axis_free(&ax);
    axis_free(&ay);
    return rc;
}

/* Python's round() of d / 2 for a non-negative integer d: halves go to the even side. */
static int64_t half_even(int64_t d)
{
    int64_t q = d / 2;
    return (d % 2) && (q % 2) ? q + 1 : q;
}

size_t image_prep_floats(const struct image_prep *p)
{
    return (size_t)3 * (size_t)p->out_h * (size_t)p->out_w;
}

int image_prep_run(const struct image_prep *p, const struct image_rgb *im, float *dst,
                   struct cerr *e)
{
    int64_t rw, rh;
    if (p->resize_short > 0) {
        /* The shorter side becomes resize_short; the longer keeps the ratio, truncated. */
        int64_t s = p->resize_short;
        if (im->width <= im->height) {
            rw = s;
            rh = (int64_t)((double)s * im->height / im->width);
        } else {
            rh = s;
            rw = (int64_t)((double)s * im->width / im->height);
        }
    } else if (p->resize_h > 0) {
        rh = p->resize_h;
        rw = p->resize_w;
    } else {
        rw = im->width;
        rh = im->height;
    }
    if (rw < 1 || rh < 1 || rw > 65535 || rh > 65535)
        return cerr_set(e, CORRAL_EINVAL, "a %dx%d image resizes to %lldx%lld, outside 1..65535",
                        im->width, im->height, (long long)rw, (long long)rh);
    struct image_rgb r = {.width = (int)rw, .height = (int)rh};
    r.px = malloc((size_t)rw * (size_t)rh * 3);
    if (!r.px)
        return cerr_set(e, CORRAL_ENOMEM, "out of memory resizing to %lldx%lld", (long long)rw,
                        (long long)rh);
    int rc = image_resize_bilinear(im, (int)rw, (int)rh, r.px, e);
    if (rc) {
        image_rgb_free(&r);
        return rc;
    }
    int64_t oh = p->out_h, ow = p->out_w;
    if (!p->crop_h && (rh != oh || rw != ow)) {
        image_rgb_free(&r);
        return cerr_set(e, CORRAL_EINVAL, "the image resizes to %lldx%lld but the model takes "
                        "%lldx%lld", (long long)rw, (long long)rh, (long long)ow, (long long)oh);
    }
    /* Centre crop; where the crop is larger than the image it is padded with zeros, the
     * padding split as CenterCrop splits it (the smaller half before). */
    int64_t top = oh > rh ? -((oh - rh) / 2) : half_even(rh - oh);
    int64_t left = ow > rw ? -((ow - rw) / 2) : half_even(rw - ow);
    size_t plane = (size_t)oh * (size_t)ow;
    for (int64_t y = 0; y < oh; y++) {
        int64_t sy = y + top;
        for (int64_t x = 0; x < ow; x++) {
            int64_t sx = x + left;
            int inside = sy >= 0 && sy < rh && sx >= 0 && sx < rw;
            const uint8_t *px = inside ? r.px + ((size_t)sy * (size_t)rw + (size_t)sx) * 3 : NULL;
            for (int c = 0; c < 3; c++) {
                int src_c = p->bgr ? 2 - c : c;
                float v = (float)(px ? px[src_c] : 0) / p->divisor;
                v = (v - p->mean[c]) / p->std[c];
                size_t at = p->nhwc ? ((size_t)y * (size_t)ow + (size_t)x) * 3 + (size_t)c
                                    : (size_t)c * plane + (size_t)y * (size_t)ow + (size_t)x;
                dst[at] = v;
            }
        }
    }
    image_rgb_free(&r);
    return CORRAL_OK;
}

/* ---- config.json ---- */

/* An integer or [h, w] of integers in 1..limit. */
static int parse_hw(const json_t *v, const char *what, int64_t *h, int64_t *w, struct cerr *e)
{
    const int64_t limit = 16384;
    if (json_is_integer(v)) {
        *h = *w = json_integer_value(v);
    } else if (json_is_array(v) && json_array_size(v) == 2 &&
               json_is_integer(json_array_get(v, 0)) && json_is_integer(json_array_get(v, 1))) {
        *h = json_integer_value(json_array_get(v, 0));
        *w = json_integer_value(json_array_get(v, 1));
    } else {
        return cerr_set(e, CORRAL_EINVAL, "config.json: preprocess.%s must be an integer or "
                        "[height, width]", what);
    }
    if (*h < 1 || *w < 1 || *h > limit || *w > limit)
        return cerr_set(e, CORRAL_EINVAL, "config.json: preprocess.%s must be within 1..%lld",
                        what, (long long)limit);
    return CORRAL_OK;
}

static int parse_triple(const json_t *v, const char *what, float dflt, int positive, float out[3],
                        struct cerr *e)
{
    if (!v) {
        out[0] = out[1] = out[2] = dflt;
        return CORRAL_OK;
    }
    if (!json_is_array(v) || json_array_size(v) != 3)
        return cerr_set(e, CORRAL_EINVAL, "config.json: preprocess.%s must be an array of 3 "
                        "numbers (one per channel)", what);
    for (size_t i = 0; i < 3; i++) {
        const json_t *x = json_array_get(v, i);
        if (!json_is_number(x) || !isfinite(json_number_value(x)) ||
            (positive && json_number_value(x) <= 0))
            return cerr_set(e, CORRAL_EINVAL, "config.json: preprocess.%s[%zu] must be a %s "
                            "number", what, i, positive ? "positive" : "finite");
        out[i] = (float)json_number_value(x);
    }
    return CORRAL_OK;
}

/* preprocess.KEY: `first` (the default, *second = 0) or `other` (*second = 1). */
static int one_of(const json_t *pre, const char *key, const char *first, const char *other,
                  int *second, struct cerr *e)
{
    const json_t *v = json_object_get(pre, key);
    const char *s = json_is_string(v) ? json_string_value(v) : v ? "" : first;
    if (strcmp(s, first) != 0 && strcmp(s, other) != 0)
        return cerr_set(e, CORRAL_EINVAL, "config.json: preprocess.%s must be \"%s\" or \"%s\"",
                        key, first, other);
    *second = strcmp(s, other) == 0;
    return CORRAL_OK;
}

/* A key naming one of the model's inputs or outputs (absent: *idx is left as it is). */
static int io_named(const json_t *v, const struct model_io *io, size_t n, const char *key,
                    const char *what, int *idx, struct cerr *e)
{
    if (!v)
        return CORRAL_OK;
    if (!json_is_string(v) || (*idx = model_find_io(io, n, json_string_value(v))) < 0)
        return cerr_set(e, CORRAL_EINVAL, "config.json: %s must name one of the model's %s", key,
                        what);
    return CORRAL_OK;
}

static int parse_post(const json_t *post, const struct model_config *cfg, struct image_prep *p,
                      struct cerr *e)
{
    static const char *const keys[] = {"output", "kind", NULL};
    const json_t *kind = post;
    p->softmax = 1;
    p->output = 0;
    if (json_is_object(post)) {
        int rc = model_check_keys(post, "postprocess", keys, e);
        if (rc)
            return rc;
        kind = json_object_get(post, "kind");
        if ((rc = io_named(json_object_get(post, "output"), cfg->outputs, cfg->n_outputs,
                           "postprocess.output", "outputs", &p->output, e)))
            return rc;
    } else if (post && !json_is_string(post)) {
        return cerr_set(e, CORRAL_EINVAL, "config.json: postprocess must be \"softmax\", "
                        "\"none\" or {\"output\": NAME, \"kind\": ...}");
    }
    if (kind) {
        const char *k = json_is_string(kind) ? json_string_value(kind) : "";
        if (strcmp(k, "softmax") == 0)
            p->softmax = 1;
        else if (strcmp(k, "none") == 0)
            p->softmax = 0;
        else
            return cerr_set(e, CORRAL_EINVAL, "config.json: postprocess kind must be "
                            "\"softmax\" or \"none\"");
    }
    if (cfg->n_outputs == 0)
        return cerr_set(e, CORRAL_EINVAL, "config.json: a model with preprocess needs an output");
    return CORRAL_OK;
}

int image_prep_parse(const json_t *pre, const json_t *post, const struct model_config *cfg,
                     struct image_prep *p, struct cerr *e)
{
    static const char *const keys[] = {"input", "resize", "crop", "divisor", "mean", "std",
                                       "channels", "layout", NULL};
    int rc;
    memset(p, 0, sizeof *p);
    if (!pre) {
        if (post)
            return cerr_set(e, CORRAL_EINVAL, "config.json: postprocess needs a preprocess "
                            "section (it applies to image requests)");
        return CORRAL_OK;
    }
    if (!json_is_object(pre))
        return cerr_set(e, CORRAL_EINVAL, "config.json: preprocess must be an object (see "
                        "docs/images.md)");
    if ((rc = model_check_keys(pre, "preprocess", keys, e)))
        return rc;
    p->enabled = 1;
    if ((rc = io_named(json_object_get(pre, "input"), cfg->inputs, cfg->n_inputs,
                       "preprocess.input", "inputs", &p->input, e)))
        return rc;
    if (cfg->n_inputs != 1)
        return cerr_set(e, CORRAL_EINVAL, "config.json: preprocess needs a model with one input "
                        "(the image); this one has %zu", cfg->n_inputs);
    const json_t *rs = json_object_get(pre, "resize");
    if (json_is_integer(rs)) {
        int64_t h, w;
        if ((rc = parse_hw(rs, "resize", &h, &w, e)))
            return rc;
        p->resize_short = h;
    } else if (rs && (rc = parse_hw(rs, "resize", &p->resize_h, &p->resize_w, e))) {
        return rc;
    }
    const json_t *cr = json_object_get(pre, "crop");
    if (cr && (rc = parse_hw(cr, "crop", &p->crop_h, &p->crop_w, e)))
        return rc;
    const json_t *dv = json_object_get(pre, "divisor");
    p->divisor = 255.0f;
    if (dv) {
        if (!json_is_number(dv) || !(json_number_value(dv) > 0) ||
            !isfinite(json_number_value(dv)))
            return cerr_set(e, CORRAL_EINVAL, "config.json: preprocess.divisor must be a "
                            "positive number (255 scales to [0, 1])");
        p->divisor = (float)json_number_value(dv);
    }
    if ((rc = parse_triple(json_object_get(pre, "mean"), "mean", 0.0f, 0, p->mean, e)) ||
        (rc = parse_triple(json_object_get(pre, "std"), "std", 1.0f, 1, p->std, e)))
        return rc;
    if ((rc = one_of(pre, "channels", "RGB", "BGR", &p->bgr, e)) ||
        (rc = one_of(pre, "layout", "NCHW", "NHWC", &p->nhwc, e)))
        return rc;
    if (p->crop_h) {
        p->out_h = p->crop_h;
        p->out_w = p->crop_w;
    } else if (p->resize_h) {
        p->out_h = p->resize_h;
        p->out_w = p->resize_w;
    } else {
        return cerr_set(e, CORRAL_EINVAL, "config.json: preprocess needs a crop or a resize to "
                        "[height, width], so every image becomes the input's size");
    }
    const struct model_io *io = &cfg->inputs[p->input];
    int hd = p->nhwc ? 1 : 2, cd = p->nhwc ? 3 : 1;
    if (io->dtype != DT_FP32 || io->ndim != 4 || (io->dims[0] != -1 && io->dims[0] != 1) ||
        io->dims[cd] != 3 || (io->dims[hd] != -1 && io->dims[hd] != p->out_h) ||
        (io->dims[hd + 1] != -1 && io->dims[hd + 1] != p->out_w))
        return cerr_set(e, CORRAL_EINVAL, "config.json: preprocess makes %s FP32 images of "
                        "%lldx%lld (height x width) with 3 channels, but input '%s' is %s with "
                        "%d dimensions (expected [-1 or 1, %s])", p->nhwc ? "NHWC" : "NCHW",
                        (long long)p->out_h, (long long)p->out_w, io->name, dtype_name(io->dtype),
                        io->ndim, p->nhwc ? "H, W, 3" : "3, H, W");
    return parse_post(post, cfg, p, e);
}
