/* Test harness for the device's model loader and executor (device/model.c, device/exec.c), built
 * on the host with AddressSanitizer and UndefinedBehaviorSanitizer (tests/test_model_device.py).
 * Every blob and the arena get a heap block of exactly their size, so any access outside them is
 * reported.
 *
 *   model_harness CAPACITY COMMAND...
 *     load:PATH        load a blob; prints "load ok ARENA PARAMS" or "load error CODE MESSAGE"
 *     run:SCRIPT:OUT   run SCRIPT's records on the current model, write their results to OUT,
 *                      print "run ok USED" (USED: bytes of the arena the records wrote, params
 *                      region included, measured by painting the rest before the first record)
 *
 * A streamed input (docs/blob-format.md) goes through tb_exec_input_data in pieces of INPUT_PIECE
 * bytes, as the input transfer's data frames would bring it.
 *
 * SCRIPT: records of u8 kind (0 infer, 1 train step), u8 0, u16 label, f32 lr, then the model's
 * input bytes. OUT: per record i32 status, then infer: u16 label, u16 n, i8 logits[n];
 * train: f32 loss, u16 label_pred, u32 step; finally u32 params_bytes and the params region. */
#define _POSIX_C_SOURCE 199309L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "model.h"
#include "port.h"

/* The one port function the executor uses (its per-op profile, device/profile.c). */
uint64_t tb_port_counter(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

#define PAINT 0xA5u
#define INPUT_PIECE 1001u /* bytes per piece of a streamed input */
#define MAX_BLOBS 4096

static uint8_t *blobs[MAX_BLOBS];
static int n_blobs;

static uint8_t *read_file(const char *path, uint32_t *size)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *data = malloc(n > 0 ? (size_t)n : 1);
    if (data && n > 0 && fread(data, 1, (size_t)n, f) != (size_t)n) {
        free(data);
        data = NULL;
    }
    fclose(f);
    *size = (uint32_t)n;
    return data;
}

static void load(const char *path, uint8_t *arena, uint32_t capacity)
{
    uint32_t size;
    uint8_t *blob = read_file(path, &size);
    char err[121];
    if (!blob || n_blobs == MAX_BLOBS) {
        printf("load error -1 cannot read %s\n", path);
        free(blob);
        return;
    }
    /* the loaded model reads its blob in place: keep every blob until exit */
    blobs[n_blobs++] = blob;
    err[0] = 0;
    int rc = tb_model_load(blob, size, arena, capacity, err, sizeof err);
    if (rc == 0)
        printf("load ok %lu %lu\n", (unsigned long)tb_model_current()->arena_bytes,
               (unsigned long)tb_model_current()->params_bytes);
    else
        printf("load error %d %s\n", rc, err);
}

static void run(const char *script, const char *out_path, uint8_t *arena, uint32_t capacity)
{
    const tb_model_info *info = tb_model_current();
    uint32_t size;
    uint8_t *records = read_file(script, &size);
    FILE *out = fopen(out_path, "wb");
    if (!info || !records || !out) {
        printf("run error no model, script or output\n");
        free(records);
        if (out) fclose(out);
        return;
    }
    memset(arena + info->params_bytes, PAINT, capacity - info->params_bytes);
    const uint32_t record_bytes = 8 + info->input_bytes;
    for (uint32_t pos = 0; pos + record_bytes <= size; pos += record_bytes) {
        uint16_t label;
        float lr;
        memcpy(&label, records + pos + 2, 2);
        memcpy(&lr, records + pos + 4, 4);
        int32_t rc = 0;
        if (tb_model_input_streams()) {
            /* as the input transfer feeds it: in pieces that do not align with rows */
            tb_exec_input_begin();
            for (uint32_t at = 0; !rc && at < info->input_bytes; at += INPUT_PIECE) {
                const uint32_t n = info->input_bytes - at < INPUT_PIECE ? info->input_bytes - at : INPUT_PIECE;
                rc = tb_exec_input_data(records + pos + 8 + at, n);
            }
        } else {
            memcpy(tb_model_input(), records + pos + 8, info->input_bytes);
        }
        if (rc != 0) {
            fwrite(&rc, 4, 1, out);
            fprintf(stderr, "status %d: %s\n", (int)rc, tb_exec_error());
            continue;
        }
        if (records[pos] == 0) {
            tb_infer_result r;
            rc = tb_exec_infer(&r);
            fwrite(&rc, 4, 1, out);
            if (rc == 0) {
                fwrite(&r.label, 2, 1, out);
                fwrite(&r.num_classes, 2, 1, out);
                fwrite(r.logits, 1, r.num_classes, out);
            }
        } else {
            tb_step_result r;
            rc = tb_exec_train_step(label, lr, &r);
            fwrite(&rc, 4, 1, out);
            if (rc == 0) {
                fwrite(&r.loss, 4, 1, out);
                fwrite(&r.label_pred, 2, 1, out);
                fwrite(&r.step, 4, 1, out);
            }
        }
        if (rc != 0) fprintf(stderr, "status %d: %s\n", (int)rc, tb_exec_error());
    }
    fwrite(&info->params_bytes, 4, 1, out);
    fwrite(tb_model_params(), 1, info->params_bytes, out);
    fclose(out);
    free(records);
    uint32_t used = capacity;
    while (used > info->params_bytes && arena[used - 1] == PAINT) used--;
    printf("run ok %lu\n", (unsigned long)used);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: model_harness CAPACITY load:PATH|run:SCRIPT:OUT...\n");
        return 2;
    }
    const uint32_t capacity = (uint32_t)strtoul(argv[1], NULL, 10);
    uint8_t *arena = malloc(capacity ? capacity : 1);
    for (int i = 2; i < argc; i++) {
        if (!strncmp(argv[i], "load:", 5)) {
            load(argv[i] + 5, arena, capacity);
        } else if (!strncmp(argv[i], "run:", 4)) {
            char *script = argv[i] + 4, *out = strchr(script, ':');
            if (!out) return 2;
            *out++ = 0;
            run(script, out, arena, capacity);
        } else {
            return 2;
        }
        fflush(stdout);
    }
    for (int i = 0; i < n_blobs; i++) free(blobs[i]);
    free(arena);
    return 0;
}
