"""Files shipped inside the package (``runtime/assets/``): the shipped model as FP32 and INT8
ONNX files, its parity report, and the sample images.

``CIFAR_EDGE_ASSETS`` (or the module attribute ``ASSETS_DIR``) points the model lookup at
another folder: a user's own default model, or a test's tiny one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from runtime.errors import ModelError
from runtime.image.preprocess import IMAGE_SUFFIXES

if TYPE_CHECKING:
    from runtime.model.classifier import Classifier

PACKAGE_ASSETS = Path(__file__).resolve().parents[1] / "assets"
ASSETS_DIR: Path | None = None  # overrides the env var and the package directory when set
ASSETS_ENV = "CIFAR_EDGE_ASSETS"
# Preference order: the int8 model is smaller and faster on a Pi; fp32 when it is absent.
MODEL_NAMES = ("model-int8.onnx", "model.onnx")


def assets_dir() -> Path:
    if ASSETS_DIR is not None:
        return Path(ASSETS_DIR)
    env = os.environ.get(ASSETS_ENV)
    return Path(env) if env else PACKAGE_ASSETS


def default_model() -> Path:
    """The bundled model, or a ModelError saying how to supply one."""
    return bundled_models()[0]


def bundled_models() -> list[Path]:
    """Every bundled model, in MODEL_NAMES order; a ModelError saying how to supply one when
    there is none."""
    where = assets_dir()
    found = [where / name for name in MODEL_NAMES if (where / name).is_file()]
    if found:
        return found
    raise ModelError(
        f"no model is bundled in {where} (looked for {', '.join(MODEL_NAMES)}); "
        "pass --model PATH to a model exported with `cifar-export`"
    )


def sample_images() -> list[Path]:
    """The bundled CIFAR-10 test images, one per class (always from the package itself)."""
    samples = PACKAGE_ASSETS / "samples"
    return sorted(p for p in samples.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def load_classifier(model: str | os.PathLike | None = None, *, provider: str = "auto", threads: int = 0,
                    top_k: int = 3, verify: bool = True, allow_failed: bool = False,
                    note: Callable[[str], None] | None = None) -> "Classifier":
    """A Classifier on ``model``, or on the first bundled model that passes its self-check here.

    The bundled INT8 file is preferred; on a CPU where its answers are not the exported ones
    (``runtime.model.selfcheck``), the bundled FP32 file is used instead and ``note`` says why. A
    ``model`` the user named is never swapped: its refusal is raised as it is.
    """
    from runtime.model.classifier import Classifier
    from runtime.model.selfcheck import ABSENT, SelfCheckError

    def load(path: Path) -> Classifier:
        clf = Classifier(path, provider=provider, threads=threads, top_k=top_k, verify=verify,
                         allow_failed=allow_failed)
        if clf.self_check.status == ABSENT and note is not None:
            note(f"{path.name} carries no self-check (exported before files carried one), so its answers "
                 "on this machine are unchecked; re-export it with cifar-export to add one")
        return clf

    if model is not None:
        return load(Path(model))
    candidates = bundled_models()
    for i, path in enumerate(candidates):
        try:
            return load(path)
        except SelfCheckError as exc:
            if i == len(candidates) - 1:
                raise
            if note is not None:
                note(f"the bundled {path.name} failed its self-check on this CPU ({exc.result.summary()}); "
                     f"using the bundled {candidates[i + 1].name} instead")
    raise AssertionError("unreachable: bundled_models() is never empty")
