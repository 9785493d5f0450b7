"""The README, CONTRIBUTING.md and docs/ against the code they describe (fast: files only, no servers).

What a page names has to exist: its links, `make` targets, `python -m` modules, `mlflow run` parameters and
config group options; its tables of exit codes and config groups equal what train/errors.py and conf/ hold.
A refusal shown on purpose (`$ python -m train model=nope` followed by its `error:` line, or a row of the
"Bad input" table in docs/failures.md) is exempt from the config-option check: it is meant not to exist.
"""

from __future__ import annotations

import ast
import importlib.machinery
import importlib.util
import re
import shlex
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
PAGES = [README, REPO / "CONTRIBUTING.md", *sorted((REPO / "docs").glob("*.md"))]
PAGE_IDS = [str(p.relative_to(REPO)) for p in PAGES]
README_MAX_LINES = 200
# Config groups whose options a page may name as `group=option`: each option is conf/<group>/<option>.yaml.
GROUPS = ("data", "model", "hyp", "debug", "hparams_search", "train", "mlflow")

_FENCE = re.compile(r"^```[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)
_INLINE = re.compile(r"(`+)(.+?)\1", re.S)


def _text(page: Path) -> str:
    return page.read_text(encoding="utf-8")


def _without_bad_input_section(text: str) -> str:
    """The page less its "### Bad input" section (to the next heading of level 3 or above)."""
    return re.sub(r"^### Bad input[ \t]*\n.*?(?=^#{1,3} |\Z)", "", text, flags=re.S | re.M)


def _logical_lines(block: str) -> List[str]:
    """A fenced block's lines with backslash continuations joined."""
    return block.replace("\\\n", " ").splitlines()


def _code(text: str, skip_refusals: bool = False) -> List[str]:
    """The code of a page: each fenced block's logical lines, then each inline code span.

    skip_refusals leaves out a `$ command` line that is directly followed by an `error:` line."""
    snippets: List[str] = []
    for block in _FENCE.findall(text):
        lines = _logical_lines(block)
        for i, line in enumerate(lines):
            refused = line.lstrip().startswith("$ ") and i + 1 < len(lines) and lines[i + 1].startswith("error:")
            if not (skip_refusals and refused):
                snippets.append(line)
    prose = _FENCE.sub("", text)
    snippets.extend(m.group(2) for m in _INLINE.finditer(prose))
    return snippets


def _prose(text: str) -> str:
    """A page less its code, where links live."""
    return _INLINE.sub("", _FENCE.sub("", text))


def _table_rows(text: str, header: Tuple[str, ...]) -> Iterator[List[str]]:
    """The rows of every table whose header's first cells are `header` (case-insensitive)."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        cells = _cells(line)
        if tuple(c.lower() for c in cells[:len(header)]) != header:
            continue
        for row in lines[i + 2:]:
            if not row.startswith("|"):
                break
            yield _cells(row)


def _cells(line: str) -> List[str]:
    if not line.startswith("|"):
        return []
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def _backticked(cell: str) -> List[str]:
    return [m.group(2) for m in _INLINE.finditer(cell)]


# (1) -----------------------------------------------------------------------------------------------------------

def test_readme_is_a_first_day_page():
    lines = len(_text(README).splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail to docs/ (at most {README_MAX_LINES})"


# (2) -----------------------------------------------------------------------------------------------------------

def exit_codes() -> Dict[str, int]:
    """The EXIT_* constants of train/errors.py, read without importing it."""
    tree = ast.parse((REPO / "train" / "errors.py").read_text(encoding="utf-8"))
    codes = {}
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, ast.Constant):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name) and target.id.startswith("EXIT_"):
                    codes[target.id] = node.value.value
    return codes


def _documented_exit_codes(page: Path) -> List[int]:
    codes = []
    for cells in _table_rows(_text(page), ("exit code", "meaning")):
        code = cells[0].strip("`* ")
        assert code.isdigit(), f"{page.name}: exit-code table row {cells!r}: the first cell is not a code"
        codes.append(int(code))
    return codes


def test_readme_exit_code_table_equals_train_errors():
    constants = exit_codes()
    assert constants, "train/errors.py defines no EXIT_* constants"
    documented = _documented_exit_codes(README)
    assert documented, "README.md has no `| exit code | meaning |` table"
    assert len(documented) == len(set(documented)), f"README.md lists an exit code twice: {documented}"
    assert set(documented) == set(constants.values()), (
        f"README.md's exit codes {sorted(documented)} != train/errors.py's "
        f"{sorted(constants.items(), key=lambda kv: kv[1])}")


@pytest.mark.parametrize("page", PAGES[1:], ids=PAGE_IDS[1:])
def test_other_exit_code_tables_equal_train_errors(page):
    documented = _documented_exit_codes(page)
    if documented:
        assert sorted(documented) == sorted(set(exit_codes().values())), f"{page.name}: {documented}"


# (3) -----------------------------------------------------------------------------------------------------------

def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    heading = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())  # a link in a heading keeps its text
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def _anchors(page: Path) -> Set[str]:
    anchors: Set[str] = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", _FENCE.sub("", _text(page)), flags=re.M):
        slug, n = _slug(heading), 1
        unique = slug
        while unique in anchors:
            unique, n = f"{slug}-{n}", n + 1
        anchors.add(unique)
    return anchors


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_relative_links_point_to_files_that_exist(page):
    broken = []
    for target in re.findall(r"!?\[[^\]]*\]\(<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\)", _prose(_text(page))):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # https:, mailto:, ...
            continue
        path, _, fragment = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target} (no such file)")
        elif fragment and file.suffix == ".md" and fragment not in _anchors(file):
            broken.append(f"{target} (no heading #{fragment} in {file.relative_to(REPO)})")
    assert not broken, f"{page.name}: broken links: {broken}"


# (4) -----------------------------------------------------------------------------------------------------------

def make_targets() -> Set[str]:
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    return set(re.findall(r"^([A-Za-z][\w-]*)\s*:(?!=)", makefile, flags=re.M))


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_make_targets_exist(page):
    targets = make_targets()
    named = {t for snippet in _code(_text(page)) for t in re.findall(r"(?<![\w/.$-])make +([A-Za-z][\w-]*)", snippet)}
    assert named <= targets, f"{page.name}: no such Makefile target: {sorted(named - targets)}"


# (5) -----------------------------------------------------------------------------------------------------------

def module_spec(name: str):
    """The spec `python -m name` would run, found without importing name or any package above it."""
    path = [str(REPO), *sys.path]
    spec = None
    for depth, part in enumerate(name.split(".")):
        fullname = ".".join(name.split(".")[:depth + 1])
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None:
            spec = importlib.util.find_spec(fullname) if depth == 0 else None  # a built-in or frozen module
        if spec is None:
            return None
        path = list(spec.submodule_search_locations or [])
    return spec


def _runnable(name: str) -> bool:
    spec = module_spec(name)
    if spec is None:
        return False
    if spec.submodule_search_locations is not None:  # a package runs its __main__
        return module_spec(f"{name}.__main__") is not None
    return True


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_python_m_modules_exist(page):
    named = {m for snippet in _code(_text(page)) for m in re.findall(r"\bpython3? -m +([A-Za-z_][\w.]*\w)", snippet)}
    missing = sorted(m for m in named if not _runnable(m))
    assert not missing, f"{page.name}: `python -m` of modules that do not exist (or cannot run): {missing}"


# (6) -----------------------------------------------------------------------------------------------------------

def mlproject_parameters() -> Dict[str, Set[str]]:
    project = yaml.safe_load((REPO / "MLproject").read_text(encoding="utf-8"))
    return {name: set((entry or {}).get("parameters") or {}) for name, entry in project["entry_points"].items()}


def _mlflow_run_commands(text: str) -> Iterator[List[str]]:
    for snippet in _code(text):
        for match in re.finditer(r"\bmlflow run\b(.*)", snippet):
            try:
                yield shlex.split(match.group(1), comments=True)
            except ValueError:  # an unbalanced quote: take it word by word
                yield match.group(1).split()


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_mlflow_run_parameters_are_declared(page):
    declared = mlproject_parameters()
    wrong = []
    for argv in _mlflow_run_commands(_text(page)):
        entry_point, params = "main", []
        for i, arg in enumerate(argv):
            value = argv[i + 1] if i + 1 < len(argv) else ""
            if arg in ("-e", "--entry-point"):
                entry_point = value
            elif arg.startswith("--entry-point="):
                entry_point = arg.split("=", 1)[1]
            elif arg in ("-P", "--param-list"):
                params.append(value.split("=", 1)[0])
        if entry_point not in declared:
            wrong.append(f"-e {entry_point}: MLproject has no such entry point")
            continue
        wrong += [f"-P {p}= (entry point {entry_point})" for p in params if p not in declared[entry_point]]
    assert not wrong, f"{page.name}: `mlflow run` with undeclared parameters: {wrong}"


# (7) -----------------------------------------------------------------------------------------------------------

# `-P data=s3://...` is an MLproject parameter (a data option or a dataset's URI), not a Hydra group choice.
_GROUP_OPTION = re.compile(r"(?<![\w./-])(?<!-P )(" + "|".join(GROUPS) + r")=([^\s\"'`)\]|]+)")


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_config_group_options_exist(page):
    missing = set()
    for snippet in _code(_without_bad_input_section(_text(page)), skip_refusals=True):
        for group, options in _GROUP_OPTION.findall(snippet):
            for option in options.split(","):
                placeholder = re.search(r"[<>{}$*]", option)
                if option and not placeholder and not (REPO / "conf" / group / f"{option}.yaml").is_file():
                    missing.add(f"{group}={option}")
    assert not missing, f"{page.name}: no such conf/<group>/<option>.yaml: {sorted(missing)}"


# Tables that mirror conf/ and train/errors.py ----------------------------------------------------------------------

def test_readme_config_table_lists_every_group_and_option():
    listed: Dict[str, Set[str]] = {}
    for cells in _table_rows(_text(README), ("group", "options")):
        groups = _backticked(cells[0])
        assert len(groups) == 1, f"README.md config table row {cells!r}: name one group, in backticks"
        listed[groups[0]] = set(_backticked(cells[1]))
    assert listed, "README.md has no `| group | options |` table"
    conf = REPO / "conf"
    groups = {d.name for d in conf.iterdir() if d.is_dir() and d.name != "hydra"}
    assert groups <= set(listed), f"README.md's config table leaves out the groups {sorted(groups - set(listed))}"
    for group, options in listed.items():
        actual = {p.stem for p in (conf / group).glob("*.yaml")} if (conf / group).is_dir() else set()
        assert options == actual, (
            f"README.md's config table: group {group} lists {sorted(options)}, conf/ has {sorted(actual)}")


def test_bad_input_table_is_well_formed():
    """docs/failures.md's table, which tests/e2e/test_refusals.py runs row by row: `shown` | error line | exit code."""
    text = _text(REPO / "docs" / "failures.md")
    section = re.search(r"^### Bad input[ \t]*\n(.*?)(?=^#{1,3} |\Z)", text, flags=re.S | re.M)
    assert section, "docs/failures.md has no `### Bad input` section"
    rows = [_cells(line) for line in section.group(1).splitlines() if line.startswith("| `")]
    assert rows, "docs/failures.md's Bad input table has no rows"
    codes = set(exit_codes().values())
    shown = []
    for cells in rows:
        assert re.fullmatch(r"`[^`]+`", cells[0]), f"first cell of {cells!r} is not one code span"
        assert cells[-1].isdigit() and int(cells[-1]) in codes, f"row {cells!r}: the last cell is not an exit code"
        shown.append(cells[0][1:-1])
    assert len(shown) == len(set(shown)), f"a Bad input row is listed twice: {shown}"
