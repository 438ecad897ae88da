"""Losses of the suite, each with ``reduction`` "sum" (over the batch, as the blog does) or
"mean". KL divergences are summed over classes in both cases.

- ``cross_entropy(logits, y)``
- ``kd_loss(s, t, y)``: CE(s, y) + alpha * T^2 * KL(softmax(t/T) || softmax(s/T))
  (``kd_loss_terms``: the total and its ``ce`` and ``kl`` terms)
- ``mutual_losses(logits[K, B, C], y)`` (``mutual_loss_terms``: with the terms): for every member k at once,
  CE(p_k, y) + w * sum_{l != k} KL(p_l || p_k), peers detached, w = 1/(K-1) ("mean", the
  paper) or 1 ("sum", the official code)
- ``hint_loss(guided, regressed)``: 1/2 * ||G - r(H)||^2 per image
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..core.evaluation import widen

REDUCTIONS = ("sum", "mean")


_wide = widen  # half-precision logits in float32, float32 and float64 unchanged


def _reduce(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    """Reduce over the last (batch) dimension."""
    if reduction == "sum":
        return per_sample.sum(-1)
    if reduction == "mean":
        return per_sample.mean(-1)
    raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """Cross-entropy; ``logits`` may carry leading model dimensions ``[..., B, C]``."""
    logp = F.log_softmax(_wide(logits), dim=-1)
    nll = -logp.gather(-1, target.expand(*logits.shape[:-1]).unsqueeze(-1)).squeeze(-1)
    return _reduce(nll, reduction)


def kl_divergence(p_logits: torch.Tensor, q_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Per-sample KL(softmax(p/T) || softmax(q/T)), summed over classes; shape ``[..., B]``."""
    logp = F.log_softmax(_wide(p_logits) / temperature, dim=-1)
    logq = F.log_softmax(_wide(q_logits) / temperature, dim=-1)
    return (logp.exp() * (logp - logq)).sum(-1)


def kd_loss_terms(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
                  temperature: float = 1.0, alpha: float = 1.0,
                  reduction: str = "sum") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Hinton et al. 2015: CE(s, y) + alpha * T^2 * KL(softmax(t/T) || softmax(s/T)), and its
    terms ``ce`` and ``kl`` (the weighted KL term: the two add up to the total)."""
    kl = kl_divergence(teacher_logits.detach(), student_logits, temperature)
    ce, kl_term = cross_entropy(student_logits, target, reduction), alpha * temperature**2 * _reduce(kl, reduction)
    return ce + kl_term, {"ce": ce, "kl": kl_term}


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
            temperature: float = 1.0, alpha: float = 1.0, reduction: str = "sum") -> torch.Tensor:
    """The total of ``kd_loss_terms``."""
    return kd_loss_terms(student_logits, teacher_logits, target, temperature, alpha, reduction)[0]


def peer_weight_value(peer_weight: str, k: int) -> float:
    if peer_weight == "mean":
        return 1.0 / (k - 1)
    if peer_weight == "sum":
        return 1.0
    raise ValueError(f"peer_weight must be 'mean' or 'sum', got {peer_weight!r}")


def mutual_loss_terms(logits: torch.Tensor, target: torch.Tensor, peer_weight: str = "mean",
                      reduction: str = "sum", kl_weight: float = 1.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Every cohort member's DML loss at once: ``logits`` is ``[K, B, C]``, result ``[K]``,
    with its terms ``ce`` and ``kl`` (``[K]`` each, detached: the weighted peer KL, so the
    two add up to the total up to rounding; the total is reduced in one piece, as before the
    terms existed, so that it is the same number). ``kl_weight`` (a ramp-up's) scales the KL
    terms on top of the peer weight; at 1 the arithmetic is the paper's loss unchanged.

    With P_l the detached peer distributions, sum_{l != k} KL(P_l || p_k) =
    sum_{l != k} sum_c P_l log P_l  -  sum_c (sum_{l != k} P_l) log p_k, so one pass over the
    stacked logits serves all members; there is no loop over pairs.
    """
    k = logits.shape[0]
    if k < 2:
        raise ValueError("a mutual cohort needs at least 2 members")
    logp = F.log_softmax(_wide(logits), dim=-1)  # [K, B, C]
    peer_logp = logp.detach()
    peer_p = peer_logp.exp()
    neg_entropy = (peer_p * peer_logp).sum(-1)  # [K, B]
    others_neg_entropy = neg_entropy.sum(0, keepdim=True) - neg_entropy  # sum over l != k
    others_p = peer_p.sum(0, keepdim=True) - peer_p  # [K, B, C]
    kl_sum = others_neg_entropy - (others_p * logp).sum(-1)  # [K, B]
    ce = -logp.gather(-1, target.expand(k, -1).unsqueeze(-1)).squeeze(-1)  # [K, B]
    weighted_kl = kl_weight * peer_weight_value(peer_weight, k) * kl_sum  # one scalar: no extra pass
    total = _reduce(ce + weighted_kl, reduction)
    with torch.no_grad():
        terms = {"ce": _reduce(ce, reduction), "kl": _reduce(weighted_kl, reduction)}
    return total, terms


def mutual_losses(logits: torch.Tensor, target: torch.Tensor, peer_weight: str = "mean",
                  reduction: str = "sum") -> torch.Tensor:
    """The totals of ``mutual_loss_terms``: every member's DML loss, ``[K]``."""
    return mutual_loss_terms(logits, target, peer_weight, reduction)[0]


def hint_loss(guided: torch.Tensor, regressed: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """FitNets stage 1: 1/2 * ||G - r(H)||^2 per image, the guided map detached."""
    per_sample = 0.5 * (_wide(guided.detach()) - _wide(regressed)).pow(2).flatten(1).sum(1)
    return _reduce(per_sample, reduction)
