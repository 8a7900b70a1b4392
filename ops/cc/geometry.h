// Window geometry shared by the similarity and MEX ops (NHWC, TF/Keras padding).
//
// Plain structs and inline functions with no TensorFlow dependency, so the CPU
// kernels, the GPU kernels (`*_gpu.h`) and the standalone nvcc test harness can all
// include this header.
#ifndef KERNELZOO_OPS_CC_GEOMETRY_H_
#define KERNELZOO_OPS_CC_GEOMETRY_H_

#include <cstdint>

#if defined(__CUDACC__)
#define KZ_HOST_DEVICE __host__ __device__
#else
#define KZ_HOST_DEVICE
#endif

namespace kernelzoo {

// Output size and leading padding along one spatial axis. Follows
// TF/Keras: "valid" -> out = (in - k) / s + 1 (requires in >= k);
// "same" -> out = ceil(in / s) (without overflow near INT64_MAX), pad_total = max((out - 1) * s + k - in, 0),
// pad_before = pad_total / 2. Returns false if the window does not fit.
KZ_HOST_DEVICE inline bool WindowedOutputSize(int64_t in, int64_t k, int64_t s,
                                              bool same, int64_t* out,
                                              int64_t* pad_before) {
  if (in < 0 || k < 1 || s < 1) return false;
  if (same) {
    *out = in / s + (in % s != 0 ? 1 : 0);
    int64_t pad_total = (*out - 1) * s + k - in;
    if (pad_total < 0) pad_total = 0;
    *pad_before = pad_total / 2;
    return true;
  }
  if (in < k) return false;
  *out = (in - k) / s + 1;
  *pad_before = 0;
  return true;
}

// A 2-D sliding window over an NHWC tensor.
struct WindowGeometry {
  int64_t batch = 0, in_h = 0, in_w = 0, in_c = 0;
  int64_t k_h = 1, k_w = 1;          // window (patch / pool) size
  int64_t s_h = 1, s_w = 1;          // strides
  int64_t out_h = 0, out_w = 0;      // output spatial size
  int64_t pad_top = 0, pad_left = 0; // leading padding

  // Fills out_* and pad_*; false when the window does not fit ("valid").
  KZ_HOST_DEVICE bool Init(bool same) {
    return WindowedOutputSize(in_h, k_h, s_h, same, &out_h, &pad_top) &&
           WindowedOutputSize(in_w, k_w, s_w, same, &out_w, &pad_left);
  }
  KZ_HOST_DEVICE int64_t positions() const { return batch * out_h * out_w; }
  KZ_HOST_DEVICE int64_t inputs() const { return batch * in_h * in_w * in_c; }  // entries of the input
  // Entries of one window over `channels` channels, capped so that per-thread
  // scratch buffers stay allocatable (a 'same' window may exceed the input).
  KZ_HOST_DEVICE bool WindowWithinLimit(int64_t channels) const {
    const int64_t kMaxWindowEntries = int64_t{1} << 24;
    return k_h <= kMaxWindowEntries && k_w <= kMaxWindowEntries &&
           k_h * k_w <= kMaxWindowEntries / (channels > 0 ? channels : 1);
  }
  // Top-left input coordinate (may be negative: padding) of output (i, j).
  KZ_HOST_DEVICE int64_t row0(int64_t i) const { return i * s_h - pad_top; }
  KZ_HOST_DEVICE int64_t col0(int64_t j) const { return j * s_w - pad_left; }
};

}  // namespace kernelzoo

#endif  // KERNELZOO_OPS_CC_GEOMETRY_H_
