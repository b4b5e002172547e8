import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import modelport
from modelport import (
    ConversionError,
    ModelLoadError,
    Repository,
    UntrustedArtifactError,
    add_model,
)

TRUSTED = modelport.LoadOptions(trust_code=True)  # code models run only when trusted


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_code_model_with_declared_signature(repo: Repository, code_folder: Path) -> None:
    manifest = add_model(repo, "doubler", code_folder, trust_code=True)
    assert manifest.runtime == "python"
    assert sorted(manifest.artifacts) == ["factor.txt", "model.py"]
    assert "numpy" in manifest.requirements["packages"]
    model = repo.load("doubler", options=TRUSTED)
    np.testing.assert_array_equal(model.predict([[1, 2]])["y"], [[2, 4]])


def test_code_model_loaded_straight_from_its_folder(code_folder: Path) -> None:
    model = modelport.load(code_folder, options=TRUSTED)
    assert model.signature.input_names == ["x"]
    assert model.predict(np.ones((3, 2)))["y"].tolist() == [[2, 2]] * 3


def test_code_model_signature_inferred_from_sample(repo: Repository, code_folder: Path) -> None:
    source = (code_folder / "model.py").read_text()
    start = source.index("    signature = {")
    end = source.index("    def load")
    (code_folder / "model.py").write_text(source[:start] + source[end:])
    with pytest.raises(ModelLoadError, match="declares no signature"):
        add_model(repo, "doubler", code_folder, trust_code=True)
    manifest = add_model(
        repo, "doubler", code_folder, trust_code=True, sample_input={"x": np.ones((4, 2))}
    )
    assert manifest.signature.to_dict() == {
        "inputs": [{"name": "x", "dtype": "float64", "shape": [-1, 2]}],
        "outputs": [{"name": "y", "dtype": "float64", "shape": [-1, 2]}],
    }


def test_code_model_requirements_are_pinned(repo: Repository, code_folder: Path) -> None:
    (code_folder / "requirements.txt").write_text("packaging>=20  # any\n\nonnx\n")
    manifest = add_model(repo, "doubler", code_folder, trust_code=True)
    assert set(manifest.requirements["packages"]) == {"modelport", "numpy", "packaging", "onnx"}
    (code_folder / "requirements.txt").write_text("not-installed-anywhere\n")
    with pytest.raises(modelport.RequirementsError, match="'not-installed-anywhere' is required"):
        add_model(repo, "doubler", code_folder, trust_code=True)


def test_code_model_whose_load_raises(repo: Repository, code_folder: Path) -> None:
    (code_folder / "factor.txt").write_text("two")
    before = snapshot(repo.root)
    with pytest.raises(ModelLoadError) as info:
        add_model(repo, "doubler", code_folder, trust_code=True)
    message = str(info.value)
    assert f"{code_folder / 'model.py'}: load() raised ValueError" in message
    assert "fix load()" in message
    assert snapshot(repo.root) == before  # the failed import left nothing behind
    assert repo.names() == []


def test_code_model_predict_errors_and_wrong_outputs(code_folder: Path) -> None:
    source = (code_folder / "model.py").read_text()
    (code_folder / "model.py").write_text(source.replace('{"y": ', '{"z": '))
    with pytest.raises(modelport.PredictionError, match=r"returned outputs \['z'\]"):
        modelport.load(code_folder, options=TRUSTED).predict(np.ones((1, 2)))
    (code_folder / "model.py").write_text(source.replace("return {", "raise KeyError('boom')  #"))
    with pytest.raises(modelport.PredictionError, match="predict\\(\\) raised KeyError"):
        modelport.load(code_folder, options=TRUSTED).predict(np.ones((1, 2)))


def test_code_model_without_a_model_class(code_folder: Path) -> None:
    (code_folder / "model.py").write_text("x = 1\n")
    with pytest.raises(ModelLoadError, match="exactly one class with load"):
        modelport.load(code_folder, options=TRUSTED)
    (code_folder / "model.py").write_text("import no_such_module\n")
    with pytest.raises(ModelLoadError, match="raised on import: ModuleNotFoundError"):
        modelport.load(code_folder, options=TRUSTED)


