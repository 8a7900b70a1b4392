// CPU kernels for KernelzooMex / KernelzooMexGrad.
//
// channel_block == 1 (pooling-style MEX): kVL consecutive channels are
// processed as SIMD lanes (vector exp / expm1 / log1p in cpu_util.h, sums in
// float: a set holds bh * bw (+1) elements, no channels); lanes in the moment
// series regime and channels past the last full vector use the scalar path.
// Other channel blocks use the scalar path (mex_functor.h, double sums), except
// that long sets (>= 2 vectors, e.g. a block over all channels) in the exact
// regime vectorise over the set's elements (SetForward / SetBackward).
//
// Forward: parallel over (image, output row); for each output position and
// channel block the valid block entries are gathered once, then each instance
// k adds its offsets (and c) and reduces the set with MexSetForward.
// Backward: recomputes each set, scatters the per-element gradients into the
// input gradient in two waves of row bands (no two concurrent bands touch the
// same input rows), and accumulates xi / offsets / c gradients per thread in
// double.
#define EIGEN_USE_THREADS

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor_shape.h"
#include "unsupported/Eigen/CXX11/Tensor"

#include "cpu_util.h"
#include "mex_functor.h"

namespace kernelzoo {

using CPUDevice = Eigen::ThreadPoolDevice;
using namespace cpu;  // NOLINT

namespace {

// Gathers the valid entries of the block of output (i, j), channel block cb:
// values into vals, their within-block index (a * bw + b) * bc + cc into
// sidx, and (if pos) their input offsets. Returns the count.
inline int64_t GatherBlock(const MexParams& prm, const float* img, int64_t i, int64_t j,
                           int64_t cb, float* vals, int32_t* sidx, int64_t* pos) {
  const WindowGeometry& g = prm.geo;
  const int64_t bc = prm.channel_block;
  const int64_t y0 = g.row0(i), x0 = g.col0(j);
  int64_t cnt = 0;
  for (int64_t a = 0; a < g.k_h; ++a) {
    const int64_t y = y0 + a;
    if (y < 0 || y >= g.in_h) continue;
    for (int64_t b = 0; b < g.k_w; ++b) {
      const int64_t x = x0 + b;
      if (x < 0 || x >= g.in_w) continue;
      const int64_t base = (y * g.in_w + x) * g.in_c + cb * bc;
      const int32_t s0 = static_cast<int32_t>((a * g.k_w + b) * bc);
      for (int64_t cc = 0; cc < bc; ++cc, ++cnt) {
        vals[cnt] = img[base + cc];
        sidx[cnt] = s0 + static_cast<int32_t>(cc);
        if (pos) pos[cnt] = base + cc;
      }
    }
  }
  return cnt;
}

struct MexScratch {
  std::vector<float> vals, v, gv;
  std::vector<int32_t> sidx;
  std::vector<int64_t> pos;
  std::vector<double> gxi, goff, gc;
  std::vector<VF> vv, gvv;
  std::vector<float> offk;
  bool used = false;
};

// ------------------------------------------------- vectorised (bc == 1) --
// Lanes are kVL consecutive channels; every lane shares the block geometry,
// the instance's xi, offsets and c. Lanes whose set needs the moment series
// (|xi| * range < 1e-3, xi finite nonzero) are flagged and redone by the
// scalar MexSetForward / MexSetBackward; so are, in the backward pass, lanes
// with |xi| * range < kMexFloatXiGradThreshold, where float d/dxi cancels.

struct VecSetInfo {
  VF m, lo, hi;
  VI nan, extreme, series;  // lane masks
};

inline VecSetInfo VecScan(const VF* v, int64_t n, float xi) {
  VecSetInfo in;
  in.lo = in.hi = v[0];
  in.nan = (v[0] != v[0]);
  for (int64_t s = 1; s < n; ++s) {
    in.lo = Min(in.lo, v[s]);
    in.hi = Max(in.hi, v[s]);
    in.nan |= (v[s] != v[s]);
  }
  in.m = xi > 0.f ? in.hi : in.lo;
  const VF inf = Splat(__builtin_inff());
  if (std::isinf(xi)) {
    in.extreme = ~VI{};
    in.series = VI{};
  } else {
    in.extreme = (in.m == inf) | (in.m == -inf);
    in.series = (Abs((in.hi - in.lo) * xi) < static_cast<float>(kMexSeriesThreshold)) &
                ~in.extreme & ~in.nan;
    if (xi == 0.f) in.series = VI{};  // handled exactly in vector form
  }
  return in;
}

inline bool AnyLane(VI m) {
  for (int i = 0; i < kVL; ++i)
    if (m[i]) return true;
  return false;
}

// Forward of one channel vector; v holds the n set vectors.
inline VF MexForwardVec(const VF* v, int64_t n, float xi, bool softmax, VI* series) {
  const VecSetInfo in = VecScan(v, n, xi);
  const VF nanv = Splat(__builtin_nanf(""));
  const float inv_n = 1.f / static_cast<float>(n);
  VF out;
  *series = in.series;
  if (xi == 0.f) {
    if (softmax) return Select(in.nan, nanv, Splat(__builtin_inff()));
    VF sum = VF{};
    for (int64_t s = 0; s < n; ++s) sum += v[s];
    return sum * inv_n;
  }
  if (std::isinf(xi)) return Select(in.nan, nanv, in.m);
  VF q = VF{};
  for (int64_t s = 0; s < n; ++s) q += Expm1((v[s] - in.m) * xi);
  out = in.m + Log1p(q * inv_n) * (1.f / xi);
  if (softmax) out += static_cast<float>(std::log(static_cast<double>(n)) / xi);
  out = Select(in.extreme, in.m, out);
  return Select(in.nan, nanv, out);
}

// Backward of one channel vector: gv[s] = g * dout/dv_s, returns g * dout/dxi.
inline VF MexBackwardVec(const VF* v, int64_t n, float xi, bool softmax, VF g, VF* gv,
                         VI* series) {
  const VecSetInfo in = VecScan(v, n, xi);
  const VF nanv = Splat(__builtin_nanf(""));
  const float inv_n = 1.f / static_cast<float>(n);
  *series = in.series;
  if (xi != 0.f && !std::isinf(xi)) {  // the scalar redo is exact where float d/dxi would cancel
    *series |= (Abs((in.hi - in.lo) * xi) < static_cast<float>(kMexFloatXiGradThreshold)) & ~in.extreme &
               ~in.nan;
  }
  VF gxi = VF{};
  if (xi == 0.f && softmax) {
    for (int64_t s = 0; s < n; ++s) gv[s] = VF{};
    return VF{};
  }
  if (xi == 0.f) {
    VF sum = VF{};
    for (int64_t s = 0; s < n; ++s) sum += v[s];
    const VF mean = sum * inv_n;
    VF var = VF{};
    for (int64_t s = 0; s < n; ++s) var += (v[s] - mean) * (v[s] - mean);
    const VF w = g * inv_n;
    for (int64_t s = 0; s < n; ++s) gv[s] = w;
    return g * var * (0.5f * inv_n);
  }
  VI ext = in.extreme;
  if (AnyLane(ext)) {
    VF ties = VF{};
    for (int64_t s = 0; s < n; ++s) ties += Select(v[s] == in.m, Splat(1.f), Splat(0.f));
    const VF w = g / Max(ties, Splat(1.f));
    for (int64_t s = 0; s < n; ++s) gv[s] = Select(v[s] == in.m, w, VF{});
  }
  if (!std::isinf(xi)) {
    VF sum = VF{}, q = VF{};
    for (int64_t s = 0; s < n; ++s) {
      const VF em = Expm1((v[s] - in.m) * xi);
      q += em;
      sum += em + 1.f;
    }
    const VF inv = g / sum;
    VF a = VF{};
    for (int64_t s = 0; s < n; ++s) {
      const VF d = v[s] - in.m;
      const VF e = Exp(d * xi);
      const VF w = e * inv;  // g * weight
      a += Select(e > 0.f, w * d, VF{});
      gv[s] = Select(ext, gv[s], w);
    }
    const VF lse = Log1p(q * inv_n);
    gxi = (a - g * lse * (1.f / xi)) * (1.f / xi);
    if (softmax) gxi -= g * static_cast<float>(std::log(static_cast<double>(n)) / (xi * (double)xi));
    gxi = Select(ext, VF{}, gxi);
  }
  for (int64_t s = 0; s < n; ++s) gv[s] = Select(in.nan, nanv, gv[s]);
  return Select(in.nan, nanv, gxi);
}

// Valid entries of the block of output (i, j) for channel block 0 of a bc == 1
// layout: input offsets (channel 0) and within-block indices a * bw + b.
inline int64_t BlockPositions(const WindowGeometry& g, int64_t i, int64_t j, int64_t* pos,
                              int32_t* sidx) {
  const int64_t y0 = g.row0(i), x0 = g.col0(j);
  int64_t cnt = 0;
  for (int64_t a = 0; a < g.k_h; ++a) {
    const int64_t y = y0 + a;
    if (y < 0 || y >= g.in_h) continue;
    for (int64_t b = 0; b < g.k_w; ++b) {
      const int64_t x = x0 + b;
      if (x < 0 || x >= g.in_w) continue;
      pos[cnt] = (y * g.in_w + x) * g.in_c;
      sidx[cnt] = static_cast<int32_t>(a * g.k_w + b);
      ++cnt;
    }
  }
  return cnt;
}

// ------------------------------------------------ long sets (bc > 1) --
// A set of n >= kMinLongSet elements (e.g. a 1x1 block over all channels)
// takes its exact regime with the set's elements as SIMD lanes: float sums per
// lane, combined in double. Every other regime goes to the scalar reference
// (MexSetForward / MexSetBackward), whose regime rules this follows.
constexpr int64_t kMinLongSet = 2 * kVL;

inline MexSetState SetForward(const float* v, int64_t n, float xi, bool softmax) {
  if (n < kMinLongSet || !(xi == xi) || std::isinf(xi) || xi == 0.f)
    return MexSetForward(v, n, xi, softmax);
  VF lo = LoadU(v), hi = lo;
  VI nan = (lo != lo);
  int64_t s = kVL;
  for (; s + kVL <= n; s += kVL) {
    const VF x = LoadU(v + s);
    lo = Min(lo, x);
    hi = Max(hi, x);
    nan |= (x != x);
  }
  float flo = lo[0], fhi = hi[0];
  bool has_nan = false;
  for (int lane = 0; lane < kVL; ++lane) {
    flo = std::min(flo, lo[lane]);
    fhi = std::max(fhi, hi[lane]);
    has_nan |= nan[lane] != 0;
  }
  for (; s < n; ++s) {
    has_nan |= (v[s] != v[s]);
    flo = std::min(flo, v[s]);
    fhi = std::max(fhi, v[s]);
  }
  const double dxi = xi;
  const double range = static_cast<double>(fhi) - static_cast<double>(flo);
  if (has_nan || std::isinf(flo) || std::isinf(fhi) || std::fabs(dxi) * range < kMexSeriesThreshold)
    return MexSetForward(v, n, xi, softmax);
  MexSetState st;
  st.regime = kMexExact;
  st.m = xi > 0.f ? fhi : flo;
  st.range = range;
  const float mf = static_cast<float>(st.m);
  const bool small = std::fabs(dxi) * range < kMexExpm1Threshold;
  VF acc = VF{};
  double tail = 0.0;
  int64_t t = 0;
  for (; t + kVL <= n; t += kVL) {
    const VF e = (LoadU(v + t) - mf) * xi;
    acc += small ? Expm1(e) : Exp(e);
  }
  for (; t < n; ++t) tail += small ? std::expm1(xi * (v[t] - mf)) : std::exp(xi * (v[t] - mf));
  double total = tail;
  for (int lane = 0; lane < kVL; ++lane) total += acc[lane];
  if (small) {
    st.lse = std::log1p(total / n);
    st.sum = n + total;
  } else {
    st.sum = total;
    st.lse = std::log(total / n);
  }
  double value = st.m + st.lse / dxi;
  if (softmax) value += std::log(static_cast<double>(n)) / dxi;
  st.value = static_cast<float>(value);
  return st;
}

inline double SetBackward(const float* v, int64_t n, float xi, bool softmax, const MexSetState& st,
                          float g, float* gv) {
  if (n < kMinLongSet || st.regime != kMexExact || std::fabs(xi) * st.range < kMexFloatXiGradThreshold)
    return MexSetBackward(v, n, xi, softmax, st, g, gv);
  const double dxi = xi;
  const float mf = static_cast<float>(st.m);
  const float scale = static_cast<float>(g / st.sum);
  VF acc = VF{};
  double tail = 0.0;
  int64_t t = 0;
  for (; t + kVL <= n; t += kVL) {
    const VF d = LoadU(v + t) - mf;
    const VF e = Exp(d * xi);
    StoreU(gv + t, e * scale);
    acc += Select(e > 0.f, e * d, VF{});
  }
  for (; t < n; ++t) {
    const double d = static_cast<double>(v[t]) - st.m;
    const double e = std::exp(dxi * d);
    gv[t] = static_cast<float>(e * scale);
    if (e > 0.0) tail += e * d;
  }
  double wv = tail;
  for (int lane = 0; lane < kVL; ++lane) wv += acc[lane];
  wv /= st.sum;
  double dval_dxi = (wv - st.lse / dxi) / dxi;
  if (softmax) dval_dxi -= std::log(static_cast<double>(n)) / (dxi * dxi);
  return g * dval_dxi;
}

// v[t] = vals[t] + offsets of instance k (off_k may be null) for the cnt gathered entries;
// a full block (cnt == block size) has sidx[t] == t, so the loop vectorises.
inline void AddOffsets(const float* vals, const int32_t* sidx, const float* off_k, int64_t cnt,
                       int64_t block_size, float* v) {
  if (off_k == nullptr) {
    std::copy(vals, vals + cnt, v);
  } else if (cnt == block_size) {
    for (int64_t t = 0; t < cnt; ++t) v[t] = vals[t] + off_k[t];
  } else {
    for (int64_t t = 0; t < cnt; ++t) v[t] = vals[t] + off_k[sidx[t]];
  }
}

}  // namespace

template <>
struct MexFunctor<CPUDevice> {
  void operator()(const CPUDevice& dev, const MexParams& prm, const float* input,
                  const float* xi, const float* offsets, const float* c,
                  float* output) {
    const WindowGeometry& g = prm.geo;
    const int64_t K = prm.num_instances, nb = prm.num_blocks();
    const int64_t bs = prm.block_size();
    const int64_t oc = nb * K;
    const int64_t units = g.batch * g.out_h;
    if (units == 0 || oc == 0 || g.out_w == 0) return;
    // Channels handled by the vector path (channel_block == 1 only).
    const int64_t vec_c = prm.channel_block == 1 ? g.in_c / kVL * kVL : 0;
    SlotPool slots(dev.numThreads() + 2);
    std::vector<MexScratch> scratch(slots.size());
    const double cost = static_cast<double>(g.out_w) * oc * (bs + 1) * 8.0;
    dev.parallelFor(
        units, Eigen::TensorOpCost(4.0 * g.out_w * g.k_h * g.in_c, 4.0 * g.out_w * oc, cost),
        [&](Eigen::Index first, Eigen::Index last) {
          SlotGuard guard(&slots);
          MexScratch& s = scratch[guard.slot()];
          s.vals.resize(bs);
          s.v.resize(bs + 1);
          s.sidx.resize(bs);
          s.pos.resize(bs);
          s.vv.resize(bs + 1);
          s.offk.resize(bs);
          for (Eigen::Index unit = first; unit < last; ++unit) {
            const int64_t image = unit / g.out_h, i = unit % g.out_h;
            const float* img = input + image * g.in_h * g.in_w * g.in_c;
            const int64_t rh = prm.region_h(i);
            for (int64_t j = 0; j < g.out_w; ++j) {
              float* out = output + ((image * g.out_h + i) * g.out_w + j) * oc;
              const int64_t rw = prm.region_w(j);
              const float* off_r =
                  prm.use_offsets ? offsets + (rh * prm.regions_w + rw) * K * bs : nullptr;
              if (vec_c > 0) {
                const int64_t cnt = BlockPositions(g, i, j, s.pos.data(), s.sidx.data());
                const int64_t n = cnt + (prm.use_c ? 1 : 0);
                for (int64_t k = 0; k < K; ++k) {
                  for (int64_t t = 0; t < cnt; ++t)
                    s.offk[t] = off_r ? off_r[k * bs + s.sidx[t]] : 0.f;
                  for (int64_t c0 = 0; c0 < vec_c; c0 += kVL) {
                    for (int64_t t = 0; t < cnt; ++t)
                      s.vv[t] = LoadU(img + s.pos[t] + c0) + s.offk[t];
                    if (prm.use_c) s.vv[cnt] = Splat(c[k]);
                    VI series;
                    VF o = MexForwardVec(s.vv.data(), n, xi[k], prm.softmax_mode, &series);
                    if (AnyLane(series)) {
                      for (int lane = 0; lane < kVL; ++lane) {
                        if (!series[lane]) continue;
                        for (int64_t t = 0; t < n; ++t) s.v[t] = s.vv[t][lane];
                        o[lane] = MexSetForward(s.v.data(), n, xi[k], prm.softmax_mode).value;
                      }
                    }
                    if (K == 1) {
                      StoreU(out + c0, o);
                    } else {
                      for (int lane = 0; lane < kVL; ++lane) out[(c0 + lane) * K + k] = o[lane];
                    }
                  }
                }
              }
              for (int64_t cb = vec_c; cb < nb; ++cb) {
                const int64_t cnt =
                    GatherBlock(prm, img, i, j, cb, s.vals.data(), s.sidx.data(), nullptr);
                for (int64_t k = 0; k < K; ++k) {
                  AddOffsets(s.vals.data(), s.sidx.data(), off_r ? off_r + k * bs : nullptr, cnt, bs,
                             s.v.data());
                  int64_t n = cnt;
                  if (prm.use_c) s.v[n++] = c[k];
                  out[cb * K + k] =
                      n > 0 ? SetForward(s.v.data(), n, xi[k], prm.softmax_mode).value : NAN;
                }
              }
            }
          }
        });
  }
};

template <>
struct MexGradFunctor<CPUDevice> {
  void operator()(const CPUDevice& dev, const MexParams& prm, const float* input,
                  const float* xi, const float* offsets, const float* c,
                  const float* grad_output, float* grad_input, float* grad_xi,
                  float* grad_offsets, float* grad_c) {
    const WindowGeometry& g = prm.geo;
    const int64_t K = prm.num_instances, nb = prm.num_blocks();
    const int64_t bs = prm.block_size();
    const int64_t oc = nb * K;
    const int64_t off_size = prm.use_offsets ? prm.regions_h * prm.regions_w * K * bs : 0;
    std::fill(grad_input, grad_input + g.batch * g.in_h * g.in_w * g.in_c, 0.f);
    std::fill(grad_xi, grad_xi + K, 0.f);
    if (prm.use_offsets) std::fill(grad_offsets, grad_offsets + off_size, 0.f);
    if (prm.use_c) std::fill(grad_c, grad_c + K, 0.f);
    if (g.positions() == 0 || oc == 0) return;
    const int64_t vec_c = prm.channel_block == 1 ? g.in_c / kVL * kVL : 0;

    const BandPlan plan(g.out_h, g.out_w, g.k_h, g.s_h, 256);
    SlotPool slots(dev.numThreads() + 2);
    std::vector<MexScratch> scratch(slots.size());
    const double cost =
        static_cast<double>(plan.rows_per_band) * g.out_w * oc * (bs + 1) * 16.0;

    auto run_band = [&](MexScratch& s, int64_t image, int64_t i0, int64_t i1) {
      if (!s.used) {
        s.used = true;
        s.vals.resize(bs);
        s.v.resize(bs + 1);
        s.gv.resize(bs + 1);
        s.sidx.resize(bs);
        s.pos.resize(bs);
        s.vv.resize(bs + 1);
        s.gvv.resize(bs + 1);
        s.offk.resize(bs);
        s.gxi.assign(K, 0.0);
        s.goff.assign(off_size, 0.0);
        s.gc.assign(prm.use_c ? K : 0, 0.0);
      }
      const float* img = input + image * g.in_h * g.in_w * g.in_c;
      float* gimg = grad_input + image * g.in_h * g.in_w * g.in_c;
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t rh = prm.region_h(i);
        for (int64_t j = 0; j < g.out_w; ++j) {
          const float* go = grad_output + ((image * g.out_h + i) * g.out_w + j) * oc;
          const int64_t rw = prm.region_w(j);
          const int64_t off_r = (rh * prm.regions_w + rw) * K * bs;
          if (vec_c > 0) {
            const int64_t cnt = BlockPositions(g, i, j, s.pos.data(), s.sidx.data());
            const int64_t n = cnt + (prm.use_c ? 1 : 0);
            for (int64_t k = 0; k < K; ++k) {
              for (int64_t t = 0; t < cnt; ++t)
                s.offk[t] = prm.use_offsets ? offsets[off_r + k * bs + s.sidx[t]] : 0.f;
              for (int64_t c0 = 0; c0 < vec_c; c0 += kVL) {
                VF gvec;
                if (K == 1) {
                  gvec = LoadU(go + c0);
                } else {
                  for (int lane = 0; lane < kVL; ++lane) gvec[lane] = go[(c0 + lane) * K + k];
                }
                for (int64_t t = 0; t < cnt; ++t)
                  s.vv[t] = LoadU(img + s.pos[t] + c0) + s.offk[t];
                if (prm.use_c) s.vv[cnt] = Splat(c[k]);
                VI series;
                VF gx = MexBackwardVec(s.vv.data(), n, xi[k], prm.softmax_mode, gvec,
                                       s.gvv.data(), &series);
                if (AnyLane(series)) {
                  for (int lane = 0; lane < kVL; ++lane) {
                    if (!series[lane]) continue;
                    for (int64_t t = 0; t < n; ++t) s.v[t] = s.vv[t][lane];
                    const MexSetState st =
                        MexSetForward(s.v.data(), n, xi[k], prm.softmax_mode);
                    gx[lane] = static_cast<float>(MexSetBackward(
                        s.v.data(), n, xi[k], prm.softmax_mode, st, gvec[lane], s.gv.data()));
                    for (int64_t t = 0; t < n; ++t) s.gvv[t][lane] = s.gv[t];
                  }
                }
                for (int64_t t = 0; t < cnt; ++t) {
                  float* dst = gimg + s.pos[t] + c0;
                  StoreU(dst, LoadU(dst) + s.gvv[t]);
                }
                if (prm.use_offsets) {
                  double* go_k = s.goff.data() + off_r + k * bs;
                  for (int64_t t = 0; t < cnt; ++t) go_k[s.sidx[t]] += HSum(s.gvv[t]);
                }
                if (prm.use_c) s.gc[k] += HSum(s.gvv[cnt]);
                s.gxi[k] += HSum(gx);
              }
            }
          }
          for (int64_t cb = vec_c; cb < nb; ++cb) {
            const int64_t cnt = GatherBlock(prm, img, i, j, cb, s.vals.data(),
                                            s.sidx.data(), s.pos.data());
            for (int64_t k = 0; k < K; ++k) {
              const float gk = go[cb * K + k];
              AddOffsets(s.vals.data(), s.sidx.data(),
                         prm.use_offsets ? offsets + off_r + k * bs : nullptr, cnt, bs, s.v.data());
              int64_t n = cnt;
              if (prm.use_c) s.v[n++] = c[k];
              if (n == 0) continue;
              const MexSetState st = SetForward(s.v.data(), n, xi[k], prm.softmax_mode);
              s.gxi[k] += SetBackward(s.v.data(), n, xi[k], prm.softmax_mode, st, gk, s.gv.data());
              for (int64_t t = 0; t < cnt; ++t) gimg[s.pos[t]] += s.gv[t];
              if (prm.use_offsets) {
                double* go_k = s.goff.data() + off_r + k * bs;
                if (cnt == bs) {
                  for (int64_t t = 0; t < cnt; ++t) go_k[t] += s.gv[t];
                } else {
                  for (int64_t t = 0; t < cnt; ++t) go_k[s.sidx[t]] += s.gv[t];
                }
              }
              if (prm.use_c) s.gc[k] += s.gv[cnt];
            }
          }
        }
      }
    };

