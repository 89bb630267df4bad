"""transformers' own common model and config tests (`ModelTesterMixin`, `ConfigTester`), made importable.

The transformers wheel ships no tests; its source distribution ships the top-level mixins. On first use this
module downloads the sdist of the *installed* transformers version with pip, extracts
`tests/test_modeling_common.py` and `tests/test_configuration_common.py` into the git-ignored folder
`tests/.hf_common/<version>/`, and adds stubs for the few sibling modules they import but that the sdist lacks.
Later runs reuse that folder.

The files are imported by path as the package `HF_TESTS_PACKAGE`; nothing is added to `sys.path`. When the
download or the import fails (no network, a missing test dependency, a changed layout), `load_hf_common_tests`
returns the reason instead of the modules, and the caller skips its tests.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
import tarfile
import tempfile
import warnings
from pathlib import Path
from types import ModuleType

import pytest
import transformers

CACHE_ROOT = Path(__file__).resolve().parent / ".hf_common"
HF_TESTS_PACKAGE = "m2_hf_transformers_common_tests"
COMMON_FILES = ("test_modeling_common.py", "test_configuration_common.py")
DOWNLOAD_TIMEOUT_S = 300

# Sibling modules of the common files that the sdist does not ship; only the names they import are provided.
STUBS = {
    "generation/test_utils.py": "class GenerationTesterMixin:\n    pass\n",
    "exporters/test_export.py": "class ExportTesterMixin:\n    pass\n",
    "utils/test_configuration_utils.py": "config_common_kwargs = {}\n",
}
COMPLETE_MARKER = ".complete"


def _download_sdist(version: str, into: Path) -> Path:
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-binary",
        ":all:",
        "--no-deps",
        "--disable-pip-version-check",
        "--retries",
        "1",
        "--timeout",
        "30",
        "--dest",
        str(into),
        f"transformers=={version}",
    ]
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S)
    if result.returncode != 0:
        last_lines = "\n".join((result.stdout + result.stderr).strip().splitlines()[-5:])
        raise RuntimeError(f"`pip download` of the transformers {version} sdist failed:\n{last_lines}")
    archives = sorted(into.glob("transformers-*.tar.gz"))
    if not archives:
        raise RuntimeError(f"`pip download` produced no transformers sdist in {into}.")
    return archives[0]


def _extract_common_files(archive: Path, package_dir: Path) -> None:
    wanted = {f"tests/{name}": name for name in COMMON_FILES}
    found = set()
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            relative = member.name.split("/", 1)[-1]
            if relative in wanted and member.isfile():
                source = tar.extractfile(member)
                (package_dir / wanted[relative]).write_bytes(source.read())
                found.add(relative)
    missing = sorted(set(wanted) - found)
    if missing:
        raise RuntimeError(f"{archive.name} lacks {', '.join(missing)}.")


def _build_package(version: str, target: Path) -> None:
    """Download, extract and stub into a scratch folder, then move it to `target` in one rename."""
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE_ROOT, prefix=".partial-") as scratch:
        scratch = Path(scratch)
        archive = _download_sdist(version, scratch / "download")
        package_dir = scratch / "package"
        package_dir.mkdir()
        (package_dir / "__init__.py").write_text("")
        _extract_common_files(archive, package_dir)
        for relative, text in STUBS.items():
            path = package_dir / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            (path.parent / "__init__.py").write_text("")
            path.write_text(text)
        (package_dir / COMPLETE_MARKER).write_text(f"transformers {version} sdist\n")
        try:
            os.replace(package_dir, target)
        except OSError:
            # Another process finished first; its copy is as good as ours.
            if not (target / COMPLETE_MARKER).is_file():
                raise RuntimeError(f"{target} exists but is incomplete; delete it to download again.") from None


def _import_package(package_dir: Path) -> ModuleType:
    if HF_TESTS_PACKAGE in sys.modules:
        return sys.modules[HF_TESTS_PACKAGE]
    spec = importlib.util.spec_from_file_location(
        HF_TESTS_PACKAGE, package_dir / "__init__.py", submodule_search_locations=[str(package_dir)]
    )
    package = importlib.util.module_from_spec(spec)
    sys.modules[HF_TESTS_PACKAGE] = package
    try:
        spec.loader.exec_module(package)
    except BaseException:
        del sys.modules[HF_TESTS_PACKAGE]
        raise
    return package


def load_hf_common_tests() -> tuple[ModuleType | None, ModuleType | None, str]:
    """The `test_modeling_common` and `test_configuration_common` modules of the installed transformers version.

    Returns `(modeling_common, configuration_common, "")`, or `(None, None, reason)` when they are unavailable.
    """
    version = transformers.__version__
    target = CACHE_ROOT / version
    try:
        if not (target / COMPLETE_MARKER).is_file():
            _build_package(version, target)
        with warnings.catch_warnings():
            # The mixins use marks that transformers registers in its own pytest configuration.
            warnings.simplefilter("ignore", pytest.PytestUnknownMarkWarning)
            _import_package(target)
            modeling_common = importlib.import_module(f"{HF_TESTS_PACKAGE}.test_modeling_common")
            configuration_common = importlib.import_module(f"{HF_TESTS_PACKAGE}.test_configuration_common")
    except Exception as error:  # noqa: BLE001 - any failure here means "cannot run these tests"
        reason = (
            f"transformers {version}'s common model tests are unavailable "
            f"(they come from its sdist, fetched into {target}): {type(error).__name__}: {error}"
        )
        return None, None, reason
    return modeling_common, configuration_common, ""