def test_symlinks_in_a_code_folder_are_refused(repo: Repository, code_folder: Path) -> None:
    (code_folder / "passwd").symlink_to("/etc/passwd")
    with pytest.raises(ModelLoadError, match="symbolic link"):
        add_model(repo, "doubler", code_folder, trust_code=True)


def test_pickles_need_an_explicit_opt_in(
    repo: Repository, code_folder: Path, digits_pipeline: Any, digits: Any, tmp_path: Path
) -> None:
    import joblib

    path = tmp_path / "pipeline.joblib"
    joblib.dump(digits_pipeline, path)
    with pytest.raises(UntrustedArtifactError, match=r"can run arbitrary code.*--trust-pickle"):
        add_model(repo, "digits", path, sample_input=digits[0][:16])
    manifest = add_model(repo, "digits", path, sample_input=digits[0][:16], trust_pickle=True)
    assert manifest.runtime == "onnx"  # converted: no pickle is stored

    # A pickle inside a code model folder, even without a telling suffix.
    (code_folder / "weights.bin").write_bytes(b"\x80\x04\x95junk")
    with pytest.raises(UntrustedArtifactError, match=r"weights\.bin is a pickle"):
        add_model(repo, "doubler", code_folder, trust_code=True)
    add_model(repo, "doubler", code_folder, trust_pickle=True, trust_code=True)
    with pytest.raises(UntrustedArtifactError):
        repo.load("doubler", options=TRUSTED)
    assert repo.load("doubler", options=modelport.LoadOptions(trust_pickle=True, trust_code=True))


def test_failed_imports_leave_the_repository_untouched(
    repo: Repository, tiny_onnx: bytes, tmp_path: Path
) -> None:
    add_model(repo, "tiny", tiny_onnx)
    before = snapshot(repo.root)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(tiny_onnx[:100])
    with pytest.raises(ModelLoadError):
        add_model(repo, "tiny", bad)
    with pytest.raises(modelport.InvalidInputError):
        add_model(repo, "tiny", tiny_onnx, sample_input=np.ones((2, 5)))
    with pytest.raises(ConversionError, match="needs a sample input"):
        add_model(repo, "other", object())
    with pytest.raises(ConversionError, match=r"cannot import a builtins\.object"):
        add_model(repo, "other", object(), sample_input=np.ones((1, 1)))
    assert snapshot(repo.root) == before
    assert sorted(p.name for p in repo.root.iterdir()) == ["tiny"]


def test_concurrent_imports_get_distinct_versions(repo: Repository, tiny_onnx: bytes) -> None:
    versions: list[int] = []
    lock = threading.Lock()

    def work() -> None:
        version = add_model(repo, "tiny", tiny_onnx).version
        with lock:
            versions.append(version)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(versions) == [1, 2, 3, 4, 5, 6]
    for v in versions:
        manifest = json.loads((repo.root / "tiny" / str(v) / "manifest.json").read_text())
        assert manifest["version"] == v


def test_unknown_serving_setting(repo: Repository, tiny_onnx: bytes) -> None:
    with pytest.raises(ValueError, match="unknown serving setting 'speed'"):
        add_model(repo, "tiny", tiny_onnx, serving={"speed": "max"})


def test_code_model_from_an_archive(repo: Repository, code_folder: Path, tmp_path: Path) -> None:
    import shutil

    archive = shutil.make_archive(
        str(tmp_path / "doubler"), "gztar", code_folder.parent, code_folder.name
    )
    manifest = add_model(repo, "doubler", archive, trust_code=True)
    assert sorted(manifest.artifacts) == ["factor.txt", "model.py"]
    assert repo.load("doubler", options=TRUSTED).predict([[1, 1]])["y"].tolist() == [[2, 2]]
    zipped = shutil.make_archive(str(tmp_path / "flat"), "zip", code_folder)
    assert add_model(repo, "doubler", zipped, trust_code=True).version == 2


