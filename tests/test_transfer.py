"""Transfers: windowed upload, resume after a lost link, atomic commit (a bad upload keeps the
previous model), the large-blob case, checkpoints (SAVE, restore, power-loss-safe slots); on the
sim and, where the blob is small, on QEMU."""
import binascii
import os
import struct
import subprocess

import numpy as np
import pytest

import tinybridge as tb
from tinybridge.model import Model
from tinybridge.protocol import Command, Slot, u32
from tinybridge.transport import Transport

from sim_helpers import TcpSim, big_blob, faces, tiny_blob, upload_raw

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


@pytest.fixture
def dev(device_url):
    """On the sim and on QEMU; tests of blobs over 256 KB use sim_dev (QEMU's UART moves ~20 KB/s:
    tests/test_firmware_qemu.py bakes a large model into the firmware instead)."""
    with tb.connect(device_url) as d:
        yield d


@pytest.fixture
def sim_dev():
    with tb.connect("sim") as d:
        yield d


def model_crc(dev):
    return dev.info()["model_crc32"]


def test_resume_after_reconnect_mid_transfer():
    blob = big_blob()
    sim = TcpSim()
    try:
        dev = tb.connect(sim.url)
        chunk = dev.client.max_payload - 5
        begin = struct.pack("<BII", Slot.MODEL, len(blob), binascii.crc32(blob))
        assert u32(dev.client.request(Command.XFER_BEGIN, begin)) == 0
        sent = 0
        for _ in range(40):
            dev.client.request(Command.XFER_DATA, struct.pack("<BI", Slot.MODEL, sent) + blob[sent:sent + chunk])
            sent += chunk
        # half a frame in flight, then the link dies
        dev.transport.write(tb.protocol.encode_frame(1, 999, Command.XFER_DATA, b"\x01" + blob[:700])[:500])
        dev.close()
        dev = tb.connect(sim.url)
        assert u32(dev.client.request(Command.XFER_BEGIN, begin)) == sent  # resumes where it stopped
        acked = []
        dev.client.upload(Slot.MODEL, blob, progress=acked.append)
        assert acked[0] == sent and acked[-1] == len(blob)
        assert dev.client.request(Command.XFER_COMMIT, bytes([Slot.MODEL]))
        assert model_crc(dev) == binascii.crc32(blob)
        boot_id = dev.info()["boot_id"]
        dev.reset()  # over TCP too, the link survives the reset
        assert dev.info()["boot_id"] != boot_id and dev.model.crc32 == binascii.crc32(blob)
        dev.close()
    finally:
        sim.close()


def test_another_transfer_restarts_instead_of_resuming(dev):
    blob = tiny_blob()
    upload_raw(dev, Slot.MODEL, blob[:4096], size=len(blob))
    other = tiny_blob(1)
    begin = struct.pack("<BII", Slot.MODEL, len(other), binascii.crc32(other))
    assert u32(dev.client.request(Command.XFER_BEGIN, begin)) == 0


def test_crc_mismatch_keeps_previous_model(dev):
    dev.load_model(tiny_blob(), progress=False)
    other = tiny_blob(1)
    upload_raw(dev, Slot.MODEL, other, crc=binascii.crc32(other) ^ 1)
    with pytest.raises(tb.DeviceError) as e:
        dev.client.request(Command.XFER_COMMIT, bytes([Slot.MODEL]))
    assert e.value.name == "CRC_MISMATCH"
    assert model_crc(dev) == binascii.crc32(tiny_blob())
    images, _ = faces(1)
    dev.infer(images[0])
    # the failed transfer is over: committing again is a state error
    with pytest.raises(tb.DeviceError, match="BAD_STATE"):
        dev.client.request(Command.XFER_COMMIT, bytes([Slot.MODEL]))


def test_invalid_blob_keeps_previous_model(dev):
    dev.load_model(tiny_blob(), progress=False)
    corrupt = bytearray(tiny_blob(1))
    corrupt[100] ^= 0xFF  # the blob's own CRC no longer matches
    with pytest.raises(tb.DeviceError) as e:
        dev.load_model(bytes(corrupt), progress=False)
    assert e.value.name == "BAD_BLOB"
    assert model_crc(dev) == binascii.crc32(tiny_blob())
    assert dev.model.crc32 == binascii.crc32(tiny_blob())  # the Device knows it too
    images, _ = faces(1)
    dev.infer(images[0])


