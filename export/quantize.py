"""Edge variants: static INT8 (onnxruntime, QDQ, per-channel) and FP16 weights.

File in, file out, as onnxruntime's own tools: the FP32 ModelProto goes in, a ModelProto comes
out. Calibration images are raw RGB pixels prepared by ``runtime.image.preprocess``.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from runtime.errors import DataError, ModelError
from runtime.image.preprocess import IMAGE_SUFFIXES, prepare, to_batch
from runtime.model.batching import predict_in_batches
from runtime.model.contract import InputContract

from .run_record import RunRecord

CALIB_BATCH = 64  # images per calibration run: a few MB of activations at a time
QUANT_TYPES = ("QUInt8", "QInt8")  # onnxruntime.quantization.QuantType names
QUANT_FORMATS = ("QDQ", "QOperator")  # onnxruntime.quantization.QuantFormat names


@dataclass(frozen=True)
class Int8Config:
    calib_images: int = 1024  # training images; 1k-2k is where MinMax ranges stop moving
    method: str = "minmax"  # "minmax" | "percentile" | "entropy"
    aim_drop_points: float = 0.3  # keep layers in float until held-out accuracy falls by less than this
    max_float_layers: int = 3  # ... but never more than this many besides the Softmax
    # Held-out images (never calibration images) that judge the float-layer search. Below 500 one
    # image is worth more than 0.2 pt, too coarse for the 0.3-pt aim: the search is skipped, and said so.
    min_held_out: int = 500
    seed: int = 0  # which training images calibrate
    # 7-bit weights (onnxruntime's reduce_range: int8 weights in [-64, 64]), so the file gives the
    # same answers on every x86 CPU. Without VNNI (AVX2; AVX-512 before Cascade Lake and Zen 4)
    # onnxruntime multiplies uint8 activations by int8 weights with VPMADDUBSW, which adds each
    # pair of products into an int16 and saturates: 255 * 127 * 2 = 64,770 > 32,767. With 7-bit
    # weights a pair is at most 255 * 64 * 2 = 32,640. Measured on the shipped model
    # (docs/int8-cpus.md, scripts/check_int8_cpus.py): full-range weights score 46.6% of the test
    # split on an AVX2 EPYC against 90.35% with VNNI; 7-bit weights 90.20% on both (identical
    # answers), 0.27 point below FP32. False only for files that run on VNNI or arm64 CPUs alone.
    reduce_range: bool = True
    # The first Conv (the stem, on raw 0-255 pixels) stays float: with 12 weights per output in the
    # shipped model, too few for rounding errors to average out, it is where most of INT8's error
    # is, and about 0.5% of the multiply-adds. With it float, 7-bit weights score 90.43% (FP32
    # 90.47%; top-1 agreement 98.72% -> 99.44%; on training images apart from calibration
    # 99.25% -> 99.65%, which is what chose it), at the same speed.
    float_first_conv: bool = True
    activations: str = "QUInt8"  # "QUInt8" | "QInt8"; x86 converts QInt8 activations to QUInt8 anyway
    weights: str = "QInt8"  # "QInt8" | "QUInt8" (u8u8: no saturation either, but slower kernels)
    per_channel: bool = True  # one weight scale per output channel
    quant_format: str = "QDQ"  # "QDQ" | "QOperator" (QLinearConv... written out)

    def __post_init__(self):
        for name, allowed in (("activations", QUANT_TYPES), ("weights", QUANT_TYPES),
                              ("quant_format", QUANT_FORMATS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"Int8Config.{name} must be one of {allowed}, not {getattr(self, name)!r}")


@dataclass
class Int8Result:
    model_proto: object
    recipe: dict  # goes into provenance.quantization
    trials: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # for the parity report: what was not checked, and why


# --- calibration data ---------------------------------------------------------------------

def calibration_from_cifar(data: str | os.PathLike, n: int, seed: int = 0, n_select: int = 2000,
                           input_size: int = 32, model_path: str | os.PathLike | None = None):
    """(calibration images, held-out (images, labels) for choosing float layers) from the train
    split of ``data`` (CIFAR-10 or any dataset ``train.data`` reads), at ``input_size``, as the run
    of ``model_path`` split it (``calibration_from_train``; an export hands it the split it read)."""
    contract = InputContract(height=input_size, width=input_size)
    return calibration_from_train(RunRecord.beside(model_path).with_data(data, contract, ("train",)), n, seed,
                                  n_select)


def calibration_from_train(run: RunRecord, n: int, seed: int = 0, n_select: int = 2000):
    """(calibration images, held-out (images, labels) for choosing float layers) from the train
    split ``run`` read, at its model's size.

    The two never share an image index (``split_calibration``); the held-out pair is empty when
    calibration takes the whole split. train.data prepares every file through
    runtime.image.preprocess.prepare: x.astype(float32) equals runtime.image.preprocess.to_batch.
    """
    x_train, y_train = run.training.x_train, run.training.y_train
    if len(x_train) == 0:
        raise DataError(f"{run.data}: calibration data missing (the train split is empty)")
    calib, select = split_calibration(len(x_train), n, n_select, seed)
    return x_train[calib].astype(np.float32), (x_train[select].astype(np.float32), y_train[select])


def split_calibration(n_images: int, n_calib: int, n_held_out: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(calibration indices, held-out indices): one shuffled order cut once, so none is in both.
    Calibration gets its ``n_calib`` first; held-out what follows, up to ``n_held_out``, maybe none."""
    order = np.random.default_rng(seed).permutation(n_images)
    return order[:n_calib], order[n_calib:n_calib + n_held_out]


