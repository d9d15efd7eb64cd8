"""The streamed input (docs/blob-format.md, "Streamed input"; docs/protocol.md, "Transfers"): the
device runs the first layers while the input transfer's data arrives, its rows passing through a
ring of a few rows, and INFER / TRAIN_STEP start after them. The same numbers as tinybridge.simulate,
frames cut anywhere in a row, resumed, CRC-checked, cancelled by a params commit; a model whose
first layer trains its weights keeps its input whole. On the sim and on the firmware under QEMU."""
import binascii
import struct

import numpy as np
import pytest

import tinybridge as tb
from tinybridge import simulate
from tinybridge.model import Model
from tinybridge.protocol import Command, Slot, u32

import tiny_model
from sim_helpers import TcpSim, faces, streamed_blob

TRAIN_STEP = struct.Struct("<fHI")


def streamed_model():
    return Model.from_bytes(streamed_blob())


@pytest.fixture
def dev(device_url):
    with tb.connect(device_url) as d:
        d.load_model(streamed_blob(), progress=False)
        yield d


def tensor(img):
    return streamed_model().input_tensor(img)


def begin(dev, data, crc=None):
    crc = binascii.crc32(data) if crc is None else crc
    return u32(dev.client.request(Command.XFER_BEGIN, struct.pack("<BII", Slot.INPUT, len(data), crc)))


def send(dev, data, start, end):
    """Data frames for bytes [start, end) (at most a frame each); the device's next offset."""
    step = dev.client.max_payload - 5
    for at in range(start, end, step):
        got = u32(dev.client.request(Command.XFER_DATA, struct.pack("<BI", Slot.INPUT, at) + data[at:min(end, at + step)]))
    return got


def commit(dev):
    return dev.client.call(Command.XFER_COMMIT, bytes([Slot.INPUT]))


def stat(dev):
    return struct.unpack("<II", dev.client.request(Command.XFER_STAT, bytes([Slot.INPUT])))


def train_raw(dev, label):
    return TRAIN_STEP.unpack(dev.client.request(Command.TRAIN_STEP, struct.pack("<Hf", label, 0.0), timeout=30))


def expected(sim, x, label):
    s = sim.train_step(x, label)
    return np.float32(s.loss), s.label_pred, s.step


def test_a_streamed_input_trains_like_the_simulation(dev):
    sim = simulate.Simulator(streamed_model())
    images, labels = faces(8)
    for img, label in zip(images[:6], labels[:6]):
        got = dev.train_step(img, label)
        assert (got.loss, got.label_pred, got.step) == expected(sim, tensor(img), label)
    for img in images[6:]:
        assert dev.infer(img).label == sim.infer(tensor(img)).label
    assert dev.read_params() == sim.params()
    # the first layers' rows, run during the transfer, are charged to the step that uses them
    dev.train_step(images[0], labels[0])
    step = dev.profile()
    assert step.total == dev.stats()["last_step"] == step.outside + sum(f + b for f, b in step.ops)
    assert step.ops[0][0] > 0 and step.ops[1][0] > 0


def test_frames_cut_mid_row_resumed_and_incomplete(dev):
    """Data frames that end inside a row, a commit before the end (INCOMPLETE, the transfer stays
    open), the same XFER_BEGIN again (resume: the ring and the first layers' rows are kept), another
    XFER_BEGIN (starts over): the same step as the simulation's."""
    sim = simulate.Simulator(streamed_model())
    images, labels = faces(3)
    x = tensor(images[0]).tobytes()
    assert begin(dev, x) == 0 and send(dev, x, 0, 77) == 77         # row 2, byte 13
    assert send(dev, x, 77, 500) == 500
    frame = commit(dev)
    assert frame.status == 13 and b"500 of 1024" in frame.payload   # INCOMPLETE
    assert begin(dev, x) == 500                                      # resumed, not restarted
    assert send(dev, x, 500, 1024) == 1024
    assert commit(dev).status == 0
    assert stat(dev) == (1024, binascii.crc32(x))
    assert train_raw(dev, labels[0]) == expected(sim, tensor(images[0]), labels[0])
    # another image begun, then a third: the third starts over at 0 and is the one used
    y, z = tensor(images[1]).tobytes(), tensor(images[2]).tobytes()
    assert begin(dev, y) == 0 and send(dev, y, 0, 333) == 333
    assert begin(dev, z) == 0 and send(dev, z, 0, 1024) == 1024
    assert commit(dev).status == 0
    assert train_raw(dev, labels[2]) == expected(sim, tensor(images[2]), labels[2])
    assert dev.read_params() == sim.params()


