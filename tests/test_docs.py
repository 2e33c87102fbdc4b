"""The docs a newcomer reads are true to the code: every relative link and anchor of README.md
and docs/ leads somewhere, and every ``python flows/...`` command they show parses against
that flow's own options (no unknown flag, no bad value)."""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import pytest
from conftest import PROJECT_ROOT

PAGES = [PROJECT_ROOT / "README.md", *sorted((PROJECT_ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^(```|~~~)")
COMMAND = re.compile(r"python3? (flows/[a-z_]+\.py)((?:\\\n|[^\n`#|;&>])*)")


def prose(page: Path) -> str:
    """The page without its fenced code blocks (links there are not links)."""
    lines, inside = [], False
    for line in page.read_text().splitlines():
        if FENCE.match(line.strip()):
            inside = not inside
            continue
        if not inside:
            lines.append(line)
    return "\n".join(lines)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*|__", "", heading.strip().lower())
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link: its text
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found: dict[str, int] = {}
    names = set()
    for line in prose(page).splitlines():
        match = re.match(r"^#{1,6}\s+(.*)$", line)
        if match:
            base = slug(match.group(1))
            count = found.get(base, 0)
            names.add(base if count == 0 else f"{base}-{count}")
            found[base] = count + 1
    return names


def test_every_relative_link_and_anchor_resolves():
    broken = []
    for page in PAGES:
        for target in LINK.findall(prose(page)):
            if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append(f"{page.relative_to(PROJECT_ROOT)}: {target} (no such file)")
            elif anchor and file.suffix == ".md" and anchor not in anchors(file):
                broken.append(f"{page.relative_to(PROJECT_ROOT)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_the_anchor_rule_is_githubs():
    assert slug("Search on a budget") == "search-on-a-budget"
    assert slug("Model-based search: Optuna's TPE, with and without pruning") == \
        "model-based-search-optunas-tpe-with-and-without-pruning"
    assert slug("`--data`: your own data") == "--data-your-own-data"


def shown_commands() -> list[tuple[str, str, list[str]]]:
    """(page, flow file, arguments) of every ``python flows/X.py ...`` the docs show."""
    commands = []
    for page in PAGES:
        text = page.read_text()
        for match in COMMAND.finditer(text):
            arguments = match.group(2).replace("\\\n", " ")
            commands.append((str(page.relative_to(PROJECT_ROOT)), match.group(1),
                             shlex.split(arguments)))
    return commands


def test_the_docs_show_commands_of_every_flow():
    flows = {flow for _, flow, _ in shown_commands()}
    assert flows >= {"flows/train.py", "flows/grid.py", "flows/random_search.py",
                     "flows/tune.py", "flows/exercise.py", "flows/serve.py"}


@pytest.mark.parametrize("page, flow, arguments", shown_commands(),
                         ids=lambda value: value if isinstance(value, str) else " ".join(value))
def test_every_command_the_docs_show_parses_against_its_flow(page, flow, arguments,
                                                             monkeypatch):
    """Parse (and validate) the command's options as its flow's command line does, without
    running it: an unknown flag or a bad value fails here, naming the page. A plain command
    (``flows/serve.py``, not a Prefect flow) parses with its own ``parse_arguments``."""
    from tasks import options

    module = importlib.import_module(flow.removesuffix(".py").replace("/", "."))
    if hasattr(module, "parse_arguments"):  # a plain command, not a flow (flows/serve.py)
        from tasks.errors import UserError

        try:
            module.parse_arguments([a for a in arguments if a not in ("-h", "--help")])
        except (UserError, SystemExit) as exc:
            pytest.fail(f"{page}: python {flow} {shlex.join(arguments)}: {exc}")
        return
    parsed = {}

    def parse_only(flow_object, description, argv=None, expand=(), make=None, check=None,
                   files=None, prefixes=None):
        parser = options.flow_parser(flow_object, description, expand, files=tuple(files or {}),
                                     prefixes=prefixes)
        parser.exit = lambda status=0, message=None: pytest.fail(
            f"{page}: python {flow} {shlex.join(arguments)}: {message}")
        parser.error = lambda message: pytest.fail(
            f"{page}: python {flow} {shlex.join(arguments)}: {message}")
        args = parser.parse_args(argv)
        base = {}  # a --space-file the docs name is read by the flow, not here
        parsed.update(options.flow_arguments(flow_object, args, expand, make, base))

    monkeypatch.setattr(module, "flow_main", parse_only)
    module.main([a for a in arguments if a not in ("-h", "--help")])
    assert isinstance(parsed, dict)


def test_the_deployments_page_maps_every_renamed_parameter_to_its_option():
    from tasks.options import OPTION_NAMES

    page = (PROJECT_ROOT / "docs" / "deployments.md").read_text()
    rows = re.findall(r"^\| `([a-z_]+)`[^|]*\| `--([a-z-]+)` \|", page, re.M)
    assert dict(rows) == OPTION_NAMES
    for parameter, prefix in (("baseline_config", "baseline"), ("grid", "grid"),
                              ("random_space", "random")):
        assert f"| `{parameter}.FIELD` (exercise) | `--{prefix}-FIELD` |" in page