def held_out_apart(calib: np.ndarray, held_out: tuple[np.ndarray, np.ndarray] | None,
                   min_images: int) -> tuple[tuple[np.ndarray, np.ndarray] | None, list[str]]:
    """The labelled images fit to judge INT8 trials, or None; and notes saying what was not checked.

    Held-out images identical to a calibration image are left out (a duplicate in the data, or a
    caller's overlapping arrays), so quantization is never judged on what it was calibrated on.
    Fewer than ``min_images`` left: None, and a note saying how to get more.
    """
    if held_out is None:
        return None, ["INT8: the calibration images have no labels, so no held-out check chose float "
                      "layers (only the Softmax stays float)"]
    x, y = held_out
    calibrated = {hash(image.tobytes()) for image in calib}
    apart = np.array([hash(image.tobytes()) not in calibrated for image in x], dtype=bool)
    notes = []
    if not apart.all():
        notes.append(f"INT8: {int((~apart).sum())} held-out images are identical to calibration images "
                     "and were left out of the held-out check")
    x, y = x[apart], y[apart]
    if len(x) < min_images:
        fewer = len(calib) + len(x) - min_images
        fix = f"pass --calib-images {fewer} or fewer" if fewer >= 1 else "use a larger train split"
        notes.append(f"INT8: only {len(x)} training images are left apart from the {len(calib)} that "
                     f"calibrate; the float-layer search needs {min_images} and was skipped ({fix})")
        return None, notes
    return (x, y), notes


def calibration_from_folder(folder: str | os.PathLike, n: int, seed: int = 0,
                            contract: InputContract | None = None) -> np.ndarray:
    """Any folder of images (any size): each goes through runtime.image.preprocess.prepare to the
    model's ``contract`` (default: 32x32)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: calibration data missing (no such directory)")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{folder}: calibration data missing (no images inside: {', '.join(IMAGE_SUFFIXES)})")
    pick = np.random.default_rng(seed).permutation(len(files))[:n]
    return to_batch([prepare(files[i], contract) for i in sorted(pick)])  # (n, S, S, 3) float32 raw


class _Reader:
    """onnxruntime's CalibrationDataReader protocol: get_next() → {input: batch} or None."""

    def __init__(self, input_name: str, batch_nhwc: np.ndarray):
        self.input_name = input_name
        self.chunks = [batch_nhwc[i:i + CALIB_BATCH] for i in range(0, len(batch_nhwc), CALIB_BATCH)]
        self.rewind()

    def get_next(self):
        return next(self._it, None)

    def rewind(self):
        self._it = iter({self.input_name: c} for c in self.chunks)

    def __iter__(self):  # qdq_loss_debug.collect_activations iterates instead of calling get_next
        return iter({self.input_name: c} for c in self.chunks)


