"""The notebooks as their users meet them: JupyterLab in a real (headless) Chromium, and make lab.

One JupyterLab server (``notebook_runner.start_lab``, the function behind ``make lab``) on a
free port of 127.0.0.1 with a token, and one Chromium driven by Playwright for Python. The
notebooks are made from the jupytext sources with the smoke profile and ``interactive=True``
injected (papermill's prepare-only step) and are run from the page, with the menus and the
widgets a user clicks; every check reads the page itself. Nothing may leave the machine:
JupyterLab runs without its news feed, update check and extension index, Chromium without
background networking, and every request the page makes to anything but the lab server is
refused and fails the test that made it.

Chromium is Debian's ``chromium`` package (``DFLORA_CHROMIUM`` names another executable);
Playwright's own browser download is not used. Without Chromium (or Playwright) the tests
are skipped with a one-line reason, except under ``CI=true``, where that is a failure.
Screenshots of each notebook's final state go to ``build/browser/``;
``docs/notebook-03-live.png`` is ``build/browser/03_training_mid-run-small.png``.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest

from dflora_core import notebook_runner

SHOTS = notebook_runner.BUILD_DIR / "browser"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",  # runs as root in containers and CI
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--metrics-recording-only",
]
PROMPT_DONE = re.compile(r"^\[\d+\]:$")


def _unavailable(reason: str):
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; under CI=true the browser tests must run", pytrace=False)
    pytest.skip(f"{reason}; browser tests skipped")


def chromium_executable() -> str | None:
    if os.environ.get("DFLORA_CHROMIUM"):
        return shutil.which(os.environ["DFLORA_CHROMIUM"])
    for name in ("chromium", "chromium-browser"):
        if found := shutil.which(name):
            return found
    return None


@pytest.fixture(scope="module")
def chromium():
    exe = chromium_executable()
    if exe is None:
        _unavailable("no Chromium found (Debian: apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _unavailable("Playwright for Python is not installed (make setup installs it)")
    return exe


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("browser")


def _prepare(name: str, folder: Path, runs: Path) -> Path:
    """A notebook as papermill --prepare-only writes it: the smoke profile, interactive, temp folders."""
    import papermill as pm

    src = notebook_runner.convert(notebook_runner.NOTEBOOK_DIR / f"{name}.py", runs / "sources" / f"{name}.ipynb")
    out = folder / f"{name}.ipynb"
    parameters = {
        "profile": "smoke",
        "interactive": True,
        "runs_root": str(runs / "runs"),
        "figures_dir": str(runs / "figures"),
    }
    pm.execute_notebook(str(src), str(out), parameters=parameters, prepare_only=True, progress_bar=False)
    return out


@pytest.fixture(scope="module")
def lab(chromium, workdir):
    """JupyterLab on a folder with the prepared notebooks (prepared/) and copies of the sources (notebooks/)."""
    root = workdir / "lab"
    (root / "prepared").mkdir(parents=True)
    shutil.copytree(notebook_runner.NOTEBOOK_DIR, root / "notebooks", ignore=shutil.ignore_patterns("*.ipynb"))
    for name in ("02_projection_init", "03_training", "06_zeroth_order"):
        _prepare(name, root / "prepared", workdir)
    state = workdir / "lab-state"
    env = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"}  # the suite's setting, not a user's
    env.update(
        JUPYTER_RUNTIME_DIR=str(state / "runtime"),
        JUPYTER_CONFIG_DIR=str(state / "config"),  # no user configuration of this machine
        OMP_WAIT_POLICY="PASSIVE",
        PYDEVD_DISABLE_FILE_VALIDATION="1",
    )
    extra = (f"--LabApp.user_settings_dir={state / 'user-settings'}", f"--LabApp.workspaces_dir={state / 'workspaces'}")
    with open(workdir / "lab.log", "w") as log:
        server = notebook_runner.start_lab(root, state / "app-settings", extra=extra, env=env, output=log)
    yield server
    server.stop()


class Browser:
    """One Chromium for the module; every request to anything but the lab server is refused and recorded."""

    def __init__(self, context, base: str):
        self.context, self.base = context, base
        self.outside: list[str] = []
        context.route("**/*", self._route)

    def _route(self, route):
        url = route.request.url
        if url.startswith(self.base + "/") or url == self.base:
            route.continue_()
        else:
            self.outside.append(url)
            route.abort()

    def open(self, lab, path: str):
        """A new tab on ``path`` in a workspace of its own (no tabs restored from an earlier test)."""
        page = self.context.new_page()
        page.errors = []  # JavaScript exceptions and console errors of this page
        page.on("pageerror", lambda err: page.errors.append(f"page error: {err}"))
        page.on("console", lambda msg: page.errors.append(f"console: {msg.text}") if msg.type == "error" else None)
        workspace = re.sub(r"\W", "-", Path(path).stem)
        page.goto(f"{lab.base}/lab/workspaces/{workspace}/tree/{path}?token={lab.token}")
        return page


@pytest.fixture(scope="module")
def browser(chromium, lab, workdir):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(workdir / "chromium-profile"),  # a fresh profile: no user data, no sign-in
            executable_path=chromium,
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1280, "height": 960},
        )
        context.set_default_timeout(120_000)
        yield Browser(context, lab.base)
        context.close()


# -- helpers that read the page ---------------------------------------------------------------------------
def _kernel_ready(page, display_name: str, n_cells: int | None = None) -> None:
    """The notebook is rendered (all its cells) and its kernel (the one named) is idle."""
    page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook").wait_for()
    if n_cells:
        page.wait_for_function(
            "n => document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell').length >= n", arg=n_cells
        )
    page.get_by_text(f"{display_name} | Idle").wait_for()


def _menu(page, menu: str, command: str) -> None:
    """Click a main-menu entry, as a user does (Run > Run All Cells is runmenu:run-all)."""
    page.locator(".lm-MenuBar-item", has_text=menu).click()
    page.locator(f".lm-Menu li[data-command='{command}']").click()


def _code_cell(page, snippet: str):
    cell = page.locator(".jp-CodeCell", has=page.locator(".jp-InputArea-editor", has_text=snippet))
    assert cell.count() == 1, f"{cell.count()} code cells contain {snippet!r}"
    return cell


def _wait_executed(cell, timeout_s: float = 180) -> None:
    """Until the cell's prompt shows its execution count ([7]:), i.e. it ran and finished."""
    prompt = cell.locator(".jp-InputArea-prompt")
    deadline = time.monotonic() + timeout_s
    # textContent, not innerText: a cell scrolled out of view (content-visibility) has no innerText
    while not PROMPT_DONE.match(prompt.text_content().strip()):
        assert time.monotonic() < deadline, f"cell still {prompt.text_content().strip()} after {timeout_s:.0f} s"
        time.sleep(0.25)


