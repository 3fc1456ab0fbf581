"""The export job: convert, check, measure parity, build variants, write files and report.

    result = export_model("runs/tiny/model.keras", ExportConfig(int8=True, fp16=True), data="cifar10")

The model's run (its config.json, and the data) is read once into a ``RunRecord`` that every
stage takes what it needs from; every stage is timed (``export.stages``); every file is
written atomically. A failed threshold is a result, not an error: the files and the report are
written and returned, ``result.passed`` is False, and a caller that must stop on it calls
``parity.raise_if_failed`` (as the CLIs do: exit code 4).
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from runtime.errors import DataError, ModelError, OptionError
from runtime.model.contract import InputContract, variant_label
from runtime.model.selfcheck import SelfCheckVectors, choose_images, this_machine, vectors_for

from . import convert, metadata, preprocessing
from .calibrate import (
    HeldOut,
    add_flip_view,
    as_baked,
    bake_fitted_temperature,
    confidence_on,
    held_out_images,
)
from .fold import fold_for_inference
from .metadata import FileVariant
from .parity import (
    DEFAULT_THRESHOLDS,
    ParityData,
    ParityEntry,
    ParityReport,
    Predict,
    Thresholds,
    as_probabilities,
    check_classes,
    compare,
    from_test_split,
    keras_predictor,
    load_predictor,
    onnx_predictor,
    predict_all,
    synthetic_inputs,
)
from .preprocessing import Preprocessing
from .quantize import Int8Config, calibration_from_folder, calibration_from_train, convert_fp16, quantize_int8
from .run_record import RunRecord
from .stages import Stages

TTA_CHOICES = ("none", "flip")  # --tta: "flip" also writes a twin of each file, averaging the image and its mirror
NO_DATA_NOTE = "no --data: compared on synthetic inputs, so accuracy is not measured"
LOGITS_NOTE = "the model ends in logits, with no Softmax for a temperature to go before"


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
    test_limit: int | None = None  # parity on N test images, evenly spaced (tests); None = all
    # Fold normalization, BatchNorm and the temperature into the neighbouring layers before
    # conversion (export.fold): the same function with fewer operators, faster everywhere.
    fold: bool = True
    # Fit a temperature per variant on the training images the model's run held out, and bake
    # it into the graph (export.calibrate), so its probabilities mean what they say.
    calibrate: bool = True
    # "flip": also write a twin of each variant that averages the image and its mirror (TTA_CHOICES).
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

    def __post_init__(self):
        if self.tta not in TTA_CHOICES:
            raise ValueError(f"tta must be one of {TTA_CHOICES}, not {self.tta!r}")

    def thresholds(self, variant: str) -> Thresholds:
        """The gates ``variant``'s file must pass: the override given, else the defaults."""
        given = {"fp32": self.fp32_thresholds, "int8": self.int8_thresholds, "fp16": self.fp16_thresholds}[variant]
        return given or DEFAULT_THRESHOLDS[variant]


