"""tinybridge.frontends.tflite: multi-op int8 .tflite models written with tflite_micro's model
editor, loaded by our own flatbuffer reader, run on the sim and compared byte for byte with TFLite
Micro's interpreter on the same images; unsupported ops and damaged files give clear errors."""
import numpy as np
import pytest
from tflite_micro.python.tflite_micro import runtime

import tflm_oracle as T
import tiny_model
from tflm_oracle import INT8, INT32, me, tfl
import tinybridge
from tinybridge import graph, quant, simulate
from tinybridge.frontends import tflite
from tinybridge.model import Model

FLOAT32, UINT8 = tfl.TensorType.FLOAT32, tfl.TensorType.UINT8
OPT = tfl.BuiltinOptions


# ---------------------------------------------------------------- networks and their .tflite files

def images(n, channels=3):
    """Real images (scikit-image's LFW faces, 32x32), gray or repeated to RGB."""
    x = tiny_model.faces()[0][:n]
    return np.repeat(x, channels, axis=3) if channels == 3 else x


def net_mobile(calibration, rng):
    """conv 3x3/2 SAME relu6 -> depthwise 3x3 relu6 -> pointwise -> add (the conv) -> average pool
    -> fully connected, with realistic (calibrated) quantization; {op: activation}."""
    b = graph.Builder(calibration)
    c = b.conv2d(b.input, rng.normal(0, 0.3, (8, 3, 3, 3)), rng.normal(0, 0.1, 8), stride=2,
                 activation="relu6", name="conv")
    d = b.depthwise(c, rng.normal(0, 0.4, (3, 3, 8)), rng.normal(0, 0.1, 8), activation="relu6", name="dw")
    p = b.pointwise(d, rng.normal(0, 0.5, (8, 8)), rng.normal(0, 0.1, 8), name="pw")
    s = b.add(p, c, activation="relu", name="add")
    a = b.avgpool(s, name="pool")
    f = b.fully_connected(a, rng.normal(0, 0.5, (5, 8)), rng.normal(0, 0.1, 5), name="fc")
    return b.build(f), dict(conv="relu6", dw="relu6", add="relu")


def net_valid(calibration, rng):
    """conv 5x5 VALID relu -> depthwise 3x3/2 VALID relu6 -> conv 3x3 SAME -> add (relu) -> conv 1x1/2
    -> fully connected over a flattened 7x7 map -> fully connected."""
    b = graph.Builder(calibration)
    c1 = b.conv2d(b.input, rng.normal(0, 0.2, (6, 5, 5, 3)), rng.normal(0, 0.1, 6), padding="valid",
                  activation="relu", name="c1")
    d = b.depthwise(c1, rng.normal(0, 0.4, (3, 3, 6)), rng.normal(0, 0.1, 6), stride=2, padding="valid",
                    activation="relu6", name="dw")
    c2 = b.conv2d(d, rng.normal(0, 0.2, (6, 3, 3, 6)), rng.normal(0, 0.1, 6), name="c2")
    s = b.add(c2, d, activation="relu", name="add")
    c3 = b.conv2d(s, rng.normal(0, 0.4, (12, 1, 1, 6)), None, stride=2, padding="valid", name="c3")
    f1 = b.fully_connected(c3, rng.normal(0, 0.05, (16, 7 * 7 * 12)), rng.normal(0, 0.1, 16),
                           activation="relu", name="fc1")
    f2 = b.fully_connected(f1, rng.normal(0, 0.3, (4, 16)), None, name="fc2")
    acts = dict(c1="relu", dw="relu6", add="relu", fc1="relu", c2="relu_n1_to_1")
    return with_activations(b.build(f2), acts), acts


def perturb(g, acts, rng):
    """Random output quantization (other scales, other zero points) for every op, as a different
    calibration would give; activation ranges follow. The average pool keeps its input's."""
    for op in g.ops:
        y = g.tensors[op.output]
        if op.kind == "avgpool":
            x = g.tensors[op.inputs[0]]
            y.scale, y.zero_point = x.scale, x.zero_point
        else:
            y.scale = float(np.float32(y.scale * rng.uniform(0.6, 1.4)))
            y.zero_point = int(rng.integers(-128, -110)) if y.zero_point == -128 else int(rng.integers(-30, 30))
    return with_activations(g, acts)


