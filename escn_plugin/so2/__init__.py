"""SO(2) side of eSCN: convolutions on edge-frame coefficients (m-major layout)."""

from escn_plugin.so2.oracles import ExplicitSO2Convolution
from escn_plugin.so2.so2_conv import (
    FactoredSO2Convolution,
    SO2Convolution,
    complex_combine,
    so2_linear,
    source_target_messages,
)

__all__ = [
    "ExplicitSO2Convolution",
    "FactoredSO2Convolution",
    "SO2Convolution",
    "complex_combine",
    "so2_linear",
    "source_target_messages",
]
