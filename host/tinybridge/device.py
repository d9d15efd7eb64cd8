"""`tinybridge.connect()` and Device: the device's commands as Python methods."""
import collections
import math
import os
import struct

import numpy as np

from .errors import DeviceError, DeviceResetError, ProtocolError, TimeoutError, TinyBridgeError
from . import preprocess
from .metrics import classification_metrics
from .progress import ProgressBar
from .protocol import Client, Command, Slot, crc32, u32
from .transport import DEFAULT_BAUD, open_transport

Prediction = collections.namedtuple("Prediction", "label scores")
Prediction.__doc__ = "INFER's answer: the predicted label and the dequantized logits (numpy float32)."
StepResult = collections.namedtuple("StepResult", "loss label_pred step")
StepResult.__doc__ = "TRAIN_STEP's answer: the loss, the label predicted before the update, the step count."
ModelInfo = collections.namedtuple(
    "ModelInfo", "crc32 size input_shape num_classes arena_bytes params_bytes default_lr step")
ModelInfo.__doc__ = "The loaded model as the device reports it (MODEL_INFO); input_shape is (H, W, C)."
Profile = collections.namedtuple("Profile", "run counter_unit total outside ops")
Profile.__doc__ = """The per-op cost of the device's last INFER or TRAIN_STEP (PROFILE): run ("infer",
"train_step", or None before any run of the loaded model), counter_unit (HELLO's), total (as
stats()' last_infer / last_step), outside (the part spent in no op: setup, the loss) and ops: per
op of the blob, in its order, (forward, backward); they add up to total with outside."""

COUNTER_UNITS = {0: "instructions", 1: "cycles", 2: "ns"}
CAPABILITIES = ("train", "infer", "save", "set_baud", "profile")
RUNS = {0: None, 1: "infer", 2: "train_step"}
HELLO = struct.Struct("<BBHBBHIIIIIII")
MODEL_INFO = struct.Struct("<IIHHHHIIfI")
STATS = struct.Struct("<QQIIII")
PROFILE = struct.Struct("<BBHQIHH")  # run, reserved, n_ops, total, outside, first op, count
# flash erase, blob validation and CRCs over a megabyte can take seconds on a board
SLOW_TIMEOUT = 30.0


def connect(port="sim", *, timeout=5.0, retries=2, baud=None, flash=None):
    """Opens a Device on `port`: "sim", "auto", a serial device path or a pyserial URL
    (tinybridge.transport). `timeout`: seconds to wait for each answer, resent `retries` times;
    `baud`: switch a serial link to this rate after the handshake; `flash`: the sim's flash image
    file (default: a fresh, erased flash per process)."""
    transport = open_transport(port, flash=flash)
    try:
        return Device(transport, timeout=timeout, retries=retries, baud=baud)
    except BaseException:
        transport.close()
        raise


def _parse_model_info(payload):
    crc, size, h, w, c, classes, arena, params, lr, step = MODEL_INFO.unpack_from(payload)
    return ModelInfo(crc, size, (h, w, c), classes, arena, params, lr, step)


def _blob_bytes(model_or_path):
    if isinstance(model_or_path, (bytes, bytearray, memoryview)):
        return bytes(model_or_path)
    if isinstance(model_or_path, (str, os.PathLike)):
        with open(model_or_path, "rb") as f:
            return f.read()
    if hasattr(model_or_path, "to_bytes"):
        return bytes(model_or_path.to_bytes())
    raise TypeError("load_model takes bytes, a path or a model with to_bytes(), not %s" % type(model_or_path).__name__)


