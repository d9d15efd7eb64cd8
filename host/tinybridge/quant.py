"""Quantization arithmetic shared by the compiler and the tests, computed exactly as TFLite does."""
import math

import numpy as np


def _round_half_away(x):
    return math.floor(abs(x) + 0.5) * (1 if x >= 0 else -1)


def quantize_multiplier(real):
    """A real multiplier as TFLite's (int32 multiplier in [2^30, 2^31), shift): real = m * 2^(shift-31)."""
    if real == 0.0:
        return 0, 0
    q, shift = math.frexp(real)
    q_fixed = _round_half_away(q * (1 << 31))
    if q_fixed == 1 << 31:
        q_fixed //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    if shift > 30:
        return (1 << 31) - 1, 30
    return int(q_fixed), shift


def conv_multipliers(input_scale, weight_scales, output_scale, float32=True):
    """Per-output-channel (mult, shift) arrays of an int8 conv, effective = s_in * s_w[c] / s_out
    in double: from the scales rounded to float32 as TFLite Micro prepares them, or (float32=False)
    from the scales exactly as given (the paper's models define theirs in double)."""
    cast = (lambda s: float(np.float32(s))) if float32 else float
    s_in, s_out = cast(input_scale), cast(output_scale)
    pairs = [quantize_multiplier(s_in * cast(s) / s_out) for s in np.atleast_1d(weight_scales)]
    return (np.array([m for m, _ in pairs], dtype=np.int32),
            np.array([s for _, s in pairs], dtype=np.int32))


def scale_multipliers(scales):
    """Scales themselves (e.g. weight scales for backward) in TFLite multiplier form."""
    pairs = [quantize_multiplier(float(np.float32(s))) for s in np.atleast_1d(scales)]
    return (np.array([m for m, _ in pairs], dtype=np.int32),
            np.array([s for _, s in pairs], dtype=np.int32))


def activation_range(activation, scale, zero_point):
    """[act_min, act_max] of an int8 output with a folded activation (None, "relu", "relu6"),
    as TFLite's CalculateActivationRangeQuantized computes it."""
    def q(v):  # float32 division, as TFLite computes it
        return zero_point + int(_round_half_away(float(np.float32(v) / np.float32(scale))))
    lo, hi = -128, 127
    if activation == "relu":
        lo = max(lo, q(0.0))
    elif activation == "relu6":
        lo, hi = max(lo, q(0.0)), min(hi, q(6.0))
    elif activation is not None:
        raise ValueError("unknown activation %r (expected None, 'relu' or 'relu6')" % (activation,))
    return lo, hi


def same_padding(in_size, kernel, stride):
    """(out_size, pad_before) of TFLite SAME padding."""
    out = (in_size + stride - 1) // stride
    pad = max(0, ((out - 1) * stride + kernel - in_size) // 2)
    return out, pad


def valid_padding(in_size, kernel, stride):
    """(out_size, 0) of TFLite VALID padding."""
    return (in_size - kernel + stride) // stride, 0


def conv_padding(in_size, kernel, stride, padding):
    """(out_size, pad_before) of a convolution: padding "same" or "valid" (TFLite), or an int p,
    p zeros before and after as PyTorch's Conv2d(padding=p) (its output size; the kernels leave
    out what lies beyond the input at the end)."""
    if padding == "same":
        return same_padding(in_size, kernel, stride)
    if padding == "valid":
        return valid_padding(in_size, kernel, stride)
    if isinstance(padding, (int, np.integer)) and not isinstance(padding, bool) and 0 <= padding < kernel:
        return (in_size + 2 * int(padding) - kernel) // stride + 1, int(padding)
    raise ValueError("padding must be 'same', 'valid' or an int in [0, kernel), got %r" % (padding,))


def add_multipliers(a_scale, b_scale, y_scale, left_shift=20):
    """TFLite int8 ADD requantization: ((m_a, s_a), (m_b, s_b), (m_y, s_y)) for the given scales."""
    a, b, y = (float(np.float32(s)) for s in (a_scale, b_scale, y_scale))
    twice_max = 2.0 * max(a, b)
    return (quantize_multiplier(a / twice_max), quantize_multiplier(b / twice_max),
            quantize_multiplier(twice_max / ((1 << left_shift) * y)))
