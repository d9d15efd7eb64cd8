#include "dispatch.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "frame.h"
#include "model.h"
#include "port.h"
#include "profile.h"
#include "protocol.h"
#include "runtime.h"
#include "xfer.h"

/* The last response, kept whole so that an identical retry gets it again without re-execution. */
static uint8_t tx[TB_MAX_BODY];
static uint32_t tx_len;
static struct {
    int valid;
    uint16_t seq, command;
    uint32_t crc;
} last_request;

/* Log and event frames have their own buffer: they must not clobber the remembered response. */
static uint8_t aside[TB_HEADER_BYTES + TB_MESSAGE_MAX + TB_CRC_BYTES];

uint16_t tb_get_u16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }

uint32_t tb_get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void put_u16_at(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static void put_u32_at(uint8_t *p, uint32_t v)
{
    put_u16_at(p, (uint16_t)v);
    put_u16_at(p + 2, (uint16_t)(v >> 16));
}

void tb_put_u16(tb_call *c, uint16_t v)
{
    put_u16_at(c->out + c->out_len, v);
    c->out_len += 2;
}

void tb_put_u32(tb_call *c, uint32_t v)
{
    put_u32_at(c->out + c->out_len, v);
    c->out_len += 4;
}

void tb_put_f32(tb_call *c, float v)
{
    uint32_t bits;
    memcpy(&bits, &v, 4);
    tb_put_u32(c, bits);
}

void tb_put_bytes(tb_call *c, const void *data, uint32_t len)
{
    memcpy(c->out + c->out_len, data, len);
    c->out_len += len;
}

static int vfail(tb_call *c, int code, const char *fmt, va_list ap)
{
    int n = vsnprintf((char *)c->out + c->out_len, TB_MESSAGE_MAX + 1, fmt, ap);
    c->out_len += n < 0 ? 0 : (n > TB_MESSAGE_MAX ? TB_MESSAGE_MAX : (uint32_t)n);
    return code;
}

int tb_fail(tb_call *c, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfail(c, code, fmt, ap);
    va_end(ap);
    return code;
}

/* header | payload (already in place at body + 8) | crc, then onto the link */
static uint32_t seal_frame(uint8_t *body, uint8_t kind, uint16_t seq, uint16_t command,
                           uint16_t status, uint32_t payload_len)
{
    body[0] = TB_PROTOCOL_VERSION;
    body[1] = kind;
    put_u16_at(body + 2, seq);
    put_u16_at(body + 4, command);
    put_u16_at(body + 6, status);
    uint32_t len = TB_HEADER_BYTES + payload_len;
    put_u32_at(body + len, tb_crc32(0, body, len));
    return len + TB_CRC_BYTES;
}

static void send_aside(uint8_t kind, uint16_t command, uint32_t payload_len)
{
    tb_cobs_write(aside, seal_frame(aside, kind, 0, command, 0, payload_len), tb_port_write);
}

void tb_log(int level, const char *fmt, ...)
{
    tb_call c = {NULL, 0, aside + TB_HEADER_BYTES, 0};
    va_list ap;
    va_start(ap, fmt);
    vfail(&c, 0, fmt, ap);
    va_end(ap);
    send_aside(TB_KIND_LOG, (uint16_t)level, c.out_len);
}

void tb_send_boot_event(void)
{
    put_u32_at(aside + TB_HEADER_BYTES, tb_rt.boot_id);
    send_aside(TB_KIND_EVENT, TB_EVENT_BOOT, 4);
}

/* ---------------- commands ---------------- */

int tb_need_model(tb_call *c)
{
    if (tb_rt.has_model)
        return TB_OK;
    return tb_fail(c, TB_ERR_NO_MODEL, "no model loaded: transfer one into the model slot");
}

static int cmd_hello(tb_call *c)
{
    const tb_board *board = tb_port_board();
    tb_put_bytes(c, (const uint8_t[]){TB_PROTOCOL_VERSION, board->counter_unit}, 2);
    tb_put_u16(c, TB_MAX_PAYLOAD);
    tb_put_bytes(c, (const uint8_t[]){board->window, 0, 0, 0}, 4);
    tb_put_u32(c, tb_rt.boot_id);
    tb_put_u32(c, TB_CAP_TRAIN | TB_CAP_INFER | TB_CAP_SAVE | TB_CAP_SET_BAUD | TB_CAP_PROFILE);
    tb_put_u32(c, TB_ARENA_BYTES);
    tb_put_u32(c, tb_store_model_capacity());
    tb_put_u32(c, tb_store_params_capacity());
    tb_put_u32(c, tb_rt.has_model ? tb_rt.model.crc : 0);
    tb_put_u32(c, tb_rt.has_model ? tb_model_step() : 0);
    const char *texts[2] = {TB_FIRMWARE_VERSION, board->name};
    for (int i = 0; i < 2; i++) {
        uint8_t len = (uint8_t)strlen(texts[i]);
        tb_put_bytes(c, &len, 1);
        tb_put_bytes(c, texts[i], len);
    }
    return TB_OK;
}

static int cmd_stats(tb_call *c)
{
    const uint64_t counts[2] = {tb_rt.last_infer_count, tb_rt.last_step_count};
    for (int i = 0; i < 2; i++) {
        tb_put_u32(c, (uint32_t)counts[i]);
        tb_put_u32(c, (uint32_t)(counts[i] >> 32));
    }
    tb_put_u32(c, tb_arena_high_water());
    tb_put_u32(c, tb_port_stack_high_water());
    tb_put_u32(c, tb_rt.bad_frames);
    tb_put_u32(c, tb_rt.has_model ? tb_model_step() : 0);
    return TB_OK;
}

/* Entries of ops [first, first + count): as many as fit one response. */
static int cmd_profile(tb_call *c)
{
    const tb_profile *p = tb_profile_last();
    const uint16_t first = tb_get_u16(c->in);
    if (first > p->n_ops)
        return tb_fail(c, TB_ERR_BAD_ARGUMENT, "first op %u past the profile's %u ops", (unsigned)first,
                       (unsigned)p->n_ops);
    const uint32_t fit = (TB_MAX_PAYLOAD - TB_PROFILE_HEADER_BYTES) / 8u, left = (uint32_t)(p->n_ops - first);
    const uint16_t count = (uint16_t)(left < fit ? left : fit);
    tb_put_bytes(c, (const uint8_t[]){p->run, 0}, 2);
    tb_put_u16(c, p->n_ops);
    tb_put_u32(c, (uint32_t)p->total);
    tb_put_u32(c, (uint32_t)(p->total >> 32));
    tb_put_u32(c, p->outside);
    tb_put_u16(c, first);
    tb_put_u16(c, count);
    for (uint32_t i = first; i < (uint32_t)first + count; i++) {
        tb_put_u32(c, p->cost[i][TB_PASS_FORWARD]);
        tb_put_u32(c, p->cost[i][TB_PASS_BACKWARD]);
    }
    return TB_OK;
}

static int cmd_model_info(tb_call *c)
{
    int rc = tb_need_model(c);
    if (rc == TB_OK)
        tb_put_model_info(c);
    return rc;
}

/* INFER and TRAIN_STEP consume the committed input: the pass reuses its memory. */
static int take_input(tb_call *c)
{
    int rc = tb_need_model(c);
    if (rc != TB_OK)
        return rc;
    if (!tb_rt.input_ready) {
        const tb_model_info *m = tb_model_current();
        return tb_fail(c, TB_ERR_NO_INPUT, "no input: transfer a %ux%ux%u image into the input slot",
                       (unsigned)m->input_h, (unsigned)m->input_w, (unsigned)m->input_c);
    }
    tb_rt.input_ready = 0;
    tb_xfer_cancel(TB_SLOT_INPUT);
    return TB_OK;
}

static int exec_failed(tb_call *c, int rc)
{
    return tb_fail(c, rc, "%s", tb_exec_error());
}

static int cmd_infer(tb_call *c)
{
    int rc = take_input(c);
    if (rc != TB_OK)
        return rc;
    if (12u + tb_model_current()->num_classes > TB_MAX_PAYLOAD)
        return tb_fail(c, TB_ERR_TOO_LARGE, "%u classes do not fit one frame",
                       (unsigned)tb_model_current()->num_classes);
    tb_infer_result r;
    rc = tb_exec_infer(&r);
    tb_rt.last_infer_count = tb_profile_last()->total;
    if (rc != TB_OK)
        return exec_failed(c, rc);
    tb_put_u16(c, r.label);
    tb_put_u16(c, r.num_classes);
    tb_put_f32(c, r.scale);
    tb_put_u32(c, (uint32_t)r.zero_point);
    tb_put_bytes(c, r.logits, r.num_classes);
    return TB_OK;
}

static int cmd_train_step(tb_call *c)
{
    uint16_t label = tb_get_u16(c->in);
    float lr;
    uint32_t bits = tb_get_u32(c->in + 2);
    memcpy(&lr, &bits, 4);
    int rc = tb_need_model(c);
    if (rc != TB_OK)
        return rc;
    uint16_t classes = tb_model_current()->num_classes;
    if (label >= classes)
        return tb_fail(c, TB_ERR_BAD_ARGUMENT, "label %u out of range [0, %u)", (unsigned)label, (unsigned)classes);
    if (!isfinite(lr) || lr < 0)
        return tb_fail(c, TB_ERR_BAD_ARGUMENT, "learning rate must be finite and >= 0");
    rc = take_input(c);
    if (rc != TB_OK)
        return rc;
    tb_step_result r;
    rc = tb_exec_train_step(label, lr, &r);
    tb_rt.last_step_count = tb_profile_last()->total;
    if (rc != TB_OK)
        return exec_failed(c, rc);
    tb_put_f32(c, r.loss);
    tb_put_u16(c, r.label_pred);
    tb_put_u32(c, r.step);
    return TB_OK;
}

static int cmd_save(tb_call *c)
{
    int rc = tb_need_model(c);
    if (rc != TB_OK)
        return rc;
    uint32_t size = tb_model_current()->params_bytes;
    rc = tb_check_params_fit(c, size);
    if (rc != TB_OK)
        return rc;
    tb_xfer_cancel(TB_SLOT_PARAMS); /* its staging slot may be the one about to be erased */
    const uint8_t *params = tb_model_params();
    uint32_t generation;
    int slot = tb_store_params_begin();
    if (slot == TB_NO_SLOT || tb_store_params_program(slot, 0, params, size) != 0
        || tb_store_params_seal(slot, tb_rt.model.seq, tb_rt.model.crc, size, tb_crc32(0, params, size),
                                tb_model_step(), &generation) != 0)
        return tb_fail(c, TB_ERR_FLASH, "flash write of the checkpoint failed");
    tb_put_u32(c, generation);
    return TB_OK;
}

static int cmd_set_baud(tb_call *c)
{
    uint32_t baud = tb_get_u32(c->in);
    if (!tb_port_baud_supported(baud))
        return tb_fail(c, TB_ERR_BAD_ARGUMENT, "baud rate %u not supported", (unsigned)baud);
    return TB_OK;
}

static int cmd_reset(tb_call *c)
{
    (void)c;
    return TB_OK;
}

typedef struct {
    uint16_t command;
    uint16_t payload_len; /* exact, or VARIABLE: the handler checks */
    int (*handler)(tb_call *c);
} command_entry;

enum { VARIABLE = 0xFFFF };

static const command_entry commands[] = {
    {TB_CMD_HELLO, 0, cmd_hello},
    {TB_CMD_STATS, 0, cmd_stats},
    {TB_CMD_MODEL_INFO, 0, cmd_model_info},
    {TB_CMD_PROFILE, 2, cmd_profile},
    {TB_CMD_XFER_BEGIN, 9, tb_xfer_begin},
    {TB_CMD_XFER_DATA, VARIABLE, tb_xfer_data},
    {TB_CMD_XFER_COMMIT, 1, tb_xfer_commit},
    {TB_CMD_XFER_READ, 7, tb_xfer_read},
    {TB_CMD_XFER_STAT, 1, tb_xfer_stat},
    {TB_CMD_INFER, 0, cmd_infer},
    {TB_CMD_TRAIN_STEP, 6, cmd_train_step},
    {TB_CMD_SAVE, 0, cmd_save},
    {TB_CMD_RESET, 0, cmd_reset},
    {TB_CMD_SET_BAUD, 4, cmd_set_baud},
};

static int serve(uint16_t command, tb_call *c)
{
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
        const command_entry *e = &commands[i];
        if (e->command != command)
            continue;
        if (e->payload_len != VARIABLE && c->in_len != e->payload_len)
            return tb_fail(c, TB_ERR_BAD_LENGTH, "command 0x%02x takes %u payload bytes, got %u",
                           (unsigned)command, (unsigned)e->payload_len, (unsigned)c->in_len);
        return e->handler(c);
    }
    return tb_fail(c, TB_ERR_UNKNOWN_COMMAND, "unknown command 0x%04x", (unsigned)command);
}

