/*
 * Parity vectors: the inputs and PyTorch outputs the export tool wrote beside a
 * model version (<version>/vectors/<k>/input_<i>.pb, output_<j>.pb, ONNX
 * TensorProto files). A version takes traffic only after the replica has
 * reproduced every vector within the model's tolerance.
 *
 * parity_check runs every vector set through the engine and fills one
 * parity_result per model output: the largest absolute difference seen and
 * whether every element satisfied |got - want| <= atol + rtol * |want|.
 * It returns CORRAL_EMISMATCH (with a message naming the worst output and
 * vector) when any element is out of tolerance, another code when the vectors
 * cannot be read or run, and CORRAL_OK otherwise.
 */
#ifndef CORRAL_REPLICA_PARITY_H
#define CORRAL_REPLICA_PARITY_H

#include <stddef.h>

#include "engine.h"
#include "error.h"

struct parity_result {
    const char *output;  /* points into the engine */
    double max_abs_diff;
    int ok;
};

/*
 * results: array of engine_num_outputs() entries. *n_sets receives the number
 * of vector sets checked; a model without vectors fails with CORRAL_ENOTFOUND.
 */
int parity_check(struct engine *eng, const char *vectors_dir, double atol, double rtol,
                 struct parity_result *results, size_t *n_sets, struct cerr *e);

#endif
