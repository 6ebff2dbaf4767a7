#include "backend_cuda.h"

/*
 * Error mapping at the CUDA boundary: every cudaError_t, cuBLAS status and
 * kernel launch status the backend meets becomes a corral error code with a
 * message naming the step and the call, never an abort. The other files of
 * the backend call only these; nothing here calls back into them.
 */

static int code_of_cuda(cudaError_t r)
{
    switch (r) {
    case cudaErrorMemoryAllocation: return CORRAL_ENOMEM;
    case cudaErrorNoDevice:
    case cudaErrorInsufficientDriver:
    case cudaErrorInvalidDevice:
    case cudaErrorDevicesUnavailable:
    case cudaErrorSystemNotReady:
    case cudaErrorCudartUnloading: return CORRAL_EUNAVAIL;
    default: return CORRAL_EINTERNAL;
    }
}

int cuda_check(cudaError_t r, const char *what, const struct plan_step *st, struct cerr *e)
{
    if (r == cudaSuccess)
        return CORRAL_OK;
    /* Clears a non-sticky error so that it is not reported again by a later call. */
    (void)cudaGetLastError();
    return cerr_set(e, code_of_cuda(r), "%s%s%s failed: %s (%s)", st ? st->label : "",
                    st ? ": " : "", what, cudaGetErrorString(r), cudaGetErrorName(r));
}

int cuda_launch_check(int r, const struct plan_step *st, struct cerr *e)
{
    return cuda_check((cudaError_t)r, "kernel launch", st, e);
}

int cuda_blas_check(cublasStatus_t s, const char *what, const struct plan_step *st,
                    struct cerr *e)
{
    if (s == CUBLAS_STATUS_SUCCESS)
        return CORRAL_OK;
    int code = s == CUBLAS_STATUS_ALLOC_FAILED    ? CORRAL_ENOMEM
               : s == CUBLAS_STATUS_NOT_SUPPORTED ? CORRAL_EUNSUPP
                                                  : CORRAL_EINTERNAL;
    return cerr_set(e, code, "%s%s%s failed: %s", st ? st->label : "", st ? ": " : "", what,
                    cublasGetStatusString(s));
}
