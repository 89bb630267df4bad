"""Order-2 Monarch matrix multiply."""

from .fused import monarch_matmul, monarch_matmul_triton
from .reference import monarch_matmul_reference

__all__ = ["monarch_matmul", "monarch_matmul_reference", "monarch_matmul_triton"]
