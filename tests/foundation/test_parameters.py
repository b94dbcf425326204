"""The parameters cell: parsing with ast, type hints, reading command-line values."""

from __future__ import annotations

import pytest

from turbda_kit.errors import InputError
from turbda_kit.workflow.parameters import (
    CommandLineText,
    accepts,
    check_value,
    describe,
    parse_hint,
    parse_parameters_cell,
)

CELL = '''\
from typing import Literal, Optional
import os

out_dir: str = "."  # run directory (set by `turbda run`)
n: int = 3  # members = 3, with '=' and "quotes" in the comment
ratio = 0.5  # no hint: the default's type
sizes: list[int] = [
    1,
    2,
]  # multi-line default
mode: Literal["strong", "weak"] = "strong"  # a choice
path = os.getcwd()  # an expression: not checked
'''


def test_cell_is_parsed_without_running_it():
    params = parse_parameters_cell(CELL)
    assert list(params) == ["out_dir", "n", "ratio", "sizes", "mode", "path"]
    assert params["n"].type_name == "int" and params["n"].default == "3"
    assert params["n"].help == "members = 3, with '=' and \"quotes\" in the comment"
    assert params["ratio"].type_name == "float"
    assert params["sizes"].default_value == [1, 2] and params["sizes"].help == "multi-line default"
    assert params["mode"].spec == ("literal", ("strong", "weak"))
    assert params["path"].type_name == "Any" and params["path"].default_value == "os.getcwd()"


@pytest.mark.parametrize("hint, good, bad", [
    ("int", [0, -3], [1.5, True, "1", None]),
    ("float", [1, 1.5], [True, "1.5", [1.0]]),
    ("bool", [True, False], [0, "true"]),
    ("str", ["a", ""], [1, None]),
    ("list", [[], [1, "a"], (1,)], ["abc", {}]),
    ("list[int]", [[1, 2]], [[1, "a"], [1.5]]),
    ("dict", [{}, {"a": 1}], [[], "a"]),
    ("dict[str, float]", [{"a": 1, "b": 2.5}], [{"a": "x"}, {1: 1.0}]),
    ("tuple[int, ...]", [[1, 2], (3,)], [["a"]]),
    ("tuple[int, str]", [[1, "a"]], [[1, 2], [1]]),
    ("Optional[int]", [None, 3], [1.5]),
    ("int | None", [None, 3], ["3"]),
    ("Union[int, str]", [1, "a"], [1.5]),
    ("Literal['a', 'b']", ["a"], ["c", 1]),
    ("typing.Optional[float]", [None, 2, 2.5], ["x"]),
    ("'list[int]'", [[1]], [["a"]]),
    ("Any", [1, "a", None], []),
    ("torch.dtype", ["anything"], []),  # a class: not checked
])
def test_hints_accept_and_refuse(hint, good, bad):
    spec = parse_hint(hint)
    for value in good:
        assert accepts(spec, value), (hint, value)
    for value in bad:
        assert not accepts(spec, value), (hint, value)
    assert describe(spec)


def test_command_line_text_is_read_against_the_hint():
    params = parse_parameters_cell('label: str = "a"  # l\nn: int = 1  # n\n'
                                   'x: Optional[float] = None  # x\ns: dict = {}  # s\n'
                                   'k: Literal["1", "2"] = "1"  # k\n')

    def read(name, text):
        return check_value(params[name], CommandLineText(text), "nb.ipynb")

    assert read("label", "2024") == "2024"      # stays text for a str parameter
    assert read("label", "[1,") == "[1,"        # even when YAML cannot read it
    assert read("n", "2024") == 2024
    assert read("x", "2") == 2.0 and isinstance(read("x", "2"), float)  # int given for a float
    assert read("x", "1e-3") == pytest.approx(1e-3) and read("x", "null") is None
    assert read("s", "{radius: 1.5e6}") == {"radius": 1.5e6}
    assert read("k", "2") == "2"                # a Literal of strings takes the text
    with pytest.raises(InputError, match=r"^parameter n of nb.ipynb expects int, got 'two' \(str\)$"):
        read("n", "two")
