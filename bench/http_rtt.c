/*
 * corral-http-rtt: latency of HTTP POSTs sent one at a time on one keep-alive
 * connection, by a client as lean as corral-direct-rpc (blocking socket, no
 * event loop), so that the two p50s differ by what the router adds.
 *
 * Usage: corral-http-rtt HOST PORT PATH BODY.json [REQUESTS]
 * Prints  requests=N p50_us=... p99_us=... errors=N  after 200 uncounted
 * warm-up requests; any answer other than 200 counts as an error.
 */
#define _GNU_SOURCE /* strcasestr */
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define WARMUP 200

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Reads one response (headers and a Content-Length body); returns its status or -1. */
static int read_response(int fd, char *buf, size_t cap)
{
    size_t have = 0;
    for (;;) {
        ssize_t r = read(fd, buf + have, cap - have - 1);
        if (r <= 0)
            return -1;
        have += (size_t)r;
        buf[have] = 0;
        char *end = strstr(buf, "\r\n\r\n");
        if (!end)
            continue;
        const char *cl = strcasestr(buf, "\r\nContent-Length:");
        size_t body = cl && cl < end ? strtoul(cl + 17, NULL, 10) : 0;
        size_t need = (size_t)(end + 4 - buf) + body;
        if (need >= cap)
            return -1;
        while (have < need) {
            r = read(fd, buf + have, cap - have - 1);
            if (r <= 0)
                return -1;
            have += (size_t)r;
        }
        return have == need && strncmp(buf, "HTTP/1.1 ", 9) == 0 ? atoi(buf + 9) : -1;
    }
}

int main(int argc, char **argv)
{
    if (argc < 5 || argc > 6) {
        fprintf(stderr, "usage: corral-http-rtt HOST PORT PATH BODY.json [REQUESTS]\n");
        return 2;
    }
    long total = argc == 6 ? atol(argv[5]) : 10000;
    FILE *f = fopen(argv[4], "rb");
    if (!f || total < 1) {
        fprintf(stderr, "corral-http-rtt: cannot read %s (or REQUESTS < 1)\n", argv[4]);
        return 2;
    }
    static char body[1 << 20], req[(1 << 20) + 1024], resp[1 << 20];
    size_t blen = fread(body, 1, sizeof body, f);
    fclose(f);
    int hl = snprintf(req, sizeof req, "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: "
                      "application/json\r\nContent-Length: %zu\r\n\r\n", argv[3], argv[1], blen);
    memcpy(req + hl, body, blen);
    size_t rlen = (size_t)hl + blen;
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai = NULL;
    if (getaddrinfo(argv[1], argv[2], &hints, &ai) != 0 || !ai) {
        fprintf(stderr, "corral-http-rtt: cannot resolve %s\n", argv[1]);
        return 1;
    }
    int fd = socket(ai->ai_family, SOCK_STREAM, 0), one = 1;
    if (fd < 0 || connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
        perror("corral-http-rtt: connect");
        return 1;
    }
    freeaddrinfo(ai);
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    double *lat = malloc(sizeof *lat * (size_t)total);
    long errors = 0;
    for (long i = 0; i < total + WARMUP; i++) {
        double t0 = now_us();
        if (write(fd, req, rlen) != (ssize_t)rlen) {
            fprintf(stderr, "corral-http-rtt: write failed after %ld requests\n", i);
            return 1;
        }
        int st = read_response(fd, resp, sizeof resp);
        if (st < 0) {
            fprintf(stderr, "corral-http-rtt: bad or missing response after %ld requests\n", i);
            return 1;
        }
        if (st != 200)
            errors++;
        if (i >= WARMUP)
            lat[i - WARMUP] = now_us() - t0;
    }
    close(fd);
    qsort(lat, (size_t)total, sizeof *lat, cmp_double);
    printf("requests=%ld p50_us=%.1f p99_us=%.1f errors=%ld\n", total, lat[total / 2],
           lat[(size_t)((double)total * 0.99)], errors);
    free(lat);
    return errors ? 1 : 0;
}
