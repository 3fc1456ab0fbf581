"""Training on several machines: tf.distribute's MultiWorkerMirroredStrategy, from TF_CONFIG.

Every worker runs the same ``cifar-train --distribute multiworker`` command. The chief (worker 0,
or the task of type "chief") decides the run: it opens the run folder, a new run or the
unfinished one there, and is the only worker that writes. At start it hands every other worker
its options (its seed, random unless given) and, once the model is built, its weights and
optimizer state: a restarted cluster resumes where the chief's run folder stands.

Reading TF_CONFIG needs no TensorFlow, so a bad cluster is refused before the 6-second import;
everything else imports TensorFlow inside the function that needs it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import threading
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from runtime.errors import CifarEdgeError, ExitCode

from . import runfolder
from .config import TrainConfig

DOCS = "docs/training.md, More machines"
EXAMPLE = ('TF_CONFIG=\'{"cluster": {"worker": ["10.0.0.1:12345", "10.0.0.2:12345"]}, '
           '"task": {"type": "worker", "index": 0}}\'')
CONFIG_BYTES = 4096  # room for the chief's TrainConfig as JSON (about 900 bytes)


class ClusterError(CifarEdgeError):
    """TF_CONFIG is missing or does not describe a cluster this worker belongs to."""


class WorkerLost(CifarEdgeError):
    """Another worker stopped answering: restarting every worker resumes the run."""

    exit_code = ExitCode.RETRY


class WorkerStopped(CifarEdgeError):
    """This worker got SIGTERM: it stops at once, and the others stop too."""

    exit_code = ExitCode.INTERRUPTED


@dataclass(frozen=True)
class Cluster:
    addresses: tuple[str, ...]  # "host:port" of every worker, the chief first
    rank: int  # this worker's place in ``addresses``
    name: str  # as TF_CONFIG says it: "worker 1", or "chief"

    @property
    def is_chief(self) -> bool:
        return self.rank == 0

    @property
    def size(self) -> int:
        return len(self.addresses)


def read_cluster(environ: Mapping[str, str] = os.environ) -> Cluster:
    """The cluster TF_CONFIG describes and this worker's place in it; a ClusterError (one line)
    when it is missing, not JSON, or names no task of its own cluster."""
    text = environ.get("TF_CONFIG", "").strip()
    if not text:
        raise ClusterError(f"--distribute multiworker needs TF_CONFIG on every worker, e.g. {EXAMPLE} "
                           f"(index 1 on the second machine; see {DOCS})")
    try:
        spec = json.loads(text)
    except ValueError as exc:
        raise ClusterError(f"TF_CONFIG is not JSON ({exc}); it should look like {EXAMPLE}") from None
    cluster = spec.get("cluster") if isinstance(spec, dict) else None
    if not isinstance(cluster, dict) or not isinstance(cluster.get("worker", []), list) or not (
            cluster.get("worker") or cluster.get("chief")):
        raise ClusterError(f'TF_CONFIG has no "cluster" with a list of "worker" addresses; it should look '
                           f"like {EXAMPLE}")
    other = sorted(set(cluster) - {"chief", "worker"})
    if other:
        raise ClusterError(f'TF_CONFIG\'s cluster has {", ".join(other)} tasks; --distribute multiworker trains '
                           'with "worker" tasks (and at most one "chief") only')
    chief, workers = list(cluster.get("chief", [])), list(cluster.get("worker", []))
    if len(chief) > 1:
        raise ClusterError(f'TF_CONFIG\'s cluster has {len(chief)} "chief" addresses; a cluster has at most one')
    for address in chief + workers:
        _check_address(address)
    task = spec.get("task")
    kind, index = (task.get("type"), task.get("index")) if isinstance(task, dict) else (None, None)
    jobs = {"chief": chief, "worker": workers}
    if kind not in jobs or not jobs[kind] or not isinstance(index, int) or isinstance(index, bool):
        raise ClusterError(f'TF_CONFIG has no "task" of this cluster (got {json.dumps(task)}); add e.g. '
                           '"task": {"type": "worker", "index": 0}, index 0 on the first worker, 1 on the next')
    if not 0 <= index < len(jobs[kind]):
        raise ClusterError(f'TF_CONFIG\'s task index {index} is out of range: the cluster has '
                           f'{len(jobs[kind])} "{kind}" addresses, so index 0 to {len(jobs[kind]) - 1}')
    rank = index if kind == "chief" else len(chief) + index
    return Cluster(tuple(chief + workers), rank, kind if kind == "chief" else f"worker {index}")


def _check_address(address) -> None:
    host, _, port = str(address).rpartition(":")
    if not (isinstance(address, str) and host and port.isdigit() and 0 < int(port) < 65536):
        raise ClusterError(f"TF_CONFIG address {address!r} is not HOST:PORT (e.g. 10.0.0.1:12345)")


def cluster_of(config: TrainConfig) -> Cluster | None:
    """This process's place in the cluster of a ``--distribute multiworker`` run (``read_cluster``,
    checked before TensorFlow); None for a run on one machine."""
    return read_cluster() if config.distribute == "multiworker" else None


# --- with TensorFlow --------------------------------------------------------------------------

def make_strategy():
    """MultiWorkerMirroredStrategy from TF_CONFIG. Create it before any other TensorFlow op: it
    starts this worker's server and waits until every worker has joined.

    TensorFlow's coordination service takes SIGTERM over while it starts (to tell a preemption
    handler this run does not use), so that SIGTERM would do nothing at all; once the strategy
    stands, SIGTERM stops this worker again (WorkerStopped), for the rest of the process."""
    _fix_keras_fit()
    import tensorflow as tf

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop_on_sigterm)
    return strategy


def _stop_on_sigterm(signum, frame):
    raise WorkerStopped("stopped by SIGTERM, without a mid-epoch checkpoint; the other workers stop too. Run the "
                        "command again on every worker: the chief resumes after its last saved epoch")


def share_from_chief(strategy, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The chief's ``arrays`` on every worker (each worker passes arrays of the same shapes and
    dtypes): one all-reduce to which only the chief's first replica adds its values. They travel
    as float64, which holds every value here exactly (float32 weights, int64 step counts, bytes)."""
    import tensorflow as tf

    @tf.function
    def chief_only(*tensors):
        ctx = tf.distribute.get_replica_context()
        first = tf.equal(ctx.replica_id_in_sync_group, 0)
        return ctx.all_reduce(tf.distribute.ReduceOp.SUM, [tf.where(first, t, tf.zeros_like(t)) for t in tensors])

    shared = strategy.run(chief_only, args=tuple(tf.constant(a, tf.float64) for a in arrays))
    return [np.asarray(strategy.experimental_local_results(t)[0]).astype(a.dtype) for t, a in zip(shared, arrays)]


