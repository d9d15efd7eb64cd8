"""The arena plan: where every buffer of a training step lives in the device's one static arena
(docs/compiler.md, "Planner").

The executor's steps (docs/blob-format.md, Execution) define the timeline: one step per forward op,
the loss, then three per op of the backward pass (bias, input gradient, weights). Every buffer is
live over the steps that use it: activations from their producer to their last reader (a weight
gradient reads its op's input, so training keeps those activations), clamp masks until their
producer's backward (a tensor kept for a weight gradient has none: its values, kept one step longer,
give the clamp), gradients from their first contribution to their producer's last backward phase,
scratch for its step. The params region (trained parameters, optimizer state) sits at offset
0 for the model's whole life.

What the plan does beyond giving every buffer its own lifetime:

* streaming: a tensor that only the next op reads, without gradient and not read by the backward
  pass, is computed a few rows at a time inside that next op's step, into a buffer of the rows the
  next op's window needs (a chain of them streams through one step);
* in place by rows: a conv2d, depthwise or pointwise op whose input (through a streamed chain: the
  chain's first input) dies there may write its output over that input, starting at least `down`
  bytes below it, so that no output row (the op runs row by row, top-down) lands on an input row
  that its own row or a later one still reads;
* an add may write its output over an input that dies there, at the same offset (elementwise);
* the ops of a streamed chain share their kernels' scratch (they take turns, one call at a time);
* an input gradient is requantized into its own int32 accumulator's memory, which becomes the
  input's gradient (tb_grad_requantize_s32_s8 allows that alias); or, for a large accumulator, it is
  computed a few input channels at a time, twice (the exponent needs the whole tensor's maximum);
* a pointwise op's output gradient, scaled by the weight scales for its input gradient, is made a
  few positions at a time where the op trains its weights (which need the unscaled one), each chunk
  scaled together with the largest |g| of each channel so that it gets the whole tensor's exponent;
* sliced weights: the params region holds only the trained input channels of a conv2d, pointwise
  or fully connected weight; the forward assembles the weights of a few output channels at a time
  in a `weight_work` buffer (with their outputs), the input gradient adds the trained channels'
  part separately (`grad_sel`).

Buffers are placed first fit, in two orders (largest first; the long-lived ones stacked first, then
the others largest first), the better one again with the buffers that reach the top of the arena
moved to the front while that lowers it. Streaming, slicing, chunking and positions are chosen where
they lower the bytes needed at the peak steps.
"""
from dataclasses import dataclass, replace

import numpy as np

from . import graph as G
from .kernels import _checks, conv_params

PARAMS_HEADER = 8                     # step count, xorshift32 state
TENSOR_FIELDS = ("buffer", "grad", "mask")
PARAM_FIELDS = ("bias_param", "weight_param", "bias_velocity", "weight_velocity")
OP_FIELDS = ("scratch",) + PARAM_FIELDS + ("bias_grad", "weight_grad", "grad_scaled", "grad_acc",
                                           "grad_scratch", "weight_work", "grad_sel")
BACKWARD_PHASES = ("bias", "input gradient", "weights")
DEFAULT_WGRAD_BYTES = 2048
ROW_KINDS = ("conv2d", "depthwise", "pointwise")   # ops the executor can run by output rows
SLICEABLE = ("conv2d", "pointwise", "fully_connected")
ROLES = ("activation", "mask", "gradient", "scratch")   # work buffers, for the report
ROLE_OF = {"buffer": "activation", "mask": "mask", "grad": "gradient", "scratch": "scratch",
           "bias_grad": "gradient", "weight_grad": "gradient", "grad_scaled": "gradient", "grad_acc": "gradient",
           "grad_sel": "gradient", "grad_scratch": "scratch", "weight_work": "scratch"}
EXACT = None            # Buffer.over: an overlap allowed only at the same offset
ANYWHERE = -float("inf")  # Buffer.over: any overlap (scratch of ops taking turns)
MAX_RUN = 6             # streamable tensors weighed together
DEVICE_ARENA_BYTES = 256 * 1024  # every device's arena (device/runtime.h TB_ARENA_BYTES; HELLO's arena_bytes)
MAX_TRIALS = 64         # rounds of trying whole weights, (smaller) chunks or positions at the peak
PEAK_STEPS = 3          # the steps needing the most memory where those are tried, in turn


def _align4(n):
    return (n + 3) & ~3


@dataclass
class Buffer:
    """`size` bytes at `offset`. `live`: the step intervals [(first, last), ...] it is used in (None
    for params and plans read from a blob). `over`: the buffers live at a common step that this one
    (an op's output, a gradient, a scratch) may overlap: {index: down} when its offset is at most
    that buffer's - down; {index: EXACT} only at the same offset. `role`: one of ROLES or
    "param"."""
    name: str
    size: int
    offset: int = 0
    live: list = None
    over: dict = None
    role: str = "param"

    @property
    def first(self):
        return None if self.live is None else self.live[0][0]

    @property
    def last(self):
        return None if self.live is None else self.live[-1][1]

    def live_at(self, step):
        return self.live is not None and any(a <= step <= b for a, b in self.live)

    def meets(self, other):
        """Are both live at some common step."""
        if self.live[-1][1] < other.live[0][0] or other.live[-1][1] < self.live[0][0]:
            return False
        if len(self.live) == 1 and len(other.live) == 1:
            return True
        return any(a <= d and c <= b for a, b in self.live for c, d in other.live)


