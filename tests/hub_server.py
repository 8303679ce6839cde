"""A tiny Hugging Face Hub for tests: the endpoints huggingface_hub 2.x calls to publish and download.

    with HubServer(lfs_dir=tmp_path / "hub-lfs") as hub:
        publish_release(path, "org/name", token=..., endpoint=hub.endpoint)
        hub.read("org/name", "data/train-00000-of-00001.parquet", rev="1.0.0")   # bytes, LFS resolved

Two listening sockets, as on the Hub: the API (`hub.endpoint`) and object storage (`hub.storage`, another
origin, like the S3/CDN URLs the Hub hands out: huggingface_hub sends no token there and follows no
redirect to it with the token). Implemented (repo_type in models|datasets|spaces):
  POST /api/repos/create                              create_repo (409 if it exists)
  GET  /api/{type}s/{ns}/{name}[/revision/{rev}]      repo_info / dataset_info
  GET  /api/{type}s/{ns}/{name}/refs                  list_repo_refs
  POST /api/validate-yaml                             README.md front matter check (create_commit)
  POST /api/{type}s/{ns}/{name}/preupload/{rev}       "lfs" for .gitattributes matches and files > 10 MB
  POST /{prefix}{ns}/{name}.git/info/lfs/objects/batch    LFS batch API, "basic" transfer: an upload and a
                                                      verify action per missing object, none for a stored one
  PUT  storage /upload/{sig}                          presigned upload: sha256 and size checked, stored on disk
  POST /{prefix}{ns}/{name}.git/info/lfs/objects/verify   200 once the object is stored
  POST /api/{type}s/{ns}/{name}/commit/{rev}          NDJSON commit: base64 "file" lines (refused for a path
                                                      that must be LFS), "lfsFile" pointers (object must be stored)
  POST /api/{type}s/{ns}/{name}/tag/{rev}             create_tag (409 if the tag exists)
  GET|HEAD /{prefix}{ns}/{name}/resolve/{rev}/{path}  hf_hub_download: regular files inline, LFS -> 302 to storage
Xet is never offered: no xet-*-token endpoint, no Xet headers, `xetEnabled: false`, LFS batch answers
"basic". (huggingface_hub 2.x picks Xet on its own when hf_xet is importable; infir's publish asks the
xet-write-token endpoint first and uploads by LFS when, as here, it answers 404.)
Everything else answers 404 and is recorded in `unhandled`. Every request is recorded in `requests`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

try:
    from hub_lfs import DEFAULT_GITATTRIBUTES, LfsEndpoints, LfsStore, git_blob_oid, is_lfs, parse_pointer, pointer
except ImportError:  # tests/ imported as a package
    from tests.hub_lfs import DEFAULT_GITATTRIBUTES, LfsEndpoints, LfsStore, git_blob_oid, is_lfs, parse_pointer, pointer


@dataclass
class Commit:
    oid: str
    parent: str | None
    message: str
    description: str
    added: dict[str, bytes]  # path -> git content (the pointer, for an LFS file)
    deleted: list[str]
    tree: dict[str, bytes] = field(default_factory=dict)  # the whole tree after this commit
    lfs: dict[str, tuple[str, int]] = field(default_factory=dict)  # path -> (sha256, size) of LFS files added


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    files: dict[str, bytes] = field(default_factory=dict)  # the tree at main: path -> git content
    commits: list[Commit] = field(default_factory=list)
    tags: dict[str, tuple[str, str | None]] = field(default_factory=dict)  # name -> (oid, message)

    @property
    def key(self) -> tuple[str, str]:
        return self.repo_type, self.repo_id

    @property
    def head(self) -> str:
        return self.commits[-1].oid

    def resolve(self, rev: str) -> str | None:
        if rev in ("main", "refs/heads/main"):
            return self.head
        if rev in self.tags:
            return self.tags[rev][0]
        return next((c.oid for c in self.commits if c.oid == rev), None)

    def tree(self, rev: str) -> dict[str, bytes] | None:
        oid = self.resolve(rev)
        return next((c.tree for c in self.commits if c.oid == oid), None)


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    body: bytes
    status: int = 0
    storage: bool = False  # sent to the storage origin, not the Hub API


_REPO_RE = re.compile(r"^/api/(models|datasets|spaces)/([^/]+/[^/]+?)(?:/(refs|preupload|commit|tag|revision|xet-write-token|xet-read-token)(?:/(.+))?)?/?$")
_LFS_RE = re.compile(r"^/(datasets/|spaces/)?([^/]+/[^/]+)\.git/info/lfs/objects/(batch|verify)$")
_RESOLVE_RE = re.compile(r"^/(datasets/|spaces/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")

class HubServer(LfsEndpoints):
    def __init__(self, lfs_dir: Path | str | None = None) -> None:
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[Request] = []
        self.unhandled: list[str] = []
        self.validated_yaml: list[str] = []
        self.lfs_batches: list[dict] = []  # per batch call: repo, asked (oids), upload (oids told to upload)
        self._own_dir = lfs_dir is None
        self.lfs = LfsStore(Path(lfs_dir) if lfs_dir is not None else Path(tempfile.mkdtemp(prefix="hub-lfs-")))
        self._signed: dict[str, tuple[str, tuple[str, str], str, int]] = {}  # sig -> (op, repo key, oid, size)
        self._faults: list[list] = []  # [method, path regex, status, remaining]
        self._lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # silence stderr
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = bytearray()
                    while True:
                        size = int(self.rfile.readline().strip().split(b";")[0], 16)
                        if size == 0:
                            self.rfile.readline()
                            return bytes(out)
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
                    storage=self.server is hub._storage_server,
                )
                with hub._lock:
                    hub.requests.append(req)
                if req.storage:  # outside the lock: an upload may be held (LfsStore.hold_after)
                    status, payload, extra = hub._storage(req)
                else:
                    with hub._lock:
                        status, payload, extra = hub._dispatch(req)
                req.status = status
                raw = isinstance(payload, bytes)
                data = payload if raw else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    if "Content-Type" not in extra:
                        self.send_header("Content-Type", "application/octet-stream" if raw else "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in extra.items():
                        self.send_header(k, v)
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                except OSError:  # the client is gone (a test killed it)
                    pass

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._storage_server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        for s in (self._server, self._storage_server):
            s.daemon_threads = True
        self._threads: list[threading.Thread] = []

    # --- lifecycle ----------------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def storage(self) -> str:
        return f"http://127.0.0.1:{self._storage_server.server_address[1]}"

    def __enter__(self) -> HubServer:
        for s in (self._server, self._storage_server):
            t = threading.Thread(target=s.serve_forever, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def __exit__(self, *exc) -> None:
        self.lfs.release()
        for s in (self._server, self._storage_server):
            s.shutdown()
            s.server_close()
        for t in self._threads:
            t.join(timeout=5)
        if self._own_dir:
            shutil.rmtree(self.lfs.root, ignore_errors=True)

    # --- test helpers -------------------------------------------------------------------------
    def fail(self, method: str, path_regex: str, status: int = 503, times: int = 1) -> None:
        """Answer the next `times` matching requests with `status` (transient-error injection)."""
        self._faults.append([method.upper(), re.compile(path_regex), status, times])

    def repo(self, repo_id: str, repo_type: str = "dataset") -> Repo:
        return self.repos[repo_type, repo_id]

    def read(self, repo_id: str, path: str, rev: str = "main", repo_type: str = "dataset") -> bytes | None:
        """A file's content at `rev` (an LFS file's object, read from the store), or None."""
        repo = self.repo(repo_id, repo_type)
        content = (repo.tree(rev) or {}).get(path)
        ptr = parse_pointer(content) if content is not None else None
        return self.lfs.read(repo.key, ptr[0]) if ptr else content

    @property
    def lfs_uploads(self) -> list[tuple[str, str, int]]:
        """(repo_id, sha256, size) of every object stored, in order."""
        return list(self.lfs.uploads)

    # --- dispatch -----------------------------------------------------------------------------
    def _injected(self, req: Request) -> int | None:
        for fault in self._faults:
            if fault[3] > 0 and fault[0] == req.method and fault[1].search(req.path):
                fault[3] -= 1
                return fault[2]
        return None

    def _dispatch(self, req: Request) -> tuple[int, object, dict]:
        status = self._injected(req)
        if status is not None:
            return status, {"error": "injected failure"}, {}
        if req.method == "POST" and req.path == "/api/repos/create":
            return self._create_repo(req)
        if req.method == "POST" and req.path == "/api/validate-yaml":
            return self._validate_yaml(req)
        for regex, handler in ((_REPO_RE, self._api), (_LFS_RE, self._lfs_api), (_RESOLVE_RE, self._resolve)):
            m = regex.match(req.path)
            if m:
                answer = handler(req, *m.groups())
                if answer is not None:
                    return answer
                break
        self.unhandled.append(f"{req.method} {req.path}")
        return 404, {"error": f"not implemented by the test hub: {req.method} {req.path}"}, {}

    def _find(self, type_prefix: str | None, repo_id: str) -> Repo | None:
        repo_type = (type_prefix or "models/").rstrip("/")[:-1]
        return self.repos.get((repo_type, repo_id))

    def _api(self, req: Request, type_s: str, repo_id: str, action: str | None, rest: str | None):
        repo = self._find(type_s + "/", repo_id)
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
        if req.method == "GET" and action in ("xet-write-token", "xet-read-token"):
            return 404, {"error": "Xet storage is not enabled on this hub"}, {}  # i.e. not offered: use LFS
        return None

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
        init = {".gitattributes": DEFAULT_GITATTRIBUTES}
        repo.files.update(init)
        oid = hashlib.sha1(f"init:{repo_id}".encode()).hexdigest()
        repo.commits.append(Commit(oid, None, "initial commit", "", init, [], dict(init)))
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
            "siblings": [{"rfilename": p} for p in sorted(repo.tree(sha) or {})],
            "tags": [],
            "xetEnabled": False,
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
            ptr = parse_pointer(existing) if existing is not None else None
            lfs = is_lfs(f["path"], int(f.get("size") or 0), repo.files.get(".gitattributes"))
            files.append(
                {
                    "path": f["path"],
                    "uploadMode": "lfs" if lfs else "regular",
                    "shouldIgnore": False,
                    # the Hub's oid of a file at head: sha256 for an LFS file, the git blob sha1 otherwise
                    "oid": ptr[0] if ptr else (git_blob_oid(existing) if existing is not None else None),
                }
            )
        return 200, {"files": files, "commitOid": repo.head}, {}

    def _commit(self, repo: Repo, rev: str, req: Request):
        if unquote(rev) != "main":
            return 404, {"error": "only main is supported"}, {"X-Error-Code": "RevisionNotFound"}
        header: dict = {}
        added: dict[str, bytes] = {}
        lfs: dict[str, tuple[str, int]] = {}
        deleted: list[str] = []
        gitattributes = repo.files.get(".gitattributes")
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
                content = base64.b64decode(value["content"])
                if content and is_lfs(value["path"], len(content), gitattributes):
                    return 400, {"error": f"{value['path']} must be uploaded through LFS (.gitattributes / size)"}, {}
                added[value["path"]] = content
            elif key == "lfsFile":
                oid, size = value.get("oid", ""), value.get("size")
                if value.get("algo") != "sha256" or not isinstance(size, int) or not self.lfs.has(repo.key, oid, size):
                    return 400, {"error": f"LFS object {oid} ({size} bytes) of {value.get('path')} was not uploaded"}, {}
                added[value["path"]] = pointer(oid, size)
                lfs[value["path"]] = (oid, size)
            elif key in ("deletedFile", "deletedFolder"):
                deleted.append(value["path"])
            else:
                return 400, {"error": f"unsupported commit operation {key!r}"}, {}
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
        commit = Commit(oid, repo.head, header["summary"], header.get("description", ""), added, deleted, dict(repo.files), lfs)
        repo.commits.append(commit)
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
