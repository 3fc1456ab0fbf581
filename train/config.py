"""Training configuration: one frozen dataclass, saved as config.json in the run folder."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from runtime.errors import OptionError

MIN_INPUT_SIZE = 16  # pixels: the networks pool three times (16 leaves `default` 1x1 for its global pool)
MAX_INPUT_SIZE = 512  # pixels: 50,000 images of 512x512 are 39 GB decoded


@dataclass(frozen=True)
class TrainConfig:
    model: str = "default"  # a name in train.models.MODELS
    input_size: int = 32  # pixels, square: every image is centre-cropped and resized to it
    # Start from a saved model's features: "shipped" (train/shipped/default/model.keras) or a
    # .keras path; every layer but the final "logits" is copied. None: from scratch.
    init: str | None = None
    # The optimizer follows airbench94 (KellerJordan/cifar10-airbench), translated from its
    # summed-loss PyTorch form to Keras' mean loss, and run for longer on a narrower network.
    # Full passes over the training split. 100: the shipped model, 70.2 minutes of steps here
    # (41 s per epoch with bfloat16 on 2 cores; this machine also has spells of 82 s epochs,
    # idle or not, and all 100 at 82 s would take 137 minutes). Over seeds of a GPU port, 70
    # epochs reach 89.96 +- 0.19% (8 seeds), 100 epochs 90.34% (2); the shipped 100-epoch run
    # 90.47% (docs/training.md, "Seed spread and schedule length").
    epochs: int = 100
    # Images per step, summed over replicas; config.json records the batch a run trained with.
    # "auto": RECIPE_BATCH, halved until an epoch has 10 steps, down to 8 images
    # (train.fit.batch_for_steps), the peak ``lr`` scaled with it. None (the fine-tuning
    # recipe's): sized to the data the same way from AUTO_BATCH_MAX, ``lr`` as given. A
    # number: that batch, and ``lr``, as given.
    batch_size: int | str | None = "auto"
    # Peak learning rate (SGD on the mean loss); with batch_size "auto", the rate for RECIPE_BATCH
    # images, scaled linearly to a smaller batch (train.fit.size_batch says why).
    lr: float = 1.5
    momentum: float = 0.85  # Nesterov momentum
    weight_decay: float = 1.33e-3  # L2 on conv/dense kernels, PyTorch convention (grad += wd * w)
    bias_lr_scale: float = 64.0  # BatchNorm biases learn this many times faster (airbench's bias_scaler)
    warmup: float = 0.23  # fraction of steps rising linearly from start_lr to the peak
    start_lr: float = 0.2  # fraction of the peak lr at step 0
    final_lr: float = 0.07  # fraction of the peak lr at the last step (linear decay from the peak)
    lookahead: bool = True  # every 5 steps, pull weights to their running average (airbench)
    label_smoothing: float = 0.2  # spreads 20% of the target over all classes
    translate: int = 2  # pixels of random pad-and-crop translation (reflect padding)
    flip: bool = True  # horizontal flips
    # airbench's flip: each image gets one random flip, inverted every other epoch, so it is
    # seen both ways in turn (False: a fresh coin per image per epoch).
    alternate_flip: bool = True
    # airbench's whitening bias: the fixed whitening conv gets a bias, trained for this many
    # epochs, then frozen (0: no bias is trained).
    whiten_bias_epochs: int = 3
    # Weight decay on BatchNorm biases too, scaled down by bias_lr_scale so that their decay per
    # step equals the kernels' (airbench); False: BatchNorm biases are not decayed.
    bias_decay: bool = True
    # The model a run ends with is the mean of its last N epochs' weights, BatchNorm statistics
    # included (train.average), N at most an eighth of the run (``averaged_epochs``); 0 or 1:
    # the last epoch's weights. 8 of 100 in the shipped run: 90.47% on the test split against
    # 90.25% for its last epoch; 8 of 70: +0.26 point in an earlier shipped run but -0.21 for
    # an 80-epoch run and about 0 on average over seeds (docs/training.md, "Seed spread and
    # schedule length"). Kept: it has not hurt a shipped run and brought INT8 closer to FP32.
    average_last: int = 8
    # Keep the float32 weights of the last N epochs in snapshots/epoch-NNN.weights.h5 (0: none;
    # average_last keeps its own), to measure averages afterwards (scripts/tail_average.py).
    snapshots: int = 0
    cutout: int = 12  # side of a random square painted the mean colour in each image (0: off)
    # "auto": mixed_bfloat16 where the CPU has bfloat16 instructions (avx512_bf16/amx_bf16;
    # twice as fast as float32 on this project's training machine), else float32.
    # The saved model.keras is always float32, whatever trained it.
    precision: str = "auto"
    # Held out of train for picking the best epoch. None: 10% of the training split, at most
    # 2,000 (train.split.auto_val_images); 0: validate on the test split instead.
    val_images: int | None = None
    seed: int | None = None  # None: a random seed, recorded in config.json
    distribute: str = "none"  # "none", "mirrored" (one machine) or "multiworker" (TF_CONFIG's cluster)
    # Train to a time budget (--time): seconds for the whole command. The first steps measure
    # this machine, then ``steps`` and ``epochs`` are planned to end in time (train.budget).
    time_budget: float | None = None
    # Optimizer steps in all, when a run ends inside an epoch (a planned budget); None: every
    # epoch in full. The learning-rate curve spans exactly these steps.
    steps: int | None = None
    train_limit: int | None = None  # use only this many training images (smoke runs)
    test_limit: int | None = None  # use only this many test images (smoke runs)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def load(cls, path: Path) -> "TrainConfig":
        """The config saved in ``path``; a field it predates takes the value that reproduces
        the run as it was trained (``LEGACY``), not today's default."""
        return cls.from_dict(json.loads(Path(path).read_text()))

    @classmethod
    def from_dict(cls, saved: dict) -> "TrainConfig":
        """``load`` on a config.json already read (its "config", or the whole of it)."""
        raw = saved.get("config", saved)
        known = {f.name for f in fields(cls)}
        return cls(**{**LEGACY, **{k: v for k, v in raw.items() if k in known}})

    def check(self) -> None:
        """One-line OptionErrors for settings no run can train with (checked before TensorFlow)."""
        batch = self.batch_size
        if batch not in (None, "auto") and (not isinstance(batch, int) or isinstance(batch, bool) or batch < 1):
            raise OptionError(f"--batch-size {self.batch_size!r}: give a number of images, 1 or more "
                              "(or leave it out: sized to the data)")
        if not MIN_INPUT_SIZE <= self.input_size <= MAX_INPUT_SIZE:
            raise OptionError(f"--input-size {self.input_size}: choose {MIN_INPUT_SIZE} to {MAX_INPUT_SIZE} pixels")
        if self.cutout > self.input_size:
            raise OptionError(f"--cutout {self.cutout} is larger than the {self.input_size}x{self.input_size} "
                              f"images; use at most {self.input_size}")
        if self.time_budget is not None and self.distribute == "multiworker":
            raise OptionError("--time cannot plan a multi-worker run (each worker would measure its own speed); "
                              "give --epochs instead")

    def total_steps(self, steps_per_epoch: int) -> int:
        """Optimizer steps in the whole run: ``steps`` when planned, else every epoch in full."""
        return self.steps if self.steps is not None else steps_per_epoch * self.epochs

    def epoch_steps(self, epoch: int, steps_per_epoch: int) -> int:
        """Optimizer steps in epoch ``epoch`` (0-based): all of them but in a planned run's last."""
        return max(0, min(steps_per_epoch, self.total_steps(steps_per_epoch) - epoch * steps_per_epoch))

    @property
    def averaged_epochs(self) -> int:
        """How many last epochs the run's model averages: ``average_last``, but no more than an
        eighth of the run (a short run's early epochs are far from its end); below 2, none."""
        k = min(self.average_last, self.epochs // 8)
        return k if k >= 2 else 0

    @property
    def bias_weight_decay(self) -> float:
        """The L2 on BatchNorm biases: ``weight_decay`` scaled down by ``bias_lr_scale`` (so their
        decay per step equals the kernels'), or 0 without ``bias_decay``."""
        return self.weight_decay / self.bias_lr_scale if self.bias_decay else 0.0

    def with_(self, **changes) -> "TrainConfig":
        return replace(self, **changes)

    @classmethod
    def for_model(cls, model: str, **options) -> "TrainConfig":
        """The defaults, then ``model``'s recipe (``RECIPES``), then ``FINE_TUNE`` when it
        starts from a saved model (``init``), then every option that is not None."""
        given = {k: v for k, v in options.items() if v is not None}
        fine_tune = FINE_TUNE if given.get("init") else {}
        return cls(**{"model": model, **RECIPES.get(model, {}), **fine_tune, **given})


# What a model trains best with where it differs from the defaults above (which are the
# shipped `default` model's recipe).
RECIPES: dict[str, dict] = {
    # About 2 minutes of training on 2 CPU cores for ~80% on CIFAR-10: the first run, or a
    # quick look at a new dataset. Fewer epochs have no room for cutout's regularisation.
    "quick": {"epochs": 6, "cutout": 0, "average_last": 0},
}


# Starting from a saved model's features (--init), typically on a few hundred images a class:
# batches of at most 64, sized to the data (None; the recipe's 1,024 would be one step an epoch,
# and a fixed 64 seven steps on 400 images, which the trainer warns about), and a peak rate low
# enough not to wash the features out. On 900 images of 3 classes, 10 epochs (docs/training.md,
# "Your own classes"): 0.01 held validation at 86-92% from the second epoch on; 0.03 at 82-91%,
# for 2-4 points less on test; at 0.1 it fell from 91% to 53% in the second epoch and ended at
# 80%; 0.003 was still climbing at the tenth.
FINE_TUNE: dict[str, object] = {"epochs": 10, "batch_size": None, "lr": 0.01, "average_last": 0}
AUTO_BATCH_MAX = 64  # images per step at most when batch_size is None (577+ training images: 64; 400: 32)
# Images per step of the from-scratch recipe (batch_size "auto"), on 9,217 training images or
# more (full CIFAR-10: 45,000 after validation, 44 steps an epoch); 1,800 images get 128.
RECIPE_BATCH = 1024


# Fields added after runs were already saved, with the value those runs trained with.
LEGACY: dict[str, object] = {"alternate_flip": False, "whiten_bias_epochs": 0, "bias_decay": False,
                          "average_last": 0}
