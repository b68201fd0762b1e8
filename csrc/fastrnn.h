/* fastrnn C contract: one layer in one direction, forward and backward, whole sequence.
 *
 * All arrays are C-contiguous and time-major; the caller (fastrnn/backends/cpu.py) has
 * checked every shape before calling. Weights use PyTorch's layout:
 *   x (T, B, I); w_ih (G*H, I); w_hh (G*H, H); b_ih, b_hh (G*H) or NULL (no bias);
 *   gate order rnn: h / lstm: i f g o / gru: r z n.
 *   lengths (B) valid steps per sequence, or NULL: step t of sequence b is valid when
 *   t < lengths[b]; invalid steps keep the state and write y = 0. reverse runs t = T-1..0.
 * The input projection x W_ih^T is computed `chunk` steps at a time (memory O(chunk*B*G*H)).
 * Lookup input (tokens != NULL): x is a (V, I) table and the input of step t, sequence b
 *   is its row tokens[t*B + b] (each in [0, V), checked by the caller), as for a first
 *   layer fed by an embedding. The V rows are projected once instead of T*B inputs, and
 *   backward's dx is the table's gradient (V, I): the embedding folds into W_ih.
 * Training workspace (all NULL for inference), indexed by time step t:
 *   h_in (T,B,H) state before step t, gates (T,B,G*H) post-activation gates,
 *   c_in, c_out (T,B,H) LSTM cell state before/after, hh_n (T,B,H) GRU W_hn h + b_hn.
 *   c_in and c_out may be the two overlapping (T,B,H) views of one (T+1,B,H) array, as
 *   c_in[t] is c_out of the step before: c_out = c_in + B*H (reverse: c_in = c_out + B*H).
 *   The forward then writes c_in at its first step only.
 * Functions return 0 on success, FASTRNN_ENOMEM or FASTRNN_EINVAL (FASTRNN_ENOTSUP and
 * FASTRNN_ETEAM below).
 */
#ifndef FASTRNN_H
#define FASTRNN_H
#include <stddef.h>
#include <stdint.h>

#define FASTRNN_RNN_TANH 0
#define FASTRNN_RNN_RELU 1
#define FASTRNN_LSTM 2
#define FASTRNN_GRU 3
#define FASTRNN_ENOMEM 1
#define FASTRNN_EINVAL 2
#define FASTRNN_ENOTSUP 3
#define FASTRNN_ETEAM 4   /* packed weights without w_ih, w_hh and the runtime gave fewer threads */

int fastrnn_forward_f32(int cell, int T, int B, int I, int H, int reverse, int chunk,
                        const float *x, int V, const int32_t *tokens,
                        const float *w_ih, const float *w_hh, const float *packed,
                        const float *b_ih, const float *b_hh, const float *h0, const float *c0,
                        const int32_t *lengths,
                        float *y, float *h_T, float *c_T,
                        float *h_in, float *gates, float *c_in, float *c_out, float *hh_n, int nthreads);
int fastrnn_forward_f64(int cell, int T, int B, int I, int H, int reverse, int chunk,
                        const double *x, int V, const int32_t *tokens,
                        const double *w_ih, const double *w_hh, const double *packed,
                        const double *b_ih, const double *b_hh, const double *h0, const double *c0,
                        const int32_t *lengths,
                        double *y, double *h_T, double *c_T,
                        double *h_in, double *gates, double *c_in, double *c_out, double *hh_n, int nthreads);

