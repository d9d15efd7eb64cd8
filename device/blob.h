/* Model blob records, version 1 (docs/blob-format.md). The loader checks the blob's alignment and
 * every field, then the executor reads these records in place from flash. */
#ifndef TB_BLOB_H
#define TB_BLOB_H
#include <stdint.h>

#define TB_BLOB_MAGIC 0x444D4254u   /* "TBMD" */
#define TB_BLOB_VERSION 1u
#define TB_BLOB_NONE 0xFFFFu        /* no tensor / buffer */
#define TB_BLOB_NO_DATA 0xFFFFFFFFu /* no data item */
#define TB_BLOB_MAX_TENSORS 256u
#define TB_BLOB_PARAMS_HEADER 8u    /* step, rng state */
#define TB_ADD_LEFT_SHIFT 20        /* TFLite's int8 ADD */
#define TB_BLOB_FLAG_SINGLE_ROUNDING 1u /* header flags: forward kernels round once (TB_ROUND_SINGLE) */

enum {
    TB_OP_CONV2D = 1,
    TB_OP_DEPTHWISE = 2,
    TB_OP_POINTWISE = 3,
    TB_OP_FULLY_CONNECTED = 4,
    TB_OP_AVGPOOL = 5,
    TB_OP_ADD = 6
};

enum {
    TB_TRAIN_BIAS = 1u,
    TB_TRAIN_WEIGHTS = 2u,
    TB_GRAD_INPUT0 = 4u,
    TB_GRAD_INPUT1 = 8u
};

typedef struct {
    uint32_t magic;
    uint16_t version, header_bytes;
    uint32_t blob_bytes;
    uint32_t crc32;
    uint16_t n_tensors, n_ops, n_buffers, input_tensor;
    uint16_t output_tensor, flags;
    uint32_t arena_bytes, params_bytes, data_bytes;
    float lr, momentum;
    uint32_t rng_seed, step;
    uint32_t reserved[2];
} tb_blob_header;

typedef struct {
    uint16_t h, w, c, stream_rows;
    int32_t zero_point;
    float scale;
    uint16_t buffer, grad, mask, scale_positions;
} tb_blob_tensor;

typedef struct {
    uint8_t kind, train, kernel_h, kernel_w, stride_h, stride_w, pad_top, pad_left;
    uint16_t input0, input1, output, n_channels;
    int32_t act_min, act_max;
    uint32_t weights, bias, mult, shift, grad_mult, grad_shift, weight_scales, bias_scales, channels;
    uint16_t wgrad_chunk, weight_work;
    uint16_t scratch, bias_param, weight_param, bias_velocity, weight_velocity;
    uint16_t bias_grad, weight_grad, grad_scaled, grad_acc, grad_scratch;
    uint16_t grad_sel, grad_chunk;
} tb_blob_op;

typedef struct {
    uint32_t offset, size;
} tb_blob_buffer;

/* The records are read in place: their layout is the format's. */
typedef char tb_blob_header_is_64_bytes[sizeof(tb_blob_header) == 64 ? 1 : -1];
typedef char tb_blob_tensor_is_24_bytes[sizeof(tb_blob_tensor) == 24 ? 1 : -1];
typedef char tb_blob_op_is_88_bytes[sizeof(tb_blob_op) == 88 ? 1 : -1];
typedef char tb_blob_buffer_is_8_bytes[sizeof(tb_blob_buffer) == 8 ? 1 : -1];

#endif
