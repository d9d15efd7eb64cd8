"""Forward kernels are bit-exact with TensorFlow Lite Micro's reference kernels: random shapes,
random quantization parameters, every output byte compared."""
import numpy as np
import pytest

import tflm_oracle as tflm
from tinybridge import kernels, quant

SEEDS = range(12)
ACTS = [None, "relu", "relu6"]


def rand_quant(rng, relu_like=False):
    scale = float(np.float32(rng.uniform(0.005, 0.2)))
    zero = -128 if relu_like else int(rng.integers(-40, 40))
    return scale, zero


def output_quant(rng, x_scale, w_scales, taps, act):
    """An output scale that spreads the typical output over the int8 range (a calibrated model's
    scale), so that the comparison is not dominated by saturated values."""
    real_std = np.sqrt(taps) * 73.6 * 73.6 * x_scale * float(np.mean(w_scales))
    scale = float(np.float32(real_std * rng.uniform(2.0, 4.0) / 128))
    zero = -128 if act is not None and rng.random() < 0.5 else int(rng.integers(-20, 20))
    return scale, zero


def conv_case(rng, depthwise, kernel=None, stride=None, padding=None, ci=None):
    k = kernel or int(rng.choice([1, 3, 5, 7]))
    s = stride or int(rng.choice([1, 2]))
    pad = padding or str(rng.choice(["same", "valid"]))
    h = int(rng.integers(k, 14))
    w = int(rng.integers(k, 14))
    ci = ci or int(rng.integers(1, 20))
    co = ci if depthwise else int(rng.integers(1, 20))
    act = ACTS[int(rng.integers(0, 3))]
    x_q = rand_quant(rng)
    w_scales = rng.uniform(0.001, 0.05, co).astype(np.float32)
    y_q = output_quant(rng, x_q[0], w_scales, k * k * (1 if depthwise else ci), act)
    x = rng.integers(-128, 128, (h, w, ci), dtype=np.int8)
    wshape = (k, k, ci) if depthwise else (co, k, k, ci)
    wt = rng.integers(-127, 128, wshape, dtype=np.int8)
    bias = rng.integers(-3000, 3000, co, dtype=np.int32)
    return x, wt, bias, x_q, w_scales, y_q, s, pad, act


def kernel_args(x_q, w_scales, y_q, act):
    mult, shift = quant.conv_multipliers(x_q[0], w_scales, y_q[0])
    lo, hi = quant.activation_range(act, *y_q)
    return dict(mult=mult, shift=shift, input_offset=-x_q[1], output_offset=y_q[1], act_min=lo, act_max=hi)


@pytest.mark.parametrize("seed", SEEDS)
def test_conv2d_bitexact(seed):
    rng = np.random.default_rng(seed)
    x, w, bias, x_q, w_scales, y_q, s, pad, act = conv_case(rng, False)
    a = kernel_args(x_q, w_scales, y_q, act)
    got = kernels.conv2d(x, w, bias, a.pop("mult"), a.pop("shift"), stride=s, padding=pad, **a)
    want = tflm.conv2d(x, w, bias, x_q, w_scales, y_q, s, pad, act, got.shape[:2])
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("seed", range(3))
def test_conv2d_first_layer_rgb(seed, stride):
    """The network's first layer: 3x3 on 3 input channels, as in all three zoo models."""
    rng = np.random.default_rng(100 + seed)
    x, w, bias, x_q, w_scales, y_q, s, pad, act = conv_case(rng, False, kernel=3, stride=stride,
                                                            padding="same", ci=3)
    a = kernel_args(x_q, w_scales, y_q, act)
    got = kernels.conv2d(x, w, bias, a.pop("mult"), a.pop("shift"), stride=s, padding=pad, **a)
    np.testing.assert_array_equal(got, tflm.conv2d(x, w, bias, x_q, w_scales, y_q, s, pad, act, got.shape[:2]))


@pytest.mark.parametrize("kernel", [3, 5, 7])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("seed", range(3))
def test_depthwise_bitexact(seed, stride, kernel):
    rng = np.random.default_rng(1000 * kernel + 10 * stride + seed)
    x, w, bias, x_q, w_scales, y_q, s, pad, act = conv_case(rng, True, kernel=kernel, stride=stride)
    a = kernel_args(x_q, w_scales, y_q, act)
    got = kernels.depthwise_conv2d(x, w, bias, a.pop("mult"), a.pop("shift"), stride=s, padding=pad, **a)
    want = tflm.depthwise_conv2d(x, w, bias, x_q, w_scales, y_q, s, pad, act, got.shape[:2])
    np.testing.assert_array_equal(got, want)


