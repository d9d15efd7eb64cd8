"""int8 .tflite files as tinybridge graphs.

    graph = tinybridge.frontends.tflite.load("model.tflite")     # or the file's bytes

The flatbuffer is read by the small reader below (the public FlatBuffers binary format: a root
offset, tables found through vtables, vectors and strings behind 32-bit offsets; the vtable slot
of each field is its position in TFLite's schema.fbs). Nothing of TensorFlow is needed.

Each supported op becomes one tinybridge op with its TFLite quantization unchanged, so that the
device computes what TFLite Micro computes (docs/compiler.md, "TFLite models"):

    CONV_2D             -> conv2d (pointwise when 1x1, stride 1)
    DEPTHWISE_CONV_2D   -> depthwise (depth multiplier 1)
    FULLY_CONNECTED     -> fully_connected (per-tensor weight scales broadcast per channel)
    AVERAGE_POOL_2D     -> avgpool (the filter covering the whole input)
    ADD                 -> add (two tensors of one shape)
    RESHAPE, SQUEEZE    -> nothing: a flatten in front of FULLY_CONNECTED (which flattens HWC anyway)
    QUANTIZE            -> nothing, at the input (float32 or uint8 -> int8)
    SOFTMAX, DEQUANTIZE, QUANTIZE, RESHAPE, SQUEEZE after the logits -> dropped

Anything else is a ValueError naming the op and its index; a damaged file is a TFLiteFormatError
(a ValueError).
"""
import os
import struct

import numpy as np

from .. import graph as G
from .. import quant

# BuiltinOperator, in code order (schema.fbs)
_OP_NAMES = """ADD AVERAGE_POOL_2D CONCATENATION CONV_2D DEPTHWISE_CONV_2D DEPTH_TO_SPACE DEQUANTIZE
EMBEDDING_LOOKUP FLOOR FULLY_CONNECTED HASHTABLE_LOOKUP L2_NORMALIZATION L2_POOL_2D
LOCAL_RESPONSE_NORMALIZATION LOGISTIC LSH_PROJECTION LSTM MAX_POOL_2D MUL RELU RELU_N1_TO_1 RELU6
RESHAPE RESIZE_BILINEAR RNN SOFTMAX SPACE_TO_DEPTH SVDF TANH CONCAT_EMBEDDINGS SKIP_GRAM CALL CUSTOM
EMBEDDING_LOOKUP_SPARSE PAD UNIDIRECTIONAL_SEQUENCE_RNN GATHER BATCH_TO_SPACE_ND SPACE_TO_BATCH_ND
TRANSPOSE MEAN SUB DIV SQUEEZE UNIDIRECTIONAL_SEQUENCE_LSTM STRIDED_SLICE BIDIRECTIONAL_SEQUENCE_RNN
EXP TOPK_V2 SPLIT LOG_SOFTMAX DELEGATE BIDIRECTIONAL_SEQUENCE_LSTM CAST PRELU MAXIMUM ARG_MAX MINIMUM
LESS NEG PADV2 GREATER GREATER_EQUAL LESS_EQUAL SELECT SLICE SIN TRANSPOSE_CONV SPARSE_TO_DENSE TILE
EXPAND_DIMS EQUAL NOT_EQUAL LOG SUM SQRT RSQRT SHAPE POW ARG_MIN FAKE_QUANT REDUCE_PROD REDUCE_MAX
PACK LOGICAL_OR ONE_HOT LOGICAL_AND LOGICAL_NOT UNPACK REDUCE_MIN FLOOR_DIV REDUCE_ANY SQUARE
ZEROS_LIKE FILL FLOOR_MOD RANGE RESIZE_NEAREST_NEIGHBOR LEAKY_RELU SQUARED_DIFFERENCE MIRROR_PAD ABS
SPLIT_V UNIQUE CEIL REVERSE_V2 ADD_N GATHER_ND COS WHERE RANK ELU REVERSE_SEQUENCE MATRIX_DIAG
QUANTIZE MATRIX_SET_DIAG ROUND HARD_SWISH IF WHILE NON_MAX_SUPPRESSION_V4 NON_MAX_SUPPRESSION_V5
SCATTER_ND SELECT_V2 DENSIFY SEGMENT_SUM BATCH_MATMUL PLACEHOLDER_FOR_GREATER_OP_CODES CUMSUM
CALL_ONCE BROADCAST_TO RFFT2D CONV_3D IMAG REAL COMPLEX_ABS HASHTABLE HASHTABLE_FIND HASHTABLE_IMPORT
HASHTABLE_SIZE REDUCE_ALL CONV_3D_TRANSPOSE VAR_HANDLE READ_VARIABLE ASSIGN_VARIABLE BROADCAST_ARGS
RANDOM_STANDARD_NORMAL BUCKETIZE RANDOM_UNIFORM MULTINOMIAL GELU DYNAMIC_UPDATE_SLICE RELU_0_TO_1
UNSORTED_SEGMENT_PROD UNSORTED_SEGMENT_MAX UNSORTED_SEGMENT_SUM ATAN2 UNSORTED_SEGMENT_MIN SIGN
BITCAST BITWISE_XOR RIGHT_SHIFT""".split()
_CODES = {name: code for code, name in enumerate(_OP_NAMES)}
ADD, AVERAGE_POOL_2D, CONV_2D, DEPTHWISE_CONV_2D, DEQUANTIZE, FULLY_CONNECTED = (
    _CODES[n] for n in ("ADD", "AVERAGE_POOL_2D", "CONV_2D", "DEPTHWISE_CONV_2D", "DEQUANTIZE", "FULLY_CONNECTED"))
