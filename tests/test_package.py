import subprocess
import sys

import modelport

PUBLIC_API = [
    "AsyncClient",
    "BatchConfig",
    "BatchError",
    "Client",
    "ConversionError",
    "DeadlineExceededError",
    "InputLimits",
    "IntegrityError",
    "InvalidInputError",
    "InvalidNameError",
    "LoadOptions",
    "LookupConfig",
    "Manifest",
    "ManifestError",
    "MissingDependencyError",
    "Model",
    "ModelLoadError",
    "ModelNotFoundError",
    "ModelportError",
    "NotStoredError",
    "OverloadedError",
    "PredictionError",
    "Repository",
    "RequirementsError",
    "RetryPolicy",
    "RuntimeConfig",
    "ServerConfig",
    "ServerLimits",
    "Signature",
    "StoreError",
    "TensorSpec",
    "Tolerance",
    "UntrustedArtifactError",
    "VersionPolicy",
    "__version__",
    "add_model",
    "load",
    "validate_inputs",
]


def test_public_api_is_exactly_the_curated_list() -> None:
    assert modelport.__all__ == PUBLIC_API
    assert sorted(modelport.__all__) == modelport.__all__
    for name in modelport.__all__:
        assert getattr(modelport, name) is not None


def test_every_error_derives_from_modelport_error() -> None:
    errors = [getattr(modelport, n) for n in PUBLIC_API if n.endswith("Error")]
    assert all(issubclass(e, modelport.ModelportError) for e in errors)


def test_import_loads_no_heavy_dependency() -> None:
    heavy = ["onnxruntime", "onnx", "torch", "sklearn", "sqlalchemy", "skl2onnx", "grpc", "ray",
             "graphql", "google.protobuf"]  # fmt: skip
    code = (
        f"import sys, modelport, modelport.cli\nprint([m for m in {heavy!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
