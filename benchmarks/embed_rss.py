"""Peak host RSS of `rcdm embed` against dataset size (not a test): a synthetic dataset of tiny images and a cheap
fake 2048-d encoder, so the numbers are the cache's own cost, not a network's or a decoder's. Each size runs in a
fresh process (ru_maxrss is a process's high-water mark), in the main process (--num-workers 0), and the cache is
deleted afterwards.

    python benchmarks/embed_rss.py [--sizes 20000 200000] [--dim 2048] [--dir /tmp] [--out-csv benchmarks/embed_rss.csv]

Also reports the memory after the training side's start: `EmbeddingCache.load`, its stored statistics and 4096
random rows read, as `PairedDataset` reads them. Private memory (RssAnon) stays flat; the mapped file pages
(RssFile) are the page cache the reads pulled in, with the kernel's read-around, shared by every rank that maps the
same cache and dropped under memory pressure.
"""
import argparse
import csv
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

MIB = 1024 * 1024


class SyntheticImages(torch.utils.data.Dataset):
    """n uint8 (3, 8, 8) images made from their index, labels i % 10: O(1) memory at any n."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8, generator=g), i % 10

    def identity(self, i):
        return f"synthetic:{i}".encode()


def fake_encoder(dim: int):
    """A fixed random linear map of the 8x8 pixels to `dim`: a FrozenEncoder with weights, cheap to run."""
    from rcdm.encoders import EncoderNet, FrozenEncoder, Preprocess

    torch.manual_seed(0)
    net = EncoderNet(nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, dim)))
    return FrozenEncoder(net, "fake:linear", "backbone", Preprocess(8, 8, (0.5,) * 3, (0.25,) * 3))


def rss_mib(field: str) -> float:
    """A /proc/self/status memory field in MiB: VmHWM (peak resident set), RssAnon (private memory), RssFile
    (mapped file pages: page cache, shared with every other mapper and dropped under memory pressure)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure(n: int, dim: int, directory: str, dtype: str) -> dict:
    """One size, in this process: embed, then load as training does; the cache file is removed."""
    from rcdm.cache import EmbedOptions, EmbeddingCache, embed_dataset

    encoder, ds = fake_encoder(dim), SyntheticImages(n)
    start_rss = rss_mib("VmHWM")
    out = Path(tempfile.mkdtemp(dir=directory)) / "emb.safetensors"
    t0 = time.perf_counter()
    try:
        embed_dataset(encoder, ds, f"synthetic:{n}", out, EmbedOptions(num_workers=0, dtype=dtype, progress=False))
        seconds = time.perf_counter() - t0
        embed_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        size = out.stat().st_size
        cache = EmbeddingCache.load(out)
        cache.embedding_stats()
        rows = torch.randint(0, n, (4096,), generator=torch.Generator().manual_seed(0))
        _ = torch.stack([cache.embeddings[int(r), 0].float() for r in rows])
        anon, mapped = rss_mib("RssAnon"), rss_mib("RssFile")
    finally:
        for p in out.parent.iterdir():
            p.unlink()
        out.parent.rmdir()
    return {"items": n, "views": 2, "dim": dim, "dtype": dtype, "file_gb": round(size / 1e9, 2),
            "seconds": round(seconds, 1), "img_per_s": round(n / seconds), "start_rss_mib": round(start_rss),
            "peak_rss_mib": round(embed_peak), "embed_growth_mib": round(embed_peak - start_rss),
            "after_load_anon_mib": round(anon), "after_load_file_mib": round(mapped)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[20_000, 200_000], help="dataset sizes (default: 20k 200k)")
    p.add_argument("--dim", type=int, default=2048, help="embedding dimension (default: 2048)")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16"))
    p.add_argument("--dir", default=tempfile.gettempdir(), help="where the caches are written (default: /tmp)")
    p.add_argument("--out-csv", default=str(Path(__file__).with_suffix(".csv")), help="results (default: beside this)")
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)  # one size, in this process
    args = p.parse_args(argv)
    if args.child is not None:
        print(json.dumps(measure(args.child, args.dim, args.dir, args.dtype)))
        return
    rows = []
    for n in args.sizes:
        cmd = [sys.executable, __file__, "--child", str(n), "--dim", str(args.dim), "--dtype", args.dtype,
               "--dir", args.dir]
        rows.append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1]))
        print(rows[-1], flush=True)
    with open(args.out_csv, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {args.out_csv}")


if __name__ == "__main__":
    main()
