/* Model loader: validates a blob completely (docs/blob-format.md) before it replaces the current
 * model, so that the executor can run it without checks that could fail. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include "frame.h"
#include "model_internal.h"
#include "profile.h"

static tb_model current;
static int has_model;

static const char *const kind_names[] = {"?", "conv2d", "depthwise", "pointwise",
                                         "fully_connected", "avgpool", "add"};

/* Validation state: the candidate model, the record being checked (for messages) and where to
 * write the reason of a rejection. */
typedef struct {
    tb_model m;
    char owner[32];
    char *err;
    uint32_t err_len;
} check;

static int reject(check *c, const char *fmt, ...)
{
    if (c->err && c->err_len) {
        int n = snprintf(c->err, c->err_len, "%s", c->owner);
        if (n < 0 || (uint32_t)n >= c->err_len) n = 0;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->err + n, c->err_len - (uint32_t)n, fmt, ap);
        va_end(ap);
    }
    return TB_ERR_BAD_BLOB;
}

static int finite(float x)
{
    return x == x && x - x == 0.0f;
}

static int is_weighted(uint8_t kind)
{
    return kind == TB_OP_CONV2D || kind == TB_OP_DEPTHWISE || kind == TB_OP_POINTWISE ||
           kind == TB_OP_FULLY_CONNECTED;
}

static uint64_t tensor_size(const tb_blob_tensor *t)
{
    return (uint64_t)t->h * t->w * t->c;
}

static uint16_t op_input(const tb_blob_op *op, uint32_t k)
{
    return k == 0 ? op->input0 : op->input1;
}

static uint32_t op_taps(const tb_blob_op *op)
{
    return op->kind == TB_OP_CONV2D || op->kind == TB_OP_DEPTHWISE
               ? (uint32_t)op->kernel_h * op->kernel_w : 1u;
}

/* Bytes of a weighted op's weight tensor (kernels.md layouts). */
static uint64_t weight_bytes(const tb_model *m, const tb_blob_op *op)
{
    const tb_blob_tensor *in = &m->tensors[op->input0];
    const tb_blob_tensor *out = &m->tensors[op->output];
    switch (op->kind) {
    case TB_OP_CONV2D: return (uint64_t)out->c * op_taps(op) * in->c;
    case TB_OP_DEPTHWISE: return (uint64_t)op_taps(op) * in->c;
    case TB_OP_POINTWISE: return (uint64_t)out->c * in->c;
    case TB_OP_FULLY_CONNECTED: return (uint64_t)out->c * tensor_size(in);
    default: return 0;
    }
}

uint32_t tb_model_weight_bytes(const tb_model *m, const tb_blob_op *op)
{
    return (uint32_t)weight_bytes(m, op);
}

static int is_row_kind(uint8_t kind)
{
    return kind == TB_OP_CONV2D || kind == TB_OP_DEPTHWISE || kind == TB_OP_POINTWISE;
}

void tb_model_window(const tb_model *m, const tb_blob_op *op, int32_t r, int32_t *a, int32_t *b)
{
    if (op->kind == TB_OP_POINTWISE) {
        *a = r;
        *b = r + 1;
        return;
    }
    const int32_t h = m->tensors[op->input0].h;
    const int32_t top = r * op->stride_h - op->pad_top;
    *a = top < 0 ? 0 : top;
    *b = top + op->kernel_h < h ? top + op->kernel_h : h;
}

/* Does op i's input0 stream from the op before it (not the graph input, which streams from the
 * input transfer). */
static int streams_from_before(const tb_model *m, uint32_t i)
{
    return i > 0 && m->tensors[m->ops[i].input0].stream_rows;
}

uint16_t tb_model_root(const tb_model *m, uint32_t op_index)
{
    while (streams_from_before(m, op_index)) op_index--;
    return m->ops[op_index].input0;
}

uint32_t tb_model_input_chain_end(const tb_model *m)
{
    if (!m->tensors[m->header->input_tensor].stream_rows) return 0;
    uint32_t j = 0;
    while (m->tensors[m->ops[j].output].stream_rows) j++;
    return j;
}

/* The first row of tb_model_root(op_index) that output row r of the op reads. */
static int32_t root_row(const tb_model *m, uint32_t op_index, int32_t r)
{
    int32_t a, b;
    tb_model_window(m, &m->ops[op_index], r, &a, &b);
    while (streams_from_before(m, op_index))
        tb_model_window(m, &m->ops[--op_index], a, &a, &b);
    return a;
}

int32_t tb_model_producer(const tb_model *m, uint32_t t)
{
    for (uint32_t i = 0; i < m->header->n_ops; i++)
        if (m->ops[i].output == t) return (int32_t)i;
    return -1;
}

/* Does an op that trains its weights read tensor t (so that its values stay for the backward
 * pass). */
static int read_by_weight_training(const tb_model *m, uint32_t t)
{
    for (uint32_t i = 0; i < m->header->n_ops; i++)
        if ((m->ops[i].train & TB_TRAIN_WEIGHTS) && m->ops[i].input0 == t) return 1;
    return 0;
}

static int has_gradient(const tb_model *m, uint32_t t)
{
    const int32_t p = tb_model_producer(m, t);
    return p >= 0 && m->ops[p].train != 0;
}

int tb_model_grad_is_first(const tb_model *m, uint32_t op_index, uint32_t k)
{
    const tb_blob_op *op = &m->ops[op_index];
    const uint16_t t = op_input(op, k);
    if (k == 1 && (op->train & TB_GRAD_INPUT0) && op->input0 == t) return 0;
    for (uint32_t j = op_index + 1; j < m->header->n_ops; j++) {
        const tb_blob_op *later = &m->ops[j];
        if (((later->train & TB_GRAD_INPUT0) && later->input0 == t) ||
            ((later->train & TB_GRAD_INPUT1) && later->input1 == t))
            return 0;
    }
    return 1;
}

