// The sequential part of the vanilla, LSTM and GRU layers on CPU, forward and backward, as XLA FFI handlers.
//
// Forward, for t in loop order:  A_t = U_t + h_{t-1} W_h  (U from XLA: the input projection),
//   the gate math fused into the epilogue of the GEMM tile, writing h_t (c_t) and, when differentiated,
//   the gate activations the backward needs.
// Backward, for t in the opposite order: the gate gradients dU_t (dR_t for the GRU's recurrent part) from
//   dh, dc and the saved activations; dh_{t-1} = direct + dR_t W_h^T.  The weight gradients are large
//   matmuls in XLA afterwards.
//
// The step GEMM is small ([N, H] x [H, G*H]); it runs on a hand-written AVX2/FMA microkernel (6 x 16)
// over W_h packed once per call into 16-column panels. Columns are ordered by unit block then gate, so
// the thread that owns a block of 16 hidden units computes all gates of those units and their gate math
// without waiting for anyone; threads meet at one barrier per step (h_t is read whole by the next step).
#include <immintrin.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

enum CellKind : int64_t { kVanilla = 0, kLstm = 1, kGru = 2 };
constexpr int kNR = 16;  // columns per packed panel: two AVX registers
constexpr int kMaxMR = 6;

int gates_of(int64_t cell) { return cell == kLstm ? 4 : cell == kGru ? 3 : 1; }

// ---------------------------------------------------------------------------------------------------
// Vector math: Cephes-style exp (about 1 ulp), tanh with a small-argument polynomial, exact-ish sigmoid.
// ---------------------------------------------------------------------------------------------------

inline __m256 exp_ps(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.3f));
  __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500E-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507E-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073E-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894E-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459E-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201E-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

inline __m256 sigmoid_ps(__m256 x) {
  const __m256 one = _mm256_set1_ps(1.0f);
  return _mm256_div_ps(one, _mm256_add_ps(one, exp_ps(_mm256_sub_ps(_mm256_setzero_ps(), x))));
}

inline __m256 tanh_ps(__m256 x) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  __m256 ax = _mm256_andnot_ps(sign, x);
  // |x| >= 0.625: 1 - 2 / (exp(2|x|) + 1), sign restored
  __m256 e = exp_ps(_mm256_add_ps(ax, ax));
  __m256 big = _mm256_sub_ps(_mm256_set1_ps(1.0f),
                             _mm256_div_ps(_mm256_set1_ps(2.0f), _mm256_add_ps(e, _mm256_set1_ps(1.0f))));
  big = _mm256_or_ps(big, _mm256_and_ps(sign, x));
  // |x| < 0.625: odd polynomial (Cephes tanhf), no cancellation near 0
  __m256 z = _mm256_mul_ps(x, x);
  __m256 p = _mm256_set1_ps(-5.70498872745E-3f);
  p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(2.06390887954E-2f));
  p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(-5.37397155531E-2f));
  p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(1.33314422036E-1f));
  p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(-3.33332819422E-1f));
  __m256 small = _mm256_fmadd_ps(_mm256_mul_ps(p, z), x, x);
  return _mm256_blendv_ps(big, small, _mm256_cmp_ps(ax, _mm256_set1_ps(0.625f), _CMP_LT_OQ));
}

// Loads and stores of the first n (< 8 allowed) lanes.
inline __m256i lane_mask(int n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
inline __m256 ld(const float* p, int n) { return n >= 8 ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, lane_mask(n)); }
inline void st(float* p, __m256 v, int n) {
  if (n >= 8)
    _mm256_storeu_ps(p, v);
  else
    _mm256_maskstore_ps(p, lane_mask(n), v);
}

// ---------------------------------------------------------------------------------------------------
// GEMM: C[MR x 16] = A[MR x K] (row stride lda) x B (one packed panel, K x 16 contiguous)
// ---------------------------------------------------------------------------------------------------

// Named accumulators, not an array: GCC keeps an array of __m256 on the stack (a third of the speed).
#define RNN_ROW(r)                                          \
  if constexpr (MR > r) {                                   \
    const __m256 av = _mm256_broadcast_ss(a + r * lda + k); \
    c##r##0 = _mm256_fmadd_ps(av, b0, c##r##0);             \
    c##r##1 = _mm256_fmadd_ps(av, b1, c##r##1);             \
  }
