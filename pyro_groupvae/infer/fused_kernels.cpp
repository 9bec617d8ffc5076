// Fused CPU kernels of the HFVAE batch estimator of q(z) (pyro_groupvae/infer/fused.py).
//
// They compute the same numbers as the estimator's tensor code in hfvae_elbo.py (within float rounding) without
// building any B x B x E table: each pairwise density is formed directly in the input dtype, reduced, and formed
// again in the backward pass. Built at first use with the system C++ compiler and loaded with
// ctypes; plain C ABI, raw contiguous arrays, float and double. Rows are split over `nthreads` std::threads, each
// thread accumulating the gradients of batch columns into its own buffer.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <thread>
#include <vector>

namespace {

// exp of a non-positive argument (x - max): clamped at -80 (float) / -700 (double), where exp is still a normal
// number, because the vectorised exp of libmvec falls back to a scalar loop for a whole vector when one lane
// underflows (measured 5-8x slower on tables with far-apart entries); exp(-80) = 2e-35 next to the row's
// largest term exp(0) = 1 changes no sum.
inline float ex(float x) {
  // Cephes' expf written inline (range reduction by ln 2 in two parts, degree-6 minimax polynomial, 2^n by
  // exponent bits): the compiler vectorises it without calls into libmvec; relative error ~1e-7.
  x = x < -80.0f ? -80.0f : x;
  const float n = rintf(x * 1.44269504088896341f);
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f; p = p * r + 8.3334519073e-3f; p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f; p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = ((int32_t)n + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}
inline double ex(double x) { return exp(x < -700.0 ? -700.0 : x); }
inline float lg(float x) { return logf(x); }
inline double lg(double x) { return log(x); }

template <typename F>
void parallel_rows(int64_t rows, int nthreads, F body) {
  nthreads = (int)std::max<int64_t>(1, std::min<int64_t>(nthreads, rows));
  if (nthreads == 1) { body(0, 0, rows); return; }
  std::vector<std::thread> pool;
  int64_t step = (rows + nthreads - 1) / nthreads;
  for (int t = 0; t < nthreads; ++t) {
    int64_t r0 = t * step, r1 = std::min(rows, r0 + step);
    if (r0 >= r1) break;
    pool.emplace_back(body, t, r0, r1);
  }
  for (auto& th : pool) th.join();
}

// X[j] = A[j] + H[j] (zi - M[j])^2 for one batch row: the pairwise Normal log density of one dimension.
template <typename T>
inline void normal_row(int64_t B, T zi, const T* __restrict__ M, const T* __restrict__ H, const T* __restrict__ A,
                       T* __restrict__ X) {
  for (int64_t j = 0; j < B; ++j) { T d = zi - M[j]; X[j] = A[j] + H[j] * d * d; }
}

template <typename T>
inline void add_row(int64_t B, const T* __restrict__ x, T* __restrict__ s) {
  for (int64_t j = 0; j < B; ++j) s[j] += x[j];
}

// Log-sum-exp of one row x[0..B) with the weights of eq. 13 (minus the constant off-diagonal one):
// log sum_j exp(x_j + dw [j == jd]).
template <typename T>
inline T diag_lse(const T* __restrict__ x, int64_t B, int64_t jd, T dw) {
  T m = x[jd] + dw;
  for (int64_t j = 0; j < jd; ++j) m = x[j] > m ? x[j] : m;
  for (int64_t j = jd + 1; j < B; ++j) m = x[j] > m ? x[j] : m;
  T s = 0;
  for (int64_t j = 0; j < jd; ++j) s += ex(x[j] - m);
  for (int64_t j = jd + 1; j < B; ++j) s += ex(x[j] - m);
  s += ex(x[jd] + dw - m);
  return m + lg(s);
}

// Column gradients accumulated by several threads: thread t adds into slice(t) (the output itself when there is
// one thread), then reduce() sums the slices into the output. The output is zeroed on construction.
template <typename T>
struct ThreadBuffers {
  int nthreads; int64_t n; T* out; std::vector<T> buf;
  ThreadBuffers(int nt, int64_t n_, T* out_)
      : nthreads(nt), n(n_), out(out_), buf((size_t)(nt > 1 ? nt : 0) * n_, T(0)) { std::fill(out, out + n, T(0)); }
  T* slice(int t) { return nthreads > 1 ? buf.data() + (size_t)t * n : out; }
  void reduce() {
    if (nthreads > 1)
      for (int t = 0; t < nthreads; ++t) add_row(n, buf.data() + (size_t)t * n, out);
  }
};

// Per-dimension marginals and the group's pairwise table of a Normal group, rows offset .. offset + c:
//   out[p, e, i] = log sum_j exp(x[p, e, i, j] + dw [j == i + offset]),  grp[p, i, j] = sum_e x[p, e, i, j],
//   x[p, e, i, j] = a[p, e, j] + h[p, e, j] (z[p, e, i] - mu[p, e, j])^2.
// z, out: (P, E, c); mu, h, a: (P, E, B); grp: (P, c, B). Work items are (p, i) pairs; x is formed directly
// (never by expanding the square), one row of B at a time.
template <typename T>
void normal_group_fwd(int64_t P, int64_t E, int64_t c, int64_t B, const T* z, const T* mu, const T* h,
                      const T* a, T dw, int64_t offset, T* out, T* grp, int nthreads) {
  parallel_rows(P * c, nthreads, [=](int, int64_t w0, int64_t w1) {
    std::vector<T> Xb((size_t)B);
    T* X = Xb.data();
    for (int64_t w = w0; w < w1; ++w) {
      const int64_t p = w / c, i = w % c, jd = i + offset;
      T* g = grp + w * B;
      std::fill(g, g + B, T(0));
      for (int64_t e = 0; e < E; ++e) {
        const int64_t r = p * E + e;
        normal_row(B, z[r * c + i], mu + r * B, h + r * B, a + r * B, X);
        add_row(B, X, g);
        out[r * c + i] = diag_lse(X, B, jd, dw);
      }
    }
  });
}

// One (p, e, i) of the backward of normal_group_fwd, one pass over the batch: C_j = gi exp(x_j - oi) + Gg_j,
// the diagonal's weight dw corrected after the loop; accumulates the column gradients and returns
// sum_j h_j C_j d_j.
template <typename T>
inline T normal_bwd_row(int64_t B, int64_t jd, T dw, T zi, T oi, T gi, const T* __restrict__ Gg,
                        const T* __restrict__ M, const T* __restrict__ H, const T* __restrict__ A,
                        T* __restrict__ gA, T* __restrict__ gm, T* __restrict__ gq) {
  T acc = 0;
  for (int64_t j = 0; j < B; ++j) {
    T d = zi - M[j]; T C = gi * ex(A[j] + H[j] * d * d - oi) + Gg[j]; T Cd = C * d;
    gA[j] += C; acc += H[j] * Cd; gm[j] -= 2 * H[j] * Cd; gq[j] += Cd * d;
  }
  const T d = zi - M[jd], x = A[jd] + H[jd] * d * d - oi;
  const T C = gi * (ex(x + dw) - ex(x)), Cd = C * d;  // the diagonal term with its weight, minus the one used
  gA[jd] += C; gm[jd] -= 2 * H[jd] * Cd; gq[jd] += Cd * d;
  return acc + H[jd] * Cd;
}

// Backward of normal_group_fwd given the gradients of out (gout, or null) and of grp (ggrp, or null):
// gz (P, E, c) written; gmu, gh, ga (P, E, B) written.
template <typename T>
void normal_group_bwd(int64_t P, int64_t E, int64_t c, int64_t B, const T* z, const T* mu, const T* h,
                      const T* a, T dw, int64_t offset, const T* out, const T* gout, const T* ggrp, T* gz, T* gmu,
                      T* gh, T* ga, int nthreads) {
  nthreads = (int)std::max<int64_t>(1, std::min<int64_t>(nthreads, P * c));
  const int64_t nB = P * E * B;
  ThreadBuffers<T> bmu(nthreads, nB, gmu), bh(nthreads, nB, gh), ba(nthreads, nB, ga);
  parallel_rows(P * c, nthreads, [&, z, mu, h, a, out, gout, ggrp, gz](int t, int64_t w0, int64_t w1) {
    T* GMU = bmu.slice(t);
    T* GH = bh.slice(t);
    T* GA = ba.slice(t);
    std::vector<T> Zb(ggrp ? 0 : (size_t)B, T(0));
    for (int64_t w = w0; w < w1; ++w) {
      const int64_t p = w / c, i = w % c, jd = i + offset;
      const T* Gg = ggrp ? ggrp + w * B : Zb.data();
      for (int64_t e = 0; e < E; ++e) {
        const int64_t r = p * E + e;
        const T gi = gout ? gout[r * c + i] : T(0);
        gz[r * c + i] = 2 * normal_bwd_row(B, jd, dw, z[r * c + i], out[r * c + i], gi, Gg, mu + r * B, h + r * B,
                                           a + r * B, GA + r * B, GMU + r * B, GH + r * B);
      }
    }
  });
  bmu.reduce(); bh.reduce(); ba.reduce();
}

// Pairwise ExpConcrete log densities (Maddison et al. eq. B.5) of rows val (P, c, V, K) under the batch's
// normalised logits, given transposed as Lt (P, V, K, B):
//   lp[p, v, i, j] = sum_k s_k - K lse[p, v, i, j] + cst,  lse = log sum_k exp(s_k),  s_k = Lt[p, v, k, j] - tau val[p, i, v, k]
// lp, lse: (P, V, c, B) (lse is kept for the backward). Work items are (p, v, i) triples.
template <typename T>
void concrete_lp_fwd(int64_t P, int64_t c, int64_t V, int64_t K, int64_t B, const T* val, const T* Lt, T tau,
                     T cst, T* lp, T* lse, int nthreads) {
  parallel_rows(P * V * c, nthreads, [=](int, int64_t w0, int64_t w1) {
    std::vector<T> Sb((size_t)B), Lb((size_t)B);
    T* __restrict__ S = Sb.data();
    T* __restrict__ Ls = Lb.data();
    for (int64_t w = w0; w < w1; ++w) {
      const int64_t i = w % c, pv = w / c, p = pv / V, vv = pv % V;
      const T* vi = val + ((p * c + i) * V + vv) * K;
      const T* L = Lt + pv * K * B;
      T* __restrict__ o = lse + w * B;
      T* __restrict__ out = lp + w * B;
      T vs = 0;
      std::fill(o, o + B, std::numeric_limits<T>::lowest());
      std::fill(Ls, Ls + B, T(0));
      for (int64_t k = 0; k < K; ++k) {
        const T t = tau * vi[k]; const T* __restrict__ Lk = L + k * B;
        vs += vi[k];
        for (int64_t j = 0; j < B; ++j) { T s = Lk[j] - t; o[j] = s > o[j] ? s : o[j]; Ls[j] += Lk[j]; }
      }
      std::fill(S, S + B, T(0));
      for (int64_t k = 0; k < K; ++k) {
        const T t = tau * vi[k]; const T* __restrict__ Lk = L + k * B;
        for (int64_t j = 0; j < B; ++j) S[j] += ex(Lk[j] - t - o[j]);
      }
      const T base = cst - tau * vs;
      for (int64_t j = 0; j < B; ++j) { o[j] += lg(S[j]); out[j] = Ls[j] + base - K * o[j]; }
    }
  });
}

// Backward of concrete_lp_fwd given grad (P, V, c, B): gLt (P, V, K, B) and gv (P, c, V, K) written;
// *gtau and *gcst the gradients of tau (through the s_k) and of cst.
template <typename T>
void concrete_lp_bwd(int64_t P, int64_t c, int64_t V, int64_t K, int64_t B, const T* val, const T* Lt, T tau,
                     const T* lse, const T* grad, T* gLt, T* gv, T* gtau, T* gcst, int nthreads) {
  nthreads = (int)std::max<int64_t>(1, std::min<int64_t>(nthreads, P * V * c));
  const int64_t nL = P * V * K * B;
  ThreadBuffers<T> bL(nthreads, nL, gLt);
  std::vector<T> gt((size_t)nthreads, T(0)), gc((size_t)nthreads, T(0));
  parallel_rows(P * V * c, nthreads, [&, val, Lt, lse, grad, gv](int t, int64_t w0, int64_t w1) {
    T* G = bL.slice(t);
    T gtl = 0, gcl = 0;
    for (int64_t w = w0; w < w1; ++w) {
      const int64_t i = w % c, pv = w / c, p = pv / V, vv = pv % V;
      const T* vi = val + ((p * c + i) * V + vv) * K;
      T* gvi = gv + ((p * c + i) * V + vv) * K;
      const T* L = Lt + pv * K * B;
      T* GL = G + pv * K * B;
      const T* __restrict__ o = lse + w * B;
      const T* __restrict__ g = grad + w * B;
      T gsum = 0;
      for (int64_t j = 0; j < B; ++j) gsum += g[j];
      for (int64_t k = 0; k < K; ++k) {
        const T tk = tau * vi[k]; const T* __restrict__ Lk = L + k * B; T* __restrict__ Gk = GL + k * B;
        T acc = 0;
        for (int64_t j = 0; j < B; ++j) { T q = g[j] * ex(Lk[j] - tk - o[j]); Gk[j] += g[j] - K * q; acc += q; }
        gvi[k] = tau * (K * acc - gsum);
        gtl += vi[k] * (K * acc - gsum);
      }
      gcl += gsum;
    }
    gt[t] = gtl; gc[t] = gcl;
  });
  T s = 0, sc = 0;
  for (int t = 0; t < nthreads; ++t) { s += gt[t]; sc += gc[t]; }
  *gtau = s; *gcst = sc;
  bL.reduce();
}

// Group and joint marginals of eq. 13 from the pairwise group log densities, D tables xs[d] (P, c, B):
// out[p, d, i] = log sum_j exp(xs[d][p, i, j] + dw [j == i + offset]) for d < D, and out[p, D, i] the same of
// sum_d xs[d][p, i, j] (the joint); out (P, D + 1, c). The constant off-diagonal log weight is added by the caller.
template <typename T>
void group_lse_fwd(int64_t P, int64_t D, int64_t c, int64_t B, const T* const* xs, T dw, int64_t offset, T* out,
                   int nthreads) {
  parallel_rows(P * c, nthreads, [=](int, int64_t w0, int64_t w1) {
    std::vector<T> S((size_t)B);
    for (int64_t w = w0; w < w1; ++w) {
      const int64_t p = w / c, i = w % c, jd = i + offset;
      std::fill(S.begin(), S.end(), T(0));
      T* __restrict__ s = S.data();
      for (int64_t d = 0; d < D; ++d) {
        const T* __restrict__ row = xs[d] + w * B;
        out[(p * (D + 1) + d) * c + i] = diag_lse(row, B, jd, dw);
        add_row(B, row, s);
      }
      out[(p * (D + 1) + D) * c + i] = diag_lse(s, B, jd, dw);
    }
  });
}

// Backward: gxs[d][p, i, j] = g[p, d, i] softmax_d[i, j] + g[p, D, i] softmax_joint[i, j] (written).
template <typename T>
void group_lse_bwd(int64_t P, int64_t D, int64_t c, int64_t B, const T* const* xs, T dw, int64_t offset,
                   const T* out, const T* grad, T* const* gxs, int nthreads) {
  parallel_rows(P * c, nthreads, [=](int, int64_t w0, int64_t w1) {
    std::vector<T> S((size_t)B), W((size_t)B);
    for (int64_t w = w0; w < w1; ++w) {
      const int64_t p = w / c, i = w % c, jd = i + offset;
      T* __restrict__ s = S.data();
      T* __restrict__ wj = W.data();
      std::fill(S.begin(), S.end(), T(0));
      for (int64_t d = 0; d < D; ++d) {
        const T* __restrict__ row = xs[d] + w * B;
        add_row(B, row, s);
      }
      const T oJ = out[(p * (D + 1) + D) * c + i], gJ = grad[(p * (D + 1) + D) * c + i];
      for (int64_t j = 0; j < B; ++j) wj[j] = gJ * ex(s[j] - oJ);
      wj[jd] = gJ * ex(s[jd] + dw - oJ);
      for (int64_t d = 0; d < D; ++d) {
        const T* __restrict__ row = xs[d] + w * B;
        T* __restrict__ g = gxs[d] + w * B;
        const T od = out[(p * (D + 1) + d) * c + i], gd = grad[(p * (D + 1) + d) * c + i];
        for (int64_t j = 0; j < B; ++j) g[j] = gd * ex(row[j] - od) + wj[j];
        g[jd] = gd * ex(row[jd] + dw - od) + wj[jd];
      }
    }
  });
}

}  // namespace

#define EXPORT(T, SUF)                                                                                            \
  extern "C" void normal_group_fwd_##SUF(int64_t P, int64_t E, int64_t c, int64_t B, const T* z, const T* mu,     \
                                         const T* h, const T* a, double dw, int64_t offset, T* out, T* grp,       \
                                         int nt) {                                                                \
    normal_group_fwd<T>(P, E, c, B, z, mu, h, a, (T)dw, offset, out, grp, nt);                                    \
  }                                                                                                               \
  extern "C" void normal_group_bwd_##SUF(int64_t P, int64_t E, int64_t c, int64_t B, const T* z, const T* mu,     \
                                         const T* h, const T* a, double dw, int64_t offset, const T* out,         \
                                         const T* gout, const T* ggrp, T* gz, T* gmu, T* gh, T* ga, int nt) {     \
    normal_group_bwd<T>(P, E, c, B, z, mu, h, a, (T)dw, offset, out, gout, ggrp, gz, gmu, gh, ga, nt);            \
  }                                                                                                               \
  extern "C" void concrete_lp_fwd_##SUF(int64_t P, int64_t c, int64_t V, int64_t K, int64_t B, const T* v,        \
                                        const T* Lt, double tau, double cst, T* lp, T* lse, int nt) {             \
    concrete_lp_fwd<T>(P, c, V, K, B, v, Lt, (T)tau, (T)cst, lp, lse, nt);                                        \
  }                                                                                                               \
  extern "C" void concrete_lp_bwd_##SUF(int64_t P, int64_t c, int64_t V, int64_t K, int64_t B, const T* v,        \
                                        const T* Lt, double tau, const T* lse, const T* grad, T* gLt, T* gv,      \
                                        T* gtau, T* gcst, int nt) {                                               \
    concrete_lp_bwd<T>(P, c, V, K, B, v, Lt, (T)tau, lse, grad, gLt, gv, gtau, gcst, nt);                         \
  }                                                                                                               \
  extern "C" void group_lse_fwd_##SUF(int64_t P, int64_t D, int64_t c, int64_t B, const T* const* xs, double dw, \
                                      int64_t offset, T* out, int nt) {                                           \
    group_lse_fwd<T>(P, D, c, B, xs, (T)dw, offset, out, nt);                                                    \
  }                                                                                                               \
  extern "C" void group_lse_bwd_##SUF(int64_t P, int64_t D, int64_t c, int64_t B, const T* const* xs, double dw, \
                                      int64_t offset, const T* out, const T* grad, T* const* gxs, int nt) {       \
    group_lse_bwd<T>(P, D, c, B, xs, (T)dw, offset, out, grad, gxs, nt);                                         \
  }

EXPORT(float, f32)
EXPORT(double, f64)
