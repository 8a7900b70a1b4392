// CPU kernels for KernelzooSimilarity / KernelzooSimilarityGrad.
//
// Work is split into (image, band of output rows) chunks run in parallel on
// TF's intra-op threads (Eigen::ThreadPoolDevice::parallelFor). Each chunk
// builds its patch matrix X (positions x D, im2col) in per-thread scratch;
// the positions x templates x patch tensor is never materialised.
//  * linear, l2: GEMMs (Eigen, single-threaded per chunk) using
//      linear: out = X (U*Z)
//      l2:     out = -(X^2 U - 2 X (U*Z) + M (U*Z^2))   (M: non-NaN mask)
//  * l1, lp: a register-blocked direct loop (tile of positions x block of
//    templates, innermost over templates, SIMD); lp evaluates |x - z|^p as
//    2^(p log2|x - z|) with the polynomial Log2Fast / Exp2Fast of
//    cpu_util.h (and IEEE special cases for chunks with NaN, inf or huge x).
// Backward passes scatter patch gradients into the input gradient; chunks are
// run in two waves (even bands, then odd bands) so no two concurrent chunks
// touch the same input rows (one wave, and no patch gradients, when the input
// gradient is not asked for). Template/weight/p gradients use per-thread
// double accumulators reduced at the end.
#define EIGEN_USE_THREADS

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "Eigen/Core"
#include "unsupported/Eigen/CXX11/Tensor"

#include "cpu_util.h"
#include "similarity_functor.h"
#include "similarity_op.h"

namespace kernelzoo {

using CPUDevice = Eigen::ThreadPoolDevice;
using namespace cpu;  // NOLINT

namespace {

using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using Stride = Eigen::OuterStride<>;
using MatMap = Eigen::Map<RowMat, 0, Stride>;
using CMatMap = Eigen::Map<const RowMat, 0, Stride>;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr int64_t kChunkPositions = 512;

// Register blocking of the direct (l1) loops.
#if defined(__AVX512F__)
constexpr int kFwdPT = 8, kFwdLV = 2;  // 16 accumulators of 16 floats
constexpr int kBwdPT = 8;
#else
constexpr int kFwdPT = 4, kFwdLV = 2;
constexpr int kBwdPT = 4;
#endif
constexpr int kPT = (kFwdPT > kBwdPT ? kFwdPT : kBwdPT);
constexpr int kFwdLB = kFwdLV * kVL;

// ---------------------------------------------------------------- im2col --
// Rows = positions (image, i in [i0, i1), all j) in order; columns [0, D) of
// each row (leading dimension ldx) hold the patch, padded entries = pad.
void Im2Col(const WindowGeometry& g, const float* input, int64_t image, int64_t i0,
            int64_t i1, float pad, float* X, int64_t ldx) {
  const int64_t C = g.in_c;
  const float* img = input + image * g.in_h * g.in_w * C;
  int64_t r = 0;
  for (int64_t i = i0; i < i1; ++i) {
    const int64_t y0 = g.row0(i);
    for (int64_t j = 0; j < g.out_w; ++j, ++r) {
      float* dst = X + r * ldx;
      const int64_t x0 = g.col0(j);
      const int64_t b_lo = std::max<int64_t>(0, -x0);
      const int64_t b_hi = std::min<int64_t>(g.k_w, g.in_w - x0);
      for (int64_t a = 0; a < g.k_h; ++a) {
        float* row = dst + a * g.k_w * C;
        const int64_t y = y0 + a;
        if (y < 0 || y >= g.in_h || b_hi <= b_lo) {
          std::fill(row, row + g.k_w * C, pad);
          continue;
        }
        std::fill(row, row + b_lo * C, pad);
        std::memcpy(row + b_lo * C, img + (y * g.in_w + x0 + b_lo) * C,
                    (b_hi - b_lo) * C * sizeof(float));
        std::fill(row + b_hi * C, row + g.k_w * C, pad);
      }
    }
  }
}

// Adds the patch gradients GX (rows as in Im2Col, leading dim ldg) into the
// input gradient; padded entries are dropped.
void Col2Im(const WindowGeometry& g, const float* GX, int64_t ldg, int64_t image,
            int64_t i0, int64_t i1, float* grad_input) {
  const int64_t C = g.in_c;
  float* img = grad_input + image * g.in_h * g.in_w * C;
  int64_t r = 0;
  for (int64_t i = i0; i < i1; ++i) {
    const int64_t y0 = g.row0(i);
    for (int64_t j = 0; j < g.out_w; ++j, ++r) {
      const float* src = GX + r * ldg;
      const int64_t x0 = g.col0(j);
      const int64_t b_lo = std::max<int64_t>(0, -x0);
      const int64_t b_hi = std::min<int64_t>(g.k_w, g.in_w - x0);
      for (int64_t a = 0; a < g.k_h; ++a) {
        const int64_t y = y0 + a;
        if (y < 0 || y >= g.in_h || b_hi <= b_lo) continue;
        const float* s = src + (a * g.k_w + b_lo) * C;
        float* d = img + (y * g.in_w + x0 + b_lo) * C;
        const int64_t len = (b_hi - b_lo) * C;
        for (int64_t t = 0; t < len; ++t) d[t] += s[t];
      }
    }
  }
}

// ------------------------------------------------------- shared prologue --
// Templates/weights repacked as (D, npad) with zero padding of the template
// axis to a multiple of the SIMD block; for lp also p (npad), padded with ones,
// and whether p is finite and every |z| < kLpFastLimit (lp's fast path).
constexpr float kLpFastLimit = 0x1p126f;  // |x|, |z| below: |x - z| < 2^127

struct Packed {
  int64_t npad = 0;
  std::vector<float> z, u, p;
  bool lp_fast = true;
};

Packed Pack(const float* templates, const float* weights, int64_t D, int64_t n,
            int64_t multiple, const float* p = nullptr) {
  Packed pk;
  pk.npad = RoundUp(std::max<int64_t>(n, 1), multiple);
  pk.z.assign(D * pk.npad, 0.f);
  pk.u.assign(D * pk.npad, 0.f);
  for (int64_t d = 0; d < D; ++d) {
    std::memcpy(&pk.z[d * pk.npad], templates + d * n, n * sizeof(float));
    std::memcpy(&pk.u[d * pk.npad], weights + d * n, n * sizeof(float));
  }
  if (p != nullptr) {
    pk.p.assign(pk.npad, 1.f);
    std::memcpy(pk.p.data(), p, n * sizeof(float));
    for (int64_t i = 0; i < D * n; ++i) pk.lp_fast &= std::fabs(templates[i]) < kLpFastLimit;
    for (int64_t l = 0; l < n; ++l) pk.lp_fast &= std::isfinite(p[l]);
  }
  return pk;
}

bool AnyNaN(const float* X, int64_t rows, int64_t cols, int64_t ldx) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* x = X + r * ldx;
    bool nan = false;
    for (int64_t c = 0; c < cols; ++c) nan |= (x[c] != x[c]);
    if (nan) return true;
  }
  return false;
}

