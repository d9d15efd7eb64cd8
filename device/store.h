/* What lives in flash: the committed model blob and the trained-parameter checkpoints
 * (docs/protocol.md, "Flash"). Everything here is a pure function of the flash contents, so the
 * boot-time choice is the same after any power loss.
 *
 * The board's storage sectors (tb_board.sector_start), n of them: model slot A starts at sector
 * n-2, model slot B at sector n-1, and the sector before A, n-3, is shared. The sectors before the
 * shared one (at least two) hold checkpoints.
 *
 * Model: a slot is a 64-byte record header followed by the blob; the header is programmed last,
 * after the blob's CRC was verified in flash, so a slot either holds a complete blob or is ignored.
 * A record runs from its slot's start as far as the blob needs. Blobs that fit one sector go to A
 * or B, beside the current model; larger ones from A over A and B; blobs larger than A and B
 * together from the shared sector (slot L) over the rest of the flash. A record whose start lies
 * inside a valid record that starts lower is stale.
 *
 * Params: two checkpoint slots, each a 32-byte header followed by the data. Normally slot 0 is
 * the checkpoint sectors together and slot 1 the shared sector. While a model record starts in the
 * shared sector, slot 0 is the first checkpoint sector and slot 1 the rest of them (smaller slots).
 * The layout follows from the shared sector's first bytes alone: a model header there always has
 * its blob behind it, because every erase of a model's sectors erases that header first. A
 * checkpoint is written into the slot that does not hold the newest valid one, header last; the
 * newest valid one wins at boot. */
#ifndef TB_STORE_H
#define TB_STORE_H
#include <stdint.h>

enum { TB_MODEL_HEADER_BYTES = 64, TB_PARAMS_HEADER_BYTES = 32, TB_NO_SLOT = -1 };
/* model slots; TB_MODEL_SLOT_NAMES[slot] names one in logs */
enum { TB_MODEL_A = 0, TB_MODEL_B = 1, TB_MODEL_L = 2, TB_MODEL_SLOTS = 3 };
#define TB_MODEL_SLOT_NAMES "ABL"

typedef struct {
    int slot;            /* TB_MODEL_A, _B, _L */
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

/* The committed models, newest first; returns how many (0..TB_MODEL_SLOTS). */
int tb_store_models(tb_stored_model out[TB_MODEL_SLOTS]);
/* The largest blob: from the shared sector to the end. */
uint32_t tb_store_model_capacity(void);
/* The largest blob that leaves the shared sector to the checkpoints: slots A and B together. */
uint32_t tb_store_unshared_model_capacity(void);
/* Where a blob of `size` bytes goes while `current` (NULL: none) is the loaded model:
 * TB_NO_SLOT when it fits nowhere. *overwrites_current: the current model is lost. */
int tb_store_model_target(uint32_t size, const tb_stored_model *current, int *overwrites_current);
/* Erases the sectors a blob of `size` bytes in `slot` takes, after the header of a model in the
 * shared sector: older models' sectors before the newest model's, the shared sector last. */
int tb_store_model_erase(int slot, uint32_t size);
int tb_store_model_program(int slot, uint32_t offset, const uint8_t *data, uint32_t len);
const uint8_t *tb_store_model_blob(int slot);
/* Makes the slot's blob committed, with a sequence number above that of every model still in
 * flash and of every checkpoint record in flash, in either layout (so a checkpoint never matches
 * a later commit). */
int tb_store_model_seal(int slot, uint32_t size, uint32_t crc);

/* 1 while a model record starts in the shared sector: the smaller checkpoint slots apply. */
int tb_store_shared_by_model(void);
/* The newest valid checkpoint for the model commit (model_seq, model_crc) of exactly `size`
 * bytes; returns 1 if there is one. */
int tb_store_params_find(uint32_t model_seq, uint32_t model_crc, uint32_t size, tb_stored_params *out);
/* The largest checkpoint in the current layout. */
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
