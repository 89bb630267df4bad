"""What differs between the transformers releases this package supports (5.17 to the newest), detected once here.

- **The cache's name.** Up to 5.23 `generate()` passes the cache to `forward` as `past_key_values=` and reads it back
  from the outputs under that name; from 5.24 it passes `cache=` and reads `outputs["cache"]`, and transformers' own
  output classes name the field `cache`. The M2 models call it `cache` themselves, accept `past_key_values=` as an
  alias (from users and from older `generate()`), and return it under the name the installed release reads
  (`OUTPUT_CACHE_FIELD`).
- **Hub kernels.** From 5.25 `from_pretrained` swaps transformers' activation modules for kernels from the hub by
  default (`use_kernels`), which needs the `kernels` package. M2 runs its own kernels, so its models load with
  `use_kernels=False` unless asked otherwise (`with_load_defaults`), the same on every release.
"""

from __future__ import annotations

import inspect

from transformers import GenerationMixin
from transformers.modeling_outputs import CausalLMOutputWithPast

# The field of transformers' output classes that holds the cache, which generate() reads after every step.
OUTPUT_CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"

# The keyword under which generate() hands the cache to prepare_inputs_for_generation() and forward().
_GENERATION_INPUTS = inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters
GENERATE_CACHE_KWARG = "cache" if "cache" in _GENERATION_INPUTS else "past_key_values"


def with_load_defaults(kwargs: dict) -> dict:
    """`from_pretrained` keyword arguments with M2's defaults: no hub kernels unless `use_kernels` or
    `kernel_config` asks for them."""
    if "use_kernels" in kwargs or "kernel_config" in kwargs:
        return kwargs
    return {**kwargs, "use_kernels": False}


def resolve_cache_argument(cache, past_key_values):
    """The cache given to a forward as `cache=` or under its older name `past_key_values=` (not both)."""
    if past_key_values is None:
        return cache
    if cache is not None and cache is not past_key_values:
        raise ValueError("Pass the cache once, as cache= (past_key_values= is its older name), not both.")
    return past_key_values


def output_cache(outputs):
    """The cache held by a model output, under either name."""
    cache = outputs.get("cache")
    return outputs.get("past_key_values") if cache is None else cache
