"""Small C kernels for the kit's memory-bound loops on CPU, built on first use; torch otherwise.

Five kernels, each the exact transcription of a pure torch function of the kit:

* ``ensf_steps_f32`` — consecutive calls of
  :func:`turbda_kit.filters.ensf_fused.fused_step_`: EnSF Euler-Maruyama steps
  (counter-based noise, identity/arctan likelihood score, update), all steps of a chunk of
  columns while it is in cache (``ensf_step_f32``: one step);
* ``counter_fill_f32`` — :func:`turbda_kit.random_streams.counter_normal` into a buffer;
* ``l96_rk4_stage_f32`` (and ``_f64``) — one stage of
  :func:`turbda_kit.models.lorenz96.rk4_stage_`
  (tendency, accumulator, next stage state) in one pass over memory instead of about
  six, writing the next stage into a second padded buffer;
* ``l96_rk4_ring`` — whole RK4 steps of full periodic rings (halo copies and the four
  stages above), each row through all the steps in one call: small ensembles (DAPPER's
  40-variable tests) otherwise spend their time in Python between tiny kernels.
* ``transpose_copy_`` (and ``TransposeCopy``, its checks done once for a fixed
  destination and source layout) — ``dst.copy_(src.transpose(-1, -2))`` for complex
  arrays, tile by tile: the SQG model's Jacobian turns its blocks between the y and x
  transforms. Only moves bits.

The C code performs the same exactly rounded float32 operations in the same order as the
torch code (compiled with ``-ffp-contract=off``: no fused multiply-adds), integer hashing in
unsigned 32-bit arithmetic, and no library transcendental (``fmaf`` only where torch itself fuses: ``add`` with
``alpha``), so it returns **the same bits**
as the torch functions, which remain the reference and run on every other device (tested
in ``tests/filters/test_ensf_fused.py``). GCC or Clang vectorises the loops (AVX2 on
x86-64, ``-march=native``); one call works on one thread, and :func:`ensf_steps_f32`
splits the columns between ``threads`` Python threads (the call releases the GIL).

The shared library is compiled once per source, flags and CPU capability into
``$TURBDA_KERNEL_CACHE`` (default ``~/.cache/turbda_kit/kernels``) with the C compiler
``$CC`` (default ``cc``), about a second. Without a compiler the kit falls back to the torch
functions (slower, same results) and says so once. ``TURBDA_NATIVE=0`` disables the kernel.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import os
import platform
import subprocess
import tempfile
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["available", "counter_fill_f32", "ensf_step_f32", "ensf_steps_f32",
           "l96_rk4_ring", "l96_rk4_stage_f32", "TransposeCopy",
           "transpose_copy_"]

_SOURCE = r"""
#include <math.h>
#include <stdint.h>
#include <string.h>

#define GOLDEN 0x9E3779B9u
#define SALT_2 0x632BE5ABu
#define SALT_3 0x85157AF5u

static inline uint32_t mix32(uint32_t h) {
    h ^= h >> 16; h *= 0x7FEB352Du; h ^= h >> 15; h *= 0x846CA68Bu; h ^= h >> 16;
    return h;
}
static inline float as_float(uint32_t b) { float f; memcpy(&f, &b, 4); return f; }
static inline uint32_t as_bits(float f) { uint32_t b; memcpy(&b, &f, 4); return b; }

static inline float log_positive(float u) {
    uint32_t bits = as_bits(u);
    int32_t e = (int32_t)(bits >> 23) - 127;
    float m = as_float((bits & 0x7FFFFFu) | 0x3F800000u);
    int32_t high = m > (float)1.4142135623730951;
    m = high ? m * 0.5f : m;
    e += high;
    float s = (m - 1.0f) / (m + 1.0f);
    float s2 = s * s;
    float poly = ((s2 * (float)0.30100335670270395 + (float)0.3996579460098569) * s2
                  + (float)0.666669484545005) * s2 + 2.0f;
    return (float)e * (float)0.6931471805599453 + s * poly;
}

static inline float sqrt_nonnegative(float v) {
    float vs = v > 1e-30f ? v : 1e-30f;
    float y = as_float(0x5F375A86u - (as_bits(vs) >> 1));
    float half = vs * 0.5f;
    y = y * (1.5f - half * y * y);
    y = y * (1.5f - half * y * y);
    y = y * (1.5f - half * y * y);
    return v * y;
}

#define TWO_PI_2_32 ((float)(2.0 * 3.141592653589793 / 4294967296.0))

static inline void cos_sin_turns(uint32_t d, float* cosine, float* sine) {
    uint32_t o = d + 0x20000000u;
    uint32_t q = (o >> 30) & 3u;
    float phi = (float)((int32_t)(o & 0x3FFFFFFFu) - 0x20000000) * TWO_PI_2_32;
    float p2 = phi * phi;
    float c = (((p2 * (float)(1.0 / 40320) - (float)(1.0 / 720)) * p2 + (float)(1.0 / 24)) * p2
               - 0.5f) * p2 + 1.0f;
    float s = ((((p2 * (float)(1.0 / 362880) - (float)(1.0 / 5040)) * p2 + (float)(1.0 / 120))
                * p2 - (float)(1.0 / 6)) * p2 + 1.0f) * phi;
    int32_t even = (q & 1u) == 0;
    float cv = even ? c : s;
    float sv = even ? s : c;
    *cosine = ((q + 1u) & 2u) == 0 ? cv : -cv;
    *sine = (q & 2u) == 0 ? sv : -sv;
}

