"""Reference ops against direct formulas, and float64 gradient checks of the mixer and the MLP."""

import pytest
import torch
from helpers import tiny_config

from m2_hf.modeling.modeling_m2 import M2LongConvMixer, M2MonarchMLP
from m2_hf.ops import (
    blockdiag_matmul,
    causal_depthwise_conv,
    fft_long_conv,
    long_conv_kernel,
    long_conv_spectrum,
    monarch_matmul,
)


def direct_bidirectional_conv(s, k_fwd, k_rev):
    """BiConv(s)[n] = sum_{m<=n} k_fwd[m] s[n-m] + sum_{j>n} k_rev[j-n-1] s[j], per channel."""
    batch, channels, length = s.shape
    out = torch.zeros_like(s)
    for n in range(length):
        for m in range(n + 1):
            out[..., n] += k_fwd[:, m] * s[..., n - m]
        if k_rev is not None:
            for j in range(n + 1, length):
                out[..., n] += k_rev[:, j - n - 1] * s[..., j]
    return out


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("length", [1, 7, 16])
def test_fft_long_conv_equals_direct_sum(bidirectional, length):
    s = torch.randn(2, 3, length, dtype=torch.float64)
    k_fwd = torch.randn(3, length, dtype=torch.float64)
    k_rev = torch.randn(3, length, dtype=torch.float64) if bidirectional else None
    skip = torch.randn(3, dtype=torch.float64)
    spectrum = long_conv_spectrum(long_conv_kernel(k_fwd, k_rev), length)
    out = fft_long_conv(s, spectrum, skip)
    expected = direct_bidirectional_conv(s, k_fwd, k_rev) + skip[:, None] * s
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


def test_fft_long_conv_keeps_input_dtype():
    s = torch.randn(1, 4, 8, dtype=torch.float16)
    spectrum = long_conv_spectrum(torch.randn(4, 16), 8)
    assert fft_long_conv(s, spectrum, torch.randn(4)).dtype == torch.float16


@pytest.mark.parametrize("nblocks, in_block, out_block", [(1, 5, 3), (4, 3, 6), (3, 7, 2)])
def test_blockdiag_matmul_equals_dense_block_diagonal(nblocks, in_block, out_block):
    weight = torch.randn(nblocks, out_block, in_block, dtype=torch.float64)
    x = torch.randn(2, 5, nblocks * in_block, dtype=torch.float64)
    dense = torch.block_diag(*weight.unbind(0))
    torch.testing.assert_close(blockdiag_matmul(x, weight), x @ dense.T)


def test_blockdiag_matmul_rejects_wrong_width():
    with pytest.raises(ValueError, match="features"):
        blockdiag_matmul(torch.randn(2, 10), torch.randn(4, 3, 3))


@pytest.mark.parametrize("kernel_size", [1, 3, 4])
def test_causal_depthwise_conv_equals_formula(kernel_size):
    x = torch.randn(2, 5, 9, dtype=torch.float64)
    weight = torch.randn(5, 1, kernel_size, dtype=torch.float64)
    bias = torch.randn(5, dtype=torch.float64)
    out = causal_depthwise_conv(x, weight, bias)
    expected = bias[None, :, None].expand_as(x).clone()
    for t in range(x.shape[-1]):
        for j in range(kernel_size):
            source = t - (kernel_size - 1) + j
            if source >= 0:
                expected[..., t] += weight[:, 0, j] * x[..., source]
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("overrides", [{}, {"bidirectional": False, "residual_long_conv": False}, {"mixer_layernorm": True}])
def test_mixer_gradcheck_float64(overrides):
    config = tiny_config(hidden_size=8, intermediate_size=16, max_position_embeddings=8, filter_order=4, **overrides)
    mixer = M2LongConvMixer(config).double()
    x = torch.randn(2, 6, 8, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 1, 1, 1, 1, 0]], dtype=torch.float64)[:, None]
    assert torch.autograd.gradcheck(lambda h: mixer(h), (x,))
    assert torch.autograd.gradcheck(lambda h: mixer(h, mask), (x,))
    names = ["long_filter.features", "long_filter.frequency", "long_filter.forward_mlp.0.weight", "short_conv.weight"]
    params = dict(mixer.named_parameters())

    def with_params(*values):
        return torch.func.functional_call(mixer, {**params, **dict(zip(names, values))}, (x.detach(), mask))

    values = tuple(params[name].detach().clone().requires_grad_(True) for name in names)
    assert torch.autograd.gradcheck(with_params, values)


@pytest.mark.parametrize("glu", [True, False])
def test_mlp_gradcheck_float64(glu):
    config = tiny_config(hidden_size=8, intermediate_size=16, monarch_mlp_nblocks=2, glu_mlp=glu)
    mlp = M2MonarchMLP(config).double()
    x = torch.randn(2, 3, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(mlp, (x,))


def test_mlp_block_structure_limits_dependencies():
    """With 4 blocks, output chunks depend only on the input chunks their blocks connect (GLU split order)."""
    config = tiny_config(hidden_size=8, intermediate_size=8, monarch_mlp_nblocks=4, norm_position="pre")
    mlp = M2MonarchMLP(config).double()
    mlp.layernorm = torch.nn.Identity()  # pre-norm: mlp(v) = v + out(act(gate) * value) of v itself
    x = torch.randn(8, dtype=torch.float64)
    jacobian = torch.autograd.functional.jacobian(lambda v: mlp(v) - v, x)
    blocks = (jacobian.abs() > 0).reshape(4, 2, 4, 2).any(dim=(1, 3))
    expected = torch.tensor([[1, 0, 1, 0], [1, 0, 1, 0], [0, 1, 0, 1], [0, 1, 0, 1]], dtype=torch.bool)
    assert torch.equal(blocks, expected)


@pytest.mark.parametrize("shape", [(3, 4, 5, 2), (4, 4, 4, 4), (1, 2, 3, 5)])
def test_monarch_matmul_equals_dense_permuted_block_product(shape):
    """M = P L P^T R built as dense matrices: block_diag(R), the transpose permutation, block_diag(L), then P."""
    k, q, p, s = shape
    x = torch.randn(7, k * p, dtype=torch.float64)
    right = torch.randn(k, q, p, dtype=torch.float64)
    left = torch.randn(q, s, k, dtype=torch.float64)
    regroup = torch.tensor([i * q + j for j in range(q) for i in range(k)])  # row j*k+i of P^T R is row i*q+j of R
    interleave = torch.tensor([j * s + a for a in range(s) for j in range(q)])  # row a*q+j of P L is row j*s+a of L
    dense = torch.block_diag(*left)[interleave] @ torch.block_diag(*right)[regroup]
    torch.testing.assert_close(monarch_matmul(x, right, left), x @ dense.T, rtol=1e-12, atol=1e-12)


def test_monarch_matmul_rejects_mismatched_factors():
    with pytest.raises(ValueError, match="left must be"):
        monarch_matmul(torch.randn(2, 6), torch.randn(2, 3, 3), torch.randn(2, 3, 2))
    with pytest.raises(ValueError, match="input has 5 features"):
        monarch_matmul(torch.randn(2, 5), torch.randn(2, 3, 3), torch.randn(3, 3, 2))