@dataclass
class ExportResult:
    onnx_paths: dict[str, Path]  # variant → file
    report_path: Path
    report: ParityReport
    metadata: dict[str, dict] = field(default_factory=dict)  # variant → what was written

    @property
    def passed(self) -> bool:
        return self.report.passed


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


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def export_model(model_path: str | os.PathLike, config: ExportConfig = ExportConfig(), *,
                 output: str | os.PathLike | None = None, data: str | os.PathLike | None = None,
                 calibration: str | os.PathLike | None = None,
                 log: Callable[[str], None] | None = _stderr) -> ExportResult:
    """Convert, quantize and check ``model_path``; ``log`` gets one line per stage (None:
    silent), which is what a log file shows where a terminal also has progress bars.
    ``calibration``: a folder of images to calibrate INT8 with instead of ``data``'s train split."""
    source = Path(model_path)
    fp32_path, variant_paths, report_path = output_paths(source, output)
    if config.int8 and data is None and calibration is None:
        raise DataError("calibration data missing: pass --data DIR (the dataset the model trained on) "
                        "or --calibration DIR (a folder of images) for --int8")
    _prepare_output(fp32_path)
    stage = Stages(log)
    keras_source, run = _load(source, config, stage)
    run, parity_data, calib = _read_data(run, keras_source, config, data, calibration, stage)
    model_input = _model_input(keras_source, config, parity_data, stage)  # before any long work: it may stop
    held_out = _temperature_images(run, keras_source.output_kind, config, stage)
    fp32_proto, folds, reference_model = _to_onnx(keras_source, config, model_input, stage)
    reference, checks = _run_reference(reference_model, keras_source.output_kind, parity_data, config, stage)
    report = _new_report(source, parity_data, model_input, held_out, config)
    provenance = partial(metadata.provenance, source, report.reference_sha256, config.opset, report.created,
                         folds=folds, preprocessing=model_input.to_dict())
    job = _Job(config, stage, keras_source, held_out, reference, checks, provenance, report)
    result = ExportResult(onnx_paths={}, report_path=report_path, report=report)
    for variant, proto, recipe in _variants(fp32_proto, calib, config, report, stage):
        for view in ("single", "flip") if config.tta == "flip" else ("single",):
            name = variant_label(variant, view)
            path = fp32_path if name == "fp32" else variant_paths[name]
            result.onnx_paths[name], result.metadata[name] = path, _write_file(job, variant, view, proto, recipe, path)
    report.stages = stage.seconds
    report.write(report_path)
    return result


def _load(source: Path, config: ExportConfig, stage: Stages) -> tuple[convert.KerasSource, RunRecord]:
    """(the Keras model as saved, the record of its run: its config.json, read here once)."""
    run = RunRecord.beside(source)
    with stage("load"):
        keras_source = convert.load_keras(source, input_size=config.input_size, class_names=config.class_names,
                                          custom_objects=config.custom_objects,
                                          safe_mode=not config.unsafe_deserialization, run=run)
    if keras_source.output_kind == "logits" and config.tta == "flip":
        raise OptionError(f"{source}: --tta flip averages the logits before the model's final Softmax, and this "
                          "model ends in logits: export it without --tta")
    return keras_source, run


def _read_data(run: RunRecord, keras_source: convert.KerasSource, config: ExportConfig,
               data: str | os.PathLike | None, calib_folder: str | os.PathLike | None,
               stage: Stages) -> tuple[RunRecord, ParityData, tuple]:
    """Every image the stages work on, read once (stage "data"): ``run`` with the splits of
    ``data`` they need at the model's input size (the training split, for the temperature alone,
    from the data the run recorded when no ``data`` is given), the parity images (its test split,
    else synthetic inputs) and INT8's calibration images (``_calib_images``)."""
    contract = keras_source.contract
    held_out = config.calibrate and keras_source.output_kind != "logits" and run.held_out_unknown(data) is None
    splits = (("train",) if held_out or (config.int8 and calib_folder is None) else ()) + (("test",) if data else ())
    reading = splits or (config.int8 and calib_folder is not None)
    with stage("data") if reading else contextlib.nullcontext():
        run = run.with_data(data, contract, splits)
        parity_data = from_test_split(run, config.test_limit) if data else synthetic_inputs(size=contract.height)
        calib = _calib_images(run, config, calib_folder)
    check_classes(parity_data, keras_source.class_names)
    return run, parity_data, calib


def _calib_images(run: RunRecord, config: ExportConfig, calib_folder: str | os.PathLike | None) -> tuple:
    """(INT8's calibration images, the labelled images apart from them that judge its float
    layers, or None): from ``calib_folder`` (unlabelled), else the training split ``run`` read.
    (None, None) without --int8."""
    if not config.int8:
        return None, None
    n, seed = config.int8_config.calib_images, config.int8_config.seed
    if calib_folder is not None:
        return calibration_from_folder(calib_folder, n, seed, run.contract), None
    return calibration_from_train(run, n, seed)


