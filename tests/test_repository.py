import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import modelport
from modelport import (
    IntegrityError,
    InvalidNameError,
    ManifestError,
    ModelNotFoundError,
    Repository,
    RequirementsError,
    VersionPolicy,
    add_model,
)


def test_versions_are_numbered_and_loaded_by_reference(repo: Repository, tiny_onnx: bytes) -> None:
    assert add_model(repo, "tiny", tiny_onnx).version == 1
    assert add_model(repo, "tiny", tiny_onnx, description="second").version == 2
    assert repo.names() == ["tiny"]
    assert repo.versions("tiny") == [1, 2]
    assert repo.load("tiny").version == 2
    assert repo.load("tiny:1").version == 1
    assert repo.load("tiny", version=1).version == 1
    assert modelport.load("tiny:1", repository=repo.root).version == 1
    assert modelport.load(repo.root / "tiny").version == 2
    assert modelport.load(repo.root / "tiny", version=1).version == 1
    assert modelport.load(repo.root / "tiny" / "1").metadata["name"] == "tiny"


def test_manifest_records_what_the_version_is(repo: Repository, tiny_onnx: bytes) -> None:
    manifest = add_model(repo, "tiny", tiny_onnx, serving={"batching": {"max_batch_size": 8}})
    on_disk = json.loads((repo.root / "tiny" / "1" / "manifest.json").read_text())
    assert on_disk == manifest.to_dict()
    assert on_disk["runtime"] == "onnx"
    assert on_disk["signature"]["inputs"] == [
        {"name": "input", "dtype": "float32", "shape": [-1, 4]}
    ]
    assert list(on_disk["artifacts"]) == ["model.onnx"]
    assert len(on_disk["artifacts"]["model.onnx"]) == 64
    assert on_disk["requirements"]["onnx_opsets"] == {"ai.onnx": 17}
    assert "onnxruntime" in on_disk["requirements"]["packages"]
    assert on_disk["serving"] == {"batching": {"max_batch_size": 8}}
    assert on_disk["created_at"].endswith("+00:00")


def test_unknown_models_and_versions(repo: Repository, tiny_onnx: bytes) -> None:
    add_model(repo, "tiny", tiny_onnx)
    with pytest.raises(ModelNotFoundError, match=r"no model named 'other'.*known: tiny"):
        repo.load("other")
    with pytest.raises(ModelNotFoundError, match="has no version 7; it has 1"):
        repo.load("tiny:7")
    with pytest.raises(ModelNotFoundError, match="modelport repo init"):
        Repository.open(repo.root / "missing")


@pytest.mark.parametrize(
    "name",
    [
        "../etc",
        "..",
        "a/b",
        "%2e%2e",
        "..%2f",
        ".hidden",
        "",
        "a" * 65,
        "a b",
        "a\x00",
        "a.",
        "a..b",
    ],
)
def test_bad_names_are_refused(repo: Repository, tiny_onnx: bytes, name: str) -> None:
    before = sorted(repo.root.parent.rglob("*"))
    with pytest.raises(InvalidNameError):
        add_model(repo, name, tiny_onnx)
    with pytest.raises(InvalidNameError):
        repo.load(name)
    assert sorted(repo.root.parent.rglob("*")) == before  # nothing written, here or above


@pytest.mark.parametrize("ref", ["tiny:0", "tiny:-1", "tiny:x", "tiny:1:2", "tiny:"])
def test_bad_versions_are_refused(repo: Repository, ref: str) -> None:
    with pytest.raises(InvalidNameError):
        repo.load(ref)


def test_a_symlink_out_of_the_repository_is_refused(repo: Repository, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "1").mkdir(parents=True)
    (repo.root / "escape").symlink_to(outside)
    with pytest.raises(InvalidNameError, match="outside the repository"):
        repo.load("escape")


def test_tampered_artifact_refuses_to_load(repo: Repository, tiny_onnx: bytes) -> None:
    add_model(repo, "tiny", tiny_onnx)
    artifact = repo.root / "tiny" / "1" / "model.onnx"
    data = bytearray(artifact.read_bytes())
    data[-1] ^= 0xFF
    artifact.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"model\.onnx does not match its manifest"):
        repo.load("tiny")


