// ddpm_ms CPU kernels for MindSpore's AOT custom ops (ops.Custom(func_type="aot")).
//
// Convolutions run on the oneDNN that ships inside the mindspore wheel (lib/libdnnl.so.3), given NHWC activations
// (NCHW for 1x1) and weights in oneDNN's own ("any") layout, so that it picks its brgemm / depthwise JIT kernels instead of the
// reference or im2col path that MindSpore's NCHW/OIHW Conv2D reaches. The norms are written out here, parallel over
// samples.
//
// Every activation-layout op has two entry points: the plain name takes NCHW tensors, the one ending in _nhwc takes
// NHWC tensors ([N, H, W, C], a channels-last model: no reorder around its convolutions at all).
//
// Every entry point has MindSpore's AOT signature
//   int F(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *stream, void *extra)
// with the inputs first, then the outputs. Tensors are float32, NCHW (or NHWC) activations and OIHW weights, as
// MindSpore stores them. Stride S and padding P are part of each convolution's name (ConvFwd_s2p1), so every geometry has its
// own op name (and so its own shape function on the Python side); the groups are IC / w.shape[1].
//
//   ConvFwd_sSpP(x, w) -> y                  y = conv(x, w)
//   ConvBwdData_sSpP(dy, w) -> dx            dx = dL/dx; also the forward of a transposed convolution
//   ConvBwdWeights_sSpP(x, dy) -> dw         dw = dL/dw; for a transposed convolution called as (dy, x)
//   ConvBwd_sSpP(dy, w, x) -> dx, dw          both gradients of conv(x, w) in one call
//   ConvBiasFwd_sSpP(x, w, b) -> y            y = conv(x, w) + b (b [OC], oneDNN's bias argument)
//   ConvBiasBwd_sSpP(dy, w, x) -> dx, dw, db  its three gradients in one call
//   ConvAddFwd_sSpP(x, w, r) -> y, ConvBiasAddFwd_sSpP(x, w, b, r) -> y     y = conv(x, w) [+ b] + r, a residual
//       added by the convolution itself (their gradients: ConvBwd's, ConvBiasBwd's, and dr = dy)
//   GroupNormFwd(x, gamma[C], beta[C]) -> y, mean[N,G], rstd[N,G]        (G read from mean's shape)
//   GroupNormBwd(dy, x, mean, rstd, gamma[C]) -> dx, dgamma[C], dbeta[C]
//   GroupNormSiluFwd(x, gamma, beta) -> y, mean, rstd              y = silu(GroupNorm(x))
//   GroupNormSiluBwd(dy, x, mean, rstd, gamma, beta) -> dx, dgamma, dbeta
//   GroupNormModSiluFwd(x, gamma, beta, ss[N,2C]) -> y, mean, rstd
//       y = silu(GroupNorm(x) * (1 + scale) + shift), (scale, shift) = the halves of ss: a ResNet block's norm, its
//       time modulation (the time MLP's output as it is) and its activation
//   GroupNormModSiluBwd(dy, x, mean, rstd, gamma, beta, ss) -> dx, dgamma, dbeta, dss
//   GroupNormSiluAddFwd(x, gamma, beta, r) -> y, mean, rstd     y = silu(GroupNorm(x)) + r (backward: GroupNormSiluBwd)
//   ChannelNormFwd(x, g[C]) -> y, mean[N,H*W], rstd[N,H*W]      LayerNorm over the channels of each pixel (g: C floats)
//   ChannelNormBwd(dy, x, mean, rstd, g[C]) -> dx, dg[C]
//   ChannelNormAddFwd(x, g, r) -> y, mean, rstd                 y = ChannelNorm(x) + r (backward: ChannelNormBwd)
//   SoftmaxFwd_last(x) -> y, SoftmaxBwd_last(dy, y) -> dx        softmax over the last axis (oneDNN primitive)
//   SoftmaxFwd_penult(x) -> y, SoftmaxBwd_penult(dy, y) -> dx    softmax over the second-to-last axis
//   EltwiseFwd_gelu(x) -> y, EltwiseBwd_gelu(dy, x) -> dx          tanh-form GELU (nn.GELU's), oneDNN eltwise
//   EltwiseFwd_silu(x) -> y, EltwiseBwd_silu(dy, x) -> dx          x * sigmoid(x)
//   LinearAttentionFwd(qkv[B,N,3,H,D]) -> out[B,N,H,D], LinearAttentionBwd(dout, qkv) -> dqkv
//   SoftmaxAttentionFwd(qkv) -> out, SoftmaxAttentionBwd(dout, qkv) -> dqkv
//       multi-head attention over the N positions of channels-last activations (no transposes)
//   DenseManyFwd(x[B,K], w_1..w_n, b_1..b_n) -> y_1..y_n, DenseManyBwd(dy_1..dy_n, x, w_1..w_n) -> dx, dw_i.., db_i..
//       n Dense layers on one input (the blocks' time MLPs)
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <unordered_map>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "oneapi/dnnl/dnnl_threadpool.hpp"
#include "oneapi/dnnl/dnnl_threadpool_iface.hpp"

using dnnl::memory;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

#ifndef DDPM_MS_ABI
#error "built by ddpm_ms.kernels.builder, which passes -DDDPM_MS_ABI and -DDDPM_MS_CONV_GEOMETRIES (kernels/table.py)"
#endif

namespace {

// One thread-safe cache of built primitives, keyed by what they were built for: Get(key, make) returns the cached
// value, or make()'s result, stored.
template <class Key, class Value>
class Cache {
 public:
  template <class Make>
  std::shared_ptr<Value> Get(const Key &key, Make make) {
    std::lock_guard<std::mutex> lk(mu_);
    auto it = map_.find(key);
    if (it != map_.end()) return it->second;
    auto value = make();
    map_[key] = value;
    return value;
  }

 private:
  std::mutex mu_;
  std::map<Key, std::shared_ptr<Value>> map_;
};

// DDPM_MS_KERNEL_THREADS, else the CPUs this process may run on (taskset, a container's cpuset), not the machine's:
// on one allowed core a second thread only competes with the first (measured: 5% slower training under taskset -c 0).
int NumThreads() {
  static const int n = [] {
    const char *e = getenv("DDPM_MS_KERNEL_THREADS");
    if (e) return std::max(1, atoi(e));
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) return std::max(1, CPU_COUNT(&set));
    return std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  }();
  return n;
}

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// A small fork-join pool for oneDNN's THREADPOOL runtime (the runtime the wheel's libdnnl.so.3 was built with) and
// for the GroupNorm loops. MindSpore calls an AOT kernel on one of its actor threads; if two kernels run at once,
// the second one runs its loop on its own thread instead of waiting.
class Pool : public dnnl::threadpool_interop::threadpool_iface {
 public:
  explicit Pool(int n) : n_(n) {
    for (int i = 1; i < n_; i++) workers_.emplace_back([this] { Loop(); });
  }
  int get_num_threads() const override { return n_; }
  bool get_in_parallel() const override { return in_parallel_; }
  uint64_t get_flags() const override { return 0; }
  void parallel_for(int n, const std::function<void(int, int)> &fn) override {
    std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
    if (n <= 1 || n_ == 1 || in_parallel_ || !busy.owns_lock()) {
      for (int i = 0; i < n; i++) fn(i, n);
      return;
    }
    {
      std::unique_lock<std::mutex> lk(m_);
      // A worker still inside the previous loop's Work() (descheduled there, which on a busy 2-core VM lasts
      // milliseconds) would take this loop's items against counters being reset, and a lost done_ count hangs
      // the wait below (seen: a training run stuck at step 1602). So no reset until every worker has left.
      done_cv_.wait(lk, [&] { return active_ == 0; });
      fn_ = &fn;
      total_ = n;
      next_.store(0);
      done_.store(0);
      gen_++;
      published_.store(gen_, std::memory_order_release);
    }
    cv_.notify_all();
    Work();
    std::unique_lock<std::mutex> lk(m_);
    done_cv_.wait(lk, [&] { return done_.load() == total_; });
    fn_ = nullptr;
  }

 private:
  void Work() {
    in_parallel_ = true;
    int i;
    while ((i = next_.fetch_add(1)) < total_) {
      (*fn_)(i, total_);
      if (done_.fetch_add(1) + 1 == total_) {
        std::lock_guard<std::mutex> lk(m_);
        done_cv_.notify_all();
      }
    }
    in_parallel_ = false;
  }
  void Loop() {
    uint64_t seen = 0;
    for (;;) {
      // Spin briefly before sleeping: the next parallel loop usually follows within microseconds, and a condition
      // variable wake-up costs more than that (measured: +10% training img/s on the fashion_cpu U-Net; spinning
      // ten times longer lost 25%, since the worker then competes with MindSpore's own threads on 2 cores).
      for (int spin = 0; spin < kSpin && published_.load(std::memory_order_acquire) == seen; spin++)
        CpuRelax();
      std::unique_lock<std::mutex> lk(m_);
      cv_.wait(lk, [&] { return gen_ != seen; });
      seen = gen_;
      active_++;
      lk.unlock();
      Work();
      lk.lock();
      if (--active_ == 0) done_cv_.notify_all();
    }
  }
  static constexpr int kSpin = 2000;
  std::atomic<uint64_t> published_{0};  // gen_, readable without the mutex
  int n_;
  std::vector<std::thread> workers_;
  std::mutex m_, busy_;
  std::condition_variable cv_, done_cv_;
  const std::function<void(int, int)> *fn_ = nullptr;
  int total_ = 0;
  int active_ = 0;  // workers inside Work() (under m_)
  std::atomic<int> next_{0}, done_{0};
  uint64_t gen_ = 0;
  static thread_local bool in_parallel_;
};
thread_local bool Pool::in_parallel_ = false;

Pool &ThePool() {
  static Pool *p = new Pool(NumThreads());  // never destroyed: its threads outlive static destruction
  return *p;
}

// Run fn(i) for i in [0, n) on the pool, in NumThreads() contiguous chunks.
void ParallelFor(int64_t n, const std::function<void(int64_t)> &fn) {
  int chunks = static_cast<int>(std::min<int64_t>(n, NumThreads()));
  ThePool().parallel_for(chunks, [&](int c, int nc) {
    for (int64_t i = n * c / nc; i < n * (c + 1) / nc; i++) fn(i);
  });
}

dnnl::engine &Engine() {
  static dnnl::engine e(dnnl::engine::kind::cpu, 0);
  return e;
}

void SetConcurrency() {  // oneDNN reads the threadpool's size per calling thread
  static thread_local bool done = false;
  if (!done) {
    dnnl_threadpool_interop_set_max_concurrency(NumThreads());
    done = true;
  }
}

dnnl::stream &Stream() {
  static thread_local std::unique_ptr<dnnl::stream> s;
  if (!s) {
    SetConcurrency();
    s.reset(new dnnl::stream(dnnl::threadpool_interop::make_stream(Engine(), &ThePool())));
  }
  return *s;
}

float *Scratch(int slot, size_t bytes) {  // per-thread reorder buffers, grown on demand
  static thread_local std::vector<float> buf[4];
  if (buf[slot].size() * sizeof(float) < bytes) buf[slot].resize(bytes / sizeof(float) + 16);
  return buf[slot].data();
}

// ---------------------------------------------------------------- convolutions
struct ConvGeometry {
  memory::dims x, w, y, stride, pad_l, pad_r, dilation;  // x and y in oneDNN's logical order [N, C, H, W]
  int groups;
  tag act;  // how MindSpore holds x and y: nchw or nhwc
};

// A 4-d activation shape in the logical order [N, C, H, W], from NCHW or NHWC.
memory::dims LogicalDims(const int64_t *s, bool nhwc) {
  return nhwc ? memory::dims{s[0], s[3], s[1], s[2]} : memory::dims{s[0], s[1], s[2], s[3]};
}

