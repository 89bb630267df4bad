"""LoRA adapters on every M2 projection with `peft`, the Monarch layers included.

peft's own LoRA layers cover `nn.Linear` only, so `target_modules="all-linear"` adapts the mixer's dense
projections, the pooler and the implicit filters' small MLPs, and silently skips the block-diagonal and Monarch
projections of the MLP, which hold most of an M2 model's weights. This module registers a LoRA layer for them:

    from m2_hf.peft import get_m2_peft_model

    model = get_m2_peft_model(model, r=8, lora_alpha=16)          # a peft.PeftModel
    model.save_pretrained("adapter")                              # adapter_config.json + adapter weights
    model = load_m2_adapter(base_model, "adapter")                 # reload (peft.PeftModel.from_pretrained)

`lora_config(...)` returns the `peft.LoraConfig` itself, for `peft.get_peft_model` or `Trainer`.

**The adapter keeps the block structure.** A block-diagonal weight `W = blockdiag(W_0, ..., W_{n-1})` gets one
low-rank update per block, `W_b + (alpha / r) B_b A_b` with `A_b` `[r, in/n]` and `B_b` `[out/n, r]`. That is
the same number of adapter parameters as a dense LoRA of rank `r`, `r * (in + out)`, while the update can reach
rank `n * r`; above all, the adapted matrix is still block-diagonal, so merging writes it into the block weight
exactly and the merged model is an ordinary M2 model (a dense low-rank update of the whole matrix could not be
merged without changing the layer type). An order-2 Monarch projection `M = P L P^T R` (`MonarchLinear`, in the
MLP with `monarch_mlp_order=2` and along the sequence in the Monarch mixer) adapts its block-diagonal factor `R`
the same way: `P L P^T (R + (alpha / r) B A)` is again a Monarch matrix with the same factors, and the update is
linear in the adapter, so LoRA dropout, several adapters and merging behave as for peft's dense LoRA. `L` (the
small factor of the MLP projections, `out * nblocks` weights) stays frozen.

The default targets are every projection of every layer: the mixer's `in_proj` and `out_proj` (dense, peft's
LoRA), the MLP's `in_proj` and `out_proj` (block-diagonal or Monarch) and the Monarch mixer's `input_monarch` and
`output_monarch`. Not targeted: the implicit-filter MLPs, the embeddings and the heads (for classification pass
`task_type="SEQ_CLS"` / `"TOKEN_CLS"`, which trains the `classifier` in full).
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Any

import torch
from torch import nn

from .modeling.projections import BlockDiagonalLinear, MonarchLinear
from .ops import monarch_matmul

try:
    import peft
    from peft.tuners.lora import LoraLayer
    from peft.tuners.tuners_utils import check_adapters_to_merge
except ImportError as error:  # pragma: no cover - only without the extra
    raise ImportError("m2_hf.peft needs peft: pip install 'm2-hf[peft]'.") from error

# Every projection of an M2 layer, whatever the head's prefix (`model.layers.N...` or `layers.N...`).
DEFAULT_TARGET_MODULES = r".*layers\.\d+\.(mixer|mlp)\.(in_proj|out_proj|input_monarch|output_monarch)"


class BlockDiagonalLoraLayer(nn.Module, LoraLayer):
    """LoRA for the block-diagonal factor of `BlockDiagonalLinear` (its `weight`) or `MonarchLinear` (its `right`
    factor `R`): per block `b`, `delta_b = scaling * B_b A_b`.

    Adapter parameters (names peft saves, loads and trains): `lora_block_A[adapter]` `[nblocks, r, in_block]`,
    initialised like peft's `lora_A` (Kaiming-uniform, or Gaussian with `init_lora_weights="gaussian"`), and
    `lora_block_B[adapter]` `[nblocks, out_block, r]`, zero, so a new adapter leaves the outputs unchanged
    (`init_lora_weights=False` draws it at random, for tests).
    """

    adapter_layer_names = LoraLayer.adapter_layer_names + ("lora_block_A", "lora_block_B")

    def __init__(self, base_layer: nn.Module, adapter_name: str, config, r: int = 0, lora_alpha: int = 1, **kwargs):
        super().__init__()
        LoraLayer.__init__(self, base_layer, **kwargs)
        base = self.get_base_layer()
        if not isinstance(base, (BlockDiagonalLinear, MonarchLinear)):
            raise TypeError(f"BlockDiagonalLoraLayer adapts BlockDiagonalLinear or MonarchLinear, not {type(base)}.")
        self.lora_block_A = nn.ParameterDict({})
        self.lora_block_B = nn.ParameterDict({})
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, r, lora_alpha=lora_alpha, config=config, **kwargs)

    def _get_in_out_features(self, module: nn.Module) -> tuple[int, int]:
        return module.in_features, module.out_features

    @property
    def block_factor(self) -> nn.Parameter:
        """The adapted `[nblocks, out_block, in_block]` factor: the block weight, or the Monarch matrix's `R`."""
        base = self.get_base_layer()
        return base.weight if isinstance(base, BlockDiagonalLinear) else base.right

    def update_layer(self, adapter_name: str, r: int, lora_alpha: int, config, **kwargs) -> None:
        if r <= 0:
            raise ValueError(f"`r` should be a positive integer value but the value passed is {r}")
        unsupported = [
            name
            for name, requested in (
                ("use_dora", config.use_dora),
                ("lora_bias", config.lora_bias),
                ("fan_in_fan_out", config.fan_in_fan_out),
            )
            if requested
        ]
        init = config.init_lora_weights
        if init not in (True, False, "gaussian"):
            unsupported.append(f"init_lora_weights={init!r}")
        if unsupported:
            raise ValueError(
                f"The block-diagonal LoRA of M2's Monarch projections does not support {', '.join(unsupported)}."
            )
        factor = self.block_factor
        nblocks, out_block, in_block = factor.shape
        self.r[adapter_name] = r
        self.lora_alpha[adapter_name] = lora_alpha
        self.scaling[adapter_name] = lora_alpha / math.sqrt(r) if config.use_rslora else lora_alpha / r
        self.use_rslora[adapter_name] = config.use_rslora
        self.use_dora[adapter_name] = False
        self.lora_bias[adapter_name] = False
        dropout = nn.Dropout(p=config.lora_dropout) if config.lora_dropout > 0 else nn.Identity()
        self.lora_dropout.update(nn.ModuleDict({adapter_name: dropout}))
        options = dict(device=factor.device, dtype=factor.dtype)
        self.lora_block_A[adapter_name] = nn.Parameter(torch.empty(nblocks, r, in_block, **options))
        self.lora_block_B[adapter_name] = nn.Parameter(torch.empty(nblocks, out_block, r, **options))
        self.reset_block_lora_parameters(adapter_name, init)
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def reset_block_lora_parameters(self, adapter_name: str, init) -> None:
        a, b = self.lora_block_A[adapter_name], self.lora_block_B[adapter_name]
        with torch.no_grad():
            for block in range(a.shape[0]):
                if init == "gaussian":
                    nn.init.normal_(a[block], std=1 / self.r[adapter_name])
                else:  # peft's default for lora_A: nn.Linear's Kaiming-uniform
                    nn.init.kaiming_uniform_(a[block], a=math.sqrt(5))
            if init is False:
                nn.init.normal_(b, std=1 / math.sqrt(self.r[adapter_name]))
            else:
                nn.init.zeros_(b)

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """`scaling * B_b A_b` for every block: `[nblocks, out_block, in_block]`, in the factor's dtype."""
        a, b = self.lora_block_A[adapter], self.lora_block_B[adapter]
        compute_dtype = torch.promote_types(a.dtype, torch.float32)
        delta = torch.bmm(b.to(compute_dtype), a.to(compute_dtype)) * self.scaling[adapter]
        return delta.to(self.block_factor.dtype)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Add the active (or the named) adapters' updates into the block factor."""
        for adapter in check_adapters_to_merge(self, adapter_names):
            if adapter not in self.lora_block_A:
                continue
            factor = self.block_factor
            merged = factor.data + self.get_delta_weight(adapter)
            if safe_merge and not torch.isfinite(merged).all():
                raise ValueError(f"NaNs detected in the merged weights. The adapter {adapter} seems to be broken")
            factor.data = merged
            self.merged_adapters.append(adapter)

    def unmerge(self) -> None:
        """Subtract the merged adapters' updates from the block factor again."""
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.")
            return
        while self.merged_adapters:
            adapter = self.merged_adapters.pop()
            if adapter in self.lora_block_A:
                self.block_factor.data -= self.get_delta_weight(adapter)

    def _adapter_output(self, x: torch.Tensor, adapter: str) -> torch.Tensor:
        """The adapter's contribution `delta(dropout(x))` to the layer output."""
        a, b = self.lora_block_A[adapter], self.lora_block_B[adapter]
        x = self._cast_input_dtype(self.lora_dropout[adapter](x), a.dtype)
        base = self.get_base_layer()
        if isinstance(base, MonarchLinear):
            delta = torch.bmm(b, a) * self.scaling[adapter]
            return monarch_matmul(x, delta, base.left, backend=base.backend)
        # Block-diagonal: x_b -> A_b x_b (rank r) -> B_b (...), with no [out, in] matrix formed.
        blocks = x.reshape(*x.shape[:-1], a.shape[0], a.shape[2])
        low_rank = torch.einsum("...bi,bri->...br", blocks, a)
        return torch.einsum("...br,bor->...bo", low_rank, b).reshape(*x.shape[:-1], -1) * self.scaling[adapter]

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if kwargs.pop("adapter_names", None) is not None:
            raise ValueError("The block-diagonal LoRA does not support mixed adapter batches (adapter_names=).")
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        if self.merged:
            return result
        for adapter in self.active_adapters:
            if adapter in self.lora_block_A:
                result = result + self._adapter_output(x, adapter).to(result.dtype)
        return result

    def __repr__(self) -> str:
        return "lora." + super().__repr__()


