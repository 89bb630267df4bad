"""Fused gated long convolution (Triton, run by the CPU interpreter) against the torch.fft reference."""

import importlib

import pytest
import torch
from helpers import GPU_HIDDEN, load_benchmark, relative_error

from m2_hf.ops.long_conv import (
    MAX_RADIX_FFT_SIZE,
    PlanLimits,
    fft_long_conv,
    fft_long_conv_reference,
    fft_plan,
    fused_path_supported,
    gated_long_conv,
    gated_long_conv_monarch,
    gated_long_conv_reference,
    long_conv_kernel,
    long_conv_spectrum,
    monarch_spectrum,
    plan_limits,
    radix_kernels,
)
from m2_hf.ops.long_conv import kernels as single_program_kernels

fused_module = importlib.import_module("m2_hf.ops.long_conv.fused")

# dense DFT (N = 16, 32, 128), two Monarch factors (16x16, 16x32, 32x32, 64x64); odd and non-power-of-two lengths
LENGTHS = [7, 16, 33, 64, 100, 200, 300]
# with `small_radix_plans`: radix 2 (N = 512), 4, 8 and 16 (N = 4096) over 16 x 16 subsequence DFTs
RADIX_LENGTHS = [129, 400, 700, 2000]


pytestmark = pytest.mark.usefixtures("poison_kernel_buffers")


def make_spectrum(channels, seq_len, bidirectional, dtype=torch.float32):
    forward_filter = torch.randn(channels, seq_len, dtype=dtype) / seq_len**0.5
    reverse_filter = torch.randn(channels, seq_len, dtype=dtype) / seq_len**0.5 if bidirectional else None
    return long_conv_spectrum(long_conv_kernel(forward_filter, reverse_filter), seq_len)


def make_inputs(batch, channels, seq_len, bidirectional, gated, dtype=torch.float32):
    """`(u, spectrum, skip, pre_gate, post_gate)`, all requiring grad (gates None when not gated)."""
    u = torch.randn(batch, channels, seq_len, dtype=dtype)
    spectrum = make_spectrum(channels, seq_len, bidirectional)
    skip = torch.randn(channels)
    pre_gate = torch.randn(batch, channels, seq_len, dtype=dtype) if gated else None
    post_gate = torch.randn(batch, channels, seq_len, dtype=dtype) if gated else None
    inputs = (u, spectrum, skip, pre_gate, post_gate)
    return tuple(t.requires_grad_() if t is not None else None for t in inputs)


def assert_close_to(actual, expected, rtol):
    """Elementwise relative error `rtol`, with an absolute floor of `rtol` times the largest reference value."""
    assert torch.isfinite(actual).all()
    expected = expected.to(actual.dtype)
    atol = rtol * expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)


def check_against_reference(inputs, rtol, leaves=None):
    """Forward and the gradients of every input (or of `leaves`) of the fused path against autograd of the
    reference."""
    grad_out = torch.randn_like(inputs[0])
    out = gated_long_conv(*inputs, backend="triton")
    expected = gated_long_conv_reference(*inputs)
    assert out.dtype == expected.dtype and out.shape == expected.shape
    assert_close_to(out, expected, rtol)
    differentiable = leaves if leaves is not None else [t for t in inputs if t is not None]
    grads = torch.autograd.grad(out, differentiable, grad_out, retain_graph=True)
    expected_grads = torch.autograd.grad(expected, differentiable, grad_out)
    for grad, expected_grad in zip(grads, expected_grads):
        assert grad.dtype == expected_grad.dtype and grad.shape == expected_grad.shape
        assert_close_to(grad, expected_grad, rtol)


def direct_gated_long_conv(u, forward_filter, reverse_filter, skip, pre_gate, post_gate):
    """`post * (sum_m k_fwd[m] s[n - m] + sum_j k_rev[j] s[n + 1 + j] + D s[n])`, `s = u * pre`, as a sum over
    Toeplitz matrices in float64."""
    seq_len = u.shape[-1]
    lag = torch.arange(seq_len)[:, None] - torch.arange(seq_len)[None, :]  # n - m
    causal = torch.where(lag >= 0, forward_filter.double()[:, lag.clamp(min=0)], 0.0)  # [H, n, m]
    matrix = causal
    if reverse_filter is not None:
        matrix = matrix + torch.where(lag < 0, reverse_filter.double()[:, (-lag - 1).clamp(min=0)], 0.0)
    signal = u.double() * pre_gate.double()
    return post_gate.double() * (torch.einsum("hnm,bhm->bhn", matrix, signal) + skip.double()[:, None] * signal)


