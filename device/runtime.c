#include "runtime.h"

#include <string.h>

#include "dispatch.h"
#include "frame.h"
#include "model.h"
#include "port.h"
#include "protocol.h"

tb_runtime tb_rt;

/* Painted at boot so that the high-water mark can be read off without the executor's help. */
#define ARENA_PAINT 0xA5C3E1F7u
static union {
    uint8_t bytes[TB_ARENA_BYTES];
    uint32_t words[TB_ARENA_BYTES / 4];
    uint64_t align;
} arena;

uint8_t *tb_arena(void) { return arena.bytes; }

uint32_t tb_arena_high_water(void)
{
    uint32_t n = TB_ARENA_BYTES / 4;
    while (n > 0 && arena.words[n - 1] == ARENA_PAINT)
        n--;
    return n * 4;
}

int tb_load_committed(const tb_stored_model *m, char *err, uint32_t err_len)
{
    int rc = tb_model_load(m->blob, m->size, arena.bytes, TB_ARENA_BYTES, err, err_len);
    if (rc != TB_OK)
        return rc;
    tb_rt.model = *m;
    tb_rt.has_model = 1;
    tb_rt.input_ready = 0;
    const tb_model_info *info = tb_model_current();
    tb_stored_params p;
    if (tb_store_params_find(m->seq, m->crc, info->params_bytes, &p)) {
        memcpy(tb_model_params(), p.data, p.size);
        tb_model_set_step(p.step);
        tb_log(TB_LOG_INFO, "checkpoint %u applied (step %u)", (unsigned)p.generation, (unsigned)p.step);
    }
    return TB_OK;
}

void tb_load_newest(void)
{
    tb_stored_model models[TB_MODEL_SLOTS];
    int n = tb_store_models(models);
    for (int i = 0; i < n; i++) {
        char err[TB_MESSAGE_MAX + 1];
        if (tb_load_committed(&models[i], err, sizeof err) == TB_OK) {
            tb_log(TB_LOG_INFO, "model %08x (%u bytes) loaded from slot %c", (unsigned)models[i].crc,
                   (unsigned)models[i].size, TB_MODEL_SLOT_NAMES[models[i].slot]);
            return;
        }
        tb_log(TB_LOG_WARNING, "model in slot %c rejected: %s", TB_MODEL_SLOT_NAMES[models[i].slot], err);
    }
}

void tb_run(void)
{
    static tb_decoder decoder;
    static uint8_t chunk[256];
    for (uint32_t i = 0; i < TB_ARENA_BYTES / 4; i++)
        arena.words[i] = ARENA_PAINT;
    tb_rt.boot_id = tb_port_entropy();
    tb_send_boot_event();
    tb_load_newest();
    tb_decoder_init(&decoder);
    for (;;) {
        size_t n = tb_port_read(chunk, sizeof chunk);
        if (n == 0)
            tb_port_wait_input();
        for (size_t i = 0; i < n; i++) {
            int32_t r = tb_decoder_push(&decoder, chunk[i]);
            if (r == TB_DECODE_BAD)
                tb_rt.bad_frames++;
            else if (r != TB_DECODE_NONE)
                tb_dispatch(decoder.body, (uint32_t)r);
        }
    }
}