/* Precision "bfloat16": as fastrnn_forward_f32 and fastrnn_backward_f32, with the matrix
 * products on bfloat16 operands (rounded to nearest-even, denormals to zero) summed in
 * float32; everything else is float32, the training workspace included. Forward: x, h and
 * the weights rounded. Backward: the gate gradients and W_hh in BPTT's per-step product,
 * the gate gradients and h_in / x in the weight gradients, the gate gradients and W_ih in
 * dx (bias gradients are float sums). packed: from fastrnn_pack_bf16 (its own layout:
 * pairs of bfloat16 per 32-bit slot) or NULL. With packed given, the forward's w_ih and
 * w_hh may be NULL (weights held as bfloat16, packed from a float copy): where the runtime
 * then grants fewer than nthreads threads, the call returns FASTRNN_ETEAM, and the caller
 * calls again with float weights. The backward reads float w_ih (dx) and w_hh (where it
 * packs its own slices). FASTRNN_ENOTSUP where fastrnn_has_bf16() is 0 (no AVX512_BF16, or
 * a forced lower ISA). */
int fastrnn_has_bf16(void);
int fastrnn_forward_bf16(int cell, int T, int B, int I, int H, int reverse, int chunk,
                         const float *x, int V, const int32_t *tokens,
                         const float *w_ih, const float *w_hh, const float *packed,
                         const float *b_ih, const float *b_hh, const float *h0, const float *c0,
                         const int32_t *lengths, float *y, float *h_T, float *c_T,
                         float *h_in, float *gates, float *c_in, float *c_out, float *hh_n, int nthreads);
int fastrnn_backward_bf16(int cell, int T, int B, int I, int H, int reverse,
                          const float *x, int V, const int32_t *tokens,
                          const float *w_ih, const float *w_hh, const float *packed,
                          const float *dy, const float *dh_T, const float *dc_T, const int32_t *lengths,
                          const float *h_in, const float *gates, const float *c_in, const float *c_out,
                          const float *hh_n, float *dgi, float *dgh_n, float *dx, float *dh_0, float *dc_0,
                          float *dw_ih, float *dw_hh, float *db_ih, float *db_hh, int accumulate, int nthreads);
size_t fastrnn_packed_size_bf16(int cell, int I, int H, int nthreads, int bptt);
int fastrnn_pack_bf16(int cell, int I, int H, const float *w_ih, const float *w_hh, float *packed,
                      int nthreads, int bptt);
int fastrnn_by_batch_bf16(int cell, int B, int H, int nthreads);
/* The same products from the row-major weights themselves (as fastrnn_forward_direct_f32
 * below: gates NULL for inference, else the training workspace, which fastrnn_backward_bf16
 * reads with packed = NULL), for small calls: nothing packed or compared. weights_bf16 0:
 * w_ih and w_hh are float, rounded as they are read; 1: they are bfloat16 already, uint16
 * values (the upper halves of the floats; a torch bfloat16 tensor's storage). */
int fastrnn_forward_direct_bf16(int cell, int T, int B, int I, int H, int reverse,
                                const float *x, const void *w_ih, const void *w_hh, int weights_bf16,
                                const float *b_ih, const float *b_hh, const float *h0, const float *c0,
                                const int32_t *lengths, float *y, float *h_T, float *c_T,
                                float *h_in, float *gates, float *c_in, float *c_out, float *hh_n, int nthreads);
/* A dense layer's rows in bfloat16 products against nv vectors: out[v * ldo + r] = bias[r]
 * + sum_k w[r * K + k] x[v * ldx + k] for r < nr (w: nr x K, bfloat16 bits with
 * weights_bf16 1, else float rounded as read; x rounded as read; bias may be NULL). For a
 * few vectors (a language model's logits as it generates), where the weights' bytes set
 * the time. */
int fastrnn_dense_bf16(int nr, int K, int nv, const void *w, int weights_bf16, const float *x, size_t ldx,
                       const float *bias, float *out, size_t ldo, int nthreads);
/* fastrnn_matmul_f32 (below) in bfloat16 products: A and B rounded to bfloat16 as they
 * are read, the sums float32 (a language model's decoder and its gradients in
 * precision "bfloat16"). */
int fastrnn_matmul_bf16(int M, int N, int K, const float *A, size_t sam, size_t sak,
                        const float *B, size_t sbk, size_t sbn, float *C, size_t ldc,
                        int accumulate, int nthreads);
