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

template <>
void RunMex<GPUDevice>(::tensorflow::OpKernelContext* ctx, const MexParams& prm, const float* input,
                       const float* xi, const float* offsets, const float* c, float* output) {
  const gpu::Launcher launch = StreamLauncher(ctx);
  gpu::MexForward(launch, prm, input, xi, offsets, c, output);
  CheckLaunch(ctx, launch, "KernelzooMex");
}

template <>
void RunMexGrad<GPUDevice>(::tensorflow::OpKernelContext* ctx, const MexParams& prm, const float* input,
                           const float* xi, const float* offsets, const float* c, const float* grad,
                           float* grad_input, float* grad_xi, float* grad_offsets, float* grad_c) {
  ::tensorflow::Tensor holder;
  void* workspace = nullptr;
  OP_REQUIRES_OK(ctx, AllocateWorkspace(ctx, gpu::MexBackwardWorkspaceBytes(prm), &holder, &workspace));
  const gpu::Launcher launch = StreamLauncher(ctx);
  gpu::MexBackward(launch, prm, input, xi, offsets, c, grad, grad_input, grad_xi, grad_offsets, grad_c,
                   workspace);
  CheckLaunch(ctx, launch, "KernelzooMexGrad");
}

REGISTER_KERNEL_BUILDER(Name("KernelzooMex").Device(::tensorflow::DEVICE_GPU), MexOp<GPUDevice>);
REGISTER_KERNEL_BUILDER(Name("KernelzooMexGrad").Device(::tensorflow::DEVICE_GPU), MexGradOp<GPUDevice>);

}  // namespace kernelzoo

#endif  // GOOGLE_CUDA
