"""The arena plan: where every buffer of a training step lives in the device's one static arena.

The executor's steps (docs/blob-format.md, Execution) define the timeline: one step per forward op,
the loss, then three per op of the backward pass (bias, input gradient, weights). Every buffer is
live over the steps that use it: activations from their producer to their last reader (a weight
gradient reads its op's input, so training keeps those activations), clamp masks until their
producer's backward, gradients from their first contribution to their producer's weight update,
scratch for its one step. Buffers are placed first fit, largest first, at the lowest offset that
no buffer live at the same time occupies. The params region (trained parameters, optimizer state)
sits at offset 0 for the model's whole life.
"""
from dataclasses import dataclass

from . import graph as G
from .kernels import _checks, conv_params

PARAMS_HEADER = 8                     # step count, xorshift32 state
TENSOR_FIELDS = ("buffer", "grad", "mask")
PARAM_FIELDS = ("bias_param", "weight_param", "bias_velocity", "weight_velocity")
OP_FIELDS = ("scratch",) + PARAM_FIELDS + ("bias_grad", "weight_grad", "grad_scaled", "grad_acc",
                                           "grad_scratch")
BACKWARD_PHASES = ("bias", "input gradient", "weights")
DEFAULT_WGRAD_BYTES = 8192


def _align4(n):
    return (n + 3) & ~3


@dataclass
class Buffer:
    name: str
    size: int
    offset: int = 0
    first: int = None     # live steps [first, last]; None for params and plans read from a blob
    last: int = None


class Plan:
    """Buffers (offset, size) and which buffer each tensor and op field uses (an index into
    `buffers`, or None). `steps` names the timeline's steps (None for a plan read from a blob)."""

    def __init__(self, buffers, tensor_refs, op_refs, wgrad_chunk, params_bytes, arena_bytes, steps=None):
        self.buffers = buffers
        self.tensor_refs = tensor_refs      # tensor name -> {field: buffer index or None}
        self.op_refs = op_refs              # op name -> {field: buffer index or None}
        self.wgrad_chunk = wgrad_chunk      # op name -> output channels per weight-gradient chunk
        self.params_bytes = params_bytes
        self.arena_bytes = arena_bytes
        self.steps = steps

    def live(self, step):
        return [b for b in self.buffers if b.first is not None and b.first <= step <= b.last]

    @property
    def peak_step(self):
        """The step needing the most memory, as (index, description): the first with the largest
        sum of live buffers. That sum plus the params region bounds any placement from below."""
        demand = [sum(b.size for b in self.live(s)) for s in range(len(self.steps))]
        s = demand.index(max(demand))
        return s, self.steps[s]

    def report(self):
        """The arena, the peak demand, where it occurs and what is live there."""
        s, where = self.peak_step
        live = sorted(self.live(s), key=lambda b: b.offset)
        demand = self.params_bytes + sum(b.size for b in live)
        lines = ["arena %d bytes: params %d + work %d" % (self.arena_bytes, self.params_bytes,
                                                          self.arena_bytes - self.params_bytes),
                 "peak demand %d bytes at step %d, %s; live there (offset, size):" % (demand, s, where)]
        lines += ["  %8d %8d  %s" % (b.offset, b.size, b.name) for b in live]
        return "\n".join(lines)


def _kernel_scratch(g, op):
    """Bytes of forward kernel scratch op needs (tb_*_scratch_bytes of the device's kernels)."""
    x = g.tensors[op.inputs[0]]
    if op.kind == "conv2d":
        _, _, pt, pl = g.out_geometry(op)
        p = conv_params(op.kernel, (op.stride, op.stride), (pt, pl), -x.zero_point,
                        g.tensors[op.output].zero_point, op.act_min, op.act_max)
        return _checks.lib.tb_conv2d_s8_scratch_bytes(p, _checks.shape(*x.shape))
    if op.kind == "pointwise":
        return _checks.lib.tb_pointwise_conv_s8_scratch_bytes(x.shape[2])
    return 0


def _taps(op):
    kh, kw = op.kernel
    return kh * kw


def _op_buffer_sizes(g, i, needs, wgrad_chunk):
    """{field: bytes} of op i's buffers that the blob format requires (docs/blob-format.md)."""
    op = g.ops[i]
    x, y = g.tensors[op.inputs[0]], g.tensors[op.output]
    c = y.shape[2]
    sizes = {}
    scratch = _kernel_scratch(g, op)
    if scratch > 0:
        sizes["scratch"] = scratch
    if op.kind not in G.WEIGHTED:
        if op.kind == "avgpool" and g.grad_to_input(op, 0, needs) and not g.grad_is_first(i, 0, needs):
            sizes["grad_acc"] = x.size
        return sizes
    n_sel = 0 if op.channels is None else len(op.channels)
    per_channel = _taps(op) * n_sel
    momentum = g.momentum > 0
    if op.train_bias:
        sizes["bias_param"] = sizes["bias_grad"] = 4 * c
        if momentum:
            sizes["bias_velocity"] = 4 * c
    if op.train_weights:
        sizes["weight_param"] = op.weights.size
        depthwise = op.kind == "depthwise"
        if momentum:
            sizes["weight_velocity"] = 4 * per_channel * (1 if depthwise else c)
        sizes["weight_grad"] = 4 * per_channel * (1 if depthwise else wgrad_chunk)
    if g.grad_to_input(op, 0, needs):
        sizes["grad_acc"] = 4 * x.size
        if op.train_weights:
            sizes["grad_scaled"] = y.size
        if op.kind in ("pointwise", "fully_connected"):
            scratch = _checks.lib.tb_pointwise_input_grad_s8_scratch_bytes(c)
            if scratch > 0:
                sizes["grad_scratch"] = scratch
    return sizes


