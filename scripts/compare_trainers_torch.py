"""The PyTorch side of scripts/compare_trainers.py: the ``quick`` network of train/models.py and
the recipe of train/config.py, train/optim.py and train/fit.py, line for line, on PyTorch's
eager CPU trainer. Only the torch child of compare_trainers.py imports it (PyTorch at the top,
as a PyTorch user writes it); its parity with the Keras model is tested in
tests/test_compare_trainers.py.

Where it cannot be the same: ``torch.optim.SGD`` keeps the learning rate out of its momentum
buffer (buf = m·buf + g; w -= lr·(g + m·buf)) where Keras' SGD puts it in (v = m·v - lr·g;
w += m·v - lr·g): the same steps at a constant rate, a little different while the one-cycle
rate moves. BatchNorm's running variance is PyTorch's unbiased one (Keras': biased), over
at least 9,216 values a channel at batch 1,024.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from train.config import TrainConfig
from train.models import BN_MOMENTUM, CIFAR10_MEAN, CIFAR10_STD, whitening_images, whitening_kernel

EVAL_BATCH = 1000  # images per forward pass on the test split, as train.fit.loss_and_accuracy


def one_cycle(step: int, total_steps: int, config: TrainConfig) -> float:
    """The learning rate at ``step`` (0-based) of ``total_steps``: train.optim.OneCycle as
    train.fit.compile_model sets it up (start·peak rising to the peak over the warm-up fraction,
    then linear decay to final·peak), in plain Python."""
    peak, warmup = config.lr, int(total_steps * config.warmup)
    if step < warmup:
        return peak * (config.start_lr + (1.0 - config.start_lr) * step / max(warmup, 1))
    decay = 1.0 - (step - warmup) / max(total_steps - warmup, 1)
    return peak * (config.final_lr + (1.0 - config.final_lr) * max(decay, 0.0))


def _batchnorm(width: int) -> nn.BatchNorm2d:
    # No scale (its weight stays 1, untrained), as train.models._batchnorm; PyTorch's momentum
    # is 1 - Keras'.
    bn = nn.BatchNorm2d(width, eps=1e-5, momentum=1.0 - BN_MOMENTUM)
    bn.weight.requires_grad_(False)
    return bn


def _conv(width_in: int, width: int) -> nn.Conv2d:
    # Keras' glorot_uniform, then airbench's dirac start (train.models._dirac_init): the first
    # min(in, out) filters pass their input channel through unchanged.
    conv = nn.Conv2d(width_in, width, 3, padding=1, bias=False)
    nn.init.xavier_uniform_(conv.weight)
    nn.init.dirac_(conv.weight.data[:min(width_in, width)])
    return conv


class QuickNet(nn.Module):
    """train.models.build_quick: raw RGB (N, 3, 32, 32) float32 0-255 → normalize → fixed 2x2
    whitening conv → ReLU → 3 × [conv → maxpool/2 → BN → ReLU → conv → BN → ReLU] → global max
    pool → dense/9 → logits (N, classes); the softmax is in the loss. The whitening conv is
    frozen and has no bias (compare_trainers.py freezes it in every trainer)."""

    def __init__(self, whiten_hwio: np.ndarray, widths: tuple[int, ...] = (32, 64, 64), num_classes: int = 10,
                 logit_scale: float = 1 / 9):
        super().__init__()
        self.register_buffer("mean", torch.tensor(CIFAR10_MEAN, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(CIFAR10_STD, dtype=torch.float32).view(1, 3, 1, 1))
        self.whiten = nn.Conv2d(3, whiten_hwio.shape[-1], 2, bias=False)
        self.whiten.weight.data.copy_(torch.from_numpy(whiten_hwio.transpose(3, 2, 0, 1).copy()))  # HWIO → OIHW
        self.whiten.weight.requires_grad_(False)
        blocks, width_in = [], whiten_hwio.shape[-1]
        for width in widths:
            blocks.append(nn.Sequential(_conv(width_in, width), nn.MaxPool2d(2), _batchnorm(width), nn.ReLU(),
                                        _conv(width, width), _batchnorm(width), nn.ReLU()))
            width_in = width
        self.blocks = nn.Sequential(*blocks)
        self.logits = nn.Linear(width_in, num_classes, bias=False)
        nn.init.xavier_uniform_(self.logits.weight)
        self.logit_scale = logit_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.whiten((x - self.mean) / self.std))  # (N, 24, 31, 31)
        x = self.blocks(x)  # (N, 64, 3, 3)
        return self.logits(torch.amax(x, dim=(2, 3))) * self.logit_scale


def make_optimizer(net: QuickNet, config: TrainConfig) -> torch.optim.SGD:
    """Nesterov SGD with train.optim.BiasScaledSGD's rules as parameter groups: L2 on the conv
    and dense kernels (``grad += wd * w``, as the Keras regularizers), BatchNorm biases at
    ``bias_lr_scale`` times the rate with their own smaller decay. ``lr_scale`` multiplies
    the schedule's rate at every step (``TorchTrainer.train``)."""
    kernels = [m.weight for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and m.weight.requires_grad]
    bn_biases = [m.bias for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    groups = [dict(params=kernels, weight_decay=config.weight_decay, lr_scale=1.0),
              dict(params=bn_biases, weight_decay=config.bias_weight_decay, lr_scale=config.bias_lr_scale)]
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=True)


