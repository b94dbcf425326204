"""A notebook's ``parameters`` cell: declared names, type hints, defaults, value checking.

The cell is read with :mod:`ast` (never executed): every top-level ``name: hint = default``
(or ``name = default``) is a parameter, its trailing comment is its help text. Values given
on the command line (``-p NAME VALUE``), in a YAML file (``-f``) or from Python are checked
against the hints before anything runs, so a wrong type is one line at exit 2 instead of a
``TypeError`` minutes into a run.

Hints understood: ``int``, ``float`` (an int is accepted), ``bool``, ``str``, ``list``,
``dict``, ``tuple``, ``list[X]``, ``dict[K, V]``, ``tuple[X, ...]``, ``Optional[X]``,
``Union[X, Y]``, ``X | None``, ``Literal[...]``, ``Any``. A hint naming anything else (a
class the cell imports) is not checked. Without a hint the default's type is the hint.

Example
-------
>>> spec = parse_hint("list[int] | None")
>>> accepts(spec, [1, 2]), accepts(spec, None), accepts(spec, ["a"])
(True, True, False)
>>> describe(parse_hint("Literal['strong', 'weak']"))
"one of 'strong', 'weak'"
"""

from __future__ import annotations

import ast
import contextlib
import io
import os
import tokenize
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..errors import InputError
from ..optional import require

PARAMETERS_TAG = "parameters"
OUT_DIR_PARAMETER = "out_dir"


@dataclass(frozen=True)
class NotebookParameter:
    """One entry of a notebook's ``parameters`` cell.

    Attributes
    ----------
    name : str
        Variable name.
    type_name : str
        The type hint as written (``int``, ``list[int]``, ``str | None``, ...), or the type
        of the default when the line has no hint.
    default : str
        The default as written in the cell (Python source).
    help : str
        The comment after the assignment.
    """

    name: str
    type_name: str
    default: str
    help: str

    @property
    def spec(self) -> TypeSpec:
        """The parsed type hint (see :func:`parse_hint`)."""
        return parse_hint(self.type_name)

    @property
    def default_value(self) -> Any:
        """The default as a Python value when it is a literal, else its source text."""
        return literal_or_source(self.default)


# ---------------------------------------------------------------------------------------
# Type hints as small trees: ("any",), ("type", name), ("list", item), ("dict", key, value),
# ("tuple", items, variadic), ("union", options), ("literal", values), ("none",).
TypeSpec = tuple

_ANY: TypeSpec = ("any",)
_SCALARS = {"int", "float", "bool", "str", "complex", "bytes"}
_CONTAINERS = {"list": "list", "List": "list", "Sequence": "list", "set": "list",
               "dict": "dict", "Dict": "dict", "Mapping": "dict",
               "tuple": "tuple", "Tuple": "tuple"}


def parse_hint(text: str) -> TypeSpec:
    """Parse a type hint's source into a :data:`TypeSpec` (unknown names accept anything).

    Raises
    ------
    InputError
        If ``text`` is not a Python expression.
    """
    try:
        node = ast.parse(text.strip() or "Any", mode="eval").body
    except SyntaxError as err:
        raise InputError(f"type hint {text!r} is not a Python expression") from err
    return _spec(node)


def _name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):  # typing.Optional, t.List
        return node.attr
    return None


