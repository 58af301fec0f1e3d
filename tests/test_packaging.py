"""One source of truth for the dependencies: `pip install .` gives what
`pip install -r requirements.txt` gives (the service and the CPU runtime included), and
its `image-workflow` command runs."""
import subprocess
import sys
import zipfile

import pytest

from conftest import ROOT

tomllib = pytest.importorskip("tomllib", reason="Python 3.11's tomllib reads pyproject.toml")


def requirements(name: str) -> list[str]:
    """The requirements a file names itself (not those of the files it includes)."""
    out = []
    for line in (ROOT / name).read_text().splitlines():
        req = line.split("#")[0].strip()
        if req and not req.startswith("-r"):
            out.append(req)
    return out


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_the_package_depends_on_exactly_the_requirement_files():
    assert project()["dependencies"] == requirements("requirements.txt")
    extras = project()["optional-dependencies"]
    assert extras["spark"] == requirements("requirements-spark.txt")
    assert extras["s3"] == requirements("requirements-s3.txt")


@pytest.mark.timeout(300)
def test_the_built_package_declares_them_and_its_command_runs(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(wheels), str(ROOT)], check=True, capture_output=True)
    wheel = next(wheels.glob("*.whl"))
    with zipfile.ZipFile(wheel) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith("METADATA"))).decode()
    declared = {line.split(":", 1)[1].strip() for line in meta.splitlines()
                if line.startswith("Requires-Dist:") and "extra ==" not in line}
    for req in requirements("requirements.txt"):  # fastapi, uvicorn, openvino, ...
        name = req.split(">")[0].split("=")[0].split("[")[0]
        assert any(d.replace(" ", "").startswith(name) for d in declared), (req, declared)
    # installed (its dependencies from this Python), the command starts the service's CLI
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
                   check=True)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps",
                    str(wheel)], check=True, capture_output=True)
    r = subprocess.run([str(venv / "bin" / "image-workflow"), "serve", "--help"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "--max-upload-mb" in r.stdout, r.stderr[-2000:]
    r = subprocess.run([str(venv / "bin" / "python"), "-c",
                        "import workflow, fastapi, uvicorn, multipart, prometheus_client, "
                        "threadpoolctl, openvino; print(workflow.__file__)"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and str(venv) in r.stdout, r.stderr[-2000:]