def test_incomplete_commit_and_data_without_begin(dev):
    blob = tiny_blob()
    with pytest.raises(tb.DeviceError, match="BAD_STATE"):
        dev.client.request(Command.XFER_DATA, struct.pack("<BI", Slot.MODEL, 0) + blob[:10])
    upload_raw(dev, Slot.MODEL, blob[:2043], size=len(blob))
    with pytest.raises(tb.DeviceError, match="INCOMPLETE"):
        dev.client.request(Command.XFER_COMMIT, bytes([Slot.MODEL]))
    frame = dev.client.call(Command.XFER_DATA, struct.pack("<BI", Slot.MODEL, 5) + b"xyz")
    assert frame.status == 8 and u32(frame.payload) == 2043  # BAD_OFFSET tells where to go on
    with pytest.raises(tb.DeviceError, match="TOO_LARGE"):
        dev.client.request(Command.XFER_BEGIN, struct.pack("<BII", Slot.MODEL, 2 << 20, 0))


class DroppingTransport(Transport):
    """Corrupts the n-th written frame (as line noise would): the device drops it."""

    def __init__(self, inner, corrupt_writes):
        self.inner, self.corrupt, self.writes = inner, set(corrupt_writes), 0
        self.description = inner.description

    def read(self, timeout):
        return self.inner.read(timeout)

    def write(self, data):
        self.writes += 1
        if self.writes in self.corrupt:
            data = bytearray(data)
            data[len(data) // 2] ^= 0x40
        self.inner.write(bytes(data))

    def close(self):
        self.inner.close()


def test_lost_data_frames_are_resent():
    inner = tb.transport.open_transport("sim")
    link = DroppingTransport(inner, corrupt_writes={6, 7, 15})
    with tb.Device(link) as dev:
        model = dev.load_model(big_blob(), progress=False)
        assert model.crc32 == binascii.crc32(big_blob())
        assert dev.stats()["bad_frames"] == 3


KB = 1024
MODEL_CAPACITY = 768 * KB - 64     # sectors 5-7 less the record header
UNSHARED_CAPACITY = 512 * KB - 64  # model slots A and B (sectors 6-7): sector 5 stays the checkpoints'
PARAMS_CAPACITY = 160 * KB - 32    # checkpoint slots: sectors 3-4 and sector 5
SMALL_PARAMS_CAPACITY = 32 * KB - 32  # beside a model in sector 5: sector 3 and sector 4


@pytest.mark.parametrize("classes", [6, 12])  # over slots A and B; from the shared sector on
def test_large_blob_replaces_the_model_in_place(sim_dev, classes):
    dev = sim_dev
    small, big = tiny_blob(), big_blob(classes)
    assert dev.info()["model_slot_bytes"] == MODEL_CAPACITY
    assert (len(big) > UNSHARED_CAPACITY) == (classes == 12) and len(big) > 256 * KB
    dev.load_model(small, progress=False)
    # beside the current model: the current one stays until the commit
    upload_raw(dev, Slot.MODEL, tiny_blob(1)[:100], size=len(tiny_blob(1)))
    assert model_crc(dev) == binascii.crc32(small)
    # too large for the free slot: the current model is erased at XFER_BEGIN ...
    upload_raw(dev, Slot.MODEL, big[:10000], size=len(big))
    assert model_crc(dev) == 0
    with pytest.raises(tb.DeviceError, match="NO_MODEL"):
        dev.client.request(Command.MODEL_INFO)
    # ... and a completed upload of it is the model, also after a reset
    dev.load_model(big, progress=False)
    dev.reset()
    assert dev.model.crc32 == binascii.crc32(big) and dev.model.input_shape == (128, 128, 3)
    # nothing fits beside it: a small model's upload erases it at XFER_BEGIN too
    upload_raw(dev, Slot.MODEL, small[:100], size=len(small))
    assert model_crc(dev) == 0
    dev.load_model(small, progress=False)
    dev.reset()
    assert dev.model.crc32 == binascii.crc32(small)


def test_failed_large_upload_leaves_no_model(sim_dev):
    dev = sim_dev
    dev.load_model(big_blob(), progress=False)
    corrupt = bytearray(big_blob())
    corrupt[-1] ^= 1
    with pytest.raises(tb.DeviceError, match="BAD_BLOB"):
        dev.load_model(bytes(corrupt), progress=False)
    assert dev.info()["model"] is None


def train(dev, n, start=0):
    images, labels = faces(start + n)
    for img, label in zip(images[start:], labels[start:]):
        result = dev.train_step(img, label)
    return result


def test_checkpoint_survives_processes_and_binds_to_its_model(tmp_path):
    flash = tmp_path / "flash.img"
    with tb.connect("sim", flash=flash) as dev:
        dev.load_model(tiny_blob(), progress=False)
        train(dev, 4)
        assert dev.save() == 1
        saved = dev.read_params()
        train(dev, 2, start=4)  # not saved
    with tb.connect("sim", flash=flash) as dev:
        assert dev.model.step == 4 and dev.read_params() == saved
        # the same blob committed again is a fresh start: the old checkpoint does not apply
        dev.load_model(tiny_blob(), progress=False)
        dev.reset()
        assert dev.model.step == 0
    assert os.path.getsize(flash) == 1024 * 1024


def test_params_transfer_restores_a_checkpoint(dev):
    dev.load_model(tiny_blob(), progress=False)
    train(dev, 3)
    snapshot = dev.read_params()
    assert dev.save() == 1
    train(dev, 3, start=3)
    assert dev.read_params() != snapshot
    assert dev.write_params(snapshot) == 2  # persisted too
    assert dev.read_params() == snapshot and dev.info()["step"] == dev.model.step == 3
    dev.reset()
    assert dev.read_params() == snapshot
    with pytest.raises(ValueError, match="params of %d bytes, the loaded model's params region has %d"
                       % (len(snapshot) + 1, len(snapshot))):
        dev.write_params(snapshot + b"\x00")
    with pytest.raises(tb.DeviceError, match="BAD_ARGUMENT"):
        dev.client.upload(Slot.PARAMS, snapshot + b"\x00")
    with pytest.raises(tb.DeviceError, match="BAD_ARGUMENT"):
        dev.client.request(Command.XFER_READ, struct.pack("<BIH", Slot.INPUT, 0, 1))


def test_a_loaded_model_holds_its_params_region(dev):
    """Model.params_region() is what the device's loader builds: step, RNG state, trained biases
    and (sliced) weights, velocities 0 (the tiny model trains with momentum 0.9)."""
    model = Model.from_bytes(tiny_blob())
    dev.load_model(model, progress=False)
    assert dev.read_params() == model.params_region()
    train(dev, 2)
    assert dev.read_params() != model.params_region()


def test_loading_the_running_blob_again_writes_only_its_params(dev):
    blob = tiny_blob()
    uploads = []
    upload = dev.client.upload
    dev.client.upload = lambda slot, data, **kw: uploads.append((slot, len(data))) or upload(slot, data, **kw)
    dev.load_model(blob, progress=False)
    first = [train(dev, 1, start=k) for k in range(4)]
    assert dev.load_model(blob, progress=False).step == 0
    assert dev.read_params() == Model.from_bytes(blob).params_region()  # velocities back to 0 too
    assert [train(dev, 1, start=k) for k in range(4)] == first
    params = Model.from_bytes(blob).plan.params_bytes
    assert [u for u in uploads if u[0] != Slot.INPUT] == [(Slot.MODEL, len(blob)), (Slot.PARAMS, params)]
    dev.load_model(tiny_blob(seed=1), progress=False)  # another blob: uploaded
    assert uploads[-1] == (Slot.MODEL, len(tiny_blob(seed=1)))


def test_loading_the_running_blob_again_uploads_it_where_its_params_do_not_fit_the_slot(sim_dev):
    """A model over 512 KB leaves a 32 KB checkpoint slot: MCUNet's 74kb scheme (50 KB of
    parameters) is committed again instead."""
    model = tb.compile("mcunet-5fps", num_classes=2, update="74kb")
    assert model.memory.params > 32 * 1024 and model.memory.flash > 512 * 1024
    uploads = []
    upload = sim_dev.client.upload
    sim_dev.client.upload = lambda slot, data, **kw: uploads.append(slot) or upload(slot, data, **kw)
    for _ in range(2):
        assert sim_dev.load_model(model, progress=False).step == 0
        assert sim_dev.read_params() == model.params_region()
    assert uploads == [Slot.MODEL, Slot.PARAMS, Slot.MODEL]


def test_save_alternates_slots_and_counts_generations(dev):
    dev.load_model(tiny_blob(), progress=False)
    for generation in range(1, 5):
        train(dev, 1, start=generation)
        assert dev.save() == generation
    dev.reset()
    assert dev.model.step == 4


def test_zoo_model_checkpoint_survives_a_restart(tmp_path):
    """mbv2-w0.35 with the paper's 49kb scheme: a ~380 KB blob over model slots A and B, ~37 KB of
    trained parameters in the 160 KB checkpoint slots, restored by a new sim on the same flash."""
    model = tb.compile("mbv2-w0.35", num_classes=2, update="49kb")
    blob = model.to_bytes()
    assert 256 * KB < len(blob) <= UNSHARED_CAPACITY and SMALL_PARAMS_CAPACITY < model.memory.params
    images = np.random.default_rng(0).integers(0, 256, (2,) + model.input_shape, dtype=np.uint8)
    flash = tmp_path / "flash.img"
    with tb.connect("sim", flash=flash) as dev:
        dev.load_model(blob, progress=False)
        assert dev.info()["params_slot_bytes"] == PARAMS_CAPACITY
        for img, label in zip(images, (0, 1)):
            dev.train_step(img, label)
        assert dev.save() == 1
        saved = dev.read_params()
        assert len(saved) == model.memory.params
        scores = dev.infer(images[0]).scores
    with tb.connect("sim", flash=flash) as dev:
        assert dev.model.crc32 == binascii.crc32(blob) and dev.model.step == 2
        assert dev.read_params() == saved
        assert np.array_equal(dev.infer(images[0]).scores, scores)


def test_a_model_in_the_shared_sector_leaves_smaller_checkpoint_slots(tmp_path):
    """A blob over 512 KB starts in sector 5, the second checkpoint slot: while it is the model,
    checkpoints go to sectors 3 and 4 (32 KB - 32 at most), and still survive a restart."""
    big = big_blob(12)
    images = np.random.default_rng(1).integers(0, 256, (2, 128, 128, 3), dtype=np.uint8)
    flash = tmp_path / "flash.img"
    with tb.connect("sim", flash=flash) as dev:
        assert dev.info()["params_slot_bytes"] == PARAMS_CAPACITY
        dev.load_model(big, progress=False)
        assert dev.info()["params_slot_bytes"] == SMALL_PARAMS_CAPACITY
        for generation, (img, label) in enumerate(zip(images, (3, 7)), start=1):
            dev.train_step(img, label)
            assert dev.save() == generation  # both small slots
        saved = dev.read_params()
    with tb.connect("sim", flash=flash) as dev:
        assert dev.model.crc32 == binascii.crc32(big) and dev.model.step == 2
        assert dev.read_params() == saved and dev.info()["params_slot_bytes"] == SMALL_PARAMS_CAPACITY
        # a smaller model gives sector 5 back to the checkpoints
        dev.load_model(tiny_blob(), progress=False)
        assert dev.info()["params_slot_bytes"] == PARAMS_CAPACITY
        train(dev, 1)
        assert dev.save() >= 1
        dev.reset()
        assert dev.model.step == 1


def test_save_beyond_the_small_checkpoint_slots_is_too_large():
    """mcunet-5fps (~610 KB, from sector 5 on) with the 74kb scheme: ~48 KB of parameters do not
    fit the 32 KB checkpoint slot left beside it; SAVE says so and the device keeps serving."""
    model = tb.compile("mcunet-5fps", num_classes=2, update="74kb")
    assert len(model.to_bytes()) > UNSHARED_CAPACITY and model.memory.params > SMALL_PARAMS_CAPACITY
    with tb.connect("sim") as dev:
        dev.load_model(model, progress=False)
        with pytest.raises(tb.DeviceError) as e:
            dev.save()
        assert e.value.name == "TOO_LARGE"
        assert ("%d bytes of parameters exceed the %d-byte checkpoint slot beside a model over %d bytes"
                % (model.memory.params, SMALL_PARAMS_CAPACITY, UNSHARED_CAPACITY)) in str(e.value)
        with pytest.raises(tb.DeviceError, match="TOO_LARGE"):
            dev.client.upload(Slot.PARAMS, dev.read_params())
        assert dev.info()["model_crc32"] == binascii.crc32(model.to_bytes())


def test_store_power_loss(tmp_path):
    """tests/c/test_store.c: the flash slot logic under a power cut at every point (sanitized)."""
    exe = str(tmp_path / "test_store")
    device = os.path.join(ROOT, "device")
    subprocess.run(["cc", "-std=c99", "-O1", "-g", "-Wall", "-Wextra", "-Werror", "-fsanitize=address,undefined",
                    "-fno-sanitize-recover=all", "-I" + device, os.path.join(ROOT, "tests", "c", "test_store.c"),
                    os.path.join(device, "store.c"), os.path.join(device, "frame.c"), "-o", exe], check=True)
    result = subprocess.run([exe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout
