/*
 * The OIP codec's JSON reader (oipjson/jdoc.c, jnum.c) against jansson as an oracle.
 *
 * Both parse the same bytes. They must agree on accept or reject, except where
 * a documented limit of one of them decides: jdoc's nesting limit
 * (JDOC_MAX_DEPTH), jansson's refusal of numbers outside long long or double and
 * of NUL bytes in object keys. Where both accept, the trees must be the same:
 * types, strings byte for byte, array elements in order, object members by key
 * (the last of duplicated keys wins in both), integers equal and reals equal bit
 * for bit. A raw NUL byte is never JSON: jdoc must reject it wherever it is (jansson
 * lets one through after a number, so its word is not taken there). Every number is also read as float and double against the C
 * library's correctly rounded strtof/strtod, and as int64 against strtoll.
 */
#include <errno.h>
#include <jansson.h>
#include <math.h>

#include "fuzz.h"
#include "jdoc.h"

/* Checks number token i against the C library reading its text. */
static void check_number(const struct jdoc *d, uint32_t i)
{
    char text[512];
    size_t n = d->tok[i].len;
    if (n >= sizeof text)
        return; /* libFuzzer's inputs are short; a longer number is left to jansson */
    memcpy(text, d->text + d->tok[i].off, n);
    text[n] = 0;

    double dv, want_d = strtod(text, NULL);
    int rc = jdoc_double(d, i, &dv);
    if (isinf(want_d)) {
        CHECK(rc == JNUM_RANGE, "'%s': jdoc_double gave %d, strtod overflows", text, rc);
    } else {
        CHECK(rc == JNUM_OK, "'%s': jdoc_double failed (%d)", text, rc);
        CHECK(memcmp(&dv, &want_d, sizeof dv) == 0, "'%s': jdoc_double %.17g, strtod %.17g", text,
              dv, want_d);
    }
    float fv, want_f = strtof(text, NULL);
    rc = jdoc_float(d, i, &fv);
    if (isinf(want_f)) {
        CHECK(rc == JNUM_RANGE, "'%s': jdoc_float gave %d, strtof overflows", text, rc);
    } else {
        CHECK(rc == JNUM_OK, "'%s': jdoc_float failed (%d)", text, rc);
        CHECK(memcmp(&fv, &want_f, sizeof fv) == 0, "'%s': jdoc_float %.9g, strtof %.9g", text,
              (double)fv, (double)want_f);
    }
    int integer = strpbrk(text, ".eE") == NULL;
    int64_t iv;
    rc = jdoc_int64(d, i, &iv);
    if (!integer) {
        CHECK(rc == JNUM_NOT_INTEGER, "'%s': jdoc_int64 gave %d on a non-integer", text, rc);
        return;
    }
    errno = 0;
    long long want_i = strtoll(text, NULL, 10);
    if (errno == ERANGE) {
        CHECK(rc == JNUM_RANGE, "'%s': jdoc_int64 gave %d, strtoll overflows", text, rc);
    } else {
        CHECK(rc == JNUM_OK && iv == want_i, "'%s': jdoc_int64 gave %d/%lld, strtoll %lld", text,
              rc, (long long)iv, want_i);
    }
}

