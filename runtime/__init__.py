"""cifar-edge runtime: dependency-light ONNX inference (onnxruntime, numpy, pillow).

Never imports TensorFlow, Keras, tf2onnx or onnx; OpenCV only inside the video code.
"""

from .contract import CIFAR10_CLASSES, InputContract
from .errors import CifarEdgeError
from .preprocess import load_image, prepare

__all__ = ["CIFAR10_CLASSES", "InputContract", "CifarEdgeError", "load_image", "prepare"]
__version__ = "0.1.0"
