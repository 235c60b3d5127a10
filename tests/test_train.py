"""Training: embedding cache, exact resume, crash-safe checkpoints, NaN stop, multi-process, export."""
import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_train_config
from rcdm import RCDMPipeline
from rcdm.cache import EmbeddingCache, build_cache
from rcdm.cli import main as cli_main
from rcdm.encoders import load_encoder
from rcdm.phema import list_snapshots
from rcdm.sampling import DEFAULT_SAMPLING
from rcdm.schedulers import scheduler_name
from rcdm.train_config import PRESETS, TrainConfig
from rcdm.training.data import BatchPlan, plan_batch
from rcdm.training.loop import train
from rcdm.training.runtime import make_lr_schedule

TINY = ["--block-out-channels", "16", "32", "--norm-num-groups", "8", "--layers-per-block", "1",
        "--batch-size", "8", "--log-every", "1", "--sample-every", "0", "--warmup-steps", "2"]


_cfg = tiny_train_config


def _losses(out):
    return [json.loads(line)["loss"] for line in (Path(out) / "losses.jsonl").read_text().splitlines()]


def test_cache_holds_both_views_and_matches_the_encoder(cache_path, tiny_npz, tiny_encoder_dir):
    cache = EmbeddingCache.load(cache_path)
    assert cache.embeddings.shape == (64, 2, 64) and cache.meta["views"] == ["identity", "hflip"]
    enc = load_encoder(f"file:{tiny_encoder_dir}")
    from rcdm.data import open_dataset

    x = open_dataset(str(tiny_npz))[5][0].float().div(255)[None]
    torch.testing.assert_close(cache.embeddings[5, 0], enc.encode(x)[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(cache.embeddings[5, 1], enc.encode(x.flip(-1))[0], atol=1e-5, rtol=1e-4)


def test_mismatched_cache_is_refused(tmp_path, cache_path, cifar_npz):
    with pytest.raises(ValueError, match="fingerprint"):
        train(_cfg(f"{cifar_npz}:test", cache_path, tmp_path / "x", max_steps=1))


def test_corrupt_image_is_skipped_and_counted(corrupt_npz, tiny_encoder_dir):
    enc = load_encoder(f"file:{tiny_encoder_dir}")
    with pytest.warns(UserWarning, match="skipped 1 of 64"):
        cache = build_cache(enc, str(corrupt_npz), max_bad_frac=0.05, progress=False)
    assert cache.meta["num_bad"] == 1 and 3 not in cache.indices.tolist() and len(cache.indices) == 63
    with pytest.raises(ValueError, match="unreadable"), pytest.warns(UserWarning):
        build_cache(enc, str(corrupt_npz), progress=False)  # default limit: 1% of 64 < 1


def test_exact_resume(tmp_path, tiny_npz, cache_path):
    """2N steps in one run == N steps, then resume, then N more: same losses and weights."""
    full = train(_cfg(tiny_npz, cache_path, tmp_path / "full", max_steps=6, checkpoint_every=3), "t")
    train(_cfg(tiny_npz, cache_path, tmp_path / "part", max_steps=3, checkpoint_every=3), "t")
    resumed = train(_cfg(tiny_npz, cache_path, tmp_path / "part", max_steps=6, checkpoint_every=3, resume="latest"), "t")
    np.testing.assert_allclose(_losses(tmp_path / "full"), _losses(tmp_path / "part"), atol=1e-6, rtol=0)
    a = load_file(str(full / "unet" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(resumed / "unet" / "diffusion_pytorch_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6, rtol=0) for k in a)
    opt_a = load_file(str(tmp_path / "full/checkpoints/checkpoint-6/model.safetensors"))
    opt_b = load_file(str(tmp_path / "part/checkpoints/checkpoint-6/model.safetensors"))
    assert all(torch.allclose(opt_a[k], opt_b[k], atol=1e-6, rtol=0) for k in opt_a)


@pytest.mark.parametrize("num_processes", [1, 2])
def test_cosine_lr_warms_up_then_reaches_zero_at_max_steps(num_processes):
    """Accelerate steps a prepared scheduler once per process per optimizer step; the decay must still end at 0."""
    opt = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters(), lr=1e-3)
    sched = make_lr_schedule(opt, TrainConfig(lr_schedule="cosine", warmup_steps=10, max_steps=100), num_processes)
    lrs = []
    for _ in range(100):
        opt.step()
        for _ in range(num_processes):
            sched.step()
        lrs.append(sched.get_last_lr()[0])
    assert lrs[9] == pytest.approx(1e-3) and lrs[54] == pytest.approx(5e-4, rel=0.01) and lrs[-1] == pytest.approx(0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))


def test_training_logs_the_decayed_lr(tmp_path, tiny_npz, cache_path):
    train(_cfg(tiny_npz, cache_path, tmp_path / "run", max_steps=4, lr_schedule="linear"), "t")
    lines = [json.loads(line) for line in (tmp_path / "run" / "losses.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in lines] == pytest.approx([5e-4, 1e-3, 5e-4, 0.0])
    assert all(r["img_per_s"] > 0 and r["grad_norm"] > 0 for r in lines)  # the norm before clipping


def test_sample_grid_rows_span_classes():
    from rcdm.training.samples import grid_rows

    assert grid_rows(torch.tensor([0, 0, 1, 1, 2, 2]), 4) == [0, 2, 4, 1]  # one per class first
    assert grid_rows(torch.tensor([3, 3, 3]), 2) == [0, 1] and grid_rows(torch.tensor([1, 2, 3]), 2) == [0, 1]


def test_resume_refuses_to_bend_a_decaying_schedule(tmp_path, tiny_npz, cache_path):
    out = tmp_path / "run"
    train(_cfg(tiny_npz, cache_path, out, max_steps=2, checkpoint_every=2, lr_schedule="cosine"), "t")
    for change in (dict(max_steps=4), dict(lr_schedule="constant")):
        kw = {"max_steps": 2, "lr_schedule": "cosine", **change}
        with pytest.raises(ValueError, match="would change the LR schedule.*--init-from"):
            train(_cfg(tiny_npz, cache_path, out, checkpoint_every=2, resume="latest", **kw), "t")
    assert not (out / "checkpoints" / "checkpoint-4").exists()


def test_export_loads_and_samples(tmp_path, tiny_npz, cache_path):
    out = train(_cfg(tiny_npz, cache_path, tmp_path / "run", max_steps=2, sample_every=2, sample_steps=2), "cmd")
    pipe = RCDMPipeline.from_pretrained(out)
    imgs = pipe(embeddings=EmbeddingCache.load(cache_path).embeddings[:2, 0], num_samples=2, num_inference_steps=2).images
    assert len(imgs) == 4 and imgs[0].size == (32, 32)
    assert (tmp_path / "run/samples/step-0000002.png").is_file()
    assert "cmd" in (out / "README.md").read_text() and pipe.training_info["steps"] == 2
    # A new model records the package's default sampler (DDIM-20, unguided), as its saved scheduler config says.
    assert scheduler_name(pipe.scheduler) == DEFAULT_SAMPLING["scheduler"] == "ddim"
    assert json.loads((out / "scheduler" / "scheduler_config.json").read_text())["_class_name"] == "DDIMScheduler"
    assert {k: pipe.sampling_defaults[k] for k in ("num_inference_steps", "guidance_scale")} == \
        {"num_inference_steps": 20, "guidance_scale": 1.0}


def test_sample_grid_is_what_rcdm_sample_draws(tmp_path, tiny_npz, cache_path):
    """The grid's samples are `rcdm.sampling.sample` of the grid's embeddings with the run's seed (sample k of row i
    from (seed, i, k)), so `rcdm sample --seed` of the exported model shows the last grid's images."""
    from PIL import Image

    from rcdm.images import to_uint8
    from rcdm.sampling import Sampling, sample
    from rcdm.training.samples import grid_rows

    out = train(_cfg(tiny_npz, cache_path, tmp_path / "run", max_steps=2, sample_every=2, sample_steps=2, seed=3), "t")
    cache = EmbeddingCache.load(cache_path)
    h = cache.embeddings[grid_rows(cache.labels, 8), 0].float()  # no held-out split: the grid shows training items
    want = to_uint8(sample(RCDMPipeline.from_pretrained(out), h, run=Sampling(num_samples=5, num_inference_steps=2,
                                                                             seed=3)))  # (8*5, 3, 32, 32)
    sheet = torch.from_numpy(np.array(Image.open(tmp_path / "run/samples/step-0000002.png"))).permute(2, 0, 1)
    tile = lambda i, k: sheet[:, 2 + i * 34:34 + i * 34, 2 + (k + 1) * 34:34 + (k + 1) * 34]  # noqa: E731 (pad 2)
    got = torch.stack([tile(i, k) for i in range(8) for k in range(5)])
    assert (got.int() - want.int()).abs().max() <= 1  # float round-off at most (the grid is sampled in float32)


@pytest.mark.slow
def test_init_from_starts_from_the_weights_and_records_every_stint(tmp_path, tiny_npz, cache_path):
    """A stint (--init-from) starts from the model's weights, not a fresh init, and the export counts all stints."""
    first = train(_cfg(tiny_npz, cache_path, tmp_path / "s1", max_steps=2), "stint 1")
    # lr 0: the weights cannot move, so the export must equal the init weights exactly (EMA restarts from them)
    second = train(_cfg(tiny_npz, cache_path, tmp_path / "s2", max_steps=3, lr=0.0, init_from=str(first)), "stint 2")
    a, b = (load_file(str(p / "unet" / "diffusion_pytorch_model.safetensors")) for p in (first, second))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    third = train(_cfg(tiny_npz, cache_path, tmp_path / "s3", max_steps=1, init_from=str(second)), "stint 3")
    info = RCDMPipeline.from_pretrained(third).training_info
    assert info["steps"] == 1
    assert [(h["command"], h["steps"]) for h in info["history"]] == [("stint 1", 2), ("stint 2", 3), ("stint 3", 1)]
    card = (third / "README.md").read_text()
    assert "6 optimizer steps in 3 run(s)" in card and "stint 1" in card and "stint 3" in card
    with pytest.raises(ValueError, match="either --resume"):
        train(_cfg(tiny_npz, cache_path, tmp_path / "s4", max_steps=1, init_from=str(first), resume="latest"))


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path, tiny_npz, cache_path, monkeypatch):
    import rcdm.training.loop as T

    real = T.make_loss
    calls = {"n": 0}

    def flaky_loss(*args):
        loss_fn = real(*args)

        def flaky(*a):
            calls["n"] += 1
            loss = loss_fn(*a)
            return loss * float("nan") if calls["n"] == 4 else loss
        return flaky

    monkeypatch.setattr(T, "make_loss", flaky_loss)
    with pytest.raises(FloatingPointError, match="step 4"):
        train(_cfg(tiny_npz, cache_path, tmp_path / "nan", max_steps=6, checkpoint_every=2), "t")
    ckpts = sorted(p.name for p in (tmp_path / "nan/checkpoints").iterdir())
    assert ckpts == ["checkpoint-2"]
    monkeypatch.setattr(T, "make_loss", real)
    out = train(_cfg(tiny_npz, cache_path, tmp_path / "nan", max_steps=3, checkpoint_every=2, resume="latest"), "t")
    assert RCDMPipeline.from_pretrained(out).training_info["steps"] == 3  # resumed from step 2, one more step
    assert all(math.isfinite(v) for v in _losses(tmp_path / "nan"))


KILL_SCRIPT = """
import sys, time
import rcdm.fsutil as fs
from rcdm.cli.train import main
real = fs.replace_dir
def slow(tmp, out):
    if str(out).endswith("checkpoint-4"):
        print("WRITING", flush=True)
        time.sleep(120)  # the test kills us here: checkpoint-4 is written but not yet in place
    real(tmp, out)
fs.replace_dir = slow
main(sys.argv[1:])
"""


@pytest.mark.slow  # subprocess
def test_sigkill_during_checkpoint_keeps_previous(tmp_path, tiny_npz, cache_path):
    out = tmp_path / "kill"
    args = ["--data", str(tiny_npz), "--cache", str(cache_path), "--output-dir", str(out), "--max-steps", "8",
            "--checkpoint-every", "2", *TINY]
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    deadline = time.time() + 120
    while proc.stdout.readline().strip() != "WRITING":
        assert time.time() < deadline and proc.poll() is None, "training never reached checkpoint 4"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["checkpoint-2", "checkpoint-4.tmp"]
    resumed = train(_cfg(tiny_npz, cache_path, out, max_steps=3, checkpoint_every=100, resume="latest"), "t")
    assert _losses(out)[-1] > 0 and RCDMPipeline.from_pretrained(resumed).training_info["steps"] == 3


def _wait_for(cond, proc, what, timeout=120):
    deadline = time.time() + timeout
    while not cond():
        assert time.time() < deadline and proc.poll() is None, f"training never {what}"
        time.sleep(0.2)


def _steps(out):
    return [int(p.name.split("-")[1]) for p in (out / "checkpoints").glob("checkpoint-*") if p.suffix != ".tmp"]


@pytest.mark.slow  # subprocess
def test_sigusr1_checkpoints_and_continues_then_sigterm_preempts(tmp_path, tiny_npz, cache_path):
    """The SLURM cycle in one process: --resume auto on an empty directory starts fresh; USR1 (`--signal=USR1@120`)
    writes a checkpoint at once and training goes on; TERM (preemption) checkpoints and skips the export; the same
    command continues from there."""
    out = tmp_path / "slurm"
    cmd = [sys.executable, "-m", "rcdm.cli", "train", "--data", str(tiny_npz), "--cache", str(cache_path),
           "--output-dir", str(out), "--max-steps", "100000", "--checkpoint-every", "100000", "--resume", "auto", *TINY]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    _wait_for(lambda: (out / "losses.jsonl").is_file() and len(_losses(out)) >= 2, proc, "logged two steps")
    proc.send_signal(signal.SIGUSR1)
    _wait_for(lambda: (out / "checkpoints").is_dir() and _steps(out), proc, "wrote a checkpoint on SIGUSR1")
    first = _steps(out)[0]
    _wait_for(lambda: len(_losses(out)) >= first + 2, proc, "continued after the checkpoint")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0, proc.stderr.read()[-2000:]
    err, stdout = proc.stderr.read(), proc.stdout.read()
    assert "received SIGUSR1" in err and "received SIGTERM" in err and "export skipped" in stdout
    last = max(_steps(out))
    assert last >= first + 2 and not (out / "pipeline").exists()  # preempted: no export
    resumed = train(_cfg(tiny_npz, cache_path, out, max_steps=last + 1, resume="auto"), "t")
    assert RCDMPipeline.from_pretrained(resumed).training_info["steps"] == last + 1


SHARD_SCRIPT = """
import sys, torch
from accelerate import Accelerator
from rcdm.cache import EmbeddingCache
from rcdm.train_config import TrainConfig
from rcdm.training.data import make_dataloader
from rcdm.training.runtime import make_accelerator
cfg = TrainConfig(data=sys.argv[1], cache=sys.argv[2], output_dir=sys.argv[3], batch_size=8)
acc = make_accelerator(cfg.mixed_precision, cfg.output_dir, seed=cfg.seed)
dl = acc.prepare(make_dataloader(cfg, EmbeddingCache.load(cfg.cache)))
dl.set_epoch(0)
seen = torch.cat([h for _, h in dl])
torch.save(seen, f"{sys.argv[3]}/seen{acc.process_index}.pt")
"""


def _launch(args, cwd):
    """Two gloo processes on the CPU. `accelerate launch --cpu --num_processes 2` would start ONE process unless
    MPI is installed (accelerate's simple launcher); --multi_gpu with ACCELERATE_USE_CPU runs torch.distributed."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


@pytest.mark.slow  # subprocess
def test_two_processes_shard_data(tmp_path, tiny_npz, cache_path):
    (tmp_path / "script.py").write_text(SHARD_SCRIPT)
    _launch(["script.py", str(tiny_npz), str(cache_path), str(tmp_path)], tmp_path)
    a, b = (torch.load(tmp_path / f"seen{i}.pt", weights_only=True) for i in (0, 1))
    rows = lambda t: {tuple(r.tolist()) for r in t}  # noqa: E731
    assert len(a) == len(b) == 64 and not rows(a) & rows(b)  # 128 items, split without overlap


@pytest.mark.slow  # subprocess
def test_two_process_training_run(tmp_path, tiny_npz, cache_path):
    """Two gloo processes with a global batch of 16 and at most 4 per device: 2 x 4 x 2 accumulation steps; the LR
    warms up in optimizer steps exactly as on one process."""
    out = tmp_path / "ddp"
    res = _launch(["-m", "rcdm.train", "--data", str(tiny_npz), "--cache", str(cache_path), "--output-dir", str(out),
                   "--max-steps", "3", "--checkpoint-every", "2", "--mixed-precision", "no", *TINY,
                   "--global-batch-size", "16", "--batch-size", "4", "--sync-every", "2",
                   "--posthoc-ema", "0.05", "0.1", "--posthoc-ema-every", "1"], tmp_path)
    assert "global batch 16 = 2 process(es) x 4 per device x 2 accumulation step(s)" in res.stdout + res.stderr
    ck = out / "checkpoints" / "checkpoint-3"
    assert sorted(p.name for p in ck.glob("random_states_*")) == ["random_states_0.pkl", "random_states_1.pkl"]
    state = json.loads((ck / "trainer_state.json").read_text())
    assert state["num_processes"] == 2 and state["batch"] == {"num_processes": 2, "per_device": 4, "grad_accum": 2}
    assert (ck / "posthoc_ema.safetensors").is_file()  # post-hoc EMA: the main process keeps and saves it
    assert [(s.step, s.sigma_rel) for s in list_snapshots(out)] == [(t, r) for t in (1, 2, 3) for r in (0.05, 0.1)]
    assert len(_losses(out)) == 3  # one line per step: only the main process logs
    lrs = [json.loads(line)["lr"] for line in (out / "losses.jsonl").read_text().splitlines()]
    assert lrs == pytest.approx([5e-4, 1e-3, 1e-3])  # --warmup-steps 2, in optimizer steps
    writers = {p.name.split(".")[-2] for p in (out / "logs").rglob("events.out.tfevents*")}  # writer PIDs
    assert len(writers) == 1
    pipe = RCDMPipeline.from_pretrained(out / "pipeline")
    assert len(pipe(embeddings=torch.zeros(1, pipe.encoder.dim), num_inference_steps=2).images) == 1


@pytest.mark.slow  # subprocess
def test_two_processes_agree_to_stop_every_sync_every_steps(tmp_path, tiny_npz, cache_path):
    """--max-minutes is long past after step 1, but two processes only agree every --sync-every 2 steps: both stop
    at step 2, with one checkpoint and the export."""
    out = tmp_path / "sync"
    _launch(["-m", "rcdm.train", "--data", str(tiny_npz), "--cache", str(cache_path), "--output-dir", str(out),
             "--max-steps", "50", "--checkpoint-every", "100", "--mixed-precision", "no", *TINY,
             "--max-minutes", "1e-6", "--sync-every", "2"], tmp_path)
    assert _steps(out) == [2] and RCDMPipeline.from_pretrained(out / "pipeline").training_info["steps"] == 2


def test_config_layers_preset_yaml_flags(tmp_path):
    """preset < YAML < flags, and unknown YAML keys are refused."""
    import argparse

    from rcdm.cli.train import configure_parser
    from rcdm.train_config import load_config

    (tmp_path / "c.yaml").write_text("lr: 0.0005\nbatch_size: 16\nblock_out_channels: [32, 64]\n")
    p = argparse.ArgumentParser()
    configure_parser(p)
    cfg = load_config("imagenet-128", str(tmp_path / "c.yaml"), p.parse_args(["--batch-size", "4", "--dropout", "0.1"]))
    assert (cfg.resolution, cfg.lr, cfg.batch_size, cfg.unet.block_out_channels) == (128, 5e-4, 4, (32, 64))
    assert cfg.unet.dropout == 0.1 and cfg.unet.attention_levels == (2, 3, 4)  # the preset's, under YAML and flags
    (tmp_path / "nested.yaml").write_text("unet:\n  layers_per_block: 3\n")  # the nesting TrainConfig records
    nested = load_config("imagenet-128", str(tmp_path / "nested.yaml"), p.parse_args([]))
    assert nested.unet.layers_per_block == 3 and nested.unet.block_out_channels == (256, 256, 512, 768, 1024)
    (tmp_path / "bad.yaml").write_text("learning_rate: 1\n")
    with pytest.raises(ValueError, match="unknown keys"):
        load_config(None, str(tmp_path / "bad.yaml"), p.parse_args([]))


def test_one_command_trains_one_model_per_layer(tmp_path, tiny_npz, tiny_encoder_dir, cache_path):
    from rcdm.training.loop import per_layer_configs

    proj = tmp_path / "proj.safetensors"
    assert cli_main(["embed", "--encoder", f"file:{tiny_encoder_dir}", "--layer", "projector", "--data",
                     str(tiny_npz), "--out", str(proj)]) == 0
    cfgs = per_layer_configs(_cfg(tiny_npz, f"{cache_path},{proj}", tmp_path / "layers"))
    assert [Path(c.output_dir).name for c in cfgs] == ["backbone", "projector"]
    assert [c.cache for c in cfgs] == [str(cache_path), str(proj)]
    with pytest.raises(ValueError, match="same layer"):
        per_layer_configs(_cfg(tiny_npz, f"{cache_path},{cache_path}", tmp_path / "x"))


# ------------------------------------------------------------------------------------ preemption (issue 15, item 5)
@pytest.mark.slow
def test_resume_auto_starts_fresh_then_continues_exactly(tmp_path, tiny_npz, cache_path):
    out = tmp_path / "auto"
    with pytest.raises(FileNotFoundError, match="--resume auto"):
        train(_cfg(tiny_npz, cache_path, out, max_steps=2, resume="latest"))
    first = train(_cfg(tiny_npz, cache_path, out, max_steps=2, checkpoint_every=2, resume="auto"), "t")
    assert RCDMPipeline.from_pretrained(first).training_info["steps"] == 2 and _steps(out) == [2]
    train(_cfg(tiny_npz, cache_path, out, max_steps=4, checkpoint_every=2, resume="auto"), "t")
    train(_cfg(tiny_npz, cache_path, tmp_path / "straight", max_steps=4), "t")
    np.testing.assert_allclose(_losses(out), _losses(tmp_path / "straight"), atol=1e-6, rtol=0)


def _signal_at_call(monkeypatch, sig, at):
    """Make the loss send `sig` to this process during its `at`-th call (1-based)."""
    import rcdm.training.loop as T

    real, calls = T.make_loss, {"n": 0}

    def make(*args):
        loss_fn = real(*args)

        def loss(*a):
            calls["n"] += 1
            if calls["n"] == at:
                os.kill(os.getpid(), sig)
            return loss_fn(*a)
        return loss
    monkeypatch.setattr(T, "make_loss", make)


def test_sigusr1_writes_a_checkpoint_and_training_continues(tmp_path, tiny_npz, cache_path, monkeypatch, capfd):
    _signal_at_call(monkeypatch, signal.SIGUSR1, at=3)
    out = train(_cfg(tiny_npz, cache_path, tmp_path / "usr1", max_steps=5, checkpoint_every=100), "t")
    assert sorted(_steps(tmp_path / "usr1")) == [3, 5] and len(_losses(tmp_path / "usr1")) == 5
    assert RCDMPipeline.from_pretrained(out).training_info["steps"] == 5
    assert "received SIGUSR1" in capfd.readouterr().err


@pytest.mark.parametrize("sig, exported", [(signal.SIGTERM, False), (signal.SIGINT, True)])
def test_preemption_skips_the_export_and_ctrl_c_keeps_it(tmp_path, tiny_npz, cache_path, monkeypatch, sig, exported):
    out = tmp_path / "run"
    _signal_at_call(monkeypatch, sig, at=2)
    result = train(_cfg(tiny_npz, cache_path, out, max_steps=6, checkpoint_every=100, resume="auto"), "t")
    assert _steps(out) == [2] and (result is not None) == exported and (out / "pipeline").exists() == exported
    monkeypatch.undo()
    resumed = train(_cfg(tiny_npz, cache_path, out, max_steps=3, checkpoint_every=100, resume="auto"), "t")
    assert RCDMPipeline.from_pretrained(resumed).training_info["steps"] == 3


# ------------------------------------------------------------------------------------ global batch (issue 15, item 1)
@pytest.mark.parametrize("global_batch, procs, cap, want", [
    (256, 1, 8, (8, 32)), (256, 8, 8, (8, 4)), (256, 32, 8, (8, 1)), (256, 64, 8, (4, 1)), (256, 8, 32, (32, 1)),
    (96, 8, 8, (6, 2)), (100, 4, 8, (5, 5)), (16, 2, 4, (4, 2)), (7, 1, 100, (7, 1)),
])
def test_global_batch_arithmetic(global_batch, procs, cap, want):
    plan = plan_batch(global_batch, procs, cap)
    assert (plan.per_device, plan.grad_accum) == want and plan.global_batch == global_batch and plan.per_device <= cap


def test_global_batch_refuses_what_does_not_split():
    with pytest.raises(ValueError, match="does not split over 3 processes"):
        plan_batch(256, 3, 8)
    with pytest.raises(ValueError, match="must be positive"):
        plan_batch(256, 8, 0)
    assert PRESETS["imagenet-128"].global_batch_size == 256  # the reference's 256 in total, on any number of GPUs
    assert PRESETS["cifar10-32"].global_batch_size == 0  # per process, as the shipped models were trained


def test_global_batch_derives_the_accumulation_and_records_it(tmp_path, tiny_npz, cache_path):
    out = train(_cfg(tiny_npz, cache_path, tmp_path / "g", max_steps=2, checkpoint_every=2, global_batch_size=16), "t")
    state = json.loads((tmp_path / "g/checkpoints/checkpoint-2/trainer_state.json").read_text())
    assert state["num_processes"] == 1 and state["batch"] == {"num_processes": 1, "per_device": 8, "grad_accum": 2}
    assert RCDMPipeline.from_pretrained(out).training_info["batch"]["global"] == 16
    with pytest.raises(ValueError, match="--grad-accum 2 and --global-batch-size 16"):
        train(_cfg(tiny_npz, cache_path, tmp_path / "x", max_steps=1, global_batch_size=16, grad_accum=2))
    with pytest.raises(ValueError, match="the checkpoint.s batch"):  # another plan would not continue exactly
        train(_cfg(tiny_npz, cache_path, tmp_path / "g", max_steps=3, global_batch_size=8, resume="latest"))


def test_resume_on_another_number_of_processes_is_refused(tmp_path, tiny_npz, cache_path):
    out = tmp_path / "p"
    train(_cfg(tiny_npz, cache_path, out, max_steps=2, checkpoint_every=2), "t")
    ck = out / "checkpoints" / "checkpoint-2"
    state = json.loads((ck / "trainer_state.json").read_text())
    (ck / "trainer_state.json").write_text(json.dumps({**state, "num_processes": 2}))
    with pytest.raises(ValueError, match="written by 2 processes and this run has 1"):
        train(_cfg(tiny_npz, cache_path, out, max_steps=3, resume="latest"))
    # a checkpoint from before the count was recorded: one RNG file per process tells it
    del state["num_processes"]
    (ck / "trainer_state.json").write_text(json.dumps(state))
    (ck / "random_states_1.pkl").write_bytes((ck / "random_states_0.pkl").read_bytes())
    with pytest.raises(ValueError, match="written by 2 processes"):
        train(_cfg(tiny_npz, cache_path, out, max_steps=3, resume="latest"))
    assert not (out / "checkpoints" / "checkpoint-3").exists()


def test_cluster_flags_are_documented_and_checked():
    import argparse

    from rcdm.cli.train import configure_parser

    p = argparse.ArgumentParser()
    configure_parser(p)
    text = p.format_help()
    for flag in ("--global-batch-size", "--sync-every", "--compile", "--resume", "--report-to"):
        assert flag in text
    assert "'auto'" in text
    with pytest.raises(ValueError, match="--sync-every 0"):
        train(TrainConfig(data="x", cache="y", sync_every=0))
    if importlib.util.find_spec("wandb") is None:  # an optional extra; refused by name, with the fix
        with pytest.raises(ValueError, match="--report-to wandb needs the wandb package: pip install wandb"):
            train(TrainConfig(data="x", cache="y", report_to="wandb"))
    assert isinstance(plan_batch(8, 1, 8), BatchPlan)


# ------------------------------------------------------------------------------------ hot path (issue 15, item 3)
@pytest.mark.slow  # dynamo traces the UNet (about a minute on 2 busy cores; inductor's C++ build would take minutes)
def test_compile_trains_like_eager(tmp_path, tiny_npz, cache_path, monkeypatch):
    """--compile compiles the denoiser in place: same losses, same exported weights and checkpoint keys as eager,
    and the sample grid (an eager copy) still works."""
    real = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: real(self, backend="eager"))
    kw = {"max_steps": 2, "checkpoint_every": 2, "sample_every": 2, "sample_steps": 2}
    compiled = train(_cfg(tiny_npz, cache_path, tmp_path / "compiled", compile=True, **kw), "t")
    eager = train(_cfg(tiny_npz, cache_path, tmp_path / "eager", **kw), "t")
    np.testing.assert_allclose(_losses(tmp_path / "compiled"), _losses(tmp_path / "eager"), atol=1e-5, rtol=0)
    a, b = (load_file(str(p / "unet" / "diffusion_pytorch_model.safetensors")) for p in (compiled, eager))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    ck = [load_file(str(tmp_path / r / "checkpoints/checkpoint-2/model.safetensors")) for r in ("compiled", "eager")]
    assert ck[0].keys() == ck[1].keys()


# ------------------------------------------------------------------------------------ data at scale (issue 15, item 6)
@pytest.mark.slow
def test_image_folder_is_listed_once_in_the_cache(tmp_path, tiny_encoder_dir, monkeypatch):
    """`rcdm embed` stores the folder's file list; training rebuilds the dataset from it without a rescan, and a file
    deleted since is still caught by the fingerprint."""
    from PIL import Image

    from rcdm.data import open_dataset

    folder = tmp_path / "imgs"
    for i in range(24):
        (folder / f"class{i % 3}").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (36, 32), (10 * i, 255 - 10 * i, 3 * i)).save(folder / f"class{i % 3}" / f"{i:02d}.png")
    cache_file = tmp_path / "emb.safetensors"
    assert cli_main(["embed", "--encoder", f"file:{tiny_encoder_dir}", "--data", str(folder), "--out",
                     str(cache_file)]) == 0
    scanned = open_dataset(str(folder))
    cache = EmbeddingCache.load(cache_file)
    assert cache.files == scanned.relative_files() and len(cache.files) == 24

    def no_scan(*a, **k):
        raise AssertionError("the image folder was scanned again")
    monkeypatch.setattr(Path, "rglob", no_scan)
    listed = cache.open_data(str(folder))
    cache.check_matches(listed)
    assert listed.labels.tolist() == scanned.labels.tolist() and listed.classes == scanned.classes
    out = train(_cfg(str(folder), cache_file, tmp_path / "run", max_steps=1, sample_every=1, sample_steps=1), "t")
    assert (out / "unet").is_dir() and (tmp_path / "run/samples/step-0000001.png").is_file()
    (folder / "class1" / "04.png").unlink()
    with pytest.raises(ValueError, match="fingerprint"):
        cache.check_matches(cache.open_data(str(folder)))


@pytest.mark.slow
def test_grow_attention_continues_the_parents_function_and_trains_the_new_blocks(tmp_path, tiny_npz, cache_path):
    """--grow-attention adds self-attention blocks that start as the identity: at lr 0 the grown export computes what
    its parent computes; with a real lr the new blocks learn."""
    first = train(_cfg(tiny_npz, cache_path, tmp_path / "s1", max_steps=2), "stint 1")
    kw = dict(max_steps=2, init_from=str(first), grow_attention=(1,))
    frozen = train(_cfg(tiny_npz, cache_path, tmp_path / "s2", lr=0.0, **kw), "grow, lr 0")
    moved = train(_cfg(tiny_npz, cache_path, tmp_path / "s3", lr=1e-3, **kw), "grow")
    parent, grown, trained = (RCDMPipeline.from_pretrained(p).unet for p in (first, frozen, moved))
    assert tuple(grown.config.attention_levels) == (1,) and tuple(parent.config.attention_levels) == ()
    x, t, h = torch.randn(3, 3, 32, 32), torch.tensor([5, 500, 990]), torch.randn(3, parent.config.embedding_dim)
    with torch.no_grad():
        torch.testing.assert_close(grown(x, t, h).sample, parent(x, t, h).sample, atol=1e-5, rtol=1e-5)
    new = [k for k, _ in trained.named_parameters() if ".attentions." in k and k.endswith("to_out.0.weight")]
    assert new and all(trained.get_parameter(k).abs().max() > 0 for k in new)
    assert all(grown.get_parameter(k).abs().max() == 0 for k in new)
    with pytest.raises(ValueError, match="already have self-attention"):
        grown.with_attention((1,))
    with pytest.raises(ValueError, match="levels 0..1"):
        parent.with_attention((2,))
    with pytest.raises(ValueError, match="give it --init-from"):
        train(_cfg(tiny_npz, cache_path, tmp_path / "s4", max_steps=1, grow_attention=(1,)))


def test_preloaded_images_train_exactly_as_decoded_ones(tmp_path, tiny_npz, cache_path):
    """--preload-images decodes every image once into memory: the same items, so the same losses, bit for bit."""
    from rcdm.training.data import PairedDataset

    cache = EmbeddingCache.load(cache_path)
    ds = cache.open_data(str(tiny_npz))
    lazy, eager = PairedDataset(ds, cache, 32), PairedDataset(ds, cache, 32, preload=True)
    assert eager.images.dtype == torch.uint8 and eager.images.shape == (len(cache.indices), 3, 32, 32)
    for j in (0, 1, 7, len(lazy) - 1):  # both views of several images
        assert all(torch.equal(a, b) for a, b in zip(lazy[j], eager[j]))
    runs = [train(_cfg(tiny_npz, cache_path, tmp_path / name, max_steps=3, preload_images=pre), name)
            for name, pre in (("lazy", False), ("eager", True))]
    assert _losses(runs[0].parent) == _losses(runs[1].parent)
