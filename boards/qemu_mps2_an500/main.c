/* The tinybridge firmware for QEMU mps2-an500: set up the board, then serve the protocol. */
#include "dispatch.h"
#include "mps2.h"
#include "protocol.h"
#include "runtime.h"

int main(void)
{
    board_init();
    board_paint_stack();
    uint32_t pc, status, code;
    if (board_last_fault(&pc, &status, &code))
        tb_log(TB_LOG_ERROR, "the previous boot ended in a fault (code 0x%x, pc 0x%08x, CFSR 0x%08x)",
               (unsigned)code, (unsigned)pc, (unsigned)status);
    tb_run();
    return 0;
}