Eigen::TensorOpCost ChunkCost(int64_t positions, int64_t D, int64_t n) {
  const double work = static_cast<double>(positions) * D * n;
  return Eigen::TensorOpCost(4.0 * positions * D, 4.0 * positions * n, work);
}

// ------------------------------------------------------------ l1 forward --
template <int PT, int LV, bool kSkipNaN>
inline void L1ForwardTile(const float* X, int64_t ldx, int64_t D, const float* z,
                          const float* u, int64_t npad, float* out, int64_t ldo) {
  VF acc[PT][LV];
  for (int p = 0; p < PT; ++p)
    for (int v = 0; v < LV; ++v) acc[p][v] = VF{};
  for (int64_t d = 0; d < D; ++d) {
    VF zv[LV], uv[LV];
    for (int v = 0; v < LV; ++v) {
      zv[v] = LoadU(z + d * npad + v * kVL);
      uv[v] = LoadU(u + d * npad + v * kVL);
    }
    for (int p = 0; p < PT; ++p) {
      const float x = X[p * ldx + d];
      if (kSkipNaN && x != x) continue;
      const VF xb = Splat(x);
      for (int v = 0; v < LV; ++v) acc[p][v] += uv[v] * Abs(xb - zv[v]);
    }
  }
  for (int p = 0; p < PT; ++p)
    for (int v = 0; v < LV; ++v) StoreU(out + p * ldo + v * kVL, -acc[p][v]);
}

// out rows (rows x n, leading dim n) from X (rows_pad x D, rows_pad a multiple
// of kFwdPT, extra rows zero). tile: scratch of kFwdPT x kFwdLB floats.
void L1ForwardChunk(const float* X, int64_t rows, int64_t D, const Packed& pk,
                    int64_t n, bool skip_nan, float* out, float* tile) {
  for (int64_t r0 = 0; r0 < rows; r0 += kFwdPT) {
    const int64_t pr = std::min<int64_t>(kFwdPT, rows - r0);
    for (int64_t l0 = 0; l0 < n; l0 += kFwdLB) {
      const int64_t lb = std::min<int64_t>(kFwdLB, n - l0);
      const float* xr = X + r0 * D;
      float* dst = (pr == kFwdPT && lb == kFwdLB) ? out + r0 * n + l0 : tile;
      const int64_t ldo = (dst == tile) ? kFwdLB : n;
      if (skip_nan) {
        L1ForwardTile<kFwdPT, kFwdLV, true>(xr, D, D, pk.z.data() + l0,
                                            pk.u.data() + l0, pk.npad, dst, ldo);
      } else {
        L1ForwardTile<kFwdPT, kFwdLV, false>(xr, D, D, pk.z.data() + l0,
                                             pk.u.data() + l0, pk.npad, dst, ldo);
      }
      if (dst == tile) {
        for (int64_t p = 0; p < pr; ++p)
          std::memcpy(out + (r0 + p) * n + l0, tile + p * kFwdLB, lb * sizeof(float));
      }
    }
  }
}