def with_activations(g, acts):
    """Activation ranges of the ops as `acts` says, for their output quantization."""
    for op in g.ops:
        y = g.tensors[op.output]
        act = acts.get(op.name)
        if act == "relu_n1_to_1":
            op.act_min, op.act_max = tflite._relu_n1_to_1(y.scale, y.zero_point)
        else:
            op.act_min, op.act_max = quant.activation_range(act, y.scale, y.zero_point)
    g.validate()
    return g


def per_tensor(g, name):
    """Requantize op `name`'s weights per tensor (one scale), its bias to match."""
    op = g.op(name)
    x = g.tensors[op.inputs[0]]
    real = op.weights * op.weight_scales[:, None]
    s = np.float32(np.abs(real).max() / 127)
    bias_real = op.bias * (np.float32(x.scale) * op.weight_scales).astype(np.float64)
    op.weights = np.clip(np.round(real / s), -127, 127).astype(np.int8)
    op.weight_scales = np.full(len(op.weight_scales), s, np.float32)
    op.bias = np.round(bias_real / (np.float64(np.float32(x.scale) * s))).astype(np.int32)


def _options(op, kind, **fields):
    opt = getattr(tfl, kind + "T")()
    for k, v in fields.items():
        setattr(opt, k, v)
    op._fb.builtinOptionsType = getattr(OPT, kind)
    op._fb.builtinOptions = opt
    return op


ACT_CODES = {None: 0, "relu": 1, "relu_n1_to_1": 2, "relu6": 3}


