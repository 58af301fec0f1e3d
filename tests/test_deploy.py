"""The container and the Kubernetes Jobs: the Dockerfile copies what exists and runs the
entry point; the Job asks for one GPU, restarts on failure and passes flags that the real
parsers accept; the preprocessing Job asks for no GPU and freezes the settings the main
job's run_all resumes with; every manifest passes the Kubernetes API's schema (a broken
copy does not); the ordering script starts the GPU Job only after preprocessing is
complete; the entry point maps every command of the CLI to its script, and runs a stage
with the store in a bucket of a real S3-compatible server, a second time as a no-op.
"""
import copy
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path

import pytest

from conftest import ROOT, write_corpus

ENTRYPOINT = ROOT / "deploy" / "entrypoint.sh"
K8S = ROOT / "deploy" / "k8s"
JOB = K8S / "job.yaml"
PREPROCESS_JOB = K8S / "preprocess-job.yaml"
SECRET = K8S / "secret.example.yaml"
RUN_IN_ORDER = K8S / "run-in-order.sh"
DOCKERFILE = ROOT / "Dockerfile"
# the entry point's name for a command of workflow.cli.COMMANDS, where they differ
CLI_NAME = {"run_all": "all"}

needs_bash = pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")


def entrypoint(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
               timeout: float = 120) -> subprocess.CompletedProcess:
    from object_store import env_with
    return subprocess.run(["bash", str(ENTRYPOINT), *args], cwd=cwd or ROOT,
                          env=env_with({"PYTHON": sys.executable, **(env or {})}),
                          capture_output=True, text=True, timeout=timeout)


def entrypoint_commands() -> list[str]:
    out = entrypoint("--help").stdout
    line = next(x for x in out.splitlines() if x.startswith("commands:"))
    return line.split(":", 1)[1].split()


def cli_parser(command: str):
    from workflow.cli import COMMANDS
    return COMMANDS[CLI_NAME.get(command, command)][0]()


# ------------------------------------------------------------------ the entry point

@needs_bash
def test_the_entrypoint_offers_every_command_of_the_cli():
    from workflow.cli import COMMANDS
    commands = entrypoint_commands()
    assert {CLI_NAME.get(c, c) for c in commands} == set(COMMANDS)


@pytest.fixture
def fake_python(tmp_path) -> dict[str, str]:
    """An interpreter that prints its arguments, one a line, and exits with $FAKE_EXIT."""
    p = tmp_path / "fake-python"
    p.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\nexit "${FAKE_EXIT:-0}"\n')
    p.chmod(0o755)
    return {"PYTHON": str(p), "WORKFLOW_STORE": "s3://bucket/index"}


