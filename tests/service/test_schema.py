"""The service's OpenAPI contract, fuzzed: Schemathesis generates requests from
`/openapi.json` (the documented body, options and their bounds) against a real server
and checks that none gets a 5xx, that every status code, content type and response body
is the documented one, and that schema-violating requests are refused. Not checked:
that every schema-valid request succeeds (an upload of bytes that are not an image is a
400 by design)."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from served import Server, build_store

pytestmark = pytest.mark.timeout(400)


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    store, scratch, _ = build_store(tmp_path_factory.mktemp("schema"))
    with Server(store, scratch, "--max-upload-mb", "1") as s:
        yield s


def test_every_answer_and_the_search_body_are_documented(srv):
    status, body = srv.get("/openapi.json")
    spec = json.loads(body)
    search = spec["paths"]["/search"]["post"]
    assert set(search["responses"]) == {"200", "400", "404", "409", "413", "422", "503"}
    body_types = search["requestBody"]["content"]
    assert set(body_types) == {"application/json", "multipart/form-data"}
    texts = next(b for b in body_types["application/json"]["schema"]["oneOf"]
                 if b["required"] == ["texts"])["properties"]["texts"]
    assert (texts["maxItems"], texts["items"]["minLength"], texts["items"]["maxLength"]) == \
        (256, 1, 1000)
    assert search["requestBody"]["required"]
    params = {p["name"]: p["schema"] for p in search["parameters"]}
    assert params["rerank"]["maximum"] == 100_000 and params["k"]["maximum"] == 1000
    assert params["nprobe"]["maximum"] >= 1
    for path in ("/image/{image_id}", "/items/{image_id}"):
        assert {"200", "404", "422"} <= set(spec["paths"][path]["get"]["responses"])
    assert "text/plain" in spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]


def test_schemathesis_finds_no_server_error_and_no_contract_violation(srv, tmp_path):
    exe = shutil.which("schemathesis", path=os.path.dirname(sys.executable)) or \
        shutil.which("schemathesis")
    if exe is None:
        pytest.skip("schemathesis is not installed (pip install -r requirements-dev.txt)")
    r = subprocess.run([exe, "run", f"{srv.url}/openapi.json",
                        "--exclude-checks", "positive_data_acceptance",
                        "--max-examples", "30", "--seed", "0",
                        "--suppress-health-check", "all", "--no-color",
                        # the first image query loads the model: seconds, more on a busy
                        # machine, not a hang (Schemathesis gives up after 10 s)
                        "--request-timeout", "60"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-6000:]
    assert "No issues found" in r.stdout
