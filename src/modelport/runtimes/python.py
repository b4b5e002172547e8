"""Models written as Python code: a ``model.py`` with a class that has ``load`` and ``predict``.

    class Model:
        signature = {"inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 4]}],
                     "outputs": [{"name": "y", "dtype": "float32", "shape": [-1]}]}

        def load(self, path):          # path: the model's folder (optional parameter)
            self.scale = 2.0

        def predict(self, batch):      # dict of name -> array, one row per sample
            return {"y": batch["x"].sum(axis=1) * self.scale}

The class attribute ``signature`` is optional when the model is imported with a sample input,
from which the signature is inferred. This is the place for pre- and post-processing around
another model, like TorchServe handlers or MLServer custom runtimes.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import inspect
import itertools
import sys
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from modelport.errors import ModelLoadError, PredictionError, UntrustedArtifactError
from modelport.signature import Signature

ENTRY_FILE = "model.py"

_package_ids = itertools.count()


def refuse_code(folder: Path, trust_code: bool) -> None:
    """Raise UntrustedArtifactError unless ``trust_code``: loading a code model runs its code."""
    if not trust_code:
        raise UntrustedArtifactError(
            f"{folder} is a code model: its {ENTRY_FILE} is Python that runs, with all your "
            "permissions, when the model is imported or loaded. Load it only if you wrote it or "
            "trust its source: pass trust_code=True (CLI: --trust-code)"
        )


class _SourceOnlyLoader(importlib.machinery.SourceFileLoader):
    """Compiles from the verified source every time: no __pycache__ is read or written.

    A cached .pyc is not covered by the manifest's hashes, so trusting one would let changed
    code run under a valid sha256.
    """

    def path_stats(self, path: str) -> Mapping[str, Any]:
        raise OSError("bytecode cache disabled for code models")


class _CodeModelFinder(importlib.abc.MetaPathFinder):
    """Finds the modules of loaded code models: each model folder is its own package."""

    def __init__(self) -> None:
        self.folders: dict[str, Path] = {}

    def find_spec(
        self, fullname: str, path: Any = None, target: Any = None
    ) -> importlib.machinery.ModuleSpec | None:
        package, _, rest = fullname.partition(".")
        folder = self.folders.get(package)
        if folder is None or not rest:
            return None
        base = folder.joinpath(*rest.split("."))
        for file, is_package in ((base.with_suffix(".py"), False), (base / "__init__.py", True)):
            if file.is_file() and folder in file.resolve().parents:
                return importlib.util.spec_from_file_location(
                    fullname,
                    file,
                    loader=_SourceOnlyLoader(fullname, str(file)),
                    submodule_search_locations=[str(file.parent)] if is_package else None,
                )
        return None


_FINDER = _CodeModelFinder()


def _import(folder: Path) -> ModuleType:
    """Import ``folder/model.py`` as ``<unique package>.model``; helpers import relatively."""
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)
    # A unique package per load, so two versions of one model never share a module.
    package = f"modelport_code_model_{next(_package_ids)}"
    module = ModuleType(package)
    module.__path__ = [str(folder)]
    sys.modules[package] = module
    _FINDER.folders[package] = folder.resolve()
    path = folder / ENTRY_FILE
    try:
        return importlib.import_module(f"{package}.model")
    except Exception as exc:
        _forget(package)
        hint = ""
        missing = getattr(exc, "name", None)
        if (
            isinstance(exc, ModuleNotFoundError)
            and missing
            and ((folder / f"{missing}.py").is_file() or (folder / missing).is_dir())
        ):
            hint = f" (it is in the model folder: import it relatively, from .{missing} import ...)"
        raise ModelLoadError(
            f"{path} raised on import: {type(exc).__name__}: {exc}{hint}; fix the module and "
            "import the model again"
        ) from exc


def _forget(package: str) -> None:
    _FINDER.folders.pop(package, None)
    for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
        del sys.modules[name]


def _find_class(module: ModuleType, path: Path) -> type:
    classes = [
        obj
        for obj in vars(module).values()
        if inspect.isclass(obj)
        and obj.__module__ == module.__name__
        and callable(getattr(obj, "predict", None))
        and callable(getattr(obj, "load", None))
    ]
    if len(classes) > 1:
        classes = [c for c in classes if c.__name__ == "Model"]
    if len(classes) != 1:
        raise ModelLoadError(
            f"{path} must define exactly one class with load() and predict() methods "
            "(or name the one to use 'Model')"
        )
    return classes[0]


class PythonRuntime:
    """A user's model class behind the Runtime protocol."""

    parallel_calls = 1  # user code need not be thread-safe; under the GIL it rarely gains

    def __init__(self, folder: Path, signature: Signature | None = None) -> None:
        path = folder / ENTRY_FILE
        if not path.is_file():
            raise ModelLoadError(f"{folder} has no {ENTRY_FILE}; a code model needs one")
        self._module = _import(folder)
        self.instance = _find_class(self._module, path)()
        load = self.instance.load
        try:
            if inspect.signature(load).parameters:
                load(folder)
            else:
                load()
        except Exception as exc:
            raise ModelLoadError(
                f"{path}: load() raised {type(exc).__name__}: {exc}; fix load() or the files "
                "it reads, then import the model again"
            ) from exc
        declared = getattr(self.instance, "signature", None)
        if signature is None and declared is not None:
            try:
                signature = Signature.from_dict(declared)
            except (KeyError, TypeError, ValueError) as exc:
                raise ModelLoadError(
                    f"{path}: the class attribute 'signature' is malformed ({exc}); it needs "
                    "'inputs' and 'outputs', each a list of {name, dtype, shape}"
                ) from exc
        self._signature = signature

    @property
    def signature(self) -> Signature:
        if self._signature is None:
            raise ModelLoadError(
                "this code model declares no signature: add a class attribute 'signature', "
                "or import it with a sample input (modelport import DIR --sample-input FILE)"
            )
        return self._signature

    @signature.setter
    def signature(self, value: Signature) -> None:
        self._signature = value

    def raw_predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Call the user's predict() and normalize what it returns to a dict of arrays."""
        try:
            result = self.instance.predict(inputs)
        except Exception as exc:
            raise PredictionError(f"model.py predict() raised {type(exc).__name__}: {exc}") from exc
        if not isinstance(result, dict):
            if self._signature is not None and len(self._signature.outputs) == 1:
                result = {self._signature.outputs[0].name: result}
            elif self._signature is None:
                result = {"output": result}
            else:
                raise PredictionError(
                    "model.py predict() must return a dict of output name -> array for a "
                    "model with several outputs"
                )
        return {str(k): np.asarray(v) for k, v in result.items()}

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self.raw_predict(inputs)
        expected = self.signature.output_names
        if sorted(outputs) != sorted(expected):
            raise PredictionError(
                f"model.py predict() returned outputs {sorted(outputs)}, but the signature "
                f"declares {expected}"
            )
        return {name: outputs[name] for name in expected}

    def close(self) -> None:
        closer = getattr(self.instance, "close", None)
        if callable(closer):
            closer()
        _forget(self._module.__name__.rpartition(".")[0])
