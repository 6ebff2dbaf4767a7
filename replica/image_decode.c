/*
 * Each format is read in two steps with its library: the header, whose dimensions are
 * checked before anything the size of the image is allocated, then the pixels straight
 * into the RGB buffer. The libraries report errors by longjmp (libjpeg, libpng) or by a
 * status (libwebp); every path ends in one cleanup that frees what the library held.
 */
#include "image_decode.h"

#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>
#include <jerror.h>
#include <png.h>
#include <webp/decode.h>

/* A progressive JPEG can ask for any number of scans over the same pixels; real
 * encoders use about ten. More than this is treated as hostile (each costs a pass). */
#define JPEG_MAX_SCANS 256

static int check_size(const char *fmt, long w, long h, uint64_t max_pixels, struct cerr *e)
{
    if (w <= 0 || h <= 0)
        return cerr_set(e, CORRAL_EINVAL, "%s header declares an empty image (%ldx%ld)", fmt, w, h);
    if (max_pixels && (uint64_t)w * (uint64_t)h > max_pixels)
        return cerr_set(e, CORRAL_ETOOLARGE, "%s image is %ldx%ld = %llu pixels, over the limit "
                        "of %llu pixels", fmt, w, h, (unsigned long long)w * (unsigned long long)h,
                        (unsigned long long)max_pixels);
    return CORRAL_OK;
}

static int alloc_rgb(struct image_rgb *out, int w, int h, struct cerr *e)
{
    out->width = w;
    out->height = h;
    out->px = malloc((size_t)w * (size_t)h * 3);
    if (!out->px)
        return cerr_set(e, CORRAL_ENOMEM, "out of memory for a %dx%d image", w, h);
    return CORRAL_OK;
}

/* ---- JPEG ---- */

struct jpeg_fail {
    struct jpeg_error_mgr mgr;
    jmp_buf jb;
    char msg[JMSG_LENGTH_MAX];
    int truncated;
};

static void jpeg_on_error(j_common_ptr c)
{
    struct jpeg_fail *f = (struct jpeg_fail *)c->err;
    f->mgr.format_message(c, f->msg);
    longjmp(f->jb, 1);
}

/* Warnings are ignored as Pillow ignores them, except the end of the data arriving
 * before the image did: Pillow refuses a truncated file, and so does this. */
static void jpeg_on_message(j_common_ptr c, int level)
{
    struct jpeg_fail *f = (struct jpeg_fail *)c->err;
    if (level < 0 && f->mgr.msg_code == JWRN_JPEG_EOF) {
        f->truncated = 1;
        snprintf(f->msg, sizeof f->msg, "the data ends before the image does (truncated)");
        longjmp(f->jb, 1);
    }
}

static void jpeg_on_progress(j_common_ptr c)
{
    if (c->is_decompressor && ((j_decompress_ptr)c)->input_scan_number > JPEG_MAX_SCANS) {
        struct jpeg_fail *f = (struct jpeg_fail *)c->err;
        snprintf(f->msg, sizeof f->msg, "more than %d progressive scans", JPEG_MAX_SCANS);
        longjmp(f->jb, 1);
    }
}

