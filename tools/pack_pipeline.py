"""Pack a pipeline directory into a few bounded safetensors files, and unpack them back into a pipeline directory.

    python tools/pack_pipeline.py pack runs/x/pipeline out/ --max-mib 15      # -> out/pipeline-0000{1,2}-of-00002...
    python tools/pack_pipeline.py unpack out/ runs/candidate                   # -> a directory from_pretrained loads

For carrying a trained model back from a machine whose file transfer is capped in count and size (a lent GPU, a
job's artifact store). Tensors are split over shards of at most --max-mib each (a tensor is never cut); the first
shard's metadata also carries every small text file of the directory (configs, model card), so the shards alone
rebuild it exactly: unpacked weights equal the packed ones bit for bit.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load_file, save_file

TEXT_SUFFIXES = {".json", ".md", ".txt"}
FILES_KEY = "rcdm_pack_files"


def pack(src, out, max_mib: float = 15.0, prefix: str = "pipeline") -> list[Path]:
    """Write `out/<prefix>-0000i-of-0000n.safetensors`; tensors are keyed '<relative file>::<tensor name>'."""
    src, out = Path(src), Path(out)
    texts = {str(p.relative_to(src)): p.read_text() for p in sorted(src.rglob("*"))
             if p.is_file() and p.suffix in TEXT_SUFFIXES}
    tensors = {}
    for p in sorted(src.rglob("*.safetensors")):
        for name, t in load_file(str(p)).items():
            tensors[f"{p.relative_to(src)}::{name}"] = t
    shards, current, size, limit = [], {}, 0, int(max_mib * 2**20) - 2**16  # room for the header
    for key, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if nbytes > limit:
            raise ValueError(f"tensor {key} ({nbytes / 2**20:.1f} MiB) is larger than --max-mib {max_mib}")
        if current and size + nbytes > limit:
            shards.append(current)
            current, size = {}, 0
        current[key], size = t.contiguous(), size + nbytes
    shards.append(current)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, shard in enumerate(shards):
        path = out / f"{prefix}-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        meta = {FILES_KEY: json.dumps(texts)} if i == 0 else {}
        save_file(shard, str(path), metadata=meta)
        paths.append(path)
    return paths


def unpack(src, dest, prefix: str = "pipeline", encoder_spec: str | None = None) -> Path:
    """Rebuild the directory packed into `src`; refuses an incomplete set of shards. `encoder_spec` replaces the
    recorded encoder spec (a `file:` path that named the encoder on the machine that trained it, say)."""
    src, dest = Path(src), Path(dest)
    shards = sorted(src.glob(f"{prefix}-*-of-*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"no {prefix}-*-of-*.safetensors in {src}")
    want = int(shards[0].stem.rsplit("-of-", 1)[1])
    if len(shards) != want:
        raise ValueError(f"{src}: {len(shards)} of {want} shards present; copy all of them")
    with safe_open(str(shards[0]), "pt") as f:
        texts = json.loads(f.metadata()[FILES_KEY])
    files: dict[str, dict] = {}
    for shard in shards:
        for key, t in load_file(str(shard)).items():
            rel, name = key.split("::", 1)
            files.setdefault(rel, {})[name] = t
    if encoder_spec:
        meta = json.loads(texts["rcdm_pipeline.json"])
        meta["encoder"]["spec"] = encoder_spec  # the fingerprint still checks that it names the same weights
        texts["rcdm_pipeline.json"] = json.dumps(meta, indent=2) + "\n"
    for rel, text in texts.items():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / rel).write_text(text)
    for rel, state in files.items():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        save_file(state, str(dest / rel), metadata={"format": "pt"})
    return dest


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("pack", help="directory -> bounded shards")
    a.add_argument("src", help="pipeline directory (save_pretrained / rcdm train's export)")
    a.add_argument("out", help="folder for the shards")
    a.add_argument("--max-mib", type=float, default=15.0, help="largest shard in MiB (default: 15)")
    a.add_argument("--prefix", default="pipeline", help="shard file prefix (default: pipeline)")
    b = sub.add_parser("unpack", help="shards -> directory")
    b.add_argument("src", help="folder holding the shards")
    b.add_argument("dest", help="directory to write")
    b.add_argument("--prefix", default="pipeline", help="shard file prefix (default: pipeline)")
    b.add_argument("--encoder-spec", default=None,
                   help="record this encoder spec instead, e.g. pretrained:simclr-cifar10-r18w32 (default: keep)")
    args = p.parse_args(argv)
    if args.cmd == "pack":
        for path in pack(args.src, args.out, args.max_mib, args.prefix):
            print(f"{path} ({path.stat().st_size / 2**20:.1f} MiB)")
    else:
        print(f"unpacked to {unpack(args.src, args.dest, args.prefix, args.encoder_spec)}")


if __name__ == "__main__":
    sys.exit(main())
