"""Loading a saved Keras model, ours or anyone's: ``.keras`` archives and legacy ``.h5`` files.

Safe mode by default (no code from the file runs). A model with layers of its own needs their
code (``custom_objects``: a Python file, or a dict); a ``Lambda`` layer carries Python byte
code, which Keras runs only with ``safe_mode=False``. When loading fails, the model's saved
config says which of these it needs, so the error names the option instead of quoting Keras.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import re
import sys
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Mapping

from runtime.errors import ModelError, OptionError, summary

if TYPE_CHECKING:
    import keras

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"  # the first 8 bytes of every HDF5 file Keras writes
H5_SUFFIXES = (".h5", ".hdf5")  # what keras.saving.load_model reads with its legacy loader
CUSTOM_OBJECTS = "custom_objects"  # the dict a --custom-objects file may define


def read_model_config(path: str | os.PathLike) -> dict:
    """The saved architecture (Keras' config dict) of a ``.keras`` archive or a legacy ``.h5``
    model, without Keras; one-line ModelErrors for a missing file, a file that is neither, and a
    damaged one."""
    path = _existing_file(path)
    with open(path, "rb") as fh:
        if fh.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE:
            return read_h5_config(path)
    if path.suffix in H5_SUFFIXES and zipfile.is_zipfile(path):
        raise ModelError(f"{path}: a .keras archive named {path.suffix}: rename it to {path.stem}.keras")
    return read_keras_config(path)


def _existing_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path}: no such file")
    if path.is_dir():
        raise ModelError(f"{path}: is a directory, not a .keras model file")
    return path


def read_h5_config(path: Path) -> dict:
    """The ``model_config`` of a legacy HDF5 model (what ``model.save("model.h5")`` writes)."""
    import h5py

    if path.suffix not in H5_SUFFIXES:
        raise ModelError(f"{path}: a legacy HDF5 model named {path.suffix or 'without a suffix'}: "
                         f"rename it to {path.stem}.h5")
    try:
        with h5py.File(path, "r") as fh:
            config = fh.attrs.get("model_config")
    except OSError as exc:
        raise ModelError(f"{path}: corrupt HDF5 file ({summary(exc)})") from None
    if config is None:
        raise ModelError(f"{path}: an HDF5 file of weights only, no model (save_weights writes these): "
                         "save the whole model with model.save('model.keras') or model.save('model.h5')")
    try:
        return json.loads(config.decode() if isinstance(config, bytes) else config)
    except ValueError as exc:
        raise ModelError(f"{path}: corrupt HDF5 model (model_config: {exc})") from None


def read_keras_config(path: str | os.PathLike) -> dict:
    """The config.json of a ``.keras`` archive, without Keras; one-line ModelErrors for a missing
    file, a file that is not a Keras archive and a damaged one."""
    path = _existing_file(path)
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as fh:
            if fh.read(2) == b"PK":  # a zip header without a readable directory: truncated
                raise ModelError(f"{path}: corrupt .keras archive (truncated or damaged zip file)")
        raise ModelError(f"{path}: not a Keras model (expected a .keras zip archive or a legacy .h5 file, "
                         "as model.save('model.keras') or model.save('model.h5') writes)")
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            bad = archive.testzip()
            config = archive.read("config.json") if "config.json" in names else None
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ModelError(f"{path}: corrupt .keras archive ({exc})") from None
    if config is None:
        raise ModelError(f"{path}: not a Keras model (no config.json in the archive)")
    if bad is not None:
        raise ModelError(f"{path}: corrupt .keras archive (bad CRC in {bad})")
    try:
        return json.loads(config)
    except ValueError as exc:
        raise ModelError(f"{path}: corrupt .keras archive (config.json: {exc})") from None


def import_custom_objects(path: str | os.PathLike) -> dict[str, object]:
    """Run a Python file of the user's layer code and return what it defines, by name: its
    module-level classes and functions, and its ``custom_objects`` dict if it has one (which
    wins). Classes it registers (``@keras.saving.register_keras_serializable``) are found by
    Keras through the registry as well."""
    path = Path(path)
    if not path.is_file():
        raise OptionError(f"--custom-objects {path}: no such file (expected the Python file defining the "
                          "model's own layers)")
    if path.suffix != ".py":
        raise OptionError(f"--custom-objects {path}: expected a Python file (.py)")
    name = "cifar_edge_custom_objects_" + re.sub(r"\W", "_", path.stem)  # never shadows a real module
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    sys.path.insert(0, str(path.resolve().parent))  # so it can import its neighbours
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the user's code: any error it raises is theirs to fix
        sys.modules.pop(name, None)
        raise ModelError(f"--custom-objects {path}: importing it failed ({type(exc).__name__}: "
                         f"{summary(exc)})") from None
    finally:
        sys.path.remove(str(path.resolve().parent))
    explicit = getattr(module, CUSTOM_OBJECTS, {})
    if not isinstance(explicit, Mapping):
        raise ModelError(f"--custom-objects {path}: its {CUSTOM_OBJECTS} is a {type(explicit).__name__}, "
                         "expected a dict of name: class or function")
    defined = {key: value for key, value in vars(module).items()
               if (inspect.isclass(value) or inspect.isfunction(value)) and value.__module__ == name}
    return {**defined, **explicit}


def load_keras_model(path: str | os.PathLike, *, custom_objects: str | os.PathLike | Mapping | None = None,
                     safe_mode: bool = True) -> "keras.Model":
    """Load a ``.keras`` archive or a legacy ``.h5`` model, by default in Keras' safe mode (no
    code from the file runs). ``custom_objects``: a Python file (``import_custom_objects``) or a
    dict of the model's own layers. One-line ModelErrors for a missing, foreign or damaged file,
    and for a model that needs its layers' code or ``safe_mode=False``, naming the option."""
    path = Path(path)
    config = read_model_config(path)

    from . import optim  # noqa: F401  (registers the schedule and optimizer a checkpoint names)
    from .quiet_import import import_keras

    keras = import_keras()
    source = None
    if custom_objects is not None and not isinstance(custom_objects, Mapping):
        source, custom_objects = Path(custom_objects), import_custom_objects(custom_objects)
    try:
        return keras.saving.load_model(path, custom_objects=custom_objects, compile=False, safe_mode=safe_mode)
    except Exception as exc:  # Keras raises ValueError/TypeError/OSError/zip errors alike
        raise _load_failure(keras, path, config, exc, dict(custom_objects or {}), source, safe_mode) from None