#define RNN_STORE(r)                              \
  if constexpr (MR > r) {                         \
    _mm256_storeu_ps(c + r * kNR, c##r##0);       \
    _mm256_storeu_ps(c + r * kNR + 8, c##r##1);   \
  }

template <int MR>
void micro(const float* __restrict a, int64_t lda, const float* __restrict b, int64_t K, float* __restrict c) {
  __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00, c31 = c00,
         c40 = c00, c41 = c00, c50 = c00, c51 = c00;
  for (int64_t k = 0; k < K; ++k) {
    const __m256 b0 = _mm256_load_ps(b + k * kNR), b1 = _mm256_load_ps(b + k * kNR + 8);
    RNN_ROW(0) RNN_ROW(1) RNN_ROW(2) RNN_ROW(3) RNN_ROW(4) RNN_ROW(5)
  }
  RNN_STORE(0) RNN_STORE(1) RNN_STORE(2) RNN_STORE(3) RNN_STORE(4) RNN_STORE(5)
}
#undef RNN_ROW
#undef RNN_STORE

void micro_any(int mr, const float* a, int64_t lda, const float* b, int64_t K, float* c) {
  switch (mr) {
    case 1: return micro<1>(a, lda, b, K, c);
    case 2: return micro<2>(a, lda, b, K, c);
    case 3: return micro<3>(a, lda, b, K, c);
    case 4: return micro<4>(a, lda, b, K, c);
    case 5: return micro<5>(a, lda, b, K, c);
    default: return micro<6>(a, lda, b, K, c);
  }
}

// Row blocks of at most 6 rows, as even as possible (32 rows: 6 6 5 5 5 5, not 6 x 5 + 2).
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
// Threads: a team of up to the CPUs this process may run on, one spin barrier per step.
// ---------------------------------------------------------------------------------------------------

class Barrier {
 public:
  explicit Barrier(int n) : n_(n) {}
  void wait() {
    if (n_ == 1) return;
    int gen = gen_.load(std::memory_order_acquire);
    if (count_.fetch_add(1, std::memory_order_acq_rel) == n_ - 1) {
      count_.store(0, std::memory_order_relaxed);
      gen_.fetch_add(1, std::memory_order_acq_rel);
      return;
    }
    for (int spins = 0; gen_.load(std::memory_order_acquire) == gen; ++spins) {
      if (spins < 4000)
        _mm_pause();
      else
        std::this_thread::yield();  // a shared machine: do not burn a core another process wants
    }
  }

 private:
  int n_;
  std::atomic<int> count_{0};
  std::atomic<int> gen_{0};
};

int allowed_cpus() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) != 0) return 1;
  return std::max(1, CPU_COUNT(&set));
}

// Threads for a layer: one per CPU allowed, at most one per unit block, one when a step is too small
// for a barrier to pay (under about a million flops per step, e.g. N=1, H=32). RNN_JAX_NATIVE_THREADS=n
// asks for n (still at most the CPUs allowed and the unit blocks) whatever the size: the tests use it.
int team_size(int64_t N, int64_t H, int G, int64_t blocks) {
  int64_t cap = std::min<int64_t>(allowed_cpus(), blocks);
  if (const char* forced = std::getenv("RNN_JAX_NATIVE_THREADS"); forced && std::atoi(forced) > 0)
    return static_cast<int>(std::min<int64_t>(cap, std::atoi(forced)));
  double flops = 2.0 * N * H * G * H;
  return flops < 1.0e6 ? 1 : static_cast<int>(cap);
}

template <class F>
void run_team(int n, F&& body) {
  std::vector<std::thread> team;
  for (int i = 1; i < n; ++i) team.emplace_back(body, i);
  body(0);
  for (auto& t : team) t.join();
}

struct Range {
  int64_t lo, hi;
};
Range share(int64_t blocks, int n, int i) { return {blocks * i / n, blocks * (i + 1) / n}; }

// ---------------------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------------------

struct FwdArgs {
  int64_t cell, T, N, H, G;
  bool reverse, save;
  const float *u, *w, *extra, *h0, *c0;
  const int32_t* len;
  float *hseq, *cseq, *acts;  // acts: [T, N, 4H] (LSTM i,f,g,o; GRU r,z,n,hn) when save
};