@needs_bash
def test_each_command_runs_its_script_with_the_store_from_the_environment(
        fake_python, tmp_path):
    for command in entrypoint_commands():
        r = entrypoint(command, "--no-progress", env=fake_python, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        argv = r.stdout.splitlines()
        if argv[0] == "-m":
            assert argv[1:3] == ["workflow", CLI_NAME.get(command, command)]
        else:
            script = Path(argv[0])
            assert script.is_file() and script.parent == ROOT / "scripts", argv
            assert f'run_command("{CLI_NAME.get(command, command)}"' in script.read_text()
        assert argv[-3:] == ["--no-progress", "--store", "s3://bucket/index"], command


@needs_bash
@pytest.mark.parametrize("given", [["--store", "other"], ["--store=other"]])
def test_a_store_on_the_command_line_wins(fake_python, given):
    r = entrypoint("extract", *given, env=fake_python)
    assert r.stdout.splitlines()[1:] == given


@needs_bash
def test_the_exit_status_of_the_stage_is_passed_on(fake_python):
    # 3: stopped early with work left, so that a Job restarts the pod and it resumes
    assert entrypoint("train", env={**fake_python, "FAKE_EXIT": "3"}).returncode == 3
    assert entrypoint("train", env={**fake_python, "FAKE_EXIT": "0"}).returncode == 0


@needs_bash
def test_an_unknown_command_is_refused_with_the_list():
    r = entrypoint("trian")
    assert r.returncode == 2
    assert "unknown command 'trian'" in r.stderr and "train" in r.stderr
    assert "run_all" in r.stderr
    nothing = entrypoint()
    assert nothing.returncode == 2 and "usage" in nothing.stderr
    helped = entrypoint("--help")
    assert helped.returncode == 0 and "run_all" in helped.stdout


# ------------------------------------------------------------------ a stage on S3 for real

def s3_listing(endpoint: str, url: str) -> dict[str, tuple[int, str]]:
    import s3fs
    fs = s3fs.S3FileSystem(endpoint_url=endpoint, key="testing", secret="testing",
                           skip_instance_cache=True)
    found = fs.find(url.removeprefix("s3://"), detail=True)
    return {k: (v["size"], v["ETag"]) for k, v in found.items()}


@needs_bash
def test_the_entrypoint_runs_a_stage_on_object_storage_and_resumes_as_a_no_op(tmp_path):
    pytest.importorskip("s3fs", reason="s3fs is not installed "
                        "(pip install -r requirements-s3.txt)")
    pytest.importorskip("moto.server", reason="moto[server] is not installed "
                        "(pip install -r requirements-dev.txt)")
    from object_store import MotoServer, make_bucket, s3_env

    write_corpus(tmp_path / "corpus", 12, size=(48, 40))
    elsewhere = tmp_path / "elsewhere"  # not the repository: the scripts are found anyway
    elsewhere.mkdir()
    with MotoServer(tmp_path / "moto.log") as server:
        make_bucket(server.endpoint, "index-store")
        env = {**s3_env(server.endpoint), "WORKFLOW_STORE": "s3://index-store/store"}
        args = ("preprocess", "--source", str(tmp_path / "corpus"), "--shard-size", "8",
                "--workers", "2", "--no-progress")
        first = entrypoint(*args, env=env, cwd=elsewhere)
        assert first.returncode == 0, first.stderr[-4000:]
        assert "preprocess complete" in first.stdout
        listing = s3_listing(server.endpoint, "s3://index-store/store")
        names = {k.removeprefix("index-store/store/") for k in listing}
        assert {"images/plan.h5", "images/shard-00000.h5", "images/shard-00001.h5",
                "images/report.json", "_done/preprocess/report.json"} <= names
        before = len(server.requests())

        again = entrypoint(*args, env=env, cwd=elsewhere)
        assert again.returncode == 0, again.stderr[-4000:]
        assert s3_listing(server.endpoint, "s3://index-store/store") == listing
        written = [path for method, path, _ in server.requests()[before:]
                   if method == "PUT" and "/_leases/" not in path]
        assert not written, f"a finished stage wrote {written}"


# ------------------------------------------------------------------ the Job

def manifests(path: Path) -> list[dict]:
    yaml = pytest.importorskip("yaml", reason="pyyaml is not installed "
                               "(pip install -r requirements-dev.txt)")
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def the_job(path: Path = JOB) -> dict:
    jobs = [d for d in manifests(path) if d["kind"] == "Job"]
    assert jobs and all(d["apiVersion"] == "batch/v1" for d in jobs)
    return jobs[0]


def container_of(job: dict) -> dict:
    (container,) = job["spec"]["template"]["spec"]["containers"]
    return container


def env_of(container: dict) -> dict[str, str | None]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def test_the_job_asks_for_one_gpu_and_restarts_where_it_failed():
    job = the_job()
    assert isinstance(job["spec"]["backoffLimit"], int) and job["spec"]["backoffLimit"] > 0
    assert "ttlSecondsAfterFinished" in job["spec"]
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "OnFailure"
    (container,) = pod["containers"]
    assert "command" not in container, "the image's ENTRYPOINT must run"
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) == 1
    mounts = {m["name"] for m in container.get("volumeMounts", [])}
    assert mounts <= {v["name"] for v in pod.get("volumes", [])}


