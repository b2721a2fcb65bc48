"""Engine 2: randomized smoothing (Cohen et al. 2019): Monte-Carlo ``predict`` / ``certify`` with
Gaussian, Laplace and uniform noise, fused batched sampling, sequential sampling that stops once
the answer is settled (``certify_adaptive``), and the noise samplers and soft smoothed classifier
that training (Gaussian augmentation, SmoothAdv) builds on."""
from smoothing.core import CertifyResult, Smooth
from smoothing.noise import NOISES, NoiseFamily, certified_radius, convert_radius, get_noise, sample_noise
from smoothing.sampling import NoiseCounter, soft_log_probs
from smoothing.sequential import SequentialTest, looks
from smoothing.stats import beta_quantile_lower_bound, clopper_pearson, lower_confidence_bound, top_two_pvalue

__all__ = ["Smooth", "CertifyResult", "NOISES", "NoiseFamily", "get_noise", "sample_noise", "certified_radius",
           "convert_radius", "NoiseCounter", "soft_log_probs", "lower_confidence_bound",
           "beta_quantile_lower_bound", "clopper_pearson", "top_two_pvalue", "SequentialTest", "looks"]
