"""The `qemu` device: the tinybridge firmware (device/ + boards/qemu_mps2_an500) built for the
Cortex-M7 and run under qemu-system-arm's mps2-an500 machine.

    elf = qemu.build_firmware()                      # cached under build/qemu/, rebuilt on change
    elf = qemu.build_firmware(model=blob)            # with a model committed in its flash
    link, close = qemu.open_link()                   # QEMU started, pyserial-like link to UART0
    transport = qemu.open_transport(model=blob)      # the same as a tinybridge.transport.Transport

QEMU runs with `-icount shift=0,sleep=off`, so the device's counter counts instructions (exactly
and repeatably), and serves UART0 as a TCP server on a free loopback port that QEMU waits on
before it starts the guest, so the boot event is never lost. A thread keeps reading the socket:
QEMU's UART blocks the guest when nobody reads. Closing the link stops QEMU. QEMU's UART moves only
some 10-25 KB/s, so a model can be baked into the firmware's flash image at build time instead of
being sent (docs/firmware.md).

`python3 -m tinybridge.qemu [--model BLOB] [--port N]` builds and serves the firmware on a fixed
port for other tools (`tinybridge info --port socket://127.0.0.1:N`).
"""
import argparse
import atexit
import binascii
import glob
import hashlib
import os
import re
import secrets
import select
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import weakref

from . import armbuild
from .errors import TinyBridgeError, TransportError
from .transport import Transport

ROOT = armbuild.ROOT
BOARD_DIR = armbuild.QEMU_BOARD
BUILD_DIR = os.path.join(ROOT, "build", "qemu")
LINKER_SCRIPT = os.path.join(BOARD_DIR, "firmware.ld")
BOARD_HEADER = os.path.join(BOARD_DIR, "mps2.h")
QEMU = "qemu-system-arm"
MACHINE = "mps2-an500"
BOARD_NAME = "qemu-mps2-an500"
# The F746's budgets, enforced by firmware.ld: firmware sectors of the 1 MB flash, 320 KB SRAM.
FLASH_BYTES = 1024 * 1024
RAM_BYTES = 320 * 1024
MODEL_MAGIC = 0x314D4254  # "TBM1", device/store.c
MODEL_HEADER_BYTES = 64   # device/store.h TB_MODEL_HEADER_BYTES


def require_qemu():
    if shutil.which(QEMU) is None:
        raise TinyBridgeError("%s not found: install Debian's qemu-system-arm" % QEMU)


# ---------------------------------------------------------------- layout

def layout():
    """The board's memory layout constants (QEMU_* in boards/qemu_mps2_an500/mps2.h), without the
    prefix: STORAGE_BASE, STORAGE_BYTES, SECTOR5_OFFSET, PRELOAD_BASE, SEED_ADDR, ..."""
    with open(BOARD_HEADER) as f:
        found = re.findall(r"^#define QEMU_(\w+) (0x[0-9A-Fa-f]+)u", f.read(), re.M)
    return {name: int(value, 16) for name, value in found}


def model_offset(blob_size):
    """Where device/store.c puts a blob of `blob_size` bytes into an empty storage flash: model slot A
    (sector 6) if it fits sectors 6-7, else slot L from the shared sector 5 on."""
    lay = layout()
    for key in ("SECTOR6_OFFSET", "SECTOR5_OFFSET"):
        if MODEL_HEADER_BYTES + blob_size <= lay["STORAGE_BYTES"] - lay[key]:
            return lay[key]
    raise TinyBridgeError("the model blob (%d bytes) does not fit the storage flash (at most %d bytes)"
                          % (blob_size, lay["STORAGE_BYTES"] - lay["SECTOR5_OFFSET"] - MODEL_HEADER_BYTES))


def model_record(blob, seq=1):
    """A committed model as device/store.c writes it into a model slot: the 64-byte record header
    (magic, seq, size, crc, crc of those 16 bytes, the rest erased) followed by the blob."""
    blob = bytes(blob)
    head = struct.pack("<IIII", MODEL_MAGIC, seq, len(blob), binascii.crc32(blob))
    head += struct.pack("<I", binascii.crc32(head))
    return head + b"\xff" * (MODEL_HEADER_BYTES - len(head)) + blob


