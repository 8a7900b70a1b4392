// GPU kernels for KernelzooSimilarity / KernelzooSimilarityGrad: launch code
// only. The kernels are similarity_gpu.h's; attrs, validation and allocation
// are similarity_op.h's, shared with the CPU kernels. ops/library.py compiles
// this file with nvcc (-DGOOGLE_CUDA=1 -DEIGEN_USE_GPU) when nvcc is found.
#if GOOGLE_CUDA

#include "tensorflow/core/framework/op_kernel.h"

#include "op_util.h"
#include "similarity_gpu.h"
#include "similarity_op.h"

namespace kernelzoo {

using GPUDevice = Eigen::GpuDevice;

template <>
void RunSimilarity<GPUDevice>(::tensorflow::OpKernelContext* ctx, const SimilarityParams& prm,
                              const float* input, const float* templates, const float* weights,
                              const float* p, float* output) {
  const gpu::Launcher launch = StreamLauncher(ctx);
  gpu::SimilarityForward(launch, prm, input, templates, weights, p, output);
  CheckLaunch(ctx, launch, "KernelzooSimilarity");
}

template <>
void RunSimilarityGrad<GPUDevice>(::tensorflow::OpKernelContext* ctx, const SimilarityParams& prm,
                                  const float* input, const float* templates, const float* weights,
                                  const float* p, const float* grad, float* grad_input,
                                  float* grad_templates, float* grad_weights, float* grad_p) {
  ::tensorflow::Tensor holder;
  void* workspace = nullptr;
  OP_REQUIRES_OK(ctx, AllocateWorkspace(ctx, gpu::SimilarityBackwardWorkspaceBytes(prm), &holder, &workspace));
  const gpu::Launcher launch = StreamLauncher(ctx);
  gpu::SimilarityBackward(launch, prm, input, templates, weights, p, grad, grad_input, grad_templates,
                          grad_weights, grad_p, workspace);
  CheckLaunch(ctx, launch, "KernelzooSimilarityGrad");
}

REGISTER_KERNEL_BUILDER(Name("KernelzooSimilarity").Device(::tensorflow::DEVICE_GPU),
                        SimilarityOp<GPUDevice>);
REGISTER_KERNEL_BUILDER(Name("KernelzooSimilarityGrad").Device(::tensorflow::DEVICE_GPU),
                        SimilarityGradOp<GPUDevice>);

}  // namespace kernelzoo

#endif  // GOOGLE_CUDA
