"""Single-op int8 .tflite graphs written with tflite_micro's model editor and run by TFLite Micro's
interpreter (reference op resolver): the forward oracle no one here wrote."""
import numpy as np
from tflite_micro.python.tflite_micro import runtime
from tflite_micro.tensorflow.lite.micro.compression import model_editor as me
from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as tfl

INT8, INT32 = tfl.TensorType.INT8, tfl.TensorType.INT32
ACTIVATIONS = {None: tfl.ActivationFunctionType.NONE, "relu": tfl.ActivationFunctionType.RELU,
               "relu6": tfl.ActivationFunctionType.RELU6}
PADDING = {"same": tfl.Padding.SAME, "valid": tfl.Padding.VALID}


def _q(scales, zeros, axis=None):
    return me.Quantization([float(s) for s in np.atleast_1d(scales)],
                           [int(z) for z in np.atleast_1d(zeros)], axis=axis)


def _act(name, shape, scale, zero):
    return me.Tensor(shape=tuple(shape), dtype=INT8, quantization=_q(scale, zero), name=name)


def _const(name, array, dtype, quant):
    return me.Tensor(shape=array.shape, dtype=dtype, data=np.ascontiguousarray(array), quantization=quant,
                     name=name)


def _run(opcode, options_type, options, inputs, output, feeds):
    op = me.Operator(opcode=opcode, inputs=inputs, outputs=[output])
    op._fb.builtinOptionsType = options_type
    op._fb.builtinOptions = options
    graph_inputs = [t for t in inputs if t.buffer is None]
    sg = me.Subgraph(tensors=list(inputs) + [output], operators=[op], inputs=graph_inputs, outputs=[output])
    model = bytes(me.Model(subgraphs=[sg]).build())
    interp = runtime.Interpreter.from_bytes(model, arena_size=1 << 22)
    for i, feed in enumerate(feeds):
        interp.set_input(feed, i)
    interp.invoke()
    return interp.get_output(0)


def conv2d(x, w, bias, x_q, w_scales, y_q, stride, padding, activation, out_hw):
    """x (H, W, Ci), w OHWI, x_q/y_q = (scale, zero_point)."""
    co = w.shape[0]
    xt = _act("x", (1,) + x.shape, *x_q)
    wt = _const("w", w, INT8, _q(w_scales, [0] * co, axis=0))
    bt = _const("b", bias, INT32, _q(np.float32(x_q[0]) * np.asarray(w_scales, np.float32), [0] * co, axis=0))
    yt = _act("y", (1,) + tuple(out_hw) + (co,), *y_q)
    opt = tfl.Conv2DOptionsT()
    opt.padding, opt.strideH, opt.strideW = PADDING[padding], stride, stride
    opt.dilationHFactor = opt.dilationWFactor = 1
    opt.fusedActivationFunction = ACTIVATIONS[activation]
    return _run(tfl.BuiltinOperator.CONV_2D, tfl.BuiltinOptions.Conv2DOptions, opt, [xt, wt, bt], yt,
                [x[None]])[0]


def depthwise_conv2d(x, w, bias, x_q, w_scales, y_q, stride, padding, activation, out_hw):
    """x (H, W, C), w (kh, kw, C)."""
    ch = x.shape[2]
    xt = _act("x", (1,) + x.shape, *x_q)
    wt = _const("w", w[None], INT8, _q(w_scales, [0] * ch, axis=3))
    bt = _const("b", bias, INT32, _q(np.float32(x_q[0]) * np.asarray(w_scales, np.float32), [0] * ch, axis=0))
    yt = _act("y", (1,) + tuple(out_hw) + (ch,), *y_q)
    opt = tfl.DepthwiseConv2DOptionsT()
    opt.padding, opt.strideH, opt.strideW = PADDING[padding], stride, stride
    opt.dilationHFactor = opt.dilationWFactor = 1
    opt.depthMultiplier = 1
    opt.fusedActivationFunction = ACTIVATIONS[activation]
    return _run(tfl.BuiltinOperator.DEPTHWISE_CONV_2D, tfl.BuiltinOptions.DepthwiseConv2DOptions, opt,
                [xt, wt, bt], yt, [x[None]])[0]


def fully_connected(x, w, bias, x_q, w_scales, y_q, activation):
    """x (Ci,), w (Co, Ci); w_scales of length 1 (per-tensor) or Co (per-channel)."""
    co = w.shape[0]
    w_scales = np.atleast_1d(w_scales)
    axis = 0 if len(w_scales) > 1 else None
    xt = _act("x", (1, x.shape[0]), *x_q)
    wt = _const("w", w, INT8, _q(w_scales, [0] * len(w_scales), axis=axis))
    bt = _const("b", bias, INT32, _q(np.float32(x_q[0]) * w_scales.astype(np.float32),
                                      [0] * len(w_scales), axis=axis))
    yt = _act("y", (1, co), *y_q)
    opt = tfl.FullyConnectedOptionsT()
    opt.fusedActivationFunction = ACTIVATIONS[activation]
    return _run(tfl.BuiltinOperator.FULLY_CONNECTED, tfl.BuiltinOptions.FullyConnectedOptions, opt,
                [xt, wt, bt], yt, [x[None]])[0]


def avgpool_global(x, x_q, activation):
    """AVERAGE_POOL_2D over the whole H x W, valid padding, same quantization in and out."""
    h, w, c = x.shape
    xt = _act("x", (1,) + x.shape, *x_q)
    yt = _act("y", (1, 1, 1, c), *x_q)
    opt = tfl.Pool2DOptionsT()
    opt.padding, opt.strideH, opt.strideW = tfl.Padding.VALID, 1, 1
    opt.filterHeight, opt.filterWidth = h, w
    opt.fusedActivationFunction = ACTIVATIONS[activation]
    return _run(tfl.BuiltinOperator.AVERAGE_POOL_2D, tfl.BuiltinOptions.Pool2DOptions, opt, [xt], yt,
                [x[None]]).reshape(c)


def add(a, b, a_q, b_q, y_q, activation):
    at = _act("a", (1,) + a.shape, *a_q)
    bt = _act("b", (1,) + b.shape, *b_q)
    yt = _act("y", (1,) + a.shape, *y_q)
    opt = tfl.AddOptionsT()
    opt.fusedActivationFunction = ACTIVATIONS[activation]
    return _run(tfl.BuiltinOperator.ADD, tfl.BuiltinOptions.AddOptions, opt, [at, bt], yt,
                [a[None], b[None]])[0]
