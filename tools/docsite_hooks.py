"""MkDocs hooks of the documentation site (``mkdocs.yml``): API pages, examples, navigation.

Everything here is derived at build time from what the repository holds, so a new
subpackage, module, notebook or chapter appears on the site without editing a list:

* **API reference**: one page per subpackage of ``turbda_kit`` (a section per public
  module, nested subpackages included) and one page per core module. The tree is read as
  files and the summaries with :mod:`ast`; nothing is imported, so optional dependencies
  (deepspeed, mpi4py, ipyparallel) need not be installed. mkdocstrings renders each
  module's public names: its ``__all__``, or its names without a leading underscore.
* **Examples**: every ``notebooks/*.ipynb`` and ``figures/*.ipynb``, rendered by
  mkdocs-jupyter from the committed, output-free notebook and never executed; each page
  links its ``.ipynb``, names its percent-format source and says how to run it.
* **Chapters**: ``docs/*.md`` pages that the ``Chapters`` section of the nav does not
  list yet are appended to it, so a new page is never left out of the navigation.

The page builders are pure functions of the source tree (tested in
``tests/test_docs_site.py``); the ``on_*`` functions are the MkDocs events.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

PACKAGE = "turbda_kit"
API_DIR = "api"
# Nav order of the subpackages and core modules the site knew when it was written; any
# other one found in the tree follows in alphabetical order.
SUBPACKAGE_ORDER = ("models", "obs", "filters", "experiments", "surrogate", "baselines", "data",
                    "parallel", "workflow", "viz", "testing", "report")
CORE_MODULE_ORDER = ("io", "provenance", "progress", "memory", "random_streams",
                     "registry", "errors", "device", "metrics")
# Notebook folders rendered as examples: (folder in the repository, nav title).
NOTEBOOK_FOLDERS = (("notebooks", "Notebooks"), ("figures", "Figure notebooks"))
NAV_CHAPTERS = "Chapters"
NAV_EXAMPLES = "Examples"
NAV_API = "API reference"


@dataclass(frozen=True)
class Subpackage:
    """A subpackage of the kit and the modules documented on its page.

    Attributes
    ----------
    name : str
        Dotted name below the package root, e.g. ``"filters"``.
    modules : tuple of str
        Dotted names below the package root of every public module and nested
        subpackage inside it, in source order of the tree (sorted by path).
    nested : tuple of str
        Which of ``modules`` are subpackages: their page section shows the docstring only,
        since the names they re-export are documented in the modules that follow.
    """

    name: str
    modules: tuple[str, ...] = field(default_factory=tuple)
    nested: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class ApiLayout:
    """What the API reference documents: subpackages and core modules, in nav order."""

    subpackages: tuple[Subpackage, ...]
    core_modules: tuple[str, ...]


def _is_public(path: Path) -> bool:
    return not path.name.startswith(("_", "."))


def _ordered(names: list[str], preferred: tuple[str, ...]) -> list[str]:
    known = [name for name in preferred if name in names]
    return known + sorted(name for name in names if name not in preferred)


def _modules_below(directory: Path, prefix: str) -> list[str]:
    """Dotted names of the public modules and subpackages below ``directory``."""
    found: list[str] = []
    for path in sorted(directory.iterdir()):
        if not _is_public(path):
            continue
        if path.is_file() and path.suffix == ".py":
            found.append(f"{prefix}.{path.stem}")
        elif path.is_dir() and (path / "__init__.py").is_file():
            found.append(f"{prefix}.{path.name}")
            found.extend(_modules_below(path, f"{prefix}.{path.name}"))
    return found


def api_layout(package_dir: Path) -> ApiLayout:
    """Read the package tree and say what the API reference documents.

    Parameters
    ----------
    package_dir : Path
        The package's source folder (the one holding ``__init__.py``).

    Returns
    -------
    ApiLayout
        Every public subpackage (folders with an ``__init__.py``, names without a leading
        underscore) with its modules, and every public top-level module, in nav order.
    """
    subpackages = [path.name for path in package_dir.iterdir()
                   if _is_public(path) and path.is_dir() and (path / "__init__.py").is_file()]
    core = [path.stem for path in package_dir.glob("*.py") if _is_public(path)]
    def subpackage(name: str) -> Subpackage:
        modules = tuple(_modules_below(package_dir / name, name))
        nested = tuple(module for module in modules
                       if package_dir.joinpath(*module.split(".")).is_dir())
        return Subpackage(name, modules, nested)

    return ApiLayout(
        subpackages=tuple(subpackage(name) for name in _ordered(subpackages, SUBPACKAGE_ORDER)),
        core_modules=tuple(_ordered(core, CORE_MODULE_ORDER)),
    )


def module_summary(package_dir: Path, dotted: str) -> str:
    """First paragraph of a module's docstring on one line, read with :mod:`ast`.

    reST roles become code (``:class:`~a.B``` gives ```B```) and ``|`` is escaped, so the
    text fits a Markdown table cell. Empty if the module has no docstring.
    """
    path = package_dir.joinpath(*dotted.split("."))
    source = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    docstring = ast.get_docstring(ast.parse(source.read_text(encoding="utf-8"))) or ""
    paragraph = " ".join(docstring.strip().split("\n\n", 1)[0].split())
    paragraph = re.sub(r":[\w:]+:`~?(?:[^`<]*<)?([^`>]+)>?`",
                       lambda m: f"`{m[1].rsplit('.', 1)[-1]}`", paragraph)
    return paragraph.replace("|", "\\|")


def _directive(dotted: str, **options: object) -> str:
    lines = [f"::: {PACKAGE}.{dotted}"]
    if options:
        lines.append("    options:")
        lines += [f"      {key}: {str(value).lower() if isinstance(value, bool) else value}"
                  for key, value in options.items()]
    return "\n".join(lines) + "\n"


def subpackage_page(subpackage: Subpackage) -> str:
    """Markdown of a subpackage's API page: its docstring, then one section per module."""
    parts = [f"# `{PACKAGE}.{subpackage.name}`\n",
             _directive(subpackage.name, members=False, show_root_heading=False)]
    for module in subpackage.modules:
        members = {"members": False} if module in subpackage.nested else {}
        parts.append(_directive(module, show_root_heading=True, heading_level=2,
                                show_submodules=False, **members))
    return "\n".join(parts)


