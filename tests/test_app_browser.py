"""The captioning app in a real browser: `streamlit run`, headless Chromium, an upload.

Needs Debian's Chromium at /usr/bin/chromium (`apt-get install chromium`) and
the `playwright` package (its own browser download is never used); skips
without them. Runs the shipped model (or $COURSE_TINY_ASSETS) and saves a
screenshot of the answered page to build/app.png; to refresh the one the docs
show, docs/assets/app.png:

    COURSE_UPDATE_SCREENSHOT=1 python -m pytest -s tests/test_app_browser.py
"""

from __future__ import annotations

import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from solutions import app

pytestmark = pytest.mark.slow

CHROMIUM = pathlib.Path("/usr/bin/chromium")
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
REPO = pathlib.Path(__file__).resolve().parents[1]
SCREENSHOT = REPO / "build" / "app.png"
DOCS_SCREENSHOT = REPO / "docs" / "assets" / "app.png"
SERVER_START_S = 60
CAPTION_WAIT_S = 180  # model load and decode compilation happen on the first visit


@pytest.fixture(scope="module")
def playwright_api():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: `apt-get install chromium` to run the browser test")
    return pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed: `pip install playwright`"
    )


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """$COURSE_TINY_ASSETS if set, else the shipped model: what a learner's `make app` runs."""
    return app.tiny_assets_dir().resolve()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_healthy(url: str, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"streamlit exited with code {server.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.read().strip() == b"ok":
                    return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.5)
    raise TimeoutError(f"streamlit did not answer at {url} within {SERVER_START_S} s")


@pytest.fixture(scope="module")
def served_app(assets, tmp_path_factory):
    """(url, launch time) of `streamlit run capstone/app.py` on a free local port."""
    port = free_port()
    env = {
        **os.environ,
        app.TINY_ASSETS_ENV: str(assets),
        app.RUNS_DIR_ENV: str(tmp_path_factory.mktemp("no_runs")),
    }
    command = [sys.executable, "-m", "streamlit", "run", "capstone/app.py"]
    command += ["--server.address", "127.0.0.1", "--server.port", str(port)]
    command += ["--server.headless", "true", "--server.fileWatcherType", "none"]
    launched = time.perf_counter()
    server = subprocess.Popen(command, cwd=REPO, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_healthy(url, server)
        yield url, launched
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture(scope="module")
def upload(assets, tmp_path_factory):
    """(path of a sample scene as PNG, the caption the app logic gives it)."""
    sample = app.gallery(1)[0]
    path = tmp_path_factory.mktemp("upload") / sample.name
    sample.image.save(path)
    captioner = app.load_captioner(app.ModelSource("tiny (shipped)"), assets)
    expected = captioner.caption([app.read_upload(path.read_bytes(), path.name)])[0]
    return path, expected.text or "(the model wrote nothing)"


def test_upload_shows_its_caption(playwright_api, upload, served_app):
    path, expected = upload
    url, launched = served_app
    with playwright_api.sync_playwright() as driver:
        browser = driver.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.set_default_timeout(CAPTION_WAIT_S * 1000)
            page.goto(url)
            page.locator("input[type=file]").set_input_files(str(path))
            main = page.locator("[data-testid='stMain']")
            caption = main.locator("[data-testid='stText']").first
            caption.wait_for()
            first_caption_s = time.perf_counter() - launched
            shown = caption.inner_text()
            timing = main.locator("[data-testid='stCaptionContainer']").last.inner_text()
            main.get_by_text("Download JSONL").wait_for()  # the last element drawn
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT))
        finally:
            browser.close()

    print(f"browser: caption {shown!r} {first_caption_s:.1f} s after `streamlit run` started")
    assert shown == expected
    assert timing.endswith(" s") and float(timing.split()[0]) > 0
    assert SCREENSHOT.stat().st_size > 10_000
    if os.environ.get("COURSE_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(SCREENSHOT, DOCS_SCREENSHOT)
