"""The runtime as ARM firmware (device/ + boards/qemu_mps2_an500) on QEMU's Cortex-M7: it builds
within the STM32F746's budgets (directly and through PlatformIO, offline), boots under
qemu-system-arm and serves the protocol with the same numerics as the sim.

Needs qemu-system-arm, arm-none-eabi-gcc (+ newlib) and platformio: without them these tests FAIL
(CI installs them: Debian's qemu-system-arm gcc-arm-none-eabi libnewlib-arm-none-eabi, and
`pip install -e .[test]`)."""
import binascii
import os
import re
import shutil
import struct
import subprocess
import sys
import time

import numpy as np
import pytest

from tinybridge import armbuild, graph, qemu, transport
from tinybridge.device import Device
from tinybridge.model import Model
from tinybridge.protocol import Command, FrameReader, Kind, encode_frame

from sim_helpers import require_arm_tools

ROOT = qemu.ROOT
PIO_CORE = os.path.join(ROOT, "build", "pio-core")  # the tests' own PlatformIO core dir
SEED_SCRIPT = os.path.join(ROOT, "scripts", "seed-tool-scons.sh")
HELLO = struct.Struct("<BBHBBHIIIIIII")


@pytest.fixture(scope="module")
def firmware():
    require_arm_tools()
    return qemu.build_firmware()


@pytest.fixture(scope="module")
def blob():
    """A small model that trains through every backward path, on random calibration images."""
    images = np.random.default_rng(1).integers(0, 256, (16, 32, 32, 1), dtype=np.uint8)
    g = graph.tiny_cnn(images, 2, seed=3, lr=0.01, momentum=0.9)
    g.train("fc", bias=True, weights=True)
    g.train("pw", bias=True, weights=True, channels=0.5)
    g.train("dw", bias=True, weights=True)
    g.train("conv2", bias=True, weights=True, channels=0.5)
    g.train("conv1", bias=True)
    return Model(g).to_bytes()


def _images(n, seed=2):
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 1), dtype=np.uint8)


class Raw:
    """Hand-driven frames over the launcher's link (no Client)."""

    def __init__(self, link):
        self.link, self.reader, self.frames, self.seq = link, FrameReader(), [], 100

    def next_frame(self, timeout=5.0):
        deadline = time.monotonic() + timeout
        while not self.frames:
            assert time.monotonic() < deadline, "no frame from the firmware within %.0f s" % timeout
            self.link.timeout = 0.2
            self.frames += self.reader.feed(self.link.read(4096))
        return self.frames.pop(0)

    def call(self, command, payload=b""):
        self.seq += 1
        self.link.write(encode_frame(Kind.REQUEST, self.seq, command, payload))
        while True:
            frame = self.next_frame()
            if frame.kind == Kind.RESPONSE:
                assert frame.seq == self.seq and frame.command == command, frame
                return frame


def _hello(payload):
    fields = HELLO.unpack_from(payload)
    at, texts = HELLO.size, []
    for _ in range(2):
        texts.append(payload[at + 1:at + 1 + payload[at]].decode())
        at += 1 + payload[at]
    return fields, texts


# ---------------------------------------------------------------- build

def test_firmware_fits_the_f746_budgets(firmware):
    size = qemu.firmware_size(firmware)
    assert 0 < size["flash_image"] <= size["flash_limit"] == 96 * 1024
    assert size["flash_limit"] + qemu.layout()["STORAGE_BYTES"] == 1024 * 1024
    assert TB_ARENA_BYTES < size["ram_static"] and size["ram_static"] + 16 * 1024 <= 320 * 1024
    # nothing the ELF loader writes (at power-on AND at every reset) may touch the storage flash
    lay = qemu.layout()
    out = subprocess.run(["arm-none-eabi-readelf", "-lW", firmware], capture_output=True, text=True, check=True).stdout
    for m in re.finditer(r"^\s*LOAD\s+\S+\s+\S+\s+(0x[0-9a-f]+)\s+\S+\s+(0x[0-9a-f]+)", out, re.M):
        start, size_ = int(m.group(1), 16), int(m.group(2), 16)
        assert start + size_ <= lay["STORAGE_BASE"] or start >= lay["STORAGE_BASE"] + lay["STORAGE_BYTES"], m.group(0)


TB_ARENA_BYTES = 256 * 1024


def test_firmware_has_every_dsp_kernel_path(firmware):
    """The backward kernels' DSP paths are linked in (their matrix core, tb_dsp_grad.c, is only
    compiled with the DSP paths and only kept by --gc-sections when a kernel calls it)."""
    symbols = subprocess.run(["arm-none-eabi-nm", firmware], capture_output=True, text=True, check=True).stdout.split()
    assert {"tb_acc_run", "tb_dsp_acc_trio", "tb_dsp_gemm_run", "tb_dsp_expand_quads"} <= set(symbols)


