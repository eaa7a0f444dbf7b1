"""The runner: cadence (steps, evaluation, checkpoints, logging), the stateful-stage registry, reports."""
