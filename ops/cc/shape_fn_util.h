// Helpers for the ops' shape functions (similarity_ops.cc, mex_ops.cc).
#ifndef KERNELZOO_OPS_CC_SHAPE_FN_UTIL_H_
#define KERNELZOO_OPS_CC_SHAPE_FN_UTIL_H_

#include <vector>

#include "tensorflow/core/framework/shape_inference.h"

#include "geometry.h"

namespace kernelzoo {

// A list(int) attr of 2 positive ints (e.g. strides, pool_size).
inline ::tensorflow::Status GetPair(::tensorflow::shape_inference::InferenceContext* c, const char* name,
                                    int64_t* a, int64_t* b) {
  std::vector<int32_t> v;
  TF_RETURN_IF_ERROR(c->GetAttr(name, &v));
  if (v.size() != 2 || v[0] < 1 || v[1] < 1) {
    return absl::InvalidArgumentError(absl::StrCat(name, " must be a list of 2 positive ints"));
  }
  *a = v[0];
  *b = v[1];
  return absl::OkStatus();
}

// Spatial output dim of a `window` (e.g. "patch", "pool") of size k along one axis; unknown if `in` is.
inline ::tensorflow::Status WindowedDim(::tensorflow::shape_inference::InferenceContext* c,
                                        ::tensorflow::shape_inference::DimensionHandle in, int64_t k,
                                        int64_t s, bool same, const char* window, const char* axis,
                                        ::tensorflow::shape_inference::DimensionHandle* out) {
  if (!c->ValueKnown(in)) {
    *out = c->UnknownDim();
    return absl::OkStatus();
  }
  int64_t size = 0, pad = 0;
  if (!WindowedOutputSize(c->Value(in), k, s, same, &size, &pad)) {
    return absl::InvalidArgumentError(absl::StrCat(window, " of size ", k, " does not fit the input ", axis,
                                                   " of size ", c->Value(in), " with padding '",
                                                   same ? "same" : "valid", "'"));
  }
  *out = c->MakeDim(size);
  return absl::OkStatus();
}

}  // namespace kernelzoo

#endif  // KERNELZOO_OPS_CC_SHAPE_FN_UTIL_H_
