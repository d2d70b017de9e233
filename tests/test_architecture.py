"""The house rules: imports run downwards only, and every model flag's default is written once."""
from __future__ import annotations

import ast
from dataclasses import fields
from pathlib import Path

import pytest

import params
from modules.factory import ModelConfig
from modules.loss import LossConfig
from modules.stop import StopConfig
from modules.tempme import TempMeConfig
from modules.token_merge import TokenMergeConfig

REPO = Path(__file__).resolve().parents[1]
# From the ground up; a part may import its own floor's files and any lower floor.
FLOORS = {"modules": 1, "lineage": 2, "params": 3, "dataloaders": 4, "engine": 5, "search": 6,
          "main": 7, "main_task_retrieval": 7, "scripts": 7}
ENTRY_POINTS = FLOORS["main"]   # the top floor's parts may import each other


def _part(path: Path) -> str:
    top = path.relative_to(REPO).parts[0]
    return top.removesuffix(".py")


def _project_imports(path: Path) -> set[str]:
    """Top-level project names `path` imports anywhere in it (also inside functions)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names & set(FLOORS)


def _sources() -> list[Path]:
    files = [REPO / "lineage.py", REPO / "params.py", REPO / "main.py", REPO / "main_task_retrieval.py"]
    for folder in ("modules", "dataloaders", "engine", "search", "scripts"):
        files += sorted((REPO / folder).rglob("*.py"))
    return files


def test_the_model_library_imports_nothing_above_it():
    for path in sorted((REPO / "modules").rglob("*.py")):
        assert _project_imports(path) <= {"modules"}, f"{path.relative_to(REPO)} imports {_project_imports(path)}"


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(REPO)))
def test_imports_run_downwards(path):
    floor = FLOORS[_part(path)]
    upward = {name for name in _project_imports(path) if FLOORS[name] > floor or
              (FLOORS[name] == floor and name != _part(path) and floor < ENTRY_POINTS)}
    assert not upward, f"{path.relative_to(REPO)} (floor {floor}) imports {upward} from above"


def test_the_house_has_no_unplaced_part():
    """A new top-level package or module must be given its floor here."""
    tops = {p.name.removesuffix(".py") for p in REPO.iterdir()
            if (p.is_dir() and (p / "__init__.py").exists()) or (p.suffix == ".py")}
    assert tops <= set(FLOORS), tops - set(FLOORS)


def _flag_of(config: type, name: str) -> str:
    if config is TempMeConfig:
        return {"enabled": "use_tempme", "max_frames": "max_frames"}.get(name, f"tempme_{name}")
    if config is TokenMergeConfig:
        return {"mode": "token_merge", "r": "token_merge_r"}[name]
    if config is LossConfig:
        return name if name == "caption_contrast" else f"tempme_{name}"
    return name


FLAG_FIELDS = [(config, f.name) for config in (ModelConfig, StopConfig, TempMeConfig, TokenMergeConfig, LossConfig)
               for f in fields(config) if f.name not in getattr(config, "DERIVED", ()) and f.name != "max_frames"
               and f.name not in ("stop", "tempme", "token_merge")] + [(TempMeConfig, "max_frames")]


@pytest.mark.parametrize("config,name", FLAG_FIELDS, ids=lambda x: x if isinstance(x, str) else x.__name__)
def test_each_model_flag_default_is_the_configs(config, name):
    assert params.build_parser().get_default(_flag_of(config, name)) == getattr(config(), name)


def test_params_writes_no_model_flag_default_of_its_own():
    """Every model flag's default in params.py reads the configuration (no literal written twice)."""
    model_flags = {_flag_of(config, name) for config, name in FLAG_FIELDS}
    seen = set()
    for node in ast.walk(ast.parse((REPO / "params.py").read_text())):
        flag_and_default = _flag_and_default(node)
        if flag_and_default and flag_and_default[0] in model_flags:
            flag, default = flag_and_default
            assert isinstance(default, ast.Attribute), f"--{flag}: default written as a literal in params.py"
            seen.add(flag)
    assert seen == model_flags


def _flag_and_default(node: ast.AST) -> tuple[str, ast.expr] | None:
    """(flag name, default expression) of an `add_argument(...)` or `_add_bool(group, flag, default, help)` call."""
    if not isinstance(node, ast.Call):
        return None
    if isinstance(node.func, ast.Name) and node.func.id == "_add_bool":
        return node.args[1].value.lstrip("-"), node.args[2]
    if isinstance(node.func, ast.Attribute) and node.func.attr == "add_argument" and isinstance(node.args[0], ast.Constant):
        default = next((k.value for k in node.keywords if k.arg == "default"), None)
        return (node.args[0].value.lstrip("-"), default) if default is not None else None
    return None
