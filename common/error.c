#include "error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "utf8.h"

const char *corral_err_name(int code)
{
    switch (code) {
#define XX(name, val, http, msg) case val: return #name;
        CORRAL_ERR_MAP(XX)
#undef XX
    }
    return "EUNKNOWN";
}

const char *corral_strerror(int code)
{
    switch (code) {
#define XX(name, val, http, msg) case val: return msg;
        CORRAL_ERR_MAP(XX)
#undef XX
    }
    return "unknown error";
}

int corral_err_http_status(int code)
{
    switch (code) {
#define XX(name, val, http, msg) case val: return http;
        CORRAL_ERR_MAP(XX)
#undef XX
    }
    return 500;
}

int corral_err_known(int code)
{
    switch (code) {
#define XX(name, val, http, msg) case val: return 1;
        CORRAL_ERR_MAP(XX)
#undef XX
    }
    return 0;
}

/* Messages quote what clients sent and travel as text (JSON bodies, the wire's
 * Error.message, a proto3 string): bytes that are not valid UTF-8 become '?' in place
 * (a sequence cut by truncation too). */
static void text_clean(char *m)
{
    size_t n = strlen(m);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)m[i];
        size_t k = c >= 0x80 ? utf8_len((const unsigned char *)m + i, n - i) : 0;
        if (k)
            i += k - 1;
        else if (c >= 0x80)
            m[i] = '?';
    }
}

int cerr_set(struct cerr *e, int code, const char *fmt, ...)
{
    if (e) {
        va_list ap;
        va_start(ap, fmt);
        e->code = code;
        vsnprintf(e->msg, sizeof e->msg, fmt, ap);
        va_end(ap);
        text_clean(e->msg);
    }
    return code;
}

int cerr_prefix(struct cerr *e, const char *fmt, ...)
{
    if (!e)
        return CORRAL_EINTERNAL;
    char head[CERR_MSG_MAX], old[CERR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(head, sizeof head, fmt, ap);
    va_end(ap);
    memcpy(old, e->msg, sizeof old);
    /* Truncation is acceptable: the message is for people and stays bounded. */
    size_t hl = strnlen(head, sizeof e->msg - 3);
    memcpy(e->msg, head, hl);
    memcpy(e->msg + hl, ": ", 2);
    size_t room = sizeof e->msg - hl - 3;
    size_t ol = strnlen(old, room);
    memcpy(e->msg + hl + 2, old, ol);
    e->msg[hl + 2 + ol] = '\0';
    text_clean(e->msg);
    return e->code;
}

void cerr_clear(struct cerr *e)
{
    if (e) {
        e->code = CORRAL_OK;
        e->msg[0] = '\0';
    }
}
