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

/* ---------------- sectors ---------------- */

typedef struct {
    uint32_t offset, size;
} flash_range;

static uint32_t sector_start(int sector) { return tb_port_board()->sector_start[sector]; }
static int sector_count(void) { return tb_port_board()->sector_count; }
static uint32_t flash_end(void) { return sector_start(sector_count()); }
static int shared_sector(void) { return sector_count() - 3; }

/* sectors first .. last - 1 */
static flash_range sectors(int first, int last)
{
    flash_range r = {sector_start(first), sector_start(last) - sector_start(first)};
    return r;
}

static int erase_sector(int sector)
{
    flash_range r = sectors(sector, sector + 1);
    return tb_port_flash_erase(r.offset, r.size);
}

/* ---------------- model ---------------- */

static int model_sector(int slot)
{
    return slot == TB_MODEL_L ? shared_sector() : slot == TB_MODEL_A ? sector_count() - 2 : sector_count() - 1;
}

static uint32_t model_start(int slot) { return sector_start(model_sector(slot)); }

/* where the record of a `size`-byte blob in `slot` ends (size at most the slot's room) */
static uint32_t record_end(int slot, uint32_t size) { return model_start(slot) + TB_MODEL_HEADER_BYTES + size; }

static uint32_t slot_room(int slot) { return flash_end() - model_start(slot) - TB_MODEL_HEADER_BYTES; }

uint32_t tb_store_model_capacity(void) { return slot_room(TB_MODEL_L); }
uint32_t tb_store_unshared_model_capacity(void) { return slot_room(TB_MODEL_A); }

/* Header: magic, seq, size, crc, crc of those 16 bytes; the rest of the 64 bytes stays erased. */
static int model_header(int slot, tb_stored_model *out)
{
    const uint8_t *h = tb_port_flash() + model_start(slot);
    if (get_u32(h) != MODEL_MAGIC || get_u32(h + 16) != tb_crc32(0, h, 16))
        return 0;
    out->slot = slot;
    out->seq = get_u32(h + 4);
    out->size = get_u32(h + 8);
    out->crc = get_u32(h + 12);
    out->blob = h + TB_MODEL_HEADER_BYTES;
    return 1;
}

static int read_model(int slot, tb_stored_model *out)
{
    return model_header(slot, out) && out->size <= slot_room(slot) && tb_crc32(0, out->blob, out->size) == out->crc;
}

int tb_store_models(tb_stored_model out[TB_MODEL_SLOTS])
{
    static const int by_address[TB_MODEL_SLOTS] = {TB_MODEL_L, TB_MODEL_A, TB_MODEL_B};
    uint32_t covered = 0; /* the end of the valid records below: a header before it was overwritten */
    int n = 0;
    for (int i = 0; i < TB_MODEL_SLOTS; i++) {
        int slot = by_address[i];
        if (model_start(slot) < covered || !read_model(slot, &out[n]))
            continue;
        covered = record_end(slot, out[n].size);
        n++;
    }
    for (int i = 1; i < n; i++) /* newest first */
        for (int j = i; j > 0 && out[j].seq > out[j - 1].seq; j--) {
            tb_stored_model t = out[j];
            out[j] = out[j - 1];
            out[j - 1] = t;
        }
    return n;
}

int tb_store_shared_by_model(void)
{
    tb_stored_model m;
    return model_header(TB_MODEL_L, &m);
}

static int fits_one_sector(int slot, uint32_t size)
{
    return record_end(slot, size) <= sector_start(model_sector(slot) + 1);
}

static int overlaps(int slot, uint32_t size, const tb_stored_model *m)
{
    return model_start(slot) < record_end(m->slot, m->size) && model_start(m->slot) < record_end(slot, size);
}

int tb_store_model_target(uint32_t size, const tb_stored_model *current, int *overwrites_current)
{
    if (size > tb_store_model_capacity())
        return TB_NO_SLOT;
    int slot = TB_MODEL_L;
    if (size <= tb_store_unshared_model_capacity()) {
        slot = TB_MODEL_A; /* over A and B if it needs both */
        for (int s = TB_MODEL_A; s <= TB_MODEL_B; s++)
            if (fits_one_sector(s, size) && !(current && overlaps(s, size, current))) {
                slot = s; /* beside the current model */
                break;
            }
    }
    *overwrites_current = current && overlaps(slot, size, current);
    return slot;
}

