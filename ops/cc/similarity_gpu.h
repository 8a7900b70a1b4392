// GPU kernels of the similarity operator (launch code and memory layout only;
// the math is SimilarityPhi / SimilarityPhiGrad of similarity_functor.h).
// Written against gpu_shim.h, so nvcc builds them for the GPU and a host
// compiler builds the same source as an emulation for the tests.
//
// Forward: one block per tile of kTileP positions x kTileL templates; the
// patch entries are walked in chunks of kTileD, staged in shared memory
// (patches gathered from the image, im2col style; templates and weights), and
// each thread accumulates a 4 x 4 register tile.
// Backward: grad_input gathers, for each input entry, every (window, template)
// that reads it; grad_templates / grad_weights / grad_p give one thread to
// each (patch entry, template) pair, summing over positions in double. No
// atomics: results do not depend on scheduling.
#ifndef KERNELZOO_OPS_CC_SIMILARITY_GPU_H_
#define KERNELZOO_OPS_CC_SIMILARITY_GPU_H_

#include "gpu_shim.h"
#include "similarity_functor.h"

namespace kernelzoo {
namespace gpu {

constexpr int kTileP = 128, kTileL = 64, kTileD = 16;
constexpr int kTileThreads = 256;  // 16 x 16 threads
constexpr int kRegP = 8, kRegL = 4;  // each: 8 consecutive positions x 4 consecutive templates
constexpr int kPadP = 4;             // row padding of the patch tile (fewer bank conflicts, float4 aligned)

// Patch entry d = (a * k_w + b) * C + c of output position pos, or `pad`
// outside the image.
KZ_HOST_DEVICE inline float PatchEntry(const WindowGeometry& g, const float* input, int64_t pos, int64_t d,
                                       float pad) {
  const int64_t j = Mod(pos, g.out_w), rest = Div(pos, g.out_w);
  const int64_t i = Mod(rest, g.out_h), n = Div(rest, g.out_h);
  const int64_t c = Mod(d, g.in_c), ab = Div(d, g.in_c);
  const int64_t b = Mod(ab, g.k_w), a = Div(ab, g.k_w);
  const int64_t y = g.row0(i) + a, x = g.col0(j) + b;
  if (y < 0 || y >= g.in_h || x < 0 || x >= g.in_w) return pad;
  return input[((n * g.in_h + y) * g.in_w + x) * g.in_c + c];
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
// With ignore_nan, l2 takes the direct term us (x - z)^2 and NaN entries are skipped.
template <int kKind, bool kIgnoreNaN>
KZ_GLOBAL void SimilarityForwardKernel(SimilarityParams prm, const float* input,
                                       const float* templates, const float* weights,
                                       const float* p, float* output) {
  const WindowGeometry& g = prm.geo;
  const int64_t positions = g.positions(), n = prm.num_templates, D = prm.patch_size();
  const int64_t tiles_l = (n + kTileL - 1) / kTileL;
  const int64_t tiles = (positions + kTileP - 1) / kTileP * tiles_l;
  constexpr bool kExpand = kKind == kSimL2 && !kIgnoreNaN;
  const float pad = kIgnoreNaN ? NAN : 0.f;
  KZ_SHARED float xs[kTileD][kTileP + kPadP];
  KZ_SHARED float zs[kTileD][kTileL];
  KZ_SHARED float us[kTileD][kTileL];
  KZ_SHARED float cz[kTileD][kTileL];  // l2 expanded: u z^2
  KZ_SHARED float cs[kTileL];          // l2 expanded: sum_d u z^2, accumulated by the threads of row 0
  KZ_SHARED int64_t p_base[kTileP];  // input offset of the position's window origin (image, y0, x0)
  KZ_SHARED int p_y0[kTileP], p_x0[kTileP];
  KZ_PER_THREAD(float, acc, [kRegP][kRegL]);
  for (int64_t tile = KZ_BLOCK_ID; tile < tiles; tile += KZ_BLOCKS) {
    const int64_t p0 = Div(tile, tiles_l) * kTileP, l0 = Mod(tile, tiles_l) * kTileL;
    KZ_FOR_THREADS(t) {
      for (int r = 0; r < kRegP; ++r)
        for (int s = 0; s < kRegL; ++s) KZ_REG(acc, t)[r][s] = 0.f;
      if (t < kTileP) {
        const int64_t pos = p0 + t;
        const int64_t j = Mod(pos, g.out_w), rest = Div(pos, g.out_w);
        const int64_t i = Mod(rest, g.out_h), image = Div(rest, g.out_h);
        // Positions past the end read as outside the image (never stored).
        p_y0[t] = pos < positions ? static_cast<int>(g.row0(i)) : -(1 << 30);
        p_x0[t] = static_cast<int>(g.col0(j));
        p_base[t] = image * g.in_h * g.in_w * g.in_c;
      }
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
          float v = 0.f;
          if (d < D) {
            const int64_t y = p_y0[pp] + a, x = p_x0[pp] + b;
            v = (y < 0 || y >= g.in_h || x < 0 || x >= g.in_w) ? pad
                : input[p_base[pp] + (y * g.in_w + x) * g.in_c + c];
          }
          xs[dd][pp] = v;
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
        for (int dd = 0; dd < d_end; ++dd) {
          float xr[kRegP], zr[kRegL], ur[kRegL];
          for (int r = 0; r < kRegP; ++r) xr[r] = xs[dd][ty * kRegP + r];
          for (int s = 0; s < kRegL; ++s) {
            zr[s] = zs[dd][tx * kRegL + s];
            ur[s] = (kKind == kSimLinear) ? 0.f : us[dd][tx * kRegL + s];
          }
          if (kExpand && ty == 0) {
            for (int s = 0; s < kRegL; ++s) cs[tx * kRegL + s] += cz[dd][tx * kRegL + s];
          }
          for (int r = 0; r < kRegP; ++r) {
            const float x = xr[r];
            if (kIgnoreNaN && x != x) continue;
            for (int s = 0; s < kRegL; ++s) {
              float& out = KZ_REG(acc, t)[r][s];
              if (kKind == kSimLinear) {
                out += x * zr[s];
              } else if (kExpand) {
                out += ur[s] * (x * x) + zr[s] * x;
              } else if (kKind == kSimL2) {
                const float diff = x - zr[s];
                out += ur[s] * diff * diff;
              } else if (kKind == kSimL1) {
                out += ur[s] * fabsf(x - zr[s]);
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
          const float extra = kExpand ? cs[tx * kRegL + s] : 0.f;
          if (l < n) output[pos * n + l] = sign * (KZ_REG(acc, t)[r][s] + extra);
        }
      }
    }
    KZ_SYNC();
  }
}

// grad_input[n, y, x, c] = sum over windows (i, j) covering (y, x) and templates l of
// grad[n, i, j, l] * u[d, l] * dphi/dx(x, z[d, l]).
template <bool kIgnoreNaN>
KZ_GLOBAL void SimilarityGradInputKernel(SimilarityParams prm, const float* input,
                                         const float* templates, const float* weights,
                                         const float* p, const float* grad, float* grad_input) {
  const WindowGeometry& g = prm.geo;
  const int64_t n = prm.num_templates, count = g.batch * g.in_h * g.in_w * g.in_c;
  KZ_FOR_THREADS(t) {
    KZ_GRID_STRIDE(idx, t, count) {
      const int64_t c = Mod(idx, g.in_c), rest = Div(idx, g.in_c);
      const int64_t x = Mod(rest, g.in_w), y = Mod(Div(rest, g.in_w), g.in_h);
      const int64_t image = Div(rest, g.in_w * g.in_h);
      const float v = input[idx];
      double acc = 0.0;
      if (!(kIgnoreNaN && v != v)) {
        for (int64_t a = 0; a < g.k_h; ++a) {
          const int64_t ry = y + g.pad_top - a;  // = i * s_h
          if (ry < 0 || Mod(ry, g.s_h) != 0 || Div(ry, g.s_h) >= g.out_h) continue;
          const int64_t i = Div(ry, g.s_h);
          for (int64_t b = 0; b < g.k_w; ++b) {
            const int64_t rx = x + g.pad_left - b;
            if (rx < 0 || Mod(rx, g.s_w) != 0 || Div(rx, g.s_w) >= g.out_w) continue;
            const int64_t j = Div(rx, g.s_w);
            const int64_t d = (a * g.k_w + b) * g.in_c + c;
            const float* go = grad + ((image * g.out_h + i) * g.out_w + j) * n;
            float sum = 0.f;
            for (int64_t l = 0; l < n; ++l) {
              float dx, dz, dp;
              SimilarityPhiGrad(prm.kind, v, templates[d * n + l], p[l], &dx, &dz, &dp);
              sum += go[l] * weights[d * n + l] * dx;
            }
            acc += sum;
          }
        }
      }
      grad_input[idx] = static_cast<float>(acc);
    }
  }
}

// Parameter gradients in two steps. Step 1: thread (slice, d, l) sums, over the output
// positions of its slice, go dphi/dz, go phi and go dphi/dp into partial[3][slices][D n]
// (summed in double, stored as float; the positions walked without divisions). Step 2: per (d, l),
// the slices summed in double: grad_templates = u sum, grad_weights = sum, and
// u sum(dp) per (d, l) for grad_p, summed over d by SimilarityGradPKernel.
constexpr int64_t kParamThreads = int64_t{1} << 20;  // slices x D x n: enough to fill a GPU

inline int64_t ParamSlices(const SimilarityParams& prm) {
  const int64_t pairs = prm.patch_size() * prm.num_templates, positions = prm.geo.positions();
  int64_t slices = (kParamThreads + pairs - 1) / pairs;
  const int64_t most = (positions + 63) / 64;  // at least 64 positions a slice
  if (slices > most) slices = most;
  return slices < 1 ? 1 : slices;
}

template <bool kIgnoreNaN>
KZ_GLOBAL void SimilarityGradParamsKernel(SimilarityParams prm, int64_t slices, const float* input,
                                          const float* templates, const float* p, const float* grad,
                                          float* partial) {
  const WindowGeometry& g = prm.geo;
  const int64_t n = prm.num_templates, pairs = prm.patch_size() * n, positions = g.positions();
  const int64_t per_slice = (positions + slices - 1) / slices;
  const float pad = kIgnoreNaN ? NAN : 0.f;
  KZ_FOR_THREADS(t) {
    KZ_GRID_STRIDE(item, t, slices * pairs) {
      const int64_t pair = Mod(item, pairs), slice = Div(item, pairs);
      const int64_t d = Div(pair, n), l = Mod(pair, n);
      const int64_t c = Mod(d, g.in_c), b = Mod(Div(d, g.in_c), g.k_w), a = Div(d, g.in_c * g.k_w);
      const float z = templates[pair], pl = p[l];
      double gz = 0.0, gu = 0.0, gp = 0.0;
      int64_t pos = slice * per_slice;
      const int64_t end = pos + per_slice < positions ? pos + per_slice : positions;
      int64_t j = Mod(pos, g.out_w), i = Mod(Div(pos, g.out_w), g.out_h), image = Div(pos, g.out_w * g.out_h);
      for (; pos < end; ++pos) {
        const int64_t y = g.row0(i) + a, x = g.col0(j) + b;
        const float v = (y < 0 || y >= g.in_h || x < 0 || x >= g.in_w)
                            ? pad : input[((image * g.in_h + y) * g.in_w + x) * g.in_c + c];
        if (!(kIgnoreNaN && v != v)) {
          const float go = grad[pos * n + l];
          float dx, dz, dp;
          SimilarityPhiGrad(prm.kind, v, z, pl, &dx, &dz, &dp);
          gz += go * dz;
          gu += go * SimilarityPhi(prm.kind, v, z, pl);
          gp += go * dp;
        }
        if (++j == g.out_w) {
          j = 0;
          if (++i == g.out_h) {
            i = 0;
            ++image;
          }
        }
      }
      partial[item] = static_cast<float>(gz);
      partial[slices * pairs + item] = static_cast<float>(gu);
      partial[2 * slices * pairs + item] = static_cast<float>(gp);
    }
  }
}

KZ_GLOBAL void SimilarityGradParamsReduceKernel(SimilarityParams prm, int64_t slices, const float* weights,
                                                const float* partial, float* grad_templates, float* grad_weights,
                                                double* grad_p_partial) {
  const int64_t pairs = prm.patch_size() * prm.num_templates;
  KZ_FOR_THREADS(t) {
    KZ_GRID_STRIDE(pair, t, pairs) {
      double gz = 0.0, gu = 0.0, gp = 0.0;
      for (int64_t s = 0; s < slices; ++s) {
        gz += partial[s * pairs + pair];
        gu += partial[(slices + s) * pairs + pair];
        gp += partial[(2 * slices + s) * pairs + pair];
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

template <int kKind, bool kIgnoreNaN>
void LaunchSimilarityForward(const Launcher& launch, const SimilarityParams& prm, const float* input,
                             const float* templates, const float* weights, const float* p,
                             float* output) {
  const int64_t tiles = (prm.geo.positions() + kTileP - 1) / kTileP *
                        ((prm.num_templates + kTileL - 1) / kTileL);
  launch(SimilarityForwardKernel<kKind, kIgnoreNaN>, tiles < launch.MaxBlocks() ? tiles : launch.MaxBlocks(),
         kTileThreads, prm, input, templates, weights, p, output);
}

// output (N, out_h, out_w, n). Device pointers (host pointers in the emulation).
inline void SimilarityForward(const Launcher& launch, const SimilarityParams& prm, const float* input,
                              const float* templates, const float* weights, const float* p,
                              float* output) {
  if (prm.geo.positions() == 0 || prm.num_templates == 0) return;
  if (prm.patch_size() == 0) {
    launch.Zero(output, prm.geo.positions() * prm.num_templates);
    return;
  }
  const bool nan = prm.ignore_nan;
  switch (prm.kind) {
    case kSimLinear:
      return nan ? LaunchSimilarityForward<kSimLinear, true>(launch, prm, input, templates, weights, p, output)
                 : LaunchSimilarityForward<kSimLinear, false>(launch, prm, input, templates, weights, p, output);
    case kSimL1:
      return nan ? LaunchSimilarityForward<kSimL1, true>(launch, prm, input, templates, weights, p, output)
                 : LaunchSimilarityForward<kSimL1, false>(launch, prm, input, templates, weights, p, output);
    case kSimL2:
      return nan ? LaunchSimilarityForward<kSimL2, true>(launch, prm, input, templates, weights, p, output)
                 : LaunchSimilarityForward<kSimL2, false>(launch, prm, input, templates, weights, p, output);
    default:
      return nan ? LaunchSimilarityForward<kSimLp, true>(launch, prm, input, templates, weights, p, output)
                 : LaunchSimilarityForward<kSimLp, false>(launch, prm, input, templates, weights, p, output);
  }
}

// Bytes of device scratch SimilarityBackward needs: the slices' float partial sums and the
// double grad_p partial sums (at most ~12 MB + 8 bytes per template entry).
inline int64_t SimilarityBackwardWorkspaceBytes(const SimilarityParams& prm) {
  const int64_t pairs = prm.patch_size() * prm.num_templates;
  return pairs * static_cast<int64_t>(sizeof(double)) + 3 * ParamSlices(prm) * pairs * static_cast<int64_t>(sizeof(float));
}

// Gradients w.r.t. input, templates, weights and p (all overwritten).
inline void SimilarityBackward(const Launcher& launch, const SimilarityParams& prm, const float* input,
                               const float* templates, const float* weights, const float* p,
                               const float* grad, float* grad_input, float* grad_templates,
                               float* grad_weights, float* grad_p, void* workspace) {
  const WindowGeometry& g = prm.geo;
  const int64_t n = prm.num_templates, D = prm.patch_size();
  const int64_t inputs = g.batch * g.in_h * g.in_w * g.in_c;
  const int threads = launch.max_threads;
  double* grad_p_partial = static_cast<double*>(workspace);
  float* partial = reinterpret_cast<float*>(grad_p_partial + D * n);
  if (n == 0 || g.positions() == 0) {
    launch.Zero(grad_input, inputs);
    launch.Zero(grad_templates, D * n);
    launch.Zero(grad_weights, D * n);
    launch.Zero(grad_p, n);
    return;
  }
  const int64_t slices = ParamSlices(prm);
  if (prm.ignore_nan) {
    launch(SimilarityGradInputKernel<true>, BlocksFor(launch, inputs, threads), threads, prm, input,
           templates, weights, p, grad, grad_input);
    launch(SimilarityGradParamsKernel<true>, BlocksFor(launch, slices * D * n, threads), threads, prm, slices,
           input, templates, p, grad, partial);
  } else {
    launch(SimilarityGradInputKernel<false>, BlocksFor(launch, inputs, threads), threads, prm, input,
           templates, weights, p, grad, grad_input);
    launch(SimilarityGradParamsKernel<false>, BlocksFor(launch, slices * D * n, threads), threads, prm, slices,
           input, templates, p, grad, partial);
  }
  launch(SimilarityGradParamsReduceKernel, BlocksFor(launch, D * n, threads), threads, prm, slices, weights,
         static_cast<const float*>(partial), grad_templates, grad_weights, grad_p_partial);
  launch(SimilarityGradPKernel, BlocksFor(launch, n, threads), threads, prm,
         static_cast<const double*>(grad_p_partial), grad_p);
}

}  // namespace gpu
}  // namespace kernelzoo

#endif  // KERNELZOO_OPS_CC_SIMILARITY_GPU_H_
