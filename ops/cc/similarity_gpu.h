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

constexpr int kTileP = 64, kTileL = 64, kTileD = 16;
constexpr int kTileThreads = 256;  // 16 x 16 threads, 4 x 4 outputs each
constexpr int kRegP = 4, kRegL = 4;

// Patch entry d = (a * k_w + b) * C + c of output position pos, or `pad`
// outside the image.
KZ_HOST_DEVICE inline float PatchEntry(const WindowGeometry& g, const float* input, int64_t pos, int64_t d,
                           float pad) {
  const int64_t hw = g.out_h * g.out_w;
  const int64_t n = pos / hw, i = (pos / g.out_w) % g.out_h, j = pos % g.out_w;
  const int64_t c = d % g.in_c, b = (d / g.in_c) % g.k_w, a = d / (g.in_c * g.k_w);
  const int64_t y = g.row0(i) + a, x = g.col0(j) + b;
  if (y < 0 || y >= g.in_h || x < 0 || x >= g.in_w) return pad;
  return input[((n * g.in_h + y) * g.in_w + x) * g.in_c + c];
}

template <int kKind, bool kIgnoreNaN>
KZ_GLOBAL void SimilarityForwardKernel(SimilarityParams prm, const float* input,
                                       const float* templates, const float* weights,
                                       const float* p, float* output) {
  const WindowGeometry& g = prm.geo;
  const int64_t positions = g.positions(), n = prm.num_templates, D = prm.patch_size();
  const int64_t tiles_l = (n + kTileL - 1) / kTileL;
  const int64_t tiles = (positions + kTileP - 1) / kTileP * tiles_l;
  const float pad = kIgnoreNaN ? NAN : 0.f;
  KZ_SHARED float xs[kTileD][kTileP + 1];
  KZ_SHARED float zs[kTileD][kTileL];
  KZ_SHARED float us[kTileD][kTileL];
  KZ_PER_THREAD(float, acc, [kRegP][kRegL]);
  for (int64_t tile = KZ_BLOCK_ID; tile < tiles; tile += KZ_BLOCKS) {
    const int64_t p0 = tile / tiles_l * kTileP, l0 = tile % tiles_l * kTileL;
    KZ_FOR_THREADS(t) {
      for (int r = 0; r < kRegP; ++r)
        for (int s = 0; s < kRegL; ++s) KZ_REG(acc, t)[r][s] = 0.f;
    }
    for (int64_t d0 = 0; d0 < D; d0 += kTileD) {
      KZ_FOR_THREADS(t) {
        for (int e = t; e < kTileD * kTileP; e += kTileThreads) {
          const int dd = e % kTileD, pp = e / kTileD;
          const int64_t d = d0 + dd, pos = p0 + pp;
          xs[dd][pp] = (d < D && pos < positions) ? PatchEntry(g, input, pos, d, pad) : 0.f;
        }
        for (int e = t; e < kTileD * kTileL; e += kTileThreads) {
          const int ll = e % kTileL, dd = e / kTileL;
          const int64_t d = d0 + dd, l = l0 + ll;
          const bool in = d < D && l < n;
          const float z = in ? templates[d * n + l] : 0.f, u = in ? weights[d * n + l] : 0.f;
          zs[dd][ll] = z;
          us[dd][ll] = (kKind == kSimLinear) ? u * z : u;  // linear: phi * u = x * (u z)
        }
      }
      KZ_SYNC();
      KZ_FOR_THREADS(t) {
        const int tx = t % 16, ty = t / 16;
        float pr[kRegL];
        for (int s = 0; s < kRegL; ++s) {
          const int64_t l = l0 + tx + 16 * s;
          pr[s] = (kKind == kSimLp && l < n) ? p[l] : 2.f;
        }
        const int64_t d_end = D - d0 < kTileD ? D - d0 : kTileD;
        for (int dd = 0; dd < d_end; ++dd) {
          float xr[kRegP], zr[kRegL], ur[kRegL];
          for (int r = 0; r < kRegP; ++r) xr[r] = xs[dd][ty + 16 * r];
          for (int s = 0; s < kRegL; ++s) {
            zr[s] = zs[dd][tx + 16 * s];
            ur[s] = us[dd][tx + 16 * s];
          }
          for (int r = 0; r < kRegP; ++r) {
            if (kIgnoreNaN && xr[r] != xr[r]) continue;
            for (int s = 0; s < kRegL; ++s) {
              float term;
              if (kKind == kSimLinear) {
                term = xr[r] * ur[s];
              } else if (kKind == kSimL1) {
                term = ur[s] * fabsf(xr[r] - zr[s]);  // -phi
              } else if (kKind == kSimL2) {
                const float diff = xr[r] - zr[s];
                term = ur[s] * diff * diff;  // -phi
              } else {
                term = ur[s] * SimilarityPhi(kSimLp, xr[r], zr[s], pr[s]);
              }
              KZ_REG(acc, t)[r][s] += term;
            }
          }
        }
      }
      KZ_SYNC();
    }
    KZ_FOR_THREADS(t) {
      const int tx = t % 16, ty = t / 16;
      const float sign = (kKind == kSimL1 || kKind == kSimL2) ? -1.f : 1.f;
      for (int r = 0; r < kRegP; ++r) {
        const int64_t pos = p0 + ty + 16 * r;
        if (pos >= positions) continue;
        for (int s = 0; s < kRegL; ++s) {
          const int64_t l = l0 + tx + 16 * s;
          if (l < n) output[pos * n + l] = sign * KZ_REG(acc, t)[r][s];
        }
      }
    }
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
      const int64_t c = idx % g.in_c, x = (idx / g.in_c) % g.in_w;
      const int64_t y = (idx / (g.in_c * g.in_w)) % g.in_h, image = idx / (g.in_c * g.in_w * g.in_h);
      const float v = input[idx];
      double acc = 0.0;
      if (!(kIgnoreNaN && v != v)) {
        for (int64_t a = 0; a < g.k_h; ++a) {
          const int64_t ry = y + g.pad_top - a;  // = i * s_h
          if (ry < 0 || ry % g.s_h != 0 || ry / g.s_h >= g.out_h) continue;
          const int64_t i = ry / g.s_h;
          for (int64_t b = 0; b < g.k_w; ++b) {
            const int64_t rx = x + g.pad_left - b;
            if (rx < 0 || rx % g.s_w != 0 || rx / g.s_w >= g.out_w) continue;
            const int64_t j = rx / g.s_w;
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

// grad_templates, grad_weights (and grad_p partial sums per patch entry, reduced by
// SimilarityGradPKernel) for each (d, l): sums over every output position.
template <bool kIgnoreNaN>
KZ_GLOBAL void SimilarityGradParamsKernel(SimilarityParams prm, const float* input,
                                          const float* templates, const float* weights,
                                          const float* p, const float* grad, float* grad_templates,
                                          float* grad_weights, double* grad_p_partial) {
  const WindowGeometry& g = prm.geo;
  const int64_t n = prm.num_templates, D = prm.patch_size(), positions = g.positions();
  const float pad = kIgnoreNaN ? NAN : 0.f;
  KZ_FOR_THREADS(t) {
    KZ_GRID_STRIDE(idx, t, D * n) {
      const int64_t d = idx / n, l = idx % n;
      const float z = templates[idx], u = weights[idx], pl = p[l];
      double gz = 0.0, gu = 0.0, gp = 0.0;
      for (int64_t pos = 0; pos < positions; ++pos) {
        const float x = PatchEntry(g, input, pos, d, pad);
        if (kIgnoreNaN && x != x) continue;
        const float go = grad[pos * n + l];
        float dx, dz, dp;
        SimilarityPhiGrad(prm.kind, x, z, pl, &dx, &dz, &dp);
        gz += go * dz;
        gu += go * SimilarityPhi(prm.kind, x, z, pl);
        gp += go * dp;
      }
      grad_templates[idx] = static_cast<float>(u * gz);
      grad_weights[idx] = static_cast<float>(gu);
      grad_p_partial[idx] = u * gp;
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

// Bytes of device scratch SimilarityBackward needs (grad_p partial sums).
inline int64_t SimilarityBackwardWorkspaceBytes(const SimilarityParams& prm) {
  return prm.patch_size() * prm.num_templates * static_cast<int64_t>(sizeof(double));
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
  double* partial = static_cast<double*>(workspace);
  if (n == 0 || g.positions() == 0) {
    launch.Zero(grad_input, inputs);
    launch.Zero(grad_templates, D * n);
    launch.Zero(grad_weights, D * n);
    launch.Zero(grad_p, n);
    return;
  }
  if (prm.ignore_nan) {
    launch(SimilarityGradInputKernel<true>, BlocksFor(launch, inputs, threads), threads, prm, input,
           templates, weights, p, grad, grad_input);
    launch(SimilarityGradParamsKernel<true>, BlocksFor(launch, D * n, threads), threads, prm, input,
           templates, weights, p, grad, grad_templates, grad_weights, partial);
  } else {
    launch(SimilarityGradInputKernel<false>, BlocksFor(launch, inputs, threads), threads, prm, input,
           templates, weights, p, grad, grad_input);
    launch(SimilarityGradParamsKernel<false>, BlocksFor(launch, D * n, threads), threads, prm, input,
           templates, weights, p, grad, grad_templates, grad_weights, partial);
  }
  launch(SimilarityGradPKernel, BlocksFor(launch, n, threads), threads, prm, partial, grad_p);
}

}  // namespace gpu
}  // namespace kernelzoo

#endif  // KERNELZOO_OPS_CC_SIMILARITY_GPU_H_