/* ---- buffers and data items ---- */

static int work_buffer(check *c, const char *field, uint16_t id, uint64_t bytes, int required)
{
    const tb_model *m = &c->m;
    if (id == TB_BLOB_NONE) return required ? reject(c, "%s buffer missing", field) : 0;
    if (!required) return reject(c, "unexpected %s buffer", field);
    if (id >= m->header->n_buffers) return reject(c, "%s buffer %u out of range", field, id);
    const tb_blob_buffer *b = &m->buffers[id];
    if (b->offset < m->header->params_bytes)
        return reject(c, "%s buffer %u overlaps the params region", field, id);
    if (b->size < bytes)
        return reject(c, "%s buffer %u has %lu bytes, needs %lu", field, id,
                      (unsigned long)b->size, (unsigned long)bytes);
    return 0;
}

/* Params buffers come in increasing, non-overlapping order; *next is the first free offset. */
static int param_buffer(check *c, const char *field, uint16_t id, uint64_t bytes, int required,
                        uint32_t *next)
{
    const uint32_t region = c->m.header->params_bytes;
    if (id == TB_BLOB_NONE) return required ? reject(c, "%s missing", field) : 0;
    if (!required) return reject(c, "unexpected %s", field);
    if (id >= c->m.header->n_buffers) return reject(c, "%s buffer %u out of range", field, id);
    const tb_blob_buffer *b = &c->m.buffers[id];
    if (b->size < bytes)
        return reject(c, "%s has %lu bytes, needs %lu", field, (unsigned long)b->size,
                      (unsigned long)bytes);
    if (b->offset < *next || b->offset > region || b->size > region - b->offset)
        return reject(c, "%s not in order inside the params region", field);
    *next = b->offset + b->size;
    return 0;
}

static int data_item(check *c, const char *field, uint32_t ref, uint64_t bytes, int required)
{
    const uint32_t size = c->m.header->data_bytes;
    if (ref == TB_BLOB_NO_DATA) return required ? reject(c, "%s missing", field) : 0;
    if (!required) return reject(c, "unexpected %s", field);
    if (ref % 4 || ref > size || bytes > size - ref)
        return reject(c, "%s at %lu (%lu bytes) outside the data section", field,
                      (unsigned long)ref, (unsigned long)bytes);
    return 0;
}

static const int32_t *data_i32(const tb_model *m, uint32_t ref)
{
    return (const int32_t *)(const void *)tb_model_data(m, ref);
}

static const float *data_f32(const tb_model *m, uint32_t ref)
{
    return (const float *)(const void *)tb_model_data(m, ref);
}

/* TFLite multiplier form: mult 0 or in [2^30, 2^31), shift in [-31, 30]. */
static int multipliers(check *c, const char *field, uint32_t mult_ref, uint32_t shift_ref,
                       uint32_t n)
{
    const int32_t *mult = data_i32(&c->m, mult_ref);
    const int32_t *shift = data_i32(&c->m, shift_ref);
    for (uint32_t k = 0; k < n; k++)
        if ((mult[k] != 0 && mult[k] < (1 << 30)) || shift[k] < -31 || shift[k] > 30)
            return reject(c, "%s %u out of range", field, (unsigned)k);
    return 0;
}

static int scales(check *c, const char *field, uint32_t ref, uint32_t n, int positive)
{
    const float *s = data_f32(&c->m, ref);
    for (uint32_t k = 0; k < n; k++)
        if (!finite(s[k]) || s[k] < 0.0f || (positive && s[k] == 0.0f))
            return reject(c, "%s %u not finite and %s", field, (unsigned)k, positive ? "> 0" : ">= 0");
    return 0;
}

/* ---- header and sections ---- */

static int check_header(check *c, const uint8_t *blob, uint32_t size)
{
    tb_model *m = &c->m;
    snprintf(c->owner, sizeof(c->owner), "blob: ");
    if ((uintptr_t)blob % 4) return reject(c, "not 4-byte aligned in memory");
    if (size < sizeof(tb_blob_header))
        return reject(c, "%lu bytes, shorter than its header", (unsigned long)size);
    const tb_blob_header *h = (const tb_blob_header *)(const void *)blob;
    m->header = h;
    if (h->magic != TB_BLOB_MAGIC) return reject(c, "not a model blob (bad magic)");
    if (h->version != TB_BLOB_VERSION)
        return reject(c, "version %u, this firmware reads %u", h->version, TB_BLOB_VERSION);
    if (h->header_bytes != sizeof(tb_blob_header))
        return reject(c, "header size %u, expected %u", h->header_bytes, (unsigned)sizeof(tb_blob_header));
    if (h->blob_bytes != size)
        return reject(c, "says %lu bytes, got %lu", (unsigned long)h->blob_bytes, (unsigned long)size);
    if (tb_crc32(0, blob + 16, size - 16) != h->crc32) return reject(c, "CRC mismatch");
    if (h->n_tensors < 2 || h->n_tensors > TB_BLOB_MAX_TENSORS)
        return reject(c, "%u tensors, must be 2..%u", h->n_tensors, TB_BLOB_MAX_TENSORS);
    if (h->n_ops < 1 || h->n_ops >= h->n_tensors)
        return reject(c, "%u ops for %u tensors", h->n_ops, h->n_tensors);
    if (h->n_buffers < 1) return reject(c, "no buffers");
    if (h->flags & ~TB_BLOB_FLAG_SINGLE_ROUNDING) return reject(c, "unknown header flags 0x%x", h->flags);
    if (h->reserved[0] || h->reserved[1]) return reject(c, "reserved header field set");
    if (h->data_bytes % 4) return reject(c, "data section size not a multiple of 4");
    const uint64_t sections = (uint64_t)sizeof(tb_blob_header) +
                              (uint64_t)h->n_tensors * sizeof(tb_blob_tensor) +
                              (uint64_t)h->n_ops * sizeof(tb_blob_op) +
                              (uint64_t)h->n_buffers * sizeof(tb_blob_buffer) + h->data_bytes;
    if (sections != size) return reject(c, "sections do not add up to the blob size");
    m->tensors = (const tb_blob_tensor *)(const void *)(blob + sizeof(tb_blob_header));
    m->ops = (const tb_blob_op *)(const void *)(m->tensors + h->n_tensors);
    m->buffers = (const tb_blob_buffer *)(const void *)(m->ops + h->n_ops);
    m->data = (const uint8_t *)(const void *)(m->buffers + h->n_buffers);
    if (h->params_bytes % 4 || h->params_bytes < TB_BLOB_PARAMS_HEADER ||
        h->params_bytes > h->arena_bytes)
        return reject(c, "params region of %lu bytes in an arena of %lu",
                      (unsigned long)h->params_bytes, (unsigned long)h->arena_bytes);
    if (!finite(h->lr) || h->lr < 0.0f) return reject(c, "learning rate not finite and >= 0");
    if (!finite(h->momentum) || h->momentum < 0.0f || h->momentum >= 1.0f)
        return reject(c, "momentum not in [0, 1)");
    if (h->rng_seed == 0) return reject(c, "rng seed is 0");
    if (h->input_tensor >= h->n_tensors || h->output_tensor >= h->n_tensors)
        return reject(c, "input or output tensor out of range");
    return 0;
}