static int decode_jpeg(const uint8_t *b, size_t len, uint64_t max_pixels, struct image_rgb *out,
                       int header_only, struct cerr *e)
{
    struct jpeg_decompress_struct ci;
    struct jpeg_fail f;
    struct jpeg_progress_mgr prog;
    /* Written between setjmp and longjmp, read after: volatile keeps them in memory. */
    volatile int rc = CORRAL_OK;
    uint8_t *volatile px = NULL;
    memset(&f, 0, sizeof f);
    ci.err = jpeg_std_error(&f.mgr);
    f.mgr.error_exit = jpeg_on_error;
    f.mgr.emit_message = jpeg_on_message;
    if (setjmp(f.jb)) {
        if (rc == CORRAL_OK)
            rc = cerr_set(e, CORRAL_EINVAL, "JPEG data cannot be decoded: %s", f.msg);
        goto done;
    }
    jpeg_create_decompress(&ci);
    prog.progress_monitor = jpeg_on_progress;
    ci.progress = &prog;
    jpeg_mem_src(&ci, b, (unsigned long)len);
    jpeg_read_header(&ci, TRUE);
    if (ci.jpeg_color_space == JCS_CMYK || ci.jpeg_color_space == JCS_YCCK) {
        rc = cerr_set(e, CORRAL_EMEDIATYPE, "CMYK JPEG images are not supported: convert the "
                      "image to RGB");
        goto done;
    }
    if (ci.num_components != 1 && ci.num_components != 3) {
        rc = cerr_set(e, CORRAL_EMEDIATYPE, "JPEG images with %d colour components are not "
                      "supported (expected 1 or 3)", ci.num_components);
        goto done;
    }
    if ((rc = check_size("JPEG", (long)ci.image_width, (long)ci.image_height, max_pixels, e)))
        goto done;
    if (header_only) {
        out->width = (int)ci.image_width;
        out->height = (int)ci.image_height;
        goto done;
    }
    ci.out_color_space = JCS_RGB;
    jpeg_start_decompress(&ci);
    if (ci.output_components != 3) {
        rc = cerr_set(e, CORRAL_EINVAL, "JPEG decoder produced %d components, expected 3",
                      ci.output_components);
        goto done;
    }
    if ((rc = alloc_rgb(out, (int)ci.output_width, (int)ci.output_height, e)))
        goto done;
    px = out->px;
    size_t stride = (size_t)ci.output_width * 3;
    while (ci.output_scanline < ci.output_height) {
        JSAMPROW row = px + (size_t)ci.output_scanline * stride;
        jpeg_read_scanlines(&ci, &row, 1);
    }
    jpeg_finish_decompress(&ci);
done:
    jpeg_destroy_decompress(&ci);
    if (rc && px) {
        free(px);
        out->px = NULL;
    }
    return rc;
}

/* ---- PNG ---- */

struct png_src {
    const uint8_t *b;
    size_t len, off;
    char msg[200];
};

static void png_read_mem(png_structp p, png_bytep dst, png_size_t n)
{
    struct png_src *s = png_get_io_ptr(p);
    if (n > s->len - s->off)
        png_error(p, "the data ends before the image does (truncated)");
    memcpy(dst, s->b + s->off, n);
    s->off += n;
}

static void png_on_error(png_structp p, png_const_charp msg)
{
    struct png_src *s = png_get_error_ptr(p);
    snprintf(s->msg, sizeof s->msg, "%s", msg);
    png_longjmp(p, 1);
}

static void png_on_warning(png_structp p, png_const_charp msg)
{
    (void)p;
    (void)msg;
}

static int decode_png(const uint8_t *b, size_t len, uint64_t max_pixels, struct image_rgb *out,
                      int header_only, struct cerr *e)
{
    struct png_src src = {.b = b, .len = len};
    png_structp p = png_create_read_struct(PNG_LIBPNG_VER_STRING, &src, png_on_error,
                                           png_on_warning);
    png_infop info = p ? png_create_info_struct(p) : NULL;
    volatile int rc = CORRAL_OK;
    uint8_t *volatile px = NULL;
    png_bytep *volatile rows = NULL;
    if (!p || !info) {
        rc = cerr_set(e, CORRAL_ENOMEM, "out of memory starting the PNG decoder");
        goto done;
    }
    if (setjmp(png_jmpbuf(p))) {
        if (rc == CORRAL_OK)
            rc = cerr_set(e, CORRAL_EINVAL, "PNG data cannot be decoded: %s", src.msg);
        goto done;
    }
    png_set_read_fn(p, &src, png_read_mem);
    /* CRC errors are errors (libpng's default for critical chunks; ancillary ones too). */
    png_set_crc_action(p, PNG_CRC_DEFAULT, PNG_CRC_DEFAULT);
    png_read_info(p, info);
    png_uint_32 w = 0, h = 0;
    int depth = 0, color = 0, interlace = 0;
    png_get_IHDR(p, info, &w, &h, &depth, &color, &interlace, NULL, NULL);
    if ((rc = check_size("PNG", (long)w, (long)h, max_pixels, e)))
        goto done;
    if (header_only) {
        out->width = (int)w;
        out->height = (int)h;
        goto done;
    }
    if (color == PNG_COLOR_TYPE_PALETTE)
        png_set_palette_to_rgb(p);
    if (color == PNG_COLOR_TYPE_GRAY && depth < 8)
        png_set_expand_gray_1_2_4_to_8(p);
    if (depth == 16)
        png_set_strip_16(p);
    if (color & PNG_COLOR_MASK_ALPHA)
        png_set_strip_alpha(p);
    if (color == PNG_COLOR_TYPE_GRAY || color == PNG_COLOR_TYPE_GRAY_ALPHA)
        png_set_gray_to_rgb(p);
    png_set_interlace_handling(p);
    png_read_update_info(p, info);
    if (png_get_channels(p, info) != 3 || png_get_bit_depth(p, info) != 8) {
        rc = cerr_set(e, CORRAL_EINVAL, "PNG decoder produced %d channels of %d bits, expected "
                      "3 of 8", png_get_channels(p, info), png_get_bit_depth(p, info));
        goto done;
    }
    if ((rc = alloc_rgb(out, (int)w, (int)h, e)))
        goto done;
    px = out->px;
    rows = malloc(sizeof(png_bytep) * h);
    if (!rows) {
        rc = cerr_set(e, CORRAL_ENOMEM, "out of memory for PNG rows");
        goto done;
    }
    for (png_uint_32 y = 0; y < h; y++)
        rows[y] = px + (size_t)y * w * 3;
    png_read_image(p, rows);
done:
    free(rows);
    png_destroy_read_struct(p ? &p : NULL, info ? &info : NULL, NULL);
    if (rc && px) {
        free(px);
        out->px = NULL;
    }
    return rc;
}