@pytest.mark.parametrize("inference", [True, False], ids=["no_grad", "autograd"])
@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("seq_len", [1, 6, 33])
def test_reference_is_the_direct_convolution(seq_len, bidirectional, inference):
    """The torch.fft reference, without autograd (products written into the FFTs' outputs) and with it, against
    the direct sum; its inputs stay unchanged."""
    channels = 3
    forward_filter = torch.randn(channels, seq_len) / seq_len**0.5
    reverse_filter = torch.randn(channels, seq_len) / seq_len**0.5 if bidirectional else None
    spectrum = long_conv_spectrum(long_conv_kernel(forward_filter, reverse_filter), seq_len)
    spectrum.requires_grad_(not inference)
    u, pre_gate, post_gate = (torch.randn(2, channels, seq_len) for _ in range(3))
    skip = torch.randn(channels)
    before = [t.detach().clone() for t in (u, spectrum, skip, pre_gate, post_gate)]
    with torch.set_grad_enabled(not inference):
        out = gated_long_conv_reference(u, spectrum, skip, pre_gate, post_gate)
    expected = direct_gated_long_conv(u, forward_filter, reverse_filter, skip, pre_gate, post_gate)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
    after = (u, spectrum, skip, pre_gate, post_gate)
    assert all(torch.equal(a.detach(), b) for a, b in zip(after, before))


