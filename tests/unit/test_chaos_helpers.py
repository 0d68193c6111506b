"""The chaos drivers' own helpers: a harness that races the product fails runs for nothing."""
from typing import Any

import pytest
import ray

from tests.chaos import deploys


def test_an_actor_ended_between_listing_and_lookup_is_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    listed = [{"namespace": "ns", "name": "command-d1-1"}, {"namespace": "ns", "name": "command-d1-2"},
              {"namespace": "other", "name": "command-d1-3"}, {"namespace": "ns", "name": "command-d2-1"}]

    def get_actor(name: str, namespace: str) -> Any:
        if name == "command-d1-2":  # a respread retired and ended it after the listing
            raise ValueError(f"Failed to look up actor with name '{name}'")
        return (namespace, name)

    monkeypatch.setattr(ray.util, "list_named_actors", lambda all_namespaces: listed)
    monkeypatch.setattr(ray, "get_actor", get_actor)
    assert deploys.actors_of("ns", "d1") == [("ns", "command-d1-1")]
