/* C tests of the kernels, run by ctest (also under AddressSanitizer + UBSan):
 * - backward against central finite differences of forward, in double, every cell,
 *   both directions, full and ragged batches, with dx, dh_0, dc_0 and every weight;
 * - float32 against float64 on the same inputs;
 * - 1 thread against 3 threads (bitwise: each unit is computed the same way);
 * - lookup input (rows of a table picked by tokens) against the same rows given as x;
 * - the LSTM with a projection (proj_size) against finite differences, as the first;
 * - the unpacked inference kernels (forward_direct, lstmp_forward_direct) against the packed;
 * - rejected arguments. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "fastrnn.h"

enum { T = 5, B = 3, I = 4, H = 11 };
static int failures = 0;
#define CHECK(cond, ...) do { if (!(cond)) { failures++; printf("FAIL: " __VA_ARGS__); printf("\n"); } } while (0)

static double urand(unsigned *s) { *s = *s * 1103515245u + 12345u; return ((*s >> 8) & 0xFFFF) / 65536.0 - 0.5; }
static int gates_of(int cell) { return cell == FASTRNN_LSTM ? 4 : cell == FASTRNN_GRU ? 3 : 1; }

typedef struct {
    int cell, G, reverse, ragged;
    double x[T * B * I], w_ih[4 * H * I], w_hh[4 * H * H], b_ih[4 * H], b_hh[4 * H];
    double h0[B * H], c0[B * H], wy[T * B * H], wh[B * H], wc[B * H];
    int32_t lengths[B];
} problem;

/* loss = <y, wy> + <h_T, wh> + <c_T, wc> */
static double loss(problem *p)
{
    double y[T * B * H], hT[B * H], cT[B * H];
    int rc = fastrnn_forward_f64(p->cell, T, B, I, H, p->reverse, 2, p->x, 0, NULL, p->w_ih, p->w_hh, NULL, p->b_ih,
                                 p->b_hh, p->h0, p->c0, p->ragged ? p->lengths : NULL, y, hT, cT,
                                 NULL, NULL, NULL, NULL, NULL, 2);
    CHECK(rc == 0, "forward rc %d", rc);
    double l = 0;
    for (int i = 0; i < T * B * H; i++) l += y[i] * p->wy[i];
    for (int i = 0; i < B * H; i++) l += hT[i] * p->wh[i] + (p->cell == FASTRNN_LSTM ? cT[i] * p->wc[i] : 0);
    return l;
}

/* Central differences of lossf(p) in param[k] (every 7th k when n > 40) against grad[k]. */
static void fd_compare(double (*lossf)(void *), void *p, double *param, const double *grad, int n,
                       const char *what, const char *name)
{
    for (int k = 0; k < n; k += (n > 40 ? 7 : 1)) {
        double keep = param[k], eps = 1e-6;
        param[k] = keep + eps;
        double lp = lossf(p);
        param[k] = keep - eps;
        double lm = lossf(p);
        param[k] = keep;
        double fd = (lp - lm) / (2 * eps);
        CHECK(fabs(fd - grad[k]) <= 1e-6 * (1 + fabs(fd)), "%s: d%s[%d] fd %.10g analytic %.10g", what, name, k,
              fd, grad[k]);
    }
}

static double loss_of(void *p) { return loss((problem *)p); }

static void fd_check(problem *p, double *param, const double *grad, int n, const char *name)
{
    char what[64];
    snprintf(what, sizeof what, "cell %d rev %d ragged %d", p->cell, p->reverse, p->ragged);
    fd_compare(loss_of, p, param, grad, n, what, name);
}

static void gradcheck(int cell, int reverse, int ragged)
{
    static problem p;
    unsigned s = 1234u + cell * 10 + reverse * 3 + ragged;
    p.cell = cell; p.G = gates_of(cell); p.reverse = reverse; p.ragged = ragged;
    int GH = p.G * H;
    for (int i = 0; i < T * B * I; i++) p.x[i] = 2 * urand(&s);
    for (int i = 0; i < GH * I; i++) p.w_ih[i] = urand(&s);
    for (int i = 0; i < GH * H; i++) p.w_hh[i] = urand(&s);
    for (int i = 0; i < GH; i++) { p.b_ih[i] = urand(&s); p.b_hh[i] = urand(&s); }
    for (int i = 0; i < B * H; i++) { p.h0[i] = urand(&s); p.c0[i] = urand(&s); p.wh[i] = urand(&s); p.wc[i] = urand(&s); }
    for (int i = 0; i < T * B * H; i++) p.wy[i] = urand(&s);
    p.lengths[0] = T; p.lengths[1] = 2; p.lengths[2] = 0;

    static double y[T * B * H], hT[B * H], cT[B * H], h_in[T * B * H], gates[T * B * 4 * H],
        c_in[T * B * H], c_out[T * B * H], hh_n[T * B * H];
    static double dgi[T * B * 4 * H], dgh_n[T * B * H], dx[T * B * I], dh0[B * H], dc0[B * H],
        dw_ih[4 * H * I], dw_hh[4 * H * H], db_ih[4 * H], db_hh[4 * H];
    /* the analytic gradients run on weights packed once (finite differences pack per call) */
    size_t np = fastrnn_packed_size_f64(cell, I, H, 2, 1);
    double *packed = malloc(np * sizeof(double));
    CHECK(np > 0 && packed && fastrnn_pack_f64(cell, I, H, p.w_ih, p.w_hh, packed, 2, 1) == 0, "pack");
    int rc = fastrnn_forward_f64(cell, T, B, I, H, reverse, 3, p.x, 0, NULL, p.w_ih, p.w_hh, packed, p.b_ih, p.b_hh,
                                 p.h0, p.c0, ragged ? p.lengths : NULL, y, hT, cT, h_in, gates,
                                 c_in, c_out, hh_n, 2);
    CHECK(rc == 0, "forward rc %d", rc);
    rc = fastrnn_backward_f64(cell, T, B, I, H, reverse, p.x, 0, NULL, p.w_ih, p.w_hh, packed, p.wy, p.wh,
                              cell == FASTRNN_LSTM ? p.wc : NULL, ragged ? p.lengths : NULL, h_in,
                              gates, c_in, c_out, hh_n, dgi, dgh_n, dx, dh0, dc0, dw_ih, dw_hh,
                              db_ih, db_hh, 0, 2);
    CHECK(rc == 0, "backward rc %d", rc);
    free(packed);
    fd_check(&p, p.x, dx, T * B * I, "x");
    fd_check(&p, p.h0, dh0, B * H, "h0");
    if (cell == FASTRNN_LSTM) fd_check(&p, p.c0, dc0, B * H, "c0");
    fd_check(&p, p.w_ih, dw_ih, GH * I, "w_ih");
    fd_check(&p, p.w_hh, dw_hh, GH * H, "w_hh");
    fd_check(&p, p.b_ih, db_ih, GH, "b_ih");
    fd_check(&p, p.b_hh, db_hh, GH, "b_hh");
}

