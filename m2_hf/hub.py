"""Publishing M2 model folders on the Hugging Face Hub: model cards with the right metadata, and uploads.

`model.push_to_hub` uploads only what `save_pretrained` writes plus a generic model card. A folder prepared for
publishing (weights, config, tokenizer or image processor, `generation_config.json` for generative models, the
card of `write_model_card`, and optionally remote code or sentence-transformers modules) is uploaded whole with
`push_folder`, which calls `HfApi.upload_folder`: exactly the files `upload_files(folder)` lists are sent.

    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    write_model_card(folder, model, base_model="my-org/m2-bert-80m", datasets=["glue"])
    push_folder(folder, "my-org/m2-bert-80m-sst2")
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from huggingface_hub import CommitInfo, HfApi, ModelCard, ModelCardData
from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects
from transformers import PreTrainedModel

from . import __version__, registry
TAGS = ("m2", "monarch-mixer")
CODE_REPOSITORY = "https://github.com/HazyResearch/m2"
PAPER_URL = "https://arxiv.org/abs/2310.12109"

# The one template of every M2 model card: trained, fine-tuned or converted models. Builders fill the details
# table and add their own sections before and after the usage example (`build_model_card`).
CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

{{ description }}

## Model details

| | |
|---|---|
{% for label, value in details -%}
| {{ label }} | {{ value }} |
{% endfor -%}
{% for heading, body in sections_before_usage %}
## {{ heading }}

{{ body }}
{% endfor %}
## How to use
{% if usage_note %}
{{ usage_note }}
{% endif %}
```python
{{ usage }}
```
{% if remote_code %}
The folder also holds its modeling code: without m2-hf installed, pass `trust_remote_code=True` to
`from_pretrained` (or `pipeline`) instead of importing `m2_hf`.
{% endif -%}
{% for heading, body in sections_after_usage %}
## {{ heading }}

{{ body }}
{% endfor %}
## License

{{ license }}
{% if citation %}
## Citation

```bibtex
{{ citation }}
```
{% endif -%}
"""

_CLASS_USAGE = """from m2_hf import {model_class}

model = {model_class}.from_pretrained("{model_id}")"""

_PIPELINE_USAGE = """import m2_hf  # registers the M2 models with transformers
from transformers import pipeline

pipe = pipeline("{pipeline_tag}", model="{model_id}")"""

_SENTENCE_TRANSFORMERS_USAGE = """import m2_hf  # registers the M2 models with transformers
from sentence_transformers import SentenceTransformer

model = SentenceTransformer("{model_id}")
embeddings = model.encode(["A first sentence.", "A second one."])"""


def pipeline_tag_of(model: PreTrainedModel | type[PreTrainedModel]) -> str:
    """The Hub task of an M2 model or model class (`registry.M2_CLASSES`)."""
    name = model.__name__ if isinstance(model, type) else type(model).__name__
    try:
        return registry.m2_class(name).pipeline_tag
    except KeyError:
        raise ValueError(f"No Hub task is known for {name}; pass pipeline_tag explicitly.") from None


def pipeline_tasks() -> set[str]:
    """The Hub tasks whose transformers pipeline loads M2 models through the Auto classes after `import m2_hf`."""
    return {entry.pipeline_tag for entry in registry.M2_CLASSES if entry.pipeline}


def model_card_data(
    model: PreTrainedModel | type[PreTrainedModel],
    *,
    pipeline_tag: str | None = None,
    library_name: str = "transformers",
    license: str = "apache-2.0",
    base_model: str | None = None,
    datasets: Sequence[str] | None = None,
    language: str | Sequence[str] | None = None,
    tags: Sequence[str] = (),
) -> ModelCardData:
    """The card metadata of an M2 model (or model class): library, task (from the class unless given), license, tags
    (`m2`, `monarch-mixer`, then `tags`), and the base model and data sets when given."""
    all_tags = list(dict.fromkeys([*TAGS, *tags]))
    return ModelCardData(
        library_name=library_name,
        pipeline_tag=pipeline_tag or pipeline_tag_of(model),
        license=license,
        base_model=base_model,
        datasets=list(datasets) if datasets else None,
        language=language if isinstance(language, str) or language is None else list(language),
        tags=all_tags,
    )


