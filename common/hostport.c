#include "hostport.h"

#include <string.h>

int hostport_parse(const char *s, char *host, size_t hl, int *port)
{
    const char *colon;
    size_t n;
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (!close || close[1] != ':')
            return -1;
        n = (size_t)(close - s - 1);
        if (n == 0 || n >= hl)
            return -1;
        memcpy(host, s + 1, n);
        colon = close + 1;
    } else {
        colon = strrchr(s, ':');
        if (!colon)
            return -1;
        n = (size_t)(colon - s);
        if (n == 0 || n >= hl || memchr(s, ':', n))
            return -1;
        memcpy(host, s, n);
    }
    host[n] = '\0';
    for (const char *p = host; *p; p++)
        if ((unsigned char)*p <= ' ' || *p == '/' || *p == '[' || *p == ']' || *p == 0x7f)
            return -1;
    const char *d = colon + 1;
    size_t nd = strlen(d);
    if (nd == 0 || nd > 5)
        return -1;
    long v = 0;
    for (size_t i = 0; i < nd; i++) {
        if (d[i] < '0' || d[i] > '9')
            return -1;
        v = v * 10 + (d[i] - '0');
    }
    if (v > 65535)
        return -1;
    *port = (int)v;
    return 0;
}
