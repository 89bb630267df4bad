"""Converting from Hub ids, offline, from a hub cache built in a temporary folder; `--push-to-hub` up to the upload."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
import torch
from huggingface_hub import HfApi, ModelCard
from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForMaskedLM, BertTokenizer

import m2_hf
from m2_hf import cli
from m2_hf.conversion import PRESETS, ConversionError, load_original, preset_for_repo
from m2_hf.hub import upload_files

REPO_ROOT = Path(__file__).resolve().parents[2]
REPO_ID = "hazy-fixtures/m2-bert-tiny"


def commit_hash(label: str) -> str:
    return hashlib.sha1(label.encode()).hexdigest()


def add_snapshot(cache: Path, repo_id: str, files: dict[str, Path], commit: str, refs=("main",)) -> Path:
    """Add one commit of `repo_id` to the hub cache `cache` in the standard layout: the files as content-addressed
    blobs, `snapshots/<commit>/` linking to them, and `refs/<branch>` naming the commit."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for name, source in files.items():
        data = source.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir(exist_ok=True)
    for ref in refs:
        (repo / "refs" / ref).write_text(commit)
    return snapshot


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty hub cache that huggingface_hub uses by default, in offline mode."""
    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def convert(*args) -> int:
    return cli.main(["convert", *map(str, args), "--quiet"])


def assert_same_folder_contents(converted: Path, reference: Path) -> None:
    """Identical weights (bit for bit) and config."""
    ours, theirs = load_file(converted / "model.safetensors"), load_file(reference / "model.safetensors")
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name
    assert json.loads((converted / "config.json").read_text()) == json.loads((reference / "config.json").read_text())


@pytest.mark.parametrize("weights", ["composer-mlm.pt", "pytorch_model.bin"])
def test_hub_id_converts_offline_exactly_like_the_files(weights, fixture_dir, hub_cache, tmp_path):
    commit = commit_hash(weights)
    add_snapshot(
        hub_cache, REPO_ID, {"config.json": fixture_dir / "config.json", weights: fixture_dir / weights}, commit
    )
    assert convert(REPO_ID, tmp_path / "by-id") == 0
    assert convert(fixture_dir / weights, tmp_path / "by-file", "--config", fixture_dir / "config.json") == 0
    assert_same_folder_contents(tmp_path / "by-id", tmp_path / "by-file")

    card = ModelCard.load(tmp_path / "by-id" / "README.md")
    assert card.data.base_model == REPO_ID and card.data.base_model_revision == commit
    assert f"{weights} of {REPO_ID} at commit {commit}" in card.text
    assert ModelCard.load(tmp_path / "by-file" / "README.md").data.base_model is None


def test_revisions_select_their_snapshot(fixture_dir, hub_cache, tmp_path):
    config = {"config.json": fixture_dir / "config.json"}
    main, tagged = commit_hash("main"), commit_hash("v1")
    add_snapshot(hub_cache, REPO_ID, {**config, "pytorch_model.bin": fixture_dir / "pytorch_model.bin"}, main)
    add_snapshot(hub_cache, REPO_ID, {**config, "m2.pt": fixture_dir / "composer-mlm.pt"}, tagged, refs=("v1",))

    assert convert(REPO_ID, tmp_path / "main") == 0
    assert convert(REPO_ID, tmp_path / "v1", "--revision", "v1") == 0
    assert convert(REPO_ID, tmp_path / "by-commit", "--revision", tagged) == 0
    assert type(AutoModel.from_pretrained(tmp_path / "main")) is m2_hf.M2Model
    assert type(AutoModelForMaskedLM.from_pretrained(tmp_path / "v1")) is m2_hf.M2ForMaskedLM
    assert_same_folder_contents(tmp_path / "by-commit", tmp_path / "v1")
    assert ModelCard.load(tmp_path / "v1" / "README.md").data.base_model_revision == tagged


def test_load_original_equals_the_converted_folder(fixture_dir, hub_cache, tmp_path):
    files = {"config.json": fixture_dir / "config.json", "composer-mlm.pt": fixture_dir / "composer-mlm.pt"}
    add_snapshot(hub_cache, REPO_ID, files, commit_hash("main"))
    model = load_original(REPO_ID, cache_dir=hub_cache)
    assert convert(REPO_ID, tmp_path / "folder") == 0
    loaded = AutoModelForMaskedLM.from_pretrained(tmp_path / "folder")
    assert type(model) is type(loaded) is m2_hf.M2ForMaskedLM and not model.training
    assert model.state_dict().keys() == loaded.state_dict().keys()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    ignored = {"_name_or_path", "transformers_version"}
    ours = {k: v for k, v in model.config.to_dict().items() if k not in ignored}
    assert ours == {k: v for k, v in loaded.config.to_dict().items() if k not in ignored}
    assert not any(path.name != "hub-cache" and path.name != "folder" for path in tmp_path.iterdir())


def test_released_ids_pick_their_preset(fixture_dir, hub_cache, tmp_path, capsys):
    assert all(preset_for_repo(preset.weights.upper()) is preset for preset in PRESETS.values())
    assert preset_for_repo(REPO_ID) is None
    repo_id = PRESETS["m2-bert-80m-2k-retrieval"].weights
    files = {"config.json": fixture_dir / "config.json", "pytorch_model.bin": fixture_dir / "pytorch_model.bin"}
    add_snapshot(hub_cache, repo_id, files, commit_hash("retrieval"))
    # The preset's architecture (width 768) does not fit the tiny fixture weights: the preset was used.
    assert convert(repo_id, tmp_path / "preset") == 1
    assert "hidden_size: config 768, checkpoint 64" in capsys.readouterr().err
    # An explicit config replaces the preset.
    assert convert(repo_id, tmp_path / "config", "--config", fixture_dir / "config.json") == 0
    assert not AutoModel.from_pretrained(tmp_path / "config").config.pad_to_max_length


def test_console_command_reads_the_cache_named_by_the_environment(fixture_dir, tmp_path):
    cache = tmp_path / "hub-cache"
    files = {"config.json": fixture_dir / "config.json", "pytorch_model.bin": fixture_dir / "pytorch_model.bin"}
    commit = commit_hash("env")
    add_snapshot(cache, REPO_ID, files, commit)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    command = [sys.executable, "-m", "m2_hf.cli", "convert", REPO_ID, str(tmp_path / "out")]
    result = subprocess.run(command, check=False, capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert ModelCard.load(tmp_path / "out" / "README.md").data.base_model_revision == commit


# --- errors: clear, and nothing left behind ----------------------------------------------------------------------


def _not_an_m2_config(fixture_dir: Path, tmp_path: Path) -> Path:
    config = json.loads((fixture_dir / "config.json").read_text())
    config["monarch_mixer_sequence_mixing"] = False
    path = tmp_path / "bert-config.json"
    path.write_text(json.dumps(config))
    return path


@pytest.mark.parametrize(
    "layout, message",
    [
        ("uncached", r"the Hub cannot be reached .* holds no complete snapshot of hazy-fixtures/m2-bert-tiny"),
        ("bert", r"Only M2 checkpoints convert"),
        ("no-weights", r"cached snapshot of hazy-fixtures/m2-bert-tiny at revision main holds no weights file"),
        ("unknown-revision", r"holds no complete snapshot of hazy-fixtures/m2-bert-tiny at revision v9"),
    ],
)
def test_offline_failures_are_clear_and_leave_nothing(layout, message, fixture_dir, hub_cache, tmp_path, capsys):
    weights = {"pytorch_model.bin": fixture_dir / "pytorch_model.bin"}
    if layout == "bert":
        add_snapshot(hub_cache, REPO_ID, {"config.json": _not_an_m2_config(fixture_dir, tmp_path), **weights}, "a" * 40)
    elif layout == "no-weights":
        add_snapshot(hub_cache, REPO_ID, {"config.json": fixture_dir / "config.json"}, "b" * 40)
    elif layout == "unknown-revision":
        add_snapshot(hub_cache, REPO_ID, {"config.json": fixture_dir / "config.json", **weights}, "c" * 40)
    before = sorted(path.name for path in tmp_path.iterdir())
    revision = ["--revision", "v9"] if layout == "unknown-revision" else []
    assert convert(REPO_ID, tmp_path / "converted", *revision) == 1
    assert re.search(message, capsys.readouterr().err)
    assert sorted(path.name for path in tmp_path.iterdir()) == before


def test_local_paths_win_and_revisions_need_a_hub_id(fixture_dir, hub_cache, tmp_path, monkeypatch, capsys):
    local = tmp_path / REPO_ID  # a folder named like the repository
    local.mkdir(parents=True)
    shutil.copy(fixture_dir / "config.json", local / "config.json")
    shutil.copy(fixture_dir / "pytorch_model.bin", local / "pytorch_model.bin")
    monkeypatch.chdir(tmp_path)
    assert convert(REPO_ID, tmp_path / "converted") == 0  # no cache entry is needed
    assert ModelCard.load(tmp_path / "converted" / "README.md").data.base_model is None
    assert convert(REPO_ID, tmp_path / "again", "--revision", "main") == 1
    assert "applies to Hub ids only" in capsys.readouterr().err
    assert convert("not a path", tmp_path / "none") == 1
    assert "not a path does not exist" in capsys.readouterr().err


def _http_error(error_class, message):
    return error_class(message, response=SimpleNamespace(headers={}, request=None, status_code=404))


@pytest.mark.parametrize(
    "error, message",
    [
        (RepositoryNotFoundError, r"the Hub has no model repository hazy-fixtures/m2-bert-tiny .*hf auth login"),
        (RevisionNotFoundError, r"has no revision 'v2'"),
    ],
)
def test_missing_repositories_and_revisions_online(error, message, hub_cache, tmp_path, monkeypatch):
    """Online, the Hub's answer for a missing repository or revision (raised where snapshot_download asks for the
    repository's info) becomes a clear error."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)

    def repo_info(self, repo_id, **kwargs):
        raise _http_error(error, f"{repo_id}: 404")

    monkeypatch.setattr(HfApi, "repo_info", repo_info)
    with pytest.raises(ConversionError, match=message):
        load_original(REPO_ID, revision="v2", cache_dir=hub_cache)


