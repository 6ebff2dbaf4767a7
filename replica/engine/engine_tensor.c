#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "engine_internal.h"

/* ONNX stores raw_data little-endian; the copies below assume the host matches. */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the ONNX loader assumes a little-endian host"
#endif

enum dtype engine_dtype_from_onnx(int32_t t)
{
    switch (t) {
    case ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT: return DT_FP32;
    case ONNX__TENSOR_PROTO__DATA_TYPE__UINT8: return DT_UINT8;
    case ONNX__TENSOR_PROTO__DATA_TYPE__INT8: return DT_INT8;
    case ONNX__TENSOR_PROTO__DATA_TYPE__UINT16: return DT_UINT16;
    case ONNX__TENSOR_PROTO__DATA_TYPE__INT16: return DT_INT16;
    case ONNX__TENSOR_PROTO__DATA_TYPE__INT32: return DT_INT32;
    case ONNX__TENSOR_PROTO__DATA_TYPE__INT64: return DT_INT64;
    case ONNX__TENSOR_PROTO__DATA_TYPE__BOOL: return DT_BOOL;
    case ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT16: return DT_FP16;
    case ONNX__TENSOR_PROTO__DATA_TYPE__DOUBLE: return DT_FP64;
    case ONNX__TENSOR_PROTO__DATA_TYPE__UINT32: return DT_UINT32;
    case ONNX__TENSOR_PROTO__DATA_TYPE__UINT64: return DT_UINT64;
    case ONNX__TENSOR_PROTO__DATA_TYPE__BFLOAT16: return DT_BF16;
    default: return DT_INVALID; /* STRING, complex, float8 and unknown codes */
    }
}

const char *engine_onnx_type_name(int32_t t)
{
    static const char *names[] = {
        "UNDEFINED", "FLOAT",  "UINT8",  "INT8",      "UINT16",     "INT16",
        "INT32",     "INT64",  "STRING", "BOOL",      "FLOAT16",    "DOUBLE",
        "UINT32",    "UINT64", "COMPLEX64", "COMPLEX128", "BFLOAT16",
    };
    if (t >= 0 && (size_t)t < sizeof names / sizeof names[0])
        return names[t];
    return "an unknown type";
}

/*
 * The typed repeated fields each hold a fixed family of types (onnx.proto's
 * comments on TensorProto). Data found in any other field is rejected rather
 * than guessed at.
 */
enum typed_field { TF_FLOAT, TF_INT32, TF_INT64, TF_DOUBLE, TF_UINT64 };

static enum typed_field field_for(enum dtype t)
{
    switch (t) {
    case DT_FP32: return TF_FLOAT;
    case DT_INT64: return TF_INT64;
    case DT_FP64: return TF_DOUBLE;
    case DT_UINT32:
    case DT_UINT64: return TF_UINT64;
    default: return TF_INT32; /* INT32 and narrower integers, BOOL, FP16, BF16 */
    }
}

static const char *field_name(enum typed_field f)
{
    static const char *n[] = {"float_data", "int32_data", "int64_data", "double_data",
                              "uint64_data"};
    return n[f];
}

/*
 * The external file a tensor names, for the refusal message: made printable and
 * cut short, since it comes from the file. Whether it would leave the model
 * directory (absolute, or a ".." component) is said too; either way the engine
 * opens nothing but the .onnx file itself.
 */
static int external_location(const Onnx__TensorProto *tp, char *buf, size_t len)
{
    const char *loc = NULL;
    for (size_t i = 0; i < tp->n_external_data; i++)
        if (tp->external_data[i]->key && strcmp(tp->external_data[i]->key, "location") == 0)
            loc = tp->external_data[i]->value;
    if (!loc) {
        snprintf(buf, len, "no location given");
        return 0;
    }
    size_t n = 0;
    for (const char *c = loc; *c && n + 4 < len; c++)
        buf[n++] = *c >= 0x20 && *c < 0x7f ? *c : '?';
    if (strlen(loc) > n && n + 3 < len)
        buf[n++] = '.', buf[n++] = '.', buf[n++] = '.';
    buf[n] = '\0';
    /* Both separators count: exporters on Windows write backslashes. */
    int escapes = loc[0] == '/' || loc[0] == '\\';
    for (const char *c = loc; c && !escapes; c = strpbrk(c, "/\\"), c = c ? c + 1 : NULL)
        escapes = c[0] == '.' && c[1] == '.' && (!c[2] || c[2] == '/' || c[2] == '\\');
    return escapes;
}

