"""The `m2-hf` command line.

    m2-hf convert SRC DST [--revision REV] [--config ORIGINAL_CONFIG_JSON | --preset NAME]
                          [--dtype float32|bfloat16] [--force] [--[no-]pad-to-max-length]
                          [--push-to-hub REPO_ID [--private]] [--quiet]
    m2-hf presets
    m2-hf model-cards DIR
    m2-hf export-remote-code DST
    m2-hf export-onnx MODEL_DIR OUT_DIR [--opset N] [--dtype float32|float16] [--force]

Each command is a subparser registered in `build_parser`; its handler takes the parsed arguments and returns
the exit status.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from .conversion import PRESETS, ConversionError, convert_checkpoint, write_preset_cards
from .conversion.convert import DTYPES
from .hub import push_folder
from .onnx_export import EXPORT_DTYPES, OnnxExportError
from .remote_code import RemoteCodeError, export_remote_code


def _convert(args: argparse.Namespace) -> int:
    destination = convert_checkpoint(
        args.src,
        args.dst,
        revision=args.revision,
        original_config=args.config,
        preset=args.preset,
        dtype=args.dtype,
        pad_to_max_length=args.pad_to_max_length,
        force=args.force,
        show_progress=not args.quiet,
    )
    if not args.quiet:
        print(f"Converted {args.src} -> {destination}")
    if args.push_to_hub is None:
        return 0
    try:
        commit = push_folder(destination, args.push_to_hub, private=args.private or None)
    except ValueError as error:  # the folder is not complete enough to publish; nothing was uploaded
        print(f"error: not uploaded: {error}\nThe converted folder is kept at {destination}.", file=sys.stderr)
        return 1
    if not args.quiet:
        print(f"Uploaded {destination} -> {getattr(commit, 'commit_url', args.push_to_hub)}")
    return 0


def _presets(args: argparse.Namespace) -> int:
    width = max(len(name) for name in PRESETS)
    for preset in PRESETS.values():
        print(f"{preset.name:<{width}}  {preset.kind:<9}  length {preset.max_length:>6}  {preset.weights}")
    return 0


def _model_cards(args: argparse.Namespace) -> int:
    for path in write_preset_cards(args.directory):
        print(path)
    return 0


def _export_remote_code(args: argparse.Namespace) -> int:
    for path in export_remote_code(args.dst):
        print(path)
    return 0


def _export_onnx(args: argparse.Namespace) -> int:
    from .onnx_export import export_onnx

    print(export_onnx(args.model_dir, args.out_dir, opset=args.opset, dtype=args.dtype, force=args.force) / "model.onnx")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="m2-hf", description="Monarch Mixer (M2) models for Hugging Face Transformers."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    convert = commands.add_parser(
        "convert",
        help="convert an original M2-BERT checkpoint into a transformers folder",
        description=(
            "Convert an original M2-BERT checkpoint (composer .pt, pytorch_model.bin or .safetensors, a folder "
            "holding one with its config.json, or a Hub repository holding them) into a folder that AutoModel / "
            "AutoModelForMaskedLM load after `import m2_hf`. Hub ids honour HF_HUB_OFFLINE, HF_HUB_CACHE and "
            "HF_TOKEN; the ids of the released checkpoints (m2-hf presets) pick their preset."
        ),
    )
    convert.add_argument(
        "src",
        metavar="SRC",
        help="checkpoint file, folder with a checkpoint and config.json, or Hub repository id ORG/NAME (an existing "
        "local path wins)",
    )
    convert.add_argument("dst", metavar="DST", help="output folder")
    convert.add_argument("--revision", metavar="REV", help="branch, tag or commit of a Hub SRC (default: main)")
    source_config = convert.add_mutually_exclusive_group()
    source_config.add_argument("--config", metavar="ORIGINAL_CONFIG_JSON", help="the original config.json")
    source_config.add_argument(
        "--preset", metavar="NAME", choices=list(PRESETS), help=f"a released checkpoint's config: {', '.join(PRESETS)}"
    )
    convert.add_argument("--dtype", choices=list(DTYPES), default="float32", help="dtype of the saved weights")
    convert.add_argument(
        "--pad-to-max-length",
        action=argparse.BooleanOptionalAction,
        help="pad every input to the maximum length inside the model (default: only for the long-context presets)",
    )
    convert.add_argument("--force", action="store_true", help="replace DST if it exists")
    convert.add_argument(
        "--push-to-hub",
        metavar="REPO_ID",
        help="after a successful conversion, upload DST to this Hub repository (created if needed)",
    )
    convert.add_argument("--private", action="store_true", help="create the --push-to-hub repository as private")
    convert.add_argument("-q", "--quiet", action="store_true", help="no progress bars or messages")
    convert.set_defaults(handler=_convert)

    presets = commands.add_parser("presets", help="list the released checkpoints --preset knows")
    presets.set_defaults(handler=_presets)

    cards = commands.add_parser("model-cards", help="write the model cards of the released checkpoints")
    cards.add_argument("directory", metavar="DIR", help="output folder, e.g. model_cards/")
    cards.set_defaults(handler=_model_cards)

    remote_code = commands.add_parser(
        "export-remote-code",
        help="make a saved M2 folder loadable with trust_remote_code=True, without m2_hf installed",
        description=(
            "Write the package's configuration and modeling code (pure-PyTorch operators) into a folder saved with "
            "save_pretrained, and map the Auto classes to it in its config.json (auto_map)."
        ),
    )
    remote_code.add_argument("dst", metavar="DST", help="a folder written by save_pretrained or m2-hf convert")
    remote_code.set_defaults(handler=_export_remote_code)

    onnx = commands.add_parser(
        "export-onnx",
        help="export an M2 text model folder to ONNX (dynamic batch and sequence length)",
        description=(
            "Write OUT_DIR/model.onnx for the encoder or classification head saved in MODEL_DIR, with dynamic batch "
            "and sequence-length axes up to the model's maximum length, and copy the config and tokenizer files "
            "beside it."
        ),
    )
    onnx.add_argument("model_dir", metavar="MODEL_DIR", help="a folder written by save_pretrained or m2-hf convert")
    onnx.add_argument("out_dir", metavar="OUT_DIR", help="output folder")
    onnx.add_argument("--opset", type=int, default=None, help="ONNX opset (default and minimum: 20)")
    onnx.add_argument("--dtype", choices=list(EXPORT_DTYPES), default="float32", help="dtype of the weights")
    onnx.add_argument("--force", action="store_true", help="replace OUT_DIR if it exists")
    onnx.set_defaults(handler=_export_onnx)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with `argv` (default: `sys.argv[1:]`) and return the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO, format="%(message)s")
    try:
        return args.handler(args)
    except (ConversionError, RemoteCodeError, OnnxExportError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
