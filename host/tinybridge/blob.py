"""Model blobs, format version 1 (docs/blob-format.md): write one from a Graph and its Plan, read
one back. Everything derived from the graph's float scales (multipliers, bias scales) is computed
here, on write, exactly as TFLite computes it unless the source fixed the multipliers; reading keeps
the scales and the multipliers and drops the rest."""
import binascii
import struct

import numpy as np

from . import graph as G
from . import plan as P
from . import quant

MAGIC = 0x444D4254  # "TBMD"
VERSION = 1
NONE = 0xFFFF
NO_DATA = 0xFFFFFFFF
ADD_LEFT_SHIFT = 20
KIND_CODES = {kind: code for code, kind in enumerate(G.KINDS, start=1)}
TRAIN_BIAS, TRAIN_WEIGHTS, GRAD_INPUT0 = 1, 2, 4
FLAG_SINGLE_ROUNDING = 1    # header flags: Graph.rounding "single"

HEADER = struct.Struct("<IHHII4H2H3I2f2I8x")
TENSOR = struct.Struct("<4HifHHHH")
OP = struct.Struct("<8B4H2i9I2H10H2H")
BUFFER = struct.Struct("<II")
OP_DATA = ("weights", "bias", "mult", "shift", "grad_mult", "grad_shift", "weight_scales",
           "bias_scales", "channels")
OP_BUFFERS = P.OP_FIELDS[:10]   # record offsets 64..82; weight_work at 62, grad_sel at 84
assert (HEADER.size, TENSOR.size, OP.size, BUFFER.size) == (64, 24, 88, 8)


class _Data:
    """The data section: items 4-byte aligned, referenced by offset."""

    def __init__(self):
        self.parts, self.size = [], 0

    def add(self, array):
        if array is None:
            return NO_DATA
        raw = np.ascontiguousarray(array).tobytes()
        offset = self.size
        self.parts.append(raw + b"\0" * (-len(raw) % 4))
        self.size += len(self.parts[-1])
        return offset

    def bytes(self):
        return b"".join(self.parts)


def _ref(index):
    return NONE if index is None else index


def write(g, plan):
    """The blob of graph g with arena plan `plan`."""
    g.validate()
    names = list(g.tensors)
    tid = {name: i for i, name in enumerate(names)}
    needs = g.needs_output_grad()
    data = _Data()
    scale_positions = {op.output: plan.scale_positions.get(op.name, 0) for op in g.ops}
    tensors = b"".join(
        TENSOR.pack(*t.shape, plan.stream_rows.get(name, 0), t.zero_point, np.float32(t.scale),
                    *(_ref(plan.tensor_refs[name][f]) for f in P.TENSOR_FIELDS), scale_positions.get(name, 0))
        for name, t in g.tensors.items())
    ops = b""
    for op in g.ops:
        train = (TRAIN_BIAS * op.train_bias) | (TRAIN_WEIGHTS * op.train_weights)
        for k in range(len(op.inputs)):
            if g.grad_to_input(op, k, needs):
                train |= GRAD_INPUT0 << k
        kh, kw = op.kernel if op.kind in ("conv2d", "depthwise", "pointwise") else (0, 0)
        stride = op.stride if op.kind in ("conv2d", "depthwise", "pointwise") else 0
        pad = g.out_geometry(op)[2:] if op.kind in ("conv2d", "depthwise") else (0, 0)
        items = dict.fromkeys(OP_DATA)
        if op.kind in G.WEIGHTED or op.kind == "add":
            items["mult"], items["shift"] = g.requant(op)
        if op.kind in G.WEIGHTED:
            items.update(weights=op.weights, bias=op.bias, weight_scales=op.weight_scales)
            if op.train_bias:
                items["bias_scales"] = g.bias_scales(op)
            if op.train_weights:
                items["channels"] = op.channels
            if train & GRAD_INPUT0:
                items["grad_mult"], items["grad_shift"] = quant.scale_multipliers(op.weight_scales)
        refs = plan.op_refs[op.name]
        inputs = [tid[t] for t in op.inputs] + [NONE] * (2 - len(op.inputs))
        ops += OP.pack(KIND_CODES[op.kind], train, kh, kw, stride, stride, *pad, *inputs,
                       tid[op.output], 0 if op.channels is None else len(op.channels),
                       op.act_min, op.act_max, *(data.add(items[f]) for f in OP_DATA),
                       plan.wgrad_chunk[op.name], _ref(refs["weight_work"]),
                       *(_ref(refs[f]) for f in OP_BUFFERS), _ref(refs["grad_sel"]),
                       plan.grad_chunk.get(op.name, 0))
    buffers = b"".join(BUFFER.pack(b.offset, b.size) for b in plan.buffers)
    body = tensors + ops + buffers + data.bytes()
    size = HEADER.size + len(body)
    flags = FLAG_SINGLE_ROUNDING if g.rounding == "single" else 0
    fields = [len(names), len(g.ops), len(plan.buffers), tid[g.input], tid[g.output], flags,
              plan.arena_bytes, plan.params_bytes, data.size, np.float32(g.lr), np.float32(g.momentum),
              g.seed, g.step]
    rest = HEADER.pack(MAGIC, VERSION, HEADER.size, size, 0, *fields)[16:] + body
    return HEADER.pack(MAGIC, VERSION, HEADER.size, size, binascii.crc32(rest), *fields)[:16] + rest