@pytest.mark.parametrize("member", ["../evil.py", "/abs/evil.py", "a/../../evil.py"])
def test_archive_members_cannot_escape(repo: Repository, tmp_path: Path, member: str) -> None:
    import io
    import tarfile
    import zipfile

    tar_path = tmp_path / "bad.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tf:
        info = tarfile.TarInfo(member)
        info.size = 1
        tf.addfile(info, io.BytesIO(b"x"))
    zip_path = tmp_path / "bad.zip"
    with zipfile.ZipFile(zip_path, "w") as zf:
        zf.writestr(zipfile.ZipInfo(member), "x")
    for archive in (tar_path, zip_path):
        with pytest.raises(ModelLoadError, match="outside the model folder"):
            add_model(repo, "evil", archive)
    assert not (tmp_path / "evil.py").exists()
    assert repo.names() == []


def test_archive_links_are_refused(repo: Repository, tmp_path: Path) -> None:
    import tarfile

    tar_path = tmp_path / "link.tar"
    with tarfile.open(tar_path, "w") as tf:
        info = tarfile.TarInfo("model.py")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tf.addfile(info)
    with pytest.raises(ModelLoadError, match="link or special file"):
        add_model(repo, "evil", tar_path)


def test_code_model_helpers_import_relatively(repo: Repository, code_folder: Path) -> None:
    (code_folder / "scaling.py").write_text("def scale(x, f):\n    return x * f\n")
    source = (code_folder / "model.py").read_text()
    source = "from .scaling import scale\n" + source.replace(
        'return {"y": batch["x"] * self.factor}', 'return {"y": scale(batch["x"], self.factor)}'
    )
    (code_folder / "model.py").write_text(source)
    add_model(repo, "doubler", code_folder, trust_code=True)
    assert repo.load("doubler", options=TRUSTED).predict([[1, 2]])["y"].tolist() == [[2, 4]]
    (code_folder / "model.py").write_text("import scaling\n" + source)
    with pytest.raises(ModelLoadError, match=r"import it relatively, from \.scaling import"):
        modelport.load(code_folder, options=TRUSTED)


def test_loading_code_writes_and_trusts_no_bytecode(repo: Repository, code_folder: Path) -> None:
    add_model(repo, "doubler", code_folder, trust_code=True)
    folder = repo.root / "doubler" / "1"
    before = sorted(p.name for p in folder.rglob("*"))
    repo.load("doubler", options=TRUSTED).predict([[1, 1]])
    assert sorted(p.name for p in folder.rglob("*")) == before  # no __pycache__ appeared
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "model.cpython-311.pyc").write_bytes(b"changed code")
    with pytest.raises(modelport.IntegrityError, match="not in the manifest"):
        repo.load("doubler", options=TRUSTED)


def test_truncated_onnx_import_names_the_users_file(
    repo: Repository, tmp_path: Path, tiny_onnx: bytes
) -> None:
    bad = tmp_path / "trunc.onnx"
    bad.write_bytes(tiny_onnx[:60])
    with pytest.raises(ModelLoadError) as info:
        add_model(repo, "tiny", bad)
    assert str(info.value).startswith(f"{bad} is not a valid ONNX file")
    assert ".staging" not in str(info.value)


def test_errors_inside_an_archive_name_the_archive(
    repo: Repository, code_folder: Path, tmp_path: Path
) -> None:
    import shutil

    (code_folder / "w.bin").write_bytes(b"\x80\x04\x95junk")
    archive = shutil.make_archive(
        str(tmp_path / "pk"), "gztar", code_folder.parent, code_folder.name
    )
    with pytest.raises(UntrustedArtifactError) as info:
        add_model(repo, "doubler", archive, trust_code=True)
    assert str(info.value).startswith(f"{archive}:w.bin is a pickle")


def test_an_opset_newer_than_onnxruntime_is_refused_with_the_reason(
    repo: Repository, one_node_onnx: Callable[[str, int], Path]
) -> None:
    path = one_node_onnx("Identity", 40)
    expected = (
        rf"{path} cannot load in this environment: opset 40 of domain ai\.onnx is "
        r"newer than onnxruntime .* supports \(up to \d+\)\. Upgrade onnxruntime, or "
        "export the model with an older opset"
    )
    with pytest.raises(modelport.RequirementsError, match=expected):
        add_model(repo, "future", path)
    with pytest.raises(modelport.RequirementsError, match=expected):
        modelport.load(path)
    assert repo.names() == []


