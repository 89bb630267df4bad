"""Generation cache of the causal M2 models (M2-GPT).

A causal M2 layer needs two things from the past to process a new token:

- the **short convolution** reads the last `K - 1` columns of the projected mixer input (`K = short_conv_size`);
- each **long convolution** `y[t] = sum_{m <= t} k[m] s[t - m] + D s[t]` reads every earlier column of its input,
  because the implicit filter `k` is a general kernel over the whole grid (it has no recurrent form). The cache keeps
  the history of the gated long-convolution input and, with `residual_long_conv`, of the residual one.

A decoding step costs the `O(H^2)` projections of one column plus the two convolution outputs. While the sequence
is short (at most `DIRECT_DECODE_MAX_LENGTH` tokens) each output is one dot product with the reversed filter taps,
`O(t * H)`. Beyond that the convolutions run online (`online_long_conv.py`): the history so far is pushed into a
buffer of pending future outputs by one FFT convolution, and each later token costs amortised `O(H log^2 t)`, so
the per-token time stays flat with the context length. Both give the outputs of a full forward (to float32
rounding). A chunk of several tokens is convolved over the whole history by FFT and restarts the online part.

The histories live in buffers that grow by doubling (capped at the filter grid), so appending a column is an
in-place write. Filter taps are computed once and kept.

Histories are kept in float32 (or float64 for a float64 model), the precision of the FFT path, and hold no autograd
history. Padding columns of left-padded prompts are stored as zeros, as the model zeroes them before every causal
convolution; every later output is therefore the one of the unpadded prompt.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from .configuration_m2 import M2Config
from .online_long_conv import OnlineLongConv

MIN_CAPACITY = 64
# Decoding steps within the first this many tokens read the history directly (a dot product is cheaper than the
# online convolution's FFT bookkeeping there); later steps convolve online. Measured crossover on CPU:
# benchmarks/results/generation-cpu.md.
DIRECT_DECODE_MAX_LENGTH = 256


class M2CacheLayer(CacheLayerMixin):
    """One M2 layer's cache: the short-convolution state and the long-convolution input histories.

    Its public state is `short_conv_state` `[B, 3H, K - 1]` (the last `K - 1` projected mixer inputs) and
    `long_conv_inputs`, one `[B, H, seq_length]` history per long convolution (two with `residual_long_conv`).
    It has no attention `keys`/`values`, and it is not one of transformers' linear-attention layers either: those
    keep a fixed-size convolution window and a recurrent state, while an implicit long filter has no recurrent
    form and needs the whole history. transformers' generation tests that read keys, values or fixed-size states
    therefore do not apply; `tests/modeling/test_cache_contract.py` checks the same properties through this layout.
    """

    is_compileable = False
    is_croppable = False
    supports_early_init = False

    def __init__(self, config: M2Config):
        super().__init__()
        self.max_length = config.max_sequence_length
        self.short_conv_context = config.short_conv_size - 1
        self.seq_length = 0
        self.short_conv_state: torch.Tensor | None = None  # [B, 3H, K - 1]
        self.conv_histories: list[torch.Tensor] = []  # each [B, H, capacity]
        self.reversed_taps: dict[str, torch.Tensor] = {}  # name -> [H, taps_length], reversed filter taps
        self.grid_taps: dict[str, torch.Tensor] = {}  # name -> [H, max_length], the taps over the whole grid
        self.online: dict[str, OnlineLongConv] = {}  # name -> the online convolution, once started

    def lazy_initialization(self, gated_input: torch.Tensor, residual_input: torch.Tensor | None) -> None:
        batch, hidden, _ = gated_input.shape
        self.dtype = torch.promote_types(gated_input.dtype, torch.float32)
        self.device = gated_input.device
        self.batch_size = batch
        count = 1 if residual_input is None else 2
        self.conv_histories = [
            torch.zeros(batch, hidden, 0, dtype=self.dtype, device=self.device) for _ in range(count)
        ]
        self.is_initialized = True

    @property
    def long_conv_inputs(self) -> tuple[torch.Tensor, ...]:
        """The history of each long convolution's input, `[B, H, seq_length]` (views of the buffers)."""
        return tuple(history[..., : self.seq_length] for history in self.conv_histories)

    @property
    def capacity(self) -> int:
        return self.conv_histories[0].shape[-1] if self.conv_histories else 0

    def _grow(self, needed: int) -> None:
        capacity = min(self.max_length, max(needed, 2 * self.capacity, MIN_CAPACITY))
        grown = []
        for history in self.conv_histories:
            buffer = history.new_zeros(*history.shape[:2], capacity)
            buffer[..., : self.seq_length] = history[..., : self.seq_length]
            grown.append(buffer)
        self.conv_histories = grown

    def extend_short_conv_input(
        self, projected: torch.Tensor, padding_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The short conv's input for a new chunk `projected` `[B, L, C]` (mask `[B, 1, L]` or None), and store its
        last `K - 1` masked columns.

        Returns `(projected, padding_mask)` unchanged when nothing is cached yet (the conv's zero start is the empty
        past); otherwise both with the stored `K - 1` columns (already masked, mask 1) in front, so that the last `L`
        outputs of the causal conv of the result are those of the whole sequence.
        """
        if self.short_conv_context == 0:
            return projected, padding_mask
        batch, length, channels = projected.shape
        masked = projected.transpose(1, 2)  # [B, C, L]
        if padding_mask is not None:
            masked = masked * padding_mask.to(masked.dtype)
        past = self.short_conv_state
        if past is None:
            past = projected.new_zeros(batch, channels, self.short_conv_context)
        window = torch.cat([past.to(masked.dtype), masked], dim=-1)
        self.short_conv_state = window[..., -self.short_conv_context :].detach()
        if self.seq_length == 0:
            return projected, padding_mask
        extended = torch.cat([past.to(projected.dtype).transpose(1, 2), projected], dim=1)
        if padding_mask is None:
            return extended, None
        extended_mask = torch.cat([padding_mask.new_ones(batch, 1, self.short_conv_context), padding_mask], dim=-1)
        return extended, extended_mask

    def append_conv_inputs(
        self, gated_input: torch.Tensor, residual_input: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Append the long-convolution inputs `[B, H, L]` and return their whole histories `[B, H, past + L]`
        (None for a residual input that is None)."""
        if not self.is_initialized:
            self.lazy_initialization(gated_input, residual_input)
        new_length = self.seq_length + gated_input.shape[-1]
        if new_length > self.max_length:
            raise ValueError(
                f"The cached sequence would reach {new_length} tokens, beyond this model's maximum sequence length "
                f"{self.max_length} (the implicit-filter grid, config.filter_max_length)."
            )
        if new_length > self.capacity:
            self._grow(new_length)
        inputs = [gated_input] if residual_input is None else [gated_input, residual_input]
        if gated_input.shape[-1] > 1:
            self.online.clear()  # a chunk is convolved by FFT over the whole history; steps after it restart online
        for history, new in zip(self.conv_histories, inputs):
            history[..., self.seq_length : new_length] = new.detach()
        self.seq_length = new_length
        histories = [history[..., :new_length] for history in self.conv_histories]
        return histories[0], histories[1] if len(histories) > 1 else None

    def filter_taps(self, name: str, implicit_filter: torch.nn.Module, length: int) -> torch.Tensor:
        """The taps `k[length - 1], ..., k[0]` `[H, length]` of `implicit_filter`, computed once per buffer size.

        Column `j` of a history of `length` columns meets tap `k[length - 1 - j]`, so a step output is a dot product.
        """
        taps = self.reversed_taps.get(name)
        if taps is None or taps.shape[-1] < length:
            taps_length = min(self.max_length, max(length, self.capacity))
            forward_filter, _ = implicit_filter.filters(taps_length)
            taps = forward_filter.detach().to(self.dtype).flip(-1)
            self.reversed_taps[name] = taps
        return taps[:, taps.shape[-1] - length :]

    def long_conv_step(self, name: str, implicit_filter: torch.nn.Module, history: torch.Tensor) -> torch.Tensor:
        """The long convolution with skip term, `y[t] = sum_j k[t - j] s[j] + D s[t]`, `[B, H, 1]`, for the newest
        column of `history` `[B, H, t + 1]`: a dot product while the sequence is short, online beyond."""
        total = history.shape[-1]
        skip = implicit_filter.skip.to(history.dtype) * history[..., -1]
        online = self.online.get(name)
        if online is None and total <= DIRECT_DECODE_MAX_LENGTH:
            taps = self.filter_taps(name, implicit_filter, total)
            return (torch.einsum("bht,ht->bh", history, taps) + skip)[..., None]
        if online is None:
            taps = self.grid_taps.get(name)
            if taps is None:
                taps = self.grid_taps[name] = implicit_filter.filters(self.max_length)[0].detach().to(self.dtype)
            online = self.online[name] = OnlineLongConv(taps, history[..., :-1])
        return (online.step(history) + skip)[..., None]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        raise NotImplementedError(
            "An M2 cache layer holds convolution inputs, not attention keys and values; the mixer calls "
            "extend_short_conv_input and append_conv_inputs."
        )

    def get_seq_length(self) -> int:
        return self.seq_length

    def get_max_length(self) -> int:
        return self.max_length

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.seq_length + query_length, 0

    def _map_batch(self, select) -> None:
        """Apply `select` (a function of a tensor with the batch first) to every per-row tensor."""
        if self.short_conv_state is not None:
            self.short_conv_state = select(self.short_conv_state)
        self.conv_histories = [select(history) for history in self.conv_histories]
        for online in self.online.values():
            online.map_batch(select)
        if self.conv_histories:
            self.batch_size = self.conv_histories[0].shape[0]

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._map_batch(lambda tensor: tensor.index_select(0, beam_idx.to(tensor.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._map_batch(lambda tensor: tensor.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._map_batch(lambda tensor: tensor[indices.to(tensor.device)])

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove == 0 or self.seq_length == 0:
            return
        raise ValueError(
            "An M2 cache cannot be rewound: its short-convolution state keeps only the last "
            f"{self.short_conv_context} inputs. Re-run the prefix instead."
        )

    def reset(self) -> None:
        self.seq_length = 0
        self.online.clear()
        if self.short_conv_state is not None:
            self.short_conv_state.zero_()
        for history in self.conv_histories:
            history.zero_()

    def offload(self) -> None:
        self._map_batch(lambda tensor: tensor.to("cpu", non_blocking=True))

    def prefetch(self) -> None:
        if self.is_initialized:
            self._map_batch(lambda tensor: tensor.to(self.device, non_blocking=True))


class M2Cache(Cache):
    """Cache of a causal M2 model for `generate()`: one `M2CacheLayer` per layer, plus the number of real (not
    padding) tokens seen in each row, from which the next position ids are counted.

    Created by the model's forward when `use_cache=True` and no cache is given. It cannot be cropped, so assisted
    decoding is unavailable; greedy search, sampling, beam search and `num_return_sequences` work.
    """

    def __init__(self, config: M2Config):
        if config.bidirectional:
            raise ValueError(
                "A cache needs causal sequence mixers; this config is bidirectional (set bidirectional=False)."
            )
        super().__init__(layers=[M2CacheLayer(config) for _ in range(config.num_hidden_layers)])
        self.real_token_counts: torch.Tensor | None = None  # [B]

    def check_batch_size(self, batch: int) -> None:
        """Refuse an input whose batch size differs from the sequences the cache holds."""
        if self.real_token_counts is not None and self.real_token_counts.shape[0] != batch:
            raise ValueError(
                f"The cache holds {self.real_token_counts.shape[0]} sequences, the input {batch}: continue a cache "
                "with the batch it was built for (reorder or select its rows first, e.g. cache.batch_select_indices)."
            )

    def position_offsets(self, batch: int, device: torch.device) -> torch.Tensor:
        """Real tokens seen in each row so far, `[B, 1]`."""
        if self.real_token_counts is None:
            return torch.zeros(batch, 1, dtype=torch.long, device=device)
        return self.real_token_counts[:, None]

    def record_tokens(self, attention_mask: torch.Tensor) -> None:
        """Count the real tokens of a new chunk, `attention_mask` `[B, L]` (1 = real token)."""
        new_tokens = attention_mask.long().sum(dim=1)
        self.real_token_counts = new_tokens if self.real_token_counts is None else self.real_token_counts + new_tokens

    def _map_counts(self, select) -> None:
        if self.real_token_counts is not None:
            self.real_token_counts = select(self.real_token_counts)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        super().reorder_cache(beam_idx)
        self._map_counts(lambda counts: counts.index_select(0, beam_idx.to(counts.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        self._map_counts(lambda counts: counts.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        self._map_counts(lambda counts: counts[indices.to(counts.device)])

    def reset(self) -> None:
        super().reset()
        self.real_token_counts = None
