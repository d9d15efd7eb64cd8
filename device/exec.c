/* Graph executor: forward, loss, backward and QAS update of the loaded model, exactly the steps of
 * docs/blob-format.md ("Execution") that tinybridge.simulate repeats on the host. Every buffer and
 * parameter was checked by the loader; a kernel refusing its arguments is a bug (TB_ERR_EXEC).
 * Copies within the arena use memmove: a wrong plan may overlap them (wrong numbers, never
 * undefined behaviour). */
#include <math.h>
#include <string.h>
#include "model_internal.h"
#include "profile.h"

/* The exponent of each tensor's gradient during a training step. */
static int32_t grad_exp[TB_BLOB_MAX_TENSORS];
/* A streamed tensor's buffer holds its rows [ring_first, ring_first + ring_rows). */
static uint16_t ring_first[TB_BLOB_MAX_TENSORS], ring_rows[TB_BLOB_MAX_TENSORS];
static const char *exec_error = "";

static int fail(const char *why)
{
    exec_error = why;
    return TB_ERR_EXEC;
}

const char *tb_exec_error(void)
{
    return exec_error;
}

static void *buffer_or_null(const tb_model *m, uint16_t id)
{
    return id == TB_BLOB_NONE ? NULL : tb_model_buffer(m, id);
}

static int8_t *value(const tb_model *m, uint16_t t)
{
    return (int8_t *)tb_model_buffer(m, m->tensors[t].buffer);
}

static int8_t *grad(const tb_model *m, uint16_t t)
{
    return (int8_t *)tb_model_buffer(m, m->tensors[t].grad);
}

static const int32_t *data_i32(const tb_model *m, uint32_t ref)
{
    return (const int32_t *)(const void *)tb_model_data(m, ref);
}

static const float *data_f32(const tb_model *m, uint32_t ref)
{
    return (const float *)(const void *)tb_model_data(m, ref);
}

static int32_t *buffer_i32(const tb_model *m, uint16_t id)
{
    return (int32_t *)(void *)tb_model_buffer(m, id);
}

static float *buffer_f32_or_null(const tb_model *m, uint16_t id)
{
    return (float *)buffer_or_null(m, id);
}

/* Trained weights and biases live in the params region, frozen ones in the blob (sliced weights:
 * sliced_op and weighted_input_grad). */
static const int8_t *weights(const tb_model *m, const tb_blob_op *op)
{
    return op->weight_param != TB_BLOB_NONE ? (const int8_t *)tb_model_buffer(m, op->weight_param)
                                            : (const int8_t *)tb_model_data(m, op->weights);
}

static const int32_t *bias(const tb_model *m, const tb_blob_op *op)
{
    return op->bias_param != TB_BLOB_NONE ? buffer_i32(m, op->bias_param) : data_i32(m, op->bias);
}

static tb_shape shape(const tb_blob_tensor *t)
{
    const tb_shape s = {t->h, t->w, t->c};
    return s;
}

/* The forward kernels' tb_rounding: the model's (header flags). */
static int32_t rounding(const tb_model *m)
{
    return m->header->flags & TB_BLOB_FLAG_SINGLE_ROUNDING ? TB_ROUND_SINGLE : TB_ROUND_TFLITE;
}

static tb_conv_params conv_params(const tb_model *m, const tb_blob_op *op)
{
    const tb_conv_params p = {op->kernel_h, op->kernel_w, op->stride_h, op->stride_w,
                              op->pad_top, op->pad_left, -m->tensors[op->input0].zero_point,
                              m->tensors[op->output].zero_point, op->act_min, op->act_max,
                              rounding(m)};
    return p;
}

static uint16_t first_max(const int8_t *v, uint16_t n)
{
    uint16_t best = 0;
    for (uint16_t i = 1; i < n; i++)
        if (v[i] > v[best]) best = i;
    return best;
}

/* ---- forward ---- */

static int row_call(const tb_model *m, uint32_t i, int32_t r0, int32_t r1, int8_t *y);

/* Drops the rows of ring tensor t below row a (ring_first moves to a, or to the end of what it
 * holds when that is below a). */
static void ring_drop(const tb_model *m, uint16_t t, int32_t a)
{
    if (ring_first[t] >= a) return;
    const uint32_t rb = tb_row_bytes(&m->tensors[t]);
    uint8_t *buf = tb_model_buffer(m, m->tensors[t].buffer);
    const int32_t drop = a - ring_first[t] < ring_rows[t] ? a - ring_first[t] : ring_rows[t];
    memmove(buf, buf + (uint32_t)drop * rb, (uint32_t)(ring_rows[t] - drop) * rb);
    ring_rows[t] = (uint16_t)(ring_rows[t] - drop);
    ring_first[t] = (uint16_t)(ring_first[t] + drop);
}

/* Rows [first, first + n) of the streamed output of op pi in its buffer become [a, b): rows
 * below a are dropped (the rest moved down), missing rows computed one at a time. The profile
 * charges this to op pi. */
