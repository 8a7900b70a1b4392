// A C entry point per GPU kernel launch (similarity_gpu.h, mex_gpu.h), with no
// TensorFlow: what ops/capi.py loads with ctypes.
//  * nvcc -x cu: the real GPU kernels on device pointers (the standalone harness
//    ops/gpu_check.py: correctness on a GPU, compute-sanitizer, speed);
//  * g++ -x c++: the host emulation on host pointers (the test suite compares it
//    with the CPU kernels).
// Configurations arrive as int64 arrays (layouts below, mirrored in capi.py);
// every call validates them and returns 0, or an error code with a message
// from kz_last_error(). The activations (input, output, grad, grad_input) are
// of the configuration's dtype (DType below), all other arrays float32. A null
// similarity grad_input skips the input's gradient (as the op's input_grad), a
// null MEX grad_xi xi's (as xi_grad).
#include <cstdint>
#include <cstdio>
#include <string>

#include "mex_gpu.h"
#include "similarity_gpu.h"

using namespace kernelzoo;  // NOLINT

namespace {

thread_local std::string last_error;

int Fail(const std::string& message) {
  last_error = message;
  return 1;
}

// launch: {stream (CUDA) / unused, max_blocks, max_threads}
gpu::Launcher MakeLauncher(const int64_t* launch) {
  gpu::Launcher l;
#if defined(__CUDACC__)
  l.stream = reinterpret_cast<cudaStream_t>(launch[0]);
#else
  l.max_blocks = launch[1] > 0 ? launch[1] : l.max_blocks;
#endif
  if (launch[2] > 0) l.max_threads = static_cast<int>(launch[2]);
  return l;
}

int Finish(const gpu::Launcher& l) {
  if (!l.ok()) return Fail(l.message());
  return 0;
}

enum DType : int64_t { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

bool ValidDType(int64_t dtype) { return dtype >= kFloat32 && dtype <= kBFloat16; }

// f(T()) with T the activation type of a valid dtype.
template <typename F>
auto WithActivation(int64_t dtype, F&& f) {
  if (dtype == kFloat16) return f(gpu::Half());
  if (dtype == kBFloat16) return f(gpu::BFloat16());
  return f(float());
}

// similarity config: {N, H, W, C, kh, kw, n, s_h, s_w, same, kind, ignore_nan, dtype}
bool SimilarityConfig(const int64_t* cfg, SimilarityParams* prm) {
  WindowGeometry& g = prm->geo;
  g.batch = cfg[0], g.in_h = cfg[1], g.in_w = cfg[2], g.in_c = cfg[3];
  g.k_h = cfg[4], g.k_w = cfg[5], g.s_h = cfg[7], g.s_w = cfg[8];
  prm->num_templates = cfg[6];
  prm->kind = static_cast<SimilarityKind>(cfg[10]);
  prm->ignore_nan = cfg[11] != 0;
  if (cfg[10] < 0 || cfg[10] > 3 || !ValidDType(cfg[12])) return false;
  return g.Init(cfg[9] != 0) && g.WindowWithinLimit(g.in_c);
}

// mex config: {N, H, W, C, K, bh, bw, bc, s_h, s_w, same, softmax, use_offsets, Rh, Rw, use_c, dtype}
bool MexConfig(const int64_t* cfg, MexParams* prm) {
  WindowGeometry& g = prm->geo;
  g.batch = cfg[0], g.in_h = cfg[1], g.in_w = cfg[2], g.in_c = cfg[3];
  g.k_h = cfg[5], g.k_w = cfg[6], g.s_h = cfg[8], g.s_w = cfg[9];
  prm->num_instances = cfg[4];
  prm->channel_block = cfg[7];
  prm->softmax_mode = cfg[11] != 0;
  prm->use_offsets = cfg[12] != 0;
  prm->regions_h = cfg[12] ? cfg[13] : 1;
  prm->regions_w = cfg[12] ? cfg[14] : 1;
  prm->use_c = cfg[15] != 0;
  prm->allow_gemm = false;
  if (prm->num_instances < 1 || prm->channel_block < 1 || g.in_c % prm->channel_block != 0 || !ValidDType(cfg[16]))
    return false;
  if (!g.Init(cfg[10] != 0) || !g.WindowWithinLimit(prm->channel_block)) return false;
  return prm->regions_h >= 1 && prm->regions_w >= 1 && prm->regions_h <= (g.out_h > 0 ? g.out_h : 1) &&
         prm->regions_w <= (g.out_w > 0 ? g.out_w : 1);
}

}  // namespace

extern "C" {

const char* kz_last_error() { return last_error.c_str(); }

int kz_is_cuda() {
#if defined(__CUDACC__)
  return 1;
#else
  return 0;
#endif
}

int64_t kz_similarity_workspace_bytes(const int64_t* cfg) {
  SimilarityParams prm;
  return SimilarityConfig(cfg, &prm) ? gpu::SimilarityBackwardWorkspaceBytes(prm) : -1;
}

int kz_similarity_forward(const int64_t* cfg, const int64_t* launch, const void* input,
                          const float* templates, const float* weights, const float* p, void* output) {
  SimilarityParams prm;
  if (!SimilarityConfig(cfg, &prm)) return Fail("invalid similarity configuration");
  const gpu::Launcher l = MakeLauncher(launch);
  WithActivation(cfg[12], [&](auto type) {
    using T = decltype(type);
    gpu::SimilarityForward(l, prm, static_cast<const T*>(input), templates, weights, p, static_cast<T*>(output));
  });
  return Finish(l);
}

int kz_similarity_backward(const int64_t* cfg, const int64_t* launch, const void* input,
                           const float* templates, const float* weights, const float* p,
                           const void* grad, void* grad_input, float* grad_templates,
                           float* grad_weights, float* grad_p, void* workspace) {
  SimilarityParams prm;
  if (!SimilarityConfig(cfg, &prm)) return Fail("invalid similarity configuration");
  const gpu::Launcher l = MakeLauncher(launch);
  WithActivation(cfg[12], [&](auto type) {
    using T = decltype(type);
    gpu::SimilarityBackward(l, prm, static_cast<const T*>(input), templates, weights, p,
                            static_cast<const T*>(grad), static_cast<T*>(grad_input), grad_templates,
                            grad_weights, grad_p, workspace);
  });
  return Finish(l);
}

int64_t kz_mex_workspace_bytes(const int64_t* cfg) {
  MexParams prm;
  if (!MexConfig(cfg, &prm)) return -1;
  return WithActivation(cfg[16], [&](auto type) { return gpu::MexBackwardWorkspaceBytes<decltype(type)>(prm); });
}

int kz_mex_forward(const int64_t* cfg, const int64_t* launch, const void* input, const float* xi,
                   const float* offsets, const float* c, void* output) {
  MexParams prm;
  if (!MexConfig(cfg, &prm)) return Fail("invalid mex configuration");
  const gpu::Launcher l = MakeLauncher(launch);
  WithActivation(cfg[16], [&](auto type) {
    using T = decltype(type);
    gpu::MexForward(l, prm, static_cast<const T*>(input), xi, offsets, c, static_cast<T*>(output));
  });
  return Finish(l);
}

int kz_mex_backward(const int64_t* cfg, const int64_t* launch, const void* input, const float* xi,
                    const float* offsets, const float* c, const void* grad, void* grad_input,
                    float* grad_xi, float* grad_offsets, float* grad_c, void* workspace) {
  MexParams prm;
  if (!MexConfig(cfg, &prm)) return Fail("invalid mex configuration");
  const gpu::Launcher l = MakeLauncher(launch);
  WithActivation(cfg[16], [&](auto type) {
    using T = decltype(type);
    gpu::MexBackward(l, prm, static_cast<const T*>(input), xi, offsets, c, static_cast<const T*>(grad),
                     static_cast<T*>(grad_input), grad_xi, grad_offsets, grad_c, workspace);
  });
  return Finish(l);
}

#if defined(__CUDACC__)
// Device memory for the harness (no framework needed, so compute-sanitizer sees only our kernels).
void* kz_device_alloc(int64_t bytes) {
  void* p = nullptr;
  if (cudaMalloc(&p, bytes > 0 ? bytes : 1) != cudaSuccess) {
    last_error = "cudaMalloc failed";
    return nullptr;
  }
  return p;
}

void kz_device_free(void* p) { cudaFree(p); }

// to_device: 1 host -> device, 0 device -> host. Synchronous; also reports earlier kernel errors.
int kz_copy(void* dst, const void* src, int64_t bytes, int to_device) {
  const cudaError_t e = cudaMemcpy(dst, src, bytes, to_device ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToHost);
  if (e != cudaSuccess) return Fail(cudaGetErrorString(e));
  return 0;
}

int kz_synchronize() {
  const cudaError_t e = cudaDeviceSynchronize();
  if (e != cudaSuccess) return Fail(cudaGetErrorString(e));
  return 0;
}
#endif

}  // extern "C"
