"""Griffe extension of the documentation site: reST markup in docstrings, as Markdown.

The kit's docstrings are numpy style and use a few reStructuredText constructs that
mkdocstrings (Markdown) would print literally. Before mkdocstrings parses a docstring,
this extension rewrites, in its text only (the source is not touched):

* cross-reference roles (``:func:`name```, ``:class:`~a.b.C```, ``:meth:`C.m```,
  ``:mod:``, ``:data:``, ``:attr:``, ``:exc:``, ``:obj:``, ``title <target>``) into
  links to the documented object, resolved like Python names from where the docstring
  stands (its scope, then the package); an unresolvable target (``torch.Tensor``, a
  private helper) stays code, without a warning;
* simple tables (``====  ====`` borders) into Markdown tables;
* literal blocks introduced by ``::`` into fenced code blocks (Python-highlighted when
  the block parses as Python);
* ``.. math:: formula`` into a fenced block of the formula;
* ``Modules`` / ``Subpackages`` sections written as ``name   summary`` lines into a table
  linking each name (numpy-style parsers expect ``name : type`` items there).

Loaded by ``mkdocs.yml`` (mkdocstrings' ``extensions`` option); the rewriting functions
are pure and tested in ``tests/test_docs_site.py``.
"""

from __future__ import annotations

import ast
import html
import re
import textwrap
from collections.abc import Callable, Iterator

from griffe import Extension, GriffeLoader, Module, Object

ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|attr|data|obj|exc|const|type)"
                  r":`(?P<text>[^`]+)`")
TABLE_BORDER = re.compile(r"^(?P<indent> *)=+(?: +=+)+ *$")
MATH = re.compile(r"^(?P<indent> *)\.\. math:: *(?P<formula>.*)$")
BULLET = re.compile(r"^ *(?:[*+-]|\d+\.) +")
SUMMARY_SECTIONS = {"Modules": "module", "Subpackages": "subpackage"}
SUMMARY_ITEM = re.compile(r"^(?P<name>[\w.]+) {2,}(?P<summary>\S.*)$")

Resolver = Callable[[str], "str | None"]


def _role_link(match: re.Match, resolve: Resolver) -> str:
    text = match["text"].strip()
    title, target = text, text
    explicit = re.fullmatch(r"(?P<title>.+?)\s*<(?P<target>[^<>]+)>", text)
    if explicit:
        title, target = explicit["title"], explicit["target"]
    elif text.startswith("~"):
        target = text[1:]
        title = target.rsplit(".", 1)[-1]
    target = target.strip().lstrip(".").removesuffix("()")
    code = f"<code>{html.escape(title)}</code>"
    identifier = resolve(target)
    if identifier is None:
        return code
    return f'<autoref identifier="{html.escape(identifier)}" optional>{code}</autoref>'


def replace_roles(text: str, resolve: Resolver) -> str:
    """Replace reST cross-reference roles by optional autorefs (or code).

    Parameters
    ----------
    text : str
        Docstring text.
    resolve : callable
        ``resolve(target) -> identifier or None``: the full path of the documented object
        a role's target names, or ``None`` to print the title as code.
    """
    return ROLE.sub(lambda match: _role_link(match, resolve), text)


def _columns(border: str) -> list[tuple[int, int | None]]:
    spans = [(m.start(), m.end()) for m in re.finditer(r"=+", border)]
    return [(start, spans[i + 1][0] if i + 1 < len(spans) else None)
            for i, (start, _) in enumerate(spans)]


def _cells(line: str, columns: list[tuple[int, int | None]]) -> list[str]:
    return [line[start:end].strip() for start, end in columns]


def _markdown_row(cells: list[str]) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def _table(lines: list[str], indent: str) -> list[str]:
    """A simple table (its lines, borders included) as Markdown table lines."""
    columns = _columns(lines[0][len(indent):])
    borders = [i for i, line in enumerate(lines) if TABLE_BORDER.match(line)]
    header: list[str] | None = None
    body_start = 1
    if len(borders) >= 3:
        header = [" ".join(cells) for cells in zip(*(
            _cells(line[len(indent):], columns) for line in lines[1:borders[1]]))]
        body_start = borders[1] + 1
    rows: list[list[str]] = []
    for line in lines[body_start:borders[-1]]:
        if not line.strip():
            continue
        cells = _cells(line[len(indent):], columns)
        if rows and not cells[0]:  # a blank first column continues the row above
            rows[-1] = [f"{old} {new}".strip() for old, new in zip(rows[-1], cells)]
        else:
            rows.append(cells)
    header = header or [""] * len(columns)
    out = [_markdown_row(header), "|" + "---|" * len(columns)]
    out += [_markdown_row(row) for row in rows]
    return [indent + line for line in out]


def convert_tables(lines: list[str]) -> list[str]:
    """Replace every reST simple table in ``lines`` by a Markdown table."""
    out: list[str] = []
    i = 0
    while i < len(lines):
        border = TABLE_BORDER.match(lines[i])
        if border is None:
            out.append(lines[i])
            i += 1
            continue
        # The table ends at the last border before a blank line or the end.
        end = i
        j = i + 1
        while j < len(lines) and lines[j].strip():
            if TABLE_BORDER.match(lines[j]):
                end = j
            j += 1
        if end == i:  # a lone border: not a table
            out.append(lines[i])
            i += 1
            continue
        if out and out[-1].strip():
            out.append("")
        out += _table(lines[i:end + 1], border["indent"])
        i = end + 1
    return out


