"""Prompts: files (jsonl / parquet) -> typed ``Prompt`` rows -> token ids (chat template) -> DP-sharded,
per-epoch shuffled, resumable batches (in-process, or through an NVIDIA DALI pipeline)."""