def _prompts(page) -> list[str]:
    return [
        t.strip()
        for t in page.locator(
            ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell .jp-InputArea-prompt"
        ).all_text_contents()
    ]


def _all_executed(page, timeout_s: float = 180) -> None:
    """Until every code cell shows its execution count (Run All has finished)."""
    deadline = time.monotonic() + timeout_s
    while not all(PROMPT_DONE.match(p) for p in _prompts(page) or ["none"]):
        if time.monotonic() > deadline:
            _screenshot(page, "timeout")
            raise AssertionError(f"cells not executed after {timeout_s:.0f} s: prompts {_prompts(page)}")
        time.sleep(0.5)


def _cell_errors(page) -> list[str]:
    """What the page shows as an error: stderr or error outputs, widgets that failed, page errors."""
    shown = page.locator(
        ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']"
    ).all_inner_texts()
    broken = page.get_by_text(re.compile("Error displaying widget|Failed to load model class")).all_inner_texts()
    return [t.strip()[:2000] for t in shown + broken] + page.errors


def _screenshot(page, name: str, small_width: int | None = None) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path))
    if small_width:
        from PIL import Image

        with Image.open(path) as im:
            h = round(im.height * small_width / im.width)
            small = im.convert("RGB").resize((small_width, h), Image.LANCZOS)
            small = small.quantize(colors=256, method=Image.Quantize.FASTOCTREE)  # ~40 KB
            small.save(SHOTS / f"{name}-small.png", optimize=True)
    return path


