"""Model: a planned int8 graph, ready to send to a device (Device.load_model) or simulate."""
import struct
from collections import namedtuple

import numpy as np

from . import blob, preprocess
from . import plan as P

# Planned bytes: sram = the arena (params region included), flash = the blob, params = the params
# region (what SAVE persists and read_params returns); peak_at names the step of the arena's peak.
Memory = namedtuple("Memory", "sram flash params peak_at")


class Model:
    """A Graph (tinybridge.graph) and its arena plan (tinybridge.plan; when not given, planned here
    for the smallest arena, as plan.plan(graph) does; tinybridge.compile plans for speed within the
    device's arena). Build a new Model after changing what the graph trains."""

    def __init__(self, graph, plan=None):
        self.graph = graph
        self.plan = P.plan(graph) if plan is None else plan

    @classmethod
    def from_bytes(cls, data):
        g, p = blob.read(data)
        return cls(g, p)

    @classmethod
    def load(cls, path):
        with open(path, "rb") as f:
            return cls.from_bytes(f.read())

    def to_bytes(self):
        return blob.write(self.graph, self.plan)

    def save(self, path):
        with open(path, "wb") as f:
            f.write(self.to_bytes())

    @property
    def memory(self):
        peak_at = self.plan.peak_step[1] if self.plan.steps else None
        return Memory(self.plan.arena_bytes, len(self.to_bytes()), self.plan.params_bytes, peak_at)

    @property
    def input_shape(self):
        return self.graph.tensors[self.graph.input].shape

    @property
    def num_classes(self):
        return self.graph.tensors[self.graph.output].shape[2]

    def input_tensor(self, image):
        """The int8 input tensor of a uint8 image (preprocess.input_tensor)."""
        return preprocess.input_tensor(image, self.input_shape)

    def params_region(self):
        """The params region as a device holds it right after loading this model: zeros, the step
        count and the stochastic-rounding state, the trained biases and weights (sliced weights:
        their trained channels); velocities 0. Device.write_params takes it."""
        region = bytearray(self.plan.params_bytes)
        struct.pack_into("<II", region, 0, self.graph.step, self.graph.seed)
        for op in self.graph.ops:
            refs = self.plan.op_refs[op.name]
            if refs["bias_param"] is not None:
                self._put(region, refs["bias_param"], np.asarray(op.bias, np.int32))
            if refs["weight_param"] is not None:
                weights = op.weights[..., op.channels] if self.plan.sliced(op) else op.weights
                self._put(region, refs["weight_param"], np.asarray(weights, np.int8))
        return bytes(region)

    def _put(self, region, buffer, array):
        off = self.plan.buffers[buffer].offset
        data = np.ascontiguousarray(array).tobytes()
        region[off:off + len(data)] = data

    def apply_params(self, params):
        """Take trained parameters (the params region, as Device.read_params returns it) into the
        graph: trained biases and weights, the step count and the stochastic-rounding state.
        Velocities are not kept (a loaded model restarts them at 0)."""
        params = bytes(params)
        if len(params) != self.plan.params_bytes:
            raise ValueError("params of %d bytes, the model's params region has %d"
                             % (len(params), self.plan.params_bytes))
        self.graph.step, self.graph.seed = struct.unpack_from("<II", params)
        for op in self.graph.ops:
            refs = self.plan.op_refs[op.name]
            if refs["bias_param"] is not None:
                off = self.plan.buffers[refs["bias_param"]].offset
                op.bias = np.frombuffer(params, np.int32, op.bias.size, off).copy()
            if refs["weight_param"] is not None:
                off = self.plan.buffers[refs["weight_param"]].offset
                if self.plan.sliced(op):    # only the trained input channels
                    shape = op.weights.shape[:-1] + (len(op.channels),)
                    op.weights = op.weights.copy()
                    trained = np.frombuffer(params, np.int8, int(np.prod(shape)), off)
                    op.weights[..., op.channels] = trained.reshape(shape)
                else:
                    op.weights = np.frombuffer(params, np.int8, op.weights.size, off).reshape(op.weights.shape).copy()
