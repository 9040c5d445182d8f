"""A fake Hugging Face Hub over HTTP, for tests of code that calls the real `huggingface_hub`.

Written against huggingface_hub 2.4.0. Serves model repos only (no datasets/spaces), one revision
each: "main" and its commit hash. Endpoints, as the library calls them:

  GET       /api/models/{repo}[/revision/{rev}]     model_info / repo_info (snapshot_download)
  GET       /api/models/{repo}/tree/{rev}[/{path}]  list_repo_tree / list_repo_files (one page)
  HEAD, GET /{repo}/resolve/{rev}/{file}            hf_hub_download: the HEAD must carry X-Repo-Commit
            (40 hex) and ETag (here the sha256, which names the cache blob); Content-Length gives the size
  GET       /api/agent-harnesses                    the user-agent's agent detection (see telemetry below)

Errors, with the header the library's `hf_raise_for_status` maps:
  unknown repo      404 X-Error-Code: RepoNotFound      -> errors.RepositoryNotFoundError
  gated, no token   401 X-Error-Code: GatedRepo         -> errors.GatedRepoError (a RepositoryNotFoundError)
  missing file      404 X-Error-Code: EntryNotFound     -> errors.RemoteEntryNotFoundError (an EntryNotFoundError)
  unknown revision  404 X-Error-Code: RevisionNotFound  -> errors.RevisionNotFoundError
Gated repos gate only file contents (/resolve), as the real Hub does: their listing and info are public.
A request whose `Authorization: Bearer ...` equals `FakeHub.token` gets the gated files.

Environment, read by huggingface_hub AT IMPORT into `huggingface_hub.constants`, so set before the first
`import huggingface_hub` in the process (or run the code under test in a subprocess; `hub_env()` builds it):
  HF_ENDPOINT=<start()'s URL>   -> constants.ENDPOINT (HfApi's default) and HUGGINGFACE_CO_URL_TEMPLATE
                                   (hf_hub_download). Without it, pass endpoint= to HfApi / hf_hub_download.
  HF_HOME=<tmp dir>             -> HF_HUB_CACHE (HF_HOME/hub), HF_TOKEN_PATH (HF_HOME/token), agent cache.
  HF_HUB_OFFLINE=1              -> constants.HF_HUB_OFFLINE; in-process, monkeypatch that constant instead.
  HF_HUB_DISABLE_TELEMETRY=1    -> recommended: otherwise the first request of a process also fetches
                                   GET {ENDPOINT}/api/agent-harnesses (to name an AI agent in the user-agent),
                                   which then shows up in `FakeHub.requests` (served here as an empty registry).
Read at CALL time (fine to set or monkeypatch any time): HF_TOKEN / HUGGING_FACE_HUB_TOKEN (env; unset it
for gated tests, a real token in the environment would be sent), constants.HF_HUB_CACHE, constants.HF_HUB_OFFLINE.
Xet: not needed to disable; the library uses Xet only when a response names an X-Xet-Hash/xetHash, never here.
"""
from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

_REPO = r"(?P<repo>[^/]+(?:/[^/]+)?)"  # "owner/name", or a legacy "name"
_INFO = re.compile(rf"^/api/models/{_REPO}(?:/revision/(?P<rev>[^/]+))?$")
_TREE = re.compile(rf"^/api/models/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$")
_RESOLVE = re.compile(rf"^/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")


class _Repo:
    def __init__(self, repo_id: str, files: dict[str, bytes], gated: bool):
        self.repo_id, self.files, self.gated = repo_id, dict(files), gated
        digest = hashlib.sha1(repo_id.encode())
        for name in sorted(files):
            digest.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
        self.commit = digest.hexdigest()  # 40 hex: the library checks it is a commit hash

    def tree(self, prefix: str, recursive: bool) -> list[dict] | None:
        """Entries under `prefix` ("" = root) as the tree API lists them; None if no such path."""
        if prefix in self.files:
            return [self._file(prefix)]
        base = prefix.rstrip("/") + "/" if prefix else ""
        entries, dirs = [], set()
        for name in sorted(self.files):
            if not name.startswith(base):
                continue
            parts = name[len(base):].split("/")
            for i in range(1, len(parts) if recursive else min(2, len(parts))):  # the folders on the way
                dirs.add(base + "/".join(parts[:i]))
            if recursive or len(parts) == 1:
                entries.append(self._file(name))
        if prefix and not entries and not dirs:
            return None
        folders = [{"type": "directory", "path": d, "oid": hashlib.sha1(d.encode()).hexdigest()} for d in sorted(dirs)]
        return folders + entries

    def _file(self, name: str) -> dict:
        data = self.files[name]
        blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # git's blob id, as the Hub gives
        return {"type": "file", "path": name, "size": len(data), "oid": blob}


