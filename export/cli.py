"""cifar-export: the command-line face of ``export.export_model``."""

from __future__ import annotations

import click

from runtime.cli.common import run_cli, traceback_option

from .parity import DEFAULT_THRESHOLDS, raise_if_failed
from .pipeline import TTA_CHOICES
from .preprocessing import PIXEL_RANGES

PROG = "cifar-export"


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model", type=click.Path(dir_okay=True, path_type=str))
@click.option("-o", "--output", type=click.Path(path_type=str), default=None,
              help="FP32 .onnx file to write [default: MODEL with .onnx]. Variants go beside it as "
                   "<stem>-int8.onnx / <stem>-fp16.onnx, the report as <stem>.parity.json.")
@click.option("--opset", type=click.IntRange(13, 21), default=17, show_default=True, help="ONNX opset.")
@click.option("--int8", is_flag=True, help="Also write a static INT8 (QDQ, per-channel) model.")
@click.option("--fp16", is_flag=True, help="Also write a float16-weights model (float32 input/output).")
@click.option("--no-fold", is_flag=True,
              help="Convert the layers as trained: no folding of normalization, BatchNorm and temperature "
                   "into their neighbours (slower; for comparing).")
@click.option("--data", type=click.Path(path_type=str), default=None,
              help="The dataset the model trained on (any form cifar-train reads): parity on its full test "
                   "split, INT8 calibration on training images. Without it parity uses synthetic inputs.")
@click.option("--calibration", type=click.Path(path_type=str), default=None,
              help="A folder of images to calibrate INT8 with instead of --data's train split.")
@click.option("--calib-images", type=click.IntRange(min=1), default=1024, show_default=True,
              help="Number of images used to calibrate INT8.")
@click.option("--calib-method", type=click.Choice(["minmax", "percentile", "entropy"]), default="minmax",
              show_default=True, help="How INT8 activation ranges are chosen.")
@click.option("--min-agreement", type=click.FloatRange(0, 1), default=None,
              help=f"FP32 minimum top-1 agreement [default: {DEFAULT_THRESHOLDS['fp32'].min_agreement}].")
@click.option("--max-abs-diff", type=click.FloatRange(min=0), default=None,
              help=f"FP32 maximum absolute probability difference [default: {DEFAULT_THRESHOLDS['fp32'].max_abs_diff:g}].")
@click.option("--max-int8-drop", type=click.FloatRange(min=0), default=None,
              help=f"INT8 maximum accuracy drop in points [default: {DEFAULT_THRESHOLDS['int8'].max_accuracy_drop:g}].")
@click.option("--fp16-min-agreement", type=click.FloatRange(0, 1), default=None,
              help=f"FP16 minimum top-1 agreement [default: {DEFAULT_THRESHOLDS['fp16'].min_agreement}].")
@click.option("--fp16-max-abs-diff", type=click.FloatRange(min=0), default=None,
              help=f"FP16 maximum absolute probability difference [default: {DEFAULT_THRESHOLDS['fp16'].max_abs_diff:g}].")
@click.option("--no-calibrate", is_flag=True,
              help="Leave the probabilities as the network gives them: no temperature fitted on the "
                   "training images its run held out and baked in before the softmax.")
@click.option("--tta", type=click.Choice(TTA_CHOICES), default="none", show_default=True,
              help="flip: also write <stem>[-int8|-fp16]-flip.onnx, which classify the image and its "
                   "mirror in one run and average them (twice the compute, more accurate).")
@click.option("--pixels", type=click.Choice(list(PIXEL_RANGES)), default=None,
              help="What the model expects its input scaled to, when that scaling was done outside it: 0-1 "
                   "(trained on x/255), -1-1 (x/127.5-1), 0-255 (raw). Baked into the graph, so the ONNX file "
                   "still takes raw 0-255 pixels. [default: 0-255, which a Rescaling or Normalization first "
                   "layer confirms and otherwise is assumed]")
@click.option("--mean", "mean", metavar="R,G,B", default=None,
              help="Per-channel mean subtracted after the --pixels scaling, in its units (e.g. "
                   "0.4914,0.4822,0.4465 with --pixels 0-1). Baked into the graph.")
