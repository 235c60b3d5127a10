"""Build tests/data/cifar10_small.npz, the test suite's real-image fixture, from the full packed-JPEG CIFAR-10 npz.

    python tools/make_test_fixture.py PATH/TO/cifar10_jpeg.npz [--out tests/data/cifar10_small.npz]

The fixture keeps the first TRAIN items of the train split and the first TEST items of the test split: the source is
class-interleaved (labels[i] == i % 10), so a prefix of a multiple of 10 is class-balanced, and a test that reads
"the first N test images" sees the same images, in the same order, as on the full file. The JPEG bytes are copied
byte for byte (no re-encoding); keys, dtypes and layout are those of the full file.
"""
import argparse
import hashlib

import numpy as np

TRAIN, TEST = 1000, 1000  # 100 per class in each split; 0.62 MB (the JPEG headers compress well)


def prefix(z, split: str, n: int) -> dict:
    """The first n items of a split, in the full file's keys; the offsets still start at 0."""
    off = z[f"{split}_offsets"][: n + 1]
    assert off[0] == 0 and len(off) == n + 1, f"{split}: fewer than {n} items"
    return {f"{split}_jpeg": z[f"{split}_jpeg"][: off[-1]], f"{split}_offsets": off,
            f"{split}_labels": z[f"{split}_labels"][:n], f"{split}_file_index": z[f"{split}_file_index"][:n]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("source", help="the full cifar10_jpeg.npz (see its README)")
    p.add_argument("--out", default="tests/data/cifar10_small.npz", help="where to write the fixture")
    args = p.parse_args(argv)
    z = np.load(args.source)
    arrays = {**prefix(z, "train", TRAIN), **prefix(z, "test", TEST), "class_names": z["class_names"]}
    for split in ("train", "test"):
        counts = np.bincount(arrays[f"{split}_labels"], minlength=10)
        assert (counts == counts[0]).all(), f"{split} is not class-balanced: {counts}"
    np.savez_compressed(args.out, **arrays)
    digest = hashlib.sha256(open(args.out, "rb").read()).hexdigest()
    print(f"wrote {args.out}: train {TRAIN}, test {TEST}, sha256 {digest}")


if __name__ == "__main__":
    main()
