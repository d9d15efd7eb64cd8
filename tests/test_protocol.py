"""Wire protocol: the frame codec (Python, and Python against the C runtime), HELLO/STATS, errors,
idempotent retries, log frames, reset and timeouts; on the sim and on the firmware under QEMU."""
import binascii
import logging
import os
import random
import struct

import pytest

import tinybridge as tb
from tinybridge.protocol import (MAX_PAYLOAD, Command, FrameReader, Kind, Slot, cobs_decode, cobs_encode,
                                 decode_frame, encode_frame)

import tiny_model
from sim_helpers import BOARDS, faces, raw_exchange, tiny_blob


@pytest.fixture
def dev(device_url):
    with tb.connect(device_url) as d:
        yield d


@pytest.fixture
def trained_dev(dev):
    dev.load_model(tiny_blob(), progress=False)
    return dev


def edge_payloads():
    """Bodies around every COBS boundary: empty, zeros, 253/254/255-byte runs, random."""
    rng = random.Random(1)
    yield b""
    for n in (1, 2, 252, 253, 254, 255, 256, 507, 508, 509, 1000, MAX_PAYLOAD - 1, MAX_PAYLOAD):
        yield b"\x00" * n
        yield b"\x01" * n
        yield bytes(rng.randrange(256) for _ in range(n))
        yield bytes(rng.choice((0, 0, rng.randrange(1, 256))) for _ in range(n))


def test_cobs_round_trip_and_no_zero():
    for payload in edge_payloads():
        encoded = cobs_encode(payload)
        assert 0 not in encoded
        assert cobs_decode(encoded) == payload
        assert len(encoded) <= len(payload) + len(payload) // 254 + 1


def test_cobs_rejects_corrupt_blocks():
    with pytest.raises(ValueError):
        cobs_decode(b"\x05ab")  # block announces 4 bytes, has 2
    with pytest.raises(ValueError):
        cobs_decode(b"")


def test_frame_reader_resynchronises_and_counts_bad_frames():
    good = encode_frame(Kind.RESPONSE, 7, Command.HELLO, b"abc")
    flipped = bytearray(good)
    flipped[3] ^= 0x10
    oversized = b"\x55" * 5000 + b"\x00"
    reader = FrameReader()
    frames = reader.feed(b"garbage\x00" + bytes(flipped) + good[:5])  # a frame split across two reads
    frames += reader.feed(good[5:] + oversized + b"\x00\x00" + good)
    assert [(f.seq, f.payload) for f in frames] == [(7, b"abc"), (7, b"abc")]
    assert reader.bad_frames == 3  # garbage, bit flip, oversized; empty frames are not bad


def test_decode_frame_checks_crc_and_length():
    wire = encode_frame(Kind.REQUEST, 1, Command.HELLO)
    assert decode_frame(wire[:-1]).command == Command.HELLO
    with pytest.raises(tb.ProtocolError):
        decode_frame(cobs_encode(b"\x01\x01\x00\x00"))