// ----------------------------------------------------------- l1 backward --
// For a tile of PT positions: GX (PT x D) = -sum_l g u sign(x - z) (when
// kInputGrad); gz (D x npad) += sum_p g sign(x - z); gu (D x npad) += sum_p g |x - z|.
template <int PT, bool kSkipNaN, bool kInputGrad>
inline void L1BackwardTile(const float* X, int64_t D, const float* G, int64_t npad,
                           const float* z, const float* u, float* GX, float* gz,
                           float* gu) {
  const int64_t nv = npad / kVL;
  for (int64_t d = 0; d < D; ++d) {
    VF xb[PT], gxv[PT];
    bool skip[PT];
    for (int p = 0; p < PT; ++p) {
      const float x = X[p * D + d];
      skip[p] = kSkipNaN && (x != x);
      xb[p] = Splat(skip[p] ? 0.f : x);
      gxv[p] = VF{};
    }
    const float* zr = z + d * npad;
    const float* ur = u + d * npad;
    float* gzr = gz + d * npad;
    float* gur = gu + d * npad;
    for (int64_t v = 0; v < nv; ++v) {
      const VF zv = LoadU(zr + v * kVL);
      const VF uv = LoadU(ur + v * kVL);
      VF sz = VF{}, su = VF{};
      for (int p = 0; p < PT; ++p) {
        if (kSkipNaN && skip[p]) continue;
        const VF g = LoadU(G + p * npad + v * kVL);
        const VF t = xb[p] - zv;
        const VF h = MulSign(g, t);
        sz += h;
        su += h * t;  // = g |t| for finite g (h = g sign(t)): one op fewer
        if constexpr (kInputGrad) gxv[p] += h * uv;
      }
      StoreU(gzr + v * kVL, LoadU(gzr + v * kVL) + sz);
      StoreU(gur + v * kVL, LoadU(gur + v * kVL) + su);
    }
    if constexpr (kInputGrad) {
      for (int p = 0; p < PT; ++p) GX[p * D + d] = -HSum(gxv[p]);
    }
  }
}

// -------------------------------------------------------------------- lp --
// The l1 loops with |t|^p = 2^(p log2|t|) (t = x - z) by SIMD polynomials.
// Fast path (Log2Fast / Exp2Fast): finite |t| (all |x|, |z| below
// kLpFastLimit, NaN x skipped) and finite p. kExact (Log, and Exp2Fast with
// NaN passed through: IEEE special cases) for a chunk holding an unskipped
// NaN, an inf or a huge x, or when some |z| or p is out of range. |t| = 0
// gives 0 and zero gradients (as composite._safe_pow), for every p.
template <bool kExact>
inline VF LpLog2(VF a) {
  return kExact ? Log(a) * 1.44269504088896341f : Log2Fast(a);
}
template <bool kExact>
inline VF LpExp2(VF y) {
  return kExact ? Select(y != y, y, Exp2Fast(y)) : Exp2Fast(y);
}
inline VF ZeroWhere(VI zero, VF v) { return (VF)((VI)v & ~zero); }

// Register blocking of the lp loops (their arithmetic needs the registers
// that l1 spends on accumulators).
constexpr int kLpFwdPT = 4, kLpFwdLV = 2, kLpBwdPT = 4;
constexpr int kLpFwdLB = kLpFwdLV * kVL;
static_assert(kLpFwdPT <= kPT && kLpBwdPT <= kPT, "scratch rows are padded to kPT");

template <int PT, int LV, bool kSkipNaN, bool kExact>
inline void LpForwardTile(const float* X, int64_t ldx, int64_t D, const float* z,
                          const float* u, const float* p, int64_t npad, float* out,
                          int64_t ldo) {
  VF acc[PT][LV], pv[LV];
  for (int v = 0; v < LV; ++v) pv[v] = LoadU(p + v * kVL);
  for (int q = 0; q < PT; ++q)
    for (int v = 0; v < LV; ++v) acc[q][v] = VF{};
  for (int64_t d = 0; d < D; ++d) {
    VF zv[LV], uv[LV];
    for (int v = 0; v < LV; ++v) {
      zv[v] = LoadU(z + d * npad + v * kVL);
      uv[v] = LoadU(u + d * npad + v * kVL);
    }
    for (int q = 0; q < PT; ++q) {
      const float x = X[q * ldx + d];
      if (kSkipNaN && x != x) continue;
      const VF xb = Splat(x);
      for (int v = 0; v < LV; ++v) {
        const VF a = Abs(xb - zv[v]);
        const VF pw = LpExp2<kExact>(pv[v] * LpLog2<kExact>(a));
        acc[q][v] += uv[v] * ZeroWhere(a == 0.f, pw);
      }
    }
  }
  for (int q = 0; q < PT; ++q)
    for (int v = 0; v < LV; ++v) StoreU(out + q * ldo + v * kVL, -acc[q][v]);
}

// As L1ForwardChunk; pk.p holds p padded to npad with ones.
template <bool kSkipNaN, bool kExact>
void LpForwardChunk(const float* X, int64_t rows, int64_t D, const Packed& pk,
                    int64_t n, float* out, float* tile) {
  for (int64_t r0 = 0; r0 < rows; r0 += kLpFwdPT) {
    const int64_t pr = std::min<int64_t>(kLpFwdPT, rows - r0);
    for (int64_t l0 = 0; l0 < n; l0 += kLpFwdLB) {
      const int64_t lb = std::min<int64_t>(kLpFwdLB, n - l0);
      float* dst = (pr == kLpFwdPT && lb == kLpFwdLB) ? out + r0 * n + l0 : tile;
      const int64_t ldo = (dst == tile) ? kLpFwdLB : n;
      LpForwardTile<kLpFwdPT, kLpFwdLV, kSkipNaN, kExact>(
          X + r0 * D, D, D, pk.z.data() + l0, pk.u.data() + l0, pk.p.data() + l0,
          pk.npad, dst, ldo);
      if (dst == tile) {
        for (int64_t q = 0; q < pr; ++q)
          std::memcpy(out + (r0 + q) * n + l0, tile + q * kLpFwdLB, lb * sizeof(float));
      }
    }
  }
}