/* ---- WebP ---- */

static int decode_webp(const uint8_t *b, size_t len, uint64_t max_pixels, struct image_rgb *out,
                       int header_only, struct cerr *e)
{
    WebPBitstreamFeatures ft;
    VP8StatusCode st = WebPGetFeatures(b, len, &ft);
    if (st != VP8_STATUS_OK)
        return cerr_set(e, CORRAL_EINVAL, "WebP header cannot be read (libwebp status %d%s)",
                        (int)st, st == VP8_STATUS_NOT_ENOUGH_DATA ? ": truncated" : "");
    if (ft.has_animation)
        return cerr_set(e, CORRAL_EMEDIATYPE, "animated WebP images are not supported: send "
                        "one frame");
    int rc = check_size("WebP", ft.width, ft.height, max_pixels, e);
    if (rc)
        return rc;
    if (header_only) {
        out->width = ft.width;
        out->height = ft.height;
        return CORRAL_OK;
    }
    if ((rc = alloc_rgb(out, ft.width, ft.height, e)))
        return rc;
    size_t size = (size_t)ft.width * (size_t)ft.height * 3;
    if (!WebPDecodeRGBInto(b, len, out->px, size, ft.width * 3)) {
        image_rgb_free(out);
        return cerr_set(e, CORRAL_EINVAL, "WebP data cannot be decoded (truncated or corrupt)");
    }
    return CORRAL_OK;
}

static int decode_any(const uint8_t *b, size_t len, uint64_t max_pixels, struct image_rgb *out,
                      enum image_format *fmt, int header_only, struct cerr *e)
{
    memset(out, 0, sizeof *out);
    enum image_format f = image_sniff(b, len);
    if (fmt)
        *fmt = f;
    switch (f) {
    case IMAGE_JPEG: return decode_jpeg(b, len, max_pixels, out, header_only, e);
    case IMAGE_PNG: return decode_png(b, len, max_pixels, out, header_only, e);
    case IMAGE_WEBP: return decode_webp(b, len, max_pixels, out, header_only, e);
    default: break;
    }
    const char *other = image_sniff_other(b, len);
    if (other)
        return cerr_set(e, CORRAL_EMEDIATYPE, "%s images are not supported (expected JPEG, PNG "
                        "or WebP)", other);
    if (len == 0)
        return cerr_set(e, CORRAL_EINVAL, "the image is empty (0 bytes)");
    return cerr_set(e, CORRAL_EMEDIATYPE, "the %zu bytes are not a JPEG, PNG or WebP image "
                    "(it starts with bytes %02x %02x %02x %02x)", len, b[0], len > 1 ? b[1] : 0,
                    len > 2 ? b[2] : 0, len > 3 ? b[3] : 0);
}

int image_probe(const uint8_t *b, size_t len, enum image_format *fmt, int *width, int *height,
                struct cerr *e)
{
    struct image_rgb im;
    int rc = decode_any(b, len, 0, &im, fmt, 1, e);
    *width = rc ? 0 : im.width;
    *height = rc ? 0 : im.height;
    return rc;
}

int image_decode(const uint8_t *b, size_t len, uint64_t max_pixels, struct image_rgb *out,
                 struct cerr *e)
{
    return decode_any(b, len, max_pixels, out, NULL, 0, e);
}

void image_rgb_free(struct image_rgb *im)
{
    free(im->px);
    im->px = NULL;
    im->width = im->height = 0;
}
