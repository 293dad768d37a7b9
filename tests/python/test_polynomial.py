"""Deep polynomial networks: PolynomialBlock, DeepPolynomialNet (docs/polynomial.rst)."""
import pytest
import torch
import torch.nn.functional as F
from quadnet_testing import DEVICES
from torch.autograd import gradcheck

import quadnet
from quadnet.nn import DeepPolynomialNet, PolynomialBlock


def fit(sizes, ranks, x, target, seeds=3):
    """Best relative MSE of a DeepPolynomialNet fitted with L-BFGS (float64) over a few seeds."""
    best = float("inf")
    for seed in range(seeds):
        torch.manual_seed(seed)
        net = DeepPolynomialNet(sizes, ranks, quadratic_norm=False, dtype=torch.float64)
        opt = torch.optim.LBFGS(net.parameters(), lr=1, max_iter=2000, tolerance_grad=1e-14,
                                tolerance_change=1e-16, history_size=50, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = F.mse_loss(net(x), target)
            loss.backward()
            return loss
        for _ in range(3):
            opt.step(closure)
        with torch.no_grad():
            best = min(best, float(F.mse_loss(net(x), target) / target.square().mean()))
    return best


def test_depth_two_fits_a_degree_four_polynomial_that_depth_one_cannot():
    torch.manual_seed(0)
    x = torch.rand(200, 2, dtype=torch.float64) * 3 - 1.5
    u, v = x[:, :1], x[:, 1:]
    target = u ** 4 - 2 * u * v ** 3 + v ** 2 - 0.5 * u  # degree 4 = 2^2
    one = fit([2, 1], [2], x, target)
    two = fit([2, 3, 1], [2, 3], x, target)
    assert two < 1e-12, two  # fitted to rounding
    assert one > 1e-2, one   # a quadratic cannot


def test_depth_two_represents_degree_four_exactly():
    """Hand-set weights: block 1 gives (u², v) (quadratic + skip), block 2 squares the first and adds v."""
    net = DeepPolynomialNet([2, 2, 1], [1, 1], quadratic_norm=False, dtype=torch.float64)
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        net[0].quadratic.weight.copy_(torch.tensor([[1.0, 0.0]]))
        net[0].quadratic.S[0, 0, 0] = 1.0          # h_0 = u²
        net[0].skip.weight.copy_(torch.tensor([[0.0, 0.0], [0.0, 1.0]]))  # h_1 = v
        net[1].quadratic.weight.copy_(torch.tensor([[1.0, 0.0]]))
        net[1].quadratic.S[0, 0, 0] = 1.0          # y = h_0² + h_1
        net[1].skip.weight.copy_(torch.tensor([[0.0, 1.0]]))
    x = torch.randn(10, 2, dtype=torch.float64)
    torch.testing.assert_close(net(x)[:, 0], x[:, 0] ** 4 + x[:, 1], rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_through_two_blocks(device):
    net = DeepPolynomialNet([4, 3, 2], [2, 2], norm=False, dtype=torch.float64, device=device)
    x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True, device=device)
    params = tuple(net.parameters())

    names = [n for n, _ in net.named_parameters()]
    # torch.func.functional_call in PyTorch 2.x, torch.nn.utils.stateless in 1.13
    functional_call = getattr(getattr(torch, "func", None), "functional_call", None) or \
        torch.nn.utils.stateless.functional_call

    def f(x, *ps):
        return functional_call(net, dict(zip(names, ps)), (x,))
    assert gradcheck(f, (x, *[p.detach().clone().requires_grad_(True) for p in params]))


def test_block_is_quadratic_plus_skip_and_counts_parameters():
    block = PolynomialBlock(5, 3, 2, quadratic_norm=False, dtype=torch.float64)
    x = torch.randn(4, 5, dtype=torch.float64)
    q = block.quadratic
    expected = torch.ops.quadnet.quadratic_form(x, q.weight, q.S) + q.bias + x @ block.skip.weight.T
    torch.testing.assert_close(block(x), expected, rtol=1e-12, atol=1e-12)
    assert block.degree == 2
    assert block.num_parameters() == 2 * 5 + 3 * 3 + 3 + 3 * 5
    assert PolynomialBlock(5, 3, 2, skip=False, quadratic_norm=False).num_parameters() == 2 * 5 + 3 * 3 + 3


def test_quadratic_norm_is_the_default_and_normalises_the_quadratic_term_alone():
    """y = BN(Quad(x)) + L x: batch statistics in training, the running ones in eval (an affine
    map of the quadratic term: still a polynomial); its shift replaces the quadratic layer's bias."""
    torch.manual_seed(0)
    block = PolynomialBlock(5, 3, 2, dtype=torch.float64)
    norm, q = block.quadratic_norm, block.quadratic
    assert norm is not None and norm.affine and q.bias is None
    assert block.num_parameters() == 2 * 5 + 3 * 3 + 2 * 3 + 3 * 5 == sum(
        p.numel() for p in block.parameters()) - 3 * (4 - 3)  # each S_i (2x2) counted once
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0)
        norm.bias.uniform_(-1.0, 1.0)
    x = torch.randn(2, 20, 5, dtype=torch.float64)  # leading dims: the statistics are over all of them
    quad = torch.ops.quadnet.quadratic_form(x, q.weight, q.S)
    flat = quad.reshape(-1, 3)
    mean, var = flat.mean(0), flat.var(0, unbiased=False)
    skip = x @ block.skip.weight.T
    torch.testing.assert_close(block(x), (quad - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias + skip)
    block.eval()
    affine = (quad - norm.running_mean) / torch.sqrt(norm.running_var + norm.eps) * norm.weight + norm.bias
    torch.testing.assert_close(block(x), affine + skip)
    assert PolynomialBlock(5, 3, 2, bias=False).quadratic_norm.affine is False
    assert PolynomialBlock(5, 3, 2, bias=False).num_parameters() == 2 * 5 + 3 * 3 + 3 * 5
    net = DeepPolynomialNet([6, 4, 4, 3], ranks=2)
    assert all(b.quadratic_norm is not None for b in net) and "quadratic_norm=True" in repr(net)
    assert all(b.quadratic_norm is None for b in DeepPolynomialNet([6, 4, 3], ranks=2, quadratic_norm=False))


def test_quadratic_norm_makes_the_block_invariant_to_the_scale_of_w_and_s():
    """The mechanism of docs/polynomial.rst: in training mode the block's output does not change
    when S (or W) is scaled by c, and the gradient with respect to S (W) scales as 1/c, so larger
    weights take smaller steps instead of growing the quadratic term."""
    torch.manual_seed(0)
    block = PolynomialBlock(6, 4, 3, dtype=torch.float64)
    block.quadratic_norm.eps = 1e-30  # invariance to rounding (eps only guards a zero variance)
    x, g = torch.randn(32, 6, dtype=torch.float64), torch.randn(32, 4, dtype=torch.float64)

    def output_and_grads(c_w, c_s):
        with torch.no_grad():
            block.quadratic.weight.mul_(c_w)
            block.quadratic.S.mul_(c_s)
        block.zero_grad()
        y = block(x)
        (y * g).sum().backward()
        result = y.detach(), block.quadratic.weight.grad.clone(), block.quadratic.S.grad.clone()
        with torch.no_grad():
            block.quadratic.weight.div_(c_w)
            block.quadratic.S.div_(c_s)
        return result
    y, grad_w, grad_s = output_and_grads(1.0, 1.0)
    for c_w, c_s in ((1.0, 10.0), (5.0, 1.0)):
        y_c, grad_w_c, grad_s_c = output_and_grads(c_w, c_s)
        torch.testing.assert_close(y_c, y)
        torch.testing.assert_close(grad_s_c, grad_s / c_s, rtol=1e-5, atol=1e-9)
        torch.testing.assert_close(grad_w_c, grad_w / c_w, rtol=1e-5, atol=1e-9)
    plain = PolynomialBlock(6, 4, 3, quadratic_norm=False, dtype=torch.float64)
    with torch.no_grad():
        y0 = plain(x)
        plain.quadratic.S.mul_(10.0)
        assert not torch.allclose(plain(x), y0)  # without it the output follows the scale


def _digits():
    from sklearn.datasets import load_digits
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32)
    x, y = (x - x.mean(0)) / (x.std(0) + 1e-6), torch.tensor(y)
    train, test = torch.randperm(len(x), generator=torch.Generator().manual_seed(0)).split([1257, 540])
    return x[train], y[train], x[test], y[test]


