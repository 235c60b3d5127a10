"""`rcdm report` on tiny models: the page references only files that exist, shows every number of report.json,
is deterministic for a seed, and a rerun after an interruption skips the finished sections. An identity oracle
reads "kept" for every augmentation. The app's Report tab and the browser screenshot are slow tests."""
import json
import re
import shutil
from pathlib import Path

import pytest
from conftest import make_tiny_pipeline
from test_analysis import OraclePipe

from rcdm import RCDMPipeline
from rcdm.report import ReportSettings, build_report
from rcdm.report import sections as S
from rcdm.report.views import invariance_view
from rcdm.choices import AUGMENTATIONS

TINY = ReportSettings.small(num_images=6, samples_per_image=2, sample_images=3, invariance_images=3,
                            memorization_images=3, compare_images=2, bank_size=60, bootstrap=50, steps=1,
                            interpolation_points=3)
SECTIONS = ("fidelity", "samples", "invariance", "interpolation", "manipulation", "memorization", "comparison")


@pytest.fixture(scope="module")
def pipes(tiny_pipeline_dir, tiny_encoder_dir, tmp_path_factory):
    proj = make_tiny_pipeline(tmp_path_factory.mktemp("proj") / "tiny-proj", tiny_encoder_dir, layer="projector")
    return {"backbone": RCDMPipeline.from_pretrained(tiny_pipeline_dir),
            "projector": RCDMPipeline.from_pretrained(proj)}


@pytest.fixture(scope="module")
def built(pipes, tiny_npz, tmp_path_factory):
    """A report on a train+test npz (tiny_npz: 64 CIFAR images as 'train'; its test split is the same file's)."""
    out = tmp_path_factory.mktemp("report") / "r"
    data = _with_test_split(tiny_npz, tmp_path_factory.mktemp("data"))
    return out, build_report(pipes, data, out, TINY, progress=False), data


def _with_test_split(tiny_npz, d):
    """tiny_npz with its images also as a 'test' split, so the report has both splits."""
    import numpy as np

    z = dict(np.load(tiny_npz))
    z.update(test_jpeg=z["train_jpeg"], test_offsets=z["train_offsets"], test_labels=z["train_labels"])
    path = d / "both.npz"
    np.savez(path, **z)
    return str(path)


def numbers(obj):
    """Every number in a JSON document (bools are not numbers here)."""
    if isinstance(obj, dict):
        return [v for x in obj.values() for v in numbers(x)]
    if isinstance(obj, list):
        return [v for x in obj for v in numbers(x)]
    return [obj] if isinstance(obj, (int, float)) and not isinstance(obj, bool) else []


def without_timing(report: dict) -> dict:
    return {k: v for k, v in report.items() if k != "timing"}


@pytest.mark.slow
def test_page_shows_every_number_and_only_existing_local_images(built):
    out, report, _ = built
    page = (out / "index.html").read_text()
    assert json.loads((out / "report.json").read_text()) == report
    srcs = re.findall(r"<img src='([^']+)'", page)
    assert len(srcs) >= 2 * 6 + 2  # a figure per model and section, the comparison, the invariance profile
    for src in srcs:
        assert not re.match(r"[a-z]+:", src) and (out / src).is_file(), src  # relative, and there
    assert not re.search(r"(src|href)=['\"]?(https?:)?//", page)  # nothing from the web
    nums = numbers(report)
    assert len(nums) > 100
    missing = {json.dumps(v) for v in nums if json.dumps(v) not in page}
    assert not missing, sorted(missing)[:10]
    assert set(report["sections"]) == set(SECTIONS)
    for section in SECTIONS[:-1]:
        for model in ("backbone", "projector"):
            view = report["sections"][section][model]
            assert "skipped" not in view and view["sentences"] and view["rows"], (section, model)
            for r in view["rows"]:  # honesty: a sample size, and an interval or the reason there is none
                assert r["n"] >= 1 and ("interval" in r or r["no_interval"]), (section, r)
    assert report["sections"]["comparison"]["differences"]
    assert "torch" in report["versions"] and report["command"] in page