def test_c_decoder_agrees_with_python_encoder(trained_dev):
    """Every edge payload goes through the device's COBS decoder into the input slot in one data
    frame; the device's CRC of what it decoded must be ours."""
    dev = trained_dev
    chunks = [p for p in edge_payloads() if 0 < len(p) <= MAX_PAYLOAD - 5]
    h, w, c = dev.model.input_shape
    for chunk in chunks:
        data = (chunk * (h * w * c // len(chunk) + 1))[:h * w * c]
        part = data[:min(len(chunk), len(data))]
        dev.client.request(Command.XFER_BEGIN, struct.pack("<BII", Slot.INPUT, len(data), binascii.crc32(data)))
        dev.client.request(Command.XFER_DATA, struct.pack("<BI", Slot.INPUT, 0) + part)
        if len(part) < len(data):
            dev.client.request(Command.XFER_DATA, struct.pack("<BI", Slot.INPUT, len(part)) + data[len(part):])
        dev.client.request(Command.XFER_COMMIT, bytes([Slot.INPUT]))
        stat = dev.client.request(Command.XFER_STAT, bytes([Slot.INPUT]))
        assert struct.unpack("<II", stat) == (len(data), binascii.crc32(data))


def test_c_encoder_agrees_with_python_decoder(trained_dev):
    """XFER_READ of the model blob at many offsets and lengths: every response body length."""
    dev = trained_dev
    blob = tiny_blob()
    rng = random.Random(2)
    for _ in range(150):
        offset = rng.randrange(len(blob))
        length = rng.choice((1, 2, 253, 254, 255, 256, 508, rng.randrange(1, MAX_PAYLOAD + 1)))
        part = dev.client.request(Command.XFER_READ, struct.pack("<BIH", Slot.MODEL, offset, length))
        assert part == blob[offset:offset + length]
    assert dev.read_blob() == blob


def test_hello_and_stats(dev, device_url):
    info = dev.info()
    assert info["protocol_version"] == 1 and (info["board"], info["counter_unit"]) == BOARDS[device_url]
    assert info["max_payload"] == MAX_PAYLOAD and info["window"] >= 1
    assert info["arena_bytes"] == 256 * 1024
    assert info["model_slot_bytes"] == 768 * 1024 - 64  # sectors 5-7 (docs/protocol.md, "Flash")
    assert info["params_slot_bytes"] == 160 * 1024 - 32  # sectors 3-4 and 5: no model uses sector 5
    assert set(info["capabilities"]) == {"train", "infer", "save", "set_baud", "profile"}
    assert info["model"] is None and info["model_crc32"] == 0
    stats = dev.stats()
    assert stats["bad_frames"] == 0 and stats["steps"] == 0
    assert 0 < stats["stack_high_water"] < 128 * 1024


def test_profile_splits_each_run_by_op_and_pass(trained_dev):
    dev = trained_dev
    model = tiny_model.sparse_model()
    n_ops = len(model.graph.ops)
    assert dev.profile() == (None, dev.info()["counter_unit"], 0, 0, [])  # no run of this model yet
    images, labels = faces(2)
    dev.infer(images[0])
    infer = dev.profile()
    assert infer.run == "infer" and len(infer.ops) == n_ops
    assert infer.total == dev.stats()["last_infer"] == infer.outside + sum(f + b for f, b in infer.ops)
    assert all(b == 0 for _, b in infer.ops) and sum(f > 0 for f, _ in infer.ops) >= n_ops // 2
    dev.train_step(images[1], labels[1])
    step = dev.profile()
    assert step.run == "train_step" and step.total == dev.stats()["last_step"]
    assert step.total == step.outside + sum(f + b for f, b in step.ops)
    trained = [i for i, op in enumerate(model.graph.ops) if op.train_bias or op.train_weights]
    assert all(step.ops[i][1] > 0 for i in trained)
    assert all(step.ops[i][1] == 0 for i in range(model.graph.backward_stop()))
    # the entries of a later first op are the tail; past the end is an error
    payload = dev.client.request(Command.PROFILE, struct.pack("<H", 2))
    assert struct.unpack_from("<HH", payload, 16) == (2, n_ops - 2)
    assert list(struct.iter_unpack("<II", payload[20:])) == step.ops[2:]
    frame = raw_exchange(dev, Command.PROFILE, struct.pack("<H", n_ops + 1))
    assert frame.status == 4 and b"past the profile" in frame.payload
    dev.load_model(tiny_blob(seed=1), progress=False)  # another model: the profile is gone
    assert dev.profile().run is None


def test_error_responses(dev):
    frame = raw_exchange(dev, Command.HELLO, version=2)
    assert frame.status == 1 and b"version 2" in frame.payload
    frame = raw_exchange(dev, 0x7777)
    assert frame.status == 2 and b"unknown command" in frame.payload
    frame = raw_exchange(dev, Command.HELLO, b"x")
    assert frame.status == 3
    frame = raw_exchange(dev, Command.INFER)
    assert frame.status == 5 and b"no model" in frame.payload
    with pytest.raises(tb.DeviceError) as e:
        dev.client.request(Command.XFER_STAT, b"\x09")
    assert e.value.code == 4 and e.value.name == "BAD_ARGUMENT" and "slot 9" in str(e.value)


def test_repeated_train_step_is_applied_once(trained_dev):
    dev = trained_dev
    images, labels = faces(1)
    payload = struct.pack("<Hf", labels[0], 0.0)
    dev._send_input(images[0])
    seq = 4242
    first = raw_exchange(dev, Command.TRAIN_STEP, payload, seq=seq)
    again = raw_exchange(dev, Command.TRAIN_STEP, payload, seq=seq)  # a retry: same seq, command, CRC
    assert first.status == 0 and again == first
    assert struct.unpack("<fHI", first.payload)[2] == 1
    assert dev.stats()["steps"] == 1
    # the same seq with another payload is a new request (and here: the input was consumed)
    other = raw_exchange(dev, Command.TRAIN_STEP, struct.pack("<Hf", labels[0], 0.5), seq=seq)
    assert other.status == 6  # NO_INPUT


def test_log_frames_reach_logging(trained_dev, caplog):
    with caplog.at_level(logging.INFO, logger="tinybridge.device"):
        trained_dev.load_model(tiny_blob(1), progress=False)
    assert any("committed" in r.getMessage() for r in caplog.records)


def test_reset_raises_device_reset_error_then_recovers(trained_dev):
    dev = trained_dev
    boot_id = dev.info()["boot_id"]
    dev.client.request(Command.RESET)
    with pytest.raises(tb.DeviceResetError):
        dev.client.request(Command.HELLO)
    info = dev.info()  # the client knows the new boot id now
    assert info["boot_id"] != boot_id and info["model_crc32"] == binascii.crc32(tiny_blob())


def test_device_reset_method_reloads_model(trained_dev):
    dev = trained_dev
    images, labels = faces(3)
    for img, label in zip(images, labels):
        dev.train_step(img, label)
    dev.save()
    before = dev.info()["boot_id"]
    dev.reset()
    assert dev.info()["boot_id"] != before
    assert dev.model.step == 3 and dev.model.crc32 == binascii.crc32(tiny_blob())


def test_timeout_on_a_silent_link():
    # loop:// echoes our own requests back: no response ever comes
    with pytest.raises(tb.TimeoutError, match="HELLO"):
        tb.connect("loop://", timeout=0.1, retries=1)


def test_transport_errors_are_one_line(tmp_path, monkeypatch):
    with pytest.raises(tb.TransportError, match="cannot open"):
        tb.connect(str(tmp_path / "no-such-tty"))
    monkeypatch.setenv("TINYBRIDGE_SIM", str(tmp_path / "missing"))
    with pytest.raises(tb.TransportError, match="missing"):
        tb.connect("sim")


def test_sim_crash_is_a_transport_error():
    with tb.connect("sim") as dev:
        dev.transport.proc.kill()
        with pytest.raises(tb.TransportError, match="exited"):
            dev.info()


def test_set_baud_round_trip(dev, device_url):
    dev.set_baud(921600)
    with pytest.raises(tb.DeviceError, match="baud"):
        dev.set_baud(7)
    assert dev.info()["board"] == BOARDS[device_url][0]


def test_seq_wraps_around(dev):
    dev.client._seq = 0xFFFE
    for _ in range(4):
        dev.client.request(Command.HELLO)
    assert dev.client._seq == 2


def test_os_random_garbage_between_requests(dev, device_url):
    dev.transport.write(os.urandom(3000).replace(b"\x00", b"\x01") + b"\x00")
    assert dev.info()["board"] == BOARDS[device_url][0]
    assert dev.stats()["bad_frames"] == 1