def _model_input(keras_source: convert.KerasSource, config: ExportConfig, parity_data: ParityData,
                 stage: Stages) -> preprocessing.ModelInput:
    """How the model as saved takes its pixels (declared, or said by its own first layer, or
    assumed), checked against labelled data: PreprocessingMismatch when another way is clearly
    better (unless ``config.stop_on_pixel_mismatch`` is off)."""
    model_input = preprocessing.model_input(keras_source.model, config.preprocessing)
    if parity_data.labels is not None:
        keras_predict = keras_predictor(keras_source.model)
        with stage("check_preprocessing"):
            model_input.check = preprocessing.check(lambda batch: predict_all(keras_predict, batch, "keras", True),
                                                    parity_data.batch_nhwc, parity_data.labels,
                                                    model_input.preprocessing, model_input.how, keras_source.path,
                                                    config.stop_on_pixel_mismatch)
    for note in model_input.notes():
        stage.say(note)
    return model_input


def _temperature_images(run: RunRecord, output_kind: str, config: ExportConfig, stage: Stages) -> HeldOut:
    """The training images the run held out, to fit each file's temperature on, or why there are
    none (said in the log, unless --no-calibrate)."""
    if not config.calibrate:
        return HeldOut(None, None, "--no-calibrate")
    if output_kind == "logits":
        held_out = HeldOut(None, None, LOGITS_NOTE)
    elif run.training is None:  # nothing was read to look in: it says why
        held_out = held_out_images(run)
    else:
        with stage("data") as step:
            held_out = held_out_images(run)
            step.line = f"read {held_out.described} to calibrate with" if held_out.images is not None else None
    if held_out.images is None:
        stage.say(f"not calibrating: {held_out.described}")
    return held_out


def _to_onnx(keras_source: convert.KerasSource, config: ExportConfig, model_input: preprocessing.ModelInput,
             stage: Stages) -> tuple[object, list[str], object]:
    """(the FP32 ModelProto, the folds applied to it, the parity reference: the model as saved,
    on raw pixels like the ONNX file)."""
    contract, front = keras_source.contract, model_input.preprocessing.layer()  # front None: it takes raw pixels
    reference_model = convert.with_front(keras_source.model, contract, front)
    unfolded = convert.as_functional(keras_source.model, contract, front)
    folded, folds = unfolded, []
    if config.fold:
        with stage("fold"):
            folded, folds = fold_for_inference(unfolded)
    with stage("convert"):
        fp32_proto = convert.to_onnx(replace(keras_source, model=folded), config.opset)
    with stage("check"):
        convert.check_onnx(fp32_proto, contract, len(keras_source.class_names))
    return fp32_proto, folds, reference_model


def _run_reference(reference_model, output_kind: str, parity_data: ParityData, config: ExportConfig,
                   stage: Stages) -> tuple[_Reference, _SelfCheckImages]:
    """The Keras model's probabilities on the parity images (and their mirrors, for --tta flip),
    and the images each file will carry to check itself."""
    keras_predict = as_probabilities(keras_predictor(reference_model), output_kind)
    with stage("parity_keras"):
        probs = predict_all(keras_predict, parity_data.batch_nhwc, "keras", config.quiet)
    mirror = None
    if config.tta == "flip":
        with stage("parity_keras_mirror"):
            mirror = predict_all(keras_predict, parity_data.batch_nhwc[:, :, ::-1], "keras mirrored", config.quiet)
    checks = _SelfCheckImages.choose(parity_data.batch_nhwc, probs, keras_predict, config.tta == "flip")
    return _Reference(parity_data, probs, mirror, config.quiet), checks


def _new_report(source: Path, parity_data: ParityData, model_input: preprocessing.ModelInput, held_out: HeldOut,
                config: ExportConfig) -> ParityReport:
    report = ParityReport(reference=str(source), reference_sha256=metadata.sha256_file(source),
                          data=parity_data.description, created=metadata.utc_now(),
                          preprocessing=model_input.to_dict())
    report.notes += model_input.notes()
    if parity_data.labels is None:
        report.notes.append(NO_DATA_NOTE)
    if held_out.images is None and config.calibrate:
        report.notes.append(f"not calibrated: {held_out.described}; probabilities are the network's own")
    return report