/* float32 vs float64 forward, and 1 vs 3 threads (float32, bitwise). */
static void precision_and_threads(int cell)
{
    enum { T2 = 9, B2 = 6, I2 = 13, H2 = 70 };
    int G = gates_of(cell), GH = G * H2;
    unsigned s = 99u + cell;
    size_t nx = T2 * B2 * I2, nwi = (size_t)GH * I2, nwh = (size_t)GH * H2, ny = T2 * B2 * H2;
    float *xf = malloc(nx * 4), *wif = malloc(nwi * 4), *whf = malloc(nwh * 4), *bf = malloc(GH * 4);
    double *xd = malloc(nx * 8), *wid = malloc(nwi * 8), *whd = malloc(nwh * 8), *bd = malloc(GH * 8);
    float h0f[B2 * H2] = {0}, c0f[B2 * H2] = {0}, hTf[B2 * H2], cTf[B2 * H2], hT3[B2 * H2], cT3[B2 * H2];
    double h0d[B2 * H2] = {0}, c0d[B2 * H2] = {0}, hTd[B2 * H2], cTd[B2 * H2];
    float *yf = malloc(ny * 4), *y3 = malloc(ny * 4);
    double *yd = malloc(ny * 8);
    for (size_t i = 0; i < nx; i++) xd[i] = xf[i] = (float)urand(&s);
    for (size_t i = 0; i < nwi; i++) wid[i] = wif[i] = (float)(0.3 * urand(&s));
    for (size_t i = 0; i < nwh; i++) whd[i] = whf[i] = (float)(0.3 * urand(&s));
    for (int i = 0; i < GH; i++) bd[i] = bf[i] = (float)urand(&s);
    int32_t lengths[B2] = {9, 1, 4, 9, 0, 7};
    CHECK(fastrnn_forward_f32(cell, T2, B2, I2, H2, 1, 4, xf, 0, NULL, wif, whf, NULL, bf, bf, h0f, c0f, lengths, yf,
                              hTf, cTf, NULL, NULL, NULL, NULL, NULL, 1) == 0, "f32 forward");
    CHECK(fastrnn_forward_f32(cell, T2, B2, I2, H2, 1, 4, xf, 0, NULL, wif, whf, NULL, bf, bf, h0f, c0f, lengths, y3,
                              hT3, cT3, NULL, NULL, NULL, NULL, NULL, 3) == 0, "f32 forward 3 threads");
    CHECK(fastrnn_forward_f64(cell, T2, B2, I2, H2, 1, 4, xd, 0, NULL, wid, whd, NULL, bd, bd, h0d, c0d, lengths, yd,
                              hTd, cTd, NULL, NULL, NULL, NULL, NULL, 2) == 0, "f64 forward");
    double num = 0, den = 0;
    for (size_t i = 0; i < ny; i++) { num += (yf[i] - yd[i]) * (yf[i] - yd[i]); den += yd[i] * yd[i]; }
    CHECK(sqrt(num / (den > 0 ? den : 1)) < 1e-5, "cell %d: f32 vs f64 rel err %g", cell, sqrt(num / den));
    CHECK(memcmp(yf, y3, ny * 4) == 0, "cell %d: 1 vs 3 threads differ", cell);
    /* weights packed once for 3 threads give the same bits as packing in the call; the
     * forward's panels alone (bptt 0, a buffer of exactly their size: AddressSanitizer
     * sees a read past them) are the whole packing's prefix */
    size_t np = fastrnn_packed_size_f32(cell, I2, H2, 3, 0), nfull = fastrnn_packed_size_f32(cell, I2, H2, 3, 1);
    float *packed = calloc(np, sizeof(float)), *full = calloc(nfull, sizeof(float));   /* padding zeroed alike */
    CHECK(np > 0 && nfull > np && packed && full && fastrnn_pack_f32(cell, I2, H2, wif, whf, packed, 3, 0) == 0 &&
          fastrnn_pack_f32(cell, I2, H2, wif, whf, full, 3, 1) == 0, "f32 pack");
    CHECK(memcmp(packed, full, np * sizeof(float)) == 0, "cell %d: forward panels are not the prefix", cell);
    CHECK(fastrnn_forward_f32(cell, T2, B2, I2, H2, 1, 4, xf, 0, NULL, wif, whf, packed, bf, bf, h0f, c0f, lengths,
                              y3, hT3, cT3, NULL, NULL, NULL, NULL, NULL, 3) == 0, "f32 forward packed");
    CHECK(memcmp(yf, y3, ny * 4) == 0, "cell %d: packed weights differ", cell);
    free(packed);
    free(full);
    free(xf); free(wif); free(whf); free(bf); free(xd); free(wid); free(whd); free(bd);
    free(yf); free(y3); free(yd);
}

/* Precision bfloat16 (inference): near float32 (operands rounded to 8 significant bits),
 * the same bits on 1 and 3 threads and with weights packed beforehand; ENOTSUP where the
 * CPU (or a forced FASTRNN_ISA) has no AVX512_BF16. Odd I and H: a zero-padded pair. */
static void bf16_near_f32(int cell, int reverse)
{
    enum { T6 = 11, B6 = 7, I6 = 13, H6 = 45 };
    int G = gates_of(cell), GH = G * H6;
    unsigned s = 7u + cell;
    size_t nx = T6 * B6 * I6, nwi = (size_t)GH * I6, nwh = (size_t)GH * H6, ny = T6 * B6 * H6;
    float *x = malloc(nx * 4), *wi = malloc(nwi * 4), *wh = malloc(nwh * 4), *b = malloc(GH * 4);
    float *yf = malloc(ny * 4), *y1 = malloc(ny * 4), *y3 = malloc(ny * 4);
    float h0[B6 * H6], c0[B6 * H6], hT[B6 * H6], cT[B6 * H6], hT3[B6 * H6], cT3[B6 * H6];
    for (size_t i = 0; i < nx; i++) x[i] = (float)urand(&s);
    for (size_t i = 0; i < nwi; i++) wi[i] = (float)(0.3 * urand(&s));
    for (size_t i = 0; i < nwh; i++) wh[i] = (float)(0.3 * urand(&s));
    for (int i = 0; i < GH; i++) b[i] = (float)urand(&s);
    for (int i = 0; i < B6 * H6; i++) { h0[i] = (float)urand(&s); c0[i] = (float)urand(&s); }
    int32_t lengths[B6] = {11, 3, 0, 11, 6, 1, 10};
    int rc = fastrnn_forward_bf16(cell, T6, B6, I6, H6, reverse, 4, x, 0, NULL, wi, wh, NULL, b, b, h0, c0,
                                  lengths, y1, hT, cT, NULL, NULL, NULL, NULL, NULL, 1);
    /* the direct kernel (float weights rounded as read): the same operands, other sum order */
    int rc_direct = fastrnn_forward_direct_bf16(cell, T6, B6, I6, H6, reverse, x, wi, wh, 0, b, b, h0, c0, lengths,
                                                yf, hT3, cT3, NULL, NULL, NULL, NULL, NULL, 2);
    if (!fastrnn_has_bf16()) {
        CHECK(rc == FASTRNN_ENOTSUP, "bf16 without AVX512_BF16: rc %d", rc);
        CHECK(rc_direct == FASTRNN_ENOTSUP, "bf16 direct without AVX512_BF16: rc %d", rc_direct);
        CHECK(fastrnn_packed_size_bf16(cell, I6, H6, 2, 1) == 0, "bf16 packed size without AVX512_BF16");
    } else {
        CHECK(rc_direct == 0, "bf16 direct rc %d", rc_direct);
        double dn = 0, dd = 0;
        for (size_t i = 0; i < ny; i++) { dn += (y1[i] - yf[i]) * (y1[i] - yf[i]); dd += y1[i] * y1[i]; }
        CHECK(sqrt(dn / (dd > 0 ? dd : 1)) < 1e-3, "cell %d rev %d: bf16 direct vs packed rel err %g", cell, reverse,
              sqrt(dn / (dd > 0 ? dd : 1)));
        CHECK(rc == 0, "bf16 forward rc %d", rc);
        CHECK(fastrnn_forward_f32(cell, T6, B6, I6, H6, reverse, 4, x, 0, NULL, wi, wh, NULL, b, b, h0, c0, lengths,
                                  yf, hT3, cT3, NULL, NULL, NULL, NULL, NULL, 2) == 0, "f32 forward");
        double num = 0, den = 0;
        for (size_t i = 0; i < ny; i++) { num += (y1[i] - yf[i]) * (y1[i] - yf[i]); den += yf[i] * yf[i]; }
        const double rel = sqrt(num / (den > 0 ? den : 1));
        CHECK(rel < 2e-2 && rel > 1e-5, "cell %d rev %d: bf16 vs f32 rel err %g", cell, reverse, rel);
        size_t np = fastrnn_packed_size_bf16(cell, I6, H6, 3, 0);   /* the forward's panels only */
        float *packed = malloc(np * sizeof(float));
        CHECK(np > 0 && np < fastrnn_packed_size_bf16(cell, I6, H6, 3, 1) && packed &&
              fastrnn_pack_bf16(cell, I6, H6, wi, wh, packed, 3, 0) == 0, "bf16 pack");
        CHECK(fastrnn_forward_bf16(cell, T6, B6, I6, H6, reverse, 4, x, 0, NULL, wi, wh, packed, b, b, h0, c0,
                                   lengths, y3, hT3, cT3, NULL, NULL, NULL, NULL, NULL, 3) == 0,
              "bf16 forward packed, 3 threads");
        CHECK(memcmp(y1, y3, ny * 4) == 0 && memcmp(hT, hT3, sizeof hT) == 0, "cell %d rev %d: bf16 1 vs 3 threads differ",
              cell, reverse);
        free(packed);
    }
    free(x); free(wi); free(wh); free(b); free(yf); free(y1); free(y3);
}

/* Lookup input: forward and backward with x = table[tokens] given as a table and tokens
 * match the same inputs given densely; the table's gradient is dx summed per token. */
/* Precision bfloat16 training: the forward writes the float workspace, and BPTT's products
 * round their operands, so every gradient lies near float32's (not equal to it), on 1 and 3
 * threads, split by units (B = 3) and by batch rows (B = 32 where W_hh fits L2); ENOTSUP
 * where the CPU has no AVX512_BF16. Odd I and H: zero-padded pairs in every product. */
