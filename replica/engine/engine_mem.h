/*
 * Liveness-based memory planning for one arena (in the manner of ggml's
 * graph allocator): buffers with a lifetime [first, last] in step order are
 * placed at offsets so that buffers alive at the same time never overlap,
 * reusing the space of dead ones (best fit among free blocks, then the end).
 *
 * Usage:
 *     struct mem_req r[n] = {{.bytes = .., .first = producer, .last = last_reader}, ...};
 *     size_t total;
 *     if (plan_mem_assign(r, n, 64, &total, &e)) fail;   // r[i].offset filled
 *
 * A buffer with last < first (never read) lives only during step `first`.
 * last = INT_MAX pins a buffer to the end (model outputs). Offsets are
 * multiples of `align` (a power of two).
 */
#ifndef CORRAL_ENGINE_MEM_H
#define CORRAL_ENGINE_MEM_H

#include <stddef.h>

#include "error.h"

struct mem_req {
    size_t bytes;
    int first, last;
    size_t offset; /* out */
};

int plan_mem_assign(struct mem_req *r, size_t n, size_t align, size_t *total, struct cerr *e);

/* malloc_trim where glibc has it: hands freed load and compile memory back to the system. */
void engine_trim_heap(void);

#endif
