// CPU-only helpers shared by the CPU kernels: SIMD vector types (GCC vector
// extensions, sized for the target ISA), a per-task scratch slot pool for
// Eigen::ThreadPoolDevice::parallelFor, and the output-row band plan used to
// parallelise scatter-style backward passes without races.
// Not for CUDA: GPU kernels include only geometry.h and the *_functor.h files.
#ifndef KERNELZOO_OPS_CC_CPU_UTIL_H_
#define KERNELZOO_OPS_CC_CPU_UTIL_H_

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace kernelzoo {
namespace cpu {

#if defined(__AVX512F__)
constexpr int kVL = 16;
#elif defined(__AVX__)
constexpr int kVL = 8;
#else
constexpr int kVL = 4;
#endif

typedef float VF __attribute__((vector_size(kVL * 4)));
typedef int32_t VI __attribute__((vector_size(kVL * 4)));
typedef float VFU __attribute__((vector_size(kVL * 4), aligned(4), __may_alias__));

inline VF LoadU(const float* p) { return *reinterpret_cast<const VFU*>(p); }
inline void StoreU(float* p, VF v) { *reinterpret_cast<VFU*>(p) = v; }
inline VF Splat(float x) { return VF{} + x; }
inline VF Abs(VF v) { return (VF)((VI)v & 0x7fffffff); }
// g * sign(t), with sign(0) = 0 (sign(NaN) flips g by NaN's sign bit).
inline VF MulSign(VF g, VF t) {
#if defined(__AVX512F__)  // g ^ (t & sign bit) as one ternary-logic op, zeroed where t == 0
  const __mmask16 nonzero = _mm512_cmp_ps_mask((__m512)t, _mm512_setzero_ps(), _CMP_NEQ_UQ);
  return (VF)_mm512_maskz_ternarylogic_epi32(nonzero, (__m512i)g, (__m512i)t, _mm512_set1_epi32(INT32_MIN), 0x78);
#else
  const VI sign_bit = (VI)t & (int32_t)0x80000000;
  const VI nonzero = (t != 0.f);
  return (VF)(((VI)g ^ sign_bit) & nonzero);
#endif
}
inline float HSum(VF v) {
  float s = 0.f;
  for (int i = 0; i < kVL; ++i) s += v[i];
  return s;
}

// ---- vector math (float, Cephes-style polynomials; ~1-2 ulp) ----
inline VF Select(VI mask, VF a, VF b) { return (VF)((mask & (VI)a) | (~mask & (VI)b)); }
inline VF Min(VF a, VF b) { return a < b ? a : b; }
inline VF Max(VF a, VF b) { return a > b ? a : b; }
inline VF Floor(VF x) {
  const VI i = __builtin_convertvector(x, VI);
  const VF f = __builtin_convertvector(i, VF);
  return f - Select(f > x, Splat(1.f), Splat(0.f));
}
// exp(x); 0 below -87.3, +inf above 88.7, NaN -> NaN.
inline VF Exp(VF x) {
  const VF xc = Min(Max(x, Splat(-87.3f)), Splat(88.7f));
  const VF fx = Floor(xc * 1.44269504088896341f + 0.5f);
  VF r = xc - fx * 0.693359375f;
  r = r - fx * -2.12194440e-4f;
  const VF r2 = r * r;
  VF y = Splat(1.9875691500E-4f);
  y = y * r + 1.3981999507E-3f;
  y = y * r + 8.3334519073E-3f;
  y = y * r + 4.1665795894E-2f;
  y = y * r + 1.6666665459E-1f;
  y = y * r + 5.0000001201E-1f;
  y = y * r2 + r + 1.f;
  const VI e = (__builtin_convertvector(fx, VI) + 127) << 23;
  VF out = y * (VF)e;
  out = Select(x < -87.3f, Splat(0.f), out);
  out = Select(x > 88.7f, Splat(__builtin_inff()), out);
  return Select(x != x, x, out);
}
// expm1(x), accurate for small |x| (Taylor series below 0.5).
inline VF Expm1(VF x) {
  VF p = Splat(1.f / 362880.f);
  p = p * x + 1.f / 40320.f;
  p = p * x + 1.f / 5040.f;
  p = p * x + 1.f / 720.f;
  p = p * x + 1.f / 120.f;
  p = p * x + 1.f / 24.f;
  p = p * x + 1.f / 6.f;
  p = p * x + 0.5f;
  const VF small = (p * x) * x + x;
  return Select(Abs(x) < 0.5f, small, Exp(x) - 1.f);
}
// log(x) for x > 0 (log(0) = -inf, x < 0 or NaN -> NaN, +inf -> +inf).
inline VF Log(VF x) {
  const VF xin = x;
  const VF xs = Max(x, Splat(1.17549435e-38f));
  VI bits = (VI)xs;
  VI e = ((bits >> 23) & 0xff) - 126;
  VF m = (VF)((bits & 0x007fffff) | 0x3f000000);  // [0.5, 1)
  const VI lt = m < 0.707106781186547524f;
  e = e + lt;  // lt is -1 where true
  m = m + Select(lt, m, Splat(0.f)) - 1.f;
  const VF z = m * m;
  VF y = Splat(7.0376836292E-2f);
  y = y * m - 1.1514610310E-1f;
  y = y * m + 1.1676998740E-1f;
  y = y * m - 1.2420140846E-1f;
  y = y * m + 1.4249322787E-1f;
  y = y * m - 1.6668057665E-1f;
  y = y * m + 2.0000714765E-1f;
  y = y * m - 2.4999993993E-1f;
  y = y * m + 3.3333331174E-1f;
  y = y * m * z;
  const VF ef = __builtin_convertvector(e, VF);
  y = y + ef * -2.12194440e-4f;
  y = y - 0.5f * z;
  VF out = m + y + ef * 0.693359375f;
  out = Select(xin == 0.f, Splat(-__builtin_inff()), out);
  out = Select(xin == __builtin_inff(), xin, out);
  return Select((xin < 0.f) | (xin != xin), Splat(__builtin_nanf("")), out);
}
// log1p(q) for q > -1 (Goldberg: log(u) * q / (u - 1), u = 1 + q).
inline VF Log1p(VF q) {
  const VF u = q + 1.f;
  const VF d = u - 1.f;
  return Select(d == 0.f, q, Log(u) * (q / Select(d == 0.f, Splat(1.f), d)));
}

// Lean log2 / exp2 without NaN handling (and log2 without inf, zero or
// denormal handling: callers route such data to Log above). Polynomials
// fitted for relative (exp2) / absolute (log2) error over the reduced range;
// ~1 ulp in float: log2 6.4e-8 absolute, exp2 7.9e-8 relative.
//
// log2(a) for finite a > 0: a = 2^e m, m in [sqrt(1/2), sqrt(2)),
// log2(m) = f Q(f), f = m - 1. a = 0 gives -127 (callers mask it).
inline VF Log2Fast(VF a) {
  const VI ib = (VI)a - 0x3f3504f3;  // bits of sqrt(1/2)
  const VF e = __builtin_convertvector(ib >> 23, VF);
  const VF f = (VF)((ib & 0x007fffff) + 0x3f3504f3) - 1.f;
  VF q = Splat(0.125830218f);
  q = q * f - 0.20726122f;
  q = q * f + 0.215714306f;
  q = q * f - 0.238945931f;
  q = q * f + 0.287916481f;
  q = q * f - 0.360703647f;
  q = q * f + 0.480910629f;
  q = q * f - 0.721347332f;
  q = q * f + 1.44269502f;
  return f * q + e;
}
// 2^y for y not NaN: y = k + r, k = round(y), r in [-1/2, 1/2], 2^r by a
// polynomial P with 2 P(0) = 2 exactly (2^0 = 1, so p = 1 gradients are exact),
// scaled by 2^(k-1) so that k = 128 still yields a normal scale: y <= -126
// (and the denormal range just above) gives 0, y >= 128 gives +inf.
inline VF Exp2Fast(VF y) {
  y = Min(Max(y, Splat(-126.f)), Splat(128.f));
  const VF shifted = y + 12582912.f;                 // 1.5 * 2^23: rounds y
  const VI k = (VI)shifted - 0x4b400000;             // bits of 1.5 * 2^23
  const VF r = y - (shifted - 12582912.f);
  VF q = Splat(2.f * 0.000153532965f);
  q = q * r + 2.f * 0.00133988529f;
  q = q * r + 2.f * 0.00961843785f;
  q = q * r + 2.f * 0.0555033237f;
  q = q * r + 2.f * 0.240226477f;
  q = q * r + 2.f * 0.693147182f;
  q = q * r + 2.f;
  return q * (VF)((k + 126) << 23);
}

inline int64_t RoundUp(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
inline int64_t CeilDiv(int64_t x, int64_t m) { return (x + m - 1) / m; }

// A fixed set of scratch slots; each concurrently running task of a
// parallelFor takes a free one. Concurrency never exceeds the pool's threads
// plus the calling thread, so `size` = num_threads + 2 always suffices.
class SlotPool {
 public:
  explicit SlotPool(int size) : size_(size), busy_(new std::atomic<bool>[size]) {
    for (int i = 0; i < size_; ++i) busy_[i].store(false);
  }
  int size() const { return size_; }
  int Acquire() {
    for (;;) {
      for (int i = 0; i < size_; ++i) {
        bool expected = false;
        if (!busy_[i].load(std::memory_order_relaxed) &&
            busy_[i].compare_exchange_strong(expected, true)) {
          return i;
        }
      }
    }
  }
  void Release(int i) { busy_[i].store(false); }

 private:
  int size_;
  std::unique_ptr<std::atomic<bool>[]> busy_;
};

class SlotGuard {
 public:
  explicit SlotGuard(SlotPool* pool) : pool_(pool), slot_(pool->Acquire()) {}
  ~SlotGuard() { pool_->Release(slot_); }
  int slot() const { return slot_; }

 private:
  SlotPool* pool_;
  int slot_;
};

// Splits each image's output rows into bands. Bands two apart never touch the
// same input rows (a band spans at least ceil(k_h / s_h) output rows), so all
// even bands can scatter into the input gradient concurrently, then all odd.
struct BandPlan {
  int64_t rows_per_band = 1;
  int64_t bands = 1;  // per image

  BandPlan(int64_t out_h, int64_t out_w, int64_t k_h, int64_t s_h,
           int64_t target_positions) {
    if (out_h <= 0) return;
    const int64_t min_rows = std::max<int64_t>(1, CeilDiv(k_h, s_h));
    const int64_t want =
        std::max(min_rows, CeilDiv(target_positions, std::max<int64_t>(out_w, 1)));
    bands = std::max<int64_t>(1, out_h / std::min(want, out_h));
    rows_per_band = CeilDiv(out_h, bands);
    bands = CeilDiv(out_h, rows_per_band);
  }
  // Number of (image, band) units of a wave (-1: all bands, 0: even, 1: odd).
  int64_t Units(int64_t batch, int wave) const {
    if (wave < 0) return batch * bands;
    return batch * ((bands - wave + 1) / 2);
  }
  void Unit(int64_t u, int wave, int64_t out_h, int64_t* image, int64_t* row_begin,
            int64_t* row_end) const {
    int64_t band;
    if (wave < 0) {
      *image = u / bands;
      band = u % bands;
    } else {
      const int64_t per = (bands - wave + 1) / 2;
      *image = u / per;
      band = 2 * (u % per) + wave;
    }
    *row_begin = band * rows_per_band;
    *row_end = std::min(out_h, *row_begin + rows_per_band);
  }
};

}  // namespace cpu
}  // namespace kernelzoo

#endif  // KERNELZOO_OPS_CC_CPU_UTIL_H_