// For a tile of PT positions, with h = g p |t|^(p-1) sign(t):
// GX (PT x D) = -sum_l u h (when kInputGrad); gz (D x npad) += sum_q h;
// gu += sum_q g |t|^p; gp += sum_q g |t|^p log2|t|.
// (grad templates = u gz, grad weights = -gu, grad p = -ln 2 sum_d u gp.)
// Only the first `live` of the PT rows are positions: the others pad the tile (x = 0, g = 0), and are skipped, as
// 0 * |0 - z|^p would be NaN where |z|^p overflows.
template <int PT, bool kSkipNaN, bool kExact, bool kInputGrad>
inline void LpBackwardTile(const float* X, int64_t D, const float* G, int64_t npad,
                           const float* z, const float* u, const float* p, float* GX,
                           float* gz, float* gu, float* gp, int live) {
  const int64_t nv = npad / kVL;
  for (int64_t d = 0; d < D; ++d) {
    VF xb[PT], gxv[PT];
    bool skip[PT];
    for (int q = 0; q < PT; ++q) {
      const float x = X[q * D + d];
      skip[q] = q >= live || (kSkipNaN && (x != x));
      xb[q] = Splat(skip[q] ? 0.f : x);
      gxv[q] = VF{};
    }
    const float* zr = z + d * npad;
    const float* ur = u + d * npad;
    for (int64_t v = 0; v < nv; ++v) {
      const VF zv = LoadU(zr + v * kVL);
      const VF uv = LoadU(ur + v * kVL);
      const VF pv = LoadU(p + v * kVL);
      const VF pm1 = pv - 1.f;
      VF sz = VF{}, su = VF{}, sp = VF{};
      for (int q = 0; q < PT; ++q) {
        if (skip[q]) continue;
        const VF g = LoadU(G + q * npad + v * kVL);
        const VF t = xb[q] - zv;
        const VF a = Abs(t);
        const VF l2 = LpLog2<kExact>(a);
        const VF pm0 = LpExp2<kExact>(pm1 * l2);  // |t|^(p-1)
        // kExact (chunks with inf): |t|^p by its own power, not |t|^(p-1) |t| (0 * inf = NaN for p < 1 at
        // |t| = inf), and |t|^0 = 1 at p = 1 (not 2^(0 * inf) = NaN); NaN t stays NaN.
        const VF pm = kExact ? Select((pm1 == 0.f) & (a == a), Splat(1.f), pm0) : pm0;
        const VF gpw = g * ZeroWhere(a == 0.f, kExact ? LpExp2<kExact>(pv * l2) : pm * a);
        const VF h = MulSign(g * pv * pm, t);
        sz += h;
        if constexpr (kInputGrad) gxv[q] += h * uv;
        su += gpw;
        sp += gpw * l2;
      }
      float* o = gz + d * npad + v * kVL;
      StoreU(o, LoadU(o) + sz);
      o = gu + d * npad + v * kVL;
      StoreU(o, LoadU(o) + su);
      o = gp + d * npad + v * kVL;
      StoreU(o, LoadU(o) + sp);
    }
    if constexpr (kInputGrad) {
      for (int q = 0; q < PT; ++q) GX[q * D + d] = -HSum(gxv[q]);
    }
  }
}

// GX is null unless kInputGrad.
template <bool kSkipNaN, bool kExact, bool kInputGrad>
void LpBackwardChunk(const float* X, int64_t rows, int64_t D, const Packed& pk,
                     int64_t n, const float* G, float* gtile, float* GX, float* gz,
                     float* gu, float* gp) {
  for (int64_t r0 = 0; r0 < rows; r0 += kLpBwdPT) {
    const int64_t pr = std::min<int64_t>(kLpBwdPT, rows - r0);
    std::fill(gtile, gtile + kLpBwdPT * pk.npad, 0.f);
    for (int64_t q = 0; q < pr; ++q)
      std::memcpy(gtile + q * pk.npad, G + (r0 + q) * n, n * sizeof(float));
    LpBackwardTile<kLpBwdPT, kSkipNaN, kExact, kInputGrad>(
        X + r0 * D, D, gtile, pk.npad, pk.z.data(), pk.u.data(), pk.p.data(),
        kInputGrad ? GX + r0 * D : nullptr, gz, gu, gp, static_cast<int>(pr));
  }
}

// True if X (rows x cols, leading dim ldx) holds an entry with |x| >=
// kLpFastLimit (inf included), or a NaN unless ignore_nan (NaN is skipped).
bool AnyBeyondLpFastPath(const float* X, int64_t rows, int64_t cols, int64_t ldx,
                         bool ignore_nan) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* x = X + r * ldx;
    bool bad = false;
    if (ignore_nan) {
      for (int64_t c = 0; c < cols; ++c) bad |= (std::fabs(x[c]) >= kLpFastLimit);
    } else {
      for (int64_t c = 0; c < cols; ++c) bad |= !(std::fabs(x[c]) < kLpFastLimit);
    }
    if (bad) return true;
  }
  return false;
}

// f(std::bool_constant<flag>...) for runtime flags: the loops' template
// switches, one instantiation per combination.
template <typename F>
void WithFlags(F&& f) {
  f();
}
template <typename F, typename... Flags>
void WithFlags(F&& f, bool flag, Flags... rest) {
  if (flag) {
    WithFlags([&](auto... more) { f(std::true_type(), more...); }, rest...);
  } else {
    WithFlags([&](auto... more) { f(std::false_type(), more...); }, rest...);
  }
}

// Per-thread scratch of the CPU functors.
struct Scratch {
  std::vector<float> x, gx, g, t0, t1, t2;
  std::vector<double> acc0, acc1, acc2;
  bool used = false;
};

}  // namespace