def _hide_file_browser(page) -> None:
    tab = page.locator(".jp-SideBar.jp-mod-left .lm-TabBar-tab.lm-mod-current")
    if tab.count():
        tab.first.click()


def _project_kernel() -> str:
    spec = notebook_runner.kernelspec()
    assert spec["name"] == notebook_runner.PROJECT_KERNEL["name"], (
        "the project kernel 'dflora' is not installed in this environment: run make setup"
    )
    return spec["display_name"]


# -- make lab as a newcomer meets it -----------------------------------------------------------------------
def test_lab_is_local_and_asks_nothing_of_the_internet(tmp_path):
    cmd = notebook_runner.lab_command(tmp_path, 8899, tmp_path / "settings")
    for flag in (
        "--ServerApp.ip=127.0.0.1",
        "--ServerApp.port=8899",
        "--ServerApp.port_retries=0",
        "--ServerApp.open_browser=False",
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.extension_manager=readonly",
        f"--MappingKernelManager.default_kernel_name={notebook_runner.kernelspec()['name']}",
    ):
        assert flag in cmd
    assert not any("token" in part.lower() for part in cmd), "the token belongs in the environment, not in argv"
    notes = notebook_runner.LAB_SETTINGS["@jupyterlab/apputils-extension:notification"]
    assert notes == {"fetchNews": "false", "checkForUpdates": False}
    viewers = notebook_runner.LAB_SETTINGS["@jupyterlab/docmanager-extension:plugin"]["defaultViewers"]
    assert viewers["python"] == "Jupytext Notebook"


def test_notebooks_use_the_project_kernel_by_name_or_python3_without_it(monkeypatch):
    import jupytext
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    for src in notebook_runner.notebook_sources():
        assert jupytext.read(src).metadata["kernelspec"]["name"] == notebook_runner.PROJECT_KERNEL["name"], src.name

    def missing(self, name):
        raise NoSuchKernel(name)

    monkeypatch.setattr(KernelSpecManager, "get_kernel_spec", missing)
    assert notebook_runner.kernelspec() == notebook_runner.FALLBACK_KERNEL


@pytest.mark.browser
@pytest.mark.slow
def test_a_jupytext_source_opens_as_a_notebook_on_the_project_kernel(browser, lab):
    """What make lab's URL opens: notebook 01 (a percent .py file) as a notebook, on the dflora kernel."""
    kernel = _project_kernel()
    first = notebook_runner.notebook_sources()[0].name
    page = browser.open(lab, f"notebooks/{first}")
    _kernel_ready(page, kernel)
    panel = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)")
    assert page.locator(".jp-FileEditor:visible").count() == 0, f"{first} opened as a text file"
    assert panel.locator(".jp-MarkdownCell h1").first.inner_text().startswith("01")
    assert panel.locator(".jp-CodeCell").count() >= 5
    tab = page.locator(".lm-DockPanel-tabBar .lm-TabBar-tab.lm-mod-current")
    assert first in tab.inner_text()
    assert not _cell_errors(page), _cell_errors(page)
    assert not browser.outside, f"the page requested addresses outside the lab server: {browser.outside[:5]}"
    page.close()


