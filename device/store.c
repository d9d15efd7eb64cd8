#include "store.h"

#include <stddef.h>

#include "frame.h"
#include "port.h"

#define MODEL_MAGIC 0x314D4254u  /* "TBM1" */
#define PARAMS_MAGIC 0x31504254u /* "TBP1" */

static uint32_t get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void put_u32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

/* ---------------- model ---------------- */

static tb_flash_range model_slot(int slot)
{
    const tb_board *b = tb_port_board();
    tb_flash_range r = b->model_area;
    if (slot == 1) {
        r.offset += b->model_split;
        r.size -= b->model_split;
    } else {
        r.size = b->model_split;
    }
    return r;
}

uint32_t tb_store_model_capacity(void)
{
    return tb_port_board()->model_area.size - TB_MODEL_HEADER_BYTES;
}

/* Header: magic, seq, size, crc, crc of those 16 bytes; the rest of the 64 bytes stays erased. */
static int read_model(int slot, uint32_t span, tb_stored_model *out)
{
    tb_flash_range r = model_slot(slot);
    const uint8_t *h = tb_port_flash() + r.offset;
    if (get_u32(h) != MODEL_MAGIC || get_u32(h + 16) != tb_crc32(0, h, 16))
        return 0;
    out->slot = slot;
    out->seq = get_u32(h + 4);
    out->size = get_u32(h + 8);
    out->crc = get_u32(h + 12);
    out->blob = h + TB_MODEL_HEADER_BYTES;
    if (out->size > span - TB_MODEL_HEADER_BYTES)
        return 0;
    return tb_crc32(0, out->blob, out->size) == out->crc;
}

int tb_store_models(tb_stored_model out[2])
{
    tb_stored_model a, b;
    int have_a = read_model(0, tb_port_board()->model_area.size, &a);
    /* a blob in A that reaches into B has overwritten B's header: B is stale */
    int have_b = !(have_a && TB_MODEL_HEADER_BYTES + a.size > model_slot(0).size)
                 && read_model(1, model_slot(1).size, &b);
    int n = 0;
    if (have_a && have_b && b.seq > a.seq) {
        out[n++] = b;
        out[n++] = a;
    } else {
        if (have_a)
            out[n++] = a;
        if (have_b)
            out[n++] = b;
    }
    return n;
}

int tb_store_model_target(uint32_t size, const tb_stored_model *current, int *overwrites_current)
{
    if (size > tb_store_model_capacity())
        return TB_NO_SLOT;
    *overwrites_current = current != NULL;
    if (current && TB_MODEL_HEADER_BYTES + current->size > model_slot(0).size)
        return 0; /* the current model covers both slots */
    int spare = current && current->slot == 0 ? 1 : 0;
    if (TB_MODEL_HEADER_BYTES + size <= model_slot(spare).size) {
        *overwrites_current = 0;
        return spare;
    }
    return 0;
}

int tb_store_model_erase(int slot, uint32_t size)
{
    return tb_port_flash_erase(model_slot(slot).offset, TB_MODEL_HEADER_BYTES + size);
}

int tb_store_model_program(int slot, uint32_t offset, const uint8_t *data, uint32_t len)
{
    return tb_port_flash_program(model_slot(slot).offset + TB_MODEL_HEADER_BYTES + offset, data, len);
}

const uint8_t *tb_store_model_blob(int slot)
{
    return tb_port_flash() + model_slot(slot).offset + TB_MODEL_HEADER_BYTES;
}

static int read_params(int slot, tb_stored_params *out);

int tb_store_model_seal(int slot, uint32_t size, uint32_t crc)
{
    tb_stored_model models[2];
    int n = tb_store_models(models);
    uint32_t seq = 1;
    for (int i = 0; i < n; i++)
        if (models[i].slot != slot && models[i].seq >= seq)
            seq = models[i].seq + 1;
    for (int i = 0; i < 2; i++) {
        tb_stored_params p;
        if (read_params(i, &p) && p.model_seq >= seq)
            seq = p.model_seq + 1;
    }
    uint8_t h[20];
    put_u32(h, MODEL_MAGIC);
    put_u32(h + 4, seq);
    put_u32(h + 8, size);
    put_u32(h + 12, crc);
    put_u32(h + 16, tb_crc32(0, h, 16));
    return tb_port_flash_program(model_slot(slot).offset, h, sizeof h);
}

