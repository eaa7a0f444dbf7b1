"""Held-out evaluation: one stage used by ``train`` (periodically) and by ``megatron-elo eval``."""