# -- notebooks 02 and 06: the sliders ----------------------------------------------------------------------
def _sliders_redraw(browser, lab, name: str, sliders: list[str], move: str, key: str, dropdowns: int = 0) -> None:
    """Run All on a prepared notebook, check its interact sliders, move ``move`` one step with ``key`` and wait
    for the figure under them to be redrawn; no cell error, nothing asked of the internet."""
    page = browser.open(lab, f"prepared/{name}.ipynb")
    _kernel_ready(page, _project_kernel(), n_cells=10)
    _menu(page, "Run", "runmenu:run-all")
    _all_executed(page)
    interact = page.locator(".widget-interact")
    interact.wait_for()
    labels = interact.locator(".widget-slider .widget-label").all_inner_texts()
    assert [t.strip() for t in labels] == sliders, labels
    assert interact.locator(".widget-dropdown").count() == dropdowns
    figure = interact.locator(".widget-output img")
    figure.wait_for()
    before = figure.get_attribute("src")
    slider = interact.locator(".widget-slider", has=page.locator(".widget-label", has_text=move))
    readout = slider.locator(".widget-readout")
    value_before = readout.inner_text()
    handle = slider.locator(".noUi-handle")
    handle.scroll_into_view_if_needed()
    handle.focus()
    page.keyboard.press(key)  # one step of the slider, as a user's arrow key or drag
    page.wait_for_function(
        "([sel, old]) => { const i = document.querySelector(sel); return i && i.src !== old; }",
        arg=[".widget-interact .widget-output img", before],
        timeout=60_000,
    )
    assert readout.inner_text() != value_before
    assert figure.get_attribute("src").startswith("data:image/png")
    assert not _cell_errors(page), _cell_errors(page)
    _hide_file_browser(page)
    figure.scroll_into_view_if_needed()
    _screenshot(page, name)
    assert not browser.outside, f"the page requested addresses outside the lab server: {browser.outside[:5]}"
    page.close()


@pytest.mark.browser
@pytest.mark.slow
def test_notebook_02_sliders_render_and_redraw_the_figure(browser, lab):
    _sliders_redraw(browser, lab, "02_projection_init", ["d", "sigma", "alpha", "rank"], "alpha", "ArrowRight", 2)


@pytest.mark.browser
def test_notebook_06_budget_slider_redraws_the_estimators(browser, lab):
    _sliders_redraw(browser, lab, "06_zeroth_order", ["evaluations", "eps_scale"], "evaluations", "ArrowLeft")


# -- notebook 03: live curves and "run N more generations" ---------------------------------------------------
# records, in the page, every new image of the C-LoRA live figure and which cells were running then
WATCH_LIVE_FIGURE = """([showSnippet, finishSnippet]) => {
  const cells = Array.from(document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell'));
  const find = (s) => cells.find(c => c.querySelector('.jp-InputArea-editor').textContent.includes(s));
  const show = find(showSnippet), finish = find(finishSnippet);
  const running = (c) => c.querySelector('.jp-InputArea-prompt').textContent.includes('*');
  window.__live = {images: [], progress: []};
  const seen = new Set();
  const record = () => {
    const img = show.querySelector('.jp-OutputArea-output img');
    if (img && !seen.has(img.src)) {
      seen.add(img.src);
      window.__live.images.push({showRunning: running(show), finishRunning: running(finish)});
    }
    const bar = show.querySelector('.widget-hprogress .progress-bar');
    const v = bar ? bar.style.width : null;
    const last = window.__live.progress[window.__live.progress.length - 1];
    if (v && (!last || last.v !== v)) window.__live.progress.push({v, finishRunning: running(finish)});
  };
  new MutationObserver(record).observe(show, {subtree: true, childList: true, attributes: true, characterData: true});
  record();
}"""


def _calls(status_text: str) -> int:
    m = re.search(r"(\d+)/(\d+) calls", status_text)
    assert m, f"no 'k/budget calls' in the control's status {status_text!r}"
    return int(m.group(1))


