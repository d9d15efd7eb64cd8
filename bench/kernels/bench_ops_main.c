/* The kernel table against the kernels as built for the target (DSP path where there is one). */
#define BENCH_TABLE bench_ops_main
#define BENCH_TABLE_COUNT bench_ops_main_count
#include "bench_ops.inc"
