#include "token.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static int is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

int token_read(const char *path, char **token, struct cerr *e)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return cerr_set(e, CORRAL_EIO, "cannot read the token file %s: %s", path, strerror(errno));
    char *buf = malloc(TOKEN_MAX + 2);
    size_t n = buf ? fread(buf, 1, TOKEN_MAX + 1, f) : 0;
    fclose(f);
    if (!buf)
        return cerr_set(e, CORRAL_ENOMEM, "out of memory reading the token file");
    if (n > TOKEN_MAX) {
        free(buf);
        return cerr_set(e, CORRAL_EINVAL, "the token file %s is over %d bytes", path, TOKEN_MAX);
    }
    size_t a = 0;
    while (a < n && is_space(buf[a]))
        a++;
    while (n > a && is_space(buf[n - 1]))
        n--;
    if (n == a || memchr(buf + a, '\0', n - a) || memchr(buf + a, '\n', n - a)) {
        free(buf);
        return cerr_set(e, CORRAL_EINVAL, "the token file %s holds no token (expected one line "
                        "of text)", path);
    }
    memmove(buf, buf + a, n - a);
    buf[n - a] = '\0';
    *token = buf;
    return CORRAL_OK;
}

int token_equal(const char *want, const char *got, size_t got_len)
{
    size_t n = strlen(want);
    unsigned char diff = (unsigned char)(n != got_len);
    for (size_t i = 0; i < n; i++)
        diff |= (unsigned char)(want[i] ^ (i < got_len ? got[i] : 0));
    return diff == 0;
}

int token_bearer_ok(const char *h, const char *want)
{
    if (!h || strncasecmp(h, "Bearer ", 7) != 0)
        return 0;
    h += 7;
    while (*h == ' ')
        h++;
    size_t n = strlen(h);
    while (n && (h[n - 1] == ' ' || h[n - 1] == '\t'))
        n--;
    return token_equal(want, h, n);
}
