"""The memory planner's overlaps are safe (docs/compiler.md, "Planner"), proved with the real kernels
(these calls are also replayed on the Cortex-M7, DSP paths included: tests/test_target_qemu.py). The
executor with and without them: tests/test_planner.py."""
import numpy as np
import pytest

from tinybridge import graph, kernels, plan, quant, simulate
from tinybridge.kernels import _checks as C
from tinybridge.model import Model

rng = np.random.default_rng(7)


def small_graph():
    """conv 3x3/2 (explicit pad 1 on an even input) -> depthwise 3x3 -> pointwise expand ->
    depthwise 5x5/2 -> pointwise project, on 16x16x3."""
    b = graph.Builder(rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8))
    t = b.conv2d(b.input, rng.normal(0, 0.3, (8, 3, 3, 3)), stride=2, padding=1, activation="relu6", name="conv")
    t = b.depthwise(t, rng.normal(0, 0.3, (3, 3, 8)), activation="relu6", name="dw")
    t = b.pointwise(t, rng.normal(0, 0.3, (24, 8)), activation="relu6", name="expand")
    t = b.depthwise(t, rng.normal(0, 0.3, (5, 5, 24)), stride=2, activation="relu6", name="dw2")
    t = b.pointwise(t, rng.normal(0, 0.3, (8, 24)), name="project")
    t = b.avgpool(t, name="pool")
    return b.build(b.fully_connected(t, rng.normal(0, 0.3, (2, 8)), name="fc")), b


def run_rows(g, op, x, arena, x_at, y_at, rows):
    """Op's output computed one output row at a time (plan.window), input at arena[x_at:], output
    at arena[y_at:] (they may overlap), `rows` in order; the whole output, as numpy."""
    xt, yt = g.tensors[op.inputs[0]], g.tensors[op.output]
    ib, ob = plan.row_bytes(xt), plan.row_bytes(yt)
    arena[x_at:x_at + xt.size] = x.reshape(-1).view(np.uint8)
    _, _, pad_top, pad_left = g.out_geometry(op) if op.kind != "pointwise" else (0, 0, 0, 0)
    mult, shift = g.requant(op)
    for r in rows:
        a, b = plan.window(g, op, r)
        p = kernels.conv_params(op.kernel, (op.stride, op.stride), (a - (r * op.stride - pad_top), pad_left),
                                -xt.zero_point, yt.zero_point, op.act_min, op.act_max)
        xs = arena[x_at + a * ib:x_at + b * ib].view(np.int8)
        ys = arena[y_at + r * ob:y_at + (r + 1) * ob].view(np.int8)
        args = (p, C.shape(b - a, *xt.shape[1:]), C.ptr("int8_t", xs), C.shape(1, *yt.shape[1:]),
                C.ptr("int8_t", op.weights), C.ptr("int32_t", op.bias), C.ptr("int32_t", mult),
                C.ptr("int32_t", shift), C.ptr("int8_t", ys))
        if op.kind == "conv2d":
            scratch = C.scratch(C.lib.tb_conv2d_s8_scratch_bytes(p, C.shape(b - a, *xt.shape[1:]), yt.shape[2]))
            C.check(C.lib.tb_conv2d_s8(*args, scratch), "conv2d")
        elif op.kind == "depthwise":
            C.check(C.lib.tb_depthwise_conv2d_s8(*args), "depthwise")
        else:
            C.check(C.lib.tb_pointwise_conv_s8(*args, C.scratch(C.lib.tb_pointwise_conv_s8_scratch_bytes(xt.shape[2], yt.shape[2]))),
                    "pointwise")
    return arena[y_at:y_at + yt.size].view(np.int8).reshape(yt.shape).copy()


