/* Instantiates recurrence.inc for float and double and, on x86-64, for three instruction
 * sets (AVX-512, AVX2+FMA, baseline SSE2); the public entry points pick one at run time,
 * so the library is built with generic flags and still runs on any x86-64. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "fastrnn.h"

#ifdef _OPENMP
#include <omp.h>
static int omp_get_num_threads_(void) { return omp_get_num_threads(); }
static int omp_get_thread_num_(void) { return omp_get_thread_num(); }
int fastrnn_omp_num_procs(void) { return omp_get_num_procs(); }
#else
static int omp_get_num_threads_(void) { return 1; }
static int omp_get_thread_num_(void) { return 0; }
int fastrnn_omp_num_procs(void) { return 1; }
#endif

/* gates per hidden unit: LSTM i f g o, GRU r z n, plain RNN 1 */
static int gates_of(int cell) { return cell == FASTRNN_LSTM ? 4 : cell == FASTRNN_GRU ? 3 : 1; }

/* Bytes of one core's L2 cache, 1 MB where unknown. Cached: sysconf may run cpuid, which
 * traps to the hypervisor in a VM. */
static size_t l2_bytes(void)
{
    static long cached = 0;
    long v = __atomic_load_n(&cached, __ATOMIC_RELAXED);
    if (v <= 0) {
#ifdef _SC_LEVEL2_CACHE_SIZE
        v = sysconf(_SC_LEVEL2_CACHE_SIZE);
#endif
        if (v <= 0) v = 1L << 20;
        __atomic_store_n(&cached, v, __ATOMIC_RELAXED);
    }
    return (size_t)v;
}

#define CAT_(a, b) a##_##b
#define CAT(a, b) CAT_(a, b)
#define FR_BF16 0   /* 1 only for the bfloat16-product instantiation below */

/* ---- float ---- */
#define REAL float
#define FR_DOUBLE 0
#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512dq,avx2,fma,bmi2")
#define FN(name) CAT(name, f32_avx512)
#define VBYTES 64
/* 6 x 4 vectors: 24 accumulators of the 32 registers. 4 x 4 (16) reached 81% of the FMA
 * roof with everything in L1, 6 x 4 87%; the LM train step ran 2.3% faster. */
#define MR 6
#define NV 4
#include "recurrence.inc"   /* #undefs FN, VBYTES, MR, NV */
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define FN(name) CAT(name, f32_avx2)
#define VBYTES 32
/* 4 x 3 vectors: 12 accumulators, the 3 panel vectors and the broadcast fill the 16
 * registers. Zen 3, 2 threads, against 3 x 3: B = 4-32 1.06-1.18x faster (LSTM, GRU,
 * plain RNN, H 256/512, inference and training), B = 1 the same; 6 x 2 lost 7-19% at B = 1
 * (two accumulators for a batch row are too few to cover the FMA latency). */
#define MR 4
#define NV 3
#include "recurrence.inc"   /* #undefs FN, VBYTES, MR, NV */
#pragma GCC pop_options
#endif
#define FN(name) CAT(name, f32_generic)
#define VBYTES 16
#define MR 3
#define NV 3
#include "recurrence.inc"   /* #undefs FN, VBYTES, MR, NV */
#undef REAL
#undef FR_DOUBLE

/* ---- float with bfloat16 products (precision "bfloat16") ----
 * Compilers that know the avx512bf16 target only (gcc 10, clang 9 on): an older one
 * still builds the rest, and fastrnn_has_bf16() says 0. */
#if defined(__x86_64__) && defined(__GNUC__) && \
    ((defined(__clang__) && __clang_major__ >= 9) || (!defined(__clang__) && __GNUC__ >= 10))
#define FASTRNN_BF16_BUILT 1
#undef FR_BF16
#define FR_BF16 1
#define REAL float
#define FR_DOUBLE 0
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512dq,avx512bw,avx512bf16,avx2,fma,bmi2")
#define FN(name) CAT(name, f32_bf16)
#define VBYTES 64
#define MR 6
#define NV 4
#include "recurrence.inc"   /* #undefs FN, VBYTES, MR, NV */
#pragma GCC pop_options
#undef REAL
#undef FR_DOUBLE
#undef FR_BF16
#define FR_BF16 0
#else
#define FASTRNN_BF16_BUILT 0
#endif