# Planes beyond conv_case's (the DSP paths' bands): 3x3 rows of 13-24 and 25-48 input-pair slots
# (band rows moved up), tall narrow planes whose 5x5 / 7x7 inputs take several bands, odd rows,
# channels past the last group of four.
@pytest.mark.parametrize("shape,kernel,stride,padding", [
    ((40, 30, 6), 3, 1, "same"), ((37, 46, 5), 3, 1, "valid"), ((29, 64, 4), 3, 2, "same"),
    ((51, 34, 9), 3, 2, "valid"), ((60, 70, 4), 3, 1, "same"), ((100, 16, 5), 5, 2, "same"),
    ((90, 15, 4), 7, 2, "same"), ((70, 8, 6), 5, 1, "same"), ((4, 4, 8), 5, 1, "same"),
    ((64, 64, 24), 5, 2, "same"), ((9, 67, 5), 5, 2, "same"), ((8, 69, 4), 5, 2, "same"),
    ((9, 72, 8), 5, 1, "valid"),
])
def test_depthwise_bitexact_large_planes(shape, kernel, stride, padding):
    rng = np.random.default_rng(sum(shape) + 10 * kernel + stride)
    ci = shape[2]
    act = ACTS[int(rng.integers(0, 3))]
    x_q = rand_quant(rng)
    w_scales = rng.uniform(0.001, 0.05, ci).astype(np.float32)
    y_q = output_quant(rng, x_q[0], w_scales, kernel * kernel, act)
    x = rng.integers(-128, 128, shape, dtype=np.int8)
    w = rng.integers(-127, 128, (kernel, kernel, ci), dtype=np.int8)
    bias = rng.integers(-3000, 3000, ci, dtype=np.int32)
    a = kernel_args(x_q, w_scales, y_q, act)
    got = kernels.depthwise_conv2d(x, w, bias, a.pop("mult"), a.pop("shift"), stride=stride,
                                   padding=padding, **a)
    want = tflm.depthwise_conv2d(x, w, bias, x_q, w_scales, y_q, stride, padding, act, got.shape[:2])
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("seed", SEEDS)
def test_pointwise_bitexact(seed):
    rng = np.random.default_rng(200 + seed)
    x, w, bias, x_q, w_scales, y_q, _, _, act = conv_case(rng, False, kernel=1, stride=1, padding="same",
                                                          ci=int(rng.integers(1, 70)))
    a = kernel_args(x_q, w_scales, y_q, act)
    got = kernels.pointwise_conv(x, w[:, 0, 0, :], bias, a.pop("mult"), a.pop("shift"), **a)
    want = tflm.conv2d(x, w, bias, x_q, w_scales, y_q, 1, "same", act, x.shape[:2])
    np.testing.assert_array_equal(got, want)


def dead_channels(rng, w, w_scales, bias, fan_in, channel_axis, x_scale, y_scale):
    """Channels outside the DSP paths' fast requantization range (tb_dsp.h), like the zoo models'
    dead ones: all-zero weights with a tiny scale (shift -29) and a bias near 2^31, random weights
    with a tiny scale and a large bias, a bias alone past the range (these three have one output
    value whatever the input); and small weights with a multiplier over 0.5 (shift 0: outputs that
    vary). Each sum stays inside int32 (TFLite's accumulator)."""
    n = w_scales.size
    dead = rng.choice(n, size=min(4, n), replace=False)
    headroom = fan_in * 128 * 255
    weights = np.moveaxis(w, channel_axis, 0)
    kinds = [(0, 3.9e-9, 2 ** 31 - 1 - headroom), (None, 5e-8, 2 ** 30), (None, None, 2 ** 29),
             (2, 0.6 * y_scale / x_scale, 100)]
    for c, (weight, scale, b) in zip(dead, kinds):
        if weight is not None:
            weights[c] = rng.integers(-weight, weight + 1, weights[c].shape)
        if scale is not None:
            w_scales[c] = scale
        bias[c] = b * (1 if rng.random() < 0.5 else -1)
    return sorted(int(c) for c in dead)