@pytest.mark.parametrize("name", ["conv", "dw", "expand", "dw2", "project"])
def test_an_output_over_its_input_by_rows_equals_the_whole_op(name):
    """The row rule (plan.inplace_shift): the output starting `down` bytes below its input, rows
    top-down, gives the op's output exactly (the loader rejects anything closer:
    tests/test_planner.py)."""
    g, _ = small_graph()
    op = g.op(name)
    x = rng.integers(-128, 128, g.tensors[op.inputs[0]].shape, dtype=np.int8)
    whole = simulate.Simulator(Model(g))._forward_op(op, {op.inputs[0]: x})
    down = plan.inplace_shift(g, op, {})
    size = g.tensors[op.inputs[0]].size + g.tensors[op.output].size + down + 64
    rows = range(g.tensors[op.output].shape[0])
    base = down + 32
    assert 0 < down < g.tensors[op.output].size
    assert np.array_equal(run_rows(g, op, x, np.zeros(size, np.uint8), base, base - down, rows), whole)


@pytest.mark.not_replayed
def test_without_the_shift_an_expansion_overwrites_what_it_reads():
    g, _ = small_graph()
    op = g.op("expand")
    x = rng.integers(-128, 128, g.tensors[op.inputs[0]].shape, dtype=np.int8)
    whole = simulate.Simulator(Model(g))._forward_op(op, {op.inputs[0]: x})
    rows = range(g.tensors[op.output].shape[0])
    got = run_rows(g, op, x, np.zeros(g.tensors[op.output].size + 64, np.uint8), 0, 0, rows)
    assert not np.array_equal(got, whole)


@pytest.mark.parametrize("n", [4096, 4099])
def test_add_writes_over_either_input(n):
    """b is the input at 1/2 (the DSP path's "l"), a the other: each written over in turn."""
    a = rng.integers(-128, 128, n, dtype=np.int8)
    b = rng.integers(-128, 128, n, dtype=np.int8)
    p = kernels.add_params(3, 1 << 30, -1, -5, 1 << 30, 0, 20, 2, 1 << 30, -19, -100, 120)
    want = kernels.add(a, b, p)
    for k in range(2):
        x, y = a.copy(), b.copy()
        out = (x, y)[k]
        C.check(C.lib.tb_add_s8(p, C.ptr("int8_t", x), C.ptr("int8_t", y), x.size, C.ptr("int8_t", out)), "add")
        assert np.array_equal(out, want)


def test_an_input_gradient_requantizes_into_its_accumulator():
    acc = rng.integers(-(1 << 20), 1 << 20, 3000).astype(np.int32)
    want, e = kernels.grad_requantize(acc, -9)
    buf = acc.copy()
    got = C.lib.tb_grad_requantize_s32_s8(C.ptr("int32_t", buf), buf.size, -9, C.ptr("int8_t", buf.view(np.int8)))
    assert got == e and np.array_equal(buf.view(np.int8)[:acc.size], want)


