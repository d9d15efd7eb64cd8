/* What lives in flash: the committed model blob and the trained-parameter checkpoints
 * (docs/protocol.md, "Flash"). Everything here is a pure function of the flash contents, so the
 * boot-time choice is the same after any power loss.
 *
 * Model: two slots A and B of the board's model area. A slot is a 64-byte record header followed
 * by the blob; the header is programmed last, after the blob's CRC was verified in flash, so a
 * slot either holds a complete blob or is ignored. A blob that does not fit the slot the current
 * model does not occupy is written from A's start over the whole area, destroying the current model.
 *
 * Params: two slots, each a 32-byte header followed by the data. A checkpoint is written into the
 * slot that does not hold the newest valid one, header last; the newest valid one wins at boot. */
#ifndef TB_STORE_H
#define TB_STORE_H
#include <stdint.h>

enum { TB_MODEL_HEADER_BYTES = 64, TB_PARAMS_HEADER_BYTES = 32, TB_NO_SLOT = -1 };

typedef struct {
    int slot;            /* 0 = A, 1 = B */
    uint32_t seq;        /* commit number: higher is newer */
    uint32_t size, crc;  /* of the blob */
    const uint8_t *blob; /* memory-mapped */
} tb_stored_model;

typedef struct {
    int slot;
    uint32_t generation; /* SAVE.generation: higher is newer */
    uint32_t model_seq, model_crc; /* the model commit these parameters belong to */
    uint32_t size, crc, step;
    const uint8_t *data;
} tb_stored_params;

/* The committed models, newest first; returns how many (0..2). */
int tb_store_models(tb_stored_model out[2]);
uint32_t tb_store_model_capacity(void);
/* Where a blob of `size` bytes goes while `current` (NULL: none) is the loaded model:
 * TB_NO_SLOT when it fits nowhere. *overwrites_current: the current model is lost. */
int tb_store_model_target(uint32_t size, const tb_stored_model *current, int *overwrites_current);
int tb_store_model_erase(int slot, uint32_t size);
int tb_store_model_program(int slot, uint32_t offset, const uint8_t *data, uint32_t len);
const uint8_t *tb_store_model_blob(int slot);
/* Makes the slot's blob committed, with a sequence number above that of every model still in
 * flash and of every model a checkpoint refers to (so a checkpoint never matches a later commit). */
int tb_store_model_seal(int slot, uint32_t size, uint32_t crc);

/* The newest valid checkpoint for the model commit (model_seq, model_crc) of exactly `size`
 * bytes; returns 1 if there is one. */
int tb_store_params_find(uint32_t model_seq, uint32_t model_crc, uint32_t size, tb_stored_params *out);
uint32_t tb_store_params_capacity(void);
/* Erases the slot a new checkpoint goes to (never the one holding the newest valid checkpoint)
 * and returns it, or TB_NO_SLOT on a flash error. */
int tb_store_params_begin(void);
int tb_store_params_program(int slot, uint32_t offset, const uint8_t *data, uint32_t len);
const uint8_t *tb_store_params_data(int slot);
/* Makes the slot's data the newest checkpoint; *generation receives its number. */
int tb_store_params_seal(int slot, uint32_t model_seq, uint32_t model_crc, uint32_t size,
                         uint32_t crc, uint32_t step, uint32_t *generation);

#endif
