"""The Bradley-Terry objective of a reward model: P(chosen preferred) = sigmoid(r_chosen - r_rejected), trained by
maximum likelihood. Pure functions over score tensors."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor, total_pairs: int | None = None) -> torch.Tensor:
    """[m] scores of the chosen and the rejected texts -> the scalar -sum(logsigmoid(chosen - rejected)) /
    total_pairs. total_pairs defaults to m (the mean); a micro-batch passes the whole batch's count, so the
    micro-batches' losses (and gradients) sum exactly to the batch's."""
    margin = chosen.float() - rejected.float()  # [m]
    # logsigmoid, not log(sigmoid(.)): exact for large negative margins, where sigmoid underflows to 0
    return -F.logsigmoid(margin).sum() / (total_pairs if total_pairs is not None else margin.numel())


def pairwise_accuracy(chosen: torch.Tensor, rejected: torch.Tensor) -> float:
    """Share of pairs whose chosen text scores strictly higher ([m] each); a tie counts as wrong."""
    return float((chosen > rejected).float().mean())