def preload_image(records):
    """The preload image the firmware copies into its erased storage flash when QEMU powers on:
    u32 magic, u32 count, then per record u32 offset, u32 length and the bytes padded to 4."""
    lay = layout()
    out = bytearray(struct.pack("<II", lay["PRELOAD_MAGIC"], len(records)))
    for offset, data in records:
        if offset < 0 or offset + len(data) > lay["STORAGE_BYTES"]:
            raise TinyBridgeError("preload record at %#x (%d bytes) is outside the storage flash" % (offset, len(data)))
        out += struct.pack("<II", offset, len(data)) + bytes(data) + b"\x00" * (-len(data) % 4)
    return bytes(out)


def _blob_bytes(model):
    if isinstance(model, (bytes, bytearray, memoryview)):
        return bytes(model)
    if isinstance(model, (str, os.PathLike)):
        with open(model, "rb") as f:
            return f.read()
    if hasattr(model, "to_bytes"):
        return bytes(model.to_bytes())
    raise TypeError("model: bytes, a path or a Model, not %s" % type(model).__name__)


# ---------------------------------------------------------------- build

def firmware_sources():
    """(sources, include directories) of the firmware: native_kernels, device/ and the board's
    port (armbuild adds the board's startup.c)."""
    kernels, kernel_includes = armbuild.kernel_sources()
    device = os.path.join(ROOT, "device")
    sources = kernels + sorted(glob.glob(os.path.join(device, "*.c"))) + [
        os.path.join(BOARD_DIR, "port.c"), os.path.join(BOARD_DIR, "main.c")]
    return sources, kernel_includes + [device]


def build_firmware(out=None, *, model=None, defines=(), build_dir=None):
    """Builds the firmware ELF (cached: rebuilt when a source, header, the link script or the build
    code changes) and returns its path. `model` (bytes, a path or a Model): the ELF also carries the
    blob as the committed model of the storage flash, which the firmware finds when QEMU starts.
    `defines`: extra -D macros (test variants: RX_RING_BYTES=64, COUNTER_RELOAD=0xFFFF)."""
    if not os.path.isfile(LINKER_SCRIPT):
        raise TinyBridgeError("the qemu firmware builds from a source checkout (%s is missing); or set "
                              "$TINYBRIDGE_QEMU_ELF to a prebuilt firmware.elf" % LINKER_SCRIPT)
    build_dir = build_dir or BUILD_DIR
    sources, includes = firmware_sources()
    defines = tuple(defines)
    variant = "-" + hashlib.sha256(" ".join(defines).encode()).hexdigest()[:8] if defines else ""
    if model is None:
        out = out or os.path.join(build_dir, "firmware%s.elf" % variant)
    else:
        blob = _blob_bytes(model)
        image = preload_image([(model_offset(len(blob)), model_record(blob))])
        key = hashlib.sha256(image).hexdigest()[:16]
        out = out or os.path.join(build_dir, "firmware%s-%s.elf" % (variant, key))
        os.makedirs(build_dir, exist_ok=True)
        image_path = os.path.join(build_dir, "preload-%s.bin" % key)
        asm_path = os.path.join(build_dir, "preload-%s.S" % key)
        text = '/* generated by tinybridge.qemu */\n.section .tb_preload,"a",%%progbits\n.incbin "%s"\n' % image_path
        for path, data in ((image_path, image), (asm_path, text.encode())):
            if not os.path.exists(path):  # content-named: an existing one is the same
                tmp = "%s.%d.tmp" % (path, os.getpid())
                with open(tmp, "wb") as f:
                    f.write(data)
                os.replace(tmp, path)
        sources = sources + [asm_path]
    # armbuild's cache looks at sources and headers; the link script and this module count too
    if os.path.exists(out) and os.path.getmtime(out) < max(os.path.getmtime(p) for p in (LINKER_SCRIPT, __file__)):
        os.remove(out)
    return armbuild.build_elf(out, sources, include_dirs=includes, defines=defines, linker_script=LINKER_SCRIPT,
                              extra_flags=["-Wl,-Map," + os.path.splitext(out)[0] + ".map"])