class Plan:
    """Buffers (offset, size) and which buffer each tensor and op field uses (an index into
    `buffers`, or None). `stream_rows`: tensor -> rows its buffer holds when it streams;
    `grad_chunk`: op -> input channels per chunk of a chunked input gradient; `scale_positions`:
    op -> output positions per chunk of its scaled output gradient. `steps` names the
    timeline's steps (None for a plan read from a blob)."""

    def __init__(self, buffers, tensor_refs, op_refs, wgrad_chunk, params_bytes, arena_bytes, steps=None,
                 stream_rows=None, grad_chunk=None, scale_positions=None):
        self.buffers = buffers
        self.tensor_refs = tensor_refs      # tensor name -> {field: buffer index or None}
        self.op_refs = op_refs              # op name -> {field: buffer index or None}
        self.wgrad_chunk = wgrad_chunk      # op name -> output channels per weight-gradient chunk
        self.params_bytes = params_bytes
        self.arena_bytes = arena_bytes
        self.steps = steps
        self.stream_rows = stream_rows or {}
        self.grad_chunk = grad_chunk or {}
        self.scale_positions = scale_positions or {}

    def live(self, step):
        """The buffers live at `step`."""
        if not hasattr(self, "_by_step"):
            self._by_step = [[] for _ in self.steps]
            for b in self.buffers:
                for first, last in b.live or ():
                    for s in range(first, last + 1):
                        self._by_step[s].append(b)
        return self._by_step[step]

    def live_bytes(self, step, buffers=None):
        """Bytes of the work region in use at `step`: the union of the live buffers' ranges."""
        ranges = sorted((b.offset, b.offset + b.size) for b in (self.live(step) if buffers is None else buffers))
        total, end = 0, 0
        for lo, hi in ranges:
            if hi > end:
                total += hi - max(lo, end)
                end = hi
        return total

    @property
    def demand(self):
        """The work bytes in use at each step (live_bytes)."""
        if not hasattr(self, "_demand"):
            self._demand = [self.live_bytes(s) for s in range(len(self.steps))]
        return self._demand

    @property
    def peak_step(self):
        """The step needing the most memory, as (index, description): the first with the most work
        bytes in use. Those plus the params region bound any placement from below."""
        s = self.demand.index(max(self.demand))
        return s, self.steps[s]

    def report(self, g):
        """The plan of graph g as a table: per forward op and per backward op (the phase using the
        most bytes), its shapes and the bytes in use there by role (activations, saved masks,
        gradients, scratch: buffers overlapping in place counted once), then the peak."""
        if self.steps is None:
            return "a plan read from a blob has no timeline"
        rows = {}   # (pass, op name) -> (step, bytes by role, total), in timeline order
        for s, step in enumerate(self.steps):
            words = step.split(" ")
            key = (words[0], words[1] if len(words) > 1 else "")
            live = self.live(s)
            total = self.live_bytes(s, live)
            if key not in rows or total > rows[key][2]:
                use = {role: self.live_bytes(s, [b for b in live if b.role == role]) for role in ROLES}
                rows[key] = (s, use, total)
        peak, where = self.peak_step
        lines = ["%-5s %-9s %-24s %-22s %-28s %9s %9s %9s %9s %9s" %
                 ("step", "pass", "op", "kind", "shapes", "act", "mask", "grad", "scratch", "total")]
        for (phase, name), (s, use, total) in rows.items():
            op = next((o for o in g.ops if o.name == name), None)
            kind = "" if op is None else op.kind + (" (streamed)" if op.output in self.stream_rows else "")
            shapes = "" if op is None else "%s -> %s" % (
                "+".join("x".join(map(str, g.tensors[t].shape)) for t in op.inputs),
                "x".join(map(str, g.tensors[op.output].shape)))
            lines.append("%-5d %-9s %-24s %-22s %-28s %9d %9d %9d %9d %9d%s" % (
                s, phase, name, kind, shapes, use["activation"], use["mask"], use["gradient"],
                use["scratch"], total, "  <- peak" if s == peak else ""))
        lines.append("params region %d bytes (trained parameters, optimizer state) at offset 0" % self.params_bytes)
        lines.append("peak: %d bytes in use at step %d, %s; arena %d bytes (params + %d)"
                     % (self.params_bytes + self.live_bytes(peak), peak, where, self.arena_bytes,
                        self.arena_bytes - self.params_bytes))
        return "\n".join(lines)

    def sliced(self, op):
        """Does the params region hold only the trained channels of op's weights (weight_slice)."""
        return self.op_refs[op.name]["weight_work"] is not None

    def conflicts(self):
        """Pairs of buffers live at a common step whose ranges overlap other than as the executor
        makes safe (Buffer.over). Empty for every plan `plan()` makes."""
        work = [(i, b) for i, b in enumerate(self.buffers) if b.live is not None]
        out = []
        for k, (i, a) in enumerate(work):
            for j, b in work[k + 1:]:
                if a.offset < b.offset + b.size and b.offset < a.offset + a.size and a.meets(b) \
                        and not _sanctioned(a, j, b) and not _sanctioned(b, i, a):
                    out.append((a.name, b.name))
        return out


