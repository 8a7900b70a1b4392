// CPU kernels for KernelzooMex / KernelzooMexGrad.
//
// channel_block == 1 (pooling-style MEX): kVL consecutive channels are
// processed as SIMD lanes (vector exp / expm1 / log1p in cpu_util.h, sums in
// float: a set holds bh * bw (+1) elements, no channels); lanes in the moment
// series regime and channels past the last full vector use the scalar path.
// Other channel blocks use the scalar path (mex_functor.h, double sums), except
// that long sets (>= 2 vectors, e.g. a block over all channels) in the exact
// regime vectorise over the set's elements (SetForward / SetBackward).
// The class-wise MEX (pool 1x1, >= 32 channels per block, >= 2 instances with
// one shared finite nonzero xi; MexGemmApplies) takes the exp-domain GEMM form
// instead (MexGemmForward / MexGemmBackward below; math in mex_functor.h), each
// entry it cannot certify falling back to SetForward / SetBackward.
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
#include <memory>
#include <mutex>
#include <vector>

#include "unsupported/Eigen/CXX11/Tensor"

#include "cpu_util.h"
#include "mex_functor.h"
#include "mex_op.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

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
  if (xi == 0.f && softmax) return Select(in.nan, nanv, Splat(__builtin_inff()));
  if (std::isinf(xi)) return Select(in.nan, nanv, in.m);
  VF sum = VF{};
  for (int64_t s = 0; s < n; ++s) sum += v[s];
  if (xi == 0.f) return sum * inv_n;
  // Lanes whose exponents are all small shift by their mean (as MexSetForward), the others by the extreme.
  const VI small = Abs((in.hi - in.lo) * xi) < static_cast<float>(kMexExpm1Threshold);
  const VF shift = Select(small, sum * inv_n, in.m);
  VF q = VF{};
  for (int64_t s = 0; s < n; ++s) q += Expm1((v[s] - shift) * xi);
  out = shift + Log1p(q * inv_n) * (1.f / xi);
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

// Mean of v[0..n): float sums per lane, combined in double.
inline double LaneSumMean(const float* v, int64_t n) {
  VF acc = VF{};
  int64_t t = 0;
  for (; t + kVL <= n; t += kVL) acc += LoadU(v + t);
  double sum = 0.0;
  for (; t < n; ++t) sum += v[t];
  for (int lane = 0; lane < kVL; ++lane) sum += acc[lane];
  return sum / n;
}

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
  st.range = range;
  const bool small = std::fabs(dxi) * range < kMexExpm1Threshold;
  // Shift: the mean where every exponent is small (as the scalar form; the extreme left ~eps32 range(v)
  // of rounding in a value about mean(v)), else the extreme.
  st.m = small ? static_cast<float>(LaneSumMean(v, n)) : (xi > 0.f ? fhi : flo);
  const float mf = static_cast<float>(st.m);
  // exp form: the extreme's terms (exactly 1) are counted apart, so that float lanes keep the
  // small terms of saturated weights (the entropy in the softmax-mode d/dxi is their size).
  VF acc = VF{}, ties = VF{};
  double tail = 0.0;
  int64_t t = 0;
  for (; t + kVL <= n; t += kVL) {
    const VF d = LoadU(v + t) - mf;
    if (small) {
      acc += Expm1(d * xi);
    } else {
      const VI top = (d == 0.f);
      acc += Select(top, VF{}, Exp(d * xi));
      ties += Select(top, Splat(1.f), VF{});
    }
  }
  for (; t < n; ++t) tail += small ? std::expm1(xi * (v[t] - mf)) : std::exp(xi * (v[t] - mf));
  double total = tail;
  for (int lane = 0; lane < kVL; ++lane) total += acc[lane];
  for (int lane = 0; lane < kVL; ++lane) total += ties[lane];
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

// ------------------------------------------- class-wise MEX as a GEMM --
// The math and the per-entry acceptance rule are in mex_functor.h. A row is one output position
// and channel block (q = position * nb + block; its output is output[q * K .. q * K + K), its
// input the bc channels of the block at the position's input pixel). Rows are grouped by offsets
// region and cut into chunks of at most GemmChunkRows rows, one parallelFor task each: the task
// computes E (and E o (x' - m)) for its rows with the vector Exp, the chunk's products with the
// small kernels below (on per-slot scratch), then each entry from its sums, or by the direct
// form (SetForward / SetBackward of the gathered set) where MexGemmValue / MexGemmDxi reject it
// (G = 0 there, so the products skip it). grad_offsets: each chunk adds F o (G^T E) plus its
// direct entries into one double accumulator per region, under that region's mutex; xi and c
// gradients are summed per chunk in double and added under one mutex.
//
// Layouts: rows of E, E o (x' - m) and F are ld = bc rounded up to whole vectors (zero padding);
// F^T (bc x Kp) and the per-row sums (rows x Kp) put the instances in the vector lanes,
// Kp = K rounded up to whole vectors. The products are tall and skinny (rows x bc x K, K ~ 10):
// plain register-blocked loops without packing beat Eigen's GEMM there by 2-4x (measured).