# --- INT8 ---------------------------------------------------------------------------------

def _method(name: str):
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
            "entropy": CalibrationMethod.Entropy}[name]


@dataclass(frozen=True)
class _Work:
    """What every quantization trial of one model shares: the pre-processed float model (in
    ``pre_path`` and in memory), where each trial is written, and the calibration images."""

    pre_path: Path  # quant_pre_process's output (symbolic shapes, ORT fusions), the first Conv made exact
    pre_proto: object  # the same model, in memory
    out_path: Path  # where quantize_static writes each trial
    input_name: str  # the graph's one input, as the FP32 model names it
    calib: np.ndarray  # (n, S, S, 3) float32 raw 0-255
    config: Int8Config

    def quantize(self, exclude: list[str]):
        """One quantize_static run keeping the ``exclude`` nodes float; the INT8 ModelProto."""
        import onnx
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

        config = self.config
        quantize_static(os.fspath(self.pre_path), os.fspath(self.out_path), _Reader(self.input_name, self.calib),
                        quant_format=QuantFormat[config.quant_format], per_channel=config.per_channel,
                        reduce_range=config.reduce_range, activation_type=QuantType[config.activations],
                        weight_type=QuantType[config.weights], nodes_to_exclude=exclude,
                        calibrate_method=_method(config.method),
                        extra_options={"CalibPercentile": 99.999} if config.method == "percentile" else None)
        return onnx.load(os.fspath(self.out_path))


def rank_layers_by_error(float_proto, float_path: Path, qdq_path: Path,
                         batch_nhwc: np.ndarray) -> list[tuple[str, float]]:
    """(node name, SQNR dB) of quantized nodes, worst first: onnxruntime's qdq_loss_debug, on the
    float model (``float_proto``, saved at ``float_path``) and its quantized ``qdq_path``.

    The SQNR compares each node's float output with the same tensor after its own QDQ pair,
    so a low value points at the layer where quantization itself loses signal.
    """
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_activation_error,
        create_activation_matching,
        modify_model_output_intermediate_tensors,
    )

    work = qdq_path.parent
    input_name = float_proto.graph.input[0].name
    aug_float, aug_qdq = work / "aug_float.onnx", work / "aug_qdq.onnx"
    modify_model_output_intermediate_tensors(os.fspath(float_path), os.fspath(aug_float))
    modify_model_output_intermediate_tensors(os.fspath(qdq_path), os.fspath(aug_qdq))
    sample = batch_nhwc[:256]
    float_acts = collect_activations(os.fspath(aug_float), _Reader(input_name, sample))
    qdq_acts = collect_activations(os.fspath(aug_qdq), _Reader(input_name, sample))
    errors = compute_activation_error(create_activation_matching(qdq_acts, float_acts))
    producer = {out: node.name for node in float_proto.graph.node for out in node.output}
    ranked = [(producer[t], float(e["qdq_err"])) for t, e in errors.items()
              if t in producer and "qdq_err" in e]
    return sorted(ranked, key=lambda item: item[1])


