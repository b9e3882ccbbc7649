"""The package's import graph, function-level imports included: no imgclf modules import each other in a circle.

The layer order itself is import-linter's contract in pyproject.toml (``make lint``); this test covers what
a layers contract cannot see, a circle between modules of one layer. The graph is grimp's, the one
import-linter checks, which reads every import statement of a module, inside functions too. Imports under
``if TYPE_CHECKING:`` are left out: they never run, so two modules may name each other's types.
"""

from __future__ import annotations

import sys
from pathlib import Path

import grimp
import pytest


def import_cycles(package: str) -> list[str]:
    """One ``a -> ... -> a`` chain per module import that some chain leads back from."""
    graph = grimp.build_graph(package, cache_dir=None, exclude_type_checking_imports=True)
    cycles = []
    for importer in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            back = graph.find_shortest_chain(importer=imported, imported=importer)
            if back:
                cycles.append(" -> ".join((importer, *back)))
    return cycles


def test_no_imgclf_modules_import_each_other_in_a_circle() -> None:
    cycles = import_cycles("imgclf")
    assert not cycles, "import cycles (move the shared code down a layer):\n" + "\n".join(cycles)


def test_a_cycle_through_a_function_level_import_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "circular"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "low.py").write_text("def helper():\n    from circular.high import answer\n    return answer\n")
    (package / "high.py").write_text("from circular.low import helper\n\nanswer = 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "circular", raising=False)

    assert import_cycles("circular") == ["circular.high -> circular.low -> circular.high",
                                         "circular.low -> circular.high -> circular.low"]
