// The vanilla, LSTM and GRU layers on CPU, forward and backward, as XLA FFI handlers.
//
// Forward, for t in loop order:  A_t = [x_t, h_{t-1}] [W_x; W_h] + b  (or U_t + h_{t-1} W_h + b when XLA
//   projected the input with a cell's own projection), the gate math fused into the epilogue of the GEMM
//   tile, writing h_t (c_t) and, when differentiated, the gate activations the backward needs.
// Backward, for t in the opposite order: the gate gradients dU_t (dR_t for the GRU's recurrent part) from
//   dh, dc and the saved activations; dh_{t-1} = direct + dR_t W_h^T; and, while dU_t is in cache,
//   dW_h += h_{t-1}^T dR_t, dW_x += x_t^T dU_t, db += sum dU_t.
//
// Every GEMM runs on a hand-written FMA microkernel (AVX-512: up to 12 rows x 32 columns; AVX2: 6 x 16)
// over weights packed once per call into panels of kNR columns, ordered by unit block then gate, so the
// work of one block of kNR hidden units (all its gates and their gate math) is one item of a phase-ordered
// queue that the calling thread and helpers from XLA's pool drain (see "Threads" below).
#include <immintrin.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <memory>
#include <thread>
#include <utility>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

enum CellKind : int64_t { kVanilla = 0, kLstm = 1, kGru = 2 };

int gates_of(int64_t cell) { return cell == kLstm ? 4 : cell == kGru ? 3 : 1; }

// ---------------------------------------------------------------------------------------------------
// One vector type V of kW lanes: AVX-512 where the compiler targets it (the build adds -mavx512f on CPUs
// that have it), else AVX2. The gate math and the microkernel are written once against these.
// ---------------------------------------------------------------------------------------------------

#if defined(__AVX512F__)
using V = __m512;
using VI = __m512i;
constexpr int kW = 16;
inline V vset(float x) { return _mm512_set1_ps(x); }
inline V vadd(V a, V b) { return _mm512_add_ps(a, b); }
inline V vsub(V a, V b) { return _mm512_sub_ps(a, b); }
inline V vmul(V a, V b) { return _mm512_mul_ps(a, b); }
inline V vdiv(V a, V b) { return _mm512_div_ps(a, b); }
inline V vmin(V a, V b) { return _mm512_min_ps(a, b); }
inline V vmax(V a, V b) { return _mm512_max_ps(a, b); }
inline V vfmadd(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }    // a b + c
inline V vfnmadd(V a, V b, V c) { return _mm512_fnmadd_ps(a, b, c); }  // c - a b
inline V vround(V x) { return _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
inline VI vcvt(V x) { return _mm512_cvtps_epi32(x); }
inline VI vset1i(int x) { return _mm512_set1_epi32(x); }
inline VI vaddi(VI a, VI b) { return _mm512_add_epi32(a, b); }
inline VI vshl23(VI a) { return _mm512_slli_epi32(a, 23); }
inline VI vandi(VI a, VI b) { return _mm512_and_si512(a, b); }
inline VI vori(VI a, VI b) { return _mm512_or_si512(a, b); }
inline V asf(VI a) { return _mm512_castsi512_ps(a); }
inline VI asi(V a) { return _mm512_castps_si512(a); }
inline V vselect_lt(V a, V b, V if_lt, V otherwise) {  // a < b ? if_lt : otherwise
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a, b, _CMP_LT_OQ), otherwise, if_lt);
}
inline V vbroadcast(const float* p) { return _mm512_set1_ps(*p); }
inline V vload(const float* p) { return _mm512_loadu_ps(p); }
inline void vstore(float* p, V v) { _mm512_storeu_ps(p, v); }
// Loads and stores of the first n (< kW allowed) lanes.
inline V ld(const float* p, int n) {
  return n >= kW ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n) - 1), p);
}
inline void st(float* p, V v, int n) {
  if (n >= kW)
    _mm512_storeu_ps(p, v);
  else
    _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << n) - 1), v);
}
constexpr int kMaxMR = 12;  // 24 accumulators of 32 registers
#else
using V = __m256;
using VI = __m256i;
constexpr int kW = 8;
inline V vset(float x) { return _mm256_set1_ps(x); }
inline V vadd(V a, V b) { return _mm256_add_ps(a, b); }
inline V vsub(V a, V b) { return _mm256_sub_ps(a, b); }
inline V vmul(V a, V b) { return _mm256_mul_ps(a, b); }
inline V vdiv(V a, V b) { return _mm256_div_ps(a, b); }
inline V vmin(V a, V b) { return _mm256_min_ps(a, b); }
inline V vmax(V a, V b) { return _mm256_max_ps(a, b); }
inline V vfmadd(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
inline V vfnmadd(V a, V b, V c) { return _mm256_fnmadd_ps(a, b, c); }
inline V vround(V x) { return _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
inline VI vcvt(V x) { return _mm256_cvtps_epi32(x); }
inline VI vset1i(int x) { return _mm256_set1_epi32(x); }
inline VI vaddi(VI a, VI b) { return _mm256_add_epi32(a, b); }
inline VI vshl23(VI a) { return _mm256_slli_epi32(a, 23); }
inline VI vandi(VI a, VI b) { return _mm256_and_si256(a, b); }
inline VI vori(VI a, VI b) { return _mm256_or_si256(a, b); }
inline V asf(VI a) { return _mm256_castsi256_ps(a); }
inline VI asi(V a) { return _mm256_castps_si256(a); }
inline V vselect_lt(V a, V b, V if_lt, V otherwise) {
  return _mm256_blendv_ps(otherwise, if_lt, _mm256_cmp_ps(a, b, _CMP_LT_OQ));
}
inline V vbroadcast(const float* p) { return _mm256_broadcast_ss(p); }
inline V vload(const float* p) { return _mm256_loadu_ps(p); }
inline void vstore(float* p, V v) { _mm256_storeu_ps(p, v); }
inline VI lane_mask(int n) { return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)); }
inline V ld(const float* p, int n) { return n >= kW ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, lane_mask(n)); }
inline void st(float* p, V v, int n) {
  if (n >= kW)
    _mm256_storeu_ps(p, v);
  else
    _mm256_maskstore_ps(p, lane_mask(n), v);
}
constexpr int kMaxMR = 6;  // 12 accumulators of 16 registers
#endif
constexpr int kNR = 2 * kW;  // columns per packed panel (hidden units per block): two registers