def exact_first_conv(model_proto, conv_name: str, input_bits: int = 8) -> int | None:
    """Round the weights and bias of ``conv_name``, a float Conv that reads the graph input, so
    that on integer inputs below 2**input_bits (raw 0-255 pixels) every partial sum is a multiple
    of one unit per output channel and below 2**24 units: exact in float32, so the same bits on
    every CPU, with or without FMA, in any order. Otherwise its last-bit differences between CPUs
    (1e-6) would move activations across the rounding steps of the next layer's uint8 input, and
    probabilities by up to 1e-2. Edits ``model_proto`` in place; returns the significant bits kept
    per weight (11 for 12 weights per output), or None, unchanged, where the Conv reads anything
    but the graph input (through Transposes) or its bias is too large for the bound.
    """
    import math

    from onnx import numpy_helper

    graph = model_proto.graph
    producer = {out: node for node in graph.node for out in node.output}
    conv = next(node for node in graph.node if node.name == conv_name)
    source = conv.input[0]
    while source in producer and producer[source].op_type == "Transpose":
        source = producer[source].input[0]
    initializers = {init.name: init for init in graph.initializer}
    if source not in {i.name for i in graph.input} or conv.input[1] not in initializers:
        return None
    weights = numpy_helper.to_array(initializers[conv.input[1]]).astype(np.float64)  # (out, in/groups, kh, kw)
    per_output = weights[0].size
    bits = 23 - input_bits - math.ceil(math.log2(per_output + 1))  # |sum of products| < 2**23 units
    largest = np.abs(weights.reshape(len(weights), -1)).max(1)
    unit = 2.0 ** (np.ceil(np.log2(np.where(largest > 0, largest, 1.0))) - bits)  # (out,)
    bias_name = conv.input[2] if len(conv.input) > 2 else ""
    bias = numpy_helper.to_array(initializers[bias_name]).astype(np.float64) if bias_name else np.zeros(len(unit))
    if np.any(np.abs(np.round(bias / unit)) >= 2 ** 23):  # with the products, 2**24 units or more
        return None
    for name, value in ((conv.input[1], np.round(weights / unit.reshape(-1, *[1] * (weights.ndim - 1)))),
                        (bias_name, np.round(bias / unit))):
        if name:
            scaled = value * unit.reshape(-1, *[1] * (value.ndim - 1))
            initializers[name].CopyFrom(numpy_helper.from_array(scaled.astype(np.float32), name))
    return bits


def quantize_int8(fp32_proto, calib: np.ndarray, config: Int8Config = Int8Config(),
                  held_out: tuple[np.ndarray, np.ndarray] | None = None) -> Int8Result:
    """Static INT8: pre-process (symbolic shapes, fusions), calibrate, QDQ per-channel.

    The final Softmax always stays float (its input range is wide, its output in [0, 1]: a
    uint8 scale loses the small probabilities), and so does the first Conv (in the graph's
    topological order) unless ``config.float_first_conv`` is False. With enough ``held_out``
    labelled images apart from ``calib`` (``held_out_apart``), more layers are kept in float one at
    a time, worst SQNR first, until held-out accuracy falls by less than ``config.aim_drop_points``.
    Deltas are INT8 minus FP32, so a fall is negative.
    """
    if len(calib) == 0:
        raise DataError("calibration data missing: no calibration images")
    held_out, notes = held_out_apart(calib, held_out, config.min_held_out)
    with tempfile.TemporaryDirectory(prefix="cifar-edge-int8-") as tmp:
        work, first_conv, exact_bits = _pre_process(fp32_proto, Path(tmp), calib, config)
        exclude = [n.name for n in work.pre_proto.graph.node if n.op_type == "Softmax"]
        exclude += [first_conv] if config.float_first_conv and first_conv else []
        proto = work.quantize(exclude)
        trials: list[dict] = []
        ranked: list[tuple[str, float]] = []
        if held_out is not None:
            proto, ranked = _keep_layers_float(work, proto, exclude, trials, fp32_proto, held_out)
    return Int8Result(proto, _recipe(config, exact_bits, len(calib), held_out, exclude, ranked), trials, notes)


