"""Deployment files: docker-compose.yml is valid for Compose, and the image installs exactly
what the project pins (Flink wheel <-> connector jar <-> Flink image)."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from contracts.config import REPO_ROOT

pytestmark = pytest.mark.unit


def compose_command() -> list[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True)
    if probe.returncode == 0:
        return ["docker", "compose"]
    raise AssertionError("neither docker-compose nor the docker compose plugin is installed; "
                         "`make test` installs docker-compose (scripts/install-test-tools.sh)")


def test_compose_config_is_valid():
    proc = subprocess.run(compose_command() + ["config", "-q"], cwd=REPO_ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    rendered = subprocess.run(compose_command() + ["config"], cwd=REPO_ROOT,
                              capture_output=True, text=True, check=True).stdout
    services = yaml.safe_load(rendered)["services"]
    assert {"kafka", "jobmanager", "taskmanager", "submit"} <= set(services)
    assert "ranking_job.py" in str(services["submit"]["command"])


def _pins() -> dict[str, str]:
    constraints = (REPO_ROOT / "constraints.txt").read_text()
    pom = (REPO_ROOT / "jvm" / "pom.xml").read_text()
    return {
        "flink": re.search(r"^apache-flink==([\d.]+)$", constraints, re.M).group(1),
        "connector": re.search(r"<flink.kafka.connector.version>([^<]+)<", pom).group(1),
        "kafka": re.search(r"<kafka.version>([^<]+)<", pom).group(1),
    }


def test_image_installs_exactly_the_pinned_versions():
    pins = _pins()
    dockerfile = (REPO_ROOT / "docker" / "Dockerfile").read_text()
    assert f"ARG FLINK_VERSION={pins['flink']}" in dockerfile
    assert f"ARG KAFKA_CONNECTOR_VERSION={pins['connector']}" in dockerfile
    assert pins["connector"].endswith("-" + ".".join(pins["flink"].split(".")[:2]))
    assert "-c constraints.txt" in dockerfile and "pip check" in dockerfile
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    assert compose["services"]["kafka"]["image"] == f"apache/kafka:{pins['kafka']}"
