"""Import layering: the config loads no dataset loader, and no import cycle (issue 20)."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import import_cycles  # tests/data/import_cycles.py, also a script
import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "dann_dist"
# The data modules that may load with the config: the package's lazy __init__, the leaf
# module of the data options, and flags.py, which only re-exports it.
LEAVES = {"dann_dist.data", "dann_dist.data.options", "dann_dist.data.flags"}


def _python(code: str) -> str:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH",
                                                                               "")]))
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_importing_the_config_loads_no_dataset_loader():
    out = _python("import dann_dist.config, sys; "
                  "print(sorted(m for m in sys.modules if m.startswith('dann_dist.data')))")
    loaded = set(eval(out))  # a printed list of strings
    assert loaded <= LEAVES, f"import dann_dist.config loaded {sorted(loaded - LEAVES)}"


def test_the_leaves_import_no_other_data_module():
    graph = import_cycles.import_graph(PACKAGE, all_imports=True)
    for leaf in LEAVES - {"dann_dist.data"}:
        assert graph[leaf] <= {"dann_dist.data.options"}, (leaf, graph[leaf])


def test_the_package_still_offers_its_names_on_first_use():
    out = _python("import sys, dann_dist.data as d; "
                  "before = 'dann_dist.data.mnistm' in sys.modules; "
                  "d.load_mnistm, d.load_mnist, d.Domain, d.DataError, d.define_flags; "
                  "from dann_dist.data import DataError; "
                  "print(before, 'dann_dist.data.mnistm' in sys.modules, "
                  "DataError.__module__, sorted(d.__all__))")
    assert out.split() == ["False", "True", "dann_dist.data.errors", "['DataError',",
                           "'Domain',", "'define_flags',", "'load_mnist',", "'load_mnistm']"]
    with pytest.raises(AttributeError, match="no attribute 'load_svhn'"):
        import dann_dist.data as d
        d.load_svhn  # noqa: B018


def test_no_import_cycle_in_dann_dist():
    """Module-level imports, the ones that run when a module is imported."""
    cycles = import_cycles.find_cycles(import_cycles.import_graph(PACKAGE))
    assert cycles == [], "\n".join(" -> ".join(c) for c in cycles)


def test_no_import_cycle_in_data_even_through_functions():
    """An import moved into a function hides a cycle from Python, not from the layering."""
    graph = import_cycles.import_graph(PACKAGE / "data", all_imports=True)
    cycles = import_cycles.find_cycles(graph)
    assert cycles == [], "\n".join(" -> ".join(c) for c in cycles)


def _package(root: Path, modules: dict[str, str]) -> Path:
    package = root / "pkg"
    (package / "sub").mkdir(parents=True)
    for name, source in {"__init__.py": "", "sub/__init__.py": "", **modules}.items():
        (package / name).write_text(textwrap.dedent(source))
    return package


def test_the_cycle_finder_finds_cycles_and_tells_module_level_from_function_imports(tmp_path):
    package = _package(tmp_path, {
        "a.py": "from pkg import b\n",
        "b.py": "from .sub import c\nimport os\n",
        "sub/c.py": "from typing import TYPE_CHECKING\n"
                    "if TYPE_CHECKING:\n    from pkg import a\n"
                    "def late():\n    from ..a import thing\n",
        "d.py": "try:\n    import pkg.e\nexcept ImportError:\n    pass\n",
        "e.py": "class E:\n    from pkg.d import x\n",
    })
    assert import_cycles.find_cycles(import_cycles.import_graph(package)) == [
        ["pkg.d", "pkg.e", "pkg.d"]]
    assert import_cycles.find_cycles(import_cycles.import_graph(package, all_imports=True)) == [
        ["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"], ["pkg.d", "pkg.e", "pkg.d"]]
    script = subprocess.run([sys.executable, import_cycles.__file__, str(package)],
                            capture_output=True, text=True)
    assert script.returncode == 1
    assert script.stdout == "import cycle: pkg.d -> pkg.e -> pkg.d\n"
