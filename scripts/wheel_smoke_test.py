"""Smoke test of an installed quadnet (scripts/test_wheel.sh runs it in a venv holding only torch
and the wheel or the sdist's build, from outside the source tree): import, forward, backward, a
GLRAMSGD step, torch.export; and that it holds its C++ package (library, headers, CMake config)."""
import os
import sys

import torch

import quadnet

source = os.path.join(sys.argv[1], "python") + os.sep
assert not os.path.abspath(quadnet.__file__).startswith(source), quadnet.__file__  # the installed package
assert "+pt" in quadnet.__version__, quadnet.__version__  # its build names the torch it compiled against
for path in (quadnet.utils.library_path, os.path.join(quadnet.utils.include_path, "quadnet", "quadnet.h"),
             os.path.join(quadnet.utils.cmake_prefix_path, "quadnet", "quadnetConfig.cmake")):
    assert os.path.isfile(path), f"the installed package lacks {path}"
torch.manual_seed(0)
model = torch.nn.Sequential(quadnet.nn.QuadraticLayer(8, 4, rank=3), torch.nn.Linear(4, 2))
opt = quadnet.optim.GLRAMSGD(model, lr=0.05, momentum=0.9)
x = torch.randn(16, 8)
loss = model(x).pow(2).mean()
loss.backward()
opt.step()
W = model[0].weight
torch.testing.assert_close(W @ W.T, torch.eye(3), rtol=0, atol=1e-5)
program = torch.export.export(model.eval(), (x,))
assert any("quadnet.quadratic_form" in str(n.target) for n in program.graph.nodes)
torch.testing.assert_close(program.module()(x), model(x))
print(f"   quadnet {quadnet.__version__} from {os.path.dirname(quadnet.__file__)}: "
      f"forward, backward, GLRAMSGD step, export OK (loss {loss.item():.4f})")
