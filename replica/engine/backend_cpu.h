/*
 * Internals of the CPU backend (backend_cpu.c: plan compiler, memory and
 * execution; backend_cpu_form.c: the forms of values and the item list a
 * plan is compiled into; backend_cpu_dnnl.c: oneDNN primitives for
 * convolution and pooling). Not a public header.
 *
 * Every value of a compiled plan has a main form (its storage: the caller's
 * input or output buffer, a constant, or an arena buffer) described by a
 * oneDNN memory descriptor that may be blocked (nChw16c...) when a
 * convolution chose it, and on demand a plain (dense row-major) shadow made
 * by a reorder for consumers that need plain data. Arena buffers are placed
 * by liveness once the whole plan is known. The arena and the oneDNN
 * scratchpad belong to the context and are shared by every plan (one thread
 * runs the engine at a time): they are sized for the largest plan compiled so
 * far and reallocated, larger, only while a plan is compiled. A plan keeps
 * offsets; it points its memory objects and kernel slots at the current
 * arena when it first runs after the arena moved, so nothing is allocated
 * when a plan runs.
 */
#ifndef CORRAL_BACKEND_CPU_H
#define CORRAL_BACKEND_CPU_H

#include <stdlib.h>

#include <dnnl.h>

#include "backend.h"
#include "engine_internal.h"

struct cpu_wcache {
    int weight_id;
    dnnl_memory_desc_t md;
    void *data;
    dnnl_memory_t mem;
};

struct cpu_ctx {
    dnnl_engine_t eng;
    dnnl_stream_t stream;
    int threads;
    const struct tensor **w; /* by weight_id: host tensors from weight_upload */
    size_t n_w;
    struct cpu_wcache *wc; /* reordered weights shared by every plan */
    size_t n_wc, cap_wc;
    char *arena;           /* shared by every plan; arena_cap bytes */
    size_t arena_cap;
    void *scratch;         /* shared oneDNN scratchpad; scratch_cap bytes */
    size_t scratch_cap;
};

struct cpu_form {
    dnnl_memory_desc_t md;
    int has_md;
    int buf;        /* arena buffer index; -1 when the storage is outside the arena */
    void *ptr;      /* current address (inputs/outputs: set per run) */
    dnnl_memory_t mem;
};

struct cpu_val {
    struct cpu_form main, plain;
    int blocked;    /* main.md is not the plain layout */
    int has_plain;  /* plain shadow exists */
};

enum cpu_item_kind { CIT_PRIM, CIT_KERNEL };

#define CPU_MAX_ARGS 12

struct cpu_item {
    enum cpu_item_kind kind;
    dnnl_primitive_t prim;
    int nargs;
    dnnl_exec_arg_t args[CPU_MAX_ARGS];
    int scratch;                 /* add the shared scratchpad to args */
    const struct plan_step *st;
    struct tensor *tin, *tout;   /* kernel: shapes fixed, data from the slots per run */
    void ***in_slot, ***out_slot;
};

struct cpu_buf {
    size_t bytes;
    int first, last;
    size_t off;
};

struct cpu_refresh {
    dnnl_memory_t mem;
    void **slot;
};

struct cpu_plan {
    struct cpu_ctx *ctx;
    const struct plan_graph *g;
    struct cpu_val *v;
    struct cpu_item *items;
    int n_items, cap_items;
    struct cpu_buf *bufs;
    int n_bufs, cap_bufs;
    /* memory objects whose address is an arena buffer, fixed after planning */
    struct { dnnl_memory_t mem; int buf; } *bound;
    int n_bound, cap_bound;
    struct cpu_refresh *refresh; /* memory objects on caller buffers, re-pointed per run */
    int n_refresh, cap_refresh;
    dnnl_memory_t *mems;         /* every memory object created, for plan_free */
    int n_mems, cap_mems;
    void **owned;                /* plan-local buffers (reordered plan constants) */
    int n_owned, cap_owned;
    size_t arena_bytes;          /* what this plan needs of the shared arena */
    size_t scratch_bytes;        /* and of the shared scratchpad */
    dnnl_memory_t scratch_mem;   /* this plan's view of the shared scratchpad */
    char *bound_arena;           /* the arena and scratchpad the plan's pointers refer to */
    void *bound_scratch;
};

