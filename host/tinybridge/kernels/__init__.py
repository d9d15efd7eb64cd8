"""The native_kernels C library through cffi: the same code the device runs, for tests and
host-side simulation. numpy in, numpy out; dtypes and shapes are checked (ValueError)."""
from .forward import (add, add_params, avgpool_global, conv2d, conv_params, depthwise_conv2d,
                      fully_connected, pointwise_conv)

__all__ = ["add", "add_params", "avgpool_global", "conv2d", "conv_params", "depthwise_conv2d",
           "fully_connected", "pointwise_conv"]