def architecture_summary(config) -> str:
    """One sentence naming an M2 config's layers: the sequence mixer, the MLP and its projections, the norms."""
    if config.sequence_mixer == "monarch":
        nblocks, block_size = config.monarch_sequence_grid
        mixer = (
            f"bidirectional Monarch sequence mixers (order-2 Monarch matrices over {nblocks * block_size} positions, "
            f"{nblocks} x {block_size} blocks)"
        )
    else:
        direction = "bidirectional" if config.bidirectional else "causal"
        mixer = f"{direction} gated long convolutions with implicit filters (order {config.filter_order})"
        if config.residual_long_conv:
            mixer += " plus a residual long convolution"
    if config.monarch_mlp_order == 1:
        projections = f"{config.monarch_mlp_nblocks}-block block-diagonal (Monarch) projections"
    else:
        projections = f"order-2 Monarch projections ({config.monarch_mlp_nblocks} blocks per factor)"
    mlp = f"{'GLU MLP' if config.glu_mlp else 'MLP'} of width {config.intermediate_size} with {projections}"
    parts = [f"{config.num_hidden_layers} layers, hidden size {config.hidden_size}", mixer, mlp]
    if config.norm_position == "pre":
        parts.append("pre-norm residual blocks and a final LayerNorm")
    elif config.mixer_layernorm:
        parts.append("a LayerNorm at the start of every sequence mixer")
    return "; ".join(parts)


def model_details(model_class_name: str, config, parameters: int, images: bool = False) -> list[tuple[str, str]]:
    """The first rows of every card's details table: architecture, parameters and input (`images`: an image
    model's patches, else the maximum sequence length)."""
    rows = [("Architecture", f"{model_class_name}: {architecture_summary(config)}"), ("Parameters", f"{parameters:,}")]
    if images:
        rows.append(("Input", f"{config.image_size}x{config.image_size} images, {config.patch_size}-pixel patches"))
    else:
        rows.append(("Maximum sequence length", f"{config.max_sequence_length:,} tokens"))
    return rows


PROVENANCE_ROWS = (
    ("Paper", f"[Monarch Mixer: A Simple Sub-Quadratic GEMM-Based Architecture]({PAPER_URL})"),
    ("Original code", f"[HazyResearch/m2]({CODE_REPOSITORY})"),
)


def build_model_card(
    data: ModelCardData,
    *,
    title: str,
    description: str,
    details: list[tuple[str, str]],
    usage: str,
    license_text: str,
    usage_note: str | None = None,
    sections_before_usage: Sequence[tuple[str, str]] = (),
    sections_after_usage: Sequence[tuple[str, str]] = (),
    remote_code: bool = False,
    citation: str | None = None,
) -> ModelCard:
    """Render `CARD_TEMPLATE`: the metadata `data`, a title and description, the details table, optional
    `(heading, markdown)` sections around the usage example, the license and an optional BibTeX citation."""
    return ModelCard.from_template(
        data,
        template_str=CARD_TEMPLATE,
        title=title,
        description=description,
        details=details,
        sections_before_usage=list(sections_before_usage),
        usage_note=usage_note,
        usage=usage,
        remote_code=remote_code,
        sections_after_usage=list(sections_after_usage),
        license=license_text,
        citation=citation,
    )


def _details(model: PreTrainedModel, pipeline_tag: str, base_model: str | None, datasets) -> list[tuple[str, str]]:
    config = model.config
    images = model.main_input_name == "pixel_values"
    rows = model_details(type(model).__name__, config, model.num_parameters(), images=images)
    rows.insert(1, ("Task", f"`{pipeline_tag}`"))
    if getattr(config, "id2label", None) and pipeline_tag.endswith("classification"):
        rows.append(("Labels", ", ".join(str(label) for _, label in sorted(config.id2label.items()))))
    if base_model is not None:
        rows.append(("Fine-tuned from", f"[{base_model}](https://huggingface.co/{base_model})"))
    if datasets:
        rows.append(("Training data", ", ".join(datasets)))
    return [*rows, ("Library", f"m2-hf {__version__}"), *PROVENANCE_ROWS]


def _usage(model: PreTrainedModel, pipeline_tag: str, library_name: str, model_id: str) -> str:
    if library_name == "sentence-transformers":
        return _SENTENCE_TRANSFORMERS_USAGE.format(model_id=model_id)
    if pipeline_tag in pipeline_tasks():
        return _PIPELINE_USAGE.format(pipeline_tag=pipeline_tag, model_id=model_id)
    return _CLASS_USAGE.format(model_class=type(model).__name__, model_id=model_id)


def model_card(
    model: PreTrainedModel,
    model_id: str,
    *,
    description: str | None = None,
    remote_code: bool = False,
    **metadata,
) -> ModelCard:
    """The model card of an M2 model trained or fine-tuned with this package.

    Args:
        model: the model (its class gives the task, its config the details).
        model_id: the repository id or folder name used in the title and the usage example.
        description: a paragraph saying what the model is for; a generic one by default.
        remote_code: whether the folder holds exported modeling code (`m2_hf.remote_code`).
        **metadata: the keyword arguments of `model_card_data` (license, base_model, datasets, language, tags,
            pipeline_tag, library_name).
    """
    data = model_card_data(model, **metadata)
    if description is None:
        origin = f", fine-tuned from {data.base_model}," if data.base_model else ""
        description = (
            f"A Monarch Mixer (M2) model for `{data.pipeline_tag}`{origin} trained with m2-hf. M2 mixes along the "
            "sequence and the model width with sub-quadratic Monarch-structured operations instead of attention and "
            "dense MLPs; the table below names this model's layers."
        )
    license_text = (
        "Apache-2.0, like the M2 code and released checkpoints."
        if data.license == "apache-2.0"
        else f"`{data.license}` (see the card metadata)."
    )
    return build_model_card(
        data,
        title=model_id.rstrip("/").split("/")[-1],
        description=description,
        details=_details(model, data.pipeline_tag, data.base_model, data.datasets),
        usage=_usage(model, data.pipeline_tag, data.library_name, model_id),
        remote_code=remote_code,
        license_text=license_text,
    )