    for (int wave = 0; wave < 2; ++wave) {
      const int64_t units = plan.Units(g.batch, wave);
      if (units == 0) continue;
      dev.parallelFor(units, Eigen::TensorOpCost(0, 0, cost),
                      [&](Eigen::Index first, Eigen::Index last) {
                        SlotGuard guard(&slots);
                        MexScratch& s = scratch[guard.slot()];
                        for (Eigen::Index u = first; u < last; ++u) {
                          int64_t image, i0, i1;
                          plan.Unit(u, wave, g.out_h, &image, &i0, &i1);
                          run_band(s, image, i0, i1);
                        }
                      });
    }
    std::vector<double> gxi(K, 0.0), goff(off_size, 0.0), gc(prm.use_c ? K : 0, 0.0);
    for (const MexScratch& s : scratch) {
      if (!s.used) continue;
      for (int64_t k = 0; k < K; ++k) gxi[k] += s.gxi[k];
      for (int64_t t = 0; t < off_size; ++t) goff[t] += s.goff[t];
      for (size_t k = 0; k < gc.size(); ++k) gc[k] += s.gc[k];
    }
    for (int64_t k = 0; k < K; ++k) grad_xi[k] = static_cast<float>(gxi[k]);
    for (int64_t t = 0; t < off_size; ++t) grad_offsets[t] = static_cast<float>(goff[t]);
    for (size_t k = 0; k < gc.size(); ++k) grad_c[k] = static_cast<float>(gc[k]);
  }
};

