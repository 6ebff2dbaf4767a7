/*
 * Image decoding and preprocessing (replica/image_decode.c, replica/image_prep.c), as
 * the replica runs them on an uploaded image: the whole input is the encoded image.
 * Decoded images are bounded by a small pixel limit (as --max-image-pixels bounds them)
 * so a large declared size is refused rather than decoded; what decodes is resized,
 * cropped and normalised with the ImageNet steps into a 224x224 input row, which must
 * hold only finite values within the normalised range.
 */

#include "fuzz.h"
#include "image_decode.h"
#include "image_prep.h"

#include <math.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static float row[3 * 224 * 224];
    const struct image_prep p = {.enabled = 1, .softmax = 1, .resize_short = 256,
                                 .crop_h = 224, .crop_w = 224, .out_h = 224, .out_w = 224,
                                 .divisor = 255.0f, .mean = {0.485f, 0.456f, 0.406f},
                                 .std = {0.229f, 0.224f, 0.225f}};
    char *copy = fuzz_copy(data, size);
    if (!copy)
        return 0;
    struct image_rgb im;
    struct cerr e = {0};
    int w = 0, h = 0;
    enum image_format f;
    int prc = image_probe((const uint8_t *)copy, size, &f, &w, &h, &e);
    int rc = image_decode((const uint8_t *)copy, size, 1 << 20, &im, &e);
    if (rc == 0) {
        CHECK(prc == 0 && im.width == w && im.height == h,
              "the header said %dx%d (rc %d), the decoder gave %dx%d", w, h, prc, im.width,
              im.height);
        CHECK(im.px && (uint64_t)im.width * (uint64_t)im.height <= 1 << 20,
              "decoded %dx%d past the pixel limit", im.width, im.height);
        if (image_prep_run(&p, &im, row, &e) == 0) {
            for (size_t i = 0; i < sizeof row / sizeof row[0]; i++)
                CHECK(isfinite(row[i]) && row[i] >= -2.2f && row[i] <= 2.7f,
                      "preprocessed value %g at %zu is outside the normalised range", row[i], i);
        }
        image_rgb_free(&im);
    } else {
        CHECK(im.px == NULL, "a refused image left pixels behind");
        CHECK(e.msg[0], "a refused image without a message (code %d)", rc);
    }
    free(copy);
    return 0;
}
