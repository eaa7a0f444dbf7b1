"""Fused Triton kernels for the loss side of an RL step: empty until issue #3 lands.

Planned (issue #3): win/loss advantage, fused linear log-prob + entropy (vocab-parallel, never
materialising the logits), clipped policy-gradient loss; each beside its plain-torch reference in
``megatron_elo.loss.reference`` and selected by ``trainer.kernels: triton``. This package will know
nothing of vLLM or Megatron: kernels take tensors (and an explicit process group) and return tensors.
"""
