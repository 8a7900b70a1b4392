// OpKernels of KernelzooMex / KernelzooMexGrad, templated on the device:
// attrs, input validation, output allocation, the check on `grad` and the
// zero gradients of unused inputs (offsets, c) live here once, for the CPU
// kernels (mex_kernels.cc) and the GPU kernels (mex_kernels.cu.cc). Each
// device supplies the compute by specialising MexCompute<Device, T> for every
// activation type T (the attr T: float, Eigen::half or Eigen::bfloat16; input,
// output, grad and grad_input are T, everything else float):
//
//   Forward(ctx, prm, input, xi, offsets, c, output);
//   Backward(ctx, prm, input, xi, offsets, c, grad,
//            grad_input, grad_xi, grad_offsets, grad_c);
//
// on the tensors' data (validated, in the device's memory; offsets, c and
// their gradients null when unused, grad_xi null when the attr xi_grad is
// false), which fill every output it is given
// (allocated, not zeroed) and report failures through ctx (OP_REQUIRES /
// ctx->SetStatus). TensorFlow dependent, unlike mex_functor.h / mex_gpu.h.
#ifndef KERNELZOO_OPS_CC_MEX_OP_H_
#define KERNELZOO_OPS_CC_MEX_OP_H_

#include <algorithm>
#include <limits>
#include <string>
#include <vector>

#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor_shape.h"

#include "mex_functor.h"
#include "op_util.h"

namespace kernelzoo {

template <typename Device, typename T>
struct MexCompute;

class MexOpBase : public ::tensorflow::OpKernel {
 public:
  explicit MexOpBase(::tensorflow::OpKernelConstruction* ctx) : OpKernel(ctx) {
    std::vector<int32_t> pool, strides;
    std::string padding;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("num_instances", &num_instances_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("channel_block", &channel_block_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("pool_size", &pool));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("strides", &strides));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("padding", &padding));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("softmax_mode", &softmax_mode_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("use_offsets", &use_offsets_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("use_c", &use_c_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("gemm", &gemm_));
    OP_REQUIRES(ctx, pool.size() == 2 && pool[0] >= 1 && pool[1] >= 1,
                absl::InvalidArgumentError("pool_size must be 2 positive ints"));
    OP_REQUIRES(ctx, strides.size() == 2 && strides[0] >= 1 && strides[1] >= 1,
                absl::InvalidArgumentError("strides must be 2 positive ints"));
    OP_REQUIRES(ctx, num_instances_ >= 1 && channel_block_ >= 1,
                absl::InvalidArgumentError("num_instances and channel_block must be >= 1"));
    b_h_ = pool[0];
    b_w_ = pool[1];
    s_h_ = strides[0];
    s_w_ = strides[1];
    same_ = padding == "same";
  }

 protected:
  absl::Status Prepare(::tensorflow::OpKernelContext* ctx, MexParams* prm) const {
    const ::tensorflow::Tensor& input = ctx->input(0);
    const ::tensorflow::Tensor& xi = ctx->input(1);
    const ::tensorflow::Tensor& offsets = ctx->input(2);
    const ::tensorflow::Tensor& c = ctx->input(3);
    const int64_t K = num_instances_;
    if (input.dims() != 4) {
      return absl::InvalidArgumentError(absl::StrCat(
          "input must be 4-D (N, H, W, C), got shape ", input.shape().DebugString()));
    }
    if (input.dim_size(3) % channel_block_ != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "input channels (", input.dim_size(3), ") must be a multiple of channel_block (",
          channel_block_, ")"));
    }
    if (input.dim_size(3) / channel_block_ > std::numeric_limits<int64_t>::max() / K) {
      return absl::InvalidArgumentError(absl::StrCat(
          "output channels (", input.dim_size(3) / channel_block_, " blocks x ", K,
          " instances) overflow int64"));
    }
    if (xi.dims() != 1 || xi.dim_size(0) != K) {
      return absl::InvalidArgumentError(absl::StrCat(
          "xi must have shape (", K, ",), got ", xi.shape().DebugString()));
    }
    WindowGeometry& g = prm->geo;
    g.batch = input.dim_size(0);
    g.in_h = input.dim_size(1);
    g.in_w = input.dim_size(2);
    g.in_c = input.dim_size(3);
    g.k_h = b_h_;
    g.k_w = b_w_;
    g.s_h = s_h_;
    g.s_w = s_w_;
    if (!g.Init(same_)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "pool ", g.k_h, "x", g.k_w, " does not fit the input ", g.in_h, "x", g.in_w,
          " with padding 'valid'"));
    }
    if (!g.WindowWithinLimit(channel_block_)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "block ", g.k_h, "x", g.k_w, "x", channel_block_, " has more than 2^24 entries"));
    }
    if (use_offsets_) {
      // dimension by dimension: a TensorShape built from unchecked sizes aborts on overflow
      const int64_t max_h = std::max<int64_t>(g.out_h, 1);  // an empty output still takes one region
      const int64_t max_w = std::max<int64_t>(g.out_w, 1);
      if (offsets.dims() != 6 || offsets.dim_size(2) != K || offsets.dim_size(3) != b_h_ ||
          offsets.dim_size(4) != b_w_ || offsets.dim_size(5) != channel_block_ ||
          offsets.dim_size(0) < 1 || offsets.dim_size(1) < 1 ||
          offsets.dim_size(0) > max_h || offsets.dim_size(1) > max_w) {
        return absl::InvalidArgumentError(absl::StrCat(
            "offsets must have shape (Rh, Rw, ", K, ", ", b_h_, ", ", b_w_, ", ",
            channel_block_, ") with 1 <= Rh <= ", max_h, " and 1 <= Rw <= ", max_w,
            ", got ", offsets.shape().DebugString()));
      }
      prm->regions_h = offsets.dim_size(0);
      prm->regions_w = offsets.dim_size(1);
    }
    if (use_c_ && (c.dims() != 1 || c.dim_size(0) != K)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "c must have shape (", K, ",), got ", c.shape().DebugString()));
    }
    prm->num_instances = K;
    prm->channel_block = channel_block_;
    prm->softmax_mode = softmax_mode_;
    prm->use_offsets = use_offsets_;
    prm->use_c = use_c_;
    prm->allow_gemm = gemm_;
    ::tensorflow::TensorShape output;  // its element count must fit int64 (OutputShape aborts otherwise)
    return ::tensorflow::TensorShape::BuildTensorShape({g.batch, g.out_h, g.out_w, prm->out_channels()}, &output);
  }

  static ::tensorflow::TensorShape OutputShape(const MexParams& prm) {
    return ::tensorflow::TensorShape({prm.geo.batch, prm.geo.out_h, prm.geo.out_w, prm.out_channels()});
  }

  int64_t num_instances_ = 1, channel_block_ = 1;
  int64_t b_h_ = 1, b_w_ = 1, s_h_ = 1, s_w_ = 1;
  bool same_ = false, softmax_mode_ = false, use_offsets_ = false, use_c_ = false, gemm_ = true;
};

