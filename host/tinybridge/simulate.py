"""The device's executor on the host: the steps of docs/blob-format.md ("Execution") in the same
order, through the same C kernels (tinybridge.kernels), with the same stochastic-rounding state,
so that a model trained here and one trained on a device agree byte for byte.

    sim = Simulator(model)
    loss, label_pred, step = sim.train_step(model.input_tensor(image), label)
    sim.params() == device.read_params()

Each tensor is its own whole numpy array here; the device shares arena memory as the plan says
(streaming, in-place ops, chunked input gradients and sliced weights compute the same numbers by
parts). A plan that let two live buffers overlap unsafely would make the device disagree with this
simulation.
"""
import struct
from collections import namedtuple

import numpy as np

from . import kernels, quant
from . import plan as P
from .device import StepResult

# INFER's answer before dequantization: logit value = scale * (logits - zero_point)
Inference = namedtuple("Inference", "label logits scale zero_point")


class Simulator:
    """Runs `model` (tinybridge.Model) from its initial parameters, as a device does after loading
    its blob.

    qas=False is a host-side experiment (devices always run QAS): the paper's baseline without
    Quantization-Aware Scaling, stepping each int8 parameter by its own gradient,
    W̄ -= lr · G · s (s = s_W for weights, s_x · s_W for biases; G the gradient of the dequantized
    parameter) instead of QAS's lr · G / s (docs/compiler.md, "Training schemes")."""

    def __init__(self, model, qas=True):
        self.model = model
        self.qas = qas
        g = self.graph = model.graph
        g.validate()
        self._needs = g.needs_output_grad()
        self.step, self.rng = g.step, g.seed
        self.bias, self.weights, self.bias_velocity, self.weight_velocity = {}, {}, {}, {}
        for op in g.ops:
            if op.train_bias:
                self.bias[op.name] = op.bias.copy()
                if g.momentum > 0:
                    self.bias_velocity[op.name] = np.zeros(op.bias.shape, np.float32)
            if op.train_weights:
                self.weights[op.name] = op.weights.copy()
                if g.momentum > 0:
                    self.weight_velocity[op.name] = np.zeros(self._velocity_shape(op), np.float32)

    @staticmethod
    def _velocity_shape(op):
        n_sel = len(op.channels)
        if op.kind == "depthwise":
            return op.kernel + (n_sel,)
        return op.weights.shape[:-1] + (n_sel,)

    # ---- forward ----

    def _w(self, op):
        return self.weights.get(op.name, op.weights)

    def _b(self, op):
        return self.bias.get(op.name, op.bias)

    def _forward_op(self, op, values):
        g = self.graph
        x, y = g.tensors[op.inputs[0]], g.tensors[op.output]
        v = values[op.inputs[0]]
        q = dict(input_offset=-x.zero_point, output_offset=y.zero_point, act_min=op.act_min,
                 act_max=op.act_max, rounding=g.rounding)
        if op.kind in ("conv2d", "depthwise", "pointwise", "fully_connected"):
            mult, shift = g.requant(op)
        if op.kind == "conv2d":
            return kernels.conv2d(v, self._w(op), self._b(op), mult, shift, stride=op.stride,
                                  padding=op.padding, **q)
        if op.kind == "depthwise":
            return kernels.depthwise_conv2d(v, self._w(op), self._b(op), mult, shift, stride=op.stride,
                                            padding=op.padding, **q)
        if op.kind == "pointwise":
            return kernels.pointwise_conv(v, self._w(op), self._b(op), mult, shift, **q)
        if op.kind == "fully_connected":
            return kernels.fully_connected(v.reshape(-1), self._w(op), self._b(op), mult, shift,
                                           **q).reshape(y.shape)
        if op.kind == "avgpool":
            return kernels.avgpool_global(v, act_min=op.act_min, act_max=op.act_max,
                                          rounding=g.rounding).reshape(y.shape)
        b = g.tensors[op.inputs[1]]
        (ma, mb, my), (sa, sb, sy) = g.requant(op)
        p = kernels.add_params(-x.zero_point, int(ma), int(sa), -b.zero_point, int(mb), int(sb), 20,
                               y.zero_point, int(my), int(sy), op.act_min, op.act_max)
        return kernels.add(v, values[op.inputs[1]], p)

    def _forward(self, x, training):
        g = self.graph
        x = np.asarray(x)
        if x.dtype != np.int8 or x.shape != g.tensors[g.input].shape:
            raise ValueError("input must be int8 %s (Model.input_tensor)" % (g.tensors[g.input].shape,))
        values, masks = {g.input: x}, {}
        for i, op in enumerate(g.ops):
            values[op.output] = self._forward_op(op, values)
            if training and self._needs[i]:
                masks[op.output] = kernels.clamp_mask(values[op.output], op.act_min, op.act_max)
        return values, masks

    def infer(self, x):
        """Inference(label, logits, scale, zero_point) of the int8 input tensor x."""
        g = self.graph
        logits = self._forward(x, False)[0][g.output].reshape(-1)
        y = g.tensors[g.output]
        return Inference(int(np.argmax(logits)), logits, y.scale, y.zero_point)

    # ---- training ----

    def train_step(self, x, label, lr=None):
        """One training step on the int8 input tensor x: StepResult(loss, label_pred, step).
        lr None or <= 0: the model's default."""
        g = self.graph
        y = g.tensors[g.output]
        if not 0 <= label < y.shape[2]:
            raise ValueError("label %d out of range [0, %d)" % (label, y.shape[2]))
        lr = np.float32(g.lr if lr is None or lr <= 0 else lr)
        if g.backward_stop() == len(g.ops):
            raise ValueError("the model trains no parameter")
        values, masks = self._forward(x, True)
        logits = values[g.output].reshape(-1)
        loss, (dl, e) = kernels.softmax_cross_entropy(logits, label, scale=y.scale, zero_point=y.zero_point,
                                                      mask=masks[g.output])
        grads = {g.output: (dl.reshape(y.shape), e)}
        for i in reversed(range(g.backward_stop(), len(g.ops))):
            if self._needs[i]:
                self._backward_op(i, values, masks, grads, lr)
        self.step += 1
        return StepResult(float(np.float32(loss)), int(np.argmax(logits)), self.step)

    def _contribute(self, grads, i, k, v, e):
        """Op i's gradient (v, e) for its input k: the first one is kept, later ones summed."""
        t = self.graph.ops[i].inputs[k]
        if self.graph.grad_is_first(i, k, self._needs):
            grads[t] = (v, e)
        else:
            grads[t] = kernels.grad_add(grads[t][0], grads[t][1], v, e)

    def _update_args(self, lr, velocity):
        return dict(lr=lr, rng=self.rng, momentum=np.float32(self.graph.momentum), velocity=velocity)

    def _param_scale(self, scale):
        """What the update kernels divide lr · G by: the parameter's scale (QAS), or its reciprocal
        (without QAS, so that the kernels step lr · G · scale)."""
        return scale if self.qas else np.float32(1) / np.asarray(scale, np.float32)

    def _backward_op(self, i, values, masks, grads, lr):
        g = self.graph
        op = g.ops[i]
        x = g.tensors[op.inputs[0]]
        gy, e = grads[op.output]
        gy = kernels.apply_mask(gy, masks[op.output])
        if op.kind == "add":
            for k in range(2):
                if g.grad_to_input(op, k, self._needs):
                    self._contribute(grads, i, k, gy, e)
            return
        if op.kind == "avgpool":
            gx, ex = kernels.avgpool_global_input_grad(gy.reshape(-1), e, x.shape[:2])
            self._contribute(grads, i, 0, gx, ex)
            return
        if op.train_bias:
            gb = kernels.bias_grad(gy)
            self.bias[op.name], v, self.rng = kernels.sgd_update_bias(
                self.bias[op.name], gb, grad_scale=np.ldexp(np.float32(1), e),
                param_scale=self._param_scale(g.bias_scales(op)),
                **self._update_args(lr, self.bias_velocity.get(op.name)))
            if v is not None:
                self.bias_velocity[op.name] = v
        if g.grad_to_input(op, 0, self._needs):
            self._input_grad(i, gy, e, grads, masks)
        if op.train_weights:
            self._weight_update(op, values[op.inputs[0]], gy, e, lr)

    def _input_grad(self, i, gy, e, grads, masks):
        g = self.graph
        op = g.ops[i]
        x = g.tensors[op.inputs[0]]
        h, eh = kernels.grad_scale_channels(gy, e, *quant.scale_multipliers(op.weight_scales))
        w = self._w(op)
        if op.kind == "conv2d":
            acc = kernels.conv2d_input_grad(h, w, in_hw=x.shape[:2], stride=op.stride, padding=op.padding)
        elif op.kind == "depthwise":
            acc = kernels.depthwise_input_grad(h, w, in_hw=x.shape[:2], stride=op.stride, padding=op.padding)
        elif op.kind == "pointwise":
            acc = kernels.pointwise_input_grad(h, w)
        else:
            acc = kernels.pointwise_input_grad(h.reshape(1, -1), w).reshape(x.shape)
        # masked before requantizing, so the exponent fits the values that survive the input's clamp
        acc = kernels.apply_mask(acc, masks[op.inputs[0]])
        self._contribute(grads, i, 0, *kernels.grad_requantize(acc, eh))

    def _weight_update(self, op, xv, gy, e, lr):
        g = self.graph
        x = g.tensors[op.inputs[0]]
        grad_scale = np.ldexp(np.float32(x.scale), e)
        velocity = self.weight_velocity.get(op.name)
        common = dict(grad_scale=grad_scale, param_scale=self._param_scale(op.weight_scales))
        if op.kind == "depthwise":
            gw = kernels.depthwise_weight_grad(xv, gy, kernel=op.kernel, stride=op.stride, padding=op.padding,
                                               input_offset=-x.zero_point, sel=op.channels)
            self.weights[op.name], v, self.rng = kernels.sgd_update_depthwise(
                self.weights[op.name], gw, sel=op.channels, **common, **self._update_args(lr, velocity))
            if v is not None:
                self.weight_velocity[op.name] = v
            return
        out_c = g.tensors[op.output].shape[2]
        chunk = self.model.plan.wgrad_chunk[op.name]
        for c0 in range(0, out_c, chunk):
            c1 = min(c0 + chunk, out_c)
            if op.kind == "conv2d":
                gw = kernels.conv2d_weight_grad(xv, gy, kernel=op.kernel, stride=op.stride, padding=op.padding,
                                                input_offset=-x.zero_point, sel=op.channels, c_range=(c0, c1))
            elif op.kind == "pointwise":
                gw = kernels.pointwise_weight_grad(xv, gy, input_offset=-x.zero_point, sel=op.channels,
                                                   c_range=(c0, c1))
            else:
                gw = kernels.pointwise_weight_grad(xv.reshape(-1), gy.reshape(-1), input_offset=-x.zero_point,
                                                   sel=op.channels, c_range=(c0, c1))
            chunk_velocity = None if velocity is None else velocity[c0:c1]
            self.weights[op.name], v, self.rng = kernels.sgd_update_ohwi(
                self.weights[op.name], gw, sel=op.channels, c_range=(c0, c1), **common,
                **self._update_args(lr, chunk_velocity))
            if v is not None:
                velocity[c0:c1] = v

    # ---- the params region ----

    def params(self):
        """The params region exactly as the device holds it (docs/blob-format.md)."""
        plan = self.model.plan
        out = bytearray(plan.params_bytes)
        struct.pack_into("<II", out, 0, self.step, self.rng)
        for op in self.graph.ops:
            refs = plan.op_refs[op.name]
            for field, store in (("bias_param", self.bias), ("weight_param", self.weights),
                                 ("bias_velocity", self.bias_velocity),
                                 ("weight_velocity", self.weight_velocity)):
                if refs[field] is not None:
                    value = store[op.name]
                    if field == "weight_param" and plan.sliced(op):
                        value = P.weight_slice(op, value)
                    raw = np.ascontiguousarray(value).tobytes()
                    off = plan.buffers[refs[field]].offset
                    out[off:off + len(raw)] = raw
        return bytes(out)
