/*
 * UTF-8 validity, as RFC 3629 defines it: no overlong forms, no surrogates, nothing
 * above U+10FFFF. Used where untrusted bytes become text for someone else: the JSON
 * reader refuses invalid strings, the JSON writer and the log replace invalid bytes, so
 * an answer is always valid JSON text and a log line always one line of text.
 *
 * Usage:
 *     size_t k = utf8_len(s, n);   // bytes of the valid sequence at s, 0 when invalid
 */
#ifndef CORRAL_COMMON_UTF8_H
#define CORRAL_COMMON_UTF8_H

#include <stddef.h>

/* Length of the valid multi-byte UTF-8 sequence at s (n bytes available), or 0; an
 * ASCII byte (below 0x80) is not a multi-byte sequence and also gives 0. */
size_t utf8_len(const unsigned char *s, size_t n);

#endif
