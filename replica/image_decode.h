/*
 * Decoding of encoded images (JPEG, PNG, WebP) into 8-bit RGB pixels, with the
 * Debian libraries (libjpeg-turbo, libpng, libwebp): the replica's first step for
 * a model that takes images (replica/image_prep.h has the next ones).
 *
 * Usage:
 *     struct image_rgb im;
 *     if (image_decode(bytes, len, max_pixels, &im, &e)) answer e (400, 413 or 415);
 *     ... im.px[(y * im.width + x) * 3 + c] ...
 *     image_rgb_free(&im);
 *
 * The bytes are untrusted. The format comes from the leading bytes (never from a
 * declared content type); the dimensions are read from the header and checked
 * against max_pixels before any pixel memory is allocated, so a small file that
 * declares a huge image (a decompression bomb) costs nothing. Errors:
 *   CORRAL_EMEDIATYPE  not JPEG, PNG or WebP (GIF, BMP, TIFF are named as such),
 *                      or a variant this decoder does not turn into RGB (CMYK JPEG,
 *                      animated WebP)
 *   CORRAL_ETOOLARGE   width x height over max_pixels
 *   CORRAL_EINVAL      truncated or undecodable data; the message says which format
 *                      and what the library reported
 * The conversion to RGB follows what Pillow's convert("RGB") gives for the same file:
 * grayscale replicated, alpha dropped (not composited), palettes expanded without
 * their transparency, 16-bit samples reduced to their high byte, no gamma or colour
 * profile applied, and the EXIF orientation not applied.
 */
#ifndef CORRAL_REPLICA_IMAGE_DECODE_H
#define CORRAL_REPLICA_IMAGE_DECODE_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "imagefmt.h"

struct image_rgb {
    int width, height;
    uint8_t *px; /* width * height * 3 bytes, rows top to bottom (owned) */
};

/* Reads only the header: the format and its dimensions (same errors as image_decode). */
int image_probe(const uint8_t *b, size_t len, enum image_format *fmt, int *width, int *height,
                struct cerr *e);
int image_decode(const uint8_t *b, size_t len, uint64_t max_pixels, struct image_rgb *out,
                 struct cerr *e);
void image_rgb_free(struct image_rgb *im);

#endif