def register_m2_modules(config) -> Any:
    """Register the block-diagonal LoRA layer for `BlockDiagonalLinear` and `MonarchLinear` in a `LoraConfig`
    (peft's custom-module API); return the config."""
    config._register_custom_module({BlockDiagonalLinear: BlockDiagonalLoraLayer, MonarchLinear: BlockDiagonalLoraLayer})
    return config


def lora_config(r: int = 8, lora_alpha: int | None = None, target_modules=DEFAULT_TARGET_MODULES, **kwargs):
    """A `peft.LoraConfig` adapting every M2 projection, with the Monarch layers registered.

    Args:
        r: the rank per block (for block-diagonal and Monarch projections) or of the dense update.
        lora_alpha: the scale numerator, `scaling = lora_alpha / r`; `2 * r` when unset.
        target_modules: peft's `target_modules` (default: every mixer and MLP projection of every layer).
        **kwargs: any other `LoraConfig` field (`lora_dropout`, `task_type`, `modules_to_save`, ...).
    """
    config = peft.LoraConfig(
        r=r, lora_alpha=2 * r if lora_alpha is None else lora_alpha, target_modules=target_modules, **kwargs
    )
    return register_m2_modules(config)


def get_m2_peft_model(model: nn.Module, r: int = 8, lora_alpha: int | None = None, **kwargs):
    """`peft.get_peft_model(model, lora_config(r, lora_alpha, **kwargs))`: only the adapters (and
    `modules_to_save`) stay trainable."""
    return peft.get_peft_model(model, lora_config(r, lora_alpha, **kwargs))


def load_m2_adapter(model: nn.Module, adapter_path: str | os.PathLike, is_trainable: bool = False, **kwargs):
    """Load an adapter saved by `save_pretrained` onto `model` (`peft.PeftModel.from_pretrained` with the Monarch
    layers registered, which a plain reload cannot know from `adapter_config.json`)."""
    config = register_m2_modules(peft.LoraConfig.from_pretrained(str(adapter_path)))
    return peft.PeftModel.from_pretrained(model, str(adapter_path), config=config, is_trainable=is_trainable, **kwargs)
