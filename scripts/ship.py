#!/usr/bin/env python3
"""Reproduce the shipped model end to end: train → evaluate → export (FP32, INT8, FP16) →
parity on the test split → bundle into the runtime → write the README figures.

    python scripts/ship.py --data ../shared/data/cifar10            # the whole pipeline (~72 min here)
    python scripts/ship.py --data ../shared/data/cifar10 --run runs/default --skip-train

Every figure the README shows for the shipped model is read from the reports this script
writes; none is typed by hand.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import click

REPO = Path(__file__).resolve().parents[1]

ASSETS = REPO / "runtime" / "assets"  # ships in the runtime wheel: FP32 + INT8 ONNX, parity, samples
SHIPPED = REPO / "train" / "shipped" / "default"  # in the repository, not in the wheel
README = REPO / "README.md"
BEGIN, END = "<!-- shipped-model:begin -->", "<!-- shipped-model:end -->"

# The recipe of the shipped model (train.config.TrainConfig fields).
RECIPE = dict(model="default", seed=0)  # other fields: TrainConfig defaults


def step(name: str):
    click.secho(f"\n== {name}", bold=True, err=True)


def train(data: str, run: Path) -> None:
    from train import TrainConfig, fit

    state = run / "state.json"
    if state.exists() and json.loads(state.read_text()).get("finished"):
        click.echo(f"{run} already finished training; reusing it", err=True)
        return
    fit(TrainConfig(**RECIPE), out=run, data=data, resume=state.exists())


def choose_samples(data: str, models: list[Path], per_class: int = 1) -> list[Path]:
    """The first test image of each class (by file name) that every shipped variant gets right.

    The samples are a demo of what the model does, so they are chosen to be classified
    correctly, and this rule is stated in the README.
    """
    from runtime.classifier import Classifier
    from runtime.contract import CIFAR10_CLASSES

    classifiers = [Classifier(m, provider="cpu") for m in models]
    chosen = []
    for name in CIFAR10_CLASSES:
        for path in sorted((Path(data) / "test" / name).iterdir())[:200]:
            if all(c.predict(path).label == name for c in classifiers):
                chosen.append(path)
                break
    return chosen


def bundle(run: Path, export_dir: Path, samples: list[Path]) -> None:
    ASSETS.mkdir(parents=True, exist_ok=True)
    shutil.copy2(export_dir / "model.onnx", ASSETS / "model.onnx")
    shutil.copy2(export_dir / "model-int8.onnx", ASSETS / "model-int8.onnx")
    shutil.copy2(export_dir / "model.parity.json", ASSETS / "parity.json")
    sample_dir = ASSETS / "samples"
    for old in sample_dir.glob("*.jpg"):
        old.unlink()
    for path in samples:
        shutil.copy2(path, sample_dir / f"{path.parent.name}.jpg")
        (sample_dir / f"{path.parent.name}.jpg").chmod(0o644)
    SHIPPED.mkdir(parents=True, exist_ok=True)
    for name in ("model.keras", "config.json", "history.csv", "curves.png"):
        shutil.copy2(run / name, SHIPPED / name)
    shutil.copy2(export_dir / "model-fp16.onnx", SHIPPED / "model-fp16.onnx")
    shutil.copy2(export_dir / "model.parity.json", SHIPPED / "parity.json")


def figures_markdown(run: Path, export_dir: Path, evals: dict[str, dict]) -> str:
    config = json.loads((run / "config.json").read_text())
    history = (run / "history.csv").read_text().splitlines()
    seconds = sum(float(line.split(",")[6]) for line in history[1:])
    report = json.loads((export_dir / "model.parity.json").read_text())
    rows = ["| variant | file | size | test accuracy (10,000 images) | vs Keras | top-1 agreement | max abs Δp |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    keras_acc = evals["keras"]["accuracy"]
    rows.append(f"| Keras (reference) | `model.keras` | {(run / 'model.keras').stat().st_size / 1e6:.2f} MB "
                f"| **{100 * keras_acc:.2f}%** | — | — | — |")
    for entry in report["entries"]:
        variant = entry["variant"]
        acc = evals[variant]["accuracy"]
        rows.append(f"| {variant.upper()} ONNX | `{Path(entry['file']).name}` | {entry['file_size_bytes'] / 1e6:.2f} MB "
                    f"| **{100 * acc:.2f}%** | {100 * (acc - keras_acc):+.2f} pt | {100 * entry['top1_agreement']:.2f}% "
                    f"| {entry['max_abs_diff']:.1e} |")
    epochs = config["config"]["epochs"]
    how = [config["config"].get("precision", "float32").replace("mixed_bfloat16", "mixed bfloat16")]
    if config["config"].get("cutout"):
        how.append(f"cutout {config['config']['cutout']}")
    lines = [
        f"The `default` network: {config['parameters']:,} parameters, trained {epochs} epochs "
        f"({', '.join(how)}) on "
        f"{config['train_images']:,} training images ({config['validation_images']:,} held out to pick the "
        f"best epoch) in **{seconds / 60:.0f} minutes** of training steps on this 2-core CPU "
        f"({seconds / epochs:.0f} s per epoch).",
        "",
        *rows,
        "",
        "Accuracies are single-view (no test-time augmentation) on the full CIFAR-10 test split, "
        "measured by `cifar-eval` through each runtime (Keras for `.keras`, onnxruntime for `.onnx`); "
        "agreement and Δp are `cifar-export`'s parity figures against the Keras model. "
        f"Generated by `scripts/ship.py` on {time.strftime('%Y-%m-%d')}.",
    ]
    return "\n".join(lines)


def update_readme(markdown: str) -> None:
    text = README.read_text()
    if BEGIN not in text or END not in text:
        raise click.ClickException(f"README.md lacks the {BEGIN} … {END} markers")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    README.write_text(f"{head}{BEGIN}\n{markdown}\n{END}{tail}")


@click.command()
@click.option("--data", required=True, type=click.Path(exists=True), help="CIFAR-10 folder (train/ and test/).")
@click.option("--run", "run_dir", type=click.Path(), default="runs/default", show_default=True,
              help="Training run folder (resumed if interrupted, reused if finished).")
@click.option("--skip-train", is_flag=True, help="Use the finished run in --run as it is.")
@click.option("--no-bundle", is_flag=True, help="Stop after the reports; do not touch runtime/assets or README.")
def main(data, run_dir, skip_train, no_bundle):
    """Train, evaluate, export, check and bundle the default model."""
    from export import ExportConfig, export_model, raise_if_failed
    from train import evaluate

    run = Path(run_dir)
    if not skip_train:
        step("train")
        train(data, run)

    step("export FP32, INT8, FP16 with parity on the test split")
    export_dir = run / "export"
    export_dir.mkdir(exist_ok=True)
    shutil.copy2(run / "model.keras", export_dir / "model.keras")
    result = export_model(export_dir / "model.keras", ExportConfig(int8=True, fp16=True), data=data)
    click.echo(result.report.table(), err=True)
    raise_if_failed(result.report, result.report_path, files_written=True)  # never bundle a failing model

    step("evaluate every variant on the test split")
    evals = {}
    for variant, path in [("keras", export_dir / "model.keras"), *result.onnx_paths.items()]:
        report = evaluate(path, data=data, out=export_dir / f"eval-{variant}", quiet=True)
        evals[variant] = {"accuracy": report.accuracy}
        click.echo(f"{variant:>6}: {100 * report.accuracy:.2f}%", err=True)
    (export_dir / "evals.json").write_text(json.dumps(evals, indent=2))

    if no_bundle:
        return
    step("bundle into runtime/assets and train/shipped")
    samples = choose_samples(data, [result.onnx_paths["fp32"], result.onnx_paths["int8"]])
    bundle(run, export_dir, samples)
    for variant in ("keras", "fp32", "int8", "fp16"):
        shutil.copy2(export_dir / f"eval-{variant}" / "report.json", SHIPPED / f"eval-{variant}.json")
    update_readme(figures_markdown(run, export_dir, evals))
    click.echo(f"bundled {ASSETS}/model.onnx, model-int8.onnx, parity.json, {len(samples)} samples; "
               f"README figures updated", err=True)


if __name__ == "__main__":
    main()
