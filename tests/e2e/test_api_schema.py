"""The API's schema, tested against the live server with Schemathesis: generated requests to
every route (valid and invalid), no 5xx, and every response as the schema says."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import httpx

from tests.conftest import ApiFactory, WorkerFactory

CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,"
          "response_schema_conformance,response_headers_conformance")


def test_schemathesis_finds_no_server_error_and_no_response_off_the_schema(
        start_worker: WorkerFactory, start_api: ApiFactory, tmp_path: Path) -> None:
    start_worker("sc1", queues=("tweets", "bulk"))
    # a generous rate and backlog: the run checks the schema, not the limits
    server = start_api(env={"HOST_API_RATE": "100000"})
    token = server.key()
    st = Path(sys.executable).with_name("st")
    # One Schemathesis worker: with two, its threads build Hypothesis strategies at once, and
    # CPython 3.11's ast.parse, shared by threads, once failed the run with "SystemError: AST
    # constructor recursion depth mismatch" (python/cpython#106905); one takes as long here.
    proc = subprocess.run(
        [str(st), "run", f"{server.url}/openapi.json", "--checks", CHECKS,
         "-H", f"Authorization: Bearer {token}", "--max-examples", "30", "--seed", "1",
         "--workers", "1", "--request-timeout", "30", "--no-color",
         "--generation-database", "none", "--phases", "examples,coverage,fuzzing,stateful",
         "--report", "junit", "--report-dir", str(tmp_path / "st")],
        capture_output=True, text=True, timeout=900, check=False, cwd=tmp_path)
    print(proc.stdout[-4000:])
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-2000:]
    # every route of the schema was tested, and nothing failed (the run's JUnit report)
    (junit,) = (tmp_path / "st").glob("*.xml")
    cases = ElementTree.parse(junit).getroot().iter("testcase")
    tested = {c.get("name") for c in cases if not list(c)}  # no failure, error or skip inside
    schema = httpx.get(f"{server.url}/openapi.json").json()
    routes = {f"{m.upper()} {p}" for p, ops in schema["paths"].items() for m in ops}
    assert routes <= tested, routes - tested
    assert "Stateful tests" in tested
