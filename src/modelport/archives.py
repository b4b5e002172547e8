"""Unpacking code-model archives (.zip, .tar, .tar.gz, .tgz) without trusting their members.

Every member is checked before anything is written: no absolute paths, no ``..``, no links,
devices or other special files, and a bounded total size, so no member can land outside the
target folder.
"""

from __future__ import annotations

import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from modelport.errors import ModelLoadError

SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")
MAX_UNPACKED_BYTES = 4 * 2**30


def is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(SUFFIXES)


def _check_member(archive: Path, name: str) -> None:
    member = PurePosixPath(name.replace("\\", "/"))
    if member.is_absolute() or ".." in member.parts or (member.parts and ":" in member.parts[0]):
        raise ModelLoadError(
            f"{archive}: member {name!r} would be written outside the model folder; "
            "rebuild the archive with relative paths only"
        )


def extract(archive: Path, target: Path) -> Path:
    """Unpack ``archive`` into ``target`` and return the folder holding the model.

    An archive whose only top-level entry is a folder yields that folder.
    """
    total = 0
    try:
        if archive.name.lower().endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    _check_member(archive, info.filename)
                    if (info.external_attr >> 16) & 0o170000 == 0o120000:
                        raise ModelLoadError(f"{archive}: member {info.filename!r} is a link")
                    total += info.file_size
                _check_size(archive, total)
                zf.extractall(target)
        else:
            with tarfile.open(archive) as tf:
                members = tf.getmembers()
                for member in members:
                    _check_member(archive, member.name)
                    if not (member.isfile() or member.isdir()):
                        raise ModelLoadError(
                            f"{archive}: member {member.name!r} is a link or special file; "
                            "archives may hold only regular files and folders"
                        )
                    total += member.size
                _check_size(archive, total)
                # Python 3.12+ also applies its own "data" filter (and warns without one).
                extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                for member in members:
                    tf.extract(member, target, set_attrs=False, **extra)  # type: ignore[arg-type]
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
        raise ModelLoadError(f"{archive} is not a readable archive ({exc})") from exc
    # Archives carry their own permission bits; a model folder gets plain, readable ones.
    for path in target.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    entries = list(target.iterdir())
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return target


def _check_size(archive: Path, total: int) -> None:
    if total > MAX_UNPACKED_BYTES:
        raise ModelLoadError(
            f"{archive} unpacks to {total} bytes, over the {MAX_UNPACKED_BYTES} byte limit"
        )