def share_run(strategy, cluster: Cluster, config: TrainConfig, state: dict) -> tuple[TrainConfig, dict]:
    """The chief's config and the epoch it starts at, on every worker: the others train the
    chief's run (its seed, and on a resumed run the options it started with), not their own."""
    codes = np.zeros(CONFIG_BYTES, np.int32)  # the config as JSON, one byte per element
    if cluster.is_chief:
        text = json.dumps(asdict(config)).encode()
        codes[:len(text)] = np.frombuffer(text, np.uint8)
    codes, epoch = share_from_chief(strategy, [codes, np.array(state["epoch"], np.int64)])
    if cluster.is_chief:
        return config, state
    text = codes.astype(np.uint8).tobytes().rstrip(b"\0")
    return TrainConfig(**json.loads(text)), {**runfolder.NEW_STATE, "epoch": int(epoch)}


def data_fingerprint(*arrays: np.ndarray) -> np.ndarray:
    """(2 * len(arrays),) int64: each array's length and CRC-32, to check that every worker
    trains on the same images."""
    return np.array([v for a in arrays for v in (len(a), zlib.crc32(np.ascontiguousarray(a)))], np.int64)


def share_state(strategy, cluster: Cluster, model, split, weights: Path | None) -> None:
    """Every worker takes the chief's weights and optimizer state (the chief first loads
    ``weights``, its run's last.keras, when it resumes), after checking that all train on the
    same data (``split``, a ``train.fit.Split``)."""
    fingerprint = data_fingerprint(split.x_train, split.y_train, split.x_val, split.y_val)
    with strategy.scope():
        model.optimizer.build(model.trainable_variables)
    if cluster.is_chief and weights is not None:
        model.load_weights(weights)
    variables = [*model.weights, *model.optimizer.variables]
    shared = share_from_chief(strategy, [fingerprint, *(v.numpy() for v in variables)])
    if not np.array_equal(shared[0], fingerprint):
        raise CifarEdgeError(f"{cluster.name} has other training data than the chief (image counts and checksums "
                             f"{fingerprint.tolist()} against {shared[0].tolist()}): every worker needs the same "
                             f"dataset and the same --limit/--val-images (see {DOCS})")
    for variable, value in zip(variables, shared[1:]):
        variable.assign(value)