// ---------------------------------------------------------------------------------------------------
// Vector math: Cephes-style exp (about 1 ulp), tanh with a small-argument polynomial, exact-ish sigmoid.
// ---------------------------------------------------------------------------------------------------

inline V exp_ps(V x) {
  x = vmin(vmax(x, vset(-87.3f)), vset(88.3f));
  V n = vround(vmul(x, vset(1.44269504088896341f)));
  V r = vfnmadd(n, vset(0.693359375f), x);
  r = vfnmadd(n, vset(-2.12194440e-4f), r);
  V p = vset(1.9875691500E-4f);
  p = vfmadd(p, r, vset(1.3981999507E-3f));
  p = vfmadd(p, r, vset(8.3334519073E-3f));
  p = vfmadd(p, r, vset(4.1665795894E-2f));
  p = vfmadd(p, r, vset(1.6666665459E-1f));
  p = vfmadd(p, r, vset(5.0000001201E-1f));
  p = vfmadd(p, vmul(r, r), vadd(r, vset(1.0f)));
  return vmul(p, asf(vshl23(vaddi(vcvt(n), vset1i(127)))));
}

inline V sigmoid_ps(V x) {
  const V one = vset(1.0f);
  return vdiv(one, vadd(one, exp_ps(vsub(vset(0.0f), x))));
}

inline V tanh_ps(V x) {
  const VI sign = vset1i(static_cast<int>(0x80000000u));
  V ax = asf(vandi(asi(x), vset1i(0x7fffffff)));
  // |x| >= 0.625: 1 - 2 / (exp(2|x|) + 1), sign restored
  V e = exp_ps(vadd(ax, ax));
  V big = vsub(vset(1.0f), vdiv(vset(2.0f), vadd(e, vset(1.0f))));
  big = asf(vori(asi(big), vandi(sign, asi(x))));
  // |x| < 0.625: odd polynomial (Cephes tanhf), no cancellation near 0
  V z = vmul(x, x);
  V p = vset(-5.70498872745E-3f);
  p = vfmadd(p, z, vset(2.06390887954E-2f));
  p = vfmadd(p, z, vset(-5.37397155531E-2f));
  p = vfmadd(p, z, vset(1.33314422036E-1f));
  p = vfmadd(p, z, vset(-3.33332819422E-1f));
  V small = vfmadd(vmul(p, z), x, x);
  return vselect_lt(ax, vset(0.625f), small, big);
}

// ---------------------------------------------------------------------------------------------------
// GEMM: C[MR x kNR] (row stride ldc) (+)= A[MR x K] x B (one packed panel, K x kNR contiguous).
// A is given by a and lda: its rows (A[r][k] = a[r * lda + k]), or transposed (A[r][k] = a[k * lda + r]: the
// columns of a matrix, for the weight gradients h_{t-1}^T dR_t).
// ---------------------------------------------------------------------------------------------------

// Named accumulators, not an array: GCC keeps an array of vectors on the stack (a third of the speed).
#define RNN_ROW(r)                                                                          \
  if constexpr (MR > r) {                                                                   \
    const V av = vbroadcast(TRANS ? a + k * lda + r : a + r * lda + k);                     \
    c##r##0 = vfmadd(av, b0, c##r##0);                                                      \
    c##r##1 = vfmadd(av, b1, c##r##1);                                                      \
  }
#define RNN_LOAD(r)                                 \
  if constexpr (MR > r) {                           \
    c##r##0 = vload(c + r * ldc);                   \
    c##r##1 = vload(c + r * ldc + kW);              \
  }
