"""What a pool asks its CommandActors about a deployment survives one of them ending meanwhile."""

from __future__ import annotations

from typing import Any

import pytest
from ray.exceptions import ActorDiedError, ActorUnavailableError

from actors import pools
from actors.options import Options
from workflows.errors import WorkerLost


class Method:
    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.asked = 0

    async def _call(self) -> Any:
        self.asked += 1
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer

    def remote(self, *args: Any) -> Any:
        return self._call()


class Handle:
    def __init__(self, answer: Any) -> None:
        self.importable = Method(answer)


def _pool(*answers: Any) -> pools.RayPools:
    pool = pools.RayPools(Options(gateway=None), None, None)
    for n, answer in enumerate(answers):
        pool.workers.append(pools.Worker(Handle(answer), "d", f"command-d-{n}"))
    return pool


async def test_a_type_is_asked_of_the_next_actor_when_one_ends_during_the_question() -> None:
    pool = _pool(ActorDiedError(), ActorUnavailableError("restarting", None), {"m:T": None})
    assert await pool.importable("d", ["m:T"]) == {"m:T": None}
    assert [w.handle.importable.asked for w in pool.workers] == [1, 1, 1]


async def test_when_no_actor_answers_nothing_is_concluded_about_the_type() -> None:
    pool = _pool(ActorDiedError(), ActorDiedError())
    with pytest.raises(WorkerLost, match="no CommandActor of deployment d answered"):
        await pool.importable("d", ["m:T"])
    assert await _pool().importable("d", ["m:T"]) == {"m:T": "deployment d has no CommandActor"}