@contextlib.contextmanager
def lost_workers_as_error(cluster: Cluster | None, run_dir: Path):
    """Turn TensorFlow's errors for a worker that died or stopped answering (found by the
    heartbeats of TensorFlow's coordination service, about 10 s) into a WorkerLost that says
    how to go on. Without a cluster, nothing changes."""
    if cluster is None:
        yield
        return
    import tensorflow as tf

    try:
        yield
    except (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.DeadlineExceededError,
            tf.errors.CancelledError) as exc:
        first = (re.sub(r"\{\{.*?\}\}\s*", "", str(exc.message)).strip().splitlines() or [""])[0][:200]
        where = run_dir if cluster.is_chief else "its run folder"
        raise WorkerLost(f"{cluster.name} lost the cluster ({type(exc).__name__}: {first}). Restart every worker "
                         f"with the same command: the chief resumes from {where} after its last saved epoch") from None


def _fix_keras_fit() -> None:
    """Keras 3's TensorFlow trainer (3.15 here) cannot ``fit`` under a multi-worker
    MultiWorkerMirroredStrategy (keras-team/keras#20585, tensorflow/tensorflow#72388): ``fit``
    all-reduces its first batch across workers only to learn its shapes, through
    ``strategy.reduce``, which takes one tensor and gets an (x, y) tuple; and each step averages
    its scalar logs over workers "along axis 0", which scalars do not have. For this process,
    the shapes come from this worker's own batch and scalar logs are averaged without an axis;
    nothing changes for other strategies."""
    from keras import tree
    from keras.src.backend.tensorflow import trainer

    if getattr(trainer, "_cifar_edge_fixed", False):
        return
    needed = [(trainer, "reduce_per_replica"), (trainer, "_collective_all_reduce_multi_worker"),
              (trainer.TensorFlowTrainer, "_maybe_symbolic_build"), (trainer.TensorFlowTrainer, "_symbolic_build")]
    if not all(hasattr(owner, name) for owner, name in needed):
        raise CifarEdgeError("this Keras version's TensorFlow trainer is not the one --distribute multiworker "
                             "was written for (Keras 3.15); train with --distribute none or mirrored")
    reduce_per_replica = trainer.reduce_per_replica
    maybe_symbolic_build = trainer.TensorFlowTrainer._maybe_symbolic_build

    def reduce_logs(values, strategy, reduction):
        if reduction in ("auto", "mean") and trainer._collective_all_reduce_multi_worker(strategy):
            return tree.map_structure(
                lambda v: strategy.reduce("MEAN", v, axis=0 if v.shape.rank else None), values)
        return reduce_per_replica(values, strategy, reduction)

    def build_from_own_batch(self, iterator=None, data_batch=None):
        strategy = self._distribute_strategy
        if iterator is None or not trainer._collective_all_reduce_multi_worker(strategy):
            return maybe_symbolic_build(self, iterator=iterator, data_batch=data_batch)
        for _, _, batches in iterator:
            data_batch = tree.map_structure(lambda v: strategy.experimental_local_results(v)[0], next(batches))
            break
        with strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    trainer.reduce_per_replica = reduce_logs
    trainer.TensorFlowTrainer._maybe_symbolic_build = build_from_own_batch
    trainer._cifar_edge_fixed = True