class FakeHub:
    def __init__(self):
        self.token = "hf_test_token"
        self.repos: dict[str, _Repo] = {}
        self.requests: list[tuple[str, str]] = []  # (method, unquoted path without the query)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def add_repo(self, repo_id: str, files: dict[str, bytes], gated: bool = False) -> None:
        """Adds (or replaces, with a new commit hash when the files differ) a model repo."""
        self.repos[repo_id] = _Repo(repo_id, files, gated)

    def start(self) -> str:
        hub = self

        class Handler(_Handler):
            fake = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def hub_env(endpoint: str, hf_home: str, **extra: str) -> dict[str, str]:
    """os.environ plus what a subprocess needs to use the fake hub (HF_TOKEN removed)."""
    import os
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE")}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=hf_home, HF_HUB_DISABLE_TELEMETRY="1", **extra)
    return env


class _Handler(BaseHTTPRequestHandler):
    fake: FakeHub  # set by FakeHub.start

    def log_message(self, *args):  # keep pytest output quiet
        pass

    def do_HEAD(self):
        self._route(body=False)

    def do_GET(self):
        self._route(body=True)

    def _send(self, status: int, data: bytes = b"", headers: dict | None = None, body: bool = True):
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def _json(self, obj, body: bool):
        self._send(200, json.dumps(obj).encode(), {"Content-Type": "application/json"}, body)

    def _error(self, status: int, code: str, message: str, body: bool, commit: str | None = None):
        headers = {"Content-Type": "application/json", "X-Error-Code": code, "X-Error-Message": message}
        if commit:  # the Hub names the commit on a missing file; the library caches the absence under it
            headers["X-Repo-Commit"] = commit
        self._send(status, json.dumps({"error": message}).encode(), headers, body)

    def _route(self, body: bool):
        url = urlsplit(self.path)
        with self.fake._lock:
            self.fake.requests.append((self.command, unquote(url.path)))
        if url.path == "/api/agent-harnesses":  # an empty registry: no agent detected
            return self._json({"standardEnvVars": [], "harnesses": {}}, body)
        for pattern, handler in ((_TREE, self._tree), (_INFO, self._info), (_RESOLVE, self._resolve)):
            m = pattern.match(url.path)
            if m:
                groups = {k: unquote(v) if v is not None else None for k, v in m.groupdict().items()}
                repo = self.fake.repos.get(groups.pop("repo"))
                if repo is None:
                    return self._error(404, "RepoNotFound", "Repository not found", body)
                if groups["rev"] not in (None, "main", repo.commit):
                    return self._error(404, "RevisionNotFound", "Invalid rev id: " + groups["rev"], body)
                return handler(repo, groups, parse_qs(url.query), body)
        self._send(404, b"Not Found", {"Content-Type": "text/plain"}, body)

    def _info(self, repo: _Repo, groups: dict, query: dict, body: bool):
        name = repo.repo_id
        self._json({"id": name, "modelId": name, "sha": repo.commit, "private": False,
                    "gated": "auto" if repo.gated else False, "disabled": False, "tags": [],
                    "lastModified": "2024-01-01T00:00:00.000Z",
                    "siblings": [{"rfilename": f} for f in sorted(repo.files)]}, body)

    def _tree(self, repo: _Repo, groups: dict, query: dict, body: bool):
        recursive = query.get("recursive", ["false"])[0].lower() in ("true", "1")
        entries = repo.tree(groups["path"] or "", recursive)
        if entries is None:
            return self._error(404, "EntryNotFound", "Path not found", body, repo.commit)
        self._json(entries, body)  # one page: no Link header, so the library stops here

    def _resolve(self, repo: _Repo, groups: dict, query: dict, body: bool):
        if repo.gated and self.headers.get("Authorization") != f"Bearer {self.fake.token}":
            return self._error(401, "GatedRepo", f"Access to model {repo.repo_id} is restricted. You must "
                               "have access to it and be authenticated to access it. Please log in.", body)
        data = repo.files.get(groups["file"])
        if data is None:
            return self._error(404, "EntryNotFound", "Entry not found", body, repo.commit)
        self._send(200, data, {"Content-Type": "application/octet-stream", "X-Repo-Commit": repo.commit,
                               "ETag": f'"{hashlib.sha256(data).hexdigest()}"'}, body)
