"""The entry point is fast (issue 33.5): building the parser and printing any command's help imports neither torch
nor diffusers; the `rcdm` console script answers `--help` in well under a second; the old `-m` entry points still
work. And `rcdm analyze --out` refuses a path it cannot write before any work (issue 33.7)."""
import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rcdm.cli import build_parser, main

HEAVY = ("torch", "diffusers")


def _commands() -> list[list[str]]:
    """[] (the top level), every command, and every kind of `rcdm analyze`."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    out = [[]]
    for name, p in sub.choices.items():
        out.append([name])
        kinds = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        out += [[name, kind] for k in kinds for kind in k.choices]
    return out


# Runs in a fresh interpreter: for each command, `main([..., "--help"])`, then the heavy modules loaded so far.
HELP_PROBE = """
import contextlib, io, json, sys
from rcdm.cli import main
report = []
for argv in json.loads(sys.argv[1]):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            main([*argv, "--help"])
            code = None
        except SystemExit as e:
            code = e.code
    report.append({"argv": argv, "code": code, "usage": out.getvalue().startswith("usage: rcdm"),
                   "heavy": [m for m in %r if m in sys.modules]})
print(json.dumps(report))
""" % (HEAVY,)


def test_every_help_imports_neither_torch_nor_diffusers():
    commands = _commands()
    assert len(commands) >= 19  # top level, 10 commands, 8 analyses
    res = subprocess.run([sys.executable, "-c", HELP_PROBE, json.dumps(commands)], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    for r in json.loads(res.stdout):
        assert r["code"] == 0 and r["usage"], r
        assert not r["heavy"], f"rcdm {' '.join(r['argv'])} --help imported {r['heavy']}"


def test_console_script_help_is_well_under_a_second():
    script = Path(sys.executable).with_name("rcdm")
    script = script if script.is_file() else shutil.which("rcdm")
    if script is None:
        pytest.skip("the rcdm console script is not installed beside this interpreter")
    walls = []
    for _ in range(5):
        t0 = time.perf_counter()
        res = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
        walls.append(time.perf_counter() - t0)
        assert res.returncode == 0 and "train-prior" in res.stdout
    assert statistics.median(walls) < 1.0, f"rcdm --help took {walls} s"  # 5.6 s when it imported torch


def test_sampler_names_offered_by_the_flags_are_the_samplers():
    from rcdm.choices import SCHEDULER_NAMES
    from rcdm.schedulers import SCHEDULERS

    assert SCHEDULER_NAMES == tuple(SCHEDULERS), "a new sampler's name goes into rcdm.choices.SCHEDULER_NAMES too"


def test_moved_configs_keep_their_old_import_names():
    from rcdm import model, prior, ssl, train
    from rcdm.prior_config import PriorConfig
    from rcdm.ssl_config import SSLConfig
    from rcdm.train_config import PRESETS, TrainConfig
    from rcdm.unet_config import UNetConfig

    assert (model.UNetConfig, train.TrainConfig, train.PRESETS, ssl.SSLConfig, prior.PriorConfig) == (
        UNetConfig, TrainConfig, PRESETS, SSLConfig, PriorConfig)


@pytest.mark.slow  # two subprocesses that import torch
@pytest.mark.parametrize("module, prog", [("rcdm.train", "rcdm.train"), ("rcdm.ssl", "python -m rcdm.ssl")])
def test_old_module_entry_points_still_parse(module, prog):
    res = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.startswith(f"usage: {prog}"), res.stderr[-2000:]


# ------------------------------------------------------------------------------------------------ analyze --out
def _analyze(tmp_path, *out_flags):
    """`rcdm analyze spread` with an image and a model that do not exist: an --out error can only come first."""
    return main(["analyze", "spread", "--image", str(tmp_path / "missing.png"), "--model", str(tmp_path / "nope"),
                 *out_flags])


def test_analyze_out_directory_is_one_line_naming_the_flag_and_the_fix(tmp_path, capsys):
    d = tmp_path / "tmp.rej4fwdkpr"  # as `mktemp -d` names one: matplotlib read the suffix as a format
    d.mkdir()
    assert _analyze(tmp_path, "--out", str(d)) == 2
    err = capsys.readouterr().err
    assert err == (f"rcdm analyze: error: --out {d} is a directory; give the figure's file name, e.g. "
                   f"--out {d / 'spread.png'}\n")


def test_analyze_out_suffix_nothing_can_write_is_refused_before_any_work(tmp_path, capsys):
    assert _analyze(tmp_path, "--out", str(tmp_path / "fig.rej4fwdkpr")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"rcdm analyze: error: --out {tmp_path / 'fig.rej4fwdkpr'}: cannot write a figure to "
                          "'.rej4fwdkpr' files; give a name ending in .png (or ")
    assert ".pdf" in err and f"e.g. --out {tmp_path / 'spread.png'}" in err
    assert _analyze(tmp_path, "--out", str(tmp_path / "no-suffix")) == 2
    assert "cannot write a figure to a name without a suffix" in capsys.readouterr().err


def test_analyze_missing_out_directory_and_json_directory_are_refused(tmp_path, capsys):
    assert _analyze(tmp_path, "--out", str(tmp_path / "absent" / "fig.png")) == 2
    assert f"the directory {tmp_path / 'absent'} does not exist; create it" in capsys.readouterr().err
    (tmp_path / "numbers").mkdir()
    assert _analyze(tmp_path, "--out", str(tmp_path / "fig.png"), "--json", str(tmp_path / "numbers")) == 2
    assert f"--json {tmp_path / 'numbers'} is a directory" in capsys.readouterr().err


def test_analyze_writable_out_passes_the_check(tmp_path):
    from rcdm.cli.analyze import check_outputs, figure_formats

    assert {"png", "jpg", "pdf"} <= set(figure_formats())
    for out in ("fig.png", "fig.PDF", "fig.jpg"):
        check_outputs(argparse.Namespace(out=str(tmp_path / out), json=None, kind="spread"))


def test_sampling_flags_have_the_pipeline_names_and_old_spellings_warn_once(monkeypatch):
    """--num-samples, --num-inference-steps, --guidance-scale are the pipeline call's names; --samples-per-image,
    --steps and --guidance still parse into them, hidden from --help, with one FutureWarning each."""
    import warnings

    from rcdm import choices

    monkeypatch.setattr(choices, "_warned", set())
    parser = build_parser()
    new = parser.parse_args(["evaluate", "--data", "d", "--num-samples", "3", "--num-inference-steps", "5",
                             "--guidance-scale", "2"])
    with pytest.warns(FutureWarning) as caught:
        old = parser.parse_args(["evaluate", "--data", "d", "--samples-per-image", "3", "--steps", "5",
                                 "--guidance", "2"])
    assert len(caught) == 3 and {"--steps", "--guidance", "--samples-per-image"} == {
        str(w.message).split()[0] for w in caught}
    assert vars(old) == vars(new)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per process
        parser.parse_args(["sample", "--image", "x", "--steps", "2"])
    sample = next(a for a in parser._actions if a.dest == "command").choices["sample"]
    assert "--num-inference-steps" in sample.format_help() and "--steps " not in sample.format_help()
