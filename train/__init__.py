"""cifar-edge train: fit and evaluate Keras CNNs on CIFAR-10 or your own image folders.

    from train import TrainConfig, fit, evaluate
    fit(TrainConfig(model="tiny", epochs=1), out="runs/tiny", data="../shared/data/cifar10")
"""

import sys
import types

from .config import TrainConfig
from .data import ImageDataset, load_cifar10, load_dataset


class _CallableModule(types.ModuleType):
    """A submodule that calls its namesake function: once ``train.fit`` is imported, Python binds
    the module over this package's lazy ``fit``, and ``from train import fit`` would give the
    module; calling it calls ``train.fit.fit`` (the same for ``evaluate``)."""

    def __call__(self, *args, **kwargs):
        return getattr(self, self.__name__.rsplit(".", 1)[1])(*args, **kwargs)


def _callable_module(name: str) -> None:
    sys.modules[name].__class__ = _CallableModule


def fit(*args, **kwargs):
    from .fit import fit as _fit

    return _fit(*args, **kwargs)


def evaluate(*args, **kwargs):
    from .evaluate import evaluate as _evaluate

    return _evaluate(*args, **kwargs)


__all__ = ["TrainConfig", "ImageDataset", "load_dataset", "load_cifar10", "fit", "evaluate"]
