// Helpers shared by the device-templated OpKernels (similarity_op.h,
// mex_op.h) and, under nvcc, by their GPU launch code (*_kernels.cu.cc).
// TensorFlow dependent.
#ifndef KERNELZOO_OPS_CC_OP_UTIL_H_
#define KERNELZOO_OPS_CC_OP_UTIL_H_

#include <cstdint>

#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor_shape.h"

#if defined(__CUDACC__)
#include "gpu_shim.h"
#endif

namespace kernelzoo {

// The float data of input i of the op (device memory on the op's device).
inline const float* InputData(::tensorflow::OpKernelContext* ctx, int i) {
  return ctx->input(i).flat<float>().data();
}

// Allocates outputs 0 .. count-1 with the shapes of inputs 0 .. count-1 (the gradient ops).
inline absl::Status AllocateLikeInputs(::tensorflow::OpKernelContext* ctx, int count,
                                       ::tensorflow::Tensor** outputs) {
  for (int i = 0; i < count; ++i) {
    TF_RETURN_IF_ERROR(ctx->allocate_output(i, ctx->input(i).shape(), &outputs[i]));
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

#if defined(__CUDACC__)
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
