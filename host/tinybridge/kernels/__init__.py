"""The native_kernels C library through cffi: the same code the device runs, for tests and
host-side simulation. numpy in, numpy out; dtypes and shapes are checked (ValueError)."""
from .forward import (add, add_params, avgpool_global, conv2d, conv_params, depthwise_conv2d,
                      fully_connected, pointwise_conv)
from .train import (TRAINED_BIAS_LIMIT, apply_mask, avgpool_global_input_grad, bias_grad, clamp_mask, conv2d_input_grad,
                    conv2d_weight_grad, depthwise_input_grad, depthwise_weight_grad, grad_add,
                    grad_requantize, grad_scale_channels, pointwise_input_grad, pointwise_weight_grad,
                    sgd_update_bias, sgd_update_depthwise, sgd_update_ohwi, softmax_cross_entropy)

__all__ = ["add", "add_params", "avgpool_global", "conv2d", "conv_params", "depthwise_conv2d",
           "fully_connected", "pointwise_conv",
           "TRAINED_BIAS_LIMIT", "apply_mask", "avgpool_global_input_grad", "bias_grad", "clamp_mask", "conv2d_input_grad",
           "conv2d_weight_grad", "depthwise_input_grad", "depthwise_weight_grad", "grad_add",
           "grad_requantize", "grad_scale_channels", "pointwise_input_grad", "pointwise_weight_grad",
           "sgd_update_bias", "sgd_update_depthwise", "sgd_update_ohwi", "softmax_cross_entropy"]

# `with kernels.recording() as rec:` records every C call (record.py; docs/kernels.md)
from .record import recording  # noqa: E402

__all__ += ["recording"]
