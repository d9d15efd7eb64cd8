/* STM32F746NG startup: the vector table (16 system exceptions + 98 interrupts), and the reset
 * handler: FPU on, .data (with .ramfunc) copied, .bss zeroed, main(). */
#include <stdint.h>

#include "stm32f746.h"

extern uint32_t _estack, _sidata, _sdata, _edata, _sbss, _ebss;
extern int main(void);
void Reset_Handler(void);
void Default_Handler(void);
void HardFault_Handler(void) __attribute__((weak, alias("Default_Handler")));
void SysTick_Handler(void) __attribute__((weak, alias("Default_Handler")));
void USART1_IRQHandler(void) __attribute__((weak, alias("Default_Handler")));
void DMA2_Stream5_IRQHandler(void) __attribute__((weak, alias("Default_Handler")));
void board_exit(int code) __attribute__((weak, noreturn));

/* every interrupt to Default_Handler, then the ones the board serves (GCC's range initialiser) */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Woverride-init"
#pragma GCC diagnostic ignored "-Wpedantic"
__attribute__((section(".isr_vector"), used))
void (*const vector_table[16 + IRQ_COUNT])(void) = {
    (void (*)(void))&_estack, Reset_Handler,
    Default_Handler,   /* NMI */
    HardFault_Handler,
    Default_Handler, Default_Handler, Default_Handler, /* MemManage, BusFault, UsageFault */
    0, 0, 0, 0,
    Default_Handler,   /* SVC */
    Default_Handler, 0,
    Default_Handler,   /* PendSV */
    SysTick_Handler,
    [16 ... 16 + IRQ_COUNT - 1] = Default_Handler,
    [16 + USART1_IRQ] = USART1_IRQHandler,
    [16 + DMA2_STREAM5_IRQ] = DMA2_Stream5_IRQHandler,
};
#pragma GCC diagnostic pop

void Reset_Handler(void)
{
    SCB_CPACR |= 0xFu << 20; /* CP10/CP11 full access before any floating-point instruction */
    __asm volatile("dsb\n isb");
    uint32_t *src = &_sidata, *dst = &_sdata;
    while (dst < &_edata) *dst++ = *src++;
    for (dst = &_sbss; dst < &_ebss;) *dst++ = 0;
    board_exit(main());
}

void Default_Handler(void)
{
    board_exit(0xDEAD);
}

void board_exit(int code)
{
    (void)code;
    for (;;) __asm volatile("wfi");
}
