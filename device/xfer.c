#include "xfer.h"

#include <string.h>

#include "frame.h"
#include "model.h"
#include "protocol.h"
#include "runtime.h"
#include "store.h"

/* One transfer per slot, in RAM: a lost link keeps it (resume), a reset forgets it. */
typedef struct {
    int active;
    uint32_t size, crc, next;
    uint32_t received_crc; /* a streamed input: CRC-32 of the bytes received so far */
    int flash_slot; /* model, params: the flash slot being written */
} transfer;

static transfer transfers[4]; /* indexed by TB_SLOT_* */
static uint32_t input_crc;    /* of the committed input (a streamed one is not kept whole) */

void tb_xfer_cancel(int slot)
{
    transfers[slot].active = 0;
}

static int check_slot(tb_call *c, uint8_t slot)
{
    if (slot >= TB_SLOT_MODEL && slot <= TB_SLOT_PARAMS)
        return TB_OK;
    return tb_fail(c, TB_ERR_BAD_ARGUMENT, "slot %u does not exist (1 model, 2 input, 3 params)", (unsigned)slot);
}

void tb_put_model_info(tb_call *c)
{
    const tb_model_info *m = tb_model_current();
    tb_put_u32(c, tb_rt.model.crc);
    tb_put_u32(c, tb_rt.model.size);
    tb_put_u16(c, m->input_h);
    tb_put_u16(c, m->input_w);
    tb_put_u16(c, m->input_c);
    tb_put_u16(c, m->num_classes);
    tb_put_u32(c, m->arena_bytes);
    tb_put_u32(c, m->params_bytes);
    tb_put_f32(c, m->default_lr);
    tb_put_u32(c, tb_model_step());
}

int tb_check_params_fit(tb_call *c, uint32_t size)
{
    uint32_t capacity = tb_store_params_capacity();
    if (size <= capacity)
        return TB_OK;
    if (tb_store_shared_by_model())
        return tb_fail(c, TB_ERR_TOO_LARGE, "%u bytes of parameters exceed the %u-byte checkpoint slot beside "
                       "a model over %u bytes", (unsigned)size, (unsigned)capacity,
                       (unsigned)tb_store_unshared_model_capacity());
    return tb_fail(c, TB_ERR_TOO_LARGE, "%u bytes of parameters exceed the %u-byte checkpoint slot",
                   (unsigned)size, (unsigned)capacity);
}

/* Prepares the destination of a new transfer; the model slot's flash is erased here, before
 * any data frame is in flight, because erasing can take seconds on a board. */
static int prepare(tb_call *c, uint8_t slot, uint32_t size, transfer *t)
{
    if (slot == TB_SLOT_MODEL) {
        int overwrites;
        t->flash_slot = tb_store_model_target(size, tb_rt.has_model ? &tb_rt.model : NULL, &overwrites);
        if (t->flash_slot == TB_NO_SLOT)
            return tb_fail(c, TB_ERR_TOO_LARGE, "model blob of %u bytes exceeds the %u-byte model area",
                           (unsigned)size, (unsigned)tb_store_model_capacity());
        if (overwrites) {
            tb_log(TB_LOG_WARNING, "a %u-byte blob does not fit beside the current model: erasing it",
                   (unsigned)size);
            tb_model_unload();
            tb_rt.has_model = 0;
            tb_rt.input_ready = 0;
            tb_xfer_cancel(TB_SLOT_INPUT);
            tb_xfer_cancel(TB_SLOT_PARAMS);
        }
        if (tb_store_model_erase(t->flash_slot, size) != 0)
            return tb_fail(c, TB_ERR_FLASH, "flash erase failed");
        return TB_OK;
    }
    int rc = tb_need_model(c);
    if (rc != TB_OK)
        return rc;
    const tb_model_info *m = tb_model_current();
    if (slot == TB_SLOT_INPUT) {
        if (size != m->input_bytes)
            return tb_fail(c, TB_ERR_BAD_ARGUMENT, "input of %u bytes; the model takes %ux%ux%u = %u",
                           (unsigned)size, (unsigned)m->input_h, (unsigned)m->input_w,
                           (unsigned)m->input_c, (unsigned)m->input_bytes);
        tb_rt.input_ready = 0; /* about to be overwritten */
        if (tb_model_input_streams())
            tb_exec_input_begin(); /* the first layers run as its rows arrive */
        return TB_OK;
    }
    if (size != m->params_bytes)
        return tb_fail(c, TB_ERR_BAD_ARGUMENT, "parameters of %u bytes; the model has %u",
                       (unsigned)size, (unsigned)m->params_bytes);
    rc = tb_check_params_fit(c, size);
    if (rc != TB_OK)
        return rc;
    t->flash_slot = tb_store_params_begin();
    if (t->flash_slot == TB_NO_SLOT)
        return tb_fail(c, TB_ERR_FLASH, "flash erase failed");
    return TB_OK;
}

