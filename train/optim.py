"""The learning-rate schedule and the optimizer of the training recipe.

Both are registered with Keras once, when this module is imported, so a ``.keras``
checkpoint that refers to them loads in safe mode (``train.models.load_keras_model`` and
``--resume`` import this module first).
"""

from __future__ import annotations

from .quiet_import import import_keras

keras = import_keras()


@keras.saving.register_keras_serializable(package="cifar_edge", name="OneCycle")
class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from ``start``·peak to ``peak`` over ``warmup_steps``, then linear decay
    to ``final``·peak at ``total_steps`` (and flat after it). Steps are optimizer steps."""

    def __init__(self, peak: float, total_steps: int, warmup_steps: int, final: float, start: float = 0.0):
        self.peak, self.total_steps = float(peak), int(total_steps)
        self.warmup_steps, self.final, self.start = int(warmup_steps), float(final), float(start)

    def __call__(self, step):
        ops = keras.ops
        step = ops.cast(step, "float32")
        warm = self.start + (1.0 - self.start) * step / max(self.warmup_steps, 1)
        decay = 1.0 - (step - self.warmup_steps) / max(self.total_steps - self.warmup_steps, 1)
        frac = ops.where(step < self.warmup_steps, warm,
                         self.final + (1.0 - self.final) * ops.maximum(decay, 0.0))
        return self.peak * frac

    def get_config(self) -> dict:
        return dict(peak=self.peak, total_steps=self.total_steps, warmup_steps=self.warmup_steps,
                    final=self.final, start=self.start)


def is_batchnorm_bias(variable) -> bool:
    """True for a BatchNormalization ``beta``: Keras passes its own variable or, on TensorFlow,
    the tf.Variable behind it, named ``.../beta`` or ``.../beta:0``."""
    name = getattr(variable, "path", None) or variable.name
    return name.split("/")[-1].split(":")[0] == "beta"


def _variable_path(variable) -> list[str]:
    return (getattr(variable, "path", None) or variable.name).split(":")[0].split("/")


def is_whitening(variable) -> str | None:
    """"kernel" or "bias" for a variable of the layer named ``whiten``, else None."""
    parts = _variable_path(variable)
    return parts[-1] if len(parts) >= 2 and parts[-2] == "whiten" else None


@keras.saving.register_keras_serializable(package="cifar_edge", name="BiasScaledSGD")
class BiasScaledSGD(keras.optimizers.SGD):
    """SGD with airbench's per-parameter rules:

    - BatchNorm biases (``beta``) take ``bias_lr_scale`` times the learning rate (the biases
      of a scale-free BatchNorm need a larger step);
    - the ``whiten`` layer's kernel (fixed, computed from the data) is never updated, and its
      bias only for the first ``whiten_bias_steps`` steps: then its gradient and its momentum
      are zeroed, so it stays exactly where it is (airbench stops its gradient).
    """

    def __init__(self, bias_lr_scale: float = 1.0, whiten_bias_steps: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.bias_lr_scale = float(bias_lr_scale)
        self.whiten_bias_steps = int(whiten_bias_steps)

    def update_step(self, gradient, variable, learning_rate):
        whitening = is_whitening(variable)
        if whitening == "kernel":
            return None
        if whitening == "bias":
            keep = keras.ops.cast(keras.ops.less(self.iterations, self.whiten_bias_steps), variable.dtype)
            if self.momentum != 0:
                momentum = self.momentums[self._get_variable_index(variable)]
                self.assign(momentum, momentum * keep)
            gradient = keras.ops.cast(gradient, variable.dtype) * keep
        elif is_batchnorm_bias(variable):
            learning_rate = learning_rate * self.bias_lr_scale
        return super().update_step(gradient, variable, learning_rate)

    def get_config(self) -> dict:
        return {**super().get_config(), "bias_lr_scale": self.bias_lr_scale,
                "whiten_bias_steps": self.whiten_bias_steps}
