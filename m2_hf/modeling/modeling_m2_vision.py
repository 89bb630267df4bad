"""Monarch Mixer vision models (M2-ViT): a ViT whose attention is replaced by the M2 sequence mixer.

An image is cut into non-overlapping patches, each patch is projected to `hidden_size`, an optional [CLS] token is
put in front and learned position embeddings are added. The sequence then goes through pre-norm M2 layers
(gated bidirectional long convolution, then the block-diagonal Monarch MLP) and a final LayerNorm:

    x_0 = [cls; patch_proj(p_1), ..., patch_proj(p_N)] + pos,   N = (image_size / patch_size)^2
    x_l = M2Layer(x_{l-1}),   h = LayerNorm(x_L),   pooled = h[:, 0] ("first_token") or mean_i h[:, i] ("mean")

**1-D mixing over patches in raster order.** The mixer convolves the flattened patch sequence (row by row), not
the 2-D grid, so the encoder's mixer, implicit filters and kernels (Triton on CUDA) serve unchanged; a 2-D form
would need 2-D implicit filters and 2-D FFT convolutions, new kernels included. The bidirectional convolution over
the raster still reaches every patch from every patch: on a grid `W` patches wide, the tap at offset
`d = k*W + j` (`0 <= j < W`) joins each patch to the one `k` rows down and `j` columns right, or, for patches in
the last `j` columns, to the one `k + 1` rows down and `W - j` columns left (the row wraps). One weight per offset
thus serves two displacements, and that is what is lost against a 2-D convolution; vertical neighbours (offsets
that are multiples of `W`) are exact, and the implicit filters can learn responses there as easily as at small
offsets. The gates depend on the position embeddings, so they can weight the two cases differently. The short causal
convolution (3 taps) before the long one sees the previous patches of the raster. The [CLS] token at position 0
sees every patch through the reverse filter. Whether the published M2-ViT mixed in 1-D or 2-D is not known.

**Fixed image size.** The raster offsets that the filters learn depend on the grid width, and the position
embeddings have one row per patch, so the models accept exactly `config.image_size` square images and raise a
`ValueError` naming the expected and given sizes otherwise. The image processor (transformers'
`ViTImageProcessor`, registered for `M2Config`) resizes inputs to that size; to train at another resolution, build
a config with that `image_size` (and a `max_position_embeddings` covering its patches).

`M2VisionModel` is the backbone. `AutoModel` is mapped to the text encoder `M2Model` for `M2Config`, so the
backbone is not registered with `AutoModel`: instantiate it directly or load it from a classifier folder with
`M2VisionModel.from_pretrained`. `M2ForImageClassification` is registered with `AutoModelForImageClassification`.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput
from transformers.utils import is_torchvision_available, is_vision_available
from transformers.utils.generic import can_return_tuple

from .configuration_m2 import M2Config
from .modeling_m2 import M2EncoderStack, M2PreTrainedModel


def vision_sequence_length(config: M2Config) -> int:
    """Number of positions the mixer sees: one per patch, plus the [CLS] token with `pooling="first_token"`."""
    num_patches = (config.image_size // config.patch_size) ** 2
    return num_patches + (1 if config.pooling == "first_token" else 0)


def vit_image_processor_classes() -> dict[str, type]:
    """transformers' ViT image processors by backend (`"pil"`, `"torchvision"`), for the backends installed."""
    classes = {}
    if is_vision_available():
        from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

        classes["pil"] = ViTImageProcessorPil
    if is_torchvision_available():
        from transformers.models.vit.image_processing_vit import ViTImageProcessor

        classes["torchvision"] = ViTImageProcessor
    return classes


def check_vision_config(config: M2Config) -> None:
    """Raise a `ValueError` if the vision models cannot be built from `config`."""
    if config.pooling == "first_token" and not config.bidirectional:
        raise ValueError(
            "M2Config.pooling='first_token' puts the [CLS] token in front of the patches, where a causal mixer "
            "(bidirectional=False) lets it see none of them; use bidirectional=True or pooling='mean'."
        )
    length = vision_sequence_length(config)
    if length > config.max_sequence_length:
        cls_note = " plus the [CLS] token" if config.pooling == "first_token" else ""
        raise ValueError(
            f"M2Config.max_sequence_length={config.max_sequence_length} (max_position_embeddings / "
            f"long_conv_max_length) is smaller than the {length} positions of a {config.image_size}x"
            f"{config.image_size} image cut into {config.patch_size}x{config.patch_size} patches{cls_note}; "
            f"set max_position_embeddings={length}."
        )


