"""The model registry: Keras CNNs that take raw RGB pixels (0-255, NHWC) and output class
probabilities.

Normalization is the first layer of every model (fixed CIFAR-10 constants, never ``adapt()``),
so the exported ONNX graph carries it and no caller can get it wrong. Augmentation is not in
the model: it lives in the training data pipeline (``train.augment``), so the model exports
cleanly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from .loading import load_keras_model, read_keras_config  # noqa: F401  (re-exported: callers load from here)

if TYPE_CHECKING:
    import keras

# Keras' BatchNorm momentum (1 - PyTorch's): statistics follow the weights quickly, which the
# lookahead averaging in train.fit needs (airbench uses PyTorch momentum 0.4).
BN_MOMENTUM = 0.6

# Per-channel mean and std of the CIFAR-10 training set, in 0-255 pixel units (RGB).
CIFAR10_MEAN = (125.307, 122.950, 113.865)
CIFAR10_STD = (62.993, 62.089, 66.705)


def _normalize(keras, x):
    variance = [s * s for s in CIFAR10_STD]
    return keras.layers.Normalization(mean=list(CIFAR10_MEAN), variance=variance, name="normalize")(x)


def whitening_kernel(images_rgb: np.ndarray, patch: int = 2, eps: float = 5e-4) -> np.ndarray:
    """A fixed patch-whitening convolution computed from training images (airbench's stem).

    images_rgb: (N, 32, 32, 3) uint8. Returns a (patch, patch, 3, 2*patch*patch*3) float32 kernel
    whose filters are the eigenvectors of the patch covariance scaled by 1/sqrt(eigenvalue), each
    with its negation, so a following ReLU keeps all the information.
    """
    x = (images_rgb.astype(np.float32) - np.array(CIFAR10_MEAN, np.float32)) / np.array(CIFAR10_STD, np.float32)
    n, h, w, c = x.shape
    # (N, h-p+1, w-p+1, p, p, c) patches → (M, p*p*c)
    windows = np.lib.stride_tricks.sliding_window_view(x, (patch, patch), axis=(1, 2))  # (N, H', W', c, p, p)
    patches = windows.transpose(0, 1, 2, 4, 5, 3).reshape(-1, patch * patch * c).astype(np.float64)
    patches -= patches.mean(axis=0)
    cov = patches.T @ patches / len(patches)
    eigenvalues, eigenvectors = np.linalg.eigh(cov)
    filters = eigenvectors.T / np.sqrt(eigenvalues + eps)[:, None]  # (k, p*p*c)
    filters = np.concatenate([filters, -filters])  # (2k, p*p*c)
    return filters.reshape(-1, patch, patch, c).transpose(1, 2, 3, 0).astype(np.float32)


def _l2(keras, weight_decay: float):
    # loss += wd/2 * sum(w^2)  ⇒  grad += wd * w, through momentum, as PyTorch's weight_decay.
    return keras.regularizers.L2(weight_decay / 2) if weight_decay > 0 else None


def build_tiny(num_classes: int = 10, weight_decay: float = 5e-4, logit_scale: float = 1 / 9,
               bias_weight_decay: float = 0.0, input_size: int = 32,
               **_) -> "keras.Model":
    """~25k parameters: an epoch on a few thousand images takes seconds. For tests and demos.
    Built like ``default`` (BatchNorm without scale, ReLU, fixed temperature) so the same
    training recipe suits both. Any ``input_size`` >= 8 (three max pools, then a global one)."""
    import keras

    inputs = keras.Input(shape=(input_size, input_size, 3), dtype="float32", name="image_rgb")
    x = _normalize(keras, inputs)
    for i, width in enumerate((16, 32, 64)):
        x = _conv_bn_relu(keras, x, width, name=f"t{i}", weight_decay=weight_decay,
                          bias_weight_decay=bias_weight_decay)
        x = keras.layers.MaxPooling2D(2, name=f"t{i}_pool")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dense(num_classes, use_bias=False, name="logits",
                           kernel_regularizer=_l2(keras, weight_decay))(x)
    outputs = _temperature_softmax(keras, x, logit_scale)
    return keras.Model(inputs, outputs, name="tiny")


def _temperature_softmax(keras, logits, logit_scale: float):
    # A fixed temperature: small logits early in training keep the high learning rate stable.
    # float32 even under a mixed-precision policy, so the loss sees float32 probabilities.
    x = keras.layers.Rescaling(logit_scale, name="temperature", dtype="float32")(logits)
    return keras.layers.Softmax(name="probabilities", dtype="float32")(x)


def _activation(keras, activation: str, name: str):
    # Layer names keep "relu" whatever the function, so export's float-node lists stay stable.
    if activation == "relu":
        return keras.layers.ReLU(name=name)
    return keras.layers.Activation(activation, name=name)


def _batchnorm(keras, name: str, bias_weight_decay: float = 0.0):
    # No scale (as in airbench): the following ReLU is scale-invariant, and fewer weights
    # fold into the convolution at export.
    return keras.layers.BatchNormalization(scale=False, momentum=BN_MOMENTUM, epsilon=1e-5, name=name,
                                           beta_regularizer=_l2(keras, bias_weight_decay))


def _conv_bn_relu(keras, x, width: int, name: str, weight_decay: float, activation: str = "relu",
                  bias_weight_decay: float = 0.0):
    x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"{name}_conv",
                            kernel_regularizer=_l2(keras, weight_decay))(x)
    x = _batchnorm(keras, f"{name}_bn", bias_weight_decay)(x)
    return _activation(keras, activation, f"{name}_relu")(x)


@dataclass(frozen=True)
class Architecture:
    """What tells apart the airbench-style networks ``build_default`` builds."""

    name: str = "default"  # the registry's name, saved in the .keras file (--init checks it)
    widths: tuple[int, int, int] = (64, 160, 160)  # output channels of the three conv groups
    activation: str = "relu"  # after every conv; layer names keep "relu" whatever it is


DEFAULT = Architecture()  # ~0.84M parameters
QUICK = Architecture("quick", widths=(32, 64, 64))  # ~0.15M parameters, a quarter of the compute
AIRBENCH94 = Architecture("airbench94", widths=(64, 256, 256), activation="gelu")  # ~1.97M, as published


def build_default(num_classes: int = 10, train_images: np.ndarray | None = None, input_size: int = 32,
                  weight_decay: float = 5e-4, bias_weight_decay: float = 0.0, whiten_bias: bool = True,
                  logit_scale: float = 1 / 9, architecture: Architecture = DEFAULT) -> "keras.Model":
    """The edge model we ship: airbench-style, ~0.84M parameters (``architecture`` DEFAULT).

    raw RGB → normalize → 2x2 patch-whitening conv (kernel fixed, from data; a bias that
    ``train.optim.BiasScaledSGD`` trains for the first epochs only) → ReLU →
    3 × [conv → maxpool/2 → BN → ReLU → conv → BN → ReLU] → global max pool → dense/9 → softmax.
    Shapes: 32 → 31 (whitening, valid) → 15 → 7 → 3 → 1; any ``input_size`` >= 9 leaves at
    least one pixel for the global pool (48 → 47 → 23 → 11 → 5).
    """
    import keras

    inputs = keras.Input(shape=(input_size, input_size, 3), dtype="float32", name="image_rgb")
    x = _normalize(keras, inputs)
    if train_images is not None:
        kernel = whitening_kernel(train_images[:whitening_images(input_size)])
    else:  # rebuilt from a checkpoint: the saved weights replace this placeholder
        kernel = np.zeros((2, 2, 3, 24), np.float32)
    # With a bias the layer is trainable and the optimizer keeps the kernel fixed (a frozen
    # layer would freeze its bias too); without one it is simply frozen.
    whiten = keras.layers.Conv2D(kernel.shape[-1], 2, padding="valid", use_bias=whiten_bias,
                                 bias_regularizer=_l2(keras, weight_decay) if whiten_bias else None,
                                 trainable=whiten_bias, name="whiten")
    x = whiten(x)
    whiten.kernel.assign(kernel)
    activation = architecture.activation
    x = _activation(keras, activation, "whiten_relu")(x)
    for i, width in enumerate(architecture.widths):
        x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"g{i}_conv1",
                                kernel_regularizer=_l2(keras, weight_decay))(x)
        x = keras.layers.MaxPooling2D(2, name=f"g{i}_pool")(x)
        x = _batchnorm(keras, f"g{i}_bn1", bias_weight_decay)(x)
        x = _activation(keras, activation, f"g{i}_relu1")(x)
        x = _conv_bn_relu(keras, x, width, name=f"g{i}_2", weight_decay=weight_decay, activation=activation,
                          bias_weight_decay=bias_weight_decay)
    x = keras.layers.GlobalMaxPooling2D(name="pool")(x)
    x = keras.layers.Dense(num_classes, use_bias=False, name="logits",
                           kernel_regularizer=_l2(keras, weight_decay))(x)
    outputs = _temperature_softmax(keras, x, logit_scale)
    model = keras.Model(inputs, outputs, name=architecture.name)
    if train_images is not None:
        _dirac_init(model)
    return model


def whitening_images(input_size: int) -> int:
    """How many training images the whitening kernel is computed from: 5,000 at 32x32 (4.8M
    patches), fewer at larger sizes so the patches, and their float64 copy, stay that many."""
    return max(1, 5000 * 31 * 31 // max(input_size - 1, 1) ** 2)


def _dirac_init(model) -> None:
    """Start each 3x3 conv as the identity on its first input channels (airbench's init):
    the signal passes through the untrained network unchanged."""
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D) and layer.trainable and layer.kernel_size == (3, 3):
            kernel = np.array(layer.kernel.numpy())  # (3, 3, in, out)
            n = min(kernel.shape[2], kernel.shape[3])
            kernel[:, :, :, :n] = 0.0
            kernel[1, 1, np.arange(n), np.arange(n)] = 1.0
            layer.kernel.assign(kernel)


PRECISIONS = ("auto", "float32", "mixed_bfloat16")


def resolve_precision(precision: str, flags: set[str] | None = None) -> str:
    """"auto" → "mixed_bfloat16" where the CPU (``flags``, default this machine's) has bfloat16
    instructions, else "float32". Other names pass through or are refused."""
    from runtime.cpu import cpu_flags
    from runtime.errors import CifarEdgeError

    if precision not in PRECISIONS:
        raise CifarEdgeError(f"unknown precision {precision!r}; choose auto, float32 or mixed_bfloat16")
    if precision != "auto":
        return precision
    flags = cpu_flags() if flags is None else flags
    return "mixed_bfloat16" if BF16_FLAGS & flags else "float32"


BF16_FLAGS = {"avx512_bf16", "amx_bf16"}  # the x86 instructions that make bfloat16 training pay


def precision_reason(asked: str, flags: set[str] | None = None) -> str:
    """Why a run trains in the precision ``resolve_precision(asked)`` gives, in a few words:
    "this CPU has avx512_bf16", "this CPU has no bfloat16 instructions (...)", "--precision"."""
    from runtime.cpu import cpu_flags

    if asked != "auto":
        return "asked for with --precision"
    flags = cpu_flags() if flags is None else flags
    have = sorted(BF16_FLAGS & flags)
    if have:
        return f"this CPU has {', '.join(have)}: about 2x faster than float32"
    return f"this CPU has no bfloat16 instructions ({'/'.join(sorted(BF16_FLAGS))})"


def as_float32(model, copy: bool = False) -> "keras.Model":
    """The model with every layer computing in float32: ``model`` itself if it already does
    (unless ``copy``), else a copy with the same weights (what gets saved and exported after
    mixed-precision training, so ONNX never sees bfloat16)."""
    import keras

    if not copy and all(layer.dtype_policy.name == "float32" for layer in model.layers):
        return model

    def to_float32(node):
        if isinstance(node, dict):
            if node.get("class_name") == "DTypePolicy":
                return {**node, "config": {**node.get("config", {}), "name": "float32"}}
            return {k: to_float32(v) for k, v in node.items()}
        if isinstance(node, list):
            return [to_float32(v) for v in node]
        return node

    clone = keras.Model.from_config(to_float32(model.get_config()))
    clone.set_weights(model.get_weights())
    return clone


def save_keras_model(model, path: str | os.PathLike) -> None:
    """Write ``model`` to the ``.keras`` file ``path`` (atomically) as plain Keras opens it,
    ``keras.saving.load_model(path)`` with nothing of this project imported: its layers and
    float32 weights, without the compile state. The optimizer and its schedule are this
    project's classes (``train.optim``), so only the resume checkpoint, last.keras, holds them."""
    from runtime.atomic import atomic_path

    portable = as_float32(model, copy=model.compiled)  # a copy is never compiled
    with atomic_path(path) as tmp:
        portable.save(tmp)


# --- starting from a saved model's features (--init) ---------------------------------------

SHIPPED_MODEL = Path(__file__).resolve().parent / "shipped" / "default" / "model.keras"
HEAD = "logits"  # the one layer that depends on the classes: never copied


def init_path(init: str) -> Path:
    """The ``.keras`` file ``--init`` names: "shipped" is ``SHIPPED_MODEL``."""
    from runtime.errors import ModelError

    if init == "shipped":
        if not SHIPPED_MODEL.is_file():
            raise ModelError(f"{SHIPPED_MODEL}: the shipped model is not in this install; "
                             "pass --init PATH.keras (a model.keras from a cifar-train run)")
        return SHIPPED_MODEL
    if Path(init).suffix != ".keras":
        raise ModelError(f"{init}: --init takes 'shipped' or a .keras model file")
    return Path(init)


def check_init(init: str, model: str) -> Path:
    """``init_path(init)``, checked without Keras to hold a ``model`` network: one-line
    ModelErrors otherwise."""
    from runtime.errors import ModelError

    path = init_path(init)
    built_as = saved_architecture(path)
    if built_as != model:
        raise ModelError(f"{path}: a '{built_as}' model, not '{model}'; --init copies the layers of the same "
                         f"architecture: pass --model {built_as}")
    return path


def saved_architecture(path: str | os.PathLike) -> str:
    """The registry name a saved model was built as ("default", "quick", "tiny"...)."""
    return str(read_keras_config(path).get("config", {}).get("name", "unknown"))


def copy_features(model, source, source_name: str) -> tuple[list[str], list[str]]:
    """Copy into ``model`` each weight of ``source`` with the same layer name, weight name and
    shape, except the ``HEAD``, which starts fresh. Returns (layers copied, weights left as built
    and why). A weight of the same name and another shape is another architecture: ModelError."""
    from runtime.errors import ModelError

    theirs = {(layer.name, w.name): w for layer in source.layers for w in layer.weights}
    copied, fresh = [], []
    for layer in model.layers:
        if not layer.weights:
            continue
        if layer.name == HEAD:
            fresh.append(f"{HEAD} (a new head for {layer.weights[0].shape[-1]} classes)")
            continue
        pairs = [(w, theirs.get((layer.name, w.name))) for w in layer.weights]
        for w, match in pairs:
            if match is not None and tuple(match.shape) != tuple(w.shape):
                raise ModelError(f"{source_name}: its {layer.name}/{w.name} is {tuple(match.shape)}, this "
                                 f"'{model.name}' model's is {tuple(w.shape)}; --init needs the same architecture")
            if match is None:
                fresh.append(f"{layer.name}/{w.name} (not in {source_name})")
            else:
                w.assign(np.asarray(match.numpy(), dtype=w.dtype))
        if any(match is not None for _, match in pairs):
            copied.append(layer.name)
    if not copied:
        raise ModelError(f"{source_name}: shares no layer with a '{model.name}' model; --init needs the same "
                         "architecture")
    return copied, fresh


def build_airbench94(num_classes: int = 10, **kwargs) -> "keras.Model":
    """A reference, not an edge model: airbench94's network as published (widths 64/256/256,
    GELU, ~1.97M parameters), to measure what a known recipe reaches on the data at hand
    (``scripts/reference_run.py``). Too big for the shipped-model limits."""
    return build_default(num_classes, architecture=AIRBENCH94, **kwargs)


def build_quick(num_classes: int = 10, **kwargs) -> "keras.Model":
    """``default`` at half width and less (32/64/64, ~0.15M parameters, a quarter of the
    compute): about 80% on CIFAR-10 after 2 minutes of training on 2 CPU cores. The first
    run, and a quick first model on new data."""
    return build_default(num_classes, architecture=QUICK, **kwargs)


MODELS: dict[str, Callable[..., "keras.Model"]] = {
    "tiny": build_tiny,
    "quick": build_quick,
    "default": build_default,
    "airbench94": build_airbench94,
}


def build_model(name: str, **kwargs) -> "keras.Model":
    from runtime.errors import CifarEdgeError

    if name not in MODELS:
        raise CifarEdgeError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    return MODELS[name](**kwargs)
