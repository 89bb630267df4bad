"""Block-diagonal (Monarch) matrix multiply, plain and with a fused GLU epilogue."""

from .fused import blockdiag_glu, blockdiag_glu_triton, blockdiag_matmul, blockdiag_matmul_triton
from .reference import blockdiag_glu_reference, blockdiag_matmul_reference, glu_activation

__all__ = [
    "blockdiag_glu",
    "blockdiag_glu_reference",
    "blockdiag_glu_triton",
    "blockdiag_matmul",
    "blockdiag_matmul_reference",
    "blockdiag_matmul_triton",
    "glu_activation",
]