#define RNN_STORE(r)                                \
  if constexpr (MR > r) {                           \
    vstore(c + r * ldc, c##r##0);                   \
    vstore(c + r * ldc + kW, c##r##1);              \
  }

template <int MR, bool ACC, bool TRANS>
void micro(const float* __restrict a, int64_t lda, const float* __restrict b, int64_t K, float* __restrict c,
           int64_t ldc) {
  static_assert(MR <= kMaxMR && kMaxMR <= 12);
  const V z = vset(0.0f);
  V c00 = z, c01 = z, c10 = z, c11 = z, c20 = z, c21 = z, c30 = z, c31 = z, c40 = z, c41 = z, c50 = z, c51 = z,
    c60 = z, c61 = z, c70 = z, c71 = z, c80 = z, c81 = z, c90 = z, c91 = z, c100 = z, c101 = z, c110 = z, c111 = z;
  if constexpr (ACC) {
    RNN_LOAD(0) RNN_LOAD(1) RNN_LOAD(2) RNN_LOAD(3) RNN_LOAD(4) RNN_LOAD(5)
    RNN_LOAD(6) RNN_LOAD(7) RNN_LOAD(8) RNN_LOAD(9) RNN_LOAD(10) RNN_LOAD(11)
  }
  for (int64_t k = 0; k < K; ++k) {
    const V b0 = vload(b + k * kNR), b1 = vload(b + k * kNR + kW);
    RNN_ROW(0) RNN_ROW(1) RNN_ROW(2) RNN_ROW(3) RNN_ROW(4) RNN_ROW(5)
    RNN_ROW(6) RNN_ROW(7) RNN_ROW(8) RNN_ROW(9) RNN_ROW(10) RNN_ROW(11)
  }
  RNN_STORE(0) RNN_STORE(1) RNN_STORE(2) RNN_STORE(3) RNN_STORE(4) RNN_STORE(5)
  RNN_STORE(6) RNN_STORE(7) RNN_STORE(8) RNN_STORE(9) RNN_STORE(10) RNN_STORE(11)
}
#undef RNN_ROW
#undef RNN_LOAD
#undef RNN_STORE

template <bool ACC, bool TRANS, int... MRs>
void micro_dispatch(std::integer_sequence<int, MRs...>, int mr, const float* a, int64_t lda, const float* b,
                    int64_t K, float* c, int64_t ldc) {
  ((mr == MRs + 1 ? micro<MRs + 1, ACC, TRANS>(a, lda, b, K, c, ldc) : void()), ...);
}

// C = A B for mr <= kMaxMR rows of A (rows of a).
void micro_any(int mr, const float* a, int64_t lda, const float* b, int64_t K, float* c, int64_t ldc,
               bool accumulate = false) {
  constexpr auto rows = std::make_integer_sequence<int, kMaxMR>{};
  if (accumulate)
    micro_dispatch<true, false>(rows, mr, a, lda, b, K, c, ldc);
  else
    micro_dispatch<false, false>(rows, mr, a, lda, b, K, c, ldc);
}

// C (+)= A B with A = columns of a (A[r][k] = a[k * lda + r]).
void micro_transposed(int mr, const float* a, int64_t lda, const float* b, int64_t K, float* c, int64_t ldc,
                      bool accumulate) {
  constexpr auto rows = std::make_integer_sequence<int, kMaxMR>{};
  if (accumulate)
    micro_dispatch<true, true>(rows, mr, a, lda, b, K, c, ldc);
  else
    micro_dispatch<false, true>(rows, mr, a, lda, b, K, c, ldc);
}

// Row blocks of at most kMaxMR rows, as even as possible (AVX2, 32 rows: 6 6 5 5 5 5, not 6 x 5 + 2).
std::vector<int64_t> row_blocks(int64_t N) {
  int64_t nrb = (N + kMaxMR - 1) / kMaxMR, base = N / nrb, extra = N % nrb;
  std::vector<int64_t> starts{0};
  for (int64_t b = 0; b < nrb; ++b) starts.push_back(starts.back() + base + (b < extra ? 1 : 0));
  return starts;
}

struct AlignedBuf {
  float* p = nullptr;
  explicit AlignedBuf(size_t n) { p = static_cast<float*>(std::aligned_alloc(64, ((n * 4 + 63) / 64) * 64 + 64)); }
  ~AlignedBuf() { std::free(p); }
  AlignedBuf(const AlignedBuf&) = delete;
  AlignedBuf& operator=(const AlignedBuf&) = delete;
};

// ---------------------------------------------------------------------------------------------------
// Threads: a phase-ordered work queue, drained by the calling thread and helpers from XLA's own intra-op
// thread pool.
//
// Work is a sequence of phases (pack W_h, then step 0, step 1, ...), each of `blocks` items (one per unit
// block). Items are claimed in order from one counter; an item of phase p starts once every item of phase
// p-1 is done (one monotonic counter). Nobody waits for a particular thread: a helper that starts late, or
// never, only means fewer hands, so the call cannot deadlock when XLA runs it on a pool thread. Helpers come
// from XLA's pool where it has enough workers, so a call adds no threads beside XLA's own on the same cores.
// ---------------------------------------------------------------------------------------------------

// Wait until `counter >= target`: spin for up to 1 ms, then yield (a shared machine: do not burn a core
// another process wants). A spin-count threshold instead (4000 pauses, about 60 us here) made waits
// self-sustaining: the thread that yielded came back late, so the other waited past the threshold next step.
void wait_until(const std::atomic<int64_t>& counter, int64_t target) {
  if (counter.load(std::memory_order_acquire) >= target) return;
  const auto start = std::chrono::steady_clock::now();
  bool patient = true;
  for (int spins = 1; counter.load(std::memory_order_acquire) < target; ++spins) {
    if (!patient) {
      std::this_thread::yield();
      continue;
    }
    _mm_pause();
    if (spins % 256 == 0 && std::chrono::steady_clock::now() - start > std::chrono::milliseconds(1)) patient = false;
  }
}

struct PhaseQueue {
  PhaseQueue(int64_t blocks, int64_t phases) : blocks(blocks), phases(phases) {}
  int64_t blocks, phases;
  alignas(64) std::atomic<int64_t> next{0};  // the next item to claim: phase * blocks + block
  alignas(64) std::atomic<int64_t> done{0};  // items finished, in claim order per phase
};

// Claim and run items until none is left: early(phase, block, scratch) before the wait (work that needs
// nothing from the phase before, only phase 0: the packed weights), then item(phase, block, scratch); per-thread
// scratch floats.
template <class E, class F>
void drain(PhaseQueue& q, size_t scratch_floats, E& early, F& item) {
  AlignedBuf scratch(scratch_floats);
  for (;;) {
    const int64_t idx = q.next.fetch_add(1, std::memory_order_relaxed);
    if (idx >= q.phases * q.blocks) return;
    const int64_t phase = idx / q.blocks;
    if (phase > 0) {
      wait_until(q.done, q.blocks);
      early(phase, idx % q.blocks, scratch.p);
    }
    wait_until(q.done, phase * q.blocks);
    item(phase, idx % q.blocks, scratch.p);
    q.done.fetch_add(1, std::memory_order_acq_rel);
  }
}

int allowed_cpus() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) != 0) return 1;
  return std::max(1, CPU_COUNT(&set));
}

