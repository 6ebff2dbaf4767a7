/*
 * jnum: JSON numbers read and written. See jnum.h.
 */
#include "jnum.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static inline int is_digit(unsigned c)
{
    return c - '0' < 10u;
}

/* ---- reading ---- */

/* Eight ASCII digits at p as a number, or -1 when they are not all digits. */
static inline int64_t eight_digits(const unsigned char *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    /* Every byte must be 0x30..0x39: high nibble 3, and still 3 after adding 6. */
    if ((v & 0xf0f0f0f0f0f0f0f0ull) != 0x3030303030303030ull ||
        ((v + 0x0606060606060606ull) & 0xf0f0f0f0f0f0f0f0ull) != 0x3030303030303030ull)
        return -1;
    v -= 0x3030303030303030ull;
    /* Little-endian: the first digit is the low byte. Pair, then quad, then all eight. */
    v = (v * 10) + (v >> 8);
    v = (((v & 0x000000ff000000ffull) * (100 + (1000000ull << 32))) +
         (((v >> 16) & 0x000000ff000000ffull) * (1 + (10000ull << 32)))) >> 32;
    return (int64_t)v;
}

/* Digits fold into w while it stays below 10^18, so w keeps up to 19 of them. */
#define W_ROOM 1000000000000000000ull

/*
 * Checks the JSON number grammar at s[p..n) and decodes it in the same pass.
 * Returns the position after it, or 0 with *why set (p is where it failed).
 */
size_t jnum_scan(const unsigned char *s, size_t n, size_t p, struct jnum_dec *x, const char **why,
                 size_t *at)
{
    uint64_t w = 0;
    int64_t e10 = 0;
    int exact = 1;
    x->neg = s[p] == '-';
    x->integer = 1;
    p += (size_t)x->neg;
    if (p >= n || !is_digit(s[p])) {
        *why = "invalid number (expected a digit)";
        *at = p;
        return 0;
    }
    if (s[p] == '0') {
        p++;
        if (p < n && is_digit(s[p])) {
            *why = "invalid number (leading zero)";
            *at = p;
            return 0;
        }
    } else {
        for (; p < n && is_digit(s[p]); p++) {
            unsigned dg = s[p] - '0';
            if (w < W_ROOM) {
                w = w * 10 + dg;
            } else {
                e10++;
                exact &= dg == 0;
            }
        }
    }
    if (p < n && s[p] == '.') {
        x->integer = 0;
        p++;
        if (p >= n || !is_digit(s[p])) {
            *why = "invalid number (expected a digit after '.')";
            *at = p;
            return 0;
        }
        /* Fraction digits come in runs of eight while w has room for them. */
        int64_t v;
        while (n - p >= 8 && w < 10000000000ull && (v = eight_digits(s + p)) >= 0) {
            w = w * 100000000ull + (uint64_t)v;
            e10 -= 8;
            p += 8;
        }
        for (; p < n && is_digit(s[p]); p++) {
            unsigned dg = s[p] - '0';
            if (w < W_ROOM) {
                w = w * 10 + dg;
                e10--;
            } else {
                exact &= dg == 0;
            }
        }
    }
    if (p < n && (s[p] == 'e' || s[p] == 'E')) {
        x->integer = 0;
        p++;
        int eneg = 0;
        if (p < n && (s[p] == '+' || s[p] == '-'))
            eneg = s[p++] == '-';
        if (p >= n || !is_digit(s[p])) {
            *why = "invalid number (expected a digit in the exponent)";
            *at = p;
            return 0;
        }
        int64_t ex = 0;
        for (; p < n && is_digit(s[p]); p++)
            if (ex < 100000000)
                ex = ex * 10 + (s[p] - '0');
        e10 += eneg ? -ex : ex;
    }
    x->w = w;
    x->e10 = e10;
    x->exact = exact;
    return p;
}

/* ---- conversion ---- */

/* strtod/strtof on a NUL-terminated copy. */
static double slow_double(const char *s, size_t n, float *f)
{
    char small[128];
    char *b = n < sizeof small ? small : malloc(n + 1);
    if (!b) {
        /* Cannot copy: fall back to the digits that fit. */
        n = sizeof small - 1;
        b = small;
    }
    memcpy(b, s, n);
    b[n] = 0;
    double v = 0;
    if (f)
        *f = strtof(b, NULL);
    else
        v = strtod(b, NULL);
    if (b != small)
        free(b);
    return v;
}

#if defined(__x86_64__) && LDBL_MANT_DIG == 64
/*
 * x87 extended precision holds any w < 2^64 and 10^k for k <= 27 exactly, so
 * w * 10^e or w / 10^-e is one correctly rounded operation with a 64-bit
 * significand. Rounding that again to 53 bits gives the correctly rounded
 * double unless it landed exactly halfway between two doubles, which the low
 * 11 bits of the significand show; those rare cases take the slow path.
 */