static int stream_fill(const tb_model *m, uint32_t pi, int32_t a, int32_t b)
{
    const uint16_t reader = tb_profile_switch(tb_profile_bucket(pi, TB_PASS_FORWARD));
    const uint16_t t = m->ops[pi].output;
    const uint32_t rb = tb_row_bytes(&m->tensors[t]);
    uint8_t *buf = tb_model_buffer(m, m->tensors[t].buffer);
    ring_drop(m, t, a);
    if (!ring_rows[t] && ring_first[t] < a) ring_first[t] = (uint16_t)a; /* nothing kept: start at a */
    int rc = TB_OK;
    while (!rc && ring_first[t] + ring_rows[t] < b) {
        const int32_t r = ring_first[t] + ring_rows[t];
        rc = row_call(m, pi, r, r + 1, (int8_t *)(buf + (uint32_t)ring_rows[t] * rb));
        if (!rc) ring_rows[t]++;
    }
    tb_profile_switch(reader);
    return rc;
}

/* The kernel of a conv2d or pointwise op (depthwise: whole weights only) on input x of shape xs
 * into y of shape ys, with weights w and the requantization of output channels from c0. */
static tb_status conv_call(const tb_model *m, const tb_blob_op *op, const tb_conv_params *p,
                           tb_shape xs, const int8_t *x, tb_shape ys, const int8_t *w, int32_t c0,
                           int8_t *y)
{
    const int32_t *b = bias(m, op) + c0;
    const int32_t *mult = data_i32(m, op->mult) + c0, *shift = data_i32(m, op->shift) + c0;
    if (op->kind == TB_OP_CONV2D)
        return tb_conv2d_s8(p, xs, x, ys, w, b, mult, shift, y, buffer_or_null(m, op->scratch));
    if (op->kind == TB_OP_DEPTHWISE) return tb_depthwise_conv2d_s8(p, xs, x, ys, w, b, mult, shift, y);
    return tb_pointwise_conv_s8(p, xs, x, ys, w, b, mult, shift, y, buffer_or_null(m, op->scratch));
}

/* Output rows [r0, r1) of conv2d / depthwise / pointwise op i into y, reading the input rows
 * their windows cover (from the stream when the input streams). */
static int row_call(const tb_model *m, uint32_t i, int32_t r0, int32_t r1, int8_t *y)
{
    const tb_blob_op *op = &m->ops[i];
    const tb_blob_tensor *in = &m->tensors[op->input0];
    const tb_blob_tensor *out = &m->tensors[op->output];
    int32_t a, b, unused;
    tb_model_window(m, op, r0, &a, &unused);
    tb_model_window(m, op, r1 - 1, &unused, &b);
    const int8_t *x = value(m, op->input0);
    if (op->input0 == m->header->input_tensor && in->stream_rows) {
        /* the streamed input: the input transfer has put the window's rows into its ring */
        if (a < ring_first[op->input0] || b > ring_first[op->input0] + ring_rows[op->input0])
            return fail("input rows missing from the input ring");
        x += (uint32_t)(a - ring_first[op->input0]) * tb_row_bytes(in);
    } else if (in->stream_rows) {
        const int rc = stream_fill(m, i - 1, a, b);
        if (rc) return rc;
    } else {
        x += (uint32_t)a * tb_row_bytes(in);
    }
    tb_conv_params p = conv_params(m, op);
    if (op->kind != TB_OP_POINTWISE) p.pad_top = (int32_t)(a - (r0 * op->stride_h - op->pad_top));
    const tb_shape xs = {b - a, in->w, in->c}, ys = {r1 - r0, out->w, out->c};
    return conv_call(m, op, &p, xs, x, ys, weights(m, op), 0, y) == TB_KERNEL_OK
               ? TB_OK : fail("a forward kernel refused its arguments");
}

/* Op i whole, or row by row, top-down, when its input streams or its output overlaps its (root)
 * input (the loader checked that no row overwrites input rows still to be read). */
static int row_op(const tb_model *m, uint32_t i, int8_t *y)
{
    const tb_blob_op *op = &m->ops[i];
    const tb_blob_tensor *out = &m->tensors[op->output];
    const uint32_t ob = tb_row_bytes(out);
    const uint16_t root = tb_model_root(m, i);
    const uint8_t *x = tb_model_buffer(m, m->tensors[root].buffer);
    const uint8_t *yb = (const uint8_t *)y;
    const int overlap = yb < x + tb_tensor_size(&m->tensors[root]) && x < yb + tb_tensor_size(out);
    if (root == op->input0 && !overlap) return row_call(m, i, 0, out->h, y);
    for (uint32_t k = i; k > 0 && m->tensors[m->ops[k].input0].stream_rows; k--) {
        ring_first[m->ops[k].input0] = 0;
        ring_rows[m->ops[k].input0] = 0;
    }
    for (int32_t r = 0; r < out->h; r++) {
        const int rc = row_call(m, i, r, r + 1, y + (uint32_t)r * ob);
        if (rc) return rc;
    }
    return TB_OK;
}

/* Sliced weights (only the trained input channels in the params region): wgrad_chunk output
 * channels at a time, their whole weights assembled in weight_work from the blob's and the
 * trained channels, their outputs computed after them there and moved into place. */
