import ast
import subprocess
import sys
from pathlib import Path

import modelport

PUBLIC_API = [
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


def import_graph(root: Path) -> dict[str, set[str]]:
    """What every module under ``root`` imports from modelport, at any depth of its code.

    ``from modelport.x import y`` counts as importing ``modelport.x.y`` when that is a module,
    else ``modelport.x``. The parent packages Python runs first are not counted: a module that
    imports its own package's submodule would otherwise always be a cycle.
    """
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if "proto" in parts:  # generated gRPC code (scripts/gen_proto.sh)
            continue
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from . import x, from ..y import z
                    anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{anchor}.{base}" if base else anchor
                for alias in node.names:
                    imported.add(
                        f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                    )
        graph[name] = {m for m in imported if m in modules and m != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (a depth-first search)."""
    done: set[str] = set()
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        if module in path:
            return [*path[path.index(module) :], module]
        if module in done:
            return None
        path.append(module)
        for target in sorted(graph[module]):
            cycle = visit(target)
            if cycle:
                return cycle
        path.pop()
        done.add(module)
        return None

    for module in sorted(graph):
        cycle = visit(module)
        if cycle:
            return cycle
    return None


def test_no_import_cycles() -> None:
    """Dependencies go one way: no module imports, even lazily, one that imports it back."""
    graph = import_graph(Path(modelport.__file__).parent)
    assert {"modelport.cli", "modelport.model", "modelport.repository"} <= set(graph)
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_cycles_through_lazy_and_submodule_imports(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg.sub import b\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "b.py").write_text("def f():\n    from ..c import g\n")
    (package / "c.py").write_text("import pkg.a\n")
    graph = import_graph(package)
    assert graph["pkg.a"] == {"pkg.sub.b"}
    assert find_cycle(graph) == ["pkg.a", "pkg.sub.b", "pkg.c", "pkg.a"]
    (package / "c.py").write_text("from pkg import sub\n")
    assert find_cycle(import_graph(package)) is None
