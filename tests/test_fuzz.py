"""Fuzzing the sanitized sim: garbage, truncated frames, bit flips, oversized frames, wrong
versions and sequence numbers, random commands and payloads, corrupt and truncated blobs, wrong
image sizes and labels, inputs cut anywhere (also of a model whose input streams). The device must never crash or hang, answer every request it can parse,
still answer HELLO afterwards, and keep its model. Seeded and bounded (a few thousand frames)."""
import binascii
import random
import struct
import time

import numpy as np
import pytest

import tinybridge as tb
from tinybridge.protocol import MAX_PAYLOAD, Command, Kind, Slot, encode_frame

from sim_helpers import faces, streamed_blob, tiny_blob

ROUNDS = 4000
TIME_LIMIT = 40.0  # seconds; the loop stops early rather than overrun


def request_frame(rng, seq):
    """A parseable request: any command (but RESET) with any payload, sometimes another version."""
    command = rng.choice([c for c in Command if c != Command.RESET] + [rng.randrange(1 << 16)])
    n = rng.choice((0, 1, 4, 5, 6, 7, 9, rng.randrange(MAX_PAYLOAD + 1)))
    payload = bytearray(rng.randrange(256) for _ in range(n))
    if command == Command.XFER_BEGIN and n >= 1 and payload[0] == Slot.MODEL:
        payload[0] = Slot.INPUT  # random model sizes may not fit beside the model: tested separately
    version = 1 if rng.random() < 0.9 else rng.randrange(256)
    return encode_frame(Kind.REQUEST, seq, command, bytes(payload), version=version)


def noise(rng, valid):
    """Bytes that are not a parseable request, ending with a delimiter."""
    kind = rng.randrange(5)
    if kind == 0:  # garbage
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 3000))) + b"\x00"
    if kind == 1:  # truncated
        return valid[:rng.randrange(1, len(valid) - 1)] + b"\x00"
    if kind == 2:  # bit flips
        frame = bytearray(valid[:-1])
        for _ in range(rng.randrange(1, 4)):
            frame[rng.randrange(len(frame))] ^= 1 << rng.randrange(8)
        return bytes(frame).replace(b"\x00", b"\x01") + b"\x00"
    if kind == 3:  # oversized
        return bytes(rng.randrange(1, 256) for _ in range(rng.randrange(2100, 6000))) + b"\x00"
    return b"\x00" * rng.randrange(1, 5)  # empty frames


def blob_attack(dev, rng):
    """A corrupt or truncated model upload, small enough to go beside the current model."""
    blob = bytearray(tiny_blob(1))
    what = rng.randrange(3)
    if what == 0:
        blob[rng.randrange(len(blob))] ^= 1 << rng.randrange(8)
    elif what == 1:
        blob = blob[:rng.randrange(1, len(blob))]
    size = len(blob) if what != 2 else len(blob) + rng.randrange(1, 100)  # what 2: never completes
    begin = dev.client.request(Command.XFER_BEGIN, struct.pack("<BII", Slot.MODEL, size, binascii.crc32(blob)))
    resume = struct.unpack("<I", begin)[0]  # the same unfinished attack again resumes
    for offset in range(resume, len(blob), 2043):
        dev.client.request(Command.XFER_DATA, struct.pack("<BI", Slot.MODEL, offset) + bytes(blob[offset:offset + 2043]))
    frame = dev.client.call(Command.XFER_COMMIT, bytes([Slot.MODEL]))
    assert frame.status in (10, 11, 13), frame  # CRC_MISMATCH, BAD_BLOB, INCOMPLETE


def input_attack(dev, rng):
    h, w, c = dev.model.input_shape
    size = rng.choice((0, 1, h * w * c - 1, h * w * c + 1, rng.randrange(1 << 32)))
    frame = dev.client.call(Command.XFER_BEGIN, struct.pack("<BII", Slot.INPUT, size, 0))
    assert frame.status == 4  # BAD_ARGUMENT
    label = rng.choice((2, 3, 0xFFFF))
    frame = dev.client.call(Command.TRAIN_STEP, struct.pack("<Hf", label, 0.0))
    assert frame.status == 4 and b"out of range" in frame.payload


