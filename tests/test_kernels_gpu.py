"""Block-diagonal / GLU / Monarch matmuls, the fused mixer front and add + LayerNorm on a GPU at real sizes.

M2-BERT-base sizes: 16K tokens per call, H = 768, 4 blocks, I = 3072; bf16 inputs against an fp32 reference on the
same (upcast) values, forward and backward. Run the compiled kernels, not the interpreter:
`TRITON_INTERPRET=0 python -m pytest -q tests/test_kernels_gpu.py`.
"""

import pytest
import torch

from m2_hf.ops import (
    add_layernorm,
    add_layernorm_reference,
    blockdiag_glu,
    blockdiag_glu_reference,
    blockdiag_matmul,
    blockdiag_matmul_reference,
    mixer_front,
    mixer_front_reference,
    monarch_matmul,
    monarch_matmul_reference,
)

from helpers import compiled_gpu_kernels_only

pytestmark = compiled_gpu_kernels_only()

TOKENS = 16384
HIDDEN = 768
INTERMEDIATE = 3072
NBLOCKS = 4
RTOL = 1e-2


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    assert torch.isfinite(actual).all()
    return ((actual.float() - expected.float()).norm() / expected.float().norm()).item()


def check_bf16_against_fp32(fused, reference, inputs):
    """Forward and input gradients of `fused` on bf16 inputs vs `reference` on their fp32 upcasts."""
    low = [t.to(torch.bfloat16).requires_grad_() if t.is_floating_point() else t for t in inputs]
    high = [t.detach().float().requires_grad_() if t.is_floating_point() else t for t in low]
    differentiable_low = [t for t in low if t.requires_grad]
    differentiable_high = [t for t in high if t.requires_grad]
    outputs = fused(*low)
    expected = reference(*high)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    expected = expected if isinstance(expected, tuple) else (expected,)
    grads_out = [torch.randn_like(e) for e in expected]
    for actual, wanted in zip(outputs, expected):
        assert actual.dtype == torch.bfloat16 and actual.shape == wanted.shape
        assert relative_error(actual, wanted) <= RTOL
    grads = torch.autograd.grad(outputs, differentiable_low, [g.to(torch.bfloat16) for g in grads_out])
    expected_grads = torch.autograd.grad(expected, differentiable_high, grads_out)
    for actual, wanted in zip(grads, expected_grads):
        assert relative_error(actual, wanted) <= RTOL


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize(
    "in_features, out_features, nblocks",
    [(INTERMEDIATE, HIDDEN, NBLOCKS), (HIDDEN, 2 * INTERMEDIATE, NBLOCKS), (HIDDEN, HIDDEN, 1)],
)
def test_blockdiag_matmul(in_features, out_features, nblocks, with_bias):
    device = torch.device("cuda")
    x = torch.randn(TOKENS // 512, 512, in_features, device=device)
    weight = torch.randn(nblocks, out_features // nblocks, in_features // nblocks, device=device)
    weight /= (in_features // nblocks) ** 0.5
    inputs = (x, weight) + ((torch.randn(out_features, device=device),) if with_bias else ())
    check_bf16_against_fp32(lambda *t: blockdiag_matmul(*t, backend="triton"), blockdiag_matmul_reference, inputs)


@pytest.mark.parametrize("nblocks", [1, 2, NBLOCKS])
def test_blockdiag_glu(nblocks):
    device = torch.device("cuda")
    x = torch.randn(TOKENS // 512, 512, HIDDEN, device=device)
    weight = torch.randn(nblocks, 2 * INTERMEDIATE // nblocks, HIDDEN // nblocks, device=device)
    weight /= (HIDDEN // nblocks) ** 0.5
    check_bf16_against_fp32(lambda *t: blockdiag_glu(*t, backend="triton"), blockdiag_glu_reference, (x, weight))


@pytest.mark.parametrize("shape", [(32, 32, 32, 32), (16, 48, 48, 16), (4, 192, 192, 4)])
def test_monarch_matmul(shape):
    k, q, p, s = shape
    device = torch.device("cuda")
    x = torch.randn(TOKENS, k * p, device=device)
    right = torch.randn(k, q, p, device=device) / p**0.5
    left = torch.randn(q, s, k, device=device) / k**0.5
    check_bf16_against_fp32(lambda *t: monarch_matmul(*t, backend="triton"), monarch_matmul_reference, (x, right, left))


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("seq_len", [512, 4096])
def test_mixer_front(seq_len, masked):
    device = torch.device("cuda")
    batch = TOKENS // seq_len
    projected = torch.randn(batch, seq_len, 3 * HIDDEN, device=device)
    weight = torch.randn(3 * HIDDEN, 1, 3, device=device) / 3**0.5
    bias = torch.randn(3 * HIDDEN, device=device)
    mask = (torch.rand(batch, seq_len, device=device) > 0.2).float() if masked else None
    check_bf16_against_fp32(
        lambda *t: mixer_front(*t, mask, backend="triton"),
        lambda *t: mixer_front_reference(*t, mask),
        (projected, weight, bias),
    )


def test_add_layernorm():
    device = torch.device("cuda")
    x = torch.randn(TOKENS // 512, 512, HIDDEN, device=device)
    residual = torch.randn_like(x)
    weight = 1.0 + 0.1 * torch.randn(HIDDEN, device=device)
    bias = 0.1 * torch.randn(HIDDEN, device=device)
    check_bf16_against_fp32(
        lambda *t: add_layernorm(*t, 1e-12, backend="triton"),
        lambda *t: add_layernorm_reference(*t, 1e-12),
        (x, residual, weight, bias),
    )


def test_autocast_mlp_matches_reference():
    """Under bf16 autocast, fp32 weights and activations: the kernels cast tiles as autocast would cast tensors."""
    device = torch.device("cuda")
    x = torch.randn(TOKENS, HIDDEN, device=device, requires_grad=True)
    w_in = (torch.randn(NBLOCKS, 2 * INTERMEDIATE // NBLOCKS, HIDDEN // NBLOCKS, device=device) / 14).requires_grad_()
    w_out = (torch.randn(NBLOCKS, HIDDEN // NBLOCKS, INTERMEDIATE // NBLOCKS, device=device) / 28).requires_grad_()
    b_out = torch.randn(HIDDEN, device=device, requires_grad=True)
    params = (x, w_in, w_out, b_out)

    def mlp(backend):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            inner = blockdiag_glu(x, w_in, backend=backend)
            return blockdiag_matmul(inner, w_out, b_out, backend=backend)

    out, expected = mlp("triton"), mlp("torch")
    assert out.dtype == expected.dtype == torch.bfloat16
    assert relative_error(out, expected) <= RTOL
    grad = torch.randn_like(out)
    for actual, wanted in zip(torch.autograd.grad(out, params, grad), torch.autograd.grad(expected, params, grad)):
        assert actual.dtype == wanted.dtype
        assert relative_error(actual, wanted) <= RTOL


def test_compiled_layer_front_runs_the_kernels():
    device = torch.device("cuda")
    projected = torch.randn(8, 512, 3 * HIDDEN, device=device, dtype=torch.bfloat16, requires_grad=True)
    weight = torch.randn(3 * HIDDEN, 1, 3, device=device, requires_grad=True)
    bias = torch.randn(3 * HIDDEN, device=device, requires_grad=True)

    def front(projected, weight, bias):
        gated, post = mixer_front(projected, weight, bias, backend="triton")
        return add_layernorm(gated, post, torch.ones(512, device=device), torch.zeros(512, device=device), 1e-5)

    out = torch.compile(front, fullgraph=True)(projected, weight, bias)
    assert relative_error(out, front(projected, weight, bias)) <= 1e-3
    out.float().square().sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (projected, weight, bias))
