"""The wheel as pip users get it: built from this checkout, installed outside it, run from another directory.

The wheel is installed with `pip install --no-deps --target DIR` and run with PYTHONPATH=DIR on the dependencies
already installed (a fresh venv would reinstall 5 GB of torch), from a directory that is not the checkout. Offline:
the build uses the installed setuptools (--no-build-isolation) and pip never reaches an index (--no-index). The
last three tests are slow (a wheel of about 36 MB; sampling and serving in subprocesses)."""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from conftest import REPO

MAX_WHEEL_MB = 60  # DESIGN.md: the whole of pretrained/ stays under about 60 MB, and it is most of the wheel


def pip(*args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", *args],
                          capture_output=True, text=True)
    assert proc.returncode == 0, f"pip {' '.join(args)}:\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}"


def checkout_files() -> list[str]:
    """What a clone of this checkout holds (tracked files, and new ones not ignored), as git lists them; in a copy
    that is no git checkout (`.ci/run --worktree`), every file but virtual environments and build outputs."""
    git = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                         capture_output=True)
    if git.returncode == 0:
        return [f for f in git.stdout.decode().split("\0") if f and (REPO / f).is_file()]  # deleted ones are gone
    files = []
    for root, dirs, names in os.walk(REPO):
        dirs[:] = [d for d in dirs if not (d.startswith(".") or d in ("build", "dist", "__pycache__")
                                           or d.endswith(".egg-info"))]
        files += [str((Path(root) / n).relative_to(REPO)) for n in names]
    return files


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of the checkout's files, so the build leaves nothing (build/) in the checkout."""
    src = tmp_path_factory.mktemp("src")
    for f in checkout_files():
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, src / f)
    dist = tmp_path_factory.mktemp("dist")
    pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", str(dist), str(src))
    (path,) = dist.glob("rcdm-*.whl")
    print(f"\nwheel: {path.name}, {path.stat().st_size / 2**20:.1f} MiB")
    return path


@pytest.fixture(scope="module")
def site(wheel, tmp_path_factory) -> Path:
    """The wheel installed into a directory of its own, with its console script in DIR/bin."""
    target = tmp_path_factory.mktemp("site")
    pip("install", "--no-deps", "--no-index", "-q", "--target", str(target), str(wheel))
    return target


def installed_env(site: Path) -> dict:
    """The environment of a user of the installed wheel: rcdm from `site`, no $RCDM_PRETRAINED, one thread."""
    env = {k: v for k, v in os.environ.items() if k not in ("RCDM_PRETRAINED", "RCDM_REPORT_DATA", "PYTHONPATH")}
    return env | {"PYTHONPATH": str(site), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
                  "GRADIO_ANALYTICS_ENABLED": "False"}


def test_pretrained_root_order(tmp_path, monkeypatch):
    """$RCDM_PRETRAINED, then the wheel's package data rcdm/pretrained, then the checkout's pretrained/."""
    from rcdm import resources

    package = tmp_path / "site" / "rcdm"
    package.mkdir(parents=True)
    monkeypatch.setattr(resources, "PACKAGE_DIR", package)
    monkeypatch.delenv("RCDM_PRETRAINED", raising=False)
    assert resources.pretrained_root() == tmp_path / "site" / "pretrained"  # editable: beside the package
    (package / "pretrained").mkdir()
    assert resources.pretrained_root() == package / "pretrained"  # installed: the package data
    monkeypatch.setenv("RCDM_PRETRAINED", str(tmp_path / "mine"))
    assert resources.pretrained_root() == tmp_path / "mine"


@pytest.mark.slow  # builds a 36 MB wheel
def test_wheel_holds_the_shipped_models_and_the_app(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = [f for f in checkout_files() if f.startswith("pretrained/")]
    assert shipped and not [f for f in shipped if f"rcdm/{f}" not in names]  # every file of pretrained/, none left
    sizes = {i.filename: i.file_size for i in zipfile.ZipFile(wheel).infolist()}
    assert all(sizes[f"rcdm/{f}"] == (REPO / f).stat().st_size for f in shipped)  # weights, not LFS pointers
    assert {"rcdm/resources.py", "rcdm/app/blocks.py", "rcdm/app/sample.py"} <= names
    assert not [n for n in names if n.startswith(("tests/", "app/", "pretrained/", "benchmarks/", "tools/"))]
    assert any(n.endswith(".dist-info/licenses/LICENSE") or n.endswith(".dist-info/LICENSE") for n in names)
    assert wheel.stat().st_size < MAX_WHEEL_MB * 2**20


@pytest.mark.slow  # builds and installs the wheel, samples in a subprocess
def test_installed_wheel_samples_with_its_own_default_model(site, tmp_path):
    """`rcdm sample` from another directory: the package and its default model both come from the install."""
    env, run_dir = installed_env(site), tmp_path / "elsewhere"
    run_dir.mkdir()
    where = subprocess.run(
        [sys.executable, "-c", "import json, rcdm; from rcdm.pipeline import resolve_model_path; "
         "print(json.dumps([rcdm.__file__, str(resolve_model_path(None))]))"],
        cwd=run_dir, env=env, capture_output=True, text=True)
    assert where.returncode == 0, where.stderr[-2000:]
    package, model = map(Path, json.loads(where.stdout.strip().splitlines()[-1]))
    assert package.is_relative_to(site) and model == site / "rcdm" / "pretrained" / "rcdm-cifar10-backbone"

    image = next((site / "rcdm" / "pretrained" / "examples").glob("*.png"))
    proc = subprocess.run([str(site / "bin" / "rcdm"), "sample", "--image", str(image), "--num-samples", "2",
                           "--steps", "2", "--seed", "0", "--out", "g.png"],
                          cwd=run_dir, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    grid = Image.open(run_dir / "g.png")
    assert grid.size[0] > grid.size[1] >= 32  # one row: the input, then its 2 samples


@pytest.mark.slow  # builds and installs the wheel, serves the app in a subprocess
def test_installed_wheel_serves_the_app(site, tmp_path):
    """`rcdm app` from another directory serves the in-package app, with the shipped models and examples."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path / "app.log", "w")
    proc = subprocess.Popen([str(site / "bin" / "rcdm"), "app", "--port", str(port)], cwd=tmp_path,
                            env=installed_env(site), stdout=log, stderr=subprocess.STDOUT)
    try:
        config = wait_for_config(f"http://127.0.0.1:{port}", proc, timeout=180)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    assert config is not None, (tmp_path / "app.log").read_text()[-3000:]
    text = json.dumps(config)
    assert "rcdm-cifar10-backbone" in text and "rcdm-cifar10-projector" in text  # the shipped models are offered
    assert str(site / "rcdm" / "pretrained" / "examples") in text and str(REPO) not in text  # none from the checkout


def wait_for_config(url: str, proc: subprocess.Popen, timeout: float) -> dict | None:
    """The served app's Blocks config, once the server answers; None if it exits or does not answer in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/config", timeout=5) as r:
                return json.loads(r.read())
        except OSError:
            time.sleep(1)
    return None
