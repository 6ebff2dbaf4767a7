#include <stdlib.h>
#include <string.h>

#include "backend.h"

/*
 * Picks a backend from a device string; see backend.h.
 *
 * The registry is a table of backend kinds, each defined by its own backend
 * (backend_cpu.c; backend_cuda_load.c for the CUDA module). This file only
 * parses the device string and calls the kind's constructor, so the
 * backends never call back into it and adding a backend is one row here.
 */

static const struct backend_kind *const kinds[] = {
    &backend_kind_cpu,
    &backend_kind_cuda,
};

static int invalid(const char *device, struct cerr *e)
{
    return cerr_set(e, CORRAL_EINVAL, "device '%s' is not valid (expected cpu, cuda or cuda:N)",
                    device);
}

int backend_create(const char *device, const struct backend_options *opt, struct backend *out,
                   struct cerr *e)
{
    memset(out, 0, sizeof *out);
    if (!device)
        return backend_kind_cpu.create(0, opt, out, e);
    for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
        const struct backend_kind *kd = kinds[k];
        size_t len = strlen(kd->name);
        if (strncmp(device, kd->name, len) != 0)
            continue;
        const char *p = device + len;
        long ord = 0;
        if (*p == ':' && kd->ordinal) {
            char *end = NULL;
            ord = strtol(p + 1, &end, 10);
            if (end == p + 1 || *end || ord < 0 || ord > 1024)
                return invalid(device, e);
        } else if (*p) {
            return invalid(device, e);
        }
        return kd->create((int)ord, opt, out, e);
    }
    return invalid(device, e);
}