/* ---- double ---- */
#define REAL double
#define FR_DOUBLE 1
#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512dq,avx2,fma,bmi2")
#define FN(name) CAT(name, f64_avx512)
#define VBYTES 64
#define MR 6   /* as float: an LSTM layer's forward + backward (H = 256, B = 32) 2% faster than 4 */
#define NV 4
#include "recurrence.inc"   /* #undefs FN, VBYTES, MR, NV */
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define FN(name) CAT(name, f64_avx2)
#define VBYTES 32
#define MR 4   /* as float (4 x 3): Zen 3, 2 threads, against 3 x 3, B = 8-32 training 1.17-1.28x, inference 1.00-1.03x */
#define NV 3
#include "recurrence.inc"   /* #undefs FN, VBYTES, MR, NV */
#pragma GCC pop_options
#endif
#define FN(name) CAT(name, f64_generic)
#define VBYTES 16
#define MR 3
#define NV 3
#include "recurrence.inc"   /* #undefs FN, VBYTES, MR, NV */
#undef REAL
#undef FR_DOUBLE

/* ---- run-time dispatch ---- */
enum { ISA_GENERIC, ISA_AVX2, ISA_AVX512 };

static int detect_isa(void)
{
#if defined(__x86_64__) && defined(__GNUC__)
    const char *force = getenv("FASTRNN_ISA");  /* lets tests run every code path */
    int best = ISA_GENERIC;
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) best = ISA_AVX2;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512dq"))
        best = ISA_AVX512;
    if (force && strcmp(force, "generic") == 0) return ISA_GENERIC;
    if (force && strcmp(force, "avx2") == 0 && best >= ISA_AVX2) return ISA_AVX2;
    return best;
#else
    return ISA_GENERIC;
#endif
}

static int isa_cached = -1;
static int isa(void)
{
    int v = __atomic_load_n(&isa_cached, __ATOMIC_RELAXED);
    if (v < 0) {
        v = detect_isa();
        __atomic_store_n(&isa_cached, v, __ATOMIC_RELAXED);
    }
    return v;
}

/* Chunks of at least 256 KB per thread: below that one thread is as fast. */
static int byte_threads(size_t n, int nthreads)
{
    size_t most = n / (256 * 1024);
    return most < 1 ? 1 : (size_t)nthreads < most ? nthreads : (int)most;
}

int fastrnn_same_bytes(const void *a, const void *b, size_t n, int nthreads)
{
    const int nth = byte_threads(n, nthreads);
    int differ = 0;
#pragma omp parallel for num_threads(nth) if (nth > 1) schedule(static) reduction(| : differ)
    for (int t = 0; t < nth; t++) {
        const size_t lo = n * t / nth, hi = n * (t + 1) / nth;
        differ |= memcmp((const char *)a + lo, (const char *)b + lo, hi - lo) != 0;
    }
    return !differ;
}

void fastrnn_copy_bytes(void *dst, const void *src, size_t n, int nthreads)
{
    const int nth = byte_threads(n, nthreads);
#pragma omp parallel for num_threads(nth) if (nth > 1) schedule(static)
    for (int t = 0; t < nth; t++) {
        const size_t lo = n * t / nth, hi = n * (t + 1) / nth;
        memcpy((char *)dst + lo, (const char *)src + lo, hi - lo);
    }
}

void fastrnn_zero_bytes(void *dst, size_t n, int nthreads)
{
    const int nth = byte_threads(n, nthreads);
#pragma omp parallel for num_threads(nth) if (nth > 1) schedule(static)
    for (int t = 0; t < nth; t++) {
        const size_t lo = n * t / nth, hi = n * (t + 1) / nth;
        memset((char *)dst + lo, 0, hi - lo);
    }
}

const char *fastrnn_isa(void)
{
    static const char *names[] = {"generic", "avx2", "avx512"};
    return names[isa()];
}

