#define _GNU_SOURCE
#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend.h"
#include "log.h"

/*
 * Picks a backend from a device string; see backend.h.
 *
 * The CUDA backend lives in its own shared module (libcorral_cuda.so) so that
 * a process serving on the CPU never maps cudart, cuBLAS and cuDNN, which
 * cost about 150 MB of resident memory once loaded. It is looked up only when
 * a cuda:N device is requested, and stays loaded for the life of the process
 * (the CUDA runtime registers exit handlers, so unloading it is not safe).
 */

#define CUDA_MODULE_NAME "libcorral_cuda.so"

#ifdef CORRAL_HAVE_CUDA
typedef int (*cuda_create_fn)(int device, struct backend *out, struct cerr *e);

static pthread_mutex_t cuda_lock = PTHREAD_MUTEX_INITIALIZER;
static cuda_create_fn cuda_create;

/* The directory of the running executable and its file name, from /proc/self/exe. */
static int exe_location(char *dir, size_t len, char *base, size_t blen)
{
    char path[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", path, sizeof path - 1);
    if (n <= 0)
        return -1;
    path[n] = '\0';
    char *slash = strrchr(path, '/');
    if (!slash)
        return -1;
    snprintf(base, blen, "%s", slash + 1);
    *slash = '\0';
    if ((size_t)snprintf(dir, len, "%s", path) >= len)
        return -1;
    return 0;
}

/*
 * Finds backend_cuda_create: already linked into this program (the backend's
 * unit test links the module directly), else the module named by
 * CORRAL_CUDA_MODULE, else the one next to the executable, else the one the
 * dynamic linker finds by name (the build tree's run path).
 */
static int cuda_resolve(int ord, struct cerr *e)
{
    char dir[PATH_MAX], base[256] = "this program", path[PATH_MAX + 64];
    int rc = CORRAL_OK;
    pthread_mutex_lock(&cuda_lock);
    if (cuda_create)
        goto done;
    cuda_create = (cuda_create_fn)(uintptr_t)dlsym(RTLD_DEFAULT, "backend_cuda_create");
    if (cuda_create)
        goto done;
    void *h = NULL;
    const char *env = getenv("CORRAL_CUDA_MODULE");
    int have_dir = exe_location(dir, sizeof dir, base, sizeof base) == 0;
    if (env && *env) {
        if (!(h = dlopen(env, RTLD_NOW | RTLD_LOCAL))) {
            rc = cerr_set(e, CORRAL_EUNSUPP, "device cuda:%d requested but CORRAL_CUDA_MODULE "
                          "(%s) cannot be loaded: %s", ord, env, dlerror());
            goto done;
        }
    }
    if (!h && have_dir) {
        snprintf(path, sizeof path, "%s/%s", dir, CUDA_MODULE_NAME);
        if (access(path, F_OK) == 0 && !(h = dlopen(path, RTLD_NOW | RTLD_LOCAL))) {
            rc = cerr_set(e, CORRAL_EUNSUPP, "device cuda:%d requested but the CUDA backend "
                          "module %s cannot be loaded: %s", ord, path, dlerror());
            goto done;
        }
    }
    if (!h && !(h = dlopen(CUDA_MODULE_NAME, RTLD_NOW | RTLD_LOCAL))) {
        /* Found but not loadable (a symbol the program lacks, say) is worth its own message. */
        const char *why = dlerror();
        if (why && !strstr(why, "cannot open shared object file"))
            rc = cerr_set(e, CORRAL_EUNSUPP, "device cuda:%d requested but the CUDA backend "
                          "module cannot be loaded: %s", ord, why);
        else
            rc = cerr_set(e, CORRAL_EUNSUPP, "device cuda:%d requested but the CUDA backend "
                          "module " CUDA_MODULE_NAME " was not found next to %s", ord, base);
        goto done;
    }
    /*
     * The module takes the engine's kernels, errors and logging from this
     * program, which exports them; logging here also keeps the logger linked
     * into every program that uses the engine.
     */
    LOG_DEBUG("loaded the CUDA backend module");
    cuda_create = (cuda_create_fn)(uintptr_t)dlsym(h, "backend_cuda_create");
    if (!cuda_create)
        rc = cerr_set(e, CORRAL_EUNSUPP, "device cuda:%d requested but the CUDA backend module "
                      "has no backend_cuda_create", ord);
done:
    pthread_mutex_unlock(&cuda_lock);
    return rc;
}
#endif

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
        int rc = cuda_resolve((int)ord, e);
        if (rc)
            return rc;
        return cuda_create((int)ord, out, e);
#else
        return cerr_set(e, CORRAL_EUNSUPP, "device cuda:%ld requested but this build has no "
                        "CUDA backend", ord);
#endif
    }
    return cerr_set(e, CORRAL_EINVAL, "device '%s' is not valid (expected cpu, cuda or cuda:N)",
                    device);
}