RESHAPE, SOFTMAX, MEAN, SQUEEZE, QUANTIZE = (_CODES[n] for n in ("RESHAPE", "SOFTMAX", "MEAN", "SQUEEZE", "QUANTIZE"))
SUPPORTED = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "AVERAGE_POOL_2D", "ADD", "RESHAPE", "SQUEEZE",
             "QUANTIZE (input)", "DEQUANTIZE, SOFTMAX (after the logits)")

# TensorType
FLOAT32, INT32, UINT8, INT64, INT16, INT8 = 0, 2, 3, 4, 7, 9
_TYPE_NAMES = {0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 5: "string", 6: "bool",
               7: "int16", 8: "complex64", 9: "int8", 10: "float64", 11: "complex128", 12: "resource",
               13: "variant", 14: "uint32", 15: "uint16", 16: "int4"}
# BuiltinOptions union types of the options tables read here
_OPTIONS = {CONV_2D: 1, DEPTHWISE_CONV_2D: 2, AVERAGE_POOL_2D: 5, FULLY_CONNECTED: 8, ADD: 11}
# ActivationFunctionType
_ACTIVATIONS = {0: None, 1: "relu", 2: "relu_n1_to_1", 3: "relu6"}
_ACTIVATION_NAMES = {4: "TANH", 5: "SIGN_BIT"}
# Padding
_PADDING = {0: "same", 1: "valid"}

# Input quantizations under which the device's input rule (int8 = pixel - 128) is the quantization
# the model was made for: the pixel range mapped onto the whole int8 range.
STANDARD_INPUTS = (("[0, 1] (pixel / 255)", 0.0, 1.0), ("[-1, 1] (pixel / 127.5 - 1)", -1.0, 1.0),
                   ("[0, 255] (the pixel)", 0.0, 255.0))


class TFLiteFormatError(ValueError):
    """The bytes are not a well-formed .tflite flatbuffer."""


def op_name(code):
    return _OP_NAMES[code] if 0 <= code < len(_OP_NAMES) else "BUILTIN_%d" % code


# ---------------------------------------------------------------- flatbuffer reader

class _Buffer:
    """Bounds-checked little-endian reads from the file's bytes."""

    def __init__(self, data):
        self.data = data
        self.size = len(data)

    def check(self, pos, n, what="data"):
        if pos < 0 or n < 0 or pos + n > self.size:
            raise TFLiteFormatError("%s at offset %d (%d bytes) lies outside the %d-byte file"
                                    % (what, pos, n, self.size))

    def read(self, fmt, pos):
        s = struct.Struct("<" + fmt)
        self.check(pos, s.size, "a field")
        return s.unpack_from(self.data, pos)[0]

    def table(self, pos):
        return _Table(self, pos)


class _Table:
    """A flatbuffer table: its position and its vtable (field offsets by slot)."""

    def __init__(self, buf, pos):
        self.buf, self.pos = buf, pos
        self.vtable = pos - buf.read("i", pos)
        self.vtable_size = buf.read("H", self.vtable)
        if self.vtable_size < 4 or self.vtable_size % 2:
            raise TFLiteFormatError("bad vtable at offset %d" % self.vtable)
        buf.check(self.vtable, self.vtable_size, "a vtable")

    def _field(self, slot):
        entry = 4 + 2 * slot
        if entry >= self.vtable_size:
            return None
        offset = self.buf.read("H", self.vtable + entry)
        return None if offset == 0 else self.pos + offset

    def has(self, slot):
        return self._field(slot) is not None

    def scalar(self, slot, fmt, default=0):
        p = self._field(slot)
        return default if p is None else self.buf.read(fmt, p)

    def _target(self, slot):
        p = self._field(slot)
        return None if p is None else p + self.buf.read("I", p)

    def table(self, slot):
        t = self._target(slot)
        return None if t is None else _Table(self.buf, t)

    def _vector(self, slot, item_size):
        start = self._target(slot)
        if start is None:
            return None, 0
        n = self.buf.read("I", start)
        self.buf.check(start + 4, n * item_size, "a vector")
        return start + 4, n

    def array(self, slot, dtype):
        """A vector of scalars as a numpy array (None when absent)."""
        dtype = np.dtype(dtype).newbyteorder("<")
        start, n = self._vector(slot, dtype.itemsize)
        if start is None:
            return None
        return np.frombuffer(self.buf.data, dtype, n, start).copy()

    def tables(self, slot):
        start, n = self._vector(slot, 4)
        if start is None:
            return []
        return [_Table(self.buf, start + 4 * i + self.buf.read("I", start + 4 * i)) for i in range(n)]

    def string(self, slot):
        start, n = self._vector(slot, 1)
        if start is None:
            return None
        return bytes(self.buf.data[start:start + n]).decode("utf-8", errors="replace")