// Threads for a layer: one per CPU allowed, at most one per unit block, one when a step is too small
// for a hand-off to pay (under about a million flops per step, e.g. N=1, H=32). RNN_JAX_NATIVE_THREADS=n
// asks for n (still at most the CPUs allowed and the unit blocks) whatever the size: the tests use it.
int team_size(int64_t N, int64_t H, int G, int64_t blocks) {
  int64_t cap = std::min<int64_t>(allowed_cpus(), blocks);
  if (const char* forced = std::getenv("RNN_JAX_NATIVE_THREADS"); forced && std::atoi(forced) > 0)
    return static_cast<int>(std::min<int64_t>(cap, std::atoi(forced)));
  double flops = 2.0 * N * H * G * H;
  return flops < 1.0e6 ? 1 : static_cast<int>(cap);
}

// Run every item on this thread and up to `threads - 1` helpers (XLA's pool where it has one, else threads
// of our own, joined at the end); returns when every item is done. The queue is shared with the helpers: one still waiting in XLA's pool when every item is done (its workers
// were all busy, say with the other direction of a bidirectional layer, each waiting the same way) runs
// later, finds nothing to claim and leaves; so the call waits for the items, never for the helpers.
template <class E, class F>
void run_phases(int64_t blocks, int64_t phases, int threads, size_t scratch_floats, ffi::ThreadPool* pool, E early,
                F item) {
  auto q = std::make_shared<PhaseQueue>(blocks, phases);
  // the pool only where it has a worker for every helper even when this thread is one of its own
  const bool use_pool = pool != nullptr && pool->num_threads() >= threads;
  std::vector<std::thread> own;
  for (int i = 1; i < threads; ++i) {
    auto helper = [q, &early, &item, scratch_floats] { drain(*q, scratch_floats, early, item); };
    if (use_pool)
      pool->Schedule(std::function<void()>(helper));
    else
      own.emplace_back(helper);
  }
  drain(*q, scratch_floats, early, item);
  wait_until(q->done, blocks * phases);  // items claimed by helpers finish (they touch early and item)
  for (auto& t : own) t.join();
}

// ---------------------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------------------

// The input enters in one of two forms. Fused (I > 0): x [T, N, I] and W_x [I, G*H], so the step's GEMM
// is [x_t, h_{t-1}] [W_x; W_h] and no [T, N, G*H] array exists. Projected (I == 0): x is the pre-activation
// u = project(x) [T, N, G*H] from XLA (any input projection) and W_x is empty. The bias b [G*H] is added in
// the gate math either way (zeros where the projection already has it).
struct FwdArgs {
  int64_t cell, T, N, I, H, G;
  bool reverse, save;
  const float *x, *wx, *wh, *b, *extra, *h0, *c0;
  const int32_t* len;
  float *hseq, *cseq, *acts;  // acts: [T, N, 4H] (LSTM i,f,g,o; GRU r,z,n,hn) when save
};

