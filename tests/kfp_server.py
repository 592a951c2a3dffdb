"""A test double of the Kubeflow Pipelines API server (v2beta1 REST), on 127.0.0.1.

It implements what kfp.Client and the modelworks executor call, and CHECKS each request:
the bearer token, that an upload is valid IR declaring the expected parameters, that a
pipeline version name is uploaded once, that a run names an existing version. A run
"succeeds" by writing the model file and metrics the test gave it into a local folder (its
pipeline root) and reporting them as the run's artifacts; or fails with `fail_with`.
Everything it saw is kept in `seen`, every refused request in `problems`, but a 409 (a name
taken by another worker first, which the client must resolve by a lookup) in `conflicts`.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import yaml

API = "/apis/v2beta1"


@dataclass
class FakeKFP:
    root: Path  # the pipeline root: where runs write their artifacts
    token: str
    model_file: Callable[[Path, dict[str, Any]], None]  # writes the model into a folder
    metrics: dict[str, float]
    required: tuple[str, ...] = ("data_source", "hyperparameters")
    fail_with: str | None = None
    polls_before_done: int = 1
    s3: Any = None  # a boto3 client: runs write artifacts to this bucket instead of root
    bucket: str = ""
    # The first name lookup of these kinds misses (another client uploads meanwhile).
    stale: set[str] = field(default_factory=set)
    url: str = ""
    pipelines: dict[str, dict[str, Any]] = field(default_factory=dict)
    versions: dict[str, dict[str, Any]] = field(default_factory=dict)
    experiments: dict[str, dict[str, Any]] = field(default_factory=dict)
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    artifacts: dict[str, dict[str, Any]] = field(default_factory=dict)
    uploads: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)  # 409s: races the client resolves
    lock: threading.Lock = field(default_factory=threading.Lock)

    # --- pipelines -------------------------------------------------------------------
    def upload(self, query: dict[str, str], ir: dict[str, Any], version: str | None) -> Any:
        params = ir.get("root", {}).get("inputDefinitions", {}).get("parameters", {})
        missing = [p for p in self.required if p not in params]
        if missing or "deploymentSpec" not in ir or "components" not in ir:
            return 400, {"message": f"invalid pipeline spec: missing parameters {missing}"}
        if version is None:  # a new pipeline, with a first version named like it (as KFP does)
            name = query["name"]
            if any(p["display_name"] == name for p in self.pipelines.values()):
                return 409, {"message": f"pipeline {name} already exists"}
            pid = uuid.uuid4().hex
            self.pipelines[pid] = {"pipeline_id": pid, "display_name": name}
            self._version(pid, name, ir)
            self.uploads.append({"kind": "pipeline", "name": name, "parameters": sorted(params)})
            return 200, self.pipelines[pid]
        pid = query.get("pipelineid", "")
        if pid not in self.pipelines:
            return 404, {"message": f"pipeline {pid} not found"}
        if any(
            v["pipeline_id"] == pid and v["display_name"] == version for v in self.versions.values()
        ):
            return 409, {"message": f"version {version} already exists"}
        self.uploads.append({"kind": "version", "name": version, "parameters": sorted(params)})
        return 200, self._version(pid, version, ir)

    def _version(self, pid: str, name: str, ir: dict[str, Any]) -> dict[str, Any]:
        vid = uuid.uuid4().hex
        self.versions[vid] = {
            "pipeline_id": pid,
            "pipeline_version_id": vid,
            "display_name": name,
            "_ir": ir,
        }
        return {k: v for k, v in self.versions[vid].items() if not k.startswith("_")}

    # --- runs ------------------------------------------------------------------------
    def create_run(self, body: dict[str, Any]) -> Any:
        ref = body.get("pipeline_version_reference") or {}
        version = self.versions.get(ref.get("pipeline_version_id", ""))
        if version is None or version["pipeline_id"] != ref.get("pipeline_id"):
            return 400, {"message": f"no such pipeline version: {ref}"}
        if body.get("experiment_id") not in self.experiments:
            return 400, {"message": "no such experiment"}
        params = (body.get("runtime_config") or {}).get("parameters") or {}
        declared = version["_ir"]["root"]["inputDefinitions"]["parameters"]
        unknown = sorted(set(params) - set(declared))
        if unknown:
            return 400, {"message": f"unknown parameters {unknown}"}
        rid = uuid.uuid4().hex
        run = {"run_id": rid, "display_name": body.get("display_name"), "state": "PENDING"}
        self.runs[rid] = {"run": run, "body": body, "polls": 0, "version": version}
        return 200, run

    def get_run(self, rid: str) -> Any:
        rec = self.runs.get(rid)
        if rec is None:
            return 404, {"message": f"run {rid} not found"}
        rec["polls"] += 1
        run = rec["run"]
        if rec["polls"] <= self.polls_before_done:
            run["state"] = "RUNNING"
        elif run["state"] == "RUNNING":
            self._finish(rec)
        return 200, run

    def _finish(self, rec: dict[str, Any]) -> None:
        run = rec["run"]
        if self.fail_with:
            run["state"] = "FAILED"
            run["error"] = {"code": 2, "message": self.fail_with}
            return
        params = rec["body"]["runtime_config"]["parameters"]
        tasks = self._tasks(rec["version"]["_ir"], self.root / run["run_id"], params)
        run["state"] = "SUCCEEDED"
        run["run_details"] = {"task_details": tasks}

    def _tasks(self, ir: dict[str, Any], folder: Path, params: Any) -> list[dict[str, Any]]:
        """One task detail per root DAG task, its outputs registered as artifacts."""
        tasks = []
        for task, spec in ir["root"]["dag"]["tasks"].items():
            comp = ir["components"][spec["componentRef"]["name"]]
            outputs = {}
            for name, art in comp.get("outputDefinitions", {}).get("artifacts", {}).items():
                aid = uuid.uuid4().hex
                kind = art["artifactType"]["schemaTitle"]
                if kind == "system.Model":  # the run "trains": the model lands in the root
                    (folder / task / name).mkdir(parents=True)
                    self.model_file(folder / task / name, params)
                record: dict[str, Any] = {
                    "artifact_id": aid,
                    "uri": (folder / task / name).as_uri(),
                }
                if self.s3 is not None:
                    record["uri"] = self._to_s3(folder, f"{task}/{name}", kind)
                elif kind == "system.Metrics":
                    record["metadata"] = dict(self.metrics, display_name="metrics")
                self.artifacts[aid] = record
                outputs[name] = {"artifact_ids": [aid]}
            tasks.append({"task_id": uuid.uuid4().hex, "display_name": task, "outputs": outputs})
        return tasks

    def _to_s3(self, folder: Path, rel: str, kind: str) -> str:
        """Upload the artifact (a folder of files, or the metrics as JSON); its URI."""
        key = f"{folder.name}/{rel}"
        if kind == "system.Metrics":  # metrics as a file, no metadata: the executor reads it
            self.s3.put_object(Bucket=self.bucket, Key=key, Body=json.dumps(self.metrics).encode())
            return f"s3://{self.bucket}/{key}"
        for f in (folder / rel).rglob("*"):
            if f.is_file():
                sub = f.relative_to(folder / rel).as_posix()
                self.s3.put_object(Bucket=self.bucket, Key=f"{key}/{sub}", Body=f.read_bytes())
        return f"minio://{self.bucket}/{key}"

    # --- experiments -----------------------------------------------------------------
    def list_experiments(self, name: str | None) -> Any:
        found = [e for e in self.experiments.values() if name is None or e["display_name"] == name]
        return 200, {"experiments": found, "total_size": len(found)} if found else {}

    def create_experiment(self, body: dict[str, Any]) -> Any:
        if any(e["display_name"] == body["display_name"] for e in self.experiments.values()):
            # like the real API server: experiment names are unique (per namespace)
            return 409, {"message": f"experiment {body['display_name']} already exists"}
        eid = uuid.uuid4().hex
        self.experiments[eid] = {"experiment_id": eid, "display_name": body["display_name"]}
        return 200, self.experiments[eid]

    def run_params(self) -> list[dict[str, Any]]:
        return [r["body"]["runtime_config"]["parameters"] for r in self.runs.values()]


def _filter_name(query: dict[str, str]) -> str | None:
    if "filter" not in query:
        return None
    for p in json.loads(query["filter"]).get("predicates", []):
        if p.get("key") == "display_name":
            return str(p.get("stringValue") or p.get("string_value"))
    return None


def _handler(fake: FakeKFP) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def _send(self, status: int, doc: Any) -> None:
            data = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _handle(self, method: str) -> None:
            url = urlparse(self.path)
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            body = self._body() if method == "POST" else b""
            if self.headers.get("Authorization") != f"Bearer {fake.token}":
                fake.problems.append(
                    f"{method} {url.path}: bad auth {self.headers.get('Authorization')}"
                )
                self._send(401, {"message": "Unauthenticated: bad bearer token"})
                return
            with fake.lock:
                try:
                    status, doc = self._route(method, url.path.removeprefix(API), query, body)
                except Exception as exc:  # a bug in the double or a request it cannot read
                    status, doc = 500, {"message": f"{type(exc).__name__}: {exc}"}
            if status == 409:  # a name another worker took first: the client must look it up
                fake.conflicts.append(f"{method} {url.path}: {status} {doc}")
            elif status >= 400:
                fake.problems.append(f"{method} {url.path}: {status} {doc}")
            self._send(status, doc)

        def _route(self, method: str, path: str, query: dict[str, str], body: bytes) -> Any:
            parts = path.strip("/").split("/")
            if method == "GET" and path == "/healthz":
                return 200, {"multi_user": False}
            if method == "GET" and path == "/pipelines" and "pipeline" in fake.stale:
                fake.stale.discard("pipeline")
                return 200, {}
            if method == "GET" and path == "/pipelines":
                name = _filter_name(query)
                found = [p for p in fake.pipelines.values() if name in (None, p["display_name"])]
                return 200, {"pipelines": found, "total_size": len(found)} if found else {}
            if method == "POST" and path in ("/pipelines/upload", "/pipelines/upload_version"):
                ir = yaml.safe_load(_uploaded(self.headers.get("Content-Type", ""), body))
                version = query.get("name") if path.endswith("version") else None
                return fake.upload(query, ir, version)
            if method == "GET" and parts[:1] == ["pipelines"] and parts[2:] == ["versions"]:
                name = _filter_name(query)
                if name is not None and "version" in fake.stale:
                    fake.stale.discard("version")
                    return 200, {}
                found = [
                    {k: v for k, v in ver.items() if not k.startswith("_")}
                    for ver in fake.versions.values()
                    if ver["pipeline_id"] == parts[1] and name in (None, ver["display_name"])
                ]
                return 200, {"pipeline_versions": found, "total_size": len(found)} if found else {}
            if path == "/experiments":
                if method == "POST":
                    return fake.create_experiment(json.loads(body))
                return fake.list_experiments(_filter_name(query))
            if method == "POST" and path == "/runs":
                return fake.create_run(json.loads(body))
            if method == "POST" and parts[0] == "runs" and parts[-1].endswith(":terminate"):
                rec = fake.runs.get(parts[1].removesuffix(":terminate"))
                if rec is None:
                    return 404, {"message": "run not found"}
                rec["run"]["state"] = "CANCELING"
                return 200, {}
            if method == "GET" and parts[0] == "runs" and len(parts) == 2:
                return fake.get_run(parts[1])
            if method == "GET" and parts[0] == "artifacts" and len(parts) == 2:
                if query.get("view") != "DOWNLOAD":
                    return 400, {"message": "expected view=DOWNLOAD"}
                art = fake.artifacts.get(parts[1])
                return (200, art) if art else (404, {"message": f"artifact {parts[1]} not found"})
            return 404, {"message": f"not implemented here: {method} {path}"}

        def do_GET(self) -> None:
            self._handle("GET")

        def do_POST(self) -> None:
            self._handle("POST")

    return Handler


def _uploaded(content_type: str, body: bytes) -> bytes:
    """The `uploadfile` part of a multipart/form-data body."""
    msg = BytesParser(policy=HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    for part in msg.iter_parts():
        if part.get_param("name", header="content-disposition") == "uploadfile":
            return bytes(part.get_payload(decode=True))
    raise ValueError("no uploadfile part")


def serve(fake: FakeKFP) -> Iterator[FakeKFP]:
    """Run the fake on an ephemeral loopback port for the duration of a fixture."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
