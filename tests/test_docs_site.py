"""The documentation site (mkdocs.yml), its generators and CITATION.cff.

The full strict build is marked slow (it renders every notebook and module); CI builds the
site anyway with `make docs`, which `make test` runs. The fast tests check the pieces the
build is made of: the API layout read from the source tree, the page builders, the reST
conversion of docstrings, the completed navigation and the citation metadata.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
TOOLS = REPO / "tools"


def _load_tool(name: str):
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


pytest.importorskip("mkdocs", reason="the docs extra is not installed (pip install -e .[docs])")
pytest.importorskip("griffe", reason="the docs extra is not installed (pip install -e .[docs])")
hooks = _load_tool("docsite_hooks")
rst = _load_tool("docsite_griffe")


# --- API layout and pages ------------------------------------------------------------

def test_api_layout_has_every_subpackage_and_core_module_of_the_tree():
    layout = hooks.api_layout(REPO / "turbda_kit")
    subpackages = {sub.name for sub in layout.subpackages}
    on_disk = {p.parent.name for p in (REPO / "turbda_kit").glob("*/__init__.py")
               if not p.parent.name.startswith("_")}
    assert subpackages == on_disk
    assert {"models", "obs", "filters", "experiments", "surrogate", "data", "parallel",
            "workflow", "viz", "testing"} <= subpackages
    assert {"io", "provenance", "progress", "memory", "random_streams", "registry",
            "errors", "device", "metrics"} <= set(layout.core_modules)
    assert "__main__" not in layout.core_modules and "__init__" not in layout.core_modules
    filters = next(sub for sub in layout.subpackages if sub.name == "filters")
    assert "filters.ensf" in filters.modules and "filters.letkf" in filters.modules
    surrogate = next(sub for sub in layout.subpackages if sub.name == "surrogate")
    assert "surrogate.training" in surrogate.modules
    assert "surrogate.training.loop" in surrogate.modules
    assert surrogate.nested == ("surrogate.training",)
    assert filters.nested == ()


def test_a_new_subpackage_appears_without_editing_anything(tmp_path):
    package = tmp_path / "turbda_kit"
    (package / "report" / "_private").mkdir(parents=True)
    (package / "zeta").mkdir()
    (package / "__init__.py").write_text('"""Root."""\n')
    (package / "io.py").write_text('"""Atomic output."""\n')
    (package / "_hidden.py").write_text("")
    (package / "report" / "__init__.py").write_text('"""Reports: one :func:`x` a | b.\n\nMore."""\n')
    (package / "report" / "tables.py").write_text('"""Tables."""\n')
    (package / "report" / "_helpers.py").write_text("")
    (package / "report" / "_private" / "__init__.py").write_text("")
    (package / "zeta" / "__init__.py").write_text("")
    (package / "notes").mkdir()  # a folder without __init__.py is no package
    layout = hooks.api_layout(package)
    # Known names keep the nav order; unknown ones follow alphabetically.
    assert [sub.name for sub in layout.subpackages] == ["report", "zeta"]
    assert layout.subpackages[0].modules == ("report.tables",)
    assert layout.core_modules == ("io",)
    assert hooks.module_summary(package, "report") == "Reports: one `x` a \\| b."
    pages = hooks.api_pages(layout, package)
    assert set(pages) == {"api/index.md", "api/report.md", "api/zeta.md", "api/io.md"}
    assert "::: turbda_kit.report.tables" in pages["api/report.md"]
    assert "[`turbda_kit.report`](report.md)" in pages["api/index.md"]


def test_subpackage_page_documents_the_package_then_each_module():
    page = hooks.subpackage_page(hooks.Subpackage(
        "surrogate", ("surrogate.vit", "surrogate.training", "surrogate.training.loop"),
        nested=("surrogate.training",)))
    lines = page.splitlines()
    assert lines[0] == "# `turbda_kit.surrogate`"
    directives = [line for line in lines if line.startswith(":::")]
    assert directives == ["::: turbda_kit.surrogate", "::: turbda_kit.surrogate.vit",
                          "::: turbda_kit.surrogate.training",
                          "::: turbda_kit.surrogate.training.loop"]
    # Packages show their docstring only: what they re-export is documented where defined.
    sections = page.split(":::")[1:]
    assert ["members: false" in section for section in sections] == [True, False, True, False]


def test_page_generation_imports_neither_the_kit_nor_torch():
    code = textwrap.dedent(f"""
        import importlib.util, sys
        from pathlib import Path
        spec = importlib.util.spec_from_file_location("h", {str(TOOLS / "docsite_hooks.py")!r})
        h = importlib.util.module_from_spec(spec)
        sys.modules["h"] = h
        spec.loader.exec_module(h)
        root = Path({str(REPO / "turbda_kit")!r})
        h.api_pages(h.api_layout(root), root)
        loaded = [m for m in ("turbda_kit", "torch", "mpi4py", "deepspeed") if m in sys.modules]
        print(",".join(loaded))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=True)
    assert done.stdout.strip() == ""


