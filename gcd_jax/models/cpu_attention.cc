// Fused softmax attention for XLA:CPU, as two XLA FFI custom calls (forward, backward).
//
// o = softmax(scale · q·kᵀ) · v per row n and head h, never materialising the [N, H, Lq, Lk] logits in
// memory: a group of 16 queries keeps its scores in a per-thread buffer (16 × 6 KB for 1536 keys, in L2),
// next to the (n, h) slice of k (transposed) and v. XLA's own path writes and re-reads the whole logits tensor
// several times (docs/performance.md, "The CPU path"). The backward pass is the flash-attention one
// (Dao et al. 2022, Algorithm 2 without tiling): it recomputes the probabilities from the saved
// log-sum-exp, so nothing of size Lq·Lk is stored between the passes either.
//
// Layout: q [N, Lq, H, D], k/v [N, Lk, H, D] float32 (the model's heads-last layout, read with strides: no
// transposes in the program); o [N, Lq, H, D]; lse [N, H, Lq] = log Σ_j exp(s_ij).
// Threads: XLA:CPU's intra-op pool (the FFI ThreadPool context), plus the calling thread; work items are
// (n, h, block of queries) forward and (n, h) backward (each owns its dk/dv: no atomics).
// Built at first use by gcd_jax/models/cpu_attention.py (g++ -O3 -march=native).

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// One SIMD register of floats, through the GCC/Clang vector extension: 16 lanes where the build machine has
// AVX-512 (-march=native), else 8 (AVX2; two NEON registers on ARM).
#if defined(__AVX512F__)
constexpr int64_t kW = 16;
#else
constexpr int64_t kW = 8;
#endif
typedef float vf __attribute__((vector_size(kW * 4)));
typedef int32_t vi __attribute__((vector_size(kW * 4)));

constexpr int64_t kKeyTile = 8 * kW;  // keys per register tile of the score product (8 registers)
constexpr int64_t kQueryBlock = 256;  // queries per forward work item (k and v are re-laid out once per item)
constexpr int64_t kGroup = 16;        // queries whose value products share each load of v (16 accumulators)
constexpr int64_t kBackwardGroup = 8;  // queries per pass over the keys in the backward (24 accumulators)

inline vf load(const float* p) {
  vf r;
  std::memcpy(&r, p, sizeof(r));
  return r;
}
inline void store(float* p, vf x) { std::memcpy(p, &x, sizeof(x)); }
inline vf splat(float x) { return vf{} + x; }
inline float hsum(vf x) {
  float r = 0.0f;
  for (int64_t t = 0; t < kW; ++t) r += x[t];
  return r;
}

// exp(x) for x ≤ 0 (scores minus their max, or minus the log-sum-exp), vectorised: 2^n · 2^f with
// n = round(x·log2 e), f ∈ [−½, ½], 2^f by its Taylor series to degree 7 (relative error < 1e-7, as expf).
// Inputs below −87 give ~1e-38 instead of 0; callers zero padded lanes explicitly.
inline vf exp_neg(vf x) {
  const vf lo = splat(-87.0f);
  x = x < lo ? lo : x;
  vf t = x * 1.44269504088896341f;
  vf n = (t + 12582912.0f) - 12582912.0f;  // round to nearest (1.5·2²³ trick)
  vf f = (t - n) * 0.69314718055994531f;   // |f| ≤ ln2 / 2
  vf p = splat(1.0f / 5040);
  p = p * f + 1.0f / 720;
  p = p * f + 1.0f / 120;
  p = p * f + 1.0f / 24;
  p = p * f + 1.0f / 6;
  p = p * f + 0.5f;
  p = p * f + 1.0f;
  p = p * f + 1.0f;
  vi e = (__builtin_convertvector(n, vi) + 127) << 23;
  vf scale;
  std::memcpy(&scale, &e, sizeof(scale));
  return p * scale;
}

struct Dims {
  int64_t n, lq, lk, h, d;
  int64_t lkp;  // lk rounded up to a multiple of kW (the vector width)
};

