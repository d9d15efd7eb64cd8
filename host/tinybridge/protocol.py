"""The wire protocol of docs/protocol.md on the host side: frame codec and the request Client.

A frame on the wire is COBS(body) 0x00 with body = header | payload | CRC-32. The Client numbers
requests, waits for their responses, resends the identical frame after a timeout (the device
answers a repeated request from its cache without executing it again), routes log frames to
`logging` (logger ``tinybridge.device``), raises DeviceResetError when the device's boot id
changes, and moves blobs with windowed, resumable transfers.
"""
import binascii
import collections
import enum
import logging
import random
import struct
import time

from .errors import DeviceError, DeviceResetError, ProtocolError, TimeoutError

VERSION = 1
HEADER = struct.Struct("<BBHHH")  # version, kind, seq, command, status
CRC_BYTES = 4
MIN_BODY = HEADER.size + CRC_BYTES
MAX_PAYLOAD = 2048  # every board's; HELLO confirms it


class Kind(enum.IntEnum):
    REQUEST = 1
    RESPONSE = 2
    LOG = 3
    EVENT = 4


class Command(enum.IntEnum):
    HELLO = 0x01
    STATS = 0x02
    MODEL_INFO = 0x03
    PROFILE = 0x04
    XFER_BEGIN = 0x10
    XFER_DATA = 0x11
    XFER_COMMIT = 0x12
    XFER_READ = 0x13
    XFER_STAT = 0x14
    INFER = 0x20
    TRAIN_STEP = 0x21
    SAVE = 0x22
    RESET = 0x23
    SET_BAUD = 0x24


class Slot(enum.IntEnum):
    MODEL = 1
    INPUT = 2
    PARAMS = 3


EVENT_BOOT = 1
BAD_OFFSET = 8

crc32 = binascii.crc32

device_log = logging.getLogger("tinybridge.device")


def cobs_encode(data):
    """COBS without the trailing delimiter: the result contains no 0x00."""
    out = bytearray()
    start = 0
    n = len(data)
    while True:
        end = start
        while end < n and data[end] != 0 and end - start < 254:
            end += 1
        out.append(end - start + 1)
        out += data[start:end]
        if end - start == 254:
            if end == n:
                return bytes(out)
            start = end
            continue
        if end == n:
            return bytes(out)
        start = end + 1


def cobs_decode(data):
    """Inverse of cobs_encode; ValueError for input no encoder produces."""
    out = bytearray()
    i = 0
    n = len(data)
    if n == 0:
        raise ValueError("empty COBS frame")
    while i < n:
        code = data[i]
        if code == 0:
            raise ValueError("zero byte inside a COBS frame")
        block = data[i + 1:i + code]
        if len(block) != code - 1 or 0 in block:
            raise ValueError("truncated or corrupt COBS block")
        out += block
        i += code
        if code != 0xFF and i < n:
            out.append(0)
    return bytes(out)


Frame = collections.namedtuple("Frame", "version kind seq command status payload")


def encode_frame(kind, seq, command, payload=b"", status=0, version=VERSION):
    """The wire bytes of one frame, delimiter included."""
    body = HEADER.pack(version, kind, seq, command, status) + bytes(payload)
    return cobs_encode(body + struct.pack("<I", crc32(body))) + b"\x00"


def decode_frame(encoded):
    """A Frame from its wire bytes without the delimiter; ProtocolError if it is not one."""
    try:
        body = cobs_decode(encoded)
    except ValueError as e:
        raise ProtocolError("bad frame: %s" % e) from None
    if not MIN_BODY <= len(body) <= MIN_BODY + MAX_PAYLOAD:
        raise ProtocolError("bad frame: %d-byte body" % len(body))
    if struct.unpack_from("<I", body, len(body) - CRC_BYTES)[0] != crc32(body[:-CRC_BYTES]):
        raise ProtocolError("bad frame: CRC mismatch")
    return Frame(*HEADER.unpack_from(body), body[HEADER.size:-CRC_BYTES])