/* The LSTM with a projection (fastrnn_lstmp_*_f32 below: same arguments and workspace) in
 * bfloat16 products: every product of the forward and of BPTT reads its operands rounded
 * to bfloat16 and sums in float32; the packed panels hold bfloat16 pairs (a packing for
 * these entry points only); the direct forward reads the float weights as they are. */
size_t fastrnn_lstmp_packed_size_bf16(int I, int H, int P, int nthreads);
int fastrnn_lstmp_pack_bf16(int I, int H, int P, const float *w_ih, const float *w_hh, const float *w_hr,
                            float *packed, int nthreads);
int fastrnn_lstmp_forward_bf16(int T, int B, int I, int H, int P, int reverse,
                               const float *x, const float *w_ih, const float *w_hh, const float *w_hr,
                               const float *packed, const float *b_ih, const float *b_hh, const float *h0,
                               const float *c0, const int32_t *lengths, float *y, float *h_T, float *c_T,
                               float *h_in, float *gates, float *c_in, float *c_out, float *m, int nthreads);
int fastrnn_lstmp_forward_direct_bf16(int T, int B, int I, int H, int P, int reverse,
                                      const float *x, const float *w_ih, const float *w_hh, const float *w_hr,
                                      const float *b_ih, const float *b_hh, const float *h0, const float *c0,
                                      const int32_t *lengths, float *y, float *h_T, float *c_T, float *h_in,
                                      float *gates, float *c_in, float *c_out, float *m, int nthreads);
int fastrnn_lstmp_backward_bf16(int T, int B, int I, int H, int P, int reverse,
                                const float *x, const float *w_ih, const float *w_hh, const float *w_hr,
                                const float *packed, const float *dy, const float *dh_T, const float *dc_T,
                                const int32_t *lengths, const float *h_in, const float *gates,
                                const float *c_in, const float *c_out, const float *m, float *dg, float *dhs,
                                float *dx, float *dh_0, float *dc_0, float *dw_ih, float *dw_hh, float *dw_hr,
                                float *db_ih, float *db_hh, int accumulate, int nthreads);
/* dst[i] = src[i] rounded to bfloat16 (to nearest even; its upper 16 bits), i < n:
 * weights to hold as bfloat16 (for fastrnn_dense_bf16, fastrnn_forward_direct_bf16). */
int fastrnn_to_bf16(size_t n, const float *src, uint16_t *dst, int nthreads);

/* From the row-major weights themselves (nothing packed): for small batches and short
 * calls, where a step reads each weight about once whatever its layout. Same arguments and
 * results as the forward above, without tokens or packed weights; c0 and c_T LSTM only.
 * gates NULL: inference; else the training workspace as above (h_in, gates; c_in, c_out
 * for LSTM; hh_n for GRU), which fastrnn_backward reads with packed = NULL. */
int fastrnn_forward_direct_f32(int cell, int T, int B, int I, int H, int reverse,
                               const float *x, const float *w_ih, const float *w_hh,
                               const float *b_ih, const float *b_hh, const float *h0, const float *c0,
                               const int32_t *lengths, float *y, float *h_T, float *c_T,
                               float *h_in, float *gates, float *c_in, float *c_out, float *hh_n, int nthreads);
int fastrnn_forward_direct_f64(int cell, int T, int B, int I, int H, int reverse,
                               const double *x, const double *w_ih, const double *w_hh,
                               const double *b_ih, const double *b_hh, const double *h0, const double *c0,
                               const int32_t *lengths, double *y, double *h_T, double *c_T,
                               double *h_in, double *gates, double *c_in, double *c_out, double *hh_n,
                               int nthreads);

