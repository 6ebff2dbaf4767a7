/* The model aliases file parser (common/aliases.c): models/<name>/aliases.json. */

#include "fuzz.h"
#include "aliases.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = fuzz_copy(data, size);
    if (!text)
        return 0;
    struct model_aliases *a = calloc(1, sizeof *a);
    struct cerr e = {0};
    if (a && aliases_parse(text, size, "aliases.json", a, &e) == CORRAL_OK) {
        /* What was accepted is usable: every name valid and found again. */
        char names[4096];
        aliases_names(a, names, sizeof names);
        for (size_t i = 0; i < a->n; i++)
            CHECK(aliases_name_valid(a->items[i].name) &&
                      aliases_find(a, a->items[i].name) == &a->items[i],
                  "accepted alias '%s' is not valid or not found again", a->items[i].name);
    }
    free(a);
    free(text);
    return 0;
}
