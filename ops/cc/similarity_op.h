// OpKernels of KernelzooSimilarity / KernelzooSimilarityGrad, templated on the
// device: attrs, input validation, output allocation and the checks on
// `grad` live here once, for the CPU kernels (similarity_kernels.cc) and the
// GPU kernels (similarity_kernels.cu.cc). The activations (input, output,
// grad, grad_input) are of type T (the attr T: float, Eigen::half or
// Eigen::bfloat16), everything else float. Each device supplies the compute by
// specialising SimilarityCompute<Device, T> for every T:
//
//   Forward(ctx, prm, input, templates, weights, p, output);
//   Backward(ctx, prm, input, templates, weights, p, grad,
//            grad_input, grad_templates, grad_weights, grad_p);
//
// on the tensors' data (validated, in the device's memory), which fill every
// output (allocated, not zeroed; grad_input is null when the attr input_grad
// is false) and report failures through ctx
// (OP_REQUIRES / ctx->SetStatus). TensorFlow dependent, unlike
// similarity_functor.h / similarity_gpu.h.
#ifndef KERNELZOO_OPS_CC_SIMILARITY_OP_H_
#define KERNELZOO_OPS_CC_SIMILARITY_OP_H_

#include <string>
#include <vector>

#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor_shape.h"

#include "op_util.h"
#include "similarity_functor.h"

namespace kernelzoo {

template <typename Device, typename T>
struct SimilarityCompute;

class SimilarityOpBase : public ::tensorflow::OpKernel {
 public:
  explicit SimilarityOpBase(::tensorflow::OpKernelConstruction* ctx) : OpKernel(ctx) {
    std::string kind, padding;
    std::vector<int32_t> strides;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("similarity", &kind));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("padding", &padding));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("strides", &strides));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("ignore_nan", &ignore_nan_));
    OP_REQUIRES(ctx, strides.size() == 2 && strides[0] >= 1 && strides[1] >= 1,
                absl::InvalidArgumentError("strides must be 2 positive ints"));
    OP_REQUIRES(ctx, padding == "valid" || padding == "same",
                absl::InvalidArgumentError("padding must be 'valid' or 'same'"));
    same_ = padding == "same";
    s_h_ = strides[0];
    s_w_ = strides[1];
    if (kind == "linear") {
      kind_ = kSimLinear;
    } else if (kind == "l1") {
      kind_ = kSimL1;
    } else if (kind == "l2") {
      kind_ = kSimL2;
    } else if (kind == "lp") {
      kind_ = kSimLp;
    } else {
      ctx->CtxFailure(absl::InvalidArgumentError("unknown similarity " + kind));
    }
  }

 protected:
  // Validates input, templates, weights and p; fills the params.
  absl::Status Prepare(::tensorflow::OpKernelContext* ctx, SimilarityParams* prm) const {
    const ::tensorflow::Tensor& input = ctx->input(0);
    const ::tensorflow::Tensor& templates = ctx->input(1);
    const ::tensorflow::Tensor& weights = ctx->input(2);
    const ::tensorflow::Tensor& p = ctx->input(3);
    if (input.dims() != 4) {
      return absl::InvalidArgumentError(absl::StrCat(
          "input must be 4-D (N, H, W, C), got shape ", input.shape().DebugString()));
    }
    if (templates.dims() != 4) {
      return absl::InvalidArgumentError(absl::StrCat(
          "templates must be 4-D (kh, kw, C, n), got shape ",
          templates.shape().DebugString()));
    }
    if (weights.shape() != templates.shape()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "weights must have the shape of templates ", templates.shape().DebugString(),
          ", got ", weights.shape().DebugString()));
    }
    if (templates.dim_size(2) != input.dim_size(3)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "templates have ", templates.dim_size(2), " channels but the input has ",
          input.dim_size(3)));
    }
    if (p.dims() != 1 || p.dim_size(0) != templates.dim_size(3)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "p must have shape (", templates.dim_size(3), ",), got ",
          p.shape().DebugString()));
    }
    if (templates.dim_size(0) < 1 || templates.dim_size(1) < 1) {
      return absl::InvalidArgumentError("patch size must be at least 1x1");
    }
    WindowGeometry& g = prm->geo;
    g.batch = input.dim_size(0);
    g.in_h = input.dim_size(1);
    g.in_w = input.dim_size(2);
    g.in_c = input.dim_size(3);
    g.k_h = templates.dim_size(0);
    g.k_w = templates.dim_size(1);
    g.s_h = s_h_;
    g.s_w = s_w_;
    if (!g.Init(same_)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "patch ", g.k_h, "x", g.k_w, " does not fit the input ", g.in_h, "x",
          g.in_w, " with padding 'valid'"));
    }
    if (!g.WindowWithinLimit(g.in_c)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "patch ", g.k_h, "x", g.k_w, "x", g.in_c, " has more than 2^24 entries"));
    }
    prm->num_templates = templates.dim_size(3);
    prm->kind = kind_;
    prm->ignore_nan = ignore_nan_;
    ::tensorflow::TensorShape output;  // its element count must fit int64 (OutputShape aborts otherwise)
    return ::tensorflow::TensorShape::BuildTensorShape({g.batch, g.out_h, g.out_w, prm->num_templates}, &output);
  }

  static ::tensorflow::TensorShape OutputShape(const SimilarityParams& prm) {
    return ::tensorflow::TensorShape({prm.geo.batch, prm.geo.out_h, prm.geo.out_w, prm.num_templates});
  }

  SimilarityKind kind_ = kSimLinear;
  bool same_ = false, ignore_nan_ = false;
  int64_t s_h_ = 1, s_w_ = 1;
};

template <typename Device, typename T>
class SimilarityOp : public SimilarityOpBase {
 public:
  using SimilarityOpBase::SimilarityOpBase;

  void Compute(::tensorflow::OpKernelContext* ctx) override {
    SimilarityParams prm;
    OP_REQUIRES_OK(ctx, Prepare(ctx, &prm));
    ::tensorflow::Tensor* output = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, OutputShape(prm), &output));
    SimilarityCompute<Device, T>::Forward(ctx, prm, InputData<T>(ctx, 0), InputData(ctx, 1), InputData(ctx, 2),
                                          InputData(ctx, 3), output->flat<T>().data());
  }
};

template <typename Device, typename T>
class SimilarityGradOp : public SimilarityOpBase {
 public:
  explicit SimilarityGradOp(::tensorflow::OpKernelConstruction* ctx) : SimilarityOpBase(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("input_grad", &input_grad_));
  }

  void Compute(::tensorflow::OpKernelContext* ctx) override {
    SimilarityParams prm;
    OP_REQUIRES_OK(ctx, Prepare(ctx, &prm));
    OP_REQUIRES_OK(ctx, CheckGradShape(ctx->input(4), OutputShape(prm)));
    ::tensorflow::Tensor* grads[4] = {};  // input, templates, weights, p
    OP_REQUIRES_OK(ctx, AllocateGradients(ctx, 4, input_grad_ ? -1 : 0, grads));
    SimilarityCompute<Device, T>::Backward(ctx, prm, InputData<T>(ctx, 0), InputData(ctx, 1), InputData(ctx, 2),
                                           InputData(ctx, 3), InputData<T>(ctx, 4),
                                           input_grad_ ? grads[0]->flat<T>().data() : nullptr,
                                           grads[1]->flat<float>().data(), grads[2]->flat<float>().data(),
                                           grads[3]->flat<float>().data());
  }

 private:
  bool input_grad_ = true;
};

}  // namespace kernelzoo

#endif  // KERNELZOO_OPS_CC_SIMILARITY_OP_H_
