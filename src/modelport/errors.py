"""Every error modelport raises on purpose.

    ModelportError
     ├── InvalidInputError        inputs do not match the model's signature
     ├── InvalidNameError         a model name or version that is not allowed
     ├── ModelNotFoundError       no such model or version in the repository
     ├── ModelLoadError           a model exists but cannot be loaded
     │    ├── ManifestError           manifest.json missing or malformed
     │    ├── IntegrityError          an artifact's sha256 differs from the manifest
     │    ├── RequirementsError       this environment lacks what the version was built with
     │    ├── UntrustedArtifactError  pickle/joblib or code model without an explicit opt-in
     │    └── WarmupError             a version loaded but failed or misbehaved on its sample
     ├── ConversionError          a framework model could not become ONNX, or lost parity
     ├── PredictionError          the model itself raised while predicting
     ├── OverloadedError          a model's queue is full, or the server is draining
     │    └── NotReadyError           the server is still loading its models, or draining
     ├── DeadlineExceededError    a request's deadline passed before it was served
     ├── ConflictError            another load or unload of the same model is running
     ├── RolloutError             a traffic split or shadow that cannot apply to the repository
     ├── ServiceUnreachableError  the client cannot connect to the service (also a ConnectionError)
     ├── BatchError               a batch run cannot go on: its source, mapping or reject ratio
     ├── StoreError               a prediction store or log cannot be reached or written
     ├── NotStoredError           no stored prediction for a key
     ├── OptimizationError        a model cannot be quantized, distilled or benchmarked as asked
     │    └── AccuracyDropError       the optimized model lost more accuracy than allowed
     ├── DeployError              an image or a deployment can't be made: pins, builder, tag, output
     └── MissingDependencyError   an optional extra is not installed

Messages say what happened, why, and what to do about it. Transports (REST, gRPC, CLI) map
these to their own status codes; nothing here knows about them.
"""

from __future__ import annotations


class ModelportError(Exception):
    """Root of every error modelport raises on purpose."""


class InvalidInputError(ModelportError):
    """Inputs do not match the model's signature.

    ``input_name`` names the offending input when there is one.
    """

    def __init__(self, message: str, input_name: str | None = None) -> None:
        super().__init__(message)
        self.input_name = input_name


class InvalidNameError(ModelportError):
    """A model name or version that could escape the repository or is malformed."""


class ModelNotFoundError(ModelportError):
    """No model, or no such version of it, in the repository."""


class ModelLoadError(ModelportError):
    """A model exists but cannot be loaded."""


class ManifestError(ModelLoadError):
    """A version's manifest.json is missing or malformed."""


class IntegrityError(ModelLoadError):
    """An artifact's sha256 differs from the one its manifest recorded."""


class RequirementsError(ModelLoadError):
    """The running environment does not satisfy what a model version was built with."""


class UntrustedArtifactError(ModelLoadError):
    """A pickle or joblib file, or a code model, refused because loading it runs arbitrary
    code; ``trust_pickle`` / ``trust_code`` opt in."""


class WarmupError(ModelLoadError):
    """A version loaded but raised, or answered out of its signature, on its sample inputs:
    it never takes traffic."""


class ConversionError(ModelportError):
    """A framework model could not be converted to ONNX, or its outputs changed."""


class PredictionError(ModelportError):
    """The model raised while predicting on inputs that passed validation."""


class OverloadedError(ModelportError):
    """No capacity now: a model's queue is full, or the server is shutting down.

    ``retry_after_s`` says when trying again makes sense.
    """

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class NotReadyError(OverloadedError):
    """The server cannot take work at all now: its models are loading, or it is shutting down.

    An OverloadedError for clients that retry on either; transports that tell the two apart
    (gRPC: UNAVAILABLE rather than RESOURCE_EXHAUSTED) match this one first.
    """


class DeadlineExceededError(ModelportError):
    """A request's deadline passed before its answer was ready."""


class ConflictError(ModelportError):
    """Another load or unload of the same model is running; try again when it is done."""


class RolloutError(ModelportError):
    """A traffic split or shadow that cannot apply: weights that do not sum to 100, a version
    the repository lacks, a candidate whose outputs differ from the live version's."""


class ServiceUnreachableError(ModelportError, ConnectionError):
    """The Client cannot connect to the service: it is down, or the URL is wrong.

    Retried like overload, and answered by a Client's fallback when it has one.
    """


class BatchError(ModelportError):
    """A batch run cannot go on: unreadable source, unmappable columns, too many rejects."""


class StoreError(ModelportError):
    """The prediction store cannot be reached or written (after retries)."""


class NotStoredError(ModelportError):
    """No stored prediction for a key, and no features to compute one from."""


class OptimizationError(ModelportError):
    """A model cannot be quantized, distilled or benchmarked as asked: its operators, its
    signature, the rows given or the student asked for do not allow it."""


class AccuracyDropError(OptimizationError):
    """Every candidate lost more accuracy (or agreement with its parent) than the budget
    allows, so nothing was imported. ``report`` holds the measurements."""

    def __init__(self, message: str, report: object = None) -> None:
        super().__init__(message)
        self.report = report


class DeployError(ModelportError):
    """An image or a deployment cannot be made: pins that conflict, no builder or one that
    failed, a tag that is not an image reference, an output folder that exists."""


class MissingDependencyError(ModelportError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


def installed(module: str) -> bool:
    """Can ``module`` be imported (without importing it)?"""
    import importlib.util

    return importlib.util.find_spec(module) is not None


def require(module: str, extra: str) -> None:
    """Raise MissingDependencyError unless ``module`` can be imported."""
    if not installed(module):
        raise MissingDependencyError(
            f"{module} is not installed; install it with: pip install 'modelport[{extra}]'"
        )