static int bad_args(int cell, int T, int B, int I, int H, int nthreads)
{
    return cell < FASTRNN_RNN_TANH || cell > FASTRNN_GRU || T < 0 || B < 0 || I < 1 || H < 1 ||
           nthreads < 1;
}

/* A training forward's workspace: all of what the cell writes, or none (gates NULL) */
static int bad_workspace(int cell, const void *gates, const void *h_in, const void *c_in, const void *c_out,
                         const void *hh_n)
{
    return gates && !(h_in && (cell != FASTRNN_LSTM || (c_in && c_out)) && (cell != FASTRNN_GRU || hh_n));
}

static int bad_lstmp_args(int T, int B, int I, int H, int P, int nthreads)
{
    return T < 0 || B < 0 || I < 0 || H < 1 || P < 1 || nthreads < 1;
}

/* The projected LSTM's forward: its sizes, both biases or none, all of the workspace or none */
static int bad_lstmp_forward_args(int T, int B, int I, int H, int P, int nthreads, const void *b_ih,
                                  const void *b_hh, const void *gates, const void *h_in, const void *c_in,
                                  const void *c_out, const void *m)
{
    return bad_lstmp_args(T, B, I, H, P, nthreads) || (b_ih == NULL) != (b_hh == NULL) ||
           (gates && !(h_in && c_in && c_out && m));
}

#if defined(__x86_64__) && defined(__GNUC__)
#define DISPATCH(fn, suffix, ...)                                          \
    switch (isa()) {                                                       \
    case ISA_AVX512: return fn##_##suffix##_avx512(__VA_ARGS__);           \
    case ISA_AVX2: return fn##_##suffix##_avx2(__VA_ARGS__);               \
    default: return fn##_##suffix##_generic(__VA_ARGS__);                  \
    }
#else
#define DISPATCH(fn, suffix, ...) return fn##_##suffix##_generic(__VA_ARGS__);
#endif

#define DEFINE_ENTRY_POINTS(R, suffix)                                                         \
int fastrnn_forward_##suffix(int cell, int T, int B, int I, int H, int reverse, int chunk,     \
                             const R *x, int V, const int32_t *tokens,                          \
                             const R *w_ih, const R *w_hh, const R *packed,                     \
                             const R *b_ih, const R *b_hh, const R *h0, const R *c0,            \
                             const int32_t *lengths, R *y, R *h_T, R *c_T,                      \
                             R *h_in, R *gates, R *c_in, R *c_out, R *hh_n, int nthreads)       \
{                                                                                              \
    if (bad_args(cell, T, B, I, H, nthreads) || (tokens && V < 1)) return FASTRNN_EINVAL;      \
    DISPATCH(forward, suffix, cell, T, B, I, H, reverse, chunk, x, V, tokens, w_ih, w_hh,      \
             packed, b_ih, b_hh, h0, c0, lengths, y, h_T, c_T, h_in, gates, c_in, c_out, hh_n,  \
             nthreads)                                                                         \
}                                                                                              \
int fastrnn_backward_##suffix(int cell, int T, int B, int I, int H, int reverse,               \
                              const R *x, int V, const int32_t *tokens,                         \
                              const R *w_ih, const R *w_hh, const R *packed,                    \
                              const R *dy, const R *dh_T, const R *dc_T, const int32_t *lengths, \
                              const R *h_in, const R *gates, const R *c_in, const R *c_out,     \
                              const R *hh_n, R *dgi, R *dgh_n, R *dx, R *dh_0, R *dc_0,         \
                              R *dw_ih, R *dw_hh, R *db_ih, R *db_hh, int accumulate,            \
                              int nthreads)                                                     \
{                                                                                              \
    if (bad_args(cell, T, B, I, H, nthreads) || (tokens && V < 1)) return FASTRNN_EINVAL;      \
    DISPATCH(backward, suffix, cell, T, B, I, H, reverse, x, V, tokens, w_ih, w_hh, packed,    \
             dy, dh_T, dc_T, lengths, h_in, gates, c_in, c_out, hh_n, dgi, dgh_n, dx, dh_0,     \
             dc_0, dw_ih, dw_hh, db_ih, db_hh, accumulate, nthreads)                           \
}                                                                                              \
int fastrnn_forward_direct_##suffix(int cell, int T, int B, int I, int H, int reverse,         \
                                    const R *x, const R *w_ih, const R *w_hh, const R *b_ih,   \
                                    const R *b_hh, const R *h0, const R *c0,                   \
                                    const int32_t *lengths, R *y, R *h_T, R *c_T,              \
                                    R *h_in, R *gates, R *c_in, R *c_out, R *hh_n, int nthreads) \
{                                                                                              \
    if (bad_args(cell, T, B, I, H, nthreads) || (cell == FASTRNN_LSTM && !(c0 && c_T)) ||      \
        bad_workspace(cell, gates, h_in, c_in, c_out, hh_n))                                   \
        return FASTRNN_EINVAL;                                                                 \
    DISPATCH(forward_direct, suffix, cell, T, B, I, H, reverse, x, w_ih, w_hh, b_ih, b_hh, h0, \
             c0, lengths, y, h_T, c_T, h_in, gates, c_in, c_out, hh_n, nthreads)               \
}                                                                                              \
size_t fastrnn_packed_size_##suffix(int cell, int I, int H, int nthreads, int bptt)            \
{                                                                                              \
    if (bad_args(cell, 0, 0, I, H, nthreads)) return 0;                                        \
    DISPATCH(packed_layout, suffix, cell, I, H, nthreads, -1, bptt, NULL, NULL, NULL)          \
}                                                                                              \
int fastrnn_by_batch_##suffix(int cell, int B, int H, int nthreads)                            \
{                                                                                              \
    if (bad_args(cell, 0, B, 1, H, nthreads)) return 0;                                        \
    DISPATCH(by_batch, suffix, cell, B, H, nthreads)                                           \
}                                                                                              \
int fastrnn_pack_##suffix(int cell, int I, int H, const R *w_ih, const R *w_hh, R *packed,     \
                          int nthreads, int bptt)                                              \
{                                                                                              \
    if (bad_args(cell, 0, 0, I, H, nthreads)) return FASTRNN_EINVAL;                           \
    DISPATCH(pack_weights, suffix, cell, I, H, w_ih, w_hh, packed, nthreads, bptt)             \
}