static int check_buffers(check *c)
{
    const tb_model *m = &c->m;
    for (uint32_t b = 0; b < m->header->n_buffers; b++) {
        const tb_blob_buffer *buf = &m->buffers[b];
        snprintf(c->owner, sizeof(c->owner), "buffer %u: ", (unsigned)b);
        if (buf->offset % 4 || buf->size == 0 || buf->offset > m->header->arena_bytes ||
            buf->size > m->header->arena_bytes - buf->offset)
            return reject(c, "%lu + %lu bytes misaligned or outside the arena of %lu",
                          (unsigned long)buf->offset, (unsigned long)buf->size,
                          (unsigned long)m->header->arena_bytes);
    }
    return 0;
}

static int check_tensor_fields(check *c)
{
    const tb_model *m = &c->m;
    for (uint32_t i = 0; i < m->header->n_tensors; i++) {
        const tb_blob_tensor *t = &m->tensors[i];
        snprintf(c->owner, sizeof(c->owner), "tensor %u: ", (unsigned)i);
        if (!t->h || !t->w || !t->c) return reject(c, "empty shape");
        if (t->zero_point < -128 || t->zero_point > 127)
            return reject(c, "zero point %ld out of range", (long)t->zero_point);
        if (!finite(t->scale) || t->scale <= 0.0f) return reject(c, "scale not finite and > 0");
    }
    return 0;
}

/* Needs the ops checked: who produces a tensor decides whether it has a gradient. */
static int check_tensor_buffers(check *c)
{
    const tb_model *m = &c->m;
    for (uint32_t i = 0; i < m->header->n_tensors; i++) {
        const tb_blob_tensor *t = &m->tensors[i];
        const uint64_t n = tensor_size(t);
        const int grad = has_gradient(m, i);
        int rc;
        snprintf(c->owner, sizeof(c->owner), "tensor %u: ", (unsigned)i);
        const int32_t p = tb_model_producer(m, i);
        if (p < 0 && i != m->header->input_tensor) return reject(c, "no op produces it");
        if (p < 0 && t->scale_positions)
            return reject(c, "scaled by positions but no op produces it");
        const uint64_t value_bytes = t->stream_rows ? (uint64_t)t->stream_rows * t->w * t->c : n;
        /* no mask: the clamp is read from the values, which a weight gradient keeps */
        const int values_kept = grad && t->mask == TB_BLOB_NONE && read_by_weight_training(m, i);
        if ((rc = work_buffer(c, "value", t->buffer, value_bytes, 1)) ||
            (rc = work_buffer(c, "grad", t->grad, n, grad)) ||
            (!values_kept && (rc = work_buffer(c, "mask", t->mask, (n + 7) / 8, grad))))
            return rc;
    }
    return 0;
}

/* ---- ops ---- */

/* The kernels' geometry rule (TFLite SAME/VALID): pad < kernel, every output window starts
 * inside the input, and the output covers the input no further than the padding allows. */
static int geometry_ok(const tb_blob_op *op, const tb_blob_tensor *in, const tb_blob_tensor *out)
{
    if (!op->kernel_h || !op->kernel_w || !op->stride_h || !op->stride_w ||
        op->pad_top >= op->kernel_h || op->pad_left >= op->kernel_w)
        return 0;
    const int32_t last_y = (out->h - 1) * op->stride_h - op->pad_top;
    const int32_t last_x = (out->w - 1) * op->stride_w - op->pad_left;
    return last_y < in->h && last_x < in->w && last_y + op->kernel_h <= in->h + op->kernel_h - 1 &&
           last_x + op->kernel_w <= in->w + op->kernel_w - 1;
}

static int same_shape(const tb_blob_tensor *a, const tb_blob_tensor *b)
{
    return a->h == b->h && a->w == b->w && a->c == b->c;
}

