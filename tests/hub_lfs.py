"""The LFS side of the test hub (tests/hub_server.py): which paths are LFS, the pointer format, and an
on-disk object store that checks every uploaded object against the sha256 and size it was announced with.

What the Hub does, and so what this mimics:
- preupload answers "lfs" for a path matched by a `filter=lfs` line of the repo's `.gitattributes`, and
  for any file over 10 MB; "regular" otherwise.
- An LFS object is uploaded out of band (LFS batch API -> PUT to a presigned storage URL -> verify);
  the commit then carries only its pointer (`lfsFile`: path, sha256 oid, size) and the repo's git tree
  holds the pointer text, exactly as `git lfs` would write it.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hub_server import Request

#: Files over this size are LFS whatever .gitattributes says (the Hub's limit for regular git blobs).
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024

#: The part of the Hub's default dataset-repo .gitattributes that a release can hit (archives, Parquet,
#: Arrow, images); every new repo of the test hub starts with it, as on the Hub.
DEFAULT_GITATTRIBUTES = b"".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text\n".encode()
    for pattern in (
        "*.7z", "*.arrow", "*.bin", "*.gz", "*.npy", "*.parquet", "*.safetensors", "*.tar", "*.zip", "*.zst",
        "*.lz4", "*.bmp", "*.gif", "*.png", "*.tiff", "*.jpg", "*.jpeg", "*.webp",
    )
)

_POINTER_RE = re.compile(rb"^version https://git-lfs\.github\.com/spec/v1\noid sha256:([0-9a-f]{64})\nsize (\d+)\n$")


def git_blob_oid(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def pointer(oid: str, size: int) -> bytes:
    """The git-lfs pointer file committed in place of the object."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n".encode()


def parse_pointer(data: bytes) -> tuple[str, int] | None:
    m = _POINTER_RE.match(data)
    return (m.group(1).decode(), int(m.group(2))) if m else None


def _glob_regex(pattern: str) -> re.Pattern:
    """A gitattributes glob as a regex on the repo path: without a slash it matches the base name anywhere,
    with one it is anchored at the root; `*` stays within a folder, `**/` spans folders."""
    anchored = "/" in pattern.rstrip("/")
    pattern = pattern.lstrip("/")
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(("^" if anchored else "^(?:.*/)?") + out + "$")


def lfs_patterns(gitattributes: bytes | None) -> list[re.Pattern]:
    patterns = []
    for line in (gitattributes or b"").decode("utf-8", "replace").splitlines():
        parts = line.split()
        if parts and not parts[0].startswith("#") and "filter=lfs" in parts[1:]:
            patterns.append(_glob_regex(parts[0]))
    return patterns


def is_lfs(path: str, size: int, gitattributes: bytes | None) -> bool:
    return size > LFS_SIZE_THRESHOLD or any(p.match(path) for p in lfs_patterns(gitattributes))