@pytest.mark.parametrize("name", ["conv", "dw", "expand", "project"])
def test_an_input_gradient_by_channel_chunks_equals_the_whole(name):
    """What the executor does for a chunked input gradient (device/exec.c, chunked_input_grad): the
    sums of a few input channels at a time from their weights (and, depthwise, their part of h),
    masked, then requantized with one more element, the whole tensor's largest magnitude."""
    g, _ = small_graph()
    op = g.op(name)
    xt, yt = g.tensors[op.inputs[0]], g.tensors[op.output]
    h = rng.integers(-127, 128, yt.shape, dtype=np.int8)
    mask = rng.integers(0, 256, (xt.size + 7) // 8, dtype=np.uint8)
    geometry = dict(stride=op.stride, padding=op.padding)

    def sums(hh, w):
        if op.kind == "conv2d":
            return kernels.conv2d_input_grad(hh, w, in_hw=xt.shape[:2], **geometry)
        if op.kind == "depthwise":
            return kernels.depthwise_input_grad(hh, w, in_hw=xt.shape[:2], **geometry)
        return kernels.pointwise_input_grad(hh, w)

    whole = kernels.apply_mask(sums(h, op.weights), mask)
    want, want_e = kernels.grad_requantize(whole, -11)
    c, k = xt.shape[2], 3
    bits = np.unpackbits(mask, bitorder="little")[:xt.size].reshape(xt.shape)
    chunks = []
    for c0 in range(0, c, k):
        cs = slice(c0, min(c, c0 + k))
        hh = np.ascontiguousarray(h[..., cs]) if op.kind == "depthwise" else h
        chunks.append(np.where(bits[..., cs] == 1, sums(hh, np.ascontiguousarray(op.weights[..., cs])), 0))
    largest = max(int(np.abs(ch).max()) for ch in chunks)
    got = np.zeros(xt.shape, np.int8)
    for c0, ch in zip(range(0, c, k), chunks):
        q, e = kernels.grad_requantize(np.append(ch.reshape(-1), np.int32(largest)), -11)
        got[..., c0:c0 + ch.shape[-1]] = q[:-1].reshape(ch.shape)
        assert e == want_e
    assert np.array_equal(got, want)


@pytest.mark.parametrize("name", ["expand", "project"])
@pytest.mark.parametrize("positions", [1, 3, 7])
def test_an_output_gradient_scaled_by_positions_equals_the_whole(name, positions):
    """What the executor does for an output gradient scaled a few positions at a time (device/exec.c,
    scaled_rows): the rows of a chunk followed by the largest |g| of each channel over the whole
    tensor, scaled together, give the whole tensor's exponent and scaled rows; the input gradient
    of those rows is the whole one's."""
    g, _ = small_graph()
    op = g.op(name)
    y = g.tensors[op.output]
    # magnitudes that vary by position, so that a chunk's own maxima would give other exponents
    n_pos = y.size // y.shape[2]
    gy = np.round(rng.uniform(-127, 127, (n_pos, y.shape[2])) * rng.uniform(0, 1, (n_pos, 1)) ** 3).astype(np.int8)
    gy[rng.random(gy.shape) < 0.3] = 0
    gy[:, 2] = 0                                    # a channel without gradient
    mult, shift = quant.scale_multipliers(op.weight_scales)
    whole, whole_e = kernels.grad_scale_channels(gy, -13, mult, shift)
    acc = kernels.pointwise_input_grad(whole, op.weights)
    largest = np.abs(gy.astype(np.int16)).max(axis=0).astype(np.int8)
    alone = set()      # the exponents of the chunks scaled without the largest row
    for p0 in range(0, len(gy), positions):
        rows = gy[p0:p0 + positions]
        h, e = kernels.grad_scale_channels(np.vstack([rows, largest]), -13, mult, shift)
        assert e == whole_e
        assert np.array_equal(h[:-1], whole[p0:p0 + positions])
        assert np.array_equal(kernels.pointwise_input_grad(h[:-1], op.weights), acc[p0:p0 + positions])
        alone.add(kernels.grad_scale_channels(rows, -13, mult, shift)[1])
    assert alone - {whole_e}


def test_sliced_weights_give_the_whole_input_gradient():
    """Sliced weights (device/exec.c, weighted_input_grad): the sums from the blob's weights, with
    the trained channels' sums from the params region's slice put in their place."""
    g, _ = small_graph()
    op = g.op("project")
    frozen = op.weights
    sel = np.array([1, 4, 5, 17], np.int32)
    trained = frozen.copy()
    trained[:, sel] = rng.integers(-127, 128, (frozen.shape[0], sel.size), dtype=np.int8)
    h = rng.integers(-127, 128, g.tensors[op.output].shape, dtype=np.int8)
    acc = kernels.pointwise_input_grad(h, frozen)
    acc[..., sel] = kernels.pointwise_input_grad(h, np.ascontiguousarray(trained[:, sel]))
    assert np.array_equal(acc, kernels.pointwise_input_grad(h, trained))
