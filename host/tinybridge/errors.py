"""The error classes of the public API; every error tinybridge raises derives from TinyBridgeError."""


class TinyBridgeError(Exception):
    """Base class of tinybridge's errors."""