@pytest.mark.parametrize("case", ["conv2d_rgb_3x3_s2", "conv2d_3x3_k72", "depthwise_3x3", "depthwise_5x5",
                                  "depthwise_7x7_s2", "pointwise_k8", "pointwise_k16", "pointwise_k96"])
def test_dead_channels_bitexact(case):
    """The DSP paths run such channels with stand-ins and recompute them by the plain path."""
    rng = np.random.default_rng(sum(map(ord, case)))
    kind = case.split("_")[0]
    act = ACTS[int(rng.integers(0, 3))]
    x_q = rand_quant(rng)
    if kind == "depthwise":
        k, s, ci = int(case[10]), 2 if case.endswith("s2") else 1, 22
        x = rng.integers(-128, 128, (9, 10, ci), dtype=np.int8)
        w = rng.integers(-127, 128, (k, k, ci), dtype=np.int8)
        co, fan_in, axis = ci, k * k, 2
    else:
        k, s = (3, 2 if case.endswith("s2") else 1) if kind == "conv2d" else (1, 1)
        ci = {"conv2d_rgb_3x3_s2": 3, "conv2d_3x3_k72": 8}.get(case) or int(case.split("_k")[1])
        x = rng.integers(-128, 128, (7, 9, ci), dtype=np.int8)
        co = 20
        w = rng.integers(-127, 128, (co, k, k, ci), dtype=np.int8)
        fan_in, axis = k * k * ci, 0
    w_scales = rng.uniform(0.001, 0.05, co).astype(np.float32)
    bias = rng.integers(-3000, 3000, co, dtype=np.int32)
    y_q = output_quant(rng, x_q[0], w_scales, fan_in, act)
    dead = dead_channels(rng, w, w_scales, bias, fan_in, axis, x_q[0], y_q[0])
    a = kernel_args(x_q, w_scales, y_q, act)
    mult, shift = a.pop("mult"), a.pop("shift")
    assert min(shift[c] for c in dead) < -22 and max(shift[c] for c in dead) >= 0
    if kind == "depthwise":
        got = kernels.depthwise_conv2d(x, w, bias, mult, shift, stride=s, padding="same", **a)
        want = tflm.depthwise_conv2d(x, w, bias, x_q, w_scales, y_q, s, "same", act, got.shape[:2])
    elif kind == "conv2d":
        got = kernels.conv2d(x, w, bias, mult, shift, stride=s, padding="same", **a)
        want = tflm.conv2d(x, w, bias, x_q, w_scales, y_q, s, "same", act, got.shape[:2])
    else:
        got = kernels.pointwise_conv(x, w[:, 0, 0, :], bias, mult, shift, **a)
        want = tflm.conv2d(x, w, bias, x_q, w_scales, y_q, 1, "same", act, x.shape[:2])
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("seed", range(6))
def test_fully_connected_bitexact(seed, per_channel):
    rng = np.random.default_rng(300 + seed)
    ci, co = int(rng.integers(1, 200)), int(rng.integers(1, 40))
    act = ACTS[seed % 3]
    x_q = rand_quant(rng)
    w_scales = rng.uniform(0.001, 0.05, co if per_channel else 1).astype(np.float32)
    y_q = output_quant(rng, x_q[0], w_scales, ci, act)
    x = rng.integers(-128, 128, ci, dtype=np.int8)
    w = rng.integers(-127, 128, (co, ci), dtype=np.int8)
    bias = rng.integers(-3000, 3000, co, dtype=np.int32)
    a = kernel_args(x_q, w_scales, y_q, act)
    got = kernels.fully_connected(x, w, bias, a.pop("mult"), a.pop("shift"), **a)
    np.testing.assert_array_equal(got, tflm.fully_connected(x, w, bias, x_q, w_scales, y_q, act))


@pytest.mark.parametrize("seed", SEEDS)
def test_avgpool_global_bitexact(seed):
    rng = np.random.default_rng(400 + seed)
    h, w, c = (int(v) for v in rng.integers(1, 17, 3))
    act = ACTS[seed % 3]
    x_q = rand_quant(rng)
    x = rng.integers(-128, 128, (h, w, c), dtype=np.int8)
    lo, hi = quant.activation_range(act, *x_q)
    np.testing.assert_array_equal(kernels.avgpool_global(x, act_min=lo, act_max=hi),
                                  tflm.avgpool_global(x, x_q, act))


