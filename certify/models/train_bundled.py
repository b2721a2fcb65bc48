"""Re-create the bundled digits models: ``python -m certify.models.train_bundled``.

Plain torch on the 8x8 digits train split: 60 epochs of Adam with PGD adversarial training at
L-inf eps 0.03 (half clean, half adversarial batches), so that the demo's certificates at small
eps are not all empty. Deterministic (seed 0); writes digits_mlp.pt and digits_cnn.pt beside this
file. Takes about a minute on 2 cores.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from certify.attack import pgd_margin
from certify.data import load_dataset
from certify.models import BUNDLED
from certify.models.zoo import build, save_checkpoint
from certify.spec import ball, robustness_matrix


def train(name: str, epochs: int = 60, eps: float = 0.03, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    x, y = load_dataset("digits", "train")
    model = build(name, (1, 8, 8), 10)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for k in range(0, len(x), 64):
            xb, yb = x[perm[k:k + 64]], y[perm[k:k + 64]]
            xa, _ = pgd_margin(model, ball(xb, eps, "inf", domain=(0.0, 1.0)), robustness_matrix(yb, 10), steps=5)
            loss = 0.5 * F.cross_entropy(model(xb), yb) + 0.5 * F.cross_entropy(model(xa), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def main() -> None:
    xt, yt = load_dataset("digits", "test")
    for name, path in BUNDLED.items():
        model = train(name)
        acc = (model(xt).argmax(1) == yt).float().mean().item()
        save_checkpoint(str(path), model, name, (1, 8, 8), 10,
                        meta={"trained_by": "certify.models.train_bundled", "test_accuracy": acc,
                              "objective": "0.5 CE + 0.5 PGD-5 CE, eps 0.03 L-inf", "epochs": 60})
        print(f"{name}: test accuracy {acc:.4f} -> {path}")


if __name__ == "__main__":
    main()
