/*
 * Small ONNX models written from C for the batching tests and benchmark, so
 * that they need neither Python nor files checked into the repository.
 *
 * Usage:
 *     bmodel_write(repo, "seq", BMODEL_SEQ, batching_json_or_NULL, &e);
 *     // repo/seq/config.json, repo/seq/1/model.onnx, repo/seq/1/vectors/0/...
 *
 * BMODEL_SEQ: input "x" FP32 [-1,-1,8] -> MatMul 8x16 + bias, Relu -> output
 * "h" [-1,-1,16]; then MatMul 16x4, Tanh -> output "y" [-1,-1,4]. Every
 * position is computed on its own, so padding the sequence axis and cutting
 * the outputs back gives exactly the unpadded result.
 * BMODEL_MLP: input "input" FP32 [-1,784] -> 512, Relu -> "logits" [-1,10].
 *
 * Weights come from a fixed pseudo-random sequence. The parity vectors hold
 * one input and the engine's own output for it (the replica needs vectors to
 * start). `batching_json` is inserted as the config's "batching" value.
 */
#ifndef CORRAL_BENCH_BATCHING_MODELS_H
#define CORRAL_BENCH_BATCHING_MODELS_H

#include "error.h"

enum bmodel_kind { BMODEL_SEQ, BMODEL_MLP };

int bmodel_write(const char *repo, const char *name, enum bmodel_kind kind,
                 const char *batching_json, struct cerr *e);
/* Writes repo/name/config.json pointing at the digits model's version 1 directory
 * (a symlink to digits_version_dir) with the given batching section. */
/* Writes repo/name/config.json with the given "inputs"/"outputs" members (io_json, the
 * text between the braces) and batching section, and links repo/name/1 to version_dir. */
int bmodel_link_version(const char *repo, const char *name, const char *version_dir,
                        const char *io_json, const char *batching_json, struct cerr *e);
int bmodel_link_digits(const char *repo, const char *name, const char *digits_version_dir,
                       const char *batching_json, struct cerr *e);

#endif