def test_added_and_missing_artifacts_refuse_to_load(repo: Repository, tiny_onnx: bytes) -> None:
    add_model(repo, "tiny", tiny_onnx)
    folder = repo.root / "tiny" / "1"
    (folder / "extra.txt").write_text("x")
    with pytest.raises(IntegrityError, match=r"extra\.txt is not in the manifest"):
        repo.load("tiny")
    (folder / "extra.txt").unlink()
    (folder / "model.onnx").unlink()
    with pytest.raises(IntegrityError, match="listed in the manifest but missing"):
        repo.load("tiny")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: "{not json", "is not valid JSON"),
        (lambda m: "[]", "must hold a JSON object"),
        (
            lambda m: json.dumps({k: v for k, v in m.items() if k != "signature"}),
            "field 'signature' is missing",
        ),
        (lambda m: json.dumps({**m, "version": "1"}), "field 'version' must be int"),
        (lambda m: json.dumps({**m, "runtime": "tensorflow"}), "unknown runtime 'tensorflow'"),
        (lambda m: json.dumps({**m, "serving": {"turbo": 1}}), "unknown serving setting 'turbo'"),
        (lambda m: json.dumps({**m, "version": 2}), "says tiny:2 but lies in tiny/1"),
    ],
)
def test_malformed_manifest_names_the_file(
    repo: Repository, tiny_onnx: bytes, edit: object, message: str
) -> None:
    add_model(repo, "tiny", tiny_onnx)
    path = repo.root / "tiny" / "1" / "manifest.json"
    path.write_text(edit(json.loads(path.read_text())))  # type: ignore[operator]
    with pytest.raises(ManifestError) as info:
        repo.load("tiny")
    assert message in str(info.value)
    assert str(path) in str(info.value)


def test_missing_manifest(repo: Repository, tiny_onnx: bytes) -> None:
    add_model(repo, "tiny", tiny_onnx)
    (repo.root / "tiny" / "1" / "manifest.json").unlink()
    with pytest.raises(ManifestError, match=r"manifest\.json is missing"):
        repo.load("tiny")


def _edit_requirements(repo: Repository, change: dict[str, object]) -> None:
    path = repo.root / "tiny" / "1" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["requirements"].update(change)
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"onnx_opsets": {"ai.onnx": 99}}, "opset 99 of domain ai.onnx is newer than onnxruntime"),
        ({"packages": {"onnxruntime": "0.5.0"}}, "onnxruntime is "),
        (
            {"packages": {"onnxruntime": "1.0", "no-such-pkg": "1.0"}},
            "package no-such-pkg is not installed (built with no-such-pkg==1.0)",
        ),
    ],
)
def test_unmet_requirements_say_exactly_what_is_missing(
    repo: Repository, tiny_onnx: bytes, change: dict[str, object], message: str
) -> None:
    add_model(repo, "tiny", tiny_onnx)
    _edit_requirements(repo, change)
    # Requirements are part of the manifest, so re-hashing is not needed; load checks them.
    with pytest.raises(RequirementsError) as info:
        repo.load("tiny")
    assert message in str(info.value)
    assert "tiny:1 cannot load in this environment" in str(info.value)
    unchecked = modelport.LoadOptions(verify_requirements=False)
    assert repo.load("tiny", options=unchecked).predict(np.ones((1, 4)))["logits"].shape == (1, 3)


def test_supported_opsets_are_probed_from_the_installed_onnxruntime() -> None:
    from modelport.runtimes.onnx import max_supported_opset

    assert max_supported_opset("ai.onnx") >= 17
    assert max_supported_opset("ai.onnx.ml") >= 3


@pytest.mark.parametrize(
    ("policy", "selected"),
    [("latest", [5]), ("latest:2", [3, 5]), ("all", [1, 2, 3, 5]), ("specific:1,5,9", [1, 5])],
)
def test_version_policy(policy: str, selected: list[int]) -> None:
    assert VersionPolicy.parse(policy).select([3, 1, 5, 2]) == selected


@pytest.mark.parametrize("policy", ["newest", "latest:0", "latest:x", "specific:", "specific:a"])
def test_bad_version_policy(policy: str) -> None:
    with pytest.raises(ValueError, match="invalid version policy"):
        VersionPolicy.parse(policy)


def test_repository_select_applies_the_policy(repo: Repository, tiny_onnx: bytes) -> None:
    for _ in range(3):
        add_model(repo, "a", tiny_onnx)
    add_model(repo, "b", tiny_onnx)
    assert repo.select(VersionPolicy.parse("latest:2")) == {"a": [2, 3], "b": [1]}


