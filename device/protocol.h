/* Identifiers of docs/protocol.md: frame kinds, commands, events, slots, error codes. */
#ifndef TB_PROTOCOL_H
#define TB_PROTOCOL_H

enum { TB_KIND_REQUEST = 1, TB_KIND_RESPONSE = 2, TB_KIND_LOG = 3, TB_KIND_EVENT = 4 };

enum { TB_EVENT_BOOT = 1 };

enum { TB_LOG_DEBUG = 10, TB_LOG_INFO = 20, TB_LOG_WARNING = 30, TB_LOG_ERROR = 40 };

enum {
    TB_CMD_HELLO = 0x01,
    TB_CMD_STATS = 0x02,
    TB_CMD_MODEL_INFO = 0x03,
    TB_CMD_PROFILE = 0x04,
    TB_CMD_XFER_BEGIN = 0x10,
    TB_CMD_XFER_DATA = 0x11,
    TB_CMD_XFER_COMMIT = 0x12,
    TB_CMD_XFER_READ = 0x13,
    TB_CMD_XFER_STAT = 0x14,
    TB_CMD_INFER = 0x20,
    TB_CMD_TRAIN_STEP = 0x21,
    TB_CMD_SAVE = 0x22,
    TB_CMD_RESET = 0x23,
    TB_CMD_SET_BAUD = 0x24
};

enum { TB_SLOT_MODEL = 1, TB_SLOT_INPUT = 2, TB_SLOT_PARAMS = 3 };

enum {
    TB_OK = 0,
    TB_ERR_VERSION = 1,
    TB_ERR_UNKNOWN_COMMAND = 2,
    TB_ERR_BAD_LENGTH = 3,
    TB_ERR_BAD_ARGUMENT = 4,
    TB_ERR_NO_MODEL = 5,
    TB_ERR_NO_INPUT = 6,
    TB_ERR_BAD_STATE = 7,
    TB_ERR_BAD_OFFSET = 8,
    TB_ERR_TOO_LARGE = 9,
    TB_ERR_CRC_MISMATCH = 10,
    TB_ERR_BAD_BLOB = 11,
    TB_ERR_FLASH = 12,
    TB_ERR_INCOMPLETE = 13,
    TB_ERR_EXEC = 14
};

enum {
    TB_CAP_TRAIN = 1u << 0,
    TB_CAP_INFER = 1u << 1,
    TB_CAP_SAVE = 1u << 2,
    TB_CAP_SET_BAUD = 1u << 3,
    TB_CAP_PROFILE = 1u << 4
};

/* PROFILE's response: run, reserved, n_ops, total, outside, first, count; then 8 bytes an op. */
enum { TB_PROFILE_HEADER_BYTES = 20 };

#endif