def test_the_job_names_the_store_and_takes_credentials_from_the_secret():
    container = the_job()["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["WORKFLOW_STORE"].startswith("s3://")
    (secret,) = [d for d in manifests(SECRET) if d["kind"] == "Secret"]
    refs = [e["secretRef"]["name"] for e in container.get("envFrom", []) if "secretRef" in e]
    refs += [e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"]
             if "secretKeyRef" in e.get("valueFrom", {})]
    assert secret["metadata"]["name"] in refs
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(secret["stringData"])


@needs_bash
@pytest.mark.parametrize("path", [JOB, PREPROCESS_JOB], ids=lambda p: p.name)
def test_every_flag_the_job_passes_is_accepted_by_the_command(path):
    container = container_of(the_job(path))
    command, *args = [str(a) for a in container["args"]]
    assert command in entrypoint_commands()
    store = next(e["value"] for e in container["env"] if e["name"] == "WORKFLOW_STORE")
    try:  # as the entry point passes them: the store from WORKFLOW_STORE
        parsed = cli_parser(command).parse_args([*args, "--store", store])
    except SystemExit:
        pytest.fail(f"{command} does not accept {args}")
    assert parsed.store == store
    assert not getattr(parsed, "demo", False)
    assert "--no-progress" in args, "a progress bar in a pod's log is one long line"


# ------------------------------------------------------------------ preprocessing on CPU

def preprocess_config(job: dict):
    """The preprocess stage's settings as a Job's command runs it: `preprocess` itself,
    or the first stage of `run_all`, with the store from WORKFLOW_STORE."""
    from workflow.options import config_from
    from workflow.pipeline import stage_configs
    from workflow.stages.preprocess import PreprocessConfig
    container = container_of(job)
    command, *args = [str(a) for a in container["args"]]
    parsed = cli_parser(command).parse_args(
        [*args, "--store", env_of(container)["WORKFLOW_STORE"]])
    if command == "preprocess":
        return config_from(PreprocessConfig, parsed)
    assert command == "run_all", command
    return stage_configs(parsed)["preprocess"]


def test_the_preprocessing_job_asks_for_no_gpu():
    job = the_job(PREPROCESS_JOB)
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "OnFailure" and job["spec"]["backoffLimit"] > 0
    container = container_of(job)
    assert "command" not in container, "the image's ENTRYPOINT must run"
    assert container["args"][0] == "preprocess"
    resources = container["resources"]
    assert not [name for part in resources.values() for name in part if "gpu" in name]
    assert not [t for t in pod.get("tolerations", []) if "gpu" in t.get("key", "")]
    assert "gpu" not in container["image"]
    # one decoding process a core requested (the default would be the node's cores)
    args = [str(a) for a in container["args"]]
    assert args[args.index("--workers") + 1] == str(resources["requests"]["cpu"])
    mounts = {m["name"] for m in container.get("volumeMounts", [])}
    assert mounts <= {v["name"] for v in pod.get("volumes", [])}
    assert job["metadata"]["name"] != the_job()["metadata"]["name"]


def test_the_preprocessing_job_freezes_what_the_main_job_resumes_with():
    from workflow.stages.planning import settings_of
    pre, main = preprocess_config(the_job(PREPROCESS_JOB)), preprocess_config(the_job())
    assert pre.store == main.store and pre.sources
    # the frozen settings (run.json): any difference would stop the main job (exit 2)
    assert settings_of(pre, list(pre.sources)) == settings_of(main, list(main.sources))
    containers = container_of(the_job(PREPROCESS_JOB)), container_of(the_job())
    assert containers[0]["envFrom"] == containers[1]["envFrom"]
    assert env_of(containers[0]) == env_of(containers[1])


# ------------------------------------------------------------------ the Kubernetes API

# The manifests are checked against the API schema of the oldest and of the newest
# Kubernetes release that kubernetes-validate (pinned in requirements-dev.txt) holds:
# strict, so that a field the API does not have is an error (the API server would drop
# or refuse it), and a field newer than the oldest release is one too.
KUBERNETES_RELEASES = ("1.25", "1.37")
# a resource quantity as the API server parses it (k8s.io/apimachinery, resource.Quantity);
# the schema takes any string
QUANTITY = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([KMGTPE]i|[numkMGTPE]|[eE][+-]?\d+)?")


def quantities(node, where: str = ""):
    """(path, value) of every resource request and limit and every sizeLimit."""
    if isinstance(node, list):
        for i, item in enumerate(node):
            yield from quantities(item, f"{where}.{i}")
    elif isinstance(node, dict):
        for key, value in node.items():
            here = f"{where}.{key}".lstrip(".")
            if key in ("requests", "limits") and where.endswith("resources"):
                yield from ((f"{here}.{name}", q) for name, q in value.items())
            elif key == "sizeLimit":
                yield here, value
            else:
                yield from quantities(value, here)


def api_errors(doc: dict) -> list[str]:
    """What the Kubernetes API would refuse in a manifest: its schema, for each release of
    KUBERNETES_RELEASES; then what the API server checks beyond the schema: quantities,
    and a Job's restart policy."""
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not "
                             "installed (pip install -r requirements-dev.txt)")
    errors = []
    for release in KUBERNETES_RELEASES:
        try:
            kv.validate(doc, release, strict=True)
        except kv.ValidationError as e:
            where = ".".join(str(x) for x in e.absolute_path)
            errors.append(f"Kubernetes {release}: {where}: {e.message}")
        except kv.SchemaNotFoundError as e:
            errors.append(f"Kubernetes {release}: {e.message}")
    errors += [f"{where}: {value!r} is not a quantity" for where, value in quantities(doc)
               if not (isinstance(value, (int, float)) and not isinstance(value, bool)
                       or isinstance(value, str) and QUANTITY.fullmatch(value))]
    if doc.get("kind") == "Job":
        policy = doc.get("spec", {}).get("template", {}).get("spec", {}).get("restartPolicy")
        if policy not in ("OnFailure", "Never"):
            errors.append(f"spec.template.spec.restartPolicy: a Job's is OnFailure or "
                          f"Never, not {policy!r}")
    return errors