@pytest.mark.parametrize("optimizer", ["SGD", "Adam"])
@pytest.mark.parametrize("blocks", [2, 4])
def test_deep_nets_train_with_the_usual_optimizer_defaults(optimizer, blocks):
    """The defaults let a 4-block net (degree 16) train as a user would first try it: digits,
    standardised pixels, batch 64, 300 steps, SGD (lr 0.01, momentum 0.9) or Adam (lr 1e-3).
    Without any norm SGD turns NaN within 60 steps (asserted below, so this test can fail)."""
    x, y, x_test, y_test = _digits()

    def train(**options):
        torch.manual_seed(0)
        net = DeepPolynomialNet([64] + [32] * (blocks - 1) + [10], ranks=8, **options)
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9) if optimizer == "SGD" else \
            torch.optim.Adam(net.parameters(), lr=1e-3)
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0)).repeat(16)
        for step in range(300):
            batch = order[64 * step:64 * (step + 1)]
            loss = F.cross_entropy(net(x[batch]), y[batch])
            if not torch.isfinite(loss):
                return None
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            return (net.eval()(x_test).argmax(1) == y_test).float().mean().item()
    accuracy = train()
    assert accuracy is not None and accuracy > 0.9, accuracy
    if optimizer == "SGD":
        assert train(quadratic_norm=False) is None


