// GPU kernels of the MEX operator (launch code and memory layout only; the
// math is MexSetForward / MexSetBackward of mex_functor.h). Written against
// gpu_shim.h: nvcc builds them for the GPU, a host compiler builds the same
// source as the emulation the tests compare with the CPU kernels.
//
// One thread per set (output position, channel block, instance) reads its set
// in place through MexSetView (input entries of the window that lie inside
// the image, plus the region's offsets, plus c) and runs the shared math.
// Every set takes the direct form: the class-wise GEMM form of the CPU kernels
// (mex_functor.h) is a CPU optimisation with the same values within rounding.
// The backward pass scatters each set's gradients with atomic adds: into
// grad_input (float) and into double accumulators for xi, offsets and c,
// converted to float at the end.
// Activations (input, output, grad, grad_input) are of type T (float, Half or
// BFloat16, gpu_shim.h), converted to float at the load and rounded to T at the
// store. For T other than float, grad_input is accumulated in a float workspace
// and rounded to T at the end.
#ifndef KERNELZOO_OPS_CC_MEX_GPU_H_
#define KERNELZOO_OPS_CC_MEX_GPU_H_

#include <type_traits>

#include "gpu_shim.h"
#include "mex_functor.h"

namespace kernelzoo {
namespace gpu {

// The set of output (image, i, j), channel block cb, instance k: entry s < count
// is input[image, y0 + a, x0 + b, cb * bc + cc] (+ offsets[region, k, a, b, cc]) for
// the window entries inside the image, in (a, b, cc) order; entry `count` is c[k].
template <typename T>
struct MexSetView {
  const T* img = nullptr;          // input at (image, y0 + a_lo, x0 + b_lo, cb * bc)
  const float* offsets = nullptr;  // offsets at (region, k, a_lo, b_lo, 0), or null
  int64_t in_w = 0, in_c = 0, k_w = 0;
  int bc = 0, rows = 0, width = 0, count = 0;  // valid rows and columns; sets have < 2^24 + 1 entries (geometry.h)
  float c = 0.f;

  // Where window row a, column b (channel 0) lies: in the input, in the region's offsets.
  KZ_HOST_DEVICE int64_t InputAt(int64_t a, int64_t b) const { return (a * in_w + b) * in_c; }
  KZ_HOST_DEVICE int64_t OffsetAt(int64_t a, int64_t b) const { return (a * k_w + b) * bc; }
  // Window offsets of entry s < count: into the input and into the region's offsets.
  KZ_HOST_DEVICE void Locate(int s, int64_t* in, int64_t* off) const {
    const int cc = s % bc, ab = s / bc, b = ab % width, a = ab / width;
    *in = InputAt(a, b) + cc;
    *off = OffsetAt(a, b) + cc;
  }
  KZ_HOST_DEVICE float operator[](int64_t s) const {
    if (s >= count) return c;
    int64_t in, off;
    Locate(static_cast<int>(s), &in, &off);
    return offsets != nullptr ? ToFloat(img[in]) + offsets[off] : ToFloat(img[in]);
  }
  // out[s] = (*this)[s] for s < n, walking the window row by row (no index division per entry).
  KZ_HOST_DEVICE void CopyTo(float* out, int64_t n) const {
    int s = 0;
    for (int a = 0; a < rows; ++a) {
      for (int b = 0; b < width; ++b) {
        const T* x = img + InputAt(a, b);
        const float* o = offsets != nullptr ? offsets + OffsetAt(a, b) : nullptr;
        for (int cc = 0; cc < bc; ++cc, ++s) out[s] = o != nullptr ? ToFloat(x[cc]) + o[cc] : ToFloat(x[cc]);
      }
    }
    if (n > count) out[count] = c;
  }
};

// Where a set's data start: its window in the input, its offsets (-1: none), its instance.
struct MexSetPlace {
  int64_t input_base = 0, offset_base = -1, instance = 0;
};

// Sets of at most this many entries are first copied to thread-local memory.
constexpr int64_t kMexLocalSet = 32;

// Set `set` = ((image * out_h + i) * out_w + j) * nb + cb) * K + k, the output index.
template <typename T>
KZ_HOST_DEVICE inline MexSetView<T> MakeSetView(const MexParams& prm, const T* input, const float* offsets,
                                                const float* c, int64_t set, MexSetPlace* place) {
  const WindowGeometry& g = prm.geo;
  const int64_t K = prm.num_instances, nb = prm.num_blocks(), bc = prm.channel_block;
  // Four divisions, each remainder by a multiply (index math is much of this kernel's work).
  const int64_t q = Div(set, K), k = set - q * K;
  const int64_t pos = Div(q, nb), cb = q - pos * nb;
  const int64_t rest = Div(pos, g.out_w), j = pos - rest * g.out_w;
  const int64_t image = Div(rest, g.out_h), i = rest - image * g.out_h;
  const int64_t y0 = g.row0(i), x0 = g.col0(j);
  const int64_t a_lo = y0 < 0 ? -y0 : 0, b_lo = x0 < 0 ? -x0 : 0;
  const int64_t a_hi = g.in_h - y0 < g.k_h ? g.in_h - y0 : g.k_h;
  const int64_t b_hi = g.in_w - x0 < g.k_w ? g.in_w - x0 : g.k_w;
  MexSetView<T> view;
  view.in_w = g.in_w;
  view.in_c = g.in_c;
  view.k_w = g.k_w;
  view.bc = static_cast<int>(bc);
  view.width = b_hi > b_lo ? static_cast<int>(b_hi - b_lo) : 0;
  view.rows = (a_hi > a_lo && b_hi > b_lo) ? static_cast<int>(a_hi - a_lo) : 0;
  view.count = view.rows * view.width * static_cast<int>(bc);
  place->instance = k;
  place->input_base = ((image * g.in_h + y0 + a_lo) * g.in_w + x0 + b_lo) * g.in_c + cb * bc;
  view.img = input + place->input_base;
  place->offset_base = -1;
  if (prm.use_offsets) {
    const int64_t region = prm.region_h(i) * prm.regions_w + prm.region_w(j);
    place->offset_base = ((region * K + k) * g.k_h + a_lo) * g.k_w * bc + b_lo * bc;
    view.offsets = offsets + place->offset_base;
  }
  if (prm.use_c) view.c = c[k];
  return view;
}

// Where gv[s] = x goes: grad_input (float), and the offsets' double accumulator; c's slot.
template <typename T>
struct MexGradSink {
  struct Slot {
    const MexGradSink* sink;
    int64_t s;
    KZ_HOST_DEVICE void operator=(float x) const { sink->Add(s, x); }
  };
  MexSetView<T> view;
  float* grad_input = nullptr;   // at the view's input base
  double* grad_offsets = nullptr;  // at the view's offset base, or null
  double* grad_c = nullptr;        // at instance k, or null

