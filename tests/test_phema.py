"""Post-hoc EMA (rcdm.phema, `rcdm train --posthoc-ema`, `rcdm posthoc-ema`): the maths against a directly tracked
EMA, snapshots through an exact resume, and the pipelines it writes."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_train_config
from rcdm import RCDMPipeline
from rcdm.cli import main as cli_main
from rcdm.phema import (PowerEMA, gamma_to_sigma_rel, list_snapshots, posthoc_plan, sigma_rel_to_gamma,
                        solve_weights, synthesize)
from rcdm.training.loop import train

WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


@pytest.mark.parametrize("sigma_rel, gamma", [(0.05, 16.97), (0.10, 6.94)])
def test_gamma_matches_edm2(sigma_rel, gamma):
    """EDM2 (Sec. 3.1) pairs sigma_rel 0.05 with gamma 16.97 and 0.10 with 6.94."""
    assert sigma_rel_to_gamma(sigma_rel) == pytest.approx(gamma, abs=0.01)
    assert gamma_to_sigma_rel(sigma_rel_to_gamma(sigma_rel)) == pytest.approx(sigma_rel, rel=1e-9)


def test_a_recorded_profile_is_reconstructed_from_itself():
    t, g = [100, 200, 300, 300], [16.97, 16.97, 16.97, 6.94]
    w, err = solve_weights(t, g, 300, 6.94)
    np.testing.assert_allclose(w, [0, 0, 0, 1], atol=1e-6)
    assert err < 1e-6
    assert solve_weights(t, g, 300, 500.0)[1] > 0.1  # far narrower than anything recorded: a poor fit, and it says so


def _walk(steps=3000, dim=32):
    torch.manual_seed(0)
    return torch.randn(steps, dim).cumsum(0) + torch.linspace(0, 50, steps)[:, None]


def test_synthesized_ema_matches_one_tracked_directly(tmp_path):
    """Snapshots of sigma_rel 0.05 and 0.10 every 100 of 3,000 steps of a drifting random walk rebuild an EMA of
    0.07, at the end and midway, to within 1% of its distance from the current weights."""
    walk = _walk()
    p = torch.nn.Parameter(walk[0].clone())
    recorded, direct = PowerEMA([("w", p)], [0.05, 0.10]), PowerEMA([("w", p)], [0.07, 0.2])
    midway = None
    for t in range(1, len(walk) + 1):
        p.data.copy_(walk[t - 1])
        recorded.update([("w", p)], t)
        direct.update([("w", p)], t)
        if t % 100 == 0:
            recorded.save_snapshots(tmp_path, t)
        if t == 1500:
            midway = direct.shadows[0][0].clone()
    snaps = list_snapshots(tmp_path)
    assert len(snaps) == 60 and {s.sigma_rel for s in snaps} == {0.05, 0.10}
    for want, step in ((direct.shadows[0][0], None), (midway, 1500)):
        got, record = synthesize(snaps, 0.07, step)
        scale = (want - walk[(step or len(walk)) - 1]).norm()
        assert (got["w"] - want).norm() < 0.01 * scale, record["fit_error"]
        assert record["fit_error"] < 0.01
    _, weights, record = posthoc_plan(snaps, 0.07, 1500)
    assert weights.sum() == pytest.approx(1.0, abs=1e-12)  # normalised: no overall rescaling of the weights
    assert [s["weight"] for s in record["snapshots"]] == pytest.approx(weights.tolist(), abs=1e-6)  # as recorded
    with pytest.raises(ValueError, match="past the last snapshot"):
        posthoc_plan(snaps, 0.07, 3100)


def test_bad_lengths_are_refused():
    with pytest.raises(ValueError, match="at least two different"):
        PowerEMA.check([0.05, 0.05])
    with pytest.raises(ValueError, match=r"must lie in \(0, 0.28\)"):
        PowerEMA.check([0.05, 0.3])


@pytest.mark.slow  # two short trainings and a resume: the full suite
def test_training_records_snapshots_that_resume_exactly(tmp_path, tiny_npz, cache_path):
    """6 steps in one run == 3, resume, 3 more: the same post-hoc EMA snapshots at step 6 (their state is in the
    checkpoint), one file per sigma_rel every --posthoc-ema-every steps."""
    kw = dict(checkpoint_every=3, posthoc_ema=(0.05, 0.1), posthoc_ema_every=2)
    train(tiny_train_config(tiny_npz, cache_path, tmp_path / "full", max_steps=6, **kw), "t")
    train(tiny_train_config(tiny_npz, cache_path, tmp_path / "part", max_steps=3, **kw), "t")
    train(tiny_train_config(tiny_npz, cache_path, tmp_path / "part", max_steps=6, resume="latest", **kw), "t")
    full = list_snapshots(tmp_path / "full")
    assert [(s.step, s.sigma_rel) for s in full] == [(s, r) for s in (2, 4, 6) for r in (0.05, 0.1)]
    part = {(s.step, s.sigma_rel): s.path for s in list_snapshots(tmp_path / "part")}
    for s in full[-2:]:
        a, b = load_file(str(s.path)), load_file(str(part[(s.step, s.sigma_rel)]))
        assert all(torch.allclose(a[k], b[k], atol=1e-6, rtol=0) for k in a)
    train(tiny_train_config(tiny_npz, cache_path, tmp_path / "x", max_steps=3, checkpoint_every=3), "t")
    with pytest.raises(ValueError, match="no post-hoc EMA"):
        train(tiny_train_config(tiny_npz, cache_path, tmp_path / "x", max_steps=6, resume="latest", **kw), "t")


def test_posthoc_ema_command_writes_loadable_pipelines(tmp_path, tiny_npz, cache_path, capsys):
    run = tmp_path / "run"
    train(tiny_train_config(tiny_npz, cache_path, run, max_steps=8, checkpoint_every=8, posthoc_ema=(0.05, 0.1),
                            posthoc_ema_every=2), "t")
    assert cli_main(["posthoc-ema", str(run), "--sigma-rel", "0.08", "--dry-run"]) == 0
    assert "fit error" in capsys.readouterr().out and not (run / "pipeline-ema-0.08").exists()
    assert cli_main(["posthoc-ema", str(run), "--sigma-rel", "0.08", "0.2", "--step", "6"]) == 0
    out = run / "pipeline-ema-0.08"
    want, _ = synthesize(list_snapshots(run), 0.08, 6)
    got, template = load_file(str(out / WEIGHTS)), load_file(str(run / "pipeline" / WEIGHTS))
    assert got.keys() == template.keys()
    for k, v in got.items():  # parameters from the snapshots, buffers (embedding statistics) from the export
        torch.testing.assert_close(v, want[k] if k in want else template[k])
    assert not torch.equal(got["unet.conv_in.weight"], template["unet.conv_in.weight"])
    training = json.loads((out / "rcdm_pipeline.json").read_text())["training"]
    assert training["posthoc_ema"]["step"] == 6 and training["history"][-1]["steps"] == 0
    assert "posthoc-ema" in training["history"][-1]["command"]
    RCDMPipeline.from_pretrained(out)(embeddings=torch.zeros(1, 64), num_inference_steps=2, seed=0)
    assert cli_main(["posthoc-ema", str(run), "--sigma-rel", "0.08"]) == 2  # exists: refused, never overwritten
    assert "exists" in capsys.readouterr().err
    assert cli_main(["posthoc-ema", str(tmp_path), "--sigma-rel", "0.08"]) == 2
    assert "--posthoc-ema" in capsys.readouterr().err