@pytest.mark.parametrize("path", sorted(K8S.glob("*.yaml")), ids=lambda p: p.name)
def test_every_manifest_passes_the_kubernetes_api_schema(path):
    docs = manifests(path)
    assert docs
    for doc in docs:
        errors = api_errors(doc)
        assert not errors, f"{path.name}, {doc.get('kind')}:\n" + "\n".join(errors)


def _rename(mapping: dict, old: str, new: str) -> None:
    mapping[new] = mapping.pop(old)


def _pod(job: dict) -> dict:
    return job["spec"]["template"]["spec"]


# a change to job.yaml's Job, and what the refusal says (None: accepted, as written)
CHANGES = {
    "as written": (lambda job: None, None),
    "a misspelled field": (
        lambda job: _rename(job["spec"], "backoffLimit", "backofLimit"),
        "spec: Additional properties are not allowed ('backofLimit' was unexpected)"),
    "a misspelled field in the pod": (
        lambda job: _rename(_pod(job)["tolerations"][0], "effect", "efect"),
        "'efect' was unexpected"),
    "a number as a string": (
        lambda job: job["spec"].update(backoffLimit="20"),
        "spec.backoffLimit: '20' is not of type 'integer'"),
    "a string as a number": (
        lambda job: container_of(job)["env"][0].update(value=10),
        "10 is not of type 'string'"),
    "a required field left out": (
        lambda job: container_of(job)["volumeMounts"][0].pop("mountPath"),
        "'mountPath' is a required property"),
    "a field newer than the oldest release": (
        lambda job: job["spec"].update(podReplacementPolicy="Failed"),
        "Kubernetes 1.25: spec: Additional properties are not allowed "
        "('podReplacementPolicy' was unexpected)"),
    "a kind the API does not have": (
        lambda job: job.update(kind="Jobs"), "Couldn't find schema for kind Jobs"),
    "a quantity that is none": (
        lambda job: container_of(job)["resources"]["limits"].update(memory="32 GB"),
        "'32 GB' is not a quantity"),
    "a restart policy a Job may not have": (
        lambda job: _pod(job).update(restartPolicy="Always"), "OnFailure or Never"),
}


