// The few CUDA constructs the GPU kernels use, defined twice: for nvcc (the
// real thing) and for a host C++ compiler (an emulation that runs a launch's
// blocks one after another and, inside a block, each phase for every thread in
// turn). The kernels in similarity_gpu.h and mex_gpu.h are written against
// these macros only, so the same source runs on a GPU and, in the test suite,
// on the CPU, where it is compared with the CPU kernels. The emulation proves
// the index math and the numerics, not the concurrency.
//
// Kernel structure (both modes):
//   KZ_GLOBAL void Kernel(...) {
//     KZ_SHARED float tile[...];            // block-shared memory
//     KZ_PER_THREAD(float, acc, [4][4]);     // registers kept across phases
//     KZ_FOR_THREADS(t) { ...; KZ_REG(acc, t)[i][j] = ...; }   // one phase
//     KZ_SYNC();                             // __syncthreads()
//     KZ_FOR_THREADS(t) { ... }             // next phase
//   }
// Inside a phase, t is threadIdx.x; KZ_BLOCK_ID, KZ_BLOCKS and KZ_THREADS are
// blockIdx.x, gridDim.x and blockDim.x. Kernels that use KZ_PER_THREAD must be
// launched with kMaxThreads threads or fewer (the emulation sizes the arrays).
// No TensorFlow dependency: the standalone nvcc harness includes this header.
#ifndef KERNELZOO_OPS_CC_GPU_SHIM_H_
#define KERNELZOO_OPS_CC_GPU_SHIM_H_

#include <cstdint>
#include <cstring>

#include "geometry.h"

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

