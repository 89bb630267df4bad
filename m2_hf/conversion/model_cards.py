"""Model cards for converted M2-BERT checkpoints.

The package's one card template (`m2_hf.hub.CARD_TEMPLATE`, built by `build_model_card`) renders both the card of
every released checkpoint (from the preset table) and the card written into each converted folder; conversion adds
its own sections (training, results, how to convert, padding, intended use, citation). Regenerate the committed
cards with

    m2-hf model-cards model_cards/
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from ..hub import (
    CARD_TEMPLATE,
    CODE_REPOSITORY,
    PAPER_URL,
    PROVENANCE_ROWS,
    build_model_card,
    model_card_data,
    model_details,
)
from ..modeling.configuration_m2 import M2Config
from .heads import MODEL_KINDS, ModelKind, parameter_count
from .original import config_from_original
from .presets import BERT_GLUE_AVERAGES, PRESETS, RETRIEVAL_BLOG_URL, Preset

TEMPLATE_FILE = "TEMPLATE.md"

CONVERSION_NOTE = (
    "These weights were converted from the original checkpoint for the m2-hf package, which implements M2 models "
    "for Hugging Face Transformers. In float32 the converted model gives the original model's outputs."
)
USAGE_NOTE = (
    "`import m2_hf` registers the M2 classes with the transformers Auto classes (no `trust_remote_code` needed)."
)
NO_TOKENIZER_NOTE = (
    "No tokenizer was saved with these weights: save the tokenizer the model was trained with (bert-base-uncased "
    "for the released checkpoints) into the folder, or load it separately."
)
CONVERT_SECTION = """Download the original checkpoint and, with m2-hf installed, run

```bash
m2-hf convert {source} {model_path} {options}
```

