"""The plan of the fused long convolution: its FFT as a Monarch product of small DFT matrices, and the tables.

A length-`N` DFT with `N = N1 * N2` is computed on the signal reshaped row-major to `N1 x N2`
(`x[n1, n2] = x[n1 * N2 + n2]`):

    X[k1 + N1 * k2] = sum_n2 F_N2[n2, k2] * twiddle[k1, n2] * sum_n1 F_N1[k1, n1] * x[n1, n2]
    twiddle[k1, n2] = exp(-2 pi i * k1 * n2 / N)

i.e. a DFT along the columns (`F_N1 @ x`), a pointwise twiddle, and a DFT along the rows (`@ F_N2`). The result
lands in the `N1 x N2` tile at `(k1, k2)`: the "Monarch order" of the frequencies. The inverse runs the same steps
backwards with conjugated matrices and gives the time signal back in natural row-major order, so the filter
spectrum only has to be stored once in Monarch order (`monarch_spectrum`).

Sizes (`fft_plan`): `N` is the smallest power of two `>= max(2 L, 16)`. Up to `N = 128` the DFT is one dense
matrix applied to a block of 16 rows (`[16, N/2] @ [N/2, N]`); from `N = 256` to `MAX_FUSED_FFT_SIZE` it is the
two-factor product above with `N1 = 2^floor(log2(N) / 2)`, one row per program.

Beyond one program (up to `MAX_RADIX_FFT_SIZE`, i.e. `L <= 32768`) a radix step splits the signal into
`radix = N / M` interleaved subsequences `x_r[m] = x[r + radix * m]` of length `M = RADIX_INNER_FFT_SIZE`:

    X[k + M * j] = sum_r F_radix[j, r] * exp(-2 pi i * r * k / N) * DFT_M(x_r)[k]

Each `DFT_M` is the two-factor product on a real signal, so it is Hermitian: only its Monarch rows
`k1 <= outer / 2` are kept (`stored_rows`), and the kernels rebuild the others by conjugate symmetry
(`radix_kernels.py`). Longer sequences take the torch.fft path. `PlanLimits` moves the thresholds.

Padding the FFT beyond `2 L` is exact: the outputs `n < L` of the length-`2 L` circular convolution only use the
kernel's lags `-(L - 1) .. L - 1`, which `monarch_spectrum` places at the same lags of the longer circle.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

import torch

MIN_FFT_SIZE = 16
MAX_DENSE_FFT_SIZE = 128
# sm_90 builds of larger single-program plans spill kilobytes of registers per thread (benchmarks/kernel-notes.md)
MAX_FUSED_FFT_SIZE = 2048
RADIX_INNER_FFT_SIZE = 2048
MAX_RADIX_FFT_SIZE = 65536
DENSE_BLOCK_ROWS = 16
MIN_DOT_SIZE = 16


@dataclass(frozen=True)
class PlanLimits:
    """Where the plans change strategy; the defaults are the tuned ones. Tests and benchmarks pass others (for
    example the radix step at sizes the interpreter runs quickly) to `fft_plan`, or for whole models through
    `plan_limits`.

    Attributes:
        max_fused_fft_size: the largest FFT one program computes; beyond it the radix step takes over.
        radix_inner_fft_size: the FFT size `M` of each radix subsequence.
        one_launch_forward: run the radix forward's three phases in one program per (row, channel), separated by
            barriers, so that its spectra can stay in L2 (`benchmarks/kernel-notes.md`); off until a GPU run times
            it against the three launches.
    """

    max_fused_fft_size: int = MAX_FUSED_FFT_SIZE
    radix_inner_fft_size: int = RADIX_INNER_FFT_SIZE
    one_launch_forward: bool = False

    def __post_init__(self):
        for name in ("max_fused_fft_size", "radix_inner_fft_size"):
            value = getattr(self, name)
            if value < 2 * MAX_DENSE_FFT_SIZE or value & (value - 1):
                raise ValueError(f"PlanLimits.{name} must be a power of two >= {2 * MAX_DENSE_FFT_SIZE}, got {value}.")
        if self.radix_inner_fft_size > self.max_fused_fft_size:
            raise ValueError(
                f"PlanLimits.radix_inner_fft_size ({self.radix_inner_fft_size}) must not exceed max_fused_fft_size "
                f"({self.max_fused_fft_size}): a radix subsequence is one program's FFT."
            )


DEFAULT_PLAN_LIMITS = PlanLimits()
# Set only by `plan_limits` (a plain attribute rather than a context variable, so that torch.compile traces it).
_active_limits = DEFAULT_PLAN_LIMITS


@contextlib.contextmanager
def plan_limits(limits: PlanLimits) -> Iterator[PlanLimits]:
    """Plan every fused long convolution in this context (whole models included) with `limits`."""
    global _active_limits
    previous, _active_limits = _active_limits, limits
    try:
        yield limits
    finally:
        _active_limits = previous


def current_plan_limits() -> PlanLimits:
    """The limits in force: those of the innermost `plan_limits` context, else the defaults."""
    return _active_limits


@dataclass(frozen=True)
class FFTPlan:
    """Tile geometry of the fused kernels for one sequence length.

    `outer x inner` is the Monarch factorisation (`outer == 1`: one dense DFT of size `inner`) of the DFT one
    program computes: the whole FFT (`radix == 1`), or that of one of `radix` interleaved subsequences
    (`fft_size == radix * outer * inner`). A program holds `block_rows` rows of the batch; its time-domain tile is
    `[time_rows, time_cols]` (only the part of the padded signal that can be nonzero) and its frequency tile
    `[freq_rows, inner]`.
    """

    seq_len: int
    fft_size: int
    outer: int
    inner: int
    block_rows: int
    time_rows: int
    time_cols: int
    freq_rows: int
    radix: int = 1
    one_launch_forward: bool = False

    @property
    def dense(self) -> bool:
        return self.outer == 1

    @property
    def stored_rows(self) -> int:
        """Monarch rows kept of each subsequence's spectrum: all of them, or `k1 <= outer / 2` when `radix > 1`."""
        return self.outer if self.radix == 1 else self.outer // 2 + 1

    @property
    def radix_rows(self) -> int:
        """Rows of the radix step's tiles: the radix itself up to 4 (sums of products), else at least 16 (`tl.dot`)."""
        return self.radix if self.radix <= 4 else max(self.radix, MIN_DOT_SIZE)

    @property
    def spectrum_size(self) -> int:
        """Length of one plane of `monarch_spectrum`: `N`, or `radix * stored_rows * inner`."""
        return self.radix * self.stored_rows * self.inner


