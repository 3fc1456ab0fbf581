"""cifar-edge runtime: dependency-light ONNX inference (onnxruntime, numpy, pillow).

Never imports TensorFlow, Keras, tf2onnx or onnx; OpenCV only inside ``runtime.camera``.
``Classifier`` and ``Prediction`` are loaded on first use, so ``import runtime`` does not
load onnxruntime either.
"""

from runtime.errors import CifarEdgeError
from runtime.image.preprocess import load_image, prepare
from runtime.model.contract import CIFAR10_CLASSES, InputContract

__all__ = ["CIFAR10_CLASSES", "InputContract", "CifarEdgeError", "load_image", "prepare",
           "Classifier", "Prediction", "FileResult", "available_providers"]
__version__ = "0.1.0"

_LAZY = {"Classifier": "model.classifier", "Prediction": "model.classifier", "FileResult": "model.classifier",
         "available_providers": "model.providers"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
