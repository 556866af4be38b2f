/* A minimal C client of the IAPC mask protocol, version 1, written from docs/PROTOCOL.md alone.
 *
 *   mask_client [ADDRESS [TIMEOUT_S]]      (defaults: tcp://127.0.0.1:5555, 5 s)
 *
 * Subscribes to `mask` and `status`, validates every message as the document's "Validation a
 * client must do" says, and prints on stdout one line per mask:
 *
 *   mask frame_id=12 engine_version=1 boot_id=5f0c9a7e1b2d4c3a width=128 height=64 crc32=1a2b3c4d
 *
 * (crc32 is the IEEE CRC-32 of the payload, as zlib's crc32() computes it), one line per status
 * (`status kind=heartbeat`), and `end reason=... frames_published=N` for the end-of-stream status.
 *
 * Exit status: 0 after the `end` status; 1 on a malformed message; 2 when no message arrives for
 * TIMEOUT_S seconds; 3 on a usage or ZeroMQ error. Each failure prints one line on stderr.
 *
 * The document tells a long-running client to skip and count a bad message; this one stops at
 * the first, because its job is to check a runtime against the document (tests/runtime/
 * test_c_client.py runs it against the real runtime).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <zmq.h>

enum { EXIT_END = 0, EXIT_MALFORMED = 1, EXIT_TIMEOUT = 2, EXIT_SETUP = 3 };

#define PROTOCOL_VERSION 1
#define MAX_HEADER_BYTES 65536 /* the document's limit: refuse to parse anything larger */
#define MAX_DIM 16384
#define MAX_NUM_CLASSES 255

/* One line on stderr and the exit status: every error path of this program ends here. */
static int fail(int status, const char *fmt, ...) {
    va_list ap;
    fflush(stdout); /* lines already printed stay before the error in a merged log */
    fputs("mask_client: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return status;
}

/* CRC-32 (IEEE 802.3, reflected 0xEDB88320), bit for bit zlib's crc32(), so that a Python test
 * can compare with zlib.crc32() of the same payload. */
static uint32_t crc32_table[256];

static void crc32_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc32_table[i] = c;
    }
}

