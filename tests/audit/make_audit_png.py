"""Make docs/audit.png: the labelling page on the bundled sample run, one row answered.

    .venv/bin/python tests/audit/make_audit_png.py [docs/audit.png]

Builds the sample run to verify (offline backend) in a temporary folder, draws `infir audit`'s
sample, serves it in-process, answers the first row with the keyboard and screenshots the page with
the judge's verdicts shown. Needs the system Chromium and playwright (as the browser test).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from pipeline.audit.command import prepare  # noqa: E402
from pipeline.audit.server import AuditApp, make_server, url_of  # noqa: E402


def main(out: Path) -> None:
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as work:
        subprocess.run([sys.executable, "-m", "pipeline.cli", "build", "--until", "verify", "--set",
                        f"source.path={REPO / 'data' / 'sample'}"], cwd=work, check=True, capture_output=True)
        audit = prepare(Path(work) / "runs" / "sample", rows=100, seed=13, name=None, per_stratum=None)
        httpd = make_server(AuditApp(audit, "reviewer"), 0)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(url_of(httpd))
            for key in ("1", "y", "n", "y", "y", "x", "c"):
                page.keyboard.press(key)
            page.keyboard.type("HN1 still answers I+: it is not a hard negative")
            for key in ("Enter", "Enter"):
                page.keyboard.press(key)
            page.locator('#state[data-saved="1"]').wait_for()
            page.screenshot(path=str(out), full_page=True)
            browser.close()
        httpd.shutdown()
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "docs" / "audit.png")