/* Backward over the whole sequence from the forward's workspace. dy (T,B,H), dh_T and
 * dc_T (B,H) may be NULL (zero). Scratch: dgi (T,B,G*H) and, for GRU, dgh_n (T,B,H).
 * Outputs: dx (T,B,I), or the table's (V,I) with tokens (NULL: not computed), dh_0, dc_0
 * (B,H; dc_0 LSTM only), and the parameter gradients dw_ih, dw_hh, db_ih, db_hh: overwritten,
 * or with accumulate != 0 added to (a model's running gradients, with no temporary). */
int fastrnn_backward_f32(int cell, int T, int B, int I, int H, int reverse,
                         const float *x, int V, const int32_t *tokens,
                         const float *w_ih, const float *w_hh, const float *packed,
                         const float *dy, const float *dh_T, const float *dc_T, const int32_t *lengths,
                         const float *h_in, const float *gates, const float *c_in, const float *c_out,
                         const float *hh_n, float *dgi, float *dgh_n, float *dx, float *dh_0, float *dc_0,
                         float *dw_ih, float *dw_hh, float *db_ih, float *db_hh, int accumulate, int nthreads);
int fastrnn_backward_f64(int cell, int T, int B, int I, int H, int reverse,
                         const double *x, int V, const int32_t *tokens,
                         const double *w_ih, const double *w_hh, const double *packed,
                         const double *dy, const double *dh_T, const double *dc_T, const int32_t *lengths,
                         const double *h_in, const double *gates, const double *c_in, const double *c_out,
                         const double *hh_n, double *dgi, double *dgh_n, double *dx, double *dh_0, double *dc_0,
                         double *dw_ih, double *dw_hh, double *db_ih, double *db_hh, int accumulate, int nthreads);

/* LSTM with a projection (PyTorch's proj_size = P >= 1): m = o * tanh(c'), h' = W_hr m.
 * x (T,B,I); w_ih (4H,I); w_hh (4H,P); w_hr (P,H); b_ih, b_hh (4H) or both NULL; h0 (B,P);
 * c0 (B,H); y (T,B,P), h_T (B,P), c_T (B,H). lengths and reverse as above. Training
 * workspace (all NULL for inference): h_in (T,B,P) state before step t, gates (T,B,4H)
 * post-activation, c_in, c_out (T,B,H) cell state before/after, m (T,B,H) o * tanh(c').
 * Steps past a sequence's length write zeros to m and leave their other workspace rows
 * unwritten (backward does not read them).
 * Backward: dy (T,B,P), dh_T (B,P), dc_T (B,H) or NULL (zero); scratch dg (T,B,4H) and
 * dhs (T,B,P); dx (T,B,I) or NULL; dh_0 (B,P), dc_0 (B,H); dw_ih, dw_hh, dw_hr, db_ih,
 * db_hh overwritten, or added to with accumulate != 0.
 * packed: the weights packed by fastrnn_lstmp_pack for the same nthreads (reused while the
 * weights are unchanged), or NULL: each call packs its own. */
size_t fastrnn_lstmp_packed_size_f32(int I, int H, int P, int nthreads);
size_t fastrnn_lstmp_packed_size_f64(int I, int H, int P, int nthreads);
int fastrnn_lstmp_pack_f32(int I, int H, int P, const float *w_ih, const float *w_hh, const float *w_hr,
                           float *packed, int nthreads);
int fastrnn_lstmp_pack_f64(int I, int H, int P, const double *w_ih, const double *w_hh, const double *w_hr,
                           double *packed, int nthreads);
int fastrnn_lstmp_forward_f32(int T, int B, int I, int H, int P, int reverse,
                              const float *x, const float *w_ih, const float *w_hh, const float *w_hr,
                              const float *packed,
                              const float *b_ih, const float *b_hh, const float *h0, const float *c0,
                              const int32_t *lengths, float *y, float *h_T, float *c_T, float *h_in,
                              float *gates, float *c_in, float *c_out, float *m, int nthreads);