@pytest.mark.parametrize("change", CHANGES)
def test_the_api_check_refuses_a_broken_job(change):
    edit, refusal = CHANGES[change]
    job = copy.deepcopy(the_job())
    edit(job)
    errors = api_errors(job)
    if refusal is None:
        assert errors == []
    else:
        assert [e for e in errors if refusal in e], errors


# ------------------------------------------------------------------ the Jobs in order

@pytest.fixture
def fake_kubectl(tmp_path) -> dict[str, str]:
    """A kubectl that logs each call's arguments, one call a line; answers `apply -f
    FILE -o name` with the manifest's Job, and `get JOB` with no condition the first
    time, then Complete (Failed for the Job named in $FAIL)."""
    log = tmp_path / "kubectl.log"
    script = tmp_path / "kubectl"
    script.write_text(r'''#!/usr/bin/env bash
printf '%s\n' "$*" >> "$KUBECTL_LOG"
prev=""; verb=""; file=""; job=""
for a in "$@"; do
    case "$prev" in -f) file="$a" ;; get) job="$a" ;; esac
    case "$a" in apply | get) verb="$a" ;; esac
    prev="$a"
done
if [ "$verb" = apply ]; then
    echo "job.batch/$(sed -n 's/^  name: //p' "$file" | head -n 1)"
elif [ "$verb" = get ]; then
    seen="$KUBECTL_LOG.${job#job.batch/}"
    if [ ! -e "$seen" ]; then touch "$seen"; echo; exit 0; fi
    if [ "${job#job.batch/}" = "${FAIL:-}" ]; then echo Failed
    else echo "SuccessCriteriaMet Complete"; fi
fi
''')
    script.chmod(0o755)
    return {"KUBECTL": str(script), "KUBECTL_LOG": str(log), "POLL_SECONDS": "0"}


def run_in_order(env: dict[str, str], *options: str) -> tuple[subprocess.CompletedProcess,
                                                                list[str]]:
    from object_store import env_with
    r = subprocess.run(["bash", str(RUN_IN_ORDER), *options], env=env_with(env),
                       capture_output=True, text=True, timeout=60)
    calls = Path(env["KUBECTL_LOG"]).read_text().splitlines()
    return r, calls


@needs_bash
def test_the_gpu_job_is_applied_only_once_preprocessing_is_complete(fake_kubectl):
    r, calls = run_in_order(fake_kubectl, "-n", "images")
    assert r.returncode == 0, r.stderr
    pre = f"job.batch/{the_job(PREPROCESS_JOB)['metadata']['name']}"
    main = f"job.batch/{the_job()['metadata']['name']}"
    expected = [f"apply -f {PREPROCESS_JOB} -o name"] + [f"get {pre} -o "] * 2 + \
        [f"apply -f {JOB} -o name"] + [f"get {main} -o "] * 2
    assert len(calls) == len(expected), calls
    for call, start in zip(calls, expected):
        assert call.startswith(f"-n images {start}"), (call, start)
    assert f"{pre}: complete" in r.stdout and f"{main}: complete" in r.stdout


@needs_bash
def test_a_failed_preprocessing_job_stops_it_before_the_gpu(fake_kubectl):
    pre = the_job(PREPROCESS_JOB)["metadata"]["name"]
    r, calls = run_in_order({**fake_kubectl, "FAIL": pre})
    assert r.returncode == 1
    assert not [c for c in calls if str(JOB) in c], calls
    assert f"job.batch/{pre}: failed" in r.stderr and "kubectl delete" in r.stderr