def to_tflite(g, acts, *, input_type="int8", flatten=(), per_tensor_fc=(), tail=()):
    """The .tflite file of graph g, written with tflite_micro's model editor: `input_type` int8,
    float (QUANTIZE after it) or uint8 (QUANTIZE = minus 128); a RESHAPE in front of the fully
    connected ops in `flatten`; per-tensor weight scales for those in `per_tensor_fc`; `tail`: ops
    after the logits ("softmax", "dequantize", "reshape")."""
    tensors, ops = {}, []

    def act(name):
        t = g.tensors[name]
        return T._act(name, (1,) + t.shape, t.scale, t.zero_point)

    x = g.tensors[g.input]
    tensors[g.input] = act(g.input)
    graph_in = tensors[g.input]
    if input_type == "float":
        graph_in = me.Tensor(shape=(1,) + x.shape, dtype=FLOAT32, name="image")
        ops.append(me.Operator(opcode=tfl.BuiltinOperator.QUANTIZE, inputs=[graph_in], outputs=[tensors[g.input]]))
    elif input_type == "uint8":
        graph_in = me.Tensor(shape=(1,) + x.shape, dtype=UINT8, name="image",
                             quantization=T._q(x.scale, x.zero_point + 128))
        ops.append(me.Operator(opcode=tfl.BuiltinOperator.QUANTIZE, inputs=[graph_in], outputs=[tensors[g.input]]))
    for op in g.ops:
        xt = g.tensors[op.inputs[0]]
        code = ACT_CODES[acts.get(op.name)]
        y = g.tensors[op.output]
        co = y.shape[2]
        if op.kind in ("conv2d", "depthwise", "pointwise", "fully_connected"):
            per_channel = op.name not in per_tensor_fc
            scales = op.weight_scales if per_channel else op.weight_scales[:1]
            axis = (3 if op.kind == "depthwise" else 0) if per_channel else None
            if op.kind == "depthwise":
                w = op.weights[None]                  # (1, kh, kw, C)
            elif op.kind == "pointwise":
                w = op.weights[:, None, None, :]      # a 1x1 CONV_2D
            else:
                w = op.weights
            wt = T._const(op.name + "/w", w, INT8, T._q(scales, [0] * len(scales), axis=axis))
            bt = T._const(op.name + "/b", op.bias, INT32,
                          T._q(np.float32(xt.scale) * scales, [0] * len(scales), axis=0 if per_channel else None))
        if op.kind == "fully_connected":
            src = tensors[op.inputs[0]]
            if op.name in flatten:
                flat = T._act(op.name + "/flat", (1, xt.size), xt.scale, xt.zero_point)
                shape = T._const(op.name + "/shape", np.array([1, xt.size], np.int32), INT32, None)
                ops.append(_options(me.Operator(opcode=tfl.BuiltinOperator.RESHAPE, inputs=[src, shape],
                                                outputs=[flat]), "ReshapeOptions", newShape=[1, xt.size]))
                src = flat
            out = T._act(op.output, (1, co), y.scale, y.zero_point)
            ops.append(_options(me.Operator(opcode=tfl.BuiltinOperator.FULLY_CONNECTED, inputs=[src, wt, bt],
                                            outputs=[out]), "FullyConnectedOptions", fusedActivationFunction=code))
        elif op.kind in ("conv2d", "pointwise", "depthwise"):
            out = act(op.output)
            stride = op.stride if op.kind != "pointwise" else 1
            fields = dict(padding=T.PADDING[op.padding if op.kind != "pointwise" else "same"], strideH=stride,
                          strideW=stride, dilationHFactor=1, dilationWFactor=1, fusedActivationFunction=code)
            if op.kind == "depthwise":
                opcode, kind = tfl.BuiltinOperator.DEPTHWISE_CONV_2D, "DepthwiseConv2DOptions"
                fields["depthMultiplier"] = 1
            else:
                opcode, kind = tfl.BuiltinOperator.CONV_2D, "Conv2DOptions"
            ops.append(_options(me.Operator(opcode=opcode, inputs=[tensors[op.inputs[0]], wt, bt], outputs=[out]),
                                kind, **fields))
        elif op.kind == "avgpool":
            out = act(op.output)
            ops.append(_options(me.Operator(opcode=tfl.BuiltinOperator.AVERAGE_POOL_2D,
                                            inputs=[tensors[op.inputs[0]]], outputs=[out]), "Pool2DOptions",
                                padding=tfl.Padding.VALID, strideH=1, strideW=1, filterHeight=xt.shape[0],
                                filterWidth=xt.shape[1], fusedActivationFunction=code))
        else:
            out = act(op.output)
            ops.append(_options(me.Operator(opcode=tfl.BuiltinOperator.ADD, inputs=[tensors[t] for t in op.inputs],
                                            outputs=[out]), "AddOptions", fusedActivationFunction=code))
        tensors[op.output] = out
    last = tensors[g.output]
    n = g.tensors[g.output].shape[2]
    for kind in tail:
        if kind == "softmax":
            nxt = T._act("probs", (1, n), 1 / 256, -128)
            ops.append(_options(me.Operator(opcode=tfl.BuiltinOperator.SOFTMAX, inputs=[last], outputs=[nxt]),
                                "SoftmaxOptions", beta=1.0))
        elif kind == "dequantize":
            nxt = me.Tensor(shape=(1, n), dtype=FLOAT32, name="probs_f")
            ops.append(me.Operator(opcode=tfl.BuiltinOperator.DEQUANTIZE, inputs=[last], outputs=[nxt]))
        else:
            q = last.quantization
            nxt = T._act("logits4", (1, 1, 1, n), q.scales[0], q.zero_points[0])
            shape = T._const("logits4/shape", np.array([1, 1, 1, n], np.int32), INT32, None)
            ops.append(_options(me.Operator(opcode=tfl.BuiltinOperator.RESHAPE, inputs=[last, shape], outputs=[nxt]),
                                "ReshapeOptions", newShape=[1, 1, 1, n]))
        last = nxt
    sg = me.Subgraph(operators=ops, inputs=[graph_in], outputs=[last])
    return bytes(me.Model(subgraphs=[sg]).build())


def tflm_outputs(model, feeds):
    interp = runtime.Interpreter.from_bytes(model, arena_size=1 << 22)
    out = []
    for feed in feeds:
        interp.set_input(feed[None], 0)
        interp.invoke()
        out.append(interp.get_output(0).reshape(-1).copy())
    return np.array(out)


def feeds(g, imgs, input_type):
    x = g.tensors[g.input]
    if input_type == "uint8":
        return list(imgs)
    q = [(im.astype(np.int16) - 128).astype(np.int8) for im in imgs]
    if input_type == "int8":
        return q
    return [np.float32(x.scale) * (v.astype(np.float32) - np.float32(x.zero_point)) for v in q]


