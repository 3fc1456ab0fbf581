"""The live view in a real browser: headless Chromium (Debian's chromium + chromium-driver),
driven by Selenium, against ``cifar-run --camera CLIP --realtime --serve`` in a child process.

The clip is the bundled sample images, two seconds each, so the stream and its live label
are the shipped model's real answers. The browser opens the URL the command printed (with
its token), sees the stream's frames and the live prediction update, uploads images through
the page's file input and reads their labels, and takes a screenshot; set
``CIFAR_EDGE_SCREENSHOT=docs/img/live-view.png`` to keep it for the docs.
The label page too: a server over a --collect folder of sample images, one frame filed under
a class by a click on its button, the next deleted by the d key.

Skipped without Chromium and ChromeDriver (``apt-get install chromium chromium-driver``;
``.ci/run`` installs them), Selenium (the dev extra), or OpenCV and aiohttp (the camera extra).
"""

from __future__ import annotations

import base64
import importlib.util
import io
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
from helpers import REPO
from PIL import Image

from runtime.model.bundled import default_model, sample_images
from runtime.model.classifier import UNCERTAIN, Classifier

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip("needs Chromium and ChromeDriver: apt-get install chromium chromium-driver "
                "(.ci/run installs them)", allow_module_level=True)
pytest.importorskip("selenium", reason="needs Selenium: pip install -e '.[dev]'")
pytest.importorskip("cv2", reason="needs OpenCV to play the clip: pip install -e '.[camera]'")
pytest.importorskip("aiohttp", reason="needs the serve extra (the camera extra brings it): pip install -e '.[camera]'")

from selenium import webdriver  # noqa: E402  (after the skips: absent where they skip)
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

TOKEN = "browser-test-token"
WAIT_S = 15  # s: the longest any one step may take (Chromium's start, the first frame)
# As root and with no network: no sandbox, and none of Chromium's own calls home.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1000,1000", "--force-device-scale-factor=1", "--hide-scrollbars",
                  "--force-color-profile=srgb")


def load_test_script():
    """scripts/load_test_serve.py, for its clip and its start and stop of cifar-run --serve."""
    spec = importlib.util.spec_from_file_location("load_test_serve", REPO / "scripts" / "load_test_serve.py")
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # dataclasses look it up
    spec.loader.exec_module(module)  # defines functions only: importing has no side effects
    return module


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """cifar-run serving a clip of the sample images (480x360, 10 fps, 2 s each, a minute:
    longer than the tests) on a free loopback port with a token: yields the URL it printed;
    ends it with SIGTERM and checks it stopped cleanly."""
    script = load_test_script()
    clip = script.write_sample_clip(tmp_path_factory.mktemp("clip") / "samples.mp4", size=(480, 360),
                                    fps=10, seconds=60, seconds_per_sample=2)
    proc, url = script.start_serving("--camera", str(clip), "--realtime", "--model", str(default_model()),
                                     "--token", TOKEN)
    try:
        yield url
        assert (stopped := script.stop_serving(proc)) is None, stopped
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # A driver path given: Selenium Manager is skipped, so nothing is downloaded.
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT_S)
    driver.set_script_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait(driver, condition, message: str):
    return WebDriverWait(driver, WAIT_S, poll_frequency=0.1).until(condition, message)


def text(driver, css: str) -> str:
    return driver.find_element(By.CSS_SELECTOR, css).text


def console_errors(driver) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def test_the_token_is_asked_for_then_kept_in_a_cookie(served, browser):
    base = served.partition("?")[0]
    browser.delete_all_cookies()
    browser.get(base)
    assert "a token is required" in browser.find_element(By.TAG_NAME, "body").text
    assert browser.execute_script("return fetch('/api/info').then(r => r.status)") == 401
    browser.get_log("browser")  # the 401s above are expected: forget them

    browser.get(served)  # the URL cifar-run printed
    wait(browser, lambda d: text(d, "#model"), "the page did not load /api/info")
    assert browser.execute_script("return location.search") == ""  # the token left the address bar
    cookie = browser.get_cookies()[0]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert browser.execute_script("return document.cookie") == ""  # not readable by scripts

    browser.get(base)  # later visits need no token: the cookie carries it
    wait(browser, lambda d: text(d, "#model"), "the cookie did not carry the token")
    assert "int8" in text(browser, "#model").lower() and console_errors(browser) == []