# ------------------------------------------------------------------ the Dockerfile

def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [x.strip() for x in text.splitlines()]
    return [(x.split(None, 1)[0].upper(), x.split(None, 1)[1] if " " in x else "")
            for x in lines if x and not x.startswith("#")]


def test_the_dockerfile_builds_from_a_chosen_base_and_runs_the_entrypoint():
    steps = instructions()
    args = {a.split("=", 1)[0] for kind, a in steps if kind == "ARG"}
    (base,) = [a for kind, a in steps if kind == "FROM"]
    assert any(f"${{{name}}}" in base or f"${name}" in base for name in args), base
    (entry,) = [json.loads(a) for kind, a in steps if kind == "ENTRYPOINT"]
    workdir = [a for kind, a in steps if kind == "WORKDIR"][-1]
    assert f"{workdir.rstrip('/')}/deploy/entrypoint.sh" in entry
    users = [a for kind, a in steps if kind == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")


def test_the_dockerfile_copies_paths_that_exist_and_are_not_ignored():
    ignored = [x.strip() for x in (ROOT / ".dockerignore").read_text().splitlines()
               if x.strip() and not x.startswith("#")]
    assert ".git" in ignored and "checkpoints" in ignored
    def is_ignored(path: str) -> bool:
        return any(fnmatch(path, p) for p in ignored)

    copied = []
    for kind, a in instructions():
        if kind == "COPY":
            parts = [p for p in a.split() if not p.startswith("--")]
            for source in parts[:-1]:
                found = [p.relative_to(ROOT).as_posix()
                         for p in sorted(ROOT.glob(source.rstrip("/")))]
                if any(c in source for c in "*?["):  # a pattern: what is left of it
                    found = [p for p in found if not is_ignored(p)]
                else:
                    assert not is_ignored(source.rstrip("/")), f"{source} is in .dockerignore"
                assert found, f"COPY {source}: nothing there"
                copied += found
    assert {"workflow", "scripts", "deploy", "requirements.txt"} <= set(copied)
    # every requirement file the Dockerfile names (REQUIREMENTS) goes into the image; the
    # others (dev, bench) stay out, so that changing them does not rebuild the stack
    assert set(re.findall(r"requirements[\w-]*\.txt", DOCKERFILE.read_text())) <= set(copied)
    assert "requirements-dev.txt" not in copied


def test_every_requirements_file_the_image_installs_exists():
    text = DOCKERFILE.read_text()
    named = set(re.findall(r"requirements[\w-]*\.txt", text))
    assert {"requirements.txt", "requirements-s3.txt"} <= named
    for name in named:
        assert (ROOT / name).is_file(), name
        for line in (ROOT / name).read_text().splitlines():
            if line.startswith("-r "):  # included files are copied by the same glob
                assert fnmatch(line.split()[1], "requirements*.txt")
    # the GPU swap is the one README.md's "GPU runtimes" gives
    assert "faiss-cpu" in (ROOT / "requirements.txt").read_text()
    readme = (ROOT / "README.md").read_text()
    for package in re.findall(r"FAISS=(\S+)", text):
        assert package == "faiss-cpu" or package in readme, package


# ------------------------------------------------------------------ the image, built

# Opt-in, as it takes minutes (about 5 on 2 cores: the build installs the whole stack):
# IMAGE_TEST_BASE names a base image the engine has already, e.g. python:3.11-slim after
# `podman pull python:3.11-slim`, or a Debian made offline with debootstrap (python3,
# python3-pip) and `podman import`; IMAGE_TEST_ENGINE is the engine's command
# [default: podman]. The image is built, run, and removed.
IMAGE_TEST_BASE = os.environ.get("IMAGE_TEST_BASE", "")


def engine_run(engine: list[str], *args: str, timeout: float = 600) -> \
        subprocess.CompletedProcess:
    return subprocess.run([*engine, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def built_image():
    if not IMAGE_TEST_BASE:
        pytest.skip("opt-in (minutes): set IMAGE_TEST_BASE to a local base image, and "
                    "IMAGE_TEST_ENGINE where not podman, to build the image and run a "
                    "stage in it")
    engine = shlex.split(os.environ.get("IMAGE_TEST_ENGINE", "podman"))
    if shutil.which(engine[0]) is None:
        pytest.skip(f"{engine[0]} is not installed (IMAGE_TEST_ENGINE)")
    if engine_run(engine, "image", "inspect", IMAGE_TEST_BASE, timeout=60).returncode:
        pytest.skip(f"{engine[0]} has no image {IMAGE_TEST_BASE} (IMAGE_TEST_BASE)")
    tag = f"localhost/image-index:test-{os.getpid()}"
    build = engine_run(engine, "build", "--build-arg", f"BASE={IMAGE_TEST_BASE}", "-t", tag,
                       str(ROOT), timeout=1800)
    assert build.returncode == 0, (build.stdout + build.stderr)[-6000:]
    try:
        yield engine, tag
    finally:
        engine_run(engine, "rmi", "-f", tag, timeout=300)


@pytest.mark.timeout(2400)
def test_the_built_image_lists_its_commands_and_runs_as_a_user(built_image):
    engine, tag = built_image
    helped = engine_run(engine, "run", "--rm", tag)
    assert helped.returncode == 0, helped.stderr
    assert entrypoint_commands() == next(
        x for x in helped.stdout.splitlines() if x.startswith("commands:")).split()[1:]
    uid = engine_run(engine, "run", "--rm", "--entrypoint", "id", tag, "-u")
    assert uid.returncode == 0 and uid.stdout.strip() not in ("", "0"), uid


@pytest.mark.timeout(2400)
def test_the_built_image_runs_a_stage_on_object_storage(built_image, tmp_path):
    pytest.importorskip("s3fs", reason="s3fs is not installed "
                        "(pip install -r requirements-s3.txt)")
    pytest.importorskip("moto.server", reason="moto[server] is not installed "
                        "(pip install -r requirements-dev.txt)")
    import s3fs

    from object_store import MotoServer, make_bucket, s3_env

    engine, tag = built_image
    write_corpus(tmp_path / "corpus", 12, size=(48, 40))
    with MotoServer(tmp_path / "moto.log") as server:
        for bucket in ("photos", "index-store"):
            make_bucket(server.endpoint, bucket)
        fs = s3fs.S3FileSystem(endpoint_url=server.endpoint, key="testing",
                               secret="testing", skip_instance_cache=True)
        fs.put(str(tmp_path / "corpus"), "photos/corpus", recursive=True)
        env = {**s3_env(server.endpoint), "WORKFLOW_STORE": "s3://index-store/store"}
        run = [*engine, "run", "--rm", "--network", "host",
               *[f"--env={k}={v}" for k, v in env.items()], tag]
        stage = subprocess.run(
            [*run, "preprocess", "--source", "s3://photos/corpus/", "--shard-size", "8",
             "--workers", "2", "--no-progress"], capture_output=True, text=True, timeout=600)
        assert stage.returncode == 0, (stage.stdout + stage.stderr)[-6000:]
        assert "preprocess complete" in stage.stdout
        status = subprocess.run([*run, "status"], capture_output=True, text=True,
                                timeout=300)
        assert status.returncode == 0, status.stderr[-4000:]
        assert re.search(r"preprocess\s+complete: 2/2 shards", status.stdout), status.stdout
        written = {k.removeprefix("index-store/store/") for k in fs.find("index-store/store")}
        assert {"images/shard-00000.h5", "images/shard-00001.h5",
                "_done/preprocess/report.json"} <= written
