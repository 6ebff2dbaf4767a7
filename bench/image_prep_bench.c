/*
 * corral-image-bench: what one image request costs the replica before the model runs:
 * decoding (libjpeg-turbo, libpng, libwebp) and preprocessing (Pillow's antialiased
 * bilinear resize of the shorter side to 256, centre crop 224, normalise, NCHW), each
 * timed alone, for each image given. docs/images.md quotes it for the choice of decoding
 * in the replica rather than in the router.
 *
 * Usage: corral-image-bench IMAGE... [--rounds N]
 * Prints, per image, its size and the median milliseconds of decode and of
 * preprocessing over N rounds (default 50).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "image_decode.h"
#include "image_prep.h"

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static uint8_t *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = n > 0 ? malloc((size_t)n) : NULL;
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) {
        free(b);
        b = NULL;
    }
    fclose(f);
    *len = b ? (size_t)n : 0;
    return b;
}

int main(int argc, char **argv)
{
    int rounds = 50;
    const struct image_prep p = {.enabled = 1, .softmax = 1, .resize_short = 256,
                                 .crop_h = 224, .crop_w = 224, .out_h = 224, .out_w = 224,
                                 .divisor = 255.0f, .mean = {0.485f, 0.456f, 0.406f},
                                 .std = {0.229f, 0.224f, 0.225f}};
    static float row[3 * 224 * 224];
    double *dec = NULL, *pre = NULL;
    int files = 0;
    for (int a = 1; a < argc; a++) {
        if (strcmp(argv[a], "--rounds") == 0 && a + 1 < argc) {
            rounds = atoi(argv[++a]);
            if (rounds < 1)
                rounds = 1;
        }
    }
    dec = malloc(sizeof(double) * (size_t)rounds);
    pre = malloc(sizeof(double) * (size_t)rounds);
    if (!dec || !pre)
        return 1;
    printf("%-28s %10s %9s %12s %14s\n", "image", "pixels", "bytes", "decode ms", "preprocess ms");
    for (int a = 1; a < argc; a++) {
        if (strcmp(argv[a], "--rounds") == 0) {
            a++;
            continue;
        }
        size_t len = 0;
        uint8_t *b = slurp(argv[a], &len);
        if (!b) {
            fprintf(stderr, "corral-image-bench: cannot read %s\n", argv[a]);
            return 1;
        }
        struct image_rgb im = {0};
        struct cerr e = {0};
        for (int r = 0; r < rounds; r++) {
            image_rgb_free(&im);
            double t0 = now_ms();
            if (image_decode(b, len, 0, &im, &e)) {
                fprintf(stderr, "corral-image-bench: %s: %s\n", argv[a], e.msg);
                return 1;
            }
            double t1 = now_ms();
            if (image_prep_run(&p, &im, row, &e)) {
                fprintf(stderr, "corral-image-bench: %s: %s\n", argv[a], e.msg);
                return 1;
            }
            dec[r] = t1 - t0;
            pre[r] = now_ms() - t1;
        }
        qsort(dec, (size_t)rounds, sizeof *dec, cmp_double);
        qsort(pre, (size_t)rounds, sizeof *pre, cmp_double);
        char dims[32];
        snprintf(dims, sizeof dims, "%dx%d", im.width, im.height);
        const char *base = strrchr(argv[a], '/');
        printf("%-28s %10s %9zu %12.3f %14.3f\n", base ? base + 1 : argv[a], dims, len,
               dec[rounds / 2], pre[rounds / 2]);
        image_rgb_free(&im);
        free(b);
        files++;
    }
    free(dec);
    free(pre);
    if (!files) {
        fprintf(stderr, "usage: corral-image-bench IMAGE... [--rounds N]\n");
        return 2;
    }
    return 0;
}
