"""The house rules that keep the tree readable, checked on the source itself: imports run one way between train
and eval, each setting has one definition and one resolver, and nothing in tests/ or recipes/ reaches outside
the repository."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function (TYPE_CHECKING blocks included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def offenders(package: str, forbidden: str) -> list[str]:
    return [f"{path.relative_to(ROOT)} imports {module}"
            for path in sorted((ROOT / package.replace(".", "/")).rglob("*.py"))
            for module in sorted(imported_modules(path))
            if module == forbidden or module.startswith(forbidden + ".")]


def test_train_and_eval_do_not_import_each_other():
    assert offenders("grpo.train", "grpo.eval") == []
    assert offenders("grpo.eval", "grpo.train") == []


def test_tools_and_rewards_stay_below_the_trainer():
    assert offenders("grpo.tools", "grpo.train") == []
    assert offenders("rewards", "grpo.train") == []
    # environments are plugins' peers: like a plugin they import nothing from grpo (rewards' sandbox they may)
    assert offenders("environments", "grpo") == []
    # grpo rm is a second trainer beside grpo train: it shares grpo's modules below both, never the RL loop's
    for other in ("grpo.train", "grpo.eval", "grpo.tools"):
        assert offenders("grpo.rm", other) == []


def definitions(name: str) -> list[str]:
    """Module-level assignments of `name` anywhere in the product."""
    where = []
    for path in sorted([*(ROOT / "grpo").rglob("*.py"), *(ROOT / "rewards").rglob("*.py")]):
        for node in ast.parse(path.read_text(), str(path)).body:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] \
                if isinstance(node, ast.AnnAssign) else []
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                where.append(str(path.relative_to(ROOT)))
    return where


def test_each_setting_is_declared_and_resolved_once():
    assert definitions("DTYPES") == ["grpo/dtypes.py"]
    # The only code that turns distributed.strategy's `auto` into a strategy is grpo.resolve.strategy.
    resolvers = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "grpo").rglob("*.py"))
                 if re.search(r"""strategy\s*==\s*["']auto["']""", p.read_text())]
    assert resolvers == ["grpo/resolve.py"]
    # One derivation of seeds: no other file multiplies a seed by a stride of its own.
    strides = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "grpo").rglob("*.py"))
               if re.search(r"seed\s*\*\s*[0-9_]{4,}|[0-9_]{4,}\s*\*\s*\w*rank", p.read_text())]
    assert strides == []
    # torchrun's environment is read by grpo.parallel alone (the rest is handed the World it built).
    readers = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "grpo").rglob("*.py"))
               if re.search(r"""environ(\.get)?\s*[\[(]\s*["'](WORLD_SIZE|RANK|LOCAL_RANK)["']""", p.read_text())]
    assert readers == ["grpo/parallel.py"]


# Folders beside the repo or on a developer's machine; spelt in pieces so that this line does not match itself.
OUTSIDE = re.compile("|".join([r"\.\./" + "shared", "/" + "work/", "/" + "home/", "~" + "/"]))


def test_tests_and_recipes_name_no_path_outside_the_repo():
    hits = []
    for folder in ("tests", "recipes"):
        for path in sorted((ROOT / folder).rglob("*")):
            if path.is_file() and path.suffix in (".py", ".yaml", ".yml", ".json", ".jsonl", ".txt", ".md"):
                for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                    if OUTSIDE.search(line):
                        hits.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:100]}")
    assert hits == []
