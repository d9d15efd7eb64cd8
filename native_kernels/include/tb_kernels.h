/* tinybridge native kernels: int8 forward, backward and QAS update.
 *
 * Portable C99. No I/O, no malloc, no globals. Each kernel has one plain-C path and, where it is
 * hot, an ARMv7E-M DSP path under __ARM_FEATURE_DSP; both give bit-identical results.
 *
 * Layout (docs/kernels.md): activations HWC (batch 1, channels innermost, like TFLite NHWC);
 * conv weights OHWI [out][kh][kw][in]; depthwise weights HWC [kh][kw][ch]; pointwise and
 * fully connected weights [out][in].
 *
 * This header is parsed by cffi: only typedefs, structs and prototypes below the includes.
 */
#ifndef TB_KERNELS_H
#define TB_KERNELS_H
#include <stdint.h>

typedef enum {
    TB_OK = 0,
    TB_ERR_ARG = -1       /* a dimension, stride, padding or range is out of bounds */
} tb_status;

/* One activation tensor, HWC. */
typedef struct {
    int32_t h, w, c;
} tb_shape;

/* How a forward kernel rounds its int32 sums to int8 (docs/kernels.md, "Rounding"):
 * TB_ROUND_TFLITE  TFLite's reference arithmetic, bit-exact with TFLite Micro: requantization by
 *                  gemmlowp's SaturatingRoundingDoublingHighMul then RoundingDivideByPOT (two
 *                  roundings); the average pool rounds ties away from zero.
 * TB_ROUND_SINGLE  the exact value rounded once: requantization round(acc * mult * 2^(shift - 31))
 *                  from the 64-bit product, ties up (TFLite's and CMSIS-NN's single-rounding
 *                  option); the average pool rounds ties to even (numpy, PyTorch). The paper's
 *                  models are defined this way (docs/compiler.md, "The zoo"). */
typedef enum {
    TB_ROUND_TFLITE = 0,
    TB_ROUND_SINGLE = 1
} tb_rounding;

/* Convolution geometry and int8 quantization (TFLite conventions):
 * input_offset = -input_zero_point, output_offset = output_zero_point,
 * [act_min, act_max] = the output range after a folded ReLU/ReLU6 (or [-128, 127]),
 * rounding a tb_rounding (forward kernels; the backward kernels read only the geometry). */
typedef struct {
    int32_t kernel_h, kernel_w;
    int32_t stride_h, stride_w;
    int32_t pad_top, pad_left;
    int32_t input_offset, output_offset;
    int32_t act_min, act_max;
    int32_t rounding;
} tb_conv_params;

/* Residual add, TFLite int8 ADD semantics (left_shift, per-input multipliers). */
typedef struct {
    int32_t input1_offset, input1_multiplier, input1_shift;
    int32_t input2_offset, input2_multiplier, input2_shift;
    int32_t left_shift;
    int32_t output_offset, output_multiplier, output_shift;
    int32_t act_min, act_max;
} tb_add_params;

/* ---------------- forward (bit-exact with TFLite Micro's reference kernels) ----------------
 * mult/shift: per-output-channel requantization (TFLite QuantizeMultiplier format), rounded as
 * the tb_rounding says (TB_ROUND_TFLITE: TFLite Micro's results). */

int32_t tb_pointwise_conv_s8_scratch_bytes(int32_t in_c, int32_t out_c);
tb_status tb_pointwise_conv_s8(const tb_conv_params *p, tb_shape in, const int8_t *x,
                               tb_shape out, const int8_t *w, const int32_t *bias,
                               const int32_t *mult, const int32_t *shift,
                               int8_t *y, void *scratch);

int32_t tb_conv2d_s8_scratch_bytes(const tb_conv_params *p, tb_shape in, int32_t out_c);
tb_status tb_conv2d_s8(const tb_conv_params *p, tb_shape in, const int8_t *x,
                       tb_shape out, const int8_t *w, const int32_t *bias,
                       const int32_t *mult, const int32_t *shift,
                       int8_t *y, void *scratch);

tb_status tb_depthwise_conv2d_s8(const tb_conv_params *p, tb_shape in, const int8_t *x,
                                 tb_shape out, const int8_t *w, const int32_t *bias,
                                 const int32_t *mult, const int32_t *shift, int8_t *y);

/* n_mult = 1 (per-tensor) or out_features (per-channel). */
tb_status tb_fully_connected_s8(int32_t in_features, int32_t out_features, const int8_t *x,
                                int32_t input_offset, const int8_t *w, const int32_t *bias,
                                const int32_t *mult, const int32_t *shift, int32_t n_mult,
                                int32_t output_offset, int32_t act_min, int32_t act_max,
                                int32_t rounding, int8_t *y);

/* Global average pool HWC -> C, same scale and zero point in and out (TFLite AVERAGE_POOL_2D). */
tb_status tb_avgpool_global_s8(tb_shape in, const int8_t *x, int32_t act_min, int32_t act_max,
                               int32_t rounding, int8_t *y);

/* y may alias a or b (elementwise: each element is read before it is written; the executor's
 * in-place add relies on it, tests/test_inplace.py). */
tb_status tb_add_s8(const tb_add_params *p, const int8_t *a, const int8_t *b, int32_t n,
                    int8_t *y);

#endif
