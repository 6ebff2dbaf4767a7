/*
 * corral error codes.
 *
 * Every fallible function in corral returns an int: 0 (CORRAL_OK) on success or
 * one of the negative codes below. The table CORRAL_ERR_MAP is the single source
 * of the enum, the code names, the default messages and the HTTP status each
 * code maps to at the router, so that a code keeps one meaning across processes
 * (the codes travel in the wire protocol's Error message).
 *
 * Functions that can fail with a message worth showing a user also take a
 * `struct cerr *`, which carries the code and a human-readable sentence naming
 * what was wrong and what was expected. cerr_set() fills it and returns the
 * code, so a failure path reads `return cerr_set(e, CORRAL_EINVAL, "...")`.
 * A NULL `struct cerr *` is allowed everywhere and simply drops the message.
 */
#ifndef CORRAL_COMMON_ERROR_H
#define CORRAL_COMMON_ERROR_H

#include <stddef.h>

/* XX(NAME, value, http_status, default message) */
#define CORRAL_ERR_MAP(XX)                                                          \
    XX(OK,          0,   200, "success")                                            \
    XX(EINVAL,     -1,   400, "invalid argument")                                   \
    XX(ENOTFOUND,  -2,   404, "not found")                                          \
    XX(EUNAVAIL,   -3,   503, "unavailable")                                        \
    XX(EUNSUPP,    -4,   501, "unsupported")                                        \
    XX(EINTERNAL,  -5,   500, "internal error")                                     \
    XX(ENOMEM,     -6,   500, "out of memory")                                      \
    XX(EIO,        -7,   500, "input/output error")                                 \
    XX(EPARSE,     -8,   400, "malformed input")                                    \
    XX(ETIMEDOUT,  -9,   504, "deadline exceeded")                                  \
    XX(EQUEUEFULL, -10,  429, "queue full")                                         \
    XX(EMISMATCH,  -11,  500, "result does not match the reference")                \
    XX(ETOOLARGE,  -12,  413, "too large")                                          \
    XX(EMETHOD,    -13,  405, "method not allowed")                                 \
    XX(EDRAINING,  -14,  503, "draining")                                      \
    XX(EMEDIATYPE, -15,  415, "unsupported media type")                        \
    XX(EUNAUTH,    -16,  401, "unauthorized")

enum corral_err {
#define CORRAL_ERR_ENUM(name, val, http, msg) CORRAL_##name = (val),
    CORRAL_ERR_MAP(CORRAL_ERR_ENUM)
#undef CORRAL_ERR_ENUM
};

#define CERR_MSG_MAX 512

struct cerr {
    int code;
    char msg[CERR_MSG_MAX];
};

/* "EINVAL" etc.; "EUNKNOWN" for a code outside the table. */
const char *corral_err_name(int code);
/* The table's default sentence for a code. */
const char *corral_strerror(int code);
/* HTTP status for a code; 500 for a code outside the table. */
int corral_err_http_status(int code);
/* True when `code` is one of the table's codes (used on codes read off the wire). */
int corral_err_known(int code);

/* Fills `e` (when not NULL) with code and a printf-formatted message; returns code. */
int cerr_set(struct cerr *e, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Prefixes the message already in `e` with a printf-formatted context; returns e->code. */
int cerr_prefix(struct cerr *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void cerr_clear(struct cerr *e);

#endif
