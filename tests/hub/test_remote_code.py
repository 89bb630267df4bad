"""`m2-hf export-remote-code`: saved folders load with `trust_remote_code=True` where m2_hf cannot be imported."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from safetensors.torch import load_file, save_file

import m2_hf
from m2_hf import cli, registry
from m2_hf.registry import M2_CLASSES, M2Class
from m2_hf.remote_code import OPS_MODULE, RemoteCodeError, export_remote_code

# Runs in a fresh interpreter (`python -I`, cwd outside the repository) in which importing m2_hf or Triton fails.
LOADER = r"""
import importlib.abc
import json
import sys


class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("m2_hf", "triton"):
            raise ImportError(f"{name} is blocked in this process")


sys.meta_path.insert(0, Blocker())

import torch
import transformers
from safetensors.torch import load_file, save_file

jobs = json.load(open(sys.argv[1]))
inputs = load_file(sys.argv[2])
outputs, report = {}, {}
for job in jobs:
    auto_class = getattr(transformers, job["auto_class"])
    model = auto_class.from_pretrained(job["folder"], trust_remote_code=True, dtype=torch.float32).eval()
    job_inputs = {name: inputs[f"{job['name']}.{name}"] for name in job["inputs"]}
    with torch.no_grad():
        result = model(**job_inputs)
    for name in job["outputs"]:
        outputs[f"{job['name']}.{name}"] = result[name].contiguous()
    if job.get("generate"):
        generated = model.generate(**job_inputs, **job["generate"], output_logits=True, return_dict_in_generate=True)
        outputs[f"{job['name']}.sequences"] = generated.sequences
        outputs[f"{job['name']}.step_logits"] = torch.stack(generated.logits, dim=1)
    report[job["name"]] = {
        "class": type(model).__name__,
        "module": type(model).__module__,
        "config_module": type(model.config).__module__,
        "model_type": model.config.model_type,
    }