def write_model_card(
    folder: str | os.PathLike,
    model: PreTrainedModel,
    *,
    model_id: str | None = None,
    description: str | None = None,
    **metadata,
) -> Path:
    """Write `model_card(model, ...)` into `folder/README.md` and return its path.

    `model_id` defaults to the folder's name; the card mentions remote code when the folder's `config.json` has
    an `auto_map` (see `m2_hf.remote_code.export_remote_code`). `metadata` are the keyword arguments of
    `model_card_data`.
    """
    folder = Path(folder)
    config_path = folder / "config.json"
    remote_code = config_path.is_file() and "auto_map" in json.loads(config_path.read_text("utf-8"))
    card = model_card(
        model, model_id or folder.resolve().name, description=description, remote_code=remote_code, **metadata
    )
    path = folder / "README.md"
    card.save(path)
    return path


def upload_files(
    folder: str | os.PathLike,
    allow_patterns: str | Sequence[str] | None = None,
    ignore_patterns: str | Sequence[str] | None = None,
) -> list[str]:
    """The paths (relative, `/`-separated, sorted) that `HfApi.upload_folder(folder_path=folder, ...)` uploads
    with these patterns: every file below `folder` that the patterns and huggingface_hub's default ignore
    patterns (`.git`, `.cache/huggingface`) let through."""
    folder = Path(folder)
    files = sorted(path.relative_to(folder).as_posix() for path in folder.glob("**/*") if path.is_file())
    ignored = [ignore_patterns] if isinstance(ignore_patterns, str) else list(ignore_patterns or [])
    return list(
        filter_repo_objects(files, allow_patterns=allow_patterns, ignore_patterns=ignored + DEFAULT_IGNORE_PATTERNS)
    )


def publishing_problems(folder: str | os.PathLike) -> list[str]:
    """What keeps `folder` from being a complete M2 model repository (an empty list when nothing does).

    It needs `config.json` of an M2 model, safetensors weights, a tokenizer (or, for an image model, an image
    processor), `generation_config.json` for a generative model and a `README.md` model card whose metadata name
    the library, task and license.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return [f"{folder} is not a folder"]
    problems = []
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text("utf-8")) if config_path.is_file() else {}
    if config.get("model_type") != "m2":
        problems.append("config.json of an M2 model (model_type 'm2') is missing")
    if not any((folder / name).is_file() for name in ("model.safetensors", "model.safetensors.index.json")):
        problems.append("no safetensors weights (model.safetensors or model.safetensors.index.json)")
    architectures = config.get("architectures") or []
    known = {entry.name: entry.pipeline_tag for entry in registry.M2_CLASSES}
    task = known.get(architectures[0]) if architectures else None
    processor = "preprocessor_config.json" if task and task.startswith("image-") else "tokenizer_config.json"
    if config and not (folder / processor).is_file():
        problems.append(f"no {processor} (save the tokenizer or image processor into the folder)")
    if task == "text-generation" and not (folder / "generation_config.json").is_file():
        problems.append("no generation_config.json")
    card_path = folder / "README.md"
    if not card_path.is_file():
        problems.append("no README.md model card (write one with m2_hf.hub.write_model_card)")
    else:
        data = ModelCard.load(card_path).data
        for field in ("library_name", "pipeline_tag", "license"):
            if not getattr(data, field, None):
                problems.append(f"the model card's metadata has no {field}")
    return problems


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    commit_message: str = "Upload M2 model",
) -> CommitInfo:
    """Upload the prepared model folder `folder` to the Hub repository `repo_id`, creating it if needed.

    The folder must be complete (`publishing_problems` is empty); every file `upload_files(folder)` lists is sent
    in one `HfApi.upload_folder` call.

    Raises:
        ValueError: the folder is incomplete; nothing is uploaded or created.
    """
    problems = publishing_problems(folder)
    if problems:
        raise ValueError(f"{folder} is not ready to publish:\n" + "\n".join(f"  - {problem}" for problem in problems))
    api = HfApi()
    repo_id = api.create_repo(repo_id, private=private, token=token, exist_ok=True).repo_id
    return api.upload_folder(
        folder_path=folder,
        repo_id=repo_id,
        token=token,
        revision=revision,
        create_pr=create_pr,
        commit_message=commit_message,
    )