static inline void row_keys(int64_t pair, int32_t w0, int32_t w1, uint32_t* k) {
    uint32_t r = mix32((uint32_t)pair * GOLDEN + (uint32_t)w0);
    k[0] = mix32(r ^ (uint32_t)w1);
    k[1] = mix32(k[0] + SALT_2);
    k[2] = mix32(k[1] + SALT_3);
}

/* The normals of rows 2p (cosine) and 2p + 1 (sine) at one column. */
static inline void counter_pair(uint32_t column, const uint32_t* k, float* z0, float* z1) {
    uint32_t a = mix32(column + k[0]);
    uint32_t b = mix32(a ^ k[1]);
    uint32_t d = mix32(a + k[2]);
    float u = ((float)(int32_t)((b >> 1) & 0x7FFFFFFFu) + 0.5f) * 0x1p-31f;
    float radius = sqrt_nonnegative(log_positive(u) * -2.0f);
    float c, s;
    cos_sin_turns(d, &c, &s);
    *z0 = radius * c;
    *z1 = radius * s;
}

#define HALF_PI ((float)1.5707963267948966)

/* The kernels work through columns in chunks, stage by stage (hash, radius, angle,
   update): each stage is a short loop whose iterations the CPU overlaps, where one long
   loop body would be bound by its dependency chain. Same operations, same bits. */
#define CHUNK 256

static inline void pair_chunk(int64_t len, uint32_t col, const uint32_t* k, float* z0,
                              float* z1) {
    float u[CHUNK];
    uint32_t d[CHUNK];
    for (int64_t t = 0; t < len; ++t) {
        uint32_t a = mix32(col + (uint32_t)t + k[0]);
        uint32_t b = mix32(a ^ k[1]);
        d[t] = mix32(a + k[2]);
        u[t] = ((float)(int32_t)((b >> 1) & 0x7FFFFFFFu) + 0.5f) * 0x1p-31f;
    }
    for (int64_t t = 0; t < len; ++t) u[t] = log_positive(u[t]) * -2.0f;
    for (int64_t t = 0; t < len; ++t) u[t] = sqrt_nonnegative(u[t]);
    for (int64_t t = 0; t < len; ++t) {
        float c, s;
        cos_sin_turns(d[t], &c, &s);
        z0[t] = u[t] * c;
        z1[t] = u[t] * s;
    }
}

void counter_fill_f32(float* out, int64_t ld, int64_t rows, int64_t row0, int64_t n,
                      int32_t w0, int32_t w1, int32_t col0) {
    /* Global rows 2p and 2p + 1 come from one Box-Muller pair: draw it once for both. */
    float z[2][CHUNK];
    for (int64_t g = row0 - (row0 & 1); g < row0 + rows; g += 2) {
        uint32_t k[3];
        row_keys(g >> 1, w0, w1, k);
        for (int64_t j = 0; j < n; j += CHUNK) {
            int64_t len = n - j < CHUNK ? n - j : CHUNK;
            pair_chunk(len, (uint32_t)col0 + (uint32_t)j, k, z[0], z[1]);
            for (int64_t h = 0; h < 2; ++h)
                if (g + h >= row0 && g + h < row0 + rows)
                    memcpy(out + (g + h - row0) * ld + j, z[h], len * sizeof(float));
        }
    }
}

static inline float arctan_score(float xv, float obs, float iv, float scale) {
    float z = xv * scale;
    float a = z < 0 ? -z : z;
    int32_t big = a > 1.0f;
    float den = a * a + 1.0f;
    float larger = big ? a : 1.0f;
    float r = 1.0f / (larger * den);
    float weight = r * larger;
    float t = big ? r * den : a;
    float t2 = t * t;
    float poly = t2 * (float)-0.0040545427547270625 + (float)0.0218628859621713;
    poly = poly * t2 + (float)-0.05591225403242367;
    poly = poly * t2 + (float)0.09642195062231672;
    poly = poly * t2 + (float)-0.13908630357600724;
    poly = poly * t2 + (float)0.19946566325582768;
    poly = poly * t2 + (float)-0.3332986091954358;
    poly = poly * t2 + (float)0.9999993356526078;
    float angle = poly * t;
    angle = big ? HALF_PI - angle : angle;
    angle = z < 0 ? -angle : angle;
    return (obs - angle) * weight * (iv * scale);
}

static inline float update(float xv, float pv, float score, float xi, float keep, float pull,
                           float like, float noise) {
    return xv * keep + pv * pull + score * like + xi * noise;
}

/* Loops specialised on the operator and on a scalar or per-value 1/sigma^2, so that each
   one vectorises. */