def test_hidden_and_stray_folders_are_not_models(repo: Repository, tiny_onnx: bytes) -> None:
    add_model(repo, "tiny", tiny_onnx)
    (repo.root / "_samples").mkdir()
    (repo.root / "notes").mkdir()
    shutil.copytree(repo.root / "tiny", repo.root / ".backup")
    assert repo.names() == ["tiny"]


def test_one_model_and_a_repository_of_them_are_told_apart(
    repo: Repository, tiny_onnx: bytes, code_folder: Path, tiny_onnx_file: Path
) -> None:
    from modelport.repository import is_model_folder

    add_model(repo, "tiny", tiny_onnx)
    assert is_model_folder(repo.root / "tiny" / "1")  # a version: its manifest
    assert is_model_folder(repo.root / "tiny")  # a model: numbered versions
    assert is_model_folder(code_folder)  # a code model: its entry file
    assert not is_model_folder(repo.root)
    assert not is_model_folder(tiny_onnx_file)
    assert not is_model_folder(repo.root / "missing")


def test_a_hand_edited_signature_refuses_to_load(repo: Repository, tiny_onnx: bytes) -> None:
    add_model(repo, "tiny", tiny_onnx)
    path = repo.root / "tiny" / "1" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["signature"]["inputs"][0]["shape"] = [-1, 5]
    path.write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="signature differs from the model's own"):
        repo.load("tiny")


def test_symlinked_artifacts_refuse_to_load(
    repo: Repository, tiny_onnx: bytes, tmp_path: Path
) -> None:
    add_model(repo, "tiny", tiny_onnx)
    artifact = repo.root / "tiny" / "1" / "model.onnx"
    outside = tmp_path / "copy.onnx"
    outside.write_bytes(artifact.read_bytes())
    artifact.unlink()
    artifact.symlink_to(outside)
    with pytest.raises(IntegrityError, match="is a symbolic link"):
        repo.load("tiny")


def test_broken_entries_do_not_hide_the_others(
    repo: Repository, tiny_onnx: bytes, tmp_path: Path
) -> None:
    add_model(repo, "tiny", tiny_onnx)
    (repo.root / "a..b" / "1").mkdir(parents=True)
    (tmp_path / "outside" / "1").mkdir(parents=True)
    (repo.root / "escape").symlink_to(tmp_path / "outside")
    assert repo.names() == ["tiny"]


def test_an_onnx_graph_onnxruntime_rejects(one_node_onnx: Callable[[str, int], Path]) -> None:
    path = one_node_onnx("NoSuchOp", 17)
    with pytest.raises(modelport.ModelLoadError, match=rf"onnxruntime cannot load {path}: .*"):
        modelport.load(path)


def hand_written_version(repo: Repository, files: dict[str, bytes]) -> Path:
    """models/ext/1 written by hand: the files, and a manifest for them (y = x + w)."""
    from modelport.manifest import Manifest, hash_artifacts
    from modelport.signature import Signature

    folder = repo.root / "ext" / "1"
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    spec = [{"name": "x", "dtype": "float32", "shape": [1]}]
    signature = Signature.from_dict({"inputs": spec, "outputs": [{**spec[0], "name": "y"}]})
    Manifest("ext", 1, "onnx", signature, hash_artifacts(folder), {}).write(folder)
    return folder


def test_onnx_external_data_inside_the_version_folder_loads(
    repo: Repository, external_data_onnx: Callable[[str, str], bytes]
) -> None:
    hand_written_version(repo, {
        "model.onnx": external_data_onnx("initializer", "weights/w.bin"),
        "weights/w.bin": np.float32([1.5]).tobytes(),
    })  # fmt: skip
    assert repo.load("ext").predict(np.float32([1.0]))["y"].tolist() == [2.5]


@pytest.mark.parametrize("location", ["../../secret", "/etc/passwd", "weights/../../x"])
def test_a_hand_written_version_cannot_read_files_outside_its_folder(
    repo: Repository, external_data_onnx: Callable[[str, str], bytes], location: str
) -> None:
    folder = hand_written_version(repo, {"model.onnx": external_data_onnx("constant", location)})
    expected = f"tensor 'w' keeps its data in the file {location!r}, outside the model's folder"
    with pytest.raises(modelport.ModelLoadError, match=re.escape(expected)):
        repo.load("ext")
    with pytest.raises(modelport.ModelLoadError, match=re.escape(f"{folder / 'model.onnx'}: ")):
        modelport.load(folder / "model.onnx")