// ================================================================ forward ==
template <>
struct SimilarityFunctor<CPUDevice> {
  void operator()(const CPUDevice& dev, const SimilarityParams& prm,
                  const float* input, const float* templates, const float* weights,
                  const float* p, float* output) {
    const WindowGeometry& g = prm.geo;
    const int64_t D = prm.patch_size(), n = prm.num_templates;
    const int64_t P = g.positions();
    if (P == 0 || n == 0) return;
    if (D == 0) {
      std::fill(output, output + P * n, 0.f);
      return;
    }
    const BandPlan plan(g.out_h, g.out_w, g.k_h, g.s_h, kChunkPositions);
    const int64_t max_rows = RoundUp(plan.rows_per_band * g.out_w, kPT);
    const bool nan_pad = prm.ignore_nan;

    // Precomputed right-hand sides.
    RowMat W;      // linear: (D, n) U*Z; l2: (3D, n) [-U; 2UZ; -UZ^2]
    RowMat bias;   // l2: (1, n) -sum_d U Z^2
    Packed pk;
    if (prm.kind == kSimLinear) {
      W.resize(D, n);
      for (int64_t i = 0; i < D * n; ++i) W.data()[i] = weights[i] * templates[i];
    } else if (prm.kind == kSimL2) {
      W.resize(3 * D, n);
      bias.setZero(1, n);
      for (int64_t d = 0; d < D; ++d) {
        for (int64_t l = 0; l < n; ++l) {
          const float zz = templates[d * n + l], uu = weights[d * n + l];
          W(d, l) = -uu;
          W(D + d, l) = 2.f * uu * zz;
          W(2 * D + d, l) = -uu * zz * zz;
          bias(0, l) += -uu * zz * zz;
        }
      }
    } else if (prm.kind == kSimL1) {
      pk = Pack(templates, weights, D, n, kFwdLB);
    } else {
      pk = Pack(templates, weights, D, n, kLpFwdLB, p);
    }

    SlotPool slots(dev.numThreads() + 2);
    std::vector<Scratch> scratch(slots.size());
    const int64_t units = plan.Units(g.batch, -1);
    dev.parallelFor(
        units, ChunkCost(plan.rows_per_band * g.out_w, D, n),
        [&](Eigen::Index first, Eigen::Index last) {
          SlotGuard guard(&slots);
          Scratch& s = scratch[guard.slot()];
          for (Eigen::Index unit = first; unit < last; ++unit) {
            int64_t image, i0, i1;
            plan.Unit(unit, -1, g.out_h, &image, &i0, &i1);
            const int64_t rows = (i1 - i0) * g.out_w;
            float* out = output + ((image * g.out_h) + i0) * g.out_w * n;
            switch (prm.kind) {
              case kSimLinear: {
                s.x.resize(max_rows * D);
                Im2Col(g, input, image, i0, i1, 0.f, s.x.data(), D);
                if (prm.ignore_nan) {
                  for (int64_t t = 0; t < rows * D; ++t)
                    if (s.x[t] != s.x[t]) s.x[t] = 0.f;
                }
                MatMap(out, rows, n, Stride(n)).noalias() =
                    CMatMap(s.x.data(), rows, D, Stride(D)) * W;
                break;
              }
              case kSimL2: {
                const int64_t ld = 3 * D;
                s.x.resize(max_rows * ld);
                float* X = s.x.data();
                Im2Col(g, input, image, i0, i1, nan_pad ? kNaN : 0.f, X + D, ld);
                const bool masked = prm.ignore_nan && AnyNaN(X + D, rows, D, ld);
                for (int64_t r = 0; r < rows; ++r) {
                  float* xr = X + r * ld;
                  if (masked) {
                    for (int64_t d = 0; d < D; ++d) {
                      const float v = xr[D + d];
                      const bool ok = (v == v);
                      xr[D + d] = ok ? v : 0.f;
                      xr[d] = ok ? v * v : 0.f;
                      xr[2 * D + d] = ok ? 1.f : 0.f;
                    }
                  } else {
                    for (int64_t d = 0; d < D; ++d) xr[d] = xr[D + d] * xr[D + d];
                  }
                }
                MatMap o(out, rows, n, Stride(n));
                if (masked) {
                  o.noalias() = CMatMap(X, rows, ld, Stride(ld)) * W;
                } else {
                  o.noalias() = CMatMap(X, rows, 2 * D, Stride(ld)) * W.topRows(2 * D);
                  o.rowwise() += bias.row(0);
                }
                break;
              }
              case kSimL1: {
                s.x.resize(max_rows * D);
                s.t0.resize(kFwdPT * kFwdLB);
                Im2Col(g, input, image, i0, i1, nan_pad ? kNaN : 0.f, s.x.data(), D);
                std::fill(s.x.begin() + rows * D, s.x.begin() + RoundUp(rows, kFwdPT) * D, 0.f);
                const bool skip = prm.ignore_nan && AnyNaN(s.x.data(), rows, D, D);
                L1ForwardChunk(s.x.data(), rows, D, pk, n, skip, out, s.t0.data());
                break;
              }
              default: {
                s.x.resize(max_rows * D);
                s.t0.resize(kLpFwdPT * kLpFwdLB);
                float* X = s.x.data();
                Im2Col(g, input, image, i0, i1, nan_pad ? kNaN : 0.f, X, D);
                std::fill(X + rows * D, X + RoundUp(rows, kLpFwdPT) * D, 0.f);
                const bool skip = prm.ignore_nan && AnyNaN(X, rows, D, D);
                const bool exact =
                    !pk.lp_fast || AnyBeyondLpFastPath(X, rows, D, D, prm.ignore_nan);
                WithFlags(
                    [&](auto skip_nan, auto exact_math) {
                      LpForwardChunk<decltype(skip_nan)::value, decltype(exact_math)::value>(
                          X, rows, D, pk, n, out, s.t0.data());
                    },
                    skip, exact);
              }
            }
          }
        });
  }
};