def _sanctioned(a, j, b):
    """May buffer a overlap buffer b (index j) where they are."""
    if not a.over or j not in a.over:
        return False
    if a.over[j] is EXACT:
        return a.offset == b.offset
    return a.offset <= b.offset - a.over[j]


# ---------------- geometry of running an op by rows ----------------

def window(g, op, r):
    """Input rows [a, b) that output row r of a conv2d / depthwise / pointwise op reads."""
    if op.kind == "pointwise":
        return r, r + 1
    h = g.tensors[op.inputs[0]].shape[0]
    _, _, pad_top, _ = g.out_geometry(op)
    top = r * op.stride - pad_top
    return max(0, top), min(h, top + op.kernel[0])


def window_rows(g, op):
    """The most input rows one output row reads."""
    return max(b - a for a, b in (window(g, op, r) for r in range(g.tensors[op.output].shape[0])))


def row_bytes(t):
    return t.shape[1] * t.shape[2]


def root(g, op, stream):
    """The first materialized tensor op reads: its input, or through streamed tensors the input of
    the chain that streams into it (the graph input, when that streams too: see streams_input)."""
    t = op.inputs[0]
    while t in stream and g.producer(t) is not None:
        t = g.ops[g.producer(t)].inputs[0]
    return t


def root_row(g, op, r, stream):
    """The first row of root(op) that output row r of op reads (through a streamed chain)."""
    a = window(g, op, r)[0]
    t = op.inputs[0]
    while t in stream and g.producer(t) is not None:
        p = g.ops[g.producer(t)]
        a = window(g, p, a)[0]
        t = p.inputs[0]
    return a


def inplace_shift(g, op, stream):
    """How far op's output must start below its root input so that, its rows running top-down, no
    output row overlaps a root row that its own row or a later one still reads: the least `down`
    with (r + 1)·out_row <= a_r·in_row + down for every output row r (a multiple of 4)."""
    x, y = g.tensors[root(g, op, stream)], g.tensors[op.output]
    ib, ob = row_bytes(x), row_bytes(y)
    down = max((r + 1) * ob - root_row(g, op, r, stream) * ib for r in range(y.shape[0]))
    return _align4(max(0, down))


def _inplace_extent(g, op, stream):
    x, y = g.tensors[root(g, op, stream)], g.tensors[op.output]
    return max(inplace_shift(g, op, stream) + _align4(x.size), _align4(y.size))


def grad_chunk_bytes(g, op, channels):
    """grad_acc bytes of an input gradient computed `channels` input channels at a time: the int32
    sums of one chunk and one more (the whole tensor's largest), the chunk's weights and, for a
    depthwise op, its output gradient (docs/blob-format.md)."""
    x, y = g.tensors[op.inputs[0]], g.tensors[op.output]
    positions = x.size // x.shape[2]
    weights = op.weights.size // op.weights.shape[-1] * channels
    h = y.size // y.shape[2] * channels if op.kind == "depthwise" else 0
    return 4 * (positions * channels + 1) + _align4(weights) + h


# ---------------- sizes ----------------

_SCRATCH = {}   # _kernel_scratch by op geometry: the planner's trials ask again and again


def _kernel_scratch(g, op):
    """Bytes of forward kernel scratch op needs (tb_*_scratch_bytes of the device's kernels): the
    most that the whole op or any one-row call of it needs (it may run by rows)."""
    x, y = g.tensors[op.inputs[0]], g.tensors[op.output]
    key = (op.kind, x.shape, y.shape, op.kernel, op.stride, g.out_geometry(op) if op.kind == "conv2d" else None,
           x.zero_point, y.zero_point, op.act_min, op.act_max)
    if key not in _SCRATCH:
        _SCRATCH[key] = _kernel_scratch_uncached(g, op)
    return _SCRATCH[key]


def _kernel_scratch_uncached(g, op):
    x, y = g.tensors[op.inputs[0]], g.tensors[op.output]
    if op.kind == "conv2d":
        _, _, pt, pl = g.out_geometry(op)
        p = conv_params(op.kernel, (op.stride, op.stride), (pt, pl), -x.zero_point, y.zero_point,
                        op.act_min, op.act_max)
        whole = _checks.lib.tb_conv2d_s8_scratch_bytes(p, _checks.shape(*x.shape), y.shape[2])
        calls = []
        for r in range(y.shape[0]):
            a, b = window(g, op, r)
            p.pad_top = a - (r * op.stride - pt)
            calls.append(_checks.lib.tb_conv2d_s8_scratch_bytes(p, _checks.shape(b - a, *x.shape[1:]), y.shape[2]))
        return max(calls + [whole])
    if op.kind == "pointwise":
        return _checks.lib.tb_pointwise_conv_s8_scratch_bytes(x.shape[2], y.shape[2])
    return 0