static int sliced_op(const tb_model *m, const tb_blob_op *op, int8_t *y)
{
    const tb_blob_tensor *in = &m->tensors[op->input0];
    const tb_blob_tensor *out = &m->tensors[op->output];
    const tb_conv_params p = conv_params(m, op);
    const int fc = op->kind == TB_OP_FULLY_CONNECTED;
    const uint32_t in_c = fc ? tb_tensor_size(in) : in->c;
    const uint32_t taps = fc ? 1u : (uint32_t)op->kernel_h * op->kernel_w;
    const uint32_t n_sel = op->n_channels, n_pos = (uint32_t)out->h * out->w;
    const int8_t *frozen = (const int8_t *)tb_model_data(m, op->weights);
    const int8_t *slice = (const int8_t *)tb_model_buffer(m, op->weight_param);
    const int32_t *sel = data_i32(m, op->channels);
    const int8_t *x = value(m, op->input0);
    int8_t *w = (int8_t *)tb_model_buffer(m, op->weight_work);
    for (int32_t c0 = 0; c0 < out->c; c0 += op->wgrad_chunk) {
        const int32_t k = c0 + op->wgrad_chunk < out->c ? op->wgrad_chunk : out->c - c0;
        const uint32_t rows = (uint32_t)k * taps;           /* of in_c weights each */
        int8_t *yk = w + rows * in_c;
        memmove(w, frozen + (uint32_t)c0 * taps * in_c, rows * in_c);
        for (uint32_t r = 0; r < rows; r++)
            for (uint32_t j = 0; j < n_sel; j++)
                w[r * in_c + (uint32_t)sel[j]] = slice[((uint32_t)c0 * taps + r) * n_sel + j];
        const tb_shape ys = {out->h, out->w, k};
        const tb_status s =
            fc ? tb_fully_connected_s8((int32_t)in_c, k, x, -in->zero_point, w, bias(m, op) + c0,
                                       data_i32(m, op->mult) + c0, data_i32(m, op->shift) + c0, k,
                                       out->zero_point, op->act_min, op->act_max, rounding(m), yk)
               : conv_call(m, op, &p, shape(in), x, ys, w, c0, yk);
        if (s != TB_KERNEL_OK) return fail("a forward kernel refused its arguments");
        for (uint32_t q = 0; q < n_pos; q++)
            memmove(y + q * (uint32_t)out->c + (uint32_t)c0, yk + q * (uint32_t)k, (uint32_t)k);
    }
    return TB_OK;
}

static int forward_op(const tb_model *m, uint32_t i, int training)
{
    const tb_blob_op *op = &m->ops[i];
    const tb_blob_tensor *in = &m->tensors[op->input0];
    const tb_blob_tensor *out = &m->tensors[op->output];
    if (out->stream_rows) return TB_OK; /* computed by rows inside the next op */
    const int8_t *x = value(m, op->input0);
    int8_t *y = value(m, op->output);
    const int32_t *mult = op->mult != TB_BLOB_NO_DATA ? data_i32(m, op->mult) : NULL;
    const int32_t *shift = op->shift != TB_BLOB_NO_DATA ? data_i32(m, op->shift) : NULL;
    int rc = TB_OK;
    tb_status s = TB_KERNEL_OK;
    if (op->weight_work != TB_BLOB_NONE) {
        rc = sliced_op(m, op, y);
    } else if (op->kind == TB_OP_CONV2D || op->kind == TB_OP_DEPTHWISE ||
               op->kind == TB_OP_POINTWISE) {
        rc = row_op(m, i, y);
    } else if (op->kind == TB_OP_FULLY_CONNECTED) {
        s = tb_fully_connected_s8((int32_t)tb_tensor_size(in), out->c, x, -in->zero_point,
                                  weights(m, op), bias(m, op), mult, shift, out->c,
                                  out->zero_point, op->act_min, op->act_max, rounding(m), y);
    } else if (op->kind == TB_OP_AVGPOOL) {
        s = tb_avgpool_global_s8(shape(in), x, op->act_min, op->act_max, rounding(m), y);
    } else {
        const tb_add_params a = {-in->zero_point, mult[0], shift[0],
                                 -m->tensors[op->input1].zero_point, mult[1], shift[1],
                                 TB_ADD_LEFT_SHIFT, out->zero_point, mult[2], shift[2],
                                 op->act_min, op->act_max};
        s = tb_add_s8(&a, x, value(m, op->input1), (int32_t)tb_tensor_size(out), y);
    }
    if (rc) return rc;
    if (s != TB_KERNEL_OK) return fail("a forward kernel refused its arguments");
    if (training && out->mask != TB_BLOB_NONE)
        tb_clamp_mask_pack_s8(y, (int32_t)tb_tensor_size(out), op->act_min, op->act_max,
                              tb_model_buffer(m, out->mask));
    return TB_OK;
}

/* ---- the streamed input (docs/blob-format.md, "Streamed input") ----
 *
 * Ops 0 .. chain_end (a chain of row ops: op 0 reads the input, each streams into the next, and
 * chain_end's output is materialized) run while the input transfer's data arrives, pushed by it:
 * after every completed input row each op of the chain computes every row whose window is there,
 * as long as its own ring has room (rows below its reader's next window dropped first), until
 * nothing moves; the input ring then drops the rows below op 0's next window. Each row is its
 * op's kernel on its window, as when the chain runs inside its reader's step: the same numbers. */
static uint32_t input_partial;     /* bytes of the row being received */
static uint16_t chain_done;        /* rows of chain_end's output computed */

void tb_exec_input_begin(void)
{
    const tb_model *m = tb_model_loaded();
    input_partial = 0;
    chain_done = 0;
    tb_profile_stage_clear();
    if (!m) return;
    const uint32_t end = tb_model_input_chain_end(m);
    ring_first[m->header->input_tensor] = ring_rows[m->header->input_tensor] = 0;
    for (uint32_t k = 0; k < end; k++)
        ring_first[m->ops[k].output] = ring_rows[m->ops[k].output] = 0;
}

