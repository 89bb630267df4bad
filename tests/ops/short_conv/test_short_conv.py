"""Fused sequence-mixer front (short conv, split, pre-gate): Triton (CPU interpreter) vs the reference."""

import pytest
import torch
from helpers import GPU_HIDDEN, GPU_TOKENS, assert_relative_close, check_bf16_against_fp32, relative_error, tiny_config
from helpers import KERNEL_RTOL as RTOL

from m2_hf.modeling.long_conv_mixer import M2LongConvMixer
from m2_hf.ops import add_layernorm, mixer_front
from m2_hf.ops.short_conv import mixer_front_reference, mixer_front_triton

pytestmark = pytest.mark.usefixtures("poison_kernel_buffers")


def random_mask(batch, length):
    """Left and right padding and a hole, with at least one real token per row."""
    mask = (torch.rand(batch, length) > 0.3).float()
    mask[:, length // 2] = 1.0
    return mask


def make_inputs(batch, length, hidden, kernel_size=3):
    projected = torch.randn(batch, length, 3 * hidden)
    weight = torch.randn(3 * hidden, 1, kernel_size) / kernel_size**0.5
    bias = torch.randn(3 * hidden)
    return projected, weight, bias


@pytest.mark.parametrize(
    "batch, length, hidden, masked, dtype",
    [
        (2, 7, 5, False, torch.float32),
        (2, 7, 5, True, torch.float32),
        (1, 21, 18, True, torch.float32),  # several sequence and channel tiles
        (3, 1, 4, True, torch.float32),
        (2, 7, 5, True, torch.float16),
        (1, 21, 18, False, torch.float16),
    ],
)
def test_mixer_front(batch, length, hidden, masked, dtype):
    projected, weight, bias = make_inputs(batch, length, hidden)
    mask = random_mask(batch, length) if masked else None
    low = [t.to(dtype).requires_grad_() for t in (projected, weight, bias)]
    high = [t.detach().float().requires_grad_() for t in low]
    gated, post = mixer_front(*low, mask, backend="triton")
    expected_gated, expected_post = mixer_front_reference(*high, mask)
    for actual, expected in ((gated, expected_gated), (post, expected_post)):
        assert actual.dtype == dtype and actual.shape == (batch, hidden, length)
        assert_relative_close(actual, expected, RTOL[dtype])
    grad_gated, grad_post = torch.randn_like(expected_gated), torch.randn_like(expected_post)
    grads = torch.autograd.grad((gated, post), low, (grad_gated.to(dtype), grad_post.to(dtype)))
    expected_grads = torch.autograd.grad((expected_gated, expected_post), high, (grad_gated, grad_post))
    for actual, expected, source in zip(grads, expected_grads, low):
        assert actual.dtype == source.dtype and actual.shape == source.shape
        assert_relative_close(actual, expected, RTOL[dtype])


@pytest.mark.parametrize("kernel_size", [1, 4])
def test_other_kernel_sizes(kernel_size):
    projected, weight, bias = (t.requires_grad_() for t in make_inputs(2, 9, 3, kernel_size))
    mask = random_mask(2, 9)
    out = mixer_front(projected, weight, bias, mask, backend="triton")
    expected = mixer_front_reference(projected, weight, bias, mask)
    for actual, wanted in zip(out, expected):
        assert_relative_close(actual, wanted, 1e-5)
    grads = torch.autograd.grad(sum(o.sum() for o in out), (projected, weight, bias))
    expected_grads = torch.autograd.grad(sum(o.sum() for o in expected), (projected, weight, bias))
    for actual, wanted in zip(grads, expected_grads):
        assert_relative_close(actual, wanted, 1e-5)


def test_padding_never_leaks():
    """Values and gradients at padded positions neither reach real outputs nor receive gradient."""
    projected, weight, bias = make_inputs(2, 8, 4)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1, 0, 0]], dtype=torch.float32)
    noisy = projected.clone()
    noisy[mask == 0] = 1e3
    projected.requires_grad_()
    gated, post = mixer_front(projected, weight, bias, mask, backend="triton")
    noisy_gated, noisy_post = mixer_front(noisy, weight, bias, mask, backend="triton")
    torch.testing.assert_close(gated, noisy_gated)
    real = mask[:, None, :].bool().expand_as(post)
    torch.testing.assert_close(post[real], noisy_post[real])
    assert (gated[~real] == 0).all()
    (grad,) = torch.autograd.grad((gated * torch.randn_like(gated)).sum() + post[real].sum(), projected)
    assert (grad[mask == 0] == 0).all()


