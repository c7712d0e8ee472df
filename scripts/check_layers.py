"""Check that imports run down the layers only, never back up.

    contracts  settings, wire messages, Kafka client options          (imports no package here)
    recsys     the pure model: numpy over user state and the catalog  (contracts)
    operators, udfs   Flink functions                                  (recsys, contracts)
    jobs       the topology and how to run it                          (all of the above)
    streamrank the command-line tools                                  (everything)

Every import is checked, including those inside functions. Prints each violation as
``file:line  module -> imported (layer -> layer)``; exit status 1 if there is any.
Run: ``python scripts/check_layers.py`` (``tests/test_layers.py`` runs it in ``make test``).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = {"contracts": 0, "recsys": 1, "operators": 2, "udfs": 2, "jobs": 3, "streamrank": 4}


def imports(path: Path):
    """(line, imported top-level package) of every import in the file."""
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module.split(".")[0]


def violations(root: Path = ROOT) -> list[str]:
    out = []
    for package, layer in LAYERS.items():
        for path in sorted((root / package).rglob("*.py")):
            for line, target in imports(path):
                if LAYERS.get(target, -1) > layer:
                    out.append(f"{path.relative_to(root)}:{line}  {package} -> {target} "
                               f"(layer {layer} -> {LAYERS[target]})")
    return out


def main() -> int:
    found = violations()
    for v in found:
        print(v)
    n = sum(1 for p in LAYERS for _ in (ROOT / p).rglob("*.py"))
    print(f"{len(found)} upward import(s) in {n} files of {len(LAYERS)} packages")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
