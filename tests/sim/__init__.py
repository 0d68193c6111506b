"""Deterministic simulation of the coordinator and its replicated journal, without Ray.

A seed fixes everything: the options, the workload, the services' answers, the faults
and the order in which ready tasks run on a virtual-time event loop (`loop`). After a
run, invariants are checked against the journal's whole history (`checks`). A failing
seed replays exactly: ``python -m tests.sim --seed S``.
"""
