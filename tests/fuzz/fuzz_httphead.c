/*
 * One header's value out of an HTTP/1.x head (common/httphead.c), as the small
 * HTTP server (common/httpd.c) and the metrics scraper read them. Input: the
 * header name up to the first NUL, then the head.
 */

#include "fuzz.h"
#include "httphead.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *z = memchr(data, 0, size < 64 ? size : 64);
    if (!z)
        return 0;
    size_t hl = size - (size_t)(z - data) - 1;
    char *head = fuzz_copy(z + 1, hl);
    if (!head)
        return 0;
    char out[32];
    memset(out, 'x', sizeof out);
    if (httphead_get(head, hl, (const char *)data, out, sizeof out) == 0)
        CHECK(memchr(out, 0, sizeof out), "a value found is not NUL-terminated within out");
    free(head);
    return 0;
}