static int check_wiring(check *c, uint32_t i)
{
    const tb_model *m = &c->m;
    const tb_blob_op *op = &m->ops[i];
    const uint32_t n_inputs = op->kind == TB_OP_ADD ? 2 : 1;
    if (n_inputs == 1 && (op->input1 != TB_BLOB_NONE || (op->train & TB_GRAD_INPUT1)))
        return reject(c, "second input set");
    for (uint32_t k = 0; k < n_inputs; k++) {
        const uint16_t t = op_input(op, k);
        const int32_t p = t < m->header->n_tensors ? tb_model_producer(m, t) : (int32_t)i;
        if (p >= (int32_t)i || (p < 0 && t != m->header->input_tensor))
            return reject(c, "input %u is not an earlier tensor", (unsigned)k);
    }
    if (op->output >= m->header->n_tensors || tb_model_producer(m, op->output) != (int32_t)i)
        return reject(c, "output out of range or produced twice");
    return 0;
}

/* The largest |tb_requantize(x, mult, shift)| for |x| <= max_abs, or UINT64_MAX when x's left
 * shift could leave int32. */
static uint64_t requantized_bound(uint64_t max_abs, int32_t mult, int32_t shift)
{
    const uint64_t shifted = max_abs << (shift > 0 ? shift : 0);
    if (max_abs > (1ull << 31) || shifted > (1ull << 31)) return UINT64_MAX;
    return (shifted * (uint64_t)mult + (1ull << 30)) >> 31;
}

/* Sum of |w| * 255 over the weights feeding output channel k (|x + input_offset| <= 255);
 * trained weights may take any int8 value. */
static uint64_t max_products(const tb_model *m, const tb_blob_op *op, uint32_t k)
{
    const uint32_t out_c = m->tensors[op->output].c;
    const uint64_t fan_in = op->kind == TB_OP_DEPTHWISE ? op_taps(op) : weight_bytes(m, op) / out_c;
    if (op->train & TB_TRAIN_WEIGHTS) return fan_in * 128u * 255u;
    const int8_t *w = (const int8_t *)tb_model_data(m, op->weights);
    const uint64_t stride = op->kind == TB_OP_DEPTHWISE ? m->tensors[op->input0].c : 1;
    const int8_t *first = op->kind == TB_OP_DEPTHWISE ? w + k : w + k * fan_in;
    uint64_t sum = 0;
    for (uint64_t i = 0; i < fan_in; i++) {
        const int32_t v = first[i * stride];
        sum += (uint64_t)(v < 0 ? -v : v);
    }
    return sum * 255u;
}

/* The forward kernels' int32 arithmetic cannot overflow (undefined behaviour in C): the bias plus
 * any sum of products, then the requantized value plus the output offset. An add scales both
 * inputs by 2^20 (TFLite's left shift), requantizes and sums them, then requantizes the sum. */
static int accumulators_fit(check *c, const tb_blob_op *op)
{
    const tb_model *m = &c->m;
    const uint64_t limit = (uint64_t)INT32_MAX - 128u;
    if (op->kind == TB_OP_ADD) {
        const int32_t *mult = data_i32(m, op->mult), *shift = data_i32(m, op->shift);
        const uint64_t input = 255ull << TB_ADD_LEFT_SHIFT;
        const uint64_t a = requantized_bound(input, mult[0], shift[0]);
        const uint64_t b = requantized_bound(input, mult[1], shift[1]);
        if (a > INT32_MAX || b > INT32_MAX || a + b > INT32_MAX ||
            requantized_bound(a + b, mult[2], shift[2]) > limit)
            return reject(c, "multipliers could overflow int32");
        return 0;
    }
    if (!is_weighted(op->kind)) return 0;
    const int32_t *bias = data_i32(m, op->bias);
    const int32_t *mult = data_i32(m, op->mult), *shift = data_i32(m, op->shift);
    const int trained_bias = (op->train & TB_TRAIN_BIAS) != 0;
    for (uint32_t k = 0; k < m->tensors[op->output].c; k++) {
        const int64_t s = (int64_t)max_products(m, op, k);
        /* a trained bias may move anywhere within the update's saturation limit */
        if (trained_bias && (bias[k] > TB_TRAINED_BIAS_LIMIT || bias[k] < -TB_TRAINED_BIAS_LIMIT))
            return reject(c, "channel %u: trained bias beyond +-2^30", (unsigned)k);
        const int64_t hi = (trained_bias ? TB_TRAINED_BIAS_LIMIT : bias[k]) + s;
        const int64_t lo = (trained_bias ? -TB_TRAINED_BIAS_LIMIT : bias[k]) - s;
        const uint64_t max_abs = (uint64_t)(hi > -lo ? hi : -lo);
        if (hi > INT32_MAX || lo < INT32_MIN || requantized_bound(max_abs, mult[k], shift[k]) > limit)
            return reject(c, "channel %u: bias and products could overflow int32", (unsigned)k);
    }
    return 0;
}

