// GPU kernels of the similarity operator (phi and its derivatives per kind as documented in
// similarity_functor.h and the comments below, the same conventions as the CPU kernels).
// Written against gpu_shim.h, so nvcc builds them for the GPU and a host
// compiler builds the same source as an emulation for the tests.
//
// Forward: one block per tile of kTileP positions x kTileL templates; the
// patch entries are walked in chunks of kTileD, staged in shared memory
// (patches gathered from the image, im2col style; templates and weights), and
// each thread accumulates a 4 x 4 register tile.
// Backward: tiled the same way (see "backward" below); no atomics, so results
// do not depend on scheduling.
// Activations (input, output, grad, grad_input) are of type T (float, Half or
// BFloat16, gpu_shim.h), converted to float at the load and rounded to T at the
// store; parameters, their gradients and all accumulation are float.
#ifndef KERNELZOO_OPS_CC_SIMILARITY_GPU_H_
#define KERNELZOO_OPS_CC_SIMILARITY_GPU_H_

#include "gpu_shim.h"
#include "similarity_functor.h"

namespace kernelzoo {
namespace gpu {

constexpr int kTileP = 128, kTileL = 64, kTileD = 32;
constexpr int kTileThreads = 256;  // 16 x 16 threads
constexpr int kRegP = 8, kRegL = 4;  // each: 8 consecutive positions x 4 consecutive templates
constexpr int kPadP = 4;             // row padding of the patch tile (fewer bank conflicts, float4 aligned)

// A row far outside any image: a window origin with it reads padding only.
constexpr int kOutside = -(1 << 30);

// Where the window of an output position starts: its image's offset in the input and the
// input row and column of its top-left entry (negative in the padding). The tiled kernels keep
// one per position of a tile in shared memory.
struct WindowOrigin {
  int64_t base;
  int y0, x0;
};

// The origin of output position pos; live = false gives row kOutside (positions past a tile's end).
KZ_HOST_DEVICE inline WindowOrigin OriginOf(const WindowGeometry& g, int64_t pos, bool live = true) {
  const int64_t j = Mod(pos, g.out_w), rest = Div(pos, g.out_w);
  const int64_t i = Mod(rest, g.out_h), image = Div(rest, g.out_h);
  return WindowOrigin{image * g.in_h * g.in_w * g.in_c, live ? static_cast<int>(g.row0(i)) : kOutside,
                      static_cast<int>(g.col0(j))};
}

// Entry (a, b, c) of the window at `origin`, or `pad` outside the image.
template <typename T>
KZ_HOST_DEVICE inline float WindowEntry(const WindowGeometry& g, const T* input, const WindowOrigin& origin,
                                        int64_t a, int64_t b, int64_t c, float pad) {
  const int64_t y = origin.y0 + a, x = origin.x0 + b;
  if (y < 0 || y >= g.in_h || x < 0 || x >= g.in_w) return pad;
  return ToFloat(input[origin.base + (y * g.in_w + x) * g.in_c + c]);
}

// Patch entry d = (a * k_w + b) * C + c of output position pos, or `pad`
// outside the image.
template <typename T>
KZ_HOST_DEVICE inline float PatchEntry(const WindowGeometry& g, const T* input, int64_t pos, int64_t d, float pad) {
  const int64_t c = Mod(d, g.in_c), ab = Div(d, g.in_c);
  return WindowEntry(g, input, OriginOf(g, pos), Div(ab, g.k_w), Mod(ab, g.k_w), c, pad);
}

// |t|^p for the forward pass: exp2(p log2|t|) with the fast log2 (relative error ~1e-6 p),
// exactly 0 at t = 0; inf and NaN propagate.
KZ_HOST_DEVICE inline float PowAbs(float t, float p) {
  const float a = fabsf(t);
  if (a == 0.f) return 0.f;
#if defined(__CUDA_ARCH__)
  return exp2f(p * __log2f(a));
#else
  return exp2f(p * log2f(a));
#endif
}

// One block per tile of kTileP positions x kTileL templates (grid-stride over tiles);
// the patch axis in chunks of kTileD staged in shared memory. Per (patch entry d,
// template l) the tile holds, by kind:
//   linear: zs = u z                      term x zs
//   l2:     us = u, zs = -2 u z, cz = u z^2  term us x^2 + zs x, plus sum_d cz: -phi u expanded
//   l1, lp: us = u, zs = z                 term us |x - z|^p  (-phi u)
// With ignore_nan, NaN entries are skipped; l2 then adds cz entry by entry (the non-NaN ones). l2 is
// expanded as the CPU kernel and the composite are (-(sum u x^2 - 2 sum u z x + sum u z^2)), so an
// infinite x gives their result: NaN where u z x > 0, else -inf (the direct (x - z)^2 would be -inf).
template <int kKind, bool kIgnoreNaN, typename T>
KZ_GLOBAL void KZ_LAUNCH_BOUNDS(kTileThreads, 2) SimilarityForwardKernel(SimilarityParams prm, const T* input,
                                       const float* templates, const float* weights,
                                       const float* p, T* output) {
  const WindowGeometry& g = prm.geo;
  const int64_t positions = g.positions(), n = prm.num_templates, D = prm.patch_size();
  const int64_t tiles_l = (n + kTileL - 1) / kTileL;
  const int64_t tiles = (positions + kTileP - 1) / kTileP * tiles_l;
  constexpr bool kExpand = kKind == kSimL2;
  constexpr bool kSumCz = kExpand && !kIgnoreNaN;  // sum_d cz once per tile; with ignore_nan entry by entry
  const float pad = kIgnoreNaN ? NAN : 0.f;
  // 16-byte aligned rows: the compute phase reads them with Load4.
  KZ_SHARED alignas(16) float xs[kTileD][kTileP + kPadP];
  KZ_SHARED alignas(16) float zs[kTileD][kTileL];
  KZ_SHARED alignas(16) float us[kTileD][kTileL];
  KZ_SHARED alignas(16) float cz[kTileD][kTileL];  // l2 expanded: u z^2
  KZ_SHARED float cs[kTileL];          // l2 expanded: sum_d u z^2, accumulated by threads 0..kTileL-1
  KZ_SHARED WindowOrigin origin[kTileP];
  KZ_PER_THREAD(float, acc, [kRegP][kRegL]);
  for (int64_t tile = KZ_BLOCK_ID; tile < tiles; tile += KZ_BLOCKS) {
    const int64_t p0 = Div(tile, tiles_l) * kTileP, l0 = Mod(tile, tiles_l) * kTileL;
    KZ_FOR_THREADS(t) {
      for (int r = 0; r < kRegP; ++r)
        for (int s = 0; s < kRegL; ++s) KZ_REG(acc, t)[r][s] = 0.f;
      if (t < kTileP) origin[t] = OriginOf(g, p0 + t, p0 + t < positions);  // past the end: never stored
      if (t < kTileL) cs[t] = 0.f;
    }
    KZ_SYNC();
    for (int64_t d0 = 0; d0 < D; d0 += kTileD) {
      KZ_FOR_THREADS(t) {
        // Patch tile: thread t always loads patch entry d0 + t % kTileD (kTileThreads % kTileD == 0).
        const int dd = t % kTileD;
        const int64_t d = d0 + dd;
        const int64_t c = Mod(d, g.in_c), ab = Div(d, g.in_c);
        const int b = static_cast<int>(Mod(ab, g.k_w)), a = static_cast<int>(Div(ab, g.k_w));
        for (int pp = t / kTileD; pp < kTileP; pp += kTileThreads / kTileD) {
          xs[dd][pp] = d < D ? WindowEntry(g, input, origin[pp], a, b, c, pad) : 0.f;
        }
        for (int e = t; e < kTileD * kTileL; e += kTileThreads) {
          const int ll = e % kTileL, de = e / kTileL;
          const int64_t dz = d0 + de, l = l0 + ll;
          const bool in = dz < D && l < n;
          const float z = in ? templates[dz * n + l] : 0.f, u = in ? weights[dz * n + l] : 0.f;
          if (kKind == kSimLinear) {
            zs[de][ll] = u * z;
          } else if (kExpand) {
            us[de][ll] = u;
            zs[de][ll] = -2.f * u * z;
            cz[de][ll] = u * z * z;
          } else {
            us[de][ll] = u;
            zs[de][ll] = z;
          }
        }
      }
      KZ_SYNC();
      KZ_FOR_THREADS(t) {
        const int tx = t % 16, ty = t / 16;
        float pr[kRegL];
        for (int s = 0; s < kRegL; ++s) {
          const int64_t l = l0 + tx * kRegL + s;
          pr[s] = (kKind == kSimLp && l < n) ? p[l] : 1.f;
        }
        const int d_end = D - d0 < kTileD ? static_cast<int>(D - d0) : kTileD;
        if (kSumCz && t < kTileL) {
          for (int dd = 0; dd < d_end; ++dd) cs[t] += cz[dd][t];
        }
        static_assert(kRegP == 8 && kRegL == 4, "the loads below read 2 x 4 patch and 4 template values");
        for (int dd = 0; dd < d_end; ++dd) {
          const Float4 x_lo = Load4(&xs[dd][ty * kRegP]), x_hi = Load4(&xs[dd][ty * kRegP + 4]);
          const Float4 z4 = Load4(&zs[dd][tx * kRegL]);
          const Float4 u4 = kKind == kSimLinear ? Float4{0.f, 0.f, 0.f, 0.f} : Load4(&us[dd][tx * kRegL]);
          const Float4 c4 = kExpand && kIgnoreNaN ? Load4(&cz[dd][tx * kRegL]) : Float4{0.f, 0.f, 0.f, 0.f};
          const float xr[kRegP] = {x_lo.x, x_lo.y, x_lo.z, x_lo.w, x_hi.x, x_hi.y, x_hi.z, x_hi.w};
          const float zr[kRegL] = {z4.x, z4.y, z4.z, z4.w}, ur[kRegL] = {u4.x, u4.y, u4.z, u4.w};
          const float cr[kRegL] = {c4.x, c4.y, c4.z, c4.w};
          for (int r = 0; r < kRegP; ++r) {
            const float x = xr[r];
            if (kIgnoreNaN && x != x) continue;
            for (int s = 0; s < kRegL; ++s) {
              float& out = KZ_REG(acc, t)[r][s];
              if (kKind == kSimLinear) {
                out = fmaf(x, zr[s], out);
              } else if (kExpand) {
                out = fmaf(ur[s], x * x, fmaf(zr[s], x, out));  // two FMAs (x * x is hoisted)
                if (kIgnoreNaN) out += cr[s];
              } else if (kKind == kSimL1) {
                out = fmaf(ur[s], fabsf(x - zr[s]), out);
              } else {
                out += ur[s] * PowAbs(x - zr[s], pr[s]);
              }
            }
          }
        }
      }
      KZ_SYNC();
    }
    KZ_FOR_THREADS(t) {
      const int tx = t % 16, ty = t / 16;
      const float sign = kKind == kSimLinear ? 1.f : -1.f;
      for (int r = 0; r < kRegP; ++r) {
        const int64_t pos = p0 + ty * kRegP + r;
        if (pos >= positions) continue;
        for (int s = 0; s < kRegL; ++s) {
          const int64_t l = l0 + tx * kRegL + s;
          const float extra = kSumCz ? cs[tx * kRegL + s] : 0.f;
          if (l < n) output[pos * n + l] = FromFloat<T>(sign * (KZ_REG(acc, t)[r][s] + extra));
        }
      }
    }
    KZ_SYNC();
  }
}

// ------------------------------------------------------------ backward --
// Both gradients are tiled like the forward pass (64 x 64 outputs a block, 4 x 4 a
// thread, the reduced axis in chunks of kGradChunk staged in shared memory):
//  * patch gradients G[pos, d] = sum_l grad[pos, l] u[d, l] dphi/dx(x[pos, d], z[d, l])
//    into a workspace, one batch of images at a time (bounded memory), then gathered into
//    grad_input (each input entry sums the windows covering it: no atomics);
//  * parameter gradients: block (split, d tile, l tile) sums grad dphi/dz, grad phi and
//    grad dphi/dp over its split of the positions into partial[3][splits][D n];
//    SimilarityGradParamsReduceKernel sums the splits in double.
constexpr int kGradTile = 64, kGradChunk = 16, kGradReg = 4;
static_assert(kGradReg == 4, "the backward kernels read a register row of shared memory with one Load4");
#ifndef KZ_PATCH_GRAD_FLOATS  // a test build lowers it to run several batches
#define KZ_PATCH_GRAD_FLOATS (int64_t{1} << 24)
#endif
constexpr int64_t kPatchGradFloats = KZ_PATCH_GRAD_FLOATS;  // patch-gradient workspace: 64 MB at most
constexpr int64_t kParamBlocks = 1056;                   // ~8 blocks per multiprocessor of an H100/H200
constexpr int64_t kParamPartialFloats = int64_t{1} << 22;

// d|t|^p/dt = p |t|^(p-1) sign(t), 0 at t = 0, NaN at NaN t (powf(NaN, 0) is 1: p = 1 needs the test).
// |t|^(p-1) by its own power (not |t|^p / |t|), as the CPU kernel: t = +-inf gives the limit (0 for
// p < 1, p at p = 1, inf for p > 1), not inf / inf = NaN.
KZ_HOST_DEVICE inline float LpSlope(float t, float p) {
  const float a = fabsf(t);
  if (a == 0.f || a != a) return a == 0.f ? 0.f : t;
  return p * powf(a, p - 1.f) * (t > 0.f ? 1.f : -1.f);
}

// dphi/dx summed with weights g u, for the kinds without an expanded form: l1, and lp for every other kKind
// (linear and l2 never call it; they take their expanded forms).
template <int kKind>
KZ_HOST_DEVICE inline float WeightedDx(float gu, float x, float z, float p) {
  const float t = x - z;
  if (kKind == kSimL1) {
    return t != t ? t : gu * ((t < 0.f) - (t > 0.f));  // -sign(x - z); NaN at NaN x (IEEE, as the composite)
  }
  return -gu * LpSlope(t, p);
}

// G for positions [pos0, pos0 + count) into gpatch[(pos - pos0) * D + d]. Per (pos, d) and
// template chunk: linear  acc += g (u z)                      G = acc
//                 l2      acc += g u, acc2 += g (u z)         G = -2 (x acc - acc2)
//                 others  acc += g u dphi/dx                  G = acc
// With ignore_nan, NaN entries get G = 0.
template <int kKind, bool kIgnoreNaN, typename T>
KZ_GLOBAL void KZ_LAUNCH_BOUNDS(kTileThreads, 2) SimilarityPatchGradKernel(
    SimilarityParams prm, int64_t pos0, int64_t count, const T* input, const float* templates,
    const float* weights, const float* p, const T* grad, float* gpatch) {
  const WindowGeometry& g = prm.geo;
  const int64_t n = prm.num_templates, D = prm.patch_size();
  const int64_t tiles_d = (D + kGradTile - 1) / kGradTile;
  const int64_t tiles = (count + kGradTile - 1) / kGradTile * tiles_d;
  KZ_SHARED alignas(16) float gs[kGradChunk][kGradTile + 4];  // 16-byte aligned rows, read with Load4
  KZ_SHARED alignas(16) float us[kGradChunk][kGradTile + 4];
  KZ_SHARED alignas(16) float zs[kGradChunk][kGradTile + 4];
  KZ_SHARED float ps[kGradChunk];
  KZ_PER_THREAD(float, xr, [kGradReg][kGradReg]);
  KZ_PER_THREAD(float, acc, [kGradReg][kGradReg]);
  KZ_PER_THREAD(float, acc2, [kGradReg][kGradReg]);
  for (int64_t tile = KZ_BLOCK_ID; tile < tiles; tile += KZ_BLOCKS) {
    const int64_t p0 = Div(tile, tiles_d) * kGradTile, d0 = Mod(tile, tiles_d) * kGradTile;
    KZ_FOR_THREADS(t) {
      const int tx = t % 16, ty = t / 16;
      for (int r = 0; r < kGradReg; ++r) {
        const int64_t pos = p0 + ty * kGradReg + r;
        for (int s = 0; s < kGradReg; ++s) {
          const int64_t d = d0 + tx * kGradReg + s;
          KZ_REG(xr, t)[r][s] = (pos < count && d < D) ? PatchEntry(g, input, pos0 + pos, d, 0.f) : 0.f;
          KZ_REG(acc, t)[r][s] = KZ_REG(acc2, t)[r][s] = 0.f;
        }
      }
    }
    for (int64_t l0 = 0; l0 < n; l0 += kGradChunk) {
      KZ_FOR_THREADS(t) {
        for (int e = t; e < kGradChunk * kGradTile; e += kTileThreads) {
          const int ll = e % kGradChunk, i = e / kGradChunk;
          const int64_t l = l0 + ll, pos = p0 + i, d = d0 + i;
          gs[ll][i] = (l < n && pos < count) ? ToFloat(grad[(pos0 + pos) * n + l]) : 0.f;
          const float u = (l < n && d < D) ? weights[d * n + l] : 0.f;
          const float z = (l < n && d < D) ? templates[d * n + l] : 0.f;
          us[ll][i] = u;
          zs[ll][i] = (kKind == kSimLinear || kKind == kSimL2) ? u * z : z;
        }
        if (t < kGradChunk) ps[t] = (kKind == kSimLp && l0 + t < n) ? p[l0 + t] : 1.f;
      }
      KZ_SYNC();
      KZ_FOR_THREADS(t) {
        const int tx = t % 16, ty = t / 16;
        const int l_end = n - l0 < kGradChunk ? static_cast<int>(n - l0) : kGradChunk;
        for (int ll = 0; ll < l_end; ++ll) {
          const Float4 g4 = Load4(&gs[ll][ty * kGradReg]), u4 = Load4(&us[ll][tx * kGradReg]);
          const Float4 z4 = Load4(&zs[ll][tx * kGradReg]);
          const float gr[kGradReg] = {g4.x, g4.y, g4.z, g4.w}, ur[kGradReg] = {u4.x, u4.y, u4.z, u4.w};
          const float zr[kGradReg] = {z4.x, z4.y, z4.z, z4.w};
          for (int r = 0; r < kGradReg; ++r)
            for (int s = 0; s < kGradReg; ++s) {
              if (kKind == kSimLinear) {
                KZ_REG(acc, t)[r][s] = fmaf(gr[r], zr[s], KZ_REG(acc, t)[r][s]);
              } else if (kKind == kSimL2) {
                KZ_REG(acc, t)[r][s] = fmaf(gr[r], ur[s], KZ_REG(acc, t)[r][s]);
                KZ_REG(acc2, t)[r][s] = fmaf(gr[r], zr[s], KZ_REG(acc2, t)[r][s]);
              } else {
                KZ_REG(acc, t)[r][s] += WeightedDx<kKind>(gr[r] * ur[s], KZ_REG(xr, t)[r][s], zr[s], ps[ll]);
              }
            }
        }
      }
      KZ_SYNC();
    }
    KZ_FOR_THREADS(t) {
      const int tx = t % 16, ty = t / 16;
      for (int r = 0; r < kGradReg; ++r) {
        const int64_t pos = p0 + ty * kGradReg + r;
        if (pos >= count) continue;
        for (int s = 0; s < kGradReg; ++s) {
          const int64_t d = d0 + tx * kGradReg + s;
          if (d >= D) continue;
          const float x = KZ_REG(xr, t)[r][s];
          float value = kKind == kSimL2 ? -2.f * (x * KZ_REG(acc, t)[r][s] - KZ_REG(acc2, t)[r][s])
                                        : KZ_REG(acc, t)[r][s];
          if (kIgnoreNaN && x != x) value = 0.f;
          gpatch[pos * D + d] = value;
        }
      }
    }
  }
}

// grad_input of images [image0, image0 + images): each entry sums gpatch over the windows
// covering it (gpatch of the batch's positions, as SimilarityPatchGradKernel wrote it).
template <typename T>
KZ_GLOBAL void SimilarityGatherKernel(SimilarityParams prm, int64_t image0, int64_t images,
                                      const float* gpatch, T* grad_input) {
  const WindowGeometry& g = prm.geo;
  const int64_t D = prm.patch_size(), per_image = g.in_h * g.in_w * g.in_c;
  KZ_FOR_THREADS(t) {
    KZ_GRID_STRIDE(idx, t, images * per_image) {
      const int64_t c = Mod(idx, g.in_c), rest = Div(idx, g.in_c);
      const int64_t x = Mod(rest, g.in_w), y = Mod(Div(rest, g.in_w), g.in_h);
      const int64_t image = Div(rest, g.in_w * g.in_h);  // within the batch
      float acc = 0.f;
      for (int64_t a = 0; a < g.k_h; ++a) {
        const int64_t ry = y + g.pad_top - a;  // = i * s_h
        if (ry < 0 || Mod(ry, g.s_h) != 0 || Div(ry, g.s_h) >= g.out_h) continue;
        const int64_t i = Div(ry, g.s_h);
        for (int64_t b = 0; b < g.k_w; ++b) {
          const int64_t rx = x + g.pad_left - b;
          if (rx < 0 || Mod(rx, g.s_w) != 0 || Div(rx, g.s_w) >= g.out_w) continue;
          const int64_t j = Div(rx, g.s_w);
          acc += gpatch[((image * g.out_h + i) * g.out_w + j) * D + (a * g.k_w + b) * g.in_c + c];
        }
      }
      grad_input[image0 * per_image + idx] = FromFloat<T>(acc);
    }
  }
}

// Parameter gradients of split `split` of the positions, d tile and l tile (see above).
//   linear: gz += g x              (gu = z gz)
//   l2:     gz += g x, gu += g x^2, gp += g (the sums of the expanded form, as the CPU kernel and the
//           composite: SimilarityGradParamsReduceKernel makes grad z = 2 u (gz - z gp) and
//           grad u = -(gu - 2 z gz + z^2 gp) of them, in double; an infinite x gives their NaN / inf)
//   l1:     gz += g sign(t), gu += g |t|  (then gu = -gu)
//   lp:     gz += g dphi/dz, gu += g phi, gp += g dphi/dp
template <int kKind, bool kIgnoreNaN, typename T>
KZ_GLOBAL void KZ_LAUNCH_BOUNDS(kTileThreads, 2) SimilarityParamGradKernel(
    SimilarityParams prm, int64_t splits, const T* input, const float* templates, const float* p,
    const T* grad, float* partial) {
  const WindowGeometry& g = prm.geo;
  const int64_t n = prm.num_templates, D = prm.patch_size(), pairs = D * n, positions = g.positions();
  const int64_t tiles_d = (D + kGradTile - 1) / kGradTile, tiles_l = (n + kGradTile - 1) / kGradTile;
  const int64_t per_split = (positions + splits - 1) / splits;
  const float pad = kIgnoreNaN ? NAN : 0.f;
  KZ_SHARED alignas(16) float xs[kGradChunk][kGradTile + 4];  // 16-byte aligned rows, read with Load4
  KZ_SHARED alignas(16) float gs[kGradChunk][kGradTile + 4];
  KZ_SHARED WindowOrigin origin[kGradChunk];
  KZ_SHARED int d_a[kGradTile], d_b[kGradTile], d_c[kGradTile];
  KZ_PER_THREAD(float, zr, [kGradReg][kGradReg]);
  KZ_PER_THREAD(float, pr, [kGradReg]);
  KZ_PER_THREAD(float, gz, [kGradReg][kGradReg]);
  KZ_PER_THREAD(float, gu, [kGradReg][kGradReg]);
  KZ_PER_THREAD(float, gp, [kGradReg][kGradReg]);
  for (int64_t item = KZ_BLOCK_ID; item < splits * tiles_d * tiles_l; item += KZ_BLOCKS) {
    const int64_t lt = Mod(item, tiles_l), dt = Mod(Div(item, tiles_l), tiles_d);
    const int64_t split = Div(item, tiles_l * tiles_d);
    const int64_t d0 = dt * kGradTile, l0 = lt * kGradTile;
    const int64_t begin = split * per_split;
    const int64_t end = begin + per_split < positions ? begin + per_split : positions;
    KZ_FOR_THREADS(t) {
      const int tx = t % 16, ty = t / 16;  // templates l0 + 4 tx + s, entries d0 + 4 ty + r
      for (int r = 0; r < kGradReg; ++r) {
        const int64_t d = d0 + ty * kGradReg + r;
        for (int s = 0; s < kGradReg; ++s) {
          const int64_t l = l0 + tx * kGradReg + s;
          KZ_REG(zr, t)[r][s] = (d < D && l < n) ? templates[d * n + l] : 0.f;
          KZ_REG(gz, t)[r][s] = KZ_REG(gu, t)[r][s] = KZ_REG(gp, t)[r][s] = 0.f;
        }
      }
      for (int s = 0; s < kGradReg; ++s) {
        const int64_t l = l0 + tx * kGradReg + s;
        KZ_REG(pr, t)[s] = (kKind == kSimLp && l < n) ? p[l] : 1.f;
      }
      if (t < kGradTile) {
        const int64_t d = d0 + t;
        d_c[t] = static_cast<int>(Mod(d, g.in_c));
        d_b[t] = static_cast<int>(Mod(Div(d, g.in_c), g.k_w));
        d_a[t] = d < D ? static_cast<int>(Div(d, g.in_c * g.k_w)) : kOutside;  // past D: outside
      }
    }
    for (int64_t c0 = begin; c0 < end; c0 += kGradChunk) {
      KZ_FOR_THREADS(t) {
        if (t < kGradChunk) origin[t] = OriginOf(g, c0 + t, c0 + t < end);
      }
      KZ_SYNC();
      KZ_FOR_THREADS(t) {
        for (int e = t; e < kGradChunk * kGradTile; e += kTileThreads) {
          const int i = e % kGradTile, pp = e / kGradTile;
          // Entries past D or positions past the split: x = 0, g = 0 (no contribution).
          const bool live = origin[pp].y0 != kOutside && d_a[i] != kOutside;
          xs[pp][i] = live ? WindowEntry(g, input, origin[pp], d_a[i], d_b[i], d_c[i], pad) : 0.f;
          const int64_t l = l0 + i, pos = c0 + pp;
          gs[pp][i] = (l < n && pos < end) ? ToFloat(grad[pos * n + l]) : 0.f;
        }
      }
      KZ_SYNC();
      KZ_FOR_THREADS(t) {
        const int tx = t % 16, ty = t / 16;
        for (int pp = 0; pp < kGradChunk && c0 + pp < end; ++pp) {  // past the split: no position (0 * |z|^p)
          const Float4 x4 = Load4(&xs[pp][ty * kGradReg]), g4 = Load4(&gs[pp][tx * kGradReg]);
          const float xv[kGradReg] = {x4.x, x4.y, x4.z, x4.w}, gv[kGradReg] = {g4.x, g4.y, g4.z, g4.w};
          for (int r = 0; r < kGradReg; ++r) {
            const float x = xv[r];
            if (kIgnoreNaN && x != x) continue;
            for (int s = 0; s < kGradReg; ++s) {
              const float z = KZ_REG(zr, t)[r][s], go = gv[s];
              if (kKind == kSimLinear) {
                KZ_REG(gz, t)[r][s] = fmaf(go, x, KZ_REG(gz, t)[r][s]);
              } else if (kKind == kSimL2) {
                const float gx = go * x;
                KZ_REG(gz, t)[r][s] += gx;
                KZ_REG(gu, t)[r][s] = fmaf(gx, x, KZ_REG(gu, t)[r][s]);
                KZ_REG(gp, t)[r][s] += go;
              } else if (kKind == kSimL1) {
                const float diff = x - z;
                const float sign = diff != diff ? diff : (diff > 0.f) - (diff < 0.f);  // sign(NaN) = NaN
                KZ_REG(gz, t)[r][s] = fmaf(go, sign, KZ_REG(gz, t)[r][s]);
                KZ_REG(gu, t)[r][s] = fmaf(go, fabsf(diff), KZ_REG(gu, t)[r][s]);
              } else {  // phi = -|t|^p, dphi/dz = p |t|^(p-1) sign(t), dphi/dp = -|t|^p log|t| (0 at t = 0)
                const float pl = KZ_REG(pr, t)[s], diff = x - z, a = fabsf(diff);
                const float pw = a == 0.f ? 0.f : powf(a, pl);
                KZ_REG(gz, t)[r][s] += go * LpSlope(diff, pl);
                KZ_REG(gu, t)[r][s] -= go * pw;
                KZ_REG(gp, t)[r][s] -= a == 0.f ? 0.f : go * pw * logf(a);
              }
            }
          }
        }
      }
      KZ_SYNC();
    }
    KZ_FOR_THREADS(t) {
      const int tx = t % 16, ty = t / 16;
      for (int r = 0; r < kGradReg; ++r) {
        const int64_t d = d0 + ty * kGradReg + r;
        for (int s = 0; s < kGradReg; ++s) {
          const int64_t l = l0 + tx * kGradReg + s;
          if (d >= D || l >= n) continue;
          float z_grad = KZ_REG(gz, t)[r][s], u_grad = KZ_REG(gu, t)[r][s];
          if (kKind == kSimLinear) u_grad = KZ_REG(zr, t)[r][s] * z_grad;
          if (kKind == kSimL1) u_grad = -u_grad;
          const int64_t at = split * pairs + d * n + l;
          partial[at] = z_grad;
          partial[splits * pairs + at] = u_grad;
          partial[2 * splits * pairs + at] = KZ_REG(gp, t)[r][s];
        }
      }
    }
  }
}

inline int64_t ParamSplits(const SimilarityParams& prm) {
  const int64_t D = prm.patch_size(), n = prm.num_templates, positions = prm.geo.positions();
  const int64_t tiles = ((D + kGradTile - 1) / kGradTile) * ((n + kGradTile - 1) / kGradTile);
  int64_t splits = (kParamBlocks + tiles - 1) / tiles;
  const int64_t by_positions = (positions + 4 * kGradChunk - 1) / (4 * kGradChunk);  // >= 64 positions a split
  const int64_t by_memory = kParamPartialFloats / (3 * D * n > 0 ? 3 * D * n : 1);
  if (splits > by_positions) splits = by_positions;
  if (splits > by_memory) splits = by_memory;
  return splits < 1 ? 1 : splits;
}

// Images per batch of the patch-gradient workspace.
inline int64_t PatchGradImages(const SimilarityParams& prm) {
  const int64_t per_image = prm.geo.out_h * prm.geo.out_w * prm.patch_size();
  const int64_t images = per_image > 0 ? kPatchGradFloats / per_image : prm.geo.batch;
  return images < 1 ? 1 : (images < prm.geo.batch ? images : prm.geo.batch);
}

KZ_GLOBAL void SimilarityGradParamsReduceKernel(SimilarityParams prm, int64_t slices, const float* templates,
                                                const float* weights, const float* partial, float* grad_templates,
                                                float* grad_weights, double* grad_p_partial) {
  const int64_t pairs = prm.patch_size() * prm.num_templates;
  KZ_FOR_THREADS(t) {
    KZ_GRID_STRIDE(pair, t, pairs) {
      double gz = 0.0, gu = 0.0, gp = 0.0;
      for (int64_t s = 0; s < slices; ++s) {
        gz += partial[s * pairs + pair];
        gu += partial[(slices + s) * pairs + pair];
        gp += partial[(2 * slices + s) * pairs + pair];
      }
      if (prm.kind == kSimL2) {  // gz, gu, gp: sum g x, sum g x^2, sum g (see SimilarityParamGradKernel)
        const double z = templates[pair];
        grad_templates[pair] = static_cast<float>(2.0 * weights[pair] * (gz - z * gp));
        grad_weights[pair] = static_cast<float>(-(gu - 2.0 * z * gz + z * z * gp));
        grad_p_partial[pair] = 0.0;
        continue;
      }
      grad_templates[pair] = static_cast<float>(weights[pair] * gz);
      grad_weights[pair] = static_cast<float>(gu);
      grad_p_partial[pair] = weights[pair] * gp;
    }
  }
}

// grad_p[l] = sum_d partial[d, l].
KZ_GLOBAL void SimilarityGradPKernel(SimilarityParams prm, const double* partial, float* grad_p) {
  const int64_t n = prm.num_templates, D = prm.patch_size();
  KZ_FOR_THREADS(t) {
    KZ_GRID_STRIDE(l, t, n) {
      double sum = 0.0;
      for (int64_t d = 0; d < D; ++d) sum += partial[d * n + l];
      grad_p[l] = static_cast<float>(sum);
    }
  }
}

template <int kKind, bool kIgnoreNaN, typename T>
void LaunchSimilarityForward(const Launcher& launch, const SimilarityParams& prm, const T* input,
                             const float* templates, const float* weights, const float* p, T* output) {
  const int64_t tiles = (prm.geo.positions() + kTileP - 1) / kTileP *
                        ((prm.num_templates + kTileL - 1) / kTileL);
  launch(SimilarityForwardKernel<kKind, kIgnoreNaN, T>, tiles < launch.MaxBlocks() ? tiles : launch.MaxBlocks(),
         kTileThreads, prm, input, templates, weights, p, output);
}

// output (N, out_h, out_w, n). Device pointers (host pointers in the emulation).
template <typename T>
void SimilarityForward(const Launcher& launch, const SimilarityParams& prm, const T* input,
                       const float* templates, const float* weights, const float* p, T* output) {
  if (prm.geo.positions() == 0 || prm.num_templates == 0) return;
  if (prm.patch_size() == 0) {
    launch.Zero(output, prm.geo.positions() * prm.num_templates);
    return;
  }
  const bool nan = prm.ignore_nan;
  switch (prm.kind) {
    case kSimLinear:
      return nan ? LaunchSimilarityForward<kSimLinear, true, T>(launch, prm, input, templates, weights, p, output)
                 : LaunchSimilarityForward<kSimLinear, false, T>(launch, prm, input, templates, weights, p, output);
    case kSimL1:
      return nan ? LaunchSimilarityForward<kSimL1, true, T>(launch, prm, input, templates, weights, p, output)
                 : LaunchSimilarityForward<kSimL1, false, T>(launch, prm, input, templates, weights, p, output);
    case kSimL2:
      return nan ? LaunchSimilarityForward<kSimL2, true, T>(launch, prm, input, templates, weights, p, output)
                 : LaunchSimilarityForward<kSimL2, false, T>(launch, prm, input, templates, weights, p, output);
    default:
      return nan ? LaunchSimilarityForward<kSimLp, true, T>(launch, prm, input, templates, weights, p, output)
                 : LaunchSimilarityForward<kSimLp, false, T>(launch, prm, input, templates, weights, p, output);
  }
}

// Device scratch of SimilarityBackward, in bytes: the double grad_p partial sums, the
// splits' float partials (<= 16 MB) and, for the input's gradient, one batch of patch
// gradients (<= 64 MB).
inline int64_t SimilarityBackwardWorkspaceBytes(const SimilarityParams& prm, bool input_grad = true) {
  const int64_t pairs = prm.patch_size() * prm.num_templates;
  const int64_t floats = 3 * ParamSplits(prm) * pairs +
                         (input_grad ? PatchGradImages(prm) * prm.geo.out_h * prm.geo.out_w * prm.patch_size() : 0);
  return pairs * static_cast<int64_t>(sizeof(double)) + floats * static_cast<int64_t>(sizeof(float));
}

template <int kKind, bool kIgnoreNaN, typename T>
void LaunchSimilarityBackward(const Launcher& launch, const SimilarityParams& prm, const T* input,
                              const float* templates, const float* weights, const float* p, const T* grad,
                              T* grad_input, float* partial, float* gpatch) {
  const WindowGeometry& g = prm.geo;
  const int64_t D = prm.patch_size(), n = prm.num_templates, per_image = g.out_h * g.out_w;
  const int64_t batch_images = PatchGradImages(prm);
  if (grad_input != nullptr) {
    for (int64_t image0 = 0; image0 < g.batch; image0 += batch_images) {
      const int64_t images = g.batch - image0 < batch_images ? g.batch - image0 : batch_images;
      const int64_t count = images * per_image;
      const int64_t tiles = (count + kGradTile - 1) / kGradTile * ((D + kGradTile - 1) / kGradTile);
      launch(SimilarityPatchGradKernel<kKind, kIgnoreNaN, T>,
             tiles < launch.MaxBlocks() ? tiles : launch.MaxBlocks(), kTileThreads, prm, image0 * per_image, count,
             input, templates, weights, p, grad, gpatch);
      launch(SimilarityGatherKernel<T>, BlocksFor(launch, images * g.in_h * g.in_w * g.in_c, launch.max_threads),
             launch.max_threads, prm, image0, images, static_cast<const float*>(gpatch), grad_input);
    }
  }
  const int64_t splits = ParamSplits(prm);
  const int64_t items = splits * ((D + kGradTile - 1) / kGradTile) * ((n + kGradTile - 1) / kGradTile);
  launch(SimilarityParamGradKernel<kKind, kIgnoreNaN, T>, items < launch.MaxBlocks() ? items : launch.MaxBlocks(),
         kTileThreads, prm, splits, input, templates, p, grad, partial);
}

// Gradients w.r.t. input, templates, weights and p (all overwritten); grad_input null: the
// parameters' only.
template <typename T>
void SimilarityBackward(const Launcher& launch, const SimilarityParams& prm, const T* input,
                        const float* templates, const float* weights, const float* p, const T* grad,
                        T* grad_input, float* grad_templates, float* grad_weights, float* grad_p,
                        void* workspace) {
  const WindowGeometry& g = prm.geo;
  const int64_t n = prm.num_templates, D = prm.patch_size();
  const int threads = launch.max_threads;
  if (n == 0 || g.positions() == 0 || D == 0) {
    if (grad_input != nullptr) launch.Zero(grad_input, g.inputs());
    launch.Zero(grad_templates, D * n);
    launch.Zero(grad_weights, D * n);
    launch.Zero(grad_p, n);
    return;
  }
  double* grad_p_partial = static_cast<double*>(workspace);
  float* partial = reinterpret_cast<float*>(grad_p_partial + D * n);
  float* gpatch = partial + 3 * ParamSplits(prm) * D * n;
  const auto run = [&](auto kind, auto nan) {
    LaunchSimilarityBackward<decltype(kind)::value, decltype(nan)::value, T>(
        launch, prm, input, templates, weights, p, grad, grad_input, partial, gpatch);
  };
  const auto with_nan = [&](auto kind) {
    if (prm.ignore_nan) {
      run(kind, Constant<bool, true>());
    } else {
      run(kind, Constant<bool, false>());
    }
  };
  switch (prm.kind) {
    case kSimLinear: with_nan(Constant<int, kSimLinear>()); break;
    case kSimL1: with_nan(Constant<int, kSimL1>()); break;
    case kSimL2: with_nan(Constant<int, kSimL2>()); break;
    default: with_nan(Constant<int, kSimLp>()); break;
  }
  launch(SimilarityGradParamsReduceKernel, BlocksFor(launch, D * n, threads), threads, prm, ParamSplits(prm),
         templates, weights, static_cast<const float*>(partial), grad_templates, grad_weights, grad_p_partial);
  launch(SimilarityGradPKernel, BlocksFor(launch, n, threads), threads, prm,
         static_cast<const double*>(grad_p_partial), grad_p);
}

}  // namespace gpu
}  // namespace kernelzoo

#endif  // KERNELZOO_OPS_CC_SIMILARITY_GPU_H_
