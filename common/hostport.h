/*
 * HOST:PORT as operators write listen addresses: "127.0.0.1:8000",
 * "localhost:8000", "[::1]:8000" (IPv6 in brackets, or its last group would
 * pass as a port).
 *
 * Usage: hostport_parse(s, host, sizeof host, &port) fills host (without the
 * brackets) and port (0..65535; 0 = any free port). Returns 0, or -1 for text
 * that is not HOST:PORT (no port, a bare IPv6 address, a host with spaces,
 * '/' or brackets, a port that is not decimal digits or is over 65535).
 */
#ifndef CORRAL_COMMON_HOSTPORT_H
#define CORRAL_COMMON_HOSTPORT_H

#include <stddef.h>

int hostport_parse(const char *s, char *host, size_t hl, int *port);

#endif
