"""Models and helpers for the tests of versions in production (reloads, control, splits)."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

import modelport

CODE_MODEL = '''
import threading
import time

import numpy as np


class Scorer:
    """y = x * FACTOR (ODD for x > 100), after SLEEP_S when some x >= 50; calls: how many
    calls came before this one."""

    signature = {
        "inputs": [{"name": "x", "dtype": "float32", "shape": [-1]}],
        "outputs": [
            {"name": "y", "dtype": "float32", "shape": [-1]},
            {"name": "calls", "dtype": "int64", "shape": [-1]},
        ],
    }

    def load(self):
        self.calls = 0
        self.lock = threading.Lock()
        time.sleep(LOAD_S)

    def predict(self, batch):
        x = batch["x"]
        with self.lock:
            before = self.calls
            self.calls += 1
        if FAIL:
            raise RuntimeError("this version is broken")
        if x.size and x.max() >= 50:
            time.sleep(SLEEP_S)
        y = np.where(x > 100, x * ODD, x * FACTOR).astype(np.float32)
        return {"y": y, "calls": np.full(len(x), before if COUNTING else 0, np.int64)}
'''


def add_scorer(
    repo: modelport.Repository, name: str, *, factor: float = 2.0, sleep_s: float = 0.0,
    load_s: float = 0.0, fail: bool = False, odd: float | None = None, counting: bool = True,
) -> int:  # fmt: skip
    """Import a Scorer code model as the next version of ``name``; its version number."""
    source = repo.root.parent / f"scorer-src-{time.monotonic_ns()}"
    source.mkdir()
    settings = {
        "FACTOR": factor, "ODD": factor if odd is None else odd, "SLEEP_S": sleep_s,
        "LOAD_S": load_s, "FAIL": fail, "COUNTING": counting,
    }  # fmt: skip
    text = "".join(f"{k} = {v!r}\n" for k, v in settings.items()) + CODE_MODEL
    (source / "model.py").write_text(text)
    manifest = modelport.add_model(repo, name, source, trust_code=True)
    shutil.rmtree(source)
    return manifest.version


Edit = Callable[[Path, dict[str, Any]], None]


def land_copy(repo: modelport.Repository, name: str, version: int, edit: Edit) -> int:
    """Copy ``name:version`` as the next version, ``edit(folder, manifest)`` it, and move it into
    place in one rename (as an import does); the new version number."""
    new = max(repo.versions(name)) + 1
    staged = repo.root / ".staging" / f"copy-{new}"
    shutil.copytree(repo.root / name / str(version), staged)
    manifest = json.loads((staged / "manifest.json").read_text())
    manifest["version"] = new
    edit(staged, manifest)
    (staged / "manifest.json").write_text(json.dumps(manifest))
    (staged.parent / str(new)).mkdir(exist_ok=True)
    staged.rename(repo.root / name / str(new))
    return new


def infer_body(x: list[float]) -> dict[str, Any]:
    return {"inputs": [{"name": "x", "shape": [len(x)], "datatype": "FP32", "data": x}]}


@dataclass
class Answer:
    status: int
    version: str | None
    header: str | None
    calls: int | None
    seconds: float


@dataclass
class Load:
    """Clients posting requests to a model until stopped; every answer recorded."""

    answers: list[Answer] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def versions(self) -> set[str | None]:
        return {a.version for a in self.answers}

    def failures(self) -> list[Answer]:
        return [a for a in self.answers if a.status != 200]


@contextmanager
def load(url: str, model: str, clients: int = 4, x: float = 1.0) -> Iterator[Load]:
    """``clients`` threads posting to ``model`` at ``url`` while the block runs."""
    state = Load()

    def client() -> None:
        with httpx.Client(base_url=url, timeout=30) as http:
            while not state.stop.is_set():
                started = time.monotonic()
                try:
                    r = http.post(f"/v2/models/{model}/infer", json=infer_body([x]))
                except httpx.HTTPError:
                    state.answers.append(Answer(0, None, None, None, 0.0))
                    continue
                took = time.monotonic() - started
                body = r.json()
                calls = None
                for output in body.get("outputs", []):
                    if output["name"] == "calls":
                        calls = output["data"][0]
                state.answers.append(
                    Answer(r.status_code, body.get("model_version"),
                           r.headers.get("model-version"), calls, took)
                )  # fmt: skip

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    try:
        yield state
    finally:
        state.stop.set()
        for thread in threads:
            thread.join()


def wait_for(check: Callable[[], Any], timeout_s: float = 20.0, what: str = "") -> Any:
    """Poll ``check`` every 20 ms until it returns something true; that value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.02)
    raise TimeoutError(f"not within {timeout_s} s: {what}")


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of a Prometheus page (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            head, _, value = line.rpartition(" ")
            if all(f'{k}="{v}"' in head for k, v in labels.items()):
                return float(value)
    return 0.0
