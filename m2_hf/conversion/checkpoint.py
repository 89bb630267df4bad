"""Find and read original M2-BERT checkpoints without executing code from them.

Three formats are read:

- composer training checkpoints (`.pt`): a pickle whose weights sit under `state.model`, keys prefixed `model.`;
- pickled state dicts (`pytorch_model.bin`, `.pt`, `.pth`), keys `bert.*` (optionally `module.`-prefixed);
- safetensors state dicts.

Pickles are read with `torch.load(weights_only=True)`, which rebuilds tensors and plain containers only. On top
of that, the NumPy types of a composer checkpoint's saved random-number-generator state are allowed by name.
A pickle that needs any other global is refused, naming that global.
"""

from __future__ import annotations

import importlib
import json
import logging
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from tqdm.auto import tqdm

from .original import ConversionError

logger = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
PREFERRED_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
ORIGINAL_CONFIG_FILE = "config.json"


@dataclass
class OriginalCheckpoint:
    """An original checkpoint read into memory.

    Attributes:
        path: the weights file.
        state_dict: its tensors, with the keys as stored (prefixes are stripped during conversion).
        config_path: the original config.json in the source folder, if the source is a folder that has one.
    """

    path: Path
    state_dict: dict[str, torch.Tensor]
    config_path: Path | None


def _numpy_globals() -> list:
    """The NumPy globals of pickled arrays and dtypes (as in NumPy's saved RNG state), under both module names
    that NumPy 1 and NumPy 2 pickles use."""
    try:
        multiarray = importlib.import_module("numpy._core.multiarray")
    except ImportError:  # NumPy < 1.26
        multiarray = importlib.import_module("numpy.core.multiarray")
    allowed: list = [np.ndarray, np.dtype]
    for function in ("_reconstruct", "scalar"):
        for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            allowed.append((getattr(multiarray, function), f"{module}.{function}"))
    for dtype in (np.bool_, np.int32, np.int64, np.uint32, np.uint64, np.float32, np.float64):
        dtype_class = type(np.dtype(dtype))
        allowed.append((dtype_class, f"numpy.dtypes.{dtype_class.__name__}"))
    return allowed


def _allowed_global_names() -> set[str]:
    return {
        entry[1] if isinstance(entry, tuple) else f"{entry.__module__}.{entry.__qualname__}"
        for entry in _numpy_globals()
    }


def _refused_globals(path: Path, error: pickle.UnpicklingError) -> list[str]:
    """The globals a pickle needs beyond the allowed ones (empty when the failure was something else)."""
    try:
        needed = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except (ValueError, RuntimeError):  # not a zip-format checkpoint: fall back to the unpickler's message
        needed = re.findall(r"Unsupported global: GLOBAL (\S+) was not an allowed global", str(error))
    return sorted(set(needed) - _allowed_global_names())


def _load_pickle(path: Path) -> object:
    is_zip = zipfile.is_zipfile(path)
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as error:
        refused = _refused_globals(path, error)
        if refused:
            raise ConversionError(
                f"Refusing to read {path}: its pickle references {', '.join(refused)}, which is not on the list of "
                "allowed globals (tensors, plain containers and NumPy arrays). Unpickling it could run arbitrary "
                "code. If you trust the file, re-save only its weights, e.g. "
                "torch.save(torch.load(path, weights_only=False)['state']['model'], 'weights.pt'), and convert that."
            ) from None
        raise ConversionError(f"{path} is truncated or corrupt and cannot be read: {_last_line(error)}") from None
    except Exception as error:  # the reader's errors for damaged files vary: RuntimeError, EOFError, KeyError, ...
        raise ConversionError(f"{path} is truncated or corrupt and cannot be read: {_last_line(error)}") from error


def _last_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def _state_dict_of(loaded: object, path: Path) -> dict[str, torch.Tensor]:
    """The model weights of a loaded pickle: `state.model` of a composer checkpoint, or the dict itself."""
    if isinstance(loaded, dict) and isinstance(loaded.get("state"), dict) and "model" in loaded["state"]:
        loaded = loaded["state"]["model"]
    if not isinstance(loaded, dict) or not loaded:
        raise ConversionError(f"{path} holds no state dict (expected a dict of tensors or a composer checkpoint).")
    not_tensors = [key for key, value in loaded.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise ConversionError(f"{path}: these state-dict entries are not tensors: {', '.join(map(str, not_tensors))}")
    return loaded


def progress(items, description: str, enabled: bool):
    """`items` wrapped in a progress bar when `enabled` (shown on terminals only)."""
    return tqdm(items, desc=description, unit="tensor", disable=None if enabled else True)


def _load_safetensors(path: Path, show_progress: bool) -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(path), framework="pt") as reader:
            keys = list(reader.keys())
            return {key: reader.get_tensor(key) for key in progress(keys, "Reading tensors", show_progress)}
    except Exception as error:  # SafetensorError, OSError
        raise ConversionError(f"{path} is truncated or corrupt and cannot be read: {_last_line(error)}") from error


def choose_weights_file(names: list[str], where: str) -> str:
    """The weights file among the file `names` of a folder or repository `where`: model.safetensors,
    pytorch_model.bin, or the only weights file."""
    for name in PREFERRED_WEIGHT_FILES:
        if name in names:
            return name
    candidates = sorted(name for name in names if name.endswith(WEIGHT_SUFFIXES))
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise ConversionError(f"{where} holds no weights file ({', '.join('*' + s for s in WEIGHT_SUFFIXES)}).")
    raise ConversionError(
        f"{where} holds several weights files ({', '.join(candidates)}); pass the one to convert as SRC."
    )


def find_weights_file(folder: Path) -> Path:
    """The weights file of a checkpoint folder (see `choose_weights_file`)."""
    return folder / choose_weights_file([p.name for p in folder.iterdir() if p.is_file()], str(folder))


def read_checkpoint(source: str | Path, show_progress: bool = False) -> OriginalCheckpoint:
    """Read an original checkpoint: a weights file, or a folder with one and (optionally) the original config.json.

    Raises `ConversionError` for a missing, truncated, corrupt or unsafe file.
    """
    source = Path(source)
    if not source.exists():
        raise ConversionError(f"{source} does not exist.")
    config_path = None
    if source.is_dir():
        if (source / ORIGINAL_CONFIG_FILE).is_file():
            config_path = source / ORIGINAL_CONFIG_FILE
        path = find_weights_file(source)
    else:
        path = source
    logger.info("Reading %s", path)
    if path.suffix == ".safetensors":
        state_dict = _load_safetensors(path, show_progress)
    else:
        state_dict = _state_dict_of(_load_pickle(path), path)
    return OriginalCheckpoint(path=path, state_dict=state_dict, config_path=config_path)


def read_original_config(path: str | Path) -> dict:
    """An original config.json as a dict, with a clear error for unreadable or already converted files."""
    path = Path(path)
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConversionError(f"Cannot read the original config {path}: {error}") from error
    if not isinstance(config, dict):
        raise ConversionError(f"{path} is not a config (expected a JSON object).")
    if config.get("model_type") == "m2":
        raise ConversionError(f"{path} is already an m2_hf config; load that folder with from_pretrained instead.")
    return config
