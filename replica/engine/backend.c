#define _GNU_SOURCE
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend.h"

/* Picks a backend from a device string; see backend.h. */

int backend_cpu_count(void)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        int n = CPU_COUNT(&set);
        if (n > 0)
            return n;
    }
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

int backend_create(const char *device, const struct backend_options *opt, struct backend *out,
                   struct cerr *e)
{
    memset(out, 0, sizeof *out);
    if (!device || strcmp(device, "cpu") == 0)
        return backend_cpu_create(opt, out, e);
    if (strncmp(device, "cuda", 4) == 0) {
        long ord = 0;
        const char *p = device + 4;
        if (*p == ':') {
            char *end = NULL;
            ord = strtol(p + 1, &end, 10);
            if (end == p + 1 || *end || ord < 0 || ord > 1024)
                return cerr_set(e, CORRAL_EINVAL, "device '%s' is not valid (expected cpu, cuda "
                                "or cuda:N)", device);
        } else if (*p) {
            return cerr_set(e, CORRAL_EINVAL, "device '%s' is not valid (expected cpu, cuda or "
                            "cuda:N)", device);
        }
#ifdef CORRAL_HAVE_CUDA
        return backend_cuda_create((int)ord, out, e);
#else
        return cerr_set(e, CORRAL_EUNSUPP, "device cuda:%ld requested but this build has no "
                        "CUDA backend", ord);
#endif
    }
    return cerr_set(e, CORRAL_EINVAL, "device '%s' is not valid (expected cpu, cuda or cuda:N)",
                    device);
}