def test_live_view_and_upload(served, browser, tmp_path):
    browser.get(served)
    stream = browser.find_element(By.ID, "stream")
    wait(browser, lambda d: stream.get_property("naturalWidth") > 0, "no stream frame rendered")
    assert (stream.get_property("naturalWidth"), stream.get_property("naturalHeight")) == (480, 360)
    wait(browser, lambda d: text(d, "#live-frame").isdigit(), "no live prediction shown")
    first = int(text(browser, "#live-frame"))
    wait(browser, lambda d: int(text(d, "#live-frame")) > first, "the live frame number stays still")
    expected = Classifier(default_model())
    assert text(browser, "#live-label") in (*expected.class_names, UNCERTAIN)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#live-topk li")) == 3
    assert float(text(browser, "#live-fps")) > 0 and text(browser, "#live-status") == ""

    # A text file and two pictures, picked at once as a user would; the newest card is on top.
    note = tmp_path / "notes.txt"
    note.write_text("not a picture")
    picture = tmp_path / "dog.jpg"
    Image.open(sample_images()[5]).resize((256, 256), Image.BICUBIC).save(picture, quality=95)
    files = [note, sample_images()[8], picture]  # a ship and a dog
    browser.find_element(By.ID, "upload-input").send_keys("\n".join(str(p) for p in files))
    cards = [f"#result-{n}" for n in (1, 2, 3)]  # in the order picked
    wait(browser, lambda d: all(d.find_element(By.CSS_SELECTOR, c).get_attribute("data-state") != "pending"
                                for c in cards), "the uploads got no answer")
    assert browser.find_element(By.CSS_SELECTOR, cards[0]).get_attribute("data-state") == "error"
    assert "not an image" in text(browser, f"{cards[0]} .result-error")
    wait(browser, lambda d: not d.find_elements(By.CSS_SELECTOR, f"{cards[0]} img"),
         "a broken picture is shown for the text file")
    for card, path in zip(cards[1:], files[1:]):
        assert browser.find_element(By.CSS_SELECTOR, card).get_attribute("data-state") == "done"
        assert text(browser, f"{card} .result-label") == expected.predict(path).label  # as cifar-run says
        assert len(browser.find_elements(By.CSS_SELECTOR, f"{card} .result-topk li")) == 3
    errors = console_errors(browser)
    assert all("/api/classify" in message for message in errors), errors  # the text file's 415 only

    shot = save_screenshot(browser, tmp_path / "live-view.png", bottom_of="#results > li:nth-child(2)")
    if (keep := os.environ.get("CIFAR_EDGE_SCREENSHOT")):  # relative to the repository
        (REPO / keep).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, REPO / keep)


def save_screenshot(driver, path: Path, bottom_of: str) -> Path:
    """The page from its top to the bottom of ``bottom_of``, as a small PNG (256 colours)."""
    driver.execute_script("window.scrollTo(0, 0)")
    bottom = driver.execute_script(f"return document.querySelector({bottom_of!r}).getBoundingClientRect().bottom")
    width = driver.execute_script("return document.documentElement.clientWidth")
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {  # beyond the window's height too
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": width, "height": round(bottom), "scale": 1}})
    image = Image.open(io.BytesIO(base64.b64decode(shot["data"]))).convert("RGB")
    image.quantize(256).save(path, optimize=True)
    return path


@pytest.fixture
def labelling(tmp_path):
    """A server over a --collect folder of four sample images (the shipped model's guesses in
    its index), with a token: yields (the main page's URL, the folder, the model's classes)."""
    from runtime.image.collect import CollectOptions, Collector
    from runtime.web import ServeConfig, WebServer

    clf = Classifier(default_model())
    collector = Collector(CollectOptions(tmp_path, below=1.01, every_s=0.0), model=default_model().name)
    for path in sample_images()[:4]:
        collector.offer(clf.predict(path), image_rgb=Image.open(path), source=str(path))
    with WebServer(clf, ServeConfig(port=0, token=TOKEN), collector=collector) as server:
        yield f"http://127.0.0.1:{server.port}/?token={TOKEN}", tmp_path, clf.class_names


def test_label_a_collected_frame_with_a_click_and_a_key(labelling, browser):
    url, folder, classes = labelling
    browser.get(url)  # the main page links to the label page when there is one
    link = browser.find_element(By.CSS_SELECTOR, "#label-link a")
    wait(browser, lambda d: link.is_displayed(), "no link to the label page")
    link.click()
    wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#frames > li")) == 4, "no frames listed")
    first, second, third, fourth = (li.get_attribute("data-file")
                                    for li in browser.find_elements(By.CSS_SELECTOR, "#frames > li"))
    thumb = browser.find_element(By.CSS_SELECTOR, "#frames > li img")
    wait(browser, lambda d: thumb.get_property("naturalWidth") > 0, "the thumbnail did not load")
    browser.find_element(By.CSS_SELECTOR, "#frames > li .actions button").click()  # "1 <first class>"
    wait(browser, lambda d: (folder / "labelled" / classes[0] / first).is_file(), "the click filed nothing")
    wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#frames > li")) == 3, "still listed")
    assert not (folder / first).exists()
    browser.find_element(By.TAG_NAME, "body").send_keys("d")  # delete the next one
    wait(browser, lambda d: not (folder / second).exists(), "the d key deleted nothing")
    wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#frames > li")) == 2, "still listed")
    typed = browser.find_element(By.CSS_SELECTOR, "#frames > li input.new-class")
    typed.send_keys("traffic cone\n")  # a class the model does not know ...
    wait(browser, lambda d: (folder / "labelled" / "traffic cone" / third).is_file(), "the typed class filed nothing")
    wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#frames > li")) == 1, "still listed")
    buttons = browser.find_elements(By.CSS_SELECTOR, "#frames > li .actions button")
    assert [b.text for b in buttons][:10] == [f"{(i + 1) % 10} {name}" for i, name in enumerate(classes)]
    assert buttons[10].text == "traffic cone"  # ... is a button from then on: one click for the next
    buttons[10].click()
    wait(browser, lambda d: (folder / "labelled" / "traffic cone" / fourth).is_file(), "the new button filed nothing")
    assert console_errors(browser) == []