def _variants(fp32_proto, calib: tuple, config: ExportConfig, report: ParityReport,
              stage: Stages) -> list[tuple[str, object, dict | None]]:
    """(variant, its ModelProto, how it was made: provenance.quantization) for each variant asked for."""
    variants: list[tuple[str, object, dict | None]] = [("fp32", fp32_proto, None)]
    if config.int8:
        calib_images, calib_held_out = calib
        with stage("quantize_int8"):
            int8 = quantize_int8(fp32_proto, calib_images, config.int8_config, calib_held_out)
        variants.append(("int8", int8.model_proto, {**int8.recipe, "trials": int8.trials}))
        report.notes += int8.notes
    if config.fp16:
        with stage("convert_fp16"):
            fp16_proto, recipe = convert_fp16(fp32_proto)
        variants.append(("fp16", fp16_proto, recipe))
    return variants


@dataclass(frozen=True)
class _Job:
    """What writing each of an export's files takes, handed down from ``export_model``."""

    config: ExportConfig
    stage: Stages
    keras: convert.KerasSource  # the model as saved: class names, output kind, input contract
    held_out: HeldOut  # the training images each file's temperature is fitted on, or why none
    reference: _Reference  # what each file is measured against
    checks: _SelfCheckImages  # the images each file carries to check itself
    provenance: Callable[[dict | None], dict]  # a file's provenance, from its recipe
    report: ParityReport


def _write_file(job: _Job, variant: str, view: str, proto, recipe: dict | None, path: Path) -> dict:
    """One file: ``proto`` with its view and a fitted temperature baked in, measured against the
    reference, described in its own metadata and saved at ``path``; its entry goes into the
    report. Returns what its metadata says of its provenance and parity."""
    name, kind = variant_label(variant, view), job.keras.output_kind
    proto = proto if view == "single" else add_flip_view(proto)
    fitted = None
    if job.held_out.images is not None:
        with job.stage(f"calibrate_{name}") as step:
            proto, fitted = bake_fitted_temperature(proto, job.held_out, name, job.config.quiet)
            step.line = f"{name} temperature {fitted['temperature']:.4g} fitted on {fitted['fitted_on']}"
    with job.stage(f"parity_{name}", f"{name} parity on {len(job.reference.data.batch_nhwc):,} images") as step:
        entry = job.reference.measure(as_probabilities(onnx_predictor(proto), kind), name,
                                      job.config.thresholds(variant), variant=variant, file=str(path), views=view,
                                      temperature=fitted)
    entry.seconds = round(step.seconds, 2)
    provenance = job.provenance(recipe)
    metadata.write_metadata(proto, FileVariant(variant, view, _held_out_only(fitted)),
                            class_names=job.keras.class_names, output_kind=kind, provenance_info=provenance,
                            parity=entry.for_metadata(), contract=job.keras.contract,
                            self_check=job.checks.vectors(proto, variant, view, fitted, kind))
    with job.stage("save"):
        entry.file_size_bytes = convert.save_onnx(proto, path)
    job.report.entries.append(entry)
    return {"provenance": provenance, "parity": entry.for_metadata()}


@dataclass(frozen=True)
class _Reference:
    """The reference's probabilities on the parity images, and on their mirrors where a
    candidate averages both views (None: none does); what each candidate is measured against."""

    data: ParityData
    probs: np.ndarray  # (N, K)
    probs_mirror: np.ndarray | None  # (N, K)
    quiet: bool | None  # progress bars, as ExportConfig.quiet

    def measure(self, predict: Predict, label: str, gates: Thresholds, *, variant: str, file: str, views: str,
                temperature: dict | None) -> ParityEntry:
        """A candidate's entry: its outputs on the parity images against the reference's, given
        the same ``views`` and ``temperature`` (the fitted one and what it was fitted on; with
        labels, its ECE/NLL on the parity images is added as "test"), so parity measures the
        conversion alone."""
        out = predict_all(predict, self.data.batch_nhwc, label, self.quiet)
        t = temperature["temperature"] if temperature is not None else None
        entry = compare(as_baked(self.probs, self.probs_mirror, views, t), out, self.data.labels, gates,
                        variant=variant, file=file, data=self.data.description)
        entry.views = views
        if temperature is not None and self.data.labels is not None:
            temperature["test"] = confidence_on(out, self.data.labels, t)
        entry.calibration = temperature
        return entry


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
        reference = as_baked(self.keras, self.keras_mirror, view, fitted["temperature"] if fitted else None)
        return vectors_for(self.images_hwc, expected, reference, variant, this_machine())


