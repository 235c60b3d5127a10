"""The `rcdm` command line: help everywhere, version, a sampling smoke run, clear errors."""
import subprocess
import sys

import pytest
from PIL import Image

from rcdm import __version__
from rcdm.cli import build_parser, main


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and __version__ in capsys.readouterr().out


def test_every_subcommand_documents_every_flag():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert {"sample", "embed", "train"} <= set(sub.choices)
    for name, p in sub.choices.items():
        for action in p._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"rcdm {name} {action.option_strings[0]} has no help text"


@pytest.mark.slow  # subprocess
def test_console_script_help_runs():
    out = subprocess.run([sys.executable, "-m", "rcdm.cli", "sample", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--num-samples" in out.stdout


def test_sample_writes_grid(tiny_pipeline_dir, cifar_test_images, tmp_path):
    paths = []
    for i, im in enumerate(cifar_test_images[0][:2]):
        paths.append(str(tmp_path / f"in{i}.png"))
        im.save(paths[-1])
    out = tmp_path / "grid.png"
    code = main(["sample", "--image", *paths, "--model", str(tiny_pipeline_dir), "--num-samples", "3",
                 "--num-inference-steps", "2", "--seed", "1", "--upscale", "1", "--out", str(out)])
    assert code == 0
    grid = Image.open(out)
    # 2 rows x (input + 3 samples) tiles of 32 px with 2 px padding
    assert grid.size == (4 * 34 + 2, 2 * 34 + 2)


def test_python_api_sample_and_the_cli_draw_the_same_images(tiny_pipeline_dir, cifar_test_images, tmp_path):
    """One seeding scheme: pipe(images, num_samples=K, seed=s) = rcdm.sampling.sample with seed s = the cells of
    `rcdm sample --seed s`'s grid (the app draws through rcdm.sampling.sample too: tests/test_app.py)."""
    import numpy as np
    import torch

    from rcdm import RCDMPipeline, Sampling, sample
    from rcdm.images import to_uint8

    imgs, k, seed = cifar_test_images[0][:2], 3, 7
    paths = [str(tmp_path / f"in{i}.png") for i in range(len(imgs))]
    for im, p in zip(imgs, paths):
        im.save(p)
    pipe = RCDMPipeline.from_pretrained(tiny_pipeline_dir)
    api = pipe(images=[Image.open(p) for p in paths], num_samples=k, num_inference_steps=2, seed=seed,
               output_type="pt").images  # (2*K, 3, 32, 32)
    run = Sampling(num_samples=k, num_inference_steps=2, seed=seed, batch_size=2)  # one input per call
    torch.testing.assert_close(sample(pipe, pipe.encode([Image.open(p) for p in paths]), run=run), api,
                               atol=1e-5, rtol=0)
    assert main(["sample", "--image", *paths, "--model", str(tiny_pipeline_dir), "--num-samples", str(k),
                 "--num-inference-steps", "2", "--seed", str(seed), "--upscale", "1", "--out",
                 str(tmp_path / "g.png")]) == 0
    grid = np.asarray(Image.open(tmp_path / "g.png"))  # tiles of 32 px, 2 px apart; column 0 is the input
    cells = [grid[2 + i * 34:34 + i * 34, 2 + (j + 1) * 34:34 + (j + 1) * 34] for i in range(2) for j in range(k)]
    assert np.array_equal(np.stack(cells), to_uint8(api).permute(0, 2, 3, 1).numpy())


def test_sample_bad_image_is_one_clear_line(tiny_pipeline_dir, tmp_path, capsys):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    code = main(["sample", "--image", str(bad), "--model", str(tiny_pipeline_dir), "--out", str(tmp_path / "g.png")])
    err = capsys.readouterr().err
    assert code == 2 and "bad.jpg" in err and "Traceback" not in err


def test_load_pipeline_casts_only_the_denoiser(tiny_pipeline_dir):
    import torch

    from rcdm.flags import load_pipeline

    pipe = load_pipeline(str(tiny_pipeline_dir), "cpu", "bfloat16")
    assert pipe.unet.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in pipe.encoder.parameters())  # embeddings stay float32
    out = pipe(embeddings=torch.randn(2, pipe.unet.config.embedding_dim), num_inference_steps=2, output_type="pt")
    assert out.images.dtype == torch.float32 and torch.isfinite(out.images).all()


def test_sample_float16_on_cpu_is_refused_with_the_fix(tiny_pipeline_dir, cifar_test_images, tmp_path, capsys):
    path = tmp_path / "in.png"
    cifar_test_images[0][0].save(path)
    code = main(["sample", "--image", str(path), "--model", str(tiny_pipeline_dir), "--dtype", "float16",
                 "--out", str(tmp_path / "g.png")])
    err = capsys.readouterr().err
    assert code == 2 and "bfloat16" in err and not (tmp_path / "g.png").exists()
