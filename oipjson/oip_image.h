/*
 * Image classification over HTTP: the body of POST /v2/models/{m}[/versions/{v}]/classify
 * and POST /predict?model=M (an image as the multipart form field `file`, or the raw
 * bytes of an image/jpeg, image/png or image/webp body) becomes an infer request whose
 * image input carries the encoded image as one BYTES element; the replica decodes and
 * preprocesses it (replica/image_pool.h), and the model's output comes back ranked:
 *     {"model_name": M, "model_version": V,
 *      "predictions": [{"label": L, "index": I, "prob": P}, ...]}   (highest first)
 * with a softmax applied when the model's config.json says so (docs/images.md).
 *
 * Usage (the router's classify handler, router/oip.c):
 *     struct oip_image img;
 *     if (oip_image_extract(content_type, body, len, max_bytes, &img, &e)) answer e;
 *     oip_image_request(md, &img, model, version, &infer, &e);     // then send it
 *     ... oip_classify_render(resp, md, top_k, model, &body, &len, &e) on the answer
 *
 * Everything here reads untrusted bytes and is bounds-checked: errors are 415 (a type
 * that is not JPEG, PNG or WebP, by the bytes and by the declared type), 413 (more bytes
 * than max_bytes) and 400 (a malformed form, an empty image, bytes that claim to be an
 * image and are not), each naming what was expected.
 */
#ifndef CORRAL_OIPJSON_OIP_IMAGE_H
#define CORRAL_OIPJSON_OIP_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#include "corral.pb-c.h"
#include "error.h"
#include "imagefmt.h"

struct oip_infer;

#define OIP_TOP_K_DEFAULT 5
#define OIP_TOP_K_MAX 1000

struct oip_image {
    const uint8_t *data; /* borrowed from the body */
    size_t len;
    enum image_format fmt;
};

/* The image in a request body, by its Content-Type (NULL when absent). */
int oip_image_extract(const char *content_type, const uint8_t *body, size_t len,
                      size_t max_bytes, struct oip_image *out, struct cerr *e);
/*
 * The value of `key` in a query string ("a=1&b=x%20y"), percent-decoded into out[cap].
 * Returns 1 when present, 0 when absent, CORRAL_EINVAL (with e) when malformed or longer
 * than cap - 1.
 */
int oip_query_get(const char *query, const char *key, char *out, size_t cap, struct cerr *e);
/* top_k from a query string: OIP_TOP_K_DEFAULT when absent, else 1..OIP_TOP_K_MAX. */
int oip_query_top_k(const char *query, int *top_k, struct cerr *e);
/* The infer request for one image of a model whose metadata has `image` (md->image). */
int oip_image_request(const Corral__MetadataResponse *md, const struct oip_image *img,
                      const char *model, const char *version, struct oip_infer *out,
                      struct cerr *e);
/* The JSON answer: the top_k classes of md->image->output (fewer when it has fewer). */
int oip_classify_render(const Corral__InferResponse *resp, const Corral__MetadataResponse *md,
                        int top_k, const char *model, char **body, size_t *len, struct cerr *e);

#endif
