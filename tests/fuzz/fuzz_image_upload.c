/*
 * The router's reading of an image upload (router/oip_image.c): the Content-Type
 * header up to the first NUL, then the body (a multipart/form-data form or raw image
 * bytes); and the query string parsing of top_k and model. The image found must lie
 * inside the body and be within the byte limit.
 */

#include "fuzz.h"
#include "oip_image.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *z = memchr(data, 0, size < 256 ? size : 256);
    if (!z)
        return 0;
    char *ctype = fuzz_copy(data, (size_t)(z - data) + 1);
    size_t blen = size - (size_t)(z - data) - 1;
    uint8_t *body = (uint8_t *)fuzz_copy(z + 1, blen);
    if (!ctype || !body) {
        free(ctype);
        free(body);
        return 0;
    }
    struct oip_image img;
    struct cerr e = {0};
    if (oip_image_extract(ctype, body, blen, 4096, &img, &e) == 0) {
        CHECK(img.data >= body && img.len <= blen && img.data + img.len <= body + blen,
              "the image is not inside the body");
        CHECK(img.len <= 4096 && img.len > 0, "an image of %zu bytes passed", img.len);
        CHECK(img.fmt == image_sniff(img.data, img.len), "the format is not the bytes'");
    } else {
        CHECK(e.msg[0], "a refused upload without a message");
    }
    /* The Content-Type bytes double as a query string. */
    char model[64];
    int k = 0;
    int q = oip_query_get(ctype, "model", model, sizeof model, &e);
    if (q == 1)
        CHECK(strlen(model) < sizeof model, "a query value past its buffer");
    if (oip_query_top_k(ctype, &k, &e) == 0)
        CHECK(k >= 1 && k <= OIP_TOP_K_MAX, "top_k %d out of range", k);
    free(ctype);
    free(body);
    return 0;
}
