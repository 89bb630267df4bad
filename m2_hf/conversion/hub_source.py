"""Original checkpoints named by a Hugging Face Hub id: find them in the cache or download what conversion needs.

A source is a local path when it exists (a file or folder), as in transformers' `from_pretrained`; otherwise it
must be a Hub repository id (`ORG/NAME`). `download_original` lists the repository's files at the revision, picks
the weights file by the rule for folders (`model.safetensors`, `pytorch_model.bin`, or the only `.safetensors` /
`.bin` / `.pt` / `.pth` file at the top level) and downloads it with the original `config.json`, through
`huggingface_hub.snapshot_download`. That honours `HF_HUB_OFFLINE`, the cache location (`HF_HOME`,
`HF_HUB_CACHE`, or `cache_dir`), tokens (`HF_TOKEN`, `hf auth login`, or `token`) and revisions (branch, tag or
commit). When the Hub cannot be reached (offline mode, no network) the cached snapshot of the revision is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import snapshot_download
from huggingface_hub.errors import (
    DryRunError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import validate_repo_id

from .checkpoint import ORIGINAL_CONFIG_FILE, WEIGHT_SUFFIXES, choose_weights_file
from .original import ConversionError
from .presets import PRESETS, Preset

_LISTED_PATTERNS = [ORIGINAL_CONFIG_FILE, *(f"*{suffix}" for suffix in WEIGHT_SUFFIXES)]
_LOGIN_HINT = "log in with `hf auth login`, set HF_TOKEN or pass a token"


@dataclass(frozen=True)
class HubCheckpoint:
    """An original checkpoint downloaded from (or found in the cache of) a Hub repository.

    Attributes:
        repo_id: the repository id.
        commit: the commit the revision resolved to.
        folder: the local snapshot folder holding `weights_file` and, when the repository has it, `config.json`.
        weights_file: the weights file's name.
    """

    repo_id: str
    commit: str
    folder: Path
    weights_file: str

    @property
    def weights_path(self) -> Path:
        return self.folder / self.weights_file


def is_hub_id(source: str | Path) -> bool:
    """Whether `source` is read from the Hub: it does not exist locally and is a valid repository id."""
    if isinstance(source, Path) or Path(source).exists():
        return False
    try:
        validate_repo_id(source)
    except HFValidationError:
        return False
    return True


def preset_for_repo(repo_id: str) -> Preset | None:
    """The preset of the released checkpoint published as `repo_id` (case-insensitive), if there is one."""
    for preset in PRESETS.values():
        if preset.weights.lower() == repo_id.lower():
            return preset
    return None


def download_original(
    repo_id: str,
    *,
    revision: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | Path | None = None,
) -> HubCheckpoint:
    """Download (or find in the cache) the weights file and original config of the Hub repository `repo_id`.

    Raises:
        ConversionError: the repository or revision does not exist (or is private or gated without a valid
            token), it holds no single weights file, or the Hub cannot be reached and the cache holds no snapshot
            of the revision.
    """
    where = f"{repo_id} at revision {revision or 'main'}"
    common = {"repo_id": repo_id, "revision": revision, "token": token, "cache_dir": cache_dir}
    try:
        listing = snapshot_download(**common, allow_patterns=_LISTED_PATTERNS, dry_run=True)
    except RevisionNotFoundError:
        raise ConversionError(f"The Hub repository {repo_id} has no revision {revision!r}.") from None
    except RepositoryNotFoundError:
        raise _repository_not_found(repo_id) from None
    except DryRunError as error:  # the Hub cannot be reached, or refused the repository
        if isinstance(error.__cause__, RepositoryNotFoundError):
            raise _repository_not_found(repo_id) from None
        return _cached_checkpoint(common, where, error.__cause__)

    names = [entry.filename for entry in listing if "/" not in entry.filename]
    weights_file = choose_weights_file(names, f"The Hub repository {where}")
    commit = next(entry.commit_hash for entry in listing if entry.filename == weights_file)
    files = [name for name in (ORIGINAL_CONFIG_FILE, weights_file) if name in names]
    folder = snapshot_download(**{**common, "revision": commit}, allow_patterns=files)
    return HubCheckpoint(repo_id=repo_id, commit=commit, folder=Path(folder), weights_file=weights_file)


def _repository_not_found(repo_id: str) -> ConversionError:
    return ConversionError(
        f"{repo_id} is not a local file or folder, and the Hub has no model repository {repo_id} that this user may "
        f"read (if it is private or gated, {_LOGIN_HINT})."
    )


def _cached_checkpoint(common: dict, where: str, reason: BaseException | None) -> HubCheckpoint:
    """The checkpoint of the cached snapshot, when the Hub cannot be reached."""
    try:
        folder = Path(snapshot_download(**common, allow_patterns=[ORIGINAL_CONFIG_FILE], local_files_only=True))
    except LocalEntryNotFoundError as error:
        why = f"{type(reason).__name__}: {reason}" if reason is not None else "offline"
        raise ConversionError(
            f"{common['repo_id']} is not a local file or folder, and the Hub cannot be reached ({why}) while the "
            f"Hugging Face cache holds no complete snapshot of {where}. Connect once (without HF_HUB_OFFLINE=1) "
            "to download it, or point HF_HUB_CACHE / cache_dir at a cache that has it."
        ) from error
    names = [path.name for path in folder.iterdir() if path.is_file()]
    weights_file = choose_weights_file(names, f"The cached snapshot of {where}")
    return HubCheckpoint(repo_id=common["repo_id"], commit=folder.name, folder=folder, weights_file=weights_file)
