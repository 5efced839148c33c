"""docker-compose.yml describes the scaled-out shape; `docker compose config` checks it where installed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"


def test_services_and_their_order() -> None:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    assert set(services) == {"api", "worker", "train-worker", "redis", "postgres", "flower", "migrate"}
    for name in ("api", "worker", "train-worker"):
        env = services[name]["environment"]
        assert env["GRADLIFT_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert env["GRADLIFT_BROKER_URL"].startswith("redis://")
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert services["migrate"]["command"] == ["gradlift", "migrate"]
    assert services["train-worker"]["command"] == ["gradlift", "worker", "--train"]


def has_compose() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30).returncode == 0


@pytest.mark.skipif(not has_compose(), reason="docker compose is not installed")
def test_docker_compose_config_validates() -> None:
    subprocess.run(["docker", "compose", "-f", str(COMPOSE), "config", "--quiet"], check=True, timeout=60)
