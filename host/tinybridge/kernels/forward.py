"""Forward int8 kernels (TFLite int8 semantics), numpy in, numpy out. `rounding` ("tflite" or
"single", graph.ROUNDINGS): how sums become int8 (tb_rounding, docs/kernels.md "Rounding")."""
import numpy as np

from . import _checks as C
from ._checks import ffi, lib

_ROUNDING_CODES = {"tflite": 0, "single": 1}   # tb_rounding


def _rounding(rounding):
    if rounding not in _ROUNDING_CODES:
        raise ValueError("rounding must be 'tflite' or 'single', got %r" % (rounding,))
    return _ROUNDING_CODES[rounding]


def conv_params(kernel=(1, 1), stride=(1, 1), pad=(0, 0), input_offset=0, output_offset=0,
                act_min=-128, act_max=127, rounding="tflite"):
    """A tb_conv_params struct. input_offset = -input zero point, output_offset = output zero point."""
    C.integer("input_offset", input_offset, -127, 128)
    C.integer("output_offset", output_offset, -128, 127)
    C.integer("act_min", act_min, -128, 127)
    C.integer("act_max", act_max, act_min, 127)
    p = ffi.new("tb_conv_params *")
    p.kernel_h, p.kernel_w = (C.integer("kernel", k, 1, 15) for k in kernel)
    p.stride_h, p.stride_w = (C.integer("stride", s, 1, 4) for s in stride)
    p.pad_top, p.pad_left = (C.integer("pad", q, 0, 7) for q in pad)
    p.input_offset, p.output_offset = input_offset, output_offset
    p.act_min, p.act_max = act_min, act_max
    p.rounding = _rounding(rounding)
    return p


def _requant_arrays(out_c, bias, mult, shift):
    if bias is not None:
        bias = C.array("bias", bias, np.int32, (out_c,))
    mult = C.array("mult", mult, np.int32, (out_c,))
    shift = C.array("shift", shift, np.int32, (out_c,))
    if (mult < 0).any() or (shift < -31).any() or (shift > 30).any():
        raise ValueError("mult must be >= 0 and shift in [-31, 30] (TFLite multiplier form)")
    return bias, mult, shift


def pointwise_conv(x, w, bias, mult, shift, *, input_offset, output_offset, act_min=-128, act_max=127,
                   rounding="tflite"):
    """1x1 convolution. x (H, W, Cin) int8, w (Cout, Cin) int8, bias (Cout,) int32 or None,
    mult/shift (Cout,) int32 per-channel requantization. Returns y (H, W, Cout) int8."""
    x = C.array("x", x, np.int8, ndim=3)
    h, wd, ci = x.shape
    w = C.array("w", w, np.int8, (None, ci))
    co = w.shape[0]
    bias, mult, shift = _requant_arrays(co, bias, mult, shift)
    p = conv_params(input_offset=input_offset, output_offset=output_offset, act_min=act_min, act_max=act_max,
                    rounding=rounding)
    y = np.empty((h, wd, co), np.int8)
    scratch = C.scratch(lib.tb_pointwise_conv_s8_scratch_bytes(ci, co))
    C.check(lib.tb_pointwise_conv_s8(p, C.shape(h, wd, ci), C.ptr("int8_t", x), C.shape(h, wd, co),
                                     C.ptr("int8_t", w), C.ptr("int32_t", bias), C.ptr("int32_t", mult),
                                     C.ptr("int32_t", shift), C.ptr("int8_t", y), scratch),
            "pointwise_conv")
    return y


def out_size(in_size, kernel, stride, padding):
    """Output size and leading pad of "same" or "valid" padding (TFLite) or an explicit int pad
    (PyTorch): quant.conv_padding."""
    from ..quant import conv_padding
    return conv_padding(in_size, kernel, stride, padding)


def conv2d(x, w, bias, mult, shift, *, stride=1, padding="same", input_offset, output_offset,
           act_min=-128, act_max=127, rounding="tflite"):
    """k x k convolution. x (H, W, Cin) int8, w (Cout, kh, kw, Cin) int8 (OHWI), bias (Cout,) int32
    or None, mult/shift (Cout,) int32. stride 1 or 2 (or more), padding "same", "valid" or an int (out_size)."""
    x = C.array("x", x, np.int8, ndim=3)
    h, wd, ci = x.shape
    w = C.array("w", w, np.int8, (None, None, None, ci))
    co, kh, kw, _ = w.shape
    C.integer("stride", stride, 1, 4)
    oh, pt = out_size(h, kh, stride, padding)
    ow, pl = out_size(wd, kw, stride, padding)
    if oh <= 0 or ow <= 0:
        raise ValueError("kernel %dx%d is larger than input %dx%d with valid padding" % (kh, kw, h, wd))
    bias, mult, shift = _requant_arrays(co, bias, mult, shift)
    p = conv_params((kh, kw), (stride, stride), (pt, pl), input_offset, output_offset, act_min, act_max, rounding)
    y = np.empty((oh, ow, co), np.int8)
    scratch = C.scratch(lib.tb_conv2d_s8_scratch_bytes(p, C.shape(h, wd, ci), co))
    C.check(lib.tb_conv2d_s8(p, C.shape(h, wd, ci), C.ptr("int8_t", x), C.shape(oh, ow, co),
                             C.ptr("int8_t", w), C.ptr("int32_t", bias), C.ptr("int32_t", mult),
                             C.ptr("int32_t", shift), C.ptr("int8_t", y), scratch), "conv2d")
    return y