# --- --push-to-hub ---------------------------------------------------------------------------------------------


class RecordingHfApi:
    """Stands in for `HfApi` in `m2_hf.hub`: records the calls (in the class attribute `calls`, which the
    `recording_api` fixture resets) and uploads nothing."""

    calls: list[tuple[str, dict]]

    def create_repo(self, repo_id, **kwargs):
        RecordingHfApi.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        return SimpleNamespace(repo_id=repo_id)

    def upload_folder(self, **kwargs):
        RecordingHfApi.calls.append(("upload_folder", {**kwargs, "files": upload_files(kwargs["folder_path"])}))
        return SimpleNamespace(commit_url=f"https://huggingface.co/{kwargs['repo_id']}/commit/0")


@pytest.fixture
def recording_api(monkeypatch):
    RecordingHfApi.calls = []
    monkeypatch.setattr(m2_hf.hub, "HfApi", RecordingHfApi)
    return RecordingHfApi


def _save_tiny_tokenizer(directory, config):
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(config.vocab_size - 5)]
    BertTokenizer(vocab={word: index for index, word in enumerate(words)}).save_pretrained(str(directory))
    return True


def test_push_to_hub_uploads_the_finished_folder(fixture_dir, hub_cache, tmp_path, recording_api, monkeypatch):
    monkeypatch.setattr(m2_hf.conversion.convert, "save_tokenizer", _save_tiny_tokenizer)
    files = {"config.json": fixture_dir / "config.json", "pytorch_model.bin": fixture_dir / "pytorch_model.bin"}
    add_snapshot(hub_cache, REPO_ID, files, commit_hash("push"))
    destination = tmp_path / "converted"
    assert convert(REPO_ID, destination, "--push-to-hub", "my-org/m2-tiny", "--private") == 0
    (create, create_args), (upload, upload_args) = recording_api.calls
    assert create == "create_repo" and create_args["repo_id"] == "my-org/m2-tiny" and create_args["private"] is True
    assert upload == "upload_folder" and upload_args["repo_id"] == "my-org/m2-tiny"
    assert Path(upload_args["folder_path"]) == destination
    assert {"config.json", "model.safetensors", "README.md", "tokenizer_config.json"} <= set(upload_args["files"])