@pytest.mark.parametrize("what, code, message", [
    ("ram", "char big[310 * 1024];", "exceed the 320 KB SRAM"),
    ("flash", "const char big[100 * 1024] = {1};", "FLASH_FW"),
])
def test_the_link_fails_over_budget(tmp_path, what, code, message):
    require_arm_tools()
    src = tmp_path / ("%s.c" % what)
    src.write_text(code + "\nint main(void) { return ((const volatile char *)big)[1000]; }\n")
    with pytest.raises(Exception) as e:
        armbuild.build_elf(str(tmp_path / "x.elf"), [str(src)], linker_script=qemu.LINKER_SCRIPT)
    assert message in str(e.value)


def _pio_env():
    env = dict(os.environ, PLATFORMIO_CORE_DIR=PIO_CORE, PLATFORMIO_SETTING_ENABLE_TELEMETRY="No",
               PLATFORMIO_SETTING_CHECK_PLATFORMIO_INTERVAL="3650", PLATFORMIO_NO_ANSI="true")
    env.pop("PLATFORMIO_BUILD_FLAGS", None)
    return env


def _offline(cmd):
    """cmd inside a network namespace without a network, where this machine allows one."""
    if shutil.which("unshare") and subprocess.run(["unshare", "-rn", "true"], capture_output=True).returncode == 0:
        return ["unshare", "-rn"] + cmd, True
    return cmd, False


def test_platformio_builds_the_firmware_offline():
    """qemu_m7 and disco_f746ng (the real board's build, never run here) within the F746's budgets."""
    require_arm_tools()
    try:
        import platformio  # noqa: F401
    except ImportError:
        pytest.fail("platformio is not installed: pip install -e .[test] (platformio==6.2.0)")
    env = _pio_env()
    seeded = subprocess.run(["sh", SEED_SCRIPT, sys.executable], capture_output=True, text=True, env=env)
    assert seeded.returncode == 0, seeded.stdout + seeded.stderr
    cmd, offline = _offline([sys.executable, "-m", "platformio", "run", "-e", "qemu_m7", "-e", "disco_f746ng",
                             "-d", ROOT])
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert len(re.findall(r"RAM:.*used \d+ bytes from 327680 bytes", log)) == 2, log[-2000:]
    assert len(re.findall(r"Flash:.*used \d+ bytes from 98304 bytes", log)) == 2, log[-2000:]
    budgets = re.findall(r"tinybridge budget \((.*)\): flash image (\d+) of 98304 bytes", log)
    assert sorted(name.split()[0] for name, _ in budgets) == ["QEMU", "ST"], budgets
    assert all(int(used) <= 98304 for _, used in budgets)
    # ... and that firmware boots and answers like the direct build
    elf = os.path.join(ROOT, "build", "pio", "build", "qemu_m7", "firmware.elf")
    with qemu.launch(elf=elf) as link:
        raw = Raw(link)
        (fields, texts) = _hello(raw.call(Command.HELLO).payload)
        assert texts[1] == qemu.BOARD_NAME
    if not offline:
        print("note: unshare -rn is not allowed here; built without cutting the network")


# ---------------------------------------------------------------- protocol

def test_boots_and_answers_hello(firmware):
    link, close = qemu.open_link(elf=firmware, seed=0x1234)
    try:
        raw = Raw(link)
        boot = raw.next_frame()  # QEMU waits for the client, so the boot event is never lost
        assert boot.kind == Kind.EVENT and boot.command == 1
        hello = raw.call(Command.HELLO)
        assert hello.status == 0
        (version, unit, max_payload, window, _, _, boot_id, caps, arena, model_slot, params_slot, model_crc,
         step), (fw, board) = _hello(hello.payload)
        assert (version, unit, max_payload, board) == (1, 0, 2048, "qemu-mps2-an500")  # unit 0: instructions
        assert window == 4 and arena == TB_ARENA_BYTES and model_crc == 0
        assert boot_id == struct.unpack("<I", boot.payload)[0]
        lay = qemu.layout()  # models from sector 5 on; checkpoints in sectors 3-4 and sector 5
        assert model_slot == lay["STORAGE_BYTES"] - lay["SECTOR5_OFFSET"] - 64 == 768 * 1024 - 64
        assert params_slot == lay["SECTOR5_OFFSET"] - 32 == 160 * 1024 - 32
        # errors are answered and the device keeps serving
        infer = raw.call(Command.INFER)
        assert infer.status == 5 and b"no model" in infer.payload  # NO_MODEL
        assert raw.call(0x7E).status == 2  # UNKNOWN_COMMAND
        link.write(b"\x05garbage\x00")  # a frame that fails its CRC: dropped, counted
        stats = raw.call(Command.STATS)
        assert stats.status == 0
        infer_count, step_count, arena_hw, stack_hw, bad_frames, steps = struct.unpack("<QQIIII", stats.payload)
        assert bad_frames == 1 and 0 < stack_hw < 320 * 1024
    finally:
        close()
    assert link.proc.poll() is not None  # closing the link stopped QEMU
    with qemu.launch(elf=firmware, seed=0x5678) as link:
        assert _hello(Raw(link).call(Command.HELLO).payload)[0][6] != boot_id  # another boot id