@pytest.mark.slow
def test_rerun_after_an_interruption_skips_finished_sections(built, pipes, tmp_path, monkeypatch):
    out0, report0, data = built
    out = tmp_path / "r"
    shutil.copytree(out0, out)
    for name in ("memorization-projector", "comparison"):
        (out / "sections" / f"{name}.json").unlink()
    before = {p.name: p.stat().st_mtime_ns for p in (out / "sections").glob("*.json")}
    real, calls = S.memorization, []

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(S, "memorization", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_report(pipes, data, out, TINY, progress=False)
    partial = json.loads((out / "report.json").read_text())  # the page so far, written section by section
    assert "projector" not in partial["sections"]["memorization"] and "comparison" not in partial["sections"]
    assert "Not computed yet" in (out / "index.html").read_text()

    monkeypatch.setattr(S, "memorization", lambda *a, **k: calls.append("memorization") or real(*a, **k))
    for name in ("fidelity", "samples", "invariance", "interpolation", "manipulation", "make_bank"):
        monkeypatch.setattr(S, name, _forbidden(name))  # finished: must be read back, not recomputed
    report = build_report(pipes, data, out, TINY, progress=False)
    after = {p.name: p.stat().st_mtime_ns for p in (out / "sections").glob("*.json")}
    assert {k for k in before if after[k] != before[k]} == set()  # finished sections untouched
    assert calls == ["memorization"]
    assert without_timing(report) == without_timing(report0)


def _forbidden(name):
    def fail(*args, **kwargs):
        raise AssertionError(f"{name} ran again although its section was finished")
    return fail


@pytest.mark.slow
def test_deterministic_for_a_seed(built, pipes, tmp_path):
    """The same seed gives the same numbers and images, also without the other model beside it."""
    out0, report0, data = built
    again = build_report({"backbone": pipes["backbone"]}, data, tmp_path / "again", TINY, progress=False)
    for section in SECTIONS[:-1]:
        assert again["sections"][section]["backbone"] == report0["sections"][section]["backbone"], section
    assert (tmp_path / "again" / "sections" / "samples-backbone-grid.png").read_bytes() == \
        (out0 / "sections" / "samples-backbone-grid.png").read_bytes()


def test_identity_oracle_reads_kept_for_every_augmentation(cifar_npz):
    inputs = S.read_inputs(f"{cifar_npz}:test", ReportSettings(invariance_images=4, memorization_images=1))
    numbers, _ = S.invariance(OraclePipe(), inputs, ReportSettings(invariance_images=4, invariance_k=1, bootstrap=50),
                              AUGMENTATIONS)
    view = invariance_view(numbers)
    assert [r["reading"] for r in view["rows"]] == ["kept"] * len(AUGMENTATIONS)
    assert all(r["value"] == pytest.approx(1.0) and r["interval"][0] == pytest.approx(1.0) for r in view["rows"])
    assert view["sentences"][0].startswith("Kept: flip (1.0)")
    constant, _ = S.invariance(OraclePipe(constant=True), inputs, ReportSettings(invariance_images=4, invariance_k=1,
                                                                                  bootstrap=50), AUGMENTATIONS)
    assert [r["reading"] for r in invariance_view(constant)["rows"]] == ["discarded"] * len(AUGMENTATIONS)


@pytest.mark.slow
def test_sections_that_cannot_run_say_why(pipes, tmp_path, cifar_test_images):
    folder = tmp_path / "images"
    folder.mkdir()
    for i, im in enumerate(cifar_test_images[0][:6]):
        im.save(folder / f"{i}.png")
    report = build_report({"backbone": pipes["backbone"]}, str(folder), tmp_path / "r", TINY, progress=False)
    mem = report["sections"]["memorization"]["backbone"]
    assert "no train split" in mem["skipped"]
    ca = [r for r in report["sections"]["fidelity"]["backbone"]["rows"] if r["what"] == "class agreement"]
    assert "no train split" in ca[0]["skipped"]
    assert "at least two models" in report["sections"]["comparison"]["skipped"]
    page = (tmp_path / "r" / "index.html").read_text()
    assert "Not run: " in page and "no train split" in page


@pytest.mark.slow
def test_cli_writes_the_report(tiny_pipeline_dir, tmp_path, cifar_npz):
    from rcdm.cli import main

    out = tmp_path / "cli"
    rc = main(["report", "--model", f"tiny={tiny_pipeline_dir}", "--data", f"{cifar_npz}:test", "--out", str(out),
               "--num-images", "4", "--invariance-images", "2", "--memorization-images", "2", "--bank-size", "40",
               "--num-inference-steps", "1", "--dtype", "float32", "--quiet", "--augmentations", "flip", "blur"])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert report["command"].startswith("rcdm report --model tiny=") and "--num-images 4" in report["command"]
    assert [r["what"] for r in report["sections"]["invariance"]["tiny"]["rows"]] == ["flip", "blur"]
    with pytest.raises(SystemExit):
        main(["report", "--data", "x.npz"])  # --out is required


# ------------------------------------------------------------------------------------------------ slow: app, browser
@pytest.fixture(scope="module")
def app_server(tmp_path_factory, tiny_pipeline_dir, tiny_encoder_dir, cifar_test_images):
    """The app with two tiny models and six example images (the Report tab's data)."""
    from test_app import free_port

    from rcdm.app import launch_app

    root = tmp_path_factory.mktemp("pretrained")
    (root / "tiny-backbone").symlink_to(tiny_pipeline_dir, target_is_directory=True)
    make_tiny_pipeline(root / "tiny-projector", tiny_encoder_dir, layer="projector")
    (root / "examples").mkdir()
    for i, im in enumerate(cifar_test_images[0][:6]):
        im.save(root / "examples" / f"ex{i}.png")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RCDM_PRETRAINED", str(root))
        mp.delenv("RCDM_REPORT_DATA", raising=False)
        demo = launch_app(None, port=free_port(), prevent_thread_lock=True, quiet=True)
        yield demo
    demo.close()


@pytest.mark.slow  # a live Gradio server
def test_app_report_tab(app_server):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    client = Client(app_server.local_url, verbose=False)
    page, single = client.predict(["tiny-backbone", "tiny-projector"], 4, 0, api_name="/report")
    assert page.startswith("<iframe sandbox srcdoc=") and "Invariance profile" in page
    text = Path(single).read_text()
    assert "data:image/png;base64," in text and "<img src='sections/" not in text  # self-contained
    assert "no train split" in text  # a flat folder of examples: memorization says why it cannot run
    for bad, match in ((["nope"], "Unknown model"), ([], "Choose 1 to"), (["tiny-backbone"] * 2, "different")):
        with pytest.raises(AppError, match=match):
            client.predict(bad, 4, 0, api_name="/report")
    with pytest.raises(AppError, match="Images must be"):
        client.predict(["tiny-backbone"], 10_000, 0, api_name="/report")


@pytest.mark.slow  # headless Chromium
@pytest.mark.skipif(not (shutil.which("chromium") or shutil.which("chromium-browser")),
                    reason="Chromium is not installed (Debian: apt-get install chromium); the browser test needs it")
def test_report_page_in_browser(built, tmp_path):
    from test_app_browser import HEIGHT, WIDTH, DevTools

    out, _, _ = built
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             f"--user-data-dir={tmp_path / 'profile'}", f"--window-size={WIDTH},{HEIGHT}", "--remote-debugging-pipe",
             "about:blank"]
    browser = DevTools(flags, tmp_path / "chromium.log")
    try:
        browser.open_page((out / "index.html").as_uri())
        want = (out / "index.html").read_text().count("<img ")  # wait for the parsed page, not a prefix of it
        n = browser.wait_for("(() => { const imgs = [...document.images]; return document.readyState === 'complete' "
                             f"&& imgs.length === {want} && imgs.every(i => i.complete && i.naturalWidth > 0) "
                             "&& imgs.length; })()", "every figure of the page to load from disk")
        shot = tmp_path / "report.png"
        browser.screenshot(shot)
    finally:
        browser.close()
    assert n == want >= 14 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