# ---------------------------------------------------------------- the model's content

class _Tensor:
    def __init__(self, index, table, buffers, buf):
        self.index = index
        shape = table.array(0, np.int32)
        self.shape = tuple(int(v) for v in shape) if shape is not None else ()
        self.type = table.scalar(1, "b", 0)
        self.name = table.string(3) or "tensor %d" % index
        b = table.scalar(2, "I", 0)
        if b >= len(buffers) and b != 0:
            raise TFLiteFormatError("tensor %d refers to buffer %d of %d" % (index, b, len(buffers)))
        self.data = _buffer_data(buffers[b], buf) if b < len(buffers) else None
        if table.scalar(10, "I", 0):
            raise ValueError("tensor %d (%s): external buffers are not supported" % (index, self.name))
        self.scales = self.zero_points = None
        self.axis = 0
        q = table.table(4)
        if q is not None:
            if q.scalar(4, "B", 0):
                raise ValueError("tensor %d (%s): custom quantization details are not supported"
                                 % (index, self.name))
            self.scales = q.array(2, np.float32)
            self.zero_points = q.array(3, np.int64)
            self.axis = q.scalar(6, "i", 0)

    @property
    def type_name(self):
        return _TYPE_NAMES.get(self.type, "type %d" % self.type)

    def quantized(self):
        return self.scales is not None and len(self.scales) > 0

    def array(self, dtype):
        dtype = np.dtype(dtype).newbyteorder("<")
        n = int(np.prod(self.shape)) if self.shape else 1
        if self.data is None or len(self.data) != n * dtype.itemsize:
            raise TFLiteFormatError("tensor %d (%s): %d bytes of data for %s %s"
                                    % (self.index, self.name, 0 if self.data is None else len(self.data),
                                       self.type_name, self.shape))
        return np.frombuffer(self.data, dtype).astype(dtype.newbyteorder("=")).reshape(self.shape)


def _buffer_data(table, buf):
    data = table.array(0, np.uint8)
    if data is not None and len(data):
        return data.tobytes()
    offset, size = table.scalar(1, "Q", 0), table.scalar(2, "Q", 0)
    if offset > 1:  # large models keep buffers after the flatbuffer
        buf.check(offset, size, "buffer data")
        return bytes(buf.data[offset:offset + size])
    return None


class _Operator:
    def __init__(self, index, table, codes):
        self.index = index
        i = table.scalar(0, "I", 0)
        if i >= len(codes):
            raise TFLiteFormatError("op %d uses operator code %d of %d" % (index, i, len(codes)))
        self.code, self.custom = codes[i]
        inputs, outputs = table.array(1, np.int32), table.array(2, np.int32)
        self.inputs = [int(v) for v in inputs] if inputs is not None else []
        self.outputs = [int(v) for v in outputs] if outputs is not None else []
        self.options_type = table.scalar(3, "B", 0)
        self.options = table.table(4)

    @property
    def name(self):
        if self.code == _CODES["CUSTOM"]:
            return "CUSTOM %r" % self.custom
        return op_name(self.code)

    def where(self):
        return "op %d (%s)" % (self.index, self.name)