def partial_input(dev, rng):
    """An input of the right size cut at any byte in pieces of any size, announced with its CRC or
    another: only a whole one with its CRC commits and can be run (a streamed input's rows have
    been computed along the way)."""
    size = int(np.prod(dev.model.input_shape))
    data = bytes(rng.randrange(256) for _ in range(size))
    crc = binascii.crc32(data) if rng.random() < 0.6 else rng.randrange(1 << 32)
    assert dev.client.request(Command.XFER_BEGIN, struct.pack("<BII", Slot.INPUT, size, crc)) == b"\0\0\0\0"
    end = size if rng.random() < 0.6 else rng.randrange(size)
    offset = 0
    while offset < end:
        cut = min(end, offset + rng.randrange(1, 700))
        dev.client.request(Command.XFER_DATA, struct.pack("<BI", Slot.INPUT, offset) + data[offset:cut])
        offset = cut
    commit = dev.client.call(Command.XFER_COMMIT, bytes([Slot.INPUT])).status
    whole = end == size and crc == binascii.crc32(data)
    assert commit == (0 if whole else 13 if end < size else 10)  # INCOMPLETE, CRC_MISMATCH
    run = rng.choice(((Command.INFER, b""), (Command.TRAIN_STEP, struct.pack("<Hf", 1, 0.0))))
    assert dev.client.call(*run).status == (0 if whole else 6)  # NO_INPUT


@pytest.mark.parametrize("seed, blob", [(1, tiny_blob), (2, tiny_blob), (3, tiny_blob), (4, streamed_blob)])
def test_fuzz_device_survives(seed, blob):
    rng = random.Random(seed)
    with tb.connect("sim") as dev:
        dev.load_model(blob(), progress=False)
        crc = dev.info()["model_crc32"]
        images, labels = faces(2)
        start = time.monotonic()
        answered = 0
        for i in range(ROUNDS):
            if time.monotonic() - start > TIME_LIMIT:
                break
            action = rng.random()
            dev.client._seq = (dev.client._seq + 1) & 0xFFFF
            seq = dev.client._seq
            frame = request_frame(rng, seq)
            if action < 0.45:
                dev.transport.write(frame)
                response = dev.client.wait({seq}, 5.0)
                assert response is not None, "no answer to a parseable request (round %d)" % i
                answered += 1
            elif action < 0.8:
                dev.transport.write(noise(rng, frame))
            elif action < 0.85:
                # several requests back to back, written in random pieces: all answered
                seqs = [seq] + [(seq + k) & 0xFFFF for k in (1, 2)]
                dev.client._seq = seqs[-1]
                wire = frame + b"".join(request_frame(rng, s) for s in seqs[1:])
                while wire:
                    cut = rng.randrange(1, 700)
                    dev.transport.write(wire[:cut])
                    wire = wire[cut:]
                for s in seqs:
                    assert dev.client.wait({s}, 5.0) is not None, "no answer in a burst (round %d)" % i
            elif action < 0.9:
                # a wrong (old) sequence number with a new payload is a new request: answered
                dev.transport.write(encode_frame(Kind.REQUEST, (seq - 5) & 0xFFFF, Command.STATS))
                assert dev.client.wait({(seq - 5) & 0xFFFF}, 5.0) is not None
            elif action < 0.93:
                blob_attack(dev, rng)
            elif action < 0.96:
                input_attack(dev, rng)
            else:
                partial_input(dev, rng)
            if i % 50 == 0:
                assert dev.info()["model_crc32"] == crc
        info = dev.info()
        assert info["model_crc32"] == crc and info["board"] == "sim"
        assert dev.stats()["bad_frames"] > 0 and answered > 100
        # and it still works
        dev.train_step(images[0], labels[0])
        assert dev.infer(images[1]).label in (0, 1)