// s[r, 0:lkp] = qs[r] · kt[:, 0:lkp] for `rows` query rows qs[r, 0:d] (already scaled); kt: [d, lkp], d-major.
// Key tiles outside, rows inside: a tile of kt (d × kKeyTile floats, 8 KB for d = 16) stays in L1 for all the
// rows, where a pass over all keys per row would stream the whole kt from L2 for each row.
inline void scores(const float* qs, int64_t rows, const float* kt, float* s, const Dims& g) {
  int64_t j0 = 0;
  for (; j0 + kKeyTile <= g.lkp; j0 += kKeyTile) {
    int64_t r = 0;
    for (; r + 2 <= rows; r += 2) {  // two rows per pass: each key register loaded serves 2 FMAs
      vf a0[kKeyTile / kW] = {}, a1[kKeyTile / kW] = {};
      const float* q0 = qs + r * g.d;
      const float* q1 = q0 + g.d;
      for (int64_t c = 0; c < g.d; ++c) {
        const vf x0 = splat(q0[c]), x1 = splat(q1[c]);
        const float* row = kt + c * g.lkp + j0;
        for (int t = 0; t < kKeyTile / kW; ++t) {
          const vf kv = load(row + kW * t);
          a0[t] += x0 * kv;
          a1[t] += x1 * kv;
        }
      }
      for (int t = 0; t < kKeyTile / kW; ++t) {
        store(s + r * g.lkp + j0 + kW * t, a0[t]);
        store(s + (r + 1) * g.lkp + j0 + kW * t, a1[t]);
      }
    }
    for (; r < rows; ++r) {
      vf acc[kKeyTile / kW] = {};
      const float* q = qs + r * g.d;
      for (int64_t c = 0; c < g.d; ++c) {
        const vf qc = splat(q[c]);
        const float* row = kt + c * g.lkp + j0;
        for (int t = 0; t < kKeyTile / kW; ++t) acc[t] += qc * load(row + kW * t);
      }
      for (int t = 0; t < kKeyTile / kW; ++t) store(s + r * g.lkp + j0 + kW * t, acc[t]);
    }
  }
  for (; j0 < g.lkp; j0 += kW) {
    for (int64_t r = 0; r < rows; ++r) {
      vf acc = {};
      for (int64_t c = 0; c < g.d; ++c) acc += splat(qs[r * g.d + c]) * load(kt + c * g.lkp + j0);
      store(s + r * g.lkp + j0, acc);
    }
  }
}

// Copies the (n, h) slice of x [N, L, H, D] into dst as [D, lp] (transposed, zero-padded to lp columns).
void gather_transposed(const float* x, int64_t n, int64_t h, int64_t l, int64_t lp, const Dims& g, float* dst) {
  std::fill(dst, dst + g.d * lp, 0.0f);
  for (int64_t j = 0; j < l; ++j) {
    const float* src = x + ((n * l + j) * g.h + h) * g.d;
    for (int64_t c = 0; c < g.d; ++c) dst[c * lp + j] = src[c];
  }
}

// Copies the (n, h) slice of x [N, L, H, D] into dst as [L, D] (contiguous rows).
void gather_rows(const float* x, int64_t n, int64_t h, int64_t l, const Dims& g, float* dst) {
  for (int64_t j = 0; j < l; ++j) std::memcpy(dst + j * g.d, x + ((n * l + j) * g.h + h) * g.d, g.d * sizeof(float));
}

// Runs work(i) for i in [0, count) on the pool's threads and the calling thread; returns when all are done.
// The shared state is reference-counted, so a pool task that starts after the work is finished only finds
// nothing left to do.
void parallel_for(ffi::ThreadPool& pool, int64_t count, const std::function<void(int64_t)>& work) {
  struct State {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
    std::function<void(int64_t)> work;
    int64_t count;
  };
  auto st = std::make_shared<State>();
  st->work = work;
  st->count = count;
  auto run = [st]() {
    for (int64_t i; (i = st->next.fetch_add(1)) < st->count;) {
      st->work(i);
      st->done.fetch_add(1, std::memory_order_release);
    }
  };
  const int64_t helpers = std::min<int64_t>(std::max<int64_t>(pool.num_threads() - 1, 0), count - 1);
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule(std::function<void()>(run));
  run();
  while (st->done.load(std::memory_order_acquire) < count) std::this_thread::yield();
}

