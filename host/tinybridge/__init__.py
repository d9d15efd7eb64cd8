"""tinybridge: on-device int8 training for microcontrollers, driven from Python."""
from .compiler import SparseUpdate, compile
from .device import Device, ModelInfo, Prediction, StepResult, connect
from .errors import DeviceError, DeviceResetError, ProtocolError, TimeoutError, TinyBridgeError, TransportError
from .model import Model

__version__ = "0.1.0"
__all__ = ["Device", "DeviceError", "DeviceResetError", "Model", "ModelInfo", "Prediction", "ProtocolError",
           "SparseUpdate", "StepResult", "TimeoutError", "TinyBridgeError", "TransportError", "__version__", "compile",
           "connect"]
