/*
 * jdoc: the OIP codec's JSON reader (bodies the router receives, files corralctl reads).
 *
 * One pass over the text builds a flat array of tokens in document order
 * (a container's elements follow it; each token records where its subtree
 * ends), so reading a body costs one allocation that grows geometrically,
 * not one per value. Strings are unescaped and UTF-8 checked into a side
 * store, NUL-terminated. Numbers are checked against the JSON grammar and
 * decoded to decimal mantissa and exponent in the same pass; they become
 * binary only when read, straight into the type the tensor needs, correctly
 * rounded (a fast path for the common case, the C library's strtod/strtof
 * otherwise).
 *
 * Limits: nesting depth JDOC_MAX_DEPTH, documents under 4 GiB.
 */
#ifndef CORRAL_JDOC_H
#define CORRAL_JDOC_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "jnum.h"

enum jtype { JT_NULL, JT_FALSE, JT_TRUE, JT_NUMBER, JT_STRING, JT_ARRAY, JT_OBJECT };

#define JDOC_NONE UINT32_MAX
#define JDOC_MAX_DEPTH 256

/* Number token flags, and JF_NESTED on an array holding an array or object. */
enum { JF_INTEGER = 1, JF_EXACT = 2, JF_NEG = 4, JF_E10 = 8, JF_NESTED = 16 };

struct jtok {
    uint32_t off;  /* number: offset of its text; string: offset in the string store */
    uint32_t len;  /* number, string: bytes; array: elements; object: members */
    uint32_t next; /* index of the first token after this value (and its elements) */
    uint8_t type;  /* enum jtype */
    /* Numbers are decoded while they are checked, into w * 10^e10 (w: up to 19
     * significant digits), so reading one later costs a multiplication. */
    uint8_t flags; /* JF_INTEGER: no fraction or exponent; JF_EXACT: no digit dropped;
                      JF_NEG; JF_E10: e10 fit in 16 bits (else the slow path decides) */
    int16_t e10;
    uint64_t w;
};

struct jdoc {
    const char *text;
    size_t text_len;
    struct jtok *tok;
    size_t n, cap;
    char *str;
    size_t str_len, str_cap;
};

/*
 * Parses `len` bytes of `text` (which must outlive the document: numbers are
 * read from it). The root is token 0 and may be any value. On failure the
 * error names the problem and its line and column; `d` is left empty.
 */
int jdoc_parse(struct jdoc *d, const char *text, size_t len, struct cerr *e);
void jdoc_free(struct jdoc *d);

static inline enum jtype jdoc_type(const struct jdoc *d, uint32_t i)
{
    return (enum jtype)d->tok[i].type;
}

/* Elements of array `a`: for (i = a + 1; i < jdoc_end(d, a); i = jdoc_skip(d, i)). */
static inline uint32_t jdoc_end(const struct jdoc *d, uint32_t i)
{
    return d->tok[i].next;
}
static inline uint32_t jdoc_skip(const struct jdoc *d, uint32_t i)
{
    return d->tok[i].next;
}
/* Number of elements of an array or members of an object. */
static inline size_t jdoc_size(const struct jdoc *d, uint32_t i)
{
    return d->tok[i].len;
}
/* A string's unescaped bytes (NUL-terminated; may hold NUL when escaped as \u0000). */
static inline const char *jdoc_str(const struct jdoc *d, uint32_t i)
{
    return d->str + d->tok[i].off;
}
static inline size_t jdoc_strlen(const struct jdoc *d, uint32_t i)
{
    return d->tok[i].len;
}
static inline int jdoc_is_array(const struct jdoc *d, uint32_t i)
{
    return d->tok[i].type == JT_ARRAY;
}
/* An array whose elements are all scalars (no arrays or objects among them). */
static inline int jdoc_is_flat_array(const struct jdoc *d, uint32_t i)
{
    return d->tok[i].type == JT_ARRAY && !(d->tok[i].flags & JF_NESTED);
}

/* The value of the last member named `key` of object `o`, or JDOC_NONE. */
uint32_t jdoc_get(const struct jdoc *d, uint32_t o, const char *key);
/* Element `k` of array `a`, or JDOC_NONE. */
uint32_t jdoc_at(const struct jdoc *d, uint32_t a, size_t k);
/* Members of object `o`: for (k = jdoc_first_key(d, o); k != JDOC_NONE; k = jdoc_next_key(d, o, k)),
 * the value being k + 1. */
uint32_t jdoc_first_key(const struct jdoc *d, uint32_t o);
uint32_t jdoc_next_key(const struct jdoc *d, uint32_t o, uint32_t k);

/* "an object", "an array", "a string", "a number", "a boolean", "null". */
const char *jdoc_type_name(const struct jdoc *d, uint32_t i);

/* Number conversions. They return JNUM_OK, or why not (nothing is written). */
enum { JNUM_OK = 0, JNUM_NOT_NUMBER, JNUM_NOT_INTEGER, JNUM_RANGE };
/* Correctly rounded; JNUM_RANGE when it rounds to an infinite double. */
int jdoc_double(const struct jdoc *d, uint32_t i, double *out);
/* Correctly rounded; JNUM_RANGE when it rounds to an infinite float. */
int jdoc_float(const struct jdoc *d, uint32_t i, float *out);
/* Integers written as such (no fraction or exponent); JNUM_NOT_INTEGER otherwise. */
/* Sign and magnitude, the whole 64-bit range of either sign ("-0" is neg with 0). */
int jdoc_integer(const struct jdoc *d, uint32_t i, int *neg, uint64_t *mag);
int jdoc_int64(const struct jdoc *d, uint32_t i, int64_t *out);
int jdoc_uint64(const struct jdoc *d, uint32_t i, uint64_t *out);


#endif
