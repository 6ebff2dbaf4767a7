/*
 * What the libFuzzer targets share: the entry point's prototype, CHECK (a property
 * that must hold; on failure it names the target and the reason, then aborts so
 * libFuzzer keeps the input) and fuzz_copy (the input in a heap block of exactly its
 * size, so that AddressSanitizer sees any read past its end; NULL when out of memory,
 * freed by the caller).
 */
#ifndef CORRAL_FUZZ_H
#define CORRAL_FUZZ_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond, ...)                                                                          \
    do {                                                                                          \
        if (!(cond)) {                                                                            \
            fprintf(stderr, "%s: ", __FILE__);                                                    \
            fprintf(stderr, __VA_ARGS__);                                                         \
            fputc('\n', stderr);                                                                  \
            abort();                                                                              \
        }                                                                                         \
    } while (0)

static inline char *fuzz_copy(const uint8_t *data, size_t size)
{
    char *p = malloc(size ? size : 1);
    if (p && size)
        memcpy(p, data, size);
    return p;
}

#endif