DEFINE_ENTRY_POINTS(float, f32)
DEFINE_ENTRY_POINTS(double, f64)

/* precision "bfloat16": the AVX-512 kernels run and the CPU has AVX512_BF16 (a forced
 * FASTRNN_ISA below avx512 turns it off, so tests can check the refusal) */
int fastrnn_has_bf16(void)
{
#if FASTRNN_BF16_BUILT
    return isa() == ISA_AVX512 && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512bf16");
#else
    return 0;
#endif
}

/* The bfloat16 entry points, after their argument checks: what the bfloat16 instantiation's
 * call returns, or `none` where the compiler did not build it or the CPU has no bfloat16
 * products (the call is not compiled then: its functions do not exist). */
#if FASTRNN_BF16_BUILT
#define RETURN_BF16_OR(none, ...) return fastrnn_has_bf16() ? (__VA_ARGS__) : (none)
#else
#define RETURN_BF16_OR(none, ...) return (none)
#endif

int fastrnn_forward_bf16(int cell, int T, int B, int I, int H, int reverse, int chunk,
                         const float *x, int V, const int32_t *tokens,
                         const float *w_ih, const float *w_hh, const float *packed,
                         const float *b_ih, const float *b_hh, const float *h0, const float *c0,
                         const int32_t *lengths, float *y, float *h_T, float *c_T,
                         float *h_in, float *gates, float *c_in, float *c_out, float *hh_n, int nthreads)
{
    if (bad_args(cell, T, B, I, H, nthreads) || (tokens && V < 1)) return FASTRNN_EINVAL;
    RETURN_BF16_OR(FASTRNN_ENOTSUP,
                   forward_f32_bf16(cell, T, B, I, H, reverse, chunk, x, V, tokens, w_ih, w_hh, packed, b_ih,
                                    b_hh, h0, c0, lengths, y, h_T, c_T, h_in, gates, c_in, c_out, hh_n, nthreads));
}

