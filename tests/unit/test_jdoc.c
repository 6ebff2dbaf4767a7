/*
 * Tests of the OIP codec's JSON reader (oipjson/jdoc.h).
 *
 * - Numbers: jnum_float/jnum_double must give the same bits as strtof/strtod
 *   for edge cases, for seeded random JSON numbers, and for decimals lying
 *   exactly halfway between two adjacent floats or doubles (and just beside
 *   them); through a parsed document, jdoc_float/jdoc_double must report
 *   JNUM_RANGE exactly where the C library overflows.
 * - The integer accessors at the limits of int64 and uint64.
 * - The parser against jansson as the reference: hand-written documents and
 *   seeded random mutations of valid ones must be accepted by both or by
 *   neither, and when both accept they must read as the same tree. The token
 *   links that callers iterate with are checked on every accepted document.
 * - Error messages with their line and column, the nesting limit, and that
 *   no byte past the length argument is read.
 *
 * The random parts use fixed seeds, printed with any failure; setting
 * JDOC_TEST_SEED runs them with another one.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "jdoc.h"

/* ---- helpers ---- */

/* splitmix64: small, fast and the same on every platform. */
struct rng {
    uint64_t s;
};

static uint64_t rng_next(struct rng *r)
{
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint32_t rng_below(struct rng *r, uint32_t n)
{
    return (uint32_t)(rng_next(r) % n);
}

static uint64_t test_seed(uint64_t fallback)
{
    const char *env = getenv("JDOC_TEST_SEED");
    return env && *env ? strtoull(env, NULL, 0) : fallback;
}

/* What the running check is about (origin and input), for failure messages. */
static char g_ctx[1024];

/* Writes `s` escaped the way a C literal would be, shortened if long. */
static void show(char *out, size_t cap, const char *s, size_t n)
{
    size_t o = 0;
    const size_t shown = 360;
    for (size_t i = 0; i < n && i < shown && o + 8 < cap; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\')
            o += (size_t)snprintf(out + o, cap - o, "\\%c", c);
        else if (c == '\n')
            o += (size_t)snprintf(out + o, cap - o, "\\n");
        else if (c < 0x20 || c >= 0x7f)
            o += (size_t)snprintf(out + o, cap - o, "\\x%02x", c);
        else
            out[o++] = (char)c;
    }
    if (n > shown && o + 40 < cap)
        o += (size_t)snprintf(out + o, cap - o, "... (%zu bytes)", n);
    out[o < cap ? o : cap - 1] = 0;
}

static void set_ctx(const char *origin, const char *s, size_t n)
{
    char shown[700];
    show(shown, sizeof shown, s, n);
    snprintf(g_ctx, sizeof g_ctx, "%s: \"%s\"", origin, shown);
}

/*
 * A copy of exactly n bytes with nothing after it, so that the address
 * sanitizer reports any read past the length the reader was given.
 */
static char *dup_exact(const char *s, size_t n)
{
    char *p = malloc(n ? n : 1);
    if (!p)
        fail_msg("out of memory");
    memcpy(p, s, n);
    return p;
}

static uint32_t fbits(float f)
{
    uint32_t b;
    memcpy(&b, &f, sizeof b);
    return b;
}

static uint64_t dbits(double d)
{
    uint64_t b;
    memcpy(&b, &d, sizeof b);
    return b;
}

/* ---- 1. numbers against the C library ---- */

/* How many numbers went through check_number, for the summary line. */
static unsigned long g_numbers_checked;

/*
 * `s` must be a valid JSON number. Compares the bits of jnum_float/jnum_double
 * with strtof/strtod, then reads it again as a one-number document.
 */
static void check_number(const char *s, const char *origin)
{
    size_t n = strlen(s);
    char *end;
    set_ctx(origin, s, n);
    float fw = strtof(s, &end);
    if (end != s + n)
        fail_msg("%s: the test built a number strtof does not read whole", g_ctx);
    double dw = strtod(s, NULL);

    char *t = dup_exact(s, n);
    float fg = jnum_float(t, n);
    double dg = jnum_double(t, n);
    if (fbits(fg) != fbits(fw))
        fail_msg("%s: jnum_float gives %a (0x%08" PRIx32 "), strtof gives %a (0x%08" PRIx32 ")",
                 g_ctx, (double)fg, fbits(fg), (double)fw, fbits(fw));
    if (dbits(dg) != dbits(dw))
        fail_msg("%s: jnum_double gives %a (0x%016" PRIx64 "), strtod gives %a (0x%016" PRIx64 ")",
                 g_ctx, dg, dbits(dg), dw, dbits(dw));

    /* Through a document, an infinite result must come back as JNUM_RANGE. */
    struct jdoc d;
    struct cerr e = {0};
    if (jdoc_parse(&d, t, n, &e) != CORRAL_OK)
        fail_msg("%s: not accepted as a document: %s", g_ctx, e.msg);
    assert_int_equal(jdoc_type(&d, 0), JT_NUMBER);
    float f = 0;
    double v = 0;
    int rf = jdoc_float(&d, 0, &f), rd = jdoc_double(&d, 0, &v);
    if (isinf(fw) ? rf != JNUM_RANGE : rf != JNUM_OK || fbits(f) != fbits(fw))
        fail_msg("%s: jdoc_float returns %d with %a, strtof gives %a", g_ctx, rf, (double)f,
                 (double)fw);
    if (isinf(dw) ? rd != JNUM_RANGE : rd != JNUM_OK || dbits(v) != dbits(dw))
        fail_msg("%s: jdoc_double returns %d with %a, strtod gives %a", g_ctx, rd, v, dw);
    jdoc_free(&d);
    free(t);
    g_numbers_checked++;
}

static void test_number_edges(void **state)
{
    static const char *const edges[] = {
        "0", "-0", "0.0", "-0.0", "0e0", "0E+10", "-0e-10", "0.000e999", "-0.0e-999",
        /* Float subnormals and the smallest float, with ties that round to zero or up. */
        "1e-45", "1.4e-45", "1.401298464324817e-45", "7e-46", "7.006492321624085e-46",
        "7.0064923216240862e-46", "7.006492321624087e-46", "1.1754942e-38",
        "1.1754943508222875e-38", "1.17549435e-38",
        /* The top of the float range: FLT_MAX, the overflow threshold, and past it. */
        "3.4028234e38", "3.4028235e38", "3.4028236e38",
        "3.40282346638528859811704183484516925440e38",
        "3.40282356779733661637539395458142568447e38",
        "3.40282356779733661637539395458142568448e38",
        "340282356779733661637539395458142568448", "340282356779733661637539395458142568449",
        "3402823466385288598e20", "3402823567797336616e20", "3402823567797336617e20", "1e38",
        "1e39",
        "-3.4028236e38",
        /* Doubles: 2^53 + 1 and friends, the subnormal range, the top of the range. */
        "9007199254740993", "9007199254740992", "9007199254740995", "9007199254740993.0",
        "9007199254740993e0", "900719925474099.3e1", "18014398509481985", "0.1", "0.2", "0.3",
        "1e23", "8.589973e9", "2.2250738585072011e-308", "2.2250738585072014e-308",
        "4.9e-324", "5e-324", "2.4703282292062327e-324", "2.4703282292062328e-324", "1e-324",
        "1.7976931348623157e308", "1.7976931348623158e308", "1.7976931348623159e308", "1e308",
        "1e309", "-1e309", "1e-400", "-1e-400", "1e400", "-1e400", "1e999999999",
        "1e-999999999", "0.00000000000000000000000000001e29",
        /* 17, 18, 19, 20 and 25 significant digits, around where the reader stops keeping them. */
        "12345678901234567", "123456789012345678", "1234567890123456789", "12345678901234567890",
        "1234567890123456789012345", "9999999999999999999", "99999999999999999999",
        "18446744073709551615", "18446744073709551616", "10000000000000000000000000000000",
        "1000000000000000000000000000000.0000000", "0.1234567890123456789012345",
        "1.2345678901234567890123456e-10", "0.000000000000000000000000000000000001",
        "1.00000000000000000001", "1.000000000000000000001e5", "999999999999999999999e-2",
        "1e27", "1e28", "1e-27", "1e-28", "9999999999999999999e27", "9999999999999999999e-27",
        "9999999999999999999e28", "9999999999999999999e-28", "123456789e27", "123456789e-27",
        "4.35", "2.5e-8", "1e-7", "1E+0", "1e007", "1E-0", "-123.456e-007", "5e-1", "25e-2",
        "0.5", "1.5", "2.5", "16777217", "16777216", "16777219", "33554435", "8388608.5",
        "8388609.5",
        /* Exponents beyond 16 bits, some of which wrap into the fast range if truncated. */
        "1e65536", "1e65537", "1.5e65539", "1e-65536", "-1e-65535", "1e32767", "1e32768",
        "1e-32768", "1e-32769", "1e131072", "1e4294967296", "1e-4294967297",
        "1e18446744073709551617",
        "1e000000000000000000000000000000000007", "0.0000000000000000000000000000000000001e65573",
        /* Its 64-bit quotient rounds onto a double tie: the fast path must notice. */
        "8.4669007638239", "-8.4669007638239E0",
    };
    for (size_t i = 0; i < sizeof edges / sizeof *edges; i++)
        check_number(edges[i], "edge case");

    /* Mantissas swept through exponents around the fast path's limit of 10^27. */
    static const char *const mant[] = {
        "1", "3", "7", "17", "25", "2.5", "5", "123456789", "8388609", "16777217",
        "9007199254740993", "1234567890123456789", "9999999999999999999", "4.9406564584124654",
        "123456789012345678901234567890", "-1", "-9007199254740993", "0.000123",
    };
    char buf[128];
    for (size_t i = 0; i < sizeof mant / sizeof *mant; i++) {
        for (int e = -30; e <= 30; e++) {
            snprintf(buf, sizeof buf, "%se%d", mant[i], e);
            check_number(buf, "exponent sweep");
        }
    }

    /* Long mantissas go through a heap copy on the slow path. */
    static char longnum[4200];
    memset(longnum, 0, sizeof longnum);
    longnum[0] = '1';
    memset(longnum + 1, '0', 799);
    check_number(longnum, "800 digits");
    memcpy(longnum + 800, "1e-790", 7);
    check_number(longnum, "801 digits and an exponent");
    longnum[0] = '0';
    longnum[1] = '.';
    memset(longnum + 2, '0', 4000);
    memcpy(longnum + 4002, "17e4010", 8);
    check_number(longnum, "4000 leading zeros");
    memcpy(longnum, "2.", 2);
    for (int i = 2; i < 4002; i++)
        longnum[i] = (char)('0' + i % 10);
    memcpy(longnum + 4002, "e-300", 6);
    check_number(longnum, "4000 fraction digits");
}

/*
 * Writes a random JSON number: a sign, 1 to 25 significant digits, maybe a
 * fraction (with leading zeros when the integer part is 0) and maybe an
 * exponent from -60 to 60, itself possibly written with a sign and leading zeros.
 */
static void random_json_number(struct rng *r, char *out, size_t cap)
{
    char dig[26];
    size_t p = 0;
    if (rng_below(r, 2))
        out[p++] = '-';
    if (rng_below(r, 64) == 0) {
        /* Zeros in their many spellings. */
        static const char *const zeros[] = {"0", "0.0", "0.000", "0e5", "0.0E-60", "0e+0"};
        snprintf(out + p, cap - p, "%s", zeros[rng_below(r, 6)]);
        return;
    }
    int k = 1 + (int)rng_below(r, 25);
    for (int i = 0; i < k; i++)
        dig[i] = (char)('0' + rng_below(r, 10));
    dig[0] = (char)('1' + rng_below(r, 9));
    /* Trailing zeros can be dropped by the reader without losing exactness. */
    if (rng_below(r, 4) == 0)
        for (int i = k - (int)rng_below(r, (uint32_t)k); i < k; i++)
            dig[i] = '0';
    int ip = (int)rng_below(r, (uint32_t)k + 1); /* digits before the point */
    if (ip == 0) {
        out[p++] = '0';
    } else {
        memcpy(out + p, dig, (size_t)ip);
        p += (size_t)ip;
    }
    if (ip < k) {
        out[p++] = '.';
        for (int z = ip == 0 ? (int)rng_below(r, 8) : 0; z > 0; z--)
            out[p++] = '0';
        memcpy(out + p, dig + ip, (size_t)(k - ip));
        p += (size_t)(k - ip);
    } else if (rng_below(r, 4) == 0) {
        out[p++] = '.';
        for (int z = 1 + (int)rng_below(r, 3); z > 0; z--)
            out[p++] = '0';
    }
    if (rng_below(r, 2)) {
        out[p++] = rng_below(r, 2) ? 'e' : 'E';
        static const char *const signs[] = {"", "+", "-"};
        const char *sign = signs[rng_below(r, 3)];
        const char *lead = rng_below(r, 8) == 0 ? "0" : "";
        p += (size_t)snprintf(out + p, cap - p, "%s%s%u", sign, lead, rng_below(r, 61));
    }
    out[p] = 0;
}

static void test_number_random(void **state)
{
    uint64_t seed = test_seed(0x6a646f632d6e756dull);
    struct rng r = {seed};
    char buf[128], origin[96];
    const int count = 200000;
    for (int i = 0; i < count; i++) {
        random_json_number(&r, buf, sizeof buf);
        snprintf(origin, sizeof origin, "random number %d (seed 0x%" PRIx64 ")", i, seed);
        check_number(buf, origin);
    }
}

/* A decimal digits × 10^exp; the digits have no leading or trailing zeros. */
struct dec {
    char d[1100];
    int len, exp;
};

static void dec_strip(struct dec *x)
{
    while (x->len > 1 && x->d[x->len - 1] == '0') {
        x->len--;
        x->exp++;
    }
    x->d[x->len] = 0;
}

/* Reads printf's "%.*e" output; returns how many trailing zeros it had. */
static int dec_from_printf(struct dec *x, const char *s)
{
    x->len = 0;
    for (; *s && *s != 'e'; s++)
        if (*s >= '0' && *s <= '9')
            x->d[x->len++] = *s;
    x->exp = atoi(s + 1) - (x->len - 1);
    int before = x->len;
    dec_strip(x);
    return before - x->len;
}

/* Adds one unit of the last digit, or takes one away; 0 when nothing is left. */
static int dec_add_unit(struct dec *x, int sign)
{
    if (sign < 0) {
        int i = x->len - 1;
        while (x->d[i] == '0')
            x->d[i--] = '9';
        x->d[i]--;
        if (x->d[0] == '0' && x->len > 1)
            memmove(x->d, x->d + 1, (size_t)x->len--);
    } else {
        int i = x->len - 1;
        while (i >= 0 && x->d[i] == '9')
            x->d[i--] = '0';
        if (i >= 0) {
            x->d[i]++;
        } else {
            memmove(x->d + 1, x->d, (size_t)x->len);
            x->d[0] = '1';
            x->len++;
        }
    }
    dec_strip(x);
    return !(x->len == 1 && x->d[0] == '0');
}

/*
 * Writes x as a JSON number in one of three spellings picked at random:
 * "DIGITSeEXP", scientific "D.IGITSeEXP", or positional with a decimal point.
 */
static void dec_format(struct rng *r, const struct dec *x, int neg, char *out, size_t cap)
{
    size_t p = 0;
    const char *ech = rng_below(r, 2) ? "e" : "E";
    int pos = x->len + x->exp; /* digits before the decimal point */
    if (neg)
        out[p++] = '-';
    switch (rng_below(r, 3)) {
    case 0:
        snprintf(out + p, cap - p, "%s%s%d", x->d, ech, x->exp);
        return;
    case 2:
        if (x->exp >= 0 && pos <= 45) {
            memcpy(out + p, x->d, (size_t)x->len);
            p += (size_t)x->len;
            memset(out + p, '0', (size_t)x->exp);
            out[p + (size_t)x->exp] = 0;
            return;
        }
        if (x->exp < 0 && pos > 0) {
            snprintf(out + p, cap - p, "%.*s.%s", pos, x->d, x->d + pos);
            return;
        }
        if (x->exp < 0 && pos > -30) {
            memcpy(out + p, "0.", 2);
            p += 2;
            memset(out + p, '0', (size_t)-pos);
            p += (size_t)-pos;
            snprintf(out + p, cap - p, "%s", x->d);
            return;
        }
        /* Too many zeros to write out: fall back to scientific. */
        /* fall through */
    default:
        if (x->len == 1)
            snprintf(out + p, cap - p, "%c%s%d", x->d[0], ech, pos - 1);
        else
            snprintf(out + p, cap - p, "%c.%s%s%+d", x->d[0], x->d + 1, ech, pos - 1);
        return;
    }
}

/*
 * Checks x and its neighbours: one unit of the last digit above and below,
 * and one unit of a further digit above and below (closer still).
 */
static void check_dec_variants(struct rng *r, const struct dec *x, const char *origin)
{
    static char buf[1200];
    static struct dec y;
    char what[160];
    for (int v = 0; v < 5; v++) {
        y = *x;
        int keep = 1;
        if (v == 1 || v == 2) {
            keep = dec_add_unit(&y, v == 1 ? 1 : -1);
        } else if (v >= 3) {
            y.d[y.len++] = '0';
            y.d[y.len] = 0;
            y.exp--;
            keep = dec_add_unit(&y, v == 3 ? 1 : -1);
        }
        if (!keep)
            continue;
        dec_format(r, &y, (int)rng_below(r, 2), buf, sizeof buf);
        static const char *const names[] = {"exact", "+1 last digit", "-1 last digit",
                                            "+1 next digit", "-1 next digit"};
        snprintf(what, sizeof what, "%.150s (%s)", origin, names[v]);
        check_number(buf, what);
    }
}

/*
 * x cut or padded to 19 significant digits, then moved by k units of the
 * last digit for k from 1 to 10000: decimals the fast paths read whole, at
 * distances from x between about 10^-19 and 10^-14 of its size, which brackets
 * the few double ulps of error the float path allows for.
 */
static void check_19_digit_neighbours(struct rng *r, const struct dec *x, const char *origin)
{
    static const uint64_t steps[] = {1, 2, 3, 5, 10, 30, 100, 300, 1000, 3000, 10000};
    char digits[20], buf[64], what[200];
    int exp = x->exp + x->len - 19;
    memset(digits, '0', 19);
    memcpy(digits, x->d, (size_t)(x->len < 19 ? x->len : 19));
    digits[19] = 0;
    uint64_t w = strtoull(digits, NULL, 10);
    for (size_t i = 0; i < sizeof steps / sizeof *steps; i++) {
        for (int sign = -1; sign <= 1; sign += 2) {
            uint64_t v = sign < 0 ? w - steps[i] : w + steps[i];
            snprintf(buf, sizeof buf, "%s%" PRIu64 "e%d", rng_below(r, 2) ? "-" : "", v, exp);
            snprintf(what, sizeof what, "%s (19 digits, %+d)", origin, sign * (int)steps[i]);
            check_number(buf, what);
        }
    }
}

/* Random finite positive float bits; `lo`..`hi` bound the biased exponent. */
static float random_float(struct rng *r, unsigned lo, unsigned hi)
{
    uint32_t e = lo + rng_below(r, hi - lo + 1);
    uint32_t b = (e << 23) | (uint32_t)(rng_next(r) & 0x7fffff);
    float f;
    memcpy(&f, &b, sizeof f);
    return f;
}

static double random_double(struct rng *r, unsigned lo, unsigned hi)
{
    uint64_t e = lo + rng_below(r, hi - lo + 1);
    uint64_t b = (e << 52) | (rng_next(r) & 0xfffffffffffffull);
    double d;
    memcpy(&d, &b, sizeof d);
    return d;
}

static void test_number_midpoints(void **state)
{
    uint64_t seed = test_seed(0x6d6964706f696e74ull);
    struct rng r = {seed};
    static struct dec x;
    static char buf[1200];
    char origin[160];

    /*
     * Float midpoints: f and its successor are doubles, so is their mean, and
     * printf writes a double exactly given enough digits (at most 113 here).
     * Half the floats come from the range where the midpoint has at most 19
     * digits, which the fast path reads exactly and must notice as a tie.
     */
    for (int i = 0; i < 6000; i++) {
        float f = (i & 1) ? random_float(&r, 0, 254) : random_float(&r, 127 + 7, 127 + 62);
        if (f == FLT_MAX)
            continue;
        float g = nextafterf(f, INFINITY);
        double mid = ((double)f + (double)g) / 2;
        snprintf(buf, sizeof buf, "%.120e", mid);
        if (dec_from_printf(&x, buf) < 5)
            fail_msg("float midpoint %a printed as %s is not exact", mid, buf);
        float back = strtof(buf, NULL);
        if (back != f && back != g)
            fail_msg("the midpoint %s of %a and %a reads back as %a", buf, (double)f, (double)g,
                     (double)back);
        snprintf(origin, sizeof origin, "float midpoint %d of %a (seed 0x%" PRIx64 ")", i,
                 (double)f, seed);
        check_dec_variants(&r, &x, origin);
        check_19_digit_neighbours(&r, &x, origin);
    }

    /*
     * Double midpoints: the mean of a double and its successor needs 54 bits,
     * which long double holds exactly where it is wider than double (x87,
     * quad); its decimal needs up to 767 digits.
     */
    if (LDBL_MANT_DIG < 54) {
        print_message("jdoc: long double is no wider than double here; double midpoints skipped\n");
        return;
    }
    for (int i = 0; i < 3000; i++) {
        double d;
        switch (i % 4) {
        case 0: d = random_double(&r, 0, 2046); break;
        case 1: d = random_double(&r, 1023 + 50, 1023 + 66); break;
        case 2: d = random_double(&r, 1023 - 10, 1023 + 90); break;
        default: d = random_double(&r, 0, 1); break;
        }
        if (d == DBL_MAX)
            continue;
        double g = nextafter(d, INFINITY);
        long double mid = ((long double)d + (long double)g) / 2;
        snprintf(buf, sizeof buf, "%.800Le", mid);
        if (dec_from_printf(&x, buf) < 5)
            fail_msg("double midpoint of %a printed with too few digits", d);
        double back = strtod(buf, NULL);
        if (back != d && back != g)
            fail_msg("the midpoint %s of %a and %a reads back as %a", buf, d, g, back);
        snprintf(origin, sizeof origin, "double midpoint %d of %a (seed 0x%" PRIx64 ")", i, d,
                 seed);
        check_dec_variants(&r, &x, origin);
        check_19_digit_neighbours(&r, &x, origin);
    }
}

/*
 * Ties written with few digits: O × 2^s with O odd and one bit wider than the
 * significand (25 bits for float, 54 for double) lies halfway between two
 * neighbours. Choosing O = 5^j × q gives q × 2^(s-j) × 10^j, a short decimal
 * with a positive exponent; O × 5^t × 10^-t gives short ones with a negative
 * exponent. These are the inputs where the fast path must step aside.
 */
static void check_short_ties(struct rng *r, int bits, const char *kind)
{
    const uint64_t lo = 1ull << (bits - 1), hi = (1ull << bits) - 1;
    const uint64_t limit = 10000000000000000000ull; /* 10^19 */
    static struct dec x;
    char origin[160];
    uint64_t p5 = 1;
    for (int j = 0; p5 <= hi; j++, p5 *= 5) {
        uint64_t qlo = (lo + p5 - 1) / p5, qhi = hi / p5;
        for (int pick = 0; pick < 6; pick++) {
            uint64_t q = pick == 0 ? qlo : pick == 1 ? qhi : qlo + rng_next(r) % (qhi - qlo + 1);
            q |= 1;
            if (q > qhi)
                q -= 2;
            if (q < qlo)
                continue;
            /* q × 2^t × 10^j for growing t. */
            for (uint64_t w = q, t = 0; w < limit / 2 && t < 70; w *= 2, t++) {
                x.len = snprintf(x.d, sizeof x.d, "%" PRIu64, w);
                x.exp = j;
                dec_strip(&x);
                snprintf(origin, sizeof origin, "%s tie %" PRIu64 "*2^%d*10^%d", kind, q,
                         (int)t, j);
                check_dec_variants(r, &x, origin);
            }
            /* (q × 5^j) × 5^t × 10^-t. */
            uint64_t w = q * p5;
            for (int t = 1; w <= limit / 5; t++) {
                w *= 5;
                x.len = snprintf(x.d, sizeof x.d, "%" PRIu64, w);
                x.exp = -t;
                dec_strip(&x);
                snprintf(origin, sizeof origin, "%s tie %" PRIu64 "/2^%d", kind, q * p5, t);
                check_dec_variants(r, &x, origin);
            }
        }
    }
}

/*
 * Near-ties: decimals of at most 19 digits (so the fast path takes them) that
 * are not ties but lie within 2^-65 of one, M = m × 2^j with m odd and `bits`
 * wide. A fast path's wider intermediate (x87 or double) then rounds onto M
 * exactly, and only its tie check stops the second rounding going astray.
 * Written either as w / 10^e, with w × 2^s close to m × 5^e, or as w × 10^e,
 * with w × 5^e close to m × 2^u. Needs 128-bit integers (GCC, Clang).
 */
static void check_near_ties(struct rng *r, int bits, const char *kind)
{
    typedef unsigned __int128 u128;
    const u128 big = 10000000000000000000ull; /* 10^19 */
    static struct dec x;
    char origin[160];
    const int want = 500;
    int found = 0;
    for (int tries = 0; found < want && tries < 200000; tries++) {
        int up = (int)rng_below(r, 2);
        /* Above 10^19 × 10^19 a float would overflow. */
        int e = 1 + (int)rng_below(r, bits == 25 && up ? 19 : 27);
        u128 p5 = 1, w, rem, n;
        for (int i = 0; i < e; i++)
            p5 *= 5;
        u128 m = ((u128)1 << (bits - 1)) | (rng_next(r) & ((1ull << (bits - 1)) - 1)) | 1;
        if (!up) {
            n = m * p5;
            int sh = 0;
            while ((n >> sh) >= big)
                sh++;
            if (sh == 0)
                continue;
            w = (n + ((u128)1 << (sh - 1))) >> sh;
            rem = n > (w << sh) ? n - (w << sh) : (w << sh) - n;
        } else {
            int u = 0;
            while ((m << u) / p5 < big / 2)
                u++;
            n = m << u;
            w = (n + p5 / 2) / p5;
            rem = n > w * p5 ? n - w * p5 : w * p5 - n;
        }
        /* Not a tie itself, yet closer to one than 2^-65 of its size. */
        if (w >= big || rem == 0 || rem >= (n >> 65))
            continue;
        x.len = snprintf(x.d, sizeof x.d, "%" PRIu64, (uint64_t)w);
        x.exp = up ? e : -e;
        dec_strip(&x);
        snprintf(origin, sizeof origin, "%s near-tie %d", kind, found);
        check_dec_variants(r, &x, origin);
        found++;
    }
    if (found < want)
        fail_msg("only %d %s near-ties found; the search is broken", found, kind);
}

static void test_number_ties(void **state)
{
    uint64_t seed = test_seed(0x7469657374696573ull);
    struct rng r = {seed};
    check_short_ties(&r, 25, "float");
    check_short_ties(&r, 54, "double");
    check_near_ties(&r, 25, "float");
    check_near_ties(&r, 54, "double");
    print_message("jdoc: %lu numbers compared with strtof/strtod\n", g_numbers_checked);
}

/* ---- 2. integer accessors ---- */

static void test_integers(void **state)
{
    static const struct {
        const char *text;
        int rc64;
        int64_t v64;
        int rcu;
        uint64_t vu;
    } cases[] = {
        {"0", JNUM_OK, 0, JNUM_OK, 0},
        {"-0", JNUM_OK, 0, JNUM_OK, 0},
        {"1", JNUM_OK, 1, JNUM_OK, 1},
        {"-1", JNUM_OK, -1, JNUM_RANGE, 0},
        {"9223372036854775807", JNUM_OK, INT64_MAX, JNUM_OK, 9223372036854775807ull},
        {"-9223372036854775808", JNUM_OK, INT64_MIN, JNUM_RANGE, 0},
        {"-9223372036854775809", JNUM_RANGE, 0, JNUM_RANGE, 0},
        {"9223372036854775808", JNUM_RANGE, 0, JNUM_OK, 9223372036854775808ull},
        {"18446744073709551615", JNUM_RANGE, 0, JNUM_OK, UINT64_MAX},
        {"18446744073709551616", JNUM_RANGE, 0, JNUM_RANGE, 0},
        {"99999999999999999999", JNUM_RANGE, 0, JNUM_RANGE, 0},
        {"-18446744073709551616", JNUM_RANGE, 0, JNUM_RANGE, 0},
        {"1.0", JNUM_NOT_INTEGER, 0, JNUM_NOT_INTEGER, 0},
        {"1e2", JNUM_NOT_INTEGER, 0, JNUM_NOT_INTEGER, 0},
        {"-0.0", JNUM_NOT_INTEGER, 0, JNUM_NOT_INTEGER, 0},
        {"\"5\"", JNUM_NOT_NUMBER, 0, JNUM_NOT_NUMBER, 0},
        {"true", JNUM_NOT_NUMBER, 0, JNUM_NOT_NUMBER, 0},
        {"null", JNUM_NOT_NUMBER, 0, JNUM_NOT_NUMBER, 0},
        {"[1]", JNUM_NOT_NUMBER, 0, JNUM_NOT_NUMBER, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        const char *s = cases[i].text;
        struct jdoc d;
        struct cerr e = {0};
        char *t = dup_exact(s, strlen(s));
        if (jdoc_parse(&d, t, strlen(s), &e))
            fail_msg("%s: %s", s, e.msg);
        /* A failing accessor must leave its output alone. */
        int64_t v = 0x5a5a5a5a;
        uint64_t u = 0xa5a5a5a5;
        int rc = jdoc_int64(&d, 0, &v);
        if (rc != cases[i].rc64 || (rc == JNUM_OK ? v != cases[i].v64 : v != 0x5a5a5a5a))
            fail_msg("jdoc_int64(%s) returns %d with %" PRId64 ", expected %d with %" PRId64, s, rc,
                     v, cases[i].rc64, cases[i].v64);
        rc = jdoc_uint64(&d, 0, &u);
        if (rc != cases[i].rcu || (rc == JNUM_OK ? u != cases[i].vu : u != 0xa5a5a5a5))
            fail_msg("jdoc_uint64(%s) returns %d with %" PRIu64 ", expected %d with %" PRIu64, s,
                     rc, u, cases[i].rcu, cases[i].vu);
        if (cases[i].rc64 == JNUM_NOT_NUMBER) {
            double dv = 7;
            float fv = 7;
            assert_int_equal(jdoc_double(&d, 0, &dv), JNUM_NOT_NUMBER);
            assert_int_equal(jdoc_float(&d, 0, &fv), JNUM_NOT_NUMBER);
            assert_true(dv == 7 && fv == 7);
        }
        jdoc_free(&d);
        free(t);
    }
}

/* ---- 3. the parser against jansson ---- */

enum { JANSSON_FLAGS = JSON_DECODE_ANY | JSON_ALLOW_NUL };

/* Checks the `next` links, element counts and the iteration helpers. */
static void check_links(const struct jdoc *d)
{
    if (d->n == 0 || jdoc_end(d, 0) != d->n)
        fail_msg("%s: the root's subtree ends at %u of %zu tokens", g_ctx,
                 d->n ? jdoc_end(d, 0) : 0, d->n);
    static const char *const names[] = {"null", "a boolean", "a boolean", "a number",
                                        "a string", "an array", "an object"};
    for (uint32_t i = 0; i < d->n; i++) {
        uint32_t end = jdoc_end(d, i);
        if (jdoc_type(d, i) > JT_OBJECT || strcmp(jdoc_type_name(d, i), names[jdoc_type(d, i)]))
            fail_msg("%s: token %u has type %d named %s", g_ctx, i, jdoc_type(d, i),
                     jdoc_type_name(d, i));
        if (end <= i || end > d->n)
            fail_msg("%s: token %u ends at %u of %zu", g_ctx, i, end, d->n);
        enum jtype t = jdoc_type(d, i);
        if (t == JT_ARRAY) {
            size_t count = 0;
            uint32_t k = i + 1;
            for (; k < end; k = jdoc_skip(d, k)) {
                if (jdoc_at(d, i, count) != k)
                    fail_msg("%s: jdoc_at(%u, %zu) is not token %u", g_ctx, i, count, k);
                count++;
            }
            if (k != end || count != jdoc_size(d, i))
                fail_msg("%s: array %u has size %zu but %zu elements reach %u of %u", g_ctx, i,
                         jdoc_size(d, i), count, k, end);
            if (jdoc_at(d, i, count) != JDOC_NONE)
                fail_msg("%s: jdoc_at past the end of array %u", g_ctx, i);
        } else if (t == JT_OBJECT) {
            size_t count = 0;
            uint32_t k = i + 1, it = jdoc_first_key(d, i);
            for (; k < end; k = jdoc_skip(d, k + 1)) {
                if (jdoc_type(d, k) != JT_STRING || k + 1 >= end || it != k)
                    fail_msg("%s: member %zu of object %u is not a key at token %u", g_ctx, count,
                             i, k);
                it = jdoc_next_key(d, i, it);
                count++;
            }
            if (k != end || it != JDOC_NONE || count != jdoc_size(d, i))
                fail_msg("%s: object %u has size %zu but %zu members reach %u of %u", g_ctx, i,
                         jdoc_size(d, i), count, k, end);
        } else if (end != i + 1) {
            fail_msg("%s: scalar token %u ends at %u", g_ctx, i, end);
        }
    }
}

static int key_eq(const struct jdoc *d, uint32_t a, uint32_t b)
{
    return jdoc_strlen(d, a) == jdoc_strlen(d, b) &&
           memcmp(jdoc_str(d, a), jdoc_str(d, b), jdoc_strlen(d, a)) == 0;
}

/* Token i of d and jansson's j must be the same value. */
static void same_tree(const struct jdoc *d, uint32_t i, const json_t *j)
{
    enum jtype t = jdoc_type(d, i);
    switch (json_typeof(j)) {
    case JSON_NULL:
    case JSON_TRUE:
    case JSON_FALSE: {
        enum jtype want = json_is_null(j) ? JT_NULL : json_is_true(j) ? JT_TRUE : JT_FALSE;
        if (t != want)
            fail_msg("%s: token %u has type %d, jansson read %d", g_ctx, i, t, json_typeof(j));
        break;
    }
    case JSON_INTEGER: {
        int64_t v = 0;
        double dv = 0;
        json_int_t want = json_integer_value(j);
        if (t != JT_NUMBER || jdoc_int64(d, i, &v) != JNUM_OK || v != want ||
            jdoc_double(d, i, &dv) != JNUM_OK || dv != (double)want)
            fail_msg("%s: token %u reads as %" PRId64 " / %a, jansson read the integer %" PRId64,
                     g_ctx, i, v, dv, (int64_t)want);
        /* Same bits too, apart from "-0", which jansson keeps as the integer 0. */
        if (want != 0 && dbits(dv) != dbits((double)want))
            fail_msg("%s: token %u reads as %a, jansson %a", g_ctx, i, dv, (double)want);
        break;
    }
    case JSON_REAL: {
        int64_t v;
        double dv = 0, want = json_real_value(j);
        if (t != JT_NUMBER || jdoc_int64(d, i, &v) != JNUM_NOT_INTEGER ||
            jdoc_double(d, i, &dv) != JNUM_OK || dbits(dv) != dbits(want))
            fail_msg("%s: token %u reads as %a, jansson read the real %a", g_ctx, i, dv, want);
        break;
    }
    case JSON_STRING: {
        size_t n = json_string_length(j);
        if (t != JT_STRING || jdoc_strlen(d, i) != n ||
            memcmp(jdoc_str(d, i), json_string_value(j), n) != 0 || jdoc_str(d, i)[n] != 0)
            fail_msg("%s: string token %u differs from jansson's (%zu vs %zu bytes)", g_ctx, i,
                     t == JT_STRING ? jdoc_strlen(d, i) : 0, n);
        break;
    }
    case JSON_ARRAY: {
        size_t n = json_array_size(j), k = 0;
        if (t != JT_ARRAY || jdoc_size(d, i) != n)
            fail_msg("%s: token %u is not an array of %zu", g_ctx, i, n);
        for (uint32_t e = i + 1; e < jdoc_end(d, i); e = jdoc_skip(d, e), k++)
            same_tree(d, e, json_array_get(j, k));
        break;
    }
    case JSON_OBJECT: {
        if (t != JT_OBJECT)
            fail_msg("%s: token %u is not an object", g_ctx, i);
        size_t unique = 0;
        for (uint32_t k = jdoc_first_key(d, i); k != JDOC_NONE; k = jdoc_next_key(d, i, k)) {
            /* Only the last member with a given key counts, as in jansson. */
            int last = 1;
            for (uint32_t l = jdoc_next_key(d, i, k); l != JDOC_NONE; l = jdoc_next_key(d, i, l))
                if (key_eq(d, k, l))
                    last = 0;
            const char *key = jdoc_str(d, k);
            size_t kl = jdoc_strlen(d, k);
            int plain = memchr(key, 0, kl) == NULL;
            if (plain && (jdoc_get(d, i, key) == k + 1) != last)
                fail_msg("%s: jdoc_get(\"%s\") does not pick the last member with that key", g_ctx,
                         key);
            if (!last)
                continue;
            unique++;
            const json_t *v = json_object_getn(j, key, kl);
            if (!v)
                fail_msg("%s: jansson has no member \"%s\"", g_ctx, key);
            same_tree(d, k + 1, v);
        }
        if (unique != json_object_size(j))
            fail_msg("%s: object token %u has %zu distinct keys, jansson %zu", g_ctx, i, unique,
                     json_object_size(j));
        break;
    }
    }
}

/* What jansson refuses by design and jdoc accepts. */
enum { CAUSE_BIG_INT = 1, CAUSE_BIG_REAL = 2, CAUSE_NUL_KEY = 4 };

/*
 * Finds in an accepted document the parts jansson refuses on purpose:
 * integers outside int64, numbers that overflow a double, and keys holding
 * NUL. Writes to `out` the text with each replaced by something harmless of
 * the same length ("0" padded with spaces; "\u0000" becoming "\u0001").
 */
static int neutralise(const struct jdoc *d, const char *text, size_t n, char *out)
{
    int causes = 0;
    memcpy(out, text, n);
    for (uint32_t i = 0; i < d->n; i++) {
        if (jdoc_type(d, i) == JT_NUMBER) {
            int64_t iv;
            double dv;
            int rc = jdoc_int64(d, i, &iv), integer = rc != JNUM_NOT_INTEGER;
            if (integer ? rc == JNUM_RANGE : jdoc_double(d, i, &dv) == JNUM_RANGE) {
                causes |= integer ? CAUSE_BIG_INT : CAUSE_BIG_REAL;
                out[d->tok[i].off] = '0';
                memset(out + d->tok[i].off + 1, ' ', d->tok[i].len - 1);
            }
        } else if (jdoc_type(d, i) == JT_OBJECT) {
            for (uint32_t k = jdoc_first_key(d, i); k != JDOC_NONE; k = jdoc_next_key(d, i, k))
                if (memchr(jdoc_str(d, k), 0, jdoc_strlen(d, k)))
                    causes |= CAUSE_NUL_KEY;
        }
    }
    if (causes & CAUSE_NUL_KEY)
        for (size_t p = 0; p + 6 <= n; p++)
            if (memcmp(out + p, "\\u0000", 6) == 0)
                out[p + 5] = '1';
    return causes;
}

static int jansson_cause(const char *msg)
{
    if (strstr(msg, "too big"))
        return CAUSE_BIG_INT;
    if (strstr(msg, "real number overflow"))
        return CAUSE_BIG_REAL;
    if (strstr(msg, "NUL byte in object key"))
        return CAUSE_NUL_KEY;
    return 0;
}

/* How often the documented differences came up, for the summary line. */
static unsigned long g_neutralised;

/*
 * Parses with both readers and checks they agree (see the header); returns
 * whether jdoc accepted. `retry` allows one pass through neutralise().
 */
static int agree_with_jansson(const char *text, size_t n, int retry)
{
    char *buf = dup_exact(text, n);
    struct jdoc d;
    struct cerr e = {0};
    json_error_t je;
    int rc = jdoc_parse(&d, buf, n, &e);
    /*
     * jansson drops a raw NUL byte that follows a number or a literal (its
     * stream takes a NUL in its one-byte buffer for "empty" after an unget),
     * so it is shown 0x01 instead: JSON forbids both bytes in the same places.
     */
    char *jbuf = dup_exact(text, n);
    for (size_t p = 0; p < n; p++)
        if (jbuf[p] == 0)
            jbuf[p] = 1;
    json_t *j = json_loadb(jbuf, n, JANSSON_FLAGS, &je);
    int accepted = rc == CORRAL_OK;
    if (accepted && !j) {
        int cause = jansson_cause(je.text);
        char *clean = malloc(n ? n : 1);
        assert_non_null(clean);
        int causes = neutralise(&d, buf, n, clean);
        if (!retry || !cause || !(causes & cause))
            fail_msg("%s: jdoc accepts, jansson rejects: %s", g_ctx, je.text);
        g_neutralised++;
        agree_with_jansson(clean, n, 0);
        free(clean);
    } else if (!accepted && j) {
        fail_msg("%s: jdoc rejects (%s), jansson accepts", g_ctx, e.msg);
    } else if (accepted) {
        check_links(&d);
        same_tree(&d, 0, j);
    } else {
        if (rc != CORRAL_EINVAL || d.tok || d.n || !strstr(e.msg, " at line ") ||
            !strstr(e.msg, " column "))
            fail_msg("%s: rejected with code %d and \"%s\"", g_ctx, rc, e.msg);
    }
    json_decref(j);
    jdoc_free(&d);
    free(jbuf);
    free(buf);
    return accepted;
}

struct doc {
    const char *s;
    size_t n;
    int ok; /* whether jdoc must accept it */
};
#define DOC(lit, ok) {lit, sizeof(lit) - 1, ok}

static const struct doc corpus[] = {
    /* Valid. */
    DOC("{}", 1),
    DOC("[]", 1),
    DOC("0", 1),
    DOC("-0", 1),
    DOC("-0.0", 1),
    DOC("\"x\"", 1),
    DOC("\"\"", 1),
    DOC("true", 1),
    DOC("false", 1),
    DOC("null", 1),
    DOC(" \t\r\n[ 1 , 2 ]\n ", 1),
    DOC("{\"a\":1,\"b\":[true,false,null],\"c\":{\"d\":\"e\"}}", 1),
    DOC("\"\\\"\\\\\\/\\b\\f\\n\\r\\t\"", 1),
    DOC("\"\\u0000\"", 1),
    DOC("[\"a\\u0000b\", \"\\u0000\\u0000\"]", 1),
    DOC("\"\\u00e9\\u4E2D\\uD83D\\uDE00\"", 1),
    DOC("\"\\uDBFF\\uDFFF\\uD800\\uDC00\"", 1),
    DOC("\"\\uD834\\uDD1E\\u002F\\u007f\\u0080\\u07FF\\u0800\\uFFFF\"", 1),
    DOC("\"\xc3\xa9\xe4\xb8\xad\xf0\x9f\x98\x80\xf4\x8f\xbf\xbf\xc2\x80\xef\xbf\xbf\"", 1),
    DOC("\"\x7f\"", 1),
    DOC("[1.5e3, -2E-2, 0.25, 1e+2, 1E-0, 0e0, -0.0e-0]", 1),
    DOC("{\"a\":1,\"a\":2}", 1),
    DOC("{\"a\":1,\"b\":{\"x\":[1]},\"a\":{\"y\":null},\"b\":3}", 1),
    DOC("[[[[[]]]],[[{}]]]", 1),
    DOC("{\"\":\"\"}", 1),
    DOC("[9223372036854775807, -9223372036854775808]", 1),
    DOC("[1 ,\t\n\r 2\r\n,-3e2 , 0.5]", 1),
    DOC("{\"a\":1,\"b\":-2.5e1,\"c\":[3,4]}", 1),
    DOC("[1e-400, -1e-400, 4.9e-324, 2.2250738585072011e-308]", 1),
    DOC("[1.7976931348623157e308, 0.1, 9007199254740993, 9007199254740993.0]", 1),
    DOC("{\"model_name\":\"digits\",\"inputs\":[{\"name\":\"input\",\"shape\":[1,4],"
        "\"datatype\":\"FP32\",\"data\":[0.0,1.5,-2.25,3e-3]}],\"parameters\":{\"x\":true}}",
        1),
    /* Accepted by jdoc, refused by jansson by design (see neutralise()). */
    DOC("[1e400]", 1),
    DOC("-1e309", 1),
    DOC("123456789012345678901234567890", 1),
    DOC("[9223372036854775808, -9223372036854775809]", 1),
    DOC("{\"a\\u0000b\":1}", 1),
    /* Not JSON. */
    DOC("", 0),
    DOC("   \n\t", 0),
    DOC("[", 0),
    DOC("{", 0),
    DOC("[1,2", 0),
    DOC("{\"a\":1", 0),
    DOC("{\"a\"", 0),
    DOC("{\"a\":", 0),
    DOC("\"abc", 0),
    DOC("\"abc\\", 0),
    DOC("[1,]", 0),
    DOC("{\"a\":1,}", 0),
    DOC("[,1]", 0),
    DOC("[1,,2]", 0),
    DOC("[1,\f2]", 0),
    DOC("[1\f,2]", 0),
    DOC("[1,\v2]", 0),
    DOC("[1,2 3]", 0),
    DOC("[1,-]", 0),
    DOC("[1,01]", 0),
    DOC("[1,2.]", 0),
    DOC("[1,2e]", 0),
    DOC("[1,2,]", 0),
    DOC("[1,2", 0),
    DOC("[1,2,", 0),
    DOC("{\"a\":1,2}", 0),
    DOC("{,}", 0),
    DOC("{\"a\" 1}", 0),
    DOC("{\"a\"::1}", 0),
    DOC("{1:2}", 0),
    DOC("{'a':1}", 0),
    DOC("{\"a\":1 \"b\":2}", 0),
    DOC("[1}", 0),
    DOC("{\"a\":1]", 0),
    DOC("01", 0),
    DOC("-01", 0),
    DOC("00", 0),
    DOC("1.", 0),
    DOC(".5", 0),
    DOC("-", 0),
    DOC("+1", 0),
    DOC("1e", 0),
    DOC("1e+", 0),
    DOC("1.e5", 0),
    DOC("0x10", 0),
    DOC("Infinity", 0),
    DOC("-Infinity", 0),
    DOC("NaN", 0),
    DOC("1 2", 0),
    DOC("--1", 0),
    DOC("-.5", 0),
    DOC("tru", 0),
    DOC("nul", 0),
    DOC("True", 0),
    DOC("nulll", 0),
    DOC("falsetrue", 0),
    DOC("\"\x01\"", 0),
    DOC("\"a\tb\"", 0),
    DOC("\"\n\"", 0),
    DOC("\"a\0b\"", 0),
    DOC("[1]\0", 0),
    DOC("\0", 0),
    DOC("\"\\uD800\"", 0),
    DOC("\"\\uDC00\"", 0),
    DOC("\"\\uD800\\u0041\"", 0),
    DOC("\"\\uD800x\"", 0),
    DOC("\"\\uDE00\\uD800\"", 0),
    DOC("\"\\uD800\\uD800\"", 0),
    DOC("\"\\u12\"", 0),
    DOC("\"\\uZZZZ\"", 0),
    DOC("\"\\a\"", 0),
    DOC("\"\\'\"", 0),
    DOC("\"\\U0041\"", 0),
    DOC("\"\\x41\"", 0),
    DOC("\"\x80\"", 0),
    DOC("\"\xc3\"", 0),
    DOC("\"\xc3\x28\"", 0),
    DOC("\"\xff\"", 0),
    DOC("\"\xfe\"", 0),
    DOC("\"\xc0\xaf\"", 0),
    DOC("\"\xc1\xbf\"", 0),
    DOC("\"\xe0\x80\xaf\"", 0),
    DOC("\"\xf0\x80\x80\xaf\"", 0),
    DOC("\"\xed\xa0\x80\"", 0),
    DOC("\"\xed\xbf\xbf\"", 0),
    DOC("\"\xf4\x90\x80\x80\"", 0),
    DOC("\"\xf5\x80\x80\x80\"", 0),
    DOC("\"\xe2\x82\"", 0),
    DOC("[]x", 0),
    DOC("{}}", 0),
    DOC("[]]", 0),
    DOC("1 x", 0),
    DOC("\"a\" \"b\"", 0),
    DOC("\xef\xbb\xbf[]", 0),
    DOC("/* c */ []", 0),
    DOC("'a'", 0),
    DOC("[\xc3\xa9]", 0),
    DOC("[1]\x0b", 0),
    DOC("\f[1]", 0),
};

static void test_corpus(void **state)
{
    char origin[64];
    unsigned long before = g_neutralised;
    for (size_t i = 0; i < sizeof corpus / sizeof *corpus; i++) {
        snprintf(origin, sizeof origin, "corpus entry %zu", i);
        set_ctx(origin, corpus[i].s, corpus[i].n);
        int accepted = agree_with_jansson(corpus[i].s, corpus[i].n, 1);
        if (accepted != corpus[i].ok)
            fail_msg("%s: jdoc %s it", g_ctx, accepted ? "accepts" : "rejects");
    }
    /* The five entries with deliberate differences were each met and set aside. */
    assert_int_equal(g_neutralised - before, 5);
}

static void test_duplicate_keys(void **state)
{
    static const char text[] = "{\"a\":1,\"b\":2,\"a\":3}";
    struct jdoc d;
    struct cerr e = {0};
    json_error_t je;
    assert_int_equal(jdoc_parse(&d, text, sizeof text - 1, &e), CORRAL_OK);
    json_t *j = json_loadb(text, sizeof text - 1, JANSSON_FLAGS, &je);
    assert_non_null(j);
    assert_int_equal(jdoc_size(&d, 0), 3);
    assert_int_equal(json_object_size(j), 2);
    int64_t v = 0;
    assert_int_equal(jdoc_int64(&d, jdoc_get(&d, 0, "a"), &v), JNUM_OK);
    assert_int_equal(v, 3);
    assert_int_equal(json_integer_value(json_object_get(j, "a")), 3);
    assert_int_equal(jdoc_get(&d, 0, "c"), JDOC_NONE);
    assert_int_equal(jdoc_get(&d, 1, "a"), JDOC_NONE);
    json_decref(j);
    jdoc_free(&d);
}

/* Seed documents for the mutations: valid, varied, and small enough to mutate densely. */
static const char *const seeds[] = {
    "{\"a\":1,\"b\":[true,false,null],\"c\":{\"d\":\"e\"}}",
    "[1.5e3,-2E-2,0.25,1e+2,0,-0,123456789,0.000001]",
    "\"\\\"\\\\\\/\\b\\f\\n\\r\\t\\u0041\\u00e9\\uD83D\\uDE00\"",
    "{\"k\\u0001\":\"v\\u0000w\",\"\xc3\xa9\":\"\xe4\xb8\xad\xf0\x9f\x98\x80\"}",
    "[[1,[2,[3,{\"x\":[4,{\"y\":5}]}]]],{}]",
    "{\"model_name\":\"digits\",\"inputs\":[{\"name\":\"input\",\"shape\":[1,4],"
    "\"datatype\":\"FP32\",\"data\":[0.0,1.5,-2.25,3e-3]}]}",
    " { \"a\" : [ 1 , 2 ] , \"a\" : { \"b\" : null } } ",
    "[\"\",\"\\u0000\",{\"\":[]},-0.0e-0,9e99,1E-7]",
    "123",
    "\"abc\"",
};

/* Bytes that matter to a JSON reader, so mutations often make near-misses. */
static const char interesting[] = "{}[],:\"\\ \n\t0123456789.eE+-tfnrlsu/xdD"
                                  "\x00\x01\x1f\x7f\x80\xbf\xc3\xe2\xed\xf0\xf4\xff";

static unsigned char random_byte(struct rng *r)
{
    if (rng_below(r, 2))
        return (unsigned char)interesting[rng_below(r, sizeof interesting - 1)];
    return (unsigned char)rng_next(r);
}

/*
 * Applies one random edit: a byte replaced or bit-flipped, one inserted or
 * deleted, a cut, or a short slice copied elsewhere.
 */
static size_t mutate(struct rng *r, char *b, size_t n, size_t cap)
{
    size_t p = n ? rng_below(r, (uint32_t)n) : 0;
    switch (rng_below(r, 7)) {
    case 0:
        if (n)
            b[p] = (char)random_byte(r);
        return n;
    case 1:
        if (n)
            b[p] = (char)(b[p] ^ (1 << rng_below(r, 8)));
        return n;
    case 2:
    case 3:
        if (n >= cap)
            return n;
        p = rng_below(r, (uint32_t)n + 1);
        memmove(b + p + 1, b + p, n - p);
        b[p] = (char)random_byte(r);
        return n + 1;
    case 4:
        if (!n)
            return n;
        memmove(b + p, b + p + 1, n - p - 1);
        return n - 1;
    case 5:
        return rng_below(r, (uint32_t)n + 1);
    default: {
        /* Copy a short slice elsewhere, which makes structure rather than noise. */
        size_t from = p, len = 1 + rng_below(r, 8);
        if (from + len > n || n + len > cap)
            return n;
        char tmp[8];
        memcpy(tmp, b + from, len);
        size_t to = rng_below(r, (uint32_t)n + 1);
        memmove(b + to + len, b + to, n - to);
        memcpy(b + to, tmp, len);
        return n + len;
    }
    }
}

static void test_mutations(void **state)
{
    uint64_t seed = test_seed(0x6d75746174696f6eull);
    struct rng r = {seed};
    const int count = 30000;
    char b[512], origin[96];
    int accepted = 0;
    unsigned long before = g_neutralised;
    for (int i = 0; i < count; i++) {
        const char *s = seeds[rng_below(&r, sizeof seeds / sizeof *seeds)];
        size_t n = strlen(s);
        memcpy(b, s, n);
        for (int m = 1 + (int)rng_below(&r, 3); m > 0; m--)
            n = mutate(&r, b, n, sizeof b);
        snprintf(origin, sizeof origin, "mutation %d (seed 0x%" PRIx64 ")", i, seed);
        set_ctx(origin, b, n);
        accepted += agree_with_jansson(b, n, 1);
    }
    print_message("jdoc: %d mutated documents, %d accepted by both, %lu after setting aside "
                  "numbers or keys jansson refuses by design\n",
                  count, accepted, g_neutralised - before);
    /* A mutation run that hardly ever stays valid (or always does) would prove little. */
    assert_true(accepted > count / 20);
    assert_true(accepted < count - count / 5);
}

/* Every prefix of a valid document, each in a buffer that ends where it does. */
static void test_prefixes(void **state)
{
    char origin[96];
    for (size_t s = 0; s < sizeof seeds / sizeof *seeds; s++) {
        size_t n = strlen(seeds[s]);
        for (size_t len = 0; len <= n; len++) {
            snprintf(origin, sizeof origin, "prefix of %zu bytes of seed %zu", len, s);
            set_ctx(origin, seeds[s], len);
            int accepted = agree_with_jansson(seeds[s], len, 1);
            if (len == n && !accepted)
                fail_msg("%s: the whole seed is rejected", g_ctx);
        }
    }
}

/* Nesting `depth` levels deep, arrays or objects; the caller frees it. */
static char *nested(int depth, int objects, size_t *n)
{
    size_t open = objects ? 5 : 1, cap = (size_t)depth * (open + 1) + 2;
    char *b = malloc(cap);
    assert_non_null(b);
    size_t p = 0;
    for (int i = 0; i < depth; i++) {
        memcpy(b + p, objects ? "{\"a\":" : "[", open);
        p += open;
    }
    b[p++] = '1';
    for (int i = 0; i < depth; i++)
        b[p++] = objects ? '}' : ']';
    *n = p;
    return b;
}

static void test_depth(void **state)
{
    for (int objects = 0; objects <= 1; objects++) {
        size_t n;
        char *b = nested(JDOC_MAX_DEPTH, objects, &n);
        set_ctx(objects ? "256 nested objects" : "256 nested arrays", b, n);
        if (!agree_with_jansson(b, n, 1))
            fail_msg("%s: rejected", g_ctx);
        free(b);

        /* jansson allows deeper nesting than jdoc, so 257 is checked on its own. */
        b = nested(JDOC_MAX_DEPTH + 1, objects, &n);
        struct jdoc d;
        struct cerr e = {0};
        assert_int_equal(jdoc_parse(&d, b, n, &e), CORRAL_EINVAL);
        if (!strstr(e.msg, "nesting") || !strstr(e.msg, "line 1 column "))
            fail_msg("257 levels: message \"%s\"", e.msg);
        char col[48];
        snprintf(col, sizeof col, "line 1 column %d", JDOC_MAX_DEPTH * (objects ? 5 : 1) + 1);
        if (!strstr(e.msg, col))
            fail_msg("257 levels: message \"%s\" lacks \"%s\"", e.msg, col);
        free(b);
    }
}

/* ---- 4. error messages ---- */

static void test_error_messages(void **state)
{
    static const struct {
        const char *text, *what, *where;
    } cases[] = {
        {"{\n  \"a\": tru}", "invalid literal", "at line 2 column 8"},
        {"[1,\n2,\n]", "expected a value", "at line 3 column 1"},
        {"{\"a\" 1}", "expected ':'", "at line 1 column 6"},
        {"\"abc", "unterminated string", "at line 1 column 5"},
        {"[1,2", "unexpected end of input, expected ',' or ']'", "at line 1 column 5"},
        {"{\"a\":1", "unexpected end of input, expected ',' or '}'", "at line 1 column 7"},
        {"\"a\\qb\"", "invalid escape", "at line 1 column 4"},
        {"01", "leading zero", "at line 1 column 2"},
        {"[1, 2, 01]", "leading zero", "at line 1 column 9"},
        {"[1,\n-x]", "expected a digit", "at line 2 column 2"},
        {"[1, 2 3]", "expected ',' or ']'", "at line 1 column 7"},
        {"[1.]", "digit after '.'", "at line 1 column 4"},
        {"[1e+]", "exponent", "at line 1 column 5"},
        {"[1]x", "unexpected characters after the JSON value", "at line 1 column 4"},
        {"\"\xc3\x28\"", "invalid UTF-8", "at line 1 column 2"},
        {"\r\n\r\n  [x]", "unexpected character", "at line 3 column 4"},
        {"{\"a\":1,\n\"b\"\n:\n[1,2,3}", "expected ',' or ']'", "at line 4 column 7"},
        {"{\"a\":1,\n 2:3}", "expected a string key", "at line 2 column 2"},
        {"[\"\\uD800\"]", "high surrogate", "at line 1 column 3"},
        {"[\"\\uDC00\"]", "low surrogate", "at line 1 column 3"},
        {"[\"\\u12x4\"]", "four hex digits", "at line 1 column 3"},
        {"[\"a\tb\"]", "control character", "at line 1 column 4"},
        {"", "unexpected end of input, expected a value", "at line 1 column 1"},
        {"\n\n", "unexpected end of input", "at line 3 column 1"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        struct jdoc d;
        struct cerr e = {0};
        size_t n = strlen(cases[i].text);
        char *t = dup_exact(cases[i].text, n);
        int rc = jdoc_parse(&d, t, n, &e);
        char shown[200];
        show(shown, sizeof shown, cases[i].text, n);
        if (rc != CORRAL_EINVAL || !strstr(e.msg, cases[i].what) || !strstr(e.msg, cases[i].where))
            fail_msg("\"%s\": code %d, message \"%s\"; expected \"%s\" and \"%s\"", shown, rc,
                     e.msg, cases[i].what, cases[i].where);
        assert_null(d.tok);
        assert_int_equal(d.n, 0);
        free(t);
    }
}

/* ---- 5. the length argument ---- */

static void test_length(void **state)
{
    static const struct {
        const char *buf; /* longer than len: the rest must not matter */
        size_t len;
        int ok;
    } cases[] = {
        {"[1,2]garbage", 5, 1},
        {"12345", 2, 1},
        {"1.5e300", 3, 1},
        {"-0.5e-3", 4, 1},
        {"9007199254740993999", 16, 1},
        {"\"abc\"", 4, 0},
        {"true", 3, 0},
        {"\"\\u00e9\"", 5, 0},
        {"\"\\uD83D\\uDE00\"", 9, 0},
        {"\"\xe2\x82\xac\"", 3, 0},
        {"[1]", 0, 0},
        {"{\"a\":1}", 6, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        size_t n = cases[i].len;
        char *exact = dup_exact(cases[i].buf, n);
        struct jdoc d1, d2;
        struct cerr e1 = {0}, e2 = {0};
        int r1 = jdoc_parse(&d1, exact, n, &e1);
        int r2 = jdoc_parse(&d2, cases[i].buf, n, &e2);
        if ((r1 == CORRAL_OK) != cases[i].ok || r1 != r2 || strcmp(e1.msg, e2.msg) != 0)
            fail_msg("\"%s\" cut to %zu bytes: %d \"%s\" alone, %d \"%s\" inside the longer buffer",
                     cases[i].buf, n, r1, e1.msg, r2, e2.msg);
        if (r1 == CORRAL_OK) {
            assert_int_equal(d1.n, d2.n);
            if (jdoc_type(&d1, 0) == JT_NUMBER) {
                /* The number must be read from the first len bytes only. */
                double a = 0, b = 0;
                assert_int_equal(jdoc_double(&d1, 0, &a), JNUM_OK);
                assert_int_equal(jdoc_double(&d2, 0, &b), JNUM_OK);
                char *z = strndup(cases[i].buf, n);
                double want = strtod(z, NULL);
                free(z);
                if (dbits(a) != dbits(want) || dbits(b) != dbits(want))
                    fail_msg("\"%s\" cut to %zu bytes reads as %a / %a, expected %a", cases[i].buf,
                             n, a, b, want);
            } else {
                assert_int_equal(jdoc_size(&d1, 0), 2);
            }
        }
        jdoc_free(&d1);
        jdoc_free(&d2);
        free(exact);
    }

    /* The size limit is checked before any byte is read. */
    struct jdoc d;
    struct cerr e = {0};
    assert_int_equal(jdoc_parse(&d, "[]", (size_t)UINT32_MAX, &e), CORRAL_ETOOLARGE);
    assert_null(d.tok);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_number_edges),
        cmocka_unit_test(test_number_random),
        cmocka_unit_test(test_number_midpoints),
        cmocka_unit_test(test_number_ties),
        cmocka_unit_test(test_integers),
        cmocka_unit_test(test_corpus),
        cmocka_unit_test(test_duplicate_keys),
        cmocka_unit_test(test_mutations),
        cmocka_unit_test(test_prefixes),
        cmocka_unit_test(test_depth),
        cmocka_unit_test(test_error_messages),
        cmocka_unit_test(test_length),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