// Rows per chunk: E and E o (x' - m) of a chunk take ~2 x 256 KiB.
inline int64_t GemmChunkRows(int64_t bc) { return std::max<int64_t>(16, std::min<int64_t>(256, 65536 / bc)); }

// out[t * ldo + j] = sum_(c < n) a[t * lda + c] ft[c * ldf + j] for t < nr, j < width (a multiple
// of kVL): instances as lanes, RB rows by NB vectors of instances per block.
template <int RB, int NB>
inline void DotLanesBlock(const float* a, int64_t lda, int64_t n, const float* ft, int64_t ldf, float* out,
                          int64_t ldo) {
  VF acc[RB][NB];
  for (int i = 0; i < RB; ++i)
    for (int j = 0; j < NB; ++j) acc[i][j] = VF{};
  for (int64_t c = 0; c < n; ++c) {
    VF fv[NB];
    for (int j = 0; j < NB; ++j) fv[j] = LoadU(ft + c * ldf + j * kVL);
    for (int i = 0; i < RB; ++i) {
      const float av = a[i * lda + c];
      for (int j = 0; j < NB; ++j) acc[i][j] += av * fv[j];
    }
  }
  for (int i = 0; i < RB; ++i)
    for (int j = 0; j < NB; ++j) StoreU(out + i * ldo + j * kVL, acc[i][j]);
}

template <int NB>
inline void DotLanesRows(const float* a, int64_t nr, int64_t lda, int64_t n, const float* ft, int64_t ldf,
                         float* out, int64_t ldo) {
  constexpr int RB = NB == 1 ? 8 : 6;
  int64_t t = 0;
  for (; t + RB <= nr; t += RB) DotLanesBlock<RB, NB>(a + t * lda, lda, n, ft, ldf, out + t * ldo, ldo);
  for (; t < nr; ++t) DotLanesBlock<1, NB>(a + t * lda, lda, n, ft, ldf, out + t * ldo, ldo);
}

void DotLanes(const float* a, int64_t nr, int64_t lda, int64_t n, const float* ft, int64_t ldf, int64_t width,
              float* out, int64_t ldo) {
  for (int64_t j = 0; j < width; j += 2 * kVL) {
    if (j + 2 * kVL <= width) {
      DotLanesRows<2>(a, nr, lda, n, ft + j, ldf, out + j, ldo);
    } else {
      DotLanesRows<1>(a, nr, lda, n, ft + j, ldf, out + j, ldo);
    }
  }
}

// A non-temporal store of a whole vector at an address aligned to it (a plain store off x86).
inline void StreamStore(float* p, VF v) {
#if defined(__AVX512F__)  // kVL as chosen in cpu_util.h
  _mm512_stream_ps(p, (__m512)v);
#elif defined(__AVX__)
  _mm256_stream_ps(p, (__m256)v);
#elif defined(__SSE__)
  _mm_stream_ps(p, (__m128)v);
#else
  StoreU(p, v);
#endif
}

// Orders non-temporal stores before later ones (and so before the task's completion is seen).
inline void StreamFence() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_sfence();
#else
  std::atomic_thread_fence(std::memory_order_seq_cst);
#endif
}

// gx[c] = e[c] sum_(k < K) g[k] f[k * ldf + c] for c < n; e and f rows padded to whole vectors.
// Whole aligned vectors of gx are written with non-temporal stores (the input gradient is as large
// as the input and not read again here: no read-for-ownership); callers fence before returning.
inline void CombineRow(const float* e, const float* g, int64_t K, const float* f, int64_t ldf, int64_t n,
                       float* gx) {
  for (int64_t c = 0; c < n; c += kVL) {
    VF acc = VF{};
    for (int64_t k = 0; k < K; ++k) acc += g[k] * LoadU(f + k * ldf + c);
    const VF out = LoadU(e + c) * acc;
    if (c + kVL > n) {
      for (int64_t lane = 0; lane < n - c; ++lane) gx[c + lane] = out[lane];
    } else if (reinterpret_cast<uintptr_t>(gx + c) % sizeof(VF) == 0) {
      StreamStore(gx + c, out);
    } else {
      StoreU(gx + c, out);
    }
  }
}

// d[k * ld + c] = f[k * ld + c] sum_(t < nr) g[t * ldg + k] a[t * ld + c] for k < K, c < ld (a
// multiple of kVL); g's rows hold at least K rounded up to 4 entries (zeros past K).
template <int CB>
inline void ColumnSumsBlock(const float* a, int64_t nr, int64_t ld, const float* g, int64_t ldg, int64_t k0,
                            int64_t K, const float* f, float* d) {
  constexpr int KB = 4;
  VF acc[KB][CB];
  for (int k = 0; k < KB; ++k)
    for (int j = 0; j < CB; ++j) acc[k][j] = VF{};
  for (int64_t t = 0; t < nr; ++t) {
    VF av[CB];
    for (int j = 0; j < CB; ++j) av[j] = LoadU(a + t * ld + j * kVL);
    for (int k = 0; k < KB; ++k) {
      const float gv = g[t * ldg + k0 + k];
      for (int j = 0; j < CB; ++j) acc[k][j] += gv * av[j];
    }
  }
  for (int k = 0; k < KB && k0 + k < K; ++k)
    for (int j = 0; j < CB; ++j) {
      const int64_t at = (k0 + k) * ld + j * kVL;
      StoreU(d + at, LoadU(f + at) * acc[k][j]);
    }
}