class _Model:
    """The first subgraph of a model: its tensors, operators, inputs and outputs."""

    def __init__(self, data):
        buf = _Buffer(data)
        if buf.size < 8:
            raise TFLiteFormatError("%d bytes: too short for a .tflite file" % buf.size)
        if bytes(data[4:8]) != b"TFL3":
            raise TFLiteFormatError("file identifier %r, expected b'TFL3' (not a .tflite file)" % bytes(data[4:8]))
        model = buf.table(buf.read("I", 0))
        codes = []
        for c in model.tables(1):
            code = max(c.scalar(0, "b", 0), c.scalar(3, "i", 0))
            codes.append((code, c.string(1)))
        subgraphs = model.tables(2)
        if not subgraphs:
            raise TFLiteFormatError("the model has no subgraph")
        buffers = model.tables(4)
        sg = subgraphs[0]
        self.tensors = [_Tensor(i, t, buffers, buf) for i, t in enumerate(sg.tables(0))]
        n = len(self.tensors)
        self.inputs = [int(v) for v in (sg.array(1, np.int32) if sg.has(1) else [])]
        self.outputs = [int(v) for v in (sg.array(2, np.int32) if sg.has(2) else [])]
        self.operators = [_Operator(i, t, codes) for i, t in enumerate(sg.tables(3))]
        for op in self.operators:
            for t in op.inputs + op.outputs:
                if not -1 <= t < n:
                    raise TFLiteFormatError("%s refers to tensor %d of %d" % (op.where(), t, n))
            if -1 in op.outputs:
                raise TFLiteFormatError("%s has an absent output" % op.where())
        for t in self.inputs + self.outputs:
            if not 0 <= t < n:
                raise TFLiteFormatError("the subgraph's input/output %d is not one of its %d tensors" % (t, n))


def _parse(data):
    try:
        return _Model(data)
    except (struct.error, IndexError, OverflowError, MemoryError) as e:  # belt and braces
        raise TFLiteFormatError("damaged .tflite file (%s)" % e) from None


# ---------------------------------------------------------------- conversion