class M2PatchEmbeddings(nn.Module):
    """Projects each non-overlapping `patch_size` square of a `[B, C, S, S]` image to `hidden_size` (a Conv2d with
    stride equal to its kernel) and returns the patches in raster order, `[B, num_patches, hidden_size]`."""

    def __init__(self, config: M2Config):
        super().__init__()
        self.image_size = config.image_size
        self.patch_size = config.patch_size
        self.num_channels = config.num_channels
        self.num_patches = (config.image_size // config.patch_size) ** 2
        self.projection = nn.Conv2d(
            config.num_channels, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size
        )

    def check_pixel_values(self, pixel_values: torch.Tensor) -> None:
        if pixel_values.dim() != 4:
            raise ValueError(
                "pixel_values must have shape (batch, num_channels, height, width), "
                f"got {tuple(pixel_values.shape)}."
            )
        if pixel_values.shape[0] == 0:
            raise ValueError("pixel_values are an empty batch (batch size 0).")
        channels, height, width = pixel_values.shape[1:]
        if channels != self.num_channels:
            raise ValueError(
                f"pixel_values have {channels} channels, but this model takes num_channels={self.num_channels}."
            )
        if (height, width) != (self.image_size, self.image_size):
            raise ValueError(
                f"pixel_values are {height}x{width} images, but this model takes {self.image_size}x{self.image_size} "
                "(config.image_size); resize them, e.g. with the model's image processor."
            )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        self.check_pixel_values(pixel_values)
        patches = self.projection(pixel_values.to(self.projection.weight.dtype))  # [B, H, S/P, S/P]
        return patches.flatten(2).transpose(1, 2)


class M2VisionEmbeddings(nn.Module):
    """Patch embeddings, the learned [CLS] token in front (`pooling="first_token"`), learned absolute position
    embeddings (`use_position_embeddings`), then dropout."""

    def __init__(self, config: M2Config):
        super().__init__()
        hidden = config.hidden_size
        self.patch_embeddings = M2PatchEmbeddings(config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden)) if config.pooling == "first_token" else None
        self.position_embeddings = (
            nn.Parameter(torch.zeros(1, vision_sequence_length(config), hidden))
            if config.use_position_embeddings
            else None
        )
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        embeddings = self.patch_embeddings(pixel_values)
        if self.cls_token is not None:
            cls_tokens = self.cls_token.expand(embeddings.shape[0], -1, -1)
            embeddings = torch.cat([cls_tokens, embeddings], dim=1)
        if self.position_embeddings is not None:
            embeddings = embeddings + self.position_embeddings
        return self.dropout(embeddings)


class M2VisionPreTrainedModel(M2PreTrainedModel):
    """Base class of the M2 vision models: image inputs and the initialisation of the [CLS] and position
    embeddings (truncated normal, `initializer_range`, as in ViT)."""

    main_input_name = "pixel_values"
    input_modalities = ("image",)

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, M2VisionEmbeddings):
            std = self.config.initializer_range
            if module.cls_token is not None:
                init.trunc_normal_(module.cls_token, std=std)
            if module.position_embeddings is not None:
                init.trunc_normal_(module.position_embeddings, std=std)


class M2VisionModel(M2VisionPreTrainedModel, M2EncoderStack):
    """The M2-ViT backbone: patch embeddings, `num_hidden_layers` M2 layers, the final LayerNorm of pre-norm models
    (`norm_position="pre"`, the ViT layout) and parameter-free pooling.

    `pooler_output` is the [CLS] state (`pooling="first_token"`) or the mean over patches (`pooling="mean"`), both
    after the final LayerNorm. Not registered with `AutoModel`, which maps `M2Config` to the text `M2Model`.
    """

    def __init__(self, config: M2Config):
        super().__init__(config)
        check_vision_config(config)
        self.embeddings = M2VisionEmbeddings(config)
        self.build_encoder_stack(config)  # the text encoder's layers and final LayerNorm
        self.post_init()

    def get_input_embeddings(self) -> M2PatchEmbeddings:
        return self.embeddings.patch_embeddings

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        r"""
        pixel_values (`torch.Tensor` of shape `(batch, num_channels, image_size, image_size)`):
            Images, normalised as the image processor does.
        """
        if pixel_values is None:
            raise ValueError("pixel_values are required.")
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        hidden_states, all_hidden_states = self.run_encoder_stack(
            self.embeddings(pixel_values), output_hidden_states=output_hidden_states
        )
        pooled_output = hidden_states[:, 0] if self.config.pooling == "first_token" else hidden_states.mean(dim=1)
        return BaseModelOutputWithPooling(
            last_hidden_state=hidden_states,
            pooler_output=pooled_output,
            hidden_states=tuple(all_hidden_states) if all_hidden_states is not None else None,
        )


class M2ForImageClassification(M2VisionPreTrainedModel):
    """M2-ViT with a linear classifier on the pooled state: regression (`num_labels == 1`), single- or multi-label
    classification, chosen from `config.problem_type` or inferred from the labels as in ViT.

    The loss is the mean over the batch (`accepts_loss_kwargs = False`): Trainer averages it over
    gradient-accumulation steps itself.
    """

    accepts_loss_kwargs = False

    def __init__(self, config: M2Config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = M2VisionModel(config)
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> ImageClassifierOutput:
        r"""
        labels (`torch.Tensor` of shape `(batch,)` or `(batch, num_labels)`, *optional*):
            Class indices (single-label), multi-hot floats (multi-label) or targets (regression, `num_labels == 1`).
        """
        outputs = self.model(pixel_values, output_hidden_states=output_hidden_states, return_dict=True)
        logits = self.classifier(self.dropout(outputs.pooler_output))
        loss = None
        if labels is not None:
            if labels.shape[0] != logits.shape[0]:
                raise ValueError(f"labels hold {labels.shape[0]} examples, pixel_values {logits.shape[0]}.")
            loss = self.loss_function(labels, logits, self.config)
        return ImageClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)


__all__ = ["M2ForImageClassification", "M2VisionModel", "M2VisionPreTrainedModel"]
