// MEX operator of SimNets (Cohen & Shashua 2014, Eq. 1): the math of one set
// and the device-templated functor shared by the CPU kernel (mex_kernels.cc)
// and the GPU kernels (mex_gpu.h: each GPU thread reads one set in place and
// calls MexSetForward / MexSetBackward). No TensorFlow dependency.
//
//   MEX_xi{v_1..v_n} = (1/xi) log((1/n) sum_s exp(xi v_s))
//
// xi -> +inf: max, xi -> 0: mean, xi -> -inf: min. softmax_mode drops the 1/n
// (adds log(n)/xi). Evaluation, with m = max(v) (xi > 0) or min(v) (xi < 0):
//   |xi| (max - min) <  1e-3 (incl. xi == 0): mean + xi var/2 + xi^2 mu3/6 (xi == 0: the mean)
//   |xi| (max - min) <  1:                    mean + log1p(mean(expm1(xi (v - mean)))) / xi
//   otherwise:                                m + log(mean(exp(xi (v - m)))) / xi
// (the last two are the same formula, shifted: the first is accurate when the
// exponents are small). Sums are accumulated in double.
#ifndef KERNELZOO_OPS_CC_MEX_FUNCTOR_H_
#define KERNELZOO_OPS_CC_MEX_FUNCTOR_H_

#include <math.h>  // isinf, expm1f, ... in the global namespace (host and CUDA alike)

#include <cmath>
#include <cstdint>

#include "geometry.h"

namespace kernelzoo {

struct MexParams {
  WindowGeometry geo;        // k_* = pool size
  int64_t num_instances = 1;  // K
  int64_t channel_block = 1;  // bc
  int64_t regions_h = 1, regions_w = 1;  // offsets regions (Rh, Rw)
  bool softmax_mode = false;
  bool use_offsets = false;
  bool use_c = false;
  bool allow_gemm = true;  // attr `gemm`: false keeps the direct form (MexGemmApplies)