// =============================================================== backward ==
template <>
struct SimilarityGradFunctor<CPUDevice> {
  void operator()(const CPUDevice& dev, const SimilarityParams& prm,
                  const float* input, const float* templates, const float* weights,
                  const float* p, const float* grad_output, float* grad_input,
                  float* grad_templates, float* grad_weights, float* grad_p) {
    const WindowGeometry& g = prm.geo;
    const int64_t D = prm.patch_size(), n = prm.num_templates;
    const int64_t P = g.positions();
    const bool input_grad = grad_input != nullptr;  // else only the parameters' gradients
    if (input_grad) std::fill(grad_input, grad_input + g.inputs(), 0.f);
    std::fill(grad_templates, grad_templates + D * n, 0.f);
    std::fill(grad_weights, grad_weights + D * n, 0.f);
    std::fill(grad_p, grad_p + n, 0.f);
    if (P == 0 || n == 0 || D == 0) return;

    const BandPlan plan(g.out_h, g.out_w, g.k_h, g.s_h, kChunkPositions);
    const int64_t max_rows = RoundUp(plan.rows_per_band * g.out_w, kPT);
    const bool nan_pad = prm.ignore_nan;

    // Right-hand sides of the GEMM paths.
    RowMat B;  // linear: (D, n) U*Z; l2: (2D, n) [-U; 2UZ]
    Packed pk;
    if (prm.kind == kSimLinear) {
      B.resize(D, n);
      for (int64_t i = 0; i < D * n; ++i) B.data()[i] = weights[i] * templates[i];
    } else if (prm.kind == kSimL2) {
      B.resize(2 * D, n);
      for (int64_t d = 0; d < D; ++d)
        for (int64_t l = 0; l < n; ++l) {
          B(d, l) = -weights[d * n + l];
          B(D + d, l) = 2.f * weights[d * n + l] * templates[d * n + l];
        }
    } else if (prm.kind == kSimL1) {
      pk = Pack(templates, weights, D, n, kVL);
    } else {
      pk = Pack(templates, weights, D, n, kVL, p);
    }
    // Accumulator sizes (doubles, per slot).
    //  linear: acc0 = X^T g (D x n)
    //  l2:     acc0 = [X^2, X, M]^T g (3D x n), acc1 = colsum g (n) [unmasked]
    //  l1:     acc0 = sum g sign (D x npad), acc1 = sum g |t| (D x npad)
    //  lp:     acc0 = sum h, acc1 = sum g |t|^p, acc2 = sum g |t|^p log2|t|
    //          (D x npad each; see LpBackwardTile)
    SlotPool slots(dev.numThreads() + 2);
    std::vector<Scratch> scratch(slots.size());

    auto run_chunk = [&](Scratch& s, int64_t image, int64_t i0, int64_t i1) {
      const int64_t rows = (i1 - i0) * g.out_w;
      const float* G = grad_output + ((image * g.out_h) + i0) * g.out_w * n;
      CMatMap gm(G, rows, n, Stride(n));
      if (!s.used) {
        s.used = true;
        const bool direct = prm.kind == kSimL1 || prm.kind == kSimLp;
        const int64_t m0 = prm.kind == kSimL2 ? 3 * D * n : direct ? D * pk.npad : D * n;
        s.acc0.assign(m0, 0.0);
        s.acc1.assign(prm.kind == kSimL2 ? n : direct ? D * pk.npad : 0, 0.0);
        s.acc2.assign(prm.kind == kSimLp ? D * pk.npad : 0, 0.0);
      }
      switch (prm.kind) {
        case kSimLinear: {
          s.x.resize(max_rows * D);
          if (input_grad) s.gx.resize(max_rows * D);
          s.t0.resize(D * n);
          float* X = s.x.data();
          Im2Col(g, input, image, i0, i1, nan_pad ? kNaN : 0.f, X, D);
          if (input_grad) MatMap(s.gx.data(), rows, D, Stride(D)).noalias() = gm * B.transpose();
          if (prm.ignore_nan) {
            for (int64_t t = 0; t < rows * D; ++t) {
              if (X[t] != X[t]) {
                X[t] = 0.f;
                if (input_grad) s.gx[t] = 0.f;
              }
            }
          }
          MatMap a(s.t0.data(), D, n, Stride(n));
          a.noalias() = CMatMap(X, rows, D, Stride(D)).transpose() * gm;
          for (int64_t t = 0; t < D * n; ++t) s.acc0[t] += s.t0[t];
          if (input_grad) Col2Im(g, s.gx.data(), D, image, i0, i1, grad_input);
          break;
        }
        case kSimL2: {
          const int64_t ld = 3 * D;
          s.x.resize(max_rows * ld);
          if (input_grad) s.gx.resize(max_rows * 2 * D);
          s.t0.resize(3 * D * n);
          float* X = s.x.data();
          Im2Col(g, input, image, i0, i1, nan_pad ? kNaN : 0.f, X + D, ld);
          const bool masked = prm.ignore_nan && AnyNaN(X + D, rows, D, ld);
          for (int64_t r = 0; r < rows; ++r) {
            float* xr = X + r * ld;
            for (int64_t d = 0; d < D; ++d) {
              const float v = xr[D + d];
              const bool ok = (v == v) || !masked;
              xr[D + d] = ok ? v : 0.f;
              xr[d] = ok ? v * v : 0.f;
              xr[2 * D + d] = ok ? 1.f : 0.f;
            }
          }
          if (input_grad) {
            // [Ga, Gb] = g [-U; 2UZ]^T ; GX = 2 x Ga + Gb (masked).
            MatMap gg(s.gx.data(), rows, 2 * D, Stride(2 * D));
            gg.noalias() = gm * B.transpose();
            for (int64_t r = 0; r < rows; ++r) {
              float* gr = s.gx.data() + r * 2 * D;
              const float* xr = X + r * ld;
              for (int64_t d = 0; d < D; ++d)
                gr[d] = xr[2 * D + d] * (2.f * xr[D + d] * gr[d] + gr[D + d]);
            }
          }
          const int64_t kcols = masked ? 3 * D : 2 * D;
          MatMap a(s.t0.data(), kcols, n, Stride(n));
          a.noalias() = CMatMap(X, rows, kcols, Stride(ld)).transpose() * gm;
          for (int64_t t = 0; t < kcols * n; ++t) s.acc0[t] += s.t0[t];
          if (!masked) {
            for (int64_t r = 0; r < rows; ++r)
              for (int64_t l = 0; l < n; ++l) s.acc1[l] += G[r * n + l];
          }
          if (input_grad) Col2Im(g, s.gx.data(), 2 * D, image, i0, i1, grad_input);
          break;
        }
        case kSimL1: {
          const int64_t rows_pad = RoundUp(rows, kBwdPT);
          s.x.resize(max_rows * D);
          if (input_grad) s.gx.resize(max_rows * D);
          s.g.resize(kBwdPT * pk.npad);
          s.t0.assign(D * pk.npad, 0.f);
          s.t1.assign(D * pk.npad, 0.f);
          float* X = s.x.data();
          Im2Col(g, input, image, i0, i1, nan_pad ? kNaN : 0.f, X, D);
          std::fill(X + rows * D, X + rows_pad * D, 0.f);
          const bool skip = prm.ignore_nan && AnyNaN(X, rows, D, D);
          for (int64_t r0 = 0; r0 < rows; r0 += kBwdPT) {
            const int64_t pr = std::min<int64_t>(kBwdPT, rows - r0);
            std::fill(s.g.begin(), s.g.end(), 0.f);
            for (int64_t q = 0; q < pr; ++q)
              std::memcpy(&s.g[q * pk.npad], G + (r0 + q) * n, n * sizeof(float));
            WithFlags(
                [&](auto skip_nan, auto with_gx) {
                  L1BackwardTile<kBwdPT, decltype(skip_nan)::value, decltype(with_gx)::value>(
                      X + r0 * D, D, s.g.data(), pk.npad, pk.z.data(), pk.u.data(),
                      input_grad ? s.gx.data() + r0 * D : nullptr, s.t0.data(), s.t1.data());
                },
                skip, input_grad);
          }
          if (!prm.ignore_nan) {
            // sign(NaN) = NaN (IEEE, as the composite): MulSign gave +-g at a NaN x. Its input gradient and
            // the templates' gradients of its patch entry are NaN (the weights' already are: g sign(t) t).
            for (int64_t r = 0; r < rows; ++r)
              for (int64_t d = 0; d < D; ++d) {
                if (X[r * D + d] == X[r * D + d]) continue;
                if (input_grad) s.gx[r * D + d] = kNaN;
                std::fill(s.t0.begin() + d * pk.npad, s.t0.begin() + (d + 1) * pk.npad, kNaN);
              }
          }
          for (int64_t t = 0; t < D * pk.npad; ++t) {
            s.acc0[t] += s.t0[t];
            s.acc1[t] += s.t1[t];
          }
          if (input_grad) Col2Im(g, s.gx.data(), D, image, i0, i1, grad_input);
          break;
        }
        default: {
          const int64_t rows_pad = RoundUp(rows, kLpBwdPT);
          s.x.resize(max_rows * D);
          if (input_grad) s.gx.resize(max_rows * D);
          s.g.resize(kLpBwdPT * pk.npad);
          s.t0.assign(D * pk.npad, 0.f);
          s.t1.assign(D * pk.npad, 0.f);
          s.t2.assign(D * pk.npad, 0.f);
          float* X = s.x.data();
          Im2Col(g, input, image, i0, i1, nan_pad ? kNaN : 0.f, X, D);
          std::fill(X + rows * D, X + rows_pad * D, 0.f);
          const bool skip = prm.ignore_nan && AnyNaN(X, rows, D, D);
          const bool exact =
              !pk.lp_fast || AnyBeyondLpFastPath(X, rows, D, D, prm.ignore_nan);
          WithFlags(
              [&](auto skip_nan, auto exact_math, auto with_gx) {
                LpBackwardChunk<decltype(skip_nan)::value, decltype(exact_math)::value,
                                decltype(with_gx)::value>(
                    X, rows, D, pk, n, G, s.g.data(), input_grad ? s.gx.data() : nullptr,
                    s.t0.data(), s.t1.data(), s.t2.data());
              },
              skip, exact, input_grad);
          for (int64_t t = 0; t < D * pk.npad; ++t) {
            s.acc0[t] += s.t0[t];
            s.acc1[t] += s.t1[t];
            s.acc2[t] += s.t2[t];
          }
          if (input_grad) Col2Im(g, s.gx.data(), D, image, i0, i1, grad_input);
        }
      }
    };

    // Waves 0 and 1 (even, then odd bands) keep concurrent chunks off each other's input rows;
    // without the input gradient nothing is shared: one wave (-1) of all bands.
    const int first_wave = input_grad ? 0 : -1, last_wave = input_grad ? 1 : -1;
    for (int wave = first_wave; wave <= last_wave; ++wave) {
      const int64_t units = plan.Units(g.batch, wave);
      if (units == 0) continue;
      dev.parallelFor(units, ChunkCost(plan.rows_per_band * g.out_w, D, 3 * n),
                      [&](Eigen::Index first, Eigen::Index last) {
                        SlotGuard guard(&slots);
                        Scratch& s = scratch[guard.slot()];
                        for (Eigen::Index unit = first; unit < last; ++unit) {
                          int64_t image, i0, i1;
                          plan.Unit(unit, wave, g.out_h, &image, &i0, &i1);
                          run_chunk(s, image, i0, i1);
                        }
                      });
    }

    // Reduce the per-thread accumulators.
    std::vector<double> a0, a1, a2;
    for (Scratch& s : scratch) {
      if (!s.used) continue;
      if (a0.empty()) {
        a0 = s.acc0;
        a1 = s.acc1;
        a2 = s.acc2;
        continue;
      }
      for (size_t t = 0; t < a0.size(); ++t) a0[t] += s.acc0[t];
      for (size_t t = 0; t < a1.size(); ++t) a1[t] += s.acc1[t];
      for (size_t t = 0; t < a2.size(); ++t) a2[t] += s.acc2[t];
    }
    if (a0.empty()) return;
    for (int64_t d = 0; d < D; ++d) {
      for (int64_t l = 0; l < n; ++l) {
        const int64_t i = d * n + l;
        const double zz = templates[i], uu = weights[i];
        switch (prm.kind) {
          case kSimLinear:
            grad_templates[i] = static_cast<float>(uu * a0[i]);
            grad_weights[i] = static_cast<float>(zz * a0[i]);
            break;
          case kSimL2: {
            const double s2 = a0[i], s1 = a0[D * n + i], s0 = a0[2 * D * n + i] + a1[l];
            grad_templates[i] = static_cast<float>(2.0 * uu * (s1 - zz * s0));
            grad_weights[i] = static_cast<float>(-(s2 - 2.0 * zz * s1 + zz * zz * s0));
            break;
          }
          case kSimL1: {
            const int64_t k = d * pk.npad + l;
            grad_templates[i] = static_cast<float>(uu * a0[k]);
            grad_weights[i] = static_cast<float>(-a1[k]);
            break;
          }
          default: {
            const int64_t k = d * pk.npad + l;
            grad_templates[i] = static_cast<float>(uu * a0[k]);
            grad_weights[i] = static_cast<float>(-a1[k]);
          }
        }
      }
    }
    if (prm.kind == kSimLp) {
      std::vector<double> gp(n, 0.0);
      for (int64_t d = 0; d < D; ++d)
        for (int64_t l = 0; l < n; ++l)
          gp[l] += static_cast<double>(weights[d * n + l]) * a2[d * pk.npad + l];
      for (int64_t l = 0; l < n; ++l)
        grad_p[l] = static_cast<float>(-0.693147180559945309 * gp[l]);
    }
  }
};

