// Op definitions (no kernels) for the SimNets similarity operator and its
// gradient. Kernels: similarity_kernels.cc (CPU), similarity_kernels.cu.cc (GPU).
// Python: ops/custom.py.
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

#include "geometry.h"
#include "shape_fn_util.h"

namespace kernelzoo {

using ::tensorflow::Status;
using ::tensorflow::shape_inference::DimensionHandle;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

namespace {

// input (N,H,W,C), templates = weights (kh,kw,C,n), p (n) -> (N,H',W',n).
Status SimilarityShape(InferenceContext* c) {
  ShapeHandle input, templates, weights, p;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &input));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 4, &templates));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 4, &weights));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(3), 1, &p));
  TF_RETURN_IF_ERROR(c->Merge(templates, weights, &templates));
  DimensionHandle channels, n;
  TF_RETURN_IF_ERROR(c->Merge(c->Dim(input, 3), c->Dim(templates, 2), &channels));
  TF_RETURN_IF_ERROR(c->Merge(c->Dim(templates, 3), c->Dim(p, 0), &n));
  int64_t sh, sw;
  TF_RETURN_IF_ERROR(GetPair(c, "strides", &sh, &sw));
  std::string padding;
  TF_RETURN_IF_ERROR(c->GetAttr("padding", &padding));
  const bool same = padding == "same";
  DimensionHandle kh = c->Dim(templates, 0), kw = c->Dim(templates, 1);
  DimensionHandle oh = c->UnknownDim(), ow = c->UnknownDim();
  if (c->ValueKnown(kh)) {
    TF_RETURN_IF_ERROR(WindowedDim(c, c->Dim(input, 1), c->Value(kh), sh, same, "patch", "height", &oh));
  }
  if (c->ValueKnown(kw)) {
    TF_RETURN_IF_ERROR(WindowedDim(c, c->Dim(input, 2), c->Value(kw), sw, same, "patch", "width", &ow));
  }
  c->set_output(0, c->MakeShape({c->Dim(input, 0), oh, ow, n}));
  return absl::OkStatus();
}

Status SimilarityGradShape(InferenceContext* c) {
  TF_RETURN_IF_ERROR(SimilarityShape(c));
  ShapeHandle out = c->output(0), grad;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(4), 4, &grad));
  TF_RETURN_IF_ERROR(c->Merge(out, grad, &grad));
  ShapeHandle templates;
  TF_RETURN_IF_ERROR(c->Merge(c->input(1), c->input(2), &templates));
  bool input_grad;
  TF_RETURN_IF_ERROR(c->GetAttr("input_grad", &input_grad));
  c->set_output(0, input_grad ? c->input(0) : c->Vector(0));
  c->set_output(1, templates);
  c->set_output(2, templates);
  c->set_output(3, c->input(3));
  return absl::OkStatus();
}

}  // namespace

REGISTER_OP("KernelzooSimilarity")
    .Input("input: T")
    .Input("templates: float")
    .Input("weights: float")
    .Input("p: float")
    .Output("output: T")
    .Attr("similarity: {'linear', 'l1', 'l2', 'lp'}")
    .Attr("strides: list(int)")
    .Attr("padding: {'valid', 'same'}")
    .Attr("ignore_nan: bool = false")
    .Attr("T: {float, half, bfloat16} = DT_FLOAT")
    .SetShapeFn(SimilarityShape)
    .Doc(R"doc(
SimNets similarity layer (no normalisation term).

out[n, i, j, l] = sum_d weights[d, l] * phi(patch_ij[d], templates[d, l]) with
phi = x*z (linear), -|x-z| (l1), -(x-z)^2 (l2), -|x-z|^p[l] (lp).
input: (N, H, W, C). templates, weights: (kh, kw, C, n). p: (n,).
output: (N, H', W', n).
T: the activations' type (input, output): float, half or bfloat16; templates,
weights and p are float, and the sums are accumulated in float, rounded to T
once at the end.
)doc");

REGISTER_OP("KernelzooSimilarityGrad")
    .Input("input: T")
    .Input("templates: float")
    .Input("weights: float")
    .Input("p: float")
    .Input("grad: T")
    .Output("grad_input: T")
    .Output("grad_templates: float")
    .Output("grad_weights: float")
    .Output("grad_p: float")
    .Attr("similarity: {'linear', 'l1', 'l2', 'lp'}")
    .Attr("strides: list(int)")
    .Attr("padding: {'valid', 'same'}")
    .Attr("ignore_nan: bool = false")
    .Attr("input_grad: bool = true")
    .Attr("T: {float, half, bfloat16} = DT_FLOAT")
    .SetShapeFn(SimilarityGradShape)
    .Doc(R"doc(
Gradients of KernelzooSimilarity w.r.t. input, templates, weights and p
(grad_p is zero unless similarity == 'lp'). grad and grad_input are T, the
parameters' gradients float. input_grad = false skips the input's gradient
(grad_input is then empty, shape (0,)): a first layer's input needs none.
)doc");

}  // namespace kernelzoo