int fastrnn_backward_bf16(int cell, int T, int B, int I, int H, int reverse,
                          const float *x, int V, const int32_t *tokens,
                          const float *w_ih, const float *w_hh, const float *packed,
                          const float *dy, const float *dh_T, const float *dc_T, const int32_t *lengths,
                          const float *h_in, const float *gates, const float *c_in, const float *c_out,
                          const float *hh_n, float *dgi, float *dgh_n, float *dx, float *dh_0, float *dc_0,
                          float *dw_ih, float *dw_hh, float *db_ih, float *db_hh, int accumulate, int nthreads)
{
    if (bad_args(cell, T, B, I, H, nthreads) || (tokens && V < 1)) return FASTRNN_EINVAL;
    RETURN_BF16_OR(FASTRNN_ENOTSUP,
                   backward_f32_bf16(cell, T, B, I, H, reverse, x, V, tokens, w_ih, w_hh, packed, dy, dh_T, dc_T,
                                     lengths, h_in, gates, c_in, c_out, hh_n, dgi, dgh_n, dx, dh_0, dc_0, dw_ih,
                                     dw_hh, db_ih, db_hh, accumulate, nthreads));
}

int fastrnn_forward_direct_bf16(int cell, int T, int B, int I, int H, int reverse,
                                const float *x, const void *w_ih, const void *w_hh, int weights_bf16,
                                const float *b_ih, const float *b_hh, const float *h0, const float *c0,
                                const int32_t *lengths, float *y, float *h_T, float *c_T,
                                float *h_in, float *gates, float *c_in, float *c_out, float *hh_n, int nthreads)
{
    if (bad_args(cell, T, B, I, H, nthreads) || (cell == FASTRNN_LSTM && !(c0 && c_T)) ||
        (weights_bf16 != 0 && weights_bf16 != 1) || bad_workspace(cell, gates, h_in, c_in, c_out, hh_n))
        return FASTRNN_EINVAL;
    RETURN_BF16_OR(FASTRNN_ENOTSUP,
                   forward_direct_f32_bf16(cell, T, B, I, H, reverse, x, (wref_f32_bf16){w_ih, weights_bf16},
                                           (wref_f32_bf16){w_hh, weights_bf16}, b_ih, b_hh, h0, c0, lengths,
                                           y, h_T, c_T, h_in, gates, c_in, c_out, hh_n, nthreads));
}

int fastrnn_dense_bf16(int nr, int K, int nv, const void *w, int weights_bf16, const float *x, size_t ldx,
                       const float *bias, float *out, size_t ldo, int nthreads)
{
    if (nr < 0 || K < 0 || nv < 0 || nthreads < 1 || (weights_bf16 != 0 && weights_bf16 != 1) ||
        (nv > 1 && (ldx < (size_t)K || ldo < (size_t)nr)) || (nr > 0 && nv > 0 && !out) ||
        (nr > 0 && K > 0 && nv > 0 && !(w && x)))
        return FASTRNN_EINVAL;
    RETURN_BF16_OR(FASTRNN_ENOTSUP,
                   dense_rows_f32_bf16(nr, K, nv, (wref_f32_bf16){w, weights_bf16}, x, ldx, bias, out, ldo,
                                       nthreads));
}

int fastrnn_matmul_bf16(int M, int N, int K, const float *A, size_t sam, size_t sak,
                        const float *B, size_t sbk, size_t sbn, float *C, size_t ldc,
                        int accumulate, int nthreads)
{
    if (M < 0 || N < 0 || K < 0 || nthreads < 1) return FASTRNN_EINVAL;
    RETURN_BF16_OR(FASTRNN_ENOTSUP, matmul_f32_bf16(M, N, K, A, sam, sak, B, sbk, sbn, C, ldc, accumulate, nthreads));
}

/* The projected LSTM in bfloat16 products (projection.inc's bfloat16 instantiation) */
size_t fastrnn_lstmp_packed_size_bf16(int I, int H, int P, int nthreads)
{
    if (bad_lstmp_args(0, 0, I, H, P, nthreads)) return 0;
    RETURN_BF16_OR(0, lstmp_layout_f32_bf16(I, H, P, nthreads, -1, NULL));
}