def _saved_layers(config: dict) -> Iterator[dict]:
    """Every layer entry of a saved model config, those of nested models included."""
    inner = config.get("config")
    for entry in inner.get("layers", []) if isinstance(inner, dict) else []:
        if isinstance(entry, dict):
            yield entry
            yield from _saved_layers(entry)


def _unknown_layers(keras, config: dict, custom_objects: dict) -> list[str]:
    """Names of the saved layers that are neither Keras' own nor resolvable from
    ``custom_objects`` or Keras' registry."""
    unknown = set()
    for entry in _saved_layers(config):
        class_name = str(entry.get("class_name", ""))
        name = str(entry.get("registered_name") or class_name)
        module = entry.get("module")  # .keras archives say where a class lives; .h5 files do not
        builtin = module.startswith("keras") if isinstance(module, str) else (
            hasattr(keras.layers, class_name) or class_name in ("Sequential", "Functional", "Model"))
        if not builtin and keras.saving.get_registered_object(name, custom_objects) is None \
                and class_name not in custom_objects:
            unknown.add(name)
    return sorted(unknown)


def _load_failure(keras, path: Path, config: dict, exc: Exception, custom_objects: dict, source: Path | None,
                  safe_mode: bool) -> ModelError:
    """The one-line error for a model Keras could not load, naming what it needs."""
    unknown = _unknown_layers(keras, config, custom_objects)
    lambdas = [str(e.get("config", {}).get("name", "?")) for e in _saved_layers(config)
               if e.get("class_name") == "Lambda"] if safe_mode else []
    if not unknown and not lambdas:
        return ModelError(f"{path}: cannot load the Keras model ({summary(exc)})")
    needs = []
    if unknown:
        names = ", ".join(unknown)
        if source is None:
            needs.append(f"the model uses layers Keras does not know ({names}): pass --custom-objects FILE.py, "
                         "a Python file that defines them (classes decorated with "
                         "@keras.saving.register_keras_serializable, or a dict named custom_objects)")
        else:
            needs.append(f"--custom-objects {source} does not define {names}, which the model uses: add them "
                         "to it (a class of that name, or an entry in its custom_objects dict)")
    if lambdas:
        needs.append(f"the model has Lambda layers ({', '.join(lambdas)}), whose Python code Keras runs only from "
                     "a file you trust: if you trust this one, pass --unsafe-deserialization")
    return ModelError(f"{path}: {'; and '.join(needs)}")