static void bf16_backward_near_f32(int cell, int B)
{
    enum { T = 9, I = 13, H = 45 };
    const int G = gates_of(cell), GH = G * H;
    unsigned s = 17u + (unsigned)(cell + B);
    const size_t nx = (size_t)T * B * I, nwi = (size_t)GH * I, nwh = (size_t)GH * H, ny = (size_t)T * B * H;
    const size_t ng = (size_t)T * B * GH, nbh = (size_t)B * H;
    float *x = malloc(nx * 4), *wi = malloc(nwi * 4), *wh = malloc(nwh * 4), *bias = malloc(GH * 4);
    float *h0 = malloc(nbh * 4), *c0 = malloc(nbh * 4), *dy = malloc(ny * 4), *y = malloc(ny * 4);
    float *hT = malloc(nbh * 4), *cT = malloc(nbh * 4), *h_in = malloc(ny * 4), *gates = malloc(ng * 4);
    float *cs = malloc((ny + nbh) * 4), *hh_n = malloc(ny * 4), *dgi = malloc(ng * 4), *dgh_n = malloc(ny * 4);
    float *out[3][7];   /* f32, bf16 on 1 thread, bf16 on 3: dx dh0 dc0 dw_ih dw_hh db_ih db_hh */
    const size_t sizes[7] = {nx, nbh, nbh, nwi, nwh, (size_t)GH, (size_t)GH};
    for (size_t i = 0; i < nx; i++) x[i] = (float)urand(&s);
    for (size_t i = 0; i < nwi; i++) wi[i] = (float)(0.3 * urand(&s));
    for (size_t i = 0; i < nwh; i++) wh[i] = (float)(0.3 * urand(&s));
    for (int i = 0; i < GH; i++) bias[i] = (float)urand(&s);
    for (size_t i = 0; i < nbh; i++) { h0[i] = (float)urand(&s); c0[i] = (float)urand(&s); }
    for (size_t i = 0; i < ny; i++) dy[i] = (float)urand(&s);
    int32_t *lengths = malloc((size_t)B * sizeof(int32_t));
    for (int b = 0; b < B; b++) lengths[b] = b == 0 ? T : (int32_t)(b * 5 % (T + 1));
    const int lstm = cell == FASTRNN_LSTM, gru = cell == FASTRNN_GRU;
    for (int v = 0; v < 3; v++) {
        for (int k = 0; k < 7; k++) out[v][k] = malloc(sizes[k] * 4);
        const int nth = v == 2 ? 3 : 1, bf = v > 0;
        int rc = bf ? fastrnn_forward_bf16(cell, T, B, I, H, 0, 4, x, 0, NULL, wi, wh, NULL, bias, bias, h0, c0,
                                           lengths, y, hT, cT, h_in, gates, lstm ? cs : NULL, lstm ? cs + nbh : NULL,
                                           gru ? hh_n : NULL, nth)
                    : fastrnn_forward_f32(cell, T, B, I, H, 0, 4, x, 0, NULL, wi, wh, NULL, bias, bias, h0, c0,
                                          lengths, y, hT, cT, h_in, gates, lstm ? cs : NULL, lstm ? cs + nbh : NULL,
                                          gru ? hh_n : NULL, nth);
        if (bf && !fastrnn_has_bf16()) {
            CHECK(rc == FASTRNN_ENOTSUP, "bf16 training forward without AVX512_BF16: rc %d", rc);
            rc = fastrnn_backward_bf16(cell, T, B, I, H, 0, x, 0, NULL, wi, wh, NULL, dy, NULL, NULL, lengths, h_in,
                                       gates, NULL, NULL, NULL, dgi, dgh_n, out[v][0], out[v][1], out[v][2],
                                       out[v][3], out[v][4], out[v][5], out[v][6], 0, nth);
            CHECK(rc == FASTRNN_ENOTSUP, "bf16 backward without AVX512_BF16: rc %d", rc);
            continue;
        }
        CHECK(rc == 0, "cell %d B %d: training forward (bf16 %d) rc %d", cell, B, bf, rc);
        rc = (bf ? fastrnn_backward_bf16 : fastrnn_backward_f32)(
            cell, T, B, I, H, 0, x, 0, NULL, wi, wh, NULL, dy, NULL, NULL, lengths, h_in, gates,
            lstm ? cs : NULL, lstm ? cs + nbh : NULL, gru ? hh_n : NULL, dgi, dgh_n, out[v][0], out[v][1],
            lstm ? out[v][2] : NULL, out[v][3], out[v][4], out[v][5], out[v][6], 0, nth);
        CHECK(rc == 0, "cell %d B %d: backward (bf16 %d) rc %d", cell, B, bf, rc);
    }
    if (fastrnn_has_bf16()) {
        for (int k = 0; k < 7; k++) {
            if (k == 2 && !lstm) continue;
            double d1 = 0, d3 = 0, den = 0;
            for (size_t i = 0; i < sizes[k]; i++) {
                d1 += (out[1][k][i] - out[0][k][i]) * (out[1][k][i] - out[0][k][i]);
                d3 += (out[2][k][i] - out[1][k][i]) * (out[2][k][i] - out[1][k][i]);
                den += out[0][k][i] * out[0][k][i];
            }
            const double rel = sqrt(d1 / (den > 0 ? den : 1)), rel3 = sqrt(d3 / (den > 0 ? den : 1));
            /* relu: a pre-activation near 0 that rounding moves across it switches a unit off */
            const double lim = cell == FASTRNN_RNN_RELU ? 0.1 : 3e-2;
            CHECK(rel < lim && rel > 1e-5, "cell %d B %d grad %d: bf16 vs f32 rel err %g", cell, B, k, rel);
            CHECK(rel3 < 3e-3, "cell %d B %d grad %d: bf16 1 vs 3 threads rel err %g", cell, B, k, rel3);
        }
    }
    for (int v = 0; v < 3; v++)
        for (int k = 0; k < 7; k++) free(out[v][k]);
    free(x); free(wi); free(wh); free(bias); free(h0); free(c0); free(dy); free(y); free(hT); free(cT);
    free(h_in); free(gates); free(cs); free(hh_n); free(dgi); free(dgh_n); free(lengths);
}

static void lookup_matches_dense(int cell, int reverse)
{
    enum { T3 = 7, B3 = 5, V3 = 6, I3 = 9, H3 = 40, NTH = 3 };
    const int G = gates_of(cell), GH = G * H3;
    unsigned s = 555u + cell * 2 + reverse;
    static double table[V3 * I3], x[T3 * B3 * I3], w_ih[4 * H3 * I3], w_hh[4 * H3 * H3], b[4 * H3];
    static double h0[B3 * H3], c0[B3 * H3], dy[T3 * B3 * H3];
    static double y[2][T3 * B3 * H3], hT[2][B3 * H3], cT[2][B3 * H3], h_in[2][T3 * B3 * H3],
        gates[2][T3 * B3 * 4 * H3], c_in[2][T3 * B3 * H3], c_out[2][T3 * B3 * H3], hh_n[2][T3 * B3 * H3];
    static double dgi[T3 * B3 * 4 * H3], dgh_n[T3 * B3 * H3], dx[T3 * B3 * I3], dtable[V3 * I3],
        dh0[2][B3 * H3], dc0[2][B3 * H3], dw_ih[2][4 * H3 * I3], dw_hh[2][4 * H3 * H3],
        db_ih[2][4 * H3], db_hh[2][4 * H3];
    int32_t tokens[T3 * B3], lengths[B3] = {7, 3, 0, 7, 5};
    for (int i = 0; i < V3 * I3; i++) table[i] = urand(&s);
    for (int i = 0; i < T3 * B3; i++) tokens[i] = (int32_t)((i * 7 + i / 3) % (V3 - 1));  /* row V3-1 unused */
    for (int i = 0; i < T3 * B3; i++) memcpy(x + (size_t)i * I3, table + (size_t)tokens[i] * I3, I3 * sizeof(double));
    for (int i = 0; i < GH * I3; i++) w_ih[i] = 0.5 * urand(&s);
    for (int i = 0; i < GH * H3; i++) w_hh[i] = 0.5 * urand(&s);
    for (int i = 0; i < GH; i++) b[i] = urand(&s);
    for (int i = 0; i < B3 * H3; i++) { h0[i] = urand(&s); c0[i] = urand(&s); }
    for (int i = 0; i < T3 * B3 * H3; i++) dy[i] = urand(&s);
    for (int k = 0; k < 2; k++) {  /* k = 0: dense x, k = 1: lookup */
        const double *in = k ? table : x;
        const int32_t *tok = k ? tokens : NULL;
        CHECK(fastrnn_forward_f64(cell, T3, B3, I3, H3, reverse, 2, in, V3, tok, w_ih, w_hh, NULL, b, b, h0, c0,
                                  lengths, y[k], hT[k], cT[k], h_in[k], gates[k], c_in[k], c_out[k], hh_n[k],
                                  NTH) == 0, "lookup forward %d", k);
        CHECK(fastrnn_backward_f64(cell, T3, B3, I3, H3, reverse, in, V3, tok, w_ih, w_hh, NULL, dy, NULL, NULL,
                                   lengths, h_in[k], gates[k], c_in[k], c_out[k], hh_n[k], dgi, dgh_n,
                                   k ? dtable : dx, dh0[k], dc0[k], dw_ih[k], dw_hh[k], db_ih[k], db_hh[k],
                                   0, NTH) == 0, "lookup backward %d", k);
    }
    double want[V3 * I3] = {0};
    for (int i = 0; i < T3 * B3; i++)
        for (int q = 0; q < I3; q++) want[tokens[i] * I3 + q] += dx[(size_t)i * I3 + q];
    struct { const char *name; const double *a, *b; int n; } cmp[] = {
        {"y", y[0], y[1], T3 * B3 * H3}, {"h_T", hT[0], hT[1], B3 * H3},
        {"dh0", dh0[0], dh0[1], B3 * H3}, {"dw_ih", dw_ih[0], dw_ih[1], GH * I3},
        {"dw_hh", dw_hh[0], dw_hh[1], GH * H3}, {"db_ih", db_ih[0], db_ih[1], GH},
        {"dtable", want, dtable, V3 * I3}};
    for (size_t c = 0; c < sizeof cmp / sizeof cmp[0]; c++)
        for (int i = 0; i < cmp[c].n; i++)
            if (fabs(cmp[c].a[i] - cmp[c].b[i]) > 1e-12 * (1 + fabs(cmp[c].a[i]))) {
                CHECK(0, "cell %d rev %d: lookup %s[%d] %.15g vs dense %.15g", cell, reverse, cmp[c].name, i,
                      cmp[c].b[i], cmp[c].a[i]);
                break;
            }
}

