/*
 * Runs the replica's image path outside the replica, for tests/integration/test_classify.py:
 * loads REPO/NAME/config.json, decodes IMAGE and preprocesses it exactly as an image
 * request is, and writes the resulting input row (little-endian float32) to stdout.
 * On a refused image it prints the error and exits with the code's HTTP status / 100
 * (4 for 4xx), so the test can compare what the replica would answer.
 *
 * Usage: image_prep_tool REPO NAME IMAGE [MAX_PIXELS]
 */
#include <stdio.h>
#include <stdlib.h>

#include "image_decode.h"
#include "image_prep.h"
#include "model_repo.h"

int main(int argc, char **argv)
{
    if (argc < 4 || argc > 5) {
        fprintf(stderr, "usage: image_prep_tool REPO NAME IMAGE [MAX_PIXELS]\n");
        return 2;
    }
    struct model_config cfg;
    struct cerr e = {0};
    if (model_repo_load(argv[1], argv[2], 0, &cfg, &e)) {
        fprintf(stderr, "image_prep_tool: %s\n", e.msg);
        return 2;
    }
    FILE *f = fopen(argv[3], "rb");
    if (!f) {
        perror(argv[3]);
        return 2;
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc(n > 0 ? (size_t)n : 1);
    if (!b || fread(b, 1, (size_t)n, f) != (size_t)n) {
        fprintf(stderr, "image_prep_tool: cannot read %s\n", argv[3]);
        return 2;
    }
    fclose(f);
    uint64_t max_pixels = argc == 5 ? strtoull(argv[4], NULL, 10) : 40000000;
    struct image_rgb im;
    float *x = malloc(image_prep_floats(&cfg.image) * sizeof *x);
    int rc = image_decode(b, (size_t)n, max_pixels, &im, &e);
    if (!rc)
        rc = image_prep_run(&cfg.image, &im, x, &e);
    if (rc) {
        fprintf(stderr, "%s: %s\n", corral_err_name(rc), e.msg);
        return corral_err_http_status(rc) / 100;
    }
    fwrite(x, sizeof *x, image_prep_floats(&cfg.image), stdout);
    image_rgb_free(&im);
    free(x);
    free(b);
    model_config_free(&cfg);
    return 0;
}
