"""The supervisor's logic without Ray: `supervisor.SupervisorCore` and its parts
(intake, queries, suspension), admission, the mode machine, the retry timers, and the
two ports it is driven through."""
