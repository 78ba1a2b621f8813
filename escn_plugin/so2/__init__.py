"""SO(2) side of eSCN: convolutions on edge-frame coefficients (m-major layout)."""

from escn_plugin.so2.so2_conv import (
    ExplicitSO2Convolution,
    SO2Convolution,
    complex_combine,
    so2_linear,
)

__all__ = ["ExplicitSO2Convolution", "SO2Convolution", "complex_combine", "so2_linear"]
