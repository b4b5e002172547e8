"""PyTorch models saved from a training script, where the class lives in ``__main__``:
torch.export programs and TorchScript load without it; a pickled module or a state_dict with
--module. Imported with the CLI, served, and compared on rows the model never saw."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import modelport
from modelport.errors import ModelLoadError
from modelport.testing import RunningServer, run_server
from test_cli import modelport as cli
from test_cli import ok

TRAIN = """
import numpy as np
import torch


class Net(torch.nn.Module):
    def __init__(self, features=4, hidden=16):
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(features, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 3)
        )

    def forward(self, x):
        return self.layers(x).softmax(-1)


if __name__ == "__main__":
    torch.manual_seed(0)
    net = Net(hidden=12).eval()
    x = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32)
    unseen = np.random.default_rng(1).normal(size=(10, 4)).astype(np.float32)
    np.save("sample.npy", x)
    np.save("unseen.npy", unseen)
    with torch.no_grad():
        np.save("expected.npy", net(torch.from_numpy(unseen)).numpy())
    batch = torch.export.Dim("batch")
    program = torch.export.export(net, (torch.from_numpy(x),), dynamic_shapes=({0: batch},))
    torch.export.save(program, "net.pt2")
    torch.jit.script(net).save("net_script.pt")
    torch.save(net, "net.pt")
    torch.save(net.state_dict(), "weights.pt")
"""


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("torch-script")
    (folder / "train.py").write_text(TRAIN)
    subprocess.run([sys.executable, "train.py"], cwd=folder, check=True, timeout=120)
    return folder


@pytest.fixture(scope="module")
def repo(saved: Path) -> Path:
    repo = saved / "models"
    repository, x = modelport.Repository.init(repo), np.load(saved / "sample.npy")
    modelport.add_model(repository, "program", saved / "net.pt2", sample_input=x)
    modelport.add_model(repository, "script", saved / "net_script.pt", sample_input=x)
    net = f"{saved / 'train.py'}:Net"
    modelport.add_model(
        repository, "pickled", saved / "net.pt", sample_input=x, trust_pickle=True, module=net
    )
    # No --trust-pickle: weights alone load with torch.load(weights_only=True).
    arguments = ("--module", net, "--init-args", '{"hidden": 12}')
    sample = ("--sample-input", saved / "sample.npy")
    ok("import", saved / "weights.pt", "--name", "weights", "--repo", repo, *sample, *arguments)
    return repo


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[RunningServer]:
    with run_server(repo, "--no-access-log") as running:
        yield running


@pytest.mark.slow
def test_every_way_of_saving_serves_the_same_answers(server: RunningServer, saved: Path) -> None:
    unseen, expected = np.load(saved / "unseen.npy"), np.load(saved / "expected.npy")
    with modelport.Client(server.url) as client:
        for name in ("program", "script", "pickled", "weights"):
            got = client.predict(name, unseen)["output"]
            np.testing.assert_allclose(got, expected, atol=1e-5, err_msg=name)
    manifest = modelport.Repository.open(saved / "models").manifest("program")
    assert manifest.metadata["torch"] == __import__("torch").__version__


@pytest.mark.slow
def test_a_class_from_main_is_explained_not_called_a_bug(repo: Path, saved: Path) -> None:
    failed = cli("import", saved / "net.pt", "--name", "x", "--repo", repo, "--trust-pickle",
                 "--sample-input", saved / "sample.npy")  # fmt: skip
    assert failed.returncode == 1
    assert "bug" not in failed.stderr
    assert "defined in the script that saved it" in failed.stderr
    for option in (".pt2", "TorchScript", "--module FILE.py:CLASS"):
        assert option in failed.stderr
    repository, x = modelport.Repository.open(repo), np.load(saved / "sample.npy")
    weights = saved / "weights.pt"
    with pytest.raises(ModelLoadError, match=r"weights alone \(a state_dict\): pass --module"):
        modelport.add_model(repository, "x", weights, sample_input=x)
    with pytest.raises(ModelLoadError, match=r"do not fit Net\(\*\*\{\}\)"):
        modelport.add_model(
            repository, "x", weights, sample_input=x, module=f"{saved}/train.py:Net"
        )


@pytest.mark.slow
def test_a_program_exported_for_one_batch_size_says_how_to_export_it(tmp_path: Path) -> None:
    import torch

    from modelport.errors import ConversionError

    x = torch.ones(4, 3)
    torch.export.save(torch.export.export(torch.nn.Linear(3, 2), (x,)), tmp_path / "fixed.pt2")
    repo = modelport.Repository.init(tmp_path / "models")
    with pytest.raises(ConversionError, match=r"fixed batch size.*dynamic_shapes="):
        modelport.add_model(repo, "fixed", tmp_path / "fixed.pt2", sample_input=x.numpy())