def depthwise_conv2d(x, w, bias, mult, shift, *, stride=1, padding="same", input_offset,
                     output_offset, act_min=-128, act_max=127, rounding="tflite"):
    """Depthwise k x k convolution. x (H, W, C) int8, w (kh, kw, C) int8, bias (C,) int32 or None,
    mult/shift (C,) int32."""
    x = C.array("x", x, np.int8, ndim=3)
    h, wd, ch = x.shape
    w = C.array("w", w, np.int8, (None, None, ch))
    kh, kw, _ = w.shape
    C.integer("stride", stride, 1, 4)
    oh, pt = out_size(h, kh, stride, padding)
    ow, pl = out_size(wd, kw, stride, padding)
    if oh <= 0 or ow <= 0:
        raise ValueError("kernel %dx%d is larger than input %dx%d with valid padding" % (kh, kw, h, wd))
    bias, mult, shift = _requant_arrays(ch, bias, mult, shift)
    p = conv_params((kh, kw), (stride, stride), (pt, pl), input_offset, output_offset, act_min, act_max, rounding)
    y = np.empty((oh, ow, ch), np.int8)
    C.check(lib.tb_depthwise_conv2d_s8(p, C.shape(h, wd, ch), C.ptr("int8_t", x), C.shape(oh, ow, ch),
                                       C.ptr("int8_t", w), C.ptr("int32_t", bias), C.ptr("int32_t", mult),
                                       C.ptr("int32_t", shift), C.ptr("int8_t", y)), "depthwise_conv2d")
    return y


def fully_connected(x, w, bias, mult, shift, *, input_offset, output_offset, act_min=-128, act_max=127,
                    rounding="tflite"):
    """Fully connected. x (Cin,) int8, w (Cout, Cin) int8, bias (Cout,) int32 or None,
    mult/shift (1,) per-tensor or (Cout,) per-channel int32."""
    x = C.array("x", x, np.int8, ndim=1)
    w = C.array("w", w, np.int8, (None, x.shape[0]))
    co = w.shape[0]
    mult = C.array("mult", mult, np.int32, ndim=1)
    if mult.shape[0] not in (1, co):
        raise ValueError("mult must have shape (1,) or (%d,), got %s" % (co, mult.shape))
    _, mult, shift = _requant_arrays(mult.shape[0], None, mult, shift)
    if bias is not None:
        bias = C.array("bias", bias, np.int32, (co,))
    C.integer("act_min", act_min, -128, 127)
    C.integer("act_max", act_max, act_min, 127)
    C.integer("input_offset", input_offset, -127, 128)
    C.integer("output_offset", output_offset, -128, 127)
    y = np.empty((co,), np.int8)
    C.check(lib.tb_fully_connected_s8(x.shape[0], co, C.ptr("int8_t", x), input_offset, C.ptr("int8_t", w),
                                      C.ptr("int32_t", bias), C.ptr("int32_t", mult), C.ptr("int32_t", shift),
                                      mult.shape[0], output_offset, act_min, act_max, _rounding(rounding),
                                      C.ptr("int8_t", y)),
            "fully_connected")
    return y


def avgpool_global(x, *, act_min=-128, act_max=127, rounding="tflite"):
    """Global average pool. x (H, W, C) int8 -> (C,) int8, same quantization in and out; the mean
    rounds ties away from zero ("tflite") or to even ("single")."""
    x = C.array("x", x, np.int8, ndim=3)
    h, wd, ch = x.shape
    C.integer("act_min", act_min, -128, 127)
    C.integer("act_max", act_max, act_min, 127)
    y = np.empty((ch,), np.int8)
    C.check(lib.tb_avgpool_global_s8(C.shape(h, wd, ch), C.ptr("int8_t", x), act_min, act_max,
                                     _rounding(rounding), C.ptr("int8_t", y)), "avgpool_global")
    return y


def add_params(input1_offset, input1_multiplier, input1_shift, input2_offset, input2_multiplier,
               input2_shift, left_shift, output_offset, output_multiplier, output_shift,
               act_min=-128, act_max=127):
    """A tb_add_params struct (TFLite int8 ADD parameters)."""
    fields = dict(input1_offset=input1_offset, input1_multiplier=input1_multiplier,
                  input1_shift=input1_shift, input2_offset=input2_offset,
                  input2_multiplier=input2_multiplier, input2_shift=input2_shift,
                  left_shift=left_shift, output_offset=output_offset,
                  output_multiplier=output_multiplier, output_shift=output_shift,
                  act_min=act_min, act_max=act_max)
    p = ffi.new("tb_add_params *")
    for name, value in fields.items():
        setattr(p, name, C.integer(name, value, -(1 << 31), (1 << 31) - 1))
    return p


def add(a, b, params):
    """Residual add with requantization: a, b int8 of one shape; params from add_params()."""
    a = C.array("a", a, np.int8)
    b = C.array("b", b, np.int8, a.shape)
    y = np.empty(a.shape, np.int8)
    C.check(lib.tb_add_s8(params, C.ptr("int8_t", a), C.ptr("int8_t", b), a.size, C.ptr("int8_t", y)), "add")
    return y