namespace kernelzoo {
namespace gpu {

constexpr int kMaxThreads = 256;

#if defined(__CUDACC__)

#define KZ_GLOBAL static __global__
#define KZ_LAUNCH_BOUNDS(threads, blocks) __launch_bounds__(threads, blocks)
#define KZ_SHARED __shared__
#define KZ_SYNC() __syncthreads()
#define KZ_BLOCK_ID static_cast<int64_t>(blockIdx.x)
#define KZ_BLOCKS static_cast<int64_t>(gridDim.x)
#define KZ_THREADS static_cast<int64_t>(blockDim.x)
#define KZ_FOR_THREADS(t) \
  for (int t = threadIdx.x, kz_once_##t = 1; kz_once_##t; kz_once_##t = 0)
#define KZ_PER_THREAD(type, name, dims) type name[1] dims
#define KZ_REG(name, t) name[0 * (t)]

// Host and device (called from the shared math's templates); the host side is never run.
__host__ __device__ inline void AtomicAdd(float* p, float v) {
#if defined(__CUDA_ARCH__)
  atomicAdd(p, v);
#else
  *p += v;
#endif
}
__host__ __device__ inline void AtomicAdd(double* p, double v) {
#if defined(__CUDA_ARCH__)
  atomicAdd(p, v);
#else
  *p += v;
#endif
}

// Launches kernels on one CUDA stream; remembers the first error.
struct Launcher {
  cudaStream_t stream = nullptr;
  int max_threads = kMaxThreads;
  mutable cudaError_t error = cudaSuccess;

  template <typename... Params, typename... Args>
  void operator()(void (*kernel)(Params...), int64_t blocks, int threads, Args... args) const {
    if (blocks <= 0) return;
    kernel<<<static_cast<unsigned>(blocks), threads, 0, stream>>>(args...);
    const cudaError_t e = cudaGetLastError();
    if (error == cudaSuccess) error = e;
  }
  template <typename T>
  void Zero(T* p, int64_t count) const {
    if (count <= 0) return;
    const cudaError_t e = cudaMemsetAsync(p, 0, count * sizeof(T), stream);
    if (error == cudaSuccess) error = e;
  }
  int64_t MaxBlocks() const { return int64_t{1} << 20; }
  bool ok() const { return error == cudaSuccess; }
  const char* message() const { return cudaGetErrorString(error); }
};

#else  // host emulation

#define KZ_GLOBAL static
#define KZ_LAUNCH_BOUNDS(threads, blocks)
#define KZ_SHARED
#define KZ_SYNC() ((void)0)
#define KZ_BLOCK_ID (::kernelzoo::gpu::emulated::block)
#define KZ_BLOCKS (::kernelzoo::gpu::emulated::blocks)
#define KZ_THREADS (::kernelzoo::gpu::emulated::threads)
#define KZ_FOR_THREADS(t) for (int t = 0; t < ::kernelzoo::gpu::emulated::threads; ++t)
#define KZ_PER_THREAD(type, name, dims) type name[::kernelzoo::gpu::kMaxThreads] dims
#define KZ_REG(name, t) name[t]

namespace emulated {
inline thread_local int64_t block = 0, blocks = 1;
inline thread_local int threads = 1;
}  // namespace emulated

inline void AtomicAdd(float* p, float v) { *p += v; }
inline void AtomicAdd(double* p, double v) { *p += v; }

// Runs a launch's blocks in order on the calling thread. max_blocks caps the
// grid (like a GPU's resident grid) so that the kernels' grid-stride loops are
// exercised; tests set it small.
struct Launcher {
  int64_t max_blocks = int64_t{1} << 20;
  int max_threads = kMaxThreads;  // tests lower it: per-thread striding then wraps more
  mutable int error = 0;

  template <typename... Params, typename... Args>
  void operator()(void (*kernel)(Params...), int64_t blocks, int threads, Args... args) const {
    if (blocks <= 0) return;
    if (threads > kMaxThreads) {
      error = 1;
      return;
    }
    emulated::blocks = blocks;
    emulated::threads = threads;
    for (int64_t b = 0; b < blocks; ++b) {
      emulated::block = b;
      kernel(args...);
    }
  }
  template <typename T>
  void Zero(T* p, int64_t count) const {
    if (count > 0) std::memset(p, 0, count * sizeof(T));
  }
  int64_t MaxBlocks() const { return max_blocks; }
  bool ok() const { return error == 0; }
  const char* message() const { return error ? "too many threads per block" : "no error"; }
};

#endif  // __CUDACC__

// Grid size for one thread per item with `threads` per block, capped by the
// launcher (grid-stride loops cover the rest).
inline int64_t BlocksFor(const Launcher& launch, int64_t items, int threads) {
  const int64_t blocks = (items + threads - 1) / threads;
  return blocks < launch.MaxBlocks() ? blocks : launch.MaxBlocks();
}

// A compile-time value as a type, for dispatching runtime choices to template kernels.
template <typename T, T kValue>
struct Constant {
  static constexpr T value = kValue;
};

// a / b and a % b for a, b >= 0, in 32-bit arithmetic when both fit (a GPU's 64-bit
// division is a long software sequence; index math would otherwise dominate).
KZ_HOST_DEVICE inline int64_t Div(int64_t a, int64_t b) {
  return ((a | b) >> 31) == 0 ? static_cast<int64_t>(static_cast<uint32_t>(a) / static_cast<uint32_t>(b)) : a / b;
}
KZ_HOST_DEVICE inline int64_t Mod(int64_t a, int64_t b) {
  return ((a | b) >> 31) == 0 ? static_cast<int64_t>(static_cast<uint32_t>(a) % static_cast<uint32_t>(b)) : a % b;
}

// Activation types: float, or the 16-bit storage types below (the bits of IEEE float16 and
// bfloat16: Eigen::half / Eigen::bfloat16, __half / __nv_bfloat16, numpy's float16 and
// ml_dtypes' bfloat16). Kernels load activations with ToFloat, compute in float, and store
// with FromFloat<T> (round to nearest even; NaN stays NaN, overflow gives inf).
struct Half {
  uint16_t bits;
};
struct BFloat16 {
  uint16_t bits;
};

KZ_HOST_DEVICE inline uint32_t FloatBits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  uint32_t u;
  std::memcpy(&u, &x, sizeof(u));
  return u;
#endif
}

KZ_HOST_DEVICE inline float BitsFloat(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float x;
  std::memcpy(&x, &u, sizeof(x));
  return x;
#endif
}

KZ_HOST_DEVICE inline float ToFloat(float x) { return x; }

KZ_HOST_DEVICE inline float ToFloat(Half h) {
#if defined(__CUDA_ARCH__)
  return __half2float(__ushort_as_half(h.bits));
#else
  const uint32_t sign = static_cast<uint32_t>(h.bits & 0x8000u) << 16;
  const uint32_t exponent = (h.bits >> 10) & 0x1fu, mantissa = h.bits & 0x3ffu;
  if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24, exact in float
    const float v = static_cast<float>(mantissa) * 5.9604644775390625e-8f;
    return sign != 0 ? -v : v;
  }
  const uint32_t magnitude = exponent == 0x1fu ? 0x7f800000u | (mantissa << 13)  // inf, NaN
                                               : ((exponent + 112u) << 23) | (mantissa << 13);
  return BitsFloat(sign | magnitude);
#endif
}

KZ_HOST_DEVICE inline float ToFloat(BFloat16 b) {
#if defined(__CUDA_ARCH__)
  return __bfloat162float(__ushort_as_bfloat16(b.bits));
#else
  return BitsFloat(static_cast<uint32_t>(b.bits) << 16);
#endif
}

template <typename T>
KZ_HOST_DEVICE T FromFloat(float x);

template <>
KZ_HOST_DEVICE inline float FromFloat<float>(float x) {
  return x;
}

template <>
KZ_HOST_DEVICE inline Half FromFloat<Half>(float x) {
#if defined(__CUDA_ARCH__)
  return Half{__half_as_ushort(__float2half_rn(x))};
#else
  uint32_t u = FloatBits(x);
  const uint32_t sign = (u >> 16) & 0x8000u;
  u &= 0x7fffffffu;
  uint32_t bits;
  if (u >= 0x47800000u) {  // |x| >= 2^16, inf or NaN
    bits = u > 0x7f800000u ? 0x7e00u : 0x7c00u;
  } else if (u < 0x38800000u) {  // |x| < 2^-14: subnormal or zero; adding 0.5 rounds to a multiple of 2^-24
    bits = FloatBits(BitsFloat(u) + 0.5f) - 0x3f000000u;
  } else {  // rebias the exponent and round the 13 dropped bits to nearest even (may carry into inf)
    bits = (u + 0xc8000fffu + ((u >> 13) & 1u)) >> 13;
  }
  return Half{static_cast<uint16_t>(bits | sign)};
#endif
}

template <>
KZ_HOST_DEVICE inline BFloat16 FromFloat<BFloat16>(float x) {
#if defined(__CUDA_ARCH__)
  return BFloat16{__bfloat16_as_ushort(__float2bfloat16_rn(x))};
#else
  const uint32_t u = FloatBits(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return BFloat16{static_cast<uint16_t>((u >> 16) | 0x40u)};  // quiet NaN
  return BFloat16{static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16)};
#endif
}

// Four floats loaded at once from 16-byte aligned memory (one 128-bit shared-memory load on a GPU,
// instead of four).
#if defined(__CUDACC__)
using Float4 = float4;
KZ_HOST_DEVICE inline Float4 Load4(const float* p) { return *reinterpret_cast<const float4*>(p); }
#else
struct Float4 {
  float x, y, z, w;
};
inline Float4 Load4(const float* p) {
  Float4 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
#endif

// for (item = global thread index; item < count; item += grid size) inside a phase.
#define KZ_GRID_STRIDE(item, t, count)                                    \
  for (int64_t item = KZ_BLOCK_ID * KZ_THREADS + (t); item < (count); \
       item += KZ_BLOCKS * KZ_THREADS)

}  // namespace gpu
}  // namespace kernelzoo

#endif  // KERNELZOO_OPS_CC_GPU_SHIM_H_