template <typename Device, typename T>
class MexOp : public MexOpBase {
 public:
  using MexOpBase::MexOpBase;

  void Compute(::tensorflow::OpKernelContext* ctx) override {
    MexParams prm;
    OP_REQUIRES_OK(ctx, Prepare(ctx, &prm));
    ::tensorflow::Tensor* output = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, OutputShape(prm), &output));
    MexCompute<Device, T>::Forward(ctx, prm, InputData<T>(ctx, 0), InputData(ctx, 1),
                                   use_offsets_ ? InputData(ctx, 2) : nullptr,
                                   use_c_ ? InputData(ctx, 3) : nullptr, output->flat<T>().data());
  }
};

template <typename Device, typename T>
class MexGradOp : public MexOpBase {
 public:
  explicit MexGradOp(::tensorflow::OpKernelConstruction* ctx) : MexOpBase(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("xi_grad", &xi_grad_));
  }

  void Compute(::tensorflow::OpKernelContext* ctx) override {
    MexParams prm;
    OP_REQUIRES_OK(ctx, Prepare(ctx, &prm));
    OP_REQUIRES_OK(ctx, CheckGradShape(ctx->input(4), OutputShape(prm)));
    ::tensorflow::Tensor* grads[4] = {};  // input, xi, offsets, c
    OP_REQUIRES_OK(ctx, AllocateGradients(ctx, 4, xi_grad_ ? -1 : 1, grads));
    // The gradients of unused inputs are zeros of their shape (the device functions skip them).
    if (!use_offsets_ && grads[2]->NumElements() > 0) SetZero<Device>(ctx, grads[2]);
    if (!use_c_ && grads[3]->NumElements() > 0) SetZero<Device>(ctx, grads[3]);
    MexCompute<Device, T>::Backward(ctx, prm, InputData<T>(ctx, 0), InputData(ctx, 1),
                                    use_offsets_ ? InputData(ctx, 2) : nullptr,
                                    use_c_ ? InputData(ctx, 3) : nullptr, InputData<T>(ctx, 4),
                                    grads[0]->flat<T>().data(), xi_grad_ ? grads[1]->flat<float>().data() : nullptr,
                                    use_offsets_ ? grads[2]->flat<float>().data() : nullptr,
                                    use_c_ ? grads[3]->flat<float>().data() : nullptr);
  }

 private:
  bool xi_grad_ = true;
};

}  // namespace kernelzoo

#endif  // KERNELZOO_OPS_CC_MEX_OP_H_
