"""The documentation site: it builds in strict mode, covers every registered component and every
config, its tutorial method runs, and its pages render in a headless browser."""

from __future__ import annotations

import functools
import http.server
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from urllib.parse import urljoin, urlparse

import pytest
import torch
from synth_stream import synth_run

import promptcl
from promptcl.registry import backbones, datasets, methods

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "DISABLE_MKDOCS_2_WARNING": "true"}
    build = [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(out)]
    done = subprocess.run(build, cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def text_of(page: Path) -> str:
    return re.sub(r"<[^>]+>", " ", page.read_text())


def builtin(registry) -> list[str]:
    """The registry's names defined in promptcl (tests and the tutorial register their own)."""
    return [n for n in registry.names() if registry.get(n).__module__.startswith("promptcl.")]


def test_every_method_has_a_page_with_its_docstring_and_config_keys(site):
    assert len(builtin(methods)) >= 13
    for name in builtin(methods):
        page = site / "methods" / name / "index.html"
        assert page.is_file(), f"no page for method {name!r}"
        text = text_of(page)
        config = methods.get(name).Config
        missing = [key for key in config.model_fields if key not in text]
        assert not missing, f"{name}: config keys missing from its page: {missing}"
        first = sys.modules[methods.get(name).__module__].__doc__.strip().splitlines()[0]
        assert first.split(":")[0] in text


def test_every_backbone_and_dataset_has_a_row(site):
    text = text_of(site / "components" / "index.html")
    for registry in (backbones, datasets):
        for name in builtin(registry):
            assert f" {name} " in text, f"{registry.kind} {name!r} has no row"


def test_every_config_file_is_in_the_reproduction_table(site):
    text = text_of(site / "reproduce" / "index.html")
    configs = sorted(p.name for p in (ROOT / "configs").glob("*.yaml"))
    assert configs
    assert [name for name in configs if name not in text] == []


def test_the_tutorial_method_runs_end_to_end(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "shared_prefix", ROOT / "examples" / "shared_prefix.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert methods.get("shared_prefix") is module.SharedPrefix
    method = {"name": "shared_prefix", "epochs": 2, "batch_size": 32, "lr": 0.01}
    result = promptcl.run(synth_run(method, tmp_path / "run"), quiet=True)
    assert result.metrics["faa"] > 50  # 30 classes: chance is 3.3 %
    saved = torch.load(result.run_dir / "checkpoint.pt", weights_only=True)["method"]
    assert (saved["prefix"].abs() > 1).any()  # trained away from its uniform(-1, 1) init


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def serve(directory: Path) -> tuple[str, http.server.ThreadingHTTPServer]:
    handler = functools.partial(QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/", server


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
@pytest.mark.parametrize("path", ["", "methods/hash/"])
def test_pages_render_with_no_broken_link_or_image(site, path):
    from playwright.sync_api import sync_playwright

    base, server = serve(site)
    shots = Path(os.environ.get("PROMPTCL_SCREENSHOTS", site.parent))
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            failed: list[str] = []
            page.on("requestfailed", lambda request: failed.append(request.url))
            response = page.goto(base + path, wait_until="networkidle")
            assert response is not None and response.ok
            page.screenshot(
                path=str(shots / f"docs-{path.strip('/').replace('/', '-') or 'home'}.png")
            )
            images = page.eval_on_selector_all(
                "img", "imgs => imgs.map(i => [i.src, i.complete && i.naturalWidth > 0])"
            )
            links = page.eval_on_selector_all("a[href]", "as => as.map(a => a.href)")
            browser.close()
        assert failed == []
        assert [src for src, ok in images if not ok] == []
        internal = {urljoin(u, urlparse(u).path) for u in links if u.startswith(base)}
        assert len(internal) > 10  # the navigation at least
        broken = []
        for url in sorted(internal):
            try:
                urllib.request.urlopen(url, timeout=10)
            except Exception as err:  # noqa: BLE001 (any failure is a broken link)
                broken.append(f"{url}: {err}")
        assert broken == []
    finally:
        server.shutdown()
