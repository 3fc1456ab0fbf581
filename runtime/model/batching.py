"""The one loop that runs a model over an array in batches (numpy only)."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np


def predict_in_batches(predict: Callable[[np.ndarray], np.ndarray], inputs: np.ndarray | Sequence,
                       batch_size: int, on_batch: Callable[[int], object] | None = None) -> np.ndarray:
    """``predict`` on ``inputs[i:i + batch_size]`` for each batch in order; the outputs
    concatenated along the first axis, e.g. (N, 32, 32, 3) -> (N, 10).

    ``on_batch(n)`` is called after each batch with its size (a progress bar's ``update``).
    With no inputs ``predict`` is not called and the result is an empty float32 array.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    outputs = []
    for start in range(0, len(inputs), batch_size):
        chunk = inputs[start:start + batch_size]
        outputs.append(np.asarray(predict(chunk)))
        if on_batch is not None:
            on_batch(len(chunk))
    return np.concatenate(outputs) if outputs else np.empty((0,), np.float32)
