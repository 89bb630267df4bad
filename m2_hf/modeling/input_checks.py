"""Checks of the models' inputs: each bad input raises an error naming it, before any state (a cache) is touched."""

from __future__ import annotations

import torch

from .configuration_m2 import M2Config


def check_ids(name: str, ids: torch.Tensor, upper: int, error: type[Exception]) -> None:
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor, got dtype {ids.dtype}.")
    if torch.compiler.is_compiling() or ids.numel() == 0:
        return
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= upper:
        raise error(f"{name} must be in [0, {upper}), got values in [{low}, {high}].")


def check_label_shape(labels: torch.Tensor | None, shape) -> None:
    """Per-token labels must have the input's `(batch, seq_len)` shape."""
    if labels is not None and tuple(labels.shape) != tuple(shape):
        raise ValueError(f"labels must have the shape of the input, {tuple(shape)}, got {tuple(labels.shape)}.")


def check_mask(mask: torch.Tensor) -> None:
    """A mask is bool, or integers/floats that are all 0 or 1."""
    if mask.dtype == torch.bool:
        return
    if mask.is_complex():
        raise ValueError(f"attention_mask must be a bool, integer or float tensor, got dtype {mask.dtype}.")
    if torch.compiler.is_compiling():
        return
    other = mask[(mask != 0) & (mask != 1)]
    if other.numel():
        raise ValueError(
            "attention_mask must hold only 0 and 1 (1 for real tokens, 0 for padding) or be a bool tensor, got "
            f"{other.flatten()[0].item()}."
        )


def input_shape(config: M2Config, input_ids, inputs_embeds) -> tuple[int, int]:
    """`(batch, seq_len)` of the input, checked before anything else reads it."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("Pass exactly one of input_ids and inputs_embeds.")
    if input_ids is not None:
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape (batch, seq_len), got {tuple(input_ids.shape)}.")
        shape = tuple(input_ids.shape)
    else:
        if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != config.hidden_size:
            raise ValueError(
                f"inputs_embeds must have shape (batch, seq_len, {config.hidden_size}), "
                f"got {tuple(inputs_embeds.shape)}."
            )
        shape = tuple(inputs_embeds.shape[:2])
    if shape[0] == 0:
        raise ValueError("The input is an empty batch (batch size 0).")
    return shape

def validate_inputs(
    config: M2Config, input_ids, inputs_embeds, attention_mask, token_type_ids, position_ids, past_length: int = 0
) -> tuple[int, int]:
    """`(batch, seq_len)` of a text model's inputs, after checking every given input (shapes, dtypes, id ranges,
    mask values, the length against the model's maximum with `past_length` cached tokens)."""
    shape = input_shape(config, input_ids, inputs_embeds)
    if input_ids is not None:
        check_ids("input_ids", input_ids, config.vocab_size, IndexError)
    for name, tensor in (
        ("attention_mask", attention_mask),
        ("token_type_ids", token_type_ids),
        ("position_ids", position_ids),
    ):
        if tensor is not None and tuple(tensor.shape) != shape:
            raise ValueError(f"{name} must have the shape of the input, {shape}, got {tuple(tensor.shape)}.")
    if attention_mask is not None:
        check_mask(attention_mask)
    if token_type_ids is not None:
        if config.type_vocab_size == 0:
            raise ValueError("token_type_ids were given, but this model has no token types (type_vocab_size=0).")
        check_ids("token_type_ids", token_type_ids, config.type_vocab_size, IndexError)
    if position_ids is not None and config.use_position_embeddings:
        check_ids("position_ids", position_ids, config.max_position_embeddings, IndexError)
    seq_len, limit = shape[1], config.max_sequence_length
    if seq_len == 0:
        raise ValueError("The input sequence is empty (seq_len = 0).")
    if past_length + seq_len > limit:
        cached = f"{past_length} cached plus {seq_len} new tokens" if past_length else f"Input length {seq_len}"
        raise ValueError(
            f"{cached} exceeds this model's maximum sequence length {limit} "
            "(max_position_embeddings / long_conv_max_length); truncate the input, e.g. with the tokenizer's "
            f"truncation=True, max_length={limit}."
        )
    return shape
