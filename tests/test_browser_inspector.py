"""Notebook 08's inspector in a real JupyterLab, driven by headless Chromium (Debian's package) via Playwright.

Skipped unless ``/usr/bin/chromium`` exists and ``playwright`` is importable (no browser is downloaded).
Starts ``jupyter lab`` on a free localhost port with a token, in a temporary copy of the notebook with a
temporary artifact cache and ``CSDN_PROFILE=smoke``; runs every cell, checks the inspector rendered,
changes the query and the selection mode through the widget, and checks it re-rendered. Screenshots
are written to the test's ``tmp_path`` (``pytest --basetemp=DIR`` keeps them somewhere known).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "08_query_gallery_inspector.ipynb"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
RUN_TIMEOUT_MS = 15 * 60 * 1000  # trains the smoke stages from scratch: minutes on a busy laptop
STEP_TIMEOUT_MS = 60 * 1000  # one widget re-render

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.is_file(), reason="needs Debian's chromium at /usr/bin/chromium"),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (pip install playwright)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_server(url: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"jupyter lab did not answer {url} within {timeout:.0f} s")


@pytest.fixture
def lab(tmp_path):
    """A running JupyterLab over a temporary copy of notebook 08: yields (url of the notebook, log path)."""
    root = tmp_path / "lab"
    root.mkdir()
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
    settings = tmp_path / "settings" / "@jupyterlab"
    (settings / "notebook-extension").mkdir(parents=True)
    (settings / "apputils-extension").mkdir(parents=True)
    # Every cell stays in the page (no virtual scrolling), so the widget can be found wherever it is;
    # the notebook's kernel starts without a dialog; no news toast over the screenshots.
    (settings / "notebook-extension" / "tracker.jupyterlab-settings").write_text(
        json.dumps({"windowingMode": "none", "autoStartDefaultKernel": True})
    )
    (settings / "apputils-extension" / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false"})
    )
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(
        os.environ,
        CSDN_PROFILE="smoke",
        CSDN_CACHE=str(tmp_path / "cache"),
        HF_HUB_OFFLINE="1",
        JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
        JUPYTER_DATA_DIR=str(tmp_path / "data"),
        JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "workspaces"),
    )
    env.pop("MPLBACKEND", None)
    log = tmp_path / "jupyter.log"
    command = [
        sys.executable,
        "-m",
        "jupyter",
        "lab",
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        f"--LabApp.user_settings_dir={tmp_path / 'settings'}",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.extension_manager=readonly",
        "--allow-root",
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for_server(f"http://127.0.0.1:{port}/api/status?token={token}", proc)
        yield f"http://127.0.0.1:{port}/lab/tree/{NOTEBOOK.name}?token={token}", log
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    """Stop the server and the kernels it started (its own process group)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_inspector_in_jupyterlab(lab, tmp_path):
    url, log = lab
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            page.goto(url)
            page.locator(".jp-Notebook").wait_for(timeout=120_000)
            select_kernel = page.locator(".jp-Dialog button", has_text="Select")
            try:  # should the kernel dialog show up anyway: take the notebook's kernel
                select_kernel.wait_for(timeout=5_000)
                select_kernel.click()
            except sync_api.TimeoutError:
                pass
            page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").wait_for(timeout=120_000)
            page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
            page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()

            inspector = page.locator(".widget-vbox", has=page.locator(".widget-output img")).first
            try:
                inspector.wait_for(timeout=RUN_TIMEOUT_MS)
            except sync_api.TimeoutError:
                page.screenshot(path=str(tmp_path / "timeout.png"))
                raise AssertionError(f"the inspector did not render; server log:\n{log.read_text()[-3000:]}") from None
            assert page.locator(".jp-OutputArea-output", has_text="Traceback").count() == 0
            summary = inspector.locator(".widget-html").first
            first_summary = summary.inner_text()
            first_image = inspector.locator(".widget-output img").first.get_attribute("src")
            assert "first true match" in first_summary or "no true match" in first_summary
            inspector.screenshot(path=str(tmp_path / "1_inspector.png"))

            # Another query from the worst-ranked list: the summary and the figure change.
            query = inspector.locator(".widget-dropdown", has=page.locator("label", has_text="query")).locator("select")
            assert query.locator("option").count() >= 2
            query.select_option(index=1)
            page.wait_for_function(
                "([el, old]) => el.innerText !== old",
                arg=[summary.element_handle(), first_summary],
                timeout=STEP_TIMEOUT_MS,
            )
            assert inspector.locator(".widget-output img").first.get_attribute("src") != first_image
            inspector.screenshot(path=str(tmp_path / "2_other_query.png"))

            # Queries by identity: the identity list appears and a query of the chosen identity is shown.
            second_summary = summary.inner_text()
            inspector.locator(".widget-toggle-button", has_text="by identity").click()
            identity = inspector.locator(".widget-dropdown", has=page.locator("label", has_text="identity"))
            identity.wait_for(state="visible", timeout=STEP_TIMEOUT_MS)
            pid = identity.locator("select option").nth(2).inner_text()
            identity.locator("select").select_option(index=2)
            page.wait_for_function(
                "([el, pid]) => el.innerText.includes(`query pid ${pid},`)",
                arg=[summary.element_handle(), pid],
                timeout=STEP_TIMEOUT_MS,
            )
            assert summary.inner_text() != second_summary
            inspector.screenshot(path=str(tmp_path / "3_by_identity.png"))

            # Side by side: a second model ranks the same query underneath (two summaries, two figures).
            compare = inspector.locator(".widget-dropdown", has=page.locator("label", has_text="compare"))
            compare.locator("select").select_option(index=2)  # the second model of the list
            page.wait_for_function(
                "el => el.querySelectorAll('code').length === 2",
                arg=summary.element_handle(),
                timeout=STEP_TIMEOUT_MS,
            )
            codes = summary.locator("code")
            queries = [codes.nth(i).inner_text().splitlines()[0].split(" | ")[2] for i in range(2)]
            assert queries[0] == queries[1] and queries[0].startswith("query pid")  # the same query
            assert inspector.locator(".widget-output img").count() == 2
            inspector.screenshot(path=str(tmp_path / "4_side_by_side.png"))
            page.screenshot(path=str(tmp_path / "5_page.png"))
        finally:
            browser.close()
