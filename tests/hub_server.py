"""A tiny in-memory Hugging Face Hub for tests (the endpoints huggingface_hub 2.x calls to publish).

    with HubServer() as hub:
        publish_release(path, "org/name", token=..., endpoint=hub.endpoint)
        hub.repos["dataset", "org/name"].files  # path -> bytes at head

Implemented (repo_type in models|datasets|spaces):
  POST /api/repos/create                              create_repo (409 if it exists)
  GET  /api/{type}s/{ns}/{name}[/revision/{rev}]      repo_info / dataset_info
  GET  /api/{type}s/{ns}/{name}/refs                  list_repo_refs
  POST /api/validate-yaml                             README.md front matter check (create_commit)
  POST /api/{type}s/{ns}/{name}/preupload/{rev}       upload modes: always "regular" (no LFS/Xet needed)
  POST /api/{type}s/{ns}/{name}/commit/{rev}          NDJSON commit, base64 "file" lines
  POST /api/{type}s/{ns}/{name}/tag/{rev}             create_tag (409 if the tag exists)
Everything else answers 404 and is recorded in `unhandled`. Every request is recorded in `requests`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import yaml


def git_blob_oid(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class Commit:
    oid: str
    parent: str | None
    message: str
    description: str
    added: dict[str, bytes]
    deleted: list[str]


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    files: dict[str, bytes] = field(default_factory=dict)
    commits: list[Commit] = field(default_factory=list)
    tags: dict[str, tuple[str, str | None]] = field(default_factory=dict)  # name -> (oid, message)

    @property
    def head(self) -> str:
        return self.commits[-1].oid

    def resolve(self, rev: str) -> str | None:
        if rev in ("main", "refs/heads/main"):
            return self.head
        if rev in self.tags:
            return self.tags[rev][0]
        return next((c.oid for c in self.commits if c.oid == rev), None)


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    body: bytes
    status: int = 0


_REPO_RE = re.compile(r"^/api/(models|datasets|spaces)/([^/]+/[^/]+?)(?:/(refs|preupload|commit|tag|revision)(?:/(.+))?)?/?$")


class HubServer:
    def __init__(self) -> None:
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[Request] = []
        self.unhandled: list[str] = []
        self.validated_yaml: list[str] = []
        self._faults: list[list] = []  # [method, path regex, status, remaining]
        self._lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # silence stderr
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = b""
                    while True:
                        size = int(self.rfile.readline().strip().split(b";")[0], 16)
                        if size == 0:
                            self.rfile.readline()
                            return out
                        out += self.rfile.read(size)
                        self.rfile.readline()
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _handle(self) -> None:
                parts = urlsplit(self.path)
                req = Request(
                    method=self.command,
                    path=unquote(parts.path),
                    query=parse_qs(parts.query),
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=self._body(),
                )
                with hub._lock:
                    hub.requests.append(req)
                    status, payload, extra = hub._dispatch(req)
                req.status = status
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in extra.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    # --- lifecycle ----------------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> HubServer:
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread:
            self._thread.join(timeout=5)

    # --- test helpers -------------------------------------------------------------------------
    def fail(self, method: str, path_regex: str, status: int = 503, times: int = 1) -> None:
        """Answer the next `times` matching requests with `status` (transient-error injection)."""
        self._faults.append([method.upper(), re.compile(path_regex), status, times])

    def repo(self, repo_id: str, repo_type: str = "dataset") -> Repo:
        return self.repos[repo_type, repo_id]

    # --- dispatch -----------------------------------------------------------------------------
    def _dispatch(self, req: Request) -> tuple[int, object, dict]:
        for fault in self._faults:
            if fault[3] > 0 and fault[0] == req.method and fault[1].search(req.path):
                fault[3] -= 1
                return fault[2], {"error": "injected failure"}, {}
        if req.method == "POST" and req.path == "/api/repos/create":
            return self._create_repo(req)
        if req.method == "POST" and req.path == "/api/validate-yaml":
            return self._validate_yaml(req)
        m = _REPO_RE.match(req.path)
        if m:
            type_s, repo_id, action, rest = m.groups()
            repo_type = type_s[:-1]
            repo = self.repos.get((repo_type, repo_id))
            if repo is None:
                return 404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"}
            if req.method == "GET" and action is None:
                return self._repo_info(repo, "main")
            if req.method == "GET" and action == "revision" and rest:
                return self._repo_info(repo, rest)
            if req.method == "GET" and action == "refs":
                return self._refs(repo)
            if req.method == "POST" and action == "preupload" and rest:
                return self._preupload(repo, rest, req)
            if req.method == "POST" and action == "commit" and rest:
                return self._commit(repo, rest, req)
            if req.method == "POST" and action == "tag" and rest:
                return self._tag(repo, rest, req)
        self.unhandled.append(f"{req.method} {req.path}")
        return 404, {"error": f"not implemented by the test hub: {req.method} {req.path}"}, {}

    def _url(self, repo: Repo) -> str:
        prefix = "" if repo.repo_type == "model" else f"{repo.repo_type}s/"
        return f"{self.endpoint}/{prefix}{repo.repo_id}"

    def _create_repo(self, req: Request):
        body = json.loads(req.body or b"{}")
        name, org = body.get("name"), body.get("organization")
        repo_type = body.get("type") or "model"
        repo_id = f"{org}/{name}" if org else f"user/{name}"
        if (repo_type, repo_id) in self.repos:
            return 409, {"error": "You already created this repo", "url": self._url(self.repos[repo_type, repo_id])}, {}
        repo = Repo(repo_type=repo_type, repo_id=repo_id, private=body.get("visibility") == "private")
        init = {".gitattributes": b"*.parquet filter=lfs diff=lfs merge=lfs -text\n"}
        repo.files.update(init)
        repo.commits.append(Commit(hashlib.sha1(f"init:{repo_id}".encode()).hexdigest(), None, "initial commit", "", init, []))
        self.repos[repo_type, repo_id] = repo
        return 200, {"url": self._url(repo), "name": repo_id, "id": repo_id}, {}

    def _repo_info(self, repo: Repo, rev: str):
        sha = repo.resolve(unquote(rev))
        if sha is None:
            return 404, {"error": f"Invalid rev id: {rev}"}, {"X-Error-Code": "RevisionNotFound"}
        return 200, {
            "id": repo.repo_id,
            "sha": sha,
            "private": repo.private,
            "siblings": [{"rfilename": p} for p in sorted(repo.files)],
            "tags": [],
        }, {}

    def _refs(self, repo: Repo):
        return 200, {
            "branches": [{"name": "main", "ref": "refs/heads/main", "targetCommit": repo.head}],
            "converts": [],
            "tags": [{"name": t, "ref": f"refs/tags/{t}", "targetCommit": oid} for t, (oid, _) in sorted(repo.tags.items())],
            "pullRequests": [],
        }, {}

    def _validate_yaml(self, req: Request):
        body = json.loads(req.body or b"{}")
        content = body.get("content", "")
        self.validated_yaml.append(content)
        if content.startswith("---\n"):
            end = content.find("\n---\n", 4)
            try:
                if end < 0:
                    raise ValueError("unterminated front matter")
                meta = yaml.safe_load(content[4:end])
                if not isinstance(meta, dict):
                    raise ValueError("front matter is not a mapping")
            except Exception as e:  # noqa: BLE001
                return 400, {"errors": [{"message": str(e)}], "warnings": []}, {}
        return 200, {"errors": [], "warnings": []}, {}

    def _preupload(self, repo: Repo, rev: str, req: Request):
        if unquote(rev) != "main":
            return 404, {"error": "only main is supported"}, {"X-Error-Code": "RevisionNotFound"}
        body = json.loads(req.body or b"{}")
        files = []
        for f in body.get("files", []):
            existing = repo.files.get(f["path"])
            files.append(
                {
                    "path": f["path"],
                    "uploadMode": "regular",
                    "shouldIgnore": False,
                    "oid": git_blob_oid(existing) if existing is not None else None,
                }
            )
        return 200, {"files": files, "commitOid": repo.head}, {}

    def _commit(self, repo: Repo, rev: str, req: Request):
        if unquote(rev) != "main":
            return 404, {"error": "only main is supported"}, {"X-Error-Code": "RevisionNotFound"}
        header: dict = {}
        added: dict[str, bytes] = {}
        deleted: list[str] = []
        for line in req.body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                header = value
            elif key == "file":
                if value.get("encoding") != "base64":
                    return 400, {"error": "expected base64 encoding"}, {}
                added[value["path"]] = base64.b64decode(value["content"])
            elif key in ("deletedFile", "deletedFolder"):
                deleted.append(value["path"])
            else:
                return 400, {"error": f"unsupported commit operation {key!r} (test hub has no LFS)"}, {}
        if not header.get("summary"):
            return 400, {"error": "missing commit summary"}, {}
        parent = header.get("parentCommit")
        if parent and parent != repo.head:
            return 412, {"error": "parent commit is not the head"}, {}
        h = hashlib.sha1(repo.head.encode() + header["summary"].encode())
        for p in sorted(added):
            h.update(p.encode() + b"\0" + hashlib.sha256(added[p]).digest())
        oid = h.hexdigest()
        for p in deleted:
            for k in [k for k in repo.files if k == p or k.startswith(p.rstrip("/") + "/")]:
                del repo.files[k]
        repo.files.update(added)
        repo.commits.append(Commit(oid, repo.head, header["summary"], header.get("description", ""), added, deleted))
        return 200, {"commitUrl": f"{self._url(repo)}/commit/{oid}", "commitOid": oid, "pullRequestUrl": None}, {}

    def _tag(self, repo: Repo, rev: str, req: Request):
        body = json.loads(req.body or b"{}")
        tag = body.get("tag")
        if not tag:
            return 400, {"error": "missing tag"}, {}
        oid = repo.resolve(unquote(rev))
        if oid is None:
            return 404, {"error": f"Invalid rev id: {rev}"}, {"X-Error-Code": "RevisionNotFound"}
        if tag in repo.tags:
            return 409, {"error": f"Tag {tag} already exists"}, {}
        repo.tags[tag] = (oid, body.get("message"))
        return 200, {}, {}
