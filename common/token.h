/*
 * Bearer tokens read from a file, for the endpoints that require one (the
 * router's control endpoint, the scheduler's admin API) and for the tools that
 * call them (corralctl --token-file).
 *
 * Usage: token_read(path, &tok, &e); ... free(tok). The file holds one line of
 * text (at most TOKEN_MAX bytes; surrounding whitespace and the newline are
 * dropped). An empty file, a second line or a NUL byte is an error, so a
 * broken file never turns into an empty token that anyone could send. Error
 * messages name the file, never the token. token_equal() compares in time that
 * depends only on the lengths, so timing says nothing of the token.
 */
#ifndef CORRAL_COMMON_TOKEN_H
#define CORRAL_COMMON_TOKEN_H

#include <stddef.h>

#include "error.h"

#define TOKEN_MAX 4096

int token_read(const char *path, char **token, struct cerr *e);
int token_equal(const char *want, const char *got, size_t got_len);
/* True when an Authorization header's value (NULL: absent) is "Bearer <want>": the
 * scheme in any case, blanks around the token ignored, compared as token_equal does. */
int token_bearer_ok(const char *authorization, const char *want);

#endif