void tb_dispatch(const uint8_t *body, uint32_t len)
{
    if (len < TB_MIN_BODY || len > TB_MAX_BODY) {
        tb_rt.bad_frames++;
        return;
    }
    uint32_t crc = tb_get_u32(body + len - TB_CRC_BYTES);
    if (tb_crc32(0, body, len - TB_CRC_BYTES) != crc) {
        tb_rt.bad_frames++;
        return;
    }
    if (body[1] != TB_KIND_REQUEST)
        return; /* the host sends only requests; anything else is noise */
    uint16_t seq = tb_get_u16(body + 2), command = tb_get_u16(body + 4);
    if (last_request.valid && last_request.seq == seq && last_request.command == command
        && last_request.crc == crc) {
        tb_cobs_write(tx, tx_len, tb_port_write);
        return;
    }
    tb_call c = {body + TB_HEADER_BYTES, len - TB_MIN_BODY, tx + TB_HEADER_BYTES, 0};
    int status = body[0] == TB_PROTOCOL_VERSION
                     ? serve(command, &c)
                     : tb_fail(&c, TB_ERR_VERSION, "protocol version %u not supported; this device speaks %u",
                               (unsigned)body[0], (unsigned)TB_PROTOCOL_VERSION);
    tx_len = seal_frame(tx, TB_KIND_RESPONSE, seq, command, (uint16_t)status, c.out_len);
    last_request.valid = 1;
    last_request.seq = seq;
    last_request.command = command;
    last_request.crc = crc;
    tb_cobs_write(tx, tx_len, tb_port_write);
    if (status == TB_OK && command == TB_CMD_RESET)
        tb_port_reset();
    if (status == TB_OK && command == TB_CMD_SET_BAUD)
        tb_port_set_baud(tb_get_u32(c.in));
}