def test_net_names_degree_count_and_repr():
    net = DeepPolynomialNet([6, 4, 4, 3], ranks=2)
    assert net.degree == 8 and len(net) == 3
    assert net.num_parameters() == sum(b.num_parameters() for b in net)
    assert net.num_parameters() == sum(p.numel() for p in net.parameters()) - sum(
        b.quadratic.S.numel() - b.out_features * 3 for b in net)  # S_i counted once (r(r+1)/2 = 3)
    assert "0.quadratic.weight" in net.state_dict() and "2.skip.weight" in net.state_dict()
    assert "degree=8" in repr(net)


def test_norm_on_every_block_but_the_last_and_eval_is_affine():
    net = DeepPolynomialNet([6, 5, 4, 3], ranks=[3, 2, 2], norm=True, quadratic_norm=False, dtype=torch.float64)
    assert [b.norm is not None for b in net] == [True, True, False]
    net.train()
    net(torch.randn(64, 6, dtype=torch.float64))  # update running statistics
    net.eval()
    x = torch.randn(2, 7, 6, dtype=torch.float64)  # any leading dims
    block = net[0]
    h = block.quadratic(x) + block.skip(x)
    expected = (h - block.norm.running_mean) / torch.sqrt(block.norm.running_var + block.norm.eps)
    torch.testing.assert_close(block(x), expected)


def test_usable_inside_larger_models_and_scripted():
    model = torch.nn.Sequential(torch.nn.Flatten(), DeepPolynomialNet([12, 6, 3], [3, 2], norm=True))
    model.eval()
    x = torch.randn(4, 3, 4)
    torch.testing.assert_close(torch.jit.script(model)(x), model(x), rtol=0, atol=0)


def _train_with_glram_sgd(net, steps=60):
    """Losses of ``steps`` GLRAMSGD steps (lr 0.05) on a fixed 3-class problem in 10 inputs, and
    the optimizer."""
    torch.manual_seed(1)
    x = torch.randn(256, 10)
    y = (x[:, :3].square().sum(1) > 3).long() + (x[:, 3] > 0).long()
    opt = quadnet.optim.GLRAMSGD(net, lr=0.05, max_iter=3)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, opt


def test_glram_sgd_trains_a_stack_with_norm():
    torch.manual_seed(1)
    net = DeepPolynomialNet([10, 6, 3], ranks=[4, 3], norm=True)
    losses, opt = _train_with_glram_sgd(net)
    assert losses[-1] < 0.6 * losses[0]
    assert len(opt.last_projections) == 2


