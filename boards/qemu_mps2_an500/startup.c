/* Cortex-M7 startup for QEMU mps2-an500: vector table, reset (FPU on, .data/.bss), fault report. */
#include <stdint.h>

extern uint32_t _estack, _sidata, _sdata, _edata, _sbss, _ebss;
extern int main(void);
void Reset_Handler(void);
void Default_Handler(void);
void HardFault_Handler(void) __attribute__((weak, alias("Default_Handler")));
void SysTick_Handler(void) __attribute__((weak, alias("Default_Handler")));
void UART0RX_IRQHandler(void) __attribute__((weak, alias("Default_Handler")));
void TIMER0_IRQHandler(void) __attribute__((weak, alias("Default_Handler")));
void board_exit(int code) __attribute__((weak, noreturn));

/* 16 system vectors + 32 external IRQs (mps2-an500: num-irq = 32) */
__attribute__((section(".isr_vector"), used))
void (*const vector_table[16 + 32])(void) = {
    (void (*)(void))&_estack, Reset_Handler,
    Default_Handler,   /* NMI */
    HardFault_Handler,
    Default_Handler, Default_Handler, Default_Handler, /* MemManage, BusFault, UsageFault */
    0, 0, 0, 0,
    Default_Handler,   /* SVC */
    Default_Handler, 0,
    Default_Handler,   /* PendSV */
    SysTick_Handler,
    [16 + 0] = UART0RX_IRQHandler,
    [16 + 8] = TIMER0_IRQHandler,
};

void Reset_Handler(void)
{
    /* CP10/CP11 full access before any floating-point instruction runs */
    *(volatile uint32_t *)0xE000ED88 |= 0xFu << 20;
    __asm volatile("dsb\n isb");
    uint32_t *src = &_sidata, *dst = &_sdata;
    while (dst < &_edata) *dst++ = *src++;
    for (dst = &_sbss; dst < &_ebss;) *dst++ = 0;
    int code = main();
    board_exit(code);
}

void Default_Handler(void)
{
    board_exit(0xDEAD);
}

/* Without a semihosting exit (firmware), a returning main or a fault parks the core. */
void board_exit(int code)
{
    (void)code;
    for (;;) __asm volatile("wfi");
}
