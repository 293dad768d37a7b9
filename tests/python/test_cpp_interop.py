"""Python <-> C++: weights and TorchScript models move to a LibTorch app linking quadnet."""
import subprocess

import torch
import torch.nn.functional as F

import quadnet
from quadnet.nn import DiagonalQuadraticLayer, QuadraticLayer


def run_app(app, *args):
    done = subprocess.run([str(app), *map(str, args)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done


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


def test_polynomial_and_overparam_state_dicts_load_into_cpp_modules(quadnet_app, tmp_path):
    model = torch.nn.Sequential(quadnet.nn.PolynomialBlock(8, 6, 3), quadnet.nn.OverparamLinear(6, 4, 3),
                                quadnet.nn.PolynomialBlock(4, 3, 2))
    x = torch.randn(9, 8)
    quadnet.save_state_dict(model, tmp_path / "weights.pt")
    torch.save(x, tmp_path / "x.pt")
    run_app(quadnet_app, "state-dict", "polynomial:8:6:3,overparam:6:4:3,polynomial:4:3:2", tmp_path / "weights.pt",
            tmp_path / "x.pt", tmp_path / "y.pt")
    with torch.no_grad():
        torch.testing.assert_close(torch.load(tmp_path / "y.pt"), model(x), rtol=1e-6, atol=1e-6)


def test_convolutional_state_dicts_load_into_cpp_modules(quadnet_app, tmp_path):
    model = torch.nn.Sequential(quadnet.nn.PolynomialConvBlock(2, 4, 3, rank=3, padding=1),
                                quadnet.nn.PolynomialConvBlock(4, 5, 3, rank=3, padding=1, rank_norm=True),
                                quadnet.nn.QuadraticConv2d(5, 3, 3, rank=2, padding=1))
    with torch.no_grad():
        model[1].rank_norm.weight.uniform_(0.5, 1.5)  # not the init: the C++ block must load and use them
        model[1].rank_norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(3, 2, 7, 6)
    quadnet.save_state_dict(model, tmp_path / "weights.pt")
    torch.save(x, tmp_path / "x.pt")
    spec = "polyconv:2:4:3,polyconv-rank-norm:4:5:3,quadconv:5:3:2"
    run_app(quadnet_app, "state-dict", spec, tmp_path / "weights.pt", tmp_path / "x.pt", tmp_path / "y.pt")
    with torch.no_grad():
        torch.testing.assert_close(torch.load(tmp_path / "y.pt"), model(x), rtol=1e-6, atol=1e-6)


def write_idx_gz(path, array):
    import gzip

    import numpy as np
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


def test_scripted_deep_polynomial_classifier_predicts_identically_in_cpp(quadnet_app, tmp_path):
    """The deployment path of the main demo: pixels in, classes out, same predictions in C++."""
    net = quadnet.nn.DeepPolynomialNet([784, 16, 10], ranks=[6, 4])
    opt = quadnet.optim.GLRAMSGD(net, lr=0.01, max_iter=3)
    images = torch.randint(0, 256, (300, 28, 28), dtype=torch.uint8)
    labels = torch.randint(0, 10, (300,))
    x = images.reshape(300, -1).float() / 255.0
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(net(x), labels).backward()
        opt.step()
    net.eval()
    torch.jit.script(net).save(str(tmp_path / "model.pt"))
    write_idx_gz(tmp_path / "images.gz", images.numpy())
    write_idx_gz(tmp_path / "labels.gz", labels.numpy())
    done = run_app(quadnet_app, "classify", tmp_path / "model.pt", tmp_path / "images.gz", tmp_path / "labels.gz",
                   tmp_path / "pred.pt")
    with torch.no_grad():
        expected = net(x).argmax(1)
    predictions = torch.load(tmp_path / "pred.pt")
    assert torch.equal(predictions, expected)
    accuracy = float((expected == labels).float().mean())
    reported = float(done.stdout.split("accuracy")[1])
    assert "classified 300 images" in done.stdout and abs(reported - accuracy) < 1e-6


def test_aoti_package_runs_in_cpp(quadnet_app, tmp_path):
    """torch.export + AOTInductor: the package runs in the C++ app as it runs in Python."""
    model = torch.nn.Sequential(trained_model(), quadnet.nn.PolynomialBlock(4, 3, 2, norm=True)).eval()
    x = torch.randn(9, 8)
    program = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    package = torch._inductor.aoti_compile_and_package(program, package_path=str(tmp_path / "model.pt2"))
    x = torch.randn(13, 8)  # another batch size: the batch dim is dynamic
    torch.save(x, tmp_path / "x.pt")
    run_app(quadnet_app, "aoti", package, tmp_path / "x.pt", tmp_path / "y.pt")
    y_cpp = torch.load(tmp_path / "y.pt")
    with torch.no_grad():
        torch.testing.assert_close(y_cpp, torch._inductor.aoti_load_package(package)(x), rtol=0, atol=0)
        torch.testing.assert_close(y_cpp, model(x))  # Inductor's kernels against eager: float32 tolerance


def test_cpp_app_rejects_a_non_package(quadnet_app, tmp_path):
    torch.save(torch.randn(3, 8), tmp_path / "x.pt")
    done = subprocess.run([str(quadnet_app), "aoti", str(tmp_path / "model.pt"), str(tmp_path / "x.pt"),
                           str(tmp_path / "y.pt")], capture_output=True, text=True)
    assert done.returncode == 1 and "MODEL must be a .pt2 package" in done.stderr


def test_the_installed_package_holds_the_public_headers_only(quadnet_app):
    """scripts/setup.sh installs build/install (the app above builds against it): quadnet.h and
    the headers it includes are there, the internals (detail.h, solvers.h) are not."""
    import pathlib
    include = pathlib.Path(__file__).resolve().parents[2] / "build" / "install" / "include" / "quadnet"
    installed = {str(p.relative_to(include)) for p in include.rglob("*.h")}
    assert {"quadnet.h", "ops/quadratic_form.h", "optim/glram_sgd.h", "linalg/tangent_step.h"} <= installed
    assert not [name for name in installed if name.endswith(("detail.h", "solvers.h"))], installed