// x [N, IC, H, W], w [OC, IC/G, KH, KW], y [N, OC, OH, OW] (x and y NHWC if nhwc); the right/bottom padding follows
// from the shapes.
ConvGeometry MakeGeometry(const int64_t *xs_, const int64_t *ws, const int64_t *ys_, int64_t S, int64_t P, bool nhwc) {
  const memory::dims xs = LogicalDims(xs_, nhwc), ys = LogicalDims(ys_, nhwc);
  for (int i = 2; i < 4; i++)
    if (ws[1] <= 0 || xs[1] % ws[1] != 0 || ys[i] != (xs[i] + 2 * P - ws[i]) / S + 1)
      throw std::runtime_error("shapes x, w, y do not fit one convolution with stride " + std::to_string(S) +
                               " and padding " + std::to_string(P));
  ConvGeometry g;
  g.groups = static_cast<int>(xs[1] / ws[1]);
  g.act = nhwc ? tag::nhwc : tag::nchw;
  g.x = xs;
  g.y = ys;
  g.w = g.groups == 1 ? memory::dims{ws[0], ws[1], ws[2], ws[3]}
                      : memory::dims{g.groups, ws[0] / g.groups, ws[1], ws[2], ws[3]};
  g.stride = {S, S};
  g.pad_l = {P, P};
  g.pad_r = {(ys[2] - 1) * S + ws[2] - xs[2] - P, (ys[3] - 1) * S + ws[3] - xs[3] - P};
  g.dilation = {0, 0};
  return g;
}

tag PlainWeights(const ConvGeometry &g) { return g.groups == 1 ? tag::oihw : tag::goihw; }

enum class ConvKind { kFwd, kBwdData, kBwdWeights };

struct ConvPrimitive {
  dnnl::primitive prim;
  memory::desc x, w, y;  // the layouts the primitive runs on (x: src or diff_src, y: dst or diff_dst)
};

// bias: the forward adds b [OC] and the weights' backward also gives db (oneDNN's bias and diff_bias arguments).
// residual (forward only): it also adds r, shaped and laid out as y (a binary post-op: no pass of its own).
std::shared_ptr<ConvPrimitive> MakeConv(ConvKind kind, const ConvGeometry &g, bool bias, bool residual,
                                        const std::string &key) {
  SetConcurrency();
  // NHWC lets oneDNN pick its brgemm / depthwise JIT kernels. A 1x1 convolution runs as a matmul on MindSpore's NCHW
  // buffers as they are, which saves its reorders (measured: 9% more training img/s on the fashion_cpu U-Net).
  const bool pointwise = g.w.back() == 1 && g.w[g.w.size() - 2] == 1 && g.stride[0] == 1;
  const tag act = pointwise ? g.act : tag::nhwc;
  memory::desc x_md(g.x, dt::f32, act), y_md(g.y, dt::f32, act), w_any(g.w, dt::f32, tag::any);
  memory::desc b_md = bias ? memory::desc({g.y[1]}, dt::f32, tag::a) : memory::desc();
  dnnl::primitive_attr attr;
  if (residual) {
    dnnl::post_ops po;
    po.append_binary(dnnl::algorithm::binary_add, y_md);
    attr.set_post_ops(po);
  }
  auto fwd = dnnl::convolution_forward::primitive_desc(Engine(), dnnl::prop_kind::forward_training,
                                                       dnnl::algorithm::convolution_direct, x_md, w_any, b_md, y_md,
                                                       g.stride, g.dilation, g.pad_l, g.pad_r, attr);
  auto e = std::make_shared<ConvPrimitive>();
  if (kind == ConvKind::kFwd) {
    e->prim = dnnl::convolution_forward(fwd);
    e->x = fwd.src_desc();
    e->w = fwd.weights_desc();
    e->y = fwd.dst_desc();
  } else if (kind == ConvKind::kBwdData) {
    auto pd = dnnl::convolution_backward_data::primitive_desc(Engine(), dnnl::algorithm::convolution_direct, x_md,
                                                              w_any, y_md, g.stride, g.dilation, g.pad_l, g.pad_r,
                                                              fwd, attr);
    e->prim = dnnl::convolution_backward_data(pd);
    e->x = pd.diff_src_desc();
    e->w = pd.weights_desc();
    e->y = pd.diff_dst_desc();
  } else {
    auto pd = dnnl::convolution_backward_weights::primitive_desc(Engine(), dnnl::algorithm::convolution_direct, x_md,
                                                                 w_any, b_md, y_md, g.stride, g.dilation, g.pad_l,
                                                                 g.pad_r, fwd, attr);
    e->prim = dnnl::convolution_backward_weights(pd);
    e->x = pd.src_desc();
    e->w = pd.diff_weights_desc();
    e->y = pd.diff_dst_desc();
  }
  if (getenv("DDPM_MS_KERNEL_VERBOSE"))
    fprintf(stderr, "ddpm_ms kernel conv%d %s -> %s\n", static_cast<int>(kind), key.c_str(),
            dnnl::primitive_desc_base(const_cast<dnnl_primitive_desc_t>(e->prim.get_primitive_desc()), true)
                .impl_info_str());
  return e;
}

std::shared_ptr<ConvPrimitive> GetConv(ConvKind kind, const ConvGeometry &g, bool bias = false,
                                       bool residual = false) {
  static Cache<std::string, ConvPrimitive> cache;
  const bool b = bias && kind != ConvKind::kBwdData;   // the data gradient is the same with a bias
  const bool r = residual && kind == ConvKind::kFwd;
  std::string key = std::to_string(static_cast<int>(kind)) + (g.act == tag::nhwc ? "h" : "c") + (b ? "b" : "") +
                    (r ? "r" : "");
  for (const auto *v : {&g.x, &g.w, &g.y, &g.stride, &g.pad_l, &g.pad_r})
    for (auto d : *v) key += "," + std::to_string(d);
  return cache.Get(key, [&] { return MakeConv(kind, g, b, r, key); });
}

// A plain MindSpore buffer as the primitive's layout `md`: the buffer itself, or a reordered copy in scratch `slot`.
float *In(float *src, const memory::dims &d, tag plain, const memory::desc &md, int slot) {
  memory::desc pmd(d, dt::f32, plain);
  if (pmd == md) return src;
  float *dst = Scratch(slot, md.get_size());
  memory a(pmd, Engine(), src), b(md, Engine(), dst);
  dnnl::reorder(a, b).execute(Stream(), a, b);
  return dst;
}

// Where the primitive writes an output: MindSpore's buffer if the layouts agree, else scratch `slot` (see Out).
float *OutBuffer(float *dst, const memory::dims &d, tag plain, const memory::desc &md, int slot) {
  return memory::desc(d, dt::f32, plain) == md ? dst : Scratch(slot, md.get_size());
}

void Out(float *src, const memory::desc &md, float *dst, const memory::dims &d, tag plain) {
  if (src == dst) return;
  memory::desc pmd(d, dt::f32, plain);
  memory a(md, Engine(), src), b(pmd, Engine(), dst);
  dnnl::reorder(a, b).execute(Stream(), a, b);
}

bool AllFloat32(int nparam, const char **dtypes, const char *who) {
  for (int i = 0; i < nparam; i++)
    if (strcmp(dtypes[i], "float32") != 0) {
      fprintf(stderr, "ddpm_ms kernel %s: float32 only, got %s\n", who, dtypes[i]);
      return false;
    }
  return true;
}

// x, w [, b] [, r] -> y (bias: y = conv(x, w) + b, b [OC]; residual: + r, r shaped as y)
int ConvFwd(int64_t S, int64_t P, bool nhwc, bool bias, bool residual, void **params, int64_t **shapes) {
  const int ri = bias ? 3 : 2, yi = ri + (residual ? 1 : 0);
  ConvGeometry g = MakeGeometry(shapes[0], shapes[1], shapes[yi], S, P, nhwc);
  auto c = GetConv(ConvKind::kFwd, g, bias, residual);
  float *x = In(static_cast<float *>(params[0]), g.x, g.act, c->x, 0);
  float *w = In(static_cast<float *>(params[1]), g.w, PlainWeights(g), c->w, 1);
  float *y = OutBuffer(static_cast<float *>(params[yi]), g.y, g.act, c->y, 2);
  memory mx(c->x, Engine(), x), mw(c->w, Engine(), w), my(c->y, Engine(), y);
  std::unordered_map<int, memory> args{{DNNL_ARG_SRC, mx}, {DNNL_ARG_WEIGHTS, mw}, {DNNL_ARG_DST, my}};
  if (bias) args.emplace(DNNL_ARG_BIAS, memory({{g.y[1]}, dt::f32, tag::a}, Engine(), params[2]));
  if (residual)   // r in y's layout: as it is, or reordered into scratch slot 3
    args.emplace(DNNL_ARG_ATTR_MULTIPLE_POST_OP(0) | DNNL_ARG_SRC_1,
                 memory(c->y, Engine(), In(static_cast<float *>(params[ri]), g.y, g.act, c->y, 3)));
  c->prim.execute(Stream(), args);
  Out(y, c->y, static_cast<float *>(params[yi]), g.y, g.act);
  return 0;
}

// dy (already in c->y's layout), plain w -> plain dx; scratch slots for w and dx.
void RunBwdData(const ConvPrimitive &c, const ConvGeometry &g, float *dy, void *w_plain, void *dx_plain, int w_slot,
                int dx_slot) {
  float *w = In(static_cast<float *>(w_plain), g.w, PlainWeights(g), c.w, w_slot);
  float *dx = OutBuffer(static_cast<float *>(dx_plain), g.x, g.act, c.x, dx_slot);
  memory mdy(c.y, Engine(), dy), mw(c.w, Engine(), w), mdx(c.x, Engine(), dx);
  c.prim.execute(Stream(), {{DNNL_ARG_DIFF_DST, mdy}, {DNNL_ARG_WEIGHTS, mw}, {DNNL_ARG_DIFF_SRC, mdx}});
  Out(dx, c.x, static_cast<float *>(dx_plain), g.x, g.act);
}

// dy (already in c->y's layout), plain x -> plain dw [and db, if c has a bias]; scratch slots for x and dw.
void RunBwdWeights(const ConvPrimitive &c, const ConvGeometry &g, float *dy, void *x_plain, void *dw_plain, int x_slot,
                   int dw_slot, void *db = nullptr) {
  float *x = In(static_cast<float *>(x_plain), g.x, g.act, c.x, x_slot);
  float *dw = OutBuffer(static_cast<float *>(dw_plain), g.w, PlainWeights(g), c.w, dw_slot);
  memory mx(c.x, Engine(), x), mdy(c.y, Engine(), dy), mdw(c.w, Engine(), dw);
  std::unordered_map<int, memory> args{{DNNL_ARG_SRC, mx}, {DNNL_ARG_DIFF_DST, mdy}, {DNNL_ARG_DIFF_WEIGHTS, mdw}};
  if (db) args.emplace(DNNL_ARG_DIFF_BIAS, memory({{g.y[1]}, dt::f32, tag::a}, Engine(), db));
  c.prim.execute(Stream(), args);
  Out(dw, c.w, static_cast<float *>(dw_plain), g.w, PlainWeights(g));
}

bool DepthwiseWide(const ConvGeometry &g);  // the depthwise weights' gradient written out here, below
void DepthwiseBwdWeights(const ConvGeometry &g, const float *x, const float *dy, float *dw, float *db);

int ConvBwdData(int64_t S, int64_t P, bool nhwc, void **params, int64_t **shapes) {  // dy, w -> dx
  ConvGeometry g = MakeGeometry(shapes[2], shapes[1], shapes[0], S, P, nhwc);
  auto c = GetConv(ConvKind::kBwdData, g);
  RunBwdData(*c, g, In(static_cast<float *>(params[0]), g.y, g.act, c->y, 0), params[1], params[2], 1, 2);
  return 0;
}

int ConvBwdWeights(int64_t S, int64_t P, bool nhwc, void **params, int64_t **shapes) {  // x, dy -> dw
  ConvGeometry g = MakeGeometry(shapes[0], shapes[2], shapes[1], S, P, nhwc);
  if (DepthwiseWide(g)) {
    DepthwiseBwdWeights(g, static_cast<float *>(params[0]), static_cast<float *>(params[1]),
                        static_cast<float *>(params[2]), nullptr);
    return 0;
  }
  auto c = GetConv(ConvKind::kBwdWeights, g);
  RunBwdWeights(*c, g, In(static_cast<float *>(params[1]), g.y, g.act, c->y, 1), params[0], params[2], 0, 2);
  return 0;
}

