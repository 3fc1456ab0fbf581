"""The one place an onnxruntime session is created, for the runtime, export and parity alike.

``onnxruntime`` is imported inside ``create_session``, so importing this module stays light.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Union

from runtime.errors import ModelError, ProviderError
from runtime.model.contract import ModelMetadata
from runtime.model.providers import PROVIDERS, TensorrtCache, resolve, short_name, with_options

if TYPE_CHECKING:
    import onnxruntime

# A path, serialized bytes, or an in-memory ModelProto (anything with SerializeToString).
ModelSource = Union[str, os.PathLike, bytes, object]

KERAS_SUFFIXES = (".keras", ".h5")
IN_MEMORY = "<in-memory model>"


def model_name(model: ModelSource) -> str:
    """How messages name ``model``: its path, or IN_MEMORY."""
    return IN_MEMORY if isinstance(model, bytes) or hasattr(model, "SerializeToString") else os.fspath(model)


def _checked_path(model: str | os.PathLike) -> str:
    """``model`` as a path onnxruntime can open, or a ModelError saying what it is instead."""
    path = Path(model)
    if not path.exists():
        raise ModelError(f"{path}: no such model file")
    if path.is_dir():
        raise ModelError(f"{path}: is a directory, not a model file")
    if path.suffix.lower() in KERAS_SUFFIXES:
        raise ModelError(f"{path}: this is a Keras model: export it with `cifar-export {path}` "
                         "and run the .onnx")
    return os.fspath(path)


def _stderr(line: str) -> None:
    """A line on stderr, prefixed like the command's own (cifar-run: ...)."""
    prog = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    print(f"{prog if prog.startswith('cifar-') else 'cifar-edge'}: {line}", file=sys.stderr, flush=True)


def _tensorrt_cache(model: str | bytes, name: str, log: Callable[[str], None]) -> TensorrtCache:
    """The engine cache of ``model``, created; says so when TensorRT has yet to build its engine."""
    import onnxruntime as ort

    data = model if isinstance(model, bytes) else Path(model).read_bytes()
    stem = "in-memory" if isinstance(model, bytes) else Path(model).stem
    cache = TensorrtCache.for_model(data, stem, ort.__version__)
    cache.create()
    if not cache.has_engine():
        log(f"TensorRT builds an engine for {name} ({cache.precision}) on its first run, which can "
            f"take minutes on a Jetson; it is cached in {cache.folder} for the next runs")
    return cache


def create_session(model: ModelSource, provider: str = "cpu", threads: int = 0, *,
                   log: Callable[[str], None] = _stderr) -> "onnxruntime.InferenceSession":
    """An onnxruntime session on ``model`` (a path, bytes or a ModelProto), running on
    ``provider`` ("cpu", "auto", "cuda", ...) with ``threads`` intra-op threads (0 =
    onnxruntime's default).

    TensorRT caches its engines per model (``runtime.model.providers.TensorrtCache``; FP16 unless
    CIFAR_EDGE_TRT_FP16=0) and ``log`` announces the first build, which takes minutes; CUDA
    gets ``runtime.model.providers.CUDA_OPTIONS``.

    Raises ModelError naming the file when it cannot be loaded, and ProviderError when the
    provider is missing or failed to initialise: onnxruntime would silently fall back to the
    CPU, we don't.
    """
    import onnxruntime as ort  # here, so `import runtime` stays light

    if threads < 0:
        raise ModelError(f"threads must be >= 0, got {threads}")
    name = model_name(model)
    if hasattr(model, "SerializeToString"):
        model = model.SerializeToString()
    elif not isinstance(model, bytes):
        model = _checked_path(model)
    chain = resolve(provider)
    tensorrt = _tensorrt_cache(model, name, log) if PROVIDERS["tensorrt"] in chain else None
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3  # errors only: warnings about unused providers are noise
    try:
        session = ort.InferenceSession(model, options, providers=with_options(chain, tensorrt))
    except Exception as exc:  # onnxruntime raises its own pybind types for bad files
        reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        if "INVALID_PROTOBUF" in reason:
            raise ModelError(f"{name}: onnxruntime cannot load it: not an ONNX model (pass a .onnx "
                             "file exported with `cifar-export`)") from None
        raise ModelError(f"{name}: onnxruntime cannot load it ({type(exc).__name__}: {reason})") from None
    used = session.get_providers()
    if chain[0] not in used:
        raise ProviderError(f"execution provider {short_name(chain[0])!r} failed to initialise "
                            f"for {name} (onnxruntime fell back to {', '.join(map(short_name, used))})")
    return session


def model_metadata(session: "onnxruntime.InferenceSession", source: ModelSource) -> ModelMetadata:
    """The cifar-edge metadata of the model in ``session``; ModelError when it is missing."""
    return ModelMetadata.from_map(session.get_modelmeta().custom_metadata_map, model_name(source))
