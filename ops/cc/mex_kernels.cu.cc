// GPU kernels for KernelzooMex / KernelzooMexGrad: launch code only. The
// kernels are mex_gpu.h's (always the direct form: the `gemm` attr is a CPU
// choice); attrs, validation, allocation and the zero gradients of unused
// inputs are mex_op.h's, shared with the CPU kernels. ops/library.py compiles
// this file with nvcc (-DGOOGLE_CUDA=1 -DEIGEN_USE_GPU) when nvcc is found.
#if GOOGLE_CUDA

#include "tensorflow/core/framework/op_kernel.h"

#include "mex_gpu.h"
#include "mex_op.h"
#include "op_util.h"

namespace kernelzoo {

using GPUDevice = Eigen::GpuDevice;

template <typename T>
struct MexCompute<GPUDevice, T> {
  static void Forward(::tensorflow::OpKernelContext* ctx, const MexParams& prm, const T* input, const float* xi,
                      const float* offsets, const float* c, T* output) {
    const gpu::Launcher launch = StreamLauncher(ctx);
    gpu::MexForward(launch, prm, GpuData(input), xi, offsets, c, GpuData(output));
    CheckLaunch(ctx, launch, "KernelzooMex");
  }

  static void Backward(::tensorflow::OpKernelContext* ctx, const MexParams& prm, const T* input, const float* xi,
                       const float* offsets, const float* c, const T* grad, T* grad_input, float* grad_xi,
                       float* grad_offsets, float* grad_c) {
    using Gpu = typename GpuActivation<T>::type;
    ::tensorflow::Tensor holder;
    void* workspace = nullptr;
    OP_REQUIRES_OK(ctx, AllocateWorkspace(ctx, gpu::MexBackwardWorkspaceBytes<Gpu>(prm), &holder, &workspace));
    const gpu::Launcher launch = StreamLauncher(ctx);
    gpu::MexBackward(launch, prm, GpuData(input), xi, offsets, c, GpuData(grad), GpuData(grad_input), grad_xi,
                     grad_offsets, grad_c, workspace);
    CheckLaunch(ctx, launch, "KernelzooMexGrad");
  }
};

#define KZ_REGISTER_GPU(T)                                                                                    \
  REGISTER_KERNEL_BUILDER(Name("KernelzooMex").Device(::tensorflow::DEVICE_GPU).TypeConstraint<T>("T"),      \
                          MexOp<GPUDevice, T>);                                                               \
  REGISTER_KERNEL_BUILDER(Name("KernelzooMexGrad").Device(::tensorflow::DEVICE_GPU).TypeConstraint<T>("T"),  \
                          MexGradOp<GPUDevice, T>);
KZ_REGISTER_GPU(float);
KZ_REGISTER_GPU(Eigen::half);
KZ_REGISTER_GPU(Eigen::bfloat16);
#undef KZ_REGISTER_GPU

}  // namespace kernelzoo

#endif  // GOOGLE_CUDA
