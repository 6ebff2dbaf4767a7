/*
 * jdoc: one-pass JSON reader into a flat token array; numbers converted on
 * demand. See jdoc.h.
 */
#include "jdoc.h"

#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "jnum.h"
#include "utf8.h"

/* ---- parsing ---- */

struct parser {
    struct jdoc *d;
    const unsigned char *s;
    size_t n, p;
    struct cerr *e;
    const char *why; /* set on the first error */
    size_t at;       /* where it happened */
};

static int fail(struct parser *ps, const char *why)
{
    if (!ps->why) {
        ps->why = why;
        ps->at = ps->p;
    }
    return -1;
}

static int grow_tokens(struct parser *ps)
{
    struct jdoc *d = ps->d;
    size_t cap = d->cap ? d->cap * 2 : 64;
    struct jtok *t = realloc(d->tok, cap * sizeof *t);
    if (!t)
        return fail(ps, "out of memory");
    d->tok = t;
    d->cap = cap;
    return 0;
}

static inline int64_t push(struct parser *ps, enum jtype type, uint32_t off, uint32_t len)
{
    struct jdoc *d = ps->d;
    if (d->n == d->cap && grow_tokens(ps))
        return -1;
    struct jtok *t = &d->tok[d->n];
    t->off = off;
    t->len = len;
    t->next = (uint32_t)d->n + 1;
    t->type = (uint8_t)type;
    t->flags = 0;
    return (int64_t)d->n++;
}

static int str_reserve(struct parser *ps, size_t more)
{
    struct jdoc *d = ps->d;
    if (d->str_cap - d->str_len >= more)
        return 0;
    size_t cap = d->str_cap ? d->str_cap : 256;
    while (cap - d->str_len < more)
        cap *= 2;
    char *s = realloc(d->str, cap);
    if (!s)
        return fail(ps, "out of memory");
    d->str = s;
    d->str_cap = cap;
    return 0;
}

static int hex4(const unsigned char *s, uint32_t *out)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned c = s[i];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= c - '0';
        else if (c >= 'a' && c <= 'f')
            v |= c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            v |= c - 'A' + 10;
        else
            return -1;
    }
    *out = v;
    return 0;
}