// The gate math for rows [i0, i0+mr) and units [u0, u0+nu) of step t; tile holds h_{t-1} W_h for them,
// laid out [row][gate][16].
void forward_epilogue(const FwdArgs& a, int64_t t, const float* hprev, const float* cprev, int64_t i0, int mr,
                      int64_t u0, int nu, const float* tile) {
  const int64_t H = a.H, GH = a.G * H, G = a.G;
  for (int r = 0; r < mr; ++r) {
    const int64_t i = i0 + r;
    const bool keep = t < a.len[i];
    const float* u = a.u + (t * a.N + i) * GH + u0;
    float* h = a.hseq + (t * a.N + i) * H + u0;
    const float* hp = hprev + i * H + u0;
    float* act = a.save ? a.acts + (t * a.N + i) * 4 * H + u0 : nullptr;
    for (int v = 0; v < nu; v += 8) {
      const int n = std::min(8, nu - v);
      auto R = [&](int g) { return _mm256_loadu_ps(tile + (r * G + g) * kNR + v); };
      auto U = [&](int g) { return ld(u + g * H + v, n); };
      __m256 hnew;
      if (a.cell == kVanilla) {
        hnew = tanh_ps(_mm256_add_ps(U(0), R(0)));
      } else if (a.cell == kLstm) {
        __m256 ig = sigmoid_ps(_mm256_add_ps(U(0), R(0))), fg = sigmoid_ps(_mm256_add_ps(U(1), R(1)));
        __m256 gg = tanh_ps(_mm256_add_ps(U(2), R(2))), og = sigmoid_ps(_mm256_add_ps(U(3), R(3)));
        const float* cp = cprev + i * H + u0 + v;
        __m256 c = _mm256_fmadd_ps(fg, ld(cp, n), _mm256_mul_ps(ig, gg));
        hnew = _mm256_mul_ps(og, tanh_ps(c));
        st(a.cseq + (t * a.N + i) * H + u0 + v, keep ? c : ld(cp, n), n);
        if (act) {
          st(act + v, ig, n), st(act + H + v, fg, n), st(act + 2 * H + v, gg, n), st(act + 3 * H + v, og, n);
        }
      } else {
        __m256 rg = sigmoid_ps(_mm256_add_ps(U(0), R(0))), zg = sigmoid_ps(_mm256_add_ps(U(1), R(1)));
        __m256 hn = _mm256_add_ps(R(2), ld(a.extra + u0 + v, n));
        __m256 ng = tanh_ps(_mm256_fmadd_ps(rg, hn, U(2)));
        // (1 - z) n + z h_prev, as the scan computes it
        hnew = _mm256_add_ps(_mm256_mul_ps(_mm256_sub_ps(_mm256_set1_ps(1.0f), zg), ng),
                             _mm256_mul_ps(zg, ld(hp + v, n)));
        if (act) {
          st(act + v, rg, n), st(act + H + v, zg, n), st(act + 2 * H + v, ng, n), st(act + 3 * H + v, hn, n);
        }
      }
      st(h + v, keep ? hnew : ld(hp + v, n), n);
    }
  }
}

// W_h [H, G*H] -> panels (j, g): P[(j*G + g)][k][c] = W_h[k][g*H + 16j + c], zero past H.
void pack_forward(const float* w, int64_t H, int G, Range js, float* packed) {
  for (int64_t j = js.lo; j < js.hi; ++j)
    for (int g = 0; g < G; ++g) {
      float* p = packed + (j * G + g) * H * kNR;
      for (int64_t k = 0; k < H; ++k)
        for (int c = 0; c < kNR; ++c) {
          const int64_t unit = j * kNR + c;
          p[k * kNR + c] = unit < H ? w[k * G * H + g * H + unit] : 0.0f;
        }
    }
}