/* The same in bfloat16 training: the lookup's gradients round each step's gate gradients
 * (summed per table row, then float32 products with the rounded table and W_ih), so they
 * are the dense input's up to the order of the sums. 3 threads; B = 5 takes the weight
 * gradients by rows for LSTM and GRU, by columns for plain RNN. */
static void lookup_matches_dense_bf16(int cell)
{
    enum { T3 = 7, B3 = 5, V3 = 6, I3 = 9, H3 = 40, NTH = 3 };
    const int G = gates_of(cell), GH = G * H3;
    unsigned s = 777u + cell;
    static float table[V3 * I3], x[T3 * B3 * I3], w_ih[4 * H3 * I3], w_hh[4 * H3 * H3], b[4 * H3];
    static float h0[B3 * H3], c0[B3 * H3], dy[T3 * B3 * H3], y[T3 * B3 * H3], hT[B3 * H3], cT[B3 * H3];
    static float h_in[T3 * B3 * H3], gates[T3 * B3 * 4 * H3], cs[(T3 + 1) * B3 * H3], hh_n[T3 * B3 * H3];
    static float dgi[T3 * B3 * 4 * H3], dgh_n[T3 * B3 * H3], dx[T3 * B3 * I3], dtable[V3 * I3];
    static float dh0[2][B3 * H3], dc0[2][B3 * H3], dw_ih[2][4 * H3 * I3], dw_hh[2][4 * H3 * H3];
    static float db_ih[2][4 * H3], db_hh[2][4 * H3];
    int32_t tokens[T3 * B3], lengths[B3] = {7, 3, 0, 7, 5};
    for (int i = 0; i < V3 * I3; i++) table[i] = (float)urand(&s);
    for (int i = 0; i < T3 * B3; i++) tokens[i] = (int32_t)((i * 7 + i / 3) % (V3 - 1));
    for (int i = 0; i < T3 * B3; i++) memcpy(x + (size_t)i * I3, table + (size_t)tokens[i] * I3, I3 * sizeof(float));
    for (int i = 0; i < GH * I3; i++) w_ih[i] = (float)(0.5 * urand(&s));
    for (int i = 0; i < GH * H3; i++) w_hh[i] = (float)(0.5 * urand(&s));
    for (int i = 0; i < GH; i++) b[i] = (float)urand(&s);
    for (int i = 0; i < B3 * H3; i++) { h0[i] = (float)urand(&s); c0[i] = (float)urand(&s); }
    for (int i = 0; i < T3 * B3 * H3; i++) dy[i] = (float)urand(&s);
    const int lstm = cell == FASTRNN_LSTM, gru = cell == FASTRNN_GRU;
    for (int k = 0; k < 2; k++) {  /* k = 0: dense x, k = 1: lookup */
        const float *in = k ? table : x;
        const int32_t *tok = k ? tokens : NULL;
        int rc = fastrnn_forward_bf16(cell, T3, B3, I3, H3, 0, 2, in, V3, tok, w_ih, w_hh, NULL, b, b, h0, c0, lengths,
                                      y, hT, cT, h_in, gates, lstm ? cs : NULL, lstm ? cs + B3 * H3 : NULL,
                                      gru ? hh_n : NULL, NTH);
        if (!fastrnn_has_bf16()) {
            CHECK(rc == FASTRNN_ENOTSUP, "bf16 lookup forward without AVX512_BF16: rc %d", rc);
            return;
        }
        CHECK(rc == 0, "bf16 lookup forward %d", k);
        CHECK(fastrnn_backward_bf16(cell, T3, B3, I3, H3, 0, in, V3, tok, w_ih, w_hh, NULL, dy, NULL, NULL, lengths,
                                    h_in, gates, lstm ? cs : NULL, lstm ? cs + B3 * H3 : NULL, gru ? hh_n : NULL,
                                    dgi, dgh_n, k ? dtable : dx, dh0[k], lstm ? dc0[k] : NULL, dw_ih[k], dw_hh[k],
                                    db_ih[k], db_hh[k], 0, NTH) == 0, "bf16 lookup backward %d", k);
    }
    static float want[V3 * I3];
    memset(want, 0, sizeof want);
    for (int i = 0; i < T3 * B3; i++)
        for (int q = 0; q < I3; q++) want[tokens[i] * I3 + q] += dx[(size_t)i * I3 + q];
    struct { const char *name; const float *a, *b; int n; } cmp[] = {
        {"dh0", dh0[0], dh0[1], B3 * H3}, {"dw_ih", dw_ih[0], dw_ih[1], GH * I3},
        {"dw_hh", dw_hh[0], dw_hh[1], GH * H3}, {"db_ih", db_ih[0], db_ih[1], GH}, {"dtable", want, dtable, V3 * I3}};
    for (size_t c = 0; c < sizeof cmp / sizeof cmp[0]; c++) {
        double num = 0, den = 0;
        for (int i = 0; i < cmp[c].n; i++) {
            num += (cmp[c].a[i] - cmp[c].b[i]) * (cmp[c].a[i] - cmp[c].b[i]);
            den += cmp[c].a[i] * cmp[c].a[i];
        }
        CHECK(sqrt(num / (den > 0 ? den : 1)) < 2e-5, "cell %d: bf16 lookup %s vs dense rel err %g", cell,
              cmp[c].name, sqrt(num / (den > 0 ? den : 1)));
    }
}

/* forward_direct (inference on the row-major weights) against the packed forward: every
 * batch size 1..6 (the dot tiles take 1-4 vectors), I and H that are no multiple of a
 * vector (tails), ragged lengths with an empty sequence, 1 and 3 threads, float and double. */