/* Shapes, geometry, forward data and scratch. */
static int check_forward(check *c, uint32_t i)
{
    const tb_model *m = &c->m;
    const tb_blob_op *op = &m->ops[i];
    const tb_blob_tensor *in = &m->tensors[op->input0];
    const tb_blob_tensor *out = &m->tensors[op->output];
    const int conv = op->kind == TB_OP_CONV2D || op->kind == TB_OP_DEPTHWISE;
    const int unit = op->kind == TB_OP_POINTWISE;
    const int weighted = is_weighted(op->kind);
    int rc;
    if (conv) {
        if (!geometry_ok(op, in, out)) return reject(c, "geometry does not fit its tensors");
    } else if (op->kernel_h != unit || op->kernel_w != unit || op->stride_h != unit ||
               op->stride_w != unit || op->pad_top || op->pad_left) {
        return reject(c, "kernel, stride or padding set");
    }
    if (op->act_min < -128 || op->act_max > 127 || op->act_min > op->act_max)
        return reject(c, "bad output range");
    switch (op->kind) {
    case TB_OP_DEPTHWISE:
        if (in->c != out->c) return reject(c, "channels differ");
        break;
    case TB_OP_POINTWISE:
        if (in->h != out->h || in->w != out->w) return reject(c, "spatial sizes differ");
        break;
    case TB_OP_FULLY_CONNECTED:
        if (out->h != 1 || out->w != 1) return reject(c, "output is not 1x1");
        break;
    case TB_OP_AVGPOOL:
        if (out->h != 1 || out->w != 1 || out->c != in->c) return reject(c, "output is not 1x1x%u", in->c);
        if ((uint32_t)in->h * in->w > (1u << 23)) return reject(c, "more than 2^23 positions");
        if (in->scale != out->scale || in->zero_point != out->zero_point)
            return reject(c, "input and output quantization differ");
        break;
    case TB_OP_ADD:
        if (!same_shape(in, out) || !same_shape(&m->tensors[op->input1], out))
            return reject(c, "shapes differ");
        break;
    }
    const uint32_t n_mult = op->kind == TB_OP_ADD ? 3 : (weighted ? out->c : 0);
    if ((rc = data_item(c, "weights", op->weights, weight_bytes(m, op), weighted)) ||
        (rc = data_item(c, "bias", op->bias, 4ull * out->c, weighted)) ||
        (rc = data_item(c, "mult", op->mult, 4ull * n_mult, n_mult > 0)) ||
        (rc = data_item(c, "shift", op->shift, 4ull * n_mult, n_mult > 0)) ||
        (rc = data_item(c, "weight_scales", op->weight_scales, 4ull * out->c, weighted)))
        return rc;
    if (n_mult && (rc = multipliers(c, "multiplier", op->mult, op->shift, n_mult))) return rc;
    if (weighted && (rc = scales(c, "weight scale", op->weight_scales, out->c, 0))) return rc;
    if ((rc = accumulators_fit(c, op))) return rc;
    int32_t scratch = 0;
    if (op->kind == TB_OP_CONV2D) {
        /* the whole op, or any one of its rows (it may run by rows) */
        tb_conv_params p = {op->kernel_h, op->kernel_w, op->stride_h, op->stride_w,
                            op->pad_top, op->pad_left, -in->zero_point, out->zero_point,
                            op->act_min, op->act_max, TB_ROUND_TFLITE}; /* scratch: any rounding */
        const tb_shape s = {in->h, in->w, in->c};
        scratch = tb_conv2d_s8_scratch_bytes(&p, s, out->c);
        for (int32_t r = 0; r < out->h; r++) {
            int32_t a, b;
            tb_model_window(m, op, r, &a, &b);
            p.pad_top = a - (r * op->stride_h - op->pad_top);
            const tb_shape rows = {b - a, in->w, in->c};
            const int32_t need = tb_conv2d_s8_scratch_bytes(&p, rows, out->c);
            if (need > scratch) scratch = need;
        }
    } else if (op->kind == TB_OP_POINTWISE) {
        scratch = tb_pointwise_conv_s8_scratch_bytes(in->c, out->c);
    }
    return work_buffer(c, "scratch", op->scratch, (uint64_t)scratch, scratch > 0);
}

static int check_channels(check *c, const tb_blob_op *op, uint32_t n)
{
    const int32_t *ch = data_i32(&c->m, op->channels);
    for (uint32_t j = 0; j < op->n_channels; j++) {
        if (ch[j] < 0 || (uint32_t)ch[j] >= n)
            return reject(c, "channel %ld out of range [0, %lu)", (long)ch[j], (unsigned long)n);
        if (j && ch[j] <= ch[j - 1]) return reject(c, "channels not strictly increasing at %u", (unsigned)j);
    }
    return 0;
}