def test_a_crc_mismatch_leaves_no_input(dev):
    sim = simulate.Simulator(streamed_model())
    images, labels = faces(2)
    x = tensor(images[0]).tobytes()
    assert begin(dev, x, crc=binascii.crc32(x) ^ 1) == 0 and send(dev, x, 0, 1024) == 1024
    frame = commit(dev)
    assert frame.status == 10                                        # CRC_MISMATCH: the transfer is over
    assert stat(dev) == (0, 0)
    assert dev.client.call(Command.TRAIN_STEP, struct.pack("<Hf", 0, 0.0)).status == 6   # NO_INPUT
    assert commit(dev).status == 7                                   # BAD_STATE
    # a corrupted byte with the true CRC announced
    bad = bytearray(x)
    bad[600] ^= 0x10
    assert begin(dev, x) == 0
    send(dev, bytes(bad), 0, 1024)
    assert commit(dev).status == 10 and stat(dev) == (0, 0)
    got = dev.train_step(images[1], labels[1])
    assert (got.loss, got.label_pred, got.step) == expected(sim, tensor(images[1]), labels[1])
    assert dev.read_params() == sim.params()


def test_a_params_commit_cancels_a_streamed_input(dev):
    """The first layers ran with the parameters a params commit replaces (conv1 trains its bias):
    an unfinished streamed input is cancelled, a committed one dropped."""
    sim = simulate.Simulator(streamed_model())
    images, labels = faces(3)
    got = dev.train_step(images[0], labels[0])
    assert (got.loss, got.label_pred, got.step) == expected(sim, tensor(images[0]), labels[0])
    params = dev.read_params()
    x = tensor(images[1]).tobytes()
    assert begin(dev, x) == 0 and send(dev, x, 0, 500) == 500
    dev.client.upload(Slot.PARAMS, params)
    assert dev.client.call(Command.XFER_COMMIT, bytes([Slot.PARAMS])).status == 0
    frame = dev.client.call(Command.XFER_DATA, struct.pack("<BI", Slot.INPUT, 500) + x[500:])
    assert frame.status == 7                                         # BAD_STATE: no transfer
    assert begin(dev, x) == 0                                        # no resume either
    assert send(dev, x, 0, 1024) == 1024 and commit(dev).status == 0
    dev.client.upload(Slot.PARAMS, params)
    assert dev.client.call(Command.XFER_COMMIT, bytes([Slot.PARAMS])).status == 0
    assert stat(dev) == (0, 0)
    assert dev.client.call(Command.INFER).status == 6                # NO_INPUT
    got = dev.train_step(images[2], labels[2])
    assert (got.loss, got.label_pred, got.step) == expected(sim, tensor(images[2]), labels[2])
    assert dev.read_params() == sim.params()


def test_a_bad_label_keeps_the_streamed_input(dev):
    sim = simulate.Simulator(streamed_model())
    images, labels = faces(1)
    x = tensor(images[0]).tobytes()
    assert begin(dev, x) == 0 and send(dev, x, 0, 1024) == 1024 and commit(dev).status == 0
    assert dev.client.call(Command.TRAIN_STEP, struct.pack("<Hf", 2, 0.0)).status == 4   # BAD_ARGUMENT
    assert stat(dev) == (1024, binascii.crc32(x))
    assert train_raw(dev, labels[0]) == expected(sim, tensor(images[0]), labels[0])
    assert stat(dev) == (0, 0)                                       # consumed


def test_a_model_training_its_first_layer_keeps_the_input_whole(device_url):
    m = tiny_model.sparse_model()
    m.graph.train("conv1", weights=True)          # its weight gradient reads the whole input
    m = Model(m.graph)
    assert m.graph.input not in m.plan.stream_rows
    assert m.plan.buffers[m.plan.tensor_refs[m.graph.input]["buffer"]].size == 32 * 32
    sim = simulate.Simulator(m)
    images, labels = faces(4)
    with tb.connect(device_url) as dev:
        dev.load_model(m, progress=False)
        for img, label in zip(images, labels):
            got = dev.train_step(img, label)
            assert (got.loss, got.label_pred, got.step) == expected(sim, m.input_tensor(img), label)
        assert dev.read_params() == sim.params()


def test_a_streamed_input_resumes_after_a_lost_link():
    sim_model = streamed_model()
    sim = simulate.Simulator(sim_model)
    images, labels = faces(1)
    x = tensor(images[0]).tobytes()
    server = TcpSim()
    try:
        with tb.connect(server.url) as dev:
            dev.load_model(streamed_blob(), progress=False)
            assert begin(dev, x) == 0 and send(dev, x, 0, 413) == 413
        with tb.connect(server.url) as dev:
            assert begin(dev, x) == 413
            assert send(dev, x, 413, 1024) == 1024 and commit(dev).status == 0
            assert train_raw(dev, labels[0]) == expected(sim, tensor(images[0]), labels[0])
            assert dev.read_params() == sim.params()
    finally:
        assert "ERROR" not in server.close()