int fastrnn_lstmp_pack_bf16(int I, int H, int P, const float *w_ih, const float *w_hh, const float *w_hr,
                            float *packed, int nthreads)
{
    if (bad_lstmp_args(0, 0, I, H, P, nthreads)) return FASTRNN_EINVAL;
    RETURN_BF16_OR(FASTRNN_ENOTSUP, lstmp_pack_f32_bf16(I, H, P, w_ih, w_hh, w_hr, packed, nthreads));
}

int fastrnn_lstmp_forward_bf16(int T, int B, int I, int H, int P, int reverse,
                               const float *x, const float *w_ih, const float *w_hh, const float *w_hr,
                               const float *packed, const float *b_ih, const float *b_hh, const float *h0,
                               const float *c0, const int32_t *lengths, float *y, float *h_T, float *c_T,
                               float *h_in, float *gates, float *c_in, float *c_out, float *m, int nthreads)
{
    if (bad_lstmp_forward_args(T, B, I, H, P, nthreads, b_ih, b_hh, gates, h_in, c_in, c_out, m))
        return FASTRNN_EINVAL;
    RETURN_BF16_OR(FASTRNN_ENOTSUP,
                   lstmp_forward_f32_bf16(T, B, I, H, P, reverse, x, w_ih, w_hh, w_hr, packed, b_ih, b_hh, h0, c0,
                                          lengths, y, h_T, c_T, h_in, gates, c_in, c_out, m, nthreads));
}

int fastrnn_lstmp_forward_direct_bf16(int T, int B, int I, int H, int P, int reverse,
                                      const float *x, const float *w_ih, const float *w_hh, const float *w_hr,
                                      const float *b_ih, const float *b_hh, const float *h0, const float *c0,
                                      const int32_t *lengths, float *y, float *h_T, float *c_T, float *h_in,
                                      float *gates, float *c_in, float *c_out, float *m, int nthreads)
{
    if (bad_lstmp_forward_args(T, B, I, H, P, nthreads, b_ih, b_hh, gates, h_in, c_in, c_out, m))
        return FASTRNN_EINVAL;
    RETURN_BF16_OR(FASTRNN_ENOTSUP,
                   lstmp_forward_direct_f32_bf16(T, B, I, H, P, reverse, x, w_ih, w_hh, w_hr, b_ih, b_hh, h0, c0,
                                                 lengths, y, h_T, c_T, h_in, gates, c_in, c_out, m, nthreads));
}

int fastrnn_lstmp_backward_bf16(int T, int B, int I, int H, int P, int reverse,
                                const float *x, const float *w_ih, const float *w_hh, const float *w_hr,
                                const float *packed, const float *dy, const float *dh_T, const float *dc_T,
                                const int32_t *lengths, const float *h_in, const float *gates,
                                const float *c_in, const float *c_out, const float *m, float *dg, float *dhs,
                                float *dx, float *dh_0, float *dc_0, float *dw_ih, float *dw_hh, float *dw_hr,
                                float *db_ih, float *db_hh, int accumulate, int nthreads)
{
    if (bad_lstmp_args(T, B, I, H, P, nthreads)) return FASTRNN_EINVAL;
    RETURN_BF16_OR(FASTRNN_ENOTSUP,
                   lstmp_backward_f32_bf16(T, B, I, H, P, reverse, x, w_ih, w_hh, w_hr, packed, dy, dh_T, dc_T,
                                           lengths, h_in, gates, c_in, c_out, m, dg, dhs, dx, dh_0, dc_0, dw_ih,
                                           dw_hh, dw_hr, db_ih, db_hh, accumulate, nthreads));
}

int fastrnn_to_bf16(size_t n, const float *src, uint16_t *dst, int nthreads)
{
    if (nthreads < 1 || (n > 0 && !(src && dst))) return FASTRNN_EINVAL;
    RETURN_BF16_OR(FASTRNN_ENOTSUP, (to_bf16_f32_bf16(n, src, dst, nthreads), 0));
}

size_t fastrnn_packed_size_bf16(int cell, int I, int H, int nthreads, int bptt)
{
    if (bad_args(cell, 0, 0, I, H, nthreads)) return 0;
    RETURN_BF16_OR(0, packed_layout_f32_bf16(cell, I, H, nthreads, -1, bptt, NULL, NULL, NULL));
}