def read(blob):
    """(graph, plan) of a blob. Raises ValueError when it is not a well-formed version 1 blob;
    tensors and ops are named by index ("t3", "op5")."""
    blob = bytes(blob)
    if len(blob) < HEADER.size:
        raise ValueError("not a model blob: %d bytes" % len(blob))
    (magic, version, header_bytes, size, crc, n_tensors, n_ops, n_buffers, input_t, output_t, flags,
     arena, params, data_bytes, lr, momentum, seed, step) = HEADER.unpack_from(blob)
    if magic != MAGIC or version != VERSION or header_bytes != HEADER.size:
        raise ValueError("not a version %d model blob" % VERSION)
    if flags & ~FLAG_SINGLE_ROUNDING:
        raise ValueError("model blob has unknown header flags 0x%x" % flags)
    if size != len(blob) or binascii.crc32(blob[16:]) != crc:
        raise ValueError("model blob truncated or corrupted (size or CRC mismatch)")
    pos = HEADER.size
    t_recs = [TENSOR.unpack_from(blob, pos + i * TENSOR.size) for i in range(n_tensors)]
    pos += n_tensors * TENSOR.size
    o_recs = [OP.unpack_from(blob, pos + i * OP.size) for i in range(n_ops)]
    pos += n_ops * OP.size
    b_recs = [BUFFER.unpack_from(blob, pos + i * BUFFER.size) for i in range(n_buffers)]
    data = blob[pos + n_buffers * BUFFER.size:]
    if len(data) != data_bytes:
        raise ValueError("model blob sections do not add up")

    def item(ref, dtype, count):
        return None if ref == NO_DATA else np.frombuffer(data, dtype, count, ref).copy()

    def ref(i):
        return None if i == NONE else i

    names = ["t%d" % i for i in range(n_tensors)]
    tensors, tensor_refs = {}, {}
    stream_rows, positions_of = {}, {}
    for name, (h, w, c, rows, zero, scale, *refs, positions) in zip(names, t_recs):
        tensors[name] = G.Tensor((h, w, c), float(np.float32(scale)), zero)
        tensor_refs[name] = {f: ref(r) for f, r in zip(P.TENSOR_FIELDS, refs)}
        if rows:
            stream_rows[name] = rows
        if positions:
            positions_of[name] = positions
    ops, op_refs, wgrad_chunk, grad_chunk_of = [], {}, {}, {}
    for i, rec in enumerate(o_recs):
        kind_code, train, kh, kw, sh, sw, pt, pl, in0, in1, out, n_sel, act_min, act_max = rec[:14]
        d = dict(zip(OP_DATA, rec[14:23]))
        chunk, weight_work, bufs, grad_sel, grad_chunk = rec[23], rec[24], rec[25:35], rec[35], rec[36]
        if not 1 <= kind_code <= len(G.KINDS):
            raise ValueError("op %d: unknown kind %d" % (i, kind_code))
        kind = G.KINDS[kind_code - 1]
        op = G.Op(kind, [names[in0]] + ([names[in1]] if kind == "add" else []), names[out], "op%d" % i,
                  act_min=act_min, act_max=act_max, train_bias=bool(train & TRAIN_BIAS),
                  train_weights=bool(train & TRAIN_WEIGHTS))
        if d["mult"] != NO_DATA:
            n_mult = 3 if kind == "add" else tensors[names[out]].shape[2]
            op.multipliers = (item(d["mult"], np.int32, n_mult), item(d["shift"], np.int32, n_mult))
        if kind in G.WEIGHTED:
            x, y = tensors[op.inputs[0]], tensors[op.output]
            shape = {"conv2d": (y.shape[2], kh, kw, x.shape[2]), "depthwise": (kh, kw, x.shape[2]),
                     "pointwise": (y.shape[2], x.shape[2]), "fully_connected": (y.shape[2], x.size)}[kind]
            op.weights = item(d["weights"], np.int8, int(np.prod(shape))).reshape(shape)
            op.bias = item(d["bias"], np.int32, y.shape[2])
            op.weight_scales = item(d["weight_scales"], np.float32, y.shape[2])
            op.channels = item(d["channels"], np.int32, n_sel)
        if kind in ("conv2d", "depthwise"):
            if sh != sw:
                raise ValueError("op %d: strides %d, %d differ" % (i, sh, sw))
            op.stride = sh
            op.padding = _padding(tensors[op.inputs[0]].shape, tensors[op.output].shape, (kh, kw), sh, (pt, pl), i)
        ops.append(op)
        op_refs[op.name] = {f: ref(r) for f, r in zip(OP_BUFFERS, bufs)}
        op_refs[op.name].update(weight_work=ref(weight_work), grad_sel=ref(grad_sel))
        if grad_chunk:
            grad_chunk_of[op.name] = grad_chunk
        wgrad_chunk[op.name] = chunk
    g = G.Graph(tensors, ops, names[input_t], names[output_t],
                rounding="single" if flags & FLAG_SINGLE_ROUNDING else "tflite", lr=float(np.float32(lr)),
                momentum=float(np.float32(momentum)), seed=seed, step=step)
    buffers = [P.Buffer("buffer%d" % i, s, o) for i, (o, s) in enumerate(b_recs)]
    scale_positions = {op.name: positions_of[op.output] for op in ops if op.output in positions_of}
    return g, P.Plan(buffers, tensor_refs, op_refs, wgrad_chunk, params, arena, stream_rows=stream_rows,
                     grad_chunk=grad_chunk_of, scale_positions=scale_positions)


def _padding(in_shape, out_shape, kernel, stride, pads, i):
    """The padding ("same", "valid", else an explicit int) that gives these output sizes and
    leading pads."""
    for padding in ("same", "valid", pads[0]):
        try:
            if all(quant.conv_padding(n, k, stride, padding) == (o, p)
                   for n, k, o, p in zip(in_shape[:2], kernel, out_shape[:2], pads)):
                return padding
        except ValueError:
            pass
    raise ValueError("op %d: padding is neither SAME, VALID nor an explicit pad" % i)