@click.option("--std", "std", metavar="R,G,B", default=None,
              help="Per-channel std divided by after --mean, in the units of --pixels. Baked into the graph.")
@click.option("--no-pixel-check", is_flag=True,
              help="With --data, do not stop when the model scores clearly better with another pixel scaling "
                   "than the one declared: export as declared, with a note (the figures are in the report).")
@click.option("--classes", "classes", metavar="A,B,C|FILE", default=None,
              help="The class names, one per output in output order: comma-separated, or a file of one name per "
                   "line. [default: the run's config.json beside the model, or CIFAR-10's for 10 outputs]")
@click.option("--input-size", type=click.IntRange(min=16), default=None,
              help="Input size in pixels (square) for a model whose input takes any size (None, None, 3): the "
                   "size it was trained at; the ONNX file takes that size.")
@click.option("--custom-objects", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="A Python file defining the model's own layers (classes decorated with "
                   "@keras.saving.register_keras_serializable, or a dict named custom_objects); it is run.")
@click.option("--unsafe-deserialization", is_flag=True,
              help="Allow Lambda layers, whose Python code is stored in the model file and runs when it loads "
                   "(Keras safe_mode=False). Only for a file you trust.")
@click.option("--test-limit", type=click.IntRange(min=1), default=None, hidden=True,
              help="Parity on N test images only, evenly spaced through the split (for quick checks).")
@click.option("-q", "--quiet", is_flag=True,
              help="No progress bars (drawn only on a terminal anyway) and no line per stage.")
@traceback_option
def main(model, output, opset, int8, fp16, no_fold, data, calibration, calib_images, calib_method, min_agreement,
         max_abs_diff, max_int8_drop, fp16_min_agreement, fp16_max_abs_diff, no_calibrate, tta, pixels, mean, std,
         no_pixel_check, classes, input_size, custom_objects, unsafe_deserialization, test_limit, quiet,
         show_traceback):
    """Convert a Keras model (.keras or legacy .h5, from cifar-train or your own) to ONNX and
    prove it gives the same answers.

    Writes the ONNX file(s) with self-describing metadata and a parity report beside them;
    exits 4 if a parity threshold is violated (the files and report are still written).

    \b
      cifar-export runs/tiny/model.keras --data ../shared/data/cifar10 --int8 --fp16
      cifar-export notebook/model.h5 --pixels 0-1 --data ../shared/data/cifar10
    """

    def body():
        from . import ExportConfig, Int8Config, export_model
        from .convert import parse_class_names
        from .preprocessing import Preprocessing, parse_channels

        declared = None
        if pixels is not None or mean is not None or std is not None:
            declared = Preprocessing(pixels or "0-255", mean=mean and parse_channels(mean, "--mean"),
                                     std=std and parse_channels(std, "--std"))
        config = ExportConfig(
            opset=opset, int8=int8, fp16=fp16, fold=not no_fold, calibrate=not no_calibrate, tta=tta,
            test_limit=test_limit, quiet=True if quiet else None,
            preprocessing=declared, stop_on_pixel_mismatch=not no_pixel_check,
            class_names=parse_class_names(classes) if classes is not None else None, input_size=input_size,
            custom_objects=custom_objects, unsafe_deserialization=unsafe_deserialization,
            int8_config=Int8Config(calib_images=calib_images, method=calib_method),
            fp32_thresholds=DEFAULT_THRESHOLDS["fp32"].override(min_agreement=min_agreement,
                                                                max_abs_diff=max_abs_diff),
            int8_thresholds=DEFAULT_THRESHOLDS["int8"].override(max_accuracy_drop=max_int8_drop),
            fp16_thresholds=DEFAULT_THRESHOLDS["fp16"].override(min_agreement=fp16_min_agreement,
                                                                max_abs_diff=fp16_max_abs_diff))
        result = export_model(model, config, output=output, data=data, calibration=calibration,
                              log=None if quiet else lambda line: click.echo(line, err=True))
        click.echo(result.report.table())
        raise_if_failed(result.report, result.report_path, files_written=True)
        for variant, path in result.onnx_paths.items():
            click.echo(f"wrote {path} ({variant})")
        click.echo(f"wrote {result.report_path}")
        return 0

    run_cli(PROG, body, show_traceback)


if __name__ == "__main__":
    main()
