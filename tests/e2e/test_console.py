"""The web console in a real browser: Debian's Chromium, headless, driven by Playwright, against a real API
and worker on the toy pair. A person's path: paste a key, upload a file that is not an adapter (the server's
refusal shown), upload a real adapter, watch the upgrade reach succeeded, chat and see both answers stream,
download the archive; /docs and /redoc render from the server alone; an admin key shows the provider's side.
Any console error (beyond the refusals the test provokes) and any request to another host fail the test.
Screenshots of each step go to a folder the test prints (GRADLIFT_SCREENSHOTS, or the test's temporary folder)."""

from __future__ import annotations

import os
import shutil
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.e2e.services import BIN, Services

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PROMPT = "rot ?: abcde #### "
README = b"# Our adapter\n\nTrained on the support tickets of 2026; load it with PEFT.\n" * 40


@dataclass
class Watch:
    """What the page did that it should not: console errors, uncaught exceptions, requests elsewhere."""

    origin: str
    errors: list[str] = field(default_factory=list)
    elsewhere: list[str] = field(default_factory=list)
    allowed: list[str] = field(default_factory=list)  # console errors the test provokes, each allowed once

    def console(self, kind: str, text: str) -> None:
        if kind != "error":
            return
        if text in self.allowed:
            self.allowed.remove(text)
        else:
            self.errors.append(text)

    def request(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("blob", "data") and f"{parts.scheme}://{parts.netloc}" != self.origin:
            self.elsewhere.append(url)

    def check(self) -> None:
        assert not self.errors, f"console errors: {self.errors}"
        assert not self.elsewhere, f"requests to another host: {self.elsewhere}"


@pytest.fixture
def shots(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Iterator[Path]:
    folder = Path(os.environ.get("GRADLIFT_SCREENSHOTS", tmp_path / "screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    with capsys.disabled():
        print(f"\nconsole screenshots: {folder}")
    yield folder


def test_the_console_in_a_real_browser(toy_pairs_dir: Path, toy_adapter: Path, tmp_path: Path, shots: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    assert CHROMIUM, "Chromium is missing: scripts/ensure_services.sh installs Debian's chromium package"
    env = {"GRADLIFT_DATA_DIR": str(tmp_path / "data"), "GRADLIFT_PAIRS_DIR": str(toy_pairs_dir)}
    with Services(env, tmp_path / "logs") as services, sync_playwright() as playwright:
        services.serve()
        key = services.make_key("acme")
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        page = browser.new_page(viewport={"width": 1280, "height": 900}, accept_downloads=True)
        watch = Watch(services.base_url)
        page.on("console", lambda message: watch.console(message.type, message.text))
        page.on("pageerror", lambda error: watch.errors.append(f"uncaught: {error}"))
        page.on("request", lambda request: watch.request(request.url))
        expect.set_options(timeout=30_000)
        def snap(name: str, full_page: bool = True) -> None:
            page.screenshot(path=str(shots / f"{name}.png"), full_page=full_page)


        page.goto(services.base_url + "/")
        expect(page.locator("#notice")).to_contain_text("Paste an API key")
        snap("01-start")

        # A key that is not valid: said in words, nothing else shown.
        watch.allowed.append("Failed to load resource: the server responded with a status of 401 (Unauthorized)")
        page.fill("#key", "glk_not-a-key")
        page.click("#key-form button[type=submit]")
        expect(page.locator("#notice")).to_contain_text("The key was not accepted")
        expect(page.locator("#app")).to_be_hidden()
        snap("02-bad-key")

        page.fill("#key", key)
        page.click("#key-form button[type=submit]")
        expect(page.locator("#org")).to_contain_text("acme")
        expect(page.locator("#pairs")).to_contain_text("toy")
        assert page.evaluate("sessionStorage.getItem('gradlift.key')") == key and key not in page.url
        with page.expect_download() as init_info:  # the pair's published LoRA init, for fine-tuning
            page.get_by_role("button", name="tiny_lora_init.safetensors").click()
        init = tmp_path / "init.safetensors"
        init_info.value.save_as(init)
        assert init.read_bytes() == (toy_pairs_dir / "toy" / "tiny_lora_init.safetensors").read_bytes()
        snap("03-connected")

        # A README dropped on the upload area: the server's refusal, in the page.
        watch.allowed.append("Failed to load resource: the server responded with a status of 422 "
                             "(Unprocessable Entity)")
        drop_file(page, "README.md", README)
        expect(page.locator("#upload-status")).to_contain_text("not a safetensors file")
        snap("04-refused-upload")

        page.set_input_files("#upload-file", [str(toy_adapter / "adapter_model.safetensors"),
                                              str(toy_adapter / "adapter_config.json")])
        expect(page.locator("#upload-status")).to_contain_text("Uploaded adapter_model.safetensors")
        expect(page.locator("#checkpoints")).to_contain_text("adapter_model.safetensors")
        snap("05-uploaded")

        page.click("#upgrade-start")
        expect(page.locator("#watch-stages li").first).to_be_visible(timeout=120_000)
        snap("06-upgrade-watched")
        expect(page.locator("#watch-status")).to_have_text("succeeded", timeout=300_000)
        expect(page.locator("#watch-verdict")).to_contain_text("Quality:")
        expect(page.locator("#deltas tbody tr")).to_have_count(1)
        delta_id = page.locator("#deltas tbody tr td code").first.inner_text()
        snap("07-upgrade-succeeded")

        # Chat: both answers stream in (several updates each), the upgraded one under the delta's name.
        expect(page.locator("#chat-model")).to_have_value(delta_id)
        page.evaluate("""() => { window.updates = {left: 0, right: 0};
            for (const side of ['left', 'right']) new MutationObserver(() => window.updates[side]++)
                .observe(document.getElementById('chat-' + side),
                         {childList: true, characterData: true, subtree: true}); }""")
        page.fill("#chat-prompt", PROMPT)
        page.click("#chat-form button[type=submit]")
        expect(page.locator("#chat-status")).to_contain_text("Both answers are complete", timeout=120_000)
        assert page.locator("#chat-left-name").inner_text() == delta_id
        assert page.locator("#chat-right-name").inner_text() == "toy-llm"
        updates = page.evaluate("window.updates")
        assert updates["left"] > 2 and updates["right"] > 2, updates  # streamed, not one block
        assert page.locator("#chat-left").inner_text().strip() and page.locator("#chat-right").inner_text().strip()
        snap("08-chat")

        with page.expect_download() as download_info:
            page.get_by_role("button", name="archive (.zip)").click()
        archive = tmp_path / "delta.zip"
        download_info.value.save_as(archive)
        with zipfile.ZipFile(archive) as zipped:
            assert {"adapter_config.json", "adapter_model.safetensors"} <= set(zipped.namelist())
        expect(page.locator("#upgrade-status")).to_contain_text(f"Saved {delta_id}.zip")
        # The delta's agreement beside the base LLM's (and its similarity to shadow runs when a GT made it).
        expect(page.locator("#chart svg rect").first).to_be_visible()
        assert page.locator("#chart svg rect").count() in (2, 3)
        snap("09-downloaded")

        page.goto(services.base_url + "/docs")
        expect(page.locator(".swagger-ui .info .title")).to_contain_text("gradlift")
        snap("10-docs", full_page=False)
        page.goto(services.base_url + "/redoc")
        expect(page.locator("h1").first).to_contain_text("gradlift")
        snap("11-redoc", full_page=False)

        # The provider's key: its builds and trainings (none yet), in a tab of its own (sessionStorage is per tab).
        admin = services.run([str(BIN / "gradlift"), "keys", "create", "--org", "provider", "--admin"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda message: watch.console(message.type, message.text))
        page.on("pageerror", lambda error: watch.errors.append(f"uncaught: {error}"))
        page.on("request", lambda request: watch.request(request.url))
        page.goto(services.base_url + "/")
        page.fill("#key", admin.strip().splitlines()[-1])
        page.click("#key-form button[type=submit]")
        expect(page.locator("#org")).to_contain_text("admin (provider)")
        expect(page.locator("#pairs")).to_contain_text("toy")
        expect(page.locator("#builds")).to_contain_text("No shadow builds yet")
        expect(page.locator("#trainings")).to_contain_text("No GT trainings yet")
        snap("12-admin")
        browser.close()
        watch.check()
        assert not watch.allowed, f"the refusals the test provoked were not seen: {watch.allowed}"


def drop_file(page: object, name: str, content: bytes) -> None:
    """Drop a file on the console's upload area, as a person dragging it from their desktop would."""
    transfer = page.evaluate_handle(  # type: ignore[attr-defined]
        """([name, text]) => { const t = new DataTransfer(); t.items.add(new File([text], name)); return t; }""",
        [name, content.decode()])
    page.dispatch_event("#drop", "dragover", {"dataTransfer": transfer})  # type: ignore[attr-defined]
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})  # type: ignore[attr-defined]
