"""onnxruntime execution providers: short names, availability, the choice for ``auto``, and
the options the GPU providers get.

Asking for a provider that this onnxruntime build lacks is an error that lists the ones it
has; there is no silent fallback to the CPU.

TensorRT keeps the engines it builds (minutes on a Jetson) in a cache folder. onnxruntime names
an engine after the model's path and graph, not its weights (two models of the same architecture
would share one engine), so each model gets a folder of its own, named by a hash of its bytes.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from runtime.errors import ProviderError

# Short name -> onnxruntime provider name. Order is the preference for "auto": the fastest
# accelerators first, the CPU always last.
PROVIDERS = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "migraphx": "MIGraphXExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "dml": "DmlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "qnn": "QNNExecutionProvider",
    "acl": "ACLExecutionProvider",
    "armnn": "ArmNNExecutionProvider",
    "xnnpack": "XnnpackExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
_SHORT = {full: short for short, full in PROVIDERS.items()}
# The --provider option's help, for every command that has one.
PROVIDER_HELP = ("Execution provider: auto, cpu, cuda, tensorrt, openvino, coreml, dml, ... (one "
                 "that is missing is an error, never a silent fallback to the CPU). TensorRT caches "
                 "its engines in ~/.cache/cifar-edge/tensorrt (CIFAR_EDGE_CACHE moves it) and builds "
                 "them in FP16 unless CIFAR_EDGE_TRT_FP16=0.")


def available_providers() -> list[str]:
    """Short names of the providers this onnxruntime build offers, best first."""
    import onnxruntime as ort

    have = set(ort.get_available_providers())
    return [short for short, full in PROVIDERS.items() if full in have]


def short_name(provider: str) -> str:
    return _SHORT.get(provider, provider)


def resolve(name: str = "auto") -> list[str]:
    """``auto``/``cpu``/``cuda``/... (or a full onnxruntime name) -> the providers list for a
    session: the chosen one first, then the CPU for any operator it cannot run.
    """
    have = available_providers()
    key = name.strip()
    if key.lower() == "auto":
        chosen = have[0] if have else "cpu"
    else:
        chosen = _SHORT.get(key, key.lower())
        if chosen not in PROVIDERS:
            raise ProviderError(
                f"unknown execution provider {name!r}; known: auto, {', '.join(PROVIDERS)}"
            )
        if chosen not in have:
            raise ProviderError(
                f"execution provider {chosen!r} is not available in this onnxruntime build; "
                f"available: {', '.join(have) or 'none'}"
                + (f"; {gpu_install_hint()}" if chosen in ("cuda", "tensorrt") else "")
            )
    chain = [PROVIDERS[chosen]]
    if chosen == "tensorrt" and "cuda" in have:
        chain.append(PROVIDERS["cuda"])  # TensorRT hands unsupported subgraphs to CUDA
    if chosen != "cpu":
        chain.append(PROVIDERS["cpu"])
    return chain


# -- how to get the GPU providers -----------------------------------------------------------------

JETSON_INDEX = "https://pypi.jetson-ai-lab.io/jp6/cu126"  # NVIDIA's wheels for JetPack 6.1/6.2 (CUDA 12.6)
JETSON_ZOO = "https://elinux.org/Jetson_Zoo#ONNX_Runtime"  # NVIDIA's list, older JetPacks too
_JETPACK6_INSTALL = f"`pip uninstall onnxruntime && pip install onnxruntime-gpu --index-url {JETSON_INDEX}`"


def gpu_install_hint(l4t: tuple[int, int] | None = None) -> str:
    """How to get an onnxruntime with CUDA and TensorRT. On a Jetson (``l4t``: its L4T release,
    (36, 4) for JetPack 6.1/6.2) that is NVIDIA's wheel for its JetPack, never PyPI's CPU build."""
    if l4t is None:
        return (f"install NVIDIA's onnxruntime-gpu: on a Jetson with JetPack 6.1/6.2, "
                f"{_JETPACK6_INSTALL}; elsewhere `pip install onnxruntime-gpu`; "
                "see docs/jetson.md")
    if (36, 4) <= l4t < (37, 0):
        return f"install NVIDIA's onnxruntime-gpu for JetPack 6.1/6.2: {_JETPACK6_INSTALL}; see docs/jetson.md"
    return (f"install NVIDIA's onnxruntime-gpu wheel for this JetPack (L4T R{l4t[0]}.{l4t[1]}) from "
            f"https://pypi.jetson-ai-lab.io or {JETSON_ZOO}; see docs/jetson.md")


# -- the options of the GPU providers -------------------------------------------------------------

CACHE_ENV = "CIFAR_EDGE_CACHE"  # the same variable moves the training data cache
TRT_FP16_ENV = "CIFAR_EDGE_TRT_FP16"  # "0": TensorRT engines in FP32
# A QDQ (INT8) model: the serialized NodeProto field op_type (4, length-delimited: 0x22) of 16
# bytes (0x10) "DequantizeLinear". TensorRT refuses to build such a model unless INT8 is on.
_QDQ_NODE = b"\x22\x10DequantizeLinear"
CUDA_OPTIONS = {
    "device_id": 0,
    # A Jetson's GPU shares the CPU's memory: grow the arena by what is asked for, not by
    # powers of two.
    "arena_extend_strategy": "kSameAsRequested",
    # cuDNN's heuristics pick the convolution algorithms at once; EXHAUSTIVE (onnxruntime's
    # default) times every algorithm at each new batch size, a pause in the middle of a stream.
    "cudnn_conv_algo_search": "HEURISTIC",
}


def cache_root() -> Path:
    """cifar-edge's cache folder: $CIFAR_EDGE_CACHE, else ~/.cache/cifar-edge."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "cifar-edge")


