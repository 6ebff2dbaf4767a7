#include <string.h>

#include "engine_internal.h"

/*
 * The op vocabulary's names: the ONNX op type of each enum eng_op (from
 * ENG_OP_LIST in engine_ir.h) and the lookup from an ONNX node to the op.
 * Kernels, backends and the op table name ops in messages through here, so
 * this file depends on nothing else in the engine.
 */

static const char *const op_names[] = {
#define ENG_OP_NAME(tag, name) name,
    ENG_OP_LIST(ENG_OP_NAME)
#undef ENG_OP_NAME
};

const char *eng_op_name(enum eng_op op)
{
    return op < EOP_COUNT ? op_names[op] : "?";
}

int eng_op_lookup(const char *domain, const char *op_type)
{
    if ((domain && *domain && strcmp(domain, "ai.onnx") != 0) || !op_type)
        return -1;
    for (int i = 0; i < EOP_COUNT; i++)
        if (i != EOP_COPY && strcmp(op_names[i], op_type) == 0)
            return i;
    return -1;
}
