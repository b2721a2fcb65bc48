"""Output properties as C-matrix margins: the property holds when ``C @ y + d > 0`` row-wise
(``margins(labels, K)`` builds the robustness spec, ``margin_values(y, C, d)`` evaluates it).

Shapes: ``C`` is (B, rows, n_outputs), ``d`` is (B, rows) or None.
"""
from __future__ import annotations

import torch

from certify.errors import CertifyError


def robustness_matrix(labels: torch.Tensor, num_classes: int, dtype=torch.float32) -> torch.Tensor:
    """C of shape (B, K-1, K) with rows e_y - e_j for every j != y (true-class margin)."""
    labels = torch.as_tensor(labels).long().reshape(-1)
    if bool(((labels < 0) | (labels >= num_classes)).any()):
        raise CertifyError(f"labels must lie in [0, {num_classes}), got {labels.tolist()}")
    eye = torch.eye(num_classes, dtype=dtype)
    B = labels.shape[0]
    C = eye[labels].unsqueeze(1) - eye.unsqueeze(0).expand(B, -1, -1)   # (B, K, K), row j = e_y - e_j
    keep = torch.ones(B, num_classes, dtype=torch.bool)
    keep[torch.arange(B), labels] = False
    return C[keep].reshape(B, num_classes - 1, num_classes)


def margins(labels, n_classes: int, dtype=torch.float32) -> torch.Tensor:
    """The robustness spec of ``labels`` (B,): C (B, K-1, K), row j = e_label - e_j (j != label),
    so ``C @ y > 0`` says the label's logit beats every other (``robustness_matrix``)."""
    return robustness_matrix(labels, n_classes, dtype)


def margin_values(y: torch.Tensor, C: torch.Tensor, d: torch.Tensor | None = None) -> torch.Tensor:
    """C @ y + d for outputs ``y`` (B, K): shape (B, rows)."""
    m = torch.einsum("brk,bk->br", C.to(y.dtype), y.reshape(y.shape[0], -1))
    return m if d is None else m + d.to(y.dtype)
