"""The project code a stage runs: its script's import closure over `stages/` and `src/kexue/`.

A stage's `deps` in dvc.yaml must list this closure (tests/test_code_deps.py checks it), and an
exported model bundles the closure of its model module, so it carries exactly the code that
trained and evaluated it. Imports inside functions count; the one dynamic import, the model's
module that a stage loads by name (`kexue.models.load`, `kexue.datasets.load`), is added from
the stage's command.
"""

from __future__ import annotations

import ast
import shlex
from pathlib import Path

PACKAGE = "kexue"
SOURCE_DIR = Path("src")
STAGES_DIR = Path("stages")
# The functions in stages/_common.py that import a model's module by its name, and the
# package of the module each imports.
MODULE_LOADERS = {"model_config": "models", "dataset_config": "datasets"}


def module_file(root: Path, dotted: str, source_dir: Path = SOURCE_DIR) -> Path | None:
    """`src/kexue/a/b.py` or `src/kexue/a/b/__init__.py` for `kexue.a.b`, relative to `root`;
    None for a name that is not a project module (a function, a class, another package)."""
    base = source_dir.joinpath(*dotted.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if (root / candidate).is_file():
            return candidate
    return None


def _imported_names(source: Path) -> set[str]:
    """Dotted names a file imports anywhere in it, `from a import b` giving `a` and `a.b`."""
    names = set()
    for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"), str(source))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _project_files(
    root: Path, dotted: str, source_dir: Path = SOURCE_DIR, empty_inits: bool = False
) -> list[Path]:
    """The project files importing `dotted` executes: each package's `__init__.py` on the way
    (an empty one only with `empty_inits`) and the module; or a module beside the stage
    scripts (`_common`)."""
    sibling = STAGES_DIR / f"{dotted}.py"
    if "." not in dotted and (root / sibling).is_file():
        return [sibling]
    parts = dotted.split(".")
    if parts[0] != PACKAGE:
        return []
    files = []
    for depth in range(1, len(parts) + 1):
        found = module_file(root, ".".join(parts[:depth]), source_dir)
        if found is None:
            continue
        if empty_inits or found.name != "__init__.py" or (root / found).stat().st_size:
            files.append(found)
    return files


def closure(
    root: Path, start: list[Path], source_dir: Path = SOURCE_DIR, empty_inits: bool = False
) -> set[Path]:
    """Every project file that running the files `start` (relative to `root`) may import."""
    seen: set[Path] = set()
    todo = list(start)
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        for dotted in _imported_names(root / current):
            todo.extend(_project_files(root, dotted, source_dir, empty_inits))
    return seen


def _loaded_packages(script: Path) -> set[str]:
    """The packages (`models`, `datasets`) from which a stage script loads the module of the
    model named on its command line (`model_config`, `dataset_config`)."""
    tree = ast.parse(script.read_text(encoding="utf-8"), str(script))
    return {
        MODULE_LOADERS[node.func.id]
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) in MODULE_LOADERS
    }


def stage_closure(root: Path, cmd: str, model_names: tuple[str, ...]) -> set[Path]:
    """The closure of a `python stages/<verb>.py [model] ...` command: the script, and the
    module of the model it names when the script loads it."""
    words = shlex.split(cmd)
    start = [Path(word) for word in words if Path(word).parent == STAGES_DIR]
    models = [word for word in words if word in model_names]
    if models:
        for package in set().union(*(_loaded_packages(root / script) for script in start)):
            start.extend(_project_files(root, f"{PACKAGE}.{package}.{models[0]}"))
    return closure(root, start)


def module_bundle(package_parent: Path, dotted: str) -> set[Path]:
    """The files (relative to the folder holding the `kexue` package) a copy of the package
    needs so that `dotted` imports: its closure, empty `__init__.py` files included."""
    start = _project_files(package_parent, dotted, Path("."), empty_inits=True)
    return closure(package_parent, start, Path("."), empty_inits=True)