def _chunk_for(op, out_c, wgrad_bytes):
    """Output channels per weight-gradient chunk: as many as fit wgrad_bytes (at least one)."""
    per_channel = 4 * _taps(op) * len(op.channels)
    return max(1, min(out_c, wgrad_bytes // per_channel))


def plan(g, *, wgrad_bytes=DEFAULT_WGRAD_BYTES):
    """Plan graph g's arena. wgrad_bytes bounds each weight-gradient chunk."""
    g.validate()
    n = len(g.ops)
    needs = g.needs_output_grad()
    steps = ["forward %s (%s)" % (op.name, op.kind) for op in g.ops] + ["loss"]
    phase_step = {}
    for i in reversed(range(n)):
        if needs[i]:
            for phase in BACKWARD_PHASES:
                phase_step[i, phase] = len(steps)
                steps.append("backward %s (%s): %s" % (g.ops[i].name, g.ops[i].kind, phase))
    loss = n

    buffers, tensor_refs, op_refs = [], {}, {}

    def new(name, size, first=None, last=None):
        buffers.append(Buffer(name, _align4(size), 0, first, last))
        return len(buffers) - 1

    # params region: step, rng, then each op's parameters in field order
    wgrad_chunk, params_end = {}, PARAMS_HEADER
    for i, op in enumerate(g.ops):
        chunked = op.train_weights and op.kind != "depthwise"
        wgrad_chunk[op.name] = _chunk_for(op, g.tensors[op.output].shape[2], wgrad_bytes) if chunked else 0
        sizes = _op_buffer_sizes(g, i, needs, wgrad_chunk[op.name])
        refs = op_refs[op.name] = dict.fromkeys(OP_FIELDS)
        for field in PARAM_FIELDS:
            if field in sizes:
                refs[field] = new("%s.%s" % (op.name, field), sizes[field])
                buffers[-1].offset = params_end
                params_end += buffers[-1].size
        # work buffers of one step: the forward's scratch, each backward phase's
        input_step = phase_step.get((i, "input gradient"))
        used_at = {"scratch": i, "bias_grad": phase_step.get((i, "bias")),
                   "weight_grad": phase_step.get((i, "weights")), "grad_scaled": input_step,
                   "grad_acc": input_step, "grad_scratch": input_step}
        for field, s in used_at.items():
            if field in sizes:
                refs[field] = new("%s.%s" % (op.name, field), sizes[field], s, s)

    # tensors: values, gradients, masks
    for name, t in g.tensors.items():
        p = g.producer(name)
        first = 0 if p is None else p
        last = first
        for i, op in enumerate(g.ops):
            if name in op.inputs:
                last = max(last, phase_step[i, "weights"] if op.train_weights else i)
        if name == g.output:
            last = max(last, loss)
        refs = tensor_refs[name] = dict.fromkeys(TENSOR_FIELDS)
        refs["buffer"] = new(name, t.size, first, last)
        if g.has_gradient(name, needs):
            contributions = [phase_step[i, "input gradient"] for i, op in enumerate(g.ops)
                             for k, x in enumerate(op.inputs) if x == name and g.grad_to_input(op, k, needs)]
            born = loss if name == g.output else min(contributions)
            refs["grad"] = new(name + ".grad", t.size, born, phase_step[p, "weights"])
            refs["mask"] = new(name + ".mask", (t.size + 7) // 8, p, phase_step[p, "bias"])

    params_bytes = _align4(params_end)
    arena = _place([b for b in buffers if b.first is not None], params_bytes)
    return Plan(buffers, tensor_refs, op_refs, wgrad_chunk, params_bytes, arena, steps)


def _place(work, base):
    """First fit, largest first: each buffer at the lowest offset >= base where it overlaps no
    placed buffer live at the same time. Returns the arena's end."""
    placed, end = [], base
    for b in sorted(work, key=lambda b: (-b.size, b.first)):
        busy = sorted((o.offset, o.offset + o.size) for o in placed if o.first <= b.last and b.first <= o.last)
        offset = base
        for lo, hi in busy:
            if offset + b.size <= lo:
                break
            offset = max(offset, hi)
        b.offset = offset
        placed.append(b)
        end = max(end, offset + b.size)
    return end
