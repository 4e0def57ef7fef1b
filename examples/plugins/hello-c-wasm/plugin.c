/* A plugd wasm plugin in C: `echo` and `checksum` (FNV-1a, 32 bit, of the payload text).
 *
 * Freestanding C (no libc): the canonical ABI of `plugd:plugin@0.1.0` is written out by hand
 * below, because the wit-bindgen C generator is not available from the package registries this
 * project builds with. Build: see `examples/plugins/build.sh` (zig cc, then
 * `wasm-tools component embed` + `component new`). */

#include <stddef.h>
#include <stdint.h>

#define GUEST "plugd:plugin/guest@0.1.0"
#define HOST "plugd:plugin/host@0.1.0"

/* ---- memory: a bump allocator, reset after every call (post-return) ---- */

extern unsigned char __heap_base;
static uintptr_t heap_top = 0;

static void heap_reset(void) { heap_top = (uintptr_t)&__heap_base; }

static void *alloc(size_t size, size_t align) {
    if (heap_top == 0) heap_reset();
    uintptr_t ptr = (heap_top + align - 1) & ~(uintptr_t)(align - 1);
    uintptr_t end = ptr + size;
    uintptr_t have = __builtin_wasm_memory_size(0) * 65536;
    if (end > have) {
        size_t pages = (end - have + 65535) / 65536;
        if (__builtin_wasm_memory_grow(0, pages) == (size_t)-1) __builtin_trap();
    }
    heap_top = end;
    return (void *)ptr;
}

__attribute__((export_name("cabi_realloc")))
void *cabi_realloc(void *old, size_t old_size, size_t align, size_t new_size) {
    void *p = alloc(new_size, align);
    if (old) __builtin_memcpy(p, old, old_size < new_size ? old_size : new_size);
    return p;
}

/* ---- host imports ---- */

__attribute__((import_module(HOST), import_name("log")))
extern void host_log(int32_t level, const char *msg, size_t len);

/* ---- small helpers ---- */

typedef struct { const char *ptr; size_t len; } str_t;

static size_t cstrlen(const char *s) { size_t n = 0; while (s[n]) n++; return n; }

static int str_is(const char *p, size_t len, const char *lit) {
    size_t n = cstrlen(lit);
    if (n != len) return 0;
    for (size_t i = 0; i < n; i++)
        if (p[i] != lit[i]) return 0;
    return 1;
}

/* An output buffer in the guest heap. */
typedef struct { char *ptr; size_t len; } buf_t;

static void put(buf_t *b, const char *p, size_t n) { __builtin_memcpy(b->ptr + b->len, p, n); b->len += n; }
static void puts_(buf_t *b, const char *s) { put(b, s, cstrlen(s)); }

/* result<string, error> return area: tag at 0, payload at 4 (string or record of 2 strings). */
static struct { uint8_t tag; uint8_t pad[3]; str_t a; str_t b; } ret;

static void *ok(buf_t b) { ret.tag = 0; ret.a.ptr = b.ptr; ret.a.len = b.len; return &ret; }

static void *err(const char *code, const char *msg) {
    ret.tag = 1;
    ret.a.ptr = code; ret.a.len = cstrlen(code);
    ret.b.ptr = msg; ret.b.len = cstrlen(msg);
    return &ret;
}

/* ---- exports ---- */

static const char DESCRIBE[] =
    "{\"actions\":["
    "{\"name\":\"echo\",\"description\":\"Returns the payload unchanged\"},"
    "{\"name\":\"checksum\",\"description\":\"FNV-1a (32 bit) of the payload's JSON text\"},"
    "{\"name\":\"build\",\"description\":\"Names this build of the component\"}"
    "]}";

/* The answer of `build`. The hot-reload tests and benchmarks make a second, different component
 * from this one by replacing `build-A` with `build-B` in the binary: keep the marker unique. */
static const char BUILD[] = "{\"value\":{\"build\":\"build-A\"}}";

__attribute__((export_name(GUEST "#describe")))
void *guest_describe(void) {
    static str_t out;
    out.ptr = DESCRIBE; out.len = sizeof(DESCRIBE) - 1;
    return &out;
}

__attribute__((export_name(GUEST "#call")))
void *guest_call(const char *action, size_t action_len, const char *payload, size_t payload_len) {
    if (str_is(action, action_len, "echo")) {
        buf_t b = { alloc(payload_len + 10, 1), 0 };
        puts_(&b, "{\"value\":"); put(&b, payload, payload_len); puts_(&b, "}");
        return ok(b);
    }
    if (str_is(action, action_len, "checksum")) {
        uint32_t h = 2166136261u;
        for (size_t i = 0; i < payload_len; i++) { h ^= (uint8_t)payload[i]; h *= 16777619u; }
        static const char HEX[] = "0123456789abcdef";
        char hex[8];
        for (int i = 0; i < 8; i++) hex[i] = HEX[(h >> (28 - 4 * i)) & 0xf];
        char digits[20]; size_t nd = 0; size_t n = payload_len;
        do { digits[nd++] = (char)('0' + n % 10); n /= 10; } while (n);
        buf_t b = { alloc(64, 1), 0 };
        puts_(&b, "{\"value\":{\"fnv1a32\":\""); put(&b, hex, 8); puts_(&b, "\",\"bytes\":");
        while (nd) { char c = digits[--nd]; put(&b, &c, 1); }
        puts_(&b, "}}");
        host_log(0, "checksum computed", 17);
        return ok(b);
    }
    if (str_is(action, action_len, "build")) {
        buf_t b = { (char *)BUILD, sizeof(BUILD) - 1 };
        return ok(b);
    }
    return err("unknown_action", "no such action");
}

__attribute__((export_name("cabi_post_" GUEST "#call")))
void guest_call_post(void *ret_area) { (void)ret_area; heap_reset(); }

__attribute__((export_name(GUEST "#on-event")))
void guest_on_event(const char *topic, size_t topic_len, const char *payload, size_t payload_len) {
    (void)payload; (void)payload_len;
    host_log(1, topic, topic_len);
    heap_reset();
}