MAX_ENCODED = MIN_BODY + MAX_PAYLOAD + (MIN_BODY + MAX_PAYLOAD) // 254 + 1


class FrameReader:
    """Splits a byte stream into Frames at each 0x00; drops (and counts) bad and oversized ones."""

    def __init__(self):
        self._buf = bytearray()
        self._oversized = False
        self.bad_frames = 0

    def feed(self, data):
        frames = []
        for part_index, part in enumerate(bytes(data).split(b"\x00")):
            if part_index > 0:
                self._end_frame(frames)
            if self._oversized:
                continue
            self._buf += part
            if len(self._buf) > MAX_ENCODED:
                self._oversized = True
                self._buf.clear()
        return frames

    def _end_frame(self, frames):
        if self._oversized:
            self.bad_frames += 1
        elif self._buf:
            try:
                frames.append(decode_frame(bytes(self._buf)))
            except ProtocolError:
                self.bad_frames += 1
        self._buf.clear()
        self._oversized = False


def u32(payload, offset=0):
    if len(payload) < offset + 4:
        raise ProtocolError("response payload of %d bytes is too short" % len(payload))
    return struct.unpack_from("<I", payload, offset)[0]


class Client:
    """Requests and responses over one Transport."""

    def __init__(self, transport, timeout=5.0, retries=2):
        self.transport = transport
        self.timeout = timeout
        self.retries = retries
        self.reader = FrameReader()
        self.boot_id = None
        self.window = 1
        self.max_payload = MAX_PAYLOAD
        self._seq = random.randrange(1 << 16)
        self._frames = collections.deque()
        # a leading delimiter ends whatever partial frame the device may hold from an earlier host
        transport.write(b"\x00")

    # ---------------- frames ----------------

    def _handle(self, frame):
        """Consumes log and event frames; returns responses."""
        if frame.kind == Kind.LOG:
            device_log.log(frame.command, "%s", frame.payload.decode("utf-8", errors="replace"))
        elif frame.kind == Kind.EVENT and frame.command == EVENT_BOOT and len(frame.payload) >= 4:
            self.boot_event(u32(frame.payload))
        elif frame.kind == Kind.RESPONSE:
            return frame
        return None

    def boot_event(self, boot_id):
        previous, self.boot_id = self.boot_id, boot_id
        if previous is not None and previous != boot_id:
            raise DeviceResetError("the device reset (boot id %08x -> %08x)" % (previous, boot_id))

    def _next_frame(self, deadline):
        """The next response frame, or None at the deadline."""
        while True:
            while self._frames:
                response = self._handle(self._frames.popleft())
                if response is not None:
                    return response
            left = deadline - time.monotonic()
            data = self.transport.read(left)
            if not data:
                if left <= 0:
                    return None
                continue
            self._frames.extend(self.reader.feed(data))

    def poll(self):
        """Handles whatever arrived meanwhile (logs, a boot event) without waiting."""
        while True:
            data = self.transport.read(0)
            if not data:
                break
            self._frames.extend(self.reader.feed(data))
        kept = collections.deque()
        while self._frames:
            frame = self._frames.popleft()
            if self._handle(frame) is not None:
                kept.append(frame)  # stale responses are dropped later by wait()
        self._frames = kept

    def send(self, command, payload=b"", seq=None):
        """Sends a request; returns (seq, the wire bytes) for waiting or resending."""
        if seq is None:
            self._seq = (self._seq + 1) & 0xFFFF
            seq = self._seq
        wire = encode_frame(Kind.REQUEST, seq, command, payload)
        self.transport.write(wire)
        return seq, wire

    def wait(self, seqs, timeout):
        """The response to one of `seqs` (responses to other requests are stale: dropped), or None."""
        deadline = time.monotonic() + timeout
        while True:
            frame = self._next_frame(deadline)
            if frame is None or frame.seq in seqs:
                return frame

    # ---------------- requests ----------------

    def call(self, command, payload=b"", timeout=None, retries=None):
        """Sends a request and returns its response Frame, resending the identical frame after
        each timeout, at most `retries` times."""
        self.poll()
        timeout = self.timeout if timeout is None else timeout
        retries = self.retries if retries is None else retries
        seq, wire = self.send(command, payload)
        for attempt in range(retries + 1):
            if attempt:
                self.transport.write(wire)
            frame = self.wait({seq}, timeout)
            if frame is not None:
                if frame.command != command:
                    raise ProtocolError("response to %s carries command 0x%02x" % (command.name, frame.command))
                return frame
        raise TimeoutError("no answer to %s within %.1f s (%d attempts)" % (command.name, timeout, retries + 1))

    def request(self, command, payload=b"", timeout=None, retries=None):
        """The response payload of a successful request; DeviceError for an error status."""
        frame = self.call(command, payload, timeout, retries)
        if frame.status:
            raise error_of(frame)
        return frame.payload

    # ---------------- transfers ----------------

    def upload(self, slot, data, progress=None, timeout=None):
        """Sends `data` into `slot` (XFER_BEGIN, windowed XFER_DATA) without committing; resumes where
        the device already holds the same transfer. progress(done_bytes) is called as data is acked.
        A timeout in the middle resumes from the device's offset (at most `retries` times in a row)."""
        data = bytes(data)
        size = len(data)
        begin = struct.pack("<BII", slot, size, crc32(data))
        # erasing flash for a model can take seconds on a board: XFER_BEGIN gets a long timeout
        begin_timeout = max(30.0, self.timeout)
        timeout = self.timeout if timeout is None else timeout
        chunk = self.max_payload - 5
        next_offset = u32(self.request(Command.XFER_BEGIN, begin, timeout=begin_timeout))
        if progress:
            progress(next_offset)
        in_flight = collections.OrderedDict()  # seq -> end offset of its data
        stalls = 0
        while next_offset < size or in_flight:
            while next_offset < size and len(in_flight) < self.window:
                end = min(size, next_offset + chunk)
                seq, _ = self.send(Command.XFER_DATA, struct.pack("<BI", slot, next_offset) + data[next_offset:end])
                in_flight[seq] = end
                next_offset = end
            frame = self.wait(set(in_flight), timeout)
            if frame is None:
                stalls += 1
                if stalls > self.retries:
                    raise TimeoutError("transfer stalled at offset %d of %d" % (min(in_flight.values()), size))
                in_flight.clear()
                next_offset = u32(self.request(Command.XFER_BEGIN, begin, timeout=begin_timeout))
                continue
            stalls = 0
            while in_flight:  # responses come in order: this one answers for the earlier ones too
                if in_flight.popitem(last=False)[0] == frame.seq:
                    break
            if frame.status == BAD_OFFSET:
                # go back to what the device expects; answers to frames sent before are now stale
                in_flight.clear()
                next_offset = u32(frame.payload)
            elif frame.status:
                raise error_of(frame)
            elif progress:
                progress(u32(frame.payload))

    def download(self, slot, size):
        """`size` bytes of a readable slot's committed content."""
        chunk = self.max_payload
        parts = []
        for offset in range(0, size, chunk):
            n = min(chunk, size - offset)
            part = self.request(Command.XFER_READ, struct.pack("<BIH", slot, offset, n))
            if len(part) != n:
                raise ProtocolError("XFER_READ returned %d bytes instead of %d" % (len(part), n))
            parts.append(part)
        return b"".join(parts)


def error_of(frame):
    """The DeviceError a response with an error status stands for."""
    detail, text = b"", frame.payload
    if frame.status == BAD_OFFSET:
        detail, text = frame.payload[:4], frame.payload[4:]
    return DeviceError(frame.status, text.decode("utf-8", errors="replace"), detail)