/* The training schema of op i, its parameters in the params region and its backward buffers. */
static int check_training(check *c, uint32_t i, uint32_t *next_param)
{
    const tb_model *m = &c->m;
    const tb_blob_op *op = &m->ops[i];
    const tb_blob_tensor *in = &m->tensors[op->input0];
    const tb_blob_tensor *out = &m->tensors[op->output];
    const uint32_t taps = op_taps(op);
    const int weighted = is_weighted(op->kind);
    const int bias = (op->train & TB_TRAIN_BIAS) != 0;
    const int weights = (op->train & TB_TRAIN_WEIGHTS) != 0;
    const int grad_in = (op->train & TB_GRAD_INPUT0) != 0;
    const int momentum = m->header->momentum > 0.0f;
    int rc;
    if (op->train & ~(TB_TRAIN_BIAS | TB_TRAIN_WEIGHTS | TB_GRAD_INPUT0 | TB_GRAD_INPUT1))
        return reject(c, "unknown train bits");
    if (!weighted && (bias || weights)) return reject(c, "has no parameters to train");
    for (uint32_t k = 0; k < (op->kind == TB_OP_ADD ? 2u : 1u); k++) {
        const int needed = has_gradient(m, op_input(op, k));
        if (needed != ((op->train & (TB_GRAD_INPUT0 << k)) != 0))
            return reject(c, "gradient to input %u %s", (unsigned)k, needed ? "missing" : "not needed");
    }
    if ((bias || weights) && (uint32_t)out->h * out->w > TB_GRAD_MAX_POSITIONS)
        return reject(c, "too many output positions to train");
    if (grad_in && weighted &&
        (op->kind == TB_OP_DEPTHWISE ? taps : (uint64_t)taps * out->c) > TB_GRAD_MAX_FAN_OUT)
        return reject(c, "fan-out too large for an input gradient");
    /* trained channels: input channels (fully connected: input features), depthwise: channels */
    const uint64_t channel_range = op->kind == TB_OP_FULLY_CONNECTED ? tensor_size(in) : in->c;
    if (weights != (op->n_channels > 0)) return reject(c, "%u trained channels", op->n_channels);
    if ((rc = data_item(c, "channels", op->channels, 4ull * op->n_channels, weights))) return rc;
    if (weights && (rc = check_channels(c, op, (uint32_t)channel_range))) return rc;
    /* what the updates and the input gradient scale by */
    if ((rc = data_item(c, "bias_scales", op->bias_scales, 4ull * out->c, bias)) ||
        (rc = data_item(c, "grad_mult", op->grad_mult, 4ull * out->c, grad_in && weighted)) ||
        (rc = data_item(c, "grad_shift", op->grad_shift, 4ull * out->c, grad_in && weighted)))
        return rc;
    if (bias && (rc = scales(c, "bias scale", op->bias_scales, out->c, 1))) return rc;
    if (weights && (rc = scales(c, "weight scale", op->weight_scales, out->c, 1))) return rc;
    if (grad_in && weighted &&
        (rc = multipliers(c, "grad multiplier", op->grad_mult, op->grad_shift, out->c)))
        return rc;
    /* parameters; sliced weights: only the trained input channels, [out_c][taps][n_channels] */
    const uint64_t per_channel = (uint64_t)taps * op->n_channels;
    const uint64_t velocity_n = op->kind == TB_OP_DEPTHWISE ? per_channel : per_channel * out->c;
    const int sliced = op->weight_work != TB_BLOB_NONE;
    if (sliced && (!weights || op->kind == TB_OP_DEPTHWISE || op->n_channels >= channel_range))
        return reject(c, "sliced weights need trained weights on some input channels");
    if ((rc = param_buffer(c, "bias_param", op->bias_param, 4ull * out->c, bias, next_param)) ||
        (rc = param_buffer(c, "weight_param", op->weight_param,
                           sliced ? per_channel * out->c : weight_bytes(m, op), weights,
                           next_param)) ||
        (rc = param_buffer(c, "bias_velocity", op->bias_velocity, 4ull * out->c, bias && momentum,
                           next_param)) ||
        (rc = param_buffer(c, "weight_velocity", op->weight_velocity, 4 * velocity_n,
                           weights && momentum, next_param)))
        return rc;
    /* backward work buffers */
    const int chunked = weights && op->kind != TB_OP_DEPTHWISE;
    if (chunked ? (op->wgrad_chunk < 1 || op->wgrad_chunk > out->c) : op->wgrad_chunk != 0)
        return reject(c, "weight gradient chunk %u", op->wgrad_chunk);
    const uint64_t wgrad_n = chunked ? per_channel * op->wgrad_chunk : per_channel;
    const uint64_t in_positions = op->kind == TB_OP_FULLY_CONNECTED ? 1 : (uint64_t)in->h * in->w;
    const uint64_t out_positions = (uint64_t)out->h * out->w;
    /* the output gradient scaled a few positions at a time for the input gradient */
    const uint64_t positions = out->scale_positions;
    if (positions && (op->kind != TB_OP_POINTWISE || !weights || !grad_in || positions >= out_positions))
        return reject(c, "output gradient scaled by %u positions: not allowed", out->scale_positions);
    if (sliced &&
        ((rc = work_buffer(c, "weight_work", op->weight_work,
                           op->wgrad_chunk * (weight_bytes(m, op) / out->c + out_positions), 1)) ||
         (rc = work_buffer(c, "grad_sel", op->grad_sel,
                           4 * op->n_channels * (grad_in ? (positions ? positions : in_positions) : 1),
                           1))))
        return rc;
    if (!sliced && op->grad_sel != TB_BLOB_NONE) return reject(c, "unexpected grad_sel buffer");
    /* a chunked input gradient: grad_chunk input channels at a time */
    const uint64_t k = op->grad_chunk;
    if (k && (!grad_in || !is_row_kind(op->kind) || sliced || !tb_model_grad_is_first(m, i, 0) ||
              k > in->c))
        return reject(c, "input gradient chunk %u not allowed", op->grad_chunk);
    uint64_t acc_bytes = 0;
    if (k)
        acc_bytes = 4 * (in_positions * k + 1) + ((weight_bytes(m, op) / in->c * k + 3) & ~3ull) +
                    (op->kind == TB_OP_DEPTHWISE ? out_positions * k : 0);
    else if (grad_in && weighted)
        acc_bytes = 4 * tensor_size(in);
    else if (grad_in && op->kind == TB_OP_AVGPOOL && !tb_model_grad_is_first(m, i, 0))
        acc_bytes = tensor_size(in);
    const int dense = op->kind == TB_OP_POINTWISE || op->kind == TB_OP_FULLY_CONNECTED;
    const int32_t grad_scratch = grad_in && dense ? tb_pointwise_input_grad_s8_scratch_bytes(out->c) : 0;
    if ((rc = work_buffer(c, "bias_grad", op->bias_grad, 4ull * out->c, bias)) ||
        (rc = work_buffer(c, "weight_grad", op->weight_grad, 4 * wgrad_n, weights)) ||
        (rc = work_buffer(c, "grad_scaled", op->grad_scaled,
                          positions ? (positions + 2) * out->c : tensor_size(out),
                          grad_in && weighted && weights)) ||
        (rc = work_buffer(c, "grad_acc", op->grad_acc, acc_bytes, acc_bytes > 0)) ||
        (rc = work_buffer(c, "grad_scratch", op->grad_scratch, (uint64_t)grad_scratch,
                          grad_scratch > 0)))
        return rc;
    return 0;
}

