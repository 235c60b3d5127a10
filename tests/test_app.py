"""The Gradio app, served in-process on a free port and driven through gradio_client: every endpoint, bad
uploads, server-side limits and a burst of concurrent requests. Tiny models, 2 steps, 2 samples."""
import re
import socket
import struct
import time
import zlib

import pytest
import torch
from PIL import Image

import gradio as gr  # an install dependency: a missing gradio must fail, not skip
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from conftest import make_tiny_pipeline  # noqa: E402
from rcdm.analysis import interpolate_embeddings  # noqa: E402
from rcdm.app import launch_app  # noqa: E402
from rcdm.app.checks import MAX_FILE_BYTES, load_upload  # noqa: E402
from rcdm.app.interpolate import InterpolateTab  # noqa: E402
from rcdm.app.invariance import gallery_columns  # noqa: E402
from rcdm.cli import main as cli_main  # noqa: E402
from rcdm.data import open_image  # noqa: E402
from rcdm.pipeline import DEFAULT_MODEL  # noqa: E402

pytestmark = pytest.mark.slow  # a live Gradio server in this process

TINY = dict(num_samples=2, steps=2, guidance=1.0, seed=0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def no_progress(*args, **kwargs):
    """Stands in for gr.Progress when a handler is called directly, outside a request."""


@pytest.fixture(scope="module")
def shipped_dir(tmp_path_factory, tiny_pipeline_dir, tiny_encoder_dir, cifar_test_images):
    """A stand-in for pretrained/: two tiny models (backbone, projector) and two example images."""
    root = tmp_path_factory.mktemp("pretrained")
    (root / "tiny-backbone").symlink_to(tiny_pipeline_dir, target_is_directory=True)
    make_tiny_pipeline(root / "tiny-projector", tiny_encoder_dir, layer="projector")
    from rcdm.prior import Prior, PriorMLP  # an untrained prior: the Dream tab only needs one to exist

    torch.manual_seed(0)
    Prior(PriorMLP(16, width=16, num_blocks=1)).save_pretrained(root / "tiny-projector" / "prior")
    (root / "examples").mkdir()
    for i, im in enumerate(cifar_test_images[0][:2]):
        im.save(root / "examples" / f"ex{i}.png")
    return root


@pytest.fixture(scope="module")
def server(shipped_dir):
    """The app as `rcdm app` serves it, with the models and examples found in `shipped_dir`."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RCDM_PRETRAINED", str(shipped_dir))
        demo = launch_app(None, port=free_port(), prevent_thread_lock=True, quiet=True)
    yield demo
    demo.close()


@pytest.fixture(scope="module")
def client(server):
    return Client(server.local_url, verbose=False)


@pytest.fixture(scope="module")
def pngs(shipped_dir):
    return sorted(str(p) for p in (shipped_dir / "examples").glob("*.png"))


def gallery_sizes(gallery):
    from PIL import Image

    return [Image.open(item["image"]).size for item in gallery]


def test_every_endpoint(client, server, pngs):
    assert server.rcdm_models.names == ["tiny-backbone", "tiny-projector"]  # found in pretrained/, sorted
    assert {"/sample", "/compare", "/interpolate"} <= set(client.view_api(return_format="dict")["named_endpoints"])
    a, b = handle_file(pngs[0]), handle_file(pngs[1])

    out = client.predict(a, "tiny-backbone", *TINY.values(), api_name="/sample")
    assert gallery_sizes(out) == [(32, 32)] * 3 and out[0]["caption"].startswith("input")
    pipe, lock = server.rcdm_models.get("tiny-backbone")
    with lock:  # one seeding scheme: the page shows what pipe(..., seed=0) and `rcdm sample --seed 0` draw
        want = pipe(images=[open_image(pngs[0])], num_samples=2, num_inference_steps=2, guidance_scale=1.0, seed=0)
    assert [Image.open(item["image"]).convert("RGB").tobytes() for item in out[1:]] == [
        im.tobytes() for im in want.images]

    left, right = client.predict(a, "tiny-backbone", "tiny-projector", *TINY.values(), api_name="/compare")
    assert len(left) == len(right) == 3

    strip = client.predict(a, b, "tiny-projector", 3, "slerp", 2, 1.0, 0, api_name="/interpolate")
    assert [s["caption"] for s in strip] == ["A (input)", "t=0.00", "t=0.50", "t=1.00", "B (input)"]

    dreams = client.predict(None, "tiny-projector", 3, 1.0, 2, 1.0, 0, api_name="/dream")
    assert gallery_sizes(dreams) == [(32, 32)] * 3 and dreams[0]["caption"] == "dream 1"
    near = client.predict(a, "tiny-projector", 2, 0.5, 2, 1.0, 0, api_name="/dream")
    assert len(near) == 2
    with pytest.raises(AppError, match="has no prior"):
        client.predict(None, "tiny-backbone", 2, 1.0, 2, 1.0, 0, api_name="/dream")
    with pytest.raises(AppError, match="Strength"):
        client.predict(None, "tiny-projector", 2, 1.5, 2, 1.0, 0, api_name="/dream")


def test_interpolation_shares_noise_across_points(server, pngs):
    """From A to A every point has the same embedding, so with the same noise all samples must be identical."""
    tab = InterpolateTab(server.rcdm_models)
    strip = tab.interpolate(pngs[0], pngs[0], "tiny-backbone", 3, "lerp", 2, 1.0, 7, progress=no_progress)
    samples = [Image.open(path).tobytes() for path, _ in strip[1:-1]]
    assert all(s == samples[0] for s in samples[1:])
    h0, h1 = torch.randn(2, 16).unbind()
    for mode in ("lerp", "slerp"):
        path = interpolate_embeddings(h0, h1, 5, mode)
        assert torch.allclose(path[0], h0, atol=1e-5) and torch.allclose(path[-1], h1, atol=1e-5)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_with_size(w: int, h: int) -> bytes:
    """A PNG whose header claims w x h pixels (the data is a 1x1 image): too large, yet costs nothing to make."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8-bit RGB
    body = png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\0\0\0\0")) + png_chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


@pytest.mark.parametrize("kind, message", [
    ("text", "not a readable image"),
    ("truncated", "Is the file complete?"),
    ("huge", "the limit is 16.8 megapixels"),
])
def test_bad_upload_gives_clear_error(client, pngs, tmp_path, kind, message):
    path = tmp_path / f"{kind}.png"
    if kind == "text":
        path.write_text("this is not an image\n" * 20)
    elif kind == "truncated":
        data = open(pngs[0], "rb").read()
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(png_with_size(5000, 4000))
    with pytest.raises(AppError, match=message):
        client.predict(handle_file(str(path)), "tiny-backbone", *TINY.values(), api_name="/sample")


def test_limits_are_checked_on_the_server(client, pngs, tmp_path):
    """Requests that no widget would send are refused by the handlers, with messages that say why."""
    a = handle_file(pngs[0])
    for bad, message in ((dict(num_samples=999), "Number of samples must be a whole number from 1 to 16"),
                         (dict(steps=1000), "Steps must be"), (dict(steps=2.5), "Steps must be"),
                         (dict(guidance=99.0), "Guidance must be"), (dict(seed=-1), "Seed must be")):
        with pytest.raises(AppError, match=message):
            client.predict(a, "tiny-backbone", *{**TINY, **bad}.values(), api_name="/sample")
    with pytest.raises(AppError, match="Unknown model '/etc'"):  # only the models given at start-up
        client.predict(a, "/etc", *TINY.values(), api_name="/sample")
    with pytest.raises(AppError, match="Points must be"):
        client.predict(a, a, "tiny-backbone", 99, "lerp", 2, 1.0, 0, api_name="/interpolate")
    big = tmp_path / "big.png"
    with open(big, "wb") as f:
        f.truncate(MAX_FILE_BYTES + 1)  # sparse: no disk, no time (gradio's upload route refuses it too)
    with pytest.raises(gr.Error, match="the limit is 10 MB"):
        load_upload(str(big))


def test_invariance_endpoint(client, server, pngs, tmp_path):
    """x, K samples from f(x), t(x), K from f(t(x)), and rcdm.analysis.invariance's score on the same samples."""
    from PIL import Image

    from rcdm.analysis import invariance
    from rcdm.evaluate import Sampling

    assert "/invariance" in client.view_api(return_format="dict")["named_endpoints"]
    gallery, score, note = client.predict(handle_file(pngs[0]), "tiny-backbone", "flip", *TINY.values(),
                                          api_name="/invariance")
    assert gallery_sizes(gallery) == [(32, 32)] * 6
    assert [g["caption"] for g in gallery] == ["x (as the encoder sees it)", "from f(x) 1", "from f(x) 2",
                                               "t(x): flip", "from f(t(x)) 1", "from f(t(x)) 2"]
    assert 0 <= score <= 1 and note.startswith(f"Score {score:.2f} for a horizontal flip")
    pipe, lock = server.rcdm_models.get("tiny-backbone")
    with lock:  # the analysis itself, on the same image, samples and noise, gives the same score
        direct = invariance(pipe, [Image.open(pngs[0])], ["flip"], run=Sampling(2, 2, None, 1.0, 0))
    assert score == pytest.approx(direct.numbers["models"]["model"]["scores"]["flip"], abs=1e-3)
    assert gallery_columns(2).columns == 3  # the page lays the gallery out as one row per condition

    gray = tmp_path / "gray.png"  # grayscale leaves a gray image as it is: no score, and a message that says why
    Image.new("RGB", (40, 40), (128, 128, 128)).save(gray)
    gallery, score, note = client.predict(handle_file(str(gray)), "tiny-projector", "grayscale", *TINY.values(),
                                          api_name="/invariance")
    assert len(gallery) == 6 and score is None and "nothing to keep or discard" in note


def test_invariance_refuses_bad_requests(client, pngs, tmp_path):
    a = handle_file(pngs[0])
    with pytest.raises(AppError, match=re.escape("Augmentation must be one of: flip, crop, hue, grayscale, "
                                                 "rotation, blur; got 'solarize'.")):
        client.predict(a, "tiny-backbone", "solarize", *TINY.values(), api_name="/invariance")
    with pytest.raises(AppError, match="Number of samples must be a whole number from 1 to 16"):
        client.predict(a, "tiny-backbone", "flip", *{**TINY, "num_samples": 99}.values(), api_name="/invariance")
    text = tmp_path / "text.png"
    text.write_text("this is not an image\n")
    with pytest.raises(AppError, match="not a readable image"):
        client.predict(handle_file(str(text)), "tiny-backbone", "flip", *TINY.values(), api_name="/invariance")


def test_twenty_concurrent_requests_complete(client, pngs):
    start = time.monotonic()
    jobs = [client.submit(handle_file(pngs[i % 2]), "tiny-backbone", 1, 2, 1.0, i, api_name="/sample")
            for i in range(20)]
    results = [job.result(timeout=60) for job in jobs]
    assert all(len(r) == 2 for r in results) and time.monotonic() - start < 60


def test_cli_refuses_missing_or_broken_models(capsys, tmp_path):
    """Checked before serving: one clear line and exit code 2, not a traceback and not a page that fails later."""
    assert cli_main(["app", "--model", str(tmp_path / "nope")]) == 2
    assert "no RCDM pipeline" in capsys.readouterr().err
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "rcdm_pipeline.json").write_text('{"format": "something-else"}')
    assert cli_main(["app", "--model", str(tmp_path / "broken")]) == 2
    err = capsys.readouterr().err  # refused when its recorded sampling defaults are read, before any weights load
    assert "broken: unsupported pipeline format 'something-else'" in err and "Traceback" not in err


def test_shipped_default_model_samples(cifar_test_images, tmp_path):
    demo = launch_app(None, port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        assert demo.rcdm_models.names[0] == DEFAULT_MODEL
        path = tmp_path / "in.png"
        cifar_test_images[0][0].save(path)
        out = Client(demo.local_url, verbose=False).predict(handle_file(str(path)), DEFAULT_MODEL, 2, 2, 1.0, 0,
                                                            api_name="/sample")
        assert len(out) == 3
    finally:
        demo.close()