/* The rows op k has computed (its output's next row). */
static int32_t chain_next(const tb_model *m, uint32_t k, uint32_t end)
{
    return k == end ? chain_done : ring_first[m->ops[k].output] + ring_rows[m->ops[k].output];
}

/* The first input row op k still needs: its next row's window start (its input's height when it
 * has computed every row). */
static int32_t chain_needs(const tb_model *m, uint32_t k, uint32_t end)
{
    const tb_blob_op *op = &m->ops[k];
    const int32_t r = chain_next(m, k, end);
    if (r >= m->tensors[op->output].h) return m->tensors[op->input0].h;
    int32_t a, b;
    tb_model_window(m, op, r, &a, &b);
    return a;
}

static int chain_advance(const tb_model *m)
{
    const uint32_t end = tb_model_input_chain_end(m);
    int moved = 1;
    while (moved) {
        moved = 0;
        for (uint32_t k = 0; k <= end; k++) {
            const tb_blob_op *op = &m->ops[k];
            const tb_blob_tensor *out = &m->tensors[op->output];
            for (;;) {
                const int32_t r = chain_next(m, k, end);
                if (r >= out->h) break;
                int32_t a, b;
                tb_model_window(m, op, r, &a, &b);
                if (b > ring_first[op->input0] + ring_rows[op->input0]) break;
                int8_t *y;
                if (k < end) {
                    ring_drop(m, op->output, chain_needs(m, k + 1, end));
                    if (ring_rows[op->output] >= out->stream_rows) break;
                    y = value(m, op->output) + (uint32_t)ring_rows[op->output] * tb_row_bytes(out);
                } else {
                    y = value(m, op->output) + (uint32_t)r * tb_row_bytes(out);
                }
                tb_profile_switch(tb_profile_bucket(k, TB_PASS_FORWARD));
                const int rc = row_call(m, k, r, r + 1, y);
                tb_profile_switch(TB_PROFILE_OUTSIDE);
                if (rc) return rc;
                if (k < end) ring_rows[op->output]++;
                else chain_done++;
                moved = 1;
            }
        }
    }
    ring_drop(m, m->header->input_tensor, chain_needs(m, 0, end));
    return TB_OK;
}

int tb_exec_input_data(const uint8_t *data, uint32_t len)
{
    const tb_model *m = tb_model_loaded();
    if (!m || !m->tensors[m->header->input_tensor].stream_rows) return fail("the input does not stream");
    const uint16_t t = m->header->input_tensor;
    const tb_blob_tensor *in = &m->tensors[t];
    const uint32_t rb = tb_row_bytes(in);
    uint8_t *ring = tb_model_buffer(m, in->buffer);
    int rc = TB_OK;
    tb_profile_stage_resume();
    while (!rc && len) {
        const int32_t row = ring_first[t] + ring_rows[t];   /* the row being received */
        if (row >= in->h || row - ring_first[t] >= in->stream_rows) {
            rc = fail(row >= in->h ? "input data past its last row" : "the input ring is full");
            break;
        }
        const uint32_t n = len < rb - input_partial ? len : rb - input_partial;
        memcpy(ring + (uint32_t)(row - ring_first[t]) * rb + input_partial, data, n);
        data += n;
        len -= n;
        input_partial += n;
        if (input_partial == rb) {
            input_partial = 0;
            ring_rows[t]++;
            rc = chain_advance(m);
        }
    }
    tb_profile_stage_pause();
    return rc;
}

static int forward(const tb_model *m, int training)
{
    int rc = TB_OK;
    uint32_t first = 0;
    if (m->tensors[m->header->input_tensor].stream_rows) {
        /* ops 0 .. chain_end ran while the input arrived */
        const uint32_t end = tb_model_input_chain_end(m);
        const tb_blob_op *op = &m->ops[end];
        const tb_blob_tensor *out = &m->tensors[op->output];
        if (chain_done != out->h) return fail("the streamed input's first layers are incomplete");
        chain_done = 0; /* consumed */
        if (training && out->mask != TB_BLOB_NONE)
            tb_clamp_mask_pack_s8(value(m, op->output), (int32_t)tb_tensor_size(out), op->act_min,
                                  op->act_max, tb_model_buffer(m, out->mask));
        first = end + 1;
    }
    for (uint32_t i = first; !rc && i < m->header->n_ops; i++) {
        tb_profile_switch(tb_profile_bucket(i, TB_PASS_FORWARD));
        rc = forward_op(m, i, training);
    }
    tb_profile_switch(TB_PROFILE_OUTSIDE);
    return rc;
}

/* ---- backward ---- */

/* Where a tensor's producer clamped its output (step 1 and the input gradients' masks): its clamp
 * mask, or, for a tensor without one (its values stay for a weight gradient, and the plan keeps
 * them until its producer's backward pass), the values against the producer's output range. */
typedef struct {
    const uint8_t *mask;
    const int8_t *y;
    int32_t act_min, act_max;
} clamp;

static clamp clamp_of(const tb_model *m, uint16_t t)
{
    const tb_blob_tensor *x = &m->tensors[t];
    const tb_blob_op *p = &m->ops[tb_model_producer(m, t)];
    const clamp c = {buffer_or_null(m, x->mask), value(m, t), p->act_min, p->act_max};
    return c;
}