// dy, w, x -> dx, dw [, db]: all gradients in one call, so dy is reordered once and MindSpore launches one op.
int ConvBwd(int64_t S, int64_t P, bool nhwc, bool bias, void **params, int64_t **shapes) {
  ConvGeometry g = MakeGeometry(shapes[2], shapes[1], shapes[0], S, P, nhwc);
  auto cd = GetConv(ConvKind::kBwdData, g);
  if (DepthwiseWide(g)) {
    RunBwdData(*cd, g, In(static_cast<float *>(params[0]), g.y, g.act, cd->y, 0), params[1], params[3], 1, 2);
    DepthwiseBwdWeights(g, static_cast<float *>(params[2]), static_cast<float *>(params[0]),
                        static_cast<float *>(params[4]), bias ? static_cast<float *>(params[5]) : nullptr);
    return 0;
  }
  auto cw = GetConv(ConvKind::kBwdWeights, g, bias);
  float *dy = In(static_cast<float *>(params[0]), g.y, g.act, cd->y, 0);
  RunBwdData(*cd, g, dy, params[1], params[3], 1, 2);
  // slot 2 is free again: dx has been written out
  float *dy_w = cw->y == cd->y ? dy : In(static_cast<float *>(params[0]), g.y, g.act, cw->y, 2);
  RunBwdWeights(*cw, g, dy_w, params[2], params[4], 3, 1, bias ? params[5] : nullptr);
  return 0;
}

// DDPM_MS_KERNEL_PROFILE=1: the calls and seconds of every entry point, printed to stderr when the process exits
// (what bench/kernel_profile.py reads). Off, it costs one branch per call.
class Profile {
 public:
  static Profile *Get() {
    static Profile *p = getenv("DDPM_MS_KERNEL_PROFILE") ? new Profile() : nullptr;
    return p;
  }
  void Add(const char *who, double seconds) {
    std::lock_guard<std::mutex> lk(mu_);
    auto &e = table_[who];
    e.first += 1;
    e.second += seconds;
  }
  void Reset() {
    std::lock_guard<std::mutex> lk(mu_);
    table_.clear();
  }
  static void Print() {
    Profile *p = Get();
    std::lock_guard<std::mutex> lk(p->mu_);
    for (const auto &kv : p->table_)
      fprintf(stderr, "ddpm_ms kernel profile %s %lld %.6f\n", kv.first.c_str(), kv.second.first, kv.second.second);
  }

 private:
  Profile() { atexit(Print); }
  std::mutex mu_;
  std::map<std::string, std::pair<long long, double>> table_;
};

