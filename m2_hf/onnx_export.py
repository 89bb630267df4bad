"""ONNX export of the M2 text encoders and their heads, for ONNX Runtime and other ONNX consumers.

`export_onnx(model_dir, out_dir)` (or `m2-hf export-onnx MODEL_DIR OUT_DIR`) writes `OUT_DIR/model.onnx` with
dynamic batch and sequence-length axes, next to the model's config and tokenizer files, so the folder is
self-contained: ONNX Runtime runs it without PyTorch, transformers or remote code.

Graph signature:

| head | inputs | outputs |
|---|---|---|
| `M2Model` | `input_ids`, `attention_mask`, `token_type_ids` (when `type_vocab_size > 0`) | `last_hidden_state`, `pooler_output` (with a pooler) |
| `M2ForMaskedLM`, `M2ForSequenceClassification`, `M2ForTokenClassification` | the same | `logits` |

All inputs are int64 `(batch, sequence)`. A sentence-transformers folder (one with `modules.json`, as written by
`m2_hf.sentence_transformers`) also gets `sentence_embedding`, the embedding `SentenceTransformer.encode` returns.

**Dynamic lengths.** The long convolutions run as FFTs of size `2 * sequence` inside the graph (ONNX `DFT` with a
runtime length), so one file serves every length from 1 to `config.max_sequence_length` with the cost of that
length. The implicit filters do not depend on the input: they are evaluated once on the whole filter grid at
export and stored as constants, and the graph takes the first `sequence` taps of them, exactly as the PyTorch
model truncates its filters to the input length.

Models with `pad_to_max_length=True` (the long-context retrieval models) pad inside the graph as the PyTorch
model does, so they too take any length up to their maximum.

Refused with an `OnnxExportError`: `M2ForCausalLM` (generation needs the decoding cache and `generate()`), the
vision models, and the Monarch sequence mixer (`sequence_mixer="monarch"`: the exporter has no ONNX translation
of its stable sort and specialises its padding to the traced length).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from .modeling import M2Config, M2ForMaskedLM, M2ForSequenceClassification, M2ForTokenClassification, M2Model
from .modeling.implicit_filter import M2ImplicitFilter
from .ops import long_conv_kernel, long_conv_spectrum

ONNX_FILE = "model.onnx"
# ONNX opset 20 is the first whose `DFT` takes its length at runtime, which the dynamic length axis needs.
DEFAULT_OPSET = 20
EXPORT_DTYPES = {"float32": torch.float32, "float16": torch.float16}
# The heads the export covers, by their `config.architectures` name, and those it refuses, with the reason.
EXPORTABLE_HEADS = {
    "M2Model": M2Model,
    "M2ForMaskedLM": M2ForMaskedLM,
    "M2ForSequenceClassification": M2ForSequenceClassification,
    "M2ForTokenClassification": M2ForTokenClassification,
}
REFUSED_HEADS = {
    "M2ForCausalLM": "generation needs the decoding cache and generate(), which an ONNX graph of the forward "
    "pass does not carry",
    "M2ForImageClassification": "the ONNX export covers the text models only",
    "M2VisionModel": "the ONNX export covers the text models only",
}
# Files copied from the model folder beside model.onnx: the configuration and the tokenizer's files.
COPIED_FILES = (
    "config.json",
    "vocab.txt",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "spiece.model",
    "sentencepiece.bpe.model",
)
COPIED_PREFIXES = ("tokenizer",)  # tokenizer.json, tokenizer_config.json


class OnnxExportError(ValueError):
    """A model cannot be exported to ONNX; the message says why."""


class FixedImplicitFilter(nn.Module):
    """An `M2ImplicitFilter` evaluated once on its whole grid: the same `spectrum(seq_len)` and `skip`, with
    the filter taps stored as buffers instead of recomputed by the filter MLPs.

    The taps of a shorter input are the first `seq_len` columns, which is how `M2ImplicitFilter` truncates its
    filters, so the spectra are those of the original module.
    """

    def __init__(self, implicit_filter: M2ImplicitFilter):
        super().__init__()
        grid = implicit_filter.features.shape[1]
        with torch.no_grad():
            forward_filter, reverse_filter = implicit_filter.filters(grid)
        real_dtype = torch.promote_types(forward_filter.dtype, torch.float32)
        self.register_buffer("forward_filter", forward_filter.to(real_dtype).contiguous())
        self.register_buffer(
            "reverse_filter", None if reverse_filter is None else reverse_filter.to(real_dtype).contiguous()
        )
        self.skip = nn.Parameter(implicit_filter.skip.detach().clone(), requires_grad=False)

    def spectrum(self, seq_len: int, layout=None) -> torch.Tensor:
        reverse = None if self.reverse_filter is None else self.reverse_filter[:, :seq_len]
        spectrum = long_conv_spectrum(long_conv_kernel(self.forward_filter[:, :seq_len], reverse), seq_len)
        return spectrum if layout is None else layout(spectrum, seq_len)

    def keep_filters_in_float32(self) -> None:
        """Cast the taps back to (at least) float32 after the module was cast to half precision: the long
        convolution computes its FFTs in the precision of the filters, float32 for half-precision models."""
        for name in ("forward_filter", "reverse_filter"):
            taps = getattr(self, name)
            if taps is not None:
                setattr(self, name, taps.to(torch.promote_types(taps.dtype, torch.float32)))


def fix_implicit_filters(model: nn.Module) -> list[FixedImplicitFilter]:
    """Replace every `M2ImplicitFilter` in `model` by its `FixedImplicitFilter`, in place; return the new ones."""
    targets = [(name, module) for name, module in model.named_modules() if isinstance(module, M2ImplicitFilter)]
    fixed = []
    for name, module in targets:
        parent_name, _, attribute = name.rpartition(".")
        fixed.append(FixedImplicitFilter(module))
        setattr(model.get_submodule(parent_name) if parent_name else model, attribute, fixed[-1])
    return fixed


class _ExportedHead(nn.Module):
    """The forward pass as the graph sees it: positional int64 inputs, a tuple of the named outputs."""

    def __init__(self, model: nn.Module, output_names: list[str], input_names: list[str], sentence_pooling):
        super().__init__()
        self.model = model
        self.output_names = output_names
        self.input_names = input_names
        self.sentence_pooling = sentence_pooling

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        outputs = self.model(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, return_dict=True
        )
        values = [outputs[name] for name in self.output_names if name != "sentence_embedding"]
        if self.sentence_pooling is not None:
            values.append(_sentence_embedding(outputs, attention_mask, self.sentence_pooling))
        return tuple(values)


def _sentence_embedding(outputs, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """The embedding of the sentence-transformers pipeline `m2_hf.sentence_transformers` writes: `"pooler"`, the
    pooler output (the pipeline's Dense module is the pooler); else the first real token's state (`"cls"`, as
    sentence-transformers' Pooling takes it) or the masked mean (`"mean"`)."""
    if pooling == "pooler":
        return outputs["pooler_output"]
    hidden = outputs["last_hidden_state"]
    if pooling == "cls":
        first = attention_mask.long().argmax(dim=1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), first]
    weights = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


def _head_class(config: M2Config) -> type[nn.Module]:
    architectures = list(getattr(config, "architectures", None) or ["M2Model"])
    name = architectures[0]
    if name in REFUSED_HEADS:
        raise OnnxExportError(f"{name} cannot be exported to ONNX: {REFUSED_HEADS[name]}.")
    if name not in EXPORTABLE_HEADS:
        raise OnnxExportError(
            f"{name} cannot be exported to ONNX; the export covers {', '.join(EXPORTABLE_HEADS)}."
        )
    return EXPORTABLE_HEADS[name]


def _sentence_transformers_pooling(model_dir: Path) -> str | None:
    """For a sentence-transformers folder written by `m2_hf.sentence_transformers`, how its embedding is made
    (see `_sentence_embedding`); None for other folders."""
    modules_file = model_dir / "modules.json"
    if not modules_file.is_file():
        return None
    modules = json.loads(modules_file.read_text(encoding="utf-8"))
    types = [module.get("type", "").rsplit(".", 1)[-1] for module in modules]
    if types == ["Transformer", "Pooling", "Dense"]:
        return "pooler"
    if types != ["Transformer", "Pooling"]:
        raise OnnxExportError(
            f"{modules_file} describes the sentence-transformers pipeline {types}; the export knows the "
            "Transformer, Pooling[, Dense] pipeline that m2_hf.sentence_transformers writes."
        )
    pooling_config = json.loads((model_dir / modules[1]["path"] / "config.json").read_text(encoding="utf-8"))
    if pooling_config.get("pooling_mode_cls_token"):
        return "cls"
    if pooling_config.get("pooling_mode_mean_tokens"):
        return "mean"
    raise OnnxExportError(f"{model_dir / modules[1]['path']} uses a pooling the export does not know.")


def _clear_intermediate_shapes(onnx_program) -> None:
    """Drop the shape annotations of intermediate values, keeping those of the graph inputs and outputs.

    The exporter annotates the inverse real FFT's intermediate values with the length of its complex input
    instead of the FFT length, and ONNX Runtime reuses buffers by those annotations, which fails at every length
    but the traced one. The annotations are optional: ONNX Runtime infers the shapes itself.
    """
    graph = onnx_program.model.graph
    kept = set(graph.inputs) | set(graph.outputs)
    for node in graph.all_nodes():
        for value in node.outputs:
            if value not in kept:
                value.shape = None


def export_onnx(
    model_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    opset: int | None = None,
    dtype: str = "float32",
    force: bool = False,
) -> Path:
    """Export an M2 text model folder to `out_dir/model.onnx` with dynamic batch and sequence axes.

    Args:
        model_dir: a folder written by `save_pretrained`, `m2-hf convert` or `save_sentence_transformer`.
        out_dir: the folder to write; it receives `model.onnx` and the model's config and tokenizer files.
        opset: the ONNX opset (default 20; at least 20, the first whose `DFT` takes a runtime length).
        dtype: `"float32"` or `"float16"` weights and outputs (the FFTs run in float32 either way).
        force: replace an existing `out_dir`.

    Returns:
        `out_dir`.

    Raises:
        OnnxExportError: the head cannot be exported, the arguments are invalid, or the export failed. Nothing is
            left at `out_dir` then (an existing folder is kept unless the export succeeded with `force`).
        FileExistsError: `out_dir` exists and `force` is not set.
    """
    from transformers import AutoConfig

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if importlib.util.find_spec("onnxscript") is None:
        raise OnnxExportError("The ONNX export needs onnxscript: pip install 'm2-hf[onnx]'.")
    if dtype not in EXPORT_DTYPES:
        raise OnnxExportError(f"dtype must be one of {', '.join(EXPORT_DTYPES)}, got {dtype!r}.")
    opset = DEFAULT_OPSET if opset is None else opset
    if opset < DEFAULT_OPSET:
        raise OnnxExportError(
            f"opset must be at least 20 (the first ONNX opset whose DFT takes its length at runtime), got {opset}."
        )
    if not (model_dir / "config.json").is_file():
        raise OnnxExportError(f"{model_dir} has no config.json; pass a folder written by save_pretrained.")
    if out_dir.exists() and not force:
        raise FileExistsError(f"{out_dir} already exists; pass --force (force=True) to replace it.")
    if out_dir.resolve() == model_dir.resolve():
        raise OnnxExportError(f"The output folder {out_dir} would replace the model folder.")
    config = AutoConfig.from_pretrained(model_dir)
    if not isinstance(config, M2Config):
        raise OnnxExportError(f"{model_dir} holds a {type(config).__name__}, not an M2 model.")
    head = _head_class(config)
    if config.sequence_mixer == "monarch":
        raise OnnxExportError(
            "Models with sequence_mixer='monarch' cannot be exported to ONNX: the exporter has no ONNX translation "
            "of the mixer's stable sort and would fix its padding to the traced length."
        )
    sentence_pooling = _sentence_transformers_pooling(model_dir)
    if config.max_sequence_length < 2:
        raise OnnxExportError("The model's maximum sequence length must be at least 2 for a dynamic length axis.")

    model = _load(head, model_dir)
    wrapper = _wrap(model, config, sentence_pooling, EXPORT_DTYPES[dtype])

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    try:
        _export_graph(wrapper, config, staging / ONNX_FILE, opset)
        _copy_side_files(model_dir, staging)
        _move_into_place(staging, out_dir, force)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def _load(head: type[nn.Module], model_dir: Path) -> nn.Module:
    """The model in float32, eval mode. A folder without pooler weights (an encoder saved from a head without a
    pooler, as sentence-transformers folders of masked-LM models are) is exported without the pooler; any other
    missing weight is an error, rather than an export of freshly initialised values."""
    model, loading_info = head.from_pretrained(model_dir, dtype=torch.float32, output_loading_info=True)
    missing = sorted(loading_info.get("missing_keys", ()))
    if missing and isinstance(model, M2Model) and all(key.startswith("pooler.") for key in missing):
        model.pooler = None
    elif missing:
        raise OnnxExportError(f"{model_dir} lacks weights of {type(model).__name__}: {', '.join(missing)}.")
    return model.eval()


def _wrap(model: nn.Module, config: M2Config, sentence_pooling: str | None, dtype: torch.dtype) -> _ExportedHead:
    """The module to trace: `model` (changed in place) with fixed filters computed in float32, cast to `dtype`."""
    fixed_filters = fix_implicit_filters(model)
    model.to(dtype)
    for fixed in fixed_filters:
        fixed.keep_filters_in_float32()
    if isinstance(model, M2Model):
        output_names = ["last_hidden_state"] + (["pooler_output"] if model.pooler is not None else [])
    else:
        output_names = ["logits"]
    if sentence_pooling is not None:
        if not isinstance(model, M2Model) or (sentence_pooling == "pooler" and model.pooler is None):
            raise OnnxExportError("A sentence-transformers folder with a Dense module must hold an M2Model with pooler.")
        output_names.append("sentence_embedding")
    input_names = ["input_ids", "attention_mask"] + (["token_type_ids"] if config.type_vocab_size > 0 else [])
    return _ExportedHead(model, output_names, input_names, sentence_pooling).eval()


def _export_graph(wrapper: _ExportedHead, config: M2Config, path: Path, opset: int) -> None:
    max_length = config.max_sequence_length
    batch = torch.export.Dim("batch", min=1, max=4096)
    sequence = torch.export.Dim("sequence", min=1, max=max_length)
    example_length = min(max_length, 8)
    example = torch.randint(1, config.vocab_size, (2, example_length))
    args = (example, torch.ones_like(example))
    if "token_type_ids" in wrapper.input_names:
        args += (torch.zeros_like(example),)
    dynamic_shapes = tuple({0: batch, 1: sequence} for _ in args)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                wrapper,
                args,
                dynamo=True,
                dynamic_shapes=dynamic_shapes,
                input_names=wrapper.input_names,
                output_names=wrapper.output_names,
                opset_version=opset,
                optimize=True,
                verbose=False,
            )
    except Exception as error:  # the exporter raises many types; report them as one
        raise OnnxExportError(f"torch.onnx.export failed: {type(error).__name__}: {error}") from error
    _clear_intermediate_shapes(program)
    program.save(str(path))