def trt_fp16_default() -> bool:
    """FP16 TensorRT engines unless CIFAR_EDGE_TRT_FP16 is 0 (or false, no, off)."""
    value = os.environ.get(TRT_FP16_ENV, "1").strip().lower()
    if value not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        raise ProviderError(f"{TRT_FP16_ENV}={value!r}: expected 1 (FP16 TensorRT engines, the "
                            "default) or 0 (FP32)")
    return value in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class TensorrtCache:
    """Where TensorRT keeps the engines of one model, and how it builds them: ``folder``
    (<root>/<model_key>-<precision>) holds this model's engines alone; the timing cache (layer
    timings, which do not depend on the weights) is in ``root``, shared by every model."""

    root: Path  # <cache>/tensorrt/onnxruntime-<version>: engines of another version never load
    model_key: str  # "<model stem>-<sha256 of its bytes, 12 hex>"
    fp16: bool  # FP16 kernels where TensorRT finds them faster
    int8: bool  # the model is quantized (QDQ): TensorRT needs INT8 on to build it at all

    @classmethod
    def for_model(cls, model: bytes, stem: str, onnxruntime_version: str,
                  fp16: bool | None = None) -> "TensorrtCache":
        return cls(root=cache_root() / "tensorrt" / f"onnxruntime-{onnxruntime_version}",
                   model_key=f"{stem}-{hashlib.sha256(model).hexdigest()[:12]}",
                   fp16=trt_fp16_default() if fp16 is None else fp16, int8=_QDQ_NODE in model)

    @property
    def precision(self) -> str:
        """What the engines are built for: "fp16", "fp32", "int8-fp16" or "int8-fp32"."""
        return "-".join(["int8"] * self.int8 + ["fp16" if self.fp16 else "fp32"])

    @property
    def folder(self) -> Path:
        return self.root / f"{self.model_key}-{self.precision}"

    def has_engine(self) -> bool:
        """True when TensorRT built an engine for this model before (and will load it)."""
        return self.folder.is_dir() and any(self.folder.glob("*.engine"))

    def create(self) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ProviderError(f"TensorRT engine cache {self.folder}: cannot create it "
                                f"({exc.strerror}); set {CACHE_ENV} to a writable folder") from None

    def options(self) -> dict:
        """TensorrtExecutionProvider's options (names as in onnxruntime's TensorRT EP docs)."""
        return {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(self.folder),
                "trt_timing_cache_enable": True, "trt_timing_cache_path": str(self.root),
                "trt_fp16_enable": self.fp16, "trt_int8_enable": self.int8}


def with_options(chain: list[str], tensorrt: TensorrtCache | None = None) -> list[tuple[str, dict]]:
    """``resolve``'s providers list as (name, options) pairs for an InferenceSession."""
    options = {PROVIDERS["cuda"]: CUDA_OPTIONS,
               PROVIDERS["tensorrt"]: tensorrt.options() if tensorrt is not None else {}}
    return [(name, dict(options.get(name, {}))) for name in chain]
