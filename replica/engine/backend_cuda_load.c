#define _GNU_SOURCE
#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend.h"
#include "log.h"

/*
 * The "cuda" row of the backend registry (backend.c): finds and loads the
 * CUDA backend's module, then creates the backend through it.
 *
 * The CUDA backend lives in its own shared module (libcorral_cuda.so) so that
 * a process serving on the CPU never maps cudart, cuBLAS and cuDNN, which
 * cost about 150 MB of resident memory once loaded. It is looked up only when
 * a cuda:N device is requested, and stays loaded for the life of the process
 * (the CUDA runtime registers exit handlers, so unloading it is not safe).
 * Builds without the CUDA backend keep the row, which then refuses every
 * cuda:N device with one sentence.
 */

#ifdef CORRAL_HAVE_CUDA
#define CUDA_MODULE_NAME "libcorral_cuda.so"

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

static int cuda_kind_create(int ord, const struct backend_options *opt, struct backend *out,
                            struct cerr *e)
{
#ifdef CORRAL_HAVE_CUDA
    int rc = cuda_resolve(ord, e);
    if (rc)
        return rc;
    return cuda_create(ord, out, e);
#else
    return cerr_set(e, CORRAL_EUNSUPP, "device cuda:%d requested but this build has no CUDA "
                    "backend", ord);
#endif
}

const struct backend_kind backend_kind_cuda = {
    .name = "cuda",
    .ordinal = 1,
    .create = cuda_kind_create,
};