int tb_xfer_begin(tb_call *c)
{
    uint8_t slot = c->in[0];
    uint32_t size = tb_get_u32(c->in + 1), crc = tb_get_u32(c->in + 5);
    int rc = check_slot(c, slot);
    if (rc != TB_OK)
        return rc;
    transfer *t = &transfers[slot];
    if (!(t->active && t->size == size && t->crc == crc)) {
        t->active = 0;
        if (size == 0)
            return tb_fail(c, TB_ERR_BAD_ARGUMENT, "empty transfer");
        rc = prepare(c, slot, size, t);
        if (rc != TB_OK)
            return rc;
        t->active = 1;
        t->size = size;
        t->crc = crc;
        t->next = 0;
        t->received_crc = 0;
    }
    tb_put_u32(c, t->next);
    return TB_OK;
}

static int need_transfer(tb_call *c, uint8_t slot)
{
    int rc = check_slot(c, slot);
    if (rc == TB_OK && !transfers[slot].active)
        rc = tb_fail(c, TB_ERR_BAD_STATE, "no transfer into slot %u: send XFER_BEGIN", (unsigned)slot);
    return rc;
}

int tb_xfer_data(tb_call *c)
{
    if (c->in_len < 6)
        return tb_fail(c, TB_ERR_BAD_LENGTH, "XFER_DATA takes a slot, an offset and at least one byte");
    uint8_t slot = c->in[0];
    uint32_t offset = tb_get_u32(c->in + 1), len = c->in_len - 5;
    const uint8_t *data = c->in + 5;
    int rc = need_transfer(c, slot);
    if (rc != TB_OK)
        return rc;
    transfer *t = &transfers[slot];
    if (offset != t->next) {
        tb_put_u32(c, t->next);
        return tb_fail(c, TB_ERR_BAD_OFFSET, "offset %u, expected %u", (unsigned)offset, (unsigned)t->next);
    }
    if (len > t->size - offset)
        return tb_fail(c, TB_ERR_BAD_ARGUMENT, "data runs past the announced %u bytes", (unsigned)t->size);
    if (slot == TB_SLOT_INPUT && tb_model_input_streams()) {
        if (tb_exec_input_data(data, len) != TB_OK) {
            t->active = 0;
            return tb_fail(c, TB_ERR_EXEC, "%s", tb_exec_error());
        }
        t->received_crc = tb_crc32(t->received_crc, data, len);
    } else if (slot == TB_SLOT_INPUT)
        memcpy(tb_model_input() + offset, data, len);
    else if ((slot == TB_SLOT_MODEL ? tb_store_model_program(t->flash_slot, offset, data, len)
                                    : tb_store_params_program(t->flash_slot, offset, data, len)) != 0) {
        t->active = 0;
        return tb_fail(c, TB_ERR_FLASH, "flash write failed");
    }
    t->next += len;
    tb_put_u32(c, t->next);
    return TB_OK;
}

static int commit_model(tb_call *c, const transfer *t)
{
    const uint8_t *blob = tb_store_model_blob(t->flash_slot);
    char err[TB_MESSAGE_MAX + 1];
    tb_rt.input_ready = 0;
    tb_xfer_cancel(TB_SLOT_INPUT);
    tb_xfer_cancel(TB_SLOT_PARAMS);
    int rc = tb_model_load(blob, t->size, tb_arena(), TB_ARENA_BYTES, err, sizeof err);
    if (rc != TB_OK)
        return tb_fail(c, rc, "%s", err);
    if (tb_store_model_seal(t->flash_slot, t->size, t->crc) != 0) {
        tb_model_unload();
        tb_rt.has_model = 0;
        tb_load_newest();
        return tb_fail(c, TB_ERR_FLASH, "flash write of the model record failed");
    }
    tb_stored_model newest[TB_MODEL_SLOTS];
    tb_store_models(newest);
    tb_rt.model = newest[0];
    tb_rt.has_model = 1;
    tb_log(TB_LOG_INFO, "model %08x (%u bytes) committed to slot %c", (unsigned)t->crc, (unsigned)t->size,
           TB_MODEL_SLOT_NAMES[t->flash_slot]);
    tb_put_model_info(c);
    return TB_OK;
}

