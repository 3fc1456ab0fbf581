"""Before a run trains: what refuses it, checked without TensorFlow and creating nothing.

``train.fit.fit`` makes these checks first, so a notebook gets the same one-line errors as the
command line; cifar-train makes them before it imports ``train.fit`` (a 6-second TensorFlow
import), so that a refused command answers at once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from . import runfolder
from .config import TrainConfig
from .data import ImageDataset, check_data_path
from .models import check_init

if TYPE_CHECKING:
    from .multiworker import Cluster


def check_run(config: TrainConfig, run_dir: str | os.PathLike, data: str | os.PathLike | ImageDataset | None = None,
              resume: bool = False, overwrite: bool = False, cluster: Cluster | None = None) -> bool:
    """Refuse, in one line that says the fix, a run that ``fit`` could not start; return whether
    it resumes the run in ``run_dir``: asked to (``resume``), or on the chief of a ``cluster``
    (``train.multiworker.cluster_of``), an unfinished multi-worker run is there, which it resumes
    whatever ``overwrite`` says (a cluster manager restarts a failed worker with its original
    command). A new run's options, data and --init come first (a missing dataset is the more
    basic problem), then the run folder, which a worker other than the chief never opens."""
    if not resume:
        config.check()
        if not isinstance(data, ImageDataset):
            check_data_path(data)
        if config.init is not None:
            check_init(config.init, config.model)
    if cluster is not None and not cluster.is_chief:
        return False
    resume = resume or (cluster is not None and runfolder.unfinished_multiworker_run(Path(run_dir)))
    if resume:
        runfolder.check_resumable(Path(run_dir), multiworker=cluster is not None)
    else:
        runfolder.check_new_run(Path(run_dir), overwrite)
    return resume
