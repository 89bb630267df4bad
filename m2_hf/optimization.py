"""The optimizer parameter groups of the original M2-BERT training, for `torch.optim` and `Trainer`.

The original pretraining and GLUE fine-tuning (HazyResearch/m2, `bert/src/optim/create_param_groups.py`) give
the implicit long-convolution filters their own hyperparameters:

- **filter**: the Linears of each long convolution's *forward* filter MLP and the frequency `w` of its sine
  activations, at `config.filter_learning_rate` (1e-3) with weight decay `config.filter_weight_decay` (0.1);
- **filter_features**: each long convolution's positional features `z`, at `config.filter_features_learning_rate`
  (1e-5) without weight decay;
- **base**: everything else at the run's learning rate and weight decay, including the *reverse* filter MLPs
  (the original tags only the forward MLP's layers; `symmetric=True` puts the reverse MLPs in the filter group
  too) and each filter's skip weight `D`. Biases and LayerNorms are decayed like every other base parameter, as
  in the original.

Use it with any optimizer,

    optimizer = torch.optim.AdamW(original_parameter_groups(model, learning_rate=5e-5, weight_decay=0.01))

or with `Trainer`, without subclassing it, through the optimizer factory `OriginalRecipeAdamW`:

    trainer = Trainer(model=model, args=args, optimizer_cls_and_kwargs=original_optimizer_cls_and_kwargs(args))

The learning-rate scheduler scales every group's learning rate by the same factor (warm-up and decay apply to
the filter groups too), as in the original. Models with `sequence_mixer="monarch"` have no implicit filters;
all their parameters are in the base group.

**Weight decay conventions.** `torch.optim.AdamW` shrinks a weight by `lr * weight_decay` per step. The original
trained with composer's `DecoupledAdamW`, which shrinks it by `weight_decay * lr / initial_lr`: a fraction per step
at the peak learning rate, not multiplied by it (its pretraining used weight decay 1e-5 at learning rate 8e-4,
the filters 0.1 at 1e-3). With `decoupled_weight_decay=True` the weight decays given here and in the config are
read that way and each group's `weight_decay` is divided by its learning rate, so that `torch.optim.AdamW` (whose
update is otherwise the same) applies exactly the original's decay under any schedule. The default,
`decoupled_weight_decay=False`, passes the values to the optimizer as they are: the original's `adamw` option, and
what `TrainingArguments.weight_decay` means.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from .modeling.configuration_m2 import M2Config
from .modeling.modeling_m2 import M2ImplicitFilter

GROUP_NAMES = ("base", "filter", "filter_features")


def _m2_config(model: nn.Module) -> M2Config:
    """The `M2Config` of `model`, also when it is wrapped (DDP, FSDP, PEFT) or a submodule holds it."""
    for module in model.modules():
        config = getattr(module, "config", None)
        if isinstance(config, M2Config):
            return config
    raise ValueError(f"{type(model).__name__} holds no M2 model (no submodule has an M2Config).")


def _filter_parameters(model: nn.Module, symmetric: bool) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """The recipe's filter parameters and positional features, in module order."""
    filter_parameters, features = [], []
    for module in model.modules():
        if not isinstance(module, M2ImplicitFilter):
            continue
        mlps = [module.forward_mlp] + ([module.reverse_mlp] if symmetric and module.reverse_mlp is not None else [])
        filter_parameters += [module.frequency, *(p for mlp in mlps for p in mlp.parameters())]
        features.append(module.features)
    return filter_parameters, features


def _unique_trainable(parameters) -> Iterator[nn.Parameter]:
    seen = set()
    for parameter in parameters:
        if parameter.requires_grad and id(parameter) not in seen:
            seen.add(id(parameter))
            yield parameter