def check_add(rng, shape, a_q, b_q, y_q, act):
    """One add against TFLite Micro; returns the three shifts of its parameters."""
    a = rng.integers(-128, 128, shape, dtype=np.int8)
    b = rng.integers(-128, 128, shape, dtype=np.int8)
    (ma, sa), (mb, sb), (my, sy) = quant.add_multipliers(a_q[0], b_q[0], y_q[0])
    lo, hi = quant.activation_range(act, *y_q)
    params = kernels.add_params(-a_q[1], ma, sa, -b_q[1], mb, sb, 20, y_q[1], my, sy, lo, hi)
    np.testing.assert_array_equal(kernels.add(a, b, params), tflm.add(a, b, a_q, b_q, y_q, act))
    return sa, sb, sy


@pytest.mark.parametrize("seed", SEEDS)
def test_add_bitexact(seed):
    rng = np.random.default_rng(500 + seed)
    shape = tuple(int(v) for v in rng.integers(1, 12, 3))
    check_add(rng, shape, rand_quant(rng), rand_quant(rng), rand_quant(rng), ACTS[seed % 3])


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 7, 8, 9, 4099])
def test_add_bitexact_sizes(n):
    """Sizes around the DSP path's four outputs a loop (and the tail after them)."""
    rng = np.random.default_rng(520 + n)
    check_add(rng, (1, 1, n), rand_quant(rng), rand_quant(rng), rand_quant(rng), None)


# (a, b, y quantization, activation, the shifts TFLite's ADD gets): the DSP path's edges
# (docs/kernels.md, "Residual add") and the parameters just past them (plain path)
ADD_EDGES = {
    "equal scales, every zero point -128": ((0.1, -128), (0.1, -128), (0.2, -128), None, (0, 0, -19)),
    "every zero point 127": ((0.1, 127), (0.05, 127), (0.1, 127), "relu", (0, -1, -18)),
    "second input the larger": ((0.01, 5), (0.2, -9), (0.3, 3), None, (-5, 0, -19)),
    "other multiplier just below 1/2": ((0.1, 3), (0.1 * (1 - 2 ** -20), -3), (0.1, 0), None, (0, -1, -18)),
    "other shift -30": ((0.2, 0), (0.2 * 2 ** -29.5, 4), (0.2, 0), None, (0, -30, -18)),
    "other shift -31 (plain)": ((0.2, 0), (0.2 * 2 ** -30.5, 4), (0.2, 0), None, (0, -31, -18)),
    "output shift -23": ((0.01, 7), (0.2, -7), (4.8, 0), None, (-5, 0, -23)),
    "output shift -24 (plain)": ((0.01, 7), (0.2, -7), (9.6, 0), None, (-5, 0, -24)),
    "output shift -1": ((0.2, 0), (0.01, 0), (0.4 / (2 ** 20 * 0.35), 0), "relu6", (0, -5, -1)),
    "output shift 0 (plain)": ((0.2, 0), (0.01, 0), (0.4 / (2 ** 20 * 0.6), 0), None, (0, -5, 0)),
}


@pytest.mark.parametrize("case", list(ADD_EDGES))
def test_add_bitexact_edges(case):
    a_q, b_q, y_q, act, shifts = ADD_EDGES[case]
    rng = np.random.default_rng(540 + list(ADD_EDGES).index(case))
    assert check_add(rng, (3, 5, 7), a_q, b_q, y_q, act) == shifts


def test_bad_arguments_are_value_errors():
    x = np.zeros((4, 4, 3), np.int8)
    w = np.zeros((2, 3), np.int8)
    m, s = np.full(2, 1 << 30, np.int32), np.zeros(2, np.int32)
    with pytest.raises(ValueError, match="dtype int8"):
        kernels.pointwise_conv(x.astype(np.float32), w, None, m, s, input_offset=0, output_offset=0)
    with pytest.raises(ValueError, match="shape"):
        kernels.pointwise_conv(x, np.zeros((2, 5), np.int8), None, m, s, input_offset=0, output_offset=0)
    with pytest.raises(ValueError, match="larger than input"):
        kernels.conv2d(x, np.zeros((2, 7, 7, 3), np.int8), None, m, s, padding="valid",
                       input_offset=0, output_offset=0)
    with pytest.raises(ValueError, match="act_max"):
        kernels.pointwise_conv(x, w, None, m, s, input_offset=0, output_offset=0, act_min=10, act_max=5)


