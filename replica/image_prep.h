/*
 * Image preprocessing: what a model that takes images does to a decoded RGB image
 * before it becomes the model's input tensor, as recorded in config.json at export
 * (deploy/export/export.py --preprocess) and described in docs/images.md.
 *
 *     "preprocess": {"input": "image", "resize": 256, "crop": [224, 224],
 *                    "divisor": 255, "mean": [0.485, 0.456, 0.406],
 *                    "std": [0.229, 0.224, 0.225], "channels": "RGB", "layout": "NCHW"},
 *     "postprocess": {"output": "logits", "kind": "softmax"}
 *
 * Usage:
 *     struct image_prep p;
 *     image_prep_parse(json_preprocess, json_postprocess, cfg, &p, &e);  // at load
 *     float *x = ...;   // image_prep_floats(&p) floats, the input's one batch row
 *     image_prep_run(&p, &rgb, x, &e);                                   // per image
 *
 * The steps are torchvision's for a PIL image, to the rounding: Resize (the shorter
 * side to `resize`, the other scaled and truncated, or both sides given as [h, w]) with
 * Pillow's antialiased bilinear filter in 8-bit fixed point, horizontal pass first, each
 * pass rounded to 8 bits as Pillow's is; CenterCrop (offsets rounded half to even, as
 * Python's round(); zero padding where the crop is larger than the image); ToTensor
 * (divided by `divisor` in float32); Normalize ((x - mean) / std in float32); then the
 * channel order and layout the model wants. The result is one batch row of the input
 * (channels x height x width floats, or height x width x channels for NHWC).
 */
#ifndef CORRAL_REPLICA_IMAGE_PREP_H
#define CORRAL_REPLICA_IMAGE_PREP_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "image_decode.h"

struct model_config;

struct image_prep {
    int enabled;              /* config.json has a "preprocess" section */
    int input;                /* index into model_config.inputs */
    int output;               /* index into model_config.outputs: what /classify ranks */
    int softmax;              /* postprocess: 1 softmax, 0 none */
    int64_t resize_short;     /* > 0: the shorter side becomes this */
    int64_t resize_h, resize_w; /* > 0 (both): exact size instead */
    int64_t crop_h, crop_w;   /* > 0: centre crop to this; else the resized image as is */
    int64_t out_h, out_w;     /* the input's image size (crop, or resize when no crop) */
    float divisor;            /* 8-bit values are divided by this (255: [0, 1]) */
    float mean[3], std[3];    /* per channel, in RGB order */
    int bgr;                  /* channels in BGR order */
    int nhwc;                 /* layout NHWC (else NCHW) */
};

/*
 * Reads the "preprocess" and "postprocess" sections (either may be NULL: without
 * "preprocess" the model takes no images and p->enabled is 0) and checks them against
 * the model's declared inputs and outputs: the image input must be FP32 with a batch
 * dimension and 3 channels and spatial dimensions equal to the crop (or the fixed resize).
 */
int image_prep_parse(const json_t *pre, const json_t *post, const struct model_config *cfg,
                     struct image_prep *p, struct cerr *e);
/* Floats in one preprocessed image (3 * out_h * out_w). */
size_t image_prep_floats(const struct image_prep *p);
/* Resizes, crops and normalises `im` into `dst` (image_prep_floats floats). */
int image_prep_run(const struct image_prep *p, const struct image_rgb *im, float *dst,
                   struct cerr *e);
/*
 * Pillow's antialiased bilinear resize of an 8-bit RGB image to dw x dh (exposed for
 * its unit test). dst holds dw * dh * 3 bytes.
 */
int image_resize_bilinear(const struct image_rgb *src, int dw, int dh, uint8_t *dst,
                          struct cerr *e);

#endif
