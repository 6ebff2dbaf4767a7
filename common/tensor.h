/*
 * Tensors and datatypes shared by every corral process.
 *
 * `enum dtype` uses the same numbers as the wire schema's corral.DataType, so a
 * value read off the wire converts with a range check (dtype_valid) and a cast.
 * Names are the Open Inference Protocol's ("FP32", "INT64", ...).
 *
 * A `struct tensor` is a dense row-major buffer. Ownership: when `owned` is
 * non-zero the tensor owns `data` (free with tensor_release); otherwise `data`
 * points into someone else's buffer (a decoded protobuf message, an arena) that
 * must outlive the tensor. `name` is never owned: it points at a string that
 * outlives the tensor (a graph's value name, a message's field).
 *
 * All shape arithmetic goes through tensor_numel/tensor_nbytes, which reject
 * negative dimensions, too many dimensions and products that overflow.
 */
#ifndef CORRAL_COMMON_TENSOR_H
#define CORRAL_COMMON_TENSOR_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"

#define TENSOR_MAX_DIMS 8
/* Upper bound on one tensor's bytes accepted anywhere (untrusted input). */
#define TENSOR_MAX_BYTES ((size_t)1 << 32)

enum dtype {
    DT_INVALID = 0,
    DT_BOOL = 1,
    DT_UINT8 = 2,
    DT_UINT16 = 3,
    DT_UINT32 = 4,
    DT_UINT64 = 5,
    DT_INT8 = 6,
    DT_INT16 = 7,
    DT_INT32 = 8,
    DT_INT64 = 9,
    DT_FP16 = 10,
    DT_FP32 = 11,
    DT_FP64 = 12,
    DT_BYTES = 13,
    DT_BF16 = 14,
};
#define DT_COUNT 15

struct tensor {
    const char *name;
    enum dtype dtype;
    int ndim;
    int64_t dims[TENSOR_MAX_DIMS];
    void *data;
    size_t nbytes;
    int owned;
};

int dtype_valid(int v);
/* Bytes per element; 0 for BYTES (variable) and invalid types. */
size_t dtype_size(enum dtype t);
/* OIP name ("FP32"); "INVALID" for an unknown value. */
const char *dtype_name(enum dtype t);
/* Parses an OIP name; DT_INVALID when unknown. */
enum dtype dtype_from_name(const char *s);

/* Element count of a shape, with checks; fills *out. */
int tensor_numel(const int64_t *dims, int ndim, int64_t *out, struct cerr *e);
/* Byte size of a fixed-size-type tensor of this shape, with overflow checks. */
int tensor_nbytes(enum dtype t, const int64_t *dims, int ndim, size_t *out, struct cerr *e);
/*
 * Checks that `nbytes` bytes are exactly a tensor of this type and shape. For
 * BYTES it walks the length-prefixed elements and requires exactly numel of them.
 * `what` names the tensor in the message ("input 'x'").
 */
int tensor_check_size(const char *what, enum dtype t, const int64_t *dims, int ndim,
                      const void *data, size_t nbytes, struct cerr *e);
/* Formats a shape as "[2,3]" into buf. */
const char *tensor_shape_str(const int64_t *dims, int ndim, char *buf, size_t len);
/* Allocates an owned zeroed buffer for the given type and shape. */
int tensor_alloc(struct tensor *t, const char *name, enum dtype dt, const int64_t *dims, int ndim,
                 struct cerr *e);
/* Frees data when owned and resets the tensor. */
void tensor_release(struct tensor *t);

#endif
