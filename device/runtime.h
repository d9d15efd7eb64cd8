/* The runtime core's shared state and entry point. A board's main() sets up its hardware and
 * calls tb_run(). */
#ifndef TB_RUNTIME_H
#define TB_RUNTIME_H
#include <stdint.h>

#include "store.h"

#define TB_FIRMWARE_VERSION "0.1.0"

/* The one static arena of every target. The STM32F746 has 320 KB of SRAM: 256 KB arena leaves
 * 64 KB for the stack, the runtime's buffers (~5 KB) and the executor's state. The paper's
 * training peaks (135-173 KB) fit with room for the input image and the trained parameters. */
#define TB_ARENA_BYTES (256u * 1024u)

typedef struct {
    uint32_t boot_id;
    int has_model;
    tb_stored_model model;   /* the loaded model's flash record (when has_model) */
    int input_ready;         /* a committed input waits for INFER / TRAIN_STEP */
    uint64_t last_infer_count, last_step_count;
    uint32_t bad_frames;
} tb_runtime;

extern tb_runtime tb_rt;

void tb_run(void);
uint8_t *tb_arena(void);
uint32_t tb_arena_high_water(void);

/* Loads a committed model and applies its newest checkpoint; 0 or a protocol error (message in err). */
int tb_load_committed(const tb_stored_model *m, char *err, uint32_t err_len);
/* Loads the newest committed model that validates (at boot, or after a failed commit). */
void tb_load_newest(void);

#endif
