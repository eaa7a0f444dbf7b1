"""Preference-pair losses in plain torch: DPO (sigmoid, conservative, robust), IPO, SimPO, ORPO, SPPO, INPO.

Inputs are per-pair sequence log-probs [P] in nats (the sum of a response's token log-probs, or their
mean where a loss is length-normalised). Each function returns the per-pair loss [P]; the trainer
sums it over a micro-batch and divides by the step's global pair count. Formulas and the authors'
settings: ``../shared/ALGORITHMS.md``; where TRL defines a loss differently the docstring says so.

    delta = (chosen - ref_chosen) - (rejected - ref_rejected)          # DPO's log-ratio margin
    loss  = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=0.1)      # [P]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def log_ratio_margin(chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor,
                     ref_rejected: torch.Tensor) -> torch.Tensor:
    """Delta = log pi(y_w)/pi_ref(y_w) - log pi(y_l)/pi_ref(y_l), all [P] sequence log-probs."""
    return (chosen - ref_chosen) - (rejected - ref_rejected)


def dpo_loss(chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, *,
             beta: float, label_smoothing: float = 0.0, robust: bool = False) -> torch.Tensor:
    """DPO: -log sigmoid(beta Delta) [P]. ``label_smoothing`` eps > 0: the conservative form (labels flipped
    with probability eps) -(1 - eps) log s(beta D) - eps log s(-beta D); ``robust``: the unbiased robust-DPO
    estimator (Chowdhury et al. 2024) (-(1 - eps) log s(beta D) + eps log s(-beta D)) / (1 - 2 eps), TRL's
    ``loss_type="robust"``."""
    scaled = beta * log_ratio_margin(chosen, rejected, ref_chosen, ref_rejected)
    if robust:
        if not 0 <= label_smoothing < 0.5:
            raise ValueError(f"robust DPO needs 0 <= label_smoothing < 0.5, got {label_smoothing}")
        return (-(1 - label_smoothing) * F.logsigmoid(scaled) + label_smoothing * F.logsigmoid(-scaled)) / (1 - 2 * label_smoothing)
    return -(1 - label_smoothing) * F.logsigmoid(scaled) - label_smoothing * F.logsigmoid(-scaled)


def ipo_loss(chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, *,
             beta: float, chosen_tokens: torch.Tensor | None = None,
             rejected_tokens: torch.Tensor | None = None) -> torch.Tensor:
    """IPO (Azar et al., eq. 17): (Delta - 1 / (2 beta))^2 [P] on summed log-ratios. With the token counts
    [P] given, each side's log-ratio is divided by its response length first: TRL's ``loss_type="ipo"``
    (length-normalised, which its authors confirmed with the IPO authors)."""
    chosen_ratio, rejected_ratio = chosen - ref_chosen, rejected - ref_rejected
    if chosen_tokens is not None:
        chosen_ratio = chosen_ratio / chosen_tokens.clamp(min=1)
        rejected_ratio = rejected_ratio / rejected_tokens.clamp(min=1)
    return (chosen_ratio - rejected_ratio - 1 / (2 * beta)) ** 2


def simpo_loss(chosen_mean: torch.Tensor, rejected_mean: torch.Tensor, *, beta: float, gamma_beta_ratio: float,
               label_smoothing: float = 0.0) -> torch.Tensor:
    """SimPO: -log sigmoid(beta (mean logp(y_w) - mean logp(y_l)) - gamma) [P], no reference; inputs are the
    mean token log-probs [P]; gamma = gamma_beta_ratio * beta (authors: beta 2.5, ratio 0.55). TRL's CPO
    trainer with ``loss_type="simpo"`` takes gamma itself (``simpo_gamma``) and the same smoothing."""
    scaled = beta * (chosen_mean - rejected_mean - gamma_beta_ratio)
    return -(1 - label_smoothing) * F.logsigmoid(scaled) - label_smoothing * F.logsigmoid(-scaled)


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, accurate at both ends (Maechler's switch at -log 2)."""
    return torch.where(x > -0.6931471805599453, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def orpo_log_odds(chosen_mean: torch.Tensor, rejected_mean: torch.Tensor) -> torch.Tensor:
    """log odds(y_w) - log odds(y_l) [P], odds(y) = p / (1 - p) with p = exp(mean token log-prob)."""
    return (chosen_mean - rejected_mean) - (log1mexp(chosen_mean) - log1mexp(rejected_mean))


def orpo_loss(chosen_mean: torch.Tensor, rejected_mean: torch.Tensor, *, lam: float) -> torch.Tensor:
    """ORPO: NLL(y_w) - lambda log sigmoid(log-odds ratio) [P], NLL = -mean token log-prob of the chosen
    answer (authors: lambda 0.1). TRL's ORPO trainer has the same odds-ratio term (``odds_ratio_loss``,
    ``beta`` = lambda) but averages the NLL over all chosen tokens of its batch rather than per answer."""
    return -chosen_mean - lam * F.logsigmoid(orpo_log_odds(chosen_mean, rejected_mean))


def sppo_loss(chosen: torch.Tensor, rejected: torch.Tensor, start_chosen: torch.Tensor, start_rejected: torch.Tensor, *,
              beta: float, chosen_win: torch.Tensor | None = None, rejected_win: torch.Tensor | None = None) -> torch.Tensor:
    """SPPO: (log pi/pi_t(y_w) - eta (P_w - 1/2))^2 + (log pi/pi_t(y_l) - eta (P_l - 1/2))^2 [P], eta = 1 / beta
    (TRL's convention; the authors' eta 1000 is beta 0.001), pi_t the iteration's start. ``chosen_win`` /
    ``rejected_win`` [P]: each answer's estimated win probability against pi_t; None: the hard variant
    (P_w = 1, P_l = 0), TRL's ``loss_type="sppo_hard"``."""
    eta = 1.0 / beta
    p_chosen = torch.ones_like(chosen) if chosen_win is None else chosen_win.to(chosen)
    p_rejected = torch.zeros_like(rejected) if rejected_win is None else rejected_win.to(rejected)
    return ((chosen - start_chosen - eta * (p_chosen - 0.5)) ** 2
            + (rejected - start_rejected - eta * (p_rejected - 0.5)) ** 2)


def inpo_loss(chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor,
              start_chosen: torch.Tensor, start_rejected: torch.Tensor, *, eta: float, tau: float) -> torch.Tensor:
    """INPO: (h - 1 / (2 eta))^2 [P] with h = log pi(y_w)/pi(y_l) - (tau / eta) log pi_ref(y_w)/pi_ref(y_l)
    - ((eta - tau) / eta) log pi_t(y_w)/pi_t(y_l); pi_ref the initial model, pi_t the iteration's start
    (authors: eta 0.005, tau = eta / 3)."""
    h = ((chosen - rejected) - (tau / eta) * (ref_chosen - ref_rejected)
         - ((eta - tau) / eta) * (start_chosen - start_rejected))
    return (h - 1 / (2 * eta)) ** 2
