"""One writer per embedding cache (issue 33.7): while one `rcdm embed` writes OUT, a second one is refused with a
message naming the holder; a holder killed with SIGKILL blocks nobody, since the kernel drops its lock."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from rcdm.cache import EmbeddingCache
from rcdm.cli import main as cli_main
from rcdm.fsutil import OutputLocked, output_lock

HOLD = """
import sys, time
from rcdm.fsutil import output_lock
with output_lock(sys.argv[1]):
    print("HELD", flush=True)
    time.sleep(300)
"""


def _hold(out):
    """A process that takes OUT's lock and sleeps (torch-free, so it starts in a moment)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "HELD\n"
    return proc


def _kill9(proc):
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


def _embed(enc_dir, data, out):
    return cli_main(["embed", "--encoder", f"file:{enc_dir}", "--data", str(data), "--out", str(out),
                     "--batch-size", "32", "--num-workers", "0"])


def test_second_writer_is_refused_naming_the_holder_and_a_killed_holder_blocks_nobody(tmp_path, tiny_npz,
                                                                                      tiny_encoder_dir, capsys):
    out = tmp_path / "emb.safetensors"
    holder = _hold(out)
    try:
        assert _embed(tiny_encoder_dir, tiny_npz, out) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"rcdm embed: error: {out} is being written by another "
                                                       f"process (pid {holder.pid} on {socket.gethostname()} since ")
        assert f"-c {out}); wait for it to finish or stop it" in err  # the holder's command line
        assert not out.exists() and not (tmp_path / "emb.safetensors.partial").exists()  # refused before writing
    finally:
        _kill9(holder)
    lock = tmp_path / "emb.safetensors.lock"
    assert json.loads(lock.read_text())["pid"] == holder.pid  # the dead holder's file is still there ...
    assert _embed(tiny_encoder_dir, tiny_npz, out) == 0  # ... and blocks nothing
    assert len(EmbeddingCache.load(out).indices) == 64 and not lock.exists()


def test_lock_is_released_on_error_and_names_its_holder_in_process(tmp_path):
    out = tmp_path / "x.bin"
    with pytest.raises(RuntimeError):
        with output_lock(out):
            info = json.loads((tmp_path / "x.bin.lock").read_text())
            assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
            with pytest.raises(OutputLocked, match=f"pid {os.getpid()} on "):  # a second open file is refused too
                with output_lock(out):
                    pass
            raise RuntimeError("the writer failed")
    assert not (tmp_path / "x.bin.lock").exists()
    with output_lock(out):  # free again
        pass


@pytest.mark.slow  # a real `rcdm embed` subprocess, killed with SIGKILL mid-run
def test_a_running_embed_holds_the_lock_until_killed(tmp_path, tiny_npz, tiny_encoder_dir, capsys):
    import numpy as np

    z = np.load(tiny_npz)  # the tiny set, 32 times: long enough to be caught running
    n, off = len(z["train_labels"]), z["train_offsets"]
    data = tmp_path / "d.npz"
    np.savez(data, train_jpeg=np.concatenate([z["train_jpeg"]] * 32),
             train_offsets=np.concatenate([off[:-1] + k * off[-1] for k in range(32)] + [[32 * off[-1]]]),
             train_labels=np.tile(z["train_labels"], 32))
    out, lock = tmp_path / "emb.safetensors", tmp_path / "emb.safetensors.lock"
    first = subprocess.Popen([sys.executable, "-m", "rcdm.cli", "embed", "--encoder", f"file:{tiny_encoder_dir}",
                              "--data", str(data), "--out", str(out), "--batch-size", "8", "--chunk-size", "16",
                              "--num-workers", "0"], env={**os.environ, "OMP_NUM_THREADS": "1"},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        t0 = time.time()
        while not (lock.exists() and lock.read_text() and json.loads(lock.read_text())["pid"] == first.pid):
            assert first.poll() is None and time.time() - t0 < 120, "the first embed never took the lock"
            time.sleep(0.01)
        assert _embed(tiny_encoder_dir, data, out) == 2
        assert f"(pid {first.pid} on {socket.gethostname()} since " in capsys.readouterr().err
        assert first.poll() is None, "the first embed finished before the check: make the data larger"
    finally:
        _kill9(first)
    assert not out.exists()
    assert _embed(tiny_encoder_dir, data, out) == 0  # the same command resumes the killed run's rows
    assert len(EmbeddingCache.load(out).indices) == 32 * n and not lock.exists()
