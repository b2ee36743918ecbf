"""deploy/helm/README.md's Install section is the exact command sequence an operator runs."""

from __future__ import annotations

import re
import shlex

from tests.deploy.chart import CHART, ROOT, fleet_values, notes

README = ROOT / "deploy" / "helm" / "README.md"


def install_commands() -> list[str]:
    """The shell commands of the Install section's code block, continuations joined."""
    section = README.read_text().split("## Install", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "the Install section has no sh code block"
    text = block.group(1).replace("\\\n", " ")
    return [
        " ".join(line.split())
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def test_install_steps_are_in_order() -> None:
    commands = install_commands()
    expected_prefixes = [
        "helm repo add kuberay https://ray-project.github.io/kuberay-helm/",
        "helm repo update",
        "helm install kuberay-operator kuberay/kuberay-operator",
        "kubectl -n kuberay-system rollout status deployment/kuberay-operator",
        "kubectl create namespace cunliang",
        "kubectl -n cunliang create secret generic cunliang-db",
        "kubectl label node",
        "helm install cunliang deploy/helm/cunliang --namespace cunliang -f deploy/helm/cunliang/examples/values-fleet.yaml",
        "kubectl -n cunliang rollout status statefulset/cunliang-gateway",
        "kubectl -n cunliang get raycluster cunliang",
        "kubectl -n cunliang get secret cunliang-admin",
        "kubectl -n cunliang exec statefulset/cunliang-gateway -- cunliang tenant add",
        "kubectl -n cunliang exec statefulset/cunliang-gateway -- cunliang key create",
        "curl https://llm.example.com/v1/models",
    ]
    assert len(commands) == len(expected_prefixes), commands
    for command, prefix in zip(commands, expected_prefixes, strict=True):
        assert command.startswith(prefix), (command, prefix)
        shlex.split(command)  # well-formed shell quoting


def test_commands_match_the_chart_and_fleet_values() -> None:
    commands = install_commands()
    values = fleet_values()
    secret = next(c for c in commands if "create secret generic" in c)
    assert f"secret generic {values['database']['existingSecret']} " in secret
    assert f"--from-literal={values['database']['key']}=" in secret
    install = next(c for c in commands if c.startswith("helm install cunliang"))
    path = shlex.split(install)[3]
    assert (ROOT / path).resolve() == CHART.resolve()
    label = next(c for c in commands if c.startswith("kubectl label node"))
    assert f"{values['siteNodeLabel']}=" in label
    # the README and the chart's NOTES agree on how to get the first key
    printed = notes(values)
    for step in (
        "cunliang tenant add acme",
        "cunliang key create acme",
        "get secret cunliang-admin",
    ):
        assert step in printed and any(step in c for c in commands)