static size_t put_utf8(char *o, uint32_t cp)
{
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xc0 | (cp >> 6));
        o[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xe0 | (cp >> 12));
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        o[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    o[0] = (char)(0xf0 | (cp >> 18));
    o[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    o[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* At the opening quote; leaves p after the closing one. */
static int64_t parse_string(struct parser *ps)
{
    struct jdoc *d = ps->d;
    const unsigned char *s = ps->s;
    size_t n = ps->n;
    size_t start = d->str_len;
    ps->p++;
    for (;;) {
        size_t q = ps->p;
        while (q < n && s[q] != '"' && s[q] != '\\' && s[q] >= 0x20 && s[q] < 0x80)
            q++;
        if (q > ps->p) {
            if (str_reserve(ps, q - ps->p + 5))
                return -1;
            memcpy(d->str + d->str_len, s + ps->p, q - ps->p);
            d->str_len += q - ps->p;
            ps->p = q;
        }
        if (q >= n)
            return fail(ps, "unterminated string");
        unsigned c = s[q];
        if (c == '"') {
            ps->p++;
            break;
        }
        if (c < 0x20)
            return fail(ps, "control character in a string (escape it)");
        if (str_reserve(ps, 5))
            return -1;
        if (c >= 0x80) {
            size_t k = utf8_len(s + q, n - q);
            if (!k)
                return fail(ps, "invalid UTF-8 in a string");
            memcpy(d->str + d->str_len, s + q, k);
            d->str_len += k;
            ps->p += k;
            continue;
        }
        /* backslash */
        if (q + 1 >= n)
            return fail(ps, "unterminated string");
        char *o = d->str + d->str_len;
        switch (s[q + 1]) {
        case '"': *o = '"'; break;
        case '\\': *o = '\\'; break;
        case '/': *o = '/'; break;
        case 'b': *o = '\b'; break;
        case 'f': *o = '\f'; break;
        case 'n': *o = '\n'; break;
        case 'r': *o = '\r'; break;
        case 't': *o = '\t'; break;
        case 'u': {
            uint32_t cp, lo;
            if (q + 6 > n || hex4(s + q + 2, &cp))
                return fail(ps, "invalid \\u escape (expected four hex digits)");
            size_t used = 6;
            if (cp >= 0xdc00 && cp <= 0xdfff)
                return fail(ps, "invalid \\u escape (a low surrogate without a high one)");
            if (cp >= 0xd800 && cp <= 0xdbff) {
                if (q + 12 > n || s[q + 6] != '\\' || s[q + 7] != 'u' || hex4(s + q + 8, &lo) ||
                    lo < 0xdc00 || lo > 0xdfff)
                    return fail(ps, "invalid \\u escape (a high surrogate without a low one)");
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                used = 12;
            }
            d->str_len += put_utf8(o, cp);
            ps->p += used;
            continue;
        }
        default:
            ps->p++;
            return fail(ps, "invalid escape in a string");
        }
        d->str_len++;
        ps->p += 2;
    }
    if (str_reserve(ps, 1))
        return -1;
    d->str[d->str_len] = 0;
    size_t len = d->str_len - start;
    d->str_len++;
    return push(ps, JT_STRING, (uint32_t)start, (uint32_t)len);
}

static inline int is_digit(unsigned c)
{
    return c - '0' < 10u;
}

static int64_t parse_number(struct parser *ps)
{
    struct jnum_dec x;
    const char *why = NULL;
    size_t at = 0, start = ps->p;
    size_t end = jnum_scan(ps->s, ps->n, start, &x, &why, &at);
    if (!end) {
        ps->p = at;
        return fail(ps, why);
    }
    ps->p = end;
    int64_t t = push(ps, JT_NUMBER, (uint32_t)start, (uint32_t)(end - start));
    if (t >= 0) {
        struct jtok *k = &ps->d->tok[t];
        int e_ok = x.e10 >= INT16_MIN && x.e10 <= INT16_MAX;
        k->w = x.w;
        k->e10 = e_ok ? (int16_t)x.e10 : 0;
        k->flags = (uint8_t)((x.integer ? JF_INTEGER : 0) | (x.exact ? JF_EXACT : 0) |
                             (x.neg ? JF_NEG : 0) | (e_ok ? JF_E10 : 0));
    }
    return t;
}
static int64_t parse_literal(struct parser *ps)
{
    static const struct {
        const char *word;
        size_t len;
        enum jtype type;
    } lits[] = {{"true", 4, JT_TRUE}, {"false", 5, JT_FALSE}, {"null", 4, JT_NULL}};
    for (size_t i = 0; i < 3; i++) {
        if (ps->s[ps->p] != (unsigned char)lits[i].word[0])
            continue;
        if (ps->n - ps->p < lits[i].len || memcmp(ps->s + ps->p, lits[i].word, lits[i].len))
            return fail(ps, "invalid literal (expected true, false or null)");
        ps->p += lits[i].len;
        return push(ps, lits[i].type, (uint32_t)ps->p, 0);
    }
    return fail(ps, "unexpected character, expected a value");
}

static inline void skip_ws(struct parser *ps)
{
    while (ps->p < ps->n) {
        unsigned c = ps->s[ps->p];
        if (c != ' ' && c != '\n' && c != '\r' && c != '\t')
            break;
        ps->p++;
    }
}

/*
 * A number inside a container, and when the container is an array, the
 * numbers that follow it ("1.5, 2, -3e2"): tensor data is nearly all such
 * runs, so they skip the state machine. Stops before anything else (the
 * caller's S_AFTER state takes it from there).
 */
static int64_t number_run(struct parser *ps, uint32_t top)
{
    int64_t t = parse_number(ps);
    if (t < 0 || ps->d->tok[top].type != JT_ARRAY)
        return t;
    const unsigned char *s = ps->s;
    size_t n = ps->n;
    for (;;) {
        size_t q = ps->p;
        while (q < n && (s[q] == ' ' || s[q] == '\n' || s[q] == '\r' || s[q] == '\t'))
            q++;
        if (q >= n || s[q] != ',')
            return t;
        q++;
        while (q < n && (s[q] == ' ' || s[q] == '\n' || s[q] == '\r' || s[q] == '\t'))
            q++;
        if (q >= n || (s[q] != '-' && !is_digit(s[q])))
            return t; /* the state machine reports what follows the comma */
        ps->p = q;
        ps->d->tok[top].len++;
        if ((t = parse_number(ps)) < 0)
            return t;
    }
}

enum { S_VALUE, S_VALUE_OR_END, S_KEY, S_KEY_OR_END, S_AFTER };

static int run(struct parser *ps)
{
    struct jdoc *d = ps->d;
    uint32_t stack[JDOC_MAX_DEPTH];
    int depth = 0, state = S_VALUE;
    for (;;) {
        skip_ws(ps);
        int at_end = ps->p >= ps->n;
        unsigned c = at_end ? 0 : ps->s[ps->p];
        switch (state) {
        case S_VALUE_OR_END:
            if (c == ']') {
                ps->p++;
                d->tok[stack[--depth]].next = (uint32_t)d->n;
                state = S_AFTER;
                continue;
            }
            /* fall through */
        case S_VALUE: {
            if (at_end)
                return fail(ps, "unexpected end of input, expected a value");
            if (depth > 0 && d->tok[stack[depth - 1]].type == JT_ARRAY)
                d->tok[stack[depth - 1]].len++;
            int64_t t;
            if (c == '{' || c == '[') {
                if (depth == JDOC_MAX_DEPTH)
                    return fail(ps, "nesting too deep (more than 256 levels)");
                if ((t = push(ps, c == '{' ? JT_OBJECT : JT_ARRAY, (uint32_t)ps->p, 0)) < 0)
                    return -1;
                if (depth > 0 && d->tok[stack[depth - 1]].type == JT_ARRAY)
                    d->tok[stack[depth - 1]].flags |= JF_NESTED;
                stack[depth++] = (uint32_t)t;
                ps->p++;
                state = c == '{' ? S_KEY_OR_END : S_VALUE_OR_END;
                continue;
            }
            if (c == '"')
                t = parse_string(ps);
            else if ((c == '-' || is_digit(c)) && depth > 0)
                t = number_run(ps, stack[depth - 1]);
            else if (c == '-' || is_digit(c))
                t = parse_number(ps);
            else
                t = parse_literal(ps);
            if (t < 0)
                return -1;
            state = S_AFTER;
            continue;
        }
        case S_KEY_OR_END:
            if (c == '}') {
                ps->p++;
                d->tok[stack[--depth]].next = (uint32_t)d->n;
                state = S_AFTER;
                continue;
            }
            /* fall through */
        case S_KEY:
            if (c != '"')
                return fail(ps, at_end ? "unexpected end of input, expected a string key"
                                       : "expected a string key");
            d->tok[stack[depth - 1]].len++;
            if (parse_string(ps) < 0)
                return -1;
            skip_ws(ps);
            if (ps->p >= ps->n || ps->s[ps->p] != ':')
                return fail(ps, "expected ':' after an object key");
            ps->p++;
            state = S_VALUE;
            continue;
        case S_AFTER:
            if (depth == 0) {
                if (!at_end)
                    return fail(ps, "unexpected characters after the JSON value");
                return 0;
            }
            {
                struct jtok *top = &d->tok[stack[depth - 1]];
                unsigned close = top->type == JT_OBJECT ? '}' : ']';
                if (c == ',') {
                    ps->p++;
                    state = top->type == JT_OBJECT ? S_KEY : S_VALUE;
                } else if (c == close) {
                    ps->p++;
                    top->next = (uint32_t)d->n;
                    depth--;
                } else if (at_end) {
                    return fail(ps, top->type == JT_OBJECT ? "unexpected end of input, expected "
                                "',' or '}'" : "unexpected end of input, expected ',' or ']'");
                } else {
                    return fail(ps, top->type == JT_OBJECT ? "expected ',' or '}'"
                                                           : "expected ',' or ']'");
                }
            }
            continue;
        }
    }
}

int jdoc_parse(struct jdoc *d, const char *text, size_t len, struct cerr *e)
{
    memset(d, 0, sizeof *d);
    d->text = text;
    d->text_len = len;
    if (len >= UINT32_MAX)
        return cerr_set(e, CORRAL_ETOOLARGE, "JSON document of %zu bytes is too large (limit 4 GiB)",
                        len);
    struct parser ps = {.d = d, .s = (const unsigned char *)text, .n = len, .e = e};
    if (run(&ps) == 0)
        return CORRAL_OK;
    int line = 1, col = 1;
    size_t at = ps.at < len ? ps.at : len;
    for (size_t i = 0; i < at; i++) {
        if (text[i] == '\n') {
            line++;
            col = 1;
        } else {
            col++;
        }
    }
    int oom = strcmp(ps.why, "out of memory") == 0;
    jdoc_free(d);
    d->text = text;
    d->text_len = len;
    if (oom)
        return cerr_set(e, CORRAL_ENOMEM, "out of memory reading JSON (%zu bytes)", len);
    return cerr_set(e, CORRAL_EINVAL, "%s at line %d column %d", ps.why, line, col);
}

void jdoc_free(struct jdoc *d)
{
    free(d->tok);
    free(d->str);
    memset(d, 0, sizeof *d);
}

/* ---- access ---- */

uint32_t jdoc_first_key(const struct jdoc *d, uint32_t o)
{
    return o + 1 < d->tok[o].next ? o + 1 : JDOC_NONE;
}

uint32_t jdoc_next_key(const struct jdoc *d, uint32_t o, uint32_t k)
{
    uint32_t nk = d->tok[k + 1].next;
    return nk < d->tok[o].next ? nk : JDOC_NONE;
}

uint32_t jdoc_get(const struct jdoc *d, uint32_t o, const char *key)
{
    if (o == JDOC_NONE || d->tok[o].type != JT_OBJECT)
        return JDOC_NONE;
    size_t kl = strlen(key);
    uint32_t found = JDOC_NONE;
    for (uint32_t k = jdoc_first_key(d, o); k != JDOC_NONE; k = jdoc_next_key(d, o, k))
        if (d->tok[k].len == kl && memcmp(d->str + d->tok[k].off, key, kl) == 0)
            found = k + 1;
    return found;
}

uint32_t jdoc_at(const struct jdoc *d, uint32_t a, size_t k)
{
    if (a == JDOC_NONE || d->tok[a].type != JT_ARRAY || k >= d->tok[a].len)
        return JDOC_NONE;
    uint32_t i = a + 1;
    while (k--)
        i = d->tok[i].next;
    return i;
}

const char *jdoc_type_name(const struct jdoc *d, uint32_t i)
{
    switch (d->tok[i].type) {
    case JT_OBJECT: return "an object";
    case JT_ARRAY: return "an array";
    case JT_STRING: return "a string";
    case JT_NUMBER: return "a number";
    case JT_TRUE:
    case JT_FALSE: return "a boolean";
    default: return "null";
    }
}

/* The decimal a number token holds (an exponent beyond 16 bits is sent to the slow path). */
static void decimal_of_token(const struct jtok *t, struct jnum_dec *x)
{
    x->w = t->w;
    x->e10 = (t->flags & JF_E10) ? t->e10 : INT32_MAX;
    x->neg = !!(t->flags & JF_NEG);
    x->exact = !!(t->flags & JF_EXACT);
    x->integer = !!(t->flags & JF_INTEGER);
}

int jdoc_double(const struct jdoc *d, uint32_t i, double *out)
{
    const struct jtok *t = &d->tok[i];
    if (t->type != JT_NUMBER)
        return JNUM_NOT_NUMBER;
    struct jnum_dec x;
    decimal_of_token(t, &x);
    double v = jnum_dec_double(&x, d->text + t->off, t->len);
    if (isinf(v))
        return JNUM_RANGE;
    *out = v;
    return JNUM_OK;
}

int jdoc_float(const struct jdoc *d, uint32_t i, float *out)
{
    const struct jtok *t = &d->tok[i];
    if (t->type != JT_NUMBER)
        return JNUM_NOT_NUMBER;
    struct jnum_dec x;
    decimal_of_token(t, &x);
    float v = jnum_dec_float(&x, d->text + t->off, t->len);
    if (isinf(v))
        return JNUM_RANGE;
    *out = v;
    return JNUM_OK;
}

/* Magnitude written in decimal digits; -1 when it does not fit 64 bits. */
static int read_u64(const char *s, size_t n, uint64_t *out)
{
    uint64_t v = 0;
    for (size_t p = 0; p < n; p++) {
        unsigned dg = (unsigned)(s[p] - '0');
        if (v > (UINT64_MAX - dg) / 10)
            return -1;
        v = v * 10 + dg;
    }
    *out = v;
    return 0;
}

int jdoc_integer(const struct jdoc *d, uint32_t i, int *neg, uint64_t *mag)
{
    const struct jtok *t = &d->tok[i];
    if (t->type != JT_NUMBER)
        return JNUM_NOT_NUMBER;
    if (!(t->flags & JF_INTEGER))
        return JNUM_NOT_INTEGER;
    *neg = !!(t->flags & JF_NEG);
    /* Up to 19 digits the decoded mantissa is the value; only longer ones are read again. */
    if ((t->flags & JF_EXACT) && (t->flags & JF_E10) && t->e10 == 0) {
        *mag = t->w;
        return JNUM_OK;
    }
    size_t skip = (size_t)*neg;
    return read_u64(d->text + t->off + skip, t->len - skip, mag) ? JNUM_RANGE : JNUM_OK;
}

int jdoc_int64(const struct jdoc *d, uint32_t i, int64_t *out)
{
    int neg;
    uint64_t m;
    int rc = jdoc_integer(d, i, &neg, &m);
    if (rc)
        return rc;
    if (m > (uint64_t)INT64_MAX + (neg ? 1 : 0))
        return JNUM_RANGE;
    *out = neg ? (int64_t)(0 - m) : (int64_t)m;
    return JNUM_OK;
}

int jdoc_uint64(const struct jdoc *d, uint32_t i, uint64_t *out)
{
    int neg;
    uint64_t m;
    int rc = jdoc_integer(d, i, &neg, &m);
    if (rc)
        return rc;
    if (neg && m != 0)
        return JNUM_RANGE;
    *out = m;
    return JNUM_OK;
}