void forward(const FwdArgs& a) {
  const int64_t H = a.H, G = a.G, blocks = (H + kNR - 1) / kNR;
  AlignedBuf packed(blocks * G * H * kNR);
  const auto rows = row_blocks(a.N);
  const int nt = team_size(a.N, H, G, blocks);
  Barrier barrier(nt);
  run_team(nt, [&](int id) {
    const Range js = share(blocks, nt, id);
    pack_forward(a.w, H, G, js, packed.p);
    alignas(64) float tile[kMaxMR * 4 * kNR];
    barrier.wait();
    for (int64_t s = 0; s < a.T; ++s) {
      const int64_t t = a.reverse ? a.T - 1 - s : s;
      const int64_t tp = a.reverse ? t + 1 : t - 1;
      const float* hprev = s == 0 ? a.h0 : a.hseq + tp * a.N * H;
      const float* cprev = a.cell != kLstm ? nullptr : s == 0 ? a.c0 : a.cseq + tp * a.N * H;
      for (int64_t j = js.lo; j < js.hi; ++j) {
        const int nu = static_cast<int>(std::min<int64_t>(kNR, H - j * kNR));
        for (size_t b = 0; b + 1 < rows.size(); ++b) {
          const int mr = static_cast<int>(rows[b + 1] - rows[b]);
          for (int g = 0; g < G; ++g) {
            alignas(64) float c[kMaxMR * kNR];
            micro_any(mr, hprev + rows[b] * H, H, packed.p + (j * G + g) * H * kNR, H, c);
            for (int r = 0; r < mr; ++r) std::memcpy(tile + (r * G + g) * kNR, c + r * kNR, sizeof(float) * kNR);
          }
          forward_epilogue(a, t, hprev, cprev, rows[b], mr, j * kNR, nu, tile);
        }
      }
      barrier.wait();  // h_t is read whole by the next step
    }
  });
}

// ---------------------------------------------------------------------------------------------------
// Backward
// ---------------------------------------------------------------------------------------------------

struct BwdArgs {
  int64_t cell, T, N, H, G;
  bool reverse;
  const float *w, *acts, *hseq, *h0, *cseq, *c0, *dhseq, *dcseq;
  const int32_t* len;
  float *du, *dr;   // [T, N, G*H]; dr == du except for the GRU
  float *dh, *dc;   // [N, H]: the running carry gradient; on return, that of the initial carry
};

// Gate gradients of step t for all rows, units [u0, u0+nu). On entry dh/dc hold the gradient reaching
// carry_t from later steps; on return dh holds the part of d carry_{t-1} that bypasses W_h (the GEMM
// adds dR_t W_h^T to it) and dc that of c_{t-1}. Steps past a row's length pass the gradient through.
void backward_gates(const BwdArgs& a, int64_t t, const float* hprev, const float* cprev, int64_t u0, int nu) {
  const int64_t H = a.H, GH = a.G * H;
  const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
  for (int64_t i = 0; i < a.N; ++i) {
    const bool keep = t < a.len[i];
    const int64_t row = t * a.N + i;
    float* du = a.du + row * GH + u0;
    float* dr = a.dr + row * GH + u0;
    const float* act = a.acts + row * 4 * H + u0;
    for (int v = 0; v < nu; v += 8) {
      const int n = std::min(8, nu - v);
      float* dh = a.dh + i * H + u0 + v;
      __m256 d = _mm256_add_ps(ld(dh, n), ld(a.dhseq + row * H + u0 + v, n));
      if (!keep) {
        st(dh, d, n);
        for (int g = 0; g < a.G; ++g) st(du + g * H + v, zero, n);
        if (a.cell == kGru)
          for (int g = 0; g < a.G; ++g) st(dr + g * H + v, zero, n);
        if (a.cell == kLstm) {
          float* dc = a.dc + i * H + u0 + v;
          st(dc, _mm256_add_ps(ld(dc, n), ld(a.dcseq + row * H + u0 + v, n)), n);
        }
        continue;
      }
      if (a.cell == kVanilla) {
        __m256 h = ld(a.hseq + row * H + u0 + v, n);
        st(du + v, _mm256_mul_ps(d, _mm256_fnmadd_ps(h, h, one)), n);
        st(dh, zero, n);
      } else if (a.cell == kLstm) {
        float* dcp = a.dc + i * H + u0 + v;
        __m256 ig = ld(act + v, n), fg = ld(act + H + v, n), gg = ld(act + 2 * H + v, n), og = ld(act + 3 * H + v, n);
        __m256 tc = tanh_ps(ld(a.cseq + row * H + u0 + v, n));
        __m256 dcin = _mm256_add_ps(ld(dcp, n), ld(a.dcseq + row * H + u0 + v, n));
        __m256 dc = _mm256_fmadd_ps(_mm256_mul_ps(d, og), _mm256_fnmadd_ps(tc, tc, one), dcin);
        __m256 cp = ld(cprev + i * H + u0 + v, n);
        st(du + v, _mm256_mul_ps(_mm256_mul_ps(dc, gg), _mm256_mul_ps(ig, _mm256_sub_ps(one, ig))), n);
        st(du + H + v, _mm256_mul_ps(_mm256_mul_ps(dc, cp), _mm256_mul_ps(fg, _mm256_sub_ps(one, fg))), n);
        st(du + 2 * H + v, _mm256_mul_ps(_mm256_mul_ps(dc, ig), _mm256_fnmadd_ps(gg, gg, one)), n);
        st(du + 3 * H + v, _mm256_mul_ps(_mm256_mul_ps(d, tc), _mm256_mul_ps(og, _mm256_sub_ps(one, og))), n);
        st(dcp, _mm256_mul_ps(dc, fg), n);
        st(dh, zero, n);
      } else {
        __m256 rg = ld(act + v, n), zg = ld(act + H + v, n), ng = ld(act + 2 * H + v, n), hn = ld(act + 3 * H + v, n);
        __m256 hp = ld(hprev + i * H + u0 + v, n);
        __m256 dan = _mm256_mul_ps(_mm256_mul_ps(d, _mm256_sub_ps(one, zg)), _mm256_fnmadd_ps(ng, ng, one));
        __m256 dar = _mm256_mul_ps(_mm256_mul_ps(dan, hn), _mm256_mul_ps(rg, _mm256_sub_ps(one, rg)));
        __m256 daz = _mm256_mul_ps(_mm256_mul_ps(d, _mm256_sub_ps(hp, ng)), _mm256_mul_ps(zg, _mm256_sub_ps(one, zg)));
        st(du + v, dar, n), st(du + H + v, daz, n), st(du + 2 * H + v, dan, n);
        st(dr + v, dar, n), st(dr + H + v, daz, n), st(dr + 2 * H + v, _mm256_mul_ps(dan, rg), n);
        st(dh, _mm256_mul_ps(d, zg), n);
      }
    }
  }
}

