/*
 * What the CUDA kernel files (backend_cuda_kern*.cu) share: the launch
 * geometry (block size, grid-stride loops, the launch status), typed element
 * loads and stores on untyped device pointers, and the offsets of an n-D
 * iteration space (struct ck_iter, backend_cuda_kern.h). Device-only; the
 * host side of the backend includes backend_cuda_kern.h instead.
 */
#ifndef CORRAL_BACKEND_CUDA_KERN_CUH
#define CORRAL_BACKEND_CUDA_KERN_CUH

#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include "backend_cuda_kern.h"
#include "engine_scalar.h"

#define CK_BLOCK 256
/* Grid-stride loops let a bounded grid cover any element count. */
#define CK_MAX_GRID 262144

#define GRID_LOOP(i, n)                                                                       \
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n);               \
         i += (int64_t)blockDim.x * gridDim.x)

static inline unsigned grid_for(int64_t n)
{
    int64_t b = (n + CK_BLOCK - 1) / CK_BLOCK;
    return (unsigned)(b > CK_MAX_GRID ? CK_MAX_GRID : (b < 1 ? 1 : b));
}

static inline unsigned rows_grid(int64_t rows)
{
    return (unsigned)(rows > CK_MAX_GRID ? CK_MAX_GRID : rows);
}

static inline int launched(void)
{
    return (int)cudaGetLastError();
}

/* ---- element access ---- */

static __device__ inline float ld_f(const void *p, int dt, int64_t i)
{
    switch (dt) {
    case DT_FP32: return ((const float *)p)[i];
    case DT_INT64: return (float)((const int64_t *)p)[i];
    case DT_INT32: return (float)((const int32_t *)p)[i];
    case DT_BOOL:
    case DT_UINT8: return (float)((const uint8_t *)p)[i];
    default: return 0.0f;
    }
}

static __device__ inline int64_t ld_i(const void *p, int dt, int64_t i)
{
    switch (dt) {
    case DT_INT64: return ((const int64_t *)p)[i];
    case DT_INT32: return ((const int32_t *)p)[i];
    case DT_BOOL:
    case DT_UINT8: return ((const uint8_t *)p)[i];
    case DT_FP32: return (int64_t)((const float *)p)[i];
    default: return 0;
    }
}

static __device__ inline double ld_d(const void *p, int dt, int64_t i)
{
    switch (dt) {
    case DT_FP32: return ((const float *)p)[i];
    case DT_INT64: return (double)((const int64_t *)p)[i];
    case DT_INT32: return ((const int32_t *)p)[i];
    default: return 0.0;
    }
}

static __device__ inline void st_int(void *p, int dt, int64_t i, int64_t v)
{
    if (dt == DT_INT64)
        ((int64_t *)p)[i] = v;
    else
        ((int32_t *)p)[i] = (int32_t)(uint32_t)(uint64_t)v;
}

/* Copies one element of es bytes (1, 2, 4 or 8). */
static __device__ inline void cp_el(void *y, int64_t yi, const void *x, int64_t xi, int es)
{
    switch (es) {
    case 1: ((uint8_t *)y)[yi] = ((const uint8_t *)x)[xi]; break;
    case 2: ((uint16_t *)y)[yi] = ((const uint16_t *)x)[xi]; break;
    case 4: ((uint32_t *)y)[yi] = ((const uint32_t *)x)[xi]; break;
    default: ((uint64_t *)y)[yi] = ((const uint64_t *)x)[xi]; break;
    }
}

static __device__ inline void put_el(void *y, int64_t yi, uint64_t v, int es)
{
    switch (es) {
    case 1: ((uint8_t *)y)[yi] = (uint8_t)v; break;
    case 2: ((uint16_t *)y)[yi] = (uint16_t)v; break;
    case 4: ((uint32_t *)y)[yi] = (uint32_t)v; break;
    default: ((uint64_t *)y)[yi] = v; break;
    }
}

/* Offsets of the inputs for output element i of an iteration space. */
static __device__ inline void iter_offsets(const ck_iter &it, int64_t i, int nin, int64_t *off)
{
    for (int k = 0; k < nin; k++)
        off[k] = 0;
    if (it.contiguous) {
        for (int k = 0; k < nin; k++)
            off[k] = i;
        return;
    }
    int64_t rem = i;
    for (int d = it.nd - 1; d >= 0; d--) {
        int64_t q = rem / it.dims[d], id = rem - q * it.dims[d];
        rem = q;
        for (int k = 0; k < nin; k++)
            off[k] += id * it.in[k][d];
    }
}

#endif