def test_nav_lists_every_chapter_notebook_and_api_page():
    from mkdocs.config import load_config

    config = load_config(str(REPO / "mkdocs.yml"))
    hooks.on_config(config)
    listed = hooks._listed_pages(config.nav)
    assert {p.name for p in (REPO / "docs").glob("*.md")} <= listed
    notebooks = {f"{folder}/{p.name}" for folder in ("notebooks", "figures")
                 for p in (REPO / folder).glob("*.ipynb")}
    assert notebooks and notebooks <= listed
    assert {"api/index.md", "api/filters.md", "api/io.md"} <= listed
    assert config.strict is True


def test_a_new_chapter_is_appended_to_the_chapters(tmp_path):
    from mkdocs.config import load_config

    config = load_config(str(REPO / "mkdocs.yml"))
    docs = tmp_path / "docs"
    shutil.copytree(REPO / "docs", docs)
    (docs / "zz_new.md").write_text("Intro.\n\n# A new component\n\nText.\n")
    config.docs_dir = str(docs)
    hooks.on_config(config)
    chapters = next(entry["Chapters"] for entry in config.nav
                    if isinstance(entry, dict) and "Chapters" in entry)
    assert chapters[-1] == {"A new component": "zz_new.md"}
    assert "index.md" not in hooks._listed_pages(chapters)  # Home stays where it is


def test_notebook_banner_links_the_notebook_its_source_and_the_run_command():
    banner = hooks.notebook_banner("figures/fig_fields.ipynb")
    assert 'href="fig_fields.ipynb"' in banner
    assert "figures/src/fig_fields.py" in banner
    assert "turbda run figures/fig_fields.ipynb" in banner


# --- reST in docstrings ------------------------------------------------------------

def _resolver(known: dict[str, str]):
    return known.get


def test_roles_become_optional_autorefs_or_code():
    resolve = _resolver({"make_filter": "turbda_kit.filters.base.make_filter",
                         "turbda_kit.errors.InputError": "turbda_kit.errors.InputError"})
    text = ("Use :func:`make_filter`, :class:`~turbda_kit.errors.InputError`, "
            ":func:`make_filter(\"letkf\") <make_filter>` and :class:`torch.Tensor`.")
    out = rst.replace_roles(text, resolve)
    assert ('<autoref identifier="turbda_kit.filters.base.make_filter" optional>'
            "<code>make_filter</code></autoref>") in out
    assert ('<autoref identifier="turbda_kit.errors.InputError" optional>'
            "<code>InputError</code></autoref>") in out
    assert "<code>make_filter(&quot;letkf&quot;)</code></autoref>" in out
    assert "<code>torch.Tensor</code>" in out and ":class:" not in out and ":func:" not in out


def test_simple_tables_become_markdown_tables():
    lines = textwrap.dedent("""\
        Modules:

        ===========  ===========================
        ``a``        first
        ``b``        second, which goes on
                     on a second line | piped
        ===========  ===========================

        After.""").splitlines()
    assert rst.convert_tables(lines) == [
        "Modules:", "",
        "|  |  |", "|---|---|",
        "| ``a`` | first |",
        "| ``b`` | second, which goes on on a second line \\| piped |",
        "", "After."]
    with_header = ["====  =====", "What  Where", "====  =====", "x     y", "====  ====="]
    assert rst.convert_tables(with_header) == ["| What | Where |", "|---|---|", "| x | y |"]


def test_literal_blocks_and_math_become_fences():
    lines = textwrap.dedent("""\
        Run it::

            ds = run(1)
            print(ds)

        * Inversion, per mode::

              psi_0 = (H/mu) (q_1 / sinh mu)

        .. math:: x^2""").splitlines()
    assert rst.convert_literal_blocks(lines) == [
        "Run it:", "", "```python", "ds = run(1)", "print(ds)", "```", "",
        "* Inversion, per mode:", "", "  ```text", "  psi_0 = (H/mu) (q_1 / sinh mu)", "  ```", "",
        "```tex", "x^2", "```"]


