/*
 * httphead: one header's value in an HTTP/1.x head, a request's or an answer's, for
 * the scheduler's small HTTP pieces (the admin server, the router-metrics scraper).
 *
 * Usage:
 *     char v[32];
 *     if (sched_http_header(head, head_len, "Content-Length", v, sizeof v) == 0)
 *         ... v holds the value, NUL-terminated, blanks around it trimmed ...
 *
 * The first line (the request or status line) is skipped; the name compares without
 * regard to case and must be followed by ':'; a line ends with \n (a \r before it is
 * dropped). At most `len` bytes of `head` are read, and it needs no NUL. Returns 0, or
 * -1 when the header is absent or its value does not fit in `out` (olen bytes).
 */
#ifndef CORRAL_SCHEDULER_HTTPHEAD_H
#define CORRAL_SCHEDULER_HTTPHEAD_H

#include <stddef.h>

int sched_http_header(const char *head, size_t len, const char *name, char *out, size_t olen);

#endif