#define FAST_EXP 27
static const long double p10l[FAST_EXP + 1] = {
    1e0L,  1e1L,  1e2L,  1e3L,  1e4L,  1e5L,  1e6L,  1e7L,  1e8L,  1e9L,
    1e10L, 1e11L, 1e12L, 1e13L, 1e14L, 1e15L, 1e16L, 1e17L, 1e18L, 1e19L,
    1e20L, 1e21L, 1e22L, 1e23L, 1e24L, 1e25L, 1e26L, 1e27L};

/* Returns 0 and the value, or -1 when the slow path must decide. */
static int fast_value(const struct jnum_dec *x, long double *out)
{
    if (!x->exact || x->e10 < -FAST_EXP || x->e10 > FAST_EXP)
        return -1;
    long double r = (long double)x->w;
    r = x->e10 >= 0 ? r * p10l[x->e10] : r / p10l[-x->e10];
    uint64_t sig;
    memcpy(&sig, &r, 8);
    if ((sig & 0x7ffu) == 0x400u)
        return -1;
    *out = x->neg ? -r : r;
    return 0;
}
#else
/* Clinger's fast path: w and 10^|e| both exact doubles, one rounding. */
#define FAST_EXP 22
static const double p10d[FAST_EXP + 1] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                          1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                                          1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

static int fast_value(const struct jnum_dec *x, double *out)
{
    if (!x->exact || x->e10 < -FAST_EXP || x->e10 > FAST_EXP || x->w > (1ull << 53))
        return -1;
    double r = (double)x->w;
    r = x->e10 >= 0 ? r * p10d[x->e10] : r / p10d[-x->e10];
    *out = x->neg ? -r : r;
    return 0;
}
#endif

/* Decodes text already known to be a JSON number. */
static void decimal_of_text(const char *s, size_t n, struct jnum_dec *x)
{
    const char *why;
    size_t at;
    if (!jnum_scan((const unsigned char *)s, n, 0, x, &why, &at))
        memset(x, 0, sizeof *x);
}

double jnum_double(const char *s, size_t n)
{
    struct jnum_dec x;
    decimal_of_text(s, n, &x);
    return jnum_dec_double(&x, s, n);
}

float jnum_float(const char *s, size_t n)
{
    struct jnum_dec x;
    decimal_of_text(s, n, &x);
    return jnum_dec_float(&x, s, n);
}

double jnum_dec_double(const struct jnum_dec *x, const char *s, size_t n)
{
    if (x->w == 0 && x->exact)
        return x->neg ? -0.0 : 0.0;
#if defined(__x86_64__) && LDBL_MANT_DIG == 64
    long double r;
#else
    double r;
#endif
    if (fast_value(x, &r) == 0)
        return (double)r;
    return slow_double(s, n, NULL);
}

/*
 * Powers of ten as correctly rounded doubles, 10^-45 .. 10^38: with them a
 * float needs one multiplication. w (rounded to a double), the power and the
 * product each add at most half a double ulp of error (digits beyond the
 * nineteenth add under 10^-18 relative), so the product lies within 3 double
 * ulps of the exact value. Rounding it to a float is then correct unless it
 * sits within that distance of a point halfway between two floats, which the
 * low 29 bits of its significand show; those go to strtof.
 */
#define F_EXP_MIN (-45)
#define F_EXP_MAX 38
static const double p10f[F_EXP_MAX - F_EXP_MIN + 1] = {
    1e-45, 1e-44, 1e-43, 1e-42, 1e-41, 1e-40, 1e-39, 1e-38, 1e-37, 1e-36, 1e-35, 1e-34,
    1e-33, 1e-32, 1e-31, 1e-30, 1e-29, 1e-28, 1e-27, 1e-26, 1e-25, 1e-24, 1e-23, 1e-22,
    1e-21, 1e-20, 1e-19, 1e-18, 1e-17, 1e-16, 1e-15, 1e-14, 1e-13, 1e-12, 1e-11, 1e-10,
    1e-9,  1e-8,  1e-7,  1e-6,  1e-5,  1e-4,  1e-3,  1e-2,  1e-1,  1e0,   1e1,   1e2,
    1e3,   1e4,   1e5,   1e6,   1e7,   1e8,   1e9,   1e10,  1e11,  1e12,  1e13,  1e14,
    1e15,  1e16,  1e17,  1e18,  1e19,  1e20,  1e21,  1e22,  1e23,  1e24,  1e25,  1e26,
    1e27,  1e28,  1e29,  1e30,  1e31,  1e32,  1e33,  1e34,  1e35,  1e36,  1e37,  1e38};

