"""The forward kernels' single rounding (rounding="single", tb_rounding TB_ROUND_SINGLE): each output
is its exact value acc * mult * 2^(shift - 31) rounded once, ties up, and the average pool's mean
rounded half to even. Checked against float64 arithmetic written here from that definition (numpy's
own rounding for the pool); TFLite's double rounding stays what test_forward_tflm.py checks against
TFLite Micro. These calls are replayed on the Cortex-M7 too (test_target_qemu.py), DSP paths
included."""
import numpy as np
import pytest

from tinybridge import kernels, quant

RNG = np.random.default_rng(20261207)
# Values this close to a rounding tie may round either way in float64: excluded (and counted).
NEAR_TIE = 1e-6


def multipliers(n, lo=1e-4, hi=0.45):
    reals = np.exp(RNG.uniform(np.log(lo), np.log(hi), n))
    pairs = [quant.quantize_multiplier(float(r)) for r in reals]
    return np.array([m for m, _ in pairs], np.int32), np.array([s for _, s in pairs], np.int32)


def expected(acc, mult, shift, out_off, act_min=-128, act_max=127):
    """(int8 outputs, mask of values not within NEAR_TIE of a tie) of the definition in float64."""
    real = acc.astype(np.float64) * (mult.astype(np.float64) * np.exp2(shift.astype(np.float64) - 31))
    frac = real - np.floor(real)
    y = np.clip(np.floor(real + 0.5) + out_off, act_min, act_max).astype(np.int8)
    return y, np.abs(frac - 0.5) > NEAR_TIE


def windows(x, kh, kw, stride, pad_top, pad_left, oh, ow, in_off):
    """(oh, ow, kh, kw, C) patches of x + in_off, zero outside the input."""
    h, w, c = x.shape
    xp = np.zeros((h + kh + stride * oh, w + kw + stride * ow, c), np.int64)
    xp[pad_top:pad_top + h, pad_left:pad_left + w] = x.astype(np.int64) + in_off
    out = np.empty((oh, ow, kh, kw, c), np.int64)
    for i in range(kh):
        for j in range(kw):
            out[:, :, i, j] = xp[i:i + stride * oh:stride, j:j + stride * ow:stride][:oh, :ow]
    return out


def check(got, want, exact):
    assert got.shape == want.shape
    assert np.array_equal(got[exact], want[exact]), np.argwhere((got != want) & exact)[:5]
    assert exact.mean() > 0.999      # near ties are rare: the comparison covers the outputs


def tensors(h, w, ci, co):
    x = RNG.integers(-128, 128, (h, w, ci), dtype=np.int8)
    bias = RNG.integers(-3000, 3000, co).astype(np.int32)
    return x, bias


@pytest.mark.parametrize("ci, co, hw", [(8, 16, 6), (16, 24, 5), (24, 40, 4), (48, 8, 3), (96, 12, 3),
                                        (20, 7, 3), (3, 5, 2)])
def test_pointwise_single_rounding(ci, co, hw):
    x, bias = tensors(hw, hw, ci, co)
    w = RNG.integers(-128, 128, (co, ci), dtype=np.int8)
    mult, shift = multipliers(co)
    q = dict(input_offset=5, output_offset=-7)
    got = kernels.pointwise_conv(x, w, bias, mult, shift, rounding="single", **q)
    acc = (x.astype(np.int64) + 5) @ w.T.astype(np.int64) + bias
    want, exact = expected(acc, mult, shift, -7)
    check(got, want, exact)
    tflite = kernels.pointwise_conv(x, w, bias, mult, shift, **q)
    assert np.abs(tflite.astype(int) - got).max() <= 1


