"""How a run stops on purpose (the CLI maps each to its exit code)."""

from __future__ import annotations


class EngineStopped(RuntimeError):
    """The run stopped because a served engine died and did not come back (its message says which,
    where its log is, and what was checkpointed)."""