int fastrnn_pack_bf16(int cell, int I, int H, const float *w_ih, const float *w_hh, float *packed,
                      int nthreads, int bptt)
{
    if (bad_args(cell, 0, 0, I, H, nthreads)) return FASTRNN_EINVAL;
    RETURN_BF16_OR(FASTRNN_ENOTSUP, pack_weights_f32_bf16(cell, I, H, w_ih, w_hh, packed, nthreads, bptt));
}

int fastrnn_by_batch_bf16(int cell, int B, int H, int nthreads)
{
    if (bad_args(cell, 0, B, 1, H, nthreads)) return 0;
    RETURN_BF16_OR(0, by_batch_f32_bf16(cell, B, H, nthreads));
}
#undef RETURN_BF16_OR

#define DEFINE_LSTMP_ENTRY_POINTS(R, suffix)                                                   \
int fastrnn_lstmp_forward_##suffix(int T, int B, int I, int H, int P, int reverse,             \
                                   const R *x, const R *w_ih, const R *w_hh, const R *w_hr,    \
                                   const R *packed, const R *b_ih, const R *b_hh, const R *h0, const R *c0,     \
                                   const int32_t *lengths, R *y, R *h_T, R *c_T, R *h_in,      \
                                   R *gates, R *c_in, R *c_out, R *m, int nthreads)            \
{                                                                                              \
    if (bad_lstmp_forward_args(T, B, I, H, P, nthreads, b_ih, b_hh, gates, h_in, c_in, c_out, m)) \
        return FASTRNN_EINVAL;                                                                 \
    DISPATCH(lstmp_forward, suffix, T, B, I, H, P, reverse, x, w_ih, w_hh, w_hr, packed, b_ih, b_hh, \
             h0, c0, lengths, y, h_T, c_T, h_in, gates, c_in, c_out, m, nthreads)              \
}                                                                                              \
int fastrnn_lstmp_forward_direct_##suffix(int T, int B, int I, int H, int P, int reverse,      \
                                          const R *x, const R *w_ih, const R *w_hh, const R *w_hr, \
                                          const R *b_ih, const R *b_hh, const R *h0, const R *c0, \
                                          const int32_t *lengths, R *y, R *h_T, R *c_T,        \
                                          R *h_in, R *gates, R *c_in, R *c_out, R *m,          \
                                          int nthreads)                                        \
{                                                                                              \
    if (bad_lstmp_forward_args(T, B, I, H, P, nthreads, b_ih, b_hh, gates, h_in, c_in, c_out, m)) \
        return FASTRNN_EINVAL;                                                                 \
    DISPATCH(lstmp_forward_direct, suffix, T, B, I, H, P, reverse, x, w_ih, w_hh, w_hr, b_ih,  \
             b_hh, h0, c0, lengths, y, h_T, c_T, h_in, gates, c_in, c_out, m, nthreads)        \
}                                                                                              \
int fastrnn_lstmp_backward_##suffix(int T, int B, int I, int H, int P, int reverse,            \
                                    const R *x, const R *w_ih, const R *w_hh, const R *w_hr,   \
                                    const R *packed, const R *dy, const R *dh_T, const R *dc_T,                 \
                                    const int32_t *lengths, const R *h_in, const R *gates,     \
                                    const R *c_in, const R *c_out, const R *m, R *dg, R *dhs,  \
                                    R *dx, R *dh_0, R *dc_0, R *dw_ih, R *dw_hh, R *dw_hr,     \
                                    R *db_ih, R *db_hh, int accumulate, int nthreads)          \
{                                                                                              \
    if (bad_lstmp_args(T, B, I, H, P, nthreads)) return FASTRNN_EINVAL;                        \
    DISPATCH(lstmp_backward, suffix, T, B, I, H, P, reverse, x, w_ih, w_hh, w_hr, packed, dy, dh_T, \
             dc_T, lengths, h_in, gates, c_in, c_out, m, dg, dhs, dx, dh_0, dc_0, dw_ih, dw_hh,  \
             dw_hr, db_ih, db_hh, accumulate, nthreads)                                        \
}