def tflite_requantize(x, mult, shift):
    """TFLite's MultiplyByQuantizedMultiplier written out on int64 arrays (the oracle for
    parameters that TFLite's Prepare never makes)."""
    x = x * (1 << max(shift, 0))
    ab = x * mult
    num = ab + np.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    high = np.sign(num) * (np.abs(num) // (1 << 31))   # truncating division, as gemmlowp
    right = max(-shift, 0)
    mask = (1 << right) - 1
    return (high >> right) + ((high & mask) > (mask >> 1) + (high < 0))


# (input1 offset, mult, shift, input2 offset, mult, shift, left_shift, output offset, mult, shift):
# the DSP path's other edges, and parameters past them (plain path)
ADD_HAND_MADE = {
    "other shift 0, multiplier below 2^30": (5, 1 << 30, 0, -7, 777777777, 0, 20, 3, 1234567890, -19),
    "other shift 0, multiplier 2^30 + 1 (plain)": (5, 1 << 30, 0, -7, (1 << 30) + 1, 0, 20, 3, 1234567890, -19),
    "other multiplier 0": (128, 0, -3, -128, 1 << 30, 0, 20, -128, 1500000000, -20),
    "output multiplier 0": (1, 1 << 30, 0, 2, 1 << 29, -2, 20, 100, 0, -5),
    "no input at 1/2 (plain)": (9, 1 << 30, -1, 9, (1 << 30) + 1, 0, 20, 0, 1 << 30, -18),
    "left shift 19 (plain)": (9, 1 << 30, 0, 9, 1 << 30, -1, 19, 0, 1 << 30, -17),
    "offset 129 (plain)": (129, 1 << 30, 0, 0, 1 << 30, -1, 20, 0, 1 << 30, -18),
    "output offset 129 (plain)": (0, 1 << 30, 0, 0, 1 << 30, -1, 20, 129, 1 << 30, -18),
    "negative output multiplier (plain)": (0, 1 << 30, 0, 0, 1 << 30, -1, 20, 0, -(1 << 30), -18),
}


@pytest.mark.parametrize("case", list(ADD_HAND_MADE))
def test_add_hand_made_parameters_match_tflite_arithmetic(case):
    p = ADD_HAND_MADE[case]
    rng = np.random.default_rng(560 + list(ADD_HAND_MADE).index(case))
    a = rng.integers(-128, 128, 1031, dtype=np.int8)
    b = rng.integers(-128, 128, 1031, dtype=np.int8)
    ra = tflite_requantize((a.astype(np.int64) + p[0]) << p[6], p[1], p[2])
    rb = tflite_requantize((b.astype(np.int64) + p[3]) << p[6], p[4], p[5])
    want = np.clip(tflite_requantize(ra + rb, p[8], p[9]) + p[7], -128, 127).astype(np.int8)
    np.testing.assert_array_equal(kernels.add(a, b, kernels.add_params(*p)), want)


@pytest.mark.parametrize("mult,shift", [(3 << 10, 0), (3 << 11, -1), (5 << 12, -2)])
def test_add_other_term_ties(mult, shift):
    """The smaller input's term v * mult * 2^(shift - 11) lies at a rounding tie for every odd v;
    with the larger input's term at 0 and an output of a quarter of the sum, each tie decides an
    output (random data would reach one in ~2^19)."""
    a = np.repeat(np.array([-1, 0, 1], np.int8), 256)
    b = np.tile(np.arange(-128, 128).astype(np.int8), 3)
    p = (0, 1 << 30, 0, 0, mult, shift, 20, 0, 1 << 30, -1)
    ra = tflite_requantize(a.astype(np.int64) << 20, p[1], p[2])
    rb = tflite_requantize(b.astype(np.int64) << 20, mult, shift)
    assert np.all(np.abs(rb[256:512]) < 512)
    want = np.clip(tflite_requantize(ra + rb, p[8], p[9]), -128, 127).astype(np.int8)
    np.testing.assert_array_equal(kernels.add(a, b, kernels.add_params(*p)), want)