// The gate math of step t for all rows and units [u0, u0+nu); tile holds the step's GEMM for them, laid
// out [row][gate][kNR].
void forward_epilogue(const FwdArgs& a, int64_t t, const float* hprev, const float* cprev, int64_t u0, int nu,
                      const float* tile) {
  const int64_t H = a.H, GH = a.G * H, G = a.G, slots = a.cell == kGru ? 4 : G;
  const V one = vset(1.0f);
  for (int64_t i = 0; i < a.N; ++i) {
    const bool keep = t < a.len[i];
    const float* u = a.I == 0 ? a.x + (t * a.N + i) * GH + u0 : nullptr;
    float* h = a.hseq + (t * a.N + i) * H + u0;
    const float* hp = hprev + i * H + u0;
    float* act = a.save ? a.acts + (t * a.N + i) * 4 * H + u0 : nullptr;
    for (int v = 0; v < nu; v += kW) {
      const int n = std::min(kW, nu - v);
      auto R = [&](int g) { return vload(tile + (i * slots + g) * kNR + v); };
      // the input part: bias, plus the projected input when there is one
      auto U = [&](int g) {
        V bias = ld(a.b + g * H + u0 + v, n);
        return u ? vadd(bias, ld(u + g * H + v, n)) : bias;
      };
      V hnew;
      if (a.cell == kVanilla) {
        hnew = tanh_ps(vadd(U(0), R(0)));
      } else if (a.cell == kLstm) {
        V ig = sigmoid_ps(vadd(U(0), R(0))), fg = sigmoid_ps(vadd(U(1), R(1)));
        V gg = tanh_ps(vadd(U(2), R(2))), og = sigmoid_ps(vadd(U(3), R(3)));
        const float* cp = cprev + i * H + u0 + v;
        V c = vfmadd(fg, ld(cp, n), vmul(ig, gg));
        hnew = vmul(og, tanh_ps(c));
        st(a.cseq + (t * a.N + i) * H + u0 + v, keep ? c : ld(cp, n), n);
        if (act) st(act + v, ig, n), st(act + H + v, fg, n), st(act + 2 * H + v, gg, n), st(act + 3 * H + v, og, n);
      } else {
        // the GRU's input and recurrent parts of n stay apart: the tile holds the recurrent part only
        V rg = sigmoid_ps(vadd(U(0), R(0))), zg = sigmoid_ps(vadd(U(1), R(1)));
        V hn = vadd(R(2), ld(a.extra + u0 + v, n));
        V ng = tanh_ps(vfmadd(rg, hn, vadd(U(2), a.I > 0 ? vload(tile + (i * slots + 3) * kNR + v) : vset(0.0f))));
        hnew = vadd(vmul(vsub(one, zg), ng), vmul(zg, ld(hp + v, n)));  // (1 - z) n + z h_prev, as the scan
        if (act) st(act + v, rg, n), st(act + H + v, zg, n), st(act + 2 * H + v, ng, n), st(act + 3 * H + v, hn, n);
      }
      st(h + v, keep ? hnew : ld(hp + v, n), n);
    }
  }
}

// Panels of unit block j of a [K, G*H] weight: P[g][k][c] = W[k][g*H + kNR j + c], zero past H.
void pack_panels(const float* w, int64_t K, int64_t H, int G, int64_t j, float* panels) {
  for (int g = 0; g < G; ++g) {
    float* p = panels + g * K * kNR;
    for (int64_t k = 0; k < K; ++k)
      for (int c = 0; c < kNR; ++c) {
        const int64_t unit = j * kNR + c;
        p[k * kNR + c] = unit < H ? w[k * G * H + g * H + unit] : 0.0f;
      }
  }
}

// Phase 0 packs the weights; phase 1 + s runs step s (loop order) for one unit block: the GEMM into a tile
// [row][gate][kNR] (gate-major: one panel stays in L1 while every row block passes over it), then the gate
// math. The GRU keeps x_t W_x of its n gate apart from h_{t-1} W_h (r multiplies only the latter): a fourth
// tile slot.
void forward(const FwdArgs& a, ffi::ThreadPool* pool) {
  const int64_t I = a.I, H = a.H, G = a.G, blocks = (H + kNR - 1) / kNR;
  const int64_t panel_floats = (I + H) * kNR * G;  // per unit block: W_x panels, then W_h panels
  AlignedBuf packed(blocks * panel_floats);
  const auto rows = row_blocks(a.N);
  const int slots = a.cell == kGru ? 4 : static_cast<int>(G);
  auto time_of = [&](int64_t phase) { return a.reverse ? a.T - phase : phase - 1; };
  // before the wait: x_t W_x (it needs nothing from the step before)
  auto input_part = [&](int64_t phase, int64_t j, float* tile) {
    if (I == 0) return;
    const float* wx_panels = packed.p + j * panel_floats;
    const float* xt = a.x + time_of(phase) * a.N * I;
    for (int g = 0; g < G; ++g) {
      const int64_t slot = a.cell == kGru && g == 2 ? 3 : g;  // the GRU's n gate keeps x_t W_x apart
      for (size_t b = 0; b + 1 < rows.size(); ++b)
        micro_any(static_cast<int>(rows[b + 1] - rows[b]), xt + rows[b] * I, I, wx_panels + g * I * kNR, I,
                  tile + (rows[b] * slots + slot) * kNR, slots * kNR);
    }
  };
  auto recurrent_part = [&](int64_t phase, int64_t j, float* tile) {
    float* wx_panels = packed.p + j * panel_floats;
    float* wh_panels = wx_panels + I * kNR * G;
    if (phase == 0) {
      pack_panels(a.wx, I, H, G, j, wx_panels);
      return pack_panels(a.wh, H, H, G, j, wh_panels);
    }
    const int64_t s = phase - 1, t = time_of(phase);
    const int64_t tp = a.reverse ? t + 1 : t - 1;
    const float* hprev = s == 0 ? a.h0 : a.hseq + tp * a.N * H;
    const float* cprev = a.cell != kLstm ? nullptr : s == 0 ? a.c0 : a.cseq + tp * a.N * H;
    for (int g = 0; g < G; ++g) {
      const bool accumulate = I > 0 && !(a.cell == kGru && g == 2);
      for (size_t b = 0; b + 1 < rows.size(); ++b)
        micro_any(static_cast<int>(rows[b + 1] - rows[b]), hprev + rows[b] * H, H, wh_panels + g * H * kNR, H,
                  tile + (rows[b] * slots + g) * kNR, slots * kNR, accumulate);
    }
    forward_epilogue(a, t, hprev, cprev, j * kNR, static_cast<int>(std::min<int64_t>(kNR, H - j * kNR)), tile);
  };
  run_phases(blocks, 1 + a.T, team_size(a.N, H, G, blocks), a.N * slots * kNR, pool, input_part, recurrent_part);
}

