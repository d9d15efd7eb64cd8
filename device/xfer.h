/* Windowed, resumable, CRC-checked transfers into the model, input and params slots. */
#ifndef TB_XFER_H
#define TB_XFER_H
#include "dispatch.h"

int tb_xfer_begin(tb_call *c);
int tb_xfer_data(tb_call *c);
int tb_xfer_commit(tb_call *c);
int tb_xfer_read(tb_call *c);
int tb_xfer_stat(tb_call *c);
/* Forgets an unfinished transfer into `slot` (its destination is about to be reused). */
void tb_xfer_cancel(int slot);
/* TB_OK if a checkpoint of `size` bytes fits the flash beside the committed model, else TOO_LARGE
 * with the reason. */
int tb_check_params_fit(tb_call *c, uint32_t size);
/* MODEL_INFO's payload for the loaded model. */
void tb_put_model_info(tb_call *c);

#endif
