"""Block-diagonal (Monarch) matrix multiply."""

from .reference import blockdiag_matmul_reference

blockdiag_matmul = blockdiag_matmul_reference

__all__ = ["blockdiag_matmul", "blockdiag_matmul_reference"]