def _spec(node: ast.expr) -> TypeSpec:
    if isinstance(node, ast.Constant):
        if node.value is None:
            return ("none",)
        if isinstance(node.value, str):  # a quoted (forward-reference) hint
            return parse_hint(node.value)
        return _ANY
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _union([_spec(node.left), _spec(node.right)])
    if isinstance(node, ast.Subscript):
        outer = _name(node.value)
        args = list(node.slice.elts) if isinstance(node.slice, ast.Tuple) else [node.slice]
        if outer == "Optional":
            return _union([_spec(args[0]), ("none",)])
        if outer == "Union":
            return _union([_spec(a) for a in args])
        if outer == "Literal":
            values = []
            for a in args:
                with contextlib.suppress(ValueError):
                    values.append(ast.literal_eval(a))
            return ("literal", tuple(values))
        kind = _CONTAINERS.get(outer or "")
        if kind == "list":
            return ("list", _spec(args[0]))
        if kind == "dict":
            return ("dict", _spec(args[0]), _spec(args[1]) if len(args) > 1 else _ANY)
        if kind == "tuple":
            if len(args) == 2 and isinstance(args[1], ast.Constant) and args[1].value is Ellipsis:
                return ("tuple", (_spec(args[0]),), True)
            return ("tuple", tuple(_spec(a) for a in args), False)
        return _ANY
    name = _name(node)
    if name in _SCALARS:
        return ("type", name)
    if name in _CONTAINERS:
        kind = _CONTAINERS[name]
        return {"list": ("list", _ANY), "dict": ("dict", _ANY, _ANY),
                "tuple": ("tuple", (_ANY,), True)}[kind]
    if name == "None" or name == "NoneType":
        return ("none",)
    return _ANY  # Any, object, a class the cell imports: not checked


def _union(options: list[TypeSpec]) -> TypeSpec:
    flat: list[TypeSpec] = []
    for opt in options:
        flat.extend(opt[1] if opt[0] == "union" else [opt])
    if any(opt == _ANY for opt in flat):
        return _ANY
    return ("union", tuple(flat))


def accepts(spec: TypeSpec, value: Any) -> bool:
    """Whether ``value`` (a YAML-like Python value) fits ``spec``.

    ``int`` is accepted for ``float``; ``bool`` is not accepted for ``int`` or ``float``;
    a list is accepted for a ``tuple`` hint (YAML has no tuples).
    """
    kind = spec[0]
    if kind == "any":
        return True
    if kind == "none":
        return value is None
    if kind == "type":
        name = spec[1]
        if name == "bool":
            return isinstance(value, bool)
        if name == "int":
            return isinstance(value, int) and not isinstance(value, bool)
        if name == "float":
            return isinstance(value, (int, float)) and not isinstance(value, bool)
        if name == "complex":
            return isinstance(value, (int, float, complex)) and not isinstance(value, bool)
        return isinstance(value, {"str": str, "bytes": bytes}[name])
    if kind == "list":
        return isinstance(value, (list, tuple)) and all(accepts(spec[1], v) for v in value)
    if kind == "dict":
        return isinstance(value, dict) and all(
            accepts(spec[1], k) and accepts(spec[2], v) for k, v in value.items())
    if kind == "tuple":
        if not isinstance(value, (list, tuple)):
            return False
        items, variadic = spec[1], spec[2]
        if variadic:
            return all(accepts(items[0], v) for v in value)
        return len(value) == len(items) and all(accepts(s, v) for s, v in zip(items, value))
    if kind == "union":
        return any(accepts(opt, value) for opt in spec[1])
    if kind == "literal":
        return any(value == v and type(value) is type(v) for v in spec[1])
    raise AssertionError(spec)  # pragma: no cover - every kind is handled above


def describe(spec: TypeSpec) -> str:
    """A short human reading of ``spec`` for error messages (``list of int or None``)."""
    kind = spec[0]
    if kind == "any":
        return "any value"
    if kind == "none":
        return "None (null)"
    if kind == "type":
        return spec[1]
    if kind == "list":
        return "list" if spec[1] == _ANY else f"list of {describe(spec[1])}"
    if kind == "dict":
        return "mapping" if spec[1:] == (_ANY, _ANY) else \
            f"mapping of {describe(spec[1])} to {describe(spec[2])}"
    if kind == "tuple":
        if spec[2]:
            return "list" if spec[1][0] == _ANY else f"list of {describe(spec[1][0])}"
        return f"list of {len(spec[1])} ({', '.join(describe(s) for s in spec[1])})"
    if kind == "union":
        return " or ".join(describe(opt) for opt in spec[1])
    return "one of " + ", ".join(repr(v) for v in spec[1])


def _accepts_text(spec: TypeSpec) -> bool:
    return accepts(spec, "text") or (spec[0] == "literal" and any(isinstance(v, str) for v in spec[1]))


