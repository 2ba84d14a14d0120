"""The STEP training loss: ``L = L_answer + λ · L_rationale``.

Each term is the mean token cross-entropy over *its own* target tokens (the answer tokens of the answer
sequences, the rationale tokens of the rationale sequences), not a mean over all target tokens of the batch:
a rationale is many times longer than an answer and would otherwise drown it. The task of a target token is
given per sequence (``multitask``: a sequence is all answer or all rationale) or per token (``joint``: the
rationale tokens, then the answer tokens of one sequence).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from step_ray.models.encoding import token_nll
from step_ray.models.prompts import TASK_ANSWER, TASK_RATIONALE


class StepLoss(NamedTuple):
    """The loss to backpropagate and its two terms (detached, for logging)."""

    loss: torch.Tensor
    answer: torch.Tensor
    rationale: torch.Tensor
    answer_tokens: int
    rationale_tokens: int


def step_loss(
    logits: torch.Tensor, labels: torch.Tensor, task: torch.Tensor, rationale_weight: float
) -> StepLoss:
    """``L_answer + rationale_weight * L_rationale`` for a batch of sequences tagged by ``task``.

    ``task``: shape ``(B,)`` (one task per sequence) or ``(B, T)`` like ``labels`` (one per token). A term
    whose task has no target token in the batch is 0 (and contributes no gradient).
    """
    nll, mask = token_nll(logits, labels)
    task = task.to(mask.device)
    per_task = task.view(-1, 1) if task.dim() == 1 else task[:, 1:]  # per token: shifted like the labels

    def term(which: int) -> tuple[torch.Tensor, int]:
        m = mask & (per_task == which)
        count = int(m.sum())
        if count == 0:
            return nll.sum() * 0.0, 0  # keeps the graph (and the dtype/device) without adding gradient
        return (nll * m).sum() / count, count

    answer, n_answer = term(TASK_ANSWER)
    rationale, n_rationale = term(TASK_RATIONALE)
    loss = answer + rationale_weight * rationale if rationale_weight > 0 else answer
    return StepLoss(loss, answer.detach(), rationale.detach(), n_answer, n_rationale)