def _pre_process(fp32_proto, tmp: Path, calib: np.ndarray, config: Int8Config) -> tuple[_Work, str, int | None]:
    """(the work every trial shares, the first Conv's name ("" if none), its exact weight bits):
    quant_pre_process on ``fp32_proto``, then the first Conv made exact when it stays float."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    float_path, pre_path = tmp / "fp32.onnx", tmp / "pre.onnx"
    onnx.save(fp32_proto, os.fspath(float_path))
    try:
        quant_pre_process(os.fspath(float_path), os.fspath(pre_path))
    except Exception as exc:
        raise ModelError(f"INT8 pre-processing (symbolic shape inference) failed: {str(exc)[:200]}") from None
    pre_proto = onnx.load(os.fspath(pre_path))  # what quant_pre_process wrote: fused, shapes inferred
    first_conv = next((n.name for n in pre_proto.graph.node if n.op_type == "Conv"), "")
    exact_bits = None
    if config.float_first_conv and first_conv:
        exact_bits = exact_first_conv(pre_proto, first_conv)
        onnx.save(pre_proto, os.fspath(pre_path))
    work = _Work(pre_path, pre_proto, tmp / "int8.onnx", fp32_proto.graph.input[0].name, calib, config)
    return work, first_conv, exact_bits


def _keep_layers_float(work: _Work, proto, exclude: list[str], trials: list[dict], fp32_proto,
                       held_out: tuple[np.ndarray, np.ndarray]):
    """(the best INT8 proto, the layers ranked by SQNR): keep the worst layers float one at a time
    while it helps, until held-out accuracy is within the aim. ``exclude`` and ``trials`` grow."""
    from .parity import BATCH_SIZE, onnx_predictor

    def accuracy(proto) -> float:
        x, y = held_out
        top1 = predict_in_batches(onnx_predictor(proto), x, BATCH_SIZE).argmax(1)
        return float(np.mean(top1 == y) * 100)

    aim, base = work.config.aim_drop_points, accuracy(fp32_proto)
    delta = accuracy(proto) - base
    trials.append({"float_layers": list(exclude), "held_out_delta_points": round(delta, 3)})
    if delta >= -aim:
        return proto, []
    ranked = rank_layers_by_error(work.pre_proto, work.pre_path, work.out_path, held_out[0])  # the trial above
    for name in [name for name, _ in ranked if name not in exclude][:work.config.max_float_layers]:
        exclude.append(name)
        trial = work.quantize(exclude)
        trial_delta = accuracy(trial) - base
        trials.append({"float_layers": list(exclude), "held_out_delta_points": round(trial_delta, 3)})
        if trial_delta > delta:
            proto, delta = trial, trial_delta
        else:
            exclude.remove(name)  # keeping it float did not help: quantize it again
        if delta >= -aim:
            break
    return proto, ranked


def _recipe(config: Int8Config, exact_bits: int | None, n_calib: int, held_out, exclude: list[str],
            ranked: list[tuple[str, float]]) -> dict:
    """What goes into provenance.quantization: how the INT8 file was made."""
    return {
        "tool": "onnxruntime.quantization.quantize_static",
        "format": config.quant_format, "per_channel": config.per_channel, "activations": config.activations,
        "weights": config.weights,
        # True: 7-bit weights, the same answers with and without VNNI (Int8Config.reduce_range says why)
        "reduce_range": config.reduce_range,
        "float_first_conv": config.float_first_conv,  # named in float_layers when there is one
        # its weights' significant bits, so that it sums exactly on every CPU (exact_first_conv); None: as trained
        "first_conv_weight_bits": exact_bits,
        "calibration_method": config.method, "calibration_images": int(n_calib),
        "held_out_images": 0 if held_out is None else int(len(held_out[0])),  # none shared with calibration
        "preprocess": "quant_pre_process (symbolic shape inference, ORT fusions)",
        "float_layers": exclude,
        "worst_layers_sqnr_db": [[n, round(s, 2)] for n, s in ranked[:5]],
    }


# --- FP16 ---------------------------------------------------------------------------------

def convert_fp16(fp32_proto):
    """Float16 weights and compute; float32 input and output kept, so callers do not change."""
    import copy

    from onnxruntime.transformers.float16 import convert_float_to_float16

    proto = convert_float_to_float16(copy.deepcopy(fp32_proto), keep_io_types=True)
    recipe = {"tool": "onnxruntime.transformers.float16.convert_float_to_float16",
              "weights": "float16", "io_types": "float32 (keep_io_types=True)"}
    return proto, recipe