static int check_ops(check *c)
{
    tb_model *m = &c->m;
    uint32_t next_param = TB_BLOB_PARAMS_HEADER;
    m->backward_stop = m->header->n_ops;
    for (uint32_t i = 0; i < m->header->n_ops; i++) {
        const tb_blob_op *op = &m->ops[i];
        int rc;
        if (op->kind < TB_OP_CONV2D || op->kind > TB_OP_ADD) {
            snprintf(c->owner, sizeof(c->owner), "op %u: ", (unsigned)i);
            return reject(c, "unknown kind %u", op->kind);
        }
        snprintf(c->owner, sizeof(c->owner), "op %u (%s): ", (unsigned)i, kind_names[op->kind]);
        if ((rc = check_wiring(c, i)) || (rc = check_forward(c, i)) ||
            (rc = check_training(c, i, &next_param)))
            return rc;
        if ((op->train & (TB_TRAIN_BIAS | TB_TRAIN_WEIGHTS)) && m->backward_stop == m->header->n_ops)
            m->backward_stop = i;
    }
    return 0;
}

/* Every tensor but the output is consumed; the output is the last op's logit vector. */
static int check_graph(check *c)
{
    const tb_model *m = &c->m;
    const tb_blob_header *h = m->header;
    const tb_blob_tensor *out = &m->tensors[h->output_tensor];
    snprintf(c->owner, sizeof(c->owner), "graph: ");
    if (m->ops[h->n_ops - 1].output != h->output_tensor)
        return reject(c, "the output tensor is not the last op's output");
    if (out->h != 1 || out->w != 1 || out->c < 2)
        return reject(c, "the output is not a 1x1 vector of at least 2 logits");
    if (tb_model_producer(m, h->input_tensor) >= 0)
        return reject(c, "the input tensor is produced by an op");
    for (uint32_t t = 0; t < h->n_tensors; t++) {
        uint32_t uses = 0;
        for (uint32_t i = 0; i < h->n_ops; i++)
            uses += (m->ops[i].input0 == t) + (m->ops[i].input1 == t);
        if (!uses && t != h->output_tensor) return reject(c, "tensor %u is never used", (unsigned)t);
    }
    return 0;
}

/* Streamed tensors (docs/blob-format.md, "Streaming"): made by a row op, read only by the next op
 * (a row op that does not train its weights), without gradient, and the buffer holds the rows
 * that op's windows need. */
static int check_streams(check *c)
{
    const tb_model *m = &c->m;
    for (uint32_t t = 0; t < m->header->n_tensors; t++) {
        const uint16_t rows = m->tensors[t].stream_rows;
        if (!rows) continue;
        snprintf(c->owner, sizeof(c->owner), "tensor %u: ", (unsigned)t);
        const int32_t p = tb_model_producer(m, t);
        uint32_t uses = 0;
        for (uint32_t i = 0; i < m->header->n_ops; i++)
            uses += (m->ops[i].input0 == t) + (m->ops[i].input1 == t);
        const tb_blob_op *next;
        if (t == m->header->input_tensor) {
            /* the streamed input: op 0's rows run while the input transfer's data arrives */
            next = &m->ops[0];
            if (!is_row_kind(next->kind) || next->input0 != t || uses != 1)
                return reject(c, "streams but is not the input of a row op reading it alone");
            if (next->train & TB_TRAIN_WEIGHTS)
                return reject(c, "streams but the backward pass reads it");
        } else {
            if (p < 0 || (uint32_t)p + 1 >= m->header->n_ops)
                return reject(c, "streams but no op reads it next");
            const tb_blob_op *made = &m->ops[p];
            next = &m->ops[p + 1];
            if (!is_row_kind(made->kind) || !is_row_kind(next->kind) || next->input0 != t || uses != 1)
                return reject(c, "streams but is not a row op's output read only by the next row op");
            if (made->train || (next->train & TB_TRAIN_WEIGHTS))
                return reject(c, "streams but the backward pass reads it");
        }
        int32_t need = 0;
        for (int32_t r = 0; r < m->tensors[next->output].h; r++) {
            int32_t a, b;
            tb_model_window(m, next, r, &a, &b);
            if (b - a > need) need = b - a;
        }
        if (rows < need || rows > m->tensors[t].h)
            return reject(c, "streams %u rows, its reader needs %ld", rows, (long)need);
    }
    return 0;
}

static int ranges_meet(uint32_t a, uint32_t a_size, uint32_t b, uint32_t b_size)
{
    return a < b + b_size && b < a + a_size;
}

/* Where an op's output may share memory with its input (docs/blob-format.md, "In place"): a row
 * op's output from below over its root input when no output row (rows run top-down) lands on a
 * root row that its row or a later one reads; an add's output over an input at its offset. */
