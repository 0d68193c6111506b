"""`Options`: the documented defaults, validation that names the field, storage normalisation."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest

from actors.options import Options, normalize_storage


def test_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    o = Options()
    assert (o.max_cmds, o.slow_retry_interval_s, o.fast_retry_interval_s, o.jitter_s, o.admission_timeout_s) == (
        100, 0.2, 0.0, 0.1, 30)
    assert o.storage == f"file://{tmp_path / 'coordinator-data'}"
    assert (o.replicas, o.slots_per_actor, o.namespace, o.runtime_env, o.fsync) == (1, 64, "coordinator", None, True)
    assert o.command_actors is None and o.retention_s > 0 and o.log_level == "warning"
    assert o.segment_bytes == 64 << 20 and o.max_payload_bytes == 1 << 20


def test_frozen_and_replace_validates_again() -> None:
    o = Options(storage="mem://x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.max_cmds = 5  # type: ignore[misc]
    assert o.replace(max_cmds=5).max_cmds == 5 and o.max_cmds == 100
    with pytest.raises(ValueError, match="max_cmds"):
        o.replace(max_cmds=0)


INTERVALS = ["slow_retry_interval_s", "fast_retry_interval_s", "jitter_s", "admission_timeout_s", "retention_s",
             "replica_timeout_s"]
COUNTS = ["max_cmds", "replicas", "command_actors", "slots_per_actor", "max_payload_bytes", "segment_bytes"]
BAD: list[tuple[str, Any]] = [
    *[(name, -0.001) for name in INTERVALS],
    *[(name, float("nan")) for name in INTERVALS],
    *[(name, "1") for name in INTERVALS],
    *[(name, None) for name in INTERVALS],
    *[(name, 0) for name in COUNTS],
    *[(name, -1) for name in COUNTS],
    *[(name, 2.5) for name in COUNTS],
    *[(name, "3") for name in COUNTS],
    ("namespace", ""),
    ("log_level", "loud"),
]


@pytest.mark.parametrize(("field", "value"), BAD, ids=[f"{f}={v!r}" for f, v in BAD])
def test_bad_values_raise_value_error_naming_the_field(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=rf"Options\.{field}\b"):
        Options(storage="mem://x", **{field: value})


@pytest.mark.parametrize("name", INTERVALS)
def test_zero_and_integers_are_fine_for_intervals(name: str) -> None:
    assert getattr(Options(storage="mem://x", **{name: 0}), name) == 0
    assert getattr(Options(storage="mem://x", **{name: 5}), name) == 5


@pytest.mark.parametrize(
    ("storage", "message"),
    [
        ("ftp://host/dir", "unknown scheme 'ftp'"),
        ("gs://bucket", "unknown scheme 'gs'"),
        ("file://relative", "absolute path"),
        ("file://data/journal", "absolute path"),  # would otherwise land in /journal
        ("", "a path or a URI"),
        (5, "a path or a URI"),
    ],
)
def test_bad_storage_raises_value_error_naming_the_field(storage: Any, message: str) -> None:
    with pytest.raises(ValueError, match=r"Options\.storage") as info:
        Options(storage=storage)
    assert message in str(info.value)


def test_a_plain_path_becomes_an_absolute_file_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert Options(storage="data/journal").storage == f"file://{tmp_path}/data/journal"
    assert Options(storage="./x/../y").storage == f"file://{tmp_path}/y"
    assert Options(storage=str(tmp_path / "abs")).storage == f"file://{tmp_path}/abs"
    assert normalize_storage("/var/lib/coordinator") == "file:///var/lib/coordinator"
    assert os.path.isabs(Options(storage="rel").storage.removeprefix("file://"))


@pytest.mark.parametrize("uri", ["file:///var/lib/coordinator", "file://localhost/var/lib/c", "s3://bucket/prefix",
                                 "s3://bucket/prefix?endpoint=http://127.0.0.1:9000", "mem://tests"])
def test_uris_are_kept(uri: str) -> None:
    assert Options(storage=uri).storage == uri


def test_max_payload_bytes_stays_well_under_the_journal_record_limit() -> None:
    from actors.journal import codec
    from actors.options import MAX_PAYLOAD_BYTES

    assert MAX_PAYLOAD_BYTES <= codec.MAX_RECORD_BYTES // 4
    assert Options(storage="mem://x", max_payload_bytes=MAX_PAYLOAD_BYTES).max_payload_bytes == MAX_PAYLOAD_BYTES
    with pytest.raises(ValueError, match=r"Options\.max_payload_bytes must be at most"):
        Options(storage="mem://x", max_payload_bytes=MAX_PAYLOAD_BYTES + 1)


@pytest.mark.parametrize("gateway", ["json", "json:", ":loads", "my module:f", "a:b c", "a::b", 3, ""])
def test_gateway_must_be_module_colon_factory(gateway: Any) -> None:
    with pytest.raises(ValueError, match=r"Options\.gateway must be None or 'module:factory'"):
        Options(storage="mem://x", gateway=gateway)


def test_gateway_forms_taken() -> None:
    for gateway in (None, "workflows.gateway:HttpGateway", "pkg.mod:Factory.build", "_m:_f"):
        assert Options(storage="mem://x", gateway=gateway).gateway == gateway


@pytest.mark.parametrize(("gateway", "reason"), [
    ("no_such_module_for_tests:make", "cannot be imported"),
    ("json:no_such_factory", "has no 'no_such_factory'"),
    ("json:__doc__", "not callable"),
    ("json:loads", "the factory raised TypeError"),  # json.loads(options) raises
])
def test_a_gateway_that_cannot_be_built_is_a_value_error_naming_the_option(gateway: str, reason: str) -> None:
    from actors.inprocess import LocalCoordinator
    from actors.runner import build_gateway

    options = Options(storage="mem://gateway-test", gateway=gateway)
    with pytest.raises(ValueError, match=rf"Options\.gateway='{gateway}'.*{reason}"):
        build_gateway(options)
    with pytest.raises(ValueError, match=r"Options\.gateway"):
        LocalCoordinator(options)
