"""Backward, loss and QAS update kernels (tb_train.h), numpy in, numpy out.

Gradient tensors are `(int8 array, exp)` pairs, value = g * 2**exp, with g in [-127, 127].
Parameter gradients are int32 sums (value acc * 2**g_exp * x_scale for weights, acc * 2**g_exp
for biases); input-gradient kernels return int32 accumulators at the exponent of their input h,
to be requantized with grad_requantize(). docs/kernels.md has the numerics."""
import numpy as np

from . import _checks as C
from .forward import conv_params, out_size

EXP_LIMIT = 1 << 24  # exponents far beyond anything a float32 scale can express, still safe in C
TRAINED_BIAS_LIMIT = C.lib.TB_TRAINED_BIAS_LIMIT  # where sgd_update_bias saturates


def _exp(name, value):
    return C.integer(name, value, -EXP_LIMIT, EXP_LIMIT)


def _grad(name, g, shape=None, ndim=None):
    """An int8 gradient tensor: int8 values in [-127, 127]."""
    g = C.array(name, g, np.int8, shape, ndim)
    if (g == -128).any():
        raise ValueError("%s must be in [-127, 127] (an int8 gradient), got -128" % name)
    return g


def _f32(name, value, lo=None, positive=False):
    """A finite float scalar, as the float32 the kernel receives."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError("%s must be a float, got %r" % (name, value))
    v = np.float32(value)
    if not np.isfinite(v) or (lo is not None and v < lo) or (positive and v <= 0):
        want = "> 0" if positive else (">= %g" % lo if lo is not None else "finite")
        raise ValueError("%s must be a finite float32 %s, got %r" % (name, want, value))
    return float(v)


def _sel(sel, n, what="input channels"):
    """Trained channels: sorted, distinct, in [0, n); None means all n."""
    if sel is None:
        return np.arange(n, dtype=np.int32)
    sel = C.array("sel", sel, np.int32, ndim=1)
    if sel[0] < 0 or sel[-1] >= n or (np.diff(sel) <= 0).any():
        raise ValueError("sel must be sorted, distinct %s in [0, %d), got %s" % (what, n, sel))
    return sel


def _c_range(c_range, out_c):
    if c_range is None:
        return 0, out_c
    if not isinstance(c_range, (tuple, list)) or len(c_range) != 2:
        raise ValueError("c_range must be a (c_begin, c_end) pair, got %r" % (c_range,))
    c_begin = C.integer("c_begin", c_range[0], 0, out_c - 1)
    return c_begin, C.integer("c_end", c_range[1], c_begin + 1, out_c)


def _positions(name, n):
    if n > C.lib.TB_GRAD_MAX_POSITIONS:
        raise ValueError("%s has %d positions; gradient sums are bounded to %d (int32 safety)"
                         % (name, n, C.lib.TB_GRAD_MAX_POSITIONS))


def _pair(name, v):
    kh, kw = (v, v) if isinstance(v, (int, np.integer)) else tuple(v)
    return C.integer(name, kh, 1, 15), C.integer(name, kw, 1, 15)


def _geometry(in_hw, kernel, stride, padding):
    """(out_h, out_w, pad_top, pad_left) of a convolution (padding as forward.out_size)."""
    (h, w), (kh, kw) = in_hw, kernel
    C.integer("stride", stride, 1, 4)
    oh, pt = out_size(h, kh, stride, padding)
    ow, pl = out_size(w, kw, stride, padding)
    if oh <= 0 or ow <= 0:
        raise ValueError("kernel %dx%d is larger than input %dx%d with valid padding" % (kh, kw, h, w))
    return oh, ow, pt, pl


# ---------------- gradient tensors ----------------

def clamp_mask(y, act_min, act_max):
    """Pass-through mask of a clamped int8 output y: bit i (LSB first) set iff act_min < y < act_max.
    Returns uint8 ((y.size + 7) // 8,)."""
    y = C.array("y", y, np.int8)
    C.integer("act_min", act_min, -128, 127)
    C.integer("act_max", act_max, act_min, 127)
    mask = np.empty(((y.size + 7) // 8,), np.uint8)
    C.lib.tb_clamp_mask_pack_s8(C.ptr("int8_t", y), y.size, act_min, act_max, C.ptr("uint8_t", mask))
    return mask


def apply_mask(g, mask):
    """g with zeros where the mask (from clamp_mask) is 0; same shape and dtype. g is an int8
    gradient, or the int32 accumulators of an input gradient (mask those before grad_requantize,
    so that the exponent is chosen from the values that survive)."""
    if isinstance(g, np.ndarray) and g.dtype == np.int32:
        g = C.array("acc", g, np.int32).copy()
        C.array("mask", mask, np.uint8, ((g.size + 7) // 8,))
        C.lib.tb_grad_apply_mask_s32(C.ptr("int32_t", g), C.ptr("uint8_t", mask), g.size)
    else:
        g = _grad("g", g).copy()
        C.array("mask", mask, np.uint8, ((g.size + 7) // 8,))
        C.lib.tb_grad_apply_mask_s8(C.ptr("int8_t", g), C.ptr("uint8_t", mask), g.size)
    return g


def grad_requantize(acc, acc_exp):
    """int32 accumulators (value acc * 2**acc_exp) -> (int8 gradient of the same shape, exp)."""
    acc = C.array("acc", acc, np.int32)
    out = np.empty(acc.shape, np.int8)
    e = C.lib.tb_grad_requantize_s32_s8(C.ptr("int32_t", acc), acc.size, _exp("acc_exp", acc_exp),
                                      C.ptr("int8_t", out))
    return out, e


def grad_add(a, a_exp, b, b_exp):
    """a * 2**a_exp + b * 2**b_exp as an int8 gradient: (out, exp). The sum at a fork (residual)."""
    a = _grad("a", a)
    b = _grad("b", b, a.shape)
    out = np.empty(a.shape, np.int8)
    e = C.lib.tb_grad_add_s8(C.ptr("int8_t", a), _exp("a_exp", a_exp), C.ptr("int8_t", b),
                           _exp("b_exp", b_exp), a.size, C.ptr("int8_t", out))
    return out, e


def grad_scale_channels(g, g_exp, mult, shift):
    """g (..., C) times the per-channel weight scale mult * 2**(shift - 31) (quant.scale_multipliers),
    requantized: (h, exp). The input of the input-gradient kernels."""
    g = _grad("g", g)
    c = g.shape[-1]
    mult = C.array("mult", mult, np.int32, (c,))
    shift = C.array("shift", shift, np.int32, (c,))
    if ((mult != 0) & (mult < 1 << 30)).any() or (shift < -31).any() or (shift > 30).any():
        raise ValueError("mult must be 0 or in [2^30, 2^31) and shift in [-31, 30] (TFLite multiplier form)")
    h = np.empty(g.shape, np.int8)
    e = C.lib.tb_grad_scale_channels_s8(C.ptr("int8_t", g), _exp("g_exp", g_exp), g.size // c, c,
                                      C.ptr("int32_t", mult), C.ptr("int32_t", shift), C.ptr("int8_t", h))
    return h, e


# ---------------- loss ----------------

def softmax_cross_entropy(logits, label, *, scale, zero_point, mask=None):
    """Softmax cross-entropy of int8 logits (n,) (value scale * (q - zero_point)) against label.
    mask: the logits' clamp mask (clamp_mask), or None. Returns (loss, (grad, exp)): the float32
    loss and d loss / d logit as an int8 gradient, zero where the mask is 0."""
    logits = C.array("logits", logits, np.int8, ndim=1)
    n = logits.shape[0]
    C.integer("label", label, 0, n - 1)
    C.integer("zero_point", zero_point, -128, 127)
    scale = _f32("scale", scale, positive=True)
    if mask is not None:
        mask = C.array("mask", mask, np.uint8, ((n + 7) // 8,))
    grad = np.empty((n,), np.int8)
    grad_exp = np.zeros((1,), np.int32)
    loss = C.lib.tb_softmax_cross_entropy_s8(C.ptr("int8_t", logits), n, scale, zero_point, label,
                                             C.ptr("uint8_t", mask), C.ptr("int8_t", grad),
                                             C.ptr("int32_t", grad_exp))
    return loss, (grad, int(grad_exp[0]))


# ---------------- parameter gradients ----------------

def bias_grad(g):
    """Bias gradient of an output gradient g (..., C): int32 (C,), value acc * 2**g_exp."""
    g = _grad("g", g)
    c = g.shape[-1]
    _positions("g", g.size // c)
    grad_b = np.empty((c,), np.int32)
    C.lib.tb_bias_grad_s8(C.ptr("int8_t", g), g.size // c, c, C.ptr("int32_t", grad_b))
    return grad_b


def pointwise_weight_grad(x, g, *, input_offset, sel=None, c_range=None):
    """Weight gradient of a pointwise conv (x (H, W, Cin), g (H, W, Cout)) or a fully connected
    layer (x (Cin,), g (Cout,)), for input channels sel (default all) and output channels
    c_range = (c_begin, c_end) (default all). Returns int32 (c_end - c_begin, n_sel)."""
    x = C.array("x", x, np.int8)
    g = _grad("g", g, x.shape[:-1] + (None,))
    ci, co = x.shape[-1], g.shape[-1]
    n_pos = x.size // ci
    _positions("g", n_pos)
    C.integer("input_offset", input_offset, -127, 128)
    sel = _sel(sel, ci)
    c_begin, c_end = _c_range(c_range, co)
    grad_w = np.empty((c_end - c_begin, sel.shape[0]), np.int32)
    C.check(C.lib.tb_pointwise_weight_grad_s8(n_pos, ci, C.ptr("int8_t", x), input_offset, co,
                                            C.ptr("int8_t", g), C.ptr("int32_t", sel), sel.shape[0],
                                            c_begin, c_end, C.ptr("int32_t", grad_w)),
            "pointwise_weight_grad")
    return grad_w


def conv2d_weight_grad(x, g, *, kernel, stride=1, padding="same", input_offset, sel=None, c_range=None):
    """Weight gradient of a k x k convolution: x (H, W, Cin), g (out_h, out_w, Cout). Returns int32
    (c_end - c_begin, kh, kw, n_sel), OHWI restricted to the trained channels."""
    x = C.array("x", x, np.int8, ndim=3)
    h, wd, ci = x.shape
    kh, kw = _pair("kernel", kernel)
    oh, ow, pt, pl = _geometry((h, wd), (kh, kw), stride, padding)
    g = _grad("g", g, (oh, ow, None))
    _positions("g", oh * ow)
    co = g.shape[2]
    sel = _sel(sel, ci)
    c_begin, c_end = _c_range(c_range, co)
    p = conv_params((kh, kw), (stride, stride), (pt, pl), input_offset=input_offset)
    grad_w = np.empty((c_end - c_begin, kh, kw, sel.shape[0]), np.int32)
    C.check(C.lib.tb_conv2d_weight_grad_s8(p, C.shape(h, wd, ci), C.ptr("int8_t", x), C.shape(oh, ow, co),
                                         C.ptr("int8_t", g), C.ptr("int32_t", sel), sel.shape[0],
                                         c_begin, c_end, C.ptr("int32_t", grad_w)), "conv2d_weight_grad")
    return grad_w


def depthwise_weight_grad(x, g, *, kernel, stride=1, padding="same", input_offset, sel=None):
    """Weight gradient of a depthwise conv: x (H, W, C), g (out_h, out_w, C), for channels sel.
    Returns int32 (kh, kw, n_sel)."""
    x = C.array("x", x, np.int8, ndim=3)
    h, wd, ch = x.shape
    kh, kw = _pair("kernel", kernel)
    oh, ow, pt, pl = _geometry((h, wd), (kh, kw), stride, padding)
    g = _grad("g", g, (oh, ow, ch))
    _positions("g", oh * ow)
    sel = _sel(sel, ch, "channels")
    p = conv_params((kh, kw), (stride, stride), (pt, pl), input_offset=input_offset)
    grad_w = np.empty((kh, kw, sel.shape[0]), np.int32)
    C.check(C.lib.tb_depthwise_weight_grad_s8(p, C.shape(h, wd, ch), C.ptr("int8_t", x), C.shape(oh, ow, ch),
                                            C.ptr("int8_t", g), C.ptr("int32_t", sel), sel.shape[0],
                                            C.ptr("int32_t", grad_w)), "depthwise_weight_grad")
    return grad_w


# ---------------- input gradients ----------------

def pointwise_input_grad(h, w):
    """Input gradient of a pointwise conv or fully connected layer: h (..., Cout) from
    grad_scale_channels, w (Cout, Cin). Returns int32 (..., Cin) at h's exponent."""
    h = _grad("h", h)
    co = h.shape[-1]
    w = C.array("w", w, np.int8, (co, None))
    ci = w.shape[1]
    if co > C.lib.TB_GRAD_MAX_FAN_OUT:
        raise ValueError("%d output channels exceed the int32-safe fan-out %d" % (co, C.lib.TB_GRAD_MAX_FAN_OUT))
    acc = np.empty(h.shape[:-1] + (ci,), np.int32)
    scratch = C.scratch(C.lib.tb_pointwise_input_grad_s8_scratch_bytes(co))
    C.check(C.lib.tb_pointwise_input_grad_s8(h.size // co, ci, co, C.ptr("int8_t", h), C.ptr("int8_t", w),
                                           C.ptr("int32_t", acc), scratch), "pointwise_input_grad")
    return acc


def conv2d_input_grad(h, w, *, in_hw, stride=1, padding="same"):
    """Input gradient of a k x k convolution: h (out_h, out_w, Cout), w OHWI (Cout, kh, kw, Cin),
    in_hw the forward input's (H, W). Returns int32 (H, W, Cin) at h's exponent."""
    w = C.array("w", w, np.int8, ndim=4)
    co, kh, kw, ci = w.shape
    ih, iw = (C.integer("in_hw", v, 1, 1 << 15) for v in in_hw)
    oh, ow, pt, pl = _geometry((ih, iw), (kh, kw), stride, padding)
    h = _grad("h", h, (oh, ow, co))
    if kh * kw * co > C.lib.TB_GRAD_MAX_FAN_OUT:
        raise ValueError("kernel taps x output channels = %d exceed the int32-safe fan-out %d"
                         % (kh * kw * co, C.lib.TB_GRAD_MAX_FAN_OUT))
    p = conv_params((kh, kw), (stride, stride), (pt, pl))
    acc = np.empty((ih, iw, ci), np.int32)
    C.check(C.lib.tb_conv2d_input_grad_s8(p, C.shape(ih, iw, ci), C.shape(oh, ow, co), C.ptr("int8_t", h),
                                        C.ptr("int8_t", w), C.ptr("int32_t", acc)), "conv2d_input_grad")
    return acc


def depthwise_input_grad(h, w, *, in_hw, stride=1, padding="same"):
    """Input gradient of a depthwise conv: h (out_h, out_w, C), w (kh, kw, C). Returns int32
    (H, W, C) at h's exponent."""
    w = C.array("w", w, np.int8, ndim=3)
    kh, kw, ch = w.shape
    ih, iw = (C.integer("in_hw", v, 1, 1 << 15) for v in in_hw)
    oh, ow, pt, pl = _geometry((ih, iw), (kh, kw), stride, padding)
    h = _grad("h", h, (oh, ow, ch))
    p = conv_params((kh, kw), (stride, stride), (pt, pl))
    acc = np.empty((ih, iw, ch), np.int32)
    C.check(C.lib.tb_depthwise_input_grad_s8(p, C.shape(ih, iw, ch), C.shape(oh, ow, ch), C.ptr("int8_t", h),
                                           C.ptr("int8_t", w), C.ptr("int32_t", acc)), "depthwise_input_grad")
    return acc


def avgpool_global_input_grad(g, g_exp, in_hw):
    """Input gradient of a global average pool: g (C,) -> (gx (H, W, C), exp)."""
    g = _grad("g", g, ndim=1)
    ih, iw = (C.integer("in_hw", v, 1, 1 << 15) for v in in_hw)
    if ih * iw > 1 << 23:
        raise ValueError("global average pool over %d positions exceeds 2^23" % (ih * iw))
    gx = np.empty((ih, iw, g.shape[0]), np.int8)
    e = C.lib.tb_avgpool_global_input_grad_s8(C.shape(ih, iw, g.shape[0]), C.ptr("int8_t", g),
                                            _exp("g_exp", g_exp), C.ptr("int8_t", gx))
    return gx, e


# ---------------- update (QAS-scaled SGD) ----------------

def _update_args(grad_shape, grad_scale, lr, momentum, velocity, rng, scale_len, param_scale):
    grad_scale = _f32("grad_scale", grad_scale)
    lr = _f32("lr", lr, lo=0.0)
    momentum = _f32("momentum", momentum, lo=0.0)
    param_scale = C.array("param_scale", param_scale, np.float32, (scale_len,))
    if not (np.isfinite(param_scale) & (param_scale > 0)).all():
        raise ValueError("param_scale must be finite and > 0")
    if velocity is not None:
        velocity = C.array("velocity", velocity, np.float32, grad_shape).copy()
    state = np.array([C.integer("rng", rng, 1, (1 << 32) - 1)], np.uint32)
    return grad_scale, lr, momentum, param_scale, velocity, state


def sgd_update_ohwi(w, grad_w, *, grad_scale, param_scale, lr, rng, momentum=0.0, velocity=None,
                    sel=None, c_range=None):
    """One QAS-scaled SGD step with stochastic rounding on OHWI weights w (Cout, kh, kw, Cin) or
    pointwise / fully connected weights (Cout, Cin), for input channels sel and output channels
    c_range. grad_w (and velocity, float32) are laid out like the weight-gradient chunk:
    (c_end - c_begin, [kh, kw,] n_sel). param_scale (Cout,) float32 is s_w by absolute output
    channel; grad_scale = 2**g_exp * x_scale; rng a nonzero uint32 xorshift32 state.
    Returns (new w, new velocity or None, new rng state)."""
    w = C.array("w", w, np.int8)
    if w.ndim not in (2, 4):
        raise ValueError("w must be (Cout, Cin) or OHWI (Cout, kh, kw, Cin), got shape %s" % (w.shape,))
    co, ci = w.shape[0], w.shape[-1]
    sel = _sel(sel, ci)
    c_begin, c_end = _c_range(c_range, co)
    grad_w = C.array("grad_w", grad_w, np.int32, (c_end - c_begin,) + w.shape[1:-1] + (sel.shape[0],))
    grad_scale, lr, momentum, param_scale, velocity, state = _update_args(
        grad_w.shape, grad_scale, lr, momentum, velocity, rng, co, param_scale)
    w = w.copy()
    taps = w.size // (co * ci)
    C.check(C.lib.tb_sgd_update_ohwi_s8(C.ptr("int8_t", w), co, taps, ci, C.ptr("int32_t", sel), sel.shape[0],
                                      c_begin, c_end, C.ptr("int32_t", grad_w), grad_scale,
                                      C.ptr("float", param_scale), lr, momentum, C.ptr("float", velocity),
                                      C.ptr("uint32_t", state)), "sgd_update_ohwi")
    return w, velocity, int(state[0])


def sgd_update_depthwise(w, grad_w, *, grad_scale, param_scale, lr, rng, momentum=0.0, velocity=None,
                         sel=None):
    """One QAS-scaled SGD step on depthwise weights w (kh, kw, C) for channels sel; grad_w (and
    velocity) (kh, kw, n_sel); param_scale (C,) by absolute channel. Returns (w, velocity, rng)."""
    w = C.array("w", w, np.int8, ndim=3)
    kh, kw, ch = w.shape
    sel = _sel(sel, ch, "channels")
    grad_w = C.array("grad_w", grad_w, np.int32, (kh, kw, sel.shape[0]))
    grad_scale, lr, momentum, param_scale, velocity, state = _update_args(
        grad_w.shape, grad_scale, lr, momentum, velocity, rng, ch, param_scale)
    w = w.copy()
    C.check(C.lib.tb_sgd_update_depthwise_s8(C.ptr("int8_t", w), kh * kw, ch, C.ptr("int32_t", sel), sel.shape[0],
                                           C.ptr("int32_t", grad_w), grad_scale, C.ptr("float", param_scale),
                                           lr, momentum, C.ptr("float", velocity), C.ptr("uint32_t", state)),
            "sgd_update_depthwise")
    return w, velocity, int(state[0])


def sgd_update_bias(b, grad_b, *, grad_scale, param_scale, lr, rng, momentum=0.0, velocity=None):
    """One QAS-scaled SGD step on int32 biases b (n,): grad_b, velocity, param_scale (n,), with
    param_scale = x_scale * s_w and grad_scale = 2**g_exp. Returns (b, velocity, rng)."""
    b = C.array("b", b, np.int32, ndim=1)
    n = b.shape[0]
    grad_b = C.array("grad_b", grad_b, np.int32, (n,))
    grad_scale, lr, momentum, param_scale, velocity, state = _update_args(
        grad_b.shape, grad_scale, lr, momentum, velocity, rng, n, param_scale)
    b = b.copy()
    C.check(C.lib.tb_sgd_update_bias_s32(C.ptr("int32_t", b), n, C.ptr("int32_t", grad_b), grad_scale,
                                       C.ptr("float", param_scale), lr, momentum, C.ptr("float", velocity),
                                       C.ptr("uint32_t", state)), "sgd_update_bias")
    return b, velocity, int(state[0])