#define UPDATE_LOOP(SCORE) \
    for (int64_t t = 0; t < len; ++t) { \
        float s = SCORE; \
        x[t] = update(x[t], prior[t], s, z[t], keep, pull, like, noise); \
    }

static inline void update_row(int64_t len, float* x, const float* prior, const float* obs,
                              const float* inv_var, int64_t iv_stride, const float* z,
                              float keep, float pull, float like, float noise, float scale,
                              int32_t arctan) {
    float iv0 = inv_var[0];
    if (arctan && iv_stride == 0) {
        UPDATE_LOOP(arctan_score(x[t], obs[t], iv0, scale))
    } else if (arctan) {
        UPDATE_LOOP(arctan_score(x[t], obs[t], inv_var[t], scale))
    } else if (iv_stride == 0) {
        UPDATE_LOOP((obs[t] - x[t]) * iv0)
    } else {
        UPDATE_LOOP((obs[t] - x[t]) * inv_var[t])
    }
}

/* n_steps EnSF steps on columns [j0, j1) of all members; rows 2p and 2p + 1 share the
   draws. Columns do not interact (paired score, elementwise operator), so each chunk of
   columns runs through all the steps while it sits in the L1 cache: the ensemble is read
   and written once per call, not once per step. Each value sees the same operations in
   the same order as step by step, hence the same bits. words: 2 per step; coefficients:
   keep, pull, like, noise, scale per step. */
void ensf_steps_f32(float* x, const float* prior, int64_t ld_x, int64_t ld_prior,
                    const float* obs, const float* inv_var, int64_t iv_stride,
                    int64_t members, int64_t j0, int64_t j1, int64_t n_steps,
                    const int32_t* words, int32_t col0, const float* coefficients,
                    int32_t arctan) {
    float z[2][CHUNK];
    for (int64_t i = 0; i < members; i += 2) {
        for (int64_t j = j0; j < j1; j += CHUNK) {
            int64_t len = j1 - j < CHUNK ? j1 - j : CHUNK;
            const float* iv = inv_var + j * iv_stride;
            for (int64_t step = 0; step < n_steps; ++step) {
                uint32_t k[3];
                row_keys(i >> 1, words[2 * step], words[2 * step + 1], k);
                pair_chunk(len, (uint32_t)col0 + (uint32_t)j, k, z[0], z[1]);
                const float* c = coefficients + 5 * step;
                for (int64_t r = i; r < i + 2 && r < members; ++r)
                    update_row(len, x + r * ld_x + j, prior + r * ld_prior + j, obs + j, iv,
                               iv_stride, z[r - i], c[0], c[1], c[2], c[3], c[4], arctan);
            }
        }
    }
}

/* One RK4 stage of Lorenz-96 on rows [r0, r1) of a slab of m points. src: the stage state
   with its halo (row stride ld_src; x_{i-2} .. x_{i+1} of point i at src[i .. i+3]); x: the
   state at the start of the step; acc: the RK4 sum of the stage tendencies. Stages 0-2
   write the next stage state x + shift * k into dst's interior (dst[2 .. m+2) of each
   row; its halo is the caller's); stage 3 updates x. The operations are those of
   rk4_stage_ in torch, in its order: ((x_{i+1} - x_{i-2}) * x_{i-1} - x_i) + F, then
   torch's add with alpha, which is one fused multiply-add with an alpha of the state's
   precision (fmaf here; fma in the double twin generated below). */
void l96_rk4_stage_f32(const float* src, int64_t ld_src, float* x, int64_t ld_x, float* acc,
                       int64_t ld_acc, float* dst, int64_t ld_dst, int64_t r0, int64_t r1,
                       int64_t m, int32_t stage, float weight, float shift, float forcing) {
    for (int64_t r = r0; r < r1; ++r) {
        const float* p = src + r * ld_src;
        float* xr = x + r * ld_x;
        float* a = acc + r * ld_acc;
        if (stage == 0) {
            float* d = dst + r * ld_dst + 2;
            for (int64_t i = 0; i < m; ++i) {
                float k = ((p[i + 3] - p[i]) * p[i + 1] - p[i + 2]) + forcing;
                a[i] = k;
                d[i] = fmaf(k, shift, xr[i]);
            }
        } else if (stage < 3) {
            float* d = dst + r * ld_dst + 2;
            for (int64_t i = 0; i < m; ++i) {
                float k = ((p[i + 3] - p[i]) * p[i + 1] - p[i + 2]) + forcing;
                a[i] = fmaf(k, weight, a[i]);
                d[i] = fmaf(k, shift, xr[i]);
            }
        } else {
            for (int64_t i = 0; i < m; ++i) {
                float k = ((p[i + 3] - p[i]) * p[i + 1] - p[i + 2]) + forcing;
                float s = a[i] + k;
                a[i] = s;
                xr[i] = fmaf(s, shift, xr[i]);
            }
        }
    }
}