  KZ_HOST_DEVICE int64_t num_blocks() const { return geo.in_c / channel_block; }
  KZ_HOST_DEVICE int64_t out_channels() const { return num_blocks() * num_instances; }
  // Elements of one offsets region row: K * bh * bw * bc.
  KZ_HOST_DEVICE int64_t block_size() const { return geo.k_h * geo.k_w * channel_block; }
  KZ_HOST_DEVICE int64_t region_h(int64_t i) const { return i * regions_h / geo.out_h; }
  KZ_HOST_DEVICE int64_t region_w(int64_t j) const { return j * regions_w / geo.out_w; }
};

constexpr double kMexSeriesThreshold = 1e-3;
constexpr double kMexExpm1Threshold = 1.0;
// Below this |xi| * range, float sums lose d/dxi to cancellation: SIMD paths hand the set to
// the scalar backward, which centres it on its mean in double.
constexpr double kMexFloatXiGradThreshold = 0.05;

enum MexRegime : int {
  kMexNaN = 0,         // a NaN in the set: NaN value and gradients
  kMexExtreme = 1,     // xi = +-inf or infinite extreme: max / min
  kMexSeries = 2,      // small |xi| * range: moment series
  kMexExact = 3,       // log-mean-exp around the extreme
  kMexSoftmaxZero = 4  // softmax_mode with xi == 0: +inf, zero gradients
};

struct MexSetState {
  int regime = kMexNaN;
  float value = 0.f;
  double m = 0.0;      // the shift (exact: the mean where |xi| range < 1, else the extreme) / the extreme
  double mean = 0.0;   // series
  double var = 0.0;    // series (2nd central moment)
  double mu3 = 0.0;    // series (3rd central moment)
  double sum = 0.0;    // exact: sum_s exp(xi (v_s - m))
  double lse = 0.0;    // exact: log(mean exp(xi (v_s - m)))
  double range = 0.0;  // exact: max - min
};

// softmax_mode's term log(n) / xi (the 1/n it drops), computed only where that mode needs it.
KZ_HOST_DEVICE inline double MexSoftmaxTerm(int64_t n, double xi) { return log(static_cast<double>(n)) / xi; }

// Value of MEX_xi over v[0..n) (n >= 1). The state feeds MexSetBackward.
// Values: a float pointer, or (GPU kernels) any type whose v[s] is the float s.
template <typename Values>
KZ_HOST_DEVICE inline MexSetState MexSetForward(const Values& v, int64_t n, float xi,
                                                bool softmax_mode) {
  MexSetState st;
  const double nan = NAN;
  float lo = v[0], hi = v[0];
  bool has_nan = false;
  for (int64_t s = 0; s < n; ++s) {
    const float x = v[s];
    has_nan |= (x != x);
    lo = x < lo ? x : lo;
    hi = x > hi ? x : hi;
  }
  if (has_nan || xi != xi) {
    st.regime = kMexNaN;
    st.value = static_cast<float>(nan);
    return st;
  }
  if (softmax_mode && xi == 0.f) {
    st.regime = kMexSoftmaxZero;
    st.value = INFINITY;
    return st;
  }
  if (isinf(xi) || (xi > 0.f && isinf(hi)) || (xi < 0.f && isinf(lo))) {
    st.regime = kMexExtreme;
    st.m = xi > 0.f ? hi : lo;
    st.value = static_cast<float>(st.m);
    return st;
  }
  const double dxi = xi;
  const double range = static_cast<double>(hi) - static_cast<double>(lo);
  if (xi == 0.f || fabs(dxi) * range < kMexSeriesThreshold) {
    double sum = 0.0;
    for (int64_t s = 0; s < n; ++s) sum += v[s];
    const double mean = sum / n;
    double m2 = 0.0, m3 = 0.0;
    for (int64_t s = 0; s < n; ++s) {
      const double d = v[s] - mean;
      m2 += d * d;
      m3 += d * d * d;
    }
    st.regime = kMexSeries;
    st.mean = mean;
    st.var = m2 / n;
    st.mu3 = m3 / n;
    // xi == 0: the mean itself (for a set holding +-inf the moments are NaN, and 0 * NaN would be NaN).
    double value = xi == 0.f ? mean : mean + dxi * st.var / 2.0 + dxi * dxi * st.mu3 / 6.0;
    if (softmax_mode) value += MexSoftmaxTerm(n, dxi);
    st.value = static_cast<float>(value);
    return st;
  }
  st.regime = kMexExact;
  st.range = range;
  double acc = 0.0;
  if (fabs(dxi) * range < kMexExpm1Threshold) {
    // Centred on the mean, in double (every exponent is below 1): shifting by the extreme in float
    // left ~eps32 range(v) of rounding in a value about mean(v).
    double mean = 0.0;
    for (int64_t s = 0; s < n; ++s) mean += v[s];
    st.m = mean / n;
    for (int64_t s = 0; s < n; ++s) acc += expm1(dxi * (static_cast<double>(v[s]) - st.m));
    st.lse = log1p(acc / n);
    st.sum = n + acc;
  } else {
    st.m = xi > 0.f ? hi : lo;
    const float mf = static_cast<float>(st.m);
    for (int64_t s = 0; s < n; ++s) acc += expf(xi * (v[s] - mf));
    st.sum = acc;
    st.lse = log(acc / n);
  }
  double value = st.m + st.lse / dxi;
  if (softmax_mode) value += MexSoftmaxTerm(n, dxi);
  st.value = static_cast<float>(value);
  return st;
}

// Gradient of one set: gv[s] = g * d value / d v_s (each s assigned once),
// returns g * d value / d xi. Grads: a float pointer, or any type whose
// gv[s] = x stores x (the GPU kernels scatter it).
template <typename Values, typename Grads>
KZ_HOST_DEVICE inline double MexSetBackward(const Values& v, int64_t n, float xi,
                                            bool softmax_mode, const MexSetState& st,
                                            float g, Grads&& gv) {
  switch (st.regime) {
    case kMexNaN: {
      for (int64_t s = 0; s < n; ++s) gv[s] = NAN;
      return NAN;
    }
    case kMexSoftmaxZero: {
      for (int64_t s = 0; s < n; ++s) gv[s] = 0.f;
      return 0.0;
    }
    case kMexExtreme: {
      // Split evenly among exact ties, like tf.reduce_max's gradient.
      const float m = static_cast<float>(st.m);
      int64_t ties = 0;
      for (int64_t s = 0; s < n; ++s) ties += (v[s] == m);
      const float w = ties > 0 ? g / static_cast<float>(ties) : 0.f;
      for (int64_t s = 0; s < n; ++s) gv[s] = (v[s] == m) ? w : 0.f;
      return 0.0;
    }
    default:
      break;
  }
  const double dxi = xi;
  double dval_dxi;
  if (st.regime == kMexSeries) {
    if (xi == 0.f) {
      const float w = g / static_cast<float>(n);
      for (int64_t s = 0; s < n; ++s) gv[s] = w;
    } else {
      // Softmax weights around the mean (exponents are tiny here).
      const float mf = static_cast<float>(st.mean);
      double sum = 0.0;
      for (int64_t s = 0; s < n; ++s) sum += expf(xi * (v[s] - mf));
      const double scale = g / sum;
      for (int64_t s = 0; s < n; ++s)
        gv[s] = static_cast<float>(scale * expf(xi * (v[s] - mf)));
    }
    dval_dxi = st.var / 2.0 + dxi * st.mu3 / 3.0;
    if (softmax_mode) dval_dxi -= MexSoftmaxTerm(n, dxi) / dxi;
    return g * dval_dxi;
  }
  if (fabs(dxi) * st.range < kMexExpm1Threshold) {
    // Centred on the mean in double (exponents stay below 1): d/dxi = (E_w[d] - lse_c / xi) / xi
    // with both terms O(xi var), instead of two terms of size range / xi that cancel.
    double mean = 0.0;
    for (int64_t s = 0; s < n; ++s) mean += v[s];
    mean /= n;
    double s0 = 0.0, s1 = 0.0, q = 0.0;
    for (int64_t s = 0; s < n; ++s) {
      const double d = v[s] - mean;
      const double em = expm1(dxi * d);
      q += em;
      s0 += em + 1.0;
      s1 += (em + 1.0) * d;
    }
    for (int64_t s = 0; s < n; ++s) gv[s] = static_cast<float>(g * exp(dxi * (v[s] - mean)) / s0);
    dval_dxi = (s1 / s0 - log1p(q / n) / dxi) / dxi;
    if (softmax_mode) dval_dxi -= MexSoftmaxTerm(n, dxi) / dxi;
    return g * dval_dxi;
  }
  // Exact: w_s = exp(xi (v_s - m)) / sum; d/dxi = (sum_s w_s (v_s - m) - lse/xi) / xi.
  const double inv = 1.0 / st.sum;
  double wv = 0.0;
  for (int64_t s = 0; s < n; ++s) {
    const double d = static_cast<double>(v[s]) - st.m;
    const double w = exp(dxi * d) * inv;
    gv[s] = static_cast<float>(g * w);
    if (w > 0.0) wv += w * d;
  }
  dval_dxi = (wv - st.lse / dxi) / dxi;
  if (softmax_mode) dval_dxi -= MexSoftmaxTerm(n, dxi) / dxi;
  return g * dval_dxi;
}

// ------------------------------------------- class-wise MEX as a GEMM --
// Pool 1x1, blocks of bc >= kMexGemmMinBlock channels, K >= 2 instances sharing one finite nonzero
// xi (the SimNet's class-wise MEX), offsets b[r, k, :] shared by the positions of region r (zero
// without offsets). The set of row p (a position and channel block) and instance k is
// v_c = x_pc + b_rkc (c < bc) plus c_k, n = bc (+1) elements. Any split v = x' + b' serves
// (x'_pc = x_pc + beta_c, b'_rkc = b_rkc - beta_c); the kernels take beta = 0 or the mean of b_..c
// over regions and instances, whichever overshoots less on a sample (the mean removes what the
// offsets share across classes: trained SimNet offsets are mostly a per-template bias against the
// similarity's, and shifts overshoot max(v) by ~150 without it, ~10 with it). Shifts, for xi > 0
// the maxima (xi < 0: the minima) m_p of x'_p. and m_rk of b'_rk., M = m_p + m_rk; then
// xi (v_c - M) <= 0 and
//   E_pc = exp(xi (x'_pc - m_p)),  F_rkc = exp(xi (b'_rkc - m_rk)),  e_pk = exp(xi (c_k - M)),
//   T_pk = sum_c E_pc F_rkc (+ e_pk)             one (rows x bc) (bc x K) GEMM per region,
//   value = M + log(T / n) / xi (+ log(n) / xi in softmax mode),
// one exp per (row, channel) instead of per (row, channel, instance). Backward, G = g / T:
//   grad_x = E o (G F^T),  grad_b_r = F_r o (G^T E) over the rows of r,  grad_c = sum G e,
//   d value / d xi = (E_w[v - M] - log(T / n) / xi) / xi (- log(n) / xi^2 in softmax mode),
//   T E_w[v - M] = ((E o (x' - m)) F^T)_pk + (E (F o (b' - m_r))^T)_pk (+ e_pk (c_k - M)),
// where every term of each sum has the same sign. An entry takes the direct form
// (MexSetForward / MexSetBackward of its gathered set) unless MexGemmValue accepts it (and, in
// the backward with xi's gradient, MexGemmDxi):
//   T >= exp(-40) and finite: T >= exp(xi max(v) - xi M), so the shift overshoots xi max(v) by at
//     most 40: the terms within float precision (exp(-17)) of the largest stay normal floats
//     (> exp(-87)), so T, the value and the weights keep float's relative accuracy;
//   |xi| range(v) >= 1 (kMexExpm1Threshold): where the direct form is this same log-sum-exp; the
//     value's error, (relative error of T) / |xi|, is then at most that relative error times
//     range(v), as for the direct form (below, its expm1 / series forms are more accurate).
//     |xi| |value - mean(v)| >= 1 certifies it (as |value - mean| <= range(v)); otherwise the
//     kernel computes range(v) for the entry;
//   backward with xi's gradient: MexGemmDxi (d value / d xi accurate to ~1e-5 relative).
// The weights (grad_x, grad_b, grad_c) are then as accurate, relative, as T (float sums over the
// set: ~1e-6).
// Rows or offsets with a non-finite entry, and non-finite c_k, also take the direct form.
constexpr int64_t kMexGemmMinBlock = 32;
constexpr double kMexGemmMinSum = 4.248354255291589e-18;  // exp(-40)

// True when the op takes the GEMM form; xi: the K values (host memory).
KZ_HOST_DEVICE inline bool MexGemmApplies(const MexParams& p, const float* xi) {
  if (!p.allow_gemm || p.geo.k_h != 1 || p.geo.k_w != 1 || p.channel_block < kMexGemmMinBlock ||
      p.num_instances < 2)
    return false;
  const float x0 = xi[0];
  if (!(x0 == x0) || x0 == 0.f || isinf(x0)) return false;
  for (int64_t k = 1; k < p.num_instances; ++k)
    if (!(xi[k] == x0)) return false;
  return true;
}

// Value of a GEMM entry: shift M, sum t = T_pk, mean of the set, logn = log(set size).
// Returns false where the entry must take the direct form (T out of range, NaN mean); else the
// value, log(T), and whether |xi| |value - mean| certifies |xi| range(v) >= 1 (if not, the
// caller checks MexGemmRange).
KZ_HOST_DEVICE inline bool MexGemmValue(double shift, double t, double mean, double xi, double logn,
                                        bool softmax_mode, double* value, double* log_t,
                                        bool* certified) {
  if (!(t >= kMexGemmMinSum) || isinf(t) || !(mean == mean)) return false;  // NaN too
  const double lt = log(t);
  const double v = shift + (lt - logn) / xi;
  *certified = fabs(xi * (v - mean)) >= kMexExpm1Threshold;
  *log_t = lt;
  *value = softmax_mode ? v + logn / xi : v;
  return true;
}

// Whether the direct form would take its plain log-sum-exp (MexSetForward's regimes).
KZ_HOST_DEVICE inline bool MexGemmRange(double range, double xi) {
  return fabs(xi) * range >= kMexExpm1Threshold;
}

// d value / d xi of an accepted GEMM entry from ew = E_w[v - M] and log(T):
//   xi^2 d value / d xi = log(n) - H(w)  (softmax mode: -H(w)),  H(w) = log(T) - xi ew,
// the entropy of the weights, a difference of terms of size |xi ew| ~ |xi| (M - max(v)) each
// rounded to ~1e-7 relative (float E, F and sums; the direct form shifts by max(v) itself).
// False (the backward then takes the direct form) unless the result is >= kMexGemmDxiMargin
// (1 + |xi ew|), i.e. accurate to ~1e-5 relative: rejects saturated weights in softmax mode
// (H ~ 0) and near-uniform ones otherwise.
constexpr double kMexGemmDxiMargin = 2e-2;

KZ_HOST_DEVICE inline bool MexGemmDxi(double ew, double log_t, double xi, double logn,
                                      bool softmax_mode, double* dxi) {
  const double a = xi * ew;
  const double q = softmax_mode ? a - log_t : a - log_t + logn;
  if (!(fabs(q) >= kMexGemmDxiMargin * (1.0 + fabs(a)))) return false;
  *dxi = q / (xi * xi);
  return true;
}

// Forward: output (N, out_h, out_w, nb * K), channel j * K + k.
template <typename Device>
struct MexFunctor {
  void operator()(const Device& d, const MexParams& params, const float* input,
                  const float* xi, const float* offsets, const float* c,
                  float* output);
};

// Backward: gradients w.r.t. input, xi (unless grad_xi is null), offsets (if used) and c (if used).
template <typename Device>
struct MexGradFunctor {
  void operator()(const Device& d, const MexParams& params, const float* input,
                  const float* xi, const float* offsets, const float* c,
                  const float* grad_output, float* grad_input, float* grad_xi,
                  float* grad_offsets, float* grad_c);
};

}  // namespace kernelzoo

#endif  // KERNELZOO_OPS_CC_MEX_FUNCTOR_H_
