"""Byte links to a device: the `sim` process over pipes, or anything pyserial opens.

A Transport reads (waiting up to a timeout for at least one byte), writes, and closes;
`open_transport(port)` picks one from a port name:

* ``"sim"``: spawns the sim executable (the runtime built for this computer) on pipes; closing
  kills it. ``$TINYBRIDGE_SIM`` overrides the executable (the tests use a sanitized build).
* ``"qemu"``: builds the Cortex-M7 firmware if needed and starts it under qemu-system-arm
  (tinybridge.qemu); closing stops QEMU.
* ``"auto"``: the first ST-LINK virtual COM port (USB 0483:374B, 0483:3752, 0483:374E).
* a device path (``/dev/ttyACM0``, ``COM3``) or a pyserial URL (``socket://host:port``,
  ``rfc2217://host:port``, ``loop://``).
"""
import os
import select
import subprocess
import tempfile

from .errors import TransportError

STLINK_USB_IDS = ((0x0483, 0x374B), (0x0483, 0x3752), (0x0483, 0x374E))
DEFAULT_BAUD = 115200


class Transport:
    """A byte stream to one device."""

    description = "device"

    def read(self, timeout):
        """The bytes available, waiting up to `timeout` seconds for at least one (b"": none came)."""
        raise NotImplementedError

    def write(self, data):
        raise NotImplementedError

    def set_baud(self, baud):
        """Switch the link's rate (a serial port); a link without a rate ignores it."""

    def close(self):
        raise NotImplementedError


def sim_executable():
    path = os.environ.get("TINYBRIDGE_SIM") or os.path.join(os.path.dirname(__file__), "bin", "tinybridge-sim")
    if not os.path.exists(path):
        raise TransportError("the sim executable %s is missing: reinstall the package (pip install -e .)" % path)
    return path


class SimTransport(Transport):
    """The sim device as a child process; its stdin/stdout are the link."""

    def __init__(self, flash=None):
        exe = sim_executable()
        self.description = "sim (%s)" % exe
        cmd = [exe] + (["--flash", os.fspath(flash)] if flash else [])
        self._stderr = tempfile.TemporaryFile()
        try:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=self._stderr, bufsize=0)
        except OSError as e:
            raise TransportError("cannot start the sim: %s" % e) from None
        self._in = self.proc.stdout.fileno()
        self._out = self.proc.stdin.fileno()

    def _gone(self):
        """The error for a sim that stopped answering: its exit status and last words."""
        try:
            rc = self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            rc = None
        self._stderr.seek(0)
        tail = self._stderr.read().decode(errors="replace").strip().splitlines()[-3:]
        return TransportError("the sim exited (status %s)%s" % (rc, ": " + " | ".join(tail) if tail else ""))

    def read(self, timeout):
        ready, _, _ = select.select([self._in], [], [], max(0.0, timeout))
        if not ready:
            return b""
        data = os.read(self._in, 65536)
        if not data:
            raise self._gone()
        return data

    def write(self, data):
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._out, view):]
        except (BrokenPipeError, OSError):
            raise self._gone() from None

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.proc.stdin.close()
        self.proc.stdout.close()
        self._stderr.close()


class SerialTransport(Transport):
    """A serial port or pyserial URL."""

    def __init__(self, url, baud=DEFAULT_BAUD):
        import serial

        self.description = url
        self._serial = serial
        try:
            self.port = serial.serial_for_url(url, baudrate=baud, timeout=0)
        except (serial.SerialException, ValueError, OSError) as e:
            raise TransportError("cannot open %s: %s" % (url, e)) from None
        self._timeout = 0

    def _set_timeout(self, timeout):
        if timeout != self._timeout:  # a serial port reconfigures on every change
            self.port.timeout = timeout
            self._timeout = timeout

    def read(self, timeout):
        try:
            self._set_timeout(max(0.0, timeout))
            first = self.port.read(1)
            if not first:
                return b""
            self._set_timeout(0)
            return first + self.port.read(65536)
        except (self._serial.SerialException, OSError) as e:
            raise TransportError("%s: %s" % (self.description, e)) from None

    def write(self, data):
        try:
            self.port.write(data)
        except (self._serial.SerialException, OSError) as e:
            raise TransportError("%s: %s" % (self.description, e)) from None

    def set_baud(self, baud):
        self.port.baudrate = baud

    def close(self):
        self.port.close()


def stlink_ports():
    """Serial ports of ST-LINK debuggers (their virtual COM port), in the order the OS lists them."""
    from serial.tools import list_ports

    return [p for p in list_ports.comports() if (p.vid, p.pid) in STLINK_USB_IDS]


def open_transport(port="sim", *, baud=DEFAULT_BAUD, flash=None):
    """A Transport for `port` (see the module's docstring). `flash`: the sim's flash image file."""
    if port == "sim":
        return SimTransport(flash=flash)
    if flash is not None:
        raise TransportError("flash= applies to the sim only")
    if port == "auto":
        found = stlink_ports()
        if not found:
            raise TransportError("no ST-LINK virtual COM port found (USB 0483:374B/3752/374E); "
                                 "name the port, e.g. /dev/ttyACM0")
        port = found[0].device
    if port == "qemu":
        from .qemu import QemuTransport

        return QemuTransport()
    return SerialTransport(port, baud)