// ================================================================= OpKernels
// float16 / bfloat16 activations run the float32 kernels on float32 copies (FloatActivations).
template <typename T>
struct SimilarityCompute<CPUDevice, T> {
  static void Forward(::tensorflow::OpKernelContext* ctx, const SimilarityParams& prm, const T* input,
                      const float* templates, const float* weights, const float* p, T* output) {
    FloatActivations<T> act(ctx);
    const float* x = act.In(input, prm.geo.inputs());
    float* out = act.Out(output, prm.geo.positions() * prm.num_templates);
    OP_REQUIRES_OK(ctx, act.status());
    SimilarityFunctor<CPUDevice>()(ctx->eigen_cpu_device(), prm, x, templates, weights, p, out);
    act.Finish();
  }

  static void Backward(::tensorflow::OpKernelContext* ctx, const SimilarityParams& prm, const T* input,
                       const float* templates, const float* weights, const float* p, const T* grad,
                       T* grad_input, float* grad_templates, float* grad_weights, float* grad_p) {
    FloatActivations<T> act(ctx);
    const float* x = act.In(input, prm.geo.inputs());
    const float* g = act.In(grad, prm.geo.positions() * prm.num_templates);
    float* gx = grad_input == nullptr ? nullptr : act.Out(grad_input, prm.geo.inputs());
    OP_REQUIRES_OK(ctx, act.status());
    SimilarityGradFunctor<CPUDevice>()(ctx->eigen_cpu_device(), prm, x, templates, weights, p, g, gx,
                                       grad_templates, grad_weights, grad_p);
    act.Finish();
  }
};

#define KZ_REGISTER_CPU(T)                                                                            \
  REGISTER_KERNEL_BUILDER(                                                                            \
      Name("KernelzooSimilarity").Device(::tensorflow::DEVICE_CPU).TypeConstraint<T>("T"),           \
      SimilarityOp<CPUDevice, T>);                                                                    \
  REGISTER_KERNEL_BUILDER(                                                                            \
      Name("KernelzooSimilarityGrad").Device(::tensorflow::DEVICE_CPU).TypeConstraint<T>("T"),       \
      SimilarityGradOp<CPUDevice, T>);
KZ_REGISTER_CPU(float);
KZ_REGISTER_CPU(Eigen::half);
KZ_REGISTER_CPU(Eigen::bfloat16);
#undef KZ_REGISTER_CPU

}  // namespace kernelzoo