void ColumnSums(const float* a, int64_t nr, int64_t ld, const float* g, int64_t ldg, int64_t K, const float* f,
                float* d) {
  for (int64_t k0 = 0; k0 < K; k0 += 4) {
    int64_t c = 0;
    for (; c + 4 * kVL <= ld; c += 4 * kVL) ColumnSumsBlock<4>(a + c, nr, ld, g, ldg, k0, K, f + c, d + c);
    for (; c < ld; c += kVL) ColumnSumsBlock<1>(a + c, nr, ld, g, ldg, k0, K, f + c, d + c);
  }
}

// lo, hi and sum of x[0..n): float lanes, lanes summed in double. A NaN leaves lo / hi
// meaningless but makes the sum NaN; the sum is finite iff every entry is (or it overflows).
inline void RowScan(const float* x, int64_t n, float* lo, float* hi, double* sum) {
  VF vlo = Splat(__builtin_inff()), vhi = Splat(-__builtin_inff()), vs = VF{};
  int64_t c = 0;
  for (; c + kVL <= n; c += kVL) {
    const VF v = LoadU(x + c);
    vlo = Min(vlo, v);
    vhi = Max(vhi, v);
    vs += v;
  }
  float l = vlo[0], h = vhi[0];
  double s = 0.0;
  for (int lane = 0; lane < kVL; ++lane) {
    l = std::min(l, vlo[lane]);
    h = std::max(h, vhi[lane]);
    s += vs[lane];
  }
  for (; c < n; ++c) {
    l = std::min(l, x[c]);
    h = std::max(h, x[c]);
    s += x[c];
  }
  *lo = l;
  *hi = h;
  *sum = s;
}

// e[c] = exp(xi (x[c] - m)) for finite x, and, if xe, xe[c] = e[c] (x[c] - m) (0 where e == 0);
// c < n. e may be x.
inline void ExpRow(const float* x, int64_t n, float m, float xi, float* e, float* xe) {
  auto one = [&](VF d, float* eo, float* xo, int64_t len) {
    const VF ev = Exp(d * xi);
    const VF xv = Select(ev > 0.f, ev * d, VF{});
    if (len == kVL) {
      StoreU(eo, ev);
      if (xo) StoreU(xo, xv);
    } else {
      for (int64_t lane = 0; lane < len; ++lane) {
        eo[lane] = ev[lane];
        if (xo) xo[lane] = xv[lane];
      }
    }
  };
  int64_t c = 0;
  for (; c + kVL <= n; c += kVL) one(LoadU(x + c) - m, e + c, xe ? xe + c : nullptr, kVL);
  if (c < n) {
    VF d = VF{};
    for (int64_t lane = 0; lane < n - c; ++lane) d[lane] = x[c + lane] - m;
    one(d, e + c, xe ? xe + c : nullptr, n - c);
  }
}

struct GemmPlan {
  int64_t K = 0, bc = 0, nb = 0, R = 1;
  int64_t n = 0;                     // set size
  int64_t ld = 0;                    // bc rounded up to whole vectors
  int64_t kp = 0;                    // K rounded up to whole vectors
  int64_t ldt = 0;                   // columns of ft and T: kp, or 2 kp with d / d xi
  float xi = 1.f;
  double logn = 0.0;
  double c_lo = INFINITY, c_hi = -INFINITY;  // over finite c
  bool softmax = false;
  bool backward = false;
  bool xi_grad = false;              // backward: d / d xi wanted (U, V and E o (x' - m) computed)
  std::vector<float> beta;           // (bc): x' = x + beta, b' = b - beta (empty: 0; GemmSplit)
  int64_t ft_stride = 0;             // floats per region in ft
  std::vector<float> ft;             // per region (bc, ldt): F^T (| (F o (b' - m))^T with d / d xi)
  std::vector<float> f;              // backward, per region (K, ld): F
  std::vector<double> shift_b;       // (R, K): max (xi > 0) / min of b'_rk.
  std::vector<double> sum_b;         // (R, K): sum of b'_rk.
  std::vector<uint8_t> finite_b;     // (R, K)
  std::vector<double> lo_b, hi_b;    // per region: min / max of b' over finite k
  std::vector<int64_t> order;        // rows grouped by region
  std::vector<int64_t> chunk_begin;  // chunk boundaries in order (chunks + 1)
  std::vector<int64_t> chunk_region;

  int64_t chunks() const { return static_cast<int64_t>(chunk_region.size()); }
};

// Input offset of row q of a pool-1x1 MEX.
inline int64_t GemmRowInput(const MexParams& prm, int64_t q) {
  const WindowGeometry& g = prm.geo;
  const int64_t nb = prm.num_blocks(), p = q / nb, blk = q % nb;
  const int64_t j = p % g.out_w, i = (p / g.out_w) % g.out_h, image = p / (g.out_w * g.out_h);
  return ((image * g.in_h + g.row0(i)) * g.in_w + g.col0(j)) * g.in_c + blk * prm.channel_block;
}

