"""tinybridge: on-device int8 training for microcontrollers, driven from Python."""
from .errors import TinyBridgeError

__version__ = "0.1.0"
__all__ = ["TinyBridgeError", "__version__"]