// ================================================================= OpKernels
namespace {

using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;

class MexOpBase : public OpKernel {
 public:
  explicit MexOpBase(OpKernelConstruction* ctx) : OpKernel(ctx) {
    std::vector<int32_t> pool, strides;
    std::string padding;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("num_instances", &num_instances_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("channel_block", &channel_block_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("pool_size", &pool));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("strides", &strides));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("padding", &padding));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("softmax_mode", &softmax_mode_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("use_offsets", &use_offsets_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("use_c", &use_c_));
    OP_REQUIRES(ctx, pool.size() == 2 && pool[0] >= 1 && pool[1] >= 1,
                absl::InvalidArgumentError("pool_size must be 2 positive ints"));
    OP_REQUIRES(ctx, strides.size() == 2 && strides[0] >= 1 && strides[1] >= 1,
                absl::InvalidArgumentError("strides must be 2 positive ints"));
    OP_REQUIRES(ctx, num_instances_ >= 1 && channel_block_ >= 1,
                absl::InvalidArgumentError("num_instances and channel_block must be >= 1"));
    b_h_ = pool[0];
    b_w_ = pool[1];
    s_h_ = strides[0];
    s_w_ = strides[1];
    same_ = padding == "same";
  }

 protected:
  absl::Status Prepare(OpKernelContext* ctx, MexParams* prm) const {
    const Tensor& input = ctx->input(0);
    const Tensor& xi = ctx->input(1);
    const Tensor& offsets = ctx->input(2);
    const Tensor& c = ctx->input(3);
    const int64_t K = num_instances_;
    if (input.dims() != 4) {
      return absl::InvalidArgumentError(absl::StrCat(
          "input must be 4-D (N, H, W, C), got shape ", input.shape().DebugString()));
    }
    if (input.dim_size(3) % channel_block_ != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "input channels (", input.dim_size(3), ") must be a multiple of channel_block (",
          channel_block_, ")"));
    }
    if (xi.dims() != 1 || xi.dim_size(0) != K) {
      return absl::InvalidArgumentError(absl::StrCat(
          "xi must have shape (", K, ",), got ", xi.shape().DebugString()));
    }
    WindowGeometry& g = prm->geo;
    g.batch = input.dim_size(0);
    g.in_h = input.dim_size(1);
    g.in_w = input.dim_size(2);
    g.in_c = input.dim_size(3);
    g.k_h = b_h_;
    g.k_w = b_w_;
    g.s_h = s_h_;
    g.s_w = s_w_;
    if (!g.Init(same_)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "pool ", g.k_h, "x", g.k_w, " does not fit the input ", g.in_h, "x", g.in_w,
          " with padding 'valid'"));
    }
    if (!g.WindowWithinLimit(channel_block_)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "block ", g.k_h, "x", g.k_w, "x", channel_block_, " has more than 2^24 entries"));
    }
    if (use_offsets_) {
      const TensorShape want({offsets.dims() == 6 ? offsets.dim_size(0) : 1,
                              offsets.dims() == 6 ? offsets.dim_size(1) : 1, K, b_h_, b_w_,
                              channel_block_});
      if (offsets.dims() != 6 || offsets.shape() != want || offsets.dim_size(0) < 1 ||
          offsets.dim_size(1) < 1 ||
          offsets.dim_size(0) > std::max<int64_t>(g.out_h, 1) ||
          offsets.dim_size(1) > std::max<int64_t>(g.out_w, 1)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "offsets must have shape (Rh, Rw, ", K, ", ", b_h_, ", ", b_w_, ", ",
            channel_block_, ") with 1 <= Rh <= ", g.out_h, " and 1 <= Rw <= ", g.out_w,
            ", got ", offsets.shape().DebugString()));
      }
      prm->regions_h = offsets.dim_size(0);
      prm->regions_w = offsets.dim_size(1);
    }
    if (use_c_ && (c.dims() != 1 || c.dim_size(0) != K)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "c must have shape (", K, ",), got ", c.shape().DebugString()));
    }
    prm->num_instances = K;
    prm->channel_block = channel_block_;
    prm->softmax_mode = softmax_mode_;
    prm->use_offsets = use_offsets_;
    prm->use_c = use_c_;
    return absl::OkStatus();
  }

  int64_t num_instances_ = 1, channel_block_ = 1;
  int64_t b_h_ = 1, b_w_ = 1, s_h_ = 1, s_w_ = 1;
  bool same_ = false, softmax_mode_ = false, use_offsets_ = false, use_c_ = false;
};