def _held_out_only(fitted: dict | None) -> dict | None:
    """What the ONNX file records of its temperature: not the test-split figures (those are the
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
    reference = Path(reference)
    run = RunRecord.beside(reference)  # its config.json, read once
    ref_predict, ref_variant, input_size, *_ = load_predictor(reference, run)
    loaded = [(Path(c), load_predictor(c)) for c in candidates]
    contract = InputContract(height=input_size, width=input_size)
    parity_data = (from_test_split(run.with_data(data, contract, ("test",)), test_limit) if data
                   else synthetic_inputs(size=input_size))
    report = ParityReport(reference=str(reference), reference_sha256=metadata.sha256_file(reference),
                          data=parity_data.description, created=metadata.utc_now())
    if ref_variant == "keras":  # the model as saved: fed pixels the way the files' export declared
        ref_predict = _fed_as_declared(ref_predict, reference, loaded, report)
    if parity_data.labels is None:
        report.notes.append(NO_DATA_NOTE)
    stage, batch = Stages(), parity_data.batch_nhwc
    with stage("reference"):
        probs = predict_all(ref_predict, batch, reference.name, quiet)
        mirror = (predict_all(ref_predict, batch[:, :, ::-1], f"{reference.name} mirrored", quiet)
                  if any(c.views == "flip" for _, c in loaded) else None)  # a candidate averages both views
    ref = _Reference(parity_data, probs, mirror, quiet)
    for path, candidate in loaded:
        with stage(path.name) as step:
            entry = ref.measure(candidate.predict, path.name, _gates(candidate.variant, thresholds),
                                variant=candidate.variant, file=str(path), views=candidate.views,
                                temperature=_temperature_of(candidate.temperature))
            entry.file_size_bytes = path.stat().st_size
        entry.seconds = round(step.seconds, 2)
        report.entries.append(entry)
    report.stages = stage.seconds
    return report


def _fed_as_declared(keras_predict: Predict, reference: Path, loaded, report: ParityReport) -> Predict:
    """The Keras reference fed pixels the way the candidates' export declared (baked into them),
    with a note saying so; as it is when none was declared."""
    feed = _declared_feed(reference, loaded)
    if feed is None:
        return keras_predict
    report.notes.append(f"{reference.name} is fed pixels as {feed.describe()}, as the candidates' export "
                        "declared (baked into them)")
    return lambda batch: keras_predict(feed.apply(batch))


def _declared_feed(reference: Path, loaded) -> Preprocessing | None:
    """The pixel scaling every candidate had baked in (None: none had); a ModelError when they
    differ, since one Keras reference cannot be fed two ways."""
    feeds = {c.baked_in for _, c in loaded}
    if len(feeds) > 1:
        described = ", ".join(f"{p.name}: {c.baked_in.describe() if c.baked_in else '0-255'}" for p, c in loaded)
        raise ModelError(f"{reference}: the candidates were exported with different pixel scalings ({described}); "
                         "compare each group with it separately")
    return next(iter(feeds))


def _gates(variant: str, thresholds: Thresholds | None) -> Thresholds:
    """A candidate's variant defaults (FP32's for an unknown variant), each field ``thresholds``
    gives overriding."""
    gates = DEFAULT_THRESHOLDS.get(variant, DEFAULT_THRESHOLDS["fp32"])
    if thresholds is None:
        return gates
    return gates.override(**{k: getattr(thresholds, k) for k in thresholds.__dataclass_fields__})


def _temperature_of(recorded: dict | None) -> dict | None:
    """What a candidate's entry says of the temperature its metadata records (None: none)."""
    temperature = recorded["temperature"] if recorded else None
    return None if temperature is None else {"temperature": temperature, "fitted_on": recorded.get("fitted_on")}