class LfsStore:
    """Objects on disk under `root/<repo_type>/<namespace>/<name>/<oid>`, one store per repo (as the Hub
    scopes an object to the repos it was uploaded to). `hold_after(n)` makes uploads after the n-th wait
    (and then fail without storing) until `release()`: a test can stop a client between two objects."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.uploads: list[tuple[str, str, int]] = []  # (repo_id, oid, size) of each object stored
        self._lock = threading.Lock()
        self._hold_after: int | None = None
        self._admitted = 0  # uploads let through (stored, or being checked and stored)
        self.reached = threading.Event()  # set once `hold_after` objects are stored
        self._released = threading.Event()

    def _path(self, repo_key: tuple[str, str], oid: str) -> Path:
        if not re.fullmatch(r"[0-9a-f]{64}", oid):
            raise ValueError(f"bad oid {oid!r}")
        return self.root / repo_key[0] / repo_key[1] / oid

    def has(self, repo_key: tuple[str, str], oid: str, size: int | None = None) -> bool:
        p = self._path(repo_key, oid)
        return p.is_file() and (size is None or p.stat().st_size == size)

    def read(self, repo_key: tuple[str, str], oid: str) -> bytes:
        return self._path(repo_key, oid).read_bytes()

    def hold_after(self, n: int) -> threading.Event:
        """Let `n` more objects be stored, then hold further uploads; the event is set when they are."""
        with self._lock:
            self._admitted = len(self.uploads)
            self._hold_after = len(self.uploads) + n
        self.reached.clear()
        self._released.clear()
        return self.reached

    def release(self) -> None:
        self._hold_after = None
        self._released.set()

    def put(self, repo_key: tuple[str, str], oid: str, size: int, data: bytes) -> str | None:
        """Store an uploaded object; the reason it is refused, or None. Blocks while held (see class doc)."""
        with self._lock:  # admission is counted under the lock so that exactly `hold_after` get through
            held = self._hold_after is not None and self._admitted >= self._hold_after
            if not held:
                self._admitted += 1
        if held:
            self._released.wait()
            return "storage unavailable (held by the test)"
        refused = None
        if len(data) != size:
            refused = f"size mismatch: announced {size}, received {len(data)}"
        elif hashlib.sha256(data).hexdigest() != oid:
            refused = "sha256 mismatch: the object is not the one announced"
        else:
            p = self._path(repo_key, oid)
            p.parent.mkdir(parents=True, exist_ok=True)
            tmp = p.with_name(f"{p.name}.{threading.get_ident()}.part")
            tmp.write_bytes(data)
            tmp.replace(p)
        with self._lock:
            if refused:
                self._admitted -= 1
                return refused
            self.uploads.append((repo_key[1], oid, size))
            if self._hold_after is not None and len(self.uploads) >= self._hold_after:
                self.reached.set()
        return None


_LFS_JSON = "application/vnd.git-lfs+json"


class LfsEndpoints:
    """HubServer's LFS batch/verify API, its storage origin and resolve (downloads); see hub_server's doc."""

    def _lfs_api(self, req: Request, type_prefix: str | None, repo_id: str, action: str):
        repo = self._find(type_prefix, repo_id)
        if req.method != "POST":
            return None
        if repo is None:
            return 404, {"message": "Repository not found"}, {"Content-Type": _LFS_JSON}
        body = json.loads(req.body or b"{}")
        if action == "verify":
            ok = self.lfs.has(repo.key, body.get("oid", ""), body.get("size"))
            return (200, {}, {}) if ok else (404, {"message": "object not found"}, {})
        if body.get("operation") != "upload" or "basic" not in body.get("transfers", ["basic"]):
            return 422, {"message": "only the basic upload transfer is supported"}, {"Content-Type": _LFS_JSON}
        objects, asked, upload = [], [], []
        for obj in body.get("objects", []):
            oid, size = obj["oid"], int(obj["size"])
            asked.append(oid)
            if self.lfs.has(repo.key, oid, size):  # stored already: no actions, the client skips it
                objects.append({"oid": oid, "size": size})
                continue
            upload.append(oid)
            sig = secrets.token_urlsafe(16)
            self._signed[sig] = ("upload", repo.key, oid, size)
            prefix = "" if repo.repo_type == "model" else f"{repo.repo_type}s/"
            objects.append({"oid": oid, "size": size, "authenticated": True, "actions": {
                "upload": {"href": f"{self.storage}/upload/{sig}", "header": {}},
                "verify": {"href": f"{self.endpoint}/{prefix}{repo.repo_id}.git/info/lfs/objects/verify", "header": {}},
            }})
        self.lfs_batches.append({"repo": repo.repo_id, "asked": asked, "upload": upload})
        return 200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"}, {"Content-Type": _LFS_JSON}

    def _storage(self, req: Request) -> tuple[int, object, dict]:
        """The storage origin: presigned PUT of an object, presigned GET of one (what resolve redirects to)."""
        with self._lock:
            status = self._injected(req)
        if status is not None:
            return status, {"error": "injected failure"}, {}
        m = re.fullmatch(r"/(upload|download)/([A-Za-z0-9_-]+)", req.path)
        signed = self._signed.get(m.group(2)) if m else None
        if signed is None or signed[0] != m.group(1):
            return 403, {"error": "bad or expired signature"}, {}
        _, key, oid, size = signed
        if req.method == "PUT" and signed[0] == "upload":
            refused = self.lfs.put(key, oid, size, req.body)
            return (200, {}, {}) if refused is None else (503 if "held" in refused else 400, {"error": refused}, {})
        if req.method in ("GET", "HEAD") and signed[0] == "download":
            return 200, self.lfs.read(key, oid), {}
        return 405, {"error": "method not allowed"}, {}

    def _resolve(self, req: Request, type_prefix: str | None, repo_id: str, rev: str, path: str):
        """hf_hub_download: HEAD for metadata, then GET; an LFS file redirects to a signed storage URL."""
        if req.method not in ("GET", "HEAD"):
            return None
        repo = self._find(type_prefix, repo_id)
        if repo is None:
            return 404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"}
        sha = repo.resolve(rev)
        if sha is None:
            return 404, {"error": f"Invalid rev id: {rev}"}, {"X-Error-Code": "RevisionNotFound"}
        content = (repo.tree(sha) or {}).get(path)
        if content is None:
            return 404, {"error": f"{path} not found"}, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": sha}
        headers = {"X-Repo-Commit": sha, "ETag": f'"{git_blob_oid(content)}"'}
        ptr = parse_pointer(content)
        if ptr is None:
            return 200, content, headers
        sig = secrets.token_urlsafe(16)
        self._signed[sig] = ("download", repo.key, ptr[0], ptr[1])
        headers.update({"Location": f"{self.storage}/download/{sig}", "X-Linked-Etag": f'"{ptr[0]}"', "X-Linked-Size": str(ptr[1])})
        return 302, b"", headers