class TorchTrainer:
    """compare_trainers.py's trainer interface: ``compile(total_steps)``, ``train(x, y)``,
    ``reset()``, ``accuracy(x, y)``, on (N, 32, 32, 3) uint8 RGB images and (N,) int labels."""

    def __init__(self, config: TrainConfig, x_train: np.ndarray, channels_last: bool, threads: int):
        torch.set_num_threads(threads)
        torch.manual_seed(config.seed)
        self.config = config
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.net = QuickNet(whitening_kernel(x_train[:whitening_images(x_train.shape[1])]))
        self.net.to(memory_format=self.memory_format)
        self.initial = copy.deepcopy(self.net.state_dict())
        self.optimizer, self.total_steps, self.step = None, 0, 0

    @property
    def versions(self) -> dict:
        return {"torch": torch.__version__, "mkldnn": torch.backends.mkldnn.is_available(),
                "threads": torch.get_num_threads()}

    def compile(self, total_steps: int) -> None:
        self.optimizer = make_optimizer(self.net, self.config)
        self.total_steps, self.step = total_steps, 0

    def reset(self) -> None:
        """The initial weights and BatchNorm statistics, no momentum, the schedule at step 0."""
        self.net.load_state_dict(self.initial)
        self.optimizer.state.clear()
        self.step = 0

    def _batch(self, x_nhwc: np.ndarray) -> torch.Tensor:
        # (B, 32, 32, 3) uint8 → (B, 3, 32, 32) float32, 0-255 as the Keras model takes it
        return torch.from_numpy(x_nhwc).permute(0, 3, 1, 2).to(torch.float32, memory_format=self.memory_format)

    def train(self, x: np.ndarray, y: np.ndarray) -> None:
        """One optimizer step per batch of ``config.batch_size`` (the last one may be smaller)."""
        self.net.train()
        for i in range(0, len(x), self.config.batch_size):
            lr = one_cycle(self.step, self.total_steps, self.config)
            for group in self.optimizer.param_groups:
                group["lr"] = lr * group["lr_scale"]
            logits = self.net(self._batch(x[i:i + self.config.batch_size]))
            target = torch.from_numpy(y[i:i + self.config.batch_size])
            loss = F.cross_entropy(logits, target, label_smoothing=self.config.label_smoothing)  # the mean, as Keras
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.step += 1

    def accuracy(self, x: np.ndarray, y: np.ndarray) -> float:
        self.net.eval()
        with torch.inference_mode():
            top1 = np.concatenate([self.net(self._batch(x[i:i + EVAL_BATCH])).argmax(1).numpy()
                                   for i in range(0, len(x), EVAL_BATCH)])
        return float(np.mean(top1 == y))
