/* Bias gradient: the output gradient summed over positions (bias is added once per position). */
#include "tb_train.h"
#include "tb_dsp.h"

#if TB_DSP
/* DSP path: four adjacent channels at a time down the positions, one LDR and two SXTAB16 (even
 * and odd bytes into halfword sums) a position. A halfword holds 128 positions' sum exactly
 * (128 * 128 = 2^14), so the sums move to int32 every 128 positions. */
#define TB_BIAS_GRAD_BLOCK 128

static void bias_grad_quad(const int8_t *g, int32_t n_pos, int32_t c, int32_t *grad_b)
{
    int32_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (int32_t p0 = 0; p0 < n_pos; p0 += TB_BIAS_GRAD_BLOCK) {
        const int32_t p1 = n_pos - p0 < TB_BIAS_GRAD_BLOCK ? n_pos : p0 + TB_BIAS_GRAD_BLOCK;
        int32_t even = 0, odd = 0;   /* [c0 c2], [c1 c3] */
        if ((p1 - p0) & 1) {
            const uint32_t w = tb_read32(g);
            even = __sxtab16(even, w), odd = tb_sxtab16_ror8(odd, w);
            g += c;
        }
        for (const int8_t *end = g + (p1 - p0) / 2 * 2 * c; g != end;) {
            const uint32_t u = tb_read32(g), v = tb_read32(g + c);
            even = __sxtab16(__sxtab16(even, u), v);
            odd = tb_sxtab16_ror8(tb_sxtab16_ror8(odd, u), v);
            g += 2 * c;
        }
        s0 += (int16_t)even, s2 += even >> 16;
        s1 += (int16_t)odd, s3 += odd >> 16;
    }
    grad_b[0] = s0, grad_b[1] = s1, grad_b[2] = s2, grad_b[3] = s3;
}
#endif

void tb_bias_grad_s8(const int8_t *g, int32_t n_pos, int32_t c, int32_t *grad_b)
{
    int32_t k0 = 0;
#if TB_DSP
    /* (one position, the classifier's: a group's setup costs more than the plain path) */
    for (; n_pos >= 2 && k0 + 4 <= c; k0 += 4) bias_grad_quad(g + k0, n_pos, c, grad_b + k0);
#endif
    for (int32_t k = k0; k < c; k++) grad_b[k] = 0;
    for (int32_t p = 0; p < n_pos; p++)
        for (int32_t k = k0; k < c; k++) grad_b[k] += g[p * c + k];
}