static int passed(const clamp *c, uint32_t i)
{
    return c->mask ? (c->mask[i >> 3] >> (i & 7)) & 1u : c->y[i] > c->act_min && c->y[i] < c->act_max;
}

static void clamp_s8(const clamp *c, int8_t *g, int32_t n)
{
    if (c->mask) {
        tb_grad_apply_mask_s8(g, c->mask, n);
        return;
    }
    for (int32_t i = 0; i < n; i++)
        if (!passed(c, (uint32_t)i)) g[i] = 0;
}

static void clamp_s32(const clamp *c, int32_t *acc, int32_t n)
{
    if (c->mask) {
        tb_grad_apply_mask_s32(acc, c->mask, n);
        return;
    }
    for (int32_t i = 0; i < n; i++)
        if (!passed(c, (uint32_t)i)) acc[i] = 0;
}

/* Op i's gradient v (exponent e) for its input k: written if it is the first, else summed. */
static void contribute(const tb_model *m, uint32_t i, uint32_t k, const int8_t *v, int32_t e)
{
    const tb_blob_op *op = &m->ops[i];
    const uint16_t t = k == 0 ? op->input0 : op->input1;
    const int32_t n = (int32_t)tb_tensor_size(&m->tensors[t]);
    int8_t *g = grad(m, t);
    if (tb_model_grad_is_first(m, i, k)) {
        memmove(g, v, (size_t)n);
        grad_exp[t] = e;
    } else {
        grad_exp[t] = tb_grad_add_s8(g, grad_exp[t], v, e, n, g);
    }
}

/* The int32 input gradient acc (exponent acc_exp) of op i, requantized into place: into the
 * input's gradient when it is the first, else in acc's own memory and then summed. */
static void contribute_acc(const tb_model *m, uint32_t i, int32_t *acc, int32_t acc_exp)
{
    const uint16_t t = m->ops[i].input0;
    const int32_t n = (int32_t)tb_tensor_size(&m->tensors[t]);
    /* masked before requantizing, so the exponent fits the values that survive the input's clamp */
    const clamp c = clamp_of(m, t);
    clamp_s32(&c, acc, n);
    if (tb_model_grad_is_first(m, i, 0)) {
        grad_exp[t] = tb_grad_requantize_s32_s8(acc, n, acc_exp, grad(m, t));
    } else {
        int8_t *v = (int8_t *)(void *)acc;
        contribute(m, i, 0, v, tb_grad_requantize_s32_s8(acc, n, acc_exp, v));
    }
}

static void avgpool_backward(const tb_model *m, uint32_t i, const int8_t *g, int32_t e)
{
    const tb_blob_op *op = &m->ops[i];
    const tb_shape in = shape(&m->tensors[op->input0]);
    if (tb_model_grad_is_first(m, i, 0)) {
        grad_exp[op->input0] = tb_avgpool_global_input_grad_s8(in, g, e, grad(m, op->input0));
    } else {
        int8_t *v = (int8_t *)tb_model_buffer(m, op->grad_acc);
        contribute(m, i, 0, v, tb_avgpool_global_input_grad_s8(in, g, e, v));
    }
}

/* The int32 input gradient of op i from h for in_c input channels (depthwise: h has them too),
 * weights w laid out for in_c input channels (fully connected: in_c input features). Pointwise:
 * h and acc hold n_pos positions (a chunk of the op's); the other kinds take them all. */
static tb_status input_grad(const tb_model *m, const tb_blob_op *op, int32_t in_c, int32_t n_pos,
                            const int8_t *h, const int8_t *w, int32_t *acc)
{
    const tb_blob_tensor *in = &m->tensors[op->input0];
    const tb_blob_tensor *out = &m->tensors[op->output];
    const tb_conv_params p = conv_params(m, op);
    const tb_shape xs = {in->h, in->w, in_c};
    switch (op->kind) {
    case TB_OP_CONV2D:
        return tb_conv2d_input_grad_s8(&p, xs, shape(out), h, w, acc);
    case TB_OP_DEPTHWISE: {
        const tb_shape ys = {out->h, out->w, in_c};
        return tb_depthwise_input_grad_s8(&p, xs, ys, h, w, acc);
    }
    default: /* pointwise; fully connected: one position */
        return tb_pointwise_input_grad_s8(n_pos, in_c, out->c, h, w, acc,
                                          buffer_or_null(m, op->grad_scratch));
    }
}

/* The output gradient g (exponent e) of op i times the weight scales (step 3), h, for the input
 * gradient: whole, into grad_scaled (in place when the weights do not train, so g is not needed
 * after), or, when the output tensor's scale_positions is set, rows [p0, p1) of it at a time. Then
 * grad_scaled holds the largest |g| of each channel (scaled_by_positions) and, after it, the rows
 * and that largest row, scaled together by tb_grad_scale_channels_s8: its per-channel maxima,
 * exponent and values are the whole tensor's. */
typedef struct {
    const tb_blob_op *op;
    const int8_t *g;
    int32_t e;
    int8_t *h;       /* whole; NULL when scaled by positions */
    int32_t h_exp;
    uint32_t n_pos, positions; /* the op's output positions, positions per chunk */
} scaled_grad;

