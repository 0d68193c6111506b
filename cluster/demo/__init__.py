"""The demo: `run.run_demo` drives BookTrip sagas against the HTTP services of
`services.ServiceHost`, with faults injected (``coordinator demo``, ``make demo``)."""
