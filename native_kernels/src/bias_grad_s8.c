/* Bias gradient: the output gradient summed over positions (bias is added once per position). */
#include "tb_train.h"

void tb_bias_grad_s8(const int8_t *g, int32_t n_pos, int32_t c, int32_t *grad_b)
{
    for (int32_t k = 0; k < c; k++) grad_b[k] = 0;
    for (int32_t p = 0; p < n_pos; p++)
        for (int32_t k = 0; k < c; k++) grad_b[k] += g[p * c + k];
}