// W_h [H, G*H] -> W_h^T panels per unit block j: P[j][k][c] = W_h[16j + c][k], k < G*H; zero past H.
void pack_backward(const float* w, int64_t H, int G, Range js, float* packed) {
  const int64_t GH = G * H;
  for (int64_t j = js.lo; j < js.hi; ++j) {
    float* p = packed + j * GH * kNR;
    for (int c = 0; c < kNR; ++c) {
      const int64_t unit = j * kNR + c;
      for (int64_t k = 0; k < GH; ++k) p[k * kNR + c] = unit < H ? w[unit * GH + k] : 0.0f;
    }
  }
}

void backward(const BwdArgs& a) {
  const int64_t H = a.H, GH = a.G * H, blocks = (H + kNR - 1) / kNR;
  AlignedBuf packed(blocks * GH * kNR);
  const auto rows = row_blocks(a.N);
  const int nt = team_size(a.N, H, a.G, blocks);
  Barrier barrier(nt);
  run_team(nt, [&](int id) {
    const Range js = share(blocks, nt, id);
    pack_backward(a.w, H, a.G, js, packed.p);
    for (int64_t s = 0; s < a.T; ++s) {
      const int64_t t = a.reverse ? s : a.T - 1 - s;  // the forward loop's order, reversed
      const int64_t tp = a.reverse ? t + 1 : t - 1;
      const bool first = a.reverse ? t == a.T - 1 : t == 0;
      const float* hprev = first ? a.h0 : a.hseq + tp * a.N * H;
      const float* cprev = a.cell != kLstm ? nullptr : first ? a.c0 : a.cseq + tp * a.N * H;
      for (int64_t j = js.lo; j < js.hi; ++j)
        backward_gates(a, t, hprev, cprev, j * kNR, static_cast<int>(std::min<int64_t>(kNR, H - j * kNR)));
      barrier.wait();  // dR_t is read whole below
      const float* drt = a.dr + t * a.N * GH;
      for (int64_t j = js.lo; j < js.hi; ++j) {
        const int nu = static_cast<int>(std::min<int64_t>(kNR, H - j * kNR));
        for (size_t b = 0; b + 1 < rows.size(); ++b) {
          const int mr = static_cast<int>(rows[b + 1] - rows[b]);
          alignas(64) float c[kMaxMR * kNR];
          micro_any(mr, drt + rows[b] * GH, GH, packed.p + j * GH * kNR, GH, c);
          for (int r = 0; r < mr; ++r) {
            float* dh = a.dh + (rows[b] + r) * H + j * kNR;
            for (int v = 0; v < nu; v += 8) {
              const int n = std::min(8, nu - v);
              st(dh + v, _mm256_add_ps(ld(dh + v, n), _mm256_loadu_ps(c + r * kNR + v)), n);
            }
          }
        }
      }
      // no barrier: the next step's gate math reads only this thread's units of dh, dc
    }
  });
}

