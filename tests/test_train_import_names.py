"""``from train import fit`` (and ``evaluate``) is callable whether or not the submodule of the
same name was imported first (Python then binds the module over the package's function)."""

from __future__ import annotations

import pytest
from helpers import requires_tf


@requires_tf
@pytest.mark.parametrize("name", ["fit", "evaluate"])
def test_the_package_name_calls_the_function_after_the_submodule_loads(name, monkeypatch):
    import importlib

    module = importlib.import_module(f"train.{name}")  # what cifar-train, export or a notebook cell did
    import train

    got = getattr(train, name)
    assert got is module  # the submodule took the name, as Python does ...
    calls = []
    monkeypatch.setattr(module, name, lambda *a, **k: calls.append((a, k)) or "called")
    assert got("config", out="runs/x") == "called"  # ... and calling it calls the function
    assert calls == [(("config",), {"out": "runs/x"})]
    from train import fit, evaluate  # noqa: F401  the names a notebook imports

    assert callable(fit) and callable(evaluate)
