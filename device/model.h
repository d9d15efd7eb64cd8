/* The loaded model and the executor: the interface between the protocol core (dispatch, transfers,
 * storage) and the graph executor. The blob format is docs/blob-format.md. */
#ifndef TB_MODEL_H
#define TB_MODEL_H
#include <stdint.h>

/* What the dispatcher needs to know about the current model. */
typedef struct {
    uint16_t input_h, input_w, input_c;
    uint16_t num_classes;
    uint32_t input_bytes;   /* input_h * input_w * input_c */
    uint32_t arena_bytes;   /* planned arena use (<= the device's arena) */
    uint32_t params_bytes;  /* trained parameters + optimizer state: the params slot's content */
    float default_lr;
} tb_model_info;

typedef struct {
    uint16_t label;
    uint16_t num_classes;
    float scale;            /* logit value = scale * (logits[i] - zero_point) */
    int32_t zero_point;
    const int8_t *logits;   /* num_classes values, valid until the next executor call */
} tb_infer_result;

typedef struct {
    float loss;
    uint16_t label_pred;
    uint32_t step;
} tb_step_result;

/* Validate every offset, size and shape of `blob` for an arena of `arena_capacity` bytes, then
 * make it the current model (its parameters initialised from the blob). On failure returns a
 * protocol error code (docs/protocol.md: TOO_LARGE, BAD_BLOB) with a message in err, and the
 * previous model stays current. The blob must stay readable (it lives in flash). */
int tb_model_load(const uint8_t *blob, uint32_t size, uint8_t *arena, uint32_t arena_capacity,
                  char *err, uint32_t err_len);
void tb_model_unload(void);
const tb_model_info *tb_model_current(void);   /* NULL: no model */

/* Where a committed input transfer is written: the model's input tensor in the arena (input_bytes).
 * An INFER or TRAIN_STEP consumes it (the arena is reused by the pass). NULL when the model's
 * input streams (tb_model_input_streams): its bytes go through tb_exec_input_data instead. */
uint8_t *tb_model_input(void);

/* Does the current model stream its input (docs/blob-format.md, "Streamed input"): the first
 * layers run while the input arrives, its rows pass through a ring of a few rows, and INFER /
 * TRAIN_STEP start after them. */
int tb_model_input_streams(void);
/* A streamed input starts over: no row received, the first layers' row state reset. */
void tb_exec_input_begin(void);
/* The next `len` bytes of a streamed input, in order (any split): into the input ring, and every
 * row of the first layers that they make computable computed. TB_OK, or TB_ERR_EXEC (a bug: the
 * loader checked the ring's size) with tb_exec_error's reason. The executor's counter for these
 * rows is charged to the next INFER / TRAIN_STEP's profile (docs/protocol.md, PROFILE). */
int tb_exec_input_data(const uint8_t *data, uint32_t len);

/* The trained parameters and optimizer state (params_bytes): read for checkpoints, written
 * (after validation of size) to restore one. */
uint8_t *tb_model_params(void);
uint32_t tb_model_step(void);
void tb_model_set_step(uint32_t step);

int tb_exec_infer(tb_infer_result *result);
/* One training step on the committed input. lr <= 0: the model's default. label < num_classes. */
int tb_exec_train_step(uint16_t label, float lr, tb_step_result *result);
/* Why the last tb_exec_* call failed (for the error response's message). */
const char *tb_exec_error(void);

#endif
