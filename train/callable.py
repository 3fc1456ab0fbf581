"""Submodules named as the function they hold (``train.fit.fit``, ``train.evaluate.evaluate``).

Once ``train.fit`` is imported, Python binds the submodule over the package's lazy ``fit``
function, and ``from train import fit`` gives the module. ``callable_module(__name__)`` at the
end of such a submodule makes calling the module call its function, so the name works either way.
"""

from __future__ import annotations

import sys
import types


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        return getattr(self, self.__name__.rsplit(".", 1)[1])(*args, **kwargs)


def callable_module(name: str) -> None:
    """Make the module ``name`` call its namesake function when called."""
    sys.modules[name].__class__ = _CallableModule