inline int64_t GemmRowRegion(const MexParams& prm, int64_t q) {
  if (!prm.use_offsets) return 0;
  const WindowGeometry& g = prm.geo;
  const int64_t p = q / prm.num_blocks();
  const int64_t j = p % g.out_w, i = (p / g.out_w) % g.out_h;
  return prm.region_h(i) * prm.regions_w + prm.region_w(j);
}

// The split v = x' + b' (x' = x + beta, b' = b - beta) to use: beta = 0 or the offsets' mean over
// regions and instances (mean), whichever overshoots max(v) less, sum_(p, k) min(40, xi (M - max v))
// over 64 rows spread over the batch (a few K x bc passes). The mean removes a bias the offsets
// share across instances (trained SimNets), but adds its noise to x when there is none.
std::vector<float> GemmSplit(const MexParams& prm, float xi, const float* input, const float* offsets,
                             const std::vector<float>& mean) {
  const int64_t K = prm.num_instances, bc = prm.channel_block;
  const int64_t rows = prm.geo.positions() * prm.num_blocks();
  const int64_t samples = std::min<int64_t>(rows, 64);
  std::vector<float> xs(bc);
  auto overshoot = [&](const float* beta) {
    double total = 0.0;
    for (int64_t i = 0; i < samples; ++i) {
      const int64_t q = i * rows / samples, r = GemmRowRegion(prm, q);
      const float* x = input + GemmRowInput(prm, q);
      float mx = -INFINITY;
      for (int64_t c = 0; c < bc; ++c) {
        xs[c] = xi * (x[c] + (beta ? beta[c] : 0.f));
        mx = std::max(mx, xs[c]);
      }
      for (int64_t k = 0; k < K; ++k) {
        const float* b = offsets + (r * K + k) * bc;
        float mb = -INFINITY, mv = -INFINITY;
        for (int64_t c = 0; c < bc; ++c) {
          const float bb = xi * (b[c] - (beta ? beta[c] : 0.f));
          mb = std::max(mb, bb);
          mv = std::max(mv, xs[c] + bb);
        }
        const double gap = static_cast<double>(mx) + mb - mv;
        total += gap >= 0.0 && gap < 40.0 ? gap : 40.0;  // NaN: 40
      }
    }
    return total;
  };
  return overshoot(mean.data()) < overshoot(nullptr) ? mean : std::vector<float>();
}

// The split (GemmSplit), F^T (and, for the backward, F; with d / d xi, (F o (b' - m))^T) per region, the
// offsets' shifts and sums, and the chunks of rows.
GemmPlan MakeGemmPlan(const MexParams& prm, float xi, const float* input, const float* offsets,
                      const float* c, bool backward, bool xi_grad) {
  GemmPlan pl;
  pl.K = prm.num_instances;
  pl.bc = prm.channel_block;
  pl.nb = prm.num_blocks();
  pl.R = prm.use_offsets ? prm.regions_h * prm.regions_w : 1;
  pl.n = pl.bc + (prm.use_c ? 1 : 0);
  pl.ld = RoundUp(pl.bc, kVL);
  pl.kp = RoundUp(pl.K, kVL);
  pl.xi = xi;
  pl.logn = std::log(static_cast<double>(pl.n));
  pl.softmax = prm.softmax_mode;
  pl.backward = backward;
  pl.xi_grad = backward && xi_grad;
  const int64_t K = pl.K, bc = pl.bc, R = pl.R, ld = pl.ld, kp = pl.kp;
  if (c != nullptr)
    for (int64_t k = 0; k < K; ++k)
      if (std::isfinite(c[k])) {
        pl.c_lo = std::min<double>(pl.c_lo, c[k]);
        pl.c_hi = std::max<double>(pl.c_hi, c[k]);
      }
  const int64_t ldt = pl.ldt = (pl.xi_grad ? 2 : 1) * kp;
  pl.ft_stride = bc * ldt;
  pl.ft.assign(R * pl.ft_stride, 0.f);
  if (backward) pl.f.assign(R * K * ld, 0.f);
  pl.shift_b.assign(R * K, 0.0);
  pl.sum_b.assign(R * K, 0.0);
  pl.finite_b.assign(R * K, 1);
  pl.lo_b.assign(R, offsets ? INFINITY : 0.0);
  pl.hi_b.assign(R, offsets ? -INFINITY : 0.0);
  if (offsets != nullptr) {
    std::vector<double> sum(bc, 0.0);
    for (int64_t rk = 0; rk < R * K; ++rk)
      for (int64_t i = 0; i < bc; ++i) sum[i] += offsets[rk * bc + i];
    std::vector<float> mean(bc);
    for (int64_t i = 0; i < bc; ++i) {
      const double m = sum[i] / (R * K);
      mean[i] = std::isfinite(m) ? static_cast<float>(m) : 0.f;
    }
    pl.beta = GemmSplit(prm, xi, input, offsets, mean);
  }
  std::vector<float> b(bc), f(ld, 0.f), fb(ld, 0.f);
  for (int64_t r = 0; r < R; ++r) {
    float* ft = pl.ft.data() + r * pl.ft_stride;
    for (int64_t k = 0; k < K; ++k) {
      std::fill(f.begin(), f.end(), 0.f);
      std::fill(fb.begin(), fb.end(), 0.f);
      if (offsets == nullptr) {
        std::fill(f.begin(), f.begin() + bc, 1.f);
      } else {
        for (int64_t i = 0; i < bc; ++i)
          b[i] = offsets[(r * K + k) * bc + i] - (pl.beta.empty() ? 0.f : pl.beta[i]);
        float lo, hi;
        double sum;
        RowScan(b.data(), bc, &lo, &hi, &sum);
        if (!std::isfinite(sum)) {  // the direct form; F and F o (b' - m) stay 0
          pl.finite_b[r * K + k] = 0;
          continue;
        }
        const float m = xi > 0.f ? hi : lo;
        pl.shift_b[r * K + k] = m;
        pl.sum_b[r * K + k] = sum;
        pl.lo_b[r] = std::min<double>(pl.lo_b[r], lo);
        pl.hi_b[r] = std::max<double>(pl.hi_b[r], hi);
        ExpRow(b.data(), bc, m, xi, f.data(), pl.xi_grad ? fb.data() : nullptr);
      }
      for (int64_t i = 0; i < bc; ++i) {
        ft[i * ldt + k] = f[i];
        if (pl.xi_grad) ft[i * ldt + kp + k] = fb[i];
      }
      if (backward) std::copy(f.begin(), f.end(), pl.f.begin() + (r * K + k) * ld);
    }
  }
  // Rows grouped by region (counting sort), then cut into chunks of near-equal size.
  const int64_t rows = prm.geo.positions() * pl.nb;
  std::vector<int64_t> start(R + 1, 0);
  for (int64_t q = 0; q < rows; ++q) ++start[GemmRowRegion(prm, q) + 1];
  for (int64_t r = 0; r < R; ++r) start[r + 1] += start[r];
  pl.order.resize(rows);
  std::vector<int64_t> fill(start.begin(), start.end() - 1);
  for (int64_t q = 0; q < rows; ++q) pl.order[fill[GemmRowRegion(prm, q)]++] = q;
  const int64_t ch = GemmChunkRows(bc);
  pl.chunk_begin.push_back(0);
  for (int64_t r = 0; r < R; ++r) {
    const int64_t cnt = start[r + 1] - start[r];
    const int64_t pieces = CeilDiv(cnt, ch);
    for (int64_t i = 1; i <= pieces; ++i) {
      pl.chunk_begin.push_back(start[r] + cnt * i / pieces);
      pl.chunk_region.push_back(r);
    }
  }
  return pl;
}

