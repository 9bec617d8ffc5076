// Fused CPU kernels of the HFVAE batch estimator of q(z) (pyro_groupvae/infer/fused.py).
//
// They compute the same numbers as the tensor code they replace (_NormalLSE and the class log-sum-exp of the
// Concrete density in hfvae_elbo.py) without building any B x B x E table: each value is formed in registers,
// reduced, and formed again in the backward pass. Built at first use with the system C++ compiler and loaded with
// ctypes; plain C ABI, raw contiguous arrays, float and double. Rows are split over `nthreads` std::threads, each
// thread accumulating the gradients of batch columns into its own buffer.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <thread>
#include <vector>

namespace {

inline float ex(float x) { return expf(x); }
inline double ex(double x) { return exp(x); }
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

// Max and sum of exp(x_j - m) of x_j = A[j] + H[j] (zi - M[j])^2 over one stretch [j0, j1). Separate, with
// restrict pointers, so that the compiler vectorises them; the diagonal of eq. 13 is the stretch [jd, jd + 1),
// its weight dw folded into the shift (exp(x + dw - m) = exp(x - (m - dw))).
template <typename T>
inline T normal_max(int64_t j0, int64_t j1, T zi, T m, const T* __restrict__ M, const T* __restrict__ H,
                    const T* __restrict__ A) {
  for (int64_t j = j0; j < j1; ++j) { T d = zi - M[j]; T x = A[j] + H[j] * d * d; m = x > m ? x : m; }
  return m;
}

template <typename T>
inline T normal_sumexp(int64_t j0, int64_t j1, T zi, T m, const T* __restrict__ M, const T* __restrict__ H,
                       const T* __restrict__ A) {
  T s = 0;
  for (int64_t j = j0; j < j1; ++j) { T d = zi - M[j]; s += ex(A[j] + H[j] * d * d - m); }
  return s;
}

// out[r, i] = log sum_j exp(a[r, j] + h[r, j] (z[r, i] - mu[r, j])^2 + dw [j == i + offset])
// z: (n, c); mu, h, a: (n, B); out: (n, c). Work items are (r, i) pairs.
template <typename T>
void normal_lse_fwd(int64_t n, int64_t c, int64_t B, const T* z, const T* mu, const T* h, const T* a, T dw,
                    int64_t offset, T* out, int nthreads) {
  parallel_rows(n * c, nthreads, [=](int, int64_t w0, int64_t w1) {
    for (int64_t w = w0; w < w1; ++w) {
      const int64_t r = w / c, i = w % c, jd = i + offset;
      const T* M = mu + r * B; const T* H = h + r * B; const T* A = a + r * B;
      const T zi = z[w];
      T m = normal_max(jd, jd + 1, zi, std::numeric_limits<T>::lowest(), M, H, A) + dw;
      m = normal_max(0, jd, zi, m, M, H, A);
      m = normal_max(jd + 1, B, zi, m, M, H, A);
      const T s = normal_sumexp(0, jd, zi, m, M, H, A) + normal_sumexp(jd, jd + 1, zi, m - dw, M, H, A)
                + normal_sumexp(jd + 1, B, zi, m, M, H, A);
      out[w] = m + lg(s);
    }
  });
}

// One stretch [j0, j1) of the backward of normal_lse_fwd for one (r, i): accumulates the column gradients and
// returns sum_j h_j G_j d_j. Separate, with restrict pointers, so that the compiler vectorises it.
template <typename T>
inline T normal_bwd_range(int64_t j0, int64_t j1, T zi, T oi, T gi, const T* __restrict__ M,
                          const T* __restrict__ H, const T* __restrict__ A, T* __restrict__ gA,
                          T* __restrict__ gm, T* __restrict__ gq) {
  T acc = 0;
  for (int64_t j = j0; j < j1; ++j) {
    T d = zi - M[j]; T G = gi * ex(A[j] + H[j] * d * d - oi); T Gd = G * d;
    gA[j] += G; acc += H[j] * Gd; gm[j] -= 2 * H[j] * Gd; gq[j] += Gd * d;
  }
  return acc;
}

// Backward of normal_lse_fwd: G[r, i, j] = grad[r, i] softmax_j; gz (n, c) written; gmu, gh, ga (n, B) written.
template <typename T>
void normal_lse_bwd(int64_t n, int64_t c, int64_t B, const T* z, const T* mu, const T* h, const T* a, T dw,
                    int64_t offset, const T* out, const T* grad, T* gz, T* gmu, T* gh, T* ga, int nthreads) {
  nthreads = (int)std::max<int64_t>(1, std::min<int64_t>(nthreads, n * c));
  std::vector<T> buf((size_t)(nthreads > 1 ? nthreads : 0) * 3 * n * B, T(0));
  std::fill(gmu, gmu + n * B, T(0)); std::fill(gh, gh + n * B, T(0)); std::fill(ga, ga + n * B, T(0));
  parallel_rows(n * c, nthreads, [&, z, mu, h, a, out, grad, gz](int t, int64_t w0, int64_t w1) {
    T* GMU = nthreads > 1 ? buf.data() + (size_t)t * 3 * n * B : gmu;
    T* GH = nthreads > 1 ? GMU + n * B : gh;
    T* GA = nthreads > 1 ? GH + n * B : ga;
    for (int64_t w = w0; w < w1; ++w) {
      const int64_t r = w / c, i = w % c, jd = i + offset;
      const T* M = mu + r * B; const T* H = h + r * B; const T* A = a + r * B;
      T* gm = GMU + r * B; T* gq = GH + r * B; T* gA = GA + r * B;
      const T zi = z[w], oi = out[w], gi = grad[w];
      // exp(x + dw - oi) on the diagonal = exp(x - (oi - dw))
      const T acc = normal_bwd_range(0, jd, zi, oi, gi, M, H, A, gA, gm, gq)
                  + normal_bwd_range(jd, jd + 1, zi, oi - dw, gi, M, H, A, gA, gm, gq)
                  + normal_bwd_range(jd + 1, B, zi, oi, gi, M, H, A, gA, gm, gq);
      gz[w] = 2 * acc;
    }
  });
  if (nthreads > 1) {
    for (int t = 0; t < nthreads; ++t) {
      const T* src = buf.data() + (size_t)t * 3 * n * B;
      for (int64_t k = 0; k < n * B; ++k) { gmu[k] += src[k]; gh[k] += src[n * B + k]; ga[k] += src[2 * n * B + k]; }
    }
  }
}

// lse[p, i, v, j] = log sum_k exp(Lt[p, v, k, j] - tau v_[p, i, v, k])
// v_: (P, c, V, K); Lt: (P, V, K, B); lse: (P, c, V, B). Work items are (p, i, v) triples.
template <typename T>
void concrete_lse_fwd(int64_t P, int64_t c, int64_t V, int64_t K, int64_t B, const T* val, const T* Lt, T tau,
                      T* lse, int nthreads) {
  parallel_rows(P * c * V, nthreads, [=](int, int64_t w0, int64_t w1) {
    std::vector<T> S((size_t)B);
    for (int64_t w = w0; w < w1; ++w) {
      const int64_t vv = w % V, p = w / (c * V);
      const T* vi = val + w * K;
      const T* L = Lt + (p * V + vv) * K * B;
      T* out = lse + w * B;
      std::fill(out, out + B, std::numeric_limits<T>::lowest());
      for (int64_t k = 0; k < K; ++k) {
        const T t = tau * vi[k]; const T* Lk = L + k * B;
        for (int64_t j = 0; j < B; ++j) { T s = Lk[j] - t; out[j] = s > out[j] ? s : out[j]; }
      }
      std::fill(S.begin(), S.end(), T(0));
      for (int64_t k = 0; k < K; ++k) {
        const T t = tau * vi[k]; const T* Lk = L + k * B;
        for (int64_t j = 0; j < B; ++j) S[j] += ex(Lk[j] - t - out[j]);
      }
      for (int64_t j = 0; j < B; ++j) out[j] += lg(S[j]);
    }
  });
}

// Backward of concrete_lse_fwd: gLt (P, V, K, B) and gv (P, c, V, K) written, *gtau = the tau gradient.
template <typename T>
void concrete_lse_bwd(int64_t P, int64_t c, int64_t V, int64_t K, int64_t B, const T* val, const T* Lt, T tau,
                      const T* lse, const T* grad, T* gLt, T* gv, T* gtau, int nthreads) {
  nthreads = (int)std::max<int64_t>(1, std::min<int64_t>(nthreads, P * c * V));
  const int64_t nL = P * V * K * B;
  std::vector<T> buf((size_t)(nthreads > 1 ? nthreads : 0) * nL, T(0));
  std::vector<T> gt((size_t)nthreads, T(0));
  std::fill(gLt, gLt + nL, T(0));
  parallel_rows(P * c * V, nthreads, [&, val, Lt, lse, grad, gv](int t, int64_t w0, int64_t w1) {
    T* G = nthreads > 1 ? buf.data() + (size_t)t * nL : gLt;
    T gtl = 0;
    for (int64_t w = w0; w < w1; ++w) {
      const int64_t vv = w % V, p = w / (c * V);
      const T* vi = val + w * K;
      const T* L = Lt + (p * V + vv) * K * B;
      T* GL = G + (p * V + vv) * K * B;
      const T* o = lse + w * B; const T* g = grad + w * B;
      for (int64_t k = 0; k < K; ++k) {
        const T t = tau * vi[k]; const T* Lk = L + k * B; T* Gk = GL + k * B;
        T acc = 0;
        for (int64_t j = 0; j < B; ++j) { T q = g[j] * ex(Lk[j] - t - o[j]); Gk[j] += q; acc += q; }
        gv[w * K + k] = -tau * acc;
        gtl -= vi[k] * acc;
      }
    }
    gt[t] = gtl;
  });
  T s = 0;
  for (int t = 0; t < nthreads; ++t) s += gt[t];
  *gtau = s;
  if (nthreads > 1)
    for (int t = 0; t < nthreads; ++t) {
      const T* src = buf.data() + (size_t)t * nL;
      for (int64_t k = 0; k < nL; ++k) gLt[k] += src[k];
    }
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

// Group and joint marginals of eq. 13 from the pairwise group log densities x (P, D, c, B):
// out[p, d, i] = log sum_j exp(x[p, d, i, j] + dw [j == i + offset]) for d < D, and out[p, D, i] the same of
// sum_d x[p, d, i, j] (the joint); out (P, D + 1, c). The constant off-diagonal log weight is added by the caller.
template <typename T>
void group_lse_fwd(int64_t P, int64_t D, int64_t c, int64_t B, const T* x, T dw, int64_t offset, T* out,
                   int nthreads) {
  parallel_rows(P * c, nthreads, [=](int, int64_t w0, int64_t w1) {
    std::vector<T> S((size_t)B);
    for (int64_t w = w0; w < w1; ++w) {
      const int64_t p = w / c, i = w % c, jd = i + offset;
      std::fill(S.begin(), S.end(), T(0));
      T* __restrict__ s = S.data();
      for (int64_t d = 0; d < D; ++d) {
        const T* __restrict__ row = x + ((p * D + d) * c + i) * B;
        out[(p * (D + 1) + d) * c + i] = diag_lse(row, B, jd, dw);
        for (int64_t j = 0; j < B; ++j) s[j] += row[j];
      }
      out[(p * (D + 1) + D) * c + i] = diag_lse(s, B, jd, dw);
    }
  });
}

// Backward: gx[p, d, i, j] = g[p, d, i] softmax_d[i, j] + g[p, D, i] softmax_joint[i, j] (written).
template <typename T>
void group_lse_bwd(int64_t P, int64_t D, int64_t c, int64_t B, const T* x, T dw, int64_t offset, const T* out,
                   const T* grad, T* gx, int nthreads) {
  parallel_rows(P * c, nthreads, [=](int, int64_t w0, int64_t w1) {
    std::vector<T> S((size_t)B), W((size_t)B);
    for (int64_t w = w0; w < w1; ++w) {
      const int64_t p = w / c, i = w % c, jd = i + offset;
      T* __restrict__ s = S.data();
      T* __restrict__ wj = W.data();
      std::fill(S.begin(), S.end(), T(0));
      for (int64_t d = 0; d < D; ++d) {
        const T* __restrict__ row = x + ((p * D + d) * c + i) * B;
        for (int64_t j = 0; j < B; ++j) s[j] += row[j];
      }
      const T oJ = out[(p * (D + 1) + D) * c + i], gJ = grad[(p * (D + 1) + D) * c + i];
      for (int64_t j = 0; j < B; ++j) wj[j] = gJ * ex(s[j] - oJ);
      wj[jd] = gJ * ex(s[jd] + dw - oJ);
      for (int64_t d = 0; d < D; ++d) {
        const T* __restrict__ row = x + ((p * D + d) * c + i) * B;
        T* __restrict__ g = gx + ((p * D + d) * c + i) * B;
        const T od = out[(p * (D + 1) + d) * c + i], gd = grad[(p * (D + 1) + d) * c + i];
        for (int64_t j = 0; j < B; ++j) g[j] = gd * ex(row[j] - od) + wj[j];
        g[jd] = gd * ex(row[jd] + dw - od) + wj[jd];
      }
    }
  });
}

}  // namespace

#define EXPORT(T, SUF)                                                                                            \
  extern "C" void normal_lse_fwd_##SUF(int64_t n, int64_t c, int64_t B, const T* z, const T* mu, const T* h,    \
                                       const T* a, double dw, int64_t offset, T* out, int nt) {                   \
    normal_lse_fwd<T>(n, c, B, z, mu, h, a, (T)dw, offset, out, nt);                                             \
  }                                                                                                               \
  extern "C" void normal_lse_bwd_##SUF(int64_t n, int64_t c, int64_t B, const T* z, const T* mu, const T* h,    \
                                       const T* a, double dw, int64_t offset, const T* out, const T* grad, T* gz, \
                                       T* gmu, T* gh, T* ga, int nt) {                                            \
    normal_lse_bwd<T>(n, c, B, z, mu, h, a, (T)dw, offset, out, grad, gz, gmu, gh, ga, nt);                      \
  }                                                                                                               \
  extern "C" void concrete_lse_fwd_##SUF(int64_t P, int64_t c, int64_t V, int64_t K, int64_t B, const T* v,     \
                                         const T* Lt, double tau, T* lse, int nt) {                               \
    concrete_lse_fwd<T>(P, c, V, K, B, v, Lt, (T)tau, lse, nt);                                                  \
  }                                                                                                               \
  extern "C" void concrete_lse_bwd_##SUF(int64_t P, int64_t c, int64_t V, int64_t K, int64_t B, const T* v,     \
                                         const T* Lt, double tau, const T* lse, const T* grad, T* gLt, T* gv,     \
                                         T* gtau, int nt) {                                                       \
    concrete_lse_bwd<T>(P, c, V, K, B, v, Lt, (T)tau, lse, grad, gLt, gv, gtau, nt);                             \
  }                                                                                                               \
  extern "C" void group_lse_fwd_##SUF(int64_t P, int64_t D, int64_t c, int64_t B, const T* x, double dw,         \
                                      int64_t offset, T* out, int nt) {                                           \
    group_lse_fwd<T>(P, D, c, B, x, (T)dw, offset, out, nt);                                                     \
  }                                                                                                               \
  extern "C" void group_lse_bwd_##SUF(int64_t P, int64_t D, int64_t c, int64_t B, const T* x, double dw,         \
                                      int64_t offset, const T* out, const T* grad, T* gx, int nt) {               \
    group_lse_bwd<T>(P, D, c, B, x, (T)dw, offset, out, grad, gx, nt);                                           \
  }

EXPORT(float, f32)
EXPORT(double, f64)
