"""Exact causal long convolution of a sequence that arrives one column at a time, in amortised O(log^2 t) per column.

`y[j] = sum_{s <= j} k[j - s] x[s]` over a fixed filter `k` (M2's implicit filters do not depend on the data). A
direct decoding step reads the whole history, `O(t)` per column. Here (relaxed convolution, as in Flash Inference,
Oncescu et al., ICLR 2025):

- **The known prefix at once.** When the online part starts at position `P`, the contribution of `x[0 .. P-1]` to
  every later output `y[P .. N-1]` is one FFT convolution, kept in a `pending` buffer; no later step reads the
  prefix again.
- **Generated columns in blocks.** When `x[i]` arrives (`r = i - P + 1`), `y[i] = pending[i] + k[0] x[i]` is complete.
  With `U` the largest power of two dividing `r`, the block `x[i-U+1 .. i]` is then added to the outputs
  `y[i+1 .. i+U]`, which needs the taps `k[1 .. 2U-1]`: directly for small blocks, by an FFT of size `4U` (the linear
  convolution of lengths `U` and `2U`) for large ones. Every pair `(s, j)` with `P <= s < j` is added exactly once,
  and before step `j`; the total work over `n` columns is `sum_U (n / U) O(U log U) = O(n log^2 n)`.

Rows are independent and share positions, so a batch (with left padding stored as zero columns) runs as one.
"""

from __future__ import annotations

import torch

# Blocks up to this size are added by a dot product with a Toeplitz slice of the taps, larger ones by FFT.
DIRECT_BLOCK_MAX = 32


def _fft_convolution(signal: torch.Tensor, taps: torch.Tensor, size: int) -> torch.Tensor:
    """The linear convolution of `signal` `[B, H, n]` with `taps` `[H, m]`, `n + m - 1 <= size` (zero padded)."""
    product = torch.fft.rfft(signal, n=size) * torch.fft.rfft(taps, n=size)
    return torch.fft.irfft(product, n=size)


class OnlineLongConv:
    """The causal convolution of one filter over a growing history, from position `start` on.

    `taps` `[H, N]`: `k[0 .. N-1]` over the whole grid (outputs past `N - 1` are never needed); `prefix` `[B, H, P]`:
    the inputs before `start = P`, already known.
    """

    def __init__(self, taps: torch.Tensor, prefix: torch.Tensor):
        self.taps = taps
        self.grid = taps.shape[-1]
        self.start = prefix.shape[-1]
        batch, channels, _ = prefix.shape
        # pending[..., j - start]: the contributions to y[j] gathered so far.
        if self.start == 0:
            self.pending = prefix.new_zeros(batch, channels, self.grid)
        else:
            size = 1 << (self.start + self.grid - 1).bit_length()
            self.pending = _fft_convolution(prefix, taps, size)[..., self.start : self.grid].contiguous()
        self._blocks: dict[int, torch.Tensor] = {}  # block size -> Toeplitz slice [H, U, U] or taps spectrum

    def step(self, history: torch.Tensor) -> torch.Tensor:
        """`y[i]` `[B, H]` for the newest column of `history` `[B, H, i + 1]` (`i >= start`), the columns between
        `start` and `i - 1` having been stepped already."""
        position = history.shape[-1] - 1
        offset = position - self.start
        column = history[..., position]
        output = self.pending[..., offset] + self.taps[:, 0] * column
        rank = offset + 1
        block = rank & -rank  # the largest power of two dividing the rank
        reach = min(block, self.grid - 1 - position)  # outputs beyond the grid are never read
        if reach > 0:
            contribution = self._block_contribution(history[..., position - block + 1 : position + 1], block)
            self.pending[..., offset + 1 : offset + 1 + reach] += contribution[..., :reach]
        return output

    def _block_contribution(self, block_inputs: torch.Tensor, block: int) -> torch.Tensor:
        """`sum_a x[i-U+1+a] k[U + m - a]` for `m < U`: the block's share of `y[i+1 .. i+U]`, `[B, H, U]`."""
        prepared = self._blocks.get(block)
        if block <= DIRECT_BLOCK_MAX:
            if prepared is None:
                lags = block + torch.arange(block)[:, None] - torch.arange(block)[None, :]  # [U (m), U (a)], 1..2U-1
                prepared = self.taps[:, lags.clamp(max=self.grid - 1).to(self.taps.device)]
                prepared = torch.where(lags.to(self.taps.device) < self.grid, prepared, 0)
                self._blocks[block] = prepared
            return torch.einsum("hma,bha->bhm", prepared, block_inputs)
        size = 4 * block
        if prepared is None:
            prepared = torch.fft.rfft(self.taps[:, : 2 * block], n=size)
            self._blocks[block] = prepared
        full = torch.fft.irfft(torch.fft.rfft(block_inputs, n=size) * prepared, n=size)
        return full[..., block : 2 * block]

    def map_batch(self, select) -> None:
        """Apply `select` (a function of a tensor with the batch first) to the per-row state."""
        self.pending = select(self.pending)