def quantize_dynamic_int8(onnx_path: str | os.PathLike, output_path: str | os.PathLike) -> Path:
    """Quantise an exported `model.onnx` with ONNX Runtime's dynamic quantisation (`quantize_dynamic`: int8
    weights of the MatMul and Gemm nodes, i.e. the dense projections, activations quantised at run time) into
    `output_path`. The three-tap depthwise short convolutions stay float32 (quantising them costs accuracy and
    saves nothing), and ONNX Runtime has no quantised Einsum for the block-diagonal projections.

    ONNX Runtime's quantiser re-runs shape inference and stores shape annotations that again tie the inverse
    FFTs' outputs to the wrong length (see `_clear_intermediate_shapes`); they are dropped from its output, so the
    quantised file keeps the dynamic length axis.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    output_path = Path(output_path)
    quantize_dynamic(
        str(onnx_path), str(output_path), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"]
    )
    model = onnx.load(str(output_path))
    del model.graph.value_info[:]
    onnx.save(model, str(output_path))
    return output_path


def _copy_side_files(model_dir: Path, staging: Path) -> None:
    """Copy the config and the tokenizer files (not the weights, nor the sentence-transformers modules: the
    exported folder is an ONNX model, not a sentence-transformers one)."""
    for path in sorted(model_dir.iterdir()):
        if path.is_file() and (path.name in COPIED_FILES or path.name.startswith(COPIED_PREFIXES)):
            shutil.copy2(path, staging / path.name)


def _move_into_place(staging: Path, destination: Path, force: bool) -> None:
    """Rename `staging` to `destination`; an existing destination is replaced only with `force`."""
    if not destination.exists():
        os.replace(staging, destination)
        return
    if not force:
        raise FileExistsError(f"{destination} already exists; pass --force (force=True) to replace it.")
    replaced = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", suffix=".replaced", dir=destination.parent))
    os.replace(destination, replaced / destination.name)
    try:
        os.replace(staging, destination)
    except OSError:
        os.replace(replaced / destination.name, destination)  # put the original back
        raise
    finally:
        shutil.rmtree(replaced, ignore_errors=True)
