"""The released M2-BERT checkpoints: their original configs and what is published about them.

Every release shares one layout (12 layers, bert-base-uncased vocabulary padded to 30528, Monarch GLU MLP with 4
blocks, bidirectional gated long convolution plus the residual one, implicit filters of order 128). The variants
differ in width, trained length and whether the sequence mixer starts with a LayerNorm (only the 80M model,
trained with the legacy `hyena_training_additions` setting).
"""

from __future__ import annotations

from dataclasses import dataclass

from .original import ConversionError

RETRIEVAL_BLOG_URL = "https://hazyresearch.stanford.edu/blog/2024-01-11-m2-bert-retrieval"

# Fields shared by every released config (the yamls under `bert/yamls`); the original config class has other
# defaults for several of them, so they are spelled out.
_RELEASED_FIELDS = {
    "model_type": "bert",
    "vocab_size": 30528,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "type_vocab_size": 2,
    "pad_token_id": 0,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "layer_norm_eps": 1e-12,
    "initializer_range": 0.02,
    "monarch_mixer_sequence_mixing": True,
    "bidirectional": True,
    "residual_long_conv": True,
    "use_glu_mlp": True,
    "use_monarch_mlp": True,
    "monarch_mlp_nblocks": 4,
    "use_positional_encodings": True,
    "hyena_emb_dim": 5,
    "hyena_filter_order": 128,
    "hyena_w": 10,
    "hyena_w_mod": 1,
    "hyena_wd": 0.1,
    "hyena_lr_pos_emb": 1e-5,
    "long_conv_kernel_learning_rate": 1e-3,
    "pool_all": False,
}

PRETRAINING_C4 = (
    "Masked-language-model pretraining on C4 at sequence length 128: 286,720,000 samples (about 36.7B tokens), "
    "30% masking, batch size 4096, decoupled AdamW with learning rate 8e-4, bf16 mixed precision."
)
PRETRAINING_LONG = (
    "Masked-language-model pretraining at sequence length {length} on a mixture of C4, Wikipedia and Books3 "
    "(plus concatenated documents from them).{warm_start}"
)
RETRIEVAL_FINE_TUNING = (
    " The pretrained model was then fine-tuned for long-document retrieval (batch size 1, an orthogonal cosine "
    "loss, learning rate 5e-6), always with inputs padded to the full {length} tokens."
)


@dataclass(frozen=True)
class Preset:
    """One released checkpoint.

    Attributes:
        name: preset name used by `m2-hf convert --preset`.
        title: human-readable model name.
        weights: Hugging Face Hub id of the original weights.
        hidden_size, intermediate_size, max_length: width, MLP width and trained sequence length.
        mixer_layernorm: the original `hyena_training_additions` (LayerNorm at the start of every mixer).
        kind: `"masked-lm"` (a masked-LM checkpoint) or `"encoder"` (an encoder with pooler whose pooled output
            is the sentence embedding); see `heads.py`.
        training: how the weights were trained.
        glue_average: published GLUE average score, where one exists.
        published_parameters: published parameter count of the model, where one exists.
    """

    name: str
    title: str
    weights: str
    hidden_size: int
    intermediate_size: int
    max_length: int
    mixer_layernorm: bool
    kind: str
    training: str
    glue_average: float | None = None
    published_parameters: int | None = None

    @property
    def pad_to_max_length(self) -> bool:
        """Long-context models are only trained on inputs padded to their full length."""
        return self.max_length > 128

    def original_config(self) -> dict:
        """The original (`BertConfig`-style) config.json of this release."""
        return {
            **_RELEASED_FIELDS,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "max_position_embeddings": self.max_length,
            "long_conv_l_max": self.max_length,
            "hyena_training_additions": self.mixer_layernorm,
        }


def _base(name: str, title: str, weights: str, hidden: int, glue: float, parameters: int, layernorm: bool = False):
    return Preset(
        name=name,
        title=title,
        weights=weights,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        max_length=128,
        mixer_layernorm=layernorm,
        kind="masked-lm",
        training=PRETRAINING_C4,
        glue_average=glue,
        published_parameters=parameters,
    )


def _long_context(length: int, retrieval: bool) -> Preset:
    suffix = {2048: "2k", 8192: "8k", 32768: "32k"}[length]
    warm_start = " Warm-started from the 8k model by copying its position embeddings." if length == 32768 else ""
    training = PRETRAINING_LONG.format(length=length, warm_start=warm_start)
    if retrieval:
        training += RETRIEVAL_FINE_TUNING.format(length=length)
    return Preset(
        name=f"m2-bert-80m-{suffix}" + ("-retrieval" if retrieval else ""),
        title=f"M2-BERT-80M-{suffix}" + (" retrieval" if retrieval else ""),
        weights=f"togethercomputer/m2-bert-80M-{suffix}" + ("-retrieval" if retrieval else ""),
        hidden_size=768,
        intermediate_size=3072,
        max_length=length,
        mixer_layernorm=False,
        kind="encoder" if retrieval else "masked-lm",
        training=training,
    )


PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        _base("m2-bert-80m", "M2-BERT-base (80M)", "danfu09/m2-bert-80M", 768, 79.9, 80_285_760, layernorm=True),
        _base("m2-bert-110m", "M2-BERT-base (110M)", "danfu09/m2-bert-110M", 960, 80.9, 115_583_616),
        _base("m2-bert-260m", "M2-BERT-large (260M)", "danfu09/m2-bert-260m", 1536, 82.2, 259_133_760),
        _base("m2-bert-341m", "M2-BERT-large (341M)", "danfu09/m2-bert-341m", 1792, 82.8, 341_038_144),
        *(_long_context(length, retrieval) for retrieval in (False, True) for length in (2048, 8192, 32768)),
    )
}

# Published GLUE averages of the Transformer baselines, for comparison in the model cards.
BERT_GLUE_AVERAGES = {"BERT-base (110M)": 79.6, "BERT-large (340M)": 82.1}


def get_preset(name: str) -> Preset:
    """The preset called `name`; a `ConversionError` listing the known names otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConversionError(f"Unknown preset {name!r}; choose one of: {', '.join(PRESETS)}.") from None
