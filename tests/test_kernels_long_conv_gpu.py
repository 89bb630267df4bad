"""Fused gated long convolution on a GPU at real sizes: 64K tokens per call, H = 768, bf16 inputs.

Run the compiled kernels, not the interpreter: `TRITON_INTERPRET=0 python -m pytest -q tests/test_kernels_long_conv_gpu.py`.
"""

import pytest
import torch

from m2_hf.ops.long_conv import (
    fused_path_supported,
    gated_long_conv,
    gated_long_conv_reference,
    long_conv_kernel,
    long_conv_spectrum,
)

from helpers import compiled_gpu_kernels_only

pytestmark = compiled_gpu_kernels_only()

TOKENS = 65536
CHANNELS = 768


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Norm-wise relative error; complex gradients (the spectrum's) stay complex."""
    return ((actual.to(expected.dtype) - expected).norm() / expected.norm()).item()


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("seq_len", [512, 1024, 2048, 4096, 8192, 16384, 32768])
def test_bf16_matches_fp32_reference(seq_len, bidirectional):
    device = torch.device("cuda")
    batch = TOKENS // seq_len
    shape = (batch, CHANNELS, seq_len)
    forward_filter = torch.randn(CHANNELS, seq_len, device=device) / seq_len**0.5
    reverse_filter = torch.randn(CHANNELS, seq_len, device=device) / seq_len**0.5 if bidirectional else None
    spectrum = long_conv_spectrum(long_conv_kernel(forward_filter, reverse_filter), seq_len).requires_grad_()
    skip = torch.randn(CHANNELS, device=device, requires_grad=True)
    u, pre_gate, post_gate = (torch.randn(shape, device=device, dtype=torch.bfloat16) for _ in range(3))
    halves = [t.requires_grad_() for t in (u, pre_gate, post_gate)]
    singles = [t.detach().float().requires_grad_() for t in halves]
    assert fused_path_supported(u, spectrum)

    out = gated_long_conv(halves[0], spectrum, skip, halves[1], halves[2], backend="triton")
    expected = gated_long_conv_reference(singles[0], spectrum, skip, singles[1], singles[2])
    assert out.dtype == torch.bfloat16
    assert relative_error(out, expected) <= 1e-2

    grad_out = torch.randn(shape, device=device, dtype=torch.bfloat16)
    grads = torch.autograd.grad(out, [*halves, spectrum, skip], grad_out)
    expected_grads = torch.autograd.grad(expected, [*singles, spectrum, skip], grad_out.float())
    for grad, expected_grad in zip(grads, expected_grads):
        assert torch.isfinite(grad).all()
        assert relative_error(grad, expected_grad) <= 1e-2