static int check_in_place(check *c)
{
    const tb_model *m = &c->m;
    for (uint32_t i = 0; i < m->header->n_ops; i++) {
        const tb_blob_op *op = &m->ops[i];
        const tb_blob_tensor *out = &m->tensors[op->output];
        if (out->stream_rows) continue;
        snprintf(c->owner, sizeof(c->owner), "op %u (%s): ", (unsigned)i, kind_names[op->kind]);
        const uint32_t o = m->buffers[out->buffer].offset, o_size = tb_tensor_size(out);
        const uint16_t x = is_row_kind(op->kind) ? tb_model_root(m, i) : op->input0;
        const uint32_t in_at = m->buffers[m->tensors[x].buffer].offset;
        const uint32_t in_size = tb_tensor_size(&m->tensors[x]);
        if (m->tensors[x].stream_rows) { /* the streamed input's ring: no overlap at all */
            if (ranges_meet(o, o_size, in_at, m->buffers[m->tensors[x].buffer].size))
                return reject(c, "output overlaps the streamed input");
            continue;
        }
        if (op->kind == TB_OP_ADD) {
            for (uint32_t k = 0; k < 2; k++) {
                const uint32_t at = m->buffers[m->tensors[op_input(op, k)].buffer].offset;
                if (ranges_meet(o, o_size, at, in_size) && o != at)
                    return reject(c, "output overlaps input %u other than at its offset",
                                  (unsigned)k);
            }
            continue;
        }
        if (!ranges_meet(o, o_size, in_at, in_size)) continue;
        if (!is_row_kind(op->kind) || op->weight_work != TB_BLOB_NONE || o > in_at)
            return reject(c, "output overlaps its input");
        const uint32_t ib = tb_row_bytes(&m->tensors[x]), ob = tb_row_bytes(out);
        for (int32_t r = 0; r < out->h; r++) {
            const uint32_t lo = in_at + (uint32_t)root_row(m, i, r) * ib;
            if (ranges_meet(o + (uint32_t)r * ob, ob, lo, in_at + in_size - lo))
                return reject(c, "output row %ld overlaps input rows it still reads", (long)r);
        }
    }
    return 0;
}

static void fill_info(tb_model *m)
{
    const tb_blob_header *h = m->header;
    const tb_blob_tensor *in = &m->tensors[h->input_tensor];
    m->info.input_h = in->h;
    m->info.input_w = in->w;
    m->info.input_c = in->c;
    m->info.input_bytes = tb_tensor_size(in);
    m->info.num_classes = m->tensors[h->output_tensor].c;
    m->info.arena_bytes = h->arena_bytes;
    m->info.params_bytes = h->params_bytes;
    m->info.default_lr = h->lr;
}

/* The params region after a load (docs/blob-format.md, Params region). */
static void init_params(const tb_model *m)
{
    const tb_blob_header *h = m->header;
    memset(m->arena, 0, h->params_bytes);
    memcpy(m->arena, &h->step, 4);
    memcpy(m->arena + 4, &h->rng_seed, 4);
    for (uint32_t i = 0; i < h->n_ops; i++) {
        const tb_blob_op *op = &m->ops[i];
        if (op->bias_param != TB_BLOB_NONE)
            memcpy(tb_model_buffer(m, op->bias_param), tb_model_data(m, op->bias),
                   4u * m->tensors[op->output].c);
        if (op->weight_param == TB_BLOB_NONE) continue;
        const int8_t *w = (const int8_t *)tb_model_data(m, op->weights);
        int8_t *param = (int8_t *)tb_model_buffer(m, op->weight_param);
        if (op->weight_work == TB_BLOB_NONE) {
            memcpy(param, w, (size_t)weight_bytes(m, op));
            continue;
        }
        /* sliced: the trained input channels of every output channel and tap */
        const int32_t *sel = (const int32_t *)(const void *)tb_model_data(m, op->channels);
        const tb_blob_tensor *in = &m->tensors[op->input0];
        const uint32_t in_c = op->kind == TB_OP_FULLY_CONNECTED ? tb_tensor_size(in) : in->c;
        const uint32_t rows = (uint32_t)(weight_bytes(m, op) / in_c);
        for (uint32_t r = 0; r < rows; r++)
            for (uint32_t j = 0; j < op->n_channels; j++)
                param[r * op->n_channels + j] = w[r * in_c + (uint32_t)sel[j]];
    }
}

int tb_model_load(const uint8_t *blob, uint32_t size, uint8_t *arena, uint32_t arena_capacity,
                  char *err, uint32_t err_len)
{
    check c;
    int rc;
    memset(&c, 0, sizeof(c));
    c.err = err;
    c.err_len = err_len;
    if ((rc = check_header(&c, blob, size)) || (rc = check_buffers(&c)) ||
        (rc = check_tensor_fields(&c)) || (rc = check_ops(&c)) || (rc = check_tensor_buffers(&c)) ||
        (rc = check_graph(&c)) || (rc = check_streams(&c)) || (rc = check_in_place(&c)))
        return rc;
    snprintf(c.owner, sizeof(c.owner), "arena: ");
    if ((uintptr_t)arena % 4) return reject(&c, "not 4-byte aligned");
    if (c.m.header->arena_bytes > arena_capacity) {
        if (err && err_len)
            snprintf(err, err_len, "model needs an arena of %lu bytes, the device has %lu",
                     (unsigned long)c.m.header->arena_bytes, (unsigned long)arena_capacity);
        return TB_ERR_TOO_LARGE;
    }
    c.m.arena = arena;
    fill_info(&c.m);
    current = c.m;
    has_model = 1;
    tb_profile_clear();
    init_params(&current);
    return TB_OK;
}

void tb_model_unload(void)
{
    has_model = 0;
    tb_profile_clear();
}

const tb_model *tb_model_loaded(void)
{
    return has_model ? &current : NULL;
}

const tb_model_info *tb_model_current(void)
{
    return has_model ? &current.info : NULL;
}

uint8_t *tb_model_input(void)
{
    return has_model && !tb_model_input_streams()
               ? tb_model_buffer(&current, current.tensors[current.header->input_tensor].buffer)
               : NULL;
}

int tb_model_input_streams(void)
{
    return has_model && current.tensors[current.header->input_tensor].stream_rows;
}

uint8_t *tb_model_params(void)
{
    return has_model ? current.arena : NULL;
}

uint32_t tb_model_step(void)
{
    uint32_t step = 0;
    if (has_model) memcpy(&step, current.arena, 4);
    return step;
}

void tb_model_set_step(uint32_t step)
{
    if (has_model) memcpy(current.arena, &step, 4);
}
