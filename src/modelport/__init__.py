"""modelport: take a trained model from a notebook to production.

    import modelport
    model = modelport.load("models/digits")        # an .onnx file, a version or model folder
    model.predict(x)                               # -> {"label": ..., "probabilities": ...}

Importing this package loads no model runtime: onnxruntime, torch and scikit-learn are imported
when first used.
"""

from modelport.client import AsyncClient, Client
from modelport.config import (
    BatchConfig,
    InputLimits,
    LoadOptions,
    LookupConfig,
    RetryPolicy,
    RuntimeConfig,
    ServerConfig,
    ServerLimits,
)
from modelport.convert.parity import Tolerance
from modelport.errors import (
    AccuracyDropError,
    BatchError,
    ConflictError,
    ConversionError,
    DeadlineExceededError,
    DeployError,
    IntegrityError,
    InvalidInputError,
    InvalidNameError,
    ManifestError,
    MissingDependencyError,
    ModelLoadError,
    ModelNotFoundError,
    ModelportError,
    NotStoredError,
    OptimizationError,
    OverloadedError,
    PredictionError,
    RequirementsError,
    RolloutError,
    ServiceUnreachableError,
    StoreError,
    UntrustedArtifactError,
    WarmupError,
)
from modelport.importing import add_model
from modelport.manifest import Manifest
from modelport.model import Model
from modelport.repository import Repository, VersionPolicy, load
from modelport.signature import Signature, TensorSpec, validate_inputs

__version__ = "0.1.0"

__all__ = [
    "AccuracyDropError",
    "AsyncClient",
    "BatchConfig",
    "BatchError",
    "Client",
    "ConflictError",
    "ConversionError",
    "DeadlineExceededError",
    "DeployError",
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
    "OptimizationError",
    "OverloadedError",
    "PredictionError",
    "Repository",
    "RequirementsError",
    "RetryPolicy",
    "RolloutError",
    "RuntimeConfig",
    "ServerConfig",
    "ServerLimits",
    "ServiceUnreachableError",
    "Signature",
    "StoreError",
    "TensorSpec",
    "Tolerance",
    "UntrustedArtifactError",
    "VersionPolicy",
    "WarmupError",
    "__version__",
    "add_model",
    "load",
    "validate_inputs",
]