static scaled_grad scale_output_grad(const tb_model *m, const tb_blob_op *op, int8_t *g, int32_t e)
{
    const tb_blob_tensor *out = &m->tensors[op->output];
    scaled_grad s = {op, g, e, NULL, e, (uint32_t)out->h * out->w, out->scale_positions};
    if (!s.positions) {
        s.positions = s.n_pos;
        s.h = op->grad_scaled != TB_BLOB_NONE ? (int8_t *)tb_model_buffer(m, op->grad_scaled) : g;
        s.h_exp = tb_grad_scale_channels_s8(g, e, (int32_t)s.n_pos, out->c, data_i32(m, op->grad_mult),
                                            data_i32(m, op->grad_shift), s.h);
        return s;
    }
    int8_t *largest = (int8_t *)tb_model_buffer(m, op->grad_scaled);
    memset(largest, 0, out->c);
    for (uint32_t q = 0; q < s.n_pos * out->c; q += out->c)
        for (uint32_t k = 0; k < out->c; k++) {
            const int8_t a = g[q + k] < 0 ? (int8_t)-g[q + k] : g[q + k]; /* gradients: |g| <= 127 */
            if (a > largest[k]) largest[k] = a;
        }
    return s;
}

/* Rows [p0, p1) of h (s->positions at most); sets s->h_exp. */
static const int8_t *scaled_rows(const tb_model *m, scaled_grad *s, uint32_t p0, uint32_t p1)
{
    const uint32_t c = m->tensors[s->op->output].c;
    if (s->h) return s->h + p0 * c;
    int8_t *largest = (int8_t *)tb_model_buffer(m, s->op->grad_scaled), *rows = largest + c;
    memmove(rows, s->g + p0 * c, (p1 - p0) * c);
    memmove(rows + (p1 - p0) * c, largest, c);
    s->h_exp = tb_grad_scale_channels_s8(rows, s->e, (int32_t)(p1 - p0 + 1), (int32_t)c,
                                         data_i32(m, s->op->grad_mult),
                                         data_i32(m, s->op->grad_shift), rows);
    return rows;
}

/* A chunked input gradient (grad_chunk input channels at a time, docs/blob-format.md): every
 * chunk's sums are computed twice, first for the largest masked magnitude of the whole tensor,
 * then requantized with it (one more element), so that the exponent and every value are those of
 * the whole tensor's. grad_acc holds a chunk's sums, its weights, and (depthwise) its h. */
static int chunked_input_grad(const tb_model *m, uint32_t i, scaled_grad *s)
{
    const tb_blob_op *op = &m->ops[i];
    const tb_blob_tensor *in = &m->tensors[op->input0];
    const tb_blob_tensor *out = &m->tensors[op->output];
    const uint32_t c = in->c, n_in = (uint32_t)in->h * in->w, n_out = (uint32_t)out->h * out->w;
    const uint32_t w_rows = tb_model_weight_bytes(m, op) / c; /* weight bytes per input channel */
    const clamp in_clamp = clamp_of(m, op->input0);
    const int8_t *w = weights(m, op);
    int32_t *acc = buffer_i32(m, op->grad_acc);
    int8_t *wsub = (int8_t *)(acc + n_in * op->grad_chunk + 1);
    int8_t *hsub = wsub + ((w_rows * op->grad_chunk + 3u) & ~3u);
    int8_t *gx = grad(m, op->input0);
    int32_t largest = 0;
    for (int pass = 0; pass < 2; pass++) {
        for (uint32_t c0 = 0; c0 < c; c0 += op->grad_chunk) {
            const uint32_t k = c0 + op->grad_chunk < c ? op->grad_chunk : c - c0;
            for (uint32_t r = 0; r < w_rows; r++) memmove(wsub + r * k, w + r * c + c0, k);
            if (op->kind == TB_OP_DEPTHWISE)
                for (uint32_t q = 0; q < n_out; q++) memmove(hsub + q * k, s->h + q * c + c0, k);
            /* positions in chunks only for pointwise ops (s->positions < s->n_pos) */
            for (uint32_t p0 = 0; p0 < s->n_pos; p0 += s->positions) {
                const uint32_t p1 = p0 + s->positions < s->n_pos ? p0 + s->positions : s->n_pos;
                const int8_t *h = op->kind == TB_OP_DEPTHWISE ? hsub : scaled_rows(m, s, p0, p1);
                if (input_grad(m, op, (int32_t)k, (int32_t)(p1 - p0), h, wsub, acc + p0 * k) !=
                    TB_KERNEL_OK)
                    return fail("an input-gradient kernel refused its arguments");
            }
            for (uint32_t q = 0; q < n_in; q++) {
                for (uint32_t j = 0; j < k; j++) {
                    const uint32_t bit = q * c + c0 + j;
                    int32_t *v = &acc[q * k + j];
                    if (!passed(&in_clamp, bit)) *v = 0;
                    if (pass == 0 && (*v > largest || -*v > largest)) largest = *v < 0 ? -*v : *v;
                }
            }
            if (pass == 1) {
                acc[n_in * k] = largest;
                grad_exp[op->input0] =
                    tb_grad_requantize_s32_s8(acc, (int32_t)(n_in * k + 1), s->h_exp, (int8_t *)acc);
                for (uint32_t q = 0; q < n_in; q++)
                    memmove(gx + q * c + c0, (const int8_t *)acc + q * k, k);
            }
        }
    }
    return TB_OK;
}

