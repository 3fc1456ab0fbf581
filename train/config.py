"""Training configuration: one frozen dataclass, saved as config.json in the run folder."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path


@dataclass(frozen=True)
class TrainConfig:
    model: str = "default"  # a name in train.models.MODELS
    epochs: int = 24  # full passes over the training split
    batch_size: int = 512  # images per step, summed over replicas
    lr: float = 0.4  # peak learning rate of the one-cycle schedule (SGD, mean loss)
    momentum: float = 0.9  # Nesterov momentum
    weight_decay: float = 5e-4  # L2 on conv/dense kernels, PyTorch convention (grad += wd * w)
    warmup: float = 0.2  # fraction of steps spent rising linearly to the peak lr
    final_lr: float = 0.02  # fraction of peak lr at the last step (linear decay from the peak)
    label_smoothing: float = 0.2  # spreads 20% of the target over all classes
    translate: int = 2  # pixels of random pad-and-crop translation (reflect padding)
    flip: bool = True  # random horizontal flips
    val_images: int = 5000  # held out of train for picking the best epoch (0: use the test split)
    seed: int | None = None  # None: a random seed, recorded in config.json
    distribute: str = "none"  # "none" or "mirrored"
    train_limit: int | None = None  # use only this many training images (smoke runs)
    test_limit: int | None = None  # use only this many test images (smoke runs)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def load(cls, path: Path) -> "TrainConfig":
        raw = json.loads(Path(path).read_text())
        raw = raw.get("config", raw)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})

    def with_(self, **changes) -> "TrainConfig":
        return replace(self, **changes)
