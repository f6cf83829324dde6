"""Widgets in a real browser: headless Chromium (Debian's `chromium` + `chromium-driver`, driven by Selenium; nothing
is downloaded at run time) opens JupyterLab on 127.0.0.1, runs notebook 04 (the cells its `interact` needs: the
others only print and draw, and nbval runs them), moves a slider and must see the rendered
figure change; then `toydiff explore` (Voila) must render its page and redraw figure and metrics when w moves. This
catches what nbval cannot: a widget that does not render in JupyterLab ("Error displaying widget", mismatched widget
versions), or a slider whose callback never reaches the page. `.ci/run` installs the browser; where none can be
installed the tests skip with the reason, printed at the end of the run (tests/conftest.py)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

from notebook_cells import interact_only

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
selenium = pytest.importorskip("selenium", reason="selenium is a test extra: pip install -e '.[test]'")
if not (CHROMIUM and DRIVER):
    pytest.skip("no headless browser: install Debian's chromium and chromium-driver (.ci/run does: apt-get install "
                "-y chromium chromium-driver)", allow_module_level=True)
from selenium import webdriver  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

ARTIFACTS = Path(os.environ.get("TOYDIFF_BROWSER_ARTIFACTS", ""))           # set it to keep the screenshots


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {log.read_text()}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


@pytest.fixture(scope="module")
def browser():
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=DRIVER), options=opts)
    yield driver
    driver.quit()


def _images(driver, css: str) -> list[str]:
    """The src of every image under `css`; [] (wait again) when the page replaced an image while we read it."""
    try:
        return [img.get_attribute("src") for img in driver.find_elements(By.CSS_SELECTOR, css)]
    except StaleElementReferenceException:
        return []


def _move_slider(driver, slider) -> str:
    """Move a slider to the other end of its range (its max, or its min if it sits at the max) by typing into its
    editable readout, what a student does after clicking it; returns the value typed."""
    handle = slider.find_element(By.CSS_SELECTOR, ".noUi-handle")
    now, lo, hi = (float(handle.get_attribute(a)) for a in ("aria-valuenow", "aria-valuemin", "aria-valuemax"))
    value = f"{lo if now == hi else hi:g}"
    readout = slider.find_element(By.CSS_SELECTOR, ".widget-readout")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", readout)
    _type_into(driver, slider, value)
    return value


def _type_into(driver, slider, value: str) -> None:
    """Type `value` into a slider's editable readout and press Enter (no waiting for the page)."""
    readout = slider.find_element(By.CSS_SELECTOR, ".widget-readout")
    readout.click()
    readout.send_keys(Keys.CONTROL, "a")
    readout.send_keys(value, Keys.ENTER)


def _shot(driver, name: str) -> bytes:
    png = driver.get_screenshot_as_png()
    if str(ARTIFACTS) not in ("", "."):
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / name).write_bytes(png)
    return png


def _errors(driver) -> list[str]:
    return [e.text for e in driver.find_elements(By.XPATH, "//*[contains(text(), 'Error displaying widget')]")]


def test_jupyterlab_runs_notebook_04_and_a_slider_redraws_the_figure(browser, tmp_path, free_port, server):
    work = tmp_path / "nb"
    work.mkdir()
    nb = interact_only(nbformat.read(ROOT / "notebooks" / "04_outliers_and_autoguidance.ipynb", as_version=4))
    nbformat.write(nb, work / "04.ipynb")                                       # a copy: autosave stays here
    port, token = free_port, "toydiff-test"
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "cfg"), "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "ws"), "MPLBACKEND": "module://matplotlib_inline.backend_inline"}
    proc, log = server([sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ServerApp.ip=127.0.0.1",
                        f"--ServerApp.port={port}", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}",
                        "--LabApp.news_url=", *(["--allow-root"] if os.geteuid() == 0 else [])], env=env)
    _wait_http(f"http://127.0.0.1:{port}/api/status?token={token}", proc, log)
    browser.get(f"http://127.0.0.1:{port}/lab/tree/04.ipynb?token={token}&reset")
    wait = WebDriverWait(browser, 60, poll_frequency=0.25)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-Cell"))
    wait.until(lambda d: d.find_elements(By.XPATH, "//*[contains(@class, 'jp-Notebook-ExecutionIndicator') "
                                                    "and @data-status='idle']"))
    browser.find_element(By.XPATH, "//div[contains(@class, 'lm-MenuBar-itemLabel') and text()='Run']").click()
    browser.find_element(By.XPATH, "//div[contains(@class, 'lm-Menu-itemLabel') and text()='Run All Cells']").click()
    sliders = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".widget-interact .widget-slider"),
                         message="no slider rendered in JupyterLab (Error displaying widget?)")
    before = wait.until(lambda d: _images(d, ".widget-interact .jp-OutputArea img") or None,
                        message="the interact of notebook 04 rendered no figure in JupyterLab")
    assert not _errors(browser), _errors(browser)
    shot_before = _shot(browser, "lab_before.png")
    _move_slider(browser, sliders[0])                                           # the first slider to an end
    after = wait.until(lambda d: (lambda s: s if s and s != before else None)(
        _images(d, ".widget-interact .jp-OutputArea img")), message="the figure did not change after moving the slider")
    assert after != before
    assert _shot(browser, "lab_after.png") != shot_before


