/* fastrnn C contract: the recurrent time loop of one layer in one direction.
 *
 * All arrays are C-contiguous and time-major. The caller (fastrnn/backends/cpu.py) has
 * already checked every shape and computed the input projection:
 *   xp   (T, B, G*H)  x W_ih^T + b_ih + b_hh  (GRU: b_hh added to the r and z parts only)
 *   w_hh (G*H, H)     PyTorch layout, gate order rnn: h / lstm: i f g o / gru: r z n
 *   b_hn (H)          GRU only: the n part of b_hh (it sits inside r * (W_hn h + b_hn)); may be NULL
 *   lengths (B)       valid steps per sequence, or NULL: step t (global time t0 + t) of sequence b
 *                     is valid when t0 + t < lengths[b]; invalid steps keep state and write y = 0
 * Training workspace (NULL when not training), indexed by local time t:
 *   h_in (T,B,H) state before step t, gates (T,B,G*H) post-activation gates,
 *   c_in, c_out (T,B,H) LSTM cell state before/after, hh_n (T,B,H) GRU W_hn h + b_hn.
 * Functions return 0 on success, FASTRNN_ENOMEM or FASTRNN_EINVAL.
 */
#ifndef FASTRNN_H
#define FASTRNN_H
#include <stdint.h>

#define FASTRNN_RNN_TANH 0
#define FASTRNN_RNN_RELU 1
#define FASTRNN_LSTM 2
#define FASTRNN_GRU 3
#define FASTRNN_ENOMEM 1
#define FASTRNN_EINVAL 2

int fastrnn_forward_f32(int cell, int T, int B, int H, int t0, int reverse,
                        const float *xp, const float *w_hh, const float *b_hn,
                        const float *h0, const float *c0, const int32_t *lengths,
                        float *y, float *h_T, float *c_T,
                        float *h_in, float *gates, float *c_in, float *c_out, float *hh_n,
                        int nthreads);
int fastrnn_forward_f64(int cell, int T, int B, int H, int t0, int reverse,
                        const double *xp, const double *w_hh, const double *b_hn,
                        const double *h0, const double *c0, const int32_t *lengths,
                        double *y, double *h_T, double *c_T,
                        double *h_in, double *gates, double *c_in, double *c_out, double *hh_n,
                        int nthreads);

/* Backward of one layer-direction over the whole sequence (the forward's workspace).
 *   dy (T,B,H) or NULL, dh_T / dc_T (B,H) or NULL.
 * Outputs: dgi (T,B,G*H) gradient of the input-side pre-activations (zero at invalid steps);
 *   the recurrent-side gradient equals dgi except, for GRU, its n part, written to dgh_n (T,B,H);
 *   dh_0, dc_0 (B,H) (dc_0 LSTM only). */
int fastrnn_backward_f32(int cell, int T, int B, int H, int reverse,
                         const float *w_hh, const float *dy, const float *dh_T, const float *dc_T,
                         const int32_t *lengths, const float *h_in, const float *gates,
                         const float *c_in, const float *c_out, const float *hh_n,
                         float *dgi, float *dgh_n, float *dh_0, float *dc_0, int nthreads);
int fastrnn_backward_f64(int cell, int T, int B, int H, int reverse,
                         const double *w_hh, const double *dy, const double *dh_T, const double *dc_T,
                         const int32_t *lengths, const double *h_in, const double *gates,
                         const double *c_in, const double *c_out, const double *hh_n,
                         double *dgi, double *dgh_n, double *dh_0, double *dc_0, int nthreads);

/* The instruction set the kernels dispatch to: "avx512", "avx2" or "generic". */
const char *fastrnn_isa(void);
/* Threads an OpenMP region may use here (omp_get_max_threads), 1 without OpenMP. */
int fastrnn_omp_max_threads(void);
#endif