@pytest.mark.parametrize("options", [{}, {"quadratic_norm": False}, {"norm": True, "quadratic_norm": False}])
def test_zero_init_residual_starts_the_residual_blocks_as_the_identity(options):
    """By default each block with a skip and in == out features starts as the identity map, in
    training and eval mode, so the net starts as its first and last blocks."""
    torch.manual_seed(0)
    net = DeepPolynomialNet([6, 4, 4, 4, 3], ranks=2, dtype=torch.float64, **options)
    assert net.residual_blocks() == [1, 2]
    x = torch.randn(32, 6, dtype=torch.float64)
    for mode in (True, False):
        net.train(mode)
        h = net[0](x)
        if net[1].norm is None:
            torch.testing.assert_close(net[1](h), h, rtol=0, atol=0)
        torch.testing.assert_close(net(x), net[3](net[2](net[1](h))))
        if not options:
            torch.testing.assert_close(net(x), net[3](h), rtol=0, atol=0)
    for t in (1, 2):
        torch.testing.assert_close(net[t].skip.weight, torch.eye(4, dtype=torch.float64))
    for t in (0, 3):  # not residual: the usual init
        assert not torch.equal(net[t].skip.weight[:3, :3], torch.eye(3, dtype=torch.float64))


def test_zero_init_residual_keeps_the_quadratic_term_learnable():
    """Only the quadratic term's scale starts at zero: one step moves it, and the next gradient
    reaches W and S (with quadratic_norm: through γ; without: through S)."""
    for options in ({}, {"quadratic_norm": False}):
        torch.manual_seed(1)
        net = DeepPolynomialNet([6, 4, 4, 3], ranks=2, **options)
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        x, y = torch.randn(64, 6), torch.randint(0, 3, (64,))
        for _ in range(2):
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            opt.step()
        assert net[1].quadratic.weight.grad.abs().max() > 0
        assert net[1].quadratic.S.grad.abs().max() > 0


def test_zero_init_residual_off_and_reset_parameters():
    torch.manual_seed(2)
    plain = DeepPolynomialNet([6, 4, 4, 3], ranks=2, zero_init_residual=False)
    assert not torch.equal(plain[1].skip.weight, torch.eye(4))
    assert torch.all(plain[1].quadratic_norm.weight == 1)
    assert "zero_init_residual=False" in repr(plain)
    net = DeepPolynomialNet([6, 4, 4, 3], ranks=2)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    net.reset_parameters()  # re-initialises the blocks, then the residual ones as the identity again
    torch.testing.assert_close(net[1].skip.weight, torch.eye(4))
    assert torch.all(net[1].quadratic_norm.weight == 0)
    assert net[0].skip.weight.abs().max() < 1 / 6 ** 0.5 + 1e-6  # back within nn.Linear's init bound
    meta = DeepPolynomialNet([6, 4, 4, 3], ranks=2, device="meta")  # meta-device init works
    assert meta[1].skip.weight.is_meta


def test_zero_init_residual_with_a_norm_without_scale_is_refused():
    with pytest.raises(ValueError, match="zero_init_residual=True .* bias=False removes .* zero_init_residual=False"):
        DeepPolynomialNet([6, 4, 4, 3], ranks=2, bias=False)
    DeepPolynomialNet([6, 4, 4, 3], ranks=2, bias=False, zero_init_residual=False)
    DeepPolynomialNet([6, 4, 3], ranks=2, bias=False)  # no residual block: nothing to zero
    DeepPolynomialNet([6, 4, 4, 3], ranks=2, bias=False, skip=False)  # no skips: no residual block


def test_glram_sgd_projects_a_zero_initialised_residual_block():
    """Without quadratic_norm the residual block starts with S = 0 (canonical A_i = 0); the
    projected steps move it off zero and the stack still learns."""
    torch.manual_seed(1)
    net = DeepPolynomialNet([10, 6, 6, 3], ranks=[4, 3, 3], norm=True, quadratic_norm=False)
    assert torch.all(net[1].quadratic.S == 0)
    losses, _ = _train_with_glram_sgd(net)
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < 0.6 * losses[0]
    assert net[1].quadratic.S.abs().max() > 0.01


@pytest.mark.parametrize("args, message", [
    (([6], [2]), "sizes needs at least 2 entries"),
    (([6, 4, 3], [2]), r"ranks needs len\(sizes\) - 1 = 2 entries, got 1"),
    (([6, 4], [0]), "rank must be positive"),
])
def test_bad_sizes(args, message):
    with pytest.raises(ValueError, match=message):
        DeepPolynomialNet(*args)
