"""The rcdm Gradio app: draw many images from one frozen embedding and see what the representation keeps.

Launch it with `rcdm app [--model DIR ...]`, or `python app/app.py [--model DIR ...]` (the launcher a Gradio Space
runs). It serves on 127.0.0.1:7860, with no share link unless you pass `--share`. One module per tab:

- `sample`: samples from one image's embedding;
- `compare`: two models (for example backbone and projector) on the same image, side by side;
- `interpolate`: samples along the path between two images' embeddings, with the same noise at every point;
- `invariance`: samples from f(x) and from f(t(x)) for one augmentation t, and a score: does the representation
  keep t (1) or discard it (0)?
- `dream`: images from embeddings drawn from the model's prior p(h);
- `report`: a small `rcdm report` for the chosen models, shown on the page and offered as one self-contained HTML
  file. Its images are the shipped examples, or the data spec in $RCDM_REPORT_DATA (set by whoever starts the
  server: a client never names a path).

`blocks` assembles them (`build_app`, `launch_app`); `models` loads the pipelines, `checks` holds the server-side
limits, `widgets` the controls the tabs share, `flags` the command-line flags (no gradio, no torch: `rcdm --help`
reads them). The app uses only public names of `rcdm`.

Scripting with gradio_client
----------------------------
Every tab is also an API endpoint: `/sample`, `/compare`, `/interpolate`, `/invariance`, `/dream` and `/report`.
A gallery comes back as a list of `{"image": path, "caption": str}` dicts, with the input as the model sees it
first. The server checks the same limits as the widgets: at most 16 samples, 100 steps, guidance from 0 to 10, 16
interpolation points, one of the six augmentations, 1 to 4 distinct models and 4 to 32 images for a report, and
uploads of at most 10 MB and 4096 x 4096 pixels.

    from gradio_client import Client, handle_file

    client = Client("http://127.0.0.1:7860/")
    gallery = client.predict(handle_file("cat.png"), "rcdm-cifar10-backbone", 8, 20, 1.0, 0, api_name="/sample")
    paths = [item["image"] for item in gallery[1:]]          # gallery[0] is the input at the model's resolution

    a, b = client.predict(handle_file("cat.png"), "rcdm-cifar10-backbone", "rcdm-cifar10-projector", 8, 20, 1.0, 0,
                          api_name="/compare")             # one gallery per model, the same noise for both
    strip = client.predict(handle_file("cat.png"), handle_file("dog.png"), "rcdm-cifar10-backbone", 8, "lerp",
                           20, 1.0, 0, api_name="/interpolate")  # A, t = 0 ... 1, B
    gallery, score, note = client.predict(handle_file("cat.png"), "rcdm-cifar10-backbone", "flip", 8, 20, 1.0, 0,
                                          api_name="/invariance")  # x, 8 samples from f(x), t(x), 8 from f(t(x))
    page, html_file = client.predict(["rcdm-cifar10-backbone", "rcdm-cifar10-projector"], 16, 0,
                                     api_name="/report")   # a small `rcdm report`: the page, and it as one file

The augmentations are those of `rcdm.analysis.AUGMENTATIONS` (flip, crop, hue, grayscale, rotation, blur) at the
fixed strengths of `rcdm.analysis.AugmentParams`. The score is `rcdm.analysis.invariance` on this one image: 1 = the
samples from f(t(x)) show t as much as t(x) does (the representation keeps t), 0 = they look like the samples from
f(x) (it discards t); None when t barely changes the image, with the reason in `note`.

`client.view_api()` lists the parameters of each endpoint.
"""
_LAZY = {"build_app": "blocks", "launch_app": "blocks", "main": "blocks", "add_app_arguments": "flags"}


def __getattr__(name):  # gradio and torch load on first use, so `rcdm app --help` stays instant
    if name not in _LAZY:
        raise AttributeError(f"module 'rcdm.app' has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f".{_LAZY[name]}", __name__), name)


__all__ = ["add_app_arguments", "build_app", "launch_app", "main"]
