"""Fold a trained Keras chain into fewer, cheaper operators before conversion.

Training wants BatchNorm, a normalization layer and a temperature; inference does not need
them as separate operators. Each rule below rewrites the network into one that computes the
same function (up to float rounding, which the parity check then measures against the
original model):

- Normalization or Rescaling → the next convolution (whatever its activation), when that
  convolution pads nothing ("valid"), or for a pure scale whatever it pads:
  conv(W, (x - m) / s) = conv(W / s, x) - Σ (W / s)·m, a new bias.
- BatchNormalization → an affine x·a + b per channel; after a MaxPool with every a > 0 the
  affine commutes with the pool (a positive affine is monotonic), so it moves before it.
- an affine right after a convolution without an activation → the convolution's kernel and bias.
- ReLU after a MaxPool → before it (both are monotonic: max then clip = clip then max), so
  onnxruntime fuses it into the convolution (FusedConv / QLinearConv with the ReLU absorbed).
- a Rescaling right after a Dense layer without an activation → the Dense kernel and bias (the
  output temperature).

Anything else (a branch, an unknown layer) is kept as it is: a layer no rule rewrote is reused
as itself, trained weights and all, so the result is always the same function, folded as far
as the rules reach. Saves about a third of the INT8 graph's operators on
the shipped model (the normalization Sub/Mul and every BatchNorm Mul/Add).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class _Op:
    """One step of the chain: a Keras layer to rebuild, or an affine waiting to be folded."""

    layer: object | None  # the original layer (None for a pure affine)
    kind: str  # "conv", "pool", "relu", "dense", "affine", "norm", "rescale", "other"
    weights: list = field(default_factory=list)  # [kernel, bias] for conv/dense (bias may be None)
    scale: np.ndarray | None = None  # affine / norm / rescale: y = x * scale + shift
    shift: np.ndarray | None = None
    linear: bool = True  # conv/dense: no activation of its own, so what follows may fold into it
    changed: bool = False  # conv/dense: weights rewritten, so the layer is rebuilt; else it is reused as is


def layer_chain(model) -> list | None:
    """The model's layers after its input when they form one chain from input to output (a
    ``Sequential`` always does), else None. Followed through the model's own graph, from its
    output back to its input, so a layer also used in another model still counts once."""
    from train.quiet_import import import_keras

    if isinstance(model, import_keras().Sequential):
        return list(model.layers)
    if len(model.inputs or []) != 1 or len(model.outputs or []) != 1:
        return None
    chain, tensor = [], model.outputs[0]
    while tensor is not model.inputs[0]:
        layer, node_index, _ = tensor._keras_history
        inputs = layer._inbound_nodes[node_index].input_tensors
        if len(inputs) != 1:  # a merge, or an input that is not the model's
            return None
        chain.append(layer)
        tensor = inputs[0]
    chain.reverse()
    return chain if len(chain) == len(model.layers) - 1 else None  # -1: the InputLayer; more: a side branch


def _classify(keras, layer) -> _Op:
    L = keras.layers
    config = layer.get_config()
    linear = config.get("activation") == "linear"
    if isinstance(layer, L.Conv2D) and not isinstance(layer, (L.DepthwiseConv2D, L.Conv2DTranspose)) \
            and config.get("groups", 1) == 1:
        weights = layer.get_weights()
        return _Op(layer, "conv", [weights[0], weights[1] if len(weights) > 1 else None], linear=linear)
    if isinstance(layer, L.Dense):
        weights = layer.get_weights()
        return _Op(layer, "dense", [weights[0], weights[1] if len(weights) > 1 else None], linear=linear)
    if isinstance(layer, (L.MaxPooling2D, L.GlobalMaxPooling2D)):
        return _Op(layer, "pool")
    if isinstance(layer, L.ReLU) and config.get("max_value") is None and not config.get("negative_slope") \
            and not config.get("threshold"):
        return _Op(layer, "relu")
    if isinstance(layer, L.Activation) and config.get("activation") == "relu":
        return _Op(layer, "relu")
    if isinstance(layer, L.BatchNormalization) and config.get("axis") in (-1, 3, [3], [-1]):
        gamma = layer.gamma.numpy() if layer.scale else 1.0
        beta = layer.beta.numpy() if layer.center else 0.0
        scale = gamma / np.sqrt(layer.moving_variance.numpy() + layer.epsilon)
        shift = beta - layer.moving_mean.numpy() * scale
        return _Op(None, "affine", scale=np.broadcast_to(scale, layer.moving_mean.shape).astype(np.float64),
                   shift=np.broadcast_to(shift, layer.moving_mean.shape).astype(np.float64))
    if isinstance(layer, L.Normalization) and not config.get("invert"):
        mean = np.asarray(layer.mean, np.float64).reshape(-1)
        std = np.sqrt(np.asarray(layer.variance, np.float64).reshape(-1))
        std = np.maximum(std, keras.backend.epsilon())  # as Keras divides by max(sqrt(var), eps)
        return _Op(layer, "norm", scale=1.0 / std, shift=-mean / std)
    if isinstance(layer, L.Rescaling) and np.ndim(config.get("scale")) == 0 and np.ndim(config.get("offset", 0)) == 0:
        return _Op(layer, "rescale", scale=np.float64(config["scale"]), shift=np.float64(config.get("offset", 0)))
    return _Op(layer, "other")


def _fold_affine_into_conv(conv: _Op, affine: _Op) -> None:
    kernel, bias = conv.weights  # kernel (kh, kw, in, out)
    bias = np.zeros(kernel.shape[-1]) if bias is None else bias
    conv.weights = [kernel * affine.scale, bias * affine.scale + affine.shift]
    conv.changed = True


def _fold_input_affine_into_conv(pre: _Op, conv: _Op) -> None:
    """conv(W, x·s + t) = conv(W·s, x) + Σ W·t, per input channel (a Normalization or a Rescaling)."""
    kernel, bias = conv.weights
    bias = np.zeros(kernel.shape[-1]) if bias is None else bias
    scale, shift = (np.broadcast_to(v, kernel.shape[2]) for v in (pre.scale, pre.shift))
    folded = kernel * scale[None, None, :, None]
    conv.weights = [folded, bias + np.einsum("hwio,i->o", kernel, shift)]
    conv.changed = True


def _input_side_folds(pre: _Op, conv: _Op) -> bool:
    """Whether ``pre`` folds into the convolution after it: a shift only where no padding is
    added (a padded zero would become -shift·W at the borders); a scale alone always."""
    return conv.layer.get_config().get("padding") == "valid" or not np.any(pre.shift)


def _fold(ops: list[_Op], applied: list[str]) -> list[_Op]:
    """Apply the rules until nothing changes."""
    changed = True
    while changed:
        changed = False
        for i in range(len(ops) - 1):
            a, b = ops[i], ops[i + 1]
            if a.kind == "pool" and b.kind == "affine" and np.all(b.scale > 0):
                ops[i], ops[i + 1] = b, a
                applied.append(f"moved a BatchNorm before {a.layer.name}")
            elif a.kind == "pool" and b.kind == "relu":
                ops[i], ops[i + 1] = b, a
                applied.append(f"moved {b.layer.name} before {a.layer.name}")
            elif a.kind == "conv" and a.linear and b.kind == "affine":
                _fold_affine_into_conv(a, b)
                del ops[i + 1]
                applied.append(f"folded a BatchNorm into {a.layer.name}")
            elif a.kind in ("norm", "rescale") and b.kind == "conv" and _input_side_folds(a, b):
                _fold_input_affine_into_conv(a, b)
                del ops[i]
                applied.append(f"folded {a.layer.name} into {b.layer.name}")
            elif a.kind == "dense" and a.linear and b.kind == "rescale" and b.shift == 0:
                kernel, bias = a.weights
                a.weights = [kernel * b.scale, None if bias is None else bias * b.scale]
                a.changed = True
                del ops[i + 1]
                applied.append(f"folded {b.layer.name} into {a.layer.name}")
            else:
                continue
            changed = True
            break
    return ops


def _rebuild(op: _Op, x):
    """Apply ``op`` to ``x``: a conv/dense whose weights were folded as a new layer of the same
    config with those weights; every other layer as itself, trained weights and all."""
    if op.kind == "affine":  # an affine no rule could fold: keep it as BatchNorm-free arithmetic
        return x * op.scale.astype(np.float32) + op.shift.astype(np.float32)
    if not op.changed:
        return op.layer(x)
    kernel, bias = op.weights
    config = op.layer.get_config()
    config["use_bias"] = bias is not None
    config["dtype"] = "float32"
    layer = type(op.layer).from_config(config)
    y = layer(x)
    layer.set_weights([kernel.astype(np.float32)] + ([bias.astype(np.float32)] if bias is not None else []))
    return y


def fold_for_inference(model) -> tuple[object, list[str]]:
    """(folded model, what was folded). ``model`` itself, with an empty list, when it is not a
    single chain of layers or nothing applies."""
    from train.quiet_import import import_keras

    keras = import_keras()
    layers = layer_chain(model)
    if layers is None:
        return model, []
    applied: list[str] = []
    ops = _fold([_classify(keras, layer) for layer in layers], applied)
    if not applied:
        return model, []
    name = None if isinstance(model, keras.Sequential) else model.layers[0].name  # the InputLayer's
    inputs = keras.Input(shape=tuple(model.inputs[0].shape[1:]), dtype=model.inputs[0].dtype, name=name)
    x = inputs
    for op in ops:
        x = _rebuild(op, x)
    return keras.Model(inputs, x, name=f"{model.name}_folded"), applied