// ---------------------------------------------------------------------------------------------------
// Backward
// ---------------------------------------------------------------------------------------------------

struct BwdArgs {
  int64_t cell, T, N, I, H, G;  // I == 0: the input came projected (see FwdArgs)
  bool reverse;
  const float *x, *wh, *acts, *hseq, *h0, *cseq, *c0, *dhseq;
  const int32_t* len;
  float *du, *dr;   // [T, N, G*H]; dr == du except for the GRU
  float *dh, *dc;   // [N, H]: the running carry gradient (dc starts as that of the final c); on return, that
                    // of the initial carry
  float *dwx, *dwh, *db, *dextra;  // accumulated: [I, G*H] and [G*H] when fused, [H, G*H], the GRU's [H]
};

// Gate gradients of step t for all rows, units [u0, u0+nu). On entry dh/dc hold the gradient reaching
// carry_t from later steps; on return dh holds the part of d carry_{t-1} that bypasses W_h (the GEMM
// adds dR_t W_h^T to it) and dc that of c_{t-1}. Steps past a row's length pass the gradient through.
void backward_gates(const BwdArgs& a, int64_t t, const float* hprev, const float* cprev, int64_t u0, int nu) {
  const int64_t H = a.H, GH = a.G * H;
  const V one = vset(1.0f), zero = vset(0.0f);
  for (int64_t i = 0; i < a.N; ++i) {
    const bool keep = t < a.len[i];
    const int64_t row = t * a.N + i;
    float* du = a.du + row * GH + u0;
    float* dr = a.dr + row * GH + u0;
    const float* act = a.acts + row * 4 * H + u0;
    for (int v = 0; v < nu; v += kW) {
      const int n = std::min(kW, nu - v);
      float* dh = a.dh + i * H + u0 + v;
      V d = vadd(ld(dh, n), ld(a.dhseq + row * H + u0 + v, n));
      if (!keep) {  // dc passes through unchanged
        st(dh, d, n);
        for (int g = 0; g < a.G; ++g) st(du + g * H + v, zero, n);
        if (a.cell == kGru)
          for (int g = 0; g < a.G; ++g) st(dr + g * H + v, zero, n);
        continue;
      }
      if (a.cell == kVanilla) {
        V h = ld(a.hseq + row * H + u0 + v, n);
        st(du + v, vmul(d, vfnmadd(h, h, one)), n);
        st(dh, zero, n);
      } else if (a.cell == kLstm) {
        float* dcp = a.dc + i * H + u0 + v;
        V ig = ld(act + v, n), fg = ld(act + H + v, n), gg = ld(act + 2 * H + v, n), og = ld(act + 3 * H + v, n);
        V tc = tanh_ps(ld(a.cseq + row * H + u0 + v, n));
        V dc = vfmadd(vmul(d, og), vfnmadd(tc, tc, one), ld(dcp, n));
        V cp = ld(cprev + i * H + u0 + v, n);
        st(du + v, vmul(vmul(dc, gg), vmul(ig, vsub(one, ig))), n);
        st(du + H + v, vmul(vmul(dc, cp), vmul(fg, vsub(one, fg))), n);
        st(du + 2 * H + v, vmul(vmul(dc, ig), vfnmadd(gg, gg, one)), n);
        st(du + 3 * H + v, vmul(vmul(d, tc), vmul(og, vsub(one, og))), n);
        st(dcp, vmul(dc, fg), n);
        st(dh, zero, n);
      } else {
        V rg = ld(act + v, n), zg = ld(act + H + v, n), ng = ld(act + 2 * H + v, n), hn = ld(act + 3 * H + v, n);
        V hp = ld(hprev + i * H + u0 + v, n);
        V dan = vmul(vmul(d, vsub(one, zg)), vfnmadd(ng, ng, one));
        V dar = vmul(vmul(dan, hn), vmul(rg, vsub(one, rg)));
        V daz = vmul(vmul(d, vsub(hp, ng)), vmul(zg, vsub(one, zg)));
        st(du + v, dar, n), st(du + H + v, daz, n), st(du + 2 * H + v, dan, n);
        st(dr + v, dar, n), st(dr + H + v, daz, n), st(dr + 2 * H + v, vmul(dan, rg), n);
        st(dh, vmul(d, zg), n);
      }
    }
  }
}

// W_h^T panel of unit block j: P[j][k][c] = W_h[kNR j + c][k], k < G*H; zero past H.
void pack_backward(const float* w, int64_t H, int G, int64_t j, float* packed) {
  const int64_t GH = G * H;
  float* p = packed + j * GH * kNR;
  for (int c = 0; c < kNR; ++c) {
    const int64_t unit = j * kNR + c;
    for (int64_t k = 0; k < GH; ++k) p[k * kNR + c] = unit < H ? w[unit * GH + k] : 0.0f;
  }
}

// The gate columns of unit block j at step t, one panel per gate: P[g][n][c] = d[(t N + n) G H + g H + kNR j + c],
// zero past H (nu units).
void pack_gate_columns(const float* d, int64_t t, int64_t N, int64_t H, int G, int64_t j, int nu, float* panels) {
  for (int g = 0; g < G; ++g)
    for (int64_t n = 0; n < N; ++n) {
      const float* src = d + (t * N + n) * G * H + g * H + j * kNR;
      float* dst = panels + (g * N + n) * kNR;
      for (int v = 0; v < kNR; v += kW) st(dst + v, ld(src + v, std::max(0, std::min(kW, nu - v))), kW);
    }
}