int fastrnn_lstmp_forward_f64(int T, int B, int I, int H, int P, int reverse,
                              const double *x, const double *w_ih, const double *w_hh, const double *w_hr,
                              const double *packed,
                              const double *b_ih, const double *b_hh, const double *h0, const double *c0,
                              const int32_t *lengths, double *y, double *h_T, double *c_T, double *h_in,
                              double *gates, double *c_in, double *c_out, double *m, int nthreads);
/* From the row-major weights (nothing packed), as fastrnn_forward_direct: gates NULL for
 * inference, else the workspace above (fastrnn_lstmp_backward reads it with packed = NULL). */
int fastrnn_lstmp_forward_direct_f32(int T, int B, int I, int H, int P, int reverse,
                                     const float *x, const float *w_ih, const float *w_hh, const float *w_hr,
                                     const float *b_ih, const float *b_hh, const float *h0, const float *c0,
                                     const int32_t *lengths, float *y, float *h_T, float *c_T, float *h_in,
                                     float *gates, float *c_in, float *c_out, float *m, int nthreads);
int fastrnn_lstmp_forward_direct_f64(int T, int B, int I, int H, int P, int reverse,
                                     const double *x, const double *w_ih, const double *w_hh, const double *w_hr,
                                     const double *b_ih, const double *b_hh, const double *h0, const double *c0,
                                     const int32_t *lengths, double *y, double *h_T, double *c_T, double *h_in,
                                     double *gates, double *c_in, double *c_out, double *m, int nthreads);
int fastrnn_lstmp_backward_f32(int T, int B, int I, int H, int P, int reverse,
                               const float *x, const float *w_ih, const float *w_hh, const float *w_hr,
                               const float *packed,
                               const float *dy, const float *dh_T, const float *dc_T, const int32_t *lengths,
                               const float *h_in, const float *gates, const float *c_in, const float *c_out,
                               const float *m, float *dg, float *dhs, float *dx, float *dh_0, float *dc_0,
                               float *dw_ih, float *dw_hh, float *dw_hr, float *db_ih, float *db_hh,
                               int accumulate, int nthreads);
int fastrnn_lstmp_backward_f64(int T, int B, int I, int H, int P, int reverse,
                               const double *x, const double *w_ih, const double *w_hh, const double *w_hr,
                               const double *packed,
                               const double *dy, const double *dh_T, const double *dc_T, const int32_t *lengths,
                               const double *h_in, const double *gates, const double *c_in, const double *c_out,
                               const double *m, double *dg, double *dhs, double *dx, double *dh_0, double *dc_0,
                               double *dw_ih, double *dw_hh, double *dw_hr, double *db_ih, double *db_hh,
                               int accumulate, int nthreads);

/* Weights packed once for many calls (DESIGN.md: once per parameter version): the size
 * in values of the buffer for calls with `nthreads` threads (0 on bad arguments), and the
 * packing itself. Pass the buffer as `packed` to forward and backward while w_ih and w_hh
 * are unchanged, with the same nthreads; NULL makes each call pack its own. If the
 * OpenMP runtime grants a different team size, the call packs its own too. bptt 1: the
 * forward's panels and BPTT's; bptt 0: the forward's only (two thirds at I = H, a prefix of
 * the whole with the same layout), which only forward may be given. */
size_t fastrnn_packed_size_f32(int cell, int I, int H, int nthreads, int bptt);
size_t fastrnn_packed_size_f64(int cell, int I, int H, int nthreads, int bptt);
int fastrnn_pack_f32(int cell, int I, int H, const float *w_ih, const float *w_hh, float *packed,
                     int nthreads, int bptt);
int fastrnn_pack_f64(int cell, int I, int H, const double *w_ih, const double *w_hh, double *packed,
                     int nthreads, int bptt);

/* 1 when forward and backward with these sizes, `nthreads` threads and packed weights
 * split the recurrence by batch rows (each thread all units of its rows, no barrier per
 * step: B large enough and W_hh small enough for a core's L2), 0 when by hidden units. */