@pytest.mark.browser
@pytest.mark.slow
def test_notebook_03_live_curves_update_and_run_n_more_adds_generations(browser, lab):
    from playwright.sync_api import expect

    from dflora_core.lab.profiles import load_profile

    popsize = load_profile("smoke").base.optim.popsize
    page = browser.open(lab, "prepared/03_training.ipynb")
    _kernel_ready(page, _project_kernel(), n_cells=12)
    show = _code_cell(page, "sessions[first].show()")
    finish = _code_cell(page, "sessions[first].finish()")
    page.evaluate(WATCH_LIVE_FIGURE, ["sessions[first].show()", "sessions[first].finish()"])

    # the cells above the C-LoRA run, then its live view: a user's Run All Above + Shift+Enter
    show.locator(".jp-InputArea-prompt").click()
    _menu(page, "Run", "notebook:run-all-above")
    show.locator(".jp-InputArea-prompt").click()
    page.keyboard.press("Shift+Enter")
    _wait_executed(show)
    assert show.locator(".jp-OutputArea-output img").count() == 1, "no live figure under the C-LoRA cell"
    assert show.locator(".widget-hprogress .progress-bar").count() >= 1, "no progress bar under the C-LoRA cell"
    button = show.get_by_role("button", name="Run N more generations")
    control = show.locator(".widget-hbox", has=page.get_by_role("button", name="Run N more generations"))
    status = control.locator(".widget-html")
    calls_before = _calls(status.text_content())
    images_before = page.evaluate("window.__live.images.length")

    # "run N more generations" with N = 3
    n = 3
    control.locator("input").fill(str(n))
    control.locator("input").press("Tab")
    button.click()
    page.wait_for_function(
        "([sel, old]) => { const e = document.querySelector(sel); return e && !e.innerText.includes(old); }",
        arg=[".widget-hbox:has(button) .widget-html", f"{calls_before}/"],
        timeout=120_000,
    )
    calls_after = _calls(status.text_content())
    assert calls_after - calls_before == n * popsize, (calls_before, calls_after, status.text_content())
    page.wait_for_function(f"() => window.__live.images.length > {images_before}", timeout=30_000)
    expect(button).to_be_enabled()  # disabled while its generations ran, enabled again: budget is left
    _hide_file_browser(page)
    show.evaluate("cell => cell.scrollIntoView({block: 'center'})")
    page.wait_for_timeout(300)
    _screenshot(page, "03_training_mid-run", small_width=960)

    # the rest of the budget and the F-LoRA run: Run Selected Cell and All Below
    finish.locator(".jp-InputArea-prompt").click()
    _menu(page, "Run", "notebook:run-all-below")
    _all_executed(page)
    live = page.evaluate("window.__live")
    during = [im for im in live["images"] if im["finishRunning"]]
    progress = [p for p in live["progress"] if p["finishRunning"]]
    print(
        f"\n03: {calls_before} -> {calls_after} calls after 'run {n} more'; the C-LoRA figure showed "
        f"{len(live['images'])} images, {len(during)} while finish() ran; its progress bar moved "
        f"{len(progress)} times while finish() ran"
    )
    # the figure under the C-LoRA cell is replaced in place (display_id updates) from the cells and the
    # control that drive the search: at its start, after the click, and while finish() runs. Between
    # those it redraws at most once a second, so a tiny smoke run may show no redraw in between; the
    # progress bar moves at every generation.
    assert len(live["images"]) >= 3, live["images"]
    assert during, "the C-LoRA figure was not updated while the rest of its search ran"
    assert len(progress) >= 2, f"the progress bar did not move while the search ran: {live['progress']}"
    summary = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output table").last
    assert "c-lora" in summary.inner_text() and "f-lora" in summary.inner_text()
    assert not _cell_errors(page), _cell_errors(page)
    summary.scroll_into_view_if_needed()
    _screenshot(page, "03_training")
    assert not browser.outside, f"the page requested addresses outside the lab server: {browser.outside[:5]}"
    page.close()