int engine_tensor_from_proto(const Onnx__TensorProto *tp, const char *what, const char *name,
                          struct tensor *out, struct cerr *e)
{
    char sb[160];
    memset(out, 0, sizeof *out);
    if ((tp->has_data_location && tp->data_location == ONNX__TENSOR_PROTO__DATA_LOCATION__EXTERNAL) ||
        tp->n_external_data > 0) {
        int escapes = external_location(tp, sb, sizeof sb);
        return cerr_set(e, escapes ? CORRAL_EINVAL : CORRAL_EUNSUPP,
                        "%s stores its data in an external file ('%s'%s), which the engine does "
                        "not read (save the model with its weights inside the .onnx file)",
                        what, sb, escapes ? ", a path that escapes the model directory" : "");
    }
    if (tp->segment)
        return cerr_set(e, CORRAL_EUNSUPP, "%s is a segment of a larger tensor, which the engine "
                        "does not support", what);
    int32_t ot = tp->has_data_type ? tp->data_type : 0;
    enum dtype dt = engine_dtype_from_onnx(ot);
    if (dt == DT_INVALID)
        return cerr_set(e, CORRAL_EUNSUPP, "%s has data type %s (%d), which the engine does not "
                        "support", what, engine_onnx_type_name(ot), (int)ot);
    if (tp->n_dims > TENSOR_MAX_DIMS)
        return cerr_set(e, CORRAL_EUNSUPP, "%s has %zu dimensions, the engine supports at most %d",
                        what, tp->n_dims, TENSOR_MAX_DIMS);
    int64_t dims[TENSOR_MAX_DIMS] = {0};
    for (size_t i = 0; i < tp->n_dims; i++) {
        if (tp->dims[i] < 0)
            return cerr_set(e, CORRAL_EINVAL, "%s has dimension %zu of %lld, expected >= 0", what,
                            i, (long long)tp->dims[i]);
        dims[i] = tp->dims[i];
    }
    int ndim = (int)tp->n_dims;
    int64_t numel = 0;
    size_t nbytes = 0;
    int rc = tensor_numel(dims, ndim, &numel, e);
    if (!rc)
        rc = tensor_nbytes(dt, dims, ndim, &nbytes, e);
    if (rc)
        return cerr_prefix(e, "%s", what);

    size_t counts[] = {tp->n_float_data, tp->n_int32_data, tp->n_int64_data, tp->n_double_data,
                       tp->n_uint64_data};
    enum typed_field want = field_for(dt);
    if (tp->has_raw_data || tp->raw_data.len > 0) {
        for (int f = 0; f < 5; f++)
            if (counts[f])
                return cerr_set(e, CORRAL_EINVAL, "%s has both raw_data and %s", what,
                                field_name((enum typed_field)f));
        if (tp->raw_data.len != nbytes)
            return cerr_set(e, CORRAL_EINVAL,
                            "%s has %zu bytes of raw_data, expected %zu for %s of shape %s", what,
                            tp->raw_data.len, nbytes, dtype_name(dt),
                            tensor_shape_str(dims, ndim, sb, sizeof sb));
    } else {
        for (int f = 0; f < 5; f++)
            if (counts[f] && (enum typed_field)f != want)
                return cerr_set(e, CORRAL_EINVAL, "%s is %s but has data in %s", what,
                                dtype_name(dt), field_name((enum typed_field)f));
        if (counts[want] != (size_t)numel)
            return cerr_set(e, CORRAL_EINVAL, "%s has %zu values in %s, expected %lld for shape %s",
                            what, counts[want], field_name(want), (long long)numel,
                            tensor_shape_str(dims, ndim, sb, sizeof sb));
    }

