"""The cluster configs ship valid: `ray-cluster.yaml` (checked offline with Ray's own
validator), its GCS fault-tolerance switch, and the KubeRay RayCluster, RayJob and
image they run, all pinned to the Ray version the project depends on."""

from __future__ import annotations

import re
import shlex
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from cluster.cli import parser
from workflows.command import resolve_type

ROOT = Path(__file__).parents[2]
CONFIG = ROOT / "ray-cluster.yaml"
KUBERAY = ROOT / "cluster" / "kuberay"


def _pinned_ray() -> str:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    [pin] = [d for d in deps if d.startswith("ray[")]
    return pin.split("==")[1]


def test_ray_up_config_validates_and_pins_ray() -> None:
    config = yaml.safe_load(CONFIG.read_text())
    validate_config(prepare_config(config))
    assert config["provider"]["type"] == "local"
    assert any(f'ray[default]=={_pinned_ray()}' in cmd for cmd in config["setup_commands"])
    starts = " ".join(config["head_start_ray_commands"] + config["worker_start_ray_commands"])
    assert "RAY_USAGE_STATS_ENABLED=0" in starts and "RAY_AUTH_MODE=" in starts
    for source in config["file_mounts"].values():
        assert (ROOT / source).exists(), f"file_mounts source {source} is missing"


def _head_start(env_file: Path) -> str:
    """The head's start command as the head's shell would expand it, with `ray` echoed."""
    config = yaml.safe_load(CONFIG.read_text())
    command = config["head_start_ray_commands"][-1].replace("/home/ubuntu/gcs-ft.env", str(env_file))
    script = f"ray() {{ echo \"RAY_REDIS_ADDRESS=${{RAY_REDIS_ADDRESS:-}} ray $*\"; }}\n{command}\n"
    return subprocess.run(["bash", "-c", script], check=True, capture_output=True, text=True).stdout


def test_gcs_fault_tolerance_is_off_as_shipped_and_on_with_redis(tmp_path: Path) -> None:
    shipped = _head_start(ROOT / "cluster" / "gcs-ft.env")
    assert shipped.startswith("RAY_REDIS_ADDRESS= ray start --head") and "--redis-password" not in shipped
    env = tmp_path / "gcs-ft.env"
    env.write_text("RAY_REDIS_ADDRESS=redis.internal:6379\nCOORDINATOR_REDIS_PASSWORD=s3cret\n")
    with_redis = _head_start(env)
    assert with_redis.startswith("RAY_REDIS_ADDRESS=redis.internal:6379 ray start --head")
    assert "--redis-password=s3cret" in with_redis


def _containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def test_kuberay_cluster_pins_ray_and_keeps_the_gcs_in_redis() -> None:
    cluster = yaml.safe_load((KUBERAY / "raycluster.yaml").read_text())
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    spec = cluster["spec"]
    assert spec["rayVersion"] == _pinned_ray()
    ft = spec["gcsFaultToleranceOptions"]
    assert ft["redisAddress"] and ft["redisPassword"]["valueFrom"]["secretKeyRef"]["name"]
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    dockerfile = (KUBERAY / "Dockerfile").read_text()
    assert re.search(rf"^FROM rayproject/ray:{re.escape(_pinned_ray())}-py311$", dockerfile, re.M)
    for container in _containers(spec):
        assert container["image"] == f"ray-coordinator:{version}"
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["RAY_USAGE_STATS_ENABLED"] == "0" and env["RAY_AUTH_MODE"] == "token"
    for group in spec["workerGroupSpecs"]:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]


def test_kuberay_job_runs_real_cli_commands_on_that_cluster() -> None:
    job = yaml.safe_load((KUBERAY / "rayjob.yaml").read_text())
    cluster = yaml.safe_load((KUBERAY / "raycluster.yaml").read_text())
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    assert job["spec"]["clusterSelector"]["ray.io/cluster"] == cluster["metadata"]["name"]
    runtime_env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    assert runtime_env["env_vars"]["RAY_USAGE_STATS_ENABLED"] == "0"
    commands = [shlex.split(part) for part in job["spec"]["entrypoint"].split("&&")]
    assert [c[0] for c in commands] == ["coordinator", "coordinator"]
    parsed = [parser().parse_args(c[1:]) for c in commands]
    assert parsed[0].cmd == "start" and parsed[1].cmd == "submit"
    resolve_type(parsed[1].type)
