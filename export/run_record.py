"""What an export reads of the model's run, read once and handed to every stage.

A model that cifar-train made sits in its run folder beside the config.json the run wrote: the
class names, the TrainConfig (so which training images it held out, ``train.split``), the data
it trained on and, for a ``DIR/<class>/`` folder, its test files. ``RunRecord.beside`` reads
that file once; ``with_data`` then reads the splits the stages need, once, at the model's input
size. The stages take what they need from the record: the class names (``convert.load_keras``),
the test split (``parity.from_test_split``), INT8's calibration images
(``quantize.calibration_from_train``) and the held-out training images a temperature is fitted
on (``calibrate.held_out_images``).

A model from elsewhere has no config.json beside it: the record says so, and every stage does
what it does without one.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

from runtime.errors import DataError
from runtime.model.contract import InputContract
from train.config import TrainConfig
from train.data import ImageDataset, load_dataset

CONFIG = "config.json"


@dataclass(frozen=True)
class RunRecord:
    """A model's run as an export reads it, each part once: its config.json (``beside``), then
    the images the stages need (``with_data``, which returns the record with them)."""

    model_path: Path | None  # the model file (None: data read for no model in particular)
    saved: dict | None = None  # config.json as the run wrote it (train.fit); None: none beside the model
    unreadable: str | None = None  # why a config.json that is there could not be read
    train: TrainConfig | None = None  # what the run trained with, from ``saved``
    # --- set by with_data ---
    contract: InputContract | None = None  # the model's input: every image in ``dataset`` is at its size
    data: str | os.PathLike | None = None  # --data: the dataset the model trained on (None: not given)
    source: str | os.PathLike | None = None  # where ``dataset`` was read: ``data``, else the data the run recorded
    splits: tuple[str, ...] = ()  # the splits of ``dataset`` read; the others are empty, or absent
    dataset: ImageDataset | None = None  # None: no stage needed any image

    @classmethod
    def beside(cls, model_path: str | os.PathLike | None) -> "RunRecord":
        """The record of the run whose folder holds ``model_path``: its config.json, read here
        (and only here); an empty record for a model with none beside it."""
        if model_path is None:
            return cls(None)
        model_path = Path(model_path)
        try:
            saved = json.loads((model_path.parent / CONFIG).read_text())
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return cls(model_path)
        except (OSError, ValueError) as exc:
            return cls(model_path, unreadable=str(exc))
        try:
            return cls(model_path, saved, train=TrainConfig.from_dict(saved))
        except (AttributeError, TypeError):  # not the object train.fit writes
            return cls(model_path, saved if isinstance(saved, dict) else None,
                       unreadable="not the config of a run (no TrainConfig inside)")

    @property
    def run_dir(self) -> Path | None:
        return None if self.model_path is None else self.model_path.parent

    @property
    def config_path(self) -> Path | None:
        return None if self.model_path is None else self.run_dir / CONFIG

    @property
    def class_names(self) -> object:
        """The ``class_names`` the run recorded, as config.json holds them (None: none)."""
        return (self.saved or {}).get("class_names")

    @property
    def test_files(self) -> list[str] | None:
        """The test files a run on a ``DIR/<class>/`` folder recorded, else None."""
        split = (self.saved or {}).get("split")
        return split.get("test_files") if isinstance(split, dict) else None

    @property
    def training(self) -> ImageDataset | None:
        """The dataset, when its training split was read (its test split maybe too)."""
        return self.dataset if "train" in self.splits else None

    def training_source(self, data: str | os.PathLike | None) -> str | os.PathLike | None:
        """Where the training images come from: ``data``, else the data the run recorded."""
        return data if data is not None else (self.saved or {}).get("data")

    def held_out_unknown(self, data: str | os.PathLike | None) -> str | None:
        """Why the training images this run held out cannot be found with ``data`` (None: they
        can). A DataError when its config.json is there but cannot be read."""
        if self.unreadable is not None:
            raise DataError(f"{self.config_path}: cannot read the run's config ({self.unreadable})")
        if self.saved is None:
            name = self.model_path.name if self.model_path is not None else "the model"
            return f"no config.json beside {name}, so which training images the model never saw is unknown"
        if self.train.val_images == 0:
            return "the run validated on the test split (--val-images 0): no training image was held out"
        if self.training_source(data) is None:
            return "no --data and the run does not record its data"
        return None

    def with_data(self, data: str | os.PathLike | None, contract: InputContract,
                  splits: tuple[str, ...]) -> "RunRecord":
        """This record with the ``splits`` that stages need read once, at ``contract``'s size: from
        ``data``, or for the training split alone the data the run recorded; for a
        ``DIR/<class>/`` folder with the test files the run recorded."""
        source = data if "test" in splits else self.training_source(data)
        if splits and source is None:
            raise ValueError(f"no data to read the {' and '.join(splits)} split from")
        dataset = (load_dataset(source, splits=splits, input_size=contract.height, test_files=self.test_files)
                   if splits else None)
        return replace(self, contract=contract, data=data, source=source, splits=tuple(splits), dataset=dataset)

