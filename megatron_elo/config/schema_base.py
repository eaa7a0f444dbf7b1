"""The field helper every config group uses (its own module so that groups kept in other files share it)."""

from __future__ import annotations

from dataclasses import MISSING, field
from typing import Any


def opt(default: Any = MISSING, help: str = "", *, factory: Any = MISSING) -> Any:
    """A dataclass field with a help string (``help`` is shown by ``train --help``)."""
    if factory is not MISSING:
        return field(default_factory=factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})
