#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "utf8.h"

static const char *g_component = "corral";
static enum log_level g_level = LOG_LEVEL_INFO;

int log_parse_level(const char *s)
{
    static const char *names[] = {"debug", "info", "warn", "error"};
    for (int i = 0; i < 4; i++)
        if (s && strcmp(s, names[i]) == 0)
            return i;
    return -1;
}

void log_init(const char *component)
{
    g_component = component;
    int l = log_parse_level(getenv("CORRAL_LOG_LEVEL"));
    if (l >= 0)
        g_level = (enum log_level)l;
}

void log_set_level(enum log_level lvl) { g_level = lvl; }

int log_enabled(enum log_level lvl) { return lvl >= g_level; }

void log_write(enum log_level lvl, const char *fmt, ...)
{
    static const char *tags[] = {"DEBUG", "INFO", "WARN", "ERROR"};
    if (!log_enabled(lvl))
        return;
    char line[2048];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof line, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s %s: ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, ts.tv_nsec / 1000000, tags[lvl], g_component);
    if (n < 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    va_end(ap);
    if (m < 0)
        return;
    size_t len = (size_t)n + (size_t)m;
    if (len > sizeof line - 2)
        len = sizeof line - 2;
    /* Messages carry client-sent names: control bytes and invalid UTF-8 are written as
     * \xNN, so a name cannot start a line of its own or make the log undecodable. */
    char out[sizeof line * 4];
    size_t o = (size_t)n;
    memcpy(out, line, (size_t)n);
    for (size_t i = (size_t)n; i < len; i++) {
        unsigned char c = (unsigned char)line[i];
        size_t k = c >= 0x80 ? utf8_len((const unsigned char *)line + i, len - i) : 0;
        if (k) {
            memcpy(out + o, line + i, k);
            o += k;
            i += k - 1;
        } else if (c < 0x20 || c >= 0x7f) {
            static const char hex[] = "0123456789abcdef";
            out[o++] = '\\';
            out[o++] = 'x';
            out[o++] = hex[c >> 4];
            out[o++] = hex[c & 15];
        } else {
            out[o++] = (char)c;
        }
    }
    out[o++] = '\n';
    /* One write per line keeps concurrent threads' lines whole. */
    ssize_t w = write(STDERR_FILENO, out, o);
    (void)w;
}