    rc = tensor_alloc(out, name, dt, dims, ndim, e);
    if (rc)
        return cerr_prefix(e, "%s", what);
    if (tp->has_raw_data || tp->raw_data.len > 0) {
        if (nbytes)
            memcpy(out->data, tp->raw_data.data, nbytes);
        return CORRAL_OK;
    }
    size_t n = (size_t)numel;
    if (n == 0)
        return CORRAL_OK; /* the typed field may be absent (a NULL array) */
    switch (dt) {
    case DT_FP32: memcpy(out->data, tp->float_data, n * sizeof(float)); break;
    case DT_INT64: memcpy(out->data, tp->int64_data, n * sizeof(int64_t)); break;
    case DT_FP64: memcpy(out->data, tp->double_data, n * sizeof(double)); break;
    case DT_UINT64: memcpy(out->data, tp->uint64_data, n * sizeof(uint64_t)); break;
    case DT_UINT32:
        for (size_t i = 0; i < n; i++)
            ((uint32_t *)out->data)[i] = (uint32_t)tp->uint64_data[i];
        break;
    case DT_INT32: memcpy(out->data, tp->int32_data, n * sizeof(int32_t)); break;
    case DT_BOOL:
        for (size_t i = 0; i < n; i++)
            ((uint8_t *)out->data)[i] = tp->int32_data[i] != 0;
        break;
    case DT_UINT8:
    case DT_INT8:
        /* Narrow integers keep their low bits, as two's complement prescribes. */
        for (size_t i = 0; i < n; i++)
            ((uint8_t *)out->data)[i] = (uint8_t)(uint32_t)tp->int32_data[i];
        break;
    case DT_UINT16:
    case DT_INT16:
    case DT_FP16:
    case DT_BF16:
        /* 16-bit floats travel as their bit patterns in the low half of an int32. */
        for (size_t i = 0; i < n; i++)
            ((uint16_t *)out->data)[i] = (uint16_t)(uint32_t)tp->int32_data[i];
        break;
    default:
        tensor_release(out);
        return cerr_set(e, CORRAL_EINTERNAL, "%s: no converter for %s", what, dtype_name(dt));
    }
    return CORRAL_OK;
}

/* Reads a whole file; the size bound keeps a corrupt or hostile file from exhausting memory. */
static int read_file(const char *path, size_t max, uint8_t **buf, size_t *len, struct cerr *e)
{
    int rc = CORRAL_OK;
    uint8_t *b = NULL;
    FILE *f = fopen(path, "rb");
    if (!f)
        return cerr_set(e, errno == ENOENT ? CORRAL_ENOTFOUND : CORRAL_EIO, "cannot open '%s': %s",
                        path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0) {
        rc = cerr_set(e, CORRAL_EIO, "cannot stat '%s': %s", path, strerror(errno));
        goto fail;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = cerr_set(e, CORRAL_EINVAL, "'%s' is not a regular file", path);
        goto fail;
    }
    if ((uint64_t)st.st_size > max) {
        rc = cerr_set(e, CORRAL_ETOOLARGE, "'%s' is %lld bytes, more than the %zu byte limit",
                      path, (long long)st.st_size, max);
        goto fail;
    }
    size_t n = (size_t)st.st_size;
    b = malloc(n ? n : 1);
    if (!b) {
        rc = cerr_set(e, CORRAL_ENOMEM, "cannot allocate %zu bytes to read '%s'", n, path);
        goto fail;
    }
    if (n && fread(b, 1, n, f) != n) {
        rc = cerr_set(e, CORRAL_EIO, "cannot read '%s': short read", path);
        goto fail;
    }
    fclose(f);
    *buf = b;
    *len = n;
    return CORRAL_OK;
fail:
    free(b);
    fclose(f);
    return rc;
}

int engine_read_file(const char *path, size_t max, uint8_t **buf, size_t *len, struct cerr *e)
{
    return read_file(path, max, buf, len, e);
}

int engine_read_tensor_pb(const char *path, struct tensor *out, char **name_out, struct cerr *e)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    Onnx__TensorProto *tp = NULL;
    char *name = NULL;
    char what[300];
    memset(out, 0, sizeof *out);
    *name_out = NULL;
    int rc = read_file(path, TENSOR_MAX_BYTES + ((size_t)1 << 20), &buf, &len, e);
    if (rc)
        return rc;
    tp = onnx__tensor_proto__unpack(NULL, len, buf);
    if (!tp) {
        rc = cerr_set(e, CORRAL_EPARSE, "'%s' is not a valid ONNX TensorProto (protobuf parse "
                      "failed)", path);
        goto fail;
    }
    name = strdup(tp->name ? tp->name : "");
    if (!name) {
        rc = cerr_set(e, CORRAL_ENOMEM, "out of memory reading '%s'", path);
        goto fail;
    }
    snprintf(what, sizeof what, "tensor '%s' in '%s'", name, path);
    rc = engine_tensor_from_proto(tp, what, name, out, e);
    if (rc)
        goto fail;
    onnx__tensor_proto__free_unpacked(tp, NULL);
    free(buf);
    *name_out = name;
    return CORRAL_OK;
fail:
    if (tp)
        onnx__tensor_proto__free_unpacked(tp, NULL);
    free(buf);
    free(name);
    return rc;
}
