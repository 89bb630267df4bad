"""Export a saved M2 folder as a self-contained remote-code model.

`export_remote_code(folder)` copies the package's configuration and modeling sources into a folder written by
`save_pretrained` and maps the transformers Auto classes to them in its `config.json` (`auto_map`), so that

    AutoModelForMaskedLM.from_pretrained(folder, trust_remote_code=True)

loads the model where m2_hf is not installed. The files are generated from the installed package's sources on
every export, so they never drift from it:

- the modules of the mapped classes and everything they import from the package are copied, with the
  package-relative imports rewritten to the flat folder layout of transformers' dynamic modules
  (`m2_hf/modeling/modeling_m2.py` -> `modeling_m2.py`, `m2_hf/ops/long_conv/reference.py` ->
  `ops_long_conv_reference.py`);
- imports of the operator packages (`m2_hf.ops`, `m2_hf.ops.<op>`), which dispatch to fused kernels, are
  served by a generated `ops.py` that binds each operator to its pure-PyTorch reference.

The exported code imports neither m2_hf nor Triton; the export refuses to write a folder whose code would.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from . import registry

PACKAGE = "m2_hf"
OPS_PACKAGE = f"{PACKAGE}.ops"
OPS_MODULE = "ops"
FORBIDDEN_IMPORTS = (PACKAGE, "triton")

class RemoteCodeError(ValueError):
    """A folder cannot be exported as remote code; the message says why."""


@dataclass(frozen=True)
class RemoteCode:
    """What an export writes: the `auto_map` for `config.json` and the source of each flat module file."""

    auto_map: dict[str, str]
    files: dict[str, str]


def flat_module_name(module: str) -> str:
    """The name of a package module in the flat folder layout: its path below `m2_hf` (and below `modeling`)
    joined with underscores, e.g. `m2_hf.modeling.modeling_m2` -> `modeling_m2`,
    `m2_hf.ops.long_conv.reference` -> `ops_long_conv_reference`."""
    parts = module.split(".")
    if parts[0] != PACKAGE or len(parts) < 2:
        raise RemoteCodeError(f"{module} is not a module of {PACKAGE}.")
    parts = parts[1:]
    if parts[0] == "modeling" and len(parts) > 1:
        parts = parts[1:]
    return "_".join(parts)


def _package_class(name: str) -> type | None:
    return getattr(importlib.import_module(PACKAGE), name, None)


def auto_classes(architecture: str) -> dict[str, type]:
    """The Auto classes (`AutoConfig` included) that load a folder saved from `architecture`, with the package
    class each one maps to."""
    family = registry.family_auto_classes(architecture)
    if not family:
        known = sorted(entry.name for entry in registry.M2_CLASSES)
        raise RemoteCodeError(f"No Auto classes are known for the architecture {architecture!r}; known: {known}.")
    if _package_class(architecture) is None:
        raise RemoteCodeError(f"This version of {PACKAGE} has no class {architecture!r}.")
    classes = {"AutoConfig": _package_class("M2Config")}
    for auto_class, class_name in family.items():
        if (package_class := _package_class(class_name)) is not None:
            classes[auto_class] = package_class
    return classes


def _is_package(module: str) -> bool:
    spec = importlib.util.find_spec(module)
    return spec is not None and spec.submodule_search_locations is not None


def _is_ops_package(module: str) -> bool:
    return (module == OPS_PACKAGE or module.startswith(f"{OPS_PACKAGE}.")) and _is_package(module)


def _check_imports(module: str, tree: ast.Module) -> None:
    """Refuse code that would import the package or Triton (absolute imports, at any depth)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module or ""]
        else:
            continue
        for name in names:
            if name.split(".")[0] in FORBIDDEN_IMPORTS:
                raise RemoteCodeError(
                    f"{module} (line {node.lineno}) imports {name}: remote code must import neither {PACKAGE} nor "
                    "Triton. Import the package's own modules relatively and keep fused kernels behind m2_hf.ops."
                )


def _import_statement(indent: str, module: str, names: list[ast.alias]) -> str:
    imported = [alias.name if alias.asname is None else f"{alias.name} as {alias.asname}" for alias in names]
    line = f"{indent}from .{module} import {', '.join(imported)}"
    if len(line) <= 120:
        return line
    return f"{indent}from .{module} import (\n" + "".join(f"{indent}    {name},\n" for name in imported) + f"{indent})"


def _reference_operator(package: str, name: str) -> tuple[str, str]:
    """The module and name of the pure-PyTorch function that `package.name` stands for: `name_reference` when
    the package has one (the un-suffixed name dispatches to fused kernels), else `name` itself, which must then be
    defined in a `reference` module."""
    namespace = importlib.import_module(package)
    function = getattr(namespace, f"{name}_reference", None) or getattr(namespace, name, None)
    if function is None:
        raise RemoteCodeError(f"{package} has no {name!r}.")
    module = getattr(function, "__module__", "")
    if not module.startswith(f"{OPS_PACKAGE}.") or module.rpartition(".")[2] != "reference":
        raise RemoteCodeError(
            f"{package}.{name} has no pure-PyTorch reference: neither it nor {name}_reference is defined in an "
            f"{OPS_PACKAGE}.*.reference module."
        )
    return module, function.__name__