# 3x3: one and two output rows a pass, narrow and wide bands; 5x5, 7x7: bands and small planes
@pytest.mark.parametrize("k, stride, hw, ch", [(3, 1, 9, 8), (3, 2, 10, 12), (3, 1, 6, 6), (3, 2, 16, 8),
                                               (3, 1, 40, 4), (3, 2, 48, 4), (5, 1, 8, 16), (5, 2, 11, 8),
                                               (5, 1, 20, 4), (7, 1, 9, 8), (7, 2, 14, 4), (7, 1, 24, 4)])
def test_depthwise_single_rounding(k, stride, hw, ch):
    x, bias = tensors(hw, hw, ch, ch)
    w = RNG.integers(-128, 128, (k, k, ch), dtype=np.int8)
    mult, shift = multipliers(ch)
    oh, pad = quant.conv_padding(hw, k, stride, k // 2)
    got = kernels.depthwise_conv2d(x, w, bias, mult, shift, stride=stride, padding=k // 2, input_offset=128,
                                   output_offset=-128, act_min=-128, act_max=100, rounding="single")
    patches = windows(x, k, k, stride, pad, pad, oh, oh, 128)
    acc = (patches * w.astype(np.int64)).sum(axis=(2, 3)) + bias
    want, exact = expected(acc, mult, shift, -128, act_max=100)
    check(got, want, exact)


@pytest.mark.parametrize("k, stride, hw, ci, co", [(3, 2, 16, 3, 16), (3, 1, 7, 8, 12), (5, 1, 6, 4, 6),
                                                   (3, 2, 9, 16, 8)])
def test_conv2d_single_rounding(k, stride, hw, ci, co):
    x, bias = tensors(hw, hw, ci, co)
    w = RNG.integers(-128, 128, (co, k, k, ci), dtype=np.int8)
    mult, shift = multipliers(co, hi=0.05)
    oh, pad = quant.conv_padding(hw, k, stride, k // 2)
    got = kernels.conv2d(x, w, bias, mult, shift, stride=stride, padding=k // 2, input_offset=0, output_offset=3,
                         rounding="single")
    patches = windows(x, k, k, stride, pad, pad, oh, oh, 0)
    acc = np.einsum("yxijc,oijc->yxo", patches, w.astype(np.int64)) + bias
    want, exact = expected(acc, mult, shift, 3)
    check(got, want, exact)


@pytest.mark.parametrize("ci, co", [(160, 1000), (96, 10), (12, 3), (13, 2)])
def test_fully_connected_single_rounding(ci, co):
    x = RNG.integers(-128, 128, ci, dtype=np.int8)
    w = RNG.integers(-128, 128, (co, ci), dtype=np.int8)
    bias = RNG.integers(-3000, 3000, co).astype(np.int32)
    mult, shift = multipliers(co)
    got = kernels.fully_connected(x, w, bias, mult, shift, input_offset=-3, output_offset=0, rounding="single")
    acc = w.astype(np.int64) @ (x.astype(np.int64) - 3) + bias
    want, exact = expected(acc, mult, shift, 0)
    check(got, want, exact)


def test_single_rounding_differs_from_tflite_where_tflite_rounds_twice():
    """TFLite's two roundings move about 2^-(e+1) of the outputs (e = -shift) one unit; single
    rounding does not: on sums that land just below a half after the first rounding, the two
    differ, and single rounding is the definition's."""
    ci, co, n = 64, 16, 40
    x = RNG.integers(-3, 4, (n, 1, ci), dtype=np.int8)           # small sums: nothing saturates
    w = RNG.integers(-3, 4, (co, ci), dtype=np.int8)
    mult, shift = multipliers(co, lo=0.2, hi=0.45)        # e = 2: double rounding errs often
    single = kernels.pointwise_conv(x, w, None, mult, shift, input_offset=0, output_offset=0, rounding="single")
    tflite = kernels.pointwise_conv(x, w, None, mult, shift, input_offset=0, output_offset=0)
    acc = x.astype(np.int64) @ w.T.astype(np.int64)
    want, exact = expected(acc, mult, shift, 0)
    check(single, want, exact)
    assert (tflite != single).sum() > 5 and np.abs(tflite.astype(int) - single).max() == 1


@pytest.mark.parametrize("hw", [4, 7, 2])
def test_avgpool_single_rounding_is_half_to_even(hw):
    x = RNG.integers(-128, 128, (hw, hw, 64), dtype=np.int8)   # ties: 1 in hw*hw/2 channels or so
    got = kernels.avgpool_global(x, rounding="single")
    mean = x.astype(np.float64).sum(axis=(0, 1)) / (hw * hw)
    assert np.array_equal(got, np.round(mean).astype(np.int8))
    tflite = kernels.avgpool_global(x)
    away = (np.sign(mean) * np.floor(np.abs(mean) + 0.5)).astype(np.int8)
    assert np.array_equal(tflite, away)


def test_avgpool_ties():
    """Means exactly halfway: to even (single), away from zero (TFLite)."""
    x = np.zeros((2, 2, 4), np.int8)
    x[0, 0] = [2, 6, -2, -6]                       # means 0.5, 1.5, -0.5, -1.5
    assert kernels.avgpool_global(x, rounding="single").tolist() == [0, 2, 0, -2]
    assert kernels.avgpool_global(x).tolist() == [1, 2, -1, -2]


def test_rounding_must_be_known():
    with pytest.raises(ValueError, match="rounding"):
        kernels.avgpool_global(np.zeros((2, 2, 1), np.int8), rounding="nearest")


@pytest.mark.parametrize("kind, k, ci", [("pointwise", 1, 16), ("pointwise", 1, 96), ("conv2d", 3, 3),
                                         ("depthwise", 3, 8), ("depthwise", 5, 8)])
def test_single_rounding_with_channels_outside_the_fast_range(kind, k, ci):
    """Channels the DSP requantization cannot take (a tiny multiplier with shift -29, a bias past
    2^29, a shift >= 0): the DSP paths' stand-ins, constant fill and plain recompute, rounding
    once (checked here against the definition; on the Cortex-M7 by the replay)."""
    hw = 6
    co = ci if kind == "depthwise" else 12
    x = RNG.integers(-8, 8, (hw, hw, ci), dtype=np.int8)
    bias = RNG.integers(-300, 300, co).astype(np.int32)
    mult, shift = multipliers(co, lo=0.002, hi=0.05)
    mult[0], shift[0] = 1 << 30, -29                    # dead: every output the same
    bias[1] = -(1 << 30)                                # dead: saturated at -128
    mult[2], shift[2], bias[2] = (1 << 30) + 12345, 0, 0  # M ~ 1/2 (shift >= 0): varies, plain path
    q = dict(input_offset=0, output_offset=-5, rounding="single")
    if kind == "pointwise":
        w = RNG.integers(-8, 8, (co, ci), dtype=np.int8)
        got = kernels.pointwise_conv(x, w, bias, mult, shift, **q)
        acc = x.astype(np.int64) @ w.T.astype(np.int64) + bias
    elif kind == "conv2d":
        w = RNG.integers(-8, 8, (co, k, k, ci), dtype=np.int8)
        got = kernels.conv2d(x, w, bias, mult, shift, stride=1, padding=1, **q)
        acc = np.einsum("yxijc,oijc->yxo", windows(x, k, k, 1, 1, 1, hw, hw, 0), w.astype(np.int64)) + bias
    else:
        w = RNG.integers(-8, 8, (k, k, ci), dtype=np.int8)
        got = kernels.depthwise_conv2d(x, w, bias, mult, shift, stride=1, padding=k // 2, **q)
        acc = (windows(x, k, k, 1, k // 2, k // 2, hw, hw, 0) * w.astype(np.int64)).sum(axis=(2, 3)) + bias
    want, exact = expected(acc, mult, shift, -5)
    check(got, want, exact)
    assert len(np.unique(got[..., 2])) > 1 and (got[..., 1] == -128).all()