def test_mask_layouts_and_dtypes_agree():
    """`[B, L]` and `[B, 1, L]` float masks and a boolean mask give the same result."""
    projected, weight, bias = make_inputs(2, 6, 3)
    mask = random_mask(2, 6)
    flat = mixer_front(projected, weight, bias, mask, backend="triton")
    for other in (mask[:, None, :], mask.bool()):
        for actual, expected in zip(mixer_front(projected, weight, bias, other, backend="triton"), flat):
            torch.testing.assert_close(actual, expected, rtol=0, atol=0)


def test_reference_equals_mixer_front_of_the_model():
    """The reference reproduces M2LongConvMixer's projection, mask, short conv, split and pre-gate."""
    config = tiny_config(hidden_size=8, max_position_embeddings=8, filter_order=4)
    mixer = M2LongConvMixer(config)
    hidden = torch.randn(2, 6, 8)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 1, 1, 1, 1, 0]], dtype=torch.float32)
    projected = mixer.in_proj(hidden)
    expected = mixer.short_conv(projected.transpose(1, 2) * mask[:, None]).split(8, dim=1)
    gated, post = mixer_front_reference(projected, mixer.short_conv.weight, mixer.short_conv.bias, mask[:, None])
    torch.testing.assert_close(gated, expected[2] * expected[0] * mask[:, None])
    torch.testing.assert_close(post, expected[1])


def test_rejects_channels_not_three_hidden():
    with pytest.raises(ValueError, match="3 \\* hidden"):
        mixer_front(torch.randn(1, 4, 8), torch.randn(8, 1, 3), torch.randn(8), backend="triton")


def test_opcheck():
    projected, weight, bias = (t.requires_grad_() for t in make_inputs(2, 5, 3))
    torch.library.opcheck(mixer_front_triton, (projected, weight, bias, random_mask(2, 5)))


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_compiles_fullgraph(backend):
    projected, weight, bias = (t.requires_grad_() for t in make_inputs(2, 5, 3))
    mask = random_mask(2, 5)

    def front(projected, weight, bias):
        gated, post = mixer_front(projected, weight, bias, mask, backend=backend)
        return (gated * post).sum()

    out = torch.compile(front, fullgraph=True)(projected, weight, bias)
    grads = torch.autograd.grad(out, (projected, weight, bias))
    expected = front(projected, weight, bias)
    torch.testing.assert_close(out, expected)
    for actual, wanted in zip(grads, torch.autograd.grad(expected, (projected, weight, bias))):
        torch.testing.assert_close(actual, wanted)


# --- compiled kernels on a GPU at M2-BERT-base sizes (bf16 against the fp32 reference) ---


@pytest.mark.gpu
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("seq_len", [512, 4096])
def test_mixer_front_bf16_at_real_size(seq_len, masked):
    device = torch.device("cuda")
    batch = GPU_TOKENS // seq_len
    projected = torch.randn(batch, seq_len, 3 * GPU_HIDDEN, device=device)
    weight = torch.randn(3 * GPU_HIDDEN, 1, 3, device=device) / 3**0.5
    bias = torch.randn(3 * GPU_HIDDEN, device=device)
    mask = (torch.rand(batch, seq_len, device=device) > 0.2).float() if masked else None
    check_bf16_against_fp32(
        lambda *t: mixer_front(*t, mask, backend="triton"),
        lambda *t: mixer_front_reference(*t, mask),
        (projected, weight, bias),
    )


@pytest.mark.gpu
def test_compiled_layer_front_runs_the_kernels():
    device = torch.device("cuda")
    projected = torch.randn(8, 512, 3 * GPU_HIDDEN, device=device, dtype=torch.bfloat16, requires_grad=True)
    weight = torch.randn(3 * GPU_HIDDEN, 1, 3, device=device, requires_grad=True)
    bias = torch.randn(3 * GPU_HIDDEN, device=device, requires_grad=True)

    def front(projected, weight, bias):
        gated, post = mixer_front(projected, weight, bias, backend="triton")
        return add_layernorm(gated, post, torch.ones(512, device=device), torch.zeros(512, device=device), 1e-5)

    out = torch.compile(front, fullgraph=True)(projected, weight, bias)
    assert relative_error(out, front(projected, weight, bias)) <= 1e-3
    out.float().square().sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (projected, weight, bias))