/* Shared by the two files. */
static inline void *realloc_or_free(void *p, size_t n)
{
    void *q = realloc(p, n);
    if (!q)
        free(p);
    return q;
}

/* Grows arr (n used of cap) by doubling before an append; non-zero when out of memory
 * (arr is then freed and NULL). */
#define GROW(arr, n, cap)                                                                     \
    ((n) < (cap) ? 0                                                                          \
                 : ((cap) = (cap) ? 2 * (cap) : 16,                                           \
                    !((arr) = realloc_or_free((arr), (size_t)(cap) * sizeof *(arr)))))

/* ---- value forms and the item list (backend_cpu_form.c) ---- */

int cpu_dnnl_check(dnnl_status_t s, const char *what, const struct plan_step *st,
                   struct cerr *e);
int cpu_plain_md(const struct plan_value *pv, dnnl_memory_desc_t *md, struct cerr *e);
int cpu_new_buf(struct cpu_plan *P, size_t bytes, int first, int last);
int cpu_mem_on_buf(struct cpu_plan *P, const dnnl_memory_desc_t *md, int buf, dnnl_memory_t *out,
                   struct cerr *e);
int cpu_mem_on_slot(struct cpu_plan *P, const dnnl_memory_desc_t *md, void **slot, int ext,
                    dnnl_memory_t *out, struct cerr *e);
int cpu_form_mem(struct cpu_plan *P, int v, struct cpu_form *f, struct cerr *e);
/* A memory object holding value v in layout md (reordering before step s if needed). */
int cpu_value_as(struct cpu_plan *P, int v, const dnnl_memory_desc_t *md, int s,
                 dnnl_memory_t *out, struct cerr *e);
/* Same for a value viewed with other logical dims (grouped weights): reads its plain form. */
int cpu_value_view_as(struct cpu_plan *P, int v, const dnnl_memory_desc_t *view,
                      const dnnl_memory_desc_t *md, int s, dnnl_memory_t *out, struct cerr *e);
int cpu_add_reorder(struct cpu_plan *P, dnnl_memory_t src, dnnl_memory_t dst,
                    const struct plan_step *st, struct cerr *e);
int cpu_add_prim(struct cpu_plan *P, dnnl_primitive_desc_t pd, const dnnl_exec_arg_t *args,
                 int nargs, const struct plan_step *st, struct cerr *e);
/* Defines value v's main form as md on a new arena buffer (or `share_buf`). */
int cpu_set_main(struct cpu_plan *P, int v, const dnnl_memory_desc_t *md, int share_buf,
                 struct cerr *e);
int cpu_weights(struct cpu_plan *P, int v, const dnnl_memory_desc_t *view,
                const dnnl_memory_desc_t *md, int s, dnnl_memory_t *out, struct cerr *e);

/* oneDNN's datatype for t; dnnl_data_type_undef when oneDNN has none. */
dnnl_data_type_t cpu_dnnl_dt(enum dtype t);
/* Non-zero when v lives in a caller's buffer (a model input or output). */
int cpu_is_ext(const struct cpu_plan *P, int v);
/* The plain form of v, reordering its blocked main form before step s when needed. */
int cpu_plain_form(struct cpu_plan *P, int v, int s, struct cpu_form **out, struct cerr *e);

/* ---- oneDNN step compilers (backend_cpu_dnnl.c) ---- */

int cpu_compile_conv(struct cpu_plan *P, int s, struct cerr *e);
int cpu_compile_pool(struct cpu_plan *P, int s, struct cerr *e);
int cpu_compile_gemm(struct cpu_plan *P, int s, int *done, struct cerr *e);
int cpu_compile_concat(struct cpu_plan *P, int s, int *done, struct cerr *e);

#endif
