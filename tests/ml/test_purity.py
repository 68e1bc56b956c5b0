"""ml/ is a pure PyTorch library: it must never pull in the web stack (docs/architecture.md)."""

import ast
import subprocess
import sys
from pathlib import Path

ML_DIR = Path(__file__).resolve().parents[2] / "ml"
FORBIDDEN = {"django", "celery", "channels", "channels_redis", "kombu", "rest_framework", "webapp", "jobs"}


def test_importing_ml_loads_no_web_stack_modules():
    code = (
        "import sys, ml\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {sorted(FORBIDDEN)!r})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ML_DIR.parent, capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.strip() == ""


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_no_file_in_ml_imports_the_web_stack():
    files = sorted(ML_DIR.rglob("*.py"))
    assert files
    offenders = {str(f.relative_to(ML_DIR)): sorted(imported_roots(f) & FORBIDDEN) for f in files}
    assert {f: mods for f, mods in offenders.items() if mods} == {}
