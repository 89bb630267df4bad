"""Configuration of the Monarch Mixer (M2) model family."""

from __future__ import annotations

import math

from transformers import PretrainedConfig
from transformers.activations import ACT2FN

from ..ops.backend import KERNEL_BACKENDS

SEQUENCE_MIXERS = ("long_conv", "monarch")
MONARCH_MLP_ORDERS = (1, 2)
POOLING_MODES = ("first_token", "mean")
NORM_POSITIONS = ("post", "pre")


class M2Config(PretrainedConfig):
    r"""Configuration for every M2 model: M2-BERT encoders and their heads, M2-GPT and M2-ViT.

    The defaults describe the released M2-BERT-80M layout except for `mixer_layernorm` (set it for the
    converted 80M checkpoint) and `mask_padding` (on for models trained with this package).

    Args:
        vocab_size (`int`, defaults to 30528):
            Number of token ids: bert-base-uncased's 30522 padded to a multiple of 8.
        hidden_size (`int`, defaults to 768):
            Width of the residual stream.
        num_hidden_layers (`int`, defaults to 12):
            Number of M2 layers (sequence mixer followed by the Monarch MLP).
        intermediate_size (`int`, defaults to 3072):
            Inner width of the MLP. With `glu_mlp` the first projection produces `2 * intermediate_size`
            features: the gate, then the value.
        hidden_act (`str`, defaults to `"gelu"`):
            Activation of the MLP gate and of the masked-LM head transform (`"gelu"` is the exact erf GELU).
        hidden_dropout_prob (`float`, defaults to 0.1):
            Dropout on the embeddings, inside the MLP and (unless `classifier_dropout` is set) before classifiers.
        classifier_dropout (`float`, *optional*):
            Dropout before the sequence/token classifier; `hidden_dropout_prob` when unset.
        max_position_embeddings (`int`, defaults to 128):
            Trained maximum sequence length: rows of the position table. Longer inputs raise a `ValueError`.
        long_conv_max_length (`int`, *optional*):
            Length of the implicit long-filter grid; `max_position_embeddings` when unset. Filters for a shorter
            input are the first rows of this grid (truncated, not resampled). With `sequence_mixer="monarch"` it
            sets the Monarch sequence grid instead (see `monarch_sequence_grid`).
        type_vocab_size (`int`, defaults to 2):
            Number of token types (segments); 0 builds no token-type table (M2-GPT, M2-ViT).
        initializer_range (`float`, defaults to 0.02):
            Standard deviation of the normal initialiser for dense layers and embeddings.
        layer_norm_eps (`float`, defaults to 1e-12):
            Epsilon of the embedding, MLP and masked-LM head LayerNorms.
        use_position_embeddings (`bool`, defaults to `True`):
            Add learned absolute position embeddings to the token embeddings.
        sequence_mixer (`str`, defaults to `"long_conv"`):
            Sequence mixer of every layer. `"long_conv"`: M2-BERT's gated bidirectional long convolution with
            implicit filters. `"monarch"`: the paper's canonical M2 sequence mixing `M_2 act(K * M_1 u)` with
            learnable order-2 Monarch matrices `M_1`, `M_2` over the sequence grid and a learnable kernel `K`
            (`M2MonarchSequenceMixer`). It is bidirectional only, and ignores `residual_long_conv`,
            `short_conv_size` and the `filter_*` fields.
        bidirectional (`bool`, defaults to `True`):
            Long convolutions see both directions (a forward and a reverse filter). `False` gives a causal
            convolution; the Monarch sequence mixer is not causal and requires `True`.
        monarch_mixer_act (`str`, defaults to `"relu"`):
            Activation between the kernel and `M_2` in the Monarch sequence mixer (a key of transformers'
            `ACT2FN`); `"linear"` makes the mixer a linear map along the sequence.
        residual_long_conv (`bool`, defaults to `True`):
            Add a second (ungated) long convolution of the mixer input to the mixer output.
        mixer_layernorm (`bool`, defaults to `False`):
            Normalise the mixer input with a LayerNorm first (the released 80M model; the original's
            `hyena_training_additions`). Always on with `norm_position="pre"`.
        mixer_layernorm_eps (`float`, defaults to 1e-5):
            Epsilon of that LayerNorm.
        norm_position (`str`, defaults to `"post"`):
            `"post"`: M2-BERT's layer `LayerNorm(h + MLP(h))` with `h = mixer(x)`. `"pre"`: pre-norm residual
            blocks `x + mixer(LayerNorm(x))`, `x + MLP(LayerNorm(x))` and a final LayerNorm (M2-GPT, M2-ViT).
        short_conv_size (`int`, defaults to 3):
            Kernel size of the causal depthwise convolution over the input projection.
        filter_order (`int`, defaults to 128):
            Width of the implicit-filter MLPs.
        filter_emb_dim (`int`, defaults to 5):
            Size of the positional features fed to the filter MLPs: time plus `(filter_emb_dim - 1) // 2`
            complex-exponential bands. Odd and at least 3.
        filter_num_inner_layers (`int`, defaults to 2):
            Hidden `filter_order x filter_order` layers in each filter MLP.
        filter_sin_freq (`float`, defaults to 10.0):
            Initial value of the trainable frequency `w` of the filter MLP activation `sin(scale * w * x)`.
        filter_sin_freq_scale (`float`, defaults to 1.0):
            The fixed `scale` in that activation.
        filter_decay_fast (`float`, defaults to 0.3):
            Fraction of the filter length after which the fastest-decaying channel reaches `filter_decay_target`.
        filter_decay_slow (`float`, defaults to 1.5):
            The same fraction for the slowest-decaying channel.
        filter_decay_target (`float`, defaults to 0.01):
            Value of the exponential window `exp(-t |delta_c|)` at those fractions.
        filter_learning_rate (`float`, defaults to 1e-3):
            Learning rate of the forward implicit-filter MLPs and their frequency `w` in the original training
            recipe (the original's `long_conv_kernel_learning_rate`); used by `m2_hf.optimization`, not by the model.
        filter_weight_decay (`float`, defaults to 0.1):
            Weight decay of those parameters in the original recipe (the original's `hyena_wd`).
        filter_features_learning_rate (`float`, defaults to 1e-5):
            Learning rate of the filters' positional features `z` in the original recipe, which trains them without
            weight decay (the original's `hyena_lr_pos_emb`).
        glu_mlp (`bool`, defaults to `True`):
            Use a gated MLP `out(act(gate) * value)`; otherwise `out(act(in(x)))`.
        monarch_mlp_nblocks (`int`, defaults to 4):
            Number of diagonal blocks of the MLP's block-diagonal (Monarch) projections; with `monarch_mlp_order=1`,
            1 is a dense layer. `hidden_size` and `intermediate_size` must be multiples of it.
        monarch_mlp_order (`int`, defaults to 1):
            Number of block-diagonal factors of each MLP projection. 1: M2-BERT's single block-diagonal factor.
            2: an order-2 Monarch matrix `P L P^T R` (`MonarchLinear`): `R` has `monarch_mlp_nblocks` blocks,
            `L` has `out_features / monarch_mlp_nblocks` blocks of size `monarch_mlp_nblocks`, so every output
            feature depends on every input feature. `monarch_mlp_nblocks = sqrt(hidden_size)` is the paper's
            square Monarch with `sqrt(d)` blocks.
        pooling (`str`, defaults to `"first_token"`):
            Pooler input: `"first_token"` (the [CLS] state) or `"mean"` (mean over unmasked tokens; the
            original's `pool_all`). The pooler output is `tanh(dense(input))`.
        mask_padding (`bool`, defaults to `True`):
            Zero padded positions (`attention_mask == 0`) before every convolution and count positions from the
            first real token, so that each real token's output does not depend on the padding. `False` keeps the
            original M2-BERT semantics (the mask is ignored by the mixer; [PAD] is an ordinary token), which
            converted checkpoints need to reproduce their published numbers.
        pad_to_max_length (`bool`, defaults to `False`):
            Right-pad every input with `pad_token_id` to the maximum sequence length inside the model and cut the
            outputs back to the input length. The released long-context retrieval models only give their
            trained embeddings for inputs padded this way.
        sparse_prediction (`bool`, defaults to `False`):
            With labels, compute masked-LM logits only at positions whose label is not -100 and return them
            flattened to `(num_labelled, vocab_size)`.
        pad_token_id (`int`, defaults to 0), bos_token_id (`int`, *optional*), eos_token_id (`int`, *optional*):
            Special token ids.
        tie_word_embeddings (`bool`, defaults to `True`):
            Tie the masked-LM decoder weight to the word embeddings.
        use_cache (`bool`, defaults to `True`):
            Whether generative heads return a cache.
        image_size (`int`, defaults to 224), patch_size (`int`, defaults to 16), num_channels (`int`, defaults to 3):
            Input geometry of the vision models: square images of `image_size` pixels cut into
            `(image_size // patch_size) ** 2` patches.
        kernel_backend (`str`, defaults to `"auto"`):
            `"auto"`: the Triton kernels on CUDA tensors, the pure-PyTorch reference elsewhere; `"triton"` or
            `"torch"` force one. The environment variable `M2_HF_KERNEL_BACKEND` overrides this field.
        cpu_inference_slice_mib (`int`, defaults to 16):
            CPU inference without a cache runs each layer over slices of the batch (whole sequences) whose widest
            intermediate stays within this many MiB, and concatenates the slices' outputs, which are the same as
            the whole batch's. A large CPU tensor takes fresh pages from the operating system at every allocation
            (glibc maps each one above 32 MiB anew) while small ones reuse freed memory, so small slices save the
            page faults (`benchmarks/results/encoder-cpu.md`). 0 runs the whole batch at once. Training, CUDA,
            decoding with a cache and tracing (`torch.compile`, `torch.export`, ONNX) never slice.
    """

    model_type = "m2"

    def __init__(
        self,
        vocab_size: int = 30528,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        intermediate_size: int = 3072,
        hidden_act: str = "gelu",
        hidden_dropout_prob: float = 0.1,
        classifier_dropout: float | None = None,
        max_position_embeddings: int = 128,
        long_conv_max_length: int | None = None,
        type_vocab_size: int = 2,
        initializer_range: float = 0.02,
        layer_norm_eps: float = 1e-12,
        use_position_embeddings: bool = True,
        sequence_mixer: str = "long_conv",
        bidirectional: bool = True,
        monarch_mixer_act: str = "relu",
        residual_long_conv: bool = True,
        mixer_layernorm: bool = False,
        mixer_layernorm_eps: float = 1e-5,
        norm_position: str = "post",
        short_conv_size: int = 3,
        filter_order: int = 128,
        filter_emb_dim: int = 5,
        filter_num_inner_layers: int = 2,
        filter_sin_freq: float = 10.0,
        filter_sin_freq_scale: float = 1.0,
        filter_decay_fast: float = 0.3,
        filter_decay_slow: float = 1.5,
        filter_decay_target: float = 0.01,
        filter_learning_rate: float = 1e-3,
        filter_weight_decay: float = 0.1,
        filter_features_learning_rate: float = 1e-5,
        glu_mlp: bool = True,
        monarch_mlp_nblocks: int = 4,
        monarch_mlp_order: int = 1,
        pooling: str = "first_token",
        mask_padding: bool = True,
        pad_to_max_length: bool = False,
        sparse_prediction: bool = False,
        pad_token_id: int | None = 0,
        bos_token_id: int | None = None,
        eos_token_id: int | None = None,
        tie_word_embeddings: bool = True,
        use_cache: bool = True,
        image_size: int = 224,
        patch_size: int = 16,
        num_channels: int = 3,
        kernel_backend: str = "auto",
        cpu_inference_slice_mib: int = 16,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = hidden_dropout_prob
        self.classifier_dropout = classifier_dropout
        self.max_position_embeddings = max_position_embeddings
        self.long_conv_max_length = long_conv_max_length
        self.type_vocab_size = type_vocab_size
        self.initializer_range = initializer_range
        self.layer_norm_eps = layer_norm_eps
        self.use_position_embeddings = use_position_embeddings
        self.sequence_mixer = sequence_mixer
        self.bidirectional = bidirectional
        self.monarch_mixer_act = monarch_mixer_act
        self.residual_long_conv = residual_long_conv
        self.mixer_layernorm = mixer_layernorm
        self.mixer_layernorm_eps = mixer_layernorm_eps
        self.norm_position = norm_position
        self.short_conv_size = short_conv_size
        self.filter_order = filter_order
        self.filter_emb_dim = filter_emb_dim
        self.filter_num_inner_layers = filter_num_inner_layers
        self.filter_sin_freq = filter_sin_freq
        self.filter_sin_freq_scale = filter_sin_freq_scale
        self.filter_decay_fast = filter_decay_fast
        self.filter_decay_slow = filter_decay_slow
        self.filter_decay_target = filter_decay_target
        self.filter_learning_rate = filter_learning_rate
        self.filter_weight_decay = filter_weight_decay
        self.filter_features_learning_rate = filter_features_learning_rate
        self.glu_mlp = glu_mlp
        self.monarch_mlp_nblocks = monarch_mlp_nblocks
        self.monarch_mlp_order = monarch_mlp_order
        self.pooling = pooling
        self.mask_padding = mask_padding
        self.pad_to_max_length = pad_to_max_length
        self.sparse_prediction = sparse_prediction
        self.use_cache = use_cache
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.kernel_backend = kernel_backend
        self.cpu_inference_slice_mib = cpu_inference_slice_mib
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )
        self.validate_m2_fields()

    @property
    def filter_max_length(self) -> int:
        """Length of the implicit-filter grid."""
        return self.long_conv_max_length if self.long_conv_max_length is not None else self.max_position_embeddings

    @property
    def monarch_sequence_grid(self) -> tuple[int, int]:
        """`(nblocks, block_size)` of the Monarch sequence mixer's grid `N = nblocks * block_size`.

        `N` is the smallest length >= `filter_max_length` that factors as `nblocks * block_size` with
        `nblocks <= block_size <= 2 * nblocks`: `filter_max_length` itself when it factors so (every power of
        two, `n * n`), else rounded up by less than `sqrt(filter_max_length)`. Inputs are zero-padded to `N`.
        """
        length = self.filter_max_length
        while True:
            nblocks = math.isqrt(length)
            while length % nblocks:
                nblocks -= 1
            if length // nblocks <= 2 * nblocks:
                return nblocks, length // nblocks
            length += 1

    @property
    def max_sequence_length(self) -> int:
        """Longest input the model accepts."""
        if self.use_position_embeddings:
            return min(self.max_position_embeddings, self.filter_max_length)
        return self.filter_max_length

    def validate_m2_fields(self) -> None:
        """Raise a `ValueError` naming the first field whose value the model cannot be built with."""
        positive = (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "intermediate_size",
            "max_position_embeddings",
            "short_conv_size",
            "filter_order",
            "monarch_mlp_nblocks",
            "image_size",
            "patch_size",
            "num_channels",
        )
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"M2Config.{name} must be a positive integer, got {value!r}.")
        for name in ("type_vocab_size", "cpu_inference_slice_mib"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"M2Config.{name} must be a non-negative integer, got {value!r}.")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"M2Config.image_size={self.image_size} must be divisible by patch_size={self.patch_size}."
            )
        if self.long_conv_max_length is not None and (
            isinstance(self.long_conv_max_length, bool)
            or not isinstance(self.long_conv_max_length, int)
            or self.long_conv_max_length < 2
        ):
            raise ValueError(
                f"M2Config.long_conv_max_length must be None or an integer >= 2, got {self.long_conv_max_length!r}."
            )
        if self.long_conv_max_length is None and self.max_position_embeddings < 2:
            raise ValueError(
                "M2Config.max_position_embeddings must be >= 2 (it sets the long-filter grid), "
                f"got {self.max_position_embeddings!r}."
            )
        if not isinstance(self.filter_num_inner_layers, int) or self.filter_num_inner_layers < 0:
            raise ValueError(
                f"M2Config.filter_num_inner_layers must be a non-negative integer, got {self.filter_num_inner_layers!r}."
            )
        for name in ("hidden_size", "intermediate_size"):
            if getattr(self, name) % self.monarch_mlp_nblocks:
                raise ValueError(
                    f"M2Config.{name}={getattr(self, name)} must be divisible by "
                    f"monarch_mlp_nblocks={self.monarch_mlp_nblocks}."
                )
        emb = self.filter_emb_dim
        if isinstance(emb, bool) or not isinstance(emb, int) or emb < 3 or emb % 2 == 0:
            raise ValueError(f"M2Config.filter_emb_dim must be an odd integer >= 3 (3, 5, 7, ...), got {emb!r}.")
        if self.sequence_mixer not in SEQUENCE_MIXERS:
            raise ValueError(f"M2Config.sequence_mixer must be one of {SEQUENCE_MIXERS}, got {self.sequence_mixer!r}.")
        if self.sequence_mixer == "monarch" and not self.bidirectional:
            raise ValueError(
                "M2Config.bidirectional=False asks for a causal mixer, but sequence_mixer='monarch' mixes every "
                "position with every other (it is not causal); use sequence_mixer='long_conv' for a causal model."
            )
        if not isinstance(self.monarch_mixer_act, str) or self.monarch_mixer_act not in ACT2FN:
            raise ValueError(
                f"M2Config.monarch_mixer_act must be an activation name of transformers' ACT2FN, "
                f"got {self.monarch_mixer_act!r}."
            )
        if isinstance(self.monarch_mlp_order, bool) or self.monarch_mlp_order not in MONARCH_MLP_ORDERS:
            raise ValueError(
                f"M2Config.monarch_mlp_order must be one of {MONARCH_MLP_ORDERS}, got {self.monarch_mlp_order!r}."
            )
        if self.norm_position not in NORM_POSITIONS:
            raise ValueError(f"M2Config.norm_position must be one of {NORM_POSITIONS}, got {self.norm_position!r}.")
        if self.kernel_backend not in KERNEL_BACKENDS:
            raise ValueError(f"M2Config.kernel_backend must be one of {KERNEL_BACKENDS}, got {self.kernel_backend!r}.")
        if self.pooling not in POOLING_MODES:
            raise ValueError(f"M2Config.pooling must be one of {POOLING_MODES}, got {self.pooling!r}.")
        for name in ("hidden_dropout_prob", "classifier_dropout"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"M2Config.{name} must be in [0, 1], got {value!r}.")
        for name in ("layer_norm_eps", "mixer_layernorm_eps", "filter_decay_fast", "filter_decay_slow"):
            if not getattr(self, name) > 0:
                raise ValueError(f"M2Config.{name} must be > 0, got {getattr(self, name)!r}.")
        if not 0.0 < self.filter_decay_target < 1.0:
            raise ValueError(f"M2Config.filter_decay_target must be in (0, 1), got {self.filter_decay_target!r}.")
        if self.pad_token_id is not None and not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(
                f"M2Config.pad_token_id must be None or in [0, vocab_size={self.vocab_size}), got {self.pad_token_id!r}."
            )
        if self.pad_to_max_length and self.pad_token_id is None:
            raise ValueError("M2Config.pad_to_max_length needs a pad_token_id to pad with.")