def _taps(op):
    kh, kw = op.kernel
    return kh * kw


def partially_trained(op):
    """Does op train its weights on only some of their input channels (depthwise: channels)."""
    return op.train_weights and len(op.channels) < op.weights.shape[-1]


def weight_slice(op, weights):
    """The trained channels of `weights` as a sliced params region holds them: every output
    channel and tap, the trained input channels innermost ([out][taps][n_channels])."""
    return weights[..., op.channels]


def scaled_bytes(g, op, positions):
    """grad_scaled bytes of an output gradient scaled `positions` positions at a time: the largest
    |g| of each channel, then a chunk's rows and one more, that largest row (docs/blob-format.md)."""
    return (positions + 2) * g.tensors[op.output].shape[2]


def _op_buffer_sizes(g, i, needs, wgrad_chunk, sliced, grad_chunk, positions):
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
    grad_in = g.grad_to_input(op, 0, needs)
    if op.train_bias:
        sizes["bias_param"] = sizes["bias_grad"] = 4 * c
        if momentum:
            sizes["bias_velocity"] = 4 * c
    if op.train_weights:
        depthwise = op.kind == "depthwise"
        if sliced:
            sizes["weight_param"] = per_channel * c
            sizes["weight_work"] = _weight_work_bytes(op, y, wgrad_chunk)
            in_positions = x.size // x.shape[2] if op.kind != "fully_connected" else 1
            sizes["grad_sel"] = 4 * n_sel * ((positions or in_positions) if grad_in else 1)
        else:
            sizes["weight_param"] = op.weights.size
        if momentum:
            sizes["weight_velocity"] = 4 * per_channel * (1 if depthwise else c)
        sizes["weight_grad"] = 4 * per_channel * (1 if depthwise else wgrad_chunk)
    if grad_in:
        sizes["grad_acc"] = grad_chunk_bytes(g, op, grad_chunk) if grad_chunk else 4 * x.size
        if op.train_weights:
            sizes["grad_scaled"] = scaled_bytes(g, op, positions) if positions else y.size
        if op.kind in ("pointwise", "fully_connected"):
            scratch = _checks.lib.tb_pointwise_input_grad_s8_scratch_bytes(c)
            if scratch > 0:
                sizes["grad_scratch"] = scratch
    return sizes