def test_transfer_infer_train_match_the_sim(firmware, blob):
    images = _images(4)
    labels = [0, 1, 1, 0]
    with Device(qemu.open_transport(elf=firmware), timeout=10) as dev, \
            Device(transport.open_transport("sim")) as sim:
        assert dev.info()["board"] == "qemu-mps2-an500" and dev.info()["counter_unit"] == "instructions"
        dev.load_model(blob, progress=False)
        sim.load_model(blob, progress=False)
        dev.set_baud(921600)  # accepted; QEMU does not emulate the line rate
        for img in images[:2]:
            a, b = dev.infer(img), sim.infer(img)
            assert a.label == b.label and np.array_equal(a.scores, b.scores)
        for img, label in zip(images, labels):
            assert dev.train_step(img, label) == sim.train_step(img, label)
        a, b = dev.infer(images[0]), sim.infer(images[0])
        assert np.array_equal(a.scores, b.scores)
        stats = dev.stats()
        assert stats["counter_unit"] == "instructions" and stats["last_infer"] > 100000
        assert stats["last_step"] > stats["last_infer"]
        assert stats["steps"] == 4 and stats["bad_frames"] == 0
        assert 0 < stats["stack_high_water"] < 320 * 1024 - qemu.firmware_size(firmware)["ram_static"]
        # instruction counts are exact: the same inference costs the same (to a 40-instruction tick)
        dev.infer(images[0])
        again = dev.stats()["last_infer"]
        assert abs(again - stats["last_infer"]) <= 40

        # the flash keeps the model and its saved parameters across a reset
        boot_id = dev.info()["boot_id"]
        dev.save()
        dev.reset()
        info = dev.info()
        assert info["boot_id"] != boot_id
        assert info["model_crc32"] == binascii.crc32(blob) and info["step"] == 4
        assert np.array_equal(dev.infer(images[1]).scores, sim.infer(images[1]).scores)


def test_a_model_baked_into_the_flash_image(blob):
    require_arm_tools()
    elf = qemu.build_firmware(model=blob)
    assert qemu.firmware_size(elf)["preload"] >= len(blob)
    with Device(qemu.open_transport(elf=elf)) as dev:
        info = dev.info()
        assert info["model_crc32"] == binascii.crc32(blob) and info["model"]["input_shape"] == (32, 32, 1)
        dev.infer(_images(1)[0])


def test_a_large_zoo_model_baked_in_from_sector_5():
    """mcunet-5fps (~610 KB: more than model slots A and B) preloaded from sector 5 on: it loads,
    infers and trains as on the sim, and its ~30 KB checkpoint fits the 32 KB slots left beside it."""
    require_arm_tools()
    import tinybridge

    model = tinybridge.compile("mcunet-5fps", num_classes=2, update="49kb")
    blob = model.to_bytes()
    lay = qemu.layout()
    assert qemu.model_offset(len(blob)) == lay["SECTOR5_OFFSET"]
    img = np.random.default_rng(4).integers(0, 256, model.input_shape, dtype=np.uint8)
    with Device(qemu.open_transport(model=blob), timeout=60) as dev, Device(transport.open_transport("sim")) as sim:
        info = dev.info()
        assert info["model_crc32"] == binascii.crc32(blob) and info["params_slot_bytes"] == 32 * 1024 - 32
        sim.load_model(blob, progress=False)
        assert np.array_equal(dev.infer(img).scores, sim.infer(img).scores)
        assert dev.train_step(img, 1) == sim.train_step(img, 1)
        assert dev.save() == 1
        dev.reset()
        assert dev.info()["step"] == 1 and dev.read_params() == sim.read_params()


def test_the_counter_is_64_bit_across_timer_wraps(blob):
    """A timer that wraps every 65536 ticks (2.6 M instructions, less than two inferences): the same
    inference still costs the same."""
    require_arm_tools()
    img = _images(1)[0]
    with Device(qemu.open_transport(model=blob, defines=["COUNTER_RELOAD=0xFFFFu"])) as dev:
        counts = []
        for _ in range(6):
            dev.infer(img)
            counts.append(dev.stats()["last_infer"])
    assert 100000 < counts[0] < 0xFFFF * 40 * 2
    assert max(counts) - min(counts) <= 80, counts


def test_a_full_receive_ring_holds_the_host_back(blob):
    """A 64-byte ring under 2 KB frames, window 4: the receive interrupt stops, QEMU holds the
    host's bytes back, nothing is lost."""
    require_arm_tools()
    with Device(qemu.open_transport(defines=["RX_RING_BYTES=64"]), timeout=10) as dev:
        dev.load_model(blob, progress=False)
        assert dev.info()["model_crc32"] == binascii.crc32(blob)
        assert dev.stats()["bad_frames"] == 0