def assert_same_graph(got, want):
    """Same ops, tensors, quantization, weights and ranges (names aside)."""
    assert len(got.ops) == len(want.ops)
    assert got.tensors[got.input] == want.tensors[want.input]
    index = {got.input: want.input}
    for a, b in zip(got.ops, want.ops):
        where = (a.name, b.name)
        assert a.kind == b.kind, where
        assert [index[t] for t in a.inputs] == b.inputs, where
        index[a.output] = b.output
        assert got.tensors[a.output] == want.tensors[b.output], where
        assert (a.act_min, a.act_max) == (b.act_min, b.act_max), where
        if a.kind in ("conv2d", "depthwise"):
            assert (a.stride, a.padding) == (b.stride, b.padding), where
        if a.kind in graph.WEIGHTED:
            np.testing.assert_array_equal(a.weights, b.weights)
            np.testing.assert_array_equal(a.bias, b.bias)
            np.testing.assert_array_equal(a.weight_scales, b.weight_scales)
            assert a.weight_scales.dtype == np.float32


# ---------------------------------------------------------------- bit-exact with TFLite Micro

CASES = {
    # name: (network, input type, flattened FCs, per-tensor FCs, tail ops)
    "mobile-int8": (net_mobile, "int8", (), (), ()),
    "mobile-float-softmax": (net_mobile, "float", ("fc",), (), ("softmax", "dequantize")),
    "valid-uint8-per-tensor": (net_valid, "uint8", ("fc1",), ("fc1", "fc2"), ("reshape", "softmax")),
}


@pytest.fixture(scope="module")
def dev():
    with tinybridge.connect("sim") as d:
        yield d


@pytest.mark.parametrize("case", sorted(CASES))
def test_load_runs_like_tflite_micro(case, dev):
    """load() gives back the graph the file was written from; the sim and tinybridge.simulate
    give TFLite Micro's int8 logits, byte for byte."""
    net, input_type, flatten, per_tensor_fc, tail = CASES[case]
    rng = np.random.default_rng(sorted(CASES).index(case))
    g, acts = net(images(16), rng)
    perturb(g, acts, rng)
    for name in per_tensor_fc:
        per_tensor(g, name)
    g.validate()
    full = to_tflite(g, acts, input_type=input_type, flatten=flatten, per_tensor_fc=per_tensor_fc, tail=tail)
    logits_only = to_tflite(g, acts, input_type=input_type, flatten=flatten, per_tensor_fc=per_tensor_fc)
    loaded = tflite.load(full)
    assert_same_graph(loaded, g)
    assert_same_graph(tflite.load(logits_only), g)

    imgs = images(40)
    want = tflm_outputs(logits_only, feeds(g, imgs, input_type))
    y = loaded.tensors[loaded.output]
    assert want.dtype == np.int8 and want.shape == (len(imgs), y.shape[2])
    assert len(np.unique(want)) > 10, "logits mostly saturated: the comparison would prove little"
    model = Model(loaded)
    sim = simulate.Simulator(model)
    got = np.array([sim.infer(model.input_tensor(im)).logits for im in imgs])
    np.testing.assert_array_equal(got, want)
    # the device (sim), a few images: scores are the dequantized int8 logits
    dev.load_model(model, progress=False)
    for im, w in zip(imgs[:4], want):
        p = dev.infer(im)
        np.testing.assert_array_equal(p.scores, np.float32(y.scale) * (w.astype(np.float32) - np.float32(y.zero_point)))
        assert p.label == int(np.argmax(w))
    # the whole file (softmax and all) runs in TFLite Micro too and agrees on the top class
    if "softmax" in tail:
        probs = tflm_outputs(full, feeds(g, imgs[:8], input_type))
        top = probs.max(axis=1, keepdims=True)
        assert all(probs[i, int(np.argmax(want[i]))] == top[i, 0] for i in range(8))


def test_path_and_bytes(tmp_path):
    g, acts = net_mobile(images(8), np.random.default_rng(5))
    data = to_tflite(g, acts)
    path = tmp_path / "m.tflite"
    path.write_bytes(data)
    assert_same_graph(tflite.load(str(path)), g)
    assert_same_graph(tflite.load(path), g)
    assert_same_graph(tflite.load(bytearray(data)), g)
    assert_same_graph(tflite.load(memoryview(data)), g)
    with pytest.raises(TypeError):
        tflite.load(12)


# ---------------------------------------------------------------- the input rule

