"""Complete verification by branch and bound (input splits and ReLU splits, beta-CROWN style),
with falsification first and throughout. Entry point: ``verify(network, prop, timeout)``."""
from bounds.bab.choice import prefer_input_split
from bounds.bab.options import VerifyOptions
from bounds.bab.verify import METHODS, VerifyResult, verify

__all__ = ["verify", "VerifyResult", "VerifyOptions", "prefer_input_split", "METHODS"]
