"""The labelling server: one annotator's page and the answers it posts, on 127.0.0.1 only.

The standard library's ThreadingHTTPServer, not a web framework: infir has none as a dependency,
and the server has two routes (the page, one POST per answer) for one person on one machine.
Every request must carry the random token in its path (403 otherwise) and a Host header naming
127.0.0.1 or localhost at the server's port (421 otherwise: a page of another site that resolves
its name to 127.0.0.1, DNS rebinding, is refused even with a guessed path).
"""

from __future__ import annotations

import hmac
import json
import secrets
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

from pipeline.audit.labels import LabelWriter, now, parse_label, read_labels
from pipeline.audit.page import render_page
from pipeline.audit.sample import load_sample
from pipeline.errors import InfirError

MAX_BODY = 64 * 1024  # one answer is well under 1 KiB; a note has room, a flood does not


class AuditApp:
    """What the handler threads share: the sample, the writer, the token."""

    def __init__(self, audit_dir: Path, annotator: str):
        self.audit_dir = Path(audit_dir)
        self.annotator = annotator
        self.sample = load_sample(self.audit_dir)
        self.rows = {r["row_id"]: r for r in self.sample["rows"]}
        self.writer = LabelWriter(self.audit_dir)
        self.token = secrets.token_urlsafe(24)

    def labels(self) -> tuple[dict, list[str]]:
        """This annotator's latest answers by row id, read from disk (so a restart resumes)."""
        latest, notes = read_labels(self.audit_dir, set(self.rows))
        return {rid: lb.model_dump() for (rid, who), lb in latest.items() if who == self.annotator}, notes

    def page(self) -> str:
        mine, _ = self.labels()
        return render_page(self.sample, self.audit_dir.name, self.annotator, mine, f"/{self.token}/label")

    def answer(self, body: dict) -> dict:
        """Validate and write one answer; the row's judge verdicts (shown now that it is answered)."""
        if not isinstance(body, dict):
            raise InfirError("expected a JSON object")
        rid = body.get("row_id")
        if rid not in self.rows:
            raise InfirError(f"row id {rid!r} is not in the sample")
        fields = {k: body.get(k) for k in ("row_id", "answers", "valid")}
        label = parse_label({**fields, "note": str(body.get("note") or ""), "annotator": self.annotator, "at": now()},
                            "answer")
        self.writer.append(label)
        return {"ok": True, "judge": self.rows[rid]["judge"]}


class Handler(BaseHTTPRequestHandler):
    server_version = "infir-audit"

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass  # the terminal shows the URL and notes, not a line per request

    def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("X-Frame-Options", "DENY")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, code: int, obj: dict) -> None:
        self._send(code, json.dumps(obj, ensure_ascii=False).encode("utf-8"), "application/json")

    def _route(self) -> str | None:
        """The path after the token, or None once a refusal was sent."""
        app: AuditApp = self.server.app  # type: ignore[attr-defined]
        port = self.server.server_address[1]
        if self.headers.get("Host", "") not in (f"127.0.0.1:{port}", f"localhost:{port}"):
            self._send(421, b"refused: the Host header must be 127.0.0.1 or localhost at this port\n")
            return None
        parts = urlsplit(self.path).path.split("/", 2)
        if len(parts) < 2 or not hmac.compare_digest(parts[1].encode(), app.token.encode()):
            self._send(403, b"refused: open the URL infir audit printed (it carries the token)\n")
            return None
        return parts[2] if len(parts) > 2 else ""

    def do_GET(self):  # noqa: N802 - http.server's naming
        route = self._route()
        if route is None:
            return
        if route != "":
            return self._send(404, b"not found\n")
        app: AuditApp = self.server.app  # type: ignore[attr-defined]
        try:
            page = app.page()
        except InfirError as e:
            return self._send(500, f"{e}\n".encode())
        self._send(200, page.encode("utf-8"), "text/html; charset=utf-8")

    def do_POST(self):  # noqa: N802
        route = self._route()
        if route is None:
            return
        if route != "label":
            return self._send(404, b"not found\n")
        if not (self.headers.get("Content-Type") or "").startswith("application/json"):
            return self._json(415, {"ok": False, "error": "expected Content-Type: application/json"})
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 < length <= MAX_BODY:
            return self._json(413, {"ok": False, "error": f"body of {length} bytes (1 to {MAX_BODY})"})
        app: AuditApp = self.server.app  # type: ignore[attr-defined]
        try:
            body = json.loads(self.rfile.read(length))
            self._json(200, app.answer(body))
        except ValueError as e:
            self._json(400, {"ok": False, "error": f"not JSON: {e}"})
        except InfirError as e:
            self._json(400, {"ok": False, "error": str(e)})
        except OSError as e:  # the disk said no: the page must show the answer was not kept
            self._json(500, {"ok": False, "error": f"not written: {e.strerror or e}"})


def make_server(app: AuditApp, port: int = 0) -> ThreadingHTTPServer:
    """Bound to 127.0.0.1 only (never 0.0.0.0): the page is for the person at this machine."""
    try:
        httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    except OSError as e:
        raise InfirError(f"cannot listen on 127.0.0.1:{port} ({e.strerror or e}); pick another --port") from None
    httpd.daemon_threads = True
    httpd.app = app  # type: ignore[attr-defined]
    return httpd


def url_of(httpd: ThreadingHTTPServer) -> str:
    return f"http://127.0.0.1:{httpd.server_address[1]}/{httpd.app.token}/"  # type: ignore[attr-defined]