def test_input_quantization_must_match_the_device_input_rule():
    g, acts = net_mobile(images(8), np.random.default_rng(6))
    for scale, zero in ((1 / 255, -128), (2 / 255, 0), (2 / 255, -1), (1.0, -128)):
        g.tensors[g.input].scale, g.tensors[g.input].zero_point = float(np.float32(scale)), zero
        assert tflite.load(to_tflite(g, acts)).tensors["input"].zero_point == zero
    g.tensors[g.input].scale, g.tensors[g.input].zero_point = 0.0187, -14  # ImageNet mean/std
    data = to_tflite(g, acts)
    with pytest.raises(ValueError, match=r"pixel - 128.*strict_input=False"):
        tflite.load(data)
    kept = graph.Tensor((32, 32, 3), float(np.float32(0.0187)), -14)
    assert tflite.load(data, strict_input=False).tensors["input"] == kept
    with pytest.raises(ValueError, match="strict_input"):
        tflite.load(to_tflite(g, acts, input_type="float"))
    # a uint8 input is the image itself: any quantization, as long as QUANTIZE is "minus 128"
    assert tflite.load(to_tflite(g, acts, input_type="uint8")).tensors["input"].scale == np.float32(0.0187)


def test_uint8_input_requantized_is_refused():
    g, acts = net_mobile(images(8), np.random.default_rng(7))
    data = to_tflite(g, acts, input_type="uint8")
    m = me.read(data)
    m.subgraphs[0].operators[0].inputs[0].quantization = T._q(0.5, 10)
    with pytest.raises(ValueError, match=r"op 0 \(QUANTIZE\).*not int8 = uint8 - 128"):
        tflite.load(bytes(m.build()))


# ---------------------------------------------------------------- unsupported ops

def _model_with(opcode, kind=None, **options):
    """pointwise conv -> <opcode> -> avgpool -> fc: the op under test at index 1."""
    rng = np.random.default_rng(0)
    x = T._act("x", (1, 4, 4, 2), 1 / 255, -128)
    w = T._const("w", rng.integers(-127, 128, (2, 1, 1, 2), dtype=np.int8), INT8, T._q([0.01, 0.01], [0, 0], axis=0))
    b = T._const("b", np.zeros(2, np.int32), INT32, T._q([1e-4, 1e-4], [0, 0], axis=0))
    c = T._act("c", (1, 4, 4, 2), 0.05, 3)
    conv = _options(me.Operator(opcode=tfl.BuiltinOperator.CONV_2D, inputs=[x, w, b], outputs=[c]), "Conv2DOptions",
                    padding=0, strideH=1, strideW=1, dilationHFactor=1, dilationWFactor=1)
    d = T._act("d", (1, 4, 4, 2), 0.05, 3)
    extra = [T._const("axis", np.array([1, 2], np.int32), INT32, None)] if opcode == tfl.BuiltinOperator.MEAN else []
    mid = me.Operator(opcode=opcode, inputs=[c] + extra, outputs=[d])
    if kind:
        _options(mid, kind, **options)
    p = T._act("p", (1, 1, 1, 2), 0.05, 3)
    pool = _options(me.Operator(opcode=tfl.BuiltinOperator.AVERAGE_POOL_2D, inputs=[d], outputs=[p]), "Pool2DOptions",
                    padding=1, strideH=1, strideW=1, filterHeight=4, filterWidth=4)
    fw = T._const("fw", rng.integers(-127, 128, (3, 2), dtype=np.int8), INT8, T._q([0.01], [0]))
    y = T._act("y", (1, 3), 0.1, 0)
    fc = _options(me.Operator(opcode=tfl.BuiltinOperator.FULLY_CONNECTED, inputs=[p, fw], outputs=[y]),
                  "FullyConnectedOptions")
    sg = me.Subgraph(operators=[conv, mid, pool, fc], inputs=[x], outputs=[y])
    return bytes(me.Model(subgraphs=[sg]).build())


def test_helper_model_loads_with_a_supported_op():
    """Sanity of the helper: with a supported op in the middle (RESHAPE to the same shape) it loads."""
    g = tflite.load(_model_with(tfl.BuiltinOperator.RESHAPE, "ReshapeOptions", newShape=[1, 4, 4, 2]))
    assert [op.kind for op in g.ops] == ["pointwise", "avgpool", "fully_connected"]


