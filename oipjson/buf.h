/*
 * Growable byte buffer used to build HTTP responses and JSON text.
 *
 * Usage: `struct buf b = {0};` then buf_append / buf_printf / buf_json_string;
 * check b.oom once at the end (every append after an allocation failure is a
 * no-op, so call sites do not need to test each step). buf_steal hands the
 * malloc'd bytes to the caller (NUL-terminated, length in *len) and resets the
 * buffer; buf_free drops them.
 */
#ifndef CORRAL_OIPJSON_BUF_H
#define CORRAL_OIPJSON_BUF_H

#include <stddef.h>

struct buf {
    char *data;
    size_t len;
    size_t cap;
    int oom;
};

int buf_reserve(struct buf *b, size_t extra);
void buf_append(struct buf *b, const void *p, size_t n);
void buf_puts(struct buf *b, const char *s);
void buf_putc(struct buf *b, char c);
void buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Appends `s` (n bytes) as a quoted JSON string with the required escapes. */
void buf_json_string(struct buf *b, const char *s, size_t n);
/* Opens an array's object whose first member is "name": `{"name":"..."`, after a comma
 * unless it is the first element. A NULL name is written as "". */
void buf_json_named(struct buf *b, int first, const char *name);
/* Returns the bytes (NUL-terminated) and resets b; NULL if an allocation failed. */
char *buf_steal(struct buf *b, size_t *len);
void buf_free(struct buf *b);

#endif
