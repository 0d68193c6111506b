"""`ray-cluster.yaml` is a valid `ray up` config (checked offline with Ray's own validator)."""

from __future__ import annotations

from pathlib import Path

import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CONFIG = Path(__file__).parents[2] / "ray-cluster.yaml"


def test_ray_up_config_validates_and_pins_ray() -> None:
    config = yaml.safe_load(CONFIG.read_text())
    validate_config(prepare_config(config))
    assert config["provider"]["type"] == "local"
    assert any('ray[default]==2.60.0' in cmd for cmd in config["setup_commands"])
    starts = " ".join(config["head_start_ray_commands"] + config["worker_start_ray_commands"])
    assert "RAY_USAGE_STATS_ENABLED=0" in starts and "RAY_AUTH_MODE=" in starts