  KZ_HOST_DEVICE Slot operator[](int64_t s) const { return Slot{this, s}; }
  KZ_HOST_DEVICE void Add(int64_t s, float x) const {
    if (s >= view.count) {
      if (grad_c != nullptr) AtomicAdd(grad_c, static_cast<double>(x));
      return;
    }
    int64_t in, off;
    view.Locate(static_cast<int>(s), &in, &off);
    AtomicAdd(grad_input + in, x);
    if (grad_offsets != nullptr) AtomicAdd(grad_offsets + off, static_cast<double>(x));
  }
};

template <typename T>
KZ_GLOBAL void MexForwardKernel(MexParams prm, const T* input, const float* xi, const float* offsets,
                                const float* c, T* output) {
  const int64_t sets = prm.geo.positions() * prm.out_channels();
  KZ_FOR_THREADS(t) {
    KZ_GRID_STRIDE(set, t, sets) {
      MexSetPlace place;
      const MexSetView<T> v = MakeSetView(prm, input, offsets, c, set, &place);
      const int64_t n = v.count + (prm.use_c ? 1 : 0);
      const float x = xi[place.instance];
      if (n > 0 && n <= kMexLocalSet) {  // small sets: read each entry once
        float local[kMexLocalSet];
        v.CopyTo(local, n);
        output[set] = FromFloat<T>(MexSetForward(local, n, x, prm.softmax_mode).value);
      } else {
        output[set] = FromFloat<T>(n > 0 ? MexSetForward(v, n, x, prm.softmax_mode).value : NAN);
      }
    }
  }
}

// ws: K doubles for xi, then (if used) the offsets' and K for c, all zeroed. grad_input:
// float, zeroed (the op's output for T = float, else a workspace).
template <typename T>
KZ_GLOBAL void MexBackwardKernel(MexParams prm, const T* input, const float* xi, const float* offsets,
                                 const float* c, const T* grad, float* grad_input, double* ws) {
  const int64_t K = prm.num_instances, sets = prm.geo.positions() * prm.out_channels();
  double* ws_offsets = ws + K;
  double* ws_c = ws_offsets + (prm.use_offsets ? prm.regions_h * prm.regions_w * K * prm.block_size() : 0);
  KZ_FOR_THREADS(t) {
    KZ_GRID_STRIDE(set, t, sets) {
      MexGradSink<T> sink;
      MexSetPlace place;
      sink.view = MakeSetView(prm, input, offsets, c, set, &place);
      const int64_t n = sink.view.count + (prm.use_c ? 1 : 0);
      if (n == 0) continue;
      const int64_t k = place.instance;
      sink.grad_input = grad_input + place.input_base;
      sink.grad_offsets = prm.use_offsets ? ws_offsets + place.offset_base : nullptr;
      sink.grad_c = prm.use_c ? ws_c + k : nullptr;
      double dxi;
      if (n <= kMexLocalSet) {  // small sets: read each entry once
        float local[kMexLocalSet];
        sink.view.CopyTo(local, n);
        const MexSetState st = MexSetForward(local, n, xi[k], prm.softmax_mode);
        dxi = MexSetBackward(local, n, xi[k], prm.softmax_mode, st, ToFloat(grad[set]), sink);
      } else {
        const MexSetState st = MexSetForward(sink.view, n, xi[k], prm.softmax_mode);
        dxi = MexSetBackward(sink.view, n, xi[k], prm.softmax_mode, st, ToFloat(grad[set]), sink);
      }
      AtomicAdd(ws + k, dxi);
    }
  }
}

// to[i] = from[i] as float (double: rounded to float), then rounded to To.
template <typename From, typename To>
KZ_GLOBAL void ConvertKernel(const From* from, int64_t count, To* to) {
  KZ_FOR_THREADS(t) {
    KZ_GRID_STRIDE(idx, t, count) { to[idx] = FromFloat<To>(static_cast<float>(from[idx])); }
  }
}

// output (N, out_h, out_w, nb * K). Device pointers (host pointers in the emulation);
// offsets / c may be null when unused.
template <typename T>
void MexForward(const Launcher& launch, const MexParams& prm, const T* input, const float* xi,
                const float* offsets, const float* c, T* output) {
  const int64_t sets = prm.geo.positions() * prm.out_channels();
  const int threads = launch.max_threads;
  launch(MexForwardKernel<T>, BlocksFor(launch, sets, threads), threads, prm, input, xi, offsets, c, output);
}

inline int64_t MexOffsetsSize(const MexParams& prm) {
  return prm.use_offsets ? prm.regions_h * prm.regions_w * prm.num_instances * prm.block_size() : 0;
}

// Bytes of device scratch MexBackward<T> needs: the double accumulators, then for T other than
// float the float grad_input.
template <typename T>
int64_t MexBackwardWorkspaceBytes(const MexParams& prm) {
  const int64_t K = prm.num_instances;
  const int64_t doubles = K + MexOffsetsSize(prm) + (prm.use_c ? K : 0);
  const int64_t floats = std::is_same<T, float>::value ? 0 : prm.geo.inputs();
  return doubles * static_cast<int64_t>(sizeof(double)) + floats * static_cast<int64_t>(sizeof(float));
}

// Gradients w.r.t. input, xi, and offsets / c when used (null otherwise); all overwritten. grad_xi
// may be null (xi fixed): not written.
template <typename T>
void MexBackward(const Launcher& launch, const MexParams& prm, const T* input, const float* xi,
                 const float* offsets, const float* c, const T* grad, T* grad_input, float* grad_xi,
                 float* grad_offsets, float* grad_c, void* workspace) {
  const int64_t K = prm.num_instances, sets = prm.geo.positions() * prm.out_channels();
  const int64_t off = MexOffsetsSize(prm), ws_count = K + off + (prm.use_c ? K : 0), inputs = prm.geo.inputs();
  const int threads = launch.max_threads;
  double* ws = static_cast<double*>(workspace);
  constexpr bool kFloat = std::is_same<T, float>::value;
  float* grad_input_float = kFloat ? reinterpret_cast<float*>(grad_input) : reinterpret_cast<float*>(ws + ws_count);
  launch.Zero(grad_input_float, inputs);
  launch.Zero(ws, ws_count);
  launch(MexBackwardKernel<T>, BlocksFor(launch, sets, threads), threads, prm, input, xi, offsets, c, grad,
         grad_input_float, ws);
  if (!kFloat)
    launch(ConvertKernel<float, T>, BlocksFor(launch, inputs, threads), threads,
           static_cast<const float*>(grad_input_float), inputs, grad_input);
  if (grad_xi != nullptr)
    launch(ConvertKernel<double, float>, BlocksFor(launch, K, threads), threads, static_cast<const double*>(ws), K,
           grad_xi);
  if (prm.use_offsets)
    launch(ConvertKernel<double, float>, BlocksFor(launch, off, threads), threads,
           static_cast<const double*>(ws + K), off, grad_offsets);
  if (prm.use_c)
    launch(ConvertKernel<double, float>, BlocksFor(launch, K, threads), threads,
           static_cast<const double*>(ws + K + off), K, grad_c);
}

}  // namespace gpu
}  // namespace kernelzoo

#endif  // KERNELZOO_OPS_CC_MEX_GPU_H_