def test_toydiff_explore_renders_and_redraws_with_w(browser, free_port, server):
    proc, log = server([sys.executable, "-m", "toydiff.app.cli", "explore", "--port", str(free_port)])
    url = f"http://127.0.0.1:{free_port}/"
    _wait_http(url, proc, log)
    first = log.read_text().splitlines()[0]
    printed = re.search(r"http://127\.0\.0\.1:\d+/", first)
    assert printed and printed.group(0) == url, f"explore must print its URL first, got {first!r}"
    browser.get(url)
    wait = WebDriverWait(browser, 60, poll_frequency=0.25)
    before = wait.until(lambda d: _images(d, ".widget-output img") or None, message="the explore page drew no figure")
    table = browser.find_element(By.CSS_SELECTOR, ".widget-html table").text
    assert "outlier_fraction" in table and not _errors(browser)
    _shot(browser, "explore_before.png")
    sliders = browser.find_elements(By.CSS_SELECTOR, ".widget-slider")
    _move_slider(browser, sliders[0])                                           # w: 3 -> its max
    wait.until(lambda d: (lambda s: s if s and s != before else None)(_images(d, ".widget-output img")),
               message="the explore figure did not change after moving w")
    assert browser.find_element(By.CSS_SELECTOR, ".widget-html table").text != table
    _shot(browser, "explore_after.png")
    # several quick moves: the page must settle on the LAST one (stale redraws dropped), not replay them all
    for value in ("1.5", "2.5", "5", "6.25"):
        _type_into(browser, sliders[0], value)
    drawn = lambda d: " ".join(e.text for e in d.find_elements(By.CSS_SELECTOR, ".widget-html"))
    wait.until(lambda d: "w = 6.25" in drawn(d), message="the figure never showed the last w after quick moves")
    time.sleep(3)                                       # a stale redraw finishing late would overwrite it now
    assert "w = 6.25" in drawn(browser) and "method = autoguidance" in drawn(browser)
    # the method brings its own parameter (label, range) and its description (formula and paper, from the registry)
    label = lambda d: sliders[0].find_element(By.CSS_SELECTOR, ".widget-label").text
    about = lambda d: d.find_element(By.CSS_SELECTOR, ".widget-htmlmath").text
    assert label(browser).startswith("w") and "Karras et al. 2024" in about(browser)
    from selenium.webdriver.support.ui import Select
    Select(browser.find_element(By.CSS_SELECTOR, ".widget-dropdown select")).select_by_visible_text("cfgpp")
    wait.until(lambda d: label(d).startswith("λ") or None, message="the slider kept CFG's label for CFG++")
    wait.until(lambda d: "Chung et al. 2024" in about(d) or None, message="the description did not follow the method")
    handle = sliders[0].find_element(By.CSS_SELECTOR, ".noUi-handle")
    assert float(handle.get_attribute("aria-valuemax")) == 1.0
    wait.until(lambda d: float(handle.get_attribute("aria-valuenow")) == 0.5 or None,
               message="CFG++'s lambda did not start at its registry default 0.5")
    wait.until(lambda d: "method = cfgpp" in drawn(d) or None, message="CFG++ drew nothing (a sampler it refuses?)")
    assert "sampler = euler" in drawn(browser) and "outlier_fraction" in browser.find_element(
        By.CSS_SELECTOR, ".widget-html table").text
    wait.until(lambda d: _images(d, ".widget-output img") or None, message="CFG++'s figure is missing")
    _shot(browser, "explore_cfgpp.png")
