#include <stdint.h>
#include <stdlib.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#include "engine_mem.h"

/*
 * Greedy by size: the largest buffers are placed first, each at the lowest
 * offset that does not collide with an already placed buffer whose lifetime
 * overlaps its own. Placing big buffers first keeps the small ones filling the
 * gaps, which on CNN graphs comes close to the peak of live bytes.
 */

struct placed {
    size_t off, end;
    int first, last;
};

static const struct mem_req *sort_base;

static int by_size_desc(const void *a, const void *b)
{
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    const struct mem_req *rx = &sort_base[x], *ry = &sort_base[y];
    if (rx->bytes != ry->bytes)
        return rx->bytes > ry->bytes ? -1 : 1;
    if (rx->first != ry->first)
        return rx->first < ry->first ? -1 : 1;
    return x < y ? -1 : x > y;
}

static int by_offset(const void *a, const void *b)
{
    const struct placed *x = a, *y = b;
    return x->off < y->off ? -1 : x->off > y->off;
}

int plan_mem_assign(struct mem_req *r, size_t n, size_t align, size_t *total, struct cerr *e)
{
    size_t *order = NULL;
    struct placed *pl = NULL, *tmp = NULL;
    int rc = CORRAL_OK;
    *total = 0;
    if (!n)
        return CORRAL_OK;
    order = malloc(n * sizeof *order);
    pl = malloc(n * sizeof *pl);
    tmp = malloc(n * sizeof *tmp);
    if (!order || !pl || !tmp) {
        rc = cerr_set(e, CORRAL_ENOMEM, "out of memory planning the arena");
        goto done;
    }
    for (size_t i = 0; i < n; i++)
        order[i] = i;
    sort_base = r;
    qsort(order, n, sizeof *order, by_size_desc);
    size_t n_pl = 0, top = 0;
    for (size_t k = 0; k < n; k++) {
        struct mem_req *q = &r[order[k]];
        int first = q->first, last = q->last < q->first ? q->first : q->last;
        if (q->bytes > SIZE_MAX / 2) {
            rc = cerr_set(e, CORRAL_ETOOLARGE, "a buffer of %zu bytes is too large", q->bytes);
            goto done;
        }
        size_t sz = (q->bytes + align - 1) & ~(align - 1);
        /* The placed buffers alive at the same time, by offset: try each gap in turn. */
        size_t m = 0;
        for (size_t j = 0; j < n_pl; j++)
            if (!(pl[j].last < first || last < pl[j].first))
                tmp[m++] = pl[j];
        qsort(tmp, m, sizeof *tmp, by_offset);
        size_t off = 0;
        for (size_t j = 0; j < m; j++) {
            if (tmp[j].off >= off + sz)
                break;
            if (tmp[j].end > off)
                off = tmp[j].end;
        }
        q->offset = off;
        pl[n_pl++] = (struct placed){off, off + sz, first, last};
        if (off + sz > top)
            top = off + sz;
    }
    *total = top;
done:
    free(order);
    free(pl);
    free(tmp);
    return rc;
}

/* Returns memory freed at load time (the file, the message, folded originals) to the system. */
void engine_trim_heap(void)
{
#ifdef __GLIBC__
    malloc_trim(0);
#endif
}
