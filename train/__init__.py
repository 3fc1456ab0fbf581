"""cifar-edge train: fit and evaluate Keras CNNs on CIFAR-10 or your own image folders.

    from train import TrainConfig, fit, evaluate
    fit(TrainConfig(model="tiny", epochs=1), out="runs/tiny", data="../shared/data/cifar10")
"""

from .config import TrainConfig
from .data import ImageDataset, load_cifar10, load_dataset


def fit(*args, **kwargs):
    from .fit import fit as _fit

    return _fit(*args, **kwargs)


def evaluate(*args, **kwargs):
    from .evaluate import evaluate as _evaluate

    return _evaluate(*args, **kwargs)


__all__ = ["TrainConfig", "ImageDataset", "load_dataset", "load_cifar10", "fit", "evaluate"]
