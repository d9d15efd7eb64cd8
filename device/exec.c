/* Graph executor: forward, loss, backward and QAS update of the loaded model, exactly the steps of
 * docs/blob-format.md ("Execution") that tinybridge.simulate repeats on the host. Every buffer and
 * parameter was checked by the loader; a kernel refusing its arguments is a bug (TB_ERR_EXEC). */
#include <math.h>
#include <string.h>
#include "model_internal.h"

/* The exponent of each tensor's gradient during a training step. */
static int32_t grad_exp[TB_BLOB_MAX_TENSORS];
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

/* Trained weights and biases live in the params region, frozen ones in the blob. */
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

static tb_conv_params conv_params(const tb_model *m, const tb_blob_op *op)
{
    const tb_conv_params p = {op->kernel_h, op->kernel_w, op->stride_h, op->stride_w,
                              op->pad_top, op->pad_left, -m->tensors[op->input0].zero_point,
                              m->tensors[op->output].zero_point, op->act_min, op->act_max};
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

static int forward_op(const tb_model *m, const tb_blob_op *op, int training)
{
    const tb_blob_tensor *in = &m->tensors[op->input0];
    const tb_blob_tensor *out = &m->tensors[op->output];
    const int8_t *x = value(m, op->input0);
    int8_t *y = value(m, op->output);
    const tb_conv_params p = conv_params(m, op);
    const int32_t *mult = op->mult != TB_BLOB_NO_DATA ? data_i32(m, op->mult) : NULL;
    const int32_t *shift = op->shift != TB_BLOB_NO_DATA ? data_i32(m, op->shift) : NULL;
    tb_status s;
    switch (op->kind) {
    case TB_OP_CONV2D:
        s = tb_conv2d_s8(&p, shape(in), x, shape(out), weights(m, op), bias(m, op), mult, shift, y,
                         buffer_or_null(m, op->scratch));
        break;
    case TB_OP_DEPTHWISE:
        s = tb_depthwise_conv2d_s8(&p, shape(in), x, shape(out), weights(m, op), bias(m, op), mult,
                                   shift, y);
        break;
    case TB_OP_POINTWISE:
        s = tb_pointwise_conv_s8(&p, shape(in), x, shape(out), weights(m, op), bias(m, op), mult,
                                 shift, y, buffer_or_null(m, op->scratch));
        break;
    case TB_OP_FULLY_CONNECTED:
        s = tb_fully_connected_s8((int32_t)tb_tensor_size(in), out->c, x, -in->zero_point,
                                  weights(m, op), bias(m, op), mult, shift, out->c,
                                  out->zero_point, op->act_min, op->act_max, y);
        break;
    case TB_OP_AVGPOOL:
        s = tb_avgpool_global_s8(shape(in), x, op->act_min, op->act_max, y);
        break;
    default: {
        const tb_add_params a = {-in->zero_point, mult[0], shift[0],
                                 -m->tensors[op->input1].zero_point, mult[1], shift[1],
                                 TB_ADD_LEFT_SHIFT, out->zero_point, mult[2], shift[2],
                                 op->act_min, op->act_max};
        s = tb_add_s8(&a, x, value(m, op->input1), (int32_t)tb_tensor_size(out), y);
    }
    }
    if (s != TB_KERNEL_OK) return fail("a forward kernel refused its arguments");
    if (training && out->mask != TB_BLOB_NONE)
        tb_clamp_mask_pack_s8(y, (int32_t)tb_tensor_size(out), op->act_min, op->act_max,
                              tb_model_buffer(m, out->mask));
    return TB_OK;
}

static int forward(const tb_model *m, int training)
{
    for (uint32_t i = 0; i < m->header->n_ops; i++) {
        const int rc = forward_op(m, &m->ops[i], training);
        if (rc) return rc;
    }
    return TB_OK;
}

/* ---- backward ---- */

/* Op i's gradient v (exponent e) for its input k: written if it is the first, else summed. */
static void contribute(const tb_model *m, uint32_t i, uint32_t k, const int8_t *v, int32_t e)
{
    const tb_blob_op *op = &m->ops[i];
    const uint16_t t = k == 0 ? op->input0 : op->input1;
    const int32_t n = (int32_t)tb_tensor_size(&m->tensors[t]);
    int8_t *g = grad(m, t);
    if (tb_model_grad_is_first(m, i, k)) {
        memcpy(g, v, (size_t)n);
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
    tb_grad_apply_mask_s32(acc, tb_model_buffer(m, m->tensors[t].mask), n);
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

/* Step 3 for weighted ops, with the weights before this step's update. */
static int weighted_input_grad(const tb_model *m, uint32_t i, int8_t *g, int32_t e)
{
    const tb_blob_op *op = &m->ops[i];
    const tb_blob_tensor *in = &m->tensors[op->input0];
    const tb_blob_tensor *out = &m->tensors[op->output];
    const tb_conv_params p = conv_params(m, op);
    const int32_t n_pos = out->h * out->w;
    int8_t *h = op->grad_scaled != TB_BLOB_NONE ? (int8_t *)tb_model_buffer(m, op->grad_scaled) : g;
    const int32_t h_exp = tb_grad_scale_channels_s8(g, e, n_pos, out->c, data_i32(m, op->grad_mult),
                                                    data_i32(m, op->grad_shift), h);
    int32_t *acc = buffer_i32(m, op->grad_acc);
    tb_status s;
    switch (op->kind) {
    case TB_OP_CONV2D:
        s = tb_conv2d_input_grad_s8(&p, shape(in), shape(out), h, weights(m, op), acc);
        break;
    case TB_OP_DEPTHWISE:
        s = tb_depthwise_input_grad_s8(&p, shape(in), shape(out), h, weights(m, op), acc);
        break;
    default: /* pointwise, fully connected (one position, the input flattened) */
        s = tb_pointwise_input_grad_s8(op->kind == TB_OP_POINTWISE ? n_pos : 1,
                                       op->kind == TB_OP_POINTWISE ? in->c
                                                                   : (int32_t)tb_tensor_size(in),
                                       out->c, h, weights(m, op), acc,
                                       buffer_or_null(m, op->grad_scratch));
    }
    if (s != TB_KERNEL_OK) return fail("an input-gradient kernel refused its arguments");
    contribute_acc(m, i, acc, h_exp);
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
    for (int32_t c0 = 0; c0 < out->c; c0 += op->wgrad_chunk) {
        const int32_t c1 = c0 + op->wgrad_chunk < out->c ? c0 + op->wgrad_chunk : out->c;
        const tb_status s =
            dense ? tb_pointwise_weight_grad_s8(n_pos, in_c, x, -in->zero_point, out->c, g, sel,
                                                n_sel, c0, c1, grad_w)
                  : tb_conv2d_weight_grad_s8(&p, shape(in), x, shape(out), g, sel, n_sel, c0, c1,
                                             grad_w);
        if (s != TB_KERNEL_OK ||
            tb_sgd_update_ohwi_s8(w, out->c, w_taps, in_c, sel, n_sel, c0, c1, grad_w, grad_scale,
                                  w_scale, lr, momentum,
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
    tb_grad_apply_mask_s8(g, tb_model_buffer(m, out->mask), (int32_t)tb_tensor_size(out));
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

int tb_exec_infer(tb_infer_result *result)
{
    const tb_model *m = tb_model_loaded();
    if (!m) return TB_ERR_NO_MODEL;
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

int tb_exec_train_step(uint16_t label, float lr, tb_step_result *result)
{
    const tb_model *m = tb_model_loaded();
    if (!m) return TB_ERR_NO_MODEL;
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
    memcpy(&rng, m->arena + 4, 4);
    for (uint32_t i = h->n_ops; i-- > m->backward_stop;) {
        if (!m->ops[i].train) continue;
        if ((rc = backward_op(m, i, lr, &rng))) break;
    }
    memcpy(m->arena + 4, &rng, 4);
    if (rc) return rc;
    result->step = tb_model_step() + 1;
    tb_model_set_step(result->step);
    return TB_OK;
}