# ---------------------------------------------------------------------------------------
# Reading the parameters cell.

def literal_or_source(source: str) -> Any:
    """A parameter default as a Python value when it is a literal, else its source text."""
    try:
        return ast.literal_eval(source)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return source


def _comments(source: str) -> dict[int, str]:
    """Line number (1-based) -> the text of the comment on that line."""
    found: dict[int, str] = {}
    with contextlib.suppress(tokenize.TokenError, IndentationError, SyntaxError):
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                found[tok.start[0]] = tok.string.lstrip("#").strip()
    return found


def parse_parameters_cell(source: str) -> dict[str, NotebookParameter]:
    """The parameters declared by the source of a ``parameters`` cell, in order.

    Raises
    ------
    InputError
        If the cell is not valid Python.
    """
    try:
        tree = ast.parse(source)
    except SyntaxError as err:
        raise InputError(f"the parameters cell is not valid Python (line {err.lineno}: "
                         f"{err.msg}): fix the cell") from err
    comments = _comments(source)
    found: dict[str, NotebookParameter] = {}
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            targets, value = [node.target], node.value
            hint = ast.get_source_segment(source, node.annotation) or ""
        elif isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) for t in node.targets):
            targets, value, hint = node.targets, node.value, ""
        else:
            continue
        default = ast.get_source_segment(source, value) if value is not None else "None"
        default = default or "None"
        if not hint:  # the default's type, when the default is a literal
            try:
                literal = ast.literal_eval(value) if value is not None else None
                hint = type(literal).__name__ if isinstance(
                    literal, (bool, int, float, str, list, dict, tuple)) else "Any"
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                hint = "Any"  # an expression such as os.getcwd(): not checked
        help_text = next((comments[line] for line in range(node.lineno, node.end_lineno + 1)
                          if line in comments), "")
        for target in targets:
            found[target.id] = NotebookParameter(target.id, hint, default, help_text)
    return found


def notebook_parameters(path: str | os.PathLike) -> dict[str, NotebookParameter]:
    """The parameters a notebook declares in its cell tagged ``parameters``.

    Parameters
    ----------
    path : path-like
        An ``.ipynb`` file.

    Returns
    -------
    dict of str to NotebookParameter
        In the order of the cell.

    Raises
    ------
    InputError
        If the file is missing, not a notebook, has no (or more than one) ``parameters``
        cell, or the cell is not valid Python.
    """
    nbformat = require("nbformat", "reading notebooks")
    nb_path = Path(path)
    if not nb_path.is_file():
        raise InputError(f"notebook not found: {nb_path} (give the path to an existing .ipynb file)")
    try:
        nb = nbformat.read(nb_path, as_version=4)
    except Exception as err:  # nbformat raises several unrelated types
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(f"{nb_path} is not a readable Jupyter notebook: {first}") from err
    cells = [c for c in nb.cells if PARAMETERS_TAG in c.get("metadata", {}).get("tags", [])]
    if not cells:
        raise InputError(f"{nb_path} has no cell tagged 'parameters': tag the cell holding the "
                         "defaults with 'parameters' (View > Cell Toolbar > Tags in Jupyter)")
    if len(cells) > 1:
        raise InputError(f"{nb_path} has {len(cells)} cells tagged 'parameters': keep one")
    try:
        return parse_parameters_cell(cells[0].source)
    except InputError as err:
        raise InputError(f"{nb_path.name}: {err}") from err


# ---------------------------------------------------------------------------------------
# Values from the command line and from files.

class CommandLineText(str):
    """A ``-p NAME VALUE`` value not yet read: read as YAML against the parameter's hint
    by :func:`check_parameters` (so ``-p label 2024`` stays the string ``"2024"`` for a
    ``str`` parameter and becomes the integer 2024 for an ``int`` one)."""


