"""Compile every kernel variant for an H100 (sm_90) without a GPU, with Triton's bundled ptxas.

    TRITON_INTERPRET=0 python -m kernels.compile_check     # prints "<kernel> <variant> ok" per variant

The interpreter accepts code the compiler refuses (loop-carried scalar types, pointer dtypes), so
CPU CI runs this beside the interpreter tests (tests/test_kernels.py).
"""

from __future__ import annotations

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from kernels import advantage, linear_logprob, policy_loss

H100 = GPUTarget("cuda", 90, 32)


def _compile(kernel, signature: dict[str, str], constexprs: dict[str, object], label: str) -> None:
    signature = {**signature, **dict.fromkeys(constexprs, "constexpr")}
    triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constexprs), target=H100)
    print(f"{kernel.__name__} {label} ok", flush=True)


def main() -> None:
    f32, i32 = "*fp32", "i32"
    _compile(advantage._token_advantage_kernel,
             {"rewards_ptr": f32, "valid_ptr": "*i8", "mask_ptr": "*u8", "seq_adv_ptr": f32, "token_adv_ptr": f32,
              "group_size": i32, "seq_len": i32, "mask_row_stride": i32, "out_row_stride": i32, "eps": "fp32"},
             {"STD_NORMALIZE": True, "BLOCK_N": 8, "BLOCK_T": 1024}, "std")
    for dtype in ("bf16", "fp32"):
        _compile(linear_logprob._logit_stats_kernel,
                 {"logits_ptr": f"*{dtype}", "targets_ptr": "*i64", "max_ptr": f32, "sumexp_ptr": f32, "weighted_ptr": f32,
                  "target_logit_ptr": f32, "row_stride": i32, "valid_cols": i32, "vocab_start": i32}, {"BLOCK_V": 4096}, dtype)
        _compile(linear_logprob._logit_grad_kernel,
                 {"logits_ptr": f"*{dtype}", "targets_ptr": "*i64", "lse_ptr": f32, "entropy_ptr": f32,
                  "grad_logprob_ptr": f32, "grad_entropy_ptr": f32, "row_stride": i32, "local_cols": i32,
                  "valid_cols": i32, "vocab_start": i32}, {"BLOCK_V": 4096}, dtype)
    loss_signature = {"logprobs_ptr": f32, "old_ptr": f32, "ref_ptr": f32, "entropy_ptr": f32, "mask_ptr": "*u8",
                      "adv_ptr": f32, "grad_logprobs_ptr": f32, "grad_entropy_ptr": f32, "sums_ptr": f32,
                      "seq_len": i32, "row_stride": i32, "inv_normalizer": "fp32", "clip_low": "fp32", "clip_high": "fp32",
                      "kl_coef": "fp32", "entropy_coef": "fp32"}
    for kl, k3, ent, seq_mean in ((True, True, True, True), (False, False, False, False), (True, False, True, False)):
        flags = {"HAS_KL": kl, "KL_K3": k3, "HAS_ENTROPY": ent, "SEQ_MEAN": seq_mean, "BLOCK_T": 1024}
        _compile(policy_loss._policy_loss_kernel, loss_signature, flags, "-".join(f"{k}={v}" for k, v in flags.items()))


if __name__ == "__main__":
    main()
