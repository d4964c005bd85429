"""The fleet page in headless Chromium: a worker's row turns QUARANTINED while the page is open."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from playwright.sync_api import Request, sync_playwright

from broker_config.app import HostCelery
from tests.conftest import CheckerFactory, WorkerFactory
from tests.support.cli import celery
from tests.support.prometheus import require

FAST = {"HOST_WEAR_INTERVAL": "0.25"}
#: Headless, and quiet: this machine's network refuses Chromium's background connections.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]


class TestFleetPage:
    def test_a_row_turns_quarantined_on_its_own(
            self, app: HostCelery, start_worker: WorkerFactory, start_checker: CheckerFactory,
            host_env: dict[str, str], tmp_path: Path) -> None:
        worker, other = start_worker("fp1", env=FAST), start_worker("fp2", env=FAST)
        checker = start_checker("--tick", "0.1")
        requests: list[str] = []
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=require("chromium"), args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 720})

                def seen(request: Request) -> None:
                    requests.append(request.url)

                page.on("request", seen)
                page.goto(checker.url("/"))
                row = f'tr[data-worker="{worker.name}"]'
                page.wait_for_selector(f'{row}[data-state="HEALTHY"]', timeout=30_000)
                page.wait_for_selector(f'tr[data-worker="{other.name}"]', timeout=10_000)
                assert page.text_content('tr[data-queue="tweets"] td:nth-child(2)') == "2"

                assert celery("fleet", "inject", worker.name, "cpu=100",
                              env=host_env).returncode == 0
                # No reload: the page refreshes itself
                page.wait_for_selector(f'{row}[data-state="QUARANTINED"]', timeout=45_000)
                reason = page.text_content(f"{row} td:nth-child(3)") or ""
                assert "cpu_percent" in reason or "drained" in reason
                transitions = page.text_content("#transitions") or ""
                assert worker.name in transitions and "QUARANTINED" in transitions
                page.wait_for_function(
                    "document.querySelector('tr[data-queue=\"tweets\"] td:nth-child(2)')"
                    ".textContent === '1'", timeout=10_000)
                assert page.locator(f"{row} svg polyline").count() == 2  # cpu and memory
                shot = tmp_path / "fleet-page.png"
                page.screenshot(path=str(shot), full_page=True)
            finally:
                browser.close()
        assert shot.stat().st_size > 10_000
        # Everything the page loaded came from the checker itself
        assert requests and all(u.startswith(checker.url("/")) for u in requests), requests
        if os.environ.get("HOST_SCREENSHOT_DIR"):  # how docs/fleet-page.png is made
            shutil.copy(shot, Path(os.environ["HOST_SCREENSHOT_DIR"]) / shot.name)
