"""A local OpenAI-compatible test server (stdlib only): POST /v1/chat/completions.

    with FakeOpenAIServer(latency=0.05, fault_rate=0.3, seed=1) as srv:
        client = AsyncOpenAI(base_url=srv.base_url, api_key="sk-test")
        ...
        srv.count, srv.counts["/v1/chat/completions"], srv.requests[0].body, srv.requests[0].headers

    python tests/openai_server.py --port 0 --latency 0.1     # prints "READY <base_url>", serves until killed

Features
- default responder: a JSON object valid for the request's `response_format` json_schema, filled
  deterministically from a hash of the conversation up to its first user message (so a repair
  conversation gets the same answer as the original question);
  `responder(body) -> str | dict(content=..., finish_reason=..., refusal=...) | None` overrides it.
- latency (seconds per request), a thread-safe request counter (total and per path), recorded
  requests (body, headers, arrival/finish times, status, fault).
- injected faults, per request, from `fault_fn(n, body)`, else `script[n]`, else a seeded RNG
  (`fault_rate`, `fault_kinds`, `seed`; request n's draw depends only on (seed, n)):
  "429" (Retry-After: `retry_after`), "500", "503", "400", "401" (echoes the bearer token, like a
  careless server), "drop" (socket closed, no response), "timeout" (sleeps `timeout_sleep` s),
  "malformed" (content not JSON), "schema" (JSON violating the schema), "length" (truncated,
  finish_reason "length"), "refusal", "empty" (no choices).
- routes are a dict {(method, path): handler(server, request) -> Reply}: add /v1/files or
  /v1/batches by registering handlers.
- `server="thread"` (ThreadingHTTPServer, default) or `server="asyncio"` (one event loop thread,
  cheaper per request; used by the benchmark so it measures clients, not the server).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

RETRYABLE_FAULTS = ("429", "500", "503", "drop", "timeout")
CONTENT_FAULTS = ("malformed", "schema", "length")
ALL_FAULTS = RETRYABLE_FAULTS + CONTENT_FAULTS + ("400", "401", "refusal", "empty")

CHAT_PATHS = ("/v1/chat/completions", "/chat/completions")


@dataclass
class Recorded:
    n: int
    method: str
    path: str
    body: Any
    headers: dict[str, str]
    arrived: float  # time.monotonic()
    replying: float | None = None  # just before the first byte of the reply (or the drop)
    finished: float | None = None  # after the reply was written
    status: int | None = None
    fault: str | None = None


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # JSON-able
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False  # close the socket without answering
    sleep: float = 0.0  # extra delay before answering (timeouts)


# -- deterministic fake answers ----------------------------------------------------------------


def _h(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()


def conversation_seed(body: dict[str, Any]) -> str:
    """Hash of the messages up to and including the first user message."""
    msgs = body.get("messages") or []
    base = []
    for m in msgs:
        base.append(f"{m.get('role')}:{m.get('content')}")
        if m.get("role") == "user":
            break
    return _h(str(body.get("model")), *base)


def fake_value(schema: dict[str, Any], root: dict[str, Any], seed: str, path: str = "$") -> Any:
    if "$ref" in schema:
        node: Any = root
        for part in schema["$ref"][2:].split("/"):
            node = node[part]
        return fake_value(node, root, seed, path)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            options = [o for o in schema[key] if o.get("type") != "null"] or schema[key]
            return fake_value(options[0], root, seed, path)
    if "allOf" in schema:
        return fake_value(schema["allOf"][0], root, seed, path)
    h = _h(seed, path)
    if "enum" in schema:
        return schema["enum"][int(h[:8], 16) % len(schema["enum"])]
    if "const" in schema:
        return schema["const"]
    t = schema.get("type")
    if isinstance(t, list):
        t = next((x for x in t if x != "null"), "null")
    if t == "object" or "properties" in schema:
        return {k: fake_value(v, root, seed, f"{path}.{k}") for k, v in (schema.get("properties") or {}).items()}
    if t == "array":
        n = max(int(schema.get("minItems", 0)), 2)
        if "maxItems" in schema:
            n = min(n, int(schema["maxItems"]))
        return [fake_value(schema.get("items") or {"type": "string"}, root, seed, f"{path}[{i}]") for i in range(n)]
    if t == "integer":
        return int(h[:6], 16) % 100
    if t == "number":
        return (int(h[:6], 16) % 1000) / 7.0
    if t == "boolean":
        return int(h[0], 16) % 2 == 0
    if t == "null":
        return None
    leaf = path.rsplit(".", 1)[-1]
    return f"{leaf}-{h[:10]}"


def default_content(body: dict[str, Any]) -> str:
    seed = conversation_seed(body)
    rf = body.get("response_format") or {}
    schema = (rf.get("json_schema") or {}).get("schema")
    if rf.get("type") == "json_schema" and isinstance(schema, dict):
        return json.dumps(fake_value(schema, schema, seed), ensure_ascii=False)
    if rf.get("type") == "json_object":
        return json.dumps({"answer": f"answer-{seed[:10]}"})
    return f"answer-{seed[:10]}"


def completion(body: dict[str, Any], n: int, content: str | None, finish_reason: str = "stop",
               refusal: str | None = None, usage: tuple[int, int] | None = None) -> dict[str, Any]:
    if usage is None:
        prompt_chars = sum(len(str(m.get("content") or "")) for m in body.get("messages") or [])
        usage = (prompt_chars // 4 + 1, len(content or "") // 4 + 1)
    return {
        "id": f"chatcmpl-test-{n}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model") or "unknown",
        "system_fingerprint": "fp_test",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": refusal},
                "finish_reason": finish_reason,
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": usage[0],
            "completion_tokens": usage[1],
            "total_tokens": usage[0] + usage[1],
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0},
        },
    }


def _error(status: int, message: str, code: str, type_: str = "invalid_request_error",
           headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, {"error": {"message": message, "type": type_, "param": None, "code": code}}, headers or {})


# -- the server ----------------------------------------------------------------------------------


class FakeOpenAIServer:
    def __init__(
        self,
        *,
        responder: Callable[[dict[str, Any]], Any] | None = None,
        latency: float = 0.0,
        fault_rate: float = 0.0,
        fault_kinds: tuple[str, ...] = RETRYABLE_FAULTS + CONTENT_FAULTS,
        seed: int = 0,
        script: list[str | None] | None = None,
        fault_fn: Callable[[int, dict[str, Any]], str | None] | None = None,
        retry_after: str | None = "0",
        timeout_sleep: float = 5.0,
        usage: tuple[int, int] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        server: str = "thread",
        record: bool = True,
    ):
        unknown = set(fault_kinds) - set(ALL_FAULTS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}")
        self.responder = responder
        self.latency = latency
        self.fault_rate = fault_rate
        self.fault_kinds = tuple(fault_kinds)
        self.seed = seed
        self.script = list(script or [])
        self.fault_fn = fault_fn
        self.retry_after = retry_after
        self.timeout_sleep = timeout_sleep
        self.usage = usage
        self.host = host
        self.port = port
        self.kind = server
        self.record = record
        self.routes: dict[tuple[str, str], Callable[[FakeOpenAIServer, Recorded], Reply]] = {
            ("POST", p): FakeOpenAIServer.chat_completions for p in CHAT_PATHS
        }
        self.requests: list[Recorded] = []
        self.count = 0
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._httpd: ThreadingHTTPServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()

    # -- lifecycle
    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> FakeOpenAIServer:
        if self.kind == "thread":
            self._start_threading()
        elif self.kind == "asyncio":
            self._start_asyncio()
        else:
            raise ValueError(f"server kind {self.kind!r}")
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._loop is not None:
            loop = self._loop

            async def shutdown() -> None:
                me = asyncio.current_task()
                rest = [t for t in asyncio.all_tasks() if t is not me]
                for t in rest:
                    t.cancel()
                await asyncio.gather(*rest, return_exceptions=True)
                loop.stop()

            asyncio.run_coroutine_threadsafe(shutdown(), loop)
            if self._thread is not None:
                self._thread.join(5)
            self._loop = None

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.count = 0
            self.counts.clear()

    def wait_for_count(self, n: int, timeout: float = 30.0) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.count >= n:
                return True
            time.sleep(0.005)
        return False

    def chat_requests(self) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.path in CHAT_PATHS]

    # -- request handling (shared by both server kinds)
    def _register(self, method: str, path: str, raw: bytes, headers: dict[str, str]) -> Recorded:
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        with self._lock:
            n = self.count
            self.count += 1
            self.counts[path] = self.counts.get(path, 0) + 1
            rec = Recorded(n, method, path, body, headers, time.monotonic())
            if self.record:
                self.requests.append(rec)
        return rec

    def handle(self, rec: Recorded) -> Reply:
        route = self.routes.get((rec.method, rec.path.split("?", 1)[0]))
        if route is None:
            return _error(404, f"no route {rec.method} {rec.path}", "not_found")
        if not isinstance(rec.body, dict) and rec.method == "POST":
            return _error(400, "body is not a JSON object", "invalid_json")
        return route(self, rec)

    def pick_fault(self, n: int, body: dict[str, Any]) -> str | None:
        if self.fault_fn is not None:
            return self.fault_fn(n, body)
        if n < len(self.script):
            return self.script[n]
        if self.fault_rate > 0:
            rng = random.Random(f"{self.seed}:{n}")
            if rng.random() < self.fault_rate:
                return rng.choice(self.fault_kinds)
        return None

    def chat_completions(self, rec: Recorded) -> Reply:
        body = rec.body
        fault = self.pick_fault(rec.n, body)
        rec.fault = fault
        if fault == "429":
            headers = {"retry-after": self.retry_after} if self.retry_after is not None else {}
            headers.update({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "20ms"})
            return _error(429, "Rate limit reached for requests", "rate_limit_exceeded", "requests", headers)
        if fault in ("500", "503"):
            return _error(int(fault), "The server had an error", "server_error", "server_error")
        if fault == "400":
            return _error(400, "Invalid parameter: messages", "invalid_value")
        if fault == "401":
            auth = rec.headers.get("authorization", "")
            return _error(401, f"Incorrect API key provided: {auth.removeprefix('Bearer ')}.", "invalid_api_key")
        if fault == "drop":
            return Reply(drop=True)
        n = rec.n
        if fault == "empty":
            resp = completion(body, n, "", usage=self.usage)
            resp["choices"] = []
            return Reply(200, resp)
        if fault == "refusal":
            return Reply(200, completion(body, n, None, refusal="I'm sorry, I can't help with that.", usage=self.usage))
        content, finish, refusal = self._content(body)
        if fault == "malformed":
            content = "Sure! Here is the JSON: {" + (content or "")[:20]
        elif fault == "schema":
            content = json.dumps({"unexpected": True})
        elif fault == "length":
            content, finish = (content or "")[: max(1, len(content or "") // 2)], "length"
        reply = Reply(200, completion(body, n, content, finish, refusal, usage=self.usage))
        if fault == "timeout":
            reply.sleep = self.timeout_sleep
        return reply

    def _content(self, body: dict[str, Any]) -> tuple[str | None, str, str | None]:
        if self.responder is not None:
            out = self.responder(body)
            if isinstance(out, dict):
                return out.get("content"), out.get("finish_reason", "stop"), out.get("refusal")
            if out is not None:
                return str(out), "stop", None
        return default_content(body), "stop", None

    # -- ThreadingHTTPServer
    def _start_threading(self) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _serve(self, method: str) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                rec = outer._register(method, self.path, raw, headers)
                reply = outer.handle(rec)
                delay = outer.latency + reply.sleep
                if delay > 0 and outer._stopping.wait(delay):
                    reply = Reply(drop=True)
                rec.replying = time.monotonic()
                try:
                    if reply.drop:
                        self.close_connection = True
                        try:
                            self.connection.shutdown(socket.SHUT_RDWR)
                        except OSError:
                            pass
                        return
                    data = json.dumps(reply.body).encode("utf-8")
                    self.send_response(reply.status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError, OSError):
                    self.close_connection = True
                finally:
                    rec.finished = time.monotonic()
                    rec.status = None if reply.drop else reply.status

            def do_POST(self) -> None:
                self._serve("POST")

            def do_GET(self) -> None:
                self._serve("GET")

            def do_DELETE(self) -> None:
                self._serve("DELETE")

            def handle(self) -> None:
                try:
                    super().handle()
                except (ConnectionResetError, BrokenPipeError, OSError):
                    pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 1024
            allow_reuse_address = True

        self._httpd = Server((self.host, self.port), Handler)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-openai", daemon=True)
        self._thread.start()

    # -- asyncio server (HTTP/1.1 keep-alive, Content-Length bodies only)
    def _start_asyncio(self) -> None:
        err: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                srv = loop.run_until_complete(asyncio.start_server(self._aio_conn, self.host, self.port, backlog=1024))
                self.port = srv.sockets[0].getsockname()[1]
            except BaseException as e:  # noqa: BLE001
                err.append(e)
                self._ready.set()
                return
            self._ready.set()
            try:
                loop.run_forever()
            finally:
                srv.close()
                loop.close()

        self._thread = threading.Thread(target=run, name="fake-openai-aio", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if err:
            raise err[0]

    async def _aio_conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                length = int(headers.get("content-length") or 0)
                raw = await reader.readexactly(length) if length else b""
                rec = self._register(method, path, raw, headers)
                reply = self.handle(rec)
                delay = self.latency + reply.sleep
                if delay > 0:
                    await asyncio.sleep(delay)
                rec.replying = time.monotonic()
                if reply.drop:
                    rec.finished = time.monotonic()
                    writer.transport.abort()
                    return
                data = json.dumps(reply.body).encode("utf-8")
                out = [f"HTTP/1.1 {reply.status} X", "content-type: application/json",
                       f"content-length: {len(data)}"]
                out += [f"{k}: {v}" for k, v in reply.headers.items()]
                writer.write(("\r\n".join(out) + "\r\n\r\n").encode("latin-1") + data)
                await writer.drain()
                rec.finished, rec.status = time.monotonic(), reply.status
                if headers.get("connection", "").lower() == "close":
                    break
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            try:
                writer.close()
            except Exception:  # noqa: BLE001
                pass


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency", type=float, default=0.0)
    ap.add_argument("--fault-rate", type=float, default=0.0)
    ap.add_argument("--faults", default=",".join(RETRYABLE_FAULTS + CONTENT_FAULTS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--retry-after", default="0")
    ap.add_argument("--timeout-sleep", type=float, default=5.0)
    ap.add_argument("--server", choices=("thread", "asyncio"), default="thread")
    ap.add_argument("--no-record", action="store_true", help="keep counts only (long benchmarks)")
    args = ap.parse_args(argv)
    srv = FakeOpenAIServer(
        latency=args.latency, fault_rate=args.fault_rate, fault_kinds=tuple(f for f in args.faults.split(",") if f),
        seed=args.seed, retry_after=args.retry_after, timeout_sleep=args.timeout_sleep, host=args.host,
        port=args.port, server=args.server, record=not args.no_record,
    ).start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    print(f"READY {srv.base_url}", flush=True)
    done.wait()
    print(f"REQUESTS {srv.count}", flush=True)
    srv.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
