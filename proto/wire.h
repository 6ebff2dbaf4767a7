/*
 * Wire helpers around the generated corral.pb-c.h.
 *
 * Decoding is where untrusted bytes become messages, so wire_decode_request and
 * wire_decode_response validate every tensor they carry (datatype in range, at
 * most TENSOR_MAX_DIMS dimensions, no negative dimension, byte length exactly
 * matching shape and datatype). A message that passes can be read without
 * further bounds checks. Free decoded messages with corral__request__free_unpacked
 * / corral__response__free_unpacked (NULL allocator).
 *
 * wire_pack_* return a malloc'd buffer the caller frees (or hands to NNG with
 * nng_msg_append). wire_tensor_view makes a `struct tensor` that borrows a
 * decoded message's bytes.
 */
#ifndef CORRAL_PROTO_WIRE_H
#define CORRAL_PROTO_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include "corral.pb-c.h"
#include "error.h"
#include "tensor.h"

/* Upper bound on one RPC message (request or response). */
#define WIRE_MAX_MESSAGE ((size_t)256 << 20)

int wire_check_tensor(const Corral__Tensor *t, const char *role, struct cerr *e);
int wire_decode_request(const void *buf, size_t len, Corral__Request **out, struct cerr *e);
int wire_decode_response(const void *buf, size_t len, Corral__Response **out, struct cerr *e);

int wire_pack_request(const Corral__Request *req, uint8_t **buf, size_t *len);
int wire_pack_response(const Corral__Response *resp, uint8_t **buf, size_t *len);
/* Packs a Response carrying Error{code, message}. */
int wire_pack_error(int code, const char *message, uint8_t **buf, size_t *len);

/* Borrowing view of a validated wire tensor. */
void wire_tensor_view(const Corral__Tensor *src, struct tensor *dst);

#endif
