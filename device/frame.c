#include "frame.h"

/* Half-byte table: 64 bytes of flash instead of 1 KB, fast enough for a megabyte at boot. */
static const uint32_t crc_nibble[16] = {
    0x00000000u, 0x1DB71064u, 0x3B6E20C8u, 0x26D930ACu, 0x76DC4190u, 0x6B6B51F4u,
    0x4DB26158u, 0x5005713Cu, 0xEDB88320u, 0xF00F9344u, 0xD6D6A3E8u, 0xCB61B38Cu,
    0x9B64C2B0u, 0x86D3D2D4u, 0xA00AE278u, 0xBDBDF21Cu,
};

uint32_t tb_crc32(uint32_t crc, const uint8_t *data, size_t len)
{
    crc = ~crc;
    for (size_t i = 0; i < len; i++) {
        crc ^= data[i];
        crc = (crc >> 4) ^ crc_nibble[crc & 0x0Fu];
        crc = (crc >> 4) ^ crc_nibble[crc & 0x0Fu];
    }
    return ~crc;
}

void tb_decoder_init(tb_decoder *d)
{
    d->len = 0;
    d->block_left = 0;
    d->zero_pending = 0;
    d->started = 0;
    d->bad = 0;
}

static void append(tb_decoder *d, uint8_t byte)
{
    if (d->len == TB_MAX_BODY)
        d->bad = 1;
    else
        d->body[d->len++] = byte;
}

int32_t tb_decoder_push(tb_decoder *d, uint8_t byte)
{
    if (byte == 0) {
        int32_t result;
        if (!d->started)
            result = TB_DECODE_NONE; /* an empty frame: a delimiter the host sends to resync */
        else if (d->bad || d->block_left != 0)
            result = TB_DECODE_BAD;
        else
            result = (int32_t)d->len;
        tb_decoder_init(d);
        return result;
    }
    if (d->bad)
        return TB_DECODE_NONE;
    if (d->block_left == 0) {
        /* a code byte: the previous block's implied zero is real only when more data follows */
        if (d->zero_pending)
            append(d, 0);
        d->started = 1;
        d->block_left = (uint8_t)(byte - 1);
        d->zero_pending = byte != 0xFF;
    } else {
        append(d, byte);
        d->block_left--;
    }
    return TB_DECODE_NONE;
}

void tb_cobs_write(const uint8_t *body, size_t len, void (*write)(const uint8_t *, size_t))
{
    size_t start = 0;
    for (;;) {
        size_t run = 0;
        while (start + run < len && body[start + run] != 0 && run < 254)
            run++;
        uint8_t code = (uint8_t)(run + 1);
        write(&code, 1);
        if (run)
            write(body + start, run);
        start += run;
        if (run == 254) {
            if (start == len)
                break;
            continue; /* a full block carries no implied zero */
        }
        if (start == len)
            break;
        start++; /* the zero this block's code stands for */
    }
    static const uint8_t delimiter = 0;
    write(&delimiter, 1);
}
