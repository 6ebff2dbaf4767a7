/*
 * The router's HTTP server (router/http.c) under libuv, as clients reach it: each input
 * is the byte stream of one client connection, written to a real loopback connection of
 * a server running on this process's loop, then half-closed; the loop runs until the
 * server has closed the connection. The handler answers every request at once and
 * checks what the server hands it: a method, a NUL-terminated percent-decoded path
 * without NUL bytes, headers within the limits, a body within the body limit; an infer
 * body then goes through the OIP decode (JSON and binary extension) as the router's. Limits
 * are small (2 KiB of headers, 8 KiB of body, 8 pipelined requests) so inputs reach them.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include "fuzz.h"
#include "http.h"
#include "oip_codec.h"
#include "log.h"

static uv_loop_t g_loop;
static struct http_server *g_srv;
static int g_port;
static struct http_limits g_lim;

static void handle(void *arg, struct http_request *req)
{
    (void)arg;
    CHECK(req->method_name && req->path && req->query && req->target, "a request without "
          "its method, path, query or target");
    CHECK(req->path[0] == '/', "path '%s' does not start with '/'", req->path);
    CHECK(req->n_headers >= 0 && (unsigned)req->n_headers <= g_lim.max_headers,
          "%d headers passed a limit of %u", req->n_headers, g_lim.max_headers);
    CHECK(req->body_len <= g_lim.max_body_bytes, "a body of %zu bytes passed the %zu limit",
          req->body_len, g_lim.max_body_bytes);
    CHECK(req->body && req->body[req->body_len] == '\0', "the body is not NUL-terminated");
    for (int i = 0; i < req->n_headers; i++)
        CHECK(req->headers[i].name && req->headers[i].value, "header %d is missing a part", i);
    /* An infer body goes on to the OIP decode, split as the router splits it. */
    size_t pl = strlen(req->path);
    if (pl >= 6 && strcmp(req->path + pl - 6, "/infer") == 0) {
        const char *hcl = http_request_header(req, "Inference-Header-Content-Length");
        char *end = NULL;
        unsigned long long json_len = hcl ? strtoull(hcl, &end, 10) : req->body_len;
        if (!hcl || (*hcl && !*end && hcl[0] != '-' && json_len <= req->body_len)) {
            struct oip_infer in;
            struct cerr e = {0};
            if (oip_infer_parse((const char *)req->body, (size_t)json_len,
                                req->body + json_len, req->body_len - (size_t)json_len, "m",
                                "", &in, &e) != 0)
                CHECK(e.msg[0], "a refused infer body without a message");
            oip_infer_free(&in);
        }
    }
    const char *ct = http_request_header(req, "Content-Type");
    char *body = malloc(64);
    int n = body ? snprintf(body, 64, "{\"headers\":%d,\"bytes\":%zu,\"ct\":%d}", req->n_headers,
                            req->body_len, ct != NULL)
                 : 0;
    http_respond(req, 200, "application/json", NULL, body, body ? (size_t)n : 0);
}

static void setup(void)
{
    struct cerr e = {0};
    signal(SIGPIPE, SIG_IGN);
    /* Every rejected input is an error line; above the highest level, none is written. */
    log_set_level((enum log_level)(LOG_LEVEL_ERROR + 1));
    uv_loop_init(&g_loop);
    http_limits_default(&g_lim);
    g_lim.max_header_bytes = 2048;
    g_lim.max_body_bytes = 8192;
    g_lim.max_pipelined = 8;
    g_lim.max_headers = 32;
    g_lim.request_timeout_ms = 0;
    CHECK(http_server_new(&g_srv, &g_loop, &g_lim, handle, NULL, &e) == 0, "server: %s", e.msg);
    CHECK(http_server_listen(g_srv, "127.0.0.1", 0, &g_port, &e) == 0, "listen: %s", e.msg);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!g_srv)
        setup();
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(fd >= 0, "socket: %s", strerror(errno));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)g_port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int rc;
    do /* libFuzzer's timer signal may interrupt it */
        rc = connect(fd, (struct sockaddr *)&a, sizeof a);
    while (rc != 0 && errno == EINTR);
    CHECK(rc == 0 || errno == EISCONN, "connect: %s", strerror(errno));
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    size_t off = 0;
    int shut = 0, eof = 0;
    char sink[4096];
    /* Feed, let the loop turn, drain the answers; the server closes after the half-close
     * (or earlier, on an error). The turn limit keeps an input from hanging the run. */
    for (int turn = 0; turn < 20000 && !eof; turn++) {
        if (off < size) {
            ssize_t w = write(fd, data + off, size - off);
            if (w > 0)
                off += (size_t)w;
            else if (w < 0 && errno != EAGAIN)
                off = size; /* the server closed early: nothing more goes in */
        } else if (!shut) {
            shutdown(fd, SHUT_WR);
            shut = 1;
        }
        uv_run(&g_loop, UV_RUN_NOWAIT);
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, turn < 100 ? 0 : 1) > 0) {
            ssize_t r = read(fd, sink, sizeof sink);
            if (r == 0 || (r < 0 && errno != EAGAIN))
                eof = 1;
        }
    }
    close(fd);
    for (int i = 0; i < 8; i++)
        uv_run(&g_loop, UV_RUN_NOWAIT);
    return 0;
}