@pytest.mark.parametrize("opcode, kind, options, message", [
    (tfl.BuiltinOperator.MAX_POOL_2D, "Pool2DOptions", dict(padding=0, strideH=1, strideW=1, filterHeight=1,
                                                             filterWidth=1), r"op 1 \(MAX_POOL_2D\): not supported"),
    (tfl.BuiltinOperator.HARD_SWISH, None, {}, r"op 1 \(HARD_SWISH\): not supported"),
    (tfl.BuiltinOperator.MEAN, "ReducerOptions", dict(keepDims=True), r"op 1 \(MEAN\):.*AVERAGE_POOL_2D"),
    (tfl.BuiltinOperator.SOFTMAX, "SoftmaxOptions", dict(beta=1.0), r"op 1 \(SOFTMAX\): supported only"),
    (tfl.BuiltinOperator.QUANTIZE, None, {}, r"op 1 \(QUANTIZE\): supported only"),
])
def test_unsupported_op_is_named(opcode, kind, options, message):
    with pytest.raises(ValueError, match=message):
        tflite.load(_model_with(opcode, kind, **options))


def test_mean_is_not_average_pool_in_tflite_micro():
    """Why MEAN is refused: TFLite Micro's int8 MEAN (same quantization in and out) and its
    AVERAGE_POOL_2D, which the device's pool matches, round differently."""
    rng = np.random.default_rng(3)
    xs = rng.integers(-128, 128, (8, 4, 4, 16), dtype=np.int8)
    xt, yt = T._act("x", (1, 4, 4, 16), 0.05, 7), T._act("y", (1, 1, 1, 16), 0.05, 7)
    axis = T._const("axis", np.array([1, 2], np.int32), INT32, None)
    op = _options(me.Operator(opcode=tfl.BuiltinOperator.MEAN, inputs=[xt, axis], outputs=[yt]), "ReducerOptions",
                  keepDims=True)
    model = bytes(me.Model(subgraphs=[me.Subgraph(operators=[op], inputs=[xt], outputs=[yt])]).build())
    mean = tflm_outputs(model, list(xs))
    pool = np.array([T.avgpool_global(x, (0.05, 7), None) for x in xs])
    assert (mean != pool).sum() >= 3


def test_structural_limits_are_clear():
    g, acts = net_mobile(images(8), np.random.default_rng(8))
    m = me.read(to_tflite(g, acts))
    ops = m.subgraphs[0].operators
    ops[0]._fb.builtinOptions.dilationHFactor = 2
    with pytest.raises(ValueError, match=r"op 0 \(CONV_2D\): dilation"):
        tflite.load(bytes(m.build()))
    m = me.read(to_tflite(g, acts))
    ops = m.subgraphs[0].operators
    ops[-1]._fb.builtinOptions.fusedActivationFunction = tfl.ActivationFunctionType.TANH
    with pytest.raises(ValueError, match=r"op 5 \(FULLY_CONNECTED\): fused activation TANH"):
        tflite.load(bytes(m.build()))
    m = me.read(to_tflite(g, acts))
    m.subgraphs[0].outputs.append(m.subgraphs[0].operators[1].outputs[0])
    with pytest.raises(ValueError, match="2 outputs"):
        tflite.load(bytes(m.build()))


# ---------------------------------------------------------------- damaged files

def test_damaged_files_are_clear_errors():
    g, acts = net_mobile(images(8), np.random.default_rng(9))
    data = to_tflite(g, acts)
    for bad, message in ((b"", "too short"), (b"\x00" * 64, "identifier"), (data[:100], "outside"),
                         (data[:len(data) // 2], "outside"), (b"hello world, not a model" * 10, "identifier")):
        with pytest.raises(tflite.TFLiteFormatError, match=message):
            tflite.load(bad)
    rng = np.random.default_rng(10)
    outcomes = {"loaded": 0, "ValueError": 0}
    for _ in range(300):
        bad = bytearray(data)
        for pos in rng.integers(0, 2048, int(rng.integers(1, 4))):
            bad[pos] = int(rng.integers(0, 256))
        try:
            tflite.load(bytes(bad))
            outcomes["loaded"] += 1
        except ValueError:
            outcomes["ValueError"] += 1
    assert outcomes["ValueError"] > 50, outcomes
