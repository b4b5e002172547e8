"""Writing an output folder whole or not at all: into a hidden sibling, then one rename."""

from __future__ import annotations

import contextlib
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from modelport.errors import DeployError


@contextlib.contextmanager
def new_folder(target: Path, force: bool = False) -> Iterator[Path]:
    """Yield an empty folder that becomes ``target`` when the block ends without an error.

    An existing ``target`` is refused unless ``force`` (then it is replaced); on any error the
    half-written folder is removed and ``target`` is left as it was.
    """
    target = Path(target)
    if target.exists() and not force:
        raise DeployError(f"{target} exists; choose another folder or pass --force to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.tmp"
    staging.mkdir()
    try:
        yield staging
        if target.exists():
            old = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.old"
            target.rename(old)
            staging.rename(target)
            shutil.rmtree(old) if old.is_dir() else old.unlink()
        else:
            staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
