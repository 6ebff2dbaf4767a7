/*
 * Image formats told apart by their leading bytes (signatures), without decoding:
 * the router uses this to answer 415 before forwarding, the replica to pick its
 * decoder (replica/image_decode.h). A declared content type is never trusted over
 * the bytes.
 *
 * Usage:
 *     enum image_format f = image_sniff(bytes, len);
 *     if (f == IMAGE_UNKNOWN) name = image_sniff_other(bytes, len);  // "GIF" or NULL
 */
#ifndef CORRAL_COMMON_IMAGEFMT_H
#define CORRAL_COMMON_IMAGEFMT_H

#include <stddef.h>
#include <stdint.h>

enum image_format { IMAGE_UNKNOWN = 0, IMAGE_JPEG, IMAGE_PNG, IMAGE_WEBP };

/* The format of `len` bytes by their signature; IMAGE_UNKNOWN when none matches. */
enum image_format image_sniff(const uint8_t *b, size_t len);
/* "JPEG", "PNG", "WebP" or "unknown". */
const char *image_format_name(enum image_format f);
/* The MIME type of a format ("image/jpeg"), or NULL for IMAGE_UNKNOWN. */
const char *image_format_mime(enum image_format f);
/* The format a MIME type names (parameters after ';' ignored, case-insensitive). */
enum image_format image_format_of_mime(const char *mime);
/* Names a known but unsupported format by its signature ("GIF"), else NULL. */
const char *image_sniff_other(const uint8_t *b, size_t len);

#endif
