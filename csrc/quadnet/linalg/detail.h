#pragma once
// Internals shared by linalg's translation units (glram.cpp: the solvers and glram;
// projected_step.cpp: the full projected step; tangent_step.cpp: the tangent step). Not part
// of the public API. Every function works in the dtype it is given (float64 in practice).

#include <ATen/ATen.h>

#include <cstdint>
#include <utility>

#include "../utils/symmetric.h"
#include "glram.h"

namespace quadnet {
namespace linalg {
namespace detail {

using utils::symmetric_part;

// The eigenvectors of the r largest eigenvalues of a symmetric M (m × m), largest first.
at::Tensor top_eigenvectors(const at::Tensor& M, int64_t r);

// Orthonormal basis (d × r) of the dominant r-dim left singular subspace of P (d × c).
at::Tensor top_subspace(const at::Tensor& P, int64_t r);

// ||t||_F^2 without a temporary of t's size.
double squared_norm(const at::Tensor& t);

// The projected cores V^T A_i V (n × r × r) from AV = A V (n × d × r). Written (A_i V)^T V so
// both products are 3-D × 2-D matmuls that fold into one GEMM (no broadcast copies of V).
inline at::Tensor project(const at::Tensor& AV, const at::Tensor& V) { return at::matmul(AV.transpose(1, 2), V); }

constexpr double kMaxBasisDrift = 1e-10;  // max |Q^T Q − I| accepted from CholeskyQR

// A basis's Gram matrix (Q^T Q, or Q Q^T for a basis as rows) is the identity to kMaxBasisDrift.
bool near_identity(const at::Tensor& gram);

// CholeskyQR of C (m × c): (R, R^{-1}) with C = Q R, Q = C R^{-1}, if Q comes out orthonormal to
// kMaxBasisDrift (cond(C) ≲ 1e3); else undefined tensors. T = C^T C.
std::pair<at::Tensor, at::Tensor> cholesky_qr(const at::Tensor& T);

// Orthonormal basis (d × r) of the row space of a weight (r × d), or undefined if the weight is
// numerically rank deficient (smallest |R_jj| ≤ 1e-10 × the largest).
at::Tensor orthonormal_rows(const at::Tensor& weight);

// An orthonormal basis (m × q) of the part of span Z outside span V (V orthonormal, m × r;
// Z already projected off V once), orthogonal to V whatever Z is.
at::Tensor orthonormal_extension(const at::Tensor& V, at::Tensor Z, int64_t q);

bool exact_solver(const GLRAMOptions& options);

// GLRAM on float64 symmetric A (n, d, d); V0 (d × r) orthonormal or undefined (classic start).
// One output: the exact eigen-solution whatever V0.
GLRAMResult glram_float64(const at::Tensor& A, int64_t r, at::Tensor V0, const GLRAMOptions& options);

// Argument checks that name the op.
void check_finite(const char* op, const char* name, const at::Tensor& t);
void check_options(const char* op, const GLRAMOptions& options);
void check_rank(const char* op, int64_t rank, int64_t d);
// A layer's weight (rank, d) and S (n, rank, rank): shapes, rank in [1, d], one floating dtype,
// finite values.
void check_layer(const char* op, const at::Tensor& weight, const at::Tensor& S);

// The result's weight and S in like's dtype and device.
GLRAMResult cast_result(GLRAMResult result, const at::Tensor& like);

}  // namespace detail
}  // namespace linalg
}  // namespace quadnet
