"""The error classes of the public API; every error tinybridge raises derives from TinyBridgeError."""


class TinyBridgeError(Exception):
    """Base class of tinybridge's errors."""


class TransportError(TinyBridgeError):
    """The link to the device cannot be opened, or broke."""


class ProtocolError(TinyBridgeError):
    """The device answered something the protocol does not allow."""


class TimeoutError(TinyBridgeError):  # noqa: A001 -- shadows the builtin inside tinybridge on purpose
    """No answer from the device within the timeout, after the allowed retries."""


class DeviceResetError(TinyBridgeError):
    """The device rebooted (its boot id changed) while a request was outstanding or since the last one."""


# docs/protocol.md, "Errors"
ERROR_NAMES = {
    1: "VERSION", 2: "UNKNOWN_COMMAND", 3: "BAD_LENGTH", 4: "BAD_ARGUMENT", 5: "NO_MODEL",
    6: "NO_INPUT", 7: "BAD_STATE", 8: "BAD_OFFSET", 9: "TOO_LARGE", 10: "CRC_MISMATCH",
    11: "BAD_BLOB", 12: "FLASH", 13: "INCOMPLETE", 14: "EXEC",
}


class DeviceError(TinyBridgeError):
    """The device refused a request: `code` (docs/protocol.md), `name` and its message."""

    def __init__(self, code, message="", detail=b""):
        self.code = code
        self.name = ERROR_NAMES.get(code, "ERROR_%d" % code)
        self.message = message
        self.detail = detail  # bytes before the message (BAD_OFFSET: the expected offset)
        super().__init__("%s: %s" % (self.name, message) if message else self.name)
