// MEX operator of SimNets (Cohen & Shashua 2014, Eq. 1): the math of one set
// and the device-templated functor shared by the CPU kernel (mex_kernels.cc)
// and a future CUDA kernel (mex_kernels.cu.cc, specialising the functors for
// Eigen::GpuDevice; each GPU thread would gather one set into local memory and
// call MexSetForward / MexSetBackward). No TensorFlow dependency.
//
//   MEX_xi{v_1..v_n} = (1/xi) log((1/n) sum_s exp(xi v_s))
//
// xi -> +inf: max, xi -> 0: mean, xi -> -inf: min. softmax_mode drops the 1/n
// (adds log(n)/xi). Evaluation: m = max(v) (xi > 0) or min(v) (xi < 0);
//   |xi| (max - min) <  1e-3 (incl. xi == 0): mean + xi var/2 + xi^2 mu3/6
//   |xi| (max - min) <  1:                    m + log1p(mean(expm1(xi (v - m)))) / xi
//   otherwise:                                m + log(mean(exp(xi (v - m)))) / xi
// (the last two are the same formula, the first is accurate when the
// exponents are small). Sums are accumulated in double.
#ifndef KERNELZOO_OPS_CC_MEX_FUNCTOR_H_
#define KERNELZOO_OPS_CC_MEX_FUNCTOR_H_

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
  double m = 0.0;      // extreme used as the shift (exact) / the extreme
  double mean = 0.0;   // series
  double var = 0.0;    // series (2nd central moment)
  double mu3 = 0.0;    // series (3rd central moment)
  double sum = 0.0;    // exact: sum_s exp(xi (v_s - m))
  double lse = 0.0;    // exact: log(mean exp(xi (v_s - m)))
  double range = 0.0;  // exact: max - min
};

// Value of MEX_xi over v[0..n) (n >= 1). The state feeds MexSetBackward.
KZ_HOST_DEVICE inline MexSetState MexSetForward(const float* v, int64_t n, float xi,
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
  const double logn = log(static_cast<double>(n));
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
    double value = mean + dxi * st.var / 2.0 + dxi * dxi * st.mu3 / 6.0;
    if (softmax_mode) value += logn / dxi;
    st.value = static_cast<float>(value);
    return st;
  }
  st.regime = kMexExact;
  st.m = xi > 0.f ? hi : lo;
  st.range = range;
  const float mf = static_cast<float>(st.m);
  double acc = 0.0;
  if (fabs(dxi) * range < kMexExpm1Threshold) {
    for (int64_t s = 0; s < n; ++s) acc += expm1f(xi * (v[s] - mf));
    st.lse = log1p(acc / n);
    st.sum = n + acc;
  } else {
    for (int64_t s = 0; s < n; ++s) acc += expf(xi * (v[s] - mf));
    st.sum = acc;
    st.lse = log(acc / n);
  }
  double value = st.m + st.lse / dxi;
  if (softmax_mode) value += logn / dxi;
  st.value = static_cast<float>(value);
  return st;
}

// Gradient of one set: gv[s] = g * d value / d v_s, returns g * d value / d xi.
KZ_HOST_DEVICE inline double MexSetBackward(const float* v, int64_t n, float xi,
                                            bool softmax_mode, const MexSetState& st,
                                            float g, float* gv) {
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
  const double logn = log(static_cast<double>(n));
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
    if (softmax_mode) dval_dxi -= logn / (dxi * dxi);
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
    if (softmax_mode) dval_dxi -= logn / (dxi * dxi);
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
  if (softmax_mode) dval_dxi -= logn / (dxi * dxi);
  return g * dval_dxi;
}

// Forward: output (N, out_h, out_w, nb * K), channel j * K + k.
template <typename Device>
struct MexFunctor {
  void operator()(const Device& d, const MexParams& params, const float* input,
                  const float* xi, const float* offsets, const float* c,
                  float* output);
};

// Backward: gradients w.r.t. input, xi, offsets (if used) and c (if used).
template <typename Device>
struct MexGradFunctor {
  void operator()(const Device& d, const MexParams& params, const float* input,
                  const float* xi, const float* offsets, const float* c,
                  const float* grad_output, float* grad_input, float* grad_xi,
                  float* grad_offsets, float* grad_c);
};

}  // namespace kernelzoo

#endif  // KERNELZOO_OPS_CC_MEX_FUNCTOR_H_
