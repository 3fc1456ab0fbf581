"""The export job: convert, check, measure parity, build variants, write files and report.

    result = export_model("runs/tiny/model.keras", ExportConfig(int8=True, fp16=True), data="cifar10")

Every stage is timed; every file is written atomically. A failed threshold is a result, not an
error: the files and the report are written and returned, ``result.passed`` is False, and a
caller that must stop on it calls ``parity.raise_if_failed`` (as the CLIs do: exit code 4).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from runtime.errors import DataError, ModelError, OptionError
from runtime.model.confidence import calibration as calibration_figures
from runtime.model.confidence import fit_temperature, with_temperature
from runtime.model.selfcheck import SelfCheckVectors, choose_images, this_machine, vectors_for

from . import convert, metadata, preprocessing
from .calibrate import add_flip_view, bake_temperature, held_out_training_images, mirror_average
from .fold import fold_for_inference
from .parity import (
    DEFAULT_THRESHOLDS,
    ParityData,
    ParityReport,
    Thresholds,
    as_probabilities,
    check_classes,
    compare,
    keras_predictor,
    load_test_split,
    onnx_predictor,
    predict_all,
    synthetic_inputs,
)
from .preprocessing import Preprocessing
from .quantize import Int8Config, calibration_from_cifar, calibration_from_folder, convert_fp16, quantize_int8


@dataclass(frozen=True)
class ExportConfig:
    opset: int = convert.DEFAULT_OPSET
    int8: bool = False
    fp16: bool = False
    int8_config: Int8Config = Int8Config()
    # Per-variant threshold overrides; None keeps parity.DEFAULT_THRESHOLDS.
    fp32_thresholds: Thresholds | None = None
    int8_thresholds: Thresholds | None = None
    fp16_thresholds: Thresholds | None = None
    test_limit: int | None = None  # parity on the first N test images (tests); None = all 10000
    # Fold normalization, BatchNorm and the temperature into the neighbouring layers before
    # conversion (export.fold): the same function with fewer operators, faster everywhere.
    fold: bool = True
    # Fit a temperature per variant on the training images the model's run held out, and bake
    # it into the graph (export.calibrate), so its probabilities mean what they say.
    calibrate: bool = True
    # "flip": also write a twin of each variant that averages the image and its mirror.
    tta: str = "none"
    quiet: bool | None = None  # progress bars: None only on a terminal, True never, False always
    # --- a model from elsewhere (export.preprocessing, train.loading) ---
    # What the model expects its pixels scaled to, baked into the graph in front of it (the ONNX
    # file still takes raw 0-255). None: nothing declared, so 0-255, which a Rescaling or
    # Normalization first layer confirms and otherwise is assumed (a note says so).
    preprocessing: Preprocessing | None = None
    # With labelled data the model's accuracy is measured under the declaration and the usual
    # alternatives (export.preprocessing.check); stop when one is clearly better (False: a note).
    stop_on_pixel_mismatch: bool = True
    class_names: tuple[str, ...] | None = None  # one per output; None: the run's config.json, or CIFAR-10's
    input_size: int | None = None  # pixels, for a model whose input takes any size (None, None, 3)
    custom_objects: str | os.PathLike | Mapping | None = None  # a .py file (or dict) of the model's own layers
    unsafe_deserialization: bool = False  # allow Lambda layers' Python code (Keras safe_mode=False)


@dataclass
class ExportResult:
    onnx_paths: dict[str, Path]  # variant → file
    report_path: Path
    report: ParityReport
    metadata: dict[str, dict] = field(default_factory=dict)  # variant → what was written

    @property
    def passed(self) -> bool:
        return self.report.passed


TTA_CHOICES = ("none", "flip")


def output_paths(source: Path, output: str | os.PathLike | None) -> tuple[Path, dict[str, Path], Path]:
    """(FP32 file, every other file by variant name, report): model.onnx, model-int8.onnx,
    model-fp16.onnx and their mirror-averaging twins model-flip.onnx, model-int8-flip.onnx..."""
    fp32 = Path(output) if output else source.with_suffix(".onnx")
    stem = fp32.with_suffix("")
    paths = {"int8": Path(f"{stem}-int8.onnx"), "fp16": Path(f"{stem}-fp16.onnx"), "fp32+flip": Path(f"{stem}-flip.onnx"),
             "int8+flip": Path(f"{stem}-int8-flip.onnx"), "fp16+flip": Path(f"{stem}-fp16-flip.onnx")}
    return fp32, paths, Path(f"{stem}.parity.json")


def _prepare_output(path: Path) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise ModelError(f"{path}: output path is a directory (pass -o FILE.onnx)")
    if not parent.is_dir():
        try:  # like --out of cifar-train: the folder is created
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ModelError(f"{path}: cannot write output, cannot create directory {parent} "
                             f"({exc.strerror or exc})") from None
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ModelError(f"{path}: cannot write output, permission denied")


# What each timed stage did, for the one line per stage on stderr.
STAGE_LINES = {
    "load": "loaded the Keras model", "data": "read the data", "fold": "folded BatchNorm and scaling into the layers",
    "convert": "converted to ONNX",
    "check": "checked the ONNX graph", "parity_keras": "ran Keras on the parity images",
    "quantize_int8": "quantized to INT8", "convert_fp16": "converted to FP16", "save": "saved",
    "parity_keras_mirror": "ran Keras on the mirrored parity images",
    "check_preprocessing": "measured the model's accuracy under each pixel scaling",
}


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def export_model(model_path: str | os.PathLike, config: ExportConfig = ExportConfig(), *,
                 output: str | os.PathLike | None = None, data: str | os.PathLike | None = None,
                 calibration: str | os.PathLike | None = None,
                 log: Callable[[str], None] | None = _stderr) -> ExportResult:
    """Convert, quantize and check ``model_path``; ``log`` gets one line per stage (None:
    silent), which is what a log file shows where a terminal also has progress bars."""
    source = Path(model_path)
    fp32_path, variant_paths, report_path = output_paths(source, output)
    if config.int8 and data is None and calibration is None:
        raise DataError("calibration data missing: pass --data DIR (the dataset the model trained on) "
                        "or --calibration DIR (a folder of images) for --int8")
    _prepare_output(fp32_path)
    stages: dict[str, float] = {}

    def timed(name, fn, *args, **kwargs):
        start = time.perf_counter()
        value = fn(*args, **kwargs)
        seconds = time.perf_counter() - start
        stages[name] = round(stages.get(name, 0.0) + seconds, 2)
        if log is not None and name != "save":
            log(f"export: {STAGE_LINES.get(name, name)} ({seconds:.1f} s)")
        return value

    keras_source = timed("load", convert.load_keras, source, input_size=config.input_size,
                         class_names=config.class_names, custom_objects=config.custom_objects,
                         safe_mode=not config.unsafe_deserialization)
    contract = keras_source.contract  # the model's input size: data, synthetic inputs, metadata follow it
    kind = keras_source.output_kind  # parity compares probabilities, also for a model ending in logits
    if kind == "logits" and config.tta == "flip":
        raise OptionError(f"{source}: --tta flip averages the logits before the model's final Softmax, and this "
                          "model ends in logits: export it without --tta")
    source_sha = metadata.sha256_file(source)
    created = metadata.utc_now()
    parity_data: ParityData = (timed("data", load_test_split, data, config.test_limit, contract.height, source)
                               if data else synthetic_inputs(size=contract.height))
    check_classes(parity_data, keras_source.class_names)
    model_input = _model_input(keras_source, config, parity_data, timed)  # before any long work: it may stop
    for note in model_input.notes():
        if log is not None:
            log(f"export: {note}")
    calib = held_out = None
    if config.int8:  # fail on missing calibration data before any long work
        if calibration is not None:
            calib = timed("data", calibration_from_folder, calibration, config.int8_config.calib_images,
                          config.int8_config.seed, contract)
        else:
            calib, held_out = timed("data", calibration_from_cifar, data, config.int8_config.calib_images,
                                    config.int8_config.seed, input_size=contract.height, model_path=source)

    held = (None, None, "--no-calibrate")
    if config.calibrate and kind == "logits":
        held = (None, None, "the model ends in logits, with no Softmax for a temperature to go before")
    elif config.calibrate:
        start = time.perf_counter()
        held = held_out_training_images(source, data)
        if held[0] is not None:
            stages["data"] = round(stages.get("data", 0.0) + time.perf_counter() - start, 2)
            if log is not None:
                log(f"export: read {held[2]} to calibrate with ({time.perf_counter() - start:.1f} s)")
        elif log is not None:
            log(f"export: not calibrating: {held[2]}")
    if config.tta not in TTA_CHOICES:
        raise ValueError(f"tta must be one of {TTA_CHOICES}, not {config.tta!r}")

    front = model_input.preprocessing.layer()  # None: the model takes raw pixels
    reference_model = convert.with_front(keras_source.model, contract, front)  # the model as saved, on raw pixels
    unfolded = convert.as_functional(keras_source.model, contract, front)
    folded, folds = timed("fold", fold_for_inference, unfolded) if config.fold else (unfolded, [])
    fp32_proto = timed("convert", convert.to_onnx, replace(keras_source, model=folded), config.opset)
    timed("check", convert.check_onnx, fp32_proto, contract, len(keras_source.class_names))
    reference = timed("parity_keras", predict_all, as_probabilities(keras_predictor(reference_model), kind),
                      parity_data.batch_nhwc, "keras", config.quiet)

    report = ParityReport(reference=str(source), reference_sha256=source_sha, data=parity_data.description,
                          created=created, preprocessing=model_input.to_dict())
    report.notes += model_input.notes()
    if parity_data.labels is None:
        report.notes.append("no --data: compared on synthetic inputs, so accuracy is not measured")
    if held[0] is None and config.calibrate:
        report.notes.append(f"not calibrated: {held[2]}; probabilities are the network's own")
    views = ["single"] + (["flip"] if config.tta == "flip" else [])
    reference_mirror = None
    if "flip" in views:
        mirrored = parity_data.batch_nhwc[:, :, ::-1]
        reference_mirror = timed("parity_keras_mirror", predict_all,
                                 as_probabilities(keras_predictor(reference_model), kind), mirrored,
                                 "keras mirrored", config.quiet)
    result = ExportResult(onnx_paths={}, report_path=report_path, report=report)
    checks = _SelfCheckImages.choose(parity_data.batch_nhwc, reference,
                                     as_probabilities(keras_predictor(reference_model), kind), "flip" in views)

    variants: list[tuple[str, object, dict | None]] = [("fp32", fp32_proto, None)]
    if config.int8:
        int8 = timed("quantize_int8", quantize_int8, fp32_proto, calib, config.int8_config, held_out)
        variants.append(("int8", int8.model_proto, {**int8.recipe, "trials": int8.trials}))
        report.notes += int8.notes
    if config.fp16:
        fp16_proto, recipe = timed("convert_fp16", convert_fp16, fp32_proto)
        variants.append(("fp16", fp16_proto, recipe))

    overrides = {"fp32": config.fp32_thresholds, "int8": config.int8_thresholds, "fp16": config.fp16_thresholds}
    for variant, base_proto, recipe in variants:
        for view in views:
            name = variant if view == "single" else f"{variant}+flip"
            path = fp32_path if name == "fp32" else variant_paths[name]
            proto = base_proto if view == "single" else add_flip_view(base_proto)
            start = time.perf_counter()
            fitted = None
            if held[0] is not None:
                proto, fitted = _calibrate(proto, held, name, config.quiet)
                stages[f"calibrate_{name}"] = round(time.perf_counter() - start, 2)
                if log is not None:
                    log(f"export: {name} temperature {fitted['temperature']:.4g} fitted on {fitted['fitted_on']} "
                        f"({stages[f'calibrate_{name}']:.1f} s)")
            start = time.perf_counter()
            candidate = predict_all(as_probabilities(onnx_predictor(proto), kind), parity_data.batch_nhwc, name,
                                    config.quiet)
            expected = reference if view == "single" else mirror_average(reference, reference_mirror)
            if fitted is not None:  # the same temperature on both sides: parity measures the conversion
                expected = with_temperature(expected, fitted["temperature"])
            entry = compare(expected, candidate, parity_data.labels, overrides[variant] or DEFAULT_THRESHOLDS[variant],
                            variant=variant, file=str(path), data=parity_data.description)
            entry.views = view
            if fitted is not None and parity_data.labels is not None:
                fitted["test"] = {"before": calibration_figures(with_temperature(candidate, 1 / fitted["temperature"]),
                                                        parity_data.labels).to_dict(),
                                  "after": calibration_figures(candidate, parity_data.labels).to_dict()}
            entry.calibration = fitted
            entry.seconds = round(time.perf_counter() - start, 2)
            stages[f"parity_{name}"] = entry.seconds
            if log is not None:
                log(f"export: {name} parity on {entry.n:,} images ({entry.seconds:.1f} s)")
            prov = metadata.provenance(source, source_sha, config.opset, created, recipe, folds,
                                       preprocessing=model_input.to_dict())
            metadata.write_metadata(proto, variant=variant, class_names=keras_source.class_names,
                                    output_kind=keras_source.output_kind, provenance_info=prov,
                                    parity=entry.for_metadata(), contract=contract,
                                    calibration=_held_out_only(fitted), views=view,
                                    self_check=checks.vectors(proto, variant, view, fitted, kind))
            entry.file_size_bytes = timed("save", convert.save_onnx, proto, path)
            report.entries.append(entry)
            result.onnx_paths[name] = path
            result.metadata[name] = {"provenance": prov, "parity": entry.for_metadata()}

    report.stages = stages
    report.write(report_path)
    return result


def _model_input(keras_source: convert.KerasSource, config: ExportConfig, parity_data: ParityData,
                 timed) -> preprocessing.ModelInput:
    """How the model as saved takes its pixels (declared, or said by its own first layer, or
    assumed), checked against labelled data: PreprocessingMismatch when another way is clearly
    better (unless ``config.stop_on_pixel_mismatch`` is off)."""
    model_input = preprocessing.model_input(keras_source.model, config.preprocessing)
    if parity_data.labels is not None:
        keras_predict = keras_predictor(keras_source.model)
        model_input.check = timed("check_preprocessing", preprocessing.check,
                                  lambda batch: predict_all(keras_predict, batch, "keras", True),
                                  parity_data.batch_nhwc, parity_data.labels, model_input.preprocessing,
                                  model_input.how, keras_source.path, config.stop_on_pixel_mismatch)
    return model_input


def _declared_feed(reference: Path, loaded) -> Preprocessing | None:
    """The pixel scaling every candidate had baked in (None: none had); a ModelError when they
    differ, since one Keras reference cannot be fed two ways."""
    feeds = {c.baked_in for _, c in loaded}
    if len(feeds) > 1:
        described = ", ".join(f"{p.name}: {c.baked_in.describe() if c.baked_in else '0-255'}" for p, c in loaded)
        raise ModelError(f"{reference}: the candidates were exported with different pixel scalings ({described}); "
                         "compare each group with it separately")
    return next(iter(feeds))


def _calibrate(proto, held, name: str, quiet: bool | None):
    """(``proto`` with its fitted temperature baked in, the calibration record)."""
    images, labels, described = held
    raw = predict_all(onnx_predictor(proto), images.astype("float32"), f"{name} held-out", quiet)
    temperature = fit_temperature(raw, labels)
    record = {"temperature": round(temperature, 6), "fitted_on": described, "method": "NLL, bisection on 1/T",
              "held_out": {"before": calibration_figures(raw, labels).to_dict(),
                           "after": calibration_figures(with_temperature(raw, temperature), labels).to_dict()}}
    return bake_temperature(proto, temperature), record


@dataclass(frozen=True)
class _SelfCheckImages:
    """The few parity images every exported file carries to check itself where it runs
    (``runtime.model.selfcheck``), and the Keras model's answers for them, single view and mirrored."""

    images_hwc: np.ndarray  # (n, H, W, 3) uint8 RGB: stored exactly, so answered exactly
    keras: np.ndarray  # (n, K) the Keras model's probabilities
    keras_mirror: np.ndarray | None  # (n, K) on the mirrored images; None without a flip twin

    @classmethod
    def choose(cls, batch_nhwc, reference, keras_predict, flip: bool) -> "_SelfCheckImages":
        pick = choose_images(reference, pixels_per_image=int(np.prod(batch_nhwc.shape[1:])))
        images = np.clip(np.rint(batch_nhwc[pick]), 0, 255).astype(np.uint8)
        as_float = images.astype(np.float32)
        return cls(images, keras_predict(as_float), keras_predict(as_float[:, :, ::-1]) if flip else None)

    def vectors(self, proto, variant: str, view: str, fitted: dict | None, output_kind: str) -> SelfCheckVectors:
        """``proto``'s own answers on the images (one batch, as the runtime runs them) and the
        reference's, given the same views and temperature: probabilities, as
        ``runtime.Classifier.run`` returns them (a logits model's are softmax'd)."""
        expected = as_probabilities(onnx_predictor(proto), output_kind)(self.images_hwc.astype(np.float32))
        reference = self.keras if view == "single" else mirror_average(self.keras, self.keras_mirror)
        if fitted is not None:
            reference = with_temperature(reference, fitted["temperature"])
        return vectors_for(self.images_hwc, expected, reference, variant, this_machine())


