"""The import layers, checked on the source (every import, also the lazy ones inside functions):

    entry points (signal, chat) → loop (Ray glue) → engines, data → core;
    config (+ config_overrides), models and metrics at the bottom.

Core is pure: it imports only core (no config, engines, loop, Ray or vLLM); `if TYPE_CHECKING:` imports are type names
only and are allowed. No module imports a private name (`_x`) from another package.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "hsd_ray"
BOTTOM = {"hsd_ray.config", "hsd_ray.config_overrides", "hsd_ray.models", "hsd_ray.metrics"}
# what each layer may import from hsd_ray (by prefix); config_overrides (config's parser) imports nothing of hsd_ray
ALLOWED = {
    "bottom": ("hsd_ray.config_overrides",),
    "core": ("hsd_ray.core",),
    "engines": ("hsd_ray.core", "hsd_ray.engines", *BOTTOM),
    "data": ("hsd_ray.core", "hsd_ray.data", *BOTTOM),  # shipped data files and what is built from them
    "loop": ("hsd_ray.core", "hsd_ray.engines", "hsd_ray.data", "hsd_ray.loop", *BOTTOM),
    "entry": ("hsd_ray",),
}
FORBIDDEN_THIRD_PARTY = {"core": ("ray", "vllm", "pydantic", "yaml"), "bottom": ("vllm",)}  # metrics exports through ray


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> str:
    if module in BOTTOM or module == "hsd_ray":
        return "bottom"
    for layer in ("core", "engines", "data", "loop"):
        if module.startswith(f"hsd_ray.{layer}"):
            return layer
    return "entry"


def _runtime_imports(tree: ast.AST, module: str) -> list[tuple[str, list[str], int]]:
    """(imported module, imported names, line) for every import not under `if TYPE_CHECKING:`."""
    out: list[tuple[str, list[str], int]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            out.extend((a.name, [], node.lineno) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import: resolve against this package
                pkg = module.split(".")[: -node.level] if not module.endswith("__init__") else module.split(".")
                base = ".".join(pkg + ([base] if base else []))
            if base == "hsd_ray":  # `from hsd_ray import metrics` imports the module hsd_ray.metrics
                out.extend((f"hsd_ray.{a.name}", [], node.lineno) for a in node.names)
            else:
                out.append((base, [a.name for a in node.names], node.lineno))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return out


def _violations() -> list[str]:
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        layer = _layer(module)
        for imported, names, line in _runtime_imports(ast.parse(path.read_text()), module):
            where = f"{path.relative_to(ROOT)}:{line}"
            top = imported.split(".")[0]
            if top in FORBIDDEN_THIRD_PARTY.get(layer, ()):
                bad.append(f"{where}: {layer} module imports {imported}")
            if top != "hsd_ray":
                continue
            if not any(imported == p or imported.startswith(p + ".") for p in ALLOWED[layer]) and imported != module:
                bad.append(f"{where}: {layer} module imports {imported} (a layer above, or sideways)")
            own_package = module.rsplit(".", 1)[0]
            for name in names:
                if name.startswith("_") and imported.rsplit(".", 1)[0] != own_package:
                    bad.append(f"{where}: imports private {imported}.{name} from another package")
    return bad


def test_no_import_crosses_a_layer_upwards():
    assert _violations() == []


def test_the_checker_catches_an_upward_import(tmp_path):
    tree = ast.parse("def f():\n    from hsd_ray.engines.hf import HFEngine\nif TYPE_CHECKING:\n    import ray\n")
    found = _runtime_imports(tree, "hsd_ray.core.x")
    assert [(m, line) for m, _, line in found] == [("hsd_ray.engines.hf", 2)]  # lazy import seen, type-only skipped


def test_core_imports_without_ray_vllm_or_config():
    core = sorted(_module_name(p) for p in (PACKAGE / "core").glob("*.py") if p.name != "__init__.py")
    code = (
        f"import sys; import {', '.join(core)}; "
        "bad = {'ray', 'vllm', 'hsd_ray.config', 'pydantic', 'yaml'} & set(sys.modules); assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