static void direct_matches_packed(int cell, int reverse)
{
    enum { T4 = 6, B4 = 6, I4 = 21, H4 = 35, G4 = 4 };
    const int G = gates_of(cell), GH = G * H4;
    unsigned s = 777u + cell * 2 + reverse;
    static double x[T4 * B4 * I4], w_ih[G4 * H4 * I4], w_hh[G4 * H4 * H4], b_ih[G4 * H4], b_hh[G4 * H4];
    static double h0[B4 * H4], c0[B4 * H4], y[2][T4 * B4 * H4], hT[2][B4 * H4], cT[2][B4 * H4];
    static float xf[T4 * B4 * I4], w_ihf[G4 * H4 * I4], w_hhf[G4 * H4 * H4], b_ihf[G4 * H4], b_hhf[G4 * H4];
    static float h0f[B4 * H4], c0f[B4 * H4], yf[T4 * B4 * H4], hTf[B4 * H4], cTf[B4 * H4];
    int32_t lengths[B4] = {6, 2, 0, 5, 6, 1};
    for (int i = 0; i < T4 * B4 * I4; i++) xf[i] = (float)(x[i] = urand(&s));
    for (int i = 0; i < GH * I4; i++) w_ihf[i] = (float)(w_ih[i] = 0.5 * urand(&s));
    for (int i = 0; i < GH * H4; i++) w_hhf[i] = (float)(w_hh[i] = 0.5 * urand(&s));
    for (int i = 0; i < GH; i++) { b_ihf[i] = (float)(b_ih[i] = urand(&s)); b_hhf[i] = (float)(b_hh[i] = urand(&s)); }
    for (int i = 0; i < B4 * H4; i++) { h0f[i] = (float)(h0[i] = urand(&s)); c0f[i] = (float)(c0[i] = urand(&s)); }
    for (int nb = 1; nb <= B4; nb++)
        for (int nth = 1; nth <= 3; nth += 2) {
            const int32_t *len = nb == B4 ? lengths : NULL;
            CHECK(fastrnn_forward_f64(cell, T4, nb, I4, H4, reverse, 2, x, 0, NULL, w_ih, w_hh, NULL, b_ih, b_hh, h0,
                                      c0, len, y[0], hT[0], cT[0], NULL, NULL, NULL, NULL, NULL, nth) == 0,
                  "packed forward");
            CHECK(fastrnn_forward_direct_f64(cell, T4, nb, I4, H4, reverse, x, w_ih, w_hh, b_ih, b_hh, h0, c0, len,
                                             y[1], hT[1], cT[1], NULL, NULL, NULL, NULL, NULL, nth) == 0,
                  "direct forward");
            CHECK(fastrnn_forward_direct_f32(cell, T4, nb, I4, H4, reverse, xf, w_ihf, w_hhf, b_ihf, b_hhf, h0f,
                                             c0f, len, yf, hTf, cTf, NULL, NULL, NULL, NULL, NULL, nth) == 0,
                  "direct forward f32");
            const int n = T4 * nb * H4, nh = nb * H4;
            double worst = 0, worst_f = 0;
            for (int i = 0; i < n; i++) {
                worst = fmax(worst, fabs(y[0][i] - y[1][i]));
                worst_f = fmax(worst_f, fabs(y[0][i] - yf[i]));
            }
            for (int i = 0; i < nh; i++) {
                worst = fmax(worst, fabs(hT[0][i] - hT[1][i]));
                worst_f = fmax(worst_f, fabs(hT[0][i] - hTf[i]));
                if (cell == FASTRNN_LSTM) {
                    worst = fmax(worst, fabs(cT[0][i] - cT[1][i]));
                    worst_f = fmax(worst_f, fabs(cT[0][i] - cTf[i]));
                }
            }
            CHECK(worst < 1e-12 && worst_f < 1e-5, "cell %d rev %d B %d threads %d: direct off by %g (float %g)",
                  cell, reverse, nb, nth, worst, worst_f);
            /* training: the same workspace as the packed forward's (which BPTT reads);
             * separate c_in / c_out here, chained (one T+1 array) in the second run */
            enum { NW = T4 * B4 * G4 * H4, NS = T4 * B4 * H4 };
            static double ws[2][NW + 4 * NS + B4 * H4];
            for (int k = 0; k < 2; k++) {
                double *hin = ws[k], *gt = hin + NS, *ci = gt + NW, *co = ci + NS, *hh = co + NS + nb * H4;
                if (k == 1) co = ci + (size_t)nb * H4 * (reverse ? 0 : 1), ci = ci + (size_t)nb * H4 * (reverse ? 1 : 0);
                memset(ws[k], 0, sizeof ws[k]);
                int st = k == 0
                    ? fastrnn_forward_f64(cell, T4, nb, I4, H4, reverse, 2, x, 0, NULL, w_ih, w_hh, NULL, b_ih, b_hh,
                                          h0, c0, len, y[0], hT[0], cT[0], hin, gt, ci, co, hh, nth)
                    : fastrnn_forward_direct_f64(cell, T4, nb, I4, H4, reverse, x, w_ih, w_hh, b_ih, b_hh, h0, c0,
                                                 len, y[1], hT[1], cT[1], hin, gt, ci, co, hh, nth);
                CHECK(st == 0, "training forward %d", k);
            }
            double worst_ws = 0;
            const int n_ws = T4 * nb * H4 * (G + 1);   /* h_in and gates */
            for (int i = 0; i < NS; i++) worst_ws = fmax(worst_ws, fabs(ws[0][i] - ws[1][i]));
            for (int i = 0; i < n_ws - NS; i++) worst_ws = fmax(worst_ws, fabs(ws[0][NS + i] - ws[1][NS + i]));
            if (cell == FASTRNN_LSTM)   /* c_out of every step, at its place in each layout */
                for (int t = 0; t < T4; t++)
                    for (int i = 0; i < nb * H4; i++) {
                        const double a = ws[0][NS + NW + NS + (size_t)t * nb * H4 + i];
                        const double b = ws[1][NS + NW + (size_t)(t + (reverse ? 0 : 1)) * nb * H4 + i];
                        worst_ws = fmax(worst_ws, fabs(a - b));
                    }
            if (cell == FASTRNN_GRU)
                for (int i = 0; i < T4 * nb * H4; i++)
                    worst_ws = fmax(worst_ws, fabs(ws[0][NS + NW + 2 * NS + nb * H4 + i] -
                                                   ws[1][NS + NW + 2 * NS + nb * H4 + i]));
            CHECK(worst_ws < 1e-12, "cell %d rev %d B %d threads %d: direct training workspace off by %g", cell,
                  reverse, nb, nth, worst_ws);
        }
}

/* lstmp_forward_direct against the packed lstmp_forward: batch sizes 1..5, P > 8 and P < 8,
 * ragged lengths with an empty sequence, with and without bias, 1 and 3 threads. */
static void lstmp_direct_matches_packed(int reverse)
{
    enum { T5 = 5, B5 = 5, I5 = 19, H5 = 27, PMAX = 13 };
    unsigned s = 999u + reverse;
    static double x[T5 * B5 * I5], w_ih[4 * H5 * I5], w_hh[4 * H5 * PMAX], w_hr[PMAX * H5], b_ih[4 * H5],
        b_hh[4 * H5], h0[B5 * PMAX], c0[B5 * H5], y[2][T5 * B5 * PMAX], hT[2][B5 * PMAX], cT[2][B5 * H5];
    int32_t lengths[B5] = {5, 0, 3, 5, 1};
    for (int i = 0; i < T5 * B5 * I5; i++) x[i] = urand(&s);
    for (int i = 0; i < 4 * H5 * I5; i++) w_ih[i] = 0.5 * urand(&s);
    for (int i = 0; i < 4 * H5 * PMAX; i++) w_hh[i] = 0.5 * urand(&s);
    for (int i = 0; i < PMAX * H5; i++) w_hr[i] = 0.5 * urand(&s);
    for (int i = 0; i < 4 * H5; i++) { b_ih[i] = urand(&s); b_hh[i] = urand(&s); }
    for (int i = 0; i < B5 * PMAX; i++) h0[i] = urand(&s);
    for (int i = 0; i < B5 * H5; i++) c0[i] = urand(&s);
    for (int np_ = 3; np_ <= PMAX; np_ += PMAX - 3)
        for (int nb = 1; nb <= B5; nb++)
            for (int nth = 1; nth <= 3; nth += 2) {
                const int32_t *len = nb == B5 ? lengths : NULL;
                const double *bi = nb % 2 ? b_ih : NULL, *bh = nb % 2 ? b_hh : NULL;
                CHECK(fastrnn_lstmp_forward_f64(T5, nb, I5, H5, np_, reverse, x, w_ih, w_hh, w_hr, NULL, bi, bh, h0,
                                                c0, len, y[0], hT[0], cT[0], NULL, NULL, NULL, NULL, NULL, nth) == 0,
                      "packed lstmp forward");
                CHECK(fastrnn_lstmp_forward_direct_f64(T5, nb, I5, H5, np_, reverse, x, w_ih, w_hh, w_hr, bi, bh, h0,
                                                       c0, len, y[1], hT[1], cT[1], NULL, NULL, NULL, NULL, NULL,
                                                       nth) == 0, "direct lstmp forward");
                double worst = 0;
                for (int i = 0; i < T5 * nb * np_; i++) worst = fmax(worst, fabs(y[0][i] - y[1][i]));
                for (int i = 0; i < nb * np_; i++) worst = fmax(worst, fabs(hT[0][i] - hT[1][i]));
                for (int i = 0; i < nb * H5; i++) worst = fmax(worst, fabs(cT[0][i] - cT[1][i]));
                CHECK(worst < 1e-12, "lstmp rev %d P %d B %d threads %d: direct off by %g", reverse, np_, nb, nth,
                      worst);
                /* training: the same workspace (h_in, gates, c_in, c_out, m) as the packed one */
                enum { NWS = T5 * B5 * (PMAX + 4 * H5 + 3 * H5) };
                static double ws[2][NWS];
                for (int k = 0; k < 2; k++) {
                    double *hin = ws[k], *gt = hin + T5 * nb * np_, *ci = gt + 4 * T5 * nb * H5;
                    double *co = ci + T5 * nb * H5, *mo = co + T5 * nb * H5;
                    /* steps past a length leave rows unwritten: NaN in both, written in neither */
                    for (int i = 0; i < NWS; i++) ws[k][i] = NAN;
                    int st = k == 0
                        ? fastrnn_lstmp_forward_f64(T5, nb, I5, H5, np_, reverse, x, w_ih, w_hh, w_hr, NULL, bi, bh,
                                                    h0, c0, len, y[0], hT[0], cT[0], hin, gt, ci, co, mo, nth)
                        : fastrnn_lstmp_forward_direct_f64(T5, nb, I5, H5, np_, reverse, x, w_ih, w_hh, w_hr, bi, bh,
                                                           h0, c0, len, y[1], hT[1], cT[1], hin, gt, ci, co, mo, nth);
                    CHECK(st == 0, "lstmp training forward %d", k);
                }
                int off = 0;
                for (int i = 0; i < NWS; i++)
                    off += isnan(ws[0][i]) != isnan(ws[1][i]) || fabs(ws[0][i] - ws[1][i]) > 1e-12;
                CHECK(off == 0, "lstmp rev %d P %d B %d threads %d: %d workspace values of the direct forward differ",
                      reverse, np_, nb, nth, off);
            }
}

