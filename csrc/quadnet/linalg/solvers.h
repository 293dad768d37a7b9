#pragma once
// GLRAM's two iteration schemes as templates over the representation of the matrices
// (internal; docs/glram.rst, "Solvers"): the dense matrices (glram.cpp) and the factored forms
// of a projected step (projected_step.cpp).
//
// GLRAM's alternating loop works on any representation of the matrices that offers, for an
// orthonormal V (m × r), a `State at(V)` and:
//   total()                  Σ_i ||A_i||_F^2
//   captured(state)          f(V) = Σ_i ||V^T A_i V||_F^2
//   top(state, r, shift)     top-r eigenvectors of Σ_i A_i V V^T A_i + shift · V V^T
//   projected(state)         V^T A_i V (n × r × r)
// Representations: the explicit matrices (DenseMatrices) and the factored cores of a
// projected step (FactoredCores), which never forms an n·k² tensor.

#include <ATen/ATen.h>

#include <algorithm>
#include <optional>
#include <tuple>
#include <utility>
#include <vector>

#include "detail.h"

namespace quadnet {
namespace linalg {
namespace detail {

// A state of either solver with its captured energy f = Σ_i ||V^T A_i V||_F^2.
template <class State>
struct Scored {
  State state;
  double f;
};

// The GLRAM iteration both solvers share. `propose(point)` returns a callable shift -> next
// point: the plain step at shift 0, and — when that would lower f, possible for indefinite A_i —
// the convexified step at shift c = Σ_i ||A_i||_F^2 (a minorise-maximise step: M + c V V^T with
// c ≥ −λ_min(Σ A_i ⊗ A_i) cannot lower f). Stops when an iteration gains ≤ tol · total or after
// max_iter; fills result's iterations, converged and objective (Σ_i ||A_i||^2 − f per iterate).
// Host synchronisation: the guard and the stopping rule read each f on the host (one .item()
// per evaluation: 1–2 per iteration, a device sync on CUDA). An iteration count decided by
// convergence needs them; everything else stays on the device.
template <class Point, class Propose>
Point iterate(Point point, double total, const GLRAMOptions& options, const Propose& propose, GLRAMResult& result) {
  std::vector<double> trace{std::max(0.0, total - point.f)};
  for (int64_t it = 0; it < options.max_iter(); ++it) {
    auto step = propose(point);
    Point next = step(0.0);
    if (next.f < point.f) next = step(total);
    if (!(next.f >= point.f)) {  // only rounding can get here: keep the better subspace
      result.converged = true;
      break;
    }
    const double gain = next.f - point.f;
    point = std::move(next);
    ++result.iterations;
    trace.push_back(std::max(0.0, total - point.f));
    if (gain <= options.tol() * total) {
      result.converged = true;
      break;
    }
  }
  result.objective = at::tensor(trace, at::kDouble);
  return point;
}

// The exact solver: from an orthonormal start V (m × r), V ← top-r eigenvectors of
// M = Σ_i A_i V V^T A_i (+ c V V^T when convexified).
template <class Problem>
GLRAMResult alternate(const Problem& problem, const at::Tensor& V, const GLRAMOptions& options) {
  const auto r = V.size(1);
  using Point = Scored<typename Problem::State>;
  auto score = [&problem](typename Problem::State state) {
    const double f = problem.captured(state);
    return Point{std::move(state), f};
  };
  auto propose = [&problem, &score, r](const Point& point) {
    return
        [&problem, &score, &point, r](double shift) { return score(problem.at(problem.top(point.state, r, shift))); };
  };
  GLRAMResult result;
  const auto end = iterate(score(problem.at(V)), problem.total(), options, propose, result);
  result.S = symmetric_part(problem.projected(end.state));
  result.weight = end.state.V.t();
  return result;
}

// When a Rayleigh–Ritz iteration grows its block beyond [V | Q_2]. The block Krylov space
// [V, M V, M² V, …] approaches the top-r eigenspace of M, so a grown block makes the iteration
// take the exact solver's step on large moves, where the 2r-wide block alone can settle on
// another fixed point. Blocks grow only when the first Ritz gain marks a large move; small
// moves (training steps) keep the 2r-wide block. The thresholds are relative to Σ_i ||A_i||_F²
// and were calibrated on the problems listed in docs/glram.rst ("Solvers").
constexpr double kLargeMove = 1e-3;  // first Ritz gain above this × Σ_i ||A_i||_F²: a large move
constexpr double kGrowAbove = 1e-4;  // then grow while the Ritz gain exceeds this × Σ_i ||A_i||_F²
constexpr double kGrowWhile = 1e-4;  // and the newest block raised it by more than this × the gain
constexpr int64_t kMaxBlocks = 6;    // blocks beyond V

// GLRAM with Rayleigh–Ritz steps from an orthonormal start V (m × r). Each iteration extends
// V by Q_2, an orthonormal basis of the part of M V outside span V (M = Σ_i A_i V V^T A_i, the
// matrix whose top eigenvectors the exact iteration takes), then, while the rules above ask
// for it, by Q_3, Q_4, … from M Q_2, M Q_3, … (a block Krylov space of M), and keeps the best
// r-dim subspace of U = [V | Q_2 | …] for M: the top eigenvectors of U^T M U = H H^T with
// H = [U^T A_1 V … U^T A_n V], a (u × u) eigen-solve. Since V ⊂ span U, tr(V'^T M V') ≥
// tr(V^T M V) = f(V), which is what the monotonicity argument of the exact iteration needs
// (docs/glram.rst); the same guard (redo with the shift c = Σ_i ||A_i||_F^2 on span V) covers
// indefinite A_i. A fixed point of the exact iteration (M V ⊂ span V) is one of this one, and
// the stopping rule is the same. Every quantity comes from the problem's images (A U in
// whatever factored form), which are linear in U: the image of V' = U Y is combined from those
// of the blocks, not recomputed. Host synchronisation: one .item() per block (the growth rule).
template <class Problem>
GLRAMResult rayleigh_ritz(const Problem& problem, const at::Tensor& V0, const GLRAMOptions& options) {
  using Image = typename Problem::Image;
  const auto m = V0.size(0), r = V0.size(1);
  const double total = problem.total();
  struct Ritz {
    at::Tensor V;
    Image image;       // A V
    at::Tensor cores;  // V^T A_i V
  };
  using Point = Scored<Ritz>;
  auto score = [&problem](at::Tensor V, Image image) {
    auto cores = symmetric_part(problem.cross(V, image, image)).contiguous();
    const double f = squared_norm(cores);
    return Point{{std::move(V), std::move(image), std::move(cores)}, f};
  };
  std::optional<bool> large_move;  // decided by the first iteration's Ritz gain
  auto propose = [&problem, &score, &large_move, total, m, r](const Point& point) {
    const auto& [V, image, cores] = point.state;
    // H = [U^T A_1 V … U^T A_n V] laid out (u, n·r), kept as its row blocks, one per block of
    // U; the first is the cores (symmetric: V^T A_i V side by side). U and U^T M U = H H^T
    // grow by one block per step, written into buffers sized for the widest block.
    const auto widest = std::min(m, r * (kMaxBlocks + 1));
    auto U_buffer = at::empty({m, widest}, V.options());
    auto gram_buffer = at::empty({widest, widest}, V.options());
    U_buffer.narrow(1, 0, r).copy_(V);
    std::vector<at::Tensor> H{cores.permute({1, 0, 2}).reshape({r, -1})};
    gram_buffer.narrow(0, 0, r).narrow(1, 0, r).copy_(at::mm(H[0], H[0].t()));  // Σ_i K_i K_i
    std::vector<Image> images{image};
    at::Tensor newest = cores;  // V^T A_i Q for the newest block Q (n × r × w)
    int64_t u = r;
    // Its eigenvalues decide the growth: eigenvectors with them for the first block (where
    // training steps stop), only eigenvalues (eigvalsh) for later ones.
    at::Tensor gram, first_vectors;
    double previous = point.f;  // tr(V^T M V) = Σ_i ||V^T A_i V||² = f(V)
    for (int64_t block = 0; block < kMaxBlocks && u < widest; ++block) {
      const int64_t w = newest.size(2);
      auto U = U_buffer.narrow(1, 0, u);
      // M Q = Σ_i A_i V (V^T A_i Q); its part in span U, U^T M Q = H H_Q^T (H_Q: Q's rows of
      // H, a block column of the Gram matrix), is known: the first Gram–Schmidt projection is free.
      auto MQ = problem.apply(image, newest) - at::mm(U, gram_buffer.narrow(0, 0, u).narrow(1, u - w, w));
      const auto q = std::min(w, widest - u);
      auto Q = orthonormal_extension(U, MQ, q);
      auto imageQ = problem.image(Q);
      auto C = problem.cross(Q, imageQ, image).permute({1, 0, 2}).reshape({q, -1});  // Q^T A_i V, (q, n·r)
      int64_t row = 0;
      for (const auto& Hj : H) {  // U^T M Q block by block
        auto block_product = at::mm(Hj, C.t());
        gram_buffer.narrow(0, row, Hj.size(0)).narrow(1, u, q).copy_(block_product);
        gram_buffer.narrow(0, u, q).narrow(1, row, Hj.size(0)).copy_(block_product.t());
        row += Hj.size(0);
      }
      gram_buffer.narrow(0, u, q).narrow(1, u, q).copy_(at::mm(C, C.t()));
      U_buffer.narrow(1, u, q).copy_(Q);
      H.push_back(C);
      images.push_back(std::move(imageQ));
      newest = C.view({q, -1, r}).permute({1, 2, 0});  // V^T A_i Q (n × r × q)
      u += q;
      gram = symmetric_part(gram_buffer.narrow(0, 0, u).narrow(1, 0, u));
      at::Tensor values;  // ascending
      if (block == 0) {
        std::tie(values, first_vectors) = at::linalg_eigh(gram);
      } else {
        values = at::linalg_eigvalsh(gram);
        first_vectors.reset();
      }
      const double ritz = values.narrow(0, u - r, r).sum().item<double>();
      const double gain = ritz - point.f;
      if (!large_move) large_move = gain > kLargeMove * total;
      if (!*large_move || !(gain > kGrowAbove * total) || !(ritz - previous > kGrowWhile * gain)) break;
      previous = ritz;
    }
    // The loop ran at least once (propose is called only when r < m, so u = r < widest).
    return [&problem, &score, U = U_buffer.narrow(1, 0, u), images, H, gram, first_vectors, r](double shift) {
      const auto u = U.size(1);
      at::Tensor Y;
      if (shift > 0) {
        auto diagonal = at::zeros({u}, gram.options());
        diagonal.narrow(0, 0, r).fill_(shift);
        Y = top_eigenvectors(gram + at::diag(diagonal), r);
      } else {
        Y = first_vectors.defined() ? first_vectors.narrow(1, u - r, r).flip({1}) : top_eigenvectors(gram, r);
      }
      std::vector<at::Tensor> rows;  // Y's row blocks, one per block of U (H's row blocks)
      int64_t start = 0;
      for (const auto& Hj : H) {
        rows.push_back(Y.narrow(0, start, Hj.size(0)));
        start += Hj.size(0);
      }
      return score(at::mm(U, Y), problem.combine(images, rows));
    };
  };
  auto limits = options;
  if (r == m) limits.max_iter(0);  // V spans everything
  GLRAMResult result;
  const auto end = iterate(score(V0, problem.image(V0)), total, limits, propose, result);
  if (r == m) result.converged = true;
  result.S = end.state.cores;
  result.weight = end.state.V.t();
  return result;
}

}  // namespace detail
}  // namespace linalg
}  // namespace quadnet
