"""onnxruntime execution providers: short names, availability, and the choice for ``auto``.

Asking for a provider that this onnxruntime build lacks is an error that lists the ones it
has; there is no silent fallback to the CPU.
"""

from __future__ import annotations

from .errors import ProviderError

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
                + (" (install NVIDIA's onnxruntime-gpu build for cuda/tensorrt)"
                   if chosen in ("cuda", "tensorrt") else "")
            )
    chain = [PROVIDERS[chosen]]
    if chosen == "tensorrt" and "cuda" in have:
        chain.append(PROVIDERS["cuda"])  # TensorRT hands unsupported subgraphs to CUDA
    if chosen != "cpu":
        chain.append(PROVIDERS["cpu"])
    return chain