@pytest.mark.parametrize("seq_len", [1, 7, 16, 33, 100, 300, 1024, 1025, 5000, 16384, 32768])
def test_fft_plan_covers_the_linear_convolution(seq_len):
    plan = fft_plan(seq_len)
    assert plan.fft_size >= 2 * seq_len and plan.radix * plan.outer * plan.inner == plan.fft_size
    # every nonzero sample of a (sub)sequence lies in the time tile
    assert plan.time_rows * plan.time_cols * plan.radix >= seq_len * plan.block_rows
    assert min(plan.time_rows, plan.time_cols, plan.freq_rows, plan.inner) >= 16  # GPU `tl.dot` minimum
    assert (plan.radix > 1) == (seq_len > 1024)
    assert fft_plan(MAX_RADIX_FFT_SIZE // 2 + 1) is None


def unscrambled_spectrum(layout: torch.Tensor, plan) -> torch.Tensor:
    """The `[H, N]` complex spectrum from `monarch_spectrum`'s layout, the unstored rows by conjugate symmetry."""
    channels = layout.shape[0]
    stored = torch.complex(layout[:, 0], layout[:, 1]).reshape(channels, plan.radix, plan.stored_rows, plan.inner)
    full = torch.zeros(channels, plan.fft_size, dtype=stored.dtype)
    sub_size = plan.outer * plan.inner
    for j in range(plan.radix):
        for k1 in range(plan.stored_rows):
            frequency = k1 + plan.outer * torch.arange(plan.inner) + sub_size * j
            full[:, frequency] = stored[:, j, k1]
    if plan.radix > 1:
        for k1 in range(plan.stored_rows, plan.outer):
            frequency = k1 + plan.outer * torch.arange(plan.inner)
            for j in range(plan.radix):
                partner = (plan.fft_size - frequency - sub_size * j) % plan.fft_size
                full[:, frequency + sub_size * j] = full[:, partner].conj()
    return full


@pytest.mark.parametrize("seq_len", [1, 7, 33, 300, 5000])
def test_monarch_spectrum_is_the_padded_kernel_spectrum(seq_len):
    """Undoing the Monarch order, `IDFT(DFT(s) * K)` on the padded circle is the reference convolution."""
    plan = fft_plan(seq_len)
    spectrum = make_spectrum(3, seq_len, bidirectional=True, dtype=torch.float64)
    signal = torch.randn(2, 3, seq_len, dtype=torch.float64)
    layout = monarch_spectrum(spectrum, seq_len).to(torch.float64)
    assert layout.shape == (3, 2, plan.spectrum_size)
    full = unscrambled_spectrum(layout, plan)
    conv = torch.fft.ifft(torch.fft.fft(signal, n=plan.fft_size) * full, norm="forward").real[..., :seq_len]
    expected = fft_long_conv_reference(signal, spectrum.to(torch.complex64), torch.zeros(3))
    torch.testing.assert_close(conv, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("seq_len", LENGTHS)
def test_forward_and_backward_match_reference_fp32(seq_len, bidirectional):
    check_against_reference(make_inputs(3, 2, seq_len, bidirectional, gated=True), rtol=1e-5)


@pytest.mark.parametrize("seq_len", [7, 100])
def test_ungated_matches_reference_fp32(seq_len):
    check_against_reference(make_inputs(2, 3, seq_len, bidirectional=True, gated=False), rtol=1e-5)


def test_longest_single_program_length_fp32():
    """L = 1000: FFT size 2048 as 32 x 64, a partly filled last signal row."""
    assert fft_plan(1000).radix == 1
    check_against_reference(make_inputs(1, 1, 1000, bidirectional=True, gated=True), rtol=1e-5)


@pytest.mark.parametrize("seq_len", [33, 200])
def test_fp16_matches_reference(seq_len):
    """fp16 in and out, float32 inside: the reference on the same fp16 inputs, up to fp16 rounding."""
    check_against_reference(make_inputs(2, 2, seq_len, bidirectional=True, gated=True, dtype=torch.float16), 2e-3)


@pytest.mark.parametrize("seq_len", [100, 700])
def test_bf16_inputs_match_the_fp32_reference(seq_len, small_radix_plans):
    """bf16 in and out (the kernels upcast right after loading, so the interpreter runs them), one program and
    radix plans: norm-wise relative error within 1e-2 of the fp32 reference on the same values, for the output and
    every gradient, the complex spectrum gradient included."""
    halves = [t.bfloat16().detach().requires_grad_() for t in torch.randn(3, 2, 3, seq_len)]
    singles = [t.detach().float().requires_grad_() for t in halves]
    spectrum = make_spectrum(3, seq_len, bidirectional=True).requires_grad_()
    skip = torch.randn(3, requires_grad=True)
    out = gated_long_conv(halves[0], spectrum, skip, halves[1], halves[2], backend="triton")
    expected = gated_long_conv_reference(singles[0], spectrum, skip, singles[1], singles[2])
    assert out.dtype == torch.bfloat16
    grad_out = torch.randn(out.shape).bfloat16()
    grads = torch.autograd.grad(out, [*halves, spectrum, skip], grad_out)
    expected_grads = torch.autograd.grad(expected, [*singles, spectrum, skip], grad_out.float())
    for actual, reference in zip((out, *grads), (expected, *expected_grads)):
        assert actual.dtype in (reference.dtype, torch.bfloat16)
        error = (actual.to(reference.dtype) - reference).norm() / reference.norm()
        assert error <= 1e-2, error


@pytest.mark.parametrize("seq_len, radix_plans", [(40, False), (300, True)])
def test_broadcast_gate_and_strided_views(seq_len, radix_plans, request):
    """Inputs as the mixer makes them: channel slices of one `[B, 3H, L]` projection, a `[B, 1, L]` mask gate;
    one program, and the radix step."""
    if radix_plans:
        request.getfixturevalue("small_radix_plans")
        assert fft_plan(seq_len).radix > 1
    batch, channels = 2, 3
    projected = torch.randn(batch, 3 * channels, seq_len, requires_grad=True)
    pre_gate, post_gate, value = projected.split(channels, dim=1)
    mask = (torch.rand(batch, 1, seq_len) > 0.3).float().requires_grad_()
    spectrum = make_spectrum(channels, seq_len, bidirectional=True).requires_grad_()
    skip = torch.randn(channels, requires_grad=True)
    inputs = (value, spectrum, skip, pre_gate * mask, post_gate)
    check_against_reference(inputs, rtol=1e-5, leaves=[projected, mask, spectrum, skip])


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("seq_len", RADIX_LENGTHS)
def test_radix_step_matches_reference_fp32(seq_len, bidirectional, small_radix_plans):
    assert fft_plan(seq_len).radix > 1
    check_against_reference(make_inputs(2, 3, seq_len, bidirectional, gated=True), rtol=1e-5)


@pytest.mark.parametrize("seq_len", [200, 1000])
def test_radix_step_ungated_and_fp16(seq_len, small_radix_plans):
    check_against_reference(make_inputs(2, 2, seq_len, bidirectional=True, gated=False), rtol=1e-5)
    check_against_reference(make_inputs(2, 2, seq_len, bidirectional=True, gated=True, dtype=torch.float16), 2e-3)


@pytest.mark.parametrize("seq_len", [129, 400, 2000])
def test_one_launch_radix_forward_matches_reference(seq_len, small_radix_plans):
    """The forward as one launch per (row, channel), its phases separated by barriers."""
    limits = PlanLimits(small_radix_plans.max_fused_fft_size, small_radix_plans.radix_inner_fft_size, True)
    with plan_limits(limits):
        assert fft_plan(seq_len).one_launch_forward
        check_against_reference(make_inputs(2, 3, seq_len, bidirectional=True, gated=True), rtol=1e-5)
        check_against_reference(make_inputs(1, 2, seq_len, bidirectional=False, gated=False), rtol=1e-5)


def test_one_launch_radix_forward_at_a_real_plan_size():
    inputs = make_inputs(1, 1, 4097, bidirectional=True, gated=True)
    limits = PlanLimits(one_launch_forward=True)
    out = gated_long_conv(*inputs, backend="triton", limits=limits)
    assert_close_to(out, gated_long_conv_reference(*inputs), rtol=1e-5)


def test_plan_limits_are_arguments_with_checked_defaults():
    assert fft_plan(1025).radix == 2 and fft_plan(1025, PlanLimits(max_fused_fft_size=4096)).radix == 1
    assert fft_plan(200, PlanLimits(256, 256)).radix == 2
    with plan_limits(PlanLimits(256, 256)):
        assert fft_plan(200).radix == 2
    assert fft_plan(200).radix == 1  # the context is left
    with pytest.raises(ValueError, match="power of two"):
        PlanLimits(max_fused_fft_size=1000)
    with pytest.raises(ValueError, match="must not exceed"):
        PlanLimits(max_fused_fft_size=256, radix_inner_fft_size=512)


@pytest.mark.parametrize("seq_len, radix", [(1025, 2), (2049, 4), (4097, 8), (32768, 32)])
def test_radix_step_at_real_plan_sizes_fp32(seq_len, radix):
    """The plans the GPU runs: 32 x 64 subsequence DFTs, radix 2 to 32."""
    assert fft_plan(seq_len).radix == radix
    check_against_reference(make_inputs(1, 1, seq_len, bidirectional=True, gated=True), rtol=1e-5)


def test_lengths_beyond_the_radix_plans_fall_back_to_torch_under_auto(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the fused kernel must not run for this call")

    monkeypatch.setattr(single_program_kernels, "gated_long_conv_fwd_triton", refuse)
    monkeypatch.setattr(radix_kernels, "gated_long_conv_fwd_radix", refuse)
    # "auto" as on a CUDA tensor: the kernels would run if they covered the call
    monkeypatch.setattr(fused_module, "use_triton", lambda tensor, backend="auto": True)
    seq_len = MAX_RADIX_FFT_SIZE // 2 + 1
    inputs = make_inputs(1, 2, seq_len, bidirectional=True, gated=True)
    assert not fused_path_supported(inputs[0], inputs[1])
    torch.testing.assert_close(gated_long_conv(*inputs, backend="auto"), gated_long_conv_reference(*inputs))
    u64 = torch.randn(1, 2, 16, dtype=torch.float64)
    spectrum64 = make_spectrum(2, 16, bidirectional=False, dtype=torch.float64)
    assert not fused_path_supported(u64, spectrum64)
    torch.testing.assert_close(
        fft_long_conv(u64, spectrum64, torch.ones(2, dtype=torch.float64)),
        fft_long_conv_reference(u64, spectrum64, torch.ones(2, dtype=torch.float64)),
    )


def test_forcing_triton_where_the_kernels_do_not_cover_the_call_raises():
    """The contract of every op: a forced backend that cannot run is an error, not a silent fallback."""
    inputs = make_inputs(1, 2, MAX_RADIX_FFT_SIZE // 2 + 1, bidirectional=True, gated=True)
    with pytest.raises(RuntimeError, match=r"forced.*L <= 32768.*length 32769"):
        gated_long_conv(*inputs, backend="triton")
    u64 = torch.randn(1, 2, 16, dtype=torch.float64)
    spectrum64 = make_spectrum(2, 16, bidirectional=False, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="torch.float64"):
        fft_long_conv(u64, spectrum64, torch.ones(2, dtype=torch.float64), backend="triton")


def test_fft_long_conv_is_the_ungated_op():
    u, spectrum, skip, _, _ = make_inputs(2, 3, 20, bidirectional=True, gated=False)
    expected = fft_long_conv_reference(u, spectrum, skip)
    torch.testing.assert_close(fft_long_conv(u, spectrum, skip), expected, rtol=0, atol=0)  # CPU "auto": reference
    assert_close_to(fft_long_conv(u, spectrum, skip, backend="triton"), expected, rtol=1e-5)


@pytest.mark.parametrize("gated", [True, False])
def test_opcheck(gated):
    u, spectrum, skip, pre_gate, post_gate = make_inputs(2, 2, 9, bidirectional=True, gated=gated)
    layout = monarch_spectrum(spectrum, 9).detach().requires_grad_()
    torch.library.opcheck(gated_long_conv_monarch, (u, layout, skip, pre_gate, post_gate))


def test_opcheck_radix_step(small_radix_plans):
    """The op takes the plan limits as arguments (here those of `small_radix_plans`)."""
    u, spectrum, skip, pre_gate, post_gate = make_inputs(1, 2, 300, bidirectional=True, gated=True)
    layout = monarch_spectrum(spectrum, 300).detach().requires_grad_()
    limits = (small_radix_plans.max_fused_fft_size, small_radix_plans.radix_inner_fft_size, False)
    torch.library.opcheck(gated_long_conv_monarch, (u, layout, skip, pre_gate, post_gate, *limits))


@pytest.mark.parametrize("kernel_backend", ["torch", "triton"])
def test_compiles_fullgraph(kernel_backend):
    """Dynamo traces the dispatch (backend choice included) and the opaque op into one graph, forward and
    backward; `aot_eager` skips inductor's C++ build."""
    inputs = make_inputs(2, 3, 24, bidirectional=True, gated=True)
    compiled = torch.compile(gated_long_conv, fullgraph=True, backend="aot_eager")
    out = compiled(*inputs, backend=kernel_backend)
    expected = gated_long_conv_reference(*inputs)
    assert_close_to(out, expected, rtol=1e-5)
    grads = torch.autograd.grad(out.square().sum(), inputs)
    for grad, expected_grad in zip(grads, torch.autograd.grad(expected.square().sum(), inputs)):
        assert_close_to(grad, expected_grad, rtol=1e-5)


def test_benchmark_smoke(tmp_path, monkeypatch):
    """The micro-benchmark runs on CPU (reference rows only); its numbers are not checked."""
    bench = load_benchmark("bench_long_conv", monkeypatch)
    output = tmp_path / "table.md"
    rows = bench.main(
        ["--lengths", "16", "--device", "cpu", "--dtype", "float32", "--tokens", "32", "--channels", "4",
         "--warmup", "0", "--repeats", "1", "--output", str(output)]
    )
    expected = [("torch", "fwd"), ("spectrum-layout", "fwd"), ("torch", "train")]
    assert [(r.backend, r.mode) for r in rows] == expected
    table = output.read_text()
    assert table.count("\n| torch |") == 2 and "| spectrum-layout | monarch_spectrum | 16 |" in table


# --- compiled kernels on a GPU at real sizes: 64K tokens per call, H = 768, bf16 inputs ---

LONG_CONV_GPU_TOKENS = 65536


@pytest.mark.gpu
@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("seq_len", [512, 1024, 2048, 4096, 8192, 16384, 32768])
def test_bf16_matches_fp32_reference(seq_len, bidirectional):
    device = torch.device("cuda")
    batch = LONG_CONV_GPU_TOKENS // seq_len
    shape = (batch, GPU_HIDDEN, seq_len)
    forward_filter = torch.randn(GPU_HIDDEN, seq_len, device=device) / seq_len**0.5
    reverse_filter = torch.randn(GPU_HIDDEN, seq_len, device=device) / seq_len**0.5 if bidirectional else None
    spectrum = long_conv_spectrum(long_conv_kernel(forward_filter, reverse_filter), seq_len).requires_grad_()
    skip = torch.randn(GPU_HIDDEN, device=device, requires_grad=True)
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
