/*
 * Compute backends: the engine's interface to a device (CPU via oneDNN, CUDA).
 *
 * A backend must implement (all members of struct backend_ops; none may be NULL
 * except weight_resident):
 *   destroy        free the backend's context (after every plan and buffer is freed)
 *   supports_op    can it run this op with these attributes and input datatypes?
 *   buffer_alloc   device memory (an arena, a weight); buffer_free releases it
 *   weight_upload  copy one model weight to the device once, at load, keyed by weight_id
 *   weight_resident (optional) non-zero once the backend holds the weight in a
 *                  form of its own from which it can serve every later plan
 *                  without the host copy; the engine then frees the host data
 *                  of weights that only a convolution reads (shape and size
 *                  stay, `data` becomes NULL in later plan graphs)
 *   plan_compile   turn a per-shape plan_graph (engine_ir.h) into an executable form:
 *                  allocate the arena, build primitives/kernels, upload plan-local
 *                  constants; report the arena's bytes
 *   plan_execute   run a compiled plan on host inputs, writing host outputs
 *   plan_free      release what plan_compile made
 *   synchronize    wait for queued work (a no-op where execution is synchronous)
 *
 * Usage (what the engine does):
 *     struct backend b;
 *     if (backend_create("cpu", &opts, &b, &e)) fail;     // or "cuda:0"
 *     at load, for each node: b.ops->supports_op(&b, op, &attrs, in_dtypes, n_in)
 *                             (0 -> the model is refused with CORRAL_EUNSUPP)
 *     at load, for each weight: b.ops->weight_upload(&b, weight_id, &host_tensor, &e)
 *     per input-shape signature (once, then cached):
 *         b.ops->plan_compile(&b, &graph, &compiled, &arena_bytes, &e)
 *     per batch:
 *         b.ops->plan_execute(&b, compiled, inputs, outputs, &e); b.ops->synchronize(&b, &e)
 *     b.ops->plan_free(&b, compiled); ... b.ops->destroy(&b);
 *
 * Contract for plan_compile: `g` is fully specialised (every value has a dtype
 * and shape, every step's attributes are resolved: explicit pads, positive
 * axes where the op has one, epilogues set by fusion). `g` and the memory it
 * points at outlive the compiled plan. Values of kind PV_CONST with
 * weight_id >= 0 were given to weight_upload earlier; other constants are
 * plan-local and small (shape arithmetic), the backend copies them as it
 * needs. A backend may use g->arena_bytes and each value's `offset` (a valid
 * dense-layout liveness plan) or plan memory itself with plan_mem_assign
 * (engine_mem.h) when it stores values in other layouts.
 *
 * Contract for plan_execute: `in` holds g->n_inputs host tensors in plan input
 * order with exactly the planned dtypes and shapes (the engine checked);
 * their data is valid only during the call and must not be written. `out`
 * holds g->n_outputs tensors whose dtype, shape and `data` (host memory of
 * nbytes, owned by the caller) are set; the backend fills the data before
 * returning (after synchronize for an asynchronous device). It must not
 * allocate per call on the CPU path, and is called by one thread at a time
 * per plan. Errors are returned as corral codes with a message in `e`, never
 * an abort.
 *
 * Threads: the CPU backend runs its kernels on the calling thread's OpenMP
 * team sized by backend_options.threads.
 */
#ifndef CORRAL_ENGINE_BACKEND_H
#define CORRAL_ENGINE_BACKEND_H

#include <stddef.h>

#include "engine_ir.h"
#include "error.h"
#include "tensor.h"

struct backend;

/* A block of backend memory: host memory for the CPU, device memory for CUDA. */
struct backend_buffer {
    void *ptr;
    size_t bytes;
    void *priv; /* backend bookkeeping */
};

struct backend_ops {
    const char *name; /* "cpu", "cuda" */
    void (*destroy)(struct backend *b);
    /* Non-zero when the backend runs `op` with these attributes and input datatypes. */
    int (*supports_op)(struct backend *b, enum eng_op op, const struct eng_attrs *a,
                       const enum dtype *in_dtypes, int n_in);
    int (*buffer_alloc)(struct backend *b, size_t bytes, struct backend_buffer *out,
                        struct cerr *e);
    void (*buffer_free)(struct backend *b, struct backend_buffer *buf);
    /* `host` stays valid until destroy; a backend may keep a pointer instead of copying. */
    int (*weight_upload)(struct backend *b, int weight_id, const struct tensor *host,
                         struct cerr *e);
    int (*weight_resident)(struct backend *b, int weight_id); /* may be NULL */
    int (*plan_compile)(struct backend *b, const struct plan_graph *g, void **compiled,
                        size_t *arena_bytes, struct cerr *e);
    int (*plan_execute)(struct backend *b, void *compiled, const struct tensor *in,
                        struct tensor *out, struct cerr *e);
    void (*plan_free)(struct backend *b, void *compiled);
    int (*synchronize)(struct backend *b, struct cerr *e);
};

struct backend {
    const struct backend_ops *ops;
    void *ctx;
};

struct backend_options {
    int threads; /* CPU: OpenMP threads per execution; 0 = the CPUs this process may use */
};

/*
 * Creates the backend for a device string: "cpu", "cuda" (= "cuda:0") or
 * "cuda:N". The CUDA backend is a separate module (libcorral_cuda.so) loaded
 * on the first cuda:N request: from $CORRAL_CUDA_MODULE when set, else next to
 * the executable, else by the dynamic linker's search. CORRAL_EUNSUPP when the
 * build has no such backend or its module cannot be found or loaded,
 * CORRAL_EINVAL for a malformed device string; backend-specific codes when
 * the device exists but cannot be opened.
 */
int backend_create(const char *device, const struct backend_options *opt, struct backend *out,
                   struct cerr *e);

/*
 * One kind of backend, as the registry in backend.c lists it: the name a
 * device string starts with, whether it takes an ordinal ("cuda:N"; 0 when
 * absent) and the constructor. Each backend defines its own kind, so the
 * registry names the backends and no backend names the registry.
 */
struct backend_kind {
    const char *name; /* "cpu", "cuda" */
    int ordinal;      /* non-zero: the device string may end in ":N" */
    int (*create)(int ordinal, const struct backend_options *opt, struct backend *out,
                  struct cerr *e);
};

/* The CPU backend (backend_cpu*.c). */
extern const struct backend_kind backend_kind_cpu;
/* The CUDA backend's loader (backend_cuda_load.c); it refuses every device in builds
 * without the CUDA backend. */
extern const struct backend_kind backend_kind_cuda;

/*
 * The CUDA backend (backend_cuda*.c / *.cu), built as libcorral_cuda.so only
 * when CMake defines CORRAL_HAVE_CUDA; declared for the module itself and for
 * programs that link it directly. `device` is the CUDA ordinal; a missing device fails with
 * CORRAL_EUNAVAIL and one sentence naming it.
 */
#ifdef CORRAL_HAVE_CUDA
int backend_cuda_create(int device, struct backend *out, struct cerr *e);
#endif

/* CPUs this process may run on (sched_getaffinity), at least 1 (backend_cpu.c). */
int backend_cpu_count(void);

#endif
