"""Verdicts -> outcomes -> the training signal (GRPO group advantages; preference pairs next)."""
