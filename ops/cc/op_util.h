// Helpers shared by the device-templated OpKernels (similarity_op.h,
// mex_op.h) and, under nvcc, by their GPU launch code (*_kernels.cu.cc).
// TensorFlow dependent.
#ifndef KERNELZOO_OPS_CC_OP_UTIL_H_
#define KERNELZOO_OPS_CC_OP_UTIL_H_

#include <cstdint>
#include <type_traits>
#include <vector>

#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor_shape.h"

#if defined(__CUDACC__)
#include "gpu_shim.h"
#endif

namespace kernelzoo {

// The data of input i of the op, of type T (device memory on the op's device).
template <typename T = float>
const T* InputData(::tensorflow::OpKernelContext* ctx, int i) {
  return ctx->input(i).flat<T>().data();
}

// Allocates the gradient ops' outputs 0 .. count-1 with the shapes of inputs 0 .. count-1,
// except output `skipped` (a gradient nothing uses; -1 for none), which gets shape (0,).
inline absl::Status AllocateGradients(::tensorflow::OpKernelContext* ctx, int count, int skipped,
                                      ::tensorflow::Tensor** outputs) {
  for (int i = 0; i < count; ++i) {
    const ::tensorflow::TensorShape shape = i == skipped ? ::tensorflow::TensorShape({0}) : ctx->input(i).shape();
    TF_RETURN_IF_ERROR(ctx->allocate_output(i, shape, &outputs[i]));
  }
  return absl::OkStatus();
}

// The gradient ops' `grad` must have the forward output's shape.
inline absl::Status CheckGradShape(const ::tensorflow::Tensor& grad, const ::tensorflow::TensorShape& out_shape) {
  if (grad.shape() == out_shape) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("grad must have the output shape ", out_shape.DebugString(),
                                                 ", got ", grad.shape().DebugString()));
}

// Sets a float tensor to zero on Device (an Eigen expression: on a GPU it runs
// on the op's stream; needs nvcc there, so GPU ops instantiate it in *.cu.cc).
template <typename Device>
void SetZero(::tensorflow::OpKernelContext* ctx, ::tensorflow::Tensor* t) {
  t->flat<float>().device(ctx->eigen_device<Device>()) = t->flat<float>().constant(0.f);
}

// For the CPU kernels, which compute in float32: float32 copies of activations of type T
// (float, Eigen::half, Eigen::bfloat16) and float32 buffers for outputs of type T, rounded
// to T by Finish(). For T = float the data itself, so float32 results are unchanged.
template <typename T>
class FloatActivations {
 public:
  explicit FloatActivations(::tensorflow::OpKernelContext* ctx) : ctx_(ctx) {}

  // `count` values as float (null after a failed allocation: see status()).
  const float* In(const T* data, int64_t count) {
    if constexpr (std::is_same<T, float>::value) {
      return data;
    } else {
      float* copy = Allocate(count);
      if (copy != nullptr) Map(copy, count).device(ctx_->eigen_cpu_device()) = Map(data, count).template cast<float>();
      return copy;
    }
  }

  // A float buffer for `count` output values, rounded into `data` by Finish().
  float* Out(T* data, int64_t count) {
    if constexpr (std::is_same<T, float>::value) {
      return data;
    } else {
      float* buffer = Allocate(count);
      if (buffer != nullptr) outputs_.push_back({buffer, data, count});
      return buffer;
    }
  }

  const absl::Status& status() const { return status_; }

  void Finish() {
    for (const Output& out : outputs_) {
      Map(out.data, out.count).device(ctx_->eigen_cpu_device()) = Map(out.buffer, out.count).template cast<T>();
    }
  }

 private:
  struct Output {
    const float* buffer;
    T* data;
    int64_t count;
  };

  template <typename U>
  static auto Map(U* data, int64_t count) {
    return Eigen::TensorMap<Eigen::Tensor<U, 1, Eigen::RowMajor>>(data, count);
  }

  float* Allocate(int64_t count) {
    temps_.emplace_back();
    status_.Update(ctx_->allocate_temp(::tensorflow::DT_FLOAT, ::tensorflow::TensorShape({count}), &temps_.back()));
    return status_.ok() ? temps_.back().flat<float>().data() : nullptr;
  }

  ::tensorflow::OpKernelContext* ctx_;
  std::vector<::tensorflow::Tensor> temps_;
  std::vector<Output> outputs_;
  absl::Status status_;
};

#if defined(__CUDACC__)
// The gpu_shim.h type with the bits of activation type T.
template <typename T>
struct GpuActivation {
  using type = T;  // float
};
template <>
struct GpuActivation<Eigen::half> {
  using type = gpu::Half;
};
template <>
struct GpuActivation<Eigen::bfloat16> {
  using type = gpu::BFloat16;
};

// Activation data of type T as the GPU kernels' type.
template <typename T>
auto* GpuData(T* data) {
  using Gpu = typename GpuActivation<typename std::remove_const<T>::type>::type;
  static_assert(sizeof(Gpu) == sizeof(T), "the GPU activation type must have the bits of T");
  return reinterpret_cast<typename std::conditional<std::is_const<T>::value, const Gpu, Gpu>::type*>(data);
}

// A launcher on the op's CUDA stream.
inline gpu::Launcher StreamLauncher(::tensorflow::OpKernelContext* ctx) {
  gpu::Launcher launch;
  launch.stream = ctx->eigen_device<Eigen::GpuDevice>().stream();
  return launch;
}

// Device scratch of `bytes` bytes (TF's allocator: aligned for doubles), freed with `*holder`.
inline absl::Status AllocateWorkspace(::tensorflow::OpKernelContext* ctx, int64_t bytes,
                                      ::tensorflow::Tensor* holder, void** data) {
  TF_RETURN_IF_ERROR(ctx->allocate_temp(::tensorflow::DT_UINT8, ::tensorflow::TensorShape({bytes}), holder));
  *data = holder->flat<uint8_t>().data();
  return absl::OkStatus();
}

// Fails the op with the first CUDA error of `launch` (kernel launches are checked as issued).
inline void CheckLaunch(::tensorflow::OpKernelContext* ctx, const gpu::Launcher& launch, const char* op) {
  if (!launch.ok()) {
    ctx->SetStatus(absl::InternalError(absl::StrCat(op, ": CUDA kernel launch failed: ", launch.message())));
  }
}
#endif  // __CUDACC__

}  // namespace kernelzoo

#endif  // KERNELZOO_OPS_CC_OP_UTIL_H_