def fft_size_for(seq_len: int) -> int:
    """The FFT size of the fused kernels: the smallest power of two `>= max(2 * seq_len, 16)`."""
    return max(MIN_FFT_SIZE, 1 << math.ceil(math.log2(2 * seq_len)))


def fft_plan(seq_len: int, limits: PlanLimits | None = None) -> FFTPlan | None:
    """The tile geometry for `seq_len` under `limits` (default: `current_plan_limits()`), or None when the FFT is
    longer than `MAX_RADIX_FFT_SIZE`."""
    if seq_len < 1:
        raise ValueError(f"seq_len must be positive, got {seq_len}.")
    limits = current_plan_limits() if limits is None else limits
    fft_size = fft_size_for(seq_len)
    if fft_size > MAX_RADIX_FFT_SIZE:
        return None
    if fft_size > limits.max_fused_fft_size:
        subsequence_size = limits.radix_inner_fft_size
        outer, inner = _two_factors(subsequence_size)
        # each subsequence has at most M / 2 nonzero samples (L <= N / 2)
        time_rows = max(outer // 2, MIN_DOT_SIZE)
        radix = fft_size // subsequence_size
        return FFTPlan(
            seq_len, fft_size, outer, inner, 1, time_rows, inner, outer, radix, limits.one_launch_forward
        )
    if fft_size <= MAX_DENSE_FFT_SIZE:
        # the nonzero half of the padded signal, at least one dot operand wide
        time_cols = max(fft_size // 2, MIN_DOT_SIZE)
        return FFTPlan(seq_len, fft_size, 1, fft_size, DENSE_BLOCK_ROWS, DENSE_BLOCK_ROWS, time_cols, DENSE_BLOCK_ROWS)
    outer, inner = _two_factors(fft_size)
    # rows n1 >= outer / 2 of the signal tile are padding (L <= N / 2)
    time_rows = max(outer // 2, MIN_DOT_SIZE)
    return FFTPlan(seq_len, fft_size, outer, inner, 1, time_rows, inner, outer)


def _two_factors(size: int) -> tuple[int, int]:
    """`(outer, inner)` with `outer = 2^floor(log2(size) / 2)`, `outer * inner == size`."""
    outer = 1 << (int(math.log2(size)) // 2)
    return outer, size // outer


def _unit_roots(rows: torch.Tensor, cols: torch.Tensor, size: int) -> torch.Tensor:
    """`exp(-2 pi i * rows * cols / size)` as `[2, len(rows), len(cols)]` float32 (real, imaginary planes)."""
    phase = (rows[:, None] * cols[None, :]) % size  # exact integer reduction before the float angle
    angle = phase.to(torch.float64) * (-2.0 * math.pi / size)
    return torch.stack([torch.cos(angle), torch.sin(angle)]).to(torch.float32)


@lru_cache(maxsize=None)
def dft_tables(outer: int, inner: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(F_outer [2, outer, outer], F_inner [2, inner, inner], twiddle [2, outer, inner])`, float32 on `device`."""
    size = outer * inner
    outer_index = torch.arange(outer)
    inner_index = torch.arange(inner)
    tables = (
        _unit_roots(outer_index, outer_index, outer),
        _unit_roots(inner_index, inner_index, inner),
        _unit_roots(outer_index, inner_index, size),
    )
    return tuple(table.to(device) for table in tables)


@lru_cache(maxsize=None)
def radix_tables(radix: int, outer: int, inner: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """`(F_radix [2, radix, radix], twiddle [2, radix, stored])` float32 on `device` for the radix step.

    `twiddle[r, k1 * inner + k2] = exp(-2 pi i * r * (k1 + outer * k2) / N)` over the stored rows `k1 <= outer / 2`.
    """
    size = radix * outer * inner
    subsequence = torch.arange(radix)
    stored_rows = torch.arange(outer // 2 + 1)
    monarch_frequency = (stored_rows[:, None] + outer * torch.arange(inner)[None, :]).reshape(-1)
    tables = (_unit_roots(subsequence, subsequence, radix), _unit_roots(subsequence, monarch_frequency, size))
    return tuple(table.to(device) for table in tables)


def monarch_spectrum(spectrum: torch.Tensor, seq_len: int, limits: PlanLimits | None = None) -> torch.Tensor:
    """The filter spectrum in the layout of the fused kernels.

    Args:
        spectrum: `[H, seq_len + 1]` complex, from `long_conv_spectrum(kernel, seq_len)` (FFT size `2 * seq_len`,
            scaled by `1 / (2 * seq_len)`).
        seq_len: the sequence length `L`.
        limits: the plan limits (default: `current_plan_limits()`).

    Returns:
        `[H, 2, plan.spectrum_size]` float32: the real and imaginary planes of the length-`N` spectrum `K`
        (`N = fft_size_for(seq_len)`), scaled so that `y = IDFT_unnormalised(DFT(s) * K)[:L]` is the convolution,
        each plane in Monarch order: `[k1 * inner + k2]` holds frequency `k1 + outer * k2`, and with a radix step
        `[(j * stored_rows + k1) * inner + k2]` holds frequency `k1 + outer * k2 + M * j` for the stored rows
        `k1 < stored_rows`. Differentiable in `spectrum`.
    """
    plan = fft_plan(seq_len, limits)
    if plan is None:
        raise ValueError(f"seq_len={seq_len} needs an FFT larger than {MAX_RADIX_FFT_SIZE}.")
    channels = spectrum.shape[0]
    circle = 2 * seq_len
    # time-domain kernel / (2L): lags 0..L-1 first, lag +-L at index L, lags -(L-1)..-1 last
    kernel = torch.fft.irfft(spectrum.to(torch.complex64), n=circle)
    padding = kernel.new_zeros(channels, plan.fft_size - circle + 1)
    padded = torch.cat([kernel[:, :seq_len], padding, kernel[:, seq_len + 1 :]], dim=1)
    # K = DFT(kernel) / N, and `kernel` already carries 1 / (2L)
    full = torch.fft.fft(padded * (circle / plan.fft_size))
    # frequency j * M + k2 * outer + k1 -> [j, k1, k2]
    ordered = full.reshape(channels, plan.radix, plan.inner, plan.outer).transpose(2, 3)[:, :, : plan.stored_rows]
    return torch.stack([ordered.real, ordered.imag], dim=1).reshape(channels, 2, plan.spectrum_size).contiguous()