/* Step 3 for weighted ops, with the weights before this step's update. Sliced weights: the sums
 * of the blob's weights, then those of the trained input channels computed from the params
 * region's slice (grad_sel) in their place. */
static int weighted_input_grad(const tb_model *m, uint32_t i, int8_t *g, int32_t e)
{
    const tb_blob_op *op = &m->ops[i];
    const tb_blob_tensor *in = &m->tensors[op->input0];
    scaled_grad s = scale_output_grad(m, op, g, e);
    if (op->grad_chunk) return chunked_input_grad(m, i, &s);
    const int fc = op->kind == TB_OP_FULLY_CONNECTED;
    const uint32_t in_c = fc ? tb_tensor_size(in) : in->c;
    const int sliced = op->weight_work != TB_BLOB_NONE;
    int32_t *acc = buffer_i32(m, op->grad_acc);
    const int8_t *w = sliced ? (const int8_t *)tb_model_data(m, op->weights) : weights(m, op);
    int32_t *trained = sliced ? buffer_i32(m, op->grad_sel) : NULL;
    const int32_t *sel = sliced ? data_i32(m, op->channels) : NULL;
    const int8_t *slice = sliced ? (const int8_t *)tb_model_buffer(m, op->weight_param) : NULL;
    /* positions in chunks only for pointwise ops, whose input positions are its output positions */
    for (uint32_t p0 = 0; p0 < s.n_pos; p0 += s.positions) {
        const uint32_t p1 = p0 + s.positions < s.n_pos ? p0 + s.positions : s.n_pos;
        const int8_t *h = scaled_rows(m, &s, p0, p1);
        int32_t *acc_rows = acc + p0 * in_c;
        if (input_grad(m, op, (int32_t)in_c, (int32_t)(p1 - p0), h, w, acc_rows) != TB_KERNEL_OK ||
            (sliced && input_grad(m, op, op->n_channels, (int32_t)(p1 - p0), h, slice, trained) !=
                           TB_KERNEL_OK))
            return fail("an input-gradient kernel refused its arguments");
        /* input positions of these sums: pointwise the chunk's; conv2d all (one chunk) */
        const uint32_t n_in = op->kind == TB_OP_POINTWISE ? p1 - p0 : fc ? 1u : (uint32_t)in->h * in->w;
        for (uint32_t q = 0; sliced && q < n_in; q++)
            for (uint32_t j = 0; j < op->n_channels; j++)
                acc_rows[q * in_c + (uint32_t)sel[j]] = trained[q * op->n_channels + j];
    }
    contribute_acc(m, i, acc, s.h_exp);
    return TB_OK;
}

/* Step 4: weight gradient chunk by chunk, each applied at once. */
static int weight_update(const tb_model *m, const tb_blob_op *op, const int8_t *g, int32_t e,
                         float lr, uint32_t *rng)
{
    const tb_blob_tensor *in = &m->tensors[op->input0];
    const tb_blob_tensor *out = &m->tensors[op->output];
    const tb_conv_params p = conv_params(m, op);
    const int8_t *x = value(m, op->input0);
    int8_t *w = (int8_t *)tb_model_buffer(m, op->weight_param);
    int32_t *grad_w = buffer_i32(m, op->weight_grad);
    float *velocity = buffer_f32_or_null(m, op->weight_velocity);
    const int32_t *sel = data_i32(m, op->channels);
    const int32_t n_sel = op->n_channels;
    const float grad_scale = ldexpf(in->scale, e);
    const float *w_scale = data_f32(m, op->weight_scales);
    const float momentum = m->header->momentum;
    const int32_t taps = (int32_t)op->kernel_h * op->kernel_w;
    if (op->kind == TB_OP_DEPTHWISE) {
        if (tb_depthwise_weight_grad_s8(&p, shape(in), x, shape(out), g, sel, n_sel, grad_w) !=
                TB_KERNEL_OK ||
            tb_sgd_update_depthwise_s8(w, taps, in->c, sel, n_sel, grad_w, grad_scale, w_scale, lr,
                                       momentum, velocity, rng) != TB_KERNEL_OK)
            return fail("a weight-update kernel refused its arguments");
        return TB_OK;
    }
    const int dense = op->kind != TB_OP_CONV2D;
    const int32_t n_pos = op->kind == TB_OP_POINTWISE ? out->h * out->w : 1;
    const int32_t in_c = op->kind == TB_OP_FULLY_CONNECTED ? (int32_t)tb_tensor_size(in) : in->c;
    const int32_t w_taps = dense ? 1 : taps;
    /* sliced weights: the slice is a weight tensor of n_sel input channels, all of them trained */
    const int sliced = op->weight_work != TB_BLOB_NONE;
    int32_t *identity = sliced ? buffer_i32(m, op->grad_sel) : NULL;
    for (int32_t j = 0; sliced && j < n_sel; j++) identity[j] = j;
    const int32_t *update_sel = sliced ? identity : sel;
    const int32_t update_in = sliced ? n_sel : in_c;
    for (int32_t c0 = 0; c0 < out->c; c0 += op->wgrad_chunk) {
        const int32_t c1 = c0 + op->wgrad_chunk < out->c ? c0 + op->wgrad_chunk : out->c;
        const tb_status s =
            dense ? tb_pointwise_weight_grad_s8(n_pos, in_c, x, -in->zero_point, out->c, g, sel,
                                                n_sel, c0, c1, grad_w)
                  : tb_conv2d_weight_grad_s8(&p, shape(in), x, shape(out), g, sel, n_sel, c0, c1,
                                             grad_w);
        if (s != TB_KERNEL_OK ||
            tb_sgd_update_ohwi_s8(w, out->c, w_taps, update_in, update_sel, n_sel, c0, c1, grad_w,
                                  grad_scale, w_scale, lr, momentum,
                                  velocity ? velocity + c0 * w_taps * n_sel : NULL,
                                  rng) != TB_KERNEL_OK)
            return fail("a weight-update kernel refused its arguments");
    }
    return TB_OK;
}