def core_module_page(module: str) -> str:
    """Markdown of a core module's API page."""
    return f"# `{PACKAGE}.{module}`\n\n" + _directive(module, show_root_heading=False)


def api_index_page(layout: ApiLayout, package_dir: Path) -> str:
    """Markdown of the API reference's overview: a table of every page and its summary."""
    rows = ["# API reference\n",
            f"One page per subpackage of `{PACKAGE}` (a section per module) and one per core",
            "module, generated from the source: each module documents its public names (its",
            "`__all__`). Names a subpackage re-exports are documented where they are defined.\n",
            "| page | what it holds |", "|---|---|"]
    for subpackage in layout.subpackages:
        rows.append(f"| [`{PACKAGE}.{subpackage.name}`]({subpackage.name}.md) | "
                    f"{module_summary(package_dir, subpackage.name)} |")
    for module in layout.core_modules:
        rows.append(f"| [`{PACKAGE}.{module}`]({module}.md) | "
                    f"{module_summary(package_dir, module)} |")
    return "\n".join(rows) + "\n"


def api_pages(layout: ApiLayout, package_dir: Path) -> dict[str, str]:
    """Every API page as ``{path below docs/: markdown}``, the overview first."""
    pages = {f"{API_DIR}/index.md": api_index_page(layout, package_dir)}
    for subpackage in layout.subpackages:
        pages[f"{API_DIR}/{subpackage.name}.md"] = subpackage_page(subpackage)
    for module in layout.core_modules:
        pages[f"{API_DIR}/{module}.md"] = core_module_page(module)
    return pages


