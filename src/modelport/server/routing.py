"""Traffic splits and shadows as configured: ``churn=2:90,3:10`` and ``churn=3``.

    split = Split.parse("churn=2:90,3:10")
    split.pick("customer-42")   # the same key always gets the same version; None: at random

A request that names no version of a split model goes to a version drawn by the weights; with
a routing key (the ``X-Routing-Key`` header, gRPC metadata ``x-routing-key``) the draw is a
hash of the model and the key, so a caller stays on one version while the split stands.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from modelport.errors import InvalidNameError, RolloutError
from modelport.repository import check_name, check_version

if TYPE_CHECKING:
    from modelport.server.registry import Registry, Served

ROUTING_KEY = "x-routing-key"  # REST header and gRPC metadata
MAX_KEY_CHARS = 256  # longer keys are hashed by their first characters only


def _model_and_rest(text: str, what: str, example: str) -> tuple[str, str]:
    name, equals, rest = text.strip().partition("=")
    if not equals or not rest:
        raise RolloutError(f"{what} {text!r:.80}: expected MODEL=..., as in {example}")
    try:
        return check_name(name.strip()), rest.strip()
    except InvalidNameError as exc:
        raise RolloutError(f"{what} {text!r:.80}: {exc}") from None


@dataclass(frozen=True)
class Split:
    """A model's traffic split: (version, percent) pairs whose percents sum to 100."""

    model: str
    weights: tuple[tuple[int, int], ...]

    @classmethod
    def parse(cls, text: str) -> Split:
        example = "churn=2:90,3:10"
        name, rest = _model_and_rest(text, "route", example)
        weights: list[tuple[int, int]] = []
        for part in rest.split(","):
            version, colon, percent = part.strip().partition(":")
            try:
                pair = (check_version(version.strip()), int(percent))
            except (InvalidNameError, ValueError):
                raise RolloutError(
                    f"route {text!r:.80}: {part.strip()!r:.40} is not VERSION:PERCENT "
                    f"(as in {example})"
                ) from None
            if not colon or not 0 <= pair[1] <= 100:
                raise RolloutError(f"route {text!r:.80}: a percent lies within 0-100")
            if any(v == pair[0] for v, _ in weights):
                raise RolloutError(f"route {text!r:.80}: version {pair[0]} appears twice")
            weights.append(pair)
        total = sum(p for _, p in weights)
        if total != 100:
            raise RolloutError(f"route {text!r:.80}: the weights sum to {total}, not 100")
        return cls(name, tuple(weights))

    @property
    def versions(self) -> list[int]:
        return [v for v, p in self.weights if p > 0]

    def pick(self, key: str | None) -> int:
        if key is None:
            point = random.random() * 100  # a split, not a secret
        else:
            seed = f"{self.model}\0{key[:MAX_KEY_CHARS]}".encode()
            digest = hashlib.blake2b(seed, digest_size=8).digest()
            point = int.from_bytes(digest, "big") % 10_000 / 100
        for version, percent in self.weights:
            if point < percent:
                return version
            point -= percent
        return self.weights[-1][0]


@dataclass(frozen=True)
class ShadowTarget:
    """Copies of a model's live requests go to ``candidate`` too."""

    model: str
    candidate: int

    @classmethod
    def parse(cls, text: str) -> ShadowTarget:
        name, rest = _model_and_rest(text, "shadow", "churn=3")
        try:
            return cls(name, check_version(rest))
        except InvalidNameError:
            raise RolloutError(f"shadow {text!r:.80}: {rest!r:.20} is not a version") from None


def parse_splits(lines: Iterable[str]) -> dict[str, Split]:
    """Splits by model from ``--route`` values or a routes file's lines (``#`` comments)."""
    splits: dict[str, Split] = {}
    for line in lines:
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        split = Split.parse(text)
        if split.model in splits:
            raise RolloutError(f"model {split.model!r} has two routes; give it one")
        splits[split.model] = split
    return splits


def parse_shadows(values: Iterable[str]) -> dict[str, ShadowTarget]:
    targets: dict[str, ShadowTarget] = {}
    for value in values:
        target = ShadowTarget.parse(value)
        if target.model in targets:
            raise RolloutError(f"model {target.model!r} has two shadows; give it one")
        targets[target.model] = target
    return targets


class Router:
    """Picks the version for requests that name none; the engine asks it on admission."""

    def __init__(self, splits: dict[str, Split]) -> None:
        self.splits = splits

    def pick(self, registry: Registry, name: str, key: str | None) -> Served | None:
        """The version the split draws, when served; None: the model's latest."""
        split = self.splits.get(name)
        if split is None:
            return None
        return registry.find(name, split.pick(key))