@pytest.mark.slow
def test_torch_file_with_a_float64_sample_and_a_failing_forward(
    repo: Repository, tmp_path: Path
) -> None:
    import torch
    from torch import nn

    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU())
    path = tmp_path / "net.pt"
    torch.save(net, path)
    sample = np.random.default_rng(0).standard_normal((5, 4))  # float64, as CSV/JSON give
    manifest = add_model(repo, "net", path, sample_input=sample, trust_pickle=True)
    assert manifest.signature.inputs[0].dtype == "float32"
    with pytest.raises(ConversionError, match=r"raised on the sample input \(float32\[5, 3\]\)"):
        add_model(repo, "net", path, sample_input=sample[:, :3], trust_pickle=True)


@pytest.mark.parametrize("where", ["initializer", "sparse_initializer", "constant", "if_branch"])
@pytest.mark.parametrize("location", ["../../secret", "/etc/passwd"])
def test_onnx_external_data_outside_the_model_is_refused(
    repo: Repository,
    tmp_path: Path,
    external_data_onnx: Callable[[str, str], bytes],
    where: str,
    location: str,
) -> None:
    path = tmp_path / "leaky.onnx"
    path.write_bytes(external_data_onnx(where, location))
    with pytest.raises(ModelLoadError) as info:
        add_model(repo, "leaky", path)
    assert str(info.value).startswith(
        f"{path}: tensor 'w' keeps its data in the file {location!r}, outside the model's folder"
    )
    assert "put the tensors inside the .onnx file" in str(info.value)
    with pytest.raises(ModelLoadError, match="outside the model's folder"):
        add_model(repo, "leaky", path.read_bytes())
    assert repo.names() == []


def test_archives_over_the_member_or_size_limit_are_refused_while_read(
    repo: Repository, tmp_path: Path
) -> None:
    import io
    import tarfile

    many = tmp_path / "many.tar.gz"
    with tarfile.open(many, "w:gz") as tf:
        for i in range(10_001):
            tf.addfile(tarfile.TarInfo(f"f{i}.txt"), io.BytesIO(b""))
    with pytest.raises(ModelLoadError) as info:
        add_model(repo, "many", many)
    assert str(info.value) == (
        f"{many} holds more than 10000 members, the limit for a code-model archive; a model "
        "folder needs far fewer: leave data sets, caches and virtual environments out of it"
    )
    huge = tmp_path / "huge.tar"
    with tarfile.open(huge, "w") as tf:
        declared = tarfile.TarInfo("weights.bin")
        declared.size = 5 * 2**30  # a header that claims 5 GiB; the data never comes
        tf.addfile(declared)
    with pytest.raises(ModelLoadError, match=r"unpacks to more than 4294967296 bytes, the limit"):
        add_model(repo, "huge", huge)
    assert repo.names() == []


def test_code_models_run_only_with_an_explicit_opt_in(
    repo: Repository, code_folder: Path, tmp_path: Path
) -> None:
    ran = tmp_path / "ran"
    source = (code_folder / "model.py").read_text()
    (code_folder / "model.py").write_text(f"open({str(ran)!r}, 'a').close()\n{source}")
    refusal = (
        rf"{code_folder} is a code model: its model\.py is Python that runs, with all your "
        r"permissions, when the model is imported or loaded\. Load it only if you wrote it or "
        r"trust its source: pass trust_code=True \(CLI: --trust-code\)"
    )
    with pytest.raises(UntrustedArtifactError, match=refusal):
        add_model(repo, "doubler", code_folder)
    with pytest.raises(UntrustedArtifactError, match=refusal):
        modelport.load(code_folder)
    assert not ran.exists()
    assert repo.names() == []

    add_model(repo, "doubler", code_folder, trust_code=True)
    ran.unlink()
    with pytest.raises(UntrustedArtifactError, match="pass trust_code=True"):
        repo.load("doubler")
    assert not ran.exists()
    trusted = modelport.LoadOptions(trust_code=True)
    assert repo.load("doubler", options=trusted).predict([[1, 2]])["y"].tolist() == [[2, 4]]
    assert modelport.load(code_folder, options=trusted).predict([[1, 2]])["y"].tolist() == [[2, 4]]