def original_parameter_groups(
    model: nn.Module,
    learning_rate: float,
    weight_decay: float = 0.0,
    *,
    symmetric: bool = False,
    decoupled_weight_decay: bool = False,
) -> list[dict]:
    """The parameter groups of the original M2-BERT training for `model` (see the module docstring).

    Args:
        model: an M2 model, possibly wrapped (DDP, FSDP2 `fully_shard`, FSDP with `use_orig_params=True`, PEFT).
            The filter hyperparameters come from its config (`filter_learning_rate`, `filter_weight_decay`,
            `filter_features_learning_rate`).
        learning_rate: learning rate of the base group.
        weight_decay: weight decay of the base group.
        symmetric: also give the reverse filter MLPs the filter group's hyperparameters (the original does not).
        decoupled_weight_decay: read the weight decays as composer `DecoupledAdamW` values and convert them for
            `torch.optim.AdamW` (divide by the group's learning rate); see the module docstring.

    Returns:
        Up to three groups, in the order `base`, `filter`, `filter_features` (a group without parameters is left
        out), each a dict with `name`, `params`, `lr` and `weight_decay`. Every trainable parameter is in exactly
        one group (tied parameters once); frozen parameters are in none.
    """
    config = _m2_config(model)
    filter_parameters, features = _filter_parameters(model, symmetric)
    special = {id(p) for p in filter_parameters + features}
    base = [p for p in model.parameters() if id(p) not in special]
    settings = {
        "base": (base, learning_rate, weight_decay),
        "filter": (filter_parameters, config.filter_learning_rate, config.filter_weight_decay),
        "filter_features": (features, config.filter_features_learning_rate, 0.0),
    }
    groups = []
    for name, (parameters, lr, decay) in settings.items():
        parameters = list(_unique_trainable(parameters))
        if not parameters:
            continue
        if decoupled_weight_decay and decay:
            if lr <= 0:
                raise ValueError(
                    f"The {name} group has weight decay {decay} but learning rate {lr}: decoupled "
                    "weight decay is relative to a positive learning rate."
                )
            decay = decay / lr
        groups.append({"name": name, "params": parameters, "lr": lr, "weight_decay": decay})
    return groups


class OriginalRecipeAdamW:
    """An optimizer factory for `Trainer(optimizer_cls_and_kwargs=(OriginalRecipeAdamW, kwargs))`.

    `Trainer` calls `OriginalRecipeAdamW()(model, **kwargs)` when it creates the optimizer (after wrapping the model
    where FSDP needs that), which returns `torch.optim.AdamW` over `original_parameter_groups(model, ...)`. The
    keyword arguments are those of `__call__`; `original_optimizer_cls_and_kwargs` fills them from
    `TrainingArguments`.
    """

    def __call__(
        self,
        model: nn.Module,
        *,
        lr: float,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        symmetric: bool = False,
        decoupled_weight_decay: bool = False,
    ) -> torch.optim.AdamW:
        groups = original_parameter_groups(
            model, lr, weight_decay, symmetric=symmetric, decoupled_weight_decay=decoupled_weight_decay
        )
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)


def original_optimizer_cls_and_kwargs(
    args, *, symmetric: bool = False, decoupled_weight_decay: bool = False
) -> tuple[type[OriginalRecipeAdamW], dict]:
    """`(OriginalRecipeAdamW, kwargs)` for `Trainer(optimizer_cls_and_kwargs=...)`.

    The base group takes `args.learning_rate` and `args.weight_decay`, AdamW takes `args.adam_beta1`,
    `args.adam_beta2` and `args.adam_epsilon` (`args` is a `TrainingArguments`; `args.optim` is not used). The
    original pretraining used betas (0.9, 0.98) and eps 1e-6: set them in `TrainingArguments` to follow it.
    """
    kwargs = {
        "lr": args.learning_rate,
        "weight_decay": args.weight_decay,
        "betas": (args.adam_beta1, args.adam_beta2),
        "eps": args.adam_epsilon,
        "symmetric": symmetric,
        "decoupled_weight_decay": decoupled_weight_decay,
    }
    return OriginalRecipeAdamW, kwargs