static void compare(const struct jdoc *d, uint32_t i, json_t *j)
{
    switch (jdoc_type(d, i)) {
    case JT_NULL:
        CHECK(json_is_null(j), "token %u: jdoc null, jansson type %d", i, json_typeof(j));
        break;
    case JT_TRUE:
        CHECK(json_is_true(j), "token %u: jdoc true, jansson type %d", i, json_typeof(j));
        break;
    case JT_FALSE:
        CHECK(json_is_false(j), "token %u: jdoc false, jansson type %d", i, json_typeof(j));
        break;
    case JT_NUMBER:
        check_number(d, i);
        if (json_is_integer(j)) {
            int64_t v;
            CHECK(jdoc_int64(d, i, &v) == JNUM_OK && v == json_integer_value(j),
                  "token %u: jansson integer %lld, jdoc disagrees", i,
                  (long long)json_integer_value(j));
        } else {
            CHECK(json_is_real(j), "token %u: jdoc number, jansson type %d", i, json_typeof(j));
            double v, want = json_real_value(j);
            CHECK(jdoc_double(d, i, &v) == JNUM_OK && memcmp(&v, &want, sizeof v) == 0,
                  "token %u: jansson real %.17g, jdoc disagrees", i, want);
        }
        break;
    case JT_STRING:
        CHECK(json_is_string(j), "token %u: jdoc string, jansson type %d", i, json_typeof(j));
        CHECK(jdoc_strlen(d, i) == json_string_length(j) &&
                  memcmp(jdoc_str(d, i), json_string_value(j), json_string_length(j)) == 0,
              "token %u: strings differ", i);
        CHECK(jdoc_str(d, i)[jdoc_strlen(d, i)] == 0, "token %u: string not NUL-terminated", i);
        break;
    case JT_ARRAY: {
        CHECK(json_is_array(j), "token %u: jdoc array, jansson type %d", i, json_typeof(j));
        CHECK(jdoc_size(d, i) == json_array_size(j), "token %u: arrays of %zu and %zu", i,
              jdoc_size(d, i), json_array_size(j));
        size_t k = 0;
        int nested = 0;
        for (uint32_t t = i + 1; t < jdoc_end(d, i); t = jdoc_skip(d, t), k++) {
            CHECK(k < json_array_size(j), "token %u: more elements than counted", i);
            CHECK(jdoc_at(d, i, k) == t, "token %u: jdoc_at(%zu) is not the walk's", i, k);
            nested |= jdoc_type(d, t) == JT_ARRAY || jdoc_type(d, t) == JT_OBJECT;
            compare(d, t, json_array_get(j, k));
        }
        CHECK(k == json_array_size(j), "token %u: walked %zu of %zu elements", i, k,
              json_array_size(j));
        CHECK(jdoc_is_flat_array(d, i) == !nested, "token %u: JF_NESTED is wrong", i);
        break;
    }
    case JT_OBJECT: {
        CHECK(json_is_object(j), "token %u: jdoc object, jansson type %d", i, json_typeof(j));
        size_t members = 0, distinct = 0;
        for (uint32_t k = jdoc_first_key(d, i); k != JDOC_NONE; k = jdoc_next_key(d, i, k)) {
            members++;
            CHECK(jdoc_type(d, k) == JT_STRING, "token %u: key %u is not a string", i, k);
            json_t *v = json_object_get(j, jdoc_str(d, k));
            CHECK(v, "token %u: key '%s' unknown to jansson", i, jdoc_str(d, k));
            if (jdoc_get(d, i, jdoc_str(d, k)) == k + 1) { /* the last of its name */
                distinct++;
                compare(d, k + 1, v);
            }
        }
        CHECK(members == jdoc_size(d, i), "token %u: %zu members walked, %zu counted", i, members,
              jdoc_size(d, i));
        CHECK(distinct == json_object_size(j), "token %u: %zu distinct keys, jansson has %zu", i,
              distinct, json_object_size(j));
        break;
    }
    default:
        CHECK(0, "token %u: unknown type %d", i, jdoc_type(d, i));
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct jdoc d = {0};
    struct cerr e = {0};
    int rc = jdoc_parse(&d, (const char *)data, size, &e);
    json_error_t je;
    json_t *j = json_loadb((const char *)data, size, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
    if (rc == CORRAL_ENOMEM)
        goto out;
    CHECK(rc != CORRAL_OK || !memchr(data, 0, size), "jdoc accepts a raw NUL byte");
    if (!j) {
        enum json_error_code code = json_error_code(&je);
        /* jansson's own limits: numbers it cannot hold and NUL in keys. */
        int limit = code == json_error_numeric_overflow || code == json_error_null_byte_in_key;
        CHECK(rc != CORRAL_OK || limit, "jdoc accepts what jansson rejects: %s (line %d col %d)",
              je.text, je.line, je.column);
    } else if (rc != CORRAL_OK) {
        /* jansson skips a raw NUL byte met right after a number (its stream mistakes the
         * NUL put back for an empty buffer); a raw NUL is never JSON, jdoc is right. */
        CHECK(strstr(e.msg, "nesting too deep") != NULL || memchr(data, 0, size),
              "jdoc rejects what jansson accepts: %s", e.msg);
    } else {
        compare(&d, 0, j);
        CHECK(jdoc_skip(&d, 0) == d.n, "the root ends at token %u of %zu", jdoc_skip(&d, 0), d.n);
    }
out:
    json_decref(j);
    jdoc_free(&d);
    return 0;
}