// ---------------------------------------------------------------------------------------------------
// FFI handlers
// ---------------------------------------------------------------------------------------------------

using F32 = ffi::Buffer<ffi::F32>;
using F32Out = ffi::ResultBuffer<ffi::F32>;

ffi::Error Forward(F32 u, F32 w, F32 extra, F32 h0, F32 c0, ffi::Buffer<ffi::S32> len, F32Out hseq, F32Out cseq,
                   F32Out acts, int64_t cell, bool reverse) {
  const auto ud = u.dimensions(), wd = w.dimensions();
  if (ud.size() != 3 || wd.size() != 2) return ffi::Error::InvalidArgument("rnn_native: u must be [T,N,GH], w [H,GH]");
  FwdArgs a{cell, ud[0], ud[1], wd[0], gates_of(cell), reverse, acts->element_count() > 0,
            u.typed_data(), w.typed_data(), extra.typed_data(), h0.typed_data(), c0.typed_data(), len.typed_data(),
            hseq->typed_data(), cseq->typed_data(), acts->typed_data()};
  if (wd[1] != a.G * a.H || ud[2] != a.G * a.H) return ffi::Error::InvalidArgument("rnn_native: gate sizes differ");
  if (a.T > 0 && a.N > 0) forward(a);
  return ffi::Error::Success();
}

ffi::Error Backward(F32 w, F32 acts, F32 hseq, F32 h0, F32 cseq, F32 c0, F32 dhseq, F32 dcseq,
                    ffi::Buffer<ffi::S32> len, F32Out du, F32Out dr, F32Out dh0, F32Out dc0, int64_t cell,
                    bool reverse) {
  const auto hd = hseq.dimensions(), wd = w.dimensions();
  if (hd.size() != 3 || wd.size() != 2) return ffi::Error::InvalidArgument("rnn_native: hseq must be [T,N,H]");
  BwdArgs a{cell, hd[0], hd[1], wd[0], gates_of(cell), reverse,
            w.typed_data(), acts.typed_data(), hseq.typed_data(), h0.typed_data(), cseq.typed_data(),
            c0.typed_data(), dhseq.typed_data(), dcseq.typed_data(), len.typed_data(),
            du->typed_data(), cell == kGru ? dr->typed_data() : du->typed_data(), dh0->typed_data(),
            dc0->typed_data()};
  std::fill(a.dh, a.dh + a.N * a.H, 0.0f);
  if (cell == kLstm) std::fill(a.dc, a.dc + a.N * a.H, 0.0f);
  if (a.T > 0 && a.N > 0) backward(a);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(RnnNativeForward, Forward,
                              ffi::Ffi::Bind()
                                  .Arg<F32>()
                                  .Arg<F32>()
                                  .Arg<F32>()
                                  .Arg<F32>()
                                  .Arg<F32>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<F32>()
                                  .Ret<F32>()
                                  .Ret<F32>()
                                  .Attr<int64_t>("cell")
                                  .Attr<bool>("reverse"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(RnnNativeBackward, Backward,
                              ffi::Ffi::Bind()
                                  .Arg<F32>()
                                  .Arg<F32>()
                                  .Arg<F32>()
                                  .Arg<F32>()
                                  .Arg<F32>()
                                  .Arg<F32>()
                                  .Arg<F32>()
                                  .Arg<F32>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<F32>()
                                  .Ret<F32>()
                                  .Ret<F32>()
                                  .Ret<F32>()
                                  .Attr<int64_t>("cell")
                                  .Attr<bool>("reverse"));