/* Every model change cancels a params transfer, so it is for the loaded model. */
static int commit_params(tb_call *c, const transfer *t)
{
    uint32_t generation;
    if (tb_model_input_streams()) {
        /* the first layers of a streamed input ran with the parameters being replaced */
        tb_rt.input_ready = 0;
        tb_xfer_cancel(TB_SLOT_INPUT);
    }
    memcpy(tb_model_params(), tb_store_params_data(t->flash_slot), t->size);
    if (tb_store_params_seal(t->flash_slot, tb_rt.model.seq, tb_rt.model.crc, t->size, t->crc,
                             tb_model_step(), &generation) != 0)
        return tb_fail(c, TB_ERR_FLASH, "flash write of the checkpoint record failed");
    tb_put_u32(c, generation);
    return TB_OK;
}

int tb_xfer_commit(tb_call *c)
{
    uint8_t slot = c->in[0];
    int rc = need_transfer(c, slot);
    if (rc != TB_OK)
        return rc;
    transfer *t = &transfers[slot];
    if (t->next != t->size)
        return tb_fail(c, TB_ERR_INCOMPLETE, "%u of %u bytes received", (unsigned)t->next, (unsigned)t->size);
    t->active = 0;
    uint32_t crc;
    if (slot == TB_SLOT_INPUT && tb_model_input_streams()) {
        crc = t->received_crc; /* the image is gone: its rows went through the input ring */
    } else {
        const uint8_t *content = slot == TB_SLOT_MODEL   ? tb_store_model_blob(t->flash_slot)
                                 : slot == TB_SLOT_INPUT ? tb_model_input()
                                                         : tb_store_params_data(t->flash_slot);
        crc = tb_crc32(0, content, t->size);
    }
    if (crc != t->crc)
        return tb_fail(c, TB_ERR_CRC_MISMATCH, "CRC %08x, announced %08x", (unsigned)crc, (unsigned)t->crc);
    if (slot == TB_SLOT_MODEL)
        return commit_model(c, t);
    if (slot == TB_SLOT_PARAMS)
        return commit_params(c, t);
    tb_rt.input_ready = 1;
    input_crc = crc;
    return TB_OK;
}

/* The committed content of a readable slot. */
static int readable(tb_call *c, uint8_t slot, const uint8_t **data, uint32_t *size)
{
    int rc = check_slot(c, slot);
    if (rc != TB_OK)
        return rc;
    if (slot == TB_SLOT_INPUT)
        return tb_fail(c, TB_ERR_BAD_ARGUMENT, "the input slot cannot be read");
    rc = tb_need_model(c);
    if (rc != TB_OK)
        return rc;
    if (slot == TB_SLOT_MODEL) {
        *data = tb_rt.model.blob;
        *size = tb_rt.model.size;
    } else {
        *data = tb_model_params();
        *size = tb_model_current()->params_bytes;
    }
    return TB_OK;
}

int tb_xfer_read(tb_call *c)
{
    uint8_t slot = c->in[0];
    uint32_t offset = tb_get_u32(c->in + 1), length = tb_get_u16(c->in + 5);
    const uint8_t *data = NULL;
    uint32_t size = 0;
    int rc = readable(c, slot, &data, &size);
    if (rc != TB_OK)
        return rc;
    if (length == 0 || length > TB_MAX_PAYLOAD)
        return tb_fail(c, TB_ERR_BAD_ARGUMENT, "length must be 1..%u", (unsigned)TB_MAX_PAYLOAD);
    if (offset > size)
        return tb_fail(c, TB_ERR_BAD_ARGUMENT, "offset %u past the end (%u bytes)", (unsigned)offset,
                       (unsigned)size);
    tb_put_bytes(c, data + offset, length < size - offset ? length : size - offset);
    return TB_OK;
}

int tb_xfer_stat(tb_call *c)
{
    uint8_t slot = c->in[0];
    int rc = check_slot(c, slot);
    if (rc != TB_OK)
        return rc;
    uint32_t size = 0, crc = 0;
    if (slot == TB_SLOT_MODEL && tb_rt.has_model) {
        size = tb_rt.model.size;
        crc = tb_rt.model.crc;
    } else if (slot == TB_SLOT_INPUT && tb_rt.input_ready) {
        size = tb_model_current()->input_bytes;
        crc = input_crc;
    } else if (slot == TB_SLOT_PARAMS && tb_rt.has_model) {
        size = tb_model_current()->params_bytes;
        crc = tb_crc32(0, tb_model_params(), size);
    }
    tb_put_u32(c, size);
    tb_put_u32(c, crc);
    return TB_OK;
}
