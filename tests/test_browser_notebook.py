"""The upload widget in a real JupyterLab: headless Chromium (Debian's chromium + chromium-driver),
driven by Selenium, opens a notebook whose one cell is ``upload_widget()`` in a JupyterLab
server started for the test, runs it, and picks files through the widget's button as a user
would: a JPEG, a text file, an RGBA PNG. Each must come back in the widget's output with the
label ``Classifier.predict`` gives the same file (or its one-line error), and the page must log
no error. About 25 s (most of it JupyterLab's start and first page load).

ipywidgets 8's button opens a file input that it never adds to the page; the test adds it (a
hook on ``HTMLInputElement.click``), so Selenium can pick files in it and the widget's own
``change`` listener reads them. Set ``CIFAR_EDGE_SCREENSHOT=docs/img/notebook-widget.png`` to
keep the screenshot for the docs.

Skipped without Chromium and ChromeDriver (``.ci/run`` installs them), Selenium and JupyterLab
(the dev extra) or ipywidgets and ipykernel (the notebook extra).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from helpers import REPO, has_module, write_kernelspec
from runtime.model.bundled import sample_images

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip("needs Chromium and ChromeDriver: apt-get install chromium chromium-driver "
                "(.ci/run installs them)", allow_module_level=True)
for _module, _extra in (("selenium", "dev"), ("jupyterlab", "dev"), ("ipywidgets", "notebook"),
                        ("ipykernel", "notebook")):
    if not has_module(_module):
        pytest.skip(f"needs {_module}: pip install -e '.[{_extra}]'", allow_module_level=True)

from selenium import webdriver  # noqa: E402  (after the skips: absent where they skip)
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

TOKEN = "notebook-test-token"
START_S = 90  # s: JupyterLab's start, the first page load, the kernel's start (2 busy cores)
WAIT_S = 30  # s: one upload's answer
# The widget's file input, added to the page where Selenium can reach it when the button opens it.
CAPTURE_FILE_INPUT = """
const click = HTMLInputElement.prototype.click;
HTMLInputElement.prototype.click = function () {
  if (this.type !== 'file') return click.call(this);
  this.id = 'picked-files';
  if (!this.isConnected) document.body.appendChild(this);
};"""
NOTEBOOK_OPEN = "return !!(window.jupyterapp && document.querySelector('.jp-Notebook'))"
KERNEL_IDLE = """const panel = window.jupyterapp.shell.currentWidget;
const kernel = panel && panel.sessionContext && panel.sessionContext.session && panel.sessionContext.session.kernel;
return !!kernel && kernel.status === 'idle';"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _lab_home(root: Path) -> dict:
    """A kernelspec for this interpreter, a notebook of one cell, settings that fetch no news:
    the environment JupyterLab runs with, everything under ``root``."""
    kernel = write_kernelspec(root / "jupyter")
    settings = root / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false",
                                                                           "checkForUpdates": False}))
    (root / "notebooks").mkdir()
    (root / "notebooks" / "widget.ipynb").write_text(json.dumps({
        "cells": [{"cell_type": "code", "execution_count": None, "id": "widget", "metadata": {}, "outputs": [],
                   "source": "from runtime.notebook import upload_widget\nupload_widget()"}],
        "metadata": {"kernelspec": {"name": kernel, "display_name": "cifar-edge test", "language": "python"}},
        "nbformat": 4, "nbformat_minor": 5}))
    return {**os.environ, "PYTHONPATH": str(REPO), "JUPYTER_PATH": str(root / "jupyter"),
            "JUPYTER_CONFIG_DIR": str(root / "config"), "JUPYTER_DATA_DIR": str(root / "data"),
            "JUPYTER_RUNTIME_DIR": str(root / "runtime"), "JUPYTERLAB_SETTINGS_DIR": str(root / "settings")}


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on a free loopback port, with a token: yields the notebook's URL."""
    root = tmp_path_factory.mktemp("lab")
    env, port = _lab_home(root), _free_port()
    log = open(root / "lab.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
                             "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
                             f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={root / 'notebooks'}",
                             "--LabApp.expose_app_in_browser=True"],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_S
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={TOKEN}", timeout=2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("JupyterLab did not start:\n" + (root / "lab.log").read_text()[-2000:])
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/lab/tree/widget.ipynb?token={TOKEN}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # As root and with no network: no sandbox, and none of Chromium's own calls home.
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1200,1000",
                 "--force-device-scale-factor=1", f"--user-data-dir={tmp_path_factory.mktemp('profile')}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)  # a driver path: no download
    driver.set_page_load_timeout(START_S)
    try:
        yield driver
    finally:
        driver.quit()


def _until(driver, condition, message: str, seconds: float = WAIT_S):
    return WebDriverWait(driver, seconds, poll_frequency=0.2).until(condition, message)


def _output(driver) -> str:
    return driver.find_element(By.CSS_SELECTOR, ".widget-output").text


def _pick(driver, path: Path) -> None:
    """Click the widget's button and pick ``path`` in the file input it opens."""
    driver.find_element(By.CSS_SELECTOR, ".widget-upload").click()
    field = _until(driver, lambda d: d.find_elements(By.ID, "picked-files"), "the button opened no file input")[0]
    driver.execute_script("arguments[0].value = ''", field)  # a new pick, not added to the last (as send_keys would)
    field.send_keys(str(path))


def test_files_picked_in_jupyterlab_are_labelled_in_the_output(lab, browser, tmp_path):
    from runtime.model.bundled import load_classifier

    browser.get(lab)
    _until(browser, lambda d: d.execute_script(NOTEBOOK_OPEN), "JupyterLab did not open the notebook", START_S)
    _until(browser, lambda d: d.execute_script(KERNEL_IDLE), "the kernel did not start", START_S)
    browser.execute_script(CAPTURE_FILE_INPUT)
    browser.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells')")
    _until(browser, lambda d: "self-check" in _output(d), "the widget did not show", START_S)

    note = tmp_path / "notes.txt"
    note.write_text("not a picture")
    rgba = tmp_path / "ship.png"
    ship = Image.open(sample_images()[8]).convert("RGBA")
    ship.putalpha(Image.linear_gradient("L").resize(ship.size))  # transparent at the top
    ship.save(rgba)
    cat = sample_images()[3]
    expected = load_classifier()
    for path, line in ((cat, f"{expected.predict(cat).label} "), (note, "notes.txt: not an image Pillow can read"),
                       (rgba, f"{expected.predict(rgba).label} ")):
        _pick(browser, path)
        _until(browser, lambda d: path.name in _output(d), f"no answer for {path.name}")
        shown = [text for text in _output(browser).splitlines() if path.name in text]  # "cat 99% cat.jpg"
        assert len(shown) == 1 and shown[0].startswith(line), _output(browser)
    assert _output(browser).count("%") >= 2 * 4  # each picture: its label and three bars
    assert browser.find_element(By.CSS_SELECTOR, ".widget-upload").text.strip() == "Upload images (0)"  # emptied
    errors = [entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == [], errors
    if keep := os.environ.get("CIFAR_EDGE_SCREENSHOT"):  # relative to the repository
        shot = tmp_path / "widget.png"
        browser.find_element(By.CSS_SELECTOR, ".jp-Cell-outputWrapper").screenshot(str(shot))
        (REPO / keep).parent.mkdir(parents=True, exist_ok=True)
        Image.open(shot).convert("RGB").quantize(256).save(REPO / keep, optimize=True)  # small in git