struct GemmScratch {
  std::vector<float> e, xe;   // (rows, ld): x', then E; E o (x' - m) (xi_grad only)
  std::vector<float> t, u;    // (rows, ldt): T (| F o (b' - m) sums); (rows, kp): (E o (x' - m)) F^T (xi_grad only)
  std::vector<float> gk, d;   // (rows, kp): G (zeros past K); (K, ld): offsets gradient of the chunk
  std::vector<float> m;       // per row: shift
  std::vector<double> sum;    // per row: sum of x'
  std::vector<uint8_t> direct;
  std::vector<float> v, gv;   // a gathered set and its gradient
  std::vector<double> gxi, gc;
  std::vector<int64_t> rejected;  // entries t * K + k taking the direct form

  void Resize(const GemmPlan& pl) {
    if (!m.empty()) return;
    const int64_t ch = GemmChunkRows(pl.bc);
    e.assign(ch * pl.ld, 0.f);
    t.assign(ch * pl.ldt, 0.f);
    m.resize(ch);
    sum.resize(ch);
    direct.resize(ch);
    v.resize(pl.n);
    if (!pl.backward) return;
    if (pl.xi_grad) {
      xe.assign(ch * pl.ld, 0.f);
      u.assign(ch * pl.kp, 0.f);
    }
    gk.assign(ch * pl.kp, 0.f);
    d.assign(pl.K * pl.ld, 0.f);
    gv.resize(pl.n);
    gxi.resize(pl.K);
    gc.resize(pl.K);
  }
};

// Scans the chunk's rows and fills E (and E o (x' - m)); a row whose entries all take the direct
// form (a non-finite entry, or a bound on range(v) over its instances below 1 / |xi|: MexGemmRange)
// gets zeros. Returns whether any row may take the GEMM form.
bool GemmPrepareRows(const GemmPlan& pl, const MexParams& prm, const float* input, const int64_t* rows,
                     int64_t nr, int64_t r, GemmScratch& s) {
  const int64_t bc = pl.bc, ld = pl.ld;
  bool any = false;
  for (int64_t t = 0; t < nr; ++t) {
    const float* x = input + GemmRowInput(prm, rows[t]);
    if (t + 1 < nr) {  // fetch the next row while this one computes: a region's rows are not contiguous
      const char* next = reinterpret_cast<const char*>(input + GemmRowInput(prm, rows[t + 1]));
      for (int64_t b = 0; b < bc * static_cast<int64_t>(sizeof(float)); b += 64) __builtin_prefetch(next + b);
    }
    float* e = s.e.data() + t * ld;
    if (!pl.beta.empty()) {  // x' = x + beta, in place of E
      for (int64_t i = 0; i < bc; ++i) e[i] = x[i] + pl.beta[i];
      x = e;
    }
    float lo, hi;
    double sum;
    RowScan(x, bc, &lo, &hi, &sum);
    const double range = std::max(hi + pl.hi_b[r], pl.c_hi) - std::min(lo + pl.lo_b[r], pl.c_lo);
    const bool direct = !std::isfinite(sum) || !MexGemmRange(range, pl.xi);
    s.m[t] = pl.xi > 0.f ? hi : lo;
    s.sum[t] = sum;
    s.direct[t] = direct;
    float* xe = pl.xi_grad ? s.xe.data() + t * ld : nullptr;
    if (direct) {
      std::fill(e, e + ld, 0.f);
      if (xe) std::fill(xe, xe + ld, 0.f);
    } else {
      ExpRow(x, bc, s.m[t], pl.xi, e, xe);
      any = true;
    }
  }
  return any;
}

