"""The independent judge (rcdm.judge), its recipe (tools/train_judge.py) and `rcdm evaluate --classifier`."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from rcdm import RCDMPipeline
from rcdm.evaluate import evaluate
from rcdm.judge import JudgeNet, load_judge, save_judge
from rcdm.metrics import classifier_scores, frechet_distance
from rcdm.sampling import Sampling

ROOT = Path(__file__).resolve().parents[1]
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


@pytest.fixture(scope="module")
def tiny_judge(tmp_path_factory):
    torch.manual_seed(0)
    net = JudgeNet((8, 16, 16, 24)).eval()
    for m in net.modules():  # non-trivial BatchNorm statistics, so a lost buffer would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1), m.running_var.uniform_(0.5, 1.5)
    return net, save_judge(net, tmp_path_factory.mktemp("judge") / "j", MEAN, STD, {"test_accuracy": 0.5})


def test_saved_judge_reloads_as_the_same_function_with_flip_averaging(tiny_judge):
    net, path = tiny_judge
    judge = load_judge(path)
    x = torch.rand(5, 3, 32, 32)
    logits, feats = judge.classify(x)
    assert logits.shape == (5, 10) and feats.shape == (5, 24) and judge.info["test_accuracy"] == 0.5
    norm = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    half = {k: v.half().float() if v.is_floating_point() and "running_" not in k else v
            for k, v in net.state_dict().items()}  # the judge ships fp16 weights
    ref = JudgeNet((8, 16, 16, 24)).eval()
    ref.load_state_dict(half)
    with torch.no_grad():
        want = (ref(norm)[0] + ref(norm.flip(3))[0]) / 2
    torch.testing.assert_close(logits, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(judge.classify(x.flip(3))[0], logits, atol=1e-5, rtol=1e-5)  # mirror-invariant
    u8 = (x * 255).round().to(torch.uint8)
    torch.testing.assert_close(judge.classify(u8)[0], judge.classify(u8.float() / 255)[0])


def test_bad_judge_directories_get_one_clear_line(tiny_judge, tmp_path):
    _, path = tiny_judge
    with pytest.raises(FileNotFoundError, match="no judge at"):
        load_judge(tmp_path / "nothing")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((path / "config.json").read_text())
    (bad / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"model\.safetensors: cannot load judge weights"):
        load_judge(bad)
    (bad / "config.json").write_text(json.dumps({"arch": "resnet50"}))
    with pytest.raises(ValueError, match="is not a judge"):
        load_judge(bad)


def test_classifier_scores_by_hand():
    labels = torch.tensor([0, 1, 1, 0])
    logits_ref = torch.eye(3)[[0, 1, 2, 0]]  # source 2 misclassified
    logits_hat = torch.eye(3)[[0, 2, 1, 1, 2, 1, 0, 0]]  # K = 2: hits 1, 0 | 1, 1 | 0, 1 | 1, 1
    g = torch.Generator().manual_seed(0)
    f_hat, f_ref, f_real = torch.randn(8, 3, generator=g), torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    s = classifier_scores(logits_hat, f_hat, logits_ref, f_ref, labels, f_real)
    assert s["accuracy_samples"] == pytest.approx(6 / 8) and s["accuracy_sources"] == pytest.approx(3 / 4)
    assert s["fd"] == pytest.approx(frechet_distance(f_hat, f_ref)) and s["fd_real"] == pytest.approx(
        frechet_distance(f_real, f_ref))
    assert s["per_class"]["1"]["accuracy_samples"] == pytest.approx(3 / 4)
    assert s["per_class"]["1"]["accuracy_sources"] == pytest.approx(1 / 2)
    assert s["per_class"]["0"]["fd"] == pytest.approx(frechet_distance(f_hat[[0, 1, 6, 7]], f_ref[[0, 3]]))
    assert (s["n"], s["num_samples"], s["num_real"]) == (4, 8, 4)


def test_evaluate_reports_the_classifier_beside_its_accuracy_on_the_sources(tiny_pipeline_dir, tiny_judge, tiny_npz):
    pipe = RCDMPipeline.from_pretrained(tiny_pipeline_dir)
    judge = load_judge(tiny_judge[1])
    m = evaluate(pipe, f"{tiny_npz}:train", 12, Sampling(samples_per_image=2, steps=2), progress=False,
                 classifier=judge)
    c = m["classifier"]
    assert (c["n"], c["num_samples"], c["num_real"]) == (12, 24, 12)
    from rcdm.data import NpzImages

    ds = NpzImages(str(tiny_npz), "train")
    sources = torch.stack([ds[i][0] for i in range(12)])
    logits, _ = judge.classify(sources)
    want = (logits.argmax(1) == torch.tensor([ds[i][1] for i in range(12)])).double().mean().item()
    assert c["accuracy_sources"] == pytest.approx(want)
    assert 0 <= c["accuracy_samples"] <= 1 and c["fd"] > 0 and c["fd_real"] > 0
    assert evaluate(pipe, f"{tiny_npz}:train", 4, Sampling(steps=1), progress=False)["classifier"] == {
        "skipped": "no --classifier given"}


def test_judge_recipe_smoke_run_writes_a_loadable_judge(tmp_path, cifar_npz):
    spec = importlib.util.spec_from_file_location("train_judge", ROOT / "tools" / "train_judge.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    info = mod.main(["--data", str(cifar_npz), "--out", str(tmp_path / "j"), "--smoke", "--limit", "128"])
    judge = load_judge(tmp_path / "j")
    assert info["train_images"] == 128 and info["optimizer_steps"] == 2 and 0 <= info["test_accuracy"] <= 1
    assert judge.info["recipe"]["label_smoothing"] == 0.2 and judge.classify(torch.rand(2, 3, 32, 32))[0].shape == (2, 10)


def test_evaluate_command_takes_a_classifier(tiny_pipeline_dir, tiny_judge, tiny_npz, tmp_path, capsys):
    from rcdm.cli import main

    out = tmp_path / "m.json"
    assert main(["evaluate", "--model", str(tiny_pipeline_dir), "--data", f"{tiny_npz}:train", "--num-images", "6",
                 "--steps", "1", "--classifier", str(tiny_judge[1]), "--out", str(out)]) == 0
    c = json.loads(out.read_text())["classifier"]
    assert {"accuracy_samples", "accuracy_sources", "fd", "fd_real", "n"} <= set(c) and c["n"] == 6
    assert "of samples show their source's class" in capsys.readouterr().out


@pytest.mark.slow
def test_report_fidelity_shows_the_classifier(tiny_pipeline_dir, tiny_judge, tmp_path, cifar_npz):
    from rcdm.cli import main

    out = tmp_path / "report"
    assert main(["report", "--model", f"tiny={tiny_pipeline_dir}", "--data", f"{cifar_npz}:test", "--out", str(out),
                 "--num-images", "4", "--invariance-images", "2", "--memorization-images", "2", "--bank-size", "40",
                 "--steps", "1", "--dtype", "float32", "--quiet", "--augmentations", "flip",
                 "--classifier", str(tiny_judge[1])]) == 0
    view = json.loads((out / "report.json").read_text())["sections"]["fidelity"]["tiny"]
    rows = {r["what"]: r for r in view["rows"]}
    got = rows["classifier: samples of the source's class %"]
    assert got["n"] == 4 and "interval" in got and rows["classifier FD real vs sources"]["value"] > 0
    assert any("independent classifier" in s for s in view["sentences"])
    assert "classifier: accuracy on the sources %" in (out / "index.html").read_text()
