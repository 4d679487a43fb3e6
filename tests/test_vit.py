"""The source ViTs' architecture (vplib.vit) and vplib's module layering."""

import ast
import io
import pathlib
import subprocess
import sys

import pytest
import torch

from vplib.vit import ConvStem, HybridStem, ViTConfig, create_vit

VPLIB = pathlib.Path(__file__).resolve().parents[1] / "vplib"


@pytest.mark.parametrize("stem, cls", [("conv", ConvStem), ("hybrid", HybridStem)])
def test_stems_are_module_level_classes_so_models_pickle(stem, cls):
    a = create_vit(ViTConfig(embed_dim=32, depth=1, num_heads=2, stem=stem))
    b = create_vit(ViTConfig(embed_dim=32, depth=1, num_heads=2, stem=stem))
    assert type(a.patch_embed) is type(b.patch_embed) is cls  # one class, not one per call
    buffer = io.BytesIO()
    torch.save(a, buffer)
    buffer.seek(0)
    again = torch.load(buffer, weights_only=False)
    x = torch.rand(2, 3, 28, 28)
    a.eval()
    again.eval()
    assert torch.equal(a(x), again(x))


def _vplib_imports() -> dict[str, set[str]]:
    """Module -> the vplib modules it imports (at module level or inside functions)."""
    graph = {}
    for path in sorted(VPLIB.rglob("*.py")):
        parts = path.relative_to(VPLIB.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == "vplib":
                target = node.module
            else:
                continue
            names = [a.name for a in node.names]
            subs = [f"{target}.{n}" for n in names if (VPLIB.parent / f"{target}.{n}".replace(
                ".", "/")).with_suffix(".py").exists()]
            deps.update(subs or [target])
        graph[module] = deps - {module}
    return graph


def test_vplib_modules_import_each_other_without_a_cycle():
    graph = _vplib_imports()
    assert "vplib.vit" in graph["vplib.backbones"]  # the parser sees the imports it must
    state = {}

    def visit(module, path):
        if state.get(module) == "done":
            return
        assert state.get(module) != "open", " -> ".join(path + [module])
        state[module] = "open"
        for dep in sorted(graph.get(module, ())):
            if dep != "vplib":  # the package itself: its __init__ imports everything
                visit(dep, path + [module])
        state[module] = "done"

    for module in graph:
        if module != "vplib":
            visit(module, [])


@pytest.mark.parametrize("module", sorted(m for m in _vplib_imports() if m != "vplib"))
def test_every_vplib_module_imports_on_its_own(module):
    subprocess.run([sys.executable, "-c", f"import {module}"], check=True, timeout=120)
