"""Lambda's quotas, checked when a package is built, with what to drop when one is exceeded.

    check_zip(parts, zipped_bytes=None, via_s3=False)   # DeployError naming the biggest parts
    LambdaConfig(memory_mb=4096)                        # a function's settings, within them

The numbers are AWS's (Lambda quotas): a zip package of at most 50 MB zipped when uploaded
directly (larger ones go through S3) and 250 MB unzipped; a container image of at most 10 GB;
``/tmp`` of 512 MB by default, configurable up to 10,240 MB; memory 128 to 10,240 MB. API
Gateway's payload limit (10 MB) and a synchronous invocation's (6 MB) are the handler's to
enforce (serverless/events.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from modelport.errors import DeployError

MB = 1024 * 1024
ZIP_DIRECT_BYTES = 50 * MB  # zipped, uploaded directly (the Lambda API, the console)
ZIP_UNZIPPED_BYTES = 250 * MB  # unzipped, the function's code and layers together
IMAGE_BYTES = 10 * 1024 * MB  # uncompressed, every layer
TMP_MB = (512, 10_240)  # /tmp (ephemeral storage): the default, the most
MEMORY_MB = (128, 10_240)
TIMEOUT_S = 900
RUNTIME_OVERHEAD_BYTES = 256 * MB  # Python, onnxruntime and the service, besides the models


def package_parts(site: Path) -> dict[str, int]:
    """Bytes on disk of each distribution installed in ``site`` (by its RECORD), and of what
    no RECORD claims, by top-level name."""
    claimed: set[Path] = set()
    parts: dict[str, int] = {}
    for record in sorted(site.glob("*.dist-info/RECORD")):
        name = record.parent.name.split("-")[0]
        total = 0
        for line in record.read_text().splitlines():
            path = (site / line.split(",")[0]).resolve()
            if path.is_file() and path not in claimed:
                claimed.add(path)
                total += path.stat().st_size
        parts[f"package {name}"] = total
    for path in site.rglob("*"):
        if path.is_file() and path.resolve() not in claimed:
            top = path.relative_to(site).parts[0]
            parts[f"package {top}"] = parts.get(f"package {top}", 0) + path.stat().st_size
    return parts


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def biggest(parts: dict[str, int], count: int = 5) -> str:
    ranked = sorted(parts.items(), key=lambda item: (-item[1], item[0]))[:count]
    return ", ".join(f"{name} ({size / MB:.1f} MB)" for name, size in ranked)


def check_zip(parts: dict[str, int], zipped_bytes: int | None = None, via_s3: bool = False) -> int:
    """The unzipped size of a package made of ``parts``; DeployError over a quota."""
    unzipped = sum(parts.values())
    if unzipped > ZIP_UNZIPPED_BYTES:
        raise DeployError(
            f"the zip package would be {unzipped / MB:.1f} MB unzipped, over Lambda's limit of "
            f"250 MB ({ZIP_UNZIPPED_BYTES} bytes); the biggest parts: {biggest(parts)}. Drop "
            "the biggest models (ship them in another function), or build an image instead "
            "(--lambda: up to 10 GB)"
        )
    if zipped_bytes is not None and zipped_bytes > ZIP_DIRECT_BYTES and not via_s3:
        raise DeployError(
            f"the zip package is {zipped_bytes / MB:.1f} MB zipped, over Lambda's limit of 50 MB "
            f"({ZIP_DIRECT_BYTES} bytes) for a direct upload; the biggest parts unzipped: "
            f"{biggest(parts)}. Drop the biggest models, pass --lambda-via-s3 when it is "
            "deployed through S3 (sam deploy uploads it there), or build an image (--lambda)"
        )
    return unzipped


def check_image(size_bytes: int, parts: dict[str, int]) -> None:
    """DeployError when an image is over Lambda's 10 GB."""
    if size_bytes > IMAGE_BYTES:
        raise DeployError(
            f"the image is {size_bytes / MB:.1f} MB, over Lambda's limit of 10 GB "
            f"({IMAGE_BYTES} bytes) for a container image; the biggest parts: {biggest(parts)}. "
            "Drop the biggest models: ship them in another function"
        )


def check_memory(models: Iterable[tuple[str, int]], memory_mb: int) -> None:
    """DeployError when the models cannot all be in memory at once, with the runtime beside."""
    sizes = dict(models)
    needed = sum(sizes.values()) + RUNTIME_OVERHEAD_BYTES
    if needed > memory_mb * MB:
        raise DeployError(
            f"the models need about {needed / MB:.0f} MB of memory once loaded (their files and "
            f"{RUNTIME_OVERHEAD_BYTES // MB} MB for the runtime), over the function's "
            f"{memory_mb} MB: raise --lambda-memory-mb (at most {MEMORY_MB[1]}) or drop the "
            f"biggest: {biggest(sizes)}"
        )


# Lambda's managed Python runtimes on Amazon Linux 2023 (glibc 2.34, the newest manylinux wheels
# they run). python3.11 and older run on Amazon Linux 2 (glibc 2.26), where onnxruntime's
# wheels (manylinux_2_27 and newer) do not.
PYTHONS = ("3.12", "3.13", "3.14")
GLIBC_MINOR = 34
ARCHITECTURES = {"x86_64": "x86_64", "arm64": "aarch64"}  # Lambda's name -> the wheels'


@dataclass(frozen=True)
class LambdaConfig:
    """The function: memory, timeout, architecture, ``/tmp`` size, the zip's Python runtime.

    ``via_s3`` lifts the 50 MB check on a zip (a direct upload's limit) for a package that is
    deployed through S3, as ``sam deploy`` does; the 250 MB unzipped limit stays.
    """

    memory_mb: int = 2048
    timeout_s: int = 30  # API Gateway's HTTP API waits at most 30 s for an integration
    architecture: str = "x86_64"
    tmp_mb: int = TMP_MB[0]
    python: str = "3.12"
    via_s3: bool = False
    trust_code: bool = False
    trust_pickle: bool = False

    def __post_init__(self) -> None:
        low, high = MEMORY_MB
        if not low <= self.memory_mb <= high:
            raise DeployError(f"--lambda-memory-mb must be within {low}-{high} (Lambda's range)")
        if not 1 <= self.timeout_s <= TIMEOUT_S:
            raise DeployError(f"--lambda-timeout-s must be within 1-{TIMEOUT_S}")
        low, high = TMP_MB
        if not low <= self.tmp_mb <= high:
            raise DeployError(f"--lambda-tmp-mb (/tmp) must be within {low}-{high} MB")
        if self.architecture not in ARCHITECTURES:
            raise DeployError("--lambda-arch must be x86_64 or arm64")
        if self.python not in PYTHONS:
            raise DeployError(f"--lambda-python must be one of Lambda's: {', '.join(PYTHONS)}")
