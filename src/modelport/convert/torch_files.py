"""PyTorch model files, including those saved from a script.

    load_torch_file(Path("net.pt2"))                       # torch.export program
    load_torch_file(Path("net_ts.pt"))                     # TorchScript
    load_torch_file(Path("net.pt"), trust_pickle=True, module="train.py:Net")
    load_torch_file(Path("weights.pt"), module="train.py:Net", init_args={"hidden": 64})

A ``torch.export`` program (``.pt2``) and a TorchScript file carry their own code and load
without the module that defined the model. A pickled ``nn.Module`` names its class by module:
one saved from a script names ``__main__``, which is some other program when modelport runs,
so ``module="file.py:Class"`` says where the class is. A ``state_dict`` (weights alone, loaded
with ``weights_only=True``) needs the class too, and ``init_args`` when its constructor takes
arguments.
"""

from __future__ import annotations

import importlib.util
import pickle
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Any

from modelport.errors import ConversionError, ModelLoadError, UntrustedArtifactError, require
from modelport.manifest import refusal

SUFFIXES = (".pt", ".pth", ".pt2")
_OPTIONS = (
    "save it with torch.export (a .pt2 file: torch.export.save(torch.export.export(model, "
    "(x,)), 'model.pt2')) or as TorchScript (torch.jit.script(model).save('model.pt')), which "
    "load without the class; or pass --module FILE.py:CLASS (Python: module='FILE.py:CLASS') so "
    "the class can be imported"
)


def is_torchscript(path: Path) -> bool:
    """A TorchScript archive: a zip with the model's code beside its data."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any("/code/" in name for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def load_torch_file(
    path: Path,
    *,
    trust_pickle: bool = False,
    module: str | None = None,
    init_args: dict[str, Any] | None = None,
) -> Any:
    """The model in ``path``: an ExportedProgram, a ScriptModule or an ``nn.Module``."""
    require("torch", "torch")
    import torch

    if path.suffix.lower() == ".pt2":
        try:
            return torch.export.load(str(path))
        except Exception as exc:
            raise ModelLoadError(f"torch.export cannot load {path}: {exc}") from exc
    if is_torchscript(path):
        try:
            with warnings.catch_warnings():  # torch deprecates TorchScript; the file is given
                warnings.simplefilter("ignore", DeprecationWarning)
                return torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
        except Exception as exc:
            raise ModelLoadError(f"TorchScript cannot load {path}: {exc}") from exc
    cls = import_class(module) if module else None
    try:  # weights alone load safely, with no class at all
        weights = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        weights = None
    if isinstance(weights, dict) and all(isinstance(k, str) for k in weights):
        return _from_state_dict(path, weights, cls, init_args or {})
    if not trust_pickle:
        raise UntrustedArtifactError(refusal(path))
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_pickle(cls))
    except AttributeError as exc:
        if "__main__" not in str(exc):
            raise ModelLoadError(f"torch cannot load {path}: {exc}") from exc
        raise ModelLoadError(
            f"{path} holds a model whose class was defined in the script that saved it "
            f"({exc}): the class is not part of the file, and modelport cannot import that "
            f"script by itself. Either {_OPTIONS}"
        ) from None
    except Exception as exc:
        raise ModelLoadError(f"torch cannot load {path}: {exc}") from exc


def _from_state_dict(
    path: Path, weights: dict[str, Any], cls: Any, init_args: dict[str, Any]
) -> Any:
    if cls is None:
        raise ModelLoadError(
            f"{path} holds weights alone (a state_dict): pass --module FILE.py:CLASS (Python: "
            "module='FILE.py:CLASS'), with --init-args JSON when its constructor needs "
            "arguments, so modelport can build the model and load them into it"
        )
    try:
        model = cls(**init_args)
    except Exception as exc:
        raise ModelLoadError(
            f"{cls.__name__}(**{init_args}) raised {type(exc).__name__}: {exc}; pass the "
            "constructor's arguments with --init-args JSON"
        ) from exc
    try:
        model.load_state_dict(weights)
    except Exception as exc:
        raise ModelLoadError(
            f"the weights in {path} do not fit {cls.__name__}(**{init_args}): {exc}"
        ) from exc
    return model


def import_class(spec: str) -> Any:
    """``"file.py:Class"`` (or ``"package.module:Class"``) -> the class."""
    location, sep, name = spec.rpartition(":")
    if not sep or not location or not name.isidentifier():
        raise ConversionError(f"--module {spec!r}: expected FILE.py:CLASS or MODULE:CLASS")
    try:
        if location.endswith(".py"):
            file = Path(location)
            if not file.is_file():
                raise ConversionError(f"--module {spec!r}: {file} does not exist")
            # Imported under its own name: its `if __name__ == "__main__":` part (training,
            # say) does not run.
            loaded = importlib.util.spec_from_file_location(file.stem, file)
            if loaded is None or loaded.loader is None:
                raise ConversionError(f"--module {spec!r}: {file} cannot be imported")
            found = importlib.util.module_from_spec(loaded)
            sys.modules.setdefault(file.stem, found)
            loaded.loader.exec_module(found)
        else:
            found = importlib.import_module(location)
    except ConversionError:
        raise
    except Exception as exc:
        raise ConversionError(
            f"--module {spec!r}: importing {location} raised {type(exc).__name__}: {exc}"
        ) from exc
    cls = getattr(found, name, None)
    if cls is None:
        raise ConversionError(f"--module {spec!r}: {location} defines no {name!r}")
    return cls


def _pickle(cls: Any) -> Any:
    """A pickle module whose Unpickler finds ``cls`` where the file says ``__main__``."""
    if cls is None:
        return pickle

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if module == "__main__" and name == cls.__name__:
                return cls
            if module == "__main__" and hasattr(sys.modules[cls.__module__], name):
                return getattr(sys.modules[cls.__module__], name)
            return super().find_class(module, name)

    class Module:
        pass

    shim = Module()
    vars(shim).update({k: getattr(pickle, k) for k in ("load", "loads", "dump", "dumps")})
    shim.Unpickler = Unpickler  # type: ignore[attr-defined]
    shim.__name__ = "pickle"  # type: ignore[attr-defined]
    return shim