def _held_out_only(fitted: dict | None) -> dict | None:
    """What the ONNX file records of its calibration: not the test-split figures (those are the
    parity report's), so a file never carries figures about the data it is judged on twice."""
    return None if fitted is None else {k: v for k, v in fitted.items() if k != "test"}


def check_parity(reference: str | os.PathLike, candidates: list[str | os.PathLike], *,
                 data: str | os.PathLike | None = None, thresholds: Thresholds | None = None,
                 test_limit: int | None = None, quiet: bool | None = None) -> ParityReport:
    """Compare any models (.keras or .onnx) against a reference on the same inputs.

    ``thresholds`` override, per field, each candidate's variant defaults (read from its
    metadata; FP32's for a .keras or an unlabelled file). Like ``export_model``, raises nothing
    on a failed threshold: look at ``report.passed`` (or call ``parity.raise_if_failed``).
    """
    from .parity import load_predictor

    reference = Path(reference)
    ref_predict, ref_variant, input_size, *_ = load_predictor(reference)
    loaded = [(Path(c), load_predictor(c)) for c in candidates]
    parity_data = (load_test_split(data, test_limit, input_size, reference) if data
                   else synthetic_inputs(size=input_size))
    report = ParityReport(reference=str(reference), reference_sha256=metadata.sha256_file(reference),
                          data=parity_data.description, created=metadata.utc_now())
    if ref_variant == "keras":  # the model as saved: fed pixels the way the files' export declared
        feed = _declared_feed(reference, loaded)
        if feed is not None:
            keras_predict = ref_predict
            ref_predict = lambda batch: keras_predict(feed.apply(batch))  # noqa: E731
            report.notes.append(f"{reference.name} is fed pixels as {feed.describe()}, as the candidates' export "
                                "declared (baked into them)")
    if parity_data.labels is None:
        report.notes.append("no --data: compared on synthetic inputs, so accuracy is not measured")
    start = time.perf_counter()
    ref_out = predict_all(ref_predict, parity_data.batch_nhwc, reference.name, quiet)
    ref_mirror = None
    report.stages["reference"] = round(time.perf_counter() - start, 2)
    for path, candidate in loaded:
        start = time.perf_counter()
        temperature = candidate.calibration["temperature"] if candidate.calibration else None
        expected = ref_out
        if candidate.views == "flip":  # the candidate averages each image with its mirror: so does the reference
            if ref_mirror is None:
                ref_mirror = predict_all(ref_predict, parity_data.batch_nhwc[:, :, ::-1], f"{reference.name} mirrored",
                                         quiet)
            expected = mirror_average(ref_out, ref_mirror)
        if temperature is not None:  # calibrated: the reference gets the same temperature
            expected = with_temperature(expected, temperature)
        out = predict_all(candidate.predict, parity_data.batch_nhwc, path.name, quiet)
        gates = DEFAULT_THRESHOLDS.get(candidate.variant, DEFAULT_THRESHOLDS["fp32"])
        if thresholds is not None:
            gates = gates.override(**{k: getattr(thresholds, k) for k in thresholds.__dataclass_fields__})
        entry = compare(expected, out, parity_data.labels, gates, variant=candidate.variant, file=str(path),
                        data=parity_data.description)
        entry.views = candidate.views
        if temperature is not None:
            entry.calibration = {"temperature": temperature, "fitted_on": candidate.calibration.get("fitted_on")}
            if parity_data.labels is not None:
                entry.calibration["test"] = {
                    "before": calibration_figures(with_temperature(out, 1 / temperature),
                                                  parity_data.labels).to_dict(),
                    "after": calibration_figures(out, parity_data.labels).to_dict()}
        entry.file_size_bytes = path.stat().st_size
        entry.seconds = round(time.perf_counter() - start, 2)
        report.stages[path.name] = entry.seconds
        report.entries.append(entry)
    return report
