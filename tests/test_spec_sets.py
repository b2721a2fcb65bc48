"""Input sets and margins: containment, projection, sampling, robustness matrices."""
import pytest
import torch

from certify.errors import CertifyError
from certify.spec import Box, L2Ball, LinfBall, ball, margin_values, robustness_matrix


def test_linf_ball_is_clipped_to_domain():
    x = torch.tensor([[0.0, 0.5, 1.0]])
    lo, hi = ball(x, 0.1, "inf", domain=(0.0, 1.0)).box()
    assert torch.allclose(lo, torch.tensor([[0.0, 0.4, 0.9]]))
    assert torch.allclose(hi, torch.tensor([[0.1, 0.6, 1.0]]))
    lo, hi = ball(x, 0.1, "inf", domain=None).box()
    assert torch.allclose(lo, torch.tensor([[-0.1, 0.4, 0.9]]))


def test_per_row_eps():
    s = LinfBall(torch.full((2, 3), 0.5), torch.tensor([0.1, 0.2]))
    lo, _ = s.box()
    assert torch.allclose(lo[:, 0], torch.tensor([0.4, 0.3]))
    with pytest.raises(CertifyError):
        LinfBall(torch.zeros(2, 3), torch.tensor([0.1, 0.2, 0.3])).box()


@pytest.mark.parametrize("norm", ["inf", 2])
def test_samples_and_projections_stay_inside(norm):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(4, 1, 5, 5, generator=g)
    s = ball(x, 0.3, norm, domain=(0.0, 1.0))
    pts = s.sample(200, g)
    assert pts.shape == (200, 4, 1, 5, 5)
    assert all(bool(s.contains(p).all()) for p in pts)
    far = x + torch.randn(x.shape, generator=g)
    proj = s.project(far)
    assert bool(s.contains(proj, tol=1e-4).all())


def test_l2_projection_moves_outside_points_to_the_sphere():
    s = L2Ball(torch.zeros(1, 4), 1.0)
    p = s.project(torch.tensor([[3.0, 4.0, 0.0, 0.0]]))
    assert torch.allclose(p, torch.tensor([[0.6, 0.8, 0.0, 0.0]]))


def test_box_rejects_inverted_bounds():
    with pytest.raises(CertifyError, match="lower bound above"):
        Box(torch.ones(1, 2), torch.zeros(1, 2))


def test_robustness_matrix_and_margins():
    C = robustness_matrix(torch.tensor([1]), 3)
    assert C.shape == (1, 2, 3)
    assert C[0].tolist() == [[-1.0, 1.0, 0.0], [0.0, 1.0, -1.0]]
    y = torch.tensor([[0.5, 2.0, 1.5]])
    assert margin_values(y, C).tolist() == [[1.5, 0.5]]
    with pytest.raises(CertifyError):
        robustness_matrix(torch.tensor([3]), 3)
    with pytest.raises(CertifyError, match="norm"):
        ball(torch.zeros(1, 2), 0.1, "3", domain=(0.0, 1.0))