report["imported"] = sorted(name for name in sys.modules if name.split(".")[0] in ("m2_hf", "triton"))
save_file(outputs, sys.argv[3])
json.dump(report, open(sys.argv[4], "w"))
"""


def available_heads() -> dict[str, str]:
    """Every package class the export maps an Auto class to, with that Auto class (the first, for M2Model)."""
    return {entry.name: entry.auto_class for entry in M2_CLASSES}


def head_config(class_name: str) -> m2_hf.M2Config:
    if class_name in ("M2ForImageClassification", "M2VisionModel"):
        return tiny_config(
            image_size=8, patch_size=2, norm_position="pre", type_vocab_size=0, num_labels=3, kernel_backend="torch"
        )
    if class_name == "M2ForCausalLM":
        # Weights large enough that a generate() step that lost the cache gives visibly different logits.
        return tiny_config(
            bidirectional=False, norm_position="pre", type_vocab_size=0, kernel_backend="torch", initializer_range=0.2
        )
    return tiny_config(num_labels=3, kernel_backend="torch")


def head_inputs(config: m2_hf.M2Config, main_input: str) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    if main_input == "pixel_values":
        size = (2, config.num_channels, config.image_size, config.image_size)
        return {"pixel_values": torch.randn(size, generator=generator)}
    ids = torch.randint(1, config.vocab_size, (2, 12), generator=generator)
    mask = torch.ones_like(ids)
    if config.bidirectional:
        mask[1, 9:] = 0
    else:  # a causal model is prompted with left padding
        mask[1, :3] = 0
    inputs = {"input_ids": ids, "attention_mask": mask}
    if config.type_vocab_size > 0:
        inputs["token_type_ids"] = (torch.arange(12) >= 6).long().expand(2, -1).contiguous()
    return inputs


def run_isolated(jobs: list[dict], inputs: dict[str, torch.Tensor], workdir: Path) -> tuple[dict, dict]:
    """Run `LOADER` on `jobs` in a fresh interpreter; return its outputs and its report."""
    paths = {name: workdir / name for name in ("loader.py", "jobs.json", "in.safetensors", "out.safetensors")}
    paths["loader.py"].write_text(LOADER)
    paths["jobs.json"].write_text(json.dumps(jobs))
    save_file(inputs, paths["in.safetensors"])
    report_path = workdir / "report.json"
    env = {
        **{key: value for key, value in os.environ.items() if not key.startswith("PYTHON")},
        "HF_HUB_OFFLINE": "1",
        "HF_MODULES_CACHE": str(workdir / "modules"),
        "TRANSFORMERS_VERBOSITY": "error",
    }
    command = [sys.executable, "-I", *map(str, paths.values()), str(report_path)]
    result = subprocess.run(command, check=False, cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return load_file(paths["out.safetensors"]), json.loads(report_path.read_text())


def test_every_head_loads_as_remote_code_without_the_package(tmp_path):
    heads = available_heads()
    assert {"M2Model", "M2ForMaskedLM", "M2ForSequenceClassification", "M2ForTokenClassification"} <= set(heads)
    jobs, inputs, expected = [], {}, {}
    for class_name, auto_class in heads.items():
        config = head_config(class_name)
        torch.manual_seed(0)
        model = getattr(m2_hf, class_name)(config).eval()
        folder = tmp_path / class_name
        model.save_pretrained(folder)
        export_remote_code(folder)
        head_input = head_inputs(config, model.main_input_name)
        inputs.update({f"{class_name}.{name}": value for name, value in head_input.items()})
        with torch.no_grad():
            result = model(**head_input)
        names = [name for name in ("logits", "last_hidden_state", "pooler_output") if result.get(name) is not None]
        expected.update({f"{class_name}.{name}": result[name] for name in names})
        job = {"name": class_name, "folder": str(folder), "auto_class": auto_class, "inputs": list(head_input)}
        if class_name == "M2ForCausalLM":  # generate() with the cache, on the transformers release installed
            job["generate"] = dict(max_new_tokens=6, do_sample=False)
            generated = model.generate(**head_input, **job["generate"], output_logits=True, return_dict_in_generate=True)
            expected[f"{class_name}.sequences"] = generated.sequences
            expected[f"{class_name}.step_logits"] = torch.stack(generated.logits, dim=1)
        jobs.append({**job, "outputs": names})

    outputs, report = run_isolated(jobs, inputs, tmp_path)

    assert report.pop("imported") == []
    for class_name, loaded in report.items():
        assert loaded["class"] == class_name and loaded["model_type"] == "m2"
        assert loaded["module"].startswith("transformers_modules.")
        assert loaded["config_module"].startswith("transformers_modules.")
    assert set(outputs) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(outputs[name], value, msg=name)


def test_auto_map_covers_the_family_of_the_saved_head(tmp_path):
    model = m2_hf.M2ForSequenceClassification(tiny_config())
    model.save_pretrained(tmp_path)
    export_remote_code(tmp_path)
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert auto_map == {
        "AutoConfig": "configuration_m2.M2Config",
        "AutoModel": "modeling_m2.M2Model",
        "AutoModelForMaskedLM": "modeling_m2.M2ForMaskedLM",
        "AutoModelForSequenceClassification": "modeling_m2.M2ForSequenceClassification",
        "AutoModelForTokenClassification": "modeling_m2.M2ForTokenClassification",
    }
    for target in auto_map.values():
        assert (tmp_path / f"{target.split('.')[0]}.py").is_file()


def without_relative_imports(source: str) -> list[str]:
    """The lines of `source` outside its relative import statements."""
    skipped = {
        line
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.ImportFrom) and node.level > 0
        for line in range(node.lineno, node.end_lineno + 1)
    }
    return [line for number, line in enumerate(source.splitlines(), 1) if number not in skipped]


def test_exported_files_are_the_package_sources_with_flat_imports(tmp_path):
    m2_hf.M2ForMaskedLM(tiny_config()).save_pretrained(tmp_path)
    written = export_remote_code(tmp_path)
    assert written[-1] == tmp_path / "config.json"
    modules = [path for path in written if path.suffix == ".py"]
    flat_names = {path.stem for path in modules}
    assert OPS_MODULE in flat_names
    for path in modules:
        header, _, text = path.read_text().partition("\n")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom) and node.level > 0:
                assert node.level == 1 and node.module in flat_names, f"{path.name}: {ast.unparse(node)}"
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                roots = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module]
                assert not any(root.split(".")[0] in ("m2_hf", "triton") for root in roots), path.name
        source = header.split()[3]  # "# Generated from m2_hf/<path> (m2-hf <version>) ..."
        if path.stem != OPS_MODULE:
            package_source = (Path(m2_hf.__file__).parents[1] / source).read_text()
            assert without_relative_imports(text) == without_relative_imports(package_source), path.name


def test_exporting_again_gives_the_same_folder(tmp_path):
    m2_hf.M2Model(tiny_config()).save_pretrained(tmp_path)
    export_remote_code(tmp_path)
    first = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    assert cli.main(["export-remote-code", str(tmp_path)]) == 0
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == first


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


@pytest.mark.parametrize(
    "prepare, message",
    [
        (None, "is not a folder"),
        (lambda folder: folder.mkdir(), "holds no config.json"),
        (lambda folder: (folder.mkdir(), (folder / "config.json").write_text("{not json")), "not valid JSON"),
        (
            lambda folder: (folder.mkdir(), (folder / "config.json").write_text('{"model_type": "bert"}')),
            "does not describe an M2 model",
        ),
        (
            lambda folder: (
                m2_hf.M2Model(tiny_config()).save_pretrained(folder),
                (folder / "config.json").write_text(
                    json.dumps({**json.loads((folder / "config.json").read_text()), "architectures": ["M2ForMystery"]})
                ),
            ),
            "No Auto classes are known for the architecture 'M2ForMystery'",
        ),
    ],
    ids=["missing", "no-config", "bad-json", "not-m2", "unknown-architecture"],
)
def test_bad_destinations_fail_clearly_and_write_nothing(prepare, message, tmp_path, capsys):
    folder = tmp_path / "model"
    if prepare is not None:
        prepare(folder)
    before = _snapshot(tmp_path)
    assert cli.main(["export-remote-code", str(folder)]) == 1
    assert message in capsys.readouterr().err
    assert _snapshot(tmp_path) == before
    assert sorted(path.name for path in tmp_path.iterdir()) == (["model"] if prepare is not None else [])


@pytest.mark.parametrize(
    "source, message",
    [
        ("import triton\n", "imports triton"),
        ("from m2_hf.ops import fft_long_conv\n", "imports m2_hf.ops"),
        ("def f():\n    from m2_hf import M2Config\n", "(line 2) imports m2_hf"),
        ("from .. import M2Config\n", "imports from the package m2_hf"),
        ("from ..ops.long_conv import long_conv_kernel\nfrom ..ops import backend\n", "no pure-PyTorch reference"),
    ],
    ids=["triton", "absolute-package", "nested-absolute", "package-root", "non-operator-from-ops"],
)
def test_code_the_flat_layout_cannot_hold_is_refused(source, message, tmp_path, monkeypatch):
    """A package module that would import m2_hf or Triton in the exported folder stops the export."""
    module_path = tmp_path / "probe.py"
    module_path.write_text(source)
    name = "m2_hf.modeling.probe"
    module = importlib.util.module_from_spec(importlib.util.spec_from_file_location(name, module_path))
    probe_class = type("M2Probe", (), {"__module__": name})
    monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(m2_hf, "M2Probe", probe_class, raising=False)
    monkeypatch.setattr(registry, "M2_CLASSES", (M2Class("M2Probe", "AutoModel", "feature-extraction", ("probe",)),))
    folder = tmp_path / "model"
    m2_hf.M2Model(tiny_config()).save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "architectures": ["M2Probe"]}))
    before = _snapshot(folder)
    with pytest.raises(RemoteCodeError, match=re.escape(message)):
        export_remote_code(folder)
    assert _snapshot(folder) == before
