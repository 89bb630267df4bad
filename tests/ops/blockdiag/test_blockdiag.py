"""Block-diagonal matmul, its GLU epilogue and the order-2 Monarch multiply: Triton (CPU interpreter) vs reference."""

import pytest
import torch
from helpers import (
    GPU_HIDDEN,
    GPU_INTERMEDIATE,
    GPU_NBLOCKS,
    GPU_RTOL,
    GPU_TOKENS,
    assert_relative_close,
    check_bf16_against_fp32,
    relative_error,
)
from helpers import KERNEL_RTOL as RTOL

from m2_hf.ops import blockdiag_glu, blockdiag_matmul, monarch_matmul
from m2_hf.ops.blockdiag import (
    blockdiag_glu_reference,
    blockdiag_glu_triton,
    blockdiag_matmul_reference,
    blockdiag_matmul_triton,
)
from m2_hf.ops.monarch import monarch_matmul_reference, monarch_matmul_triton

pytestmark = pytest.mark.usefixtures("poison_kernel_buffers")


def check_against_reference(fused, reference, inputs, dtype):
    """Forward and every input gradient of `fused` on `dtype` inputs vs `reference` on their fp32 copies."""
    low = [t.to(dtype).requires_grad_() if t is not None else None for t in inputs]
    high = [t.detach().float().requires_grad_() if t is not None else None for t in low]
    out = fused(*low)
    expected = reference(*high)
    assert out.dtype == dtype and out.shape == expected.shape
    assert_relative_close(out, expected, RTOL[dtype])
    grad = torch.randn_like(expected)
    needs = [t for t in low if t is not None]
    grads = torch.autograd.grad(out, needs, grad.to(dtype))
    expected_grads = torch.autograd.grad(expected, [t for t in high if t is not None], grad)
    for actual, wanted, source in zip(grads, expected_grads, needs):
        assert actual.dtype == source.dtype and actual.shape == source.shape
        assert_relative_close(actual, wanted, RTOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("nblocks, in_block, out_block", [(1, 12, 10), (2, 5, 7), (4, 6, 3), (3, 17, 18)])
def test_blockdiag_matmul(nblocks, in_block, out_block, with_bias, dtype):
    x = torch.randn(2, 7, nblocks * in_block)
    weight = torch.randn(nblocks, out_block, in_block) / in_block**0.5
    bias = torch.randn(nblocks * out_block) if with_bias else None
    check_against_reference(
        lambda x, w, b: blockdiag_matmul(x, w, b, backend="triton"),
        blockdiag_matmul_reference,
        (x, weight, bias),
        dtype,
    )


def test_blockdiag_matmul_reads_strided_rows():
    """A row-strided input (every other token of a wider buffer) is read in place."""
    buffer = torch.randn(9, 2, 8)
    x = buffer[:, 0]
    weight = torch.randn(2, 5, 4)
    assert_relative_close(blockdiag_matmul(x, weight, backend="triton"), blockdiag_matmul_reference(x, weight), 1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(
    "nblocks, in_block, out_block, activation",
    [(1, 9, 10, "gelu"), (2, 5, 6, "gelu"), (4, 6, 10, "gelu"), (3, 4, 6, "gelu"), (4, 3, 22, "silu")],
)
def test_blockdiag_glu(nblocks, in_block, out_block, activation, dtype):
    """Gate = first half of the 2I outputs, value = second half; with 3 blocks the middle block holds both."""
    x = torch.randn(2, 7, nblocks * in_block)
    weight = torch.randn(nblocks, out_block, in_block) / in_block**0.5
    check_against_reference(
        lambda x, w: blockdiag_glu(x, w, activation, backend="triton"),
        lambda x, w: blockdiag_glu_reference(x, w, activation),
        (x, weight),
        dtype,
    )


def test_blockdiag_glu_equals_unfused_mlp_front():
    """The fused op is exactly `gelu(gate) * value` of the plain block-diagonal projection."""
    x = torch.randn(3, 5, 8)
    weight = torch.randn(4, 4, 2)
    gate, value = blockdiag_matmul(x, weight, backend="triton").chunk(2, dim=-1)
    assert_relative_close(blockdiag_glu(x, weight, backend="triton"), torch.nn.functional.gelu(gate) * value, 1e-5)


def dense_blockdiag(x, weight, bias=None):
    """The block-diagonal product through the dense `[nblocks * out, nblocks * in]` matrix (float64)."""
    y = x.double() @ torch.block_diag(*weight.double()).T
    return y if bias is None else y + bias.double()


BLOCK_SHAPES = [(1, 12, 10), (2, 5, 7), (3, 4, 6), (4, 6, 3)]


@pytest.mark.parametrize("inference", [True, False], ids=["no_grad", "autograd"])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("nblocks, in_block, out_block", BLOCK_SHAPES)
def test_blockdiag_matmul_reference_is_the_dense_block_diagonal_product(nblocks, in_block, out_block, with_bias, inference):
    """Both forms of the reference (per-block matmuls writing one buffer without autograd, einsum with it), on a
    column-strided input that they must leave unchanged."""
    x = torch.randn(2, 7, 2 * nblocks * in_block)[..., ::2]
    weight = (torch.randn(nblocks, out_block, in_block) / in_block**0.5).requires_grad_(not inference)
    bias = torch.randn(nblocks * out_block) if with_bias else None
    before = x.clone()
    with torch.set_grad_enabled(not inference):
        out = blockdiag_matmul_reference(x, weight, bias)
    torch.testing.assert_close(out.double(), dense_blockdiag(x, weight.detach(), bias), rtol=1e-5, atol=1e-5)
    assert out.requires_grad is not inference
    assert torch.equal(x, before)


@pytest.mark.parametrize("inference", [True, False], ids=["no_grad", "autograd"])
@pytest.mark.parametrize("activation", ["gelu", "silu"])
@pytest.mark.parametrize("nblocks, in_block, out_block", BLOCK_SHAPES)
def test_blockdiag_glu_reference_is_the_gated_dense_product(nblocks, in_block, out_block, activation, inference):
    """`act(gate) * value` of the dense product's halves, without autograd (the gate half overwritten in place)
    and with it, for one to four blocks."""
    x = torch.randn(3, 5, nblocks * in_block)
    weight = (torch.randn(nblocks, 2 * out_block, in_block) / in_block**0.5).requires_grad_(not inference)
    before = x.clone()
    with torch.set_grad_enabled(not inference):
        out = blockdiag_glu_reference(x, weight, activation)
    gate, value = dense_blockdiag(x, weight.detach()).chunk(2, dim=-1)
    act = torch.nn.functional.gelu if activation == "gelu" else torch.nn.functional.silu
    torch.testing.assert_close(out.double(), act(gate) * value, rtol=1e-5, atol=1e-5)
    assert out.shape == (3, 5, nblocks * out_block) and torch.equal(x, before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", [(3, 4, 5, 2), (4, 4, 4, 4), (1, 2, 3, 5), (2, 7, 9, 3)])
def test_monarch_matmul(shape, dtype):
    k, q, p, s = shape
    x = torch.randn(2, 5, k * p)
    right = torch.randn(k, q, p) / p**0.5
    left = torch.randn(q, s, k) / k**0.5
    check_against_reference(
        lambda x, r, l: monarch_matmul(x, r, l, backend="triton"), monarch_matmul_reference, (x, right, left), dtype
    )


def test_triton_path_validates_shapes():
    with pytest.raises(ValueError, match="features"):
        blockdiag_matmul(torch.randn(2, 10), torch.randn(4, 3, 3), backend="triton")
    with pytest.raises(ValueError, match="left must be"):
        monarch_matmul(torch.randn(2, 6), torch.randn(2, 3, 3), torch.randn(2, 3, 2), backend="triton")
    with pytest.raises(ValueError, match="activation"):
        blockdiag_glu(torch.randn(2, 4), torch.randn(2, 4, 2), activation="relu", backend="triton")


def test_auto_backend_takes_reference_on_cpu():
    x, weight = torch.randn(3, 8), torch.randn(2, 6, 4)
    torch.testing.assert_close(blockdiag_matmul(x, weight), blockdiag_matmul_reference(x, weight), rtol=0, atol=0)
    torch.testing.assert_close(blockdiag_glu(x, weight), blockdiag_glu_reference(x, weight), rtol=0, atol=0)


def test_opcheck():
    x = torch.randn(5, 8, requires_grad=True)
    weight = torch.randn(2, 6, 4, requires_grad=True)
    bias = torch.randn(12, requires_grad=True)
    torch.library.opcheck(blockdiag_matmul_triton, (x, weight, bias))
    torch.library.opcheck(blockdiag_glu_triton, (x, weight, "gelu"))
    right, left = torch.randn(2, 3, 4, requires_grad=True), torch.randn(3, 2, 2, requires_grad=True)
    torch.library.opcheck(monarch_matmul_triton, (x, right, left))


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_compiles_fullgraph(backend):
    x = torch.randn(2, 3, 8, requires_grad=True)
    weight = torch.randn(4, 4, 2, requires_grad=True)
    right, left = torch.randn(2, 3, 4, requires_grad=True), torch.randn(3, 2, 2, requires_grad=True)

    def mlp_front(x, weight, right, left):
        return blockdiag_glu(x, weight, backend=backend).sum() + monarch_matmul(x, right, left, backend=backend).sum()

    compiled = torch.compile(mlp_front, fullgraph=True)
    out = compiled(x, weight, right, left)
    grads = torch.autograd.grad(out, (x, weight, right, left))
    expected = mlp_front(x, weight, right, left)
    expected_grads = torch.autograd.grad(expected, (x, weight, right, left))
    torch.testing.assert_close(out, expected)
    for actual, wanted in zip(grads, expected_grads):
        torch.testing.assert_close(actual, wanted)


# --- compiled kernels on a GPU at M2-BERT-base sizes (bf16 against the fp32 reference) ---


@pytest.mark.gpu
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize(
    "in_features, out_features, nblocks",
    [
        (GPU_INTERMEDIATE, GPU_HIDDEN, GPU_NBLOCKS),
        (GPU_HIDDEN, 2 * GPU_INTERMEDIATE, GPU_NBLOCKS),
        (GPU_HIDDEN, GPU_HIDDEN, 1),
    ],
)
def test_blockdiag_matmul_bf16_at_real_size(in_features, out_features, nblocks, with_bias):
    device = torch.device("cuda")
    x = torch.randn(GPU_TOKENS // 512, 512, in_features, device=device)
    weight = torch.randn(nblocks, out_features // nblocks, in_features // nblocks, device=device)
    weight /= (in_features // nblocks) ** 0.5
    inputs = (x, weight) + ((torch.randn(out_features, device=device),) if with_bias else ())
    check_bf16_against_fp32(lambda *t: blockdiag_matmul(*t, backend="triton"), blockdiag_matmul_reference, inputs)


@pytest.mark.gpu
@pytest.mark.parametrize("nblocks", [1, 2, GPU_NBLOCKS])
def test_blockdiag_glu_bf16_at_real_size(nblocks):
    device = torch.device("cuda")
    x = torch.randn(GPU_TOKENS // 512, 512, GPU_HIDDEN, device=device)
    weight = torch.randn(nblocks, 2 * GPU_INTERMEDIATE // nblocks, GPU_HIDDEN // nblocks, device=device)
    weight /= (GPU_HIDDEN // nblocks) ** 0.5
    check_bf16_against_fp32(lambda *t: blockdiag_glu(*t, backend="triton"), blockdiag_glu_reference, (x, weight))


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(32, 32, 32, 32), (16, 48, 48, 16), (4, 192, 192, 4)])
def test_monarch_matmul_bf16_at_real_size(shape):
    k, q, p, s = shape
    device = torch.device("cuda")
    x = torch.randn(GPU_TOKENS, k * p, device=device)
    right = torch.randn(k, q, p, device=device) / p**0.5
    left = torch.randn(q, s, k, device=device) / k**0.5
    check_bf16_against_fp32(lambda *t: monarch_matmul(*t, backend="triton"), monarch_matmul_reference, (x, right, left))


@pytest.mark.gpu
def test_autocast_mlp_matches_reference():
    """Under bf16 autocast, fp32 weights and activations: the kernels cast tiles as autocast would cast tensors."""
    device = torch.device("cuda")
    x = torch.randn(GPU_TOKENS, GPU_HIDDEN, device=device, requires_grad=True)
    w_in = (
        torch.randn(GPU_NBLOCKS, 2 * GPU_INTERMEDIATE // GPU_NBLOCKS, GPU_HIDDEN // GPU_NBLOCKS, device=device) / 14
    ).requires_grad_()
    w_out = (
        torch.randn(GPU_NBLOCKS, GPU_HIDDEN // GPU_NBLOCKS, GPU_INTERMEDIATE // GPU_NBLOCKS, device=device) / 28
    ).requires_grad_()
    b_out = torch.randn(GPU_HIDDEN, device=device, requires_grad=True)
    params = (x, w_in, w_out, b_out)

    def mlp(backend):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            inner = blockdiag_glu(x, w_in, backend=backend)
            return blockdiag_matmul(inner, w_out, b_out, backend=backend)

    out, expected = mlp("triton"), mlp("torch")
    assert out.dtype == expected.dtype == torch.bfloat16
    assert relative_error(out, expected) <= GPU_RTOL
    grad = torch.randn_like(out)
    for actual, wanted in zip(torch.autograd.grad(out, params, grad), torch.autograd.grad(expected, params, grad)):
        assert actual.dtype == wanted.dtype
        assert relative_error(actual, wanted) <= GPU_RTOL