def _yaml_floats(value: Any) -> Any:
    # YAML 1.1 reads "1e-3" or "1.5e6" as strings; numbers written that way are floats.
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return float(value) if any(c in value.lower() for c in ".e") and value.strip() else value
        return value
    if isinstance(value, list):
        return [_yaml_floats(v) for v in value]
    if isinstance(value, dict):
        return {k: _yaml_floats(v) for k, v in value.items()}
    return value


def parse_value(text: str) -> Any:
    """Parse a command-line parameter value as YAML: a scalar, a list or a mapping.

    ``"3"`` → 3, ``"1e-3"`` → 0.001, ``"true"`` → True, ``"[1, 2]"`` → [1, 2],
    ``"{radius: 1.5e6}"`` → {"radius": 1500000.0} (for ``dict`` parameters such as
    ``letkf_settings``), ``"abc"`` → "abc", ``"null"`` → None. Strings that read as
    numbers in exponent notation become floats, also inside lists and mappings.

    Raises
    ------
    InputError
        If the text is not valid YAML.
    """
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as err:
        first = str(err).splitlines()[0]
        raise InputError(f"cannot parse value {text!r}: write a number, true/false, a string, "
                         f"a list like [1, 2] or a mapping like {{a: 1}} ({first})") from err
    return _yaml_floats(value)


def load_parameter_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML file of ``name: value`` parameters (safe loader: no code runs).

    Raises
    ------
    InputError
        Missing or unreadable file, invalid YAML, not a mapping, or a non-string key.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"parameter file not found: {p} (give a YAML file of name: value lines)")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        first = " ".join(str(err).split())
        raise InputError(f"parameter file {p} is not valid YAML: {first}") from err
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"parameter file {p} cannot be read: {err}") from err
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise InputError(f"parameter file {p} must hold a mapping of name: value lines, "
                         f"not a {type(data).__name__}")
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise InputError(f"parameter file {p}: names must be text, got {bad[0]!r}")
    return _yaml_floats(data)


def check_value(param: NotebookParameter, value: Any, notebook: str | os.PathLike) -> Any:
    """``value`` checked against ``param``'s hint (command-line text read as YAML first).

    Returns
    -------
    The value to inject: unchanged, or the YAML reading of a :class:`CommandLineText`
    (its raw text when the parameter takes a string and YAML reads something else); an
    int given for a ``float`` hint becomes a float.

    Raises
    ------
    InputError
        One line naming the parameter, the expected type and the given value.
    """
    spec = param.spec
    if isinstance(value, CommandLineText):
        text = str(value)
        try:
            parsed = parse_value(text)
        except InputError:
            if _accepts_text(spec):
                return text
            raise
        if not accepts(spec, parsed) and _accepts_text(spec) and accepts(spec, text):
            return text
        value = parsed
    if accepts(spec, value):
        return _as_float_where_hinted(spec, value)
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    expected = describe(spec)
    if expected.replace(" ", "") != param.type_name.replace(" ", ""):
        expected += f" ({param.type_name})"
    raise InputError(f"parameter {param.name} of {Path(notebook).name} expects {expected}, "
                     f"got {shown} ({type(value).__name__})")


def _as_float_where_hinted(spec: TypeSpec, value: Any) -> Any:
    """An int given for a ``float`` hint (alone or with None/str) becomes a float, so the
    notebook computes with the type it declared (``-p dt 1`` -> 1.0)."""
    options = spec[1] if spec[0] == "union" else (spec,)
    takes_float = ("type", "float") in options and ("type", "int") not in options
    if takes_float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def check_parameters(declared: dict[str, NotebookParameter], given: dict[str, Any],
                     notebook: str | os.PathLike) -> dict[str, Any]:
    """Check names and types of ``given`` against ``declared``; return the values to inject.

    Raises
    ------
    InputError
        An unknown name (the message lists the valid ones) or a value of the wrong type.
    """
    unknown = sorted(set(given) - set(declared))
    if unknown:
        valid = ", ".join(sorted(declared)) or "(none)"
        raise InputError(f"unknown parameter(s) {', '.join(unknown)} for {Path(notebook).name}; "
                         f"valid names: {valid}")
    return {name: check_value(declared[name], value, notebook) for name, value in given.items()}