def _is_python(block: str) -> bool:
    try:
        ast.parse(block)
    except SyntaxError:
        return False
    return True


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _fence(block: list[str], indent: str, language: str) -> list[str]:
    return [f"{indent}```{language}", *(indent + line if line else "" for line in block),
            f"{indent}```"]


def convert_literal_blocks(lines: list[str]) -> list[str]:
    """Replace ``::`` literal blocks and ``.. math::`` lines by fenced code blocks."""
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        math = MATH.match(line)
        if math and math["formula"]:
            out += _fence([math["formula"]], math["indent"], "tex")
            i += 1
            continue
        if not line.rstrip().endswith("::"):
            out.append(line)
            i += 1
            continue
        # The block: the indented lines after the blank line(s) that follow.
        base = _indent(line)
        bullet = BULLET.match(line)
        content_indent = " " * (bullet.end() if bullet else base)
        j = i + 1
        while j < len(lines) and not lines[j].strip():
            j += 1
        block_end = j
        while block_end < len(lines) and (not lines[block_end].strip()
                                          or _indent(lines[block_end]) > base):
            block_end += 1
        while block_end > j and not lines[block_end - 1].strip():
            block_end -= 1
        if block_end == j:  # no indented block follows: leave the line alone
            out.append(line)
            i += 1
            continue
        text = line.rstrip()[:-2].rstrip()
        if text.strip():
            out.append(text + ":" if not text.endswith(":") else text)
        out.append("")
        block = textwrap.dedent("\n".join(lines[j:block_end])).splitlines()
        out += _fence(block, content_indent, "python" if _is_python("\n".join(block)) else "text")
        i = block_end
    return out


def convert_summary_sections(lines: list[str]) -> list[str]:
    """Replace ``Modules``/``Subpackages`` sections of ``name   summary`` lines by a table.

    Each name becomes a ``:mod:`` role (linked by :func:`replace_roles`); a line indented
    below an item continues its summary. A section with any other line is left alone.
    """
    out: list[str] = []
    i = 0
    while i < len(lines):
        title = lines[i].strip()
        underlined = (i + 1 < len(lines) and title in SUMMARY_SECTIONS
                      and re.fullmatch(r"-{3,}", lines[i + 1].strip()) is not None)
        if not underlined:
            out.append(lines[i])
            i += 1
            continue
        rows: list[list[str]] = []
        j = i + 2
        while j < len(lines) and lines[j].strip():
            item = SUMMARY_ITEM.match(lines[j])
            if item:
                rows.append([f":mod:`{item['name']}`", item["summary"].strip()])
            elif rows and lines[j].startswith(" "):
                rows[-1][1] += " " + lines[j].strip()
            else:
                rows = []
                break
            j += 1
        if not rows:
            out.append(lines[i])
            i += 1
            continue
        out += [f"**{title}**", "", _markdown_row([SUMMARY_SECTIONS[title], "what it holds"]),
                "|---|---|", *(_markdown_row(row) for row in rows)]
        i = j
    return out


def rst_to_markdown(text: str, resolve: Resolver) -> str:
    """A docstring's reST constructs as Markdown (tables, literal blocks, math, sections,
    roles)."""
    lines = convert_summary_sections(convert_literal_blocks(convert_tables(text.splitlines())))
    return replace_roles("\n".join(lines), resolve)


def _members(obj: Object) -> Iterator[Object]:
    """``obj`` and every object defined inside it (aliases skipped)."""
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _members(member)


class RstDocstrings(Extension):
    """Rewrite the reST constructs of every docstring of a loaded package as Markdown."""

    def on_package(self, *, pkg: Module, loader: GriffeLoader, **kwargs: object) -> None:
        objects = list(_members(pkg))
        by_name: dict[str, set[str]] = {}
        for obj in objects:
            by_name.setdefault(obj.name, set()).add(obj.path)
        for obj in objects:
            if obj.docstring is not None:
                obj.docstring.value = rst_to_markdown(
                    obj.docstring.value, lambda target, obj=obj: _resolve(target, obj, pkg,
                                                                          by_name))


def _lookup(scope: Object, dotted: str) -> str | None:
    try:
        found = scope[dotted]
        return found.final_target.path if found.is_alias else found.path
    except Exception:  # missing name, unresolvable alias (external package): not linked
        return None


def _resolve(target: str, obj: Object, pkg: Module, by_name: dict[str, set[str]]) -> str | None:
    """Full path of the package object ``target`` names as seen from ``obj``, if any."""
    root = pkg.name + "."
    if target == pkg.name:
        return pkg.path
    if target.startswith(root):
        return _lookup(pkg, target[len(root):])
    scope: Object | None = obj
    while scope is not None:  # the enclosing class, module, package, ...
        if found := _lookup(scope, target):
            return found
        scope = scope.parent
    candidates = by_name.get(target.rsplit(".", 1)[-1], set())
    if len(candidates) == 1 and "." not in target:
        return next(iter(candidates))
    return None
