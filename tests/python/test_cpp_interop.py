"""Python <-> C++: weights and TorchScript models move to a LibTorch app linking quadnet."""
import subprocess

import torch
import torch.nn.functional as F

import quadnet
from quadnet.nn import DiagonalQuadraticLayer, QuadraticLayer


def run_app(app, *args):
    done = subprocess.run([str(app), *map(str, args)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def trained_model():
    model = torch.nn.Sequential(QuadraticLayer(8, 6, 3), DiagonalQuadraticLayer(6, 4, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, target = torch.randn(32, 8), torch.randint(0, 4, (32,))
    for _ in range(5):
        opt.zero_grad()
        F.cross_entropy(model(x), target).backward()
        opt.step()
    return model


def test_state_dict_loads_into_cpp_modules(quadnet_app, tmp_path):
    model = trained_model()
    x = torch.randn(11, 8)
    quadnet.save_state_dict(model, tmp_path / "weights.pt")
    torch.save(x, tmp_path / "x.pt")
    run_app(quadnet_app, "state-dict", "quadratic:8:6:3,diagonal:6:4:2", tmp_path / "weights.pt",
            tmp_path / "x.pt", tmp_path / "y.pt")
    with torch.no_grad():
        torch.testing.assert_close(torch.load(tmp_path / "y.pt"), model(x), rtol=0, atol=0)


def test_scripted_model_runs_in_cpp(quadnet_app, tmp_path):
    model = trained_model()
    x = torch.randn(2, 5, 8)
    torch.jit.script(model).save(str(tmp_path / "model.pt"))
    torch.save(x, tmp_path / "x.pt")
    run_app(quadnet_app, "script", tmp_path / "model.pt", tmp_path / "x.pt", tmp_path / "y.pt")
    with torch.no_grad():
        torch.testing.assert_close(torch.load(tmp_path / "y.pt"), model(x), rtol=0, atol=0)


def test_cpp_app_reports_bad_weights(quadnet_app, tmp_path):
    quadnet.save_state_dict(torch.nn.Sequential(QuadraticLayer(8, 6, 2)), tmp_path / "w.pt")
    torch.save(torch.randn(3, 8), tmp_path / "x.pt")
    done = subprocess.run([str(quadnet_app), "state-dict", "quadratic:8:6:3", str(tmp_path / "w.pt"),
                           str(tmp_path / "x.pt"), str(tmp_path / "y.pt")], capture_output=True, text=True)
    assert done.returncode == 1
    assert "has shape [6, 2, 2] in the file but [6, 3, 3] in the module" in done.stderr
