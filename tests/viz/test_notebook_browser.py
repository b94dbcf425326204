"""Interactive plots render in a real JupyterLab in a real browser, with no internet.

The test starts JupyterLab (no token prompt, a throw-away config) and Debian's chromium
driven by playwright, opens a figure notebook of the kit with its parameters filled in
(papermill's ``prepare_only``), runs all cells, and requires:

* every cell ran without an error output;
* a bokeh canvas in the outputs (the plot rendered, interactively);
* no console error, no failed request (this machine has no route to a CDN, so a plot
  whose BokehJS or Panel stylesheets come from a CDN fails here as it would offline),
  and no ``Panel: ERROR`` message.

Skipped, saying why, without chromium (``apt-get install chromium``) or playwright
(``pip install playwright``; never ``playwright install``).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from test_plots import make_cycling_dirs

FIGURES = Path(__file__).resolve().parents[2] / "figures"

pytestmark = pytest.mark.timeout(900)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def jupyterlab(tmp_path):
    """A JupyterLab server on a free port serving ``tmp_path/root``; yields its base URL
    (with the token) and the root; stopped by its pid afterwards."""
    if shutil.which("chromium") is None:
        pytest.skip("no chromium on PATH: apt-get install -y chromium (Debian's build) to run "
                    "the real-browser test")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip "
                        "install playwright (the test extra); do not run `playwright install`")
    pytest.importorskip("jupyterlab", reason="jupyterlab is not installed")
    root = tmp_path / "root"
    root.mkdir()
    token, port = secrets.token_hex(16), _free_port()
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
           "IPYTHONDIR": str(tmp_path / "ipython"), "PYTHONPATH": os.pathsep.join(
               p for p in (str(Path(__file__).resolve().parents[2]),
                           os.environ.get("PYTHONPATH", "")) if p)}
    log = open(tmp_path / "jupyterlab.log", "w")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
         "--ip=127.0.0.1", f"--port={port}", f"--IdentityProvider.token={token}",
         f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True",
         f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}", "--LabApp.news_url=None",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if server.poll() is not None:
                pytest.fail(f"JupyterLab exited: {(tmp_path / 'jupyterlab.log').read_text()}")
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5)
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("JupyterLab did not start within 180 s")
                time.sleep(0.5)
        yield base, token, root
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def _prepared_notebook(root: Path) -> str:
    """fig_rmse_vs_time with its parameters filled in, reading small saved results."""
    import papermill

    results = root / "results"
    make_cycling_dirs(results)
    papermill.execute_notebook(
        str(FIGURES / "fig_rmse_vs_time.ipynb"), str(root / "fig_rmse_vs_time.ipynb"),
        parameters={"run_dirs": [str(results / "06_coupled_vit_ensf")],
                    "runs": ["vit_only", "vit_ensf", "sqg_letkf"], "out_dir": str(root / "out"),
                    "html": False},
        prepare_only=True, progress_bar=False)
    return "fig_rmse_vs_time.ipynb"


_KERNEL_IDLE = """() => {
  const widget = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  const kernel = widget && widget.sessionContext && widget.sessionContext.session
                 && widget.sessionContext.session.kernel;
  return Boolean(kernel) && kernel.status === 'idle';
}"""
_ALL_RAN = """() => {
  const widget = window.jupyterapp.shell.currentWidget;
  const cells = widget.content.widgets.filter(cell => cell.model.type === 'code');
  return cells.every(cell => cell.model.executionCount !== null)
         && widget.sessionContext.session.kernel.status === 'idle';
}"""
_OUTPUTS = """() => window.jupyterapp.shell.currentWidget.content.widgets
  .filter(cell => cell.model.type === 'code').map(cell => cell.model.outputs.toJSON())"""


def test_a_figure_notebook_plots_interactively_in_jupyterlab_offline(jupyterlab):
    from playwright.sync_api import sync_playwright

    base, token, root = jupyterlab
    name = _prepared_notebook(root)
    console, failed = [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"),
                                             args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            page.on("console", lambda m: console.append((m.type, m.text)))
            page.on("pageerror", lambda e: console.append(("error", str(e))))
            page.on("requestfailed", lambda r: failed.append(f"{r.url}: {r.failure}"))
            page.goto(f"{base}/lab/tree/{name}?token={token}")
            page.wait_for_selector(".jp-Notebook", timeout=180_000)
            page.wait_for_function(_KERNEL_IDLE, timeout=240_000)
            page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
            page.wait_for_function(_ALL_RAN, timeout=480_000, polling=1000)
            outputs = page.evaluate(_OUTPUTS)
            errors = [o for cell in outputs for o in cell if o.get("output_type") == "error"]
            assert not errors, json.dumps(errors)[:3000]
            page.wait_for_selector(".jp-OutputArea .bk-Canvas", timeout=60_000)
            canvases = page.locator(".jp-OutputArea .bk-Canvas").count()
            time.sleep(2)  # late console messages of the plot's scripts
        finally:
            browser.close()
    assert canvases >= 1
    assert not failed, f"requests failed (resources not inline?): {failed}"
    bad = [f"{kind}: {text}" for kind, text in console
           if kind == "error" or "Panel: ERROR" in text]
    assert not bad, "\n".join(bad)
    assert (root / "out" / "fig_rmse_vs_time.png").is_file()