class MexOp : public MexOpBase {
 public:
  using MexOpBase::MexOpBase;

  void Compute(OpKernelContext* ctx) override {
    MexParams prm;
    OP_REQUIRES_OK(ctx, Prepare(ctx, &prm));
    const WindowGeometry& g = prm.geo;
    Tensor* output = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(
                            0, TensorShape({g.batch, g.out_h, g.out_w, prm.out_channels()}),
                            &output));
    MexFunctor<CPUDevice>()(ctx->eigen_cpu_device(), prm,
                            ctx->input(0).flat<float>().data(),
                            ctx->input(1).flat<float>().data(),
                            use_offsets_ ? ctx->input(2).flat<float>().data() : nullptr,
                            use_c_ ? ctx->input(3).flat<float>().data() : nullptr,
                            output->flat<float>().data());
  }
};

class MexGradOp : public MexOpBase {
 public:
  using MexOpBase::MexOpBase;

  void Compute(OpKernelContext* ctx) override {
    MexParams prm;
    OP_REQUIRES_OK(ctx, Prepare(ctx, &prm));
    const WindowGeometry& g = prm.geo;
    const Tensor& grad = ctx->input(4);
    const TensorShape out_shape({g.batch, g.out_h, g.out_w, prm.out_channels()});
    OP_REQUIRES(ctx, grad.shape() == out_shape,
                absl::InvalidArgumentError(absl::StrCat(
                    "grad must have the output shape ", out_shape.DebugString(), ", got ",
                    grad.shape().DebugString())));
    Tensor *gi = nullptr, *gxi = nullptr, *goff = nullptr, *gc = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, ctx->input(0).shape(), &gi));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, ctx->input(1).shape(), &gxi));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, ctx->input(2).shape(), &goff));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(3, ctx->input(3).shape(), &gc));
    if (!use_offsets_) goff->flat<float>().setZero();
    if (!use_c_) gc->flat<float>().setZero();
    MexGradFunctor<CPUDevice>()(
        ctx->eigen_cpu_device(), prm, ctx->input(0).flat<float>().data(),
        ctx->input(1).flat<float>().data(),
        use_offsets_ ? ctx->input(2).flat<float>().data() : nullptr,
        use_c_ ? ctx->input(3).flat<float>().data() : nullptr, grad.flat<float>().data(),
        gi->flat<float>().data(), gxi->flat<float>().data(),
        use_offsets_ ? goff->flat<float>().data() : nullptr,
        use_c_ ? gc->flat<float>().data() : nullptr);
  }
};

REGISTER_KERNEL_BUILDER(Name("KernelzooMex").Device(::tensorflow::DEVICE_CPU), MexOp);
REGISTER_KERNEL_BUILDER(Name("KernelzooMexGrad").Device(::tensorflow::DEVICE_CPU), MexGradOp);

// GPU slot: mex_kernels.cu.cc would define MexFunctor<Eigen::GpuDevice> and
// MexGradFunctor<Eigen::GpuDevice>; register them here under GOOGLE_CUDA.

}  // namespace
}  // namespace kernelzoo
