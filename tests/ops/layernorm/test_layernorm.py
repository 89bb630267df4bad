"""Fused residual add + LayerNorm: Triton (CPU interpreter) vs the reference."""

import pytest
import torch
from helpers import GPU_HIDDEN, GPU_TOKENS, assert_relative_close, check_bf16_against_fp32
from helpers import KERNEL_RTOL as RTOL

from m2_hf.ops import add_layernorm
from m2_hf.ops.layernorm import add_layernorm_reference, add_layernorm_triton

pytestmark = pytest.mark.usefixtures("poison_kernel_buffers")


def make_inputs(shape, offset=0.0):
    width = shape[-1]
    return (
        torch.randn(shape) + offset,
        torch.randn(shape),
        1.0 + 0.1 * torch.randn(width),
        0.1 * torch.randn(width),
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", [(2, 7, 20), (3, 33), (1, 5, 768), (37, 4)])
def test_add_layernorm(shape, dtype):
    low = [t.to(dtype).requires_grad_() for t in make_inputs(shape)]
    high = [t.detach().float().requires_grad_() for t in low]
    out = add_layernorm(*low, 1e-5, backend="triton")
    expected = add_layernorm_reference(*high, 1e-5)
    assert out.dtype == dtype and out.shape == expected.shape
    assert_relative_close(out, expected, RTOL[dtype])
    grad = torch.randn_like(expected)
    grads = torch.autograd.grad(out, low, grad.to(dtype))
    expected_grads = torch.autograd.grad(expected, high, grad)
    for actual, wanted, source in zip(grads, expected_grads, low):
        assert actual.dtype == source.dtype and actual.shape == source.shape
        assert_relative_close(actual, wanted, RTOL[dtype])


def test_statistics_are_fp32_and_stable_under_a_large_offset():
    """A large common offset (fp32 statistics, centred variance) and the saved mean and 1/std."""
    x, residual, weight, bias = make_inputs((4, 24), offset=1e3)
    out, mean, rstd = add_layernorm_triton(x, residual, weight, bias, 1e-5)
    total = x + residual
    assert mean.dtype == rstd.dtype == torch.float32
    torch.testing.assert_close(mean, total.mean(-1))
    torch.testing.assert_close(rstd, (total.var(-1, unbiased=False) + 1e-5).rsqrt())
    assert_relative_close(out, add_layernorm_reference(x, residual, weight, bias, 1e-5), 1e-4)


def test_mixed_dtypes_promote():
    """A half-precision branch added to an fp32 residual stream gives fp32, and each input its own grad dtype."""
    x, residual, weight, bias = make_inputs((3, 10))
    x = x.half().requires_grad_()
    residual.requires_grad_()
    out = add_layernorm(x, residual, weight, bias, 1e-6, backend="triton")
    assert out.dtype == torch.float32
    assert_relative_close(out, add_layernorm_reference(x.float(), residual, weight, bias, 1e-6), 1e-5)
    grad_x, grad_residual = torch.autograd.grad(out.sum(), (x, residual))
    assert grad_x.dtype == torch.float16 and grad_residual.dtype == torch.float32


def test_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="differ in shape"):
        add_layernorm(torch.randn(2, 4), torch.randn(4), torch.ones(4), torch.zeros(4), 1e-5, backend="triton")


def test_opcheck():
    inputs = [t.requires_grad_() for t in make_inputs((5, 12))]
    torch.library.opcheck(add_layernorm_triton, (*inputs, 1e-5))


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_compiles_fullgraph(backend):
    inputs = [t.requires_grad_() for t in make_inputs((2, 3, 16))]

    def block_end(x, residual, weight, bias):
        return add_layernorm(x, residual, weight, bias, 1e-5, backend=backend).pow(2).sum()

    out = torch.compile(block_end, fullgraph=True)(*inputs)
    expected = block_end(*inputs)
    torch.testing.assert_close(out, expected)
    for actual, wanted in zip(torch.autograd.grad(out, inputs), torch.autograd.grad(expected, inputs)):
        torch.testing.assert_close(actual, wanted)


# --- compiled kernels on a GPU at M2-BERT-base sizes (bf16 against the fp32 reference) ---


@pytest.mark.gpu
def test_add_layernorm_bf16_at_real_size():
    device = torch.device("cuda")
    x = torch.randn(GPU_TOKENS // 512, 512, GPU_HIDDEN, device=device)
    residual = torch.randn_like(x)
    weight = 1.0 + 0.1 * torch.randn(GPU_HIDDEN, device=device)
    bias = 0.1 * torch.randn(GPU_HIDDEN, device=device)
    check_bf16_against_fp32(
        lambda *t: add_layernorm(*t, 1e-12, backend="triton"),
        lambda *t: add_layernorm_reference(*t, 1e-12),
        (x, residual, weight, bias),
    )