def example_notebooks(repo: Path) -> dict[str, list[str]]:
    """Notebooks rendered as examples: ``{nav title: [path in the repository, ...]}``.

    A notebook keeps its repository path on the site (``notebooks/05_da_cycling.ipynb``
    becomes the page ``notebooks/05_da_cycling/``).
    """
    return {title: [f"{folder}/{path.name}" for path in sorted((repo / folder).glob("*.ipynb"))]
            for folder, title in NOTEBOOK_FOLDERS}


def notebook_banner(notebook: str) -> str:
    """HTML put under a notebook page's title: download link, source, how to run it.

    Parameters
    ----------
    notebook : str
        The notebook's path in the repository, e.g. ``"notebooks/05_da_cycling.ipynb"``.
    """
    folder, name = notebook.rsplit("/", 1)
    stem = name.removesuffix(".ipynb")
    return (f'<p class="turbda-notebook"><a href="{name}" download>Download {name}</a>'
            f" · source: <code>{folder}/src/{stem}.py</code>"
            f" · run: <code>turbda run {notebook}</code></p>")


def _repo(config: MkDocsConfig) -> Path:
    return Path(config.config_file_path).resolve().parent


def _nav_section(nav: list, title: str) -> list | None:
    for entry in nav:
        if isinstance(entry, dict) and title in entry:
            return entry[title]
    return None


def _listed_pages(nav: object) -> set[str]:
    if isinstance(nav, str):
        return {nav}
    if isinstance(nav, dict):
        return set().union(*(_listed_pages(value) for value in nav.values()))
    if isinstance(nav, list):
        return set().union(*(_listed_pages(value) for value in nav))
    return set()


def _page_title(path: Path) -> str:
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return path.stem


def on_config(config: MkDocsConfig) -> MkDocsConfig:
    """Complete the nav: unlisted chapters, the examples and the API reference."""
    repo = _repo(config)
    nav = config.nav if config.nav is not None else []
    chapters = _nav_section(nav, NAV_CHAPTERS)
    if chapters is not None:
        listed = _listed_pages(nav)
        for path in sorted(Path(config.docs_dir).glob("*.md")):
            if path.name not in listed:
                chapters.append({_page_title(path): path.name})
    nav.append({NAV_EXAMPLES: [{title: notebooks}
                               for title, notebooks in example_notebooks(repo).items()
                               if notebooks]})
    layout = api_layout(repo / PACKAGE)
    nav.append({NAV_API: [{"Overview": f"{API_DIR}/index.md"}]
                + [{f"{PACKAGE}.{sub.name}": f"{API_DIR}/{sub.name}.md"}
                   for sub in layout.subpackages]
                + [{f"{PACKAGE}.{module}": f"{API_DIR}/{module}.md"}
                   for module in layout.core_modules]})
    config.nav = nav
    return config


# Before mkdocs-jupyter's on_files, which turns the notebooks into pages.
@event_priority(100)
def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Add the generated API pages and the example notebooks to the site's files."""
    repo = _repo(config)
    for path, markdown in api_pages(api_layout(repo / PACKAGE), repo / PACKAGE).items():
        files.append(File.generated(config, path, content=markdown))
    # Real files under the repository root, not generated ones: mkdocs-jupyter reads a
    # notebook through its File's src_dir.
    for notebooks in example_notebooks(repo).values():
        for path in notebooks:
            files.append(File(path, src_dir=str(repo), dest_dir=config.site_dir,
                              use_directory_urls=config.use_directory_urls))
    return files


def on_page_content(html: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    """Put the download link, source and run command under a notebook page's title."""
    notebook = page.file.src_uri
    if not any(notebook in notebooks
               for notebooks in example_notebooks(_repo(config)).values()):
        return html
    head, found, tail = html.partition("</h1>")
    banner = notebook_banner(notebook)
    return head + found + banner + tail if found else banner + html