def test_push_to_hub_uploads_nothing_when_conversion_or_checks_fail(
    fixture_dir, tmp_path, recording_api, hub_cache, capsys
):
    # The conversion fails: nothing is created or uploaded.
    assert convert(fixture_dir / "pytorch_model.bin", tmp_path / "a", "--push-to-hub", "my-org/x") == 1
    assert recording_api.calls == [] and not (tmp_path / "a").exists()
    capsys.readouterr()
    # The conversion succeeds, but the folder has no tokenizer (the fixture's vocabulary is too small for it).
    args = [fixture_dir / "pytorch_model.bin", tmp_path / "b", "--config", fixture_dir / "config.json"]
    assert convert(*args, "--push-to-hub", "my-org/x") == 1
    error = capsys.readouterr().err
    assert "not uploaded" in error and "tokenizer_config.json" in error and str(tmp_path / "b") in error
    assert recording_api.calls == [] and (tmp_path / "b" / "model.safetensors").is_file()


def test_online_only_the_config_and_the_chosen_weights_file_are_downloaded(fixture_dir, tmp_path, monkeypatch):
    """The repository's listing (snapshot_download's dry run) decides which weights file conversion needs; the
    download then asks for that file and the config only, at the listed commit."""
    from huggingface_hub.utils import filter_repo_objects

    from m2_hf.conversion import hub_source

    commit = commit_hash("online")
    repository = ["config.json", "pytorch_model.bin", "training_args.bin", "optimizer.pt", "README.md", "old/m.pt"]
    downloads = []

    def snapshot_download(repo_id, *, revision, allow_patterns, dry_run=False, **kwargs):
        matched = list(filter_repo_objects(repository, allow_patterns=allow_patterns))
        if dry_run:
            return [SimpleNamespace(filename=name, commit_hash=commit) for name in matched]
        downloads.append((revision, matched))
        folder = tmp_path / "snapshot"
        folder.mkdir()
        shutil.copy(fixture_dir / "config.json", folder / "config.json")
        shutil.copy(fixture_dir / "pytorch_model.bin", folder / "pytorch_model.bin")
        return str(folder)

    monkeypatch.setattr(hub_source, "snapshot_download", snapshot_download)
    model = load_original(REPO_ID, revision="main")
    assert downloads == [(commit, ["config.json", "pytorch_model.bin"])]
    assert type(model) is m2_hf.M2Model
