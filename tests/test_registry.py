"""Every declared backend and precision is complete, and the tables read the declarations.

A half-added backend (a declaration whose engine or target does not import, a suffix another backend
claims, an extra missing from pyproject.toml, a precision no target builds) fails here, in CI. Each
declared backend is also held to the engine contract: tests/test_engine_contract.py adds a
`declared-<name>` entry per declaration (checked below), which builds its artifact with its own target
and opens it through `open_engine`.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from resnet_deploy import registry
from resnet_deploy.registry import DEVICES, Backend, Precision

ROOT = Path(__file__).resolve().parents[1]
IDENTIFIER = re.compile(r"^[a-z][a-z0-9_]*$")
BACKENDS = registry.backends()
PRECISIONS = registry.precisions()


def _extras() -> set[str]:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    with (ROOT / "pyproject.toml").open("rb") as handle:
        return set(tomllib.load(handle)["project"]["optional-dependencies"])


@pytest.mark.parametrize("spec", BACKENDS, ids=[b.name for b in BACKENDS])
def test_backend_declaration_is_complete(spec: Backend) -> None:
    assert IDENTIFIER.match(spec.name) and spec.display
    assert spec.suffixes and all(s.startswith(".") and s == s.lower() for s in spec.suffixes)
    assert spec.precisions and set(spec.precisions) <= set(registry.precision_names())
    assert spec.devices and set(spec.devices) <= set(DEVICES)
    assert spec.module and spec.distributions
    assert spec.extra is None or spec.extra in _extras(), f"extra {spec.extra!r} is not in pyproject.toml"
    for path in (spec.engine, spec.target, spec.opener):
        assert path is None or re.match(r"^[\w.]+:\w+$", path), path
    assert re.match(r"^#[0-9a-f]{6}$", spec.color)
    for precision, reason in spec.missing.items():
        assert reason and precision.split("-")[0] in registry.precision_names()
    for rule in spec.not_run:
        assert rule.precision in spec.precisions and set(rule.devices) <= set(spec.devices) and rule.reason
    assert set(spec.runtime_precisions) <= set(spec.precisions)
    assert all(flag.startswith("--") for flag in spec.options.values())
    if spec.triton is not None:
        assert spec.triton.model_file and bool(spec.triton.platform) != bool(spec.triton.backend)
    if spec.target is not None:  # something build-engine makes: a manifest, a place in `auto` or not
        assert spec.manifest_format and spec.manifest_fields
    if spec.verified_on_cpu:
        assert "cpu" in spec.devices and spec.judged_for and set(spec.judged_for) <= set(spec.devices)
    assert spec.source in ("onnx", "card")


@pytest.mark.parametrize("spec", BACKENDS, ids=[b.name for b in BACKENDS])
def test_backend_imports_resolve_where_installed(spec: Backend) -> None:
    from engines.base import Engine
    from resnet_deploy.targets.base import Target

    if not spec.installed():
        pytest.skip(f"{spec.display} is not installed ({spec.install_hint})")
    assert issubclass(spec.engine_class(), Engine)
    assert spec.engine_class().name == spec.name  # the engine reports the backend it is declared as
    if spec.opener is not None:
        assert callable(registry.load(spec.opener))
    target = spec.target_class()
    if target is not None:
        assert issubclass(target, Target) and target.name == spec.name
        assert target().suffixes == spec.suffixes and target().precisions == spec.precisions


def test_backends_do_not_collide() -> None:
    suffixes = [s for b in BACKENDS for s in b.suffixes]
    assert len(suffixes) == len(set(suffixes)), "two backends claim one suffix"
    formats = [b.manifest_format for b in BACKENDS if b.manifest_format]
    assert len(formats) == len(set(formats))
    ranks = [b.auto_rank for b in BACKENDS if b.auto_rank is not None]
    assert len(ranks) == len(set(ranks))
    assert len({b.name for b in BACKENDS}) == len(BACKENDS)


@pytest.mark.parametrize("spec", PRECISIONS, ids=[p.name for p in PRECISIONS])
def test_precision_declaration_is_complete(spec: Precision) -> None:
    assert IDENTIFIER.match(spec.name) and spec.display
    drop, agreement = spec.gate
    assert drop >= 0 and 0 < agreement <= 100 and spec.build_margin >= 0
    assert spec.flag is None or (spec.flag.startswith("--") and spec.help)
    assert set(spec.remainders) <= set(registry.precision_names())
    if spec.maker is not None:  # made as an ONNX model: it says so in the model's metadata, and the maker imports
        assert spec.metadata and callable(registry.load(spec.maker))
    builders = [b for b in registry.target_names() if spec.name in registry.backend(b).precisions]
    assert builders, f"no target builds {spec.name}"
    assert spec.tag() == spec.name


def test_exactly_one_default_precision() -> None:
    assert [p.name for p in PRECISIONS if p.flag is None] == ["fp32"]


def test_contract_suite_covers_every_declared_backend() -> None:
    from test_engine_contract import ENGINE_FACTORIES

    ids = {factory.id for factory in ENGINE_FACTORIES}
    assert {f"declared-{name}" for name in registry.backend_names()} <= ids


def test_tables_read_the_declarations() -> None:
    from resnet_deploy import artifacts, builder, gates, versions
    from resnet_deploy.bench import plan
    from resnet_deploy.commands.build_engine_cmd import _TARGET_HELP
    from resnet_deploy.serving import triton
    from resnet_deploy.targets import base

    names = registry.backend_names()
    assert tuple(artifacts.SUFFIXES) == names and names == plan.BACKENDS
    assert set(base.TARGET_NAMES) == set(registry.target_names()) == set(builder.TARGETS) - {"auto"}
    assert base.AUTO_ORDER == ("tensorrt", "openvino", "onnxruntime")
    assert set(artifacts.MANIFEST_FORMATS) == set(registry.target_names())
    assert {b.module for b in BACKENDS} <= set(versions.DISTRIBUTIONS)
    assert set(gates.DEFAULT_GATES) == set(gates.BUILD_MARGIN) == set(registry.precision_names())
    assert registry.precision_names() == plan.PRECISIONS
    assert set(triton.MODEL_FILES) == {b.name for b in BACKENDS if b.triton is not None}
    assert all(name in _TARGET_HELP for name in registry.target_names())


def test_registry_imports_no_runtime() -> None:
    """The declarations are data: listing them imports no inference runtime."""
    code = ("import sys; import resnet_deploy.registry as r; r.backends(); r.precisions(); "
            "print(sorted(m for m in ('onnxruntime', 'openvino', 'tensorrt', 'torch', 'onnx') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT,
                         env={"PYTHONPATH": str(ROOT)})
    assert out.stdout.strip() == "[]"


def test_bench_skips_come_from_the_declarations() -> None:
    from resnet_deploy.bench.plan import precision_unsupported

    assert "no INT8 path" in (precision_unsupported("torch", "int8", "cpu") or "")
    assert "emulated" in (precision_unsupported("torch", "fp16", "cpu") or "")
    assert precision_unsupported("torch", "fp16", "cuda") is None
    assert precision_unsupported("onnxruntime", "bf16", "cpu") is not None
    assert precision_unsupported("openvino", "fp16", "cpu") is not None
    assert precision_unsupported("openvino", "bf16", "cpu") is None
    assert registry.backend("openvino").timed_as_built("fp16", "cpu")


def test_build_request_carries_one_precision() -> None:
    from resnet_deploy.builder import BuildRequest, precision_from_flags
    from resnet_deploy.errors import UsageError

    assert precision_from_flags(int8=True, fp16=True) == {"precision": "int8", "fp16_remainder": True}
    assert BuildRequest(**precision_from_flags(int8=True, fp16=True)).tag == "int8-fp16"
    assert BuildRequest(**precision_from_flags(bf16=True)).tag == "bf16"
    with pytest.raises(UsageError, match="do not combine"):
        precision_from_flags(bf16=True, fp16=True)
    with pytest.raises(UsageError, match="do not combine"):
        precision_from_flags(bf16=True, int8=True)


def test_build_checks_come_from_the_declarations() -> None:
    from resnet_deploy.builder import BuildRequest, check_for_target
    from resnet_deploy.errors import UsageError

    with pytest.raises(UsageError, match="use --target openvino"):
        check_for_target(BuildRequest(precision="bf16"), "onnxruntime")
    with pytest.raises(UsageError, match="use --int8 alone"):
        check_for_target(BuildRequest(precision="int8", fp16_remainder=True), "openvino")
    assert check_for_target(BuildRequest(precision="int8", fp16_remainder=True), "onnxruntime") == []
    options = {"max_batch": 8}
    with pytest.raises(UsageError, match="--max-batch: TensorRT options, but the target is openvino"):
        check_for_target(BuildRequest(target="openvino", options=options), "openvino")
    assert check_for_target(BuildRequest(target="auto", options=options), "openvino") == [
        "--max-batch ignored: TensorRT options, but the target is openvino"]
    assert check_for_target(BuildRequest(target="tensorrt", options=options), "tensorrt") == []
