"""runtime.model.batching.predict_in_batches: the one loop over an array in batches."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.model.batching import predict_in_batches


def test_batches_in_order_and_concatenated():
    inputs = np.arange(10, dtype=np.float32).reshape(10, 1)
    seen, done = [], []

    def predict(chunk):
        seen.append(len(chunk))
        return np.hstack([chunk, chunk * 2])  # (n, 1) -> (n, 2)

    out = predict_in_batches(predict, inputs, 4, on_batch=done.append)
    assert seen == [4, 4, 2] and done == [4, 4, 2]
    np.testing.assert_array_equal(out, np.hstack([inputs, inputs * 2]))


def test_lists_and_empty_inputs():
    assert predict_in_batches(lambda c: np.array([len(x) for x in c]), ["a", "bb", "ccc"], 2).tolist() == [1, 2, 3]
    calls = []
    empty = predict_in_batches(calls.append, np.zeros((0, 3)), 8)
    assert calls == [] and empty.shape == (0,)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        predict_in_batches(calls.append, np.zeros((2, 3)), 0)