def firmware_size(elf):
    """Bytes used: flash_image (vectors, code, constants, .data's initial values), flash_limit (the
    firmware sectors), ram_static (.data + .bss, the arena included), stack (the rest of the 320 KB),
    preload (a baked-in model's image, outside the F746's map)."""
    result = subprocess.run(["arm-none-eabi-size", "-A", "-d", elf], capture_output=True, text=True, check=True)
    image_end = ram = data = preload = 0
    for line in result.stdout.splitlines():
        parts = line.split()
        if len(parts) != 3 or not parts[1].isdigit():
            continue
        name, size, addr = parts[0], int(parts[1]), int(parts[2])
        if name in (".isr_vector", ".text", ".ARM.exidx"):
            image_end = max(image_end, addr + size)
        elif name == ".tb_preload":
            preload = size
        elif 0x20000000 <= addr < 0x20000000 + RAM_BYTES:
            ram = max(ram, addr + size - 0x20000000)
            data += size if name == ".data" else 0
    return {"flash_image": image_end + data, "flash_limit": layout()["STORAGE_BASE"], "flash_bytes": FLASH_BYTES,
            "ram_static": ram, "ram_bytes": RAM_BYTES, "stack": RAM_BYTES - ram, "preload": preload}


# ---------------------------------------------------------------- launch

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def qemu_command(elf, port, seed=None, extra=()):
    """The qemu-system-arm command line serving UART0 on 127.0.0.1:port (QEMU waits for the client)."""
    cmd = [QEMU, "-M", MACHINE, "-nographic", "-monitor", "none", "-icount", "shift=0,sleep=off",
           "-serial", "tcp:127.0.0.1:%d,server=on,wait=on,nodelay=on" % port, "-kernel", elf]
    if seed is not None:
        # the boot id's randomness: QEMU's loader writes it into RAM at every (re)start
        cmd += ["-device", "loader,addr=%#x,data=%#x,data-len=4" % (layout()["SEED_ADDR"], seed & 0xFFFFFFFF)]
    return cmd + list(extra)


_live_links = weakref.WeakSet()


@atexit.register
def _stop_all():
    """No QEMU outlives the Python process that started it (when that one exits normally)."""
    for link in list(_live_links):
        link.close()


class QemuLink:
    """The firmware's UART0: a pyserial-like byte link (read/write/in_waiting/timeout/close) to a
    QEMU process started by launch(). A thread reads the socket all the time into a buffer, so the
    guest's transmit never blocks on an unread socket. Closing it stops QEMU."""

    def __init__(self, proc, serial, url, stderr):
        self.proc, self.url, self._serial, self._stderr = proc, url, serial, stderr
        self.timeout = None
        self.baudrate = 115200  # accepted and ignored: QEMU does not emulate the line rate
        self._buf = bytearray()
        self._cond = threading.Condition()
        self._closed = False
        self._error = None
        self._thread = threading.Thread(target=self._reader, name="qemu-uart0", daemon=True)
        self._thread.start()
        _live_links.add(self)

    # pyserial's Serial in the subset tinybridge uses
    @property
    def is_open(self):
        return not self._closed

    @property
    def in_waiting(self):
        with self._cond:
            return len(self._buf)

    def _reader(self):
        fd = self._serial.fileno()
        while True:
            try:
                ready, _, _ = select.select([fd], [], [], 0.2)
                data = self._serial.read(65536) if ready else b""  # timeout 0: what is there
            except Exception as e:  # noqa: BLE001 -- the socket closed under us, or QEMU exited
                with self._cond:
                    if not self._closed:
                        self._error = e
                    self._cond.notify_all()
                return
            if data:
                with self._cond:
                    self._buf += data
                    self._cond.notify_all()
            elif self._closed:
                return
            elif self.proc.poll() is not None:
                with self._cond:
                    self._error = TransportError(self._exit_message())
                    self._cond.notify_all()
                return

    def _exit_message(self):
        self._stderr.seek(0)
        tail = self._stderr.read().decode(errors="replace").strip().splitlines()[-3:]
        return "QEMU exited (status %s)%s" % (self.proc.poll(), ": " + " | ".join(tail) if tail else "")

    def read(self, size=1):
        """Up to `size` bytes; waits up to `timeout` seconds (None: forever) for at least one."""
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        with self._cond:
            while not self._buf:
                if self._error is not None:
                    raise TransportError("qemu link: %s" % self._error)
                if self._closed:
                    raise TransportError("qemu link: closed")
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return b""
                self._cond.wait(left)
            data = bytes(self._buf[:size])
            del self._buf[:size]
            return data

    def write(self, data):
        if self._closed:
            raise TransportError("qemu link: closed")
        try:
            self._serial.write(data)
        except Exception as e:  # noqa: BLE001
            raise TransportError("qemu link: %s" % (self._exit_message() if self.proc.poll() is not None else e)) from None
        return len(data)

    def flush(self):
        pass

    def reset_input_buffer(self):
        with self._cond:
            self._buf.clear()

    def close(self):
        """Stops QEMU (the flash content goes with it)."""
        if self._closed:
            return
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        try:
            self._serial.close()
        except Exception:  # noqa: BLE001
            pass
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._thread.join(2)
        self._stderr.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def launch(elf=None, *, model=None, defines=(), seed=None, extra_args=(), connect_timeout=10.0):
    """Builds the firmware if needed (`model`, `defines`: see build_firmware; `elf`: a prebuilt one
    instead, default $TINYBRIDGE_QEMU_ELF), starts QEMU and connects to its UART0: returns a
    QemuLink (its `url` is the socket:// address). `seed`: the boot id's randomness (default: a
    random one per launch). `extra_args`: more qemu-system-arm arguments."""
    require_qemu()
    if elf is None:
        elf = os.environ.get("TINYBRIDGE_QEMU_ELF") if model is None and not defines else None
        elf = elf or build_firmware(model=model, defines=defines)
    elif model is not None or defines:
        raise TinyBridgeError("give either elf= or model=/defines=, not both")
    if seed is None:
        seed = secrets.randbits(32)
    import serial

    last_error = None
    for _attempt in range(3):  # the free port may be taken before QEMU binds it: try another
        port = free_port()
        url = "socket://127.0.0.1:%d" % port
        stderr = tempfile.TemporaryFile()
        proc = subprocess.Popen(qemu_command(elf, port, seed, extra_args), stdin=subprocess.DEVNULL,
                                stdout=stderr, stderr=stderr)
        deadline = time.monotonic() + connect_timeout
        while True:
            try:
                ser = serial.serial_for_url(url, timeout=0)
                return QemuLink(proc, ser, url, stderr)
            except (serial.SerialException, OSError) as e:
                last_error = e
            if proc.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.005)  # QEMU needs a moment to listen
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        stderr.seek(0)
        last_error = stderr.read().decode(errors="replace").strip() or last_error
        stderr.close()
    raise TransportError("cannot start %s on %s: %s" % (QEMU, elf, last_error))


