/* The loaded model as the loader and the executor see it: views into a validated blob and the
 * arena. Internal to model.c and exec.c. */
#ifndef TB_MODEL_INTERNAL_H
#define TB_MODEL_INTERNAL_H
#include <stdint.h>
#include "blob.h"
#include "model.h"
/* protocol.h and tb_kernels.h both name an enumerator TB_OK (both 0): the kernels' one is
 * renamed here so that both headers can be used together. */
#define TB_OK TB_KERNEL_OK
#include "tb_kernels.h"
#include "tb_train.h"
#undef TB_OK
#include "protocol.h"

typedef struct {
    const tb_blob_header *header;
    const tb_blob_tensor *tensors;
    const tb_blob_op *ops;
    const tb_blob_buffer *buffers;
    const uint8_t *data;
    uint8_t *arena;
    uint32_t backward_stop;  /* the earliest op that trains; n_ops when none does */
    tb_model_info info;
} tb_model;

/* Input rows [*a, *b) that output row r of a conv2d / depthwise / pointwise op reads. */
void tb_model_window(const tb_model *m, const tb_blob_op *op, int32_t r, int32_t *a, int32_t *b);

/* The first materialized tensor op i reads: its input, or through streamed tensors (each produced
 * by the op before its reader) the input of the chain. */
uint16_t tb_model_root(const tb_model *m, uint32_t op_index);

/* With a streamed input (its tensor's stream_rows > 0): the op whose output is the first
 * materialized tensor of the chain that starts at op 0 (ops 0 .. it run while the input arrives).
 * 0 otherwise. */
uint32_t tb_model_input_chain_end(const tb_model *m);

/* The op producing tensor t, or -1 (the graph input). */
int32_t tb_model_producer(const tb_model *m, uint32_t t);

/* Bytes of a weighted op's weight tensor (kernels.md layouts). */
uint32_t tb_model_weight_bytes(const tb_model *m, const tb_blob_op *op);

/* The current model, NULL when none. */
const tb_model *tb_model_loaded(void);

/* Where op `op_index`'s gradient for its input k goes first (docs/blob-format.md, Backward):
 * 1 when no later op, nor input 0 of the same add, sends a gradient to the same tensor. */
int tb_model_grad_is_first(const tb_model *m, uint32_t op_index, uint32_t k);

static inline uint8_t *tb_model_buffer(const tb_model *m, uint16_t id)
{
    return m->arena + m->buffers[id].offset;
}

static inline const uint8_t *tb_model_data(const tb_model *m, uint32_t ref)
{
    return m->data + ref;
}

static inline uint32_t tb_tensor_size(const tb_blob_tensor *t)
{
    return (uint32_t)t->h * t->w * t->c;
}

static inline uint32_t tb_row_bytes(const tb_blob_tensor *t)
{
    return (uint32_t)t->w * t->c;
}

#endif
