"""Training: embedding cache, exact resume, crash-safe checkpoints, NaN stop, multi-process, export."""
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

from rcdm import RCDMPipeline
from rcdm.cache import EmbeddingCache, build_cache
from rcdm.cli import main as cli_main
from rcdm.encoders import load_encoder
from rcdm.model import UNetConfig
from rcdm.train import TrainConfig, make_lr_schedule, train

TINY = ["--block-out-channels", "16", "32", "--norm-num-groups", "8", "--layers-per-block", "1",
        "--batch-size", "8", "--log-every", "1", "--sample-every", "0", "--warmup-steps", "2"]


@pytest.fixture(scope="module")
def cache_path(tmp_path_factory, tiny_npz, tiny_encoder_dir):
    out = tmp_path_factory.mktemp("cache") / "emb.safetensors"
    assert cli_main(["embed", "--encoder", f"file:{tiny_encoder_dir}", "--data", str(tiny_npz), "--out", str(out)]) == 0
    return out


def _cfg(tiny_npz, cache_path, out, **kw):
    base = dict(data=str(tiny_npz), cache=str(cache_path), output_dir=str(out), batch_size=8, log_every=1,
                sample_every=0, warmup_steps=2, unet=UNetConfig(block_out_channels=(16, 32), norm_num_groups=8,
                                                                layers_per_block=1))
    return TrainConfig(**{**base, **kw})


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


def test_corrupt_image_is_skipped_and_counted(tmp_path, tiny_npz, tiny_encoder_dir):
    z = dict(np.load(tiny_npz))
    buf = z["train_jpeg"].copy()
    buf[z["train_offsets"][3] : z["train_offsets"][4]] = 0  # image 3 becomes garbage
    np.savez(tmp_path / "bad.npz", **{**z, "train_jpeg": buf})
    enc = load_encoder(f"file:{tiny_encoder_dir}")
    with pytest.warns(UserWarning, match="skipped 1 of 64"):
        cache = build_cache(enc, str(tmp_path / "bad.npz"), max_bad_frac=0.05, progress=False)
    assert cache.meta["num_bad"] == 1 and 3 not in cache.indices.tolist() and len(cache.indices) == 63
    with pytest.raises(ValueError, match="unreadable"), pytest.warns(UserWarning):
        build_cache(enc, str(tmp_path / "bad.npz"), progress=False)  # default limit: 1% of 64 < 1


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
    lrs = [json.loads(line)["lr"] for line in (tmp_path / "run" / "losses.jsonl").read_text().splitlines()]
    assert lrs == pytest.approx([5e-4, 1e-3, 5e-4, 0.0])


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
    import rcdm.train as T

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
from rcdm.train import main
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


@pytest.mark.slow  # subprocess
def test_sigterm_stops_with_checkpoint_and_export(tmp_path, tiny_npz, cache_path):
    out = tmp_path / "term"
    cmd = [sys.executable, "-m", "rcdm.cli", "train", "--data", str(tiny_npz), "--cache", str(cache_path),
           "--output-dir", str(out), "--max-steps", "100000", "--checkpoint-every", "100000", *TINY]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while not ((out / "losses.jsonl").is_file() and len(_losses(out)) >= 2):
        assert time.time() < deadline and proc.poll() is None, "training never logged two steps"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0, proc.stderr.read()[-2000:]
    assert "received SIGTERM" in proc.stderr.read()
    steps = RCDMPipeline.from_pretrained(out / "pipeline").training_info["steps"]
    assert steps >= 2 and (out / "checkpoints" / f"checkpoint-{steps}" / "trainer_state.json").is_file()


SHARD_SCRIPT = """
import sys, torch
from accelerate import Accelerator
from rcdm.cache import EmbeddingCache
from rcdm.train import TrainConfig, make_accelerator, make_dataloader
cfg = TrainConfig(data=sys.argv[1], cache=sys.argv[2], output_dir=sys.argv[3], batch_size=8)
acc = make_accelerator(cfg)
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
    out = tmp_path / "ddp"
    _launch(["-m", "rcdm.train", "--data", str(tiny_npz), "--cache", str(cache_path), "--output-dir", str(out),
             "--max-steps", "3", "--checkpoint-every", "2", "--mixed-precision", "no", *TINY], tmp_path)
    ck = out / "checkpoints" / "checkpoint-3"
    assert sorted(p.name for p in ck.glob("random_states_*")) == ["random_states_0.pkl", "random_states_1.pkl"]
    assert len(_losses(out)) == 3  # one line per step: only the main process logs
    writers = {p.name.split(".")[-2] for p in (out / "logs").rglob("events.out.tfevents*")}  # writer PIDs
    assert len(writers) == 1
    pipe = RCDMPipeline.from_pretrained(out / "pipeline")
    assert len(pipe(embeddings=torch.zeros(1, pipe.encoder.dim), num_inference_steps=2).images) == 1


def test_config_layers_preset_yaml_flags(tmp_path):
    """preset < YAML < flags, and unknown YAML keys are refused."""
    from rcdm.train import _configure_parser, load_config
    import argparse

    (tmp_path / "c.yaml").write_text("lr: 0.0005\nbatch_size: 16\nblock_out_channels: [32, 64]\n")
    p = argparse.ArgumentParser()
    _configure_parser(p)
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
    from rcdm.train import per_layer_configs

    proj = tmp_path / "proj.safetensors"
    assert cli_main(["embed", "--encoder", f"file:{tiny_encoder_dir}", "--layer", "projector", "--data",
                     str(tiny_npz), "--out", str(proj)]) == 0
    cfgs = per_layer_configs(_cfg(tiny_npz, f"{cache_path},{proj}", tmp_path / "layers"))
    assert [Path(c.output_dir).name for c in cfgs] == ["backbone", "projector"]
    assert [c.cache for c in cfgs] == [str(cache_path), str(proj)]
    with pytest.raises(ValueError, match="same layer"):
        per_layer_configs(_cfg(tiny_npz, f"{cache_path},{cache_path}", tmp_path / "x"))