// C[r][:] += sum_k a[k lda + r] P[k][:] for r < R (A^T P: a has K rows of lda, P one panel of K rows), C a
// panel of R rows (kNR apart: rows of a [H, G*H] matrix are 4 KiB apart, and 12 of them share an L1 set).
void add_transposed_product(const float* a, int64_t lda, int64_t R, const float* panel, int64_t K, float* c) {
  for (int64_t r0 = 0; r0 < R; r0 += kMaxMR)
    micro_transposed(static_cast<int>(std::min<int64_t>(kMaxMR, R - r0)), a + r0, lda, panel, K, c + r0 * kNR, kNR,
                     true);
}

// dst[0:nu] += the column sums of one panel (K rows).
void add_column_sums(const float* panel, int64_t K, float* dst, int nu) {
  for (int v = 0; v < nu; v += kW) {
    V sum = vset(0.0f);
    for (int64_t k = 0; k < K; ++k) sum = vadd(sum, vload(panel + k * kNR + v));
    const int n = std::min(kW, nu - v);
    st(dst + v, vadd(ld(dst + v, n), sum), n);
  }
}

// Phase 0 packs W_h^T; then two phases per step s (the forward loop's order, reversed), for one unit
// block each. 1 + 2s: the gate gradients, and the weight gradients of their columns, accumulated step by
// step while they are in cache: dW_h += h_{t-1}^T dR_t (and, fused, dW_x += x_t^T dU_t, db += sum dU_t; the
// GRU's db_hn += sum dR_t of n), into panels of the block's own. 2 + 2s: dh_{t-1} += dR_t W_h^T, which reads
// dR_t whole. The last phase writes the weight-gradient panels out.
void backward(const BwdArgs& a, ffi::ThreadPool* pool) {
  const int64_t I = a.I, H = a.H, N = a.N, G = a.G, GH = G * H, blocks = (H + kNR - 1) / kNR;
  AlignedBuf packed(blocks * GH * kNR);
  const int64_t acc_floats = G * (H + I) * kNR;  // per block and gate: dW_h rows, then dW_x rows
  AlignedBuf acc(blocks * acc_floats);
  std::fill(acc.p, acc.p + blocks * acc_floats, 0.0f);
  const auto rows = row_blocks(N);
  const int64_t panels = G * N * kNR;  // scratch: dh tile [N][kNR], dR panels, dU panels (GRU)
  const int64_t last_phase = 1 + 2 * a.T;
  auto step = [&](int64_t phase, int64_t j, float* scratch) {
    const int nu = static_cast<int>(std::min<int64_t>(kNR, H - j * kNR));
    const int64_t col = j * kNR;
    float* acc_j = acc.p + j * acc_floats;
    if (phase == 0) return pack_backward(a.wh, H, static_cast<int>(G), j, packed.p);
    if (phase == last_phase) {
      for (int64_t g = 0; g < G; ++g)
        for (int64_t r = 0; r < H + I; ++r) {
          float* dst = r < H ? a.dwh + r * GH : a.dwx + (r - H) * GH;
          std::copy(acc_j + (g * (H + I) + r) * kNR, acc_j + (g * (H + I) + r) * kNR + nu, dst + g * H + col);
        }
      return;
    }
    const int64_t s = (phase - 1) / 2;
    const int64_t t = a.reverse ? s : a.T - 1 - s;
    float* tile = scratch;
    if ((phase - 1) % 2 == 0) {
      const int64_t tp = a.reverse ? t + 1 : t - 1;
      const bool first = a.reverse ? t == a.T - 1 : t == 0;
      const float* hprev = first ? a.h0 : a.hseq + tp * N * H;
      const float* cprev = a.cell != kLstm ? nullptr : first ? a.c0 : a.cseq + tp * N * H;
      backward_gates(a, t, hprev, cprev, col, nu);
      float* dr_panels = scratch + N * kNR;
      float* du_panels = a.cell == kGru ? dr_panels + panels : dr_panels;
      pack_gate_columns(a.dr, t, N, H, static_cast<int>(G), j, nu, dr_panels);
      if (a.cell == kGru) pack_gate_columns(a.du, t, N, H, static_cast<int>(G), j, nu, du_panels);
      for (int64_t g = 0; g < G; ++g) {
        float* acc_g = acc_j + g * (H + I) * kNR;
        add_transposed_product(hprev, H, H, dr_panels + g * N * kNR, N, acc_g);
        if (I > 0) {
          add_transposed_product(a.x + t * N * I, I, I, du_panels + g * N * kNR, N, acc_g + H * kNR);
          add_column_sums(du_panels + g * N * kNR, N, a.db + g * H + col, nu);
        }
      }
      if (a.cell == kGru) add_column_sums(dr_panels + 2 * N * kNR, N, a.dextra + col, nu);
      return;
    }
    const float* drt = a.dr + t * N * GH;
    for (size_t b = 0; b + 1 < rows.size(); ++b)
      micro_any(static_cast<int>(rows[b + 1] - rows[b]), drt + rows[b] * GH, GH, packed.p + j * GH * kNR, GH,
                tile + rows[b] * kNR, kNR);
    for (int64_t i = 0; i < N; ++i) {
      float* dh = a.dh + i * H + col;
      for (int v = 0; v < nu; v += kW) {
        const int n = std::min(kW, nu - v);
        st(dh + v, vadd(ld(dh + v, n), vload(tile + i * kNR + v)), n);
      }
    }
  };
  auto nothing_early = [](int64_t, int64_t, float*) {};
  run_phases(blocks, last_phase + 1, team_size(N, H, static_cast<int>(G), blocks), N * kNR + 2 * panels, pool,
             nothing_early, step);
}

