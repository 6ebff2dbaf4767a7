/*
 * jnum: JSON numbers read and written (for jdoc and the OIP codec).
 *
 * Reading: jnum_scan() checks a number against the JSON grammar and decodes
 * it in the same pass into a decimal mantissa and exponent (struct jnum_dec);
 * jnum_dec_float() and jnum_dec_double() then give the correctly rounded
 * binary value, nearly always by one multiplication, otherwise through the C
 * library's strtof/strtod. jnum_float()/jnum_double() do both on text.
 *
 * Writing: jnum_format_float() prints the shortest decimal that reads back to
 * the same float, as printf's %g would lay it out.
 */
#ifndef CORRAL_JNUM_H
#define CORRAL_JNUM_H

#include <stddef.h>
#include <stdint.h>

/* w * 10^e10, w holding up to 19 significant digits; `exact` is 0 when nonzero
 * digits beyond those had to be dropped. */
struct jnum_dec {
    uint64_t w;
    int64_t e10;
    int neg, exact, integer; /* integer: written without fraction or exponent */
};

/*
 * Checks the JSON number at s[p..n) and decodes it. Returns the position after
 * it, or 0 with *why naming the problem and *at where it was found.
 */
size_t jnum_scan(const unsigned char *s, size_t n, size_t p, struct jnum_dec *x, const char **why,
                 size_t *at);
/* Correctly rounded; `s`/`n` is the number's text, read only on the slow path. */
double jnum_dec_double(const struct jnum_dec *x, const char *s, size_t n);
float jnum_dec_float(const struct jnum_dec *x, const char *s, size_t n);
/* The same on text alone (`s` holds one JSON number of `n` bytes). */
double jnum_double(const char *s, size_t n);
float jnum_float(const char *s, size_t n);

#define JNUM_FLOAT_MAX 32
/* Writes f (finite) into out (at least JNUM_FLOAT_MAX bytes, NUL-terminated); returns the length. */
int jnum_format_float(char *out, float f);

#endif