class Device:
    """One connected device. Use as a context manager, or call close()."""

    def __init__(self, transport, *, timeout=5.0, retries=2, baud=None):
        self.transport = transport
        self.client = Client(transport, timeout=timeout, retries=retries)
        self.model = None  # ModelInfo of the loaded model, None without one
        self._hello()
        if baud is not None and baud != DEFAULT_BAUD:
            self.set_baud(baud)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return "<tinybridge.Device %s on %s>" % (self._info.get("board"), self.transport.description)

    def close(self):
        self.transport.close()

    # ---------------- handshake ----------------

    def _hello(self):
        payload = self.client.request(Command.HELLO)
        (version, unit, max_payload, window, _, _, boot_id, caps, arena, model_slot, params_slot,
         model_crc, step) = HELLO.unpack_from(payload)
        at = HELLO.size
        texts = []
        for _ in range(2):
            n = payload[at]
            texts.append(payload[at + 1:at + 1 + n].decode("utf-8", errors="replace"))
            at += 1 + n
        self.client.boot_event(boot_id)
        self.client.window = max(1, window)
        self.client.max_payload = max_payload
        self._info = {
            "protocol_version": version, "firmware_version": texts[0], "board": texts[1],
            "boot_id": boot_id, "counter_unit": COUNTER_UNITS.get(unit, str(unit)),
            "max_payload": max_payload, "window": window,
            "capabilities": [name for bit, name in enumerate(CAPABILITIES) if caps >> bit & 1],
            "arena_bytes": arena, "model_slot_bytes": model_slot, "params_slot_bytes": params_slot,
            "model_crc32": model_crc, "step": step,
        }
        self.model = _parse_model_info(self.client.request(Command.MODEL_INFO)) if model_crc else None

    def info(self):
        """HELLO's facts (board, versions, limits, capabilities, boot id) and the loaded model."""
        self._hello()
        info = dict(self._info)
        info["model"] = self.model._asdict() if self.model else None
        return info

    def set_baud(self, baud):
        """Switches the link's rate (device first, then this end) and checks it with a HELLO."""
        if "set_baud" not in self._info["capabilities"]:
            raise TinyBridgeError("%s cannot change its baud rate" % self._info["board"])
        self.client.request(Command.SET_BAUD, struct.pack("<I", baud))
        self.transport.set_baud(baud)
        self._hello()

    # ---------------- model ----------------

    def load_model(self, model_or_path, progress=True):
        """Uploads a model blob (bytes, a file path, or a compiled Model), commits it and returns
        its ModelInfo; the model starts from its initial parameters. When the device already runs
        this very blob, only those parameters are written (write_params: kilobytes instead of the
        blob's hundreds, which take seconds to minutes over a serial link) where its checkpoint
        slot holds them. Resumes an interrupted upload of the same blob."""
        blob = _blob_bytes(model_or_path)
        if self._runs_blob(blob):
            from .model import Model

            model = model_or_path if isinstance(model_or_path, Model) else Model.from_bytes(blob)
            self.model = _parse_model_info(self.client.request(Command.MODEL_INFO))
            try:
                self.write_params(model.params_region())
                return self.model
            except DeviceError as e:
                if e.name != "TOO_LARGE":
                    raise
                # the checkpoint slot beside this model is smaller than its parameters (a model
                # over 512 KB leaves 32 KB, docs/protocol.md "Flash"): commit the blob again
        bar = ProgressBar(len(blob), "upload") if progress else None
        try:
            self.client.upload(Slot.MODEL, blob, progress=bar.update_to if bar else None)
            payload = self.client.request(Command.XFER_COMMIT, bytes([Slot.MODEL]), timeout=SLOW_TIMEOUT)
        except DeviceError:
            self._hello()  # the previous model, or none if the blob did not fit beside it
            raise
        finally:
            if bar:
                bar.close()
        self.model = _parse_model_info(payload)
        return self.model

    def _runs_blob(self, blob):
        size, crc = struct.unpack("<II", self.client.request(Command.XFER_STAT, bytes([Slot.MODEL])))
        return size == len(blob) and crc == crc32(blob)

    def _need_model(self):
        if self.model is None:
            raise TinyBridgeError("no model loaded: call load_model() first")
        return self.model

    def _input_bytes(self, img):
        return np.ascontiguousarray(preprocess.input_tensor(img, self._need_model().input_shape)).tobytes()

    def _check_label(self, label):
        classes = self._need_model().num_classes
        if isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, np.integer)):
            raise ValueError("label must be an integer in [0, %d), got %r" % (classes, label))
        if not 0 <= label < classes:
            raise ValueError("label %d out of range [0, %d)" % (label, classes))
        return int(label)

    def _send_input(self, img):
        data = self._input_bytes(img)
        self.client.upload(Slot.INPUT, data)
        self.client.request(Command.XFER_COMMIT, bytes([Slot.INPUT]))

    def infer(self, img):
        """Runs the model on one image: Prediction(label, scores), scores = dequantized logits."""
        self._send_input(img)
        payload = self.client.request(Command.INFER, timeout=max(self.client.timeout, SLOW_TIMEOUT))
        label, n, scale, zero_point = struct.unpack_from("<HHfi", payload)
        logits = np.frombuffer(payload, dtype=np.int8, count=n, offset=12)
        return Prediction(label, np.float32(scale) * (logits.astype(np.float32) - np.float32(zero_point)))

    def train_step(self, img, label, lr=None):
        """One forward + backward + update on the device: StepResult(loss, label_pred, step).
        lr None: the model's default. A resent request is applied once (the device caches it)."""
        label = self._check_label(label)
        if lr is None:
            lr = 0.0  # on the wire: the model's default
        elif not (math.isfinite(lr) and lr > 0):
            raise ValueError("lr must be a positive finite number (None: the model's default), got %r" % lr)
        self._send_input(img)
        payload = self.client.request(Command.TRAIN_STEP, struct.pack("<Hf", label, lr),
                                      timeout=max(self.client.timeout, SLOW_TIMEOUT))
        return StepResult(*struct.unpack_from("<fHI", payload))

    def evaluate(self, images, labels, progress=False):
        """Runs every image and compares with `labels`: accuracy, precision, recall, f1 (binary for
        two classes, of class 1; else macro over the classes present), n, average, confusion,
        per_class (metrics.classification_metrics), loss (mean cross-entropy of the dequantized
        logits), predicted_shares (the share of images predicted as each class) and positive_share
        (of class 1; two classes only). progress: a bar on stderr (True, or its title)."""
        labels = [self._check_label(label) for label in labels]
        images = list(images)
        if len(images) != len(labels):
            raise ValueError("%d images but %d labels" % (len(images), len(labels)))
        for img in images:
            self._input_bytes(img)  # every shape checked before the first one is sent
        title = progress if isinstance(progress, str) else "evaluate"
        bar = ProgressBar(len(images), title, unit="img") if progress else None
        predictions, losses = [], []
        for i, (img, label) in enumerate(zip(images, labels), 1):
            p = self.infer(img)
            z = p.scores.astype(np.float64) - p.scores.max()
            losses.append(np.log(np.exp(z).sum()) - z[label])
            predictions.append(p.label)
            if bar:
                bar.update_to(i)
        if bar:
            bar.close()
        classes = self.model.num_classes
        result = classification_metrics(labels, predictions, classes)
        shares = np.bincount(predictions, minlength=classes) / max(len(predictions), 1)
        result.update(loss=float(np.mean(losses)) if losses else 0.0, predicted_shares=shares.tolist(),
                      positive_share=float(shares[1]) if classes == 2 else None)
        return result

    def save(self):
        """Persists the trained parameters to flash (power-loss safe); returns the checkpoint's generation."""
        self._need_model()
        return u32(self.client.request(Command.SAVE, timeout=SLOW_TIMEOUT))

    def read_params(self):
        """The device's params region (trained weights, biases, optimizer state; docs/blob-format.md)."""
        return self.client.download(Slot.PARAMS, self._need_model().params_bytes)

    def write_params(self, params):
        """Replaces the device's params region (bytes as read_params returns them, or
        Model.params_region()) and persists it as a checkpoint; returns its generation. Training
        goes on from there, as from a loaded checkpoint."""
        params = bytes(params)
        expected = self._need_model().params_bytes
        if len(params) != expected:
            raise ValueError("params of %d bytes, the loaded model's params region has %d" % (len(params), expected))
        self.client.upload(Slot.PARAMS, params)
        generation = u32(self.client.request(Command.XFER_COMMIT, bytes([Slot.PARAMS]), timeout=SLOW_TIMEOUT))
        self.model = _parse_model_info(self.client.request(Command.MODEL_INFO))  # its step count
        return generation

    def read_blob(self):
        """The committed model blob, as uploaded."""
        return self.client.download(Slot.MODEL, self._need_model().size)

    def read_model(self):
        """The loaded model (tinybridge.Model) with the device's trained parameters."""
        from .model import Model

        model = Model.from_bytes(self.read_blob())
        model.apply_params(self.read_params())
        return model

    # ---------------- device ----------------

    def reset(self, timeout=10.0):
        """Reboots the device and waits until it is back (new boot id); the model reloads from flash."""
        self.client.request(Command.RESET)
        try:
            self.client.wait(set(), timeout)  # returns only when no BOOT event came
            self._hello()  # the event may have been lost on the line: the boot id tells
        except DeviceResetError:
            self._hello()
            return
        raise TimeoutError("the device did not boot again within %.0f s of RESET" % timeout)

    def stats(self):
        """Counters: the last INFER's and TRAIN_STEP's cost (in counter_unit; with seconds when the
        unit is ns), arena and stack high-water marks (bytes), bad frames, steps."""
        infer, step, arena, stack, bad, steps = STATS.unpack_from(self.client.request(Command.STATS))
        stats = {"counter_unit": self._info["counter_unit"], "last_infer": infer, "last_step": step,
                 "arena_high_water": arena, "stack_high_water": stack, "bad_frames": bad, "steps": steps}
        if stats["counter_unit"] == "ns":
            stats["last_infer_s"] = infer * 1e-9
            stats["last_step_s"] = step * 1e-9
        return stats

    def profile(self):
        """What each op of the loaded model cost in the last infer() or train_step(): a Profile."""
        if "profile" not in self._info["capabilities"]:
            raise TinyBridgeError("%s (firmware %s) does not report profiles"
                                  % (self._info["board"], self._info["firmware_version"]))
        self._need_model()
        ops = []
        while True:
            payload = self.client.request(Command.PROFILE, struct.pack("<H", len(ops)))
            run, _, n_ops, total, outside, first, count = PROFILE.unpack_from(payload)
            if first != len(ops) or len(payload) != PROFILE.size + 8 * count or (count == 0 and first < n_ops):
                raise ProtocolError("PROFILE answered ops %d..%d of %d in %d bytes for op %d"
                                    % (first, first + count, n_ops, len(payload), len(ops)))
            ops += struct.iter_unpack("<II", payload[PROFILE.size:])
            if len(ops) >= n_ops:
                return Profile(RUNS.get(run, str(run)), self._info["counter_unit"], total, outside, ops)