ffi::Error check(const ffi::Buffer<ffi::F32>& q, const ffi::Buffer<ffi::F32>& k, const ffi::Buffer<ffi::F32>& v,
                 Dims* g) {
  auto dq = q.dimensions(), dk = k.dimensions(), dv = v.dimensions();
  if (dq.size() != 4 || dk.size() != 4 || dv.size() != 4)
    return ffi::Error::InvalidArgument("gcd attention: q, k, v must be [N, L, H, D]");
  for (int a : {0, 2, 3})
    if (dk[a] != dq[a]) return ffi::Error::InvalidArgument("gcd attention: q and k differ in N, H or D");
  for (int a = 0; a < 4; ++a)
    if (dv[a] != dk[a]) return ffi::Error::InvalidArgument("gcd attention: k and v differ in shape");
  *g = Dims{dq[0], dq[1], dk[1], dq[2], dq[3], (dk[1] + kW - 1) / kW * kW};
  return ffi::Error::Success();
}

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> v,
                   float scale, ffi::ResultBuffer<ffi::F32> o, ffi::ResultBuffer<ffi::F32> lse) {
  Dims g;
  if (ffi::Error e = check(q, k, v, &g); e.failure()) return e;
  const float *qp = q.typed_data(), *kp = k.typed_data(), *vp = v.typed_data();
  float *op = o->typed_data(), *lp = lse->typed_data();
  const int64_t blocks = (g.lq + kQueryBlock - 1) / kQueryBlock;
  const int64_t nc = (g.d + kW - 1) / kW;  // value registers per row (rows zero-padded to nc·kW)
  const int64_t w = nc * kW;
  parallel_for(pool, g.n * g.h * blocks, [&](int64_t item) {
    const int64_t n = item / (g.h * blocks), h = item / blocks % g.h, b = item % blocks;
    std::vector<float> kt(g.d * g.lkp), vr(g.lk * w, 0.0f), s(kGroup * g.lkp), qs(kGroup * g.d), acc(kGroup * w);
    gather_transposed(kp, n, h, g.lk, g.lkp, g, kt.data());
    for (int64_t j = 0; j < g.lk; ++j)
      std::memcpy(vr.data() + j * w, vp + ((n * g.lk + j) * g.h + h) * g.d, g.d * sizeof(float));
    const int64_t end = std::min(g.lq, (b + 1) * kQueryBlock);
    for (int64_t i0 = b * kQueryBlock; i0 < end; i0 += kGroup) {
      const int64_t rows = std::min(kGroup, end - i0);
      float m[kGroup], total[kGroup];
      for (int64_t r = 0; r < rows; ++r) {
        const float* qi = qp + ((n * g.lq + i0 + r) * g.h + h) * g.d;
        for (int64_t c = 0; c < g.d; ++c) qs[r * g.d + c] = qi[c] * scale;
      }
      scores(qs.data(), rows, kt.data(), s.data(), g);
      for (int64_t r = 0; r < kGroup; ++r) {
        float* sr = s.data() + r * g.lkp;
        if (r >= rows) {  // a partial last group: zero probabilities, nothing written
          std::fill(sr, sr + g.lkp, 0.0f);
          continue;
        }
        for (int64_t j = g.lk; j < g.lkp; ++j) sr[j] = -3e38f;  // padded keys: below every score
        vf mv = load(sr);
        for (int64_t j = kW; j < g.lkp; j += kW) {
          const vf x = load(sr + j);
          mv = mv > x ? mv : x;
        }
        m[r] = mv[0];
        for (int64_t t = 1; t < kW; ++t) m[r] = std::max(m[r], mv[t]);
        vf sum = {};
        for (int64_t j = 0; j < g.lkp; j += kW) {
          const vf p = exp_neg(load(sr + j) - m[r]);
          store(sr + j, p);
          sum += p;
        }
        for (int64_t j = g.lk; j < g.lkp; ++j) sum[0] -= sr[j];  // the padded keys' ~1e-38 terms
        total[r] = hsum(sum);
      }
      // o_r = Σ_j p_rj v_j for the group's rows at once: each value register loaded once per key serves
      // kGroup FMAs (with one query per pass the loads, not the FMAs, set the pace).
      for (int64_t c = 0; c < nc; ++c) {
        vf a[kGroup] = {};
        const float* col = vr.data() + c * kW;
        for (int64_t j = 0; j < g.lk; ++j) {
          const vf vj = load(col + j * w);
          for (int64_t r = 0; r < kGroup; ++r) a[r] += s[r * g.lkp + j] * vj;
        }
        for (int64_t r = 0; r < kGroup; ++r) store(acc.data() + r * w + c * kW, a[r]);
      }
      for (int64_t r = 0; r < rows; ++r) {
        float* oi = op + ((n * g.lq + i0 + r) * g.h + h) * g.d;
        const float inv = 1.0f / total[r];
        for (int64_t c = 0; c < g.d; ++c) oi[c] = acc[r * w + c] * inv;
        lp[(n * g.h + h) * g.lq + i0 + r] = m[r] + std::log(total[r]);
      }
    }
  });
  return ffi::Error::Success();
}