template <class F>
int Guard(const char *who, int nparam, const char **dtypes, F body) {
  if (!AllFloat32(nparam, dtypes, who)) return 1;
  Profile *profile = Profile::Get();
  const auto start = profile ? std::chrono::steady_clock::now() : std::chrono::steady_clock::time_point();
  try {
    const int rc = body();
    if (profile) profile->Add(who, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    return rc;
  } catch (std::exception &ex) {
    fprintf(stderr, "ddpm_ms kernel %s: %s\n", who, ex.what());
    return 1;
  }
}

#define DDPM_MS_INLINE __attribute__((always_inline)) inline

// exp(x) in float32 that the compiler can vectorise (std::exp is a scalar call): x = n ln2 + r with |r| <= ln2 / 2
// (Cody-Waite), e^r by Cephes' expf polynomial, 2^n from the exponent bits; relative error ~1e-7. x is clamped to
// [-87, 88], where e^x is a normal float. T: float, or V16 below (16 lanes at once).
template <class T, class I>
DDPM_MS_INLINE T ExpT(T x) {
  x = x < -87.0f ? T{} - 87.0f : x;
  x = x > 88.0f ? T{} + 88.0f : x;
  const T n = (x * 1.44269504f + 12582912.f) - 12582912.f;   // round to nearest (1.5 * 2^23)
  const T r = x - n * 0.693359375f + n * 2.12194440e-4f;
  T p = T{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.f;
  I bits;
  if constexpr (std::is_same<T, float>::value) {
    bits = (static_cast<I>(n) + 127) << 23;
  } else {
    bits = (__builtin_convertvector(n, I) + 127) << 23;
  }
  T two_n;
  std::memcpy(&two_n, &bits, sizeof two_n);
  return p * two_n;
}
DDPM_MS_INLINE float ExpF(float x) { return ExpT<float, int32_t>(x); }

// silu(u) = u sigmoid(u), vectorisable.
DDPM_MS_INLINE float SiluF(float u) { return u / (1.f + ExpF(-u)); }

// ---------------------------------------------------------------- normalisations
// A sample's C x HW values as they lie in memory: element (c, i) (channel c, pixel i) at c * HW + i in NCHW, at
// i * C + c in NHWC. Sweep visits every element in memory order, so each loop streams through the sample once.
struct Plane {
  int64_t C, HW;
  bool nhwc;
  int64_t Size() const { return C * HW; }
  template <class F>
  void Sweep(F f) const {  // f(c, i, k): channel, pixel, offset in the sample
    if (nhwc) {
      for (int64_t i = 0, k = 0; i < HW; i++)
        for (int64_t c = 0; c < C; c++, k++) f(c, i, k);
    } else {
      for (int64_t c = 0, k = 0; c < C; c++)
        for (int64_t i = 0; i < HW; i++, k++) f(c, i, k);
    }
  }
};

// The plane of a 4-d activation shape, NCHW or NHWC.
Plane MakePlane(const int64_t *xs, bool nhwc) {
  return nhwc ? Plane{xs[3], xs[1] * xs[2], true} : Plane{xs[1], xs[2] * xs[3], false};
}

// x [N, C, H, W] in G groups of C/G channels: for sample n and group g, mu and sigma^2 over its (C/G)*H*W values,
// y = (x - mu) / sqrt(sigma^2 + eps) * gamma[c] + beta[c]. Sums in double, so that the result matches a
// two-pass float reference to ~1e-7 whatever the group size.
constexpr double kEps = DDPM_MS_NORM_EPS;  // kernels/table.py NORM_EPS (nn.GroupNorm's default)

struct GnShape {
  int64_t N, G, CG;
  Plane p;
};
// From x's shape and the statistics' [N, G] (gamma and beta are [C], C = G * CG).
GnShape MakeGnShape(const int64_t *xs, const int64_t *stats, bool nhwc) {
  const Plane p = MakePlane(xs, nhwc);
  return {xs[0], stats[1], p.C / stats[1], p};
}

// The GroupNorm of a ResNet block can be fused with what follows it, a per-(sample, channel) modulation by the time
// embedding and a SiLU: y = silu(u * (1 + scale[n,c]) + shift[n,c]), u = GroupNorm(x), with scale and shift the two
// halves of each row of ss [N, 2C] (null: no modulation).
struct Modulation {
  const float *ss = nullptr;
  int64_t C = 0;
  float Factor(int64_t n, int64_t c) const { return ss ? 1.f + ss[n * 2 * C + c] : 1.f; }
  float Shift(int64_t n, int64_t c) const { return ss ? ss[n * 2 * C + C + c] : 0.f; }
};

// z = x * a[c] + b[c] for sample n: the GroupNorm with its statistics mean, rstd [N, G], then the modulation.
void NormAffine(const GnShape &s, int64_t n, const float *mean, const float *rstd, const float *gamma,
                const float *beta, const Modulation &mod, float *a, float *b) {
  const int64_t C = s.p.C;
  for (int64_t c = 0; c < C; c++) {
    const float mu = mean[n * s.G + c / s.CG], r = rstd[n * s.G + c / s.CG], f = mod.Factor(n, c);
    a[c] = r * gamma[c] * f;
    b[c] = (beta[c] - mu * r * gamma[c]) * f + mod.Shift(n, c);
  }
}

// z = GroupNorm(x) * (1 + scale) + shift into z (kSilu: silu of it) [+ r, shaped as x]; mean and rstd per (n, g).
template <bool kSilu>
void GroupNormForward(const GnShape &s, const float *x, const float *gamma, const float *beta, const Modulation &mod,
                      float *z, float *mean, float *rstd, const float *r = nullptr) {
  const int64_t C = s.p.C, block = s.CG * s.p.HW;
  ParallelFor(s.N, [&](int64_t n) {
    const float *xn = x + n * s.p.Size();
    std::vector<double> acc(C, 0.0), mu(C), stat(s.G, 0.0);
    s.p.Sweep([&](int64_t c, int64_t, int64_t k) { acc[c] += xn[k]; });
    for (int64_t c = 0; c < C; c++) stat[c / s.CG] += acc[c];
    for (int64_t c = 0; c < C; c++) mu[c] = stat[c / s.CG] / block;
    std::fill(acc.begin(), acc.end(), 0.0);
    s.p.Sweep([&](int64_t c, int64_t, int64_t k) {
      const double d = xn[k] - mu[c];
      acc[c] += d * d;
    });
    std::fill(stat.begin(), stat.end(), 0.0);
    for (int64_t c = 0; c < C; c++) stat[c / s.CG] += acc[c];
    for (int64_t g = 0; g < s.G; g++) {
      mean[n * s.G + g] = static_cast<float>(mu[g * s.CG]);
      rstd[n * s.G + g] = static_cast<float>(1.0 / std::sqrt(stat[g] / block + kEps));
    }
    std::vector<float> a(C), b(C);
    NormAffine(s, n, mean, rstd, gamma, beta, mod, a.data(), b.data());
    float *zn = z + n * s.p.Size();
    const float *rn = r ? r + n * s.p.Size() : nullptr;
    if (kSilu && rn)
      s.p.Sweep([&](int64_t c, int64_t, int64_t k) { zn[k] = SiluF(xn[k] * a[c] + b[c]) + rn[k]; });
    else if (kSilu)
      s.p.Sweep([&](int64_t c, int64_t, int64_t k) { zn[k] = SiluF(xn[k] * a[c] + b[c]); });
    else
      s.p.Sweep([&](int64_t c, int64_t, int64_t k) { zn[k] = xn[k] * a[c] + b[c]; });
  });
}

// The gradients of z = (xhat * gamma + beta) * f + shift, f = 1 + scale, from dz. With m = gamma[c] * f[n,c] and
// gdz = m * dz, per (n, g): dx = rstd * (gdz - mean(gdz) - xhat * mean(gdz * xhat)); per (n, c), with
// A = sum_hw dz and B = sum_hw dz * xhat: dshift = A, dscale = gamma B + beta A (into dss [N, 2C] as ss holds them;
// may be null); dgamma = sum_n f B, dbeta = sum_n f A.
void GroupNormBackward(const GnShape &s, const float *dz, const float *x, const float *mean, const float *rstd,
                       const float *gamma, const float *beta, const Modulation &mod, float *dx, float *dgamma,
                       float *dbeta, float *dss) {
  const int64_t C = s.p.C, block = s.CG * s.p.HW;
  std::vector<double> part_dg(s.N * C), part_db(s.N * C);  // per (n, c), summed over n below
  ParallelFor(s.N, [&](int64_t n) {
    const float *xn = x + n * s.p.Size(), *dzn = dz + n * s.p.Size();
    std::vector<float> mu(C), r(C), m(C), m1(C), m2(C);
    for (int64_t c = 0; c < C; c++) {
      mu[c] = mean[n * s.G + c / s.CG];
      r[c] = rstd[n * s.G + c / s.CG];
      m[c] = gamma[c] * mod.Factor(n, c);
    }
    std::vector<double> sa(C, 0.0), sb(C, 0.0), sum_gdz(s.G, 0.0), sum_gdz_xhat(s.G, 0.0);
    s.p.Sweep([&](int64_t c, int64_t, int64_t k) {
      sa[c] += dzn[k];
      sb[c] += static_cast<double>(dzn[k]) * ((xn[k] - mu[c]) * r[c]);
    });
    for (int64_t c = 0; c < C; c++) {
      const int64_t nc = n * C + c;
      const double f = mod.Factor(n, c);
      part_db[nc] = f * sa[c];
      part_dg[nc] = f * sb[c];
      if (dss) {
        dss[n * 2 * C + c] = static_cast<float>(gamma[c] * sb[c] + beta[c] * sa[c]);
        dss[n * 2 * C + C + c] = static_cast<float>(sa[c]);
      }
      sum_gdz[c / s.CG] += gamma[c] * f * sa[c];
      sum_gdz_xhat[c / s.CG] += gamma[c] * f * sb[c];
    }
    for (int64_t c = 0; c < C; c++) {
      m1[c] = static_cast<float>(sum_gdz[c / s.CG] / block);
      m2[c] = static_cast<float>(sum_gdz_xhat[c / s.CG] / block);
    }
    float *dxn = dx + n * s.p.Size();
    s.p.Sweep([&](int64_t c, int64_t, int64_t k) {
      dxn[k] = r[c] * (m[c] * dzn[k] - m1[c] - (xn[k] - mu[c]) * r[c] * m2[c]);
    });
  });
  for (int64_t c = 0; c < C; c++) {
    double a = 0, b = 0;
    for (int64_t n = 0; n < s.N; n++) {
      a += part_dg[n * C + c];
      b += part_db[n * C + c];
    }
    dgamma[c] = static_cast<float>(a);
    dbeta[c] = static_cast<float>(b);
  }
}

// x, gamma[G,C/G], beta[G,C/G] -> y, mean, rstd
int GroupNormFwd(bool nhwc, void **params, int64_t **shapes) {
  GnShape s = MakeGnShape(shapes[0], shapes[4], nhwc);
  auto in = [&](int i) { return static_cast<const float *>(params[i]); };
  auto out = [&](int i) { return static_cast<float *>(params[i]); };
  GroupNormForward<false>(s, in(0), in(1), in(2), Modulation(), out(3), out(4), out(5));
  return 0;
}

// dy, x, mean, rstd, gamma -> dx, dgamma, dbeta (beta enters no gradient without a modulation)
int GroupNormBwd(bool nhwc, void **params, int64_t **shapes) {
  GnShape s = MakeGnShape(shapes[1], shapes[2], nhwc);
  auto in = [&](int i) { return static_cast<const float *>(params[i]); };
  auto out = [&](int i) { return static_cast<float *>(params[i]); };
  GroupNormBackward(s, in(0), in(1), in(2), in(3), in(4), nullptr, Modulation(), out(5), out(6), out(7), nullptr);
  return 0;
}

// ---------------------------------------------------------------- channel LayerNorm
// x [N, C, H, W]: for each pixel, mu and sigma^2 over its C channels; y = (x - mu) / sqrt(sigma^2 + eps) * g[c]
// (residual: + r, r shaped as x, the third input). Per sample, the per-pixel sums accumulate in memory order (see
// Plane).
int ChannelNormFwd(bool nhwc, bool residual, void **params, int64_t **shapes) {
  const int64_t N = shapes[0][0];
  const Plane p = MakePlane(shapes[0], nhwc);
  const float *x = static_cast<const float *>(params[0]), *gain = static_cast<const float *>(params[1]);
  const float *r = residual ? static_cast<const float *>(params[2]) : nullptr;
  const int o = residual ? 3 : 2;
  float *y = static_cast<float *>(params[o]), *mean = static_cast<float *>(params[o + 1]),
        *rstd = static_cast<float *>(params[o + 2]);
  ParallelFor(N, [&](int64_t n) {
    const float *xn = x + n * p.Size();
    std::vector<double> a(p.HW, 0.0), b(p.HW, 0.0);
    p.Sweep([&](int64_t, int64_t i, int64_t k) { a[i] += xn[k]; });
    for (int64_t i = 0; i < p.HW; i++) a[i] /= p.C;
    p.Sweep([&](int64_t, int64_t i, int64_t k) {
      const double d = xn[k] - a[i];
      b[i] += d * d;
    });
    float *mn = mean + n * p.HW, *rn = rstd + n * p.HW;
    for (int64_t i = 0; i < p.HW; i++) {
      mn[i] = static_cast<float>(a[i]);
      rn[i] = static_cast<float>(1.0 / std::sqrt(b[i] / p.C + kEps));
    }
    float *yn = y + n * p.Size();
    if (r) {
      const float *res = r + n * p.Size();
      p.Sweep([&](int64_t c, int64_t i, int64_t k) { yn[k] = (xn[k] - mn[i]) * rn[i] * gain[c] + res[k]; });
    } else {
      p.Sweep([&](int64_t c, int64_t i, int64_t k) { yn[k] = (xn[k] - mn[i]) * rn[i] * gain[c]; });
    }
  });
  return 0;
}
int ChannelNormFwd(bool nhwc, void **params, int64_t **shapes) { return ChannelNormFwd(nhwc, false, params, shapes); }
int ChannelNormAddFwd(bool nhwc, void **params, int64_t **shapes) { return ChannelNormFwd(nhwc, true, params, shapes); }

// With xhat = (x - mu) * rstd and gdy = g[c] * dy, per pixel:
//   dx = rstd * (gdy - mean_c(gdy) - xhat * mean_c(gdy * xhat)),   dg[c] = sum_{n,hw} dy * xhat.
int ChannelNormBwd(bool nhwc, void **params, int64_t **shapes) {
  const int64_t N = shapes[1][0];
  const Plane p = MakePlane(shapes[1], nhwc);
  const int64_t C = p.C;
  const float *dy = static_cast<const float *>(params[0]), *x = static_cast<const float *>(params[1]),
              *mean = static_cast<const float *>(params[2]), *rstd = static_cast<const float *>(params[3]),
              *gain = static_cast<const float *>(params[4]);
  float *dx = static_cast<float *>(params[5]), *dg = static_cast<float *>(params[6]);
  std::vector<double> part_dg(N * C);
  ParallelFor(N, [&](int64_t n) {
    const float *xn = x + n * p.Size(), *dyn = dy + n * p.Size(), *mn = mean + n * p.HW, *rn = rstd + n * p.HW;
    std::vector<double> a(p.HW, 0.0), b(p.HW, 0.0), sdg(C, 0.0);  // a: sum_c gdy, b: sum_c gdy * xhat
    p.Sweep([&](int64_t c, int64_t i, int64_t k) {
      const float xhat = (xn[k] - mn[i]) * rn[i];
      a[i] += gain[c] * dyn[k];
      b[i] += gain[c] * dyn[k] * xhat;
      sdg[c] += static_cast<double>(dyn[k]) * xhat;
    });
    std::copy(sdg.begin(), sdg.end(), part_dg.begin() + n * C);
    float *dxn = dx + n * p.Size();
    p.Sweep([&](int64_t c, int64_t i, int64_t k) {
      const float xhat = (xn[k] - mn[i]) * rn[i];
      dxn[k] = rn[i] * (gain[c] * dyn[k] - static_cast<float>(a[i] / C) - xhat * static_cast<float>(b[i] / C));
    });
  });
  for (int64_t c = 0; c < C; c++) {
    double a = 0;
    for (int64_t n = 0; n < N; n++) a += part_dg[n * C + c];
    dg[c] = static_cast<float>(a);
  }
  return 0;
}

// ---------------------------------------------------------------- softmax
// The tensor as [outer, D, inner] with the softmax over D: the last axis (inner = 1) or the second-to-last.
memory::dims SoftmaxDims(int ndim, const int64_t *shape, bool last) {
  int64_t outer = 1;
  for (int i = 0; i < ndim - (last ? 1 : 2); i++) outer *= shape[i];
  return last ? memory::dims{outer, shape[ndim - 1], 1} : memory::dims{outer, shape[ndim - 2], shape[ndim - 1]};
}

struct SoftmaxPrimitives {
  dnnl::softmax_forward::primitive_desc fwd_pd;
  dnnl::softmax_forward fwd;
  dnnl::softmax_backward bwd;
};

std::shared_ptr<SoftmaxPrimitives> GetSoftmax(const memory::dims &d) {
  static Cache<memory::dims, SoftmaxPrimitives> cache;
  return cache.Get(d, [&] {
    SetConcurrency();
    memory::desc md(d, dt::f32, tag::abc);
    auto e = std::make_shared<SoftmaxPrimitives>();
    e->fwd_pd = dnnl::softmax_forward::primitive_desc(Engine(), dnnl::prop_kind::forward_training,
                                                      dnnl::algorithm::softmax_accurate, md, md, 1);
    e->fwd = dnnl::softmax_forward(e->fwd_pd);
    e->bwd = dnnl::softmax_backward(dnnl::softmax_backward::primitive_desc(
        Engine(), dnnl::algorithm::softmax_accurate, md, md, md, 1, e->fwd_pd));
    return e;
  });
}

int SoftmaxFwd(bool last, void **params, int *ndims, int64_t **shapes) {  // x -> y
  memory::dims d = SoftmaxDims(ndims[0], shapes[0], last);
  auto p = GetSoftmax(d);
  memory::desc md(d, dt::f32, tag::abc);
  memory mx(md, Engine(), params[0]), my(md, Engine(), params[1]);
  p->fwd.execute(Stream(), {{DNNL_ARG_SRC, mx}, {DNNL_ARG_DST, my}});
  return 0;
}

// dx = y * (dy - sum_D(dy * y)) over the softmax axis D of [outer, D, inner], written out for inner > 1: oneDNN's
// backward takes a reference kernel there (~50x slower). The sums run over the contiguous inner axis.
void SoftmaxBwdStrided(const memory::dims &d, const float *dy, const float *y, float *dx) {
  const int64_t D = d[1], inner = d[2];
  ParallelFor(d[0], [&](int64_t o) {
    const int64_t base = o * D * inner;
    std::vector<float> dot(inner, 0.f);
    for (int64_t k = 0; k < D; k++)
      for (int64_t i = 0; i < inner; i++) dot[i] += dy[base + k * inner + i] * y[base + k * inner + i];
    for (int64_t k = 0; k < D; k++)
      for (int64_t i = 0; i < inner; i++)
        dx[base + k * inner + i] = y[base + k * inner + i] * (dy[base + k * inner + i] - dot[i]);
  });
}

int SoftmaxBwd(bool last, void **params, int *ndims, int64_t **shapes) {  // dy, y -> dx
  memory::dims d = SoftmaxDims(ndims[0], shapes[0], last);
  if (d[2] > 1) {
    SoftmaxBwdStrided(d, static_cast<const float *>(params[0]), static_cast<const float *>(params[1]),
                      static_cast<float *>(params[2]));
    return 0;
  }
  auto p = GetSoftmax(d);
  memory::desc md(d, dt::f32, tag::abc);
  memory mdy(md, Engine(), params[0]), my(md, Engine(), params[1]), mdx(md, Engine(), params[2]);
  p->bwd.execute(Stream(), {{DNNL_ARG_DIFF_DST, mdy}, {DNNL_ARG_DST, my}, {DNNL_ARG_DIFF_SRC, mdx}});
  return 0;
}

// ---------------------------------------------------------------- elementwise activations
struct EltwisePrimitives {
  dnnl::eltwise_forward fwd;
  dnnl::eltwise_backward bwd;
};

std::shared_ptr<EltwisePrimitives> GetEltwise(dnnl::algorithm alg, float alpha, int64_t n) {
  static Cache<std::pair<int, int64_t>, EltwisePrimitives> cache;
  return cache.Get(std::make_pair(static_cast<int>(alg), n), [&] {
    SetConcurrency();
    memory::desc md({n}, dt::f32, tag::a);
    auto fwd_pd = dnnl::eltwise_forward::primitive_desc(Engine(), dnnl::prop_kind::forward_training, alg, md, md,
                                                        alpha);
    auto e = std::make_shared<EltwisePrimitives>();
    e->fwd = dnnl::eltwise_forward(fwd_pd);
    e->bwd = dnnl::eltwise_backward(
        dnnl::eltwise_backward::primitive_desc(Engine(), alg, md, md, md, alpha, 0.f, fwd_pd));
    return e;
  });
}

int64_t NumElements(int ndim, const int64_t *shape) {
  int64_t n = 1;
  for (int i = 0; i < ndim; i++) n *= shape[i];
  return n;
}

int EltwiseFwd(dnnl::algorithm alg, float alpha, void **params, int *ndims, int64_t **shapes) {  // x -> y
  const int64_t n = NumElements(ndims[0], shapes[0]);
  auto p = GetEltwise(alg, alpha, n);
  memory::desc md({n}, dt::f32, tag::a);
  memory mx(md, Engine(), params[0]), my(md, Engine(), params[1]);
  p->fwd.execute(Stream(), {{DNNL_ARG_SRC, mx}, {DNNL_ARG_DST, my}});
  return 0;
}

int EltwiseBwd(dnnl::algorithm alg, float alpha, void **params, int *ndims, int64_t **shapes) {  // dy, x -> dx
  const int64_t n = NumElements(ndims[0], shapes[0]);
  auto p = GetEltwise(alg, alpha, n);
  memory::desc md({n}, dt::f32, tag::a);
  memory mdy(md, Engine(), params[0]), mx(md, Engine(), params[1]), mdx(md, Engine(), params[2]);
  p->bwd.execute(Stream(), {{DNNL_ARG_DIFF_DST, mdy}, {DNNL_ARG_SRC, mx}, {DNNL_ARG_DIFF_SRC, mdx}});
  return 0;
}

// x, gamma[G,C/G], beta[G,C/G] [, ss[N,2C]] -> y = silu(GroupNorm(x) [* (1 + scale) + shift]), mean, rstd
int NormSiluFwd(bool nhwc, bool modulated, void **params, int64_t **shapes) {
  const int y = modulated ? 4 : 3;
  GnShape s = MakeGnShape(shapes[0], shapes[y + 1], nhwc);
  auto in = [&](int i) { return static_cast<const float *>(params[i]); };
  auto out = [&](int i) { return static_cast<float *>(params[i]); };
  Modulation mod{modulated ? in(3) : nullptr, s.p.C};
  GroupNormForward<true>(s, in(0), in(1), in(2), mod, out(y), out(y + 1), out(y + 2));
  return 0;
}

// dy, x, mean, rstd, gamma, beta [, ss] -> dx, dgamma, dbeta [, dss]; the pre-activation z is recomputed from x and
// the statistics rather than kept from the forward.
int NormSiluBwd(bool nhwc, bool modulated, void **params, int64_t **shapes) {
  GnShape s = MakeGnShape(shapes[1], shapes[2], nhwc);
  auto in = [&](int i) { return static_cast<const float *>(params[i]); };
  auto out = [&](int i) { return static_cast<float *>(params[i]); };
  const int dx = modulated ? 7 : 6;
  Modulation mod{modulated ? in(6) : nullptr, s.p.C};
  float *dz = Scratch(1, s.N * s.p.Size() * sizeof(float));
  ParallelFor(s.N, [&](int64_t nn) {   // z from x and the forward's mean and rstd; dz = dy silu'(z)
    std::vector<float> a(s.p.C), b(s.p.C);
    NormAffine(s, nn, in(2), in(3), in(4), in(5), mod, a.data(), b.data());
    const float *xn = in(1) + nn * s.p.Size(), *dyn = in(0) + nn * s.p.Size();
    float *dzn = dz + nn * s.p.Size();
    s.p.Sweep([&](int64_t c, int64_t, int64_t k) {   // silu'(z) = sigma(z) (1 + z (1 - sigma(z)))
      const float z = xn[k] * a[c] + b[c], sig = 1.f / (1.f + ExpF(-z));
      dzn[k] = dyn[k] * sig * (1.f + z * (1.f - sig));
    });
  });
  GroupNormBackward(s, dz, in(1), in(2), in(3), in(4), in(5), mod, out(dx), out(dx + 1), out(dx + 2),
                    modulated ? out(dx + 3) : nullptr);
  return 0;
}

int GroupNormSiluFwd(bool nhwc, void **params, int64_t **shapes) { return NormSiluFwd(nhwc, false, params, shapes); }
// x, gamma, beta, r -> y = silu(GroupNorm(x)) + r, mean, rstd: a ResNet block's second norm and its residual add
// (the backward is GroupNormSiluBwd's; dr = dy)
int GroupNormSiluAddFwd(bool nhwc, void **params, int64_t **shapes) {
  GnShape s = MakeGnShape(shapes[0], shapes[5], nhwc);
  auto in = [&](int i) { return static_cast<const float *>(params[i]); };
  auto out = [&](int i) { return static_cast<float *>(params[i]); };
  GroupNormForward<true>(s, in(0), in(1), in(2), Modulation(), out(4), out(5), out(6), in(3));
  return 0;
}
int GroupNormSiluBwd(bool nhwc, void **params, int64_t **shapes) { return NormSiluBwd(nhwc, false, params, shapes); }
int GroupNormModSiluFwd(bool nhwc, void **params, int64_t **shapes) { return NormSiluFwd(nhwc, true, params, shapes); }
int GroupNormModSiluBwd(bool nhwc, void **params, int64_t **shapes) { return NormSiluBwd(nhwc, true, params, shapes); }

// ---------------------------------------------------------------- the optimizer step
// One Adam step over all P parameters, in place, with the loss scaler's unscale and overflow check:
// inputs  w[0..P), m[0..P), v[0..P), g[0..P) (the scaled gradients), beta1_power [1], beta2_power [1],
//         hyper [5] = (lr, beta1, beta2, eps, loss scale); output finite [1] (1 or 0).
// g_hat = g * (1 / scale) (DynamicLossScaler.unscale); if any g_hat is inf or nan nothing changes (the step is
// skipped, as `if all_finite: adam(grads)`), else, as MindSpore's Adam (Kingma & Ba 2015, Alg. 1, with the bias
// correction folded into the step size) after nn.Adam's beta1_power *= beta1, beta2_power *= beta2:
//   m += (g_hat - m)(1 - beta1),  v += (g_hat^2 - v)(1 - beta2),  w -= lr sqrt(1 - beta2_power) / (1 - beta1_power)
//   * m / (sqrt(v) + eps).
// The work is split evenly over the concatenation of all parameters, not parameter by parameter.
struct FlatSpan {
  int64_t total = 0;
  std::vector<int64_t> offsets;  // offsets[i]: where parameter i starts in the concatenation
};
FlatSpan MakeFlatSpan(int P, int *ndims, int64_t **shapes) {
  FlatSpan f;
  f.offsets.resize(P + 1, 0);
  for (int i = 0; i < P; i++) {
    int64_t n = 1;
    for (int d = 0; d < ndims[i]; d++) n *= shapes[i][d];
    f.offsets[i + 1] = f.offsets[i] + n;
  }
  f.total = f.offsets[P];
  return f;
}

// fn(i, begin, end) over the pieces of parameters that chunk c of nc covers.
template <class F>
void ForPieces(const FlatSpan &f, int c, int nc, F fn) {
  const int64_t lo = f.total * c / nc, hi = f.total * (c + 1) / nc;
  const int P = static_cast<int>(f.offsets.size()) - 1;
  int i = static_cast<int>(std::upper_bound(f.offsets.begin(), f.offsets.end(), lo) - f.offsets.begin()) - 1;
  for (; i < P && f.offsets[i] < hi; i++) {
    const int64_t b = std::max(lo, f.offsets[i]) - f.offsets[i], e = std::min(hi, f.offsets[i + 1]) - f.offsets[i];
    if (e > b) fn(i, b, e);
  }
}

int AdamStep(int nparam, void **params, int *ndims, int64_t **shapes) {
  if ((nparam - 4) % 4 != 0 || nparam < 8) throw std::runtime_error("AdamStep: expected 4P + 3 inputs, 1 output");
  const int P = (nparam - 4) / 4;
  for (int i = 0; i < P; i++)
    for (int k = 1; k < 4; k++)
      if (ndims[i] != ndims[k * P + i] || !std::equal(shapes[i], shapes[i] + ndims[i], shapes[k * P + i]))
        throw std::runtime_error("AdamStep: a moment or gradient is not shaped like its parameter");
  auto f32 = [&](int i) { return static_cast<float *>(params[i]); };
  float *b1p = f32(4 * P), *b2p = f32(4 * P + 1);
  const float *hyper = f32(4 * P + 2);
  const float lr = hyper[0], beta1 = hyper[1], beta2 = hyper[2], eps = hyper[3], inv_scale = 1.0f / hyper[4];
  float *finite = f32(4 * P + 3);
  const FlatSpan span = MakeFlatSpan(P, ndims, shapes);
  const int nc = static_cast<int>(std::min<int64_t>(NumThreads(), std::max<int64_t>(1, span.total / 16384)));
  std::vector<char> ok(nc, 1);
  ThePool().parallel_for(nc, [&](int c, int n) {
    bool good = true;
    ForPieces(span, c, n, [&](int i, int64_t b, int64_t e) {
      const float *g = f32(3 * P + i);
      for (int64_t j = b; j < e; j++) good &= std::isfinite(g[j] * inv_scale);
    });
    ok[c] = good;
  });
  finite[0] = std::all_of(ok.begin(), ok.end(), [](char x) { return x != 0; }) ? 1.0f : 0.0f;
  if (finite[0] == 0.0f) return 0;
  const float beta1_power = b1p[0] * beta1, beta2_power = b2p[0] * beta2;
  const float step = lr * std::sqrt(1.0f - beta2_power) / (1.0f - beta1_power);
  const float a1 = 1.0f - beta1, a2 = 1.0f - beta2;
  ThePool().parallel_for(nc, [&](int c, int n) {
    ForPieces(span, c, n, [&](int i, int64_t b, int64_t e) {
      float *w = f32(i), *m = f32(P + i), *v = f32(2 * P + i);
      const float *g = f32(3 * P + i);
      for (int64_t j = b; j < e; j++) {
        const float gh = g[j] * inv_scale;
        m[j] += (gh - m[j]) * a1;
        v[j] += (gh * gh - v[j]) * a2;
        w[j] -= step * m[j] / (std::sqrt(v[j]) + eps);
      }
    });
  });
  b1p[0] = beta1_power;
  b2p[0] = beta2_power;
  return 0;
}

// The EMA of the weights (Polyak averaging; DDPM samples from it): w[0..P), flat [N], d [1] -> d [1], with
// flat = d * flat + (1 - d) * concat(w) in place. Each product and the sum are rounded as MindSpore's Mul and Add
// round them (no fused multiply-add), so it matches the ops path bit for bit.
__attribute__((optimize("fp-contract=off"))) void EmaSpan(float *s, const float *w, int64_t n, float d, float a) {
  for (int64_t j = 0; j < n; j++) s[j] = d * s[j] + a * w[j];
}

int EmaUpdate(int nparam, void **params, int *ndims, int64_t **shapes) {
  const int P = nparam - 3;
  if (P < 1) throw std::runtime_error("EmaUpdate: expected P + 2 inputs, 1 output");
  const FlatSpan span = MakeFlatSpan(P, ndims, shapes);
  if (ndims[P] != 1 || shapes[P][0] != span.total)
    throw std::runtime_error("EmaUpdate: the shadow buffer does not hold every parameter");
  float *flat = static_cast<float *>(params[P]);
  const float d = static_cast<const float *>(params[P + 1])[0], a = 1.0f - d;
  const int nc = static_cast<int>(std::min<int64_t>(NumThreads(), std::max<int64_t>(1, span.total / 16384)));
  ThePool().parallel_for(nc, [&](int c, int n) {
    ForPieces(span, c, n, [&](int i, int64_t b, int64_t e) {
      EmaSpan(flat + span.offsets[i] + b, static_cast<const float *>(params[i]) + b, e - b, d, a);
    });
  });
  static_cast<float *>(params[P + 2])[0] = d;
  return 0;
}

// ---------------------------------------------------------------- several Dense layers on one input
// The U-Net's per-block time MLPs all read the same activated time embedding x [B, K]: n Dense layers in one op,
// y_i = x w_i^T + b_i (w_i [O_i, K], b_i [O_i], MindSpore's nn.Dense layout), instead of 5n MindSpore ops a step.
//   DenseManyFwd(x, w_1..w_n, b_1..b_n) -> y_1..y_n                              nparam = 1 + 3n
//   DenseManyBwd(dy_1..dy_n, x, w_1..w_n) -> dx, dw_1..dw_n, db_1..db_n         nparam = 4n + 2
// dx = sum_i dy_i w_i, dw_i = dy_i^T x, db_i = sum_b dy_i.
int DenseManyFwd(int nparam, void **params, int64_t **shapes) {
  const int n = (nparam - 1) / 3;
  if (nparam != 1 + 3 * n || n < 1) throw std::runtime_error("DenseManyFwd: expected x, n weights, n biases, n outputs");
  const int64_t B = shapes[0][0], K = shapes[0][1];
  const float *x = static_cast<const float *>(params[0]);
  ParallelFor(n, [&](int64_t i) {
    const int64_t O = shapes[1 + i][0];
    const float *w = static_cast<const float *>(params[1 + i]), *bias = static_cast<const float *>(params[1 + n + i]);
    float *y = static_cast<float *>(params[1 + 2 * n + i]);
    for (int64_t b = 0; b < B; b++)
      for (int64_t o = 0; o < O; o++) {
        const float *xb = x + b * K, *wo = w + o * K;
        float acc = 0.f;
#pragma omp simd reduction(+ : acc)
        for (int64_t k = 0; k < K; k++) acc += xb[k] * wo[k];
        y[b * O + o] = acc + bias[o];
      }
  });
  return 0;
}

int DenseManyBwd(int nparam, void **params, int64_t **shapes) {
  const int n = (nparam - 2) / 4;
  if (nparam != 4 * n + 2 || n < 1) throw std::runtime_error("DenseManyBwd: expected n dy, x, n weights, 2n + 1 outputs");
  const int64_t B = shapes[n][0], K = shapes[n][1];
  const float *x = static_cast<const float *>(params[n]);
  auto dy = [&](int64_t i) { return static_cast<const float *>(params[i]); };
  auto w = [&](int64_t i) { return static_cast<const float *>(params[n + 1 + i]); };
  auto O = [&](int64_t i) { return shapes[n + 1 + i][0]; };
  float *dx = static_cast<float *>(params[2 * n + 1]);
  ParallelFor(n, [&](int64_t i) {   // dw_i [O, K] and db_i [O]
    float *dw = static_cast<float *>(params[2 * n + 2 + i]), *db = static_cast<float *>(params[3 * n + 2 + i]);
    const float *g = dy(i);
    for (int64_t o = 0; o < O(i); o++) {
      float *row = dw + o * K, sum = 0.f;
      std::fill(row, row + K, 0.f);
      for (int64_t b = 0; b < B; b++) {
        const float go = g[b * O(i) + o];
        sum += go;
        const float *xb = x + b * K;
#pragma omp simd
        for (int64_t k = 0; k < K; k++) row[k] += go * xb[k];
      }
      db[o] = sum;
    }
  });
  ParallelFor(B, [&](int64_t b) {   // dx [B, K]
    float *row = dx + b * K;
    std::fill(row, row + K, 0.f);
    for (int64_t i = 0; i < n; i++)
      for (int64_t o = 0; o < O(i); o++) {
        const float go = dy(i)[b * O(i) + o];
        const float *wo = w(i) + o * K;
#pragma omp simd
        for (int64_t k = 0; k < K; k++) row[k] += go * wo[k];
      }
  });
  return 0;
}

// ---------------------------------------------------------------- attention, channels-last
// qkv [B, N, 3, H, D]: the q, k and v of each of H heads at each of N = height * width positions, as an NHWC 1x1
// convolution writes them (channel (j H + h) D + d for j = q, k, v); out [B, N, H, D]. s = D^-1/2.
//   softmax attention (Vaswani et al. 2017, eq. 1): out_i = sum_j P_ij v_j, P_i = softmax_j(s q_i . k_j)
//   linear attention (Shen et al. 2018): out_n = C^T softmax_d(q_n), C = (s / N) sum_n softmax_n(k)_n v_n^T [D, D]
// Each (sample, head) is one task; its backward recomputes the forward (a few small products) instead of storing it.
// Their loops run along one head's D features (16 or 32 floats): a whole zmm register on AVX-512 (GCC's default
// for these CPUs is 256-bit vectors), 1.2x faster measured. No effect without AVX-512.
#pragma GCC push_options
#pragma GCC target("prefer-vector-width=512")

struct Heads {
  int64_t B, N, H, D;
  int64_t Row() const { return 3 * H * D; }  // one position's q, k and v
};

Heads MakeHeads(int ndim, const int64_t *s) {
  if (ndim != 5 || s[2] != 3) throw std::runtime_error("attention: qkv must be [B, N, 3, heads, D]");
  return Heads{s[0], s[1], s[3], s[4]};
}

// [N, D] <- one head's rows of a tensor whose position n starts at base + n * stride.
DDPM_MS_INLINE void GatherRows(const float *base, int64_t stride, int64_t N, int64_t D, float *dst) {
  for (int64_t n = 0; n < N; n++) std::memcpy(dst + n * D, base + n * stride, D * sizeof(float));
}


// The small products below are register-blocked on 16-float vectors (GCC's vector extension: one zmm register on
// AVX-512, two ymm on AVX2) when their contiguous dimension K is a multiple of 16; otherwise plain loops.
typedef float V16 __attribute__((vector_size(64)));
DDPM_MS_INLINE V16 Load16(const float *p) {
  V16 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
DDPM_MS_INLINE void Store16(float *p, V16 v) { std::memcpy(p, &v, sizeof v); }
#ifdef __AVX512F__
constexpr int kBlock = 8;  // accumulators per block: 8 zmm (of 32)
#else
constexpr int kBlock = 4;  // 4 x 2 ymm (of 16)
#endif

typedef int32_t I16 __attribute__((vector_size(64)));
DDPM_MS_INLINE V16 Exp16(V16 x) { return ExpT<V16, I16>(x); }

// Every lane of the result: the max (the sum) of v's 16 lanes, by a butterfly of lane swaps (lane i with i ^ w).
template <int W>
DDPM_MS_INLINE V16 Swap(V16 v) {
  constexpr I16 idx = {0 ^ W, 1 ^ W, 2 ^ W, 3 ^ W, 4 ^ W, 5 ^ W, 6 ^ W, 7 ^ W,
                       8 ^ W, 9 ^ W, 10 ^ W, 11 ^ W, 12 ^ W, 13 ^ W, 14 ^ W, 15 ^ W};
  return __builtin_shuffle(v, idx);
}
DDPM_MS_INLINE V16 Max(V16 a, V16 b) { return a > b ? a : b; }
DDPM_MS_INLINE V16 AllMax(V16 v) {
  v = Max(v, Swap<8>(v));
  v = Max(v, Swap<4>(v));
  v = Max(v, Swap<2>(v));
  return Max(v, Swap<1>(v));
}
DDPM_MS_INLINE V16 AllSum(V16 v) {
  v += Swap<8>(v);
  v += Swap<4>(v);
  v += Swap<2>(v);
  return v + Swap<1>(v);
}

// C [R, K] = alpha A [R, M] B [M, K].
DDPM_MS_INLINE void MatAB(const float *__restrict__ A, const float *__restrict__ B, float *__restrict__ C, int64_t R,
                          int64_t M, int64_t K, float alpha) {
  int64_t r = 0;
  if (K % 16 == 0) {
    for (; r + kBlock <= R; r += kBlock)   // kBlock rows at once: each loaded row of B feeds kBlock accumulators
      for (int64_t kc = 0; kc < K; kc += 16) {
        V16 acc[kBlock];
#pragma GCC unroll 8
        for (int i = 0; i < kBlock; i++) acc[i] = V16{};
        for (int64_t m = 0; m < M; m++) {
          const V16 b = Load16(B + m * K + kc);
#pragma GCC unroll 8
          for (int i = 0; i < kBlock; i++) acc[i] += A[(r + i) * M + m] * b;
        }
#pragma GCC unroll 8
        for (int i = 0; i < kBlock; i++) Store16(C + (r + i) * K + kc, alpha * acc[i]);
      }
  }
  for (; r < R; r++) {
    float *__restrict__ c = C + r * K;
    std::fill(c, c + K, 0.f);
    for (int64_t m = 0; m < M; m++) {
      const float a = alpha * A[r * M + m];
      const float *__restrict__ b = B + m * K;
#pragma omp simd
      for (int64_t k = 0; k < K; k++) c[k] += a * b[k];
    }
  }
}

// C [M, K] = alpha A^T B for A [R, M], B [R, K].
DDPM_MS_INLINE void MatAtB(const float *__restrict__ A, const float *__restrict__ B, float *__restrict__ C, int64_t R,
                           int64_t M, int64_t K, float alpha) {
  int64_t m0 = 0;
  if (K % 16 == 0) {
    for (; m0 + kBlock <= M; m0 += kBlock)   // kBlock rows of C at once, in registers over all R
      for (int64_t kc = 0; kc < K; kc += 16) {
        V16 acc[kBlock];
#pragma GCC unroll 8
        for (int i = 0; i < kBlock; i++) acc[i] = V16{};
        for (int64_t r = 0; r < R; r++) {
          const V16 b = Load16(B + r * K + kc);
#pragma GCC unroll 8
          for (int i = 0; i < kBlock; i++) acc[i] += A[r * M + m0 + i] * b;
        }
#pragma GCC unroll 8
        for (int i = 0; i < kBlock; i++) Store16(C + (m0 + i) * K + kc, alpha * acc[i]);
      }
  }
  if (m0 == M) return;
  std::fill(C + m0 * K, C + M * K, 0.f);
  for (int64_t r = 0; r < R; r++)
    for (int64_t m = m0; m < M; m++) {
      const float a = alpha * A[r * M + m];
      const float *__restrict__ b = B + r * K;
      float *__restrict__ c = C + m * K;
#pragma omp simd
      for (int64_t k = 0; k < K; k++) c[k] += a * b[k];
    }
}

DDPM_MS_INLINE void Transpose(const float *A, int64_t R, int64_t K, float *T) {  // T [K, R] = A [R, K]^T
  for (int64_t r = 0; r < R; r++)
    for (int64_t k = 0; k < K; k++) T[k * R + r] = A[r * K + k];
}

DDPM_MS_INLINE void SoftmaxRowsInPlace(float *__restrict__ x, int64_t R, int64_t K) {
  int64_t r = 0;
  if (K % 16 == 0) {   // rows of whole vectors, 4 at once (4 independent chains of shuffles and exps)
    constexpr int kRows = 4;
    for (; r + kRows <= R; r += kRows) {
      float *__restrict__ row = x + r * K;
      V16 mx[kRows], sum[kRows], inv[kRows];
#pragma GCC unroll 4
      for (int i = 0; i < kRows; i++) {
        mx[i] = Load16(row + i * K);
        for (int64_t k = 16; k < K; k += 16) mx[i] = Max(mx[i], Load16(row + i * K + k));
        mx[i] = AllMax(mx[i]);
        sum[i] = V16{};
      }
      for (int64_t k = 0; k < K; k += 16)
#pragma GCC unroll 4
        for (int i = 0; i < kRows; i++) {
          const V16 e = Exp16(Load16(row + i * K + k) - mx[i]);
          Store16(row + i * K + k, e);
          sum[i] += e;
        }
#pragma GCC unroll 4
      for (int i = 0; i < kRows; i++) inv[i] = 1.f / AllSum(sum[i]);
      for (int64_t k = 0; k < K; k += 16)
#pragma GCC unroll 4
        for (int i = 0; i < kRows; i++) Store16(row + i * K + k, Load16(row + i * K + k) * inv[i]);
    }
  }
  for (; r < R; r++) {
    float *__restrict__ row = x + r * K;
    float mx = row[0], sum = 0.f;
#pragma omp simd reduction(max : mx)
    for (int64_t k = 0; k < K; k++) mx = std::max(mx, row[k]);
#pragma omp simd reduction(+ : sum)
    for (int64_t k = 0; k < K; k++) sum += (row[k] = ExpF(row[k] - mx));
    const float inv = 1.f / sum;
#pragma omp simd
    for (int64_t k = 0; k < K; k++) row[k] *= inv;
  }
}

DDPM_MS_INLINE void SoftmaxColsInPlace(float *__restrict__ x, int64_t R, int64_t K) {  // over r, for each column k
  std::vector<float> mx(x, x + K), sum(K, 0.f);
  float *__restrict__ m = mx.data(), *__restrict__ s = sum.data();
  for (int64_t r = 1; r < R; r++)
#pragma omp simd
    for (int64_t k = 0; k < K; k++) m[k] = std::max(m[k], x[r * K + k]);
  for (int64_t r = 0; r < R; r++)
#pragma omp simd
    for (int64_t k = 0; k < K; k++) s[k] += (x[r * K + k] = ExpF(x[r * K + k] - m[k]));
  for (int64_t k = 0; k < K; k++) s[k] = 1.f / s[k];
  for (int64_t r = 0; r < R; r++)
#pragma omp simd
    for (int64_t k = 0; k < K; k++) x[r * K + k] *= s[k];
}

// dx = alpha y (dy - sum(dy y)) over each row, in place in dy ...
DDPM_MS_INLINE void SoftmaxRowsBackward(const float *__restrict__ y, float *__restrict__ dy, int64_t R, int64_t K,
                                        float alpha) {
  for (int64_t r = 0; r < R; r++) {
    const float *__restrict__ yr = y + r * K;
    float *__restrict__ g = dy + r * K;
    if (K % 16 == 0) {
      V16 dot = V16{};
      for (int64_t k = 0; k < K; k += 16) dot += Load16(g + k) * Load16(yr + k);
      dot = AllSum(dot);
      for (int64_t k = 0; k < K; k += 16) Store16(g + k, alpha * Load16(yr + k) * (Load16(g + k) - dot));
      continue;
    }
    float dot = 0.f;
#pragma omp simd reduction(+ : dot)
    for (int64_t k = 0; k < K; k++) dot += g[k] * yr[k];
#pragma omp simd
    for (int64_t k = 0; k < K; k++) g[k] = alpha * yr[k] * (g[k] - dot);
  }
}

// ... and over each column
DDPM_MS_INLINE void SoftmaxColsBackward(const float *__restrict__ y, float *__restrict__ dy, int64_t R, int64_t K) {
  std::vector<float> dots(K, 0.f);
  float *__restrict__ dot = dots.data();
  for (int64_t r = 0; r < R; r++)
#pragma omp simd
    for (int64_t k = 0; k < K; k++) dot[k] += dy[r * K + k] * y[r * K + k];
  for (int64_t r = 0; r < R; r++)
#pragma omp simd
    for (int64_t k = 0; k < K; k++) dy[r * K + k] = y[r * K + k] * (dy[r * K + k] - dot[k]);
}

// One head's q, k, v [N, D] each, and its task's scratch.
struct HeadQKV {
  float *q, *k, *v, *extra;
};

// Run Task<KD>::Run(s, b, h, head, args...) for every (sample b, head h), with KD the head width D as a compile-time
// constant where it is a common one (the small products' loops then unroll and stay in registers), else 0. A task
// per sample reads the sample's qkv once, in memory order, into [3, H, N, D] scratch (each head's q, k, v contiguous).
template <template <int> class Task, class... Args>
void ForEachHead(const Heads &s, const float *qkv, float *result, Args... args) {
  auto run = [&](auto kd) {
    constexpr int KD = decltype(kd)::value;
    const int64_t N = s.N, H = s.H, D = KD ? KD : s.D, J = Task<KD>::kOutputs;   // J: 1 (out) or 3 (dqkv)
    ParallelFor(s.B, [&](int64_t b) {
      float *heads = Scratch(0, (3 * H * N * D + J * H * N * D + Task<KD>::Extra(N, D)) * sizeof(float));
      float *outs = heads + 3 * H * N * D;   // [J, H, N, D]
      for (int64_t n = 0; n < N; n++) {
        const float *row = qkv + (b * N + n) * s.Row();
        for (int64_t jh = 0; jh < 3 * H; jh++) std::memcpy(heads + (jh * N + n) * D, row + jh * D, D * sizeof(float));
      }
      for (int64_t h = 0; h < H; h++) {
        HeadQKV a{heads + h * N * D, heads + (H + h) * N * D, heads + (2 * H + h) * N * D, outs + J * H * N * D};
        Task<KD>::Run(s, b, h, a, outs, args...);
      }
      for (int64_t n = 0; n < N; n++) {
        float *row = result + (b * N + n) * J * H * D;
        for (int64_t jh = 0; jh < J * H; jh++) std::memcpy(row + jh * D, outs + (jh * N + n) * D, D * sizeof(float));
      }
    });
  };
  switch (s.D) {   // the recipes' head width (16) and the tutorial's (32); any other D runs the generic loops
    case 16: run(std::integral_constant<int, 16>()); break;
    case 32: run(std::integral_constant<int, 32>()); break;
    default: run(std::integral_constant<int, 0>());
  }
}

// Head h's output rows [N, D] in the [J, H, N, D] scratch (j: 0 out or dq, 1 dk, 2 dv).
DDPM_MS_INLINE float *Rows(const Heads &s, int64_t D, float *outs, int64_t j, int64_t h) {
  return outs + (j * s.H + h) * s.N * D;
}

// The linear attention's softmaxed q (in place), k (in place) and context C [D, D], c = s / N.
DDPM_MS_INLINE void LinearAttentionContext(int64_t N, int64_t D, HeadQKV &a, float *C) {
  SoftmaxRowsInPlace(a.q, N, D);
  SoftmaxColsInPlace(a.k, N, D);
  MatAtB(a.k, a.v, C, N, D, D, 1.f / (std::sqrt(static_cast<float>(D)) * N));
}

template <int KD>
struct LinearAttentionForward {
  static int64_t Extra(int64_t, int64_t D) { return D * D; }
  static constexpr int kOutputs = 1;
  static void Run(const Heads &s, int64_t, int64_t h, HeadQKV a, float *outs) {
    const int64_t N = s.N, D = KD ? KD : s.D;
    float *C = a.extra;
    LinearAttentionContext(N, D, a, C);
    MatAB(a.q, C, Rows(s, D, outs, 0, h), N, D, D, 1.f);   // out_n = C^T q_n, as rows
  }
};

// With G = dL/dout [N, D] (rows), qs, ks the softmaxed q and k, c = s / N:
//   dC = qs^T G,  dqs = G C^T,  dks = c v dC^T,  dv = c ks dC,  then each softmax's backward.
template <int KD>
struct LinearAttentionBackward {
  static constexpr int kOutputs = 3;
  static int64_t Extra(int64_t N, int64_t D) { return 4 * D * D + N * D; }
  static void Run(const Heads &s, int64_t b, int64_t h, HeadQKV a, float *outs, const float *dout) {
    const int64_t N = s.N, D = KD ? KD : s.D;
    const float c = 1.f / (std::sqrt(static_cast<float>(D)) * N);
    float *C = a.extra, *Ct = C + D * D, *dC = Ct + D * D, *dCt = dC + D * D, *G = dCt + D * D;
    float *dq = Rows(s, D, outs, 0, h), *dk = Rows(s, D, outs, 1, h), *dv = Rows(s, D, outs, 2, h);
    LinearAttentionContext(N, D, a, C);
    GatherRows(dout + b * N * s.H * D + h * D, s.H * D, N, D, G);
    MatAtB(a.q, G, dC, N, D, D, 1.f);
    Transpose(C, D, D, Ct);
    Transpose(dC, D, D, dCt);
    MatAB(G, Ct, dq, N, D, D, 1.f);
    MatAB(a.v, dCt, dk, N, D, D, c);
    MatAB(a.k, dC, dv, N, D, D, c);
    SoftmaxRowsBackward(a.q, dq, N, D, 1.f);
    SoftmaxColsBackward(a.k, dk, N, D);
  }
};

// The softmax attention's probabilities P [N, N] of one head (kt [D, N]: scratch).
DDPM_MS_INLINE void AttentionProbabilities(int64_t N, int64_t D, const HeadQKV &a, float *kt, float *P) {
  Transpose(a.k, N, D, kt);
  MatAB(a.q, kt, P, N, D, N, 1.f / std::sqrt(static_cast<float>(D)));
  SoftmaxRowsInPlace(P, N, N);
}

template <int KD>
struct SoftmaxAttentionForward {
  static constexpr int kOutputs = 1;
  static int64_t Extra(int64_t N, int64_t D) { return N * N + N * D; }
  static void Run(const Heads &s, int64_t, int64_t h, HeadQKV a, float *outs) {
    const int64_t N = s.N, D = KD ? KD : s.D;
    float *P = a.extra, *kt = P + N * N;
    AttentionProbabilities(N, D, a, kt, P);
    MatAB(P, a.v, Rows(s, D, outs, 0, h), N, N, D, 1.f);
  }
};

// With G = dL/dout [N, D]: dP = G v^T, dS = s P (dP - rowsum(dP P)), dq = dS k, dk = dS^T q, dv = P^T G.
template <int KD>
struct SoftmaxAttentionBackward {
  static constexpr int kOutputs = 3;
  static int64_t Extra(int64_t N, int64_t D) { return 2 * N * N + 3 * N * D; }
  static void Run(const Heads &s, int64_t b, int64_t h, HeadQKV a, float *outs, const float *dout) {
    const int64_t N = s.N, D = KD ? KD : s.D;
    float *P = a.extra, *dS = P + N * N, *kt = dS + N * N, *vt = kt + N * D, *G = vt + N * D;
    float *dq = Rows(s, D, outs, 0, h), *dk = Rows(s, D, outs, 1, h), *dv = Rows(s, D, outs, 2, h);
    AttentionProbabilities(N, D, a, kt, P);
    GatherRows(dout + b * N * s.H * D + h * D, s.H * D, N, D, G);
    Transpose(a.v, N, D, vt);
    MatAB(G, vt, dS, N, D, N, 1.f);
    SoftmaxRowsBackward(P, dS, N, N, 1.f / std::sqrt(static_cast<float>(D)));
    MatAB(dS, a.k, dq, N, N, D, 1.f);
    MatAtB(dS, a.q, dk, N, N, D, 1.f);
    MatAtB(P, G, dv, N, N, D, 1.f);
  }
};

// The entry points of an attention (kernels/table.py ATTENTIONS): forward qkv -> out, backward dout, qkv -> dqkv.
template <template <int> class Forward>
int AttentionFwd(void **params, int *ndims, int64_t **shapes) {
  ForEachHead<Forward>(MakeHeads(ndims[0], shapes[0]), static_cast<const float *>(params[0]),
                       static_cast<float *>(params[1]));
  return 0;
}

template <template <int> class Backward>
int AttentionBwd(void **params, int *ndims, int64_t **shapes) {
  ForEachHead<Backward>(MakeHeads(ndims[1], shapes[1]), static_cast<const float *>(params[1]),
                        static_cast<float *>(params[2]), static_cast<const float *>(params[0]));
  return 0;
}

// ---------------------------------------------------------------- depthwise weights' gradient
// dw[c, 0, kh, kw] = sum_{n, oh, ow} dy[n, c, oh, ow] x[n, c, oh S + kh - P, ow S + kw - P] (x zero outside), and
// db[c] = sum dy: the weights' gradient of a depthwise convolution (groups = IC = OC) wider than 3x3, which oneDNN
// 3.10's depthwise JIT does not take ("kw > 3"); its generic grouped fallback ran at 6-17 GFLOP/s on the tutorial's
// 7x7. Channels are the vector lanes. Each thread takes a run of samples; per sample it copies x (with its zero
// border) and dy channels-last into buffers that stay in cache, then sums every (16 channels, kernel row) with the
// KW taps in registers. The threads' partial sums are added at the end.
constexpr int kU = 4;  // output columns per step of the stride-1 loop

struct DwPlan {
  int64_t N, C, H, W, OH, OW, KH, KW, S, P, Hp, Wp;
  bool nhwc;
};

DwPlan MakeDwPlan(const ConvGeometry &g) {
  DwPlan d{g.x[0], g.x[1], g.x[2], g.x[3], g.y[2], g.y[3], g.w[3], g.w[4], g.stride[0], g.pad_l[0], 0, 0,
           g.act == tag::nhwc};
  d.Hp = (d.OH - 1) * d.S + d.KH;
  d.Wp = (d.OW - 1) * d.S + d.KW;
  return d;
}

// One sample src [C, H, W] (nhwc: [H, W, C]) into dst [Hp, Wp, C] at row/column offset `off` >= 0, zero elsewhere.
void PadSample(const float *src, bool nhwc, int64_t C, int64_t H, int64_t W, int64_t off, int64_t Hp, int64_t Wp,
               float *dst) {
  const int64_t h1 = std::min(H, Hp - off), w1 = std::min(W, Wp - off);   // rows and columns of src that land
  std::fill(dst, dst + off * Wp * C, 0.f);
  std::fill(dst + (off + h1) * Wp * C, dst + Hp * Wp * C, 0.f);
  for (int64_t h = 0; h < h1; h++) {
    float *row = dst + (h + off) * Wp * C;
    std::fill(row, row + off * C, 0.f);
    std::fill(row + (off + w1) * C, row + Wp * C, 0.f);
    if (nhwc) {
      std::memcpy(row + off * C, src + h * W * C, w1 * C * sizeof(float));
    } else {
      for (int64_t w = 0; w < w1; w++)
        for (int64_t c = 0; c < C; c++) row[(w + off) * C + c] = src[(c * H + h) * W + w];
    }
  }
}

template <int KW>
void DwBwdWeightsRows(const DwPlan &d, const float *x, const float *dy, float *dw, float *db) {
  const int64_t C = d.C, blocks = (C + 15) / 16, per = blocks * (d.KH * KW + 1);  // acc[blocks][KH][KW], dsum[blocks]
  const int T = static_cast<int>(std::min<int64_t>(d.N, NumThreads()));
  std::vector<V16> part(T * per);
  ThePool().parallel_for(T, [&](int t, int nt) {
    // + 16 floats: the last block's lanes past C read (and discard) up to 15 floats beyond a buffer's last pixel
    float *xp = Scratch(2, (d.Hp * d.Wp * C + 16) * sizeof(float)), *dyp = Scratch(3, (d.OH * d.OW * C + 16) * sizeof(float));
    V16 *mine = part.data() + t * per;
    for (int64_t n = d.N * t / nt; n < d.N * (t + 1) / nt; n++) {
      PadSample(x + n * C * d.H * d.W, d.nhwc, C, d.H, d.W, d.P, d.Hp, d.Wp, xp);
      PadSample(dy + n * C * d.OH * d.OW, d.nhwc, C, d.OH, d.OW, 0, d.OH, d.OW, dyp);
      for (int64_t cb = 0; cb < blocks; cb++) {
        V16 dsum = mine[blocks * d.KH * KW + cb];
        for (int64_t kh = 0; kh < d.KH; kh++) {
          V16 *out = mine + (cb * d.KH + kh) * KW, acc[KW];
          for (int i = 0; i < KW; i++) acc[i] = out[i];
          for (int64_t oh = 0; oh < d.OH; oh++) {
            const float *xr = xp + (oh * d.S + kh) * d.Wp * C + cb * 16, *dr = dyp + oh * d.OW * C + cb * 16;
            int64_t ow = 0;
            if (d.S == 1)   // kU columns at once: their kU + KW - 1 inputs loaded once for kU * KW products
              for (; ow + kU <= d.OW; ow += kU) {
                V16 g[kU], xv[kU + KW - 1];
#pragma GCC unroll 16
                for (int u = 0; u < kU; u++) g[u] = Load16(dr + (ow + u) * C);
#pragma GCC unroll 16
                for (int j = 0; j < kU + KW - 1; j++) xv[j] = Load16(xr + (ow + j) * C);
#pragma GCC unroll 16
                for (int u = 0; u < kU; u++) {
#pragma GCC unroll 8
                  for (int i = 0; i < KW; i++) acc[i] += g[u] * xv[u + i];
                  if (kh == 0) dsum += g[u];
                }
              }
            for (; ow < d.OW; ow++) {
              const V16 g = Load16(dr + ow * C);
              const float *xw = xr + ow * d.S * C;
#pragma GCC unroll 8
              for (int i = 0; i < KW; i++) acc[i] += g * Load16(xw + i * C);
              if (kh == 0) dsum += g;
            }
          }
          for (int i = 0; i < KW; i++) out[i] = acc[i];
        }
        mine[blocks * d.KH * KW + cb] = dsum;
      }
    }
  });
  for (int64_t c = 0; c < C; c++) {   // lanes past C are never read back
    const int64_t cb = c / 16, l = c % 16;
    for (int64_t j = 0; j < d.KH * KW; j++) {
      float a = 0.f;
      for (int t = 0; t < T; t++) a += part[t * per + cb * d.KH * KW + j][l];
      dw[c * d.KH * KW + j] = a;
    }
    if (db) {
      float a = 0.f;
      for (int t = 0; t < T; t++) a += part[t * per + blocks * d.KH * KW + cb][l];
      db[c] = a;
    }
  }
}

// Whether DepthwiseBwdWeights takes this geometry: depthwise (one input and one output channel per group), KW 5 or 7.
bool DepthwiseWide(const ConvGeometry &g) {
  return g.groups > 1 && g.w.size() == 5 && g.w[1] == 1 && g.w[2] == 1 && (g.w[4] == 5 || g.w[4] == 7) &&
         g.groups == g.x[1];
}

// x, dy: MindSpore's buffers in g.act; dw [C, 1, KH, KW] (OIHW); db [C] or null.
void DepthwiseBwdWeights(const ConvGeometry &g, const float *x, const float *dy, float *dw, float *db) {
  const DwPlan d = MakeDwPlan(g);
  if (d.KW == 7)
    DwBwdWeightsRows<7>(d, x, dy, dw, db);
  else
    DwBwdWeightsRows<5>(d, x, dy, dw, db);
}

#pragma GCC pop_options

}  // namespace

// Every exported entry point is one DDPM_MS_EXPORT line: it defines the AOT function (its body run through Guard)
// and records its name, which DdpmMsKernelNames() reports so that the loader can check it against kernels/table.py.
std::vector<std::string> &ExportedNames() {
  static std::vector<std::string> names;
  return names;
}
struct NameRecord {
  explicit NameRecord(const char *name) { ExportedNames().push_back(name); }
};

#define DDPM_MS_EXPORT(name, call)                                                                          \
  static NameRecord record_##name(#name);                                                                   \
  extern "C" int name(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *, \
                      void *) {                                                                             \
    (void)ndims;                                                                                            \
    return Guard(#name, nparam, dtypes, [&] { return call; });                                             \
  }

// The geometries (stride S, padding P) come from kernels/table.py (CONV_GEOMETRIES) through the build's
// -DDDPM_MS_CONV_GEOMETRIES="X(1,0) X(1,1) ...".
#define DDPM_MS_CONV_LAYOUT(S, P, SUFFIX, NHWC)                                                      \
  DDPM_MS_EXPORT(ConvFwd_s##S##p##P##SUFFIX, ConvFwd(S, P, NHWC, false, false, params, shapes))   \
  DDPM_MS_EXPORT(ConvBwdData_s##S##p##P##SUFFIX, ConvBwdData(S, P, NHWC, params, shapes))         \
  DDPM_MS_EXPORT(ConvBwdWeights_s##S##p##P##SUFFIX, ConvBwdWeights(S, P, NHWC, params, shapes))   \
  DDPM_MS_EXPORT(ConvBwd_s##S##p##P##SUFFIX, ConvBwd(S, P, NHWC, false, params, shapes))          \
  DDPM_MS_EXPORT(ConvBiasFwd_s##S##p##P##SUFFIX, ConvFwd(S, P, NHWC, true, false, params, shapes)) \
  DDPM_MS_EXPORT(ConvBiasBwd_s##S##p##P##SUFFIX, ConvBwd(S, P, NHWC, true, params, shapes))       \
  DDPM_MS_EXPORT(ConvAddFwd_s##S##p##P##SUFFIX, ConvFwd(S, P, NHWC, false, true, params, shapes))  \
  DDPM_MS_EXPORT(ConvBiasAddFwd_s##S##p##P##SUFFIX, ConvFwd(S, P, NHWC, true, true, params, shapes))
#define DDPM_MS_CONV(S, P) DDPM_MS_CONV_LAYOUT(S, P, , false) DDPM_MS_CONV_LAYOUT(S, P, _nhwc, true)
#define X(S, P) DDPM_MS_CONV(S, P)
DDPM_MS_CONV_GEOMETRIES
#undef X

// The norms, in both layouts: Name (NCHW) and Name_nhwc.
#define DDPM_MS_NORM(name)                                    \
  DDPM_MS_EXPORT(name, name(false, params, shapes))           \
  DDPM_MS_EXPORT(name##_nhwc, name(true, params, shapes))
DDPM_MS_NORM(GroupNormFwd)
DDPM_MS_NORM(GroupNormBwd)
DDPM_MS_NORM(GroupNormSiluFwd)
DDPM_MS_NORM(GroupNormSiluBwd)
DDPM_MS_NORM(GroupNormModSiluFwd)
DDPM_MS_NORM(GroupNormModSiluBwd)
DDPM_MS_NORM(GroupNormSiluAddFwd)
DDPM_MS_NORM(ChannelNormFwd)
DDPM_MS_NORM(ChannelNormBwd)
DDPM_MS_NORM(ChannelNormAddFwd)
DDPM_MS_EXPORT(SoftmaxFwd_last, SoftmaxFwd(true, params, ndims, shapes))
DDPM_MS_EXPORT(SoftmaxBwd_last, SoftmaxBwd(true, params, ndims, shapes))
DDPM_MS_EXPORT(SoftmaxFwd_penult, SoftmaxFwd(false, params, ndims, shapes))
DDPM_MS_EXPORT(SoftmaxBwd_penult, SoftmaxBwd(false, params, ndims, shapes))
DDPM_MS_EXPORT(EltwiseFwd_gelu, EltwiseFwd(dnnl::algorithm::eltwise_gelu_tanh, 0.f, params, ndims, shapes))
DDPM_MS_EXPORT(EltwiseBwd_gelu, EltwiseBwd(dnnl::algorithm::eltwise_gelu_tanh, 0.f, params, ndims, shapes))
DDPM_MS_EXPORT(EltwiseFwd_silu, EltwiseFwd(dnnl::algorithm::eltwise_swish, 1.f, params, ndims, shapes))
DDPM_MS_EXPORT(EltwiseBwd_silu, EltwiseBwd(dnnl::algorithm::eltwise_swish, 1.f, params, ndims, shapes))
DDPM_MS_EXPORT(AdamStep, AdamStep(nparam, params, ndims, shapes))
DDPM_MS_EXPORT(EmaUpdate, EmaUpdate(nparam, params, ndims, shapes))
DDPM_MS_EXPORT(LinearAttentionFwd, AttentionFwd<LinearAttentionForward>(params, ndims, shapes))
DDPM_MS_EXPORT(LinearAttentionBwd, AttentionBwd<LinearAttentionBackward>(params, ndims, shapes))
DDPM_MS_EXPORT(SoftmaxAttentionFwd, AttentionFwd<SoftmaxAttentionForward>(params, ndims, shapes))
DDPM_MS_EXPORT(SoftmaxAttentionBwd, AttentionBwd<SoftmaxAttentionBackward>(params, ndims, shapes))
DDPM_MS_EXPORT(DenseManyFwd, DenseManyFwd(nparam, params, shapes))
DDPM_MS_EXPORT(DenseManyBwd, DenseManyBwd(nparam, params, shapes))

// Forget the profile so far (DDPM_MS_KERNEL_PROFILE): called after the warm-up steps that build the primitives.
extern "C" void DdpmMsKernelProfileReset() {
  if (Profile::Get()) Profile::Get()->Reset();
}

// The pool under load, for the tests: `loops` parallel loops of 2..4 items, each item counted; returns how many
// items ran other than once (0), or hangs if a loop loses a count.
extern "C" int64_t DdpmMsPoolStress(int64_t loops) {
  std::vector<std::atomic<int>> hits(4);
  int64_t wrong = 0;
  for (int64_t l = 0; l < loops; l++) {
    int n = 2 + static_cast<int>(l % 3);
    for (int i = 0; i < n; i++) hits[i].store(0);
    ThePool().parallel_for(n, [&](int i, int) { hits[i].fetch_add(1); });
    for (int i = 0; i < n; i++) wrong += hits[i].load() != 1;
  }
  return wrong;
}

// How many threads the kernels' pool runs (DDPM_MS_KERNEL_THREADS, else the CPUs this process may use).
extern "C" int DdpmMsKernelThreads() { return NumThreads(); }

// A version stamp the loader checks after dlopen, so a stale cached build is never used.
extern "C" int DdpmMsKernelAbi() { return DDPM_MS_ABI; }

// The exported entry points, comma-separated, in the order above.
extern "C" const char *DdpmMsKernelNames() {
  static const std::string joined = [] {
    std::string s;
    for (const auto &n : ExportedNames()) s += (s.empty() ? "" : ",") + n;
    return s;
  }();
  return joined.c_str();
}