/* LSTM with a projection (P = 4): backward against central differences, as gradcheck. */
enum { P = 4 };
typedef struct {
    int reverse, ragged;
    double x[T * B * I], w_ih[4 * H * I], w_hh[4 * H * P], w_hr[P * H], b_ih[4 * H], b_hh[4 * H];
    double h0[B * P], c0[B * H], wy[T * B * P], wh[B * P], wc[B * H];
    int32_t lengths[B];
} lstmp_problem;

static double lstmp_loss(lstmp_problem *p)
{
    double y[T * B * P], hT[B * P], cT[B * H];
    int rc = fastrnn_lstmp_forward_f64(T, B, I, H, P, p->reverse, p->x, p->w_ih, p->w_hh, p->w_hr, NULL, p->b_ih,
                                       p->b_hh, p->h0, p->c0, p->ragged ? p->lengths : NULL, y, hT, cT,
                                       NULL, NULL, NULL, NULL, NULL, 2);
    CHECK(rc == 0, "lstmp forward rc %d", rc);
    double l = 0;
    for (int i = 0; i < T * B * P; i++) l += y[i] * p->wy[i];
    for (int i = 0; i < B * P; i++) l += hT[i] * p->wh[i];
    for (int i = 0; i < B * H; i++) l += cT[i] * p->wc[i];
    return l;
}

static double lstmp_loss_of(void *p) { return lstmp_loss((lstmp_problem *)p); }

static void lstmp_fd(lstmp_problem *p, double *param, const double *grad, int n, const char *name)
{
    char what[64];
    snprintf(what, sizeof what, "lstmp rev %d ragged %d", p->reverse, p->ragged);
    fd_compare(lstmp_loss_of, p, param, grad, n, what, name);
}

static void lstmp_gradcheck(int reverse, int ragged)
{
    static lstmp_problem p;
    unsigned s = 777u + reverse * 3 + ragged;
    p.reverse = reverse; p.ragged = ragged;
    for (int i = 0; i < T * B * I; i++) p.x[i] = 2 * urand(&s);
    for (int i = 0; i < 4 * H * I; i++) p.w_ih[i] = urand(&s);
    for (int i = 0; i < 4 * H * P; i++) p.w_hh[i] = urand(&s);
    for (int i = 0; i < P * H; i++) p.w_hr[i] = urand(&s);
    for (int i = 0; i < 4 * H; i++) { p.b_ih[i] = urand(&s); p.b_hh[i] = urand(&s); }
    for (int i = 0; i < B * P; i++) { p.h0[i] = urand(&s); p.wh[i] = urand(&s); }
    for (int i = 0; i < B * H; i++) { p.c0[i] = urand(&s); p.wc[i] = urand(&s); }
    for (int i = 0; i < T * B * P; i++) p.wy[i] = urand(&s);
    p.lengths[0] = T; p.lengths[1] = 2; p.lengths[2] = 0;

    static double y[T * B * P], hT[B * P], cT[B * H], h_in[T * B * P], gates[T * B * 4 * H], c_in[T * B * H],
        c_out[T * B * H], m[T * B * H], dg[T * B * 4 * H], dhs[T * B * P], dx[T * B * I], dh0[B * P],
        dc0[B * H], dw_ih[4 * H * I], dw_hh[4 * H * P], dw_hr[P * H], db_ih[4 * H], db_hh[4 * H];
    /* the analytic gradients on weights packed once (finite differences pack per call) */
    size_t np = fastrnn_lstmp_packed_size_f64(I, H, P, 3);
    double *packed = malloc(np * sizeof(double));
    CHECK(np > 0 && packed && fastrnn_lstmp_pack_f64(I, H, P, p.w_ih, p.w_hh, p.w_hr, packed, 3) == 0, "lstmp pack");
    int rc = fastrnn_lstmp_forward_f64(T, B, I, H, P, reverse, p.x, p.w_ih, p.w_hh, p.w_hr, packed, p.b_ih, p.b_hh, p.h0,
                                       p.c0, ragged ? p.lengths : NULL, y, hT, cT, h_in, gates, c_in, c_out, m, 3);
    CHECK(rc == 0, "lstmp forward rc %d", rc);
    rc = fastrnn_lstmp_backward_f64(T, B, I, H, P, reverse, p.x, p.w_ih, p.w_hh, p.w_hr, packed, p.wy, p.wh, p.wc,
                                    ragged ? p.lengths : NULL, h_in, gates, c_in, c_out, m, dg, dhs, dx, dh0,
                                    dc0, dw_ih, dw_hh, dw_hr, db_ih, db_hh, 0, 3);
    CHECK(rc == 0, "lstmp backward rc %d", rc);
    free(packed);
    lstmp_fd(&p, p.x, dx, T * B * I, "x");
    lstmp_fd(&p, p.h0, dh0, B * P, "h0");
    lstmp_fd(&p, p.c0, dc0, B * H, "c0");
    lstmp_fd(&p, p.w_ih, dw_ih, 4 * H * I, "w_ih");
    lstmp_fd(&p, p.w_hh, dw_hh, 4 * H * P, "w_hh");
    lstmp_fd(&p, p.w_hr, dw_hr, P * H, "w_hr");
    lstmp_fd(&p, p.b_ih, db_ih, 4 * H, "b_ih");
    lstmp_fd(&p, p.b_hh, db_hh, 4 * H, "b_hh");
    float v[64] = {0}, out[64];
    CHECK(fastrnn_lstmp_forward_f32(1, 1, 1, 1, 0, 0, v, v, v, v, NULL, v, v, v, v, NULL, out, out, out,
                                    NULL, NULL, NULL, NULL, NULL, 1) == FASTRNN_EINVAL, "lstmp P = 0 accepted");
    CHECK(fastrnn_lstmp_forward_f32(1, 1, 1, 1, 1, 0, v, v, v, v, NULL, v, NULL, v, v, NULL, out, out, out,
                                    NULL, NULL, NULL, NULL, NULL, 1) == FASTRNN_EINVAL, "lstmp one bias accepted");
}

static void rejects_bad_arguments(void)
{
    float v[64] = {0}, out[64];
    CHECK(fastrnn_forward_f32(7, 1, 1, 1, 1, 0, 1, v, 0, NULL, v, v, NULL, v, v, v, v, NULL, out, out, out,
                              NULL, NULL, NULL, NULL, NULL, 1) == FASTRNN_EINVAL, "bad cell accepted");
    CHECK(fastrnn_forward_f32(0, -1, 1, 1, 1, 0, 1, v, 0, NULL, v, v, NULL, v, v, v, v, NULL, out, out, out,
                              NULL, NULL, NULL, NULL, NULL, 1) == FASTRNN_EINVAL, "T < 0 accepted");
    CHECK(fastrnn_forward_f32(0, 1, 1, 1, 0, 0, 1, v, 0, NULL, v, v, NULL, v, v, v, v, NULL, out, out, out,
                              NULL, NULL, NULL, NULL, NULL, 1) == FASTRNN_EINVAL, "H = 0 accepted");
    CHECK(fastrnn_forward_f32(0, 1, 1, 1, 1, 0, 1, v, 0, NULL, v, v, NULL, v, v, v, v, NULL, out, out, out,
                              NULL, NULL, NULL, NULL, NULL, 0) == FASTRNN_EINVAL, "0 threads accepted");
    int32_t tok[1] = {0};
    CHECK(fastrnn_forward_f32(0, 1, 1, 1, 1, 0, 1, v, 0, tok, v, v, NULL, v, v, v, v, NULL, out, out, out,
                              NULL, NULL, NULL, NULL, NULL, 1) == FASTRNN_EINVAL, "empty lookup table accepted");
    CHECK(fastrnn_forward_direct_f32(FASTRNN_LSTM, 1, 1, 1, 1, 0, v, v, v, v, v, v, NULL, NULL, out, out, out,
                                     NULL, NULL, NULL, NULL, NULL, 1) == FASTRNN_EINVAL,
          "direct LSTM without c0 accepted");
    CHECK(fastrnn_forward_direct_f32(0, 1, 1, 0, 1, 0, v, v, v, v, v, v, NULL, NULL, out, out, NULL,
                                     NULL, NULL, NULL, NULL, NULL, 1) == FASTRNN_EINVAL, "direct I = 0 accepted");
    float ws[8];
    CHECK(fastrnn_forward_direct_f32(FASTRNN_GRU, 1, 1, 1, 1, 0, v, v, v, v, v, v, NULL, NULL, out, out, NULL,
                                     ws, ws, NULL, NULL, NULL, 1) == FASTRNN_EINVAL,
          "direct GRU training without hh_n accepted");
    CHECK(fastrnn_forward_direct_f32(FASTRNN_LSTM, 1, 1, 1, 1, 0, v, v, v, v, v, v, v, NULL, out, out, out,
                                     ws, ws, NULL, ws, NULL, 1) == FASTRNN_EINVAL,
          "direct LSTM training without c_in accepted");
    CHECK(fastrnn_forward_direct_f32(0, 1, 1, 1, 1, 0, v, v, v, v, v, v, NULL, NULL, out, out, NULL,
                                     NULL, ws, NULL, NULL, NULL, 1) == FASTRNN_EINVAL,
          "direct training without h_in accepted");
}

