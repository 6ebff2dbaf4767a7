/*
 * jnum_format_float: every float it prints must read back (strtof) to the
 * same float, be a valid JSON number, and be as short as the shortest %.Pg
 * (P = 1..9) that reads back; checked over a stride through all finite float
 * bit patterns and over special values.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jnum.h"

/* Significant digits in a printed number: from its first to its last nonzero digit
 * (zeros that only place the point, as in "100000", do not count). */
static int sig_digits(const char *s)
{
    int n = 0, upto = 0, started = 0;
    for (; *s && *s != 'e'; s++) {
        if (*s < '0' || *s > '9')
            continue;
        if (*s != '0')
            started = 1;
        if (started) {
            n++;
            if (*s != '0')
                upto = n;
        }
    }
    return upto;
}

static void check_one(float f)
{
    char out[JNUM_FLOAT_MAX];
    int n = jnum_format_float(out, f);
    if (n <= 0 || (size_t)n != strlen(out))
        fail_msg("%a: length %d for '%s'", (double)f, n, out);
    float back = strtof(out, NULL);
    if (memcmp(&back, &f, sizeof f) != 0)
        fail_msg("%a printed as '%s', which reads back as %a", (double)f, out, (double)back);
    struct jnum_dec x;
    const char *why = NULL;
    size_t at = 0;
    if (jnum_scan((const unsigned char *)out, (size_t)n, 0, &x, &why, &at) != (size_t)n)
        fail_msg("%a printed as '%s', which is not a JSON number (%s)", (double)f, out,
                 why ? why : "trailing characters");
    /* The shortest precision printf needs is the bar. */
    char ref[40];
    int p;
    for (p = 1; p <= 9; p++) {
        snprintf(ref, sizeof ref, "%.*g", p, (double)f);
        if (strtof(ref, NULL) == f)
            break;
    }
    if (sig_digits(out) > p)
        fail_msg("%a printed as '%s' (%d digits); '%s' has %d", (double)f, out, sig_digits(out),
                 ref, p);
}

static void test_specials(void **state)
{
    (void)state;
    const float v[] = {0.0f, -0.0f, 1.0f, -1.0f, 0.1f, 0.5f, 1e-45f, -1e-45f, FLT_MIN,
                       FLT_MAX, -FLT_MAX, 16777216.0f, 16777217.0f, 1e7f, 1e-5f, 1e-4f,
                       123456.0f, 1234567.0f, 0.33333334f, 3.4028235e38f, 1e38f, 9.999999e-5f,
                       100000.0f, 999999.94f, 2.5e-8f};
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++)
        check_one(v[i]);
    char out[JNUM_FLOAT_MAX];
    jnum_format_float(out, -0.0f);
    assert_string_equal(out, "-0");
    jnum_format_float(out, 0.1f);
    assert_string_equal(out, "0.1");
    jnum_format_float(out, 1e7f);
    assert_string_equal(out, "1e+07");
    jnum_format_float(out, 100000.0f);
    assert_string_equal(out, "100000");
    jnum_format_float(out, 2.5e-8f);
    assert_string_equal(out, "2.5e-08");
    jnum_format_float(out, 1e-4f);
    assert_string_equal(out, "0.0001");
}

static void test_stride_through_all_floats(void **state)
{
    (void)state;
    /* About 1.1 million patterns: every 3877th (a prime, so every exponent and many
     * mantissa patterns are visited), both signs. */
    for (uint64_t b = 0; b < 0x7f800000u; b += 3877) {
        uint32_t u = (uint32_t)b;
        float f;
        memcpy(&f, &u, 4);
        check_one(f);
        check_one(-f);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_specials),
        cmocka_unit_test(test_stride_through_all_floats),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