static uint32_t crc32_of(const unsigned char *data, size_t n) {
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) c = crc32_table[(c ^ data[i]) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

/* A multipart message as received. Only the first three frames are kept: more is an error
 * anyway, and counting them is enough to say so. */
typedef struct {
    zmq_msg_t part[3];
    int kept;  /* frames initialised in part[] */
    int count; /* frames in the message */
} message_t;

static void message_close(message_t *m) {
    for (int i = 0; i < m->kept; i++) zmq_msg_close(&m->part[i]);
    m->kept = 0;
}

/* Receives every frame of one message (ZeroMQ delivers a multipart message whole, so once the
 * first frame is here the rest are too). Returns 0, or -1 with errno set. */
static int message_recv(void *sub, message_t *m) {
    m->kept = m->count = 0;
    for (;;) {
        zmq_msg_t frame;
        zmq_msg_init(&frame);
        if (zmq_msg_recv(&frame, sub, 0) < 0) {
            int err = errno;
            zmq_msg_close(&frame);
            message_close(m);
            errno = err;
            return -1;
        }
        int more = zmq_msg_more(&frame);
        if (m->kept < 3) {
            m->part[m->kept++] = frame;
        } else {
            zmq_msg_close(&frame);
        }
        m->count++;
        if (!more) return 0;
    }
}

static int frame_is(zmq_msg_t *frame, const char *text) {
    size_t n = strlen(text);
    return zmq_msg_size(frame) == n && memcmp(zmq_msg_data(frame), text, n) == 0;
}

/* An integer key in lo..hi. JSON true/false and floats are json_is_integer() == false in
 * jansson, and integers beyond int64 fail to parse, which is what the document requires.
 * Returns NULL or what is wrong (in a static buffer). */
static const char *get_int(json_t *obj, const char *key, int64_t lo, int64_t hi, int64_t *out) {
    static char why[160];
    json_t *value = json_object_get(obj, key);
    if (value == NULL) {
        snprintf(why, sizeof why, "missing required key '%s'", key);
        return why;
    }
    if (!json_is_integer(value)) {
        snprintf(why, sizeof why, "key '%s' is not a JSON integer", key);
        return why;
    }
    *out = (int64_t)json_integer_value(value);
    if (*out < lo || *out > hi) {
        snprintf(why, sizeof why, "key '%s'=%" PRId64 " is outside %" PRId64 "..%" PRId64, key,
                 *out, lo, hi);
        return why;
    }
    return NULL;
}

/* A string key equal to `expected`; NULL or what is wrong. */
static const char *check_string(json_t *obj, const char *key, const char *expected) {
    static char why[160];
    json_t *value = json_object_get(obj, key);
    if (value == NULL) {
        snprintf(why, sizeof why, "missing required key '%s'", key);
    } else if (!json_is_string(value)) {
        snprintf(why, sizeof why, "key '%s' is not a JSON string", key);
    } else if (strcmp(json_string_value(value), expected) != 0) {
        snprintf(why, sizeof why, "key '%s' is '%.40s', expected '%s'", key,
                 json_string_value(value), expected);
    } else {
        return NULL;
    }
    return why;
}

/* Parses the header frame into a JSON object and checks `v` before anything else (another
 * version may change every other field). Returns the object, or NULL with *why set. */
static json_t *parse_header(zmq_msg_t *frame, const char **why) {
    static char buf[256];
    size_t n = zmq_msg_size(frame);
    if (n > MAX_HEADER_BYTES) {
        snprintf(buf, sizeof buf, "header of %zu bytes exceeds %d", n, MAX_HEADER_BYTES);
        *why = buf;
        return NULL;
    }
    json_error_t error;
    /* jansson checks UTF-8 and rejects NaN/Infinity, so "not UTF-8, not JSON" is one check */
    json_t *obj = json_loadb(zmq_msg_data(frame), n, 0, &error);
    if (obj == NULL) {
        snprintf(buf, sizeof buf, "header is not UTF-8 JSON: %s", error.text);
        *why = buf;
        return NULL;
    }
    if (!json_is_object(obj)) {
        json_decref(obj);
        *why = "header is not a JSON object";
        return NULL;
    }
    int64_t v;
    if ((*why = get_int(obj, "v", 0, INT64_MAX, &v)) != NULL) {
        json_decref(obj);
        return NULL;
    }
    if (v != PROTOCOL_VERSION) {
        snprintf(buf, sizeof buf, "protocol version %" PRId64 " is not supported (this client "
                 "speaks v%d)", v, PROTOCOL_VERSION);
        json_decref(obj);
        *why = buf;
        return NULL;
    }
    return obj;
}

/* The optional boot_id (absent from older runtimes): a string when present, printed as "-"
 * when absent. It is treated as an opaque string: only its type is checked. */
static const char *boot_id_of(json_t *obj, const char **why) {
    json_t *value = json_object_get(obj, "boot_id");
    if (value == NULL) return "-";
    if (!json_is_string(value)) {
        *why = "key 'boot_id' is not a JSON string";
        return NULL;
    }
    return json_string_value(value);
}

/* A mask message: every required key with its type and range, dtype, encoding, payload size.
 * Returns NULL after printing its line, or what is wrong. */
static const char *handle_mask(json_t *h, zmq_msg_t *payload) {
    static char why[160];
    const char *err = NULL;
    int64_t frame_id, capture_ns, publish_ns, engine, height, width, num_classes;
    if ((err = get_int(h, "frame_id", 0, INT64_MAX, &frame_id)) ||
        (err = get_int(h, "capture_ns", 0, INT64_MAX, &capture_ns)) ||
        (err = get_int(h, "publish_ns", 0, INT64_MAX, &publish_ns)) ||
        (err = get_int(h, "engine_version", 0, INT64_MAX, &engine)) ||
        (err = get_int(h, "height", 1, MAX_DIM, &height)) ||
        (err = get_int(h, "width", 1, MAX_DIM, &width)) ||
        (err = get_int(h, "num_classes", 1, MAX_NUM_CLASSES, &num_classes)) ||
        (err = check_string(h, "dtype", "uint8")) ||
        (err = check_string(h, "encoding", "class_ids")))
        return err;
    const char *boot_id = boot_id_of(h, &err);
    if (boot_id == NULL) return err;
    /* height and width are at most 16384, so the product cannot overflow */
    size_t expected = (size_t)height * (size_t)width;
    if (zmq_msg_size(payload) != expected) {
        snprintf(why, sizeof why, "frame %" PRId64 ": payload has %zu bytes, %" PRId64 "x%" PRId64
                 " uint8 needs %zu", frame_id, zmq_msg_size(payload), height, width, expected);
        return why;
    }
    printf("mask frame_id=%" PRId64 " engine_version=%" PRId64 " boot_id=%s width=%" PRId64
           " height=%" PRId64 " crc32=%08" PRIx32 "\n", frame_id, engine, boot_id, width, height,
           crc32_of(zmq_msg_data(payload), expected));
    return NULL;
}

/* A status message. `kind` and `publish_ns` are in every status object; every other key
 * depends on the kind and is optional, so it is checked before use. The payload is meant to be
 * empty but is ignored either way. Sets *ended for the end-of-stream status. */
static const char *handle_status(json_t *h, int *ended) {
    const char *err = NULL;
    int64_t publish_ns;
    json_t *kind = json_object_get(h, "kind");
    if (kind == NULL) return "status without the key 'kind'";
    if (!json_is_string(kind)) return "status key 'kind' is not a JSON string";
    if ((err = get_int(h, "publish_ns", 0, INT64_MAX, &publish_ns))) return err;
    if (boot_id_of(h, &err) == NULL) return err;

    if (strcmp(json_string_value(kind), "end") != 0) {
        /* heartbeat, swap, ... and kinds added by a later revision: shown, never an error */
        printf("status kind=%s\n", json_string_value(kind));
        return NULL;
    }
    json_t *reason = json_object_get(h, "reason");
    json_t *published = json_object_get(h, "frames_published");
    printf("end reason=%s", json_is_string(reason) ? json_string_value(reason) : "-");
    if (json_is_integer(published))
        printf(" frames_published=%" JSON_INTEGER_FORMAT, json_integer_value(published));
    printf("\n");
    *ended = 1;
    return NULL;
}

int main(int argc, char **argv) {
    const char *address = argc > 1 ? argv[1] : "tcp://127.0.0.1:5555";
    double timeout_s = 5.0;
    if (argc > 3 || (argc == 3 && (timeout_s = strtod(argv[2], NULL)) <= 0))
        return fail(EXIT_SETUP, "usage: mask_client [ADDRESS [TIMEOUT_S > 0]]");
    crc32_init();
    setvbuf(stdout, NULL, _IOLBF, 0); /* a line per message, visible as it happens in a pipe */

    void *ctx = zmq_ctx_new();
    void *sub = zmq_socket(ctx, ZMQ_SUB);
    if (sub == NULL) return fail(EXIT_SETUP, "cannot create a SUB socket: %s", zmq_strerror(errno));
    int linger = 0;
    zmq_setsockopt(sub, ZMQ_LINGER, &linger, sizeof linger);
    /* ZeroMQ filters by prefix; the exact topic is compared again after receiving */
    if (zmq_setsockopt(sub, ZMQ_SUBSCRIBE, "mask", 4) != 0 ||
        zmq_setsockopt(sub, ZMQ_SUBSCRIBE, "status", 6) != 0)
        return fail(EXIT_SETUP, "cannot subscribe: %s", zmq_strerror(errno));
    /* connect() succeeds before a runtime is listening: ZeroMQ keeps retrying in the background */
    if (zmq_connect(sub, address) != 0)
        return fail(EXIT_SETUP, "cannot connect to '%s': %s", address, zmq_strerror(errno));

    int status = -1;
    long masks = 0;
    while (status < 0) {
        /* The runtime sends a heartbeat every second, so silence means it is gone or hung */
        zmq_pollitem_t item = {sub, 0, ZMQ_POLLIN, 0};
        int ready = zmq_poll(&item, 1, (long)(timeout_s * 1000));
        if (ready < 0) {
            status = fail(EXIT_SETUP, "poll failed: %s", zmq_strerror(errno));
            break;
        }
        if (ready == 0) {
            status = fail(EXIT_TIMEOUT, "no message from %s in %g s (%ld masks received, no end "
                          "status)", address, timeout_s, masks);
            break;
        }
        message_t m;
        if (message_recv(sub, &m) != 0) {
            status = fail(EXIT_SETUP, "receive failed: %s", zmq_strerror(errno));
            break;
        }
        const char *why = NULL;
        int is_mask = m.kept >= 1 && frame_is(&m.part[0], "mask");
        int is_status = m.kept >= 1 && frame_is(&m.part[0], "status");
        int ended = 0;
        if (m.count != 3) {
            static char buf[96];
            snprintf(buf, sizeof buf, "a message has %d frames, the protocol sends exactly 3 "
                     "[topic, header, payload]", m.count);
            why = buf;
        } else if (is_mask || is_status) {
            json_t *h = parse_header(&m.part[1], &why);
            if (h != NULL) {
                why = is_mask ? handle_mask(h, &m.part[2]) : handle_status(h, &ended);
                if (is_mask && why == NULL) masks++;
                json_decref(h); /* safe: every `why` is a literal or a static copy */
            }
        }
        /* else: a topic that only starts with "mask" or "status" (a later revision may add
         * topics): ignored, as the document says */
        message_close(&m);
        if (why != NULL) status = fail(EXIT_MALFORMED, "malformed message: %s", why);
        else if (ended) status = EXIT_END;
    }
    zmq_close(sub);
    zmq_ctx_term(ctx);
    return status;
}
