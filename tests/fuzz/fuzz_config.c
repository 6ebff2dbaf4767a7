/*
 * The cluster config parser (scheduler/config.c) on a buffer. The file name is
 * relative, so the paths the config names resolve under a folder that does not
 * exist: the parser's checks run, nothing is found.
 */

#include "fuzz.h"
#include "config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = fuzz_copy(data, size);
    if (!text)
        return 0;
    struct sched_config cfg = {0};
    struct sched_errs errs = {0};
    int rc = sched_config_parse(text, size, "fuzz-nowhere/cluster.json", &cfg, &errs);
    CHECK(rc == CORRAL_OK || rc == CORRAL_ENOMEM || errs.n > 0 || errs.oom,
          "refused (%d) without a reason", rc);
    sched_config_free(&cfg);
    sched_errs_free(&errs);
    free(text);
    return 0;
}
