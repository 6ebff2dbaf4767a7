/*
 * tcp://HOST:PORT as the SP endpoints take it (see sp_proto.h).
 */
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "sp_proto.h"

int sp_url_split(const char *url, const char *what, int *family, char *host, size_t hl,
                 char *port, size_t pl, struct cerr *e)
{
    static const struct {
        const char *scheme;
        int family;
    } schemes[] = {{"tcp://", AF_UNSPEC}, {"tcp4://", AF_INET}, {"tcp6://", AF_INET6}};
    const char *p = NULL;
    for (size_t i = 0; i < sizeof schemes / sizeof schemes[0] && !p; i++)
        if (strncmp(url, schemes[i].scheme, strlen(schemes[i].scheme)) == 0) {
            p = url + strlen(schemes[i].scheme);
            *family = schemes[i].family;
        }
    if (!p)
        return cerr_set(e, CORRAL_EINVAL, "%s '%s' is not supported: expected tcp://HOST:PORT",
                        what, url);
    const char *colon;
    size_t n;
    if (*p == '[') {
        const char *end = strchr(p, ']');
        if (!end || end[1] != ':')
            return cerr_set(e, CORRAL_EINVAL, "%s '%s' has a malformed [IPv6] address; expected "
                            "tcp://[ADDR]:PORT", what, url);
        p++;
        n = (size_t)(end - p);
        colon = end + 1;
    } else {
        colon = strrchr(p, ':');
        if (!colon)
            return cerr_set(e, CORRAL_EINVAL, "%s '%s' has no port; expected tcp://HOST:PORT",
                            what, url);
        n = (size_t)(colon - p);
    }
    if (n >= hl)
        return cerr_set(e, CORRAL_EINVAL, "%s '%s' has a host name that is too long", what, url);
    memcpy(host, p, n);
    host[n] = '\0';
    if (strcmp(host, "*") == 0)
        host[0] = '\0';
    const char *ps = colon + 1;
    size_t digits = strspn(ps, "0123456789");
    if (!*ps || ps[digits] || digits > 5 || atol(ps) > 65535 || digits >= pl)
        return cerr_set(e, CORRAL_EINVAL, "%s '%s' has port '%s'; expected 0 to 65535", what, url,
                        ps);
    memcpy(port, ps, digits + 1);
    return CORRAL_OK;
}
