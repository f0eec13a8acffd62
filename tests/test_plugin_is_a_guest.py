"""The plugin is a guest in nerfstudio's processes: nerfstudio imports every method plugin (ours
too) whatever method runs, so importing ours must change nothing global. Our one-line errors are
installed by our methods' setup only (core/errors.py), never at import, and no code of ours walks
the call stack or adds import hooks."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "ilrm_nerfstudio"
BIN = Path(sys.executable).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}

DISCOVER = """
import sys
from nerfstudio.plugins.registry import discover_methods  # nerfstudio's own imports (absl adds a finder)
assert not [name for name in sys.modules if name.startswith("ilrm_nerfstudio")]
hook, finders = sys.excepthook, list(sys.meta_path)
methods, _ = discover_methods()
assert {"ilrm", "ilrm-small", "ilrm-finetune"} <= set(methods), sorted(methods)
assert "ilrm_nerfstudio.nerfstudio.method_configs" in sys.modules
assert sys.excepthook is hook, sys.excepthook
assert list(sys.meta_path) == finders, (finders, sys.meta_path)
print("unchanged")
"""


def test_discovering_the_methods_changes_no_hook():
    """nerfstudio's method discovery imports our plugin (every method config, the glue): the
    excepthook and the import machinery are as they were."""
    result = subprocess.run([sys.executable, "-c", DISCOVER], capture_output=True, text=True, timeout=300, env=ENV)
    assert result.returncode == 0 and result.stdout.strip() == "unchanged", result.stdout + result.stderr[-3000:]


def test_ns_train_splatfacto_help_shows_no_trace_of_the_plugin():
    result = subprocess.run(
        [str(BIN / "ns-train"), "splatfacto", "--help"], capture_output=True, text=True, timeout=300, env=ENV
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "splatfacto" in result.stdout  # the help text is there ...
    assert "ilrm" not in (result.stdout + result.stderr).lower()  # ... and nothing of ours


FORBIDDEN = ("_getframe", "sys.excepthook =", "meta_path")


def allowed_lines() -> set[int]:
    """The lines of core/errors.py's install_excepthook, the one place that sets the excepthook."""
    tree = ast.parse((PACKAGE / "core" / "errors.py").read_text())
    (function,) = [
        node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "install_excepthook"
    ]
    return set(range(function.lineno, function.end_lineno + 1))


def test_no_stack_walking_or_global_hooks_in_the_package():
    allowed = allowed_lines()
    found, installs = [], 0
    for path in sorted(PACKAGE.rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if any(word in line for word in FORBIDDEN):
                if path == PACKAGE / "core" / "errors.py" and number in allowed:
                    installs += 1
                else:
                    found.append(f"{path.relative_to(PACKAGE.parent)}:{number}: {line.strip()}")
    assert not found, "\n".join(found)
    assert installs == 1  # the rule reads the right function: it sets the hook there
