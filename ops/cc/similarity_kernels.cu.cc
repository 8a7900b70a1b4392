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

template <typename T>
struct SimilarityCompute<GPUDevice, T> {
  static void Forward(::tensorflow::OpKernelContext* ctx, const SimilarityParams& prm, const T* input,
                      const float* templates, const float* weights, const float* p, T* output) {
    const gpu::Launcher launch = StreamLauncher(ctx);
    gpu::SimilarityForward(launch, prm, GpuData(input), templates, weights, p, GpuData(output));
    CheckLaunch(ctx, launch, "KernelzooSimilarity");
  }

  static void Backward(::tensorflow::OpKernelContext* ctx, const SimilarityParams& prm, const T* input,
                       const float* templates, const float* weights, const float* p, const T* grad,
                       T* grad_input, float* grad_templates, float* grad_weights, float* grad_p) {
    ::tensorflow::Tensor holder;
    void* workspace = nullptr;
    OP_REQUIRES_OK(ctx, AllocateWorkspace(ctx, gpu::SimilarityBackwardWorkspaceBytes(prm, grad_input != nullptr),
                                          &holder, &workspace));
    const gpu::Launcher launch = StreamLauncher(ctx);
    gpu::SimilarityBackward(launch, prm, GpuData(input), templates, weights, p, GpuData(grad), GpuData(grad_input),
                            grad_templates, grad_weights, grad_p, workspace);
    CheckLaunch(ctx, launch, "KernelzooSimilarityGrad");
  }
};

#define KZ_REGISTER_GPU(T)                                                                            \
  REGISTER_KERNEL_BUILDER(                                                                            \
      Name("KernelzooSimilarity").Device(::tensorflow::DEVICE_GPU).TypeConstraint<T>("T"),           \
      SimilarityOp<GPUDevice, T>);                                                                    \
  REGISTER_KERNEL_BUILDER(                                                                            \
      Name("KernelzooSimilarityGrad").Device(::tensorflow::DEVICE_GPU).TypeConstraint<T>("T"),       \
      SimilarityGradOp<GPUDevice, T>);
KZ_REGISTER_GPU(float);
KZ_REGISTER_GPU(Eigen::half);
KZ_REGISTER_GPU(Eigen::bfloat16);
#undef KZ_REGISTER_GPU

}  // namespace kernelzoo

#endif  // GOOGLE_CUDA
