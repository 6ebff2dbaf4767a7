/*
 * httphead: one header's value in an HTTP/1.x head, a request's or an answer's, for
 * the small HTTP pieces (common/httpd.h and its endpoints, the scheduler's
 * router-metrics scraper).
 *
 * Usage:
 *     char v[32];
 *     if (httphead_get(head, head_len, "Content-Length", v, sizeof v) == 0)
 *         ... v holds the value, NUL-terminated, blanks around it trimmed ...
 *
 * The first line (the request or status line) is skipped; the name compares without
 * regard to case and must be followed by ':'; a line ends with \n (a \r before it is
 * dropped). At most `len` bytes of `head` are read, and it needs no NUL. Returns 0, or
 * -1 when the header is absent or its value does not fit in `out` (olen bytes).
 */
#ifndef CORRAL_COMMON_HTTPHEAD_H
#define CORRAL_COMMON_HTTPHEAD_H

#include <stddef.h>

int httphead_get(const char *head, size_t len, const char *name, char *out, size_t olen);
/* How many lines of the head name the header `name` (a second Content-Length is how
 * requests are smuggled past a proxy that reads the other one). */
int httphead_count(const char *head, size_t len, const char *name);
/* The value of one hexadecimal digit (percent escapes in targets and queries), or -1. */
int httphead_hex(int c);

#endif