#define DEFINE_LSTMP_PACK_ENTRY_POINTS(R, suffix)                                              \
size_t fastrnn_lstmp_packed_size_##suffix(int I, int H, int P, int nthreads)                   \
{                                                                                              \
    if (bad_lstmp_args(0, 0, I, H, P, nthreads)) return 0;                                     \
    DISPATCH(lstmp_layout, suffix, I, H, P, nthreads, -1, NULL)                                \
}                                                                                              \
int fastrnn_lstmp_pack_##suffix(int I, int H, int P, const R *w_ih, const R *w_hh,             \
                                const R *w_hr, R *packed, int nthreads)                        \
{                                                                                              \
    if (bad_lstmp_args(0, 0, I, H, P, nthreads)) return FASTRNN_EINVAL;                        \
    DISPATCH(lstmp_pack, suffix, I, H, P, w_ih, w_hh, w_hr, packed, nthreads)                  \
}

DEFINE_LSTMP_PACK_ENTRY_POINTS(float, f32)
DEFINE_LSTMP_PACK_ENTRY_POINTS(double, f64)
DEFINE_LSTMP_ENTRY_POINTS(float, f32)
DEFINE_LSTMP_ENTRY_POINTS(double, f64)

#define DEFINE_DENSE_ENTRY_POINTS(R, suffix)                                                   \
int fastrnn_matmul_##suffix(int M, int N, int K, const R *A, size_t sam, size_t sak,           \
                            const R *B, size_t sbk, size_t sbn, R *C, size_t ldc,              \
                            int accumulate, int nthreads)                                      \
{                                                                                              \
    if (M < 0 || N < 0 || K < 0 || nthreads < 1) return FASTRNN_EINVAL;                        \
    DISPATCH(matmul, suffix, M, N, K, A, sam, sak, B, sbk, sbn, C, ldc, accumulate, nthreads)  \
}                                                                                              \
int fastrnn_softmax_xent_##suffix(int N, int V, const R *logits, const int32_t *targets,       \
                                  R *loss, R *grad, R scale, int nthreads)                     \
{                                                                                              \
    if (N < 0 || V < 1 || nthreads < 1) return FASTRNN_EINVAL;                                 \
    DISPATCH(softmax_xent, suffix, N, V, logits, targets, loss, grad, scale, nthreads)         \
}                                                                                              \
int fastrnn_scatter_rows_##suffix(size_t n, int E, const int32_t *ids, const R *rows, R *out,  \
                                  int nthreads)                                                \
{                                                                                              \
    if (E < 0 || nthreads < 1) return FASTRNN_EINVAL;                                          \
    DISPATCH(scatter_rows, suffix, n, E, ids, rows, out, nthreads)                             \
}

#define DEFINE_OPTIM_ENTRY_POINTS(R, suffix)                                                   \
int fastrnn_adam_##suffix(size_t n, R *p, const R *g, R *m, R *v, double step, double b1,      \
                          double b2, double c2, double eps, double weight_decay, int nthreads)  \
{                                                                                              \
    if (nthreads < 1 || !(c2 > 0)) return FASTRNN_EINVAL;                                      \
    DISPATCH(adam, suffix, n, p, g, m, v, (R)step, (R)b1, (R)b2, (R)c2, (R)eps,                \
             (R)weight_decay, nthreads)                                                        \
}

#define DEFINE_SUMSQ_ENTRY_POINT(R, suffix)                                                    \
double fastrnn_sumsq_##suffix(size_t n, const R *x, int nthreads)                              \
{                                                                                              \
    DISPATCH(sumsq, suffix, n, x, nthreads < 1 ? 1 : nthreads)                                 \
}

DEFINE_SUMSQ_ENTRY_POINT(float, f32)
DEFINE_SUMSQ_ENTRY_POINT(double, f64)
DEFINE_OPTIM_ENTRY_POINTS(float, f32)
DEFINE_OPTIM_ENTRY_POINTS(double, f64)

DEFINE_DENSE_ENTRY_POINTS(float, f32)
DEFINE_DENSE_ENTRY_POINTS(double, f64)