struct GemmEntry {
  double shift = 0.0, t = 0.0, ec = 0.0, value = 0.0, log_t = 0.0;
};

// range(v) of the set x + b (b may be null) plus *ck (may be null), v rounded to float as the
// direct form does.
inline double SetRange(const float* x, const float* b, int64_t n, const float* ck) {
  VF vlo = Splat(__builtin_inff()), vhi = Splat(-__builtin_inff());
  int64_t i = 0;
  for (; i + kVL <= n; i += kVL) {
    const VF v = b ? LoadU(x + i) + LoadU(b + i) : LoadU(x + i);
    vlo = Min(vlo, v);
    vhi = Max(vhi, v);
  }
  float lo = ck ? *ck : vlo[0], hi = ck ? *ck : vhi[0];
  for (int lane = 0; lane < kVL; ++lane) {
    lo = std::min(lo, vlo[lane]);
    hi = std::max(hi, vhi[lane]);
  }
  for (; i < n; ++i) {
    const float v = b ? x[i] + b[i] : x[i];
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  return static_cast<double>(hi) - static_cast<double>(lo);
}

// Entry (row t with input x, instance k) from its GEMM sum; false: the direct form.
inline bool GemmAccept(const GemmPlan& pl, const GemmScratch& s, int64_t t, int64_t r, int64_t k,
                       const float* x, const float* offsets, const float* c, float gemm_sum, GemmEntry* e) {
  const int64_t rk = r * pl.K + k;
  if (s.direct[t] || !pl.finite_b[rk]) return false;
  e->shift = static_cast<double>(s.m[t]) + pl.shift_b[rk];
  e->t = gemm_sum;
  double total = s.sum[t] + pl.sum_b[rk];
  if (c != nullptr) {
    if (!std::isfinite(c[k])) return false;
    e->ec = std::exp(static_cast<double>(pl.xi) * (c[k] - e->shift));
    e->t += e->ec;
    total += c[k];
  }
  bool certified = false;
  if (!MexGemmValue(e->shift, e->t, total / pl.n, pl.xi, pl.logn, pl.softmax, &e->value, &e->log_t,
                    &certified))
    return false;
  return certified ||
         MexGemmRange(SetRange(x, offsets ? offsets + rk * pl.bc : nullptr, pl.bc, c ? c + k : nullptr),
                      pl.xi);
}

// The set of row x, instance k into s.v (the direct form's input).
inline void GemmGatherSet(const GemmPlan& pl, const float* x, const float* offsets, const float* c,
                          int64_t r, int64_t k, GemmScratch& s) {
  AddOffsets(x, nullptr, offsets ? offsets + (r * pl.K + k) * pl.bc : nullptr, pl.bc, pl.bc,
             s.v.data());
  if (c != nullptr) s.v[pl.bc] = c[k];
}

// Runs body(scratch, rows, row_count, region) on every chunk of the plan, chunks in parallel, each
// task on its own per-slot scratch sized for the plan; `row_cost` is the cost of one row.
template <typename Body>
void ForEachGemmChunk(const CPUDevice& dev, const GemmPlan& pl, const Eigen::TensorOpCost& row_cost, Body body) {
  SlotPool slots(dev.numThreads() + 2);
  std::vector<GemmScratch> scratch(slots.size());
  const double rows = GemmChunkRows(pl.bc);
  dev.parallelFor(pl.chunks(), row_cost * rows, [&](Eigen::Index first, Eigen::Index last) {
    SlotGuard guard(&slots);
    GemmScratch& s = scratch[guard.slot()];
    s.Resize(pl);
    for (Eigen::Index chunk = first; chunk < last; ++chunk)
      body(s, pl.order.data() + pl.chunk_begin[chunk], pl.chunk_begin[chunk + 1] - pl.chunk_begin[chunk],
           pl.chunk_region[chunk]);
  });
}

void MexGemmForward(const CPUDevice& dev, const MexParams& prm, const float* input, float xi,
                    const float* offsets, const float* c, float* output) {
  const GemmPlan pl = MakeGemmPlan(prm, xi, input, offsets, c, false, false);
  const int64_t K = pl.K, bc = pl.bc, kp = pl.kp;
  ForEachGemmChunk(
      dev, pl, Eigen::TensorOpCost(bc * 4.0, K * 4.0, bc * (1.0 * kp + 16.0)),
      [&](GemmScratch& s, const int64_t* rws, int64_t nr, int64_t r) {
        if (GemmPrepareRows(pl, prm, input, rws, nr, r, s))  // T = E F^T
          DotLanes(s.e.data(), nr, pl.ld, bc, pl.ft.data() + r * pl.ft_stride, pl.ldt, kp, s.t.data(), kp);
        for (int64_t t = 0; t < nr; ++t) {
          float* out = output + rws[t] * K;
          const float* x = input + GemmRowInput(prm, rws[t]);
          for (int64_t k = 0; k < K; ++k) {
            GemmEntry e;
            if (GemmAccept(pl, s, t, r, k, x, offsets, c, s.t[t * kp + k], &e)) {
              out[k] = static_cast<float>(e.value);
            } else {
              GemmGatherSet(pl, x, offsets, c, r, k, s);
              out[k] = SetForward(s.v.data(), pl.n, xi, pl.softmax).value;
            }
          }
        }
      });
}

void MexGemmBackward(const CPUDevice& dev, const MexParams& prm, const float* input, float xi,
                     const float* offsets, const float* c, const float* grad_output, float* grad_input,
                     float* grad_xi, float* grad_offsets, float* grad_c) {
  const WindowGeometry& g = prm.geo;
  const GemmPlan pl = MakeGemmPlan(prm, xi, input, offsets, c, true, grad_xi != nullptr);
  const int64_t K = pl.K, bc = pl.bc, R = pl.R, ld = pl.ld, kp = pl.kp, ldt = pl.ldt;
  // Strided 1x1 pools leave input pixels without a gradient.
  if (g.out_h != g.in_h || g.out_w != g.in_w)
    std::fill(grad_input, grad_input + g.batch * g.in_h * g.in_w * g.in_c, 0.f);
  std::vector<double> goff(offsets ? R * K * bc : 0, 0.0), gxi(K, 0.0), gc(K, 0.0);
  std::unique_ptr<std::mutex[]> region_lock(new std::mutex[R]);
  std::mutex total_lock;
  ForEachGemmChunk(
      dev, pl, Eigen::TensorOpCost(bc * 8.0, bc * 4.0, bc * (5.0 * kp + 24.0)),
      [&](GemmScratch& s, const int64_t* rws, int64_t nr, int64_t r) {
        const float* ft = pl.ft.data() + r * pl.ft_stride;  // F^T (| (F o (b' - m))^T)
        const float* f = pl.f.data() + r * K * ld;
        const bool any = GemmPrepareRows(pl, prm, input, rws, nr, r, s);
        if (any) {  // [T | V] = E [F | F o (b' - m)]^T, U = (E o (x' - m)) F^T; V, U for d / d xi only
          DotLanes(s.e.data(), nr, ld, bc, ft, ldt, ldt, s.t.data(), ldt);
          if (pl.xi_grad) DotLanes(s.xe.data(), nr, ld, bc, ft, ldt, kp, s.u.data(), kp);
        }
        std::fill(s.gxi.begin(), s.gxi.end(), 0.0);
        std::fill(s.gc.begin(), s.gc.end(), 0.0);
        s.rejected.clear();
        for (int64_t t = 0; t < nr; ++t) {
          const float* go = grad_output + rws[t] * K;
          const float* x = input + GemmRowInput(prm, rws[t]);
          for (int64_t k = 0; k < K; ++k) {
            GemmEntry e;
            float gk = 0.f;
            double dxi = 0.0;
            bool accept = any && GemmAccept(pl, s, t, r, k, x, offsets, c, s.t[t * ldt + k], &e);
            if (accept && pl.xi_grad) {
              double ew = s.u[t * kp + k] + static_cast<double>(s.t[t * ldt + kp + k]);
              if (c != nullptr) ew += e.ec * (c[k] - e.shift);
              accept = MexGemmDxi(ew / e.t, e.log_t, xi, pl.logn, pl.softmax, &dxi);
            }
            if (accept) {
              gk = static_cast<float>(go[k] / e.t);
              s.gxi[k] += go[k] * dxi;
              s.gc[k] += gk * e.ec;
            } else {
              s.rejected.push_back(t * K + k);
            }
            s.gk[t * kp + k] = gk;
          }
        }
        // grad_x = E o (G F), grad_b = F o (G^T E)
        for (int64_t t = 0; t < nr; ++t) {
          float* gx = grad_input + GemmRowInput(prm, rws[t]);
          if (any) {
            CombineRow(s.e.data() + t * ld, s.gk.data() + t * kp, K, f, ld, bc, gx);
          } else {
            std::fill(gx, gx + bc, 0.f);
          }
        }
        if (offsets != nullptr) {
          if (any) {
            ColumnSums(s.e.data(), nr, ld, s.gk.data(), kp, K, f, s.d.data());
          } else {
            std::fill(s.d.begin(), s.d.end(), 0.f);
          }
        }
        for (const int64_t entry : s.rejected) {
          const int64_t t = entry / K, k = entry % K;
          const int64_t in = GemmRowInput(prm, rws[t]);
          const float gk = grad_output[rws[t] * K + k];
          GemmGatherSet(pl, input + in, offsets, c, r, k, s);
          const MexSetState st = SetForward(s.v.data(), pl.n, xi, pl.softmax);
          s.gxi[k] += SetBackward(s.v.data(), pl.n, xi, pl.softmax, st, gk, s.gv.data());
          float* gx = grad_input + in;
          for (int64_t i = 0; i < bc; ++i) gx[i] += s.gv[i];
          if (offsets != nullptr) {
            float* dk = s.d.data() + k * ld;
            for (int64_t i = 0; i < bc; ++i) dk[i] += s.gv[i];
          }
          if (c != nullptr) s.gc[k] += s.gv[bc];
        }
        StreamFence();
        if (offsets != nullptr) {
          std::lock_guard<std::mutex> lock(region_lock[r]);
          double* acc = goff.data() + r * K * bc;
          for (int64_t k = 0; k < K; ++k)
            for (int64_t i = 0; i < bc; ++i) acc[k * bc + i] += s.d[k * ld + i];
        }
        std::lock_guard<std::mutex> lock(total_lock);
        for (int64_t k = 0; k < K; ++k) {
          gxi[k] += s.gxi[k];
          gc[k] += s.gc[k];
        }
      });
  if (grad_xi != nullptr)
    for (int64_t k = 0; k < K; ++k) grad_xi[k] = static_cast<float>(gxi[k]);
  if (offsets != nullptr)
    for (size_t i = 0; i < goff.size(); ++i) grad_offsets[i] = static_cast<float>(goff[i]);
  if (c != nullptr)
    for (int64_t k = 0; k < K; ++k) grad_c[k] = static_cast<float>(gc[k]);
}

}  // namespace