static int backward_op(const tb_model *m, uint32_t i, float lr, uint32_t *rng)
{
    const tb_blob_op *op = &m->ops[i];
    const tb_blob_tensor *out = &m->tensors[op->output];
    int8_t *g = grad(m, op->output);
    const int32_t e = grad_exp[op->output];
    const clamp c = clamp_of(m, op->output);
    clamp_s8(&c, g, (int32_t)tb_tensor_size(out));
    if (op->kind == TB_OP_ADD) {
        for (uint32_t k = 0; k < 2; k++)
            if (op->train & (TB_GRAD_INPUT0 << k)) contribute(m, i, k, g, e);
        return TB_OK;
    }
    if (op->kind == TB_OP_AVGPOOL) {
        avgpool_backward(m, i, g, e);
        return TB_OK;
    }
    if (op->train & TB_TRAIN_BIAS) {
        int32_t *grad_b = buffer_i32(m, op->bias_grad);
        tb_bias_grad_s8(g, out->h * out->w, out->c, grad_b);
        if (tb_sgd_update_bias_s32(buffer_i32(m, op->bias_param), out->c, grad_b, ldexpf(1.0f, e),
                                   data_f32(m, op->bias_scales), lr, m->header->momentum,
                                   buffer_f32_or_null(m, op->bias_velocity), rng) != TB_KERNEL_OK)
            return fail("the bias update refused its arguments");
    }
    if (op->train & TB_GRAD_INPUT0) {
        const int rc = weighted_input_grad(m, i, g, e);
        if (rc) return rc;
    }
    if (op->train & TB_TRAIN_WEIGHTS) return weight_update(m, op, g, e, lr, rng);
    return TB_OK;
}

/* ---- entry points ---- */

static int infer(const tb_model *m, tb_infer_result *result)
{
    const int rc = forward(m, 0);
    if (rc) return rc;
    const tb_blob_tensor *out = &m->tensors[m->header->output_tensor];
    result->logits = value(m, m->header->output_tensor);
    result->num_classes = out->c;
    result->label = first_max(result->logits, out->c);
    result->scale = out->scale;
    result->zero_point = out->zero_point;
    return TB_OK;
}

static int train_step(const tb_model *m, uint16_t label, float lr, tb_step_result *result)
{
    const tb_blob_header *h = m->header;
    const uint16_t logits = h->output_tensor;
    const tb_blob_tensor *out = &m->tensors[logits];
    if (label >= out->c) {
        exec_error = "label out of range";
        return TB_ERR_BAD_ARGUMENT;
    }
    if (lr != lr || lr - lr != 0.0f) {
        exec_error = "learning rate not finite";
        return TB_ERR_BAD_ARGUMENT;
    }
    if (lr <= 0.0f) lr = h->lr;
    if (m->backward_stop == h->n_ops) return fail("the model trains no parameter");
    int rc = forward(m, 1);
    if (rc) return rc;
    const int8_t *y = value(m, logits);
    const float loss = tb_softmax_cross_entropy_s8(y, out->c, out->scale, out->zero_point, label,
                                                   tb_model_buffer(m, out->mask), grad(m, logits),
                                                   &grad_exp[logits]);
    if (loss < 0.0f) return fail("the loss refused its arguments");
    result->loss = loss;
    result->label_pred = first_max(y, out->c);
    uint32_t rng;
    memmove(&rng, m->arena + 4, 4);
    for (uint32_t i = h->n_ops; i-- > m->backward_stop;) {
        if (!m->ops[i].train) continue;
        tb_profile_switch(tb_profile_bucket(i, TB_PASS_BACKWARD));
        if ((rc = backward_op(m, i, lr, &rng))) break;
    }
    tb_profile_switch(TB_PROFILE_OUTSIDE);
    memmove(m->arena + 4, &rng, 4);
    if (rc) return rc;
    result->step = tb_model_step() + 1;
    tb_model_set_step(result->step);
    return TB_OK;
}

int tb_exec_infer(tb_infer_result *result)
{
    const tb_model *m = tb_model_loaded();
    if (!m) return TB_ERR_NO_MODEL;
    tb_profile_begin(TB_RUN_INFER, m->header->n_ops);
    const int rc = infer(m, result);
    tb_profile_end();
    return rc;
}

int tb_exec_train_step(uint16_t label, float lr, tb_step_result *result)
{
    const tb_model *m = tb_model_loaded();
    if (!m) return TB_ERR_NO_MODEL;
    tb_profile_begin(TB_RUN_TRAIN_STEP, m->header->n_ops);
    const int rc = train_step(m, label, lr, result);
    tb_profile_end();
    return rc;
}