int tb_store_model_erase(int slot, uint32_t size)
{
    int first = model_sector(slot), last = first, shared = shared_sector();
    while (last + 1 < sector_count() && sector_start(last + 1) < record_end(slot, size))
        last++;
    tb_stored_model models[TB_MODEL_SLOTS];
    int have_newest = tb_store_models(models) > 0;
    /* The order: a model header in the shared sector first (so that a model header there always
     * has its blob behind it); then the sectors of older models, then those of the newest (a power
     * cut never brings an older one back); the shared sector's checkpoint last (it outlives the
     * model it belongs to). */
    int header_erased = tb_store_shared_by_model();
    if (header_erased && erase_sector(shared) != 0)
        return -1;
    for (int pass = 0; pass < 3; pass++)
        for (int s = first; s <= last; s++) {
            int holds_newest = have_newest && sector_start(s) < record_end(models[0].slot, models[0].size)
                               && model_start(models[0].slot) < sector_start(s + 1);
            int order = s == shared ? 2 : holds_newest ? 1 : 0;
            if (order == pass && !(s == shared && header_erased) && erase_sector(s) != 0)
                return -1;
        }
    return 0;
}

int tb_store_model_program(int slot, uint32_t offset, const uint8_t *data, uint32_t len)
{
    return tb_port_flash_program(model_start(slot) + TB_MODEL_HEADER_BYTES + offset, data, len);
}

const uint8_t *tb_store_model_blob(int slot)
{
    return tb_port_flash() + model_start(slot) + TB_MODEL_HEADER_BYTES;
}

static int params_header(uint32_t offset, tb_stored_params *out);

int tb_store_model_seal(int slot, uint32_t size, uint32_t crc)
{
    tb_stored_model models[TB_MODEL_SLOTS];
    int n = tb_store_models(models);
    uint32_t seq = 1;
    for (int i = 0; i < n; i++)
        if (models[i].slot != slot && models[i].seq >= seq)
            seq = models[i].seq + 1;
    /* every place a checkpoint header can be, in either layout: a record the current layout does
     * not show may show again after the next layout change */
    const int record_sectors[3] = {0, 1, shared_sector()};
    for (int i = 0; i < 3; i++) {
        tb_stored_params p;
        if (params_header(sector_start(record_sectors[i]), &p) && p.model_seq >= seq)
            seq = p.model_seq + 1;
    }
    uint8_t h[20];
    put_u32(h, MODEL_MAGIC);
    put_u32(h + 4, seq);
    put_u32(h + 8, size);
    put_u32(h + 12, crc);
    put_u32(h + 16, tb_crc32(0, h, 16));
    return tb_port_flash_program(model_start(slot), h, sizeof h);
}

/* ---------------- params ---------------- */

static flash_range params_slot(int slot)
{
    int shared = shared_sector();
    if (tb_store_shared_by_model())
        return slot == 0 ? sectors(0, 1) : sectors(1, shared);
    return slot == 0 ? sectors(0, shared) : sectors(shared, shared + 1);
}

uint32_t tb_store_params_capacity(void)
{
    uint32_t a = params_slot(0).size, b = params_slot(1).size;
    return (a < b ? a : b) - TB_PARAMS_HEADER_BYTES;
}

/* Header: magic, generation, model_seq, model_crc, size, crc, step, crc of those 28 bytes. */
static int params_header(uint32_t offset, tb_stored_params *out)
{
    const uint8_t *h = tb_port_flash() + offset;
    if (get_u32(h) != PARAMS_MAGIC || get_u32(h + 28) != tb_crc32(0, h, 28))
        return 0;
    out->generation = get_u32(h + 4);
    out->model_seq = get_u32(h + 8);
    out->model_crc = get_u32(h + 12);
    out->size = get_u32(h + 16);
    out->crc = get_u32(h + 20);
    out->step = get_u32(h + 24);
    out->data = h + TB_PARAMS_HEADER_BYTES;
    return 1;
}

static int read_params(int slot, tb_stored_params *out)
{
    const flash_range r = params_slot(slot);
    out->slot = slot;
    return params_header(r.offset, out) && out->size <= r.size - TB_PARAMS_HEADER_BYTES
           && tb_crc32(0, out->data, out->size) == out->crc;
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
    const flash_range r = params_slot(slot);
    return tb_port_flash_erase(r.offset, r.size) == 0 ? slot : TB_NO_SLOT;
}

int tb_store_params_program(int slot, uint32_t offset, const uint8_t *data, uint32_t len)
{
    return tb_port_flash_program(params_slot(slot).offset + TB_PARAMS_HEADER_BYTES + offset,
                                 data, len);
}

const uint8_t *tb_store_params_data(int slot)
{
    return tb_port_flash() + params_slot(slot).offset + TB_PARAMS_HEADER_BYTES;
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
    int rc = tb_port_flash_program(params_slot(slot).offset, h, sizeof h);
    *generation = gen;
    return rc;
}
