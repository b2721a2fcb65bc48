"""Complete verification by branch and bound (input splits and ReLU splits, beta-CROWN style),
with falsification first and throughout. Entry point: ``verify(network, prop, timeout)``."""
from bounds.bab.verify import METHODS, VerifyResult, choose_method, verify

__all__ = ["verify", "VerifyResult", "choose_method", "METHODS"]
