"""The supervisor's logic without Ray: `supervisor.SupervisorCore`, a facade over its
parts (intake, dispatcher, parking, queries), admission, the mode machine, the retry
timers, and the two ports it is driven through."""