ffi::Error Backward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> v,
                    ffi::Buffer<ffi::F32> o, ffi::Buffer<ffi::F32> lse, ffi::Buffer<ffi::F32> dout, float scale,
                    ffi::ResultBuffer<ffi::F32> dq, ffi::ResultBuffer<ffi::F32> dk, ffi::ResultBuffer<ffi::F32> dv) {
  Dims g;
  if (ffi::Error e = check(q, k, v, &g); e.failure()) return e;
  const float *qp = q.typed_data(), *kp = k.typed_data(), *vp = v.typed_data(), *op = o.typed_data(),
              *lp = lse.typed_data(), *gp = dout.typed_data();
  float *dqp = dq->typed_data(), *dkp = dk->typed_data(), *dvp = dv->typed_data();
  const int64_t w = (g.d + kW - 1) / kW * kW;  // padded row width of the per-(n, h) row buffers
  constexpr int64_t G = kBackwardGroup;
  parallel_for(pool, g.n * g.h, [&](int64_t item) {
    const int64_t n = item / g.h, h = item % g.h;
    std::vector<float> kt(g.d * g.lkp), vt(g.d * g.lkp), kr(g.lk * w, 0.0f), dkr(g.lk * w, 0.0f),
        dvr(g.lk * w, 0.0f), p(G * g.lkp), dp(G * g.lkp), qs(G * g.d), gs(G * g.d), qw(G * w), gw(G * w), dqw(G * w);
    gather_transposed(kp, n, h, g.lk, g.lkp, g, kt.data());
    gather_transposed(vp, n, h, g.lk, g.lkp, g, vt.data());
    for (int64_t j = 0; j < g.lk; ++j) std::memcpy(kr.data() + j * w, kp + ((n * g.lk + j) * g.h + h) * g.d,
                                                   g.d * sizeof(float));
    for (int64_t i0 = 0; i0 < g.lq; i0 += G) {
      const int64_t rows = std::min(G, g.lq - i0);
      float l[G], delta[G];
      std::fill(qw.begin(), qw.end(), 0.0f);
      std::fill(gw.begin(), gw.end(), 0.0f);
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t row = ((n * g.lq + i0 + r) * g.h + h) * g.d;
        delta[r] = 0.0f;  // Σ_d dO·O = Σ_j P·dP
        for (int64_t c = 0; c < g.d; ++c) {
          qs[r * g.d + c] = qp[row + c] * scale;
          qw[r * w + c] = qp[row + c];  // dk_j += (scale · dS_ij) · q_i, the scale is in dp below
          gs[r * g.d + c] = gw[r * w + c] = gp[row + c];
          delta[r] += gp[row + c] * op[row + c];
        }
        l[r] = lp[(n * g.h + h) * g.lq + i0 + r];
      }
      scores(qs.data(), rows, kt.data(), p.data(), g);  // s_ij
      scores(gs.data(), rows, vt.data(), dp.data(), g);  // dP_ij = dO_i · v_j
      for (int64_t r = 0; r < G; ++r) {
        float* pr = p.data() + r * g.lkp;
        float* dr = dp.data() + r * g.lkp;
        if (r >= rows) {  // a partial last group: rows of zeros contribute nothing
          std::fill(pr, pr + g.lkp, 0.0f);
          std::fill(dr, dr + g.lkp, 0.0f);
          continue;
        }
        for (int64_t j = 0; j < g.lkp; j += kW) {
          const vf pj = exp_neg(load(pr + j) - l[r]);
          store(pr + j, pj);
          store(dr + j, pj * (load(dr + j) - delta[r]) * scale);  // dS_ij · scale
        }
        for (int64_t j = g.lk; j < g.lkp; ++j) pr[j] = dr[j] = 0.0f;  // padded keys
      }
      // One pass over the keys for the whole group: dv_j, dk_j and k_j are loaded once per key and serve G
      // queries; the G dq accumulators stay in registers.
      for (int64_t c = 0; c < w; c += kW) {
        vf gc[G], qc[G], dq[G];
        for (int64_t r = 0; r < G; ++r) {
          gc[r] = load(&gw[r * w + c]);
          qc[r] = load(&qw[r * w + c]);
          dq[r] = vf{};
        }
        for (int64_t j = 0; j < g.lk; ++j) {
          float* dvj = &dvr[j * w + c];
          float* dkj = &dkr[j * w + c];
          const vf kj = load(&kr[j * w + c]);
          vf av = load(dvj), ak = load(dkj);
          for (int64_t r = 0; r < G; ++r) {
            const float pr = p[r * g.lkp + j], dr = dp[r * g.lkp + j];
            av += pr * gc[r];
            ak += dr * qc[r];
            dq[r] += dr * kj;
          }
          store(dvj, av);
          store(dkj, ak);
        }
        for (int64_t r = 0; r < G; ++r) store(&dqw[r * w + c], dq[r]);
      }
      for (int64_t r = 0; r < rows; ++r)
        std::memcpy(dqp + ((n * g.lq + i0 + r) * g.h + h) * g.d, &dqw[r * w], g.d * sizeof(float));
    }
    for (int64_t j = 0; j < g.lk; ++j) {
      const int64_t row = ((n * g.lk + j) * g.h + h) * g.d;
      std::memcpy(dkp + row, dkr.data() + j * w, g.d * sizeof(float));
      std::memcpy(dvp + row, dvr.data() + j * w, g.d * sizeof(float));
    }
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(GcdAttentionForward, Forward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("scale")
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(GcdAttentionBackward, Backward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("scale")
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