def _ops_module(operators: dict[str, tuple[str, str]]) -> str:
    """Source of `ops.py`: each operator name bound to its reference implementation."""
    by_module: dict[str, set[str]] = {}
    for module, function in operators.values():
        by_module.setdefault(flat_module_name(module), set()).add(function)
    lines = [
        _header(OPS_PACKAGE).rstrip("\n"),
        f'"""The M2 operators the models call, each bound to its pure-PyTorch reference ({OPS_PACKAGE} without its',
        'fused kernels)."""',
        "",
    ]
    for module, functions in sorted(by_module.items()):
        lines.append(_import_statement("", module, [ast.alias(function) for function in sorted(functions)]))
    for name, (_, function) in sorted(operators.items()):
        if name != function:  # the package's entry point takes a `backend`; here there is only the reference
            lines += [
                "",
                "",
                f"def {name}(*args, backend: str = \"torch\", **kwargs):",
                f'    """`{function}`: the exported code has no fused kernels, so `backend` is ignored."""',
                f"    return {function}(*args, **kwargs)",
            ]
    return "\n".join(lines) + "\n"


def _rewrite(module: str, source: str, operators: dict[str, tuple[str, str]]) -> tuple[str, set[str]]:
    """`source` with its package-relative imports pointing at flat modules, and the package modules it needs.

    Names imported from an operator package are recorded in `operators` (and come from `ops.py`).
    """
    tree = ast.parse(source)
    _check_imports(module, tree)
    package = module if _is_package(module) else module.rpartition(".")[0]
    lines = source.splitlines()
    needed: set[str] = set()
    relative = sorted(
        (node for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level > 0),
        key=lambda node: node.lineno,
        reverse=True,
    )
    for node in relative:
        target = importlib.util.resolve_name("." * node.level + (node.module or ""), package)
        if _is_ops_package(target):
            for alias in node.names:
                operators[alias.name] = _reference_operator(target, alias.name)
                needed.add(operators[alias.name][0])
            flat = OPS_MODULE
        elif _is_package(target) or node.module is None:
            raise RemoteCodeError(
                f"{module} (line {node.lineno}) imports from the package {target}: import from its modules instead."
            )
        else:
            flat = flat_module_name(target)
            needed.add(target)
        indent = lines[node.lineno - 1][: node.col_offset]
        lines[node.lineno - 1 : node.end_lineno] = _import_statement(indent, flat, node.names).split("\n")
    return "\n".join(lines) + "\n", needed


def _header(module: str) -> str:
    path = module.replace(".", "/") + ("/" if _is_package(module) else ".py")
    version = importlib.import_module(PACKAGE).__version__
    return f"# Generated from {path} (m2-hf {version}) by `m2-hf export-remote-code`; edit the package instead.\n"


def generate_remote_code(architecture: str) -> RemoteCode:
    """The `auto_map` and the flat module files that load `architecture` (an M2 class name) as remote code."""
    classes = auto_classes(architecture)
    auto_map = {name: f"{flat_module_name(cls.__module__)}.{cls.__name__}" for name, cls in classes.items()}
    pending = sorted({cls.__module__ for cls in classes.values()})
    files: dict[str, str] = {}
    operators: dict[str, tuple[str, str]] = {}
    exported: set[str] = set()
    while pending:
        module = pending.pop()
        if module in exported:
            continue
        exported.add(module)
        flat = f"{flat_module_name(module)}.py"
        if flat == f"{OPS_MODULE}.py":
            raise RemoteCodeError(f"{module} would be exported as {flat}, the name of the generated operator module.")
        source, needed = _rewrite(module, Path(importlib.util.find_spec(module).origin).read_text("utf-8"), operators)
        files[flat] = _header(module) + source
        pending += sorted(needed - exported)
    if operators:
        files[f"{OPS_MODULE}.py"] = _ops_module(operators)
    return RemoteCode(auto_map=auto_map, files=dict(sorted(files.items())))


def _read_m2_config(folder: Path) -> dict:
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder; save the model there first (model.save_pretrained).")
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise RemoteCodeError(f"{folder} holds no config.json; it is not a saved model folder.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RemoteCodeError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(config, dict) or config.get("model_type") != "m2":
        found = config.get("model_type") if isinstance(config, dict) else None
        raise RemoteCodeError(f"{path} does not describe an M2 model (model_type {found!r}, expected 'm2').")
    architectures = config.get("architectures") or []
    if len(architectures) != 1:
        raise RemoteCodeError(f"{path} must name exactly one saved architecture, got {architectures!r}.")
    return config


def _replace_files(folder: Path, contents: dict[str, str]) -> None:
    """Write every file under a temporary name first, then rename them all into place."""
    token = secrets.token_hex(8)
    staged = {name: folder / f".{name}.{token}.tmp" for name in contents}
    try:
        for name, text in contents.items():
            staged[name].write_text(text, encoding="utf-8")
        for name, path in staged.items():
            os.replace(path, folder / name)
    finally:
        for path in staged.values():
            path.unlink(missing_ok=True)


def export_remote_code(folder: str | os.PathLike) -> list[Path]:
    """Make the saved M2 model in `folder` loadable with `trust_remote_code=True` where m2_hf is not installed.

    Writes the flat module files (see the module docstring) into `folder` and sets `auto_map` in its
    `config.json` for `AutoConfig`, `AutoModel` and every head of the saved architecture's family. Exporting
    again replaces the files with the installed package's current sources.

    Returns:
        The paths written, `config.json` last.

    Raises:
        FileNotFoundError: `folder` does not exist.
        RemoteCodeError: `folder` holds no M2 `config.json`, or the code cannot be exported; nothing is written.
    """
    folder = Path(folder)
    config = _read_m2_config(folder)
    code = generate_remote_code(config["architectures"][0])
    config["auto_map"] = code.auto_map
    contents = {**code.files, "config.json": json.dumps(config, indent=2, sort_keys=True) + "\n"}
    _replace_files(folder, contents)
    return [folder / name for name in contents]