int fastrnn_by_batch_f32(int cell, int B, int H, int nthreads);
int fastrnn_by_batch_f64(int cell, int B, int H, int nthreads);

/* Language-model helpers on the same kernels and threads.
 * matmul: C (M x N, row stride ldc) = A (M x K) B (K x N) [+ C if accumulate], with
 *   A(m,k) = A[m*sam + k*sak] and B(k,n) = B[k*sbk + n*sbn] (transposes by strides).
 * softmax_xent: per row of logits (N x V), loss[n] = logsumexp - logit[target[n]] and
 *   grad = scale * (softmax - onehot) (grad may alias logits, or be NULL);
 *   target < 0 marks a row to ignore (loss 0, grad 0).
 * scatter_rows: out (V x E) row ids[i] += rows (n x E) row i, ids in [0, V) (unchecked);
 *   the same sums, in the same order, on any number of threads. */
int fastrnn_matmul_f32(int M, int N, int K, const float *A, size_t sam, size_t sak,
                       const float *B, size_t sbk, size_t sbn, float *C, size_t ldc,
                       int accumulate, int nthreads);
int fastrnn_matmul_f64(int M, int N, int K, const double *A, size_t sam, size_t sak,
                       const double *B, size_t sbk, size_t sbn, double *C, size_t ldc,
                       int accumulate, int nthreads);
int fastrnn_softmax_xent_f32(int N, int V, const float *logits, const int32_t *targets,
                             float *loss, float *grad, float scale, int nthreads);
int fastrnn_softmax_xent_f64(int N, int V, const double *logits, const int32_t *targets,
                             double *loss, double *grad, double scale, int nthreads);
int fastrnn_scatter_rows_f32(size_t n, int E, const int32_t *ids, const float *rows, float *out,
                             int nthreads);
int fastrnn_scatter_rows_f64(size_t n, int E, const int32_t *ids, const double *rows, double *out,
                             int nthreads);

/* One torch.optim.Adam step over n values in place (p, g, m, v contiguous):
 * d = g + weight_decay p; m = b1 m + (1-b1) d; v = b2 v + (1-b2) d^2;
 * p -= step m / (sqrt(v / c2) + eps), with step = lr / (1 - b1^t), c2 = 1 - b2^t. */
int fastrnn_adam_f32(size_t n, float *p, const float *g, float *m, float *v, double step, double b1,
                     double b2, double c2, double eps, double weight_decay, int nthreads);
int fastrnn_adam_f64(size_t n, double *p, const double *g, double *m, double *v, double step, double b1,
                     double b2, double c2, double eps, double weight_decay, int nthreads);

/* Sum of squares of n contiguous values, in double (clipping by global norm). */
double fastrnn_sumsq_f32(size_t n, const float *x, int nthreads);
double fastrnn_sumsq_f64(size_t n, const double *x, int nthreads);

/* 1 when the n bytes at a and b are equal, and a copy of n bytes, each split over
 * threads: the packed-weights cache's version check and snapshot (memcmp: 3x faster
 * than NumPy's elementwise comparison; one thread does not reach the memory bandwidth).
 * zero_bytes: n bytes set to 0 the same way (a model's zero_grad: memset streams a big
 * buffer past the cache, NumPy's fill reads every line in first). */
int fastrnn_same_bytes(const void *a, const void *b, size_t n, int nthreads);
void fastrnn_copy_bytes(void *dst, const void *src, size_t n, int nthreads);
void fastrnn_zero_bytes(void *dst, size_t n, int nthreads);

/* The instruction set the kernels dispatch to: "avx512", "avx2" or "generic". */
const char *fastrnn_isa(void);
/* CPUs the OpenMP runtime counts for this process (omp_get_num_procs: the affinity mask
   it started with, not the one OMP_PROC_BIND then pins the caller to, and not changed by
   another library's omp_set_num_threads); 1 without OpenMP. */
int fastrnn_omp_num_procs(void);
#endif