/* ---------------- params ---------------- */

uint32_t tb_store_params_capacity(void)
{
    const tb_board *b = tb_port_board();
    uint32_t size = b->params[0].size < b->params[1].size ? b->params[0].size : b->params[1].size;
    return size - TB_PARAMS_HEADER_BYTES;
}

/* Header: magic, generation, model_seq, model_crc, size, crc, step, crc of those 28 bytes. */
static int read_params(int slot, tb_stored_params *out)
{
    const tb_flash_range r = tb_port_board()->params[slot];
    const uint8_t *h = tb_port_flash() + r.offset;
    if (get_u32(h) != PARAMS_MAGIC || get_u32(h + 28) != tb_crc32(0, h, 28))
        return 0;
    out->slot = slot;
    out->generation = get_u32(h + 4);
    out->model_seq = get_u32(h + 8);
    out->model_crc = get_u32(h + 12);
    out->size = get_u32(h + 16);
    out->crc = get_u32(h + 20);
    out->step = get_u32(h + 24);
    out->data = h + TB_PARAMS_HEADER_BYTES;
    if (out->size > r.size - TB_PARAMS_HEADER_BYTES)
        return 0;
    return tb_crc32(0, out->data, out->size) == out->crc;
}

/* The slot holding the newest valid checkpoint of any model, or TB_NO_SLOT. */
static int newest_params(tb_stored_params *out)
{
    tb_stored_params p[2];
    int valid[2] = {read_params(0, &p[0]), read_params(1, &p[1])};
    int best = TB_NO_SLOT;
    for (int i = 0; i < 2; i++)
        if (valid[i] && (best == TB_NO_SLOT || p[i].generation > p[best].generation))
            best = i;
    if (best != TB_NO_SLOT)
        *out = p[best];
    return best;
}

int tb_store_params_find(uint32_t model_seq, uint32_t model_crc, uint32_t size, tb_stored_params *out)
{
    tb_stored_params p[2];
    int found = 0;
    for (int i = 0; i < 2; i++) {
        if (!read_params(i, &p[i]) || p[i].model_seq != model_seq || p[i].model_crc != model_crc
            || p[i].size != size)
            continue;
        if (!found || p[i].generation > out->generation)
            *out = p[i];
        found = 1;
    }
    return found;
}

int tb_store_params_begin(void)
{
    tb_stored_params newest;
    int slot = newest_params(&newest) == 0 ? 1 : 0;
    const tb_flash_range r = tb_port_board()->params[slot];
    return tb_port_flash_erase(r.offset, r.size) == 0 ? slot : TB_NO_SLOT;
}

int tb_store_params_program(int slot, uint32_t offset, const uint8_t *data, uint32_t len)
{
    return tb_port_flash_program(tb_port_board()->params[slot].offset + TB_PARAMS_HEADER_BYTES + offset,
                                 data, len);
}

const uint8_t *tb_store_params_data(int slot)
{
    return tb_port_flash() + tb_port_board()->params[slot].offset + TB_PARAMS_HEADER_BYTES;
}

int tb_store_params_seal(int slot, uint32_t model_seq, uint32_t model_crc, uint32_t size,
                         uint32_t crc, uint32_t step, uint32_t *generation)
{
    tb_stored_params newest;
    uint32_t gen = newest_params(&newest) == TB_NO_SLOT ? 1 : newest.generation + 1;
    uint8_t h[32];
    put_u32(h, PARAMS_MAGIC);
    put_u32(h + 4, gen);
    put_u32(h + 8, model_seq);
    put_u32(h + 12, model_crc);
    put_u32(h + 16, size);
    put_u32(h + 20, crc);
    put_u32(h + 24, step);
    put_u32(h + 28, tb_crc32(0, h, 28));
    int rc = tb_port_flash_program(tb_port_board()->params[slot].offset, h, sizeof h);
    *generation = gen;
    return rc;
}