The converter checks every tensor name and shape against the architecture and fails with a list of the
mismatches instead of writing a partial folder."""
LICENSE_TEXT = (
    f"The original M2 code and checkpoints ([HazyResearch/m2]({CODE_REPOSITORY})) are released under the "
    "Apache-2.0 license; so are these converted weights."
)
M2_CITATION = """@inproceedings{fu2023monarch,
  title     = {Monarch Mixer: A Simple Sub-Quadratic GEMM-Based Architecture},
  author    = {Fu, Daniel Y. and Arora, Simran and Grogan, Jessica and Johnson, Isys and Eyuboglu, Sabri and
               Thomas, Armin W. and Spector, Benjamin and Poli, Michael and Rudra, Atri and R{\\'e}, Christopher},
  booktitle = {Advances in Neural Information Processing Systems},
  year      = {2023}
}"""
LOCO_CITATION = """@article{saadfalcon2024loco,
  title   = {Benchmarking and Building Long-Context Retrieval Models with LoCo and M2-BERT},
  author  = {Saad-Falcon, Jon and Fu, Daniel Y. and Arora, Simran and Guha, Neel and R{\\'e}, Christopher},
  journal = {arXiv preprint arXiv:2402.07440},
  year    = {2024}
}"""

_MASKED_LM_USAGE = """import torch
import m2_hf  # registers the M2 models with transformers
from transformers import AutoModelForMaskedLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{path}")
model = AutoModelForMaskedLM.from_pretrained("{path}").eval()
inputs = tokenizer("Paris is the [MASK] of France.", return_tensors="pt")
with torch.no_grad():
    logits = model(**inputs).logits
masked = inputs["input_ids"][0] == tokenizer.mask_token_id
print(tokenizer.decode(logits[0, masked].argmax(-1)))"""

_ENCODER_USAGE = """import torch
import m2_hf  # registers the M2 models with transformers
from transformers import AutoModel, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{path}")
model = AutoModel.from_pretrained("{path}").eval()
texts = ["How do implicit long convolutions work?", "Monarch Mixer replaces attention with long convolutions."]
inputs = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
with torch.no_grad():
    embeddings = model(**inputs).pooler_output  # the sentence embedding (not normalised)
print(torch.nn.functional.cosine_similarity(embeddings[0], embeddings[1], dim=0))

# The folder is also a sentence-transformers model (modules.json, 1_Pooling, 2_Dense) whose embedding is the
# same pooler output.
from sentence_transformers import SentenceTransformer

print(SentenceTransformer("{path}").encode(texts))"""

_CLASSIFIER_USAGE = """import torch
import m2_hf  # registers the M2 models with transformers
from transformers import AutoModelForSequenceClassification, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{path}")
model = AutoModelForSequenceClassification.from_pretrained("{path}").eval()
inputs = tokenizer("A sentence to classify.", return_tensors="pt")
with torch.no_grad():
    print(model(**inputs).logits.softmax(-1))"""

_USAGE = {"masked-lm": _MASKED_LM_USAGE, "encoder": _ENCODER_USAGE, "sequence-classification": _CLASSIFIER_USAGE}

_ORIGINAL_PADDING = (
    "The converted model keeps the original semantics (`mask_padding=False` in its config): the sequence mixer "
    "ignores `attention_mask`, so [PAD] tokens are ordinary tokens that change the outputs at every other "
    "position. A text padded to a batch's longest member therefore gets other outputs than the same text alone. "
    "Setting `mask_padding=True` makes padding invisible, but then the outputs no longer match the original's."
)
_FULL_LENGTH_PADDING = (
    "This model was trained on inputs padded with [PAD] to the full {length} tokens. Its config therefore sets "
    "`pad_to_max_length=True`: the model right-pads every input to {length} tokens itself and cuts the outputs "
    "back to the input length, so `model(**tokenizer(texts, padding=True))` gives the outputs the original gives "
    'with `padding="max_length"`. Without it, the embeddings of unpadded inputs differ markedly from the trained '
    "ones (HazyResearch/m2 issues 19 and 43)."
)

_GENERIC_INTENDED_USE = (
    "Use it as its original checkpoint was meant to be used; check which data and task it was trained on, and its "
    "quality on your own data, before relying on it."
)
_INTENDED_USE = {
    "masked-lm": (
        "A pretrained English encoder to fine-tune for classification, token classification or retrieval, or to "
        "use as a masked language model. It was pretrained on web text (the long-context models also on Wikipedia "
        "and books) and inherits its biases; it is not tuned to follow instructions or for safety."
    ),
    "encoder": (
        "Embeddings of English queries and (long) documents for retrieval: compare the pooled outputs with cosine "
        "similarity. It was fine-tuned for the LoCo long-context retrieval tasks and trained on web text and books, "
        "whose biases it inherits; check its quality on your own data before relying on it."
    ),
}


def _details(config: M2Config, kind: ModelKind, parameters: int, preset: Preset | None, source_name: str | None):
    rows = model_details(kind.class_name, config, parameters)
    rows.insert(1, ("Head", kind.description))
    rows.append(
        (
            "Vocabulary",
            f"{config.vocab_size:,} token ids (bert-base-uncased WordPiece, padded to a multiple of 8)"
            if config.vocab_size == 30528
            else f"{config.vocab_size:,} token ids",
        )
    )
    if preset is not None:
        rows.append(("Original weights", f"[{preset.weights}](https://huggingface.co/{preset.weights})"))
    if source_name is not None:
        rows.append(("Converted from", f"`{source_name}`"))
    rows += [*PROVENANCE_ROWS, ("License", "Apache-2.0")]
    if config.max_sequence_length > 128:
        rows.append(
            ("Long-context models", f"[Long-Context Retrieval Models with Monarch Mixer]({RETRIEVAL_BLOG_URL})")
        )
    return rows


def _summary(kind: ModelKind, preset: Preset | None) -> str:
    if preset is None:
        return (
            f"An M2-BERT model ({kind.model_class.__name__}) converted from an original "
            f"[Monarch Mixer]({PAPER_URL}) checkpoint."
        )
    what = (
        "encoder fine-tuned to embed queries and long documents for retrieval"
        if kind.name == "encoder"
        else "masked-language model pretrained like BERT"
    )
    return (
        f"{preset.title}: a Monarch Mixer (M2) BERT {what}, with a context of {preset.max_length:,} tokens. "
        "M2 replaces attention with gated long convolutions (sub-quadratic in the sequence length) and the dense "
        "MLP with block-diagonal Monarch matrices (sub-quadratic in the model width)."
    )


def _card_data(config: M2Config, kind: ModelKind) -> ModelCardData:
    tags = ["m2-bert"]
    if config.max_sequence_length > 128:
        tags.append("long-context")
    if kind.name == "encoder":
        tags += ["retrieval", "sentence-embeddings"]
    return model_card_data(kind.model_class, language="en", tags=tags)


def conversion_card(
    config: M2Config,
    kind: ModelKind,
    parameters: int,
    model_path: str,
    preset: Preset | None = None,
    source_name: str | None = None,
    has_tokenizer: bool = True,
) -> ModelCard:
    """The model card of a converted model.

    Args:
        config: the converted config.
        kind: the converted model's kind (see `heads.MODEL_KINDS`).
        parameters: its parameter count.
        model_path: the folder name used in the usage examples.
        preset: the released checkpoint it was converted from, if known.
        source_name: the file it was converted from, if any.
        has_tokenizer: whether the folder holds tokenizer files.
    """
    if preset is not None:
        source, options = f"<{preset.weights.split('/')[-1]} checkpoint>", f"--preset {preset.name}"
    else:
        source, options = "<original checkpoint>", "--config <original config.json>"
    before_usage = []
    if preset is not None and preset.training:
        before_usage.append(("Training", preset.training))
    if preset is not None and preset.glue_average is not None:
        rows = [(f"**{preset.title}**", f"**{preset.glue_average}**"), *BERT_GLUE_AVERAGES.items()]
        table = "\n".join(f"| {name} | {score} |" for name, score in rows)
        before_usage.append(
            (
                "Results",
                "GLUE average scores as published with the original code (`bert/README.md` of HazyResearch/m2):"
                f"\n\n| model | GLUE average |\n|---|---|\n{table}",
            )
        )
    convert = CONVERT_SECTION.format(source=source, model_path=model_path, options=options)
    before_usage.append(("How to convert", convert))
    padding_note = _ORIGINAL_PADDING
    if config.pad_to_max_length:
        padding_note += "\n\n" + _FULL_LENGTH_PADDING.format(length=f"{config.max_position_embeddings:,}")
    intended_use = _INTENDED_USE[kind.name] if preset is not None else _GENERIC_INTENDED_USE
    long_context = config.max_sequence_length > 128
    return build_model_card(
        _card_data(config, kind),
        title=preset.title if preset is not None else f"M2-BERT ({model_path})",
        description=f"{_summary(kind, preset)}\n\n{CONVERSION_NOTE}",
        details=_details(config, kind, parameters, preset, source_name),
        sections_before_usage=before_usage,
        usage_note=USAGE_NOTE if has_tokenizer else f"{USAGE_NOTE}\n\n{NO_TOKENIZER_NOTE}",
        usage=_USAGE[kind.name].format(path=model_path),
        sections_after_usage=[("Padding", padding_note), ("Intended use and limitations", intended_use)],
        license_text=LICENSE_TEXT,
        citation=f"{M2_CITATION}\n\n{LOCO_CITATION}" if long_context else M2_CITATION,
    )


def preset_card(preset: Preset) -> ModelCard:
    """The model card of a released checkpoint once converted with its preset."""
    config = config_from_original(preset.original_config(), pad_to_max_length=preset.pad_to_max_length)
    kind = MODEL_KINDS[preset.kind]
    return conversion_card(config, kind, parameter_count(config, kind), preset.name, preset)


def write_preset_cards(directory: str | Path) -> list[Path]:
    """Write the template and one card per released checkpoint (`<preset>.md`) into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    template = directory / TEMPLATE_FILE
    template.write_text(CARD_TEMPLATE)
    paths = [template]
    for preset in PRESETS.values():
        path = directory / f"{preset.name}.md"
        preset_card(preset).save(path)
        paths.append(path)
    return paths