def load(source, *, strict_input=True):
    """The Graph of an int8 .tflite model (a path, or the file's bytes): its ops with their TFLite
    quantization, its own classifier, nothing trained.

    The device writes an image into the input tensor as int8 = pixel - 128. With strict_input
    (the default) the model's input quantization must be the one for which that is the model's
    own input: the pixel range over the whole int8 range, i.e. images normalised to [0, 1],
    [-1, 1] or [0, 255] (STANDARD_INPUTS), or a uint8 input quantized to int8 by subtracting 128.
    strict_input=False keeps any input quantization as it is (the model then reads pixel - 128
    as real value scale * (pixel - 128 - zero_point)). The input's quantization stays in the graph
    either way, so every op computes exactly what TFLite Micro computes from the same int8 input."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as f:
            data = f.read()
    else:
        raise TypeError("load() takes a .tflite path or its bytes, not %s" % type(source).__name__)
    return _Converter(_parse(data), strict_input).convert()


class _Converter:
    def __init__(self, model, strict_input):
        self.m = model
        self.strict_input = strict_input
        self.producer, self.consumers = {}, {}
        for op in model.operators:
            for t in op.outputs:
                if t in self.producer:
                    raise TFLiteFormatError("tensor %d is the output of two ops" % t)
                self.producer[t] = op
            for t in op.inputs:
                if t >= 0:
                    self.consumers.setdefault(t, []).append(op)
        self.tensors, self.ops = {}, []
        self.names = {}       # TFLite tensor index -> graph tensor name
        self.flattened = {}   # TFLite tensor index -> the RESHAPE/SQUEEZE op that made it

    def tensor(self, i):
        return self.m.tensors[i]

    # ---- structure ----

    def convert(self):
        m = self.m
        if len(m.inputs) != 1 or len(m.outputs) != 1:
            raise ValueError("the model has %d inputs and %d outputs; tinybridge takes one image input and "
                             "one logits output" % (len(m.inputs), len(m.outputs)))
        logits = self._strip_tail(m.outputs[0])
        first = self._input(m.inputs[0])
        live = self._live(logits, first)
        for op in m.operators:
            if op.index in live:
                self._convert(op)
        if logits not in self.names:
            raise ValueError("the logits (tensor %d, %s) are not computed by a supported op"
                             % (logits, self.tensor(logits).name))
        if not self.ops:
            raise ValueError("the model has no op tinybridge runs (supported: %s)" % ", ".join(SUPPORTED))
        g = G.Graph(self.tensors, self.ops, "input", self.names[logits])
        if self.ops[-1].output != g.output:
            raise ValueError("the logits are not the last op's output")
        g.validate()
        return g

    def _strip_tail(self, t):
        """The int8 logits: the subgraph's output with SOFTMAX / DEQUANTIZE / QUANTIZE / RESHAPE /
        SQUEEZE after it removed."""
        for _ in self.m.operators:  # bounded: a damaged file may loop
            op = self.producer.get(t)
            if op is None or op.code not in (SOFTMAX, DEQUANTIZE, QUANTIZE, RESHAPE, SQUEEZE) or not op.inputs:
                break
            x = op.inputs[0]
            if x < 0 or x == t or self.consumers.get(x) != [op] or self.producer.get(x) is None:
                break
            t = x
        return t

    def _live(self, logits, first):
        """Indices of the ops the logits depend on (ops feeding nothing are ignored)."""
        live, todo = set(), [logits]
        while todo:
            t = todo.pop()
            op = self.producer.get(t)
            if op is None or op.index in live or t == first:
                continue
            live.add(op.index)
            todo.extend(i for i in op.inputs if i >= 0)
        return live

    # ---- the input ----

    def _input(self, i):
        t = self.tensor(i)
        if t.type == INT8:
            self._check_input_quant(t, "the input")
            first = i
        elif t.type in (FLOAT32, UINT8):
            ops = self.consumers.get(i, [])
            if len(ops) != 1 or ops[0].code != QUANTIZE:
                raise ValueError("the input is %s; tinybridge runs int8 models: a %s input must be quantized by "
                                 "a single QUANTIZE op" % (t.type_name, t.type_name))
            q = ops[0]
            first = q.outputs[0]
            out = self.tensor(first)
            if out.type != INT8:
                raise ValueError("%s: quantizes the input to %s, expected int8" % (q.where(), out.type_name))
            if t.type == UINT8:
                self._check_uint8_input(t, out, q)
            else:
                self._check_input_quant(out, "the input (%s's output)" % q.where())
            self.producer.pop(first)  # the QUANTIZE is the device's input transfer
        else:
            raise ValueError("the input is %s; tinybridge takes int8, or float32/uint8 followed by QUANTIZE"
                             % t.type_name)
        t = self.tensor(first)
        scale, zero = self._act_quant(first, "the input")
        if len(t.shape) != 4 or t.shape[0] != 1:
            raise ValueError("the input has shape %s; tinybridge takes one image, (1, H, W, C)" % (t.shape,))
        self.tensors["input"] = G.Tensor(tuple(t.shape[1:]), scale, zero)
        self.names[first] = "input"
        return first

    def _check_input_quant(self, t, what):
        if not self.strict_input:
            return
        scale, zero = self._act_quant(t.index, what)
        lo, hi = scale * (-128 - zero), scale * (127 - zero)
        for _, a, b in STANDARD_INPUTS:
            if abs(lo - a) <= 1.01 * scale and abs(hi - b) <= 1.01 * scale:
                return
        raise ValueError(
            "%s is quantized with scale %.6g and zero point %d (int8 -128..127 = real %.4g..%.4g). The device "
            "writes an image as int8 = pixel - 128, which is this model's input only when the pixel range "
            "fills the int8 range: images normalised to %s. Export the model with one of these input "
            "normalisations, or load(..., strict_input=False) to feed pixel - 128 anyway"
            % (what, scale, zero, lo, hi, ", ".join(n for n, _, _ in STANDARD_INPUTS)))

    def _check_uint8_input(self, t, out, q):
        if not self.strict_input:
            return
        if not (t.quantized() and out.quantized() and len(t.scales) == 1 and len(out.scales) == 1):
            raise ValueError("%s: the uint8 input and its int8 output must be quantized per tensor" % q.where())
        same_scale = np.float32(t.scales[0]) == np.float32(out.scales[0])
        if not same_scale or int(out.zero_points[0]) != int(t.zero_points[0]) - 128:
            raise ValueError(
                "%s: quantizes the uint8 input (scale %.6g, zero point %d) to int8 (scale %.6g, zero point %d), "
                "which is not int8 = uint8 - 128, the device's input rule (the same scale and the zero point "
                "less 128); load(..., strict_input=False) feeds pixel - 128 to the int8 tensor anyway"
                % (q.where(), t.scales[0], t.zero_points[0], out.scales[0], out.zero_points[0]))

    # ---- tensors ----

    def _act_quant(self, i, what):
        """(scale, zero_point) of an int8 activation tensor quantized per tensor."""
        t = self.tensor(i)
        if t.type != INT8:
            raise ValueError("%s: tensor %d (%s) is %s; tinybridge runs int8 activations"
                             % (what, i, t.name, t.type_name))
        if not t.quantized() or len(t.scales) != 1 or t.zero_points is None or len(t.zero_points) != 1:
            raise ValueError("%s: tensor %d (%s) must be quantized per tensor (one scale, one zero point)"
                             % (what, i, t.name))
        scale, zero = float(np.float32(t.scales[0])), int(t.zero_points[0])
        if not (np.isfinite(scale) and scale > 0) or not -128 <= zero <= 127:
            raise ValueError("%s: tensor %d (%s) has scale %r and zero point %d" % (what, i, t.name, scale, zero))
        return scale, zero

    def _hwc(self, i, what):
        s = self.tensor(i).shape
        if len(s) == 4 and s[0] == 1:
            return tuple(s[1:])
        if len(s) == 2 and s[0] == 1:
            return (1, 1, s[1])
        raise ValueError("%s: tensor %d (%s) has shape %s; tinybridge takes batch 1, NHWC (or (1, N) vectors)"
                         % (what, i, self.tensor(i).name, s))

    def _input_name(self, op, k, flatten_ok=False):
        """The graph tensor that op's input k is (through any flatten in front of it)."""
        i = op.inputs[k] if k < len(op.inputs) else -1
        if i < 0 or i not in self.names:
            t = "absent" if i < 0 else "tensor %d (%s)" % (i, self.tensor(i).name)
            if i >= 0 and self.tensor(i).data is not None:
                raise ValueError("%s: input %d is a constant; tinybridge takes computed tensors here" % (op.where(), k))
            raise ValueError("%s: input %d, %s, is not computed by a supported op" % (op.where(), k, t))
        name = self.names[i]
        if i in self.flattened and not flatten_ok:
            s = self.tensor(i).shape
            if not (len(s) == 4 and s[0] == 1 and tuple(s[1:]) == self.tensors[name].shape):
                raise ValueError("%s: reads the output of %s; tinybridge supports RESHAPE/SQUEEZE only as a "
                                 "flatten in front of FULLY_CONNECTED" % (op.where(), self.flattened[i].where()))
        return name

    def _new_output(self, op, kind, shape):
        name = "%s_%d" % (kind, len(self.ops))
        y = op.outputs[0]
        scale, zero = self._act_quant(y, op.where())
        self.tensors[name] = G.Tensor(tuple(shape), scale, zero)
        self.names[y] = name
        return name

    def _options(self, op):
        want = _OPTIONS[op.code]
        if op.options is None:
            if op.code == ADD:
                return None
            raise ValueError("%s: has no options" % op.where())
        if op.options_type != want:
            raise TFLiteFormatError("%s: options of union type %d, expected %d" % (op.where(), op.options_type, want))
        return op.options

    def _activation(self, op, code, y_name):
        if code not in _ACTIVATIONS:
            raise ValueError("%s: fused activation %s is not supported (NONE, RELU, RELU6, RELU_N1_TO_1)"
                             % (op.where(), _ACTIVATION_NAMES.get(code, code)))
        y = self.tensors[y_name]
        act = _ACTIVATIONS[code]
        if act == "relu_n1_to_1":
            return _relu_n1_to_1(y.scale, y.zero_point)
        return quant.activation_range(act, y.scale, y.zero_point)

    def _weights(self, op, k, ndim, axis, channels):
        """int8 weights of op's input k, their per-channel float32 scales (a per-tensor scale
        broadcast) and whether they were per tensor."""
        i = op.inputs[k] if k < len(op.inputs) else -1
        if i < 0:
            raise ValueError("%s: has no weights" % op.where())
        t = self.tensor(i)
        if t.data is None:
            raise ValueError("%s: the weights (tensor %d, %s) are not constant" % (op.where(), i, t.name))
        if t.type != INT8:
            raise ValueError("%s: weights (tensor %d, %s) are %s; tinybridge takes int8 weights"
                             % (op.where(), i, t.name, t.type_name))
        if len(t.shape) != ndim:
            raise ValueError("%s: weights of shape %s, expected %d dimensions" % (op.where(), t.shape, ndim))
        if not t.quantized() or t.zero_points is None:
            raise ValueError("%s: weights (tensor %d) are not quantized" % (op.where(), i))
        n = len(t.scales)
        if n not in (1, channels) or len(t.zero_points) not in (1, n):
            raise ValueError("%s: %d weight scales for %d output channels" % (op.where(), n, channels))
        if n > 1 and t.axis != axis:
            raise ValueError("%s: weights quantized along dimension %d, expected %d" % (op.where(), t.axis, axis))
        if (t.zero_points != 0).any():
            raise ValueError("%s: weight zero points must be 0 (symmetric int8)" % op.where())
        scales = np.asarray(t.scales, np.float32)
        if not (np.isfinite(scales) & (scales >= 0)).all():
            raise ValueError("%s: weight scales must be finite and >= 0" % op.where())
        return t.array(np.int8).copy(), np.broadcast_to(scales, (channels,)).astype(np.float32), n == 1

    def _bias(self, op, k, channels):
        i = op.inputs[k] if k < len(op.inputs) else -1
        if i < 0:
            return np.zeros(channels, np.int32)
        t = self.tensor(i)
        if t.type != INT32:
            raise ValueError("%s: bias (tensor %d, %s) is %s; tinybridge takes int32 biases"
                             % (op.where(), i, t.name, t.type_name))
        if t.data is None:
            raise ValueError("%s: the bias (tensor %d) is not constant" % (op.where(), i))
        b = t.array(np.int32).reshape(-1)
        if b.shape != (channels,):
            raise ValueError("%s: bias of %d values for %d output channels" % (op.where(), b.size, channels))
        return b.copy()

    # ---- ops ----

    def _convert(self, op):
        if len(op.outputs) != 1:
            raise ValueError("%s: has %d outputs, expected 1" % (op.where(), len(op.outputs)))
        handler = {CONV_2D: self._conv, DEPTHWISE_CONV_2D: self._conv, FULLY_CONNECTED: self._fully_connected,
                   AVERAGE_POOL_2D: self._avgpool, ADD: self._add, RESHAPE: self._flatten,
                   SQUEEZE: self._flatten}.get(op.code)
        if handler is not None:
            return handler(op)
        if op.code == MEAN:
            raise ValueError(
                "%s: TFLite Micro's int8 MEAN divides by the element count through a fixed-point multiplier, "
                "which rounds differently from AVERAGE_POOL_2D (the device's average pool) in some outputs, so "
                "it cannot be mapped exactly; export the global pooling as AVERAGE_POOL_2D over the whole input "
                "(e.g. keras AveragePooling2D(pool_size=(H, W)) instead of GlobalAveragePooling2D)" % op.where())
        if op.code in (QUANTIZE, DEQUANTIZE, SOFTMAX):
            raise ValueError("%s: supported only at the model's input (QUANTIZE) or after the logits (SOFTMAX, "
                             "DEQUANTIZE, QUANTIZE)" % op.where())
        raise ValueError("%s: not supported by tinybridge (supported: %s)" % (op.where(), ", ".join(SUPPORTED)))

    def _conv(self, op):
        depthwise = op.code == DEPTHWISE_CONV_2D
        o = self._options(op)
        padding = _PADDING.get(o.scalar(0, "b", 0))
        stride_w, stride_h = o.scalar(1, "i", 0), o.scalar(2, "i", 0)
        if depthwise:
            act_code, dil = o.scalar(4, "b", 0), (o.scalar(5, "i", 1), o.scalar(6, "i", 1))
        else:
            act_code, dil = o.scalar(3, "b", 0), (o.scalar(4, "i", 1), o.scalar(5, "i", 1))
        if padding is None:
            raise ValueError("%s: unknown padding %d" % (op.where(), o.scalar(0, "b", 0)))
        if stride_w != stride_h or stride_w < 1:
            raise ValueError("%s: strides %d x %d; tinybridge takes one stride >= 1 for both axes"
                             % (op.where(), stride_h, stride_w))
        if dil != (1, 1):
            raise ValueError("%s: dilation %s is not supported" % (op.where(), dil))
        x = self._input_name(op, 0)
        h, w, c = self.tensors[x].shape
        wt = self.tensor(op.inputs[1]) if len(op.inputs) > 1 and op.inputs[1] >= 0 else None
        if wt is None:
            raise ValueError("%s: has no weights" % op.where())
        if depthwise:
            if len(wt.shape) != 4 or wt.shape[0] != 1 or wt.shape[3] != c:
                raise ValueError("%s: filter of shape %s on %d channels; tinybridge takes depth multiplier 1, "
                                 "filter (1, kh, kw, %d)" % (op.where(), wt.shape, c, c))
            weights, scales, _ = self._weights(op, 1, 4, 3, c)
            weights, out_c, kernel = weights[0], c, wt.shape[1:3]
        else:
            if len(wt.shape) != 4 or wt.shape[3] != c:
                raise ValueError("%s: filter of shape %s on %d input channels (grouped convolution is not "
                                 "supported)" % (op.where(), wt.shape, c))
            out_c, kernel = wt.shape[0], wt.shape[1:3]
            weights, scales, _ = self._weights(op, 1, 4, 0, out_c)
        bias = self._bias(op, 2, out_c)
        want = (_out_size(h, kernel[0], stride_w, padding), _out_size(w, kernel[1], stride_w, padding), out_c)
        if min(want) < 1:
            raise ValueError("%s: a %dx%d kernel does not fit a %dx%d input with VALID padding"
                             % (op.where(), kernel[0], kernel[1], h, w))
        if self._hwc(op.outputs[0], op.where()) != want:
            raise ValueError("%s: output shape %s, but %s padding gives %s"
                             % (op.where(), self.tensor(op.outputs[0]).shape, padding.upper(), (1,) + want))
        if not depthwise and tuple(kernel) == (1, 1) and stride_w == 1:
            kind, weights, geometry = "pointwise", weights[:, 0, 0, :], {}
        else:
            kind, geometry = ("depthwise" if depthwise else "conv2d"), dict(stride=stride_w, padding=padding)
        name = self._new_output(op, kind, want)
        lo, hi = self._activation(op, act_code, name)
        self.ops.append(G.Op(kind, [x], name, name, weights=np.ascontiguousarray(weights), bias=bias,
                             weight_scales=scales, act_min=lo, act_max=hi, **geometry))

    def _fully_connected(self, op):
        o = self._options(op)
        act_code = o.scalar(0, "b", 0)
        if o.scalar(1, "b", 0) != 0:
            raise ValueError("%s: shuffled weights format is not supported" % op.where())
        x = self._input_name(op, 0, flatten_ok=True)
        wt = self.tensor(op.inputs[1]) if len(op.inputs) > 1 and op.inputs[1] >= 0 else None
        if wt is None or len(wt.shape) != 2:
            raise ValueError("%s: weights must be 2-D (out, in)" % op.where())
        out_c, n_in = wt.shape
        if self.tensors[x].size != n_in:
            raise ValueError("%s: %d input values for weights (%d, %d); tinybridge runs batch 1"
                             % (op.where(), self.tensors[x].size, out_c, n_in))
        weights, scales, _ = self._weights(op, 1, 2, 0, out_c)
        bias = self._bias(op, 2, out_c)
        y = op.outputs[0]
        if int(np.prod(self.tensor(y).shape)) != out_c:
            raise ValueError("%s: output shape %s for %d outputs" % (op.where(), self.tensor(y).shape, out_c))
        name = self._new_output(op, "fully_connected", (1, 1, out_c))
        lo, hi = self._activation(op, act_code, name)
        self.ops.append(G.Op("fully_connected", [x], name, name, weights=weights, bias=bias,
                             weight_scales=scales, act_min=lo, act_max=hi))

    def _avgpool(self, op):
        o = self._options(op)
        filter_w, filter_h, act_code = o.scalar(3, "i", 0), o.scalar(4, "i", 0), o.scalar(5, "b", 0)
        x = self._input_name(op, 0)
        h, w, c = self.tensors[x].shape
        if (filter_h, filter_w) != (h, w):
            raise ValueError("%s: a %dx%d filter on a %dx%d input; tinybridge supports AVERAGE_POOL_2D only over "
                             "the whole input (global average pool)" % (op.where(), filter_h, filter_w, h, w))
        if self._hwc(op.outputs[0], op.where()) != (1, 1, c):
            raise ValueError("%s: output shape %s, expected (1, 1, 1, %d)"
                             % (op.where(), self.tensor(op.outputs[0]).shape, c))
        xq = self.tensors[x]
        scale, zero = self._act_quant(op.outputs[0], op.where())
        if np.float32(scale) != np.float32(xq.scale) or zero != xq.zero_point:
            raise ValueError("%s: output quantization (%.6g, %d) differs from the input's (%.6g, %d); TFLite Micro's "
                             "average pool does not requantize, and neither does the device's"
                             % (op.where(), scale, zero, xq.scale, xq.zero_point))
        name = self._new_output(op, "avgpool", (1, 1, c))
        lo, hi = self._activation(op, act_code, name)
        self.ops.append(G.Op("avgpool", [x], name, name, act_min=lo, act_max=hi))

    def _add(self, op):
        o = self._options(op)
        act_code = o.scalar(0, "b", 0) if o is not None else 0
        if len(op.inputs) != 2:
            raise ValueError("%s: has %d inputs, expected 2" % (op.where(), len(op.inputs)))
        a, b = self._input_name(op, 0), self._input_name(op, 1)
        shapes = [self.tensor(i).shape for i in op.inputs]
        if shapes[0] != shapes[1] or self.tensors[a].shape != self.tensors[b].shape:
            raise ValueError("%s: inputs of shapes %s and %s; tinybridge adds tensors of one shape (no "
                             "broadcasting)" % (op.where(), shapes[0], shapes[1]))
        shape = self.tensors[a].shape
        if self._hwc(op.outputs[0], op.where()) != shape:
            raise ValueError("%s: output shape %s differs from the inputs'"
                             % (op.where(), self.tensor(op.outputs[0]).shape))
        name = self._new_output(op, "add", shape)
        lo, hi = self._activation(op, act_code, name)
        self.ops.append(G.Op("add", [a, b], name, name, act_min=lo, act_max=hi))

    def _flatten(self, op):
        x = self._input_name(op, 0, flatten_ok=True)
        y = op.outputs[0]
        xq, yq = self.tensors[x], self._act_quant(y, op.where())
        if np.float32(yq[0]) != np.float32(xq.scale) or yq[1] != xq.zero_point:
            raise ValueError("%s: changes the quantization" % op.where())
        if int(np.prod(self.tensor(y).shape)) != xq.size:
            raise ValueError("%s: output shape %s for %d values" % (op.where(), self.tensor(y).shape, xq.size))
        self.names[y] = x
        self.flattened[y] = op


def _out_size(n, k, stride, padding):
    return (quant.same_padding if padding == "same" else quant.valid_padding)(n, k, stride)[0]


def _relu_n1_to_1(scale, zero_point):
    """[act_min, act_max] of RELU_N1_TO_1, as TFLite's CalculateActivationRangeQuantized."""
    def q(v):
        r = float(np.float32(v) / np.float32(scale))
        return zero_point + int(np.floor(abs(r) + 0.5) * (1 if r >= 0 else -1))
    return max(-128, q(-1.0)), min(127, q(1.0))
