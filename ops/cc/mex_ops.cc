// Op definitions (no kernels) for the SimNets MEX operator and its gradient.
// Kernels: mex_kernels.cc (CPU), mex_kernels.cu.cc (GPU). Python: ops/custom.py.
#include <limits>

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

// input (N,H,W,C), xi (K), offsets (Rh,Rw,K,bh,bw,bc) if use_offsets,
// c (K) if use_c -> (N,H',W',(C/bc)*K).
Status MexShape(InferenceContext* c) {
  ShapeHandle input, xi;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &input));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 1, &xi));
  int64_t num_instances, channel_block, bh, bw, sh, sw;
  bool use_offsets, use_c;
  std::string padding;
  TF_RETURN_IF_ERROR(c->GetAttr("num_instances", &num_instances));
  TF_RETURN_IF_ERROR(c->GetAttr("channel_block", &channel_block));
  TF_RETURN_IF_ERROR(c->GetAttr("use_offsets", &use_offsets));
  TF_RETURN_IF_ERROR(c->GetAttr("use_c", &use_c));
  TF_RETURN_IF_ERROR(c->GetAttr("padding", &padding));
  TF_RETURN_IF_ERROR(GetPair(c, "pool_size", &bh, &bw));
  TF_RETURN_IF_ERROR(GetPair(c, "strides", &sh, &sw));
  const bool same = padding == "same";
  DimensionHandle unused;
  TF_RETURN_IF_ERROR(c->WithValue(c->Dim(xi, 0), num_instances, &unused));
  if (use_offsets) {
    ShapeHandle off;
    TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 6, &off));
    TF_RETURN_IF_ERROR(c->WithValue(c->Dim(off, 2), num_instances, &unused));
    TF_RETURN_IF_ERROR(c->WithValue(c->Dim(off, 3), bh, &unused));
    TF_RETURN_IF_ERROR(c->WithValue(c->Dim(off, 4), bw, &unused));
    TF_RETURN_IF_ERROR(c->WithValue(c->Dim(off, 5), channel_block, &unused));
  }
  if (use_c) {
    ShapeHandle cc;
    TF_RETURN_IF_ERROR(c->WithRank(c->input(3), 1, &cc));
    TF_RETURN_IF_ERROR(c->WithValue(c->Dim(cc, 0), num_instances, &unused));
  }
  DimensionHandle channels = c->Dim(input, 3), out_c = c->UnknownDim();
  if (c->ValueKnown(channels)) {
    if (c->Value(channels) % channel_block != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "input channels (", c->Value(channels), ") must be a multiple of channel_block (",
          channel_block, ")"));
    }
    if (c->Value(channels) / channel_block > std::numeric_limits<int64_t>::max() / num_instances) {
      return absl::InvalidArgumentError(absl::StrCat("output channels (", c->Value(channels) / channel_block,
                                                     " blocks x ", num_instances, " instances) overflow int64"));
    }
    out_c = c->MakeDim(c->Value(channels) / channel_block * num_instances);
  }
  DimensionHandle oh, ow;
  TF_RETURN_IF_ERROR(WindowedDim(c, c->Dim(input, 1), bh, sh, same, "pool", "height", &oh));
  TF_RETURN_IF_ERROR(WindowedDim(c, c->Dim(input, 2), bw, sw, same, "pool", "width", &ow));
  c->set_output(0, c->MakeShape({c->Dim(input, 0), oh, ow, out_c}));
  return absl::OkStatus();
}

Status MexGradShape(InferenceContext* c) {
  TF_RETURN_IF_ERROR(MexShape(c));
  ShapeHandle grad;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(4), 4, &grad));
  TF_RETURN_IF_ERROR(c->Merge(c->output(0), grad, &grad));
  bool xi_grad;
  TF_RETURN_IF_ERROR(c->GetAttr("xi_grad", &xi_grad));
  for (int i = 0; i < 4; ++i) c->set_output(i, i == 1 && !xi_grad ? c->Vector(0) : c->input(i));
  return absl::OkStatus();
}

}  // namespace

REGISTER_OP("KernelzooMex")
    .Input("input: T")
    .Input("xi: float")
    .Input("offsets: float")
    .Input("c: float")
    .Output("output: T")
    .Attr("num_instances: int >= 1")
    .Attr("pool_size: list(int)")
    .Attr("channel_block: int >= 1")
    .Attr("strides: list(int)")
    .Attr("padding: {'valid', 'same'}")
    .Attr("softmax_mode: bool = false")
    .Attr("use_offsets: bool = false")
    .Attr("use_c: bool = false")
    .Attr("gemm: bool = true")
    .Attr("T: {float, half, bfloat16} = DT_FLOAT")
    .SetShapeFn(MexShape)
    .Doc(R"doc(
SimNets MEX layer: out[n, i, j, b*K + k] = MEX_{xi[k]} of the set
{input[n, block(i, j), channels of block b] + offsets[region(i, j), k]} (plus
c[k] if use_c). Padded entries are excluded from the set. offsets:
(Rh, Rw, K, bh, bw, bc), region (i*Rh // H', j*Rw // W'); ignored unless
use_offsets (pass an empty tensor). c: (K,), ignored unless use_c.
gemm: allow the exp-domain GEMM form of the class-wise MEX (pool 1x1, >= 32
channels per block, >= 2 instances with one shared xi; see mex_functor.h);
false keeps the direct form everywhere (tests, benchmarks). Same values
within float rounding either way.
T: the activations' type (input, output): float, half or bfloat16; xi, offsets
and c are float, and the sets are reduced in float (sums in double), rounded
to T once at the end.
)doc");

REGISTER_OP("KernelzooMexGrad")
    .Input("input: T")
    .Input("xi: float")
    .Input("offsets: float")
    .Input("c: float")
    .Input("grad: T")
    .Output("grad_input: T")
    .Output("grad_xi: float")
    .Output("grad_offsets: float")
    .Output("grad_c: float")
    .Attr("num_instances: int >= 1")
    .Attr("pool_size: list(int)")
    .Attr("channel_block: int >= 1")
    .Attr("strides: list(int)")
    .Attr("padding: {'valid', 'same'}")
    .Attr("softmax_mode: bool = false")
    .Attr("use_offsets: bool = false")
    .Attr("use_c: bool = false")
    .Attr("gemm: bool = true")
    .Attr("xi_grad: bool = true")
    .Attr("T: {float, half, bfloat16} = DT_FLOAT")
    .SetShapeFn(MexGradShape)
    .Doc(R"doc(
Gradients of KernelzooMex w.r.t. input, xi, offsets and c (zeros of the given
shapes when offsets / c are unused). gemm: as for KernelzooMex. grad and
grad_input are T, the parameters' gradients float. xi_grad = false skips xi's
gradient (grad_xi is then empty, shape (0,)): a fixed xi needs none.
)doc");

}  // namespace kernelzoo