// ---------------------------------------------------------------------------------------------------
// FFI handlers
// ---------------------------------------------------------------------------------------------------

using F32 = ffi::Buffer<ffi::F32>;
using F32Out = ffi::ResultBuffer<ffi::F32>;

ffi::Error Forward(F32 x, F32 wx, F32 wh, F32 b, F32 extra, F32 h0, F32 c0, ffi::Buffer<ffi::S32> len,
                   F32Out hseq, F32Out cseq, F32Out acts, int64_t cell, bool reverse, ffi::ThreadPool pool) {
  const auto xd = x.dimensions(), wxd = wx.dimensions(), whd = wh.dimensions();
  if (xd.size() != 3 || wxd.size() != 2 || whd.size() != 2)
    return ffi::Error::InvalidArgument("rnn_native: x must be [T,N,I], W_x [I,GH], W_h [H,GH]");
  const int64_t H = whd[0], G = gates_of(cell), I = wxd[0];
  if (whd[1] != G * H || wxd[1] != G * H || b.element_count() != G * H || xd[2] != (I > 0 ? I : G * H))
    return ffi::Error::InvalidArgument("rnn_native: gate sizes differ");
  FwdArgs a{cell, xd[0], xd[1], I, H, G, reverse, acts->element_count() > 0,
            x.typed_data(), wx.typed_data(), wh.typed_data(), b.typed_data(), extra.typed_data(), h0.typed_data(),
            c0.typed_data(), len.typed_data(), hseq->typed_data(), cseq->typed_data(), acts->typed_data()};
  if (a.T > 0 && a.N > 0) forward(a, &pool);
  return ffi::Error::Success();
}

ffi::Error Backward(F32 x, F32 wh, F32 acts, F32 hseq, F32 h0, F32 cseq, F32 c0, F32 dhseq, F32 dclast,
                    ffi::Buffer<ffi::S32> len, F32Out du, F32Out dr, F32Out dh0, F32Out dc0, F32Out dwx, F32Out dwh,
                    F32Out db, F32Out dextra, int64_t cell, bool reverse, ffi::ThreadPool pool) {
  const auto hd = hseq.dimensions(), whd = wh.dimensions(), dwxd = dwx->dimensions();
  if (hd.size() != 3 || whd.size() != 2 || dwxd.size() != 2)
    return ffi::Error::InvalidArgument("rnn_native: hseq must be [T,N,H], W_h [H,GH], dW_x [I,GH]");
  BwdArgs a{cell, hd[0], hd[1], dwxd[0], whd[0], gates_of(cell), reverse,
            x.typed_data(), wh.typed_data(), acts.typed_data(), hseq.typed_data(), h0.typed_data(),
            cseq.typed_data(), c0.typed_data(), dhseq.typed_data(), len.typed_data(),
            du->typed_data(), cell == kGru ? dr->typed_data() : du->typed_data(), dh0->typed_data(),
            dc0->typed_data(), dwx->typed_data(), dwh->typed_data(), db->typed_data(), dextra->typed_data()};
  std::fill(a.dh, a.dh + a.N * a.H, 0.0f);
  if (cell == kLstm) std::copy(dclast.typed_data(), dclast.typed_data() + a.N * a.H, a.dc);
  for (F32Out* out : {&dwx, &dwh, &db, &dextra}) std::fill((*out)->typed_data(), (*out)->typed_data() + (*out)->element_count(), 0.0f);
  if (a.T > 0 && a.N > 0) backward(a, &pool);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(RnnNativeForward, Forward,
                              ffi::Ffi::Bind()
                                  .Arg<F32>()  // x (or u)
                                  .Arg<F32>()  // W_x
                                  .Arg<F32>()  // W_h
                                  .Arg<F32>()  // b
                                  .Arg<F32>()  // extra (the GRU's b_hn)
                                  .Arg<F32>()  // h0
                                  .Arg<F32>()  // c0
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<F32>()  // hseq
                                  .Ret<F32>()  // cseq
                                  .Ret<F32>()  // acts
                                  .Attr<int64_t>("cell")
                                  .Attr<bool>("reverse")
                                  .Ctx<ffi::ThreadPool>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(RnnNativeBackward, Backward,
                              ffi::Ffi::Bind()
                                  .Arg<F32>()  // x
                                  .Arg<F32>()  // W_h
                                  .Arg<F32>()  // acts
                                  .Arg<F32>()  // hseq
                                  .Arg<F32>()  // h0
                                  .Arg<F32>()  // cseq
                                  .Arg<F32>()  // c0
                                  .Arg<F32>()  // dhseq
                                  .Arg<F32>()  // dc of the final c
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<F32>()  // du
                                  .Ret<F32>()  // dr
                                  .Ret<F32>()  // dh0
                                  .Ret<F32>()  // dc0
                                  .Ret<F32>()  // dW_x
                                  .Ret<F32>()  // dW_h
                                  .Ret<F32>()  // db
                                  .Ret<F32>()  // dextra
                                  .Attr<int64_t>("cell")
                                  .Attr<bool>("reverse")
                                  .Ctx<ffi::ThreadPool>());
