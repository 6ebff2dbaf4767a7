/* Signatures as the formats' specifications give them. */
#include "imagefmt.h"

#include <string.h>
#include <strings.h>

enum image_format image_sniff(const uint8_t *b, size_t len)
{
    static const uint8_t png_sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    if (len >= 3 && b[0] == 0xff && b[1] == 0xd8 && b[2] == 0xff)
        return IMAGE_JPEG;
    if (len >= 8 && memcmp(b, png_sig, 8) == 0)
        return IMAGE_PNG;
    if (len >= 12 && memcmp(b, "RIFF", 4) == 0 && memcmp(b + 8, "WEBP", 4) == 0)
        return IMAGE_WEBP;
    return IMAGE_UNKNOWN;
}

const char *image_format_name(enum image_format f)
{
    switch (f) {
    case IMAGE_JPEG: return "JPEG";
    case IMAGE_PNG: return "PNG";
    case IMAGE_WEBP: return "WebP";
    default: return "unknown";
    }
}

const char *image_format_mime(enum image_format f)
{
    switch (f) {
    case IMAGE_JPEG: return "image/jpeg";
    case IMAGE_PNG: return "image/png";
    case IMAGE_WEBP: return "image/webp";
    default: return NULL;
    }
}

const char *image_sniff_other(const uint8_t *b, size_t len)
{
    if (len >= 6 && (memcmp(b, "GIF87a", 6) == 0 || memcmp(b, "GIF89a", 6) == 0))
        return "GIF";
    if (len >= 2 && b[0] == 'B' && b[1] == 'M')
        return "BMP";
    if (len >= 4 && (memcmp(b, "II*\0", 4) == 0 || memcmp(b, "MM\0*", 4) == 0))
        return "TIFF";
    if (len >= 12 && memcmp(b + 4, "ftyp", 4) == 0)
        return "HEIF/AVIF";
    if (len >= 4 && b[0] == 0 && b[1] == 0 && b[2] == 1 && b[3] == 0)
        return "ICO";
    return NULL;
}

enum image_format image_format_of_mime(const char *mime)
{
    static const enum image_format all[] = {IMAGE_JPEG, IMAGE_PNG, IMAGE_WEBP};
    size_t n = strcspn(mime, "; \t");
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        const char *m = image_format_mime(all[i]);
        if (strlen(m) == n && strncasecmp(mime, m, n) == 0)
            return all[i];
    }
    return IMAGE_UNKNOWN;
}
