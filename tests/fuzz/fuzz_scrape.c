/* The scheduler's parser of the routers' Prometheus metrics (scheduler/scrape.c). */

#include "fuzz.h"
#include "scrape.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = fuzz_copy(data, size);
    if (!text)
        return 0;
    struct sched_scrape_sample s;
    memset(&s, 0, sizeof s);
    sched_scrape_parse(text, size, &s);
    sched_scrape_sample_free(&s);
    free(text);
    return 0;
}