template <>
struct MexFunctor<CPUDevice> {
  void operator()(const CPUDevice& dev, const MexParams& prm, const float* input,
                  const float* xi, const float* offsets, const float* c,
                  float* output) {
    if (MexGemmApplies(prm, xi)) {
      if (prm.geo.positions() > 0) MexGemmForward(dev, prm, input, xi[0], offsets, c, output);
      return;
    }
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
    if (MexGemmApplies(prm, xi) && g.positions() > 0) {
      MexGemmBackward(dev, prm, input, xi[0], offsets, c, grad_output, grad_input, grad_xi,
                      grad_offsets, grad_c);
      return;
    }
    std::fill(grad_input, grad_input + g.batch * g.in_h * g.in_w * g.in_c, 0.f);
    if (grad_xi != nullptr) std::fill(grad_xi, grad_xi + K, 0.f);
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
    if (grad_xi != nullptr)
      for (int64_t k = 0; k < K; ++k) grad_xi[k] = static_cast<float>(gxi[k]);
    for (int64_t t = 0; t < off_size; ++t) grad_offsets[t] = static_cast<float>(goff[t]);
    for (size_t k = 0; k < gc.size(); ++k) grad_c[k] = static_cast<float>(gc[k]);
  }
};

// ================================================================= OpKernels
// float16 / bfloat16 activations run the float32 kernels on float32 copies (FloatActivations).
template <typename T>
struct MexCompute<CPUDevice, T> {
  static void Forward(::tensorflow::OpKernelContext* ctx, const MexParams& prm, const T* input, const float* xi,
                      const float* offsets, const float* c, T* output) {
    FloatActivations<T> act(ctx);
    const float* x = act.In(input, prm.geo.inputs());
    float* out = act.Out(output, prm.geo.positions() * prm.out_channels());
    OP_REQUIRES_OK(ctx, act.status());
    MexFunctor<CPUDevice>()(ctx->eigen_cpu_device(), prm, x, xi, offsets, c, out);
    act.Finish();
  }

