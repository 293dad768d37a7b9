"""The reproduction examples run end to end (tiny budgets; the README's figures come from full runs)."""
import json
import os
import subprocess
import sys

import torch

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def run_example(name, *args):
    done = subprocess.run([sys.executable, os.path.join(ROOT, "examples", name), *args],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_four_way_comparison_runs_and_reports_every_configuration(tmp_path):
    out = run_example("four_way_comparison.py", "--datasets", "digits", "--steps", "60", "--seeds", "2",
                      "--eval-every", "30", "--out", str(tmp_path))
    results = json.load(open(tmp_path / "results.json"))["results"]["digits"]
    summary = results["summary"]
    assert len(summary) == 10 and os.path.getsize(tmp_path / "curves.png") > 0
    for config, row in summary.items():
        assert row["seeds"] == 2 and 0 <= row["test_accuracy_final"][0] <= 1, config
        assert config in out
    # the zero-init projected model leaves the saddle where SGD could not (digits learn fast)
    assert summary["symmetric r=25, GLRAMSGD, W=0"]["test_accuracy_final"][0] > 0.8


def test_memory_wall_runs_and_measures(tmp_path):
    run_example("memory_wall.py", "--steps", "20", "--eval-every", "10", "--out", str(tmp_path))
    results = json.load(open(tmp_path / "results.json"))
    assert [r["optimizer"] for r in results["runs"]] == ["GLRAMSGD", "GLRAMSGD-full", "SGD", "Adam"]
    assert results["canonical_float64_MB"] > 600
    assert results["dense_projection_peak_extra_MB"] > results["canonical_float64_MB"]
    for glram in results["runs"][:2]:  # neither projection ever holds the n·d² entries
        assert glram["peak_extra_MB_over_run"] < 50, glram["optimizer"]


def test_random_shift_translates_each_image_by_its_own_offset():
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    from polynomial_convnet_fashion_mnist import random_shift

    x = torch.rand(6, 784)
    shifted = random_shift(x, 2, torch.Generator().manual_seed(0))
    offsets = torch.randint(0, 5, (2, 6), generator=torch.Generator().manual_seed(0)) - 2
    for image, out, dy, dx in zip(x.view(6, 28, 28), shifted.view(6, 28, 28), *offsets.tolist()):
        reference = torch.zeros(28, 28)  # out(i, j) = image(i + dy, j + dx), 0 outside the image
        reference[max(0, -dy):28 - max(0, dy), max(0, -dx):28 - max(0, dx)] = \
            image[max(0, dy):28 + min(0, dy), max(0, dx):28 + min(0, dx)]
        assert torch.equal(out, reference), (dy, dx)
    assert not torch.equal(shifted, x)  # some of the six offsets are non-zero


def test_polynomial_convnet_example_runs_exports_and_classifies_in_cpp(tmp_path, quadnet_app):
    run_example("polynomial_convnet_fashion_mnist.py", "--train-size", "4096", "--epochs", "1", "--search-epochs",
                "1", "--lrs", "0.002", "0.003", "--shift", "2", "--label-smoothing", "0.1", "--out", str(tmp_path))
    results = json.load(open(tmp_path / "results.json"))
    runs = results["runs"]
    assert set(runs) == {"polynomial", "ReLU CNN"} and os.path.getsize(tmp_path / "curves.png") > 0
    assert (results["shift"], results["label_smoothing"]) == (2, 0.1)
    for run in runs.values():  # both lrs tried on the validation images, the better one kept
        search = run["search_validation_accuracy"]
        assert set(search) == {"0.002", "0.003"} and run["lr"] == float(max(search, key=search.get))
    poly, relu = runs["polynomial"], runs["ReLU CNN"]
    assert abs(poly["parameters"] - relu["parameters"]) < 0.02 * poly["parameters"]  # same size
    assert poly["final_test_accuracy"] > 0.6 and relu["final_test_accuracy"] > 0.6  # 32 steps learn something
    cpp = results["cpp_check"]  # the exported polynomial convnet, classified by the C++ app
    assert cpp is not None and cpp["images"] == 10000
    assert cpp["identical_predictions"] == 10000


def test_polynomial_convnet_example_builds_the_quadratic_head_or_the_linear_one(tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    from polynomial_convnet_fashion_mnist import polynomial_net

    import quadnet
    net = polynomial_net()
    assert isinstance(net[-1], quadnet.nn.PolynomialBlock) and net[-1].in_features == 24 * 7 * 7
    assert isinstance(polynomial_net(quadratic_head=False)[-1], torch.nn.Linear)
    run_example("polynomial_convnet_fashion_mnist.py", "--linear-head", "--models", "polynomial", "--train-size", "512",
                "--epochs", "1", "--lrs", "0.003", "--no-export", "--out", str(tmp_path))
    results = json.load(open(tmp_path / "results.json"))
    assert results["quadratic_head"] is False
    assert results["runs"]["polynomial"]["parameters"] == sum(
        p.numel() for p in polynomial_net(quadratic_head=False).parameters())


def test_polynomial_convnet_example_ablates_the_recipe_and_repeats_seeds(tmp_path):
    out = run_example("polynomial_convnet_fashion_mnist.py", "--train-size", "1024", "--epochs", "1", "--lrs", "0.003",
                      "--seeds", "2", "--ablation", "--weight-decay", "0.05", "--no-export", "--out", str(tmp_path))
    results = json.load(open(tmp_path / "results.json"))
    assert results["weight_decay"] == 0.05
    ablation = results["ablation"]
    assert list(ablation) == ["plain", "random shift (2 px)", "label smoothing 0.1", "shift + smoothing",
                              "weight decay 0.1", "polynomial without rank_norm",
                              "polynomial with a linear head (64 channels)"]
    for row in ("polynomial without rank_norm", "polynomial with a linear head (64 channels)"):
        assert list(ablation[row]) == ["polynomial"]  # an architecture row: that net only
    for model in ("polynomial", "ReLU CNN"):
        finals = [row[model] for row in ablation.values() if model in row]
        assert all(0 < acc <= 1 for acc in finals) and len(set(finals)) > 1, model  # each recipe trains differently
    assert "ablation (Adam lr 0.003" in out
    for name, run in results["runs"].items():
        seeds = run["seeds"]  # seed 0 is the plotted run; seed 1 another init, batch order and shifts
        a, b = seeds["final_test_accuracy"]
        assert a == run["final_test_accuracy"] and a != b, name
        assert abs(seeds["mean"] - (a + b) / 2) < 1e-12 and abs(seeds["std"] - abs(a - b) / 2 ** 0.5) < 1e-12, name
    assert "2 seeds" in results["verdict"]


def test_polynomial_convnet_example_decays_weights_decoupled_for_adam_and_as_l2_for_the_sgds():
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    from polynomial_convnet_fashion_mnist import OPTIMIZERS

    lr, wd = 0.01, 0.1
    for name in ("adam", "sgd", "glramsgd"):  # GLRAMSGD steps a plain Linear as SGD does
        model = torch.nn.Linear(3, 2)
        before = [p.detach().clone() for p in model.parameters()]
        opt = OPTIMIZERS[name](model, lr, wd)
        for p in model.parameters():
            p.grad = torch.zeros_like(p)  # no loss gradient: only the decay moves the weights
        opt.step()
        for p, p0 in zip(model.parameters(), before):  # both: p ← (1 − lr·wd) p on the first step
            assert torch.allclose(p, (1 - lr * wd) * p0, rtol=0, atol=1e-7), name
    model = torch.nn.Linear(3, 2)
    model.weight.grad, model.bias.grad = torch.ones(2, 3), torch.ones(2)
    adam = OPTIMIZERS["adam"](model, lr, wd)  # decoupled: the decay does not enter Adam's moments
    adam.step()
    assert torch.allclose(adam.state[model.weight]["exp_avg"], 0.1 * torch.ones(2, 3))


def test_polynomial_convnet_example_refuses_glramsgd_on_the_rank_normed_net(tmp_path):
    done = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "polynomial_convnet_fashion_mnist.py"),
                           "--optimizers", "glramsgd", "--out", str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and "--optimizers glramsgd needs --no-rank-norm" in done.stderr
    assert not os.listdir(tmp_path)  # refused before any training


def test_polynomial_convnet_example_compares_optimizers_on_the_polynomial_net(tmp_path):
    out = run_example("polynomial_convnet_fashion_mnist.py", "--train-size", "2048", "--epochs", "1",
                      "--search-epochs", "1", "--lrs", "0.002", "--glramsgd-lrs", "0.01", "--sgd-lrs", "0.01",
                      "--optimizers", "adam", "glramsgd", "sgd", "--models", "polynomial", "--no-rank-norm",
                      "--no-export", "--out", str(tmp_path))
    runs = json.load(open(tmp_path / "results.json"))["runs"]
    assert set(runs) == {"polynomial", "polynomial, GLRAMSGD", "polynomial, SGD"}
    assert [runs[k]["optimizer"] for k in sorted(runs)] == ["Adam", "GLRAMSGD", "SGD"]
    for name, run in runs.items():
        assert run["model"] == "polynomial" and run["final_test_accuracy"] > 0.5, name  # 16 steps learn something
        assert run["search_validation_accuracy"] == {}, name  # one lr each: used without a search
    # GLRAMSGD projects the quadratic convolutions (a different trajectory from SGD's on the same batches)
    assert runs["polynomial, GLRAMSGD"]["history"]["train_loss"] != runs["polynomial, SGD"]["history"]["train_loss"]
    assert "GLRAMSGD" in out.split("verdict:")[-1]


def test_deep_polynomial_depth_summarises_seeds_and_the_depth_gain():
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    from deep_polynomial_depth import cell, depth_gain

    def runs(*accuracies):
        return [{"seed": i, "accuracy": a, "nan_at_step": None if a is not None else 7}
                for i, a in enumerate(accuracies)]
    two = torch.tensor([0.90, 0.80, 0.75], dtype=torch.float64)
    four = torch.tensor([0.95, 0.91, 0.80], dtype=torch.float64)
    assert cell(runs(*two.tolist())) == f"{two.mean():.3f} ± {two.std():.3f}"  # std over seeds (n - 1)
    assert cell(runs(0.9, None)) == "0.900 / NaN@7" and cell(runs(0.9, None, 0.8)) == "NaN in 1 of 3"
    gain, spread = depth_gain(runs(*two.tolist()), runs(*four.tolist()))
    assert abs(gain - float(four.mean() - two.mean())) < 1e-12
    assert abs(spread - float((two.var() / 3 + four.var() / 3).sqrt())) < 1e-12
    assert depth_gain(runs(0.9), runs(0.8))[1] is None  # one seed: no spread


def test_deep_polynomial_depth_study_runs_and_reports_every_setting(tmp_path):
    out = run_example("deep_polynomial_depth.py", "--steps", "300", "--seeds", "1", "--fmnist-epochs", "0",
                      "--threads", "1", "--out", str(tmp_path))
    results = json.load(open(tmp_path / "results.json"))
    runs = results["results"]["digits"]["runs"]
    assert set(runs) == {"none", "norm", "quadratic_norm (default)", "quadratic_norm, no zero init", "both"}
    assert os.path.getsize(tmp_path / "accuracy.png") > 0 and "Verdict" in out
    default = runs["quadratic_norm (default)"]
    assert all(r["accuracy"] is not None and r["accuracy"] > 0.8 for rs in default.values() for r in rs), default
    assert runs["none"]["SGD 4"][0]["accuracy"] is None  # without a norm SGD diverges (NaN)