def open_link(**kwargs):
    """(link, close): the pyserial-like QemuLink of launch(**kwargs) and the function that stops QEMU."""
    link = launch(**kwargs)
    return link, link.close


class QemuTransport(Transport):
    """A tinybridge.transport.Transport to the firmware under QEMU (what connect("qemu") uses)."""

    def __init__(self, **kwargs):
        self.link = launch(**kwargs)
        self.description = "qemu (%s, %s)" % (MACHINE, self.link.url)

    def read(self, timeout):
        self.link.timeout = max(0.0, timeout)
        first = self.link.read(1)
        if not first:
            return b""
        return first + self.link.read(self.link.in_waiting) if self.link.in_waiting else first

    def write(self, data):
        self.link.write(data)

    def close(self):
        self.link.close()


def open_transport(**kwargs):
    """QemuTransport(**kwargs): the arguments of launch()."""
    return QemuTransport(**kwargs)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python3 -m tinybridge.qemu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a model blob file to bake into the flash")
    parser.add_argument("--port", type=int, default=0, help="TCP port for UART0 (default: a free one)")
    parser.add_argument("--build-only", action="store_true", help="build, print the ELF and its sizes, exit")
    args = parser.parse_args(argv)
    try:
        elf = build_firmware(model=args.model)
        size = firmware_size(elf)
        print("%s\n  flash: %d of %d bytes (firmware sectors), RAM: %d of %d bytes static, %d bytes stack"
              % (elf, size["flash_image"], size["flash_limit"], size["ram_static"], size["ram_bytes"], size["stack"]))
        if args.build_only:
            return 0
        require_qemu()
        port = args.port or free_port()
        print("serving UART0 on socket://127.0.0.1:%d (QEMU waits for the client; Ctrl-C stops it)" % port, flush=True)
        return subprocess.call(qemu_command(elf, port, secrets.randbits(32)))
    except KeyboardInterrupt:
        return 130
    except TinyBridgeError as e:
        print("error: %s" % e, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
