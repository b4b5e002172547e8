"""Unpacking code-model archives (.zip, .tar, .tar.gz, .tgz) without trusting their members.

Every member is checked before anything is written: no absolute paths, no ``..``, no links,
devices or other special files, so no member can land outside the target folder; and a bounded
number of members and total size, counted while the member list is read, so neither an
archive of millions of empty files nor one that claims terabytes exhausts memory or disk.
"""

from __future__ import annotations

import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from modelport.errors import ModelLoadError

SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")
MAX_UNPACKED_BYTES = 4 * 2**30
MAX_MEMBERS = 10_000


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
                # zipfile has read the whole central directory by now; its size is bounded by
                # the file's.
                _check_count(archive, len(zf.infolist()))
                for info in zf.infolist():
                    _check_member(archive, info.filename)
                    if (info.external_attr >> 16) & 0o170000 == 0o120000:
                        raise ModelLoadError(f"{archive}: member {info.filename!r} is a link")
                    total += info.file_size
                    _check_size(archive, total)
                zf.extractall(target)
        else:
            with tarfile.open(archive) as tf:
                members: list[tarfile.TarInfo] = []
                for member in tf:  # header by header: getmembers() would read them all first
                    _check_count(archive, len(members) + 1)
                    _check_member(archive, member.name)
                    if not (member.isfile() or member.isdir()):
                        raise ModelLoadError(
                            f"{archive}: member {member.name!r} is a link or special file; "
                            "archives may hold only regular files and folders"
                        )
                    total += member.size
                    _check_size(archive, total)
                    members.append(member)
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


def _check_count(archive: Path, count: int) -> None:
    if count > MAX_MEMBERS:
        raise ModelLoadError(
            f"{archive} holds more than {MAX_MEMBERS} members, the limit for a code-model "
            "archive; a model folder needs far fewer: leave data sets, caches and virtual "
            "environments out of it"
        )


def _check_size(archive: Path, total: int) -> None:
    if total > MAX_UNPACKED_BYTES:
        raise ModelLoadError(
            f"{archive} unpacks to more than {MAX_UNPACKED_BYTES} bytes, the limit for a "
            "code-model archive; leave data sets and caches out of it, or import the folder "
            "itself rather than an archive of it"
        )