/* n_steps RK4 steps of Lorenz-96 on rows [r0, r1) of x (each row a full periodic ring of
   m points), one row at a time through all the steps while it is in cache. coef: the
   stage shifts 0.5 dt, 0.5 dt, dt, then dt / 6 and the weights 2, 2, 1 of stages 1-3
   (the values rk4_stage_ passes). work: 3 m + 6 scratch values. Per point the same
   operations as rk4_step_ with periodic_halo_ (halo copies, then the stages above). */
void l96_rk4_ring_f32(float* x, int64_t ld_x, int64_t r0, int64_t r1, int64_t m,
                      int64_t n_steps, const float* coef, float forcing, float* work) {
    float* pa = work;
    float* pb = work + (m + 3);
    float* acc = work + 2 * (m + 3);
    for (int64_t r = r0; r < r1; ++r) {
        float* xr = x + r * ld_x;
        for (int64_t step = 0; step < n_steps; ++step) {
            float* src = pa;
            float* dst = pb;
            memcpy(src + 2, xr, (size_t)m * sizeof(float));
            for (int32_t stage = 0; stage < 4; ++stage) {
                src[0] = src[m];
                src[1] = src[m + 1];
                src[m + 2] = src[2];
                float weight = stage == 0 ? 1.0f : coef[3 + stage];
                l96_rk4_stage_f32(src, 0, xr, 0, acc, 0, stage < 3 ? dst : 0, 0,
                                  0, 1, m, stage, weight, coef[stage], forcing);
                float* t = src; src = dst; dst = t;
            }
        }
    }
}

"""
# The double-precision twins of the Lorenz-96 kernels (torch's float64 ops): the same text
# with double and fma, generated so that the two kernels cannot drift apart.
_L96_STAGE = _SOURCE[_SOURCE.index("/* One RK4 stage of Lorenz-96"):]
_SOURCE += "\n" + (_L96_STAGE.replace("_f32(", "_f64(").replace("fmaf(", "fma(")
                   .replace("float", "double"))
# Appended after the twins (it is not to be twinned).
_SOURCE += r"""
/* Transposed copy of complex values: dst[b][j][i] = src[b][i][j] for i < rows, j < cols
   (strides in complex values), in tiles of 8 x 8 so that the reads of
   a tile's rows and the writes of its columns share cache lines; with AVX, each tile by
   4 x 4 (complex64: 64-bit elements) or 2 x 2 (complex128: 128-bit) register
   transposes (benchmarks/bench_sqg_copies.py times it against torch). Only moves
   bits: the same result whatever the order. The remainder rows and columns go scalar. */
