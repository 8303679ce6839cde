"""The labelling server: 127.0.0.1 only, the token on every request, the Host header checked, each
answer on disk before the page hears back, the judge's verdicts only for answered rows."""

from __future__ import annotations

import http.client
import json
import re
import threading

import pytest

from audit_fixtures import make_audit_run
from pipeline.audit.command import prepare
from pipeline.audit.server import AuditApp, make_server, url_of

ANSWERS = {"p_fits": "yes", "hn1_fits": "no", "hn2_fits": "unsure", "edits_minimal": "yes"}


@pytest.fixture
def served(tmp_path):
    run = make_audit_run(tmp_path)
    audit = prepare(run, rows=12, seed=5, name="s", per_stratum=None)
    app = AuditApp(audit, "alice")
    httpd = make_server(app, 0)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield httpd, app, audit
    finally:
        httpd.shutdown()
        httpd.server_close()


def _request(httpd, method: str, path: str, host: str | None = None, body: dict | None = None):
    port = httpd.server_address[1]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Host": host or f"127.0.0.1:{port}"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    conn.request(method, path, body=data, headers=headers)
    res = conn.getresponse()
    out = res.status, res.read().decode()
    conn.close()
    return out


def test_listens_on_loopback_only(served):
    httpd, app, _ = served
    assert httpd.server_address[0] == "127.0.0.1"
    assert url_of(httpd) == f"http://127.0.0.1:{httpd.server_address[1]}/{app.token}/"
    assert len(app.token) >= 32


def test_refuses_requests_without_the_token_and_with_a_foreign_host(served):
    httpd, app, audit = served
    port = httpd.server_address[1]
    row = json.loads((audit / "sample.json").read_text())["rows"][0]["row_id"]
    label = {"row_id": row, "answers": ANSWERS, "valid": True, "note": ""}
    for path in ("/", "/label", f"/{app.token[:-1]}/", "/x/label"):
        assert _request(httpd, "GET", path)[0] == 403
    assert _request(httpd, "POST", "/label", body=label)[0] == 403
    for host in ("evil.example:%d" % port, "127.0.0.1", f"127.0.0.1:{port + 1}", f"localhost.evil.example:{port}"):
        assert _request(httpd, "GET", f"/{app.token}/", host=host)[0] == 421
        assert _request(httpd, "POST", f"/{app.token}/label", host=host, body=label)[0] == 421
    assert not (audit / "labels.jsonl").exists()  # nothing refused was written
    assert _request(httpd, "GET", f"/{app.token}/", host=f"localhost:{port}")[0] == 200
    assert _request(httpd, "GET", f"/{app.token}/")[0] == 200


def test_an_answer_is_written_before_the_reply_and_unblinds_its_row(served):
    httpd, app, audit = served
    rows = json.loads((audit / "sample.json").read_text())["rows"]
    first, second = rows[0], rows[1]
    code, page = _request(httpd, "GET", f"/{app.token}/")
    secret = next(iter(first["judge"]["reasons"].values()), None) if first["judge"]["reasons"] else None
    assert code == 200 and "Content-Security-Policy" in page and "default-src 'none'" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)  # self-contained: nothing to fetch
    data = json.loads(page.split('id="audit-data">', 1)[1].split("</script>", 1)[0])
    assert data["judge"] == {} and all("judge" not in r and "stratum" not in r for r in data["rows"])  # blind
    code, body = _request(httpd, "POST", f"/{app.token}/label", body={"row_id": first["row_id"], "answers": ANSWERS,
                                                                       "valid": False, "note": "HN1 answers I+ too"})
    assert code == 200 and json.loads(body)["judge"] == first["judge"]
    line = json.loads((audit / "labels.jsonl").read_text().splitlines()[0])
    assert (line["row_id"], line["annotator"], line["answers"], line["valid"], line["note"]) == (
        first["row_id"], "alice", ANSWERS, False, "HN1 answers I+ too")
    data = json.loads(_request(httpd, "GET", f"/{app.token}/")[1].split('id="audit-data">', 1)[1].split("</script>", 1)[0])
    assert set(data["judge"]) == {first["row_id"]} and data["labels"][first["row_id"]]["valid"] is False
    assert second["row_id"] not in data["judge"]
    if secret:
        assert secret in json.dumps(data["judge"])


def test_bad_answers_are_refused_with_one_line_and_not_written(served):
    httpd, app, audit = served
    row = json.loads((audit / "sample.json").read_text())["rows"][0]["row_id"]
    for body, words in (({"row_id": "nope", "answers": ANSWERS, "valid": True}, "row id 'nope' is not in the sample"),
                        ({"row_id": row, "answers": {**ANSWERS, "p_fits": "maybe"}, "valid": True}, "answers.p_fits"),
                        ({"row_id": row, "answers": ANSWERS, "valid": "perhaps"}, "valid")):
        code, out = _request(httpd, "POST", f"/{app.token}/label", body=body)
        assert code == 400 and words in json.loads(out)["error"]
    assert not (audit / "labels.jsonl").exists()
