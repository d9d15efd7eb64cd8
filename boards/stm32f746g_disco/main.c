/* The tinybridge firmware for the STM32F746G-DISCO: set up the board, then serve the protocol. */
#include "dispatch.h"
#include "protocol.h"
#include "runtime.h"
#include "stm32f746.h"

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
