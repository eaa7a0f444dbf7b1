"""What every ``megatron-elo bench`` table shares: the device label in its header and its output."""

from __future__ import annotations

import os
import platform


def device_label(device: str, cpu_note: str) -> str:
    """The GPU's name, or "CPU (<arch>, <n> cores), <cpu_note>" (e.g. how the CPU run differs)."""
    if device == "cuda":
        import torch

        return torch.cuda.get_device_name()
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores), {cpu_note}"


def emit_table(table: str, out: str | None) -> None:
    """Print a benchmark's markdown table and, when ``out`` is given, write it there too."""
    print(table)
    if out:
        with open(out, "w") as handle:
            handle.write(table + "\n")