#if defined(__AVX__)
#include <immintrin.h>
#endif
#define TC_TILE 8
static void tc_tiles(int kind, const void* src, void* dst, int64_t batch, int64_t rows,
                     int64_t cols, int64_t src_batch, int64_t src_row, int64_t dst_batch,
                     int64_t dst_row) {
    /* kind 0: complex64 moved as doubles (one 64-bit word per value); kind 1:
       complex128 as pairs of doubles. Blocks: 4 values (kind 0) or 2 (kind 1). */
    const int64_t blk = kind == 0 ? 4 : 2;
    const int64_t w = kind == 0 ? 1 : 2;  /* doubles per value */
    for (int64_t b = 0; b < batch; ++b) {
        const double* s = (const double*)src + b * src_batch * w;
        double* d = (double*)dst + b * dst_batch * w;
        for (int64_t i0 = 0; i0 < rows; i0 += TC_TILE) {
            int64_t i1 = i0 + TC_TILE < rows ? i0 + TC_TILE : rows;
            for (int64_t j0 = 0; j0 < cols; j0 += TC_TILE) {
                int64_t j1 = j0 + TC_TILE < cols ? j0 + TC_TILE : cols;
#if defined(__AVX__)
                if (i1 - i0 == TC_TILE && j1 - j0 == TC_TILE) {
                    for (int64_t i = i0; i < i1; i += blk)
                        for (int64_t j = j0; j < j1; j += blk) {
                            if (kind == 0) {
                                const double* p = s + i * src_row + j;
                                double* q = d + j * dst_row + i;
                                __m256d r0 = _mm256_loadu_pd(p);
                                __m256d r1 = _mm256_loadu_pd(p + src_row);
                                __m256d r2 = _mm256_loadu_pd(p + 2 * src_row);
                                __m256d r3 = _mm256_loadu_pd(p + 3 * src_row);
                                __m256d t0 = _mm256_unpacklo_pd(r0, r1);
                                __m256d t1 = _mm256_unpackhi_pd(r0, r1);
                                __m256d t2 = _mm256_unpacklo_pd(r2, r3);
                                __m256d t3 = _mm256_unpackhi_pd(r2, r3);
                                _mm256_storeu_pd(q, _mm256_permute2f128_pd(t0, t2, 0x20));
                                _mm256_storeu_pd(q + dst_row,
                                                 _mm256_permute2f128_pd(t1, t3, 0x20));
                                _mm256_storeu_pd(q + 2 * dst_row,
                                                 _mm256_permute2f128_pd(t0, t2, 0x31));
                                _mm256_storeu_pd(q + 3 * dst_row,
                                                 _mm256_permute2f128_pd(t1, t3, 0x31));
                            } else {
                                const double* p = s + (i * src_row + j) * 2;
                                double* q = d + (j * dst_row + i) * 2;
                                __m256d r0 = _mm256_loadu_pd(p);
                                __m256d r1 = _mm256_loadu_pd(p + 2 * src_row);
                                _mm256_storeu_pd(q, _mm256_permute2f128_pd(r0, r1, 0x20));
                                _mm256_storeu_pd(q + 2 * dst_row,
                                                 _mm256_permute2f128_pd(r0, r1, 0x31));
                            }
                        }
                    continue;
                }
#endif
                if (kind == 0) {
                    for (int64_t j = j0; j < j1; ++j)
                        for (int64_t i = i0; i < i1; ++i)
                            d[j * dst_row + i] = s[i * src_row + j];
                } else {
                    for (int64_t j = j0; j < j1; ++j)
                        for (int64_t i = i0; i < i1; ++i) {
                            d[(j * dst_row + i) * 2] = s[(i * src_row + j) * 2];
                            d[(j * dst_row + i) * 2 + 1] = s[(i * src_row + j) * 2 + 1];
                        }
                }
            }
        }
    }
}
void transpose_copy_c64(const void* src, void* dst, int64_t batch, int64_t rows,
                        int64_t cols, int64_t src_batch, int64_t src_row, int64_t dst_batch,
                        int64_t dst_row) {
    tc_tiles(0, src, dst, batch, rows, cols, src_batch, src_row, dst_batch, dst_row);
}
void transpose_copy_c128(const void* src, void* dst, int64_t batch, int64_t rows,
                         int64_t cols, int64_t src_batch, int64_t src_row, int64_t dst_batch,
                         int64_t dst_row) {
    tc_tiles(1, src, dst, batch, rows, cols, src_batch, src_row, dst_batch, dst_row);
}
"""

_lock = threading.Lock()
_state: dict[str, object] = {}


def _flag_sets() -> list[list[str]]:
    # No contraction into FMAs (same roundings as torch); -fno-trapping-math lets the
    # compiler turn the selects into blends, hence vectorise (results unchanged). First
    # choice: this CPU's vector units and tuning (-march=native; the cache key includes the
    # CPU's identity), 25-40% faster than a generic AVX2 target on the machine of
    # docs/ensf.md; if the compiler refuses it, the compiler's default target.
    base = ["-O3", "-std=c11", "-fPIC", "-shared", "-ffp-contract=off", "-fno-fast-math",
            "-fno-math-errno", "-fno-trapping-math"]
    return [[*base, "-march=native"], base]


def _cpu_identity() -> str:
    # What -march=native depends on: the CPU model and its feature flags.
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    wanted = [line for line in lines if line.startswith(("model name", "flags", "Features",
                                                         "CPU part"))]
    return "\n".join(sorted(set(wanted)))


def _compile(compiler: str, flags: list[str], cache: Path) -> Path:
    tag = hashlib.sha256("\0".join([_SOURCE, compiler, *flags, platform.machine(),
                                    _cpu_identity()]).encode()).hexdigest()[:16]
    library = cache / f"ensf_kernels_{tag}.so"
    if not library.exists():
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            source = Path(tmp) / "ensf_kernels.c"
            source.write_text(_SOURCE)
            built = Path(tmp) / library.name
            subprocess.run([compiler, *flags, "-o", str(built), str(source)], check=True,
                           capture_output=True, timeout=300)
            os.replace(built, library)        # atomic: concurrent ranks may race here
    return library


def _build() -> ctypes.CDLL | None:
    if os.environ.get("TURBDA_NATIVE", "1") == "0":
        return None
    compiler = os.environ.get("CC", "cc")
    cache = Path(os.environ.get("TURBDA_KERNEL_CACHE",
                                Path.home() / ".cache" / "turbda_kit" / "kernels"))
    lib = error = None
    for flags in _flag_sets():
        try:
            lib = ctypes.CDLL(str(_compile(compiler, flags, cache)))
            break
        except (OSError, subprocess.SubprocessError) as err:
            error = err
    if lib is None:
        detail = getattr(error, "stderr", b"") or b""
        warnings.warn(f"turbda_kit: the C kernel for the EnSF step could not be built "
                      f"({type(error).__name__}: {str(error)[:200]} {detail[-300:]!r}); using "
                      f"the torch implementation (same results, slower)", RuntimeWarning,
                      stacklevel=3)
        return None
    i64, i32, ptr = ctypes.c_int64, ctypes.c_int32, ctypes.c_void_p
    lib.counter_fill_f32.argtypes = [ptr, i64, i64, i64, i64, i32, i32, i32]
    lib.counter_fill_f32.restype = None
    lib.ensf_steps_f32.argtypes = [ptr, ptr, i64, i64, ptr, ptr, i64, i64, i64, i64, i64, ptr,
                                   i32, ptr, i32]
    lib.ensf_steps_f32.restype = None
    f32 = ctypes.c_float
    lib.l96_rk4_stage_f32.argtypes = [ptr, i64, ptr, i64, ptr, i64, ptr, i64, i64, i64, i64,
                                      i32, f32, f32, f32]
    lib.l96_rk4_stage_f32.restype = None
    f64 = ctypes.c_double
    lib.l96_rk4_stage_f64.argtypes = [ptr, i64, ptr, i64, ptr, i64, ptr, i64, i64, i64, i64,
                                      i32, f64, f64, f64]
    lib.l96_rk4_stage_f64.restype = None
    lib.l96_rk4_ring_f32.argtypes = [ptr, i64, i64, i64, i64, i64, ptr, f32, ptr]
    lib.l96_rk4_ring_f32.restype = None
    lib.l96_rk4_ring_f64.argtypes = [ptr, i64, i64, i64, i64, i64, ptr, f64, ptr]
    lib.l96_rk4_ring_f64.restype = None
    for name in ("transpose_copy_c64", "transpose_copy_c128"):
        getattr(lib, name).argtypes = [ptr, ptr, i64, i64, i64, i64, i64, i64, i64]
        getattr(lib, name).restype = None
    return lib


def _library() -> ctypes.CDLL | None:
    with _lock:
        if "lib" not in _state:
            _state["lib"] = _build()
        return _state["lib"]


def available() -> bool:
    """Whether the C kernel is built and loaded (building it on first call)."""
    return _library() is not None


def _rows_ok(t: Tensor, dtype: torch.dtype = torch.float32) -> bool:
    return t.device.type == "cpu" and t.dtype == dtype and t.dim() == 2 and \
        t.stride(1) == 1


def counter_fill_f32(out: Tensor, words: tuple[int, int], column0: int, row0: int = 0) -> bool:
    """Fill a float32 CPU ``(rows, m)`` tensor (unit column stride) with counter normals.

    Returns False (and does nothing) when the kernel or the layout is not available.
    """
    lib = _library()
    if lib is None or not _rows_ok(out):
        return False
    lib.counter_fill_f32(out.data_ptr(), out.stride(0), out.shape[0], row0, out.shape[1],
                         words[0], words[1], column0)
    return True


def ensf_steps_f32(x: Tensor, prior: Tensor, obs: Tensor, inv_var: Tensor,
                   words: list[tuple[int, int]], column0: int,
                   coefficients: list[tuple[float, ...]], operator: str,
                   threads: int = 1) -> bool:
    """Consecutive :func:`turbda_kit.filters.ensf_fused.fused_step_` calls in C; same bits.

    Step ``s`` uses ``words[s]`` and ``coefficients[s]``. Chunks of columns go through all
    the steps while in cache (columns do not interact), so the ensemble is streamed once.

    Parameters
    ----------
    x, prior : Tensor, shape ``(M, n)``, float32, CPU, unit column stride
        ``x`` is updated in place.
    obs : Tensor, shape ``(n,)``, contiguous
    inv_var : Tensor, shape ``(1,)`` or ``(n,)``, contiguous
    words : list of (int, int)
        Noise key words of each step (:func:`turbda_kit.random_streams.counter_words`).
    column0 : int
        Global column of ``x[:, 0]``.
    coefficients : list of (keep, pull, like, noise, scale)
        One tuple per step.
    operator : {"identity", "arctan"}
    threads : int
        Column ranges worked on concurrently (the calls release the GIL); 1 uses no
        helper thread.

    Returns
    -------
    bool
        False (nothing done) when the kernel or the layout is not available.
    """
    lib = _library()
    if lib is None or not (_rows_ok(x) and _rows_ok(prior) and obs.is_contiguous() and
                           inv_var.is_contiguous() and obs.dtype == torch.float32 and
                           inv_var.dtype == torch.float32 and x.device == obs.device ==
                           inv_var.device) or len(words) != len(coefficients):
        return False
    members, n = x.shape
    iv_stride = 0 if inv_var.numel() == 1 else 1
    word_array = torch.tensor(words, dtype=torch.int32).reshape(-1)
    coefficient_array = torch.tensor(coefficients, dtype=torch.float32).reshape(-1)

    def run(part: int, j0: int, j1: int) -> None:
        lib.ensf_steps_f32(x.data_ptr(), prior.data_ptr(), x.stride(0), prior.stride(0),
                           obs.data_ptr(), inv_var.data_ptr(), iv_stride, members, j0, j1,
                           len(words), word_array.data_ptr(), column0,
                           coefficient_array.data_ptr(), 1 if operator == "arctan" else 0)

    _split(run, n, max(1, min(int(threads), n // 4096 or 1)))
    return True


def ensf_step_f32(x: Tensor, prior: Tensor, obs: Tensor, inv_var: Tensor,
                  words: tuple[int, int], column0: int, coefficients: tuple[float, ...],
                  operator: str, threads: int = 1) -> bool:
    """One :func:`turbda_kit.filters.ensf_fused.fused_step_` in C, in place; same bits.

    Parameters as :func:`ensf_steps_f32`, for one step (``words``: one pair,
    ``coefficients``: one ``(keep, pull, like, noise, scale)``).
    """
    return ensf_steps_f32(x, prior, obs, inv_var, [tuple(words)], column0,
                          [tuple(coefficients)], operator, threads)


def l96_rk4_stage_f32(src: Tensor, x: Tensor, acc: Tensor, dst: Tensor | None, stage: int,
                      weight: float, shift: float, forcing: float, threads: int = 1) -> bool:
    """One :func:`turbda_kit.models.lorenz96.rk4_stage_` in C; same bits, one pass.

    Float32 tensors use the float kernel, float64 ones its double twin (the name keeps
    the first kernel's).

    Parameters
    ----------
    src : Tensor, shape ``(rows, m + 3)``
        The stage state with its filled halo.
    x, acc : Tensor, shape ``(rows, m)``
        State at the step's start (updated at stage 3) and the RK4 accumulator.
    dst : Tensor, shape ``(rows, m + 3)``, or None
        Stages 0-2: receives the next stage state in its interior (not its halo).
    stage : int
        0..3.
    weight, shift : float
        The stage's accumulator weight (unused at stage 0) and the factor of its tendency
        in the next stage state (stage 3: ``dt / 6`` for the accumulator).
    forcing : float
    threads : int
        Row ranges worked on concurrently (the calls release the GIL).

    Returns
    -------
    bool
        False (nothing done) when the kernel or the layout is not available.
    """
    lib = _library()
    tensors = [src, x, acc] + ([dst] if dst is not None else [])
    if lib is None or x.dtype not in (torch.float32, torch.float64) or \
            not all(_rows_ok(t, x.dtype) for t in tensors) or (stage < 3) != (dst is not None):
        return False
    rows, m = x.shape
    dst_ptr, ld_dst = (dst.data_ptr(), dst.stride(0)) if dst is not None else (None, 0)
    kernel = lib.l96_rk4_stage_f32 if x.dtype == torch.float32 else lib.l96_rk4_stage_f64

    def run(part: int, r0: int, r1: int) -> None:
        kernel(src.data_ptr(), src.stride(0), x.data_ptr(), x.stride(0), acc.data_ptr(),
               acc.stride(0), dst_ptr, ld_dst, r0, r1, m, stage, weight, shift, forcing)

    threads = max(1, min(int(threads), rows))
    _split(run, rows, 1 if rows * m < 1 << 16 else threads)
    return True


def l96_rk4_ring(x: Tensor, n_steps: int, dt: float, forcing: float, threads: int = 1
                 ) -> bool:
    """``n_steps`` :func:`turbda_kit.models.lorenz96.rk4_step_` calls on full rings in C.

    Same bits as the torch steps with :func:`~turbda_kit.models.lorenz96.periodic_halo_`
    (the per-point operations and their order are those of the stage kernel); each row
    goes through all the steps while it is in cache.

    Parameters
    ----------
    x : Tensor, shape ``(rows, m)``, float32 or float64, CPU, unit column stride
        Each row one full ring of ``m >= 4`` points; updated in place.
    n_steps : int
        Steps, >= 0.
    dt, forcing : float
        Time step and forcing, as given to ``rk4_step_``.
    threads : int
        Row ranges worked on concurrently (the calls release the GIL).

    Returns
    -------
    bool
        False (nothing done) when the kernel or the layout is not available.
    """
    lib = _library()
    if lib is None or x.dtype not in (torch.float32, torch.float64) or \
            not _rows_ok(x, x.dtype) or x.shape[1] < 4:
        return False
    rows, m = x.shape
    coef = _rk4_coefficients(float(dt), x.dtype)
    kernel = lib.l96_rk4_ring_f32 if x.dtype == torch.float32 else lib.l96_rk4_ring_f64
    threads = max(1, min(int(threads), rows))
    if rows * m * n_steps < 1 << 16:
        threads = 1
    work = x.new_empty((threads, 3 * m + 6))

    def run(part: int, r0: int, r1: int) -> None:
        kernel(x.data_ptr(), x.stride(0), r0, r1, m, n_steps, coef.data_ptr(), forcing,
               work[part].data_ptr())

    _split(run, rows, threads)
    return True


def _batch_stride(t: Tensor) -> int | None:
    """Stride of the leading dims of ``t`` flattened into one (None if they do not flatten)."""
    if t.dim() == 2:
        return 0
    for d in range(t.dim() - 3):
        if t.shape[d] > 1 and t.stride(d) != t.stride(d + 1) * t.shape[d + 1]:
            return None
    return t.stride(t.dim() - 3)


def transpose_copy_(dst: Tensor, src: Tensor) -> bool:
    """``dst.copy_(src.transpose(-1, -2))`` for complex CPU tensors, in C, tile by tile.

    torch copies a transposed complex array element by element along the destination's
    rows; the tiled copy reads and writes whole cache lines (against torch on the SQG
    model's blocks: ``python benchmarks/bench_sqg_copies.py``). A copy, so the same bits.

    Parameters
    ----------
    dst : Tensor, shape ``(*batch, C, R)``, complex64 or complex128, CPU
        Unit stride along the last axis; the batch axes must flatten into one.
    src : Tensor, shape ``(*batch, R, C)``, same dtype and device
        Unit stride along the last axis; the batch axes must flatten into one.

    Returns
    -------
    bool
        False (nothing done) when the kernel, the dtype or the layout is not available.
    """
    lib = _library()
    if lib is None or src.dtype != dst.dtype or src.dtype not in (torch.complex64,
                                                                  torch.complex128):
        return False
    if src.device.type != "cpu" or dst.device.type != "cpu" or src.dim() < 2 or \
            src.dim() != dst.dim() or src.stride(-1) != 1 or dst.stride(-1) != 1:
        return False
    rows, cols = src.shape[-2], src.shape[-1]
    if tuple(dst.shape) != (*src.shape[:-2], cols, rows):
        return False
    src_batch, dst_batch = _batch_stride(src), _batch_stride(dst)
    if src_batch is None or dst_batch is None:
        return False
    batch = math.prod(src.shape[:-2])
    kernel = lib.transpose_copy_c64 if src.dtype == torch.complex64 else \
        lib.transpose_copy_c128
    kernel(src.data_ptr(), dst.data_ptr(), batch, rows, cols, src_batch, src.stride(-2),
           dst_batch, dst.stride(-2))
    return True


class TransposeCopy:
    """:func:`transpose_copy_` into a fixed ``dst`` from sources of one fixed layout.

    The checks and argument conversions of :func:`transpose_copy_` cost about as much as
    the copy of a small SQG block (both timed by ``python benchmarks/bench_sqg_copies.py``):
    this object does them once, and each call only compares the source's layout with the
    one it was built for.

    Parameters
    ----------
    dst : Tensor, shape ``(*batch, C, R)``
        Destination of every call (kept).
    src_like : Tensor, shape ``(*batch, R, C)``
        A source of the layout (shape and strides) of the later calls' sources.

    Raises
    ------
    ValueError
        If the kernel is not available or cannot copy between these layouts (see
        :func:`transpose_copy_`).
    """

    def __init__(self, dst: Tensor, src_like: Tensor):
        lib = _library()
        # validates by copying once (src_like into dst: dst is overwritten later anyway)
        if lib is None or not transpose_copy_(dst, src_like):
            raise ValueError(f"TransposeCopy: no C transposed copy from {tuple(src_like.shape)}"
                             f" {src_like.dtype} (strides {src_like.stride()}) into "
                             f"{tuple(dst.shape)} (strides {dst.stride()}); use "
                             f"dst.copy_(src.transpose(-1, -2))")
        self.dst = dst
        self.layout = (src_like.shape, src_like.stride(), src_like.dtype)
        self._kernel = lib.transpose_copy_c64 if src_like.dtype == torch.complex64 else \
            lib.transpose_copy_c128
        rows, cols = src_like.shape[-2], src_like.shape[-1]
        self._args = (ctypes.c_void_p(dst.data_ptr()), math.prod(src_like.shape[:-2]), rows,
                      cols, _batch_stride(src_like), src_like.stride(-2), _batch_stride(dst),
                      dst.stride(-2))

    def __call__(self, src: Tensor) -> bool:
        """``dst.copy_(src.transpose(-1, -2))``; False (nothing done) when ``src`` does not
        have the layout this object was built for."""
        if (src.shape, src.stride(), src.dtype) != self.layout or src.device.type != "cpu":
            return False
        self._kernel(src.data_ptr(), *self._args)
        return True


@functools.lru_cache(maxsize=16)
def _rk4_coefficients(dt: float, dtype: torch.dtype) -> Tensor:
    # the Python doubles rk4_stage_ passes, rounded once to the state's precision (cached:
    # building a tensor costs as much as a 40-variable step)
    return torch.tensor([0.5 * dt, 0.5 * dt, 1.0 * dt, dt / 6.0, 2.0, 2.0, 1.0], dtype=dtype)


def _split(run, total: int, threads: int) -> None:
    """``run(part, lo, hi)`` over ``threads`` near-equal ranges of ``[0, total)``, the first
    on this thread and the others on the pool (the kernels release the GIL)."""
    if threads <= 1:
        run(0, 0, total)
        return
    bounds = [total * i // threads for i in range(threads + 1)]
    pool = _pool(threads - 1)
    pending = [pool.submit(run, i, bounds[i], bounds[i + 1]) for i in range(1, threads)]
    run(0, bounds[0], bounds[1])
    for p in pending:
        p.result()


def _pool(workers: int) -> ThreadPoolExecutor:
    # One pool per process, rebuilt when the number of threads changes.
    with _lock:
        pool = _state.get("pool")
        if pool is None or _state.get("pool_workers") != workers:
            if pool is not None:
                pool.shutdown(wait=True)
            pool = _state["pool"] = ThreadPoolExecutor(max_workers=workers)
            _state["pool_workers"] = workers
        return pool
