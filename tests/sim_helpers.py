"""Shared pieces of the device tests: model blobs, a TCP-served sim, raw frame exchange."""
import functools
import re
import shutil
import struct
import subprocess

import numpy as np
import pytest

from tinybridge import armbuild, graph, plan, qemu, transport
from tinybridge.model import Model
from tinybridge.protocol import Command, Kind, encode_frame

import tiny_model

# What each device of the end-to-end tests says about itself in HELLO: board name, counter unit.
BOARDS = {"sim": ("sim", "ns"), "qemu": ("qemu-mps2-an500", "instructions")}


@functools.lru_cache(maxsize=None)
def tiny_blob(seed=0):
    """A small valid model blob (tests/tiny_model.py's sparse tiny_cnn, 32x32x1, 2 classes)."""
    return tiny_model.sparse_model(seed=seed).to_bytes()


@functools.lru_cache(maxsize=None)
def streamed_blob():
    """tiny_blob()'s model with its input streamed: conv1 (training its bias) runs
    while the 32x32x1 input arrives, through a ring of 3 rows (96 bytes instead of 1,024)."""
    m = tiny_model.sparse_model()
    m = Model(m.graph, plan.plan(m.graph, stream_input=True))
    assert m.plan.stream_rows[m.graph.input] == 3
    return m.to_bytes()


@functools.lru_cache(maxsize=None)
def big_blob(classes=12):
    """A valid model blob of ~49 KB per class: one fully connected layer over a 128x128x3 image,
    bias trained. 12 classes (~590 KB): larger than model slots A and B together (512 KB), so it
    starts in the shared sector; 6 classes (~295 KB): over slots A and B."""
    rng = np.random.default_rng(0)
    b = graph.Builder(rng.integers(0, 256, (4, 128, 128, 3), dtype=np.uint8))
    fc = b.fully_connected(b.input, rng.normal(0, 0.01, (classes, 128 * 128 * 3)), None, name="fc")
    g = b.build(fc)
    g.train("fc", bias=True)
    return Model(g).to_bytes()


def faces(n):
    images, labels = tiny_model.faces()
    return images[:n], [int(v) for v in labels[:n]]


class TcpSim:
    """The sanitized sim serving TCP on a free loopback port: `url` for tinybridge.connect."""

    def __init__(self, flash=None):
        cmd = [transport.sim_executable(), "--tcp", "0"] + (["--flash", str(flash)] if flash else [])
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        line = self.proc.stderr.readline().decode()
        match = re.search(r"127\.0\.0\.1:(\d+)", line)
        assert match, "the sim did not announce its port: %r" % line
        self.port = int(match.group(1))
        self.url = "socket://127.0.0.1:%d" % self.port

    def close(self):
        """Stops the sim; returns what it wrote on stderr after its announcement."""
        alive = self.proc.poll() is None
        self.proc.kill()
        rest = self.proc.stderr.read().decode(errors="replace")
        self.proc.wait()
        assert alive, "the sim died: %s" % rest
        return rest


def raw_exchange(dev, command, payload=b"", seq=None, version=1, timeout=5.0):
    """Sends one hand-made request frame through a Device's transport and returns the response Frame."""
    client = dev.client
    if seq is None:
        client._seq = (client._seq + 1) & 0xFFFF
        seq = client._seq
    client.transport.write(encode_frame(Kind.REQUEST, seq, command, payload, version=version))
    frame = client.wait({seq}, timeout)
    assert frame is not None, "no response to command 0x%02x" % command
    return frame


def upload_raw(dev, slot, data, size=None, crc=None):
    """XFER_BEGIN with the given (possibly false) size and CRC, then every data frame in order;
    returns the XFER_BEGIN response payload."""
    import binascii

    size = len(data) if size is None else size
    crc = binascii.crc32(data) if crc is None else crc
    begin = dev.client.request(Command.XFER_BEGIN, struct.pack("<BII", slot, size, crc))
    step = dev.client.max_payload - 5
    for offset in range(0, len(data), step):
        dev.client.request(Command.XFER_DATA, struct.pack("<BI", slot, offset) + data[offset:offset + step])
    return begin


def require_arm_tools():
    """The ARM toolchain and QEMU are test dependencies (CI installs them): missing is a failure."""
    missing = [t for t in (armbuild.CC, qemu.QEMU) if shutil.which(t) is None]
    if missing:
        pytest.fail("%s not found: install Debian's qemu-system-arm, gcc-arm-none-eabi and "
                    "libnewlib-arm-none-eabi (CI does)" % ", ".join(missing))