def _weight_work_bytes(op, y, chunk):
    """weight_work of a sliced op: the whole weights of `chunk` output channels, then their
    outputs at every output position."""
    return chunk * (op.weights.size // op.weights.shape[0]) + chunk * (y.size // y.shape[2])


def _chunk_for(op, out_c, wgrad_bytes):
    """Output channels per weight-gradient chunk (and per forward chunk of sliced weights): as many
    as fit wgrad_bytes (at least one)."""
    per_channel = 4 * _taps(op) * len(op.channels)
    return max(1, min(out_c, wgrad_bytes // per_channel))


# ---------------- which tensors stream ----------------

def _consumers(g):
    uses = {t: [] for t in g.tensors}
    for i, op in enumerate(g.ops):
        for t in set(op.inputs):
            uses[t].append(i)
    return uses


def _work_steps(g, stream):
    """The step in which each op's forward runs: a streamed tensor's producer runs inside its
    consumer's step (and so on down a streamed chain)."""
    steps = list(range(len(g.ops)))
    for i in reversed(range(len(g.ops) - 1)):
        if g.ops[i].output in stream:
            steps[i] = steps[i + 1]
    return steps


def _forward_demand(g, stream, consumers, steps):
    """Bytes of activations live at each of `steps` (forward steps) when `stream` streams and every
    op that can runs in place: the planner's lifetimes and overlaps, without placing."""
    work = _work_steps(g, stream)
    forever = len(g.ops)
    span, size = {}, {}
    for name, t in g.tensors.items():
        p = g.producer(name)
        last = max([forever if g.ops[i].train_weights else work[i] for i in consumers[name]] or [forever])
        span[name] = (0 if p is None else work[p], forever if name == g.output else last)
        size[name] = _align4(stream[name] * row_bytes(t) if name in stream else t.size)
    demand = []
    for s in steps:
        d = sum(size[t] for t, (a, b) in span.items() if a <= s <= b)
        for i, op in enumerate(g.ops):
            if work[i] != s or op.output in stream:
                continue
            x = root(g, op, stream) if op.kind in ROW_KINDS else None
            if x is not None and x not in stream and span[x][1] == s:
                d -= size[x] + size[op.output] - _inplace_extent(g, op, stream)
            elif op.kind == "add" and any(span[t][1] == s for t in op.inputs):
                d -= size[op.output]
        demand.append(d)
    return demand


def _streamed(g, needs, consumers, stream_input=None):
    """{tensor: rows} of the tensors to stream. A tensor may stream when a row op produces it, only
    the next op reads it (a row op that does not train its weights) and it has no gradient. Along
    each run of such tensors (consecutive ops), the subset that streams is the one giving the
    fewest activation bytes live at once around the run (then the fewest summed over its steps)."""
    def streamable(i):
        p, c = g.ops[i], g.ops[i + 1]
        return p.kind in ROW_KINDS and c.kind in ROW_KINDS and consumers[p.output] == [i + 1] \
            and not needs[i] and not c.train_weights

    runs, i = [], 0
    while i < len(g.ops) - 1:
        j = i
        while j < len(g.ops) - 1 and streamable(j) and j - i < MAX_RUN:
            j += 1
        if j > i:
            runs.append(range(i, j))
        i = max(j, i + 1)

    def choose(stream):
        for run in runs:
            around = range(max(0, run[0] - 2), min(len(g.ops), run[-1] + 3))
            best = None
            for bits in range(1 << len(run)):
                trial = dict(stream)
                for k, i in enumerate(run):
                    if bits >> k & 1:
                        trial[g.ops[i].output] = window_rows(g, g.ops[i + 1])
                demand = _forward_demand(g, trial, consumers, around)
                if best is None or (max(demand), sum(demand)) < best[0]:
                    best = (max(demand), sum(demand)), trial
            stream = best[1]
        return stream

    # the graph input streams where it can and that needs no more bytes live during the forward
    # pass (its few rows instead of the whole image; but the first materialized output can no longer
    # go over the image in place)
    whole = None if stream_input else choose({})
    if stream_input is False or not streams_input(g, consumers):
        return whole if whole is not None else choose({})
    streamed = choose({g.input: window_rows(g, g.ops[0])})
    if stream_input:
        return streamed
    forward = range(len(g.ops))

    def cost(stream):
        demand = _forward_demand(g, stream, consumers, forward)
        return max(demand), sum(demand)

    return streamed if cost(streamed) <= cost(whole) else whole


def streams_input(g, consumers=None):
    """May the graph input stream (docs/blob-format.md, "Streamed input"): only op 0 reads it, a row
    op that does not train its weights (so no backward step reads the input). Then the device runs
    op 0, and the ops streaming from it, while the input transfer's rows arrive, keeping only the
    rows op 0's window needs."""
    consumers = _consumers(g) if consumers is None else consumers
    op = g.ops[0]
    return consumers[g.input] == [0] and op.kind in ROW_KINDS and op.inputs[0] == g.input \
        and not op.train_weights


# ---------------- the plan ----------------

@dataclass(frozen=True)
class _Choices:
    """What the trials at the peak choose: the ops with sliced weights, input channels per chunk of
    a chunked input gradient (op -> k), positions per chunk of a scaled output gradient (op -> k)."""
    sliced: frozenset
    chunked: dict
    positions: dict

    def without(self, field, name):
        return replace(self, **{field: {k: v for k, v in getattr(self, field).items() if k != name}})

    def including(self, field, name, value):
        return replace(self, **{field: {**getattr(self, field), name: value}})

    def key(self):
        return self.sliced, tuple(sorted(self.chunked.items())), tuple(sorted(self.positions.items()))


def plan(g, *, wgrad_bytes=DEFAULT_WGRAD_BYTES, overlap=True, stream_input=None, arena_budget=None):
    """Plan graph g's arena. wgrad_bytes bounds each weight-gradient chunk. stream_input: whether
    the graph input streams (docs/blob-format.md, "Streamed input"): None where it can and that
    needs no more bytes during the forward pass, True where it can, False never. arena_budget: None
    for the smallest arena; else bytes the arena may take to save instructions (input gradients
    in one pass, output gradients scaled all positions at once, as far as the budget allows;
    DEVICE_ARENA_BYTES: the fastest plan that fits the device).
    overlap=False plans every buffer apart and keeps whole weights (no streaming, in-place op,
    sliced weights, nor chunked or in-place input gradient, nor an output gradient scaled by
    positions): the same results with more memory."""
    g.validate()
    needs = g.needs_output_grad()
    consumers = _consumers(g)
    stream = _streamed(g, needs, consumers, stream_input) if overlap else {}
    sliced = frozenset(op.name for op in g.ops if overlap and op.kind in SLICEABLE and partially_trained(op))
    choices = _Choices(sliced, {}, {})

    def layout(c):
        return _layout(g, needs, consumers, stream, c, wgrad_bytes, overlap)

    best = layout(choices)
    if not overlap:
        return best
    if arena_budget is None or best.arena_bytes > arena_budget:
        best, choices = _smallest(g, needs, layout, best, choices)
    return _relaxed(g, layout, best, choices, max(best.arena_bytes, arena_budget or 0))


def _smallest(g, needs, layout, best, choices):
    """The search for the smallest arena, from plan `best` of `choices`: (plan, choices)."""
    # at the peak step (when that gives nothing, the next ones) try whole weights for a sliced op,
    # chunks for an input gradient or an output gradient scaled a position at a time; go on with the
    # trial needing the fewest bytes at its peak step (not the arena, which a placement may miss
    # until a second change), and keep the smallest arena met
    smallest = best, choices
    for _ in range(MAX_TRIALS):
        ranked = sorted(range(len(best.steps)), key=lambda s: -best.demand[s])
        better, tried = None, set()
        for step in ranked[:PEAK_STEPS]:      # the peak step first, the next ones if it gives nothing
            for trial_choices in _trials(g, needs, best, choices, step):
                if trial_choices.key() in tried:
                    continue
                tried.add(trial_choices.key())
                trial = layout(trial_choices)
                if _cost(trial) < _cost(better[0] if better else best):
                    better = trial, trial_choices
            if better is not None:
                break
        if better is None:
            break
        best, choices = better
        if best.arena_bytes < smallest[0].arena_bytes:
            smallest = better
    return smallest


def _relaxed(g, layout, best, choices, arena_bytes):
    """Plan `best` of `choices` with what costs instructions undone as far as an arena of
    `arena_bytes` allows: a chunked input gradient costs a second pass and a kernel call per chunk,
    an output gradient scaled by positions a call of the input-gradient kernel per chunk; keeps
    only those the arena needs, in the largest chunks it allows. Sliced weights stay: they keep the
    params region, and so the checkpoint in flash, small (a model over 512 KB leaves 32 KB for it:
    docs/protocol.md, "Flash")."""
    wholes = {"chunked": lambda op: g.tensors[op.inputs[0]].shape[2],     # input channels
              "positions": lambda op: g.tensors[op.output].size // g.tensors[op.output].shape[2]}
    for field, whole in wholes.items():
        for name in list(getattr(choices, field)):
            for trial_choices in _loosened(choices, field, name, whole(g.op(name))):
                trial = layout(trial_choices)
                if trial.arena_bytes <= arena_bytes:
                    best, choices = trial, trial_choices
                    break
    return best


def _loosened(choices, field, name, whole):
    """`choices` with op `name`'s split in `field` (chunked, positions) undone, then split into
    ever smaller parts of `whole`, down to the present size: the candidates, cheapest first."""
    out = [choices.without(field, name)]
    k = whole // 2
    while k > getattr(choices, field)[name]:
        out.append(choices.including(field, name, k))
        k //= 2
    return out


def _trials(g, needs, p, choices, step):
    """The choices that change one buffer live at `step` of plan p: whole weights for a sliced op,
    (smaller) chunks for an input gradient, an output gradient scaled a position at a time."""
    out = []
    for op in g.ops:
        refs = p.op_refs[op.name]

        def live(field):
            return refs[field] is not None and p.buffers[refs[field]].live_at(step)

        if op.name in choices.sliced and (live("weight_work") or live("grad_sel")):
            out.append(replace(choices, sliced=choices.sliced - {op.name}))
        if live("grad_acc") and _chunkable(g, needs, choices.sliced, op):
            k = choices.chunked[op.name] // 2 if op.name in choices.chunked else g.tensors[op.inputs[0]].shape[2] // 8
            if k >= 1:
                out.append(choices.including("chunked", op.name, k))
        if (live("grad_scaled") or live("grad_sel")) and scalable_by_positions(g, needs, op) \
                and choices.positions.get(op.name) != 1:
            out.append(choices.including("positions", op.name, 1))
    return out


def _cost(p):
    """What the trials minimize: the bytes in use at the peak step (the arena can be no smaller), the
    arena, then the largest demands of single steps (buffer bytes live there, overlaps counted
    twice) from the largest down."""
    demand = [0] * len(p.steps)
    for b in p.buffers:
        for first, last in b.live or ():
            for s in range(first, last + 1):
                demand[s] += b.size
    return max(p.demand), p.arena_bytes, sorted(demand, reverse=True)[:16]


def values_kept(g, name, consumers):
    """Does tensor `name` stay for the backward pass of an op training its weights: then its
    values, kept until its producer's backward pass, give its clamp (no mask)."""
    return any(g.ops[i].train_weights for i in consumers[name])


def _chunkable(g, needs, sliced, op):
    """May op's input gradient run in chunks of input channels: a row op sending the first gradient
    to its input, with whole weights."""
    return op.kind in ROW_KINDS and g.grad_to_input(op, 0, needs) and g.grad_is_first(g.ops.index(op), 0, needs) \
        and op.name not in sliced and g.tensors[op.inputs[0]].shape[2] > 1


def scalable_by_positions(g, needs, op):
    """May op's output gradient be scaled a few positions at a time for its input gradient: a
    pointwise op that trains its weights (so the unscaled gradient stays for them) and sends a
    gradient to its input, at more than one position."""
    y = g.tensors[op.output]
    return op.kind == "pointwise" and op.train_weights and g.grad_to_input(op, 0, needs) and y.size > y.shape[2]


def _layout(g, needs, consumers, stream, choices, wgrad_bytes, overlap):
    sliced, chunked = choices.sliced, choices.chunked
    n = len(g.ops)
    steps = ["forward %s (%s)" % (op.name, op.kind) + (" -> streamed" if op.output in stream else "")
             for op in g.ops] + ["loss"]
    phase_step = {}
    for i in reversed(range(n)):
        if needs[i]:
            for phase in BACKWARD_PHASES:
                phase_step[i, phase] = len(steps)
                steps.append("backward %s (%s): %s" % (g.ops[i].name, g.ops[i].kind, phase))
    loss = n
    work_step = _work_steps(g, stream)

    buffers, tensor_refs, op_refs = [], {}, {}

    def new(name, field, size, *live):
        buffers.append(Buffer(name, _align4(size), 0, list(live) or None, role=ROLE_OF.get(field, "param")))
        return len(buffers) - 1

    def may_overlap(index, other, shifts):
        buffers[index].over = {**(buffers[index].over or {}), other: shifts}

    # tensors: values, gradients, masks
    for name, t in g.tensors.items():
        p = g.producer(name)
        first = 0 if p is None else work_step[p]
        last = first
        for i in consumers[name]:
            last = max(last, phase_step[i, "weights"] if g.ops[i].train_weights else work_step[i])
        if name == g.output:
            last = max(last, loss)
        refs = tensor_refs[name] = dict.fromkeys(TENSOR_FIELDS)
        size = stream[name] * row_bytes(t) if name in stream else t.size
        refs["buffer"] = new(name, "buffer", size, (first, last))
        if g.has_gradient(name, needs):
            contributions = [phase_step[i, "input gradient"] for i in consumers[name]
                             for k, x in enumerate(g.ops[i].inputs)
                             if x == name and g.grad_to_input(g.ops[i], k, needs)]
            born = loss if name == g.output else min(contributions)
            op = g.ops[p]
            read_until = "weights" if op.train_weights else "input gradient" if any(
                g.grad_to_input(op, k, needs) for k in range(len(op.inputs))) else "bias"
            refs["grad"] = new(name + ".grad", "grad", t.size, (born, phase_step[p, read_until]))
            if values_kept(g, name, consumers):   # the clamp is read from them: kept one step longer
                buffers[refs["buffer"]].live = [(first, max(last, phase_step[p, "bias"]))]
            else:
                refs["mask"] = new(name + ".mask", "mask", (t.size + 7) // 8, (work_step[p], phase_step[p, "bias"]))

    # params region (step, rng, then each op's parameters in field order) and op work buffers
    wgrad_chunk, params_end = {}, PARAMS_HEADER
    for i, op in enumerate(g.ops):
        chunked_wgrad = op.train_weights and op.kind != "depthwise"
        wgrad_chunk[op.name] = _chunk_for(op, g.tensors[op.output].shape[2], wgrad_bytes) if chunked_wgrad else 0
        sizes = _op_buffer_sizes(g, i, needs, wgrad_chunk[op.name], op.name in sliced, chunked.get(op.name),
                                 choices.positions.get(op.name))
        refs = op_refs[op.name] = dict.fromkeys(OP_FIELDS)
        for field in PARAM_FIELDS:
            if field in sizes:
                refs[field] = new("%s.%s" % (op.name, field), field, sizes[field])
                buffers[-1].offset = params_end
                params_end += buffers[-1].size
        bias_step, input_step, weights_step = (phase_step.get((i, phase)) for phase in BACKWARD_PHASES)
        sel_from = input_step if g.grad_to_input(op, 0, needs) else weights_step
        used_at = {"scratch": (work_step[i], work_step[i]), "bias_grad": (bias_step, bias_step),
                   "weight_grad": (weights_step, weights_step), "grad_scaled": (input_step, input_step),
                   "grad_acc": (input_step, input_step), "grad_scratch": (input_step, input_step),
                   "weight_work": (work_step[i], work_step[i]), "grad_sel": (sel_from, weights_step)}
        for field, live in used_at.items():
            if field in sizes:
                refs[field] = new("%s.%s" % (op.name, field), field, sizes[field], live)

    if overlap:
        for i, op in enumerate(g.ops):
            if op.output in stream:
                continue
            out = tensor_refs[op.output]["buffer"]
            if op.kind in ROW_KINDS:
                x = root(g, op, stream)
                if x not in stream and buffers[tensor_refs[x]["buffer"]].last == work_step[i]:
                    may_overlap(out, tensor_refs[x]["buffer"], inplace_shift(g, op, stream))
            elif op.kind == "add":
                dying = [x for x in op.inputs if buffers[tensor_refs[x]["buffer"]].last == i]
                if dying:
                    may_overlap(out, tensor_refs[dying[0]]["buffer"], EXACT)
            acc = op_refs[op.name]["grad_acc"]
            if op.kind in G.WEIGHTED and acc is not None and g.grad_is_first(i, 0, needs) \
                    and op.name not in chunked:
                may_overlap(tensor_refs[op.inputs[0]]["grad"], acc, EXACT)
        # the ops of a streamed chain take turns, one kernel call at a time: their scratch is shared
        scratch = [op_refs[op.name]["scratch"] for op in g.ops]
        for i in range(n):
            for j in range(i + 1, n):
                if work_step[i] == work_step[j] and scratch[i] is not None and scratch[j] is not None:
                    may_overlap(scratch[j], scratch[i], ANYWHERE)

    params_bytes = _align4(params_end)
    arena = _place(buffers, params_bytes)
    return Plan(buffers, tensor_refs, op_refs, wgrad_chunk, params_bytes, arena, steps, stream, dict(chunked),
                dict(choices.positions))


# Orders in which _place tries the buffers; it keeps the placement with the smallest arena. The
# second stacks the buffers that live long (saved for the backward pass, they die in the reverse
# order of their birth, so they pile up without gaps) before the others, which then fill what the
# stack leaves free at their steps. (Largest area first and earliest first were tried too: on the
# paper's 15 schemes they never gave a smaller arena than these two with MAX_BUMPS.) Long: more than
# LONG_LIVED steps; anything from 10 to 60 gives those arenas within 0.6 KB.
LONG_LIVED = 20         # steps
_ORDERS = (lambda b: (-b.size, b.first),
           lambda b: (0, b.first, 0) if b.last - b.first > LONG_LIVED else (1, -b.size, b.first))
MAX_BUMPS = 8           # rounds of placing the buffers at the top of the arena first


def _forbidden(b, i, p, j, at):
    """Offsets [lo, hi) where buffer b (index i) may not go, given buffer p (index j) placed at
    offset `at`."""
    overlapping = (at - b.size + 1, at + p.size)
    if b.over and j in b.over:            # b may overlap p from below
        if b.over[j] is EXACT:
            return [(overlapping[0], at), (at + 1, overlapping[1])]
        return [(max(overlapping[0], at - b.over[j] + 1), overlapping[1])]
    if p.over and i in p.over:            # p may overlap b from below
        if p.over[i] is EXACT:
            return [(overlapping[0], at), (at + 1, overlapping[1])]
        return [(overlapping[0], min(overlapping[1], at + p.over[i]))]
    return [overlapping]


def _meeting(buffers, work):
    """{i: [j, ...]}: the buffers of `work` (indices) whose lifetimes, first to last step, meet
    buffer i's."""
    first = np.array([buffers[i].first for i in work])
    last = np.array([buffers[i].last for i in work])
    both = (first[:, None] <= last[None, :]) & (first[None, :] <= last[:, None])
    np.fill_diagonal(both, False)
    return {i: [work[k] for k in np.flatnonzero(row)] for i, row in zip(work, both)}


def _place(buffers, base):
    """Places the work buffers first fit: each at the lowest offset >= base where it overlaps no
    placed buffer live at a common step (but as Buffer.over allows), taken in each of _ORDERS;
    the better placement again with the buffers that reach the top moved to the front, while that
    lowers the arena. Returns the arena's end."""
    work = [i for i, b in enumerate(buffers) if b.live is not None]
    meets = _meeting(buffers, work)
    # pairs that may overlap as Buffer.over allows; the others may not overlap at all
    sharing = {(i, j) for i in work for j in (buffers[i].over or ())} | \
              {(j, i) for i in work for j in (buffers[i].over or ())}
    # an output that may overlap its input from below goes just before that input (and so on down
    # a chain of them)
    below = {i: j for i in work if buffers[i].over
             for j, down in buffers[i].over.items() if down is not EXACT and down >= 0}

    def chain(i):
        depth = 0
        while i in below:
            i, depth = below[i], depth + 1
        return buffers[i], depth

    sizes = np.array([b.size for b in buffers], np.int64)
    apart = {i: np.array([j for j in meets[i] if (i, j) not in sharing], np.int64) for i in work}
    shared = {i: [j for j in meets[i] if (i, j) in sharing] for i in work}

    def first_fit(order):
        at = np.full(len(buffers), -1, np.int64)
        for i in order:
            others = apart[i][at[apart[i]] >= 0]
            lo, hi = at[others] - sizes[i] + 1, at[others] + sizes[others]    # offsets [lo, hi) would overlap
            extra = [f for j in shared[i] if at[j] >= 0 for f in _forbidden(buffers[i], i, buffers[j], j, int(at[j]))]
            if extra:
                lo, hi = np.concatenate((lo, [f[0] for f in extra])), np.concatenate((hi, [f[1] for f in extra]))
            by_lo = lo.argsort()
            lo = lo[by_lo]
            reach = np.maximum.accumulate(np.concatenate(((base,), hi[by_lo])))   # [k]: past the first k
            fits = reach[:-1] < lo
            k = fits.argmax() if lo.size else 0
            at[i] = reach[k] if lo.size and fits[k] else reach[-1]
        return int((at[order] + sizes[order]).max()), {i: int(at[i]) for i in order}

    chains = {i: chain(i) for i in work}
    orders = [sorted(work, key=lambda i: (key(chains[i][0]), -chains[i][1])) for key in _ORDERS]
    end, offsets, order = min((first_fit(order) + (order,) for order in orders), key=lambda placed: placed[0])
    for _ in range(MAX_BUMPS):
        top = [i for i in order if offsets[i] + buffers[i].size == end]
        bumped = top + [i for i in order if i not in top]
        trial_end, trial_offsets = first_fit(bumped)
        if trial_end >= end:
            break
        order, end, offsets = bumped, trial_end, trial_offsets
    for i, offset in offsets.items():
        buffers[i].offset = offset
    return end