def test_module_sections_become_linked_tables():
    lines = ["Modules", "-------", "execute   one notebook into a run directory",
             "records   ``run.json``: reading it", "          and merging it"]
    out = rst.convert_summary_sections(lines)
    assert out == ["**Modules**", "", "| module | what it holds |", "|---|---|",
                   "| :mod:`execute` | one notebook into a run directory |",
                   "| :mod:`records` | ``run.json``: reading it and merging it |"]
    parameters = ["Parameters", "----------", "x : int", "    A value."]
    assert rst.convert_summary_sections(parameters) == parameters


def test_every_docstring_of_the_kit_loses_its_rest_roles():
    import griffe

    package = griffe.load("turbda_kit", search_paths=[str(REPO)], allow_inspection=False,
                          extensions=griffe.load_extensions(rst.RstDocstrings))
    texts = {obj.path: obj.docstring.value for obj in rst._members(package)
             if obj.docstring is not None}
    assert len(texts) > 200
    left = {path: rst.ROLE.search(text)[0] for path, text in texts.items()
            if rst.ROLE.search(text)}
    assert not left, left
    # A short name resolves from the docstring's scope to where the object is defined.
    assert ('identifier="turbda_kit.filters.base.make_filter"'
            in texts["turbda_kit.filters.base"])


# --- citation ----------------------------------------------------------------------

def test_citation_cff_has_the_required_fields_and_both_papers():
    cff = yaml.safe_load((REPO / "CITATION.cff").read_text(encoding="utf-8"))
    assert cff["cff-version"] == "1.2.0"
    for key in ("message", "title", "authors"):
        assert cff[key], key
    version = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(),
                        flags=re.MULTILINE)[1]
    assert str(cff["version"]) == version
    assert cff["license"] == "BSD-3-Clause"
    for person in cff["authors"] + [a for ref in cff["references"] for a in ref["authors"]]:
        assert "name" in person or "family-names" in person, person
    by_title = {ref["title"]: ref for ref in cff["references"]}
    sc24 = by_title["A Scalable Real-Time Data Assimilation Framework for Predicting "
                    "Turbulent Atmosphere Dynamics"]
    assert [a["family-names"] for a in sc24["authors"]] == [
        "Yin", "Liang", "Liu", "Bao", "Chipilski", "Lu", "Zhang"]
    assert sc24["type"] == "conference-paper" and sc24["year"] == 2024
    ensf = by_title["An ensemble score filter for tracking high-dimensional nonlinear "
                    "dynamical systems"]
    assert [a["family-names"] for a in ensf["authors"]] == ["Bao", "Zhang", "Zhang"]
    assert ensf["journal"] == "Computer Methods in Applied Mechanics and Engineering"
    assert re.fullmatch(r"10\.\d{4,9}/[-._;()/:A-Za-z0-9]+", ensf["doi"])


@pytest.mark.skipif(shutil.which("cffconvert") is None, reason="cffconvert not installed")
def test_citation_cff_is_valid_against_the_cff_schema():
    done = subprocess.run(["cffconvert", "--validate", "-i", str(REPO / "CITATION.cff")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_readme_has_how_to_cite_which_the_site_includes():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "How to cite" in re.findall(r"^## (.+)$", readme, flags=re.MULTILINE)
    assert "--8<-- [start:how-to-cite]" in readme and "--8<-- [end:how-to-cite]" in readme
    assert '--8<-- "README.md:how-to-cite"' in (REPO / "docs" / "citing.md").read_text()


# --- the whole site ----------------------------------------------------------------

@pytest.mark.slow
def test_site_builds_in_strict_mode(tmp_path):
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict",
                           "--config-file", str(REPO / "mkdocs.yml"), "--site-dir", str(site)],
                          cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    filters = (site / "api" / "filters" / "index.html").read_text(encoding="utf-8")
    assert 'id="turbda_kit.filters.ensf.ensf_analysis"' in filters
    assert ":func:" not in filters and ":class:" not in filters
    notebook = site / "notebooks" / "05_da_cycling"
    assert "DA cycling" in (notebook / "index.html").read_text(encoding="utf-8")
    assert (notebook / "05_da_cycling.ipynb").is_file()
    assert (site / "figures" / "fig_fields" / "index.html").is_file()
    assert "10.1016/j.cma.2024.117447" in (site / "citing" / "index.html").read_text()
    for page in ("api/io", "api/parallel", "api/workflow", "design", "ensf"):
        assert (site / page / "index.html").is_file(), page