/* bfloat16 rounding (to nearest, ties to even) of a normal float, as vcvtne2ps2bf16 */
static float bf16_round(float v)
{
    uint32_t u;
    memcpy(&u, &v, 4);
    u = (u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u;
    memcpy(&v, &u, 4);
    return v;
}

/* fastrnn_dense_bf16 against sums of the rounded operands in double (products of two
 * bfloat16 values are exact in float: only the float sums' order differs), float and held
 * weights, every row count around the thread split's eights, K around the 16/32-value
 * loads; bad arguments refused. */
static void dense_bf16_matches_rounded_sums(void)
{
    enum { NR = 45, K7 = 71, NV7 = 5 };
    unsigned s = 99u;
    float w[NR * K7], x[NV7 * K7], bias[NR], out[NV7 * NR + 1];
    uint16_t bits[NR * K7];
    for (int i = 0; i < NR * K7; i++) {
        w[i] = (float)urand(&s);
        float r = bf16_round(w[i]);
        uint32_t u;
        memcpy(&u, &r, 4);
        bits[i] = (uint16_t)(u >> 16);
    }
    for (int i = 0; i < NV7 * K7; i++) x[i] = (float)urand(&s);
    for (int i = 0; i < NR; i++) bias[i] = (float)urand(&s);
    const int ks[] = {0, 1, 15, 16, 17, 31, 32, 33, 64, 71}, nrs[] = {1, 7, 8, 9, 45}, nvs[] = {1, 2, 5};
    if (!fastrnn_has_bf16()) {
        CHECK(fastrnn_dense_bf16(NR, K7, 1, w, 0, x, K7, bias, out, NR, 1) == FASTRNN_ENOTSUP, "dense bf16 ENOTSUP");
        CHECK(fastrnn_to_bf16(4, w, bits, 1) == FASTRNN_ENOTSUP, "to_bf16 ENOTSUP");
        return;
    }
    for (int ki = 0; ki < 10; ki++)
        for (int ri = 0; ri < 5; ri++)
            for (int vi = 0; vi < 3; vi++)
                for (int held = 0; held <= 1; held++) {
                    const int K = ks[ki], nr = nrs[ri], nv = nvs[vi];
                    out[nv * NR] = 12345.f;   /* a sentinel past the last row written */
                    /* w rows K apart (ldx K7 for x, ldo NR for out: strided rows) */
                    float wk[NR * K7];
                    uint16_t bk[NR * K7];
                    for (int r = 0; r < nr; r++)
                        for (int k = 0; k < K; k++) { wk[r * K + k] = w[r * K7 + k]; bk[r * K + k] = bits[r * K7 + k]; }
                    int rc = fastrnn_dense_bf16(nr, K, nv, held ? (const void *)bk : (const void *)wk, held, x, K7,
                                                (ri & 1) ? bias : NULL, out, NR, 1 + (ki % 3));
                    CHECK(rc == 0, "dense bf16 rc %d", rc);
                    double worst = 0;
                    for (int v = 0; v < nv; v++)
                        for (int r = 0; r < nr; r++) {
                            double want = (ri & 1) ? bias[r] : 0;
                            for (int k = 0; k < K; k++)
                                want += (double)bf16_round(w[r * K7 + k]) * bf16_round(x[v * K7 + k]);
                            double d = fabs(out[v * NR + r] - want);
                            worst = d > worst ? d : worst;
                        }
                    CHECK(worst < 1e-5 * (K + 1), "dense bf16 K %d nr %d nv %d held %d: error %g", K, nr, nv, held,
                          worst);
                    CHECK(out[nv * NR] == 12345.f, "dense bf16 wrote past its rows");
                }
    /* fastrnn_to_bf16: the same bits as bf16_round, every tail length, 1 and 3 threads */
    for (int n = 0; n <= 40; n++) {
        uint16_t got[41];
        got[n] = 0xABCD;   /* a sentinel past the end */
        CHECK(fastrnn_to_bf16((size_t)n, w, got, 1 + n % 3) == 0, "to_bf16 rc, n %d", n);
        for (int i = 0; i < n; i++) {
            float r = bf16_round(w[i]);
            uint32_t u;
            memcpy(&u, &r, 4);
            CHECK(got[i] == (uint16_t)(u >> 16), "to_bf16 n %d value %d: %04x, want %04x", n, i, got[i],
                  (unsigned)(u >> 16));
        }
        CHECK(got[n] == 0xABCD, "to_bf16 n %d wrote past the end", n);
    }
    CHECK(fastrnn_to_bf16(4, NULL, bits, 1) == FASTRNN_EINVAL, "to_bf16 src NULL");
    CHECK(fastrnn_dense_bf16(-1, K7, 1, w, 0, x, K7, bias, out, NR, 1) == FASTRNN_EINVAL, "dense bf16 nr < 0");
    CHECK(fastrnn_dense_bf16(NR, K7, 2, w, 0, x, K7 - 1, bias, out, NR, 1) == FASTRNN_EINVAL, "dense bf16 ldx < K");
    CHECK(fastrnn_dense_bf16(NR, K7, 2, w, 0, x, K7, bias, out, NR - 1, 1) == FASTRNN_EINVAL, "dense bf16 ldo < nr");
    CHECK(fastrnn_dense_bf16(NR, K7, 1, w, 2, x, K7, bias, out, NR, 1) == FASTRNN_EINVAL, "dense bf16 weights_bf16 2");
    CHECK(fastrnn_dense_bf16(NR, K7, 1, NULL, 0, x, K7, bias, out, NR, 1) == FASTRNN_EINVAL, "dense bf16 w NULL");
    CHECK(fastrnn_dense_bf16(NR, K7, 1, w, 0, x, K7, bias, out, NR, 0) == FASTRNN_EINVAL, "dense bf16 0 threads");
}

/* fastrnn_matmul_bf16 against sums of the rounded operands in double, on each path of the
 * matmul: few rows (dots), G^T X with many rows (matmul_tn), the blocked product (by
 * columns, and by rows), with transposes by strides, odd K and partial panels, writing and
 * adding, 1-3 threads; ENOTSUP where there are no bfloat16 kernels. */
static void matmul_bf16_matches_rounded_sums(void)
{
    /* M, N, K, A transposed (sam 1), B transposed (sbn K) */
    const int cases[][5] = {{3, 45, 33, 0, 1}, {1300, 21, 19, 1, 0}, {50, 70, 37, 0, 1}, {200, 9, 64, 0, 0},
                            {7, 5, 0, 0, 0}};
    unsigned s = 7u;
    for (int ci = 0; ci < 5; ci++) {
        const int M = cases[ci][0], N = cases[ci][1], K = cases[ci][2], at = cases[ci][3], bt = cases[ci][4];
        float *A = malloc(sizeof(float) * (size_t)(M * K + 1)), *Bm = malloc(sizeof(float) * (size_t)(K * N + 1));
        float *C = malloc(sizeof(float) * (size_t)(M * N + 1));
        for (int i = 0; i < M * K; i++) A[i] = (float)urand(&s);
        for (int i = 0; i < K * N; i++) Bm[i] = (float)urand(&s);
        const size_t sam = at ? 1 : (size_t)K, sak = at ? (size_t)M : 1;
        const size_t sbk = bt ? 1 : (size_t)N, sbn = bt ? (size_t)K : 1;
        if (!fastrnn_has_bf16()) {
            CHECK(fastrnn_matmul_bf16(M, N, K, A, sam, sak, Bm, sbk, sbn, C, N, 0, 1) == FASTRNN_ENOTSUP,
                  "matmul bf16 ENOTSUP");
        } else {
            for (int acc = 0; acc <= 1; acc++)
                for (int nth = 1; nth <= 3; nth++) {
                    for (int i = 0; i < M * N; i++) C[i] = 0.25f;
                    C[M * N] = 12345.f;   /* a sentinel past the end */
                    int rc = fastrnn_matmul_bf16(M, N, K, A, sam, sak, Bm, sbk, sbn, C, N, acc, nth);
                    CHECK(rc == 0, "matmul bf16 rc %d", rc);
                    double worst = 0;
                    for (int m = 0; m < M; m++)
                        for (int n = 0; n < N; n++) {
                            double want = acc ? 0.25 : 0;
                            for (int k = 0; k < K; k++)
                                want += (double)bf16_round(A[m * sam + k * sak]) * bf16_round(Bm[k * sbk + n * sbn]);
                            double d = fabs(C[m * N + n] - want);
                            worst = d > worst ? d : worst;
                        }
                    CHECK(worst < 1e-6 * (K + 1), "matmul bf16 %d x %d x %d acc %d nth %d: error %g", M, N, K,
                          acc, nth, worst);
                    CHECK(C[M * N] == 12345.f, "matmul bf16 wrote past C");
                }
        }
        free(A); free(Bm); free(C);
    }
    float a[4] = {0};
    CHECK(fastrnn_matmul_bf16(-1, 2, 2, a, 2, 1, a, 2, 1, a, 2, 0, 1) == FASTRNN_EINVAL, "matmul bf16 M < 0");
    CHECK(fastrnn_matmul_bf16(2, 2, 2, a, 2, 1, a, 2, 1, a, 2, 0, 0) == FASTRNN_EINVAL, "matmul bf16 0 threads");
}

/* The projected LSTM in bfloat16 products against float32: forward and BPTT near it (the
 * operands' rounding only) and not equal to it, with the weights packed for 1 and 3 threads
 * and unpacked (NULL), ragged, both directions; under ASan this checks the bfloat16 parts'
 * sizes. ENOTSUP where there are no bfloat16 kernels. */
static void lstmp_bf16_near_f32(int reverse)
{
    enum { T6 = 6, B6 = 5, I6 = 7, H6 = 19, P6 = 6 };
    unsigned s = 41u + (unsigned)reverse;
    static float x[T6 * B6 * I6], w_ih[4 * H6 * I6], w_hh[4 * H6 * P6], w_hr[P6 * H6], bi[4 * H6], bh[4 * H6];
    static float h0[B6 * P6], c0[B6 * H6], dy[T6 * B6 * P6];
    float *all[] = {x, w_ih, w_hh, w_hr, bi, bh, h0, c0, dy};
    const int n[] = {T6 * B6 * I6, 4 * H6 * I6, 4 * H6 * P6, P6 * H6, 4 * H6, 4 * H6, B6 * P6, B6 * H6, T6 * B6 * P6};
    for (int a = 0; a < 9; a++)
        for (int i = 0; i < n[a]; i++) all[a][i] = (float)urand(&s);
    const int32_t lengths[B6] = {6, 2, 5, 6, 1};
    /* results of each precision: y, h_T, c_T, dx, dh_0, dc_0, dw_ih, dw_hh, dw_hr, db_ih */
    const size_t sz[10] = {T6 * B6 * P6, B6 * P6, B6 * H6, T6 * B6 * I6, B6 * P6, B6 * H6, 4 * H6 * I6,
                           4 * H6 * P6, P6 * H6, 4 * H6};
    float *out[2][10];
    for (int q = 0; q < 2; q++)
        for (int k = 0; k < 10; k++) out[q][k] = calloc(sz[k], sizeof(float));
    float *db_hh = calloc(4 * H6, sizeof(float)), *ws[5], *dg = calloc(T6 * B6 * 4 * H6, sizeof(float));
    float *dhs = calloc(T6 * B6 * P6, sizeof(float));
    const size_t wsz[5] = {T6 * B6 * P6, T6 * B6 * 4 * H6, T6 * B6 * H6, T6 * B6 * H6, T6 * B6 * H6};
    for (int k = 0; k < 5; k++) ws[k] = calloc(wsz[k], sizeof(float));
    if (!fastrnn_has_bf16()) {
        CHECK(fastrnn_lstmp_forward_bf16(T6, B6, I6, H6, P6, reverse, x, w_ih, w_hh, w_hr, NULL, bi, bh, h0, c0,
                                         lengths, out[1][0], out[1][1], out[1][2], NULL, NULL, NULL, NULL, NULL,
                                         1) == FASTRNN_ENOTSUP, "lstmp bf16 ENOTSUP");
        CHECK(fastrnn_lstmp_packed_size_bf16(I6, H6, P6, 1) == 0, "lstmp bf16 packed size without bf16");
    } else {
        for (int nth = 1; nth <= 3; nth += 2)
            for (int packing = 0; packing <= 1; packing++) {
                float *packed[2] = {NULL, NULL};
                if (packing) {
                    packed[0] = malloc(sizeof(float) * fastrnn_lstmp_packed_size_f32(I6, H6, P6, nth));
                    packed[1] = malloc(sizeof(float) * fastrnn_lstmp_packed_size_bf16(I6, H6, P6, nth));
                    CHECK(fastrnn_lstmp_pack_f32(I6, H6, P6, w_ih, w_hh, w_hr, packed[0], nth) == 0, "lstmp pack");
                    CHECK(fastrnn_lstmp_pack_bf16(I6, H6, P6, w_ih, w_hh, w_hr, packed[1], nth) == 0, "lstmp pack bf16");
                }
                for (int q = 0; q < 2; q++) {
                    float **o = out[q];
                    int rc = (q ? fastrnn_lstmp_forward_bf16 : fastrnn_lstmp_forward_f32)(
                        T6, B6, I6, H6, P6, reverse, x, w_ih, w_hh, w_hr, packed[q], bi, bh, h0, c0, lengths, o[0],
                        o[1], o[2], ws[0], ws[1], ws[2], ws[3], ws[4], nth);
                    CHECK(rc == 0, "lstmp forward precision %d rc %d", q, rc);
                    rc = (q ? fastrnn_lstmp_backward_bf16 : fastrnn_lstmp_backward_f32)(
                        T6, B6, I6, H6, P6, reverse, x, w_ih, w_hh, w_hr, packed[q], dy, NULL, NULL, lengths, ws[0],
                        ws[1], ws[2], ws[3], ws[4], dg, dhs, o[3], o[4], o[5], o[6], o[7], o[8], o[9], db_hh, 0, nth);
                    CHECK(rc == 0, "lstmp backward precision %d rc %d", q, rc);
                }
                for (int k = 0; k < 10; k++) {
                    double num = 0, den = 0;
                    for (size_t i = 0; i < sz[k]; i++) {
                        const double d = (double)out[1][k][i] - out[0][k][i];
                        num += d * d;
                        den += (double)out[0][k][i] * out[0][k][i];
                    }
                    const double rel = sqrt(num / (den > 0 ? den : 1));
                    CHECK(rel < 3e-2 && rel > 1e-6, "lstmp bf16 rev %d threads %d packed %d result %d: %g from f32",
                          reverse, nth, packing, k, rel);
                }
                free(packed[0]); free(packed[1]);
            }
        /* the direct (unpacked) bfloat16 forward: the packed one's results up to sum order */
        float *yd = calloc(sz[0], sizeof(float)), *hd = calloc(sz[1], sizeof(float)), *cd = calloc(sz[2], sizeof(float));
        CHECK(fastrnn_lstmp_forward_direct_bf16(T6, B6, I6, H6, P6, reverse, x, w_ih, w_hh, w_hr, bi, bh, h0, c0,
                                                lengths, yd, hd, cd, NULL, NULL, NULL, NULL, NULL, 3) == 0,
              "lstmp direct bf16");
        double worst = 0;
        for (size_t i = 0; i < sz[0]; i++) {
            const double d = fabs((double)yd[i] - out[1][0][i]);
            worst = d > worst ? d : worst;
        }
        CHECK(worst < 2e-2, "lstmp direct bf16 rev %d: %g from the packed", reverse, worst);
        free(yd); free(hd); free(cd);
    }
    for (int q = 0; q < 2; q++)
        for (int k = 0; k < 10; k++) free(out[q][k]);
    for (int k = 0; k < 5; k++) free(ws[k]);
    free(db_hh); free(dg); free(dhs);
}

int main(void)
{
    printf("isa: %s, bfloat16 kernels: %s, omp processors: %d\n", fastrnn_isa(),
           fastrnn_has_bf16() ? "yes" : "no", fastrnn_omp_num_procs());
    for (int cell = 0; cell <= 3; cell++) {
        for (int reverse = 0; reverse <= 1; reverse++)
            for (int ragged = 0; ragged <= 1; ragged++) gradcheck(cell, reverse, ragged);
        precision_and_threads(cell);
        lookup_matches_dense(cell, 0);
        lookup_matches_dense(cell, 1);
        direct_matches_packed(cell, 0);
        direct_matches_packed(cell, 1);
        bf16_near_f32(cell, 0);
        bf16_near_f32(cell, 1);
        bf16_backward_near_f32(cell, 3);
        bf16_backward_near_f32(cell, 32);
        lookup_matches_dense_bf16(cell);
    }
    for (int reverse = 0; reverse <= 1; reverse++)
        for (int ragged = 0; ragged <= 1; ragged++) lstmp_gradcheck(reverse, ragged);
    lstmp_direct_matches_packed(0);
    lstmp_direct_matches_packed(1);
    rejects_bad_arguments();
    dense_bf16_matches_rounded_sums();
    matmul_bf16_matches_rounded_sums();
    lstmp_bf16_near_f32(0);
    lstmp_bf16_near_f32(1);
    printf("%s: %d failure(s)\n", failures ? "FAILED" : "passed", failures);
    return failures ? 1 : 0;
}
