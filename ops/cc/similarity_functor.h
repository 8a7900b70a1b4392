// Similarity operator of SimNets (Cohen & Shashua 2014, Sec. 2): the math
// shared by the CPU kernel (similarity_kernels.cc, which specialises the
// functors below) and the GPU kernels (similarity_gpu.h, launched by
// similarity_kernels.cu.cc). No TensorFlow dependency: the standalone nvcc
// harness includes this header.
//
//   out[n, i, j, l] = sum_d u[d, l] * phi(x_ij[d], z[d, l])
//
// with d = (a * k_w + b) * C + c the patch index (Conv2D kernel layout
// (k_h, k_w, C, n) read as a (D, n) row-major matrix) and
//   linear: phi = x * z        l1: phi = -|x - z|
//   l2:     phi = -(x - z)^2   lp: phi = -|x - z|^p_l
// "same" padding pads with zeros; with ignore_nan, padding is NaN and every NaN
// patch entry contributes 0 to the output and receives 0 gradient. Derivatives: sign(0) = 0,
// d|t|^p/dt = p |t|^(p-1) sign(t) and d|t|^p/dp = |t|^p log|t|, both 0 at t = 0; a NaN entry
// without ignore_nan gives NaN (IEEE, as the keras.ops composite).
#ifndef KERNELZOO_OPS_CC_SIMILARITY_FUNCTOR_H_
#define KERNELZOO_OPS_CC_SIMILARITY_FUNCTOR_H_

#include <cmath>
#include <cstdint>

#include "geometry.h"

namespace kernelzoo {

enum SimilarityKind : int { kSimLinear = 0, kSimL1 = 1, kSimL2 = 2, kSimLp = 3 };

struct SimilarityParams {
  WindowGeometry geo;       // k_* = patch size, in_c = C
  int64_t num_templates = 0;  // n
  SimilarityKind kind = kSimLinear;
  bool ignore_nan = false;

  KZ_HOST_DEVICE int64_t patch_size() const { return geo.k_h * geo.k_w * geo.in_c; }
};

// Forward: output (N, out_h, out_w, n) from input (N, H, W, C), templates and
// weights (k_h, k_w, C, n) and p (n).
template <typename Device>
struct SimilarityFunctor {
  void operator()(const Device& d, const SimilarityParams& params,
                  const float* input, const float* templates,
                  const float* weights, const float* p, float* output);
};

// Backward: gradients w.r.t. input, templates, weights and p (zeros unless lp)
// given grad_output (N, out_h, out_w, n). All outputs are overwritten;
// grad_input may be null: the parameters' gradients only.
template <typename Device>
struct SimilarityGradFunctor {
  void operator()(const Device& d, const SimilarityParams& params,
                  const float* input, const float* templates,
                  const float* weights, const float* p,
                  const float* grad_output, float* grad_input,
                  float* grad_templates, float* grad_weights, float* grad_p);
};

}  // namespace kernelzoo

#endif  // KERNELZOO_OPS_CC_SIMILARITY_FUNCTOR_H_
