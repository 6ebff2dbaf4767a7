#include "httphead.h"

#include <string.h>
#include <strings.h>

/* The value [*v, *ve) of the next `name` line after *pos (the request or status line
 * is never one); 1 found (*pos moves past it), 0 none left. */
static int next_field(const char *head, size_t len, const char *name, const char **pos,
                      const char **v, const char **ve)
{
    size_t nl = strlen(name);
    const char *end = head + len;
    const char *line = *pos ? *pos : memchr(head, '\n', len);
    while (line && ++line < end) {
        const char *eol = memchr(line, '\n', (size_t)(end - line));
        const char *le = eol ? eol : end;
        if ((size_t)(le - line) > nl && strncasecmp(line, name, nl) == 0 && line[nl] == ':') {
            const char *a = line + nl + 1, *b = le;
            while (a < b && (*a == ' ' || *a == '\t'))
                a++;
            while (b > a && (b[-1] == '\r' || b[-1] == ' ' || b[-1] == '\t'))
                b--;
            *v = a;
            *ve = b;
            *pos = eol;
            return 1;
        }
        line = eol;
    }
    return 0;
}

int httphead_get(const char *head, size_t len, const char *name, char *out, size_t olen)
{
    const char *pos = NULL, *v, *ve;
    if (!next_field(head, len, name, &pos, &v, &ve) || (size_t)(ve - v) >= olen)
        return -1;
    memcpy(out, v, (size_t)(ve - v));
    out[ve - v] = '\0';
    return 0;
}

int httphead_count(const char *head, size_t len, const char *name)
{
    const char *pos = NULL, *v, *ve;
    int n = 0;
    while (next_field(head, len, name, &pos, &v, &ve)) {
        n++;
        if (!pos)
            break;
    }
    return n;
}

int httphead_hex(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}