  static void Backward(::tensorflow::OpKernelContext* ctx, const MexParams& prm, const T* input, const float* xi,
                       const float* offsets, const float* c, const T* grad, T* grad_input, float* grad_xi,
                       float* grad_offsets, float* grad_c) {
    FloatActivations<T> act(ctx);
    const float* x = act.In(input, prm.geo.inputs());
    const float* g = act.In(grad, prm.geo.positions() * prm.out_channels());
    float* gx = act.Out(grad_input, prm.geo.inputs());
    OP_REQUIRES_OK(ctx, act.status());
    MexGradFunctor<CPUDevice>()(ctx->eigen_cpu_device(), prm, x, xi, offsets, c, g, gx, grad_xi, grad_offsets,
                                grad_c);
    act.Finish();
  }
};

#define KZ_REGISTER_CPU(T)                                                                                    \
  REGISTER_KERNEL_BUILDER(Name("KernelzooMex").Device(::tensorflow::DEVICE_CPU).TypeConstraint<T>("T"),      \
                          MexOp<CPUDevice, T>);                                                               \
  REGISTER_KERNEL_BUILDER(Name("KernelzooMexGrad").Device(::tensorflow::DEVICE_CPU).TypeConstraint<T>("T"),  \
                          MexGradOp<CPUDevice, T>);
KZ_REGISTER_CPU(float);
KZ_REGISTER_CPU(Eigen::half);
KZ_REGISTER_CPU(Eigen::bfloat16);
#undef KZ_REGISTER_CPU

}  // namespace kernelzoo