float jnum_dec_float(const struct jnum_dec *x, const char *s, size_t n)
{
    if (x->w == 0 && x->exact)
        return x->neg ? -0.0f : 0.0f;
    if (x->e10 >= F_EXP_MIN && x->e10 <= F_EXP_MAX) {
        double d = (double)x->w * p10f[x->e10 - F_EXP_MIN];
        uint64_t b;
        memcpy(&b, &d, 8);
        int64_t low = (int64_t)(b & 0x1fffffffu) - 0x10000000;
        /* Normal floats only: below FLT_MIN a float has fewer bits than assumed above. */
        if ((low > 8 || low < -8) && d >= FLT_MIN) {
            float f = (float)d;
            return x->neg ? -f : f;
        }
    }
    float f = 0;
    slow_double(s, n, &f);
    return f;
}

/* ---- writing ---- */

static const double p10w[61] = {
    1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,  1e10, 1e11, 1e12,
    1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22, 1e23, 1e24, 1e25,
    1e26, 1e27, 1e28, 1e29, 1e30, 1e31, 1e32, 1e33, 1e34, 1e35, 1e36, 1e37, 1e38,
    1e39, 1e40, 1e41, 1e42, 1e43, 1e44, 1e45, 1e46, 1e47, 1e48, 1e49, 1e50, 1e51,
    1e52, 1e53, 1e54, 1e55, 1e56, 1e57, 1e58, 1e59, 1e60};

static int put_u64(char *o, uint64_t v)
{
    char t[24];
    int n = 0;
    do {
        t[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (int i = 0; i < n; i++)
        o[i] = t[n - 1 - i];
    return n;
}

/*
 * Lays out digits ds (nd of them, no trailing zeros) times 10^x10 the way
 * printf's %.Pg does with P = max(nd, 6): fixed notation while the leading
 * digit's exponent X satisfies -4 <= X < P, scientific otherwise.
 */
static int layout(char *o, int neg, const char *ds, int nd, int x10)
{
    int X = x10 + nd - 1, P = nd > 6 ? nd : 6, n = 0;
    if (neg)
        o[n++] = '-';
    if (X < -4 || X >= P) {
        o[n++] = ds[0];
        if (nd > 1) {
            o[n++] = '.';
            memcpy(o + n, ds + 1, (size_t)nd - 1);
            n += nd - 1;
        }
        o[n++] = 'e';
        o[n++] = X < 0 ? '-' : '+';
        int ax = X < 0 ? -X : X;
        if (ax < 10)
            o[n++] = '0';
        n += put_u64(o + n, (uint64_t)ax);
    } else if (X >= 0) {
        for (int i = 0; i <= X; i++)
            o[n++] = i < nd ? ds[i] : '0';
        if (nd > X + 1) {
            o[n++] = '.';
            memcpy(o + n, ds + X + 1, (size_t)(nd - X - 1));
            n += nd - X - 1;
        }
    } else {
        o[n++] = '0';
        o[n++] = '.';
        for (int i = 0; i < -X - 1; i++)
            o[n++] = '0';
        memcpy(o + n, ds, (size_t)nd);
        n += nd;
    }
    o[n] = '\0';
    return n;
}

/*
 * The shortest p (1..9 significant digits) whose rounding of f reads back to
 * f. Each candidate comes from one scaling in double precision and is checked
 * by reading it back with the correctly rounded reader, so a candidate off by
 * one in its last digit only costs a longer answer, never a wrong one; if no
 * candidate passes, printf's %.9g (always enough for a float) decides.
 */
int jnum_format_float(char *out, float f)
{
    if (f == 0)
        return snprintf(out, JNUM_FLOAT_MAX, "%s", signbit(f) ? "-0" : "0");
    double v = fabs((double)f);
    int neg = signbit(f) != 0;
    int k = (int)floor(log10(v));
    for (int p = 1; p <= 9; p++) {
        int m = p - 1 - k;
        if (m > 60 || m < -60)
            break;
        double scaled = m >= 0 ? v * p10w[m] : v / p10w[-m];
        uint64_t D = (uint64_t)llround(scaled);
        int64_t e10 = -m;
        if (D == 0)
            continue;
        while (D % 10 == 0) {
            D /= 10;
            e10++;
        }
        /* The candidate as text, which the reader consults only on its slow path. */
        char text[48];
        int tn = put_u64(text, D);
        text[tn++] = 'e';
        if (e10 < 0)
            text[tn++] = '-';
        tn += put_u64(text + tn, (uint64_t)(e10 < 0 ? -e10 : e10));
        struct jnum_dec x = {.w = D, .e10 = e10, .neg = 0, .exact = 1, .integer = 0};
        if (jnum_dec_float(&x, text, (size_t)tn) != (float)v)
            continue;
        char ds[24];
        int nd = put_u64(ds, D);
        return layout(out, neg, ds, nd, (int)e10);
    }
    return snprintf(out, JNUM_FLOAT_MAX, "%.9g", (double)f);
}
