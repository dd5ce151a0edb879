/* C ABI test for libtollgate: every entry point and every status the header
 * documents, against the real library (built twice by tests/c/run.sh: linked
 * to libtollgate.so and statically to libtollgate.a).
 *
 * Times are explicit (now_ms), so nothing here depends on the wall clock or
 * on how fast the machine is. The last line printed is "N passed, M failed";
 * the exit status is non-zero when anything failed. */
#define _POSIX_C_SOURCE 200809L

#include "tollgate.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------------ checks */

static int g_pass, g_fail;

static void fail_at(const char *file, int line, const char *what) {
    g_fail++;
    fprintf(stderr, "%s:%d: FAIL: %s\n", file, line, what);
}

#define CHECK(cond)                                              \
    do {                                                         \
        if (cond) g_pass++;                                      \
        else fail_at(__FILE__, __LINE__, #cond);                 \
    } while (0)

static void check_st(const char *file, int line, const char *expr, tg_status got, tg_status want) {
    if (got == want) {
        g_pass++;
        return;
    }
    g_fail++;
    fprintf(stderr, "%s:%d: FAIL: %s: expected %d (%s), got %d (%s)\n", file, line, expr, want,
            tg_status_str(want), got, tg_status_str(got));
}

static void check_eq(const char *file, int line, const char *a, const char *b, uint64_t va, uint64_t vb) {
    if (va == vb) {
        g_pass++;
        return;
    }
    g_fail++;
    fprintf(stderr, "%s:%d: FAIL: %s == %s: got %" PRIu64 ", expected %" PRIu64 "\n", file, line, a, b,
            va, vb);
}

static void check_has(const char *file, int line, const char *what, const char *hay, const char *needle) {
    if (hay && strstr(hay, needle)) {
        g_pass++;
        return;
    }
    g_fail++;
    fprintf(stderr, "%s:%d: FAIL: %s should contain \"%s\"; it is \"%s\"\n", file, line, what, needle,
            hay ? hay : "(null)");
}

/* status check: names both statuses on failure */
#define CHECK_ST(expr, want) check_st(__FILE__, __LINE__, #expr, (expr), (want))
/* unsigned equality: prints both values on failure */
#define CHECK_EQ(a, b) check_eq(__FILE__, __LINE__, #a, #b, (uint64_t)(a), (uint64_t)(b))
#define CHECK_STR_HAS(hay, needle) check_has(__FILE__, __LINE__, #hay, (hay), (needle))

/* a precondition for the rest of a test function: stop the function if false */
#define REQUIRE(cond)                                                       \
    do {                                                                    \
        if (cond) g_pass++;                                                 \
        else {                                                              \
            fail_at(__FILE__, __LINE__, "REQUIRE " #cond " (test skipped)"); \
            return;                                                         \
        }                                                                   \
    } while (0)

/* ----------------------------------------------------------------- helpers */

#define MS_MIN ((uint64_t)60000)
#define MS_DAY ((uint64_t)86400000)
/* 2024-10-04T00:00:00Z: a UTC day boundary, so minute/day arithmetic is plain */
#define T0 ((uint64_t)20000 * MS_DAY)

static const char *DSV31 = "DeepSeek-V3.1"; /* 30 RPM / 15000 RPD, Developer tier */

static tg_request req_of(const char *account, const char *model, uint32_t tier, uint32_t cost) {
    tg_request r;
    memset(&r, 0, sizeof r);
    r.account = account;
    r.account_len = account ? strlen(account) : 0;
    r.model = model;
    r.model_len = model ? strlen(model) : 0;
    r.tier = tier;
    r.cost = cost;
    return r;
}

static tg_request dev_req(const char *account, const char *model) {
    return req_of(account, model, TG_TIER_DEVELOPER, 1);
}

/* ceil((reset_s*1000 - now_ms) / 1000), at least 1: the documented retry_after */
static uint32_t secs_until(uint64_t now_ms, uint64_t reset_s) {
    uint64_t r = reset_s * 1000;
    uint64_t wait = r > now_ms ? r - now_ms : 0;
    uint64_t s = (wait + 999) / 1000;
    return (uint32_t)(s < 1 ? 1 : s);
}

static void *aligned_region(size_t len) {
    /* aligned_alloc wants a size that is a multiple of the alignment */
    size_t rounded = (len + TG_REGION_ALIGN - 1) / TG_REGION_ALIGN * TG_REGION_ALIGN;
    void *p = aligned_alloc(TG_REGION_ALIGN, rounded + TG_REGION_ALIGN);
    if (p) memset(p, 0, rounded + TG_REGION_ALIGN);
    return p;
}

static int write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t n = strlen(text);
    int ok = fwrite(text, 1, n, f) == n;
    return (fclose(f) == 0 && ok) ? 0 : -1;
}

static char g_tmpdir[256];

/* ------------------------------------------------------------------- tests */

static void test_version(void) {
    CHECK_EQ(tg_version_number(), TG_VERSION_NUMBER);
    CHECK_EQ(tg_layout_version(), TG_LAYOUT_VERSION);
    CHECK(strcmp(tg_version_string(), TG_VERSION_STRING) == 0);
    CHECK_EQ(TG_VERSION_NUMBER, TG_VERSION_MAJOR * 1000000 + TG_VERSION_MINOR * 1000 + TG_VERSION_PATCH);
    const char *v = tg_version();
    REQUIRE(v != NULL);
    char want[32];
    snprintf(want, sizeof want, "%u.%u.%u", (unsigned)(TG_VERSION_NUMBER / 1000000),
             (unsigned)(TG_VERSION_NUMBER / 1000 % 1000), (unsigned)(TG_VERSION_NUMBER % 1000));
    CHECK(strcmp(v, want) == 0);
}

/*
 * Structs that grow: a caller's `size` says which layout it has. 0 and
 * sizeof are this layout; a bigger struct (a caller built against a later
 * header) keeps its extra bytes untouched; a smaller one (no such layout)
 * is TG_E_INVALID with nothing written. Buffers are exactly the size the
 * caller claims, on the heap, so the ASan build catches any overrun.
 */
static void test_struct_sizes(void) {
    tg_policy *p = NULL;
    tg_limiter *l = NULL;
    REQUIRE(tg_policy_default(&p) == TG_OK);
    REQUIRE(tg_limiter_new(p, 64, &l) == TG_OK);

    size_t big = sizeof(tg_stats) + 32;
    unsigned char *buf = malloc(big);
    REQUIRE(buf != NULL);
    memset(buf, 0xAB, big);
    tg_stats *st = (tg_stats *) buf;
    st->size = (uint32_t) big;
    CHECK_ST(tg_limiter_stats(l, T0, st), TG_OK);
    CHECK_EQ(st->slots, 64);
    for (size_t i = sizeof(tg_stats); i < big; i++) CHECK_EQ(buf[i], 0xAB);
    free(buf);

    tg_stats *exact = malloc(sizeof *exact);
    REQUIRE(exact != NULL);
    exact->size = sizeof *exact;
    CHECK_ST(tg_limiter_stats(l, T0, exact), TG_OK);
    CHECK_EQ(exact->size, sizeof *exact);
    CHECK_EQ(exact->has_in_flight, 1);
    /* 0 is the first layout (0.3's): the in-flight fields stay untouched */
    memset(exact, 0xAB, sizeof *exact);
    exact->size = 0;
    CHECK_ST(tg_limiter_stats(l, T0, exact), TG_OK);
    CHECK_EQ(exact->size, offsetof(tg_stats, has_in_flight));
    CHECK_EQ(exact->has_in_flight, 0xABABABABu);
    free(exact);

    unsigned char small[8];
    memset(small, 0xCD, sizeof small);
    ((tg_stats *) (void *) small)->size = 4;
    /* the library reads `size` (4 bytes) and stops there */
    CHECK_ST(tg_limiter_stats(l, T0, (tg_stats *) (void *) small), TG_E_INVALID);
    for (size_t i = 4; i < sizeof small; i++) CHECK_EQ(small[i], 0xCD);

    tg_verify_report vr = {.size = 4};
    CHECK_ST(tg_limiter_verify(l, T0, &vr, NULL, 0), TG_E_INVALID);
    vr.size = sizeof vr;
    CHECK_ST(tg_limiter_verify(l, T0, &vr, NULL, 0), TG_OK);

    tg_request r = dev_req("sizes", DSV31);
    tg_decision d;
    memset(&d, 0xEE, sizeof d);
    r.size = 4;
    CHECK_ST(tg_check(l, &r, T0, &d), TG_E_INVALID);
    CHECK_EQ(d.allowed, 0xEEEEEEEEu); /* untouched */
    r.size = sizeof r;
    CHECK_ST(tg_check(l, &r, T0, &d), TG_OK);
    CHECK_EQ(d.size, sizeof d);
    r.size = 0;
    CHECK_ST(tg_check(l, &r, T0, &d), TG_OK);
    CHECK_EQ(d.minute_remaining, 28);

    /* a decision handed back to a renderer is checked the same way */
    char out[512];
    size_t n;
    d.size = 4;
    CHECK_ST(tg_decision_headers(&d, out, sizeof out, &n), TG_E_INVALID);
    d.size = 0;
    CHECK_ST(tg_decision_headers(&d, out, sizeof out, &n), TG_OK);

    /* the error channel of constructors */
    CHECK(strcmp(tg_last_error(), "") == 0);
    tg_limiter *bad = NULL;
    CHECK_ST(tg_limiter_open(p, "/nonexistent/dir/t.tg", 0, 0, &bad), TG_E_IO);
    CHECK_STR_HAS(tg_last_error(), "/nonexistent/dir/t.tg");
    CHECK_STR_HAS(tg_last_error(), "No such file");

    tg_limiter_free(l);
    tg_policy_free(p);
}

/* ------------------------------------------------------------------ tokens */

static const char *TOKENS_POLICY =
    "[models]\n\"m\" = { region = \"EU\" }\n"
    "[tiers.developer]\n\"m\" = { rpm = 100, rpd = 1000, tpm = 10000, tpd = 100000 }\n";

/* Collects header pairs: their count, the last name, and whether any
 * value holds `want`. */
struct pairs {
    int n;
    char last[32];
    const char *want;
    int found;
};

static int collect_pair(void *ctx, const char *name, size_t name_len, const char *value,
                        size_t value_len) {
    struct pairs *p = ctx;
    p->n++;
    size_t k = name_len < sizeof p->last - 1 ? name_len : sizeof p->last - 1;
    memcpy(p->last, name, k);
    p->last[k] = '\0';
    size_t w = p->want ? strlen(p->want) : 0;
    for (size_t i = 0; w && i + w <= value_len; i++)
        if (memcmp(value + i, p->want, w) == 0) p->found = 1;
    return 0;
}

/* ---------------------------------------------------------------- in flight */

static const char *IN_FLIGHT_POLICY =
    "[models]\nm = { region = \"EU\" }\n"
    "[tiers.developer]\nm = { rpm = 100, rpd = 1000, max_in_flight = 2 }\n";

static tg_answer in_flight_answer(tg_limiter *l) {
    tg_http_request hr;
    memset(&hr, 0, sizeof hr);
    hr.size = sizeof hr;
    hr.cost = 1;
    hr.method = "POST";
    hr.method_len = 4;
    hr.account = "inf";
    hr.account_len = 3;
    hr.tier = "developer";
    hr.tier_len = 9;
    hr.body = "{\"model\":\"m\"}";
    hr.body_len = strlen(hr.body);
    tg_answer a;
    memset(&a, 0, sizeof a);
    a.size = sizeof a;
    CHECK_ST(tg_answer_request(l, &hr, T0, 0, 0, &a), TG_OK);
    return a;
}

/* Two at once admitted, the third a 429 without retry-after, a release
 * lets the next in, a second release of the same admission is refused. */
static void test_in_flight(void) {
    tg_policy *p = NULL;
    tg_limiter *l = NULL;
    char err[256];
    REQUIRE(tg_policy_parse(IN_FLIGHT_POLICY, strlen(IN_FLIGHT_POLICY), &p, err, sizeof err) == TG_OK);
    REQUIRE(tg_limiter_new(p, 64, &l) == TG_OK);
    tg_answer a = in_flight_answer(l);
    tg_answer b = in_flight_answer(l);
    CHECK_EQ(a.http_status, 0);
    CHECK_EQ(a.in_flight.has_in_flight, 1);
    CHECK_EQ(b.in_flight.in_use, 2);
    CHECK(a.in_flight.admission != 0);
    tg_answer c = in_flight_answer(l);
    CHECK_EQ(c.http_status, 429);
    CHECK_EQ(c.decision.limited_by, TG_LIMIT_IN_FLIGHT);
    CHECK_EQ(c.in_flight.admission, 0);
    struct pairs h = {.want = "2"};
    CHECK_ST(tg_answer_headers(&c, collect_pair, &h), TG_OK);
    CHECK(strcmp(h.last, "content-type") == 0);
    uint32_t left = 9;
    CHECK_ST(tg_release(l, a.in_flight.admission, TG_END_COMPLETE, &left), TG_OK);
    CHECK_EQ(left, 1);
    CHECK_ST(tg_release(l, a.in_flight.admission, TG_END_COMPLETE, NULL), TG_E_INVALID);
    CHECK_ST(tg_release(l, b.in_flight.admission, 99, NULL), TG_E_INVALID);
    CHECK_ST(tg_release(l, 0, TG_END_COMPLETE, NULL), TG_E_INVALID);
    CHECK_ST(tg_release(NULL, b.in_flight.admission, TG_END_CUT, NULL), TG_E_NULL);
    tg_answer d = in_flight_answer(l);
    CHECK_EQ(d.http_status, 0);
    CHECK_ST(tg_release(l, d.in_flight.admission, TG_END_COMPLETE, NULL), TG_OK);
    CHECK_ST(tg_release(l, b.in_flight.admission, TG_END_CUT, &left), TG_OK);
    CHECK_EQ(left, 0);
    tg_stats st = {.size = sizeof st};
    CHECK_ST(tg_limiter_stats(l, 1000, &st), TG_OK);
    CHECK_EQ(st.has_in_flight, 1);
    CHECK_EQ(st.in_flight, 0);
    CHECK_EQ(st.released_completed, 2);
    CHECK_EQ(st.released_aborted, 1);
    CHECK_EQ(st.refused_in_flight, 1);
    /* The step-by-step path (nginx's): tg_check_units, then the renderers
     * given the in-flight state. tg_check has nowhere to put an admission. */
    tg_request r;
    memset(&r, 0, sizeof r);
    r.size = sizeof r;
    r.account = "inf2";
    r.account_len = 4;
    r.model = "m";
    r.model_len = 1;
    r.tier = TG_TIER_DEVELOPER;
    r.cost = 1;
    tg_decision dd;
    CHECK_ST(tg_check(l, &r, T0, &dd), TG_E_NO_IN_FLIGHT);
    tg_in_flight f1 = {.size = sizeof f1}, f2 = {.size = sizeof f2}, f3 = {.size = sizeof f3};
    tg_decision d1, d2, d3;
    CHECK_ST(tg_check_units(l, &r, T0, &d1, NULL, &f1), TG_OK);
    CHECK_ST(tg_check_units(l, &r, T0, &d2, NULL, &f2), TG_OK);
    CHECK_ST(tg_check_units(l, &r, T0, &d3, NULL, &f3), TG_OK);
    CHECK(d1.allowed && d2.allowed && !d3.allowed);
    CHECK_EQ(d3.limited_by, TG_LIMIT_IN_FLIGHT);
    CHECK_EQ(f3.has_in_flight, 1);
    CHECK_EQ(f3.in_use, 2);
    CHECK_EQ(f3.admission, 0);
    struct pairs hp = {.want = "2"};
    CHECK_ST(tg_decision_units_header_pairs(&d3, NULL, &f3, collect_pair, &hp), TG_OK);
    CHECK(strcmp(hp.last, "x-ratelimit-in-flight") == 0);
    struct pairs ip = {.want = "\"in-flight\";r=0"};
    CHECK_ST(tg_decision_units_ietf_header_pairs(&d3, NULL, &f3, T0, collect_pair, &ip), TG_OK);
    CHECK(ip.found);
    char body[512];
    size_t n = 0;
    CHECK_ST(tg_decision_units_error_body(&d3, NULL, &f3, "m", 1, body, sizeof body, &n), TG_OK);
    CHECK(strstr(body, "\"code\":\"in_flight_limit_exceeded\"") != NULL);
    CHECK_ST(tg_release(l, f1.admission, TG_END_COMPLETE, NULL), TG_OK);
    CHECK_ST(tg_release(l, f2.admission, TG_END_COMPLETE, NULL), TG_OK);
    tg_stats old = {0};
    CHECK_ST(tg_limiter_stats(l, 1000, &old), TG_OK);
    CHECK_EQ(old.has_in_flight, 0);
    tg_limiter_free(l);
    tg_policy_free(p);
}

/* Reserve, refuse on tokens, answer with the token headers, read a
 * streamed response's usage and settle it: the next decision shows the
 * usage instead of the reservation. */
static void test_tokens(void) {
    tg_policy *p = NULL;
    tg_limiter *l = NULL;
    char err[256];
    REQUIRE(tg_policy_parse(TOKENS_POLICY, strlen(TOKENS_POLICY), &p, err, sizeof err) == TG_OK);
    REQUIRE(tg_limiter_new(p, 64, &l) == TG_OK);

    tg_request r = req_of("tok", "m", TG_TIER_DEVELOPER, 1);
    r.size = sizeof r;
    r.tokens = 8000;
    tg_decision d;
    tg_tokens t = {.size = sizeof t};
    CHECK_ST(tg_check_tokens(l, &r, T0, &d, &t), TG_OK);
    CHECK_EQ(d.allowed, 1);
    CHECK_EQ(t.has_tokens, 1);
    CHECK_EQ(t.minute_limit, 10000);
    CHECK_EQ(t.minute_remaining, 2000);
    CHECK_EQ(t.day_remaining, 92000);
    CHECK_EQ(t.reserved, 8000);
    CHECK(t.ticket.words[0] != 0 || t.ticket.words[1] != 0);
    tg_ticket held = t.ticket;

    /* 3000 more do not fit the minute: refused on tokens, nothing charged */
    tg_tokens t2 = {.size = sizeof t2};
    r.tokens = 3000;
    CHECK_ST(tg_check_tokens(l, &r, T0 + 1, &d, &t2), TG_OK);
    CHECK_EQ(d.allowed, 0);
    CHECK_EQ(d.limited_by, TG_LIMIT_TOKENS_MINUTE);
    CHECK_EQ(d.minute_remaining, 99);
    CHECK_EQ(t2.minute_remaining, 2000);
    CHECK_EQ(t2.ticket.words[0] | t2.ticket.words[1], 0);

    /* its headers in the core's order: requests, tokens, retry-after */
    struct pairs order = {0};
    CHECK_ST(tg_decision_tokens_header_pairs(&d, &t2, collect_pair, &order), TG_OK);
    CHECK_EQ(order.n, 13);
    CHECK(strcmp(order.last, "retry-after") == 0);
    struct pairs bare = {0};
    CHECK_ST(tg_decision_tokens_header_pairs(&d, NULL, collect_pair, &bare), TG_OK);
    CHECK_EQ(bare.n, 7);
    struct pairs ietf = {.want = "\"tokens-minute\";r=2000;"};
    CHECK_ST(tg_decision_tokens_ietf_header_pairs(&d, &t2, T0 + 1, collect_pair, &ietf), TG_OK);
    CHECK_EQ(ietf.n, 2);
    CHECK(ietf.found);
    tg_tokens bad = t2;
    bad.size = 3;
    CHECK_ST(tg_decision_tokens_header_pairs(&d, &bad, collect_pair, &order), TG_E_INVALID);
    CHECK_ST(tg_decision_tokens_header_pairs(&d, &t2, NULL, &order), TG_E_NULL);

    /* its answer: 429, token headers, a body of type "tokens" */
    tg_answer a;
    memset(&a, 0, sizeof a);
    a.size = sizeof a;
    CHECK_ST(tg_answer_for_tokens(TG_OK, &d, &t2, "m", 1, 0, 0, &a), TG_OK);
    CHECK_EQ(a.http_status, 429);
    CHECK_EQ(a.tokens.has_tokens, 1);
    tg_header_field f[TG_ANSWER_HEADERS_MAX];
    char hb[TG_ANSWER_HEADER_BYTES];
    size_t n = 0;
    CHECK_ST(tg_answer_header_fields(&a, f, TG_ANSWER_HEADERS_MAX, hb, sizeof hb, &n), TG_OK);
    int seen = 0;
    for (size_t i = 0; i < n; i++)
        if (f[i].name_len == 28 && memcmp(f[i].name, "x-ratelimit-remaining-tokens", 28) == 0) {
            seen = 1;
            CHECK(f[i].value_len == 4 && memcmp(f[i].value, "2000", 4) == 0);
        }
    CHECK(seen);
    char body[TG_ANSWER_BODY_MAX];
    size_t blen = 0;
    CHECK_ST(tg_answer_body(&a, body, sizeof body, &blen), TG_OK);
    body[blen < sizeof body ? blen : sizeof body - 1] = '\0';
    CHECK_STR_HAS(body, "\"type\":\"tokens\"");
    CHECK_STR_HAS(body, "tokens per minute (TPM)");

    /* a 0.3-sized answer is written up to its size, no further */
    unsigned char old[sizeof(tg_answer)];
    memset(old, 0xAB, sizeof old);
    size_t old_size = offsetof(tg_answer, tokens);
    ((tg_answer *) (void *) old)->size = (uint32_t) old_size;
    CHECK_ST(tg_answer_for_tokens(TG_OK, &d, &t2, "m", 1, 0, 0, (tg_answer *) (void *) old), TG_OK);
    for (size_t i = old_size; i < sizeof old; i++) CHECK_EQ(old[i], 0xAB);

    /* the response: an SSE stream whose last chunk carries usage */
    static const char sse[] =
        "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n"
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":900,\"completion_tokens\":600,"
        "\"total_tokens\":1500}}\n\n"
        "data: [DONE]\n\n";
    static uint64_t mem[4096 / 8];
    REQUIRE(tg_usage_scan_size() <= sizeof mem);
    tg_usage_scan *scan = NULL;
    const char *ct = "text/event-stream; charset=utf-8";
    CHECK_ST(tg_usage_scan_init(mem, sizeof mem, ct, strlen(ct), &scan), TG_OK);
    for (size_t i = 0; i < sizeof sse - 1; i += 7) {
        size_t k = sizeof sse - 1 - i < 7 ? sizeof sse - 1 - i : 7;
        CHECK_ST(tg_usage_scan_feed(scan, (const uint8_t *) sse + i, k), TG_OK);
    }
    tg_usage u = {.size = sizeof u};
    CHECK_ST(tg_usage_scan_finish(scan, 200, 0, &u), TG_OK);
    CHECK_EQ(u.ending, TG_END_USAGE);
    CHECK_EQ(u.total, 1500);
    uint64_t charged = 0;
    CHECK_ST(tg_settle(l, &held, u.ending, u.total, T0 + 2, &charged), TG_OK);
    CHECK_EQ(charged, 1500);

    /* what the next request sees: the usage, not the reservation */
    r.tokens = 0;
    r.cost = 0;
    CHECK_ST(tg_check_tokens(l, &r, T0 + 3, &d, &t), TG_OK);
    CHECK_EQ(t.minute_remaining, 10000 - 1500);

    /* no usage: a cut stream keeps its reservation, a failed response not */
    r.cost = 1;
    r.tokens = 1000;
    CHECK_ST(tg_check_tokens(l, &r, T0 + 4, &d, &t), TG_OK);
    CHECK_ST(tg_usage_scan_init(mem, sizeof mem, ct, strlen(ct), &scan), TG_OK);
    CHECK_ST(tg_usage_scan_feed(scan, (const uint8_t *) sse, 20), TG_OK);
    CHECK_ST(tg_usage_scan_finish(scan, 200, 0, &u), TG_OK);
    CHECK_EQ(u.ending, TG_END_CUT); /* ended before [DONE] */
    CHECK_ST(tg_settle(l, &t.ticket, u.ending, u.total, T0 + 5, &charged), TG_OK);
    CHECK_EQ(charged, 1000);
    CHECK_ST(tg_check_tokens(l, &r, T0 + 6, &d, &t), TG_OK);
    CHECK_EQ(tg_usage_ending(503, 0), TG_END_FAILED);
    CHECK_ST(tg_settle(l, &t.ticket, TG_END_FAILED, 0, T0 + 7, &charged), TG_OK);
    CHECK_EQ(charged, 0);
    CHECK_ST(tg_usage_scan_init(mem, sizeof mem, "text/html", 9, &scan), TG_E_UNSUPPORTED);

    /* bad input */
    tg_ticket zero = {{0, 0}};
    CHECK_ST(tg_settle(l, &zero, TG_END_USAGE, 1, T0, NULL), TG_E_INVALID);
    CHECK_ST(tg_settle(l, &held, 99, 1, T0, NULL), TG_E_INVALID);
    CHECK_ST(tg_settle(NULL, &held, TG_END_USAGE, 1, T0, NULL), TG_E_NULL);
    r.tokens = 10001;
    CHECK_ST(tg_check_tokens(l, &r, T0, &d, &t), TG_E_TOKENS_TOO_LARGE);

    tg_limiter_free(l);
    tg_policy_free(p);
}

static void test_status_str(void) {
    static const tg_status codes[] = {
        TG_OK, TG_E_NULL, TG_E_INVALID, TG_E_ACCOUNT, TG_E_UNKNOWN_MODEL, TG_E_NO_LIMIT,
        TG_E_COST_TOO_LARGE, TG_E_TABLE_FULL, TG_E_BUFFER_TOO_SMALL, TG_E_POLICY, TG_E_IO,
        TG_E_REGION_MAGIC, TG_E_REGION_VERSION, TG_E_REGION_SIZE, TG_E_REGION_CORRUPT,
        TG_E_ALIGNMENT, TG_E_UNSUPPORTED, TG_E_MODEL_TABLE_FULL, TG_E_NOT_JOINED,
        TG_E_NOT_LEASED, TG_E_STORE, TG_PENDING, TG_E_TOKENS_TOO_LARGE,
        TG_E_NO_TOKEN_WINDOWS, TG_E_USAGE, TG_E_PANIC,
    };
    const size_t n = sizeof codes / sizeof codes[0];
    for (size_t i = 0; i < n; i++) {
        const char *s = tg_status_str(codes[i]);
        CHECK(s != NULL);
        if (!s) continue;
        CHECK(s[0] != '\0');
        if (strcmp(s, "unknown status") == 0)
            fprintf(stderr, "  status %d has no text\n", codes[i]);
        CHECK(strcmp(s, "unknown status") != 0);
        for (size_t j = 0; j < i; j++) {
            const char *o = tg_status_str(codes[j]);
            if (o && strcmp(s, o) == 0)
                fprintf(stderr, "  statuses %d and %d share the text \"%s\"\n", codes[j], codes[i], s);
            CHECK(!o || strcmp(s, o) != 0);
        }
    }
    static const tg_status unknown[] = {50, 98, 100, -1, INT32_MAX, INT32_MIN};
    for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
        const char *s = tg_status_str(unknown[i]);
        CHECK(s != NULL && strcmp(s, "unknown status") == 0);
    }
}

static void test_free_null(void) {
    /* documented no-ops; reaching the next line is the check */
    tg_policy_free(NULL);
    tg_limiter_free(NULL);
    CHECK(1);
}

static void test_policy_default_and_limits(void) {
    CHECK_ST(tg_policy_default(NULL), TG_E_NULL);
    tg_policy *p = NULL;
    CHECK_ST(tg_policy_default(&p), TG_OK);
    REQUIRE(p != NULL);

    /* the published Developer table, exactly */
    static const struct { const char *m; uint32_t rpm, rpd; } table[] = {
        {"DeepSeek-V3.1", 30, 15000},
        {"Meta-Llama-3.3-70B-Instruct", 120, 30000},
        {"gpt-oss-120b", 150, 50000},
        {"Qwen3-32B", 30, 6000},
        {"Qwen3-235B", 30, 6000},
        {"DeepSeek-R1-0528", 60, 12000},
        {"DeepSeek-R1-Distill-Llama-70B", 240, 48000},
        {"DeepSeek-V3-0324", 60, 12000},
        {"DeepSeek-V3.1-Terminus", 60, 12000},
        {"DeepSeek-V3.2", 60, 12000},
        {"Llama-4-Maverick-17B-128E-Instruct", 60, 12000},
        {"Meta-Llama-3.1-8B-Instruct", 1440, 288000},
    };
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
        uint32_t rpm = 0, rpd = 0;
        tg_status s = tg_policy_limits(p, TG_TIER_DEVELOPER, table[i].m, strlen(table[i].m), NULL, 0, &rpm, &rpd);
        CHECK_ST(s, TG_OK);
        CHECK_EQ(rpm, table[i].rpm);
        CHECK_EQ(rpd, table[i].rpd);
        /* no invented Free numbers, no enterprise plans in the built-in policy */
        CHECK_ST(tg_policy_limits(p, TG_TIER_FREE, table[i].m, strlen(table[i].m), NULL, 0, &rpm, &rpd),
                 TG_E_NO_LIMIT);
        CHECK_ST(tg_policy_limits(p, TG_TIER_ENTERPRISE, table[i].m, strlen(table[i].m), "acme", 4, &rpm, &rpd),
                 TG_E_NO_LIMIT);
    }
    /* the model list */
    uint32_t count = 0;
    CHECK_ST(tg_policy_model_count(p, &count), TG_OK);
    CHECK_EQ(count, sizeof table / sizeof table[0]);
    CHECK_ST(tg_policy_model_count(NULL, &count), TG_E_NULL);
    CHECK_ST(tg_policy_model_count(p, NULL), TG_E_NULL);
    int found[sizeof table / sizeof table[0]] = {0};
    for (uint32_t i = 0; i < count; i++) {
        const char *name = NULL;
        size_t name_len = 0;
        CHECK_ST(tg_policy_model_name(p, i, &name, &name_len), TG_OK);
        for (size_t k = 0; name && k < sizeof table / sizeof table[0]; k++)
            if (strlen(table[k].m) == name_len && memcmp(table[k].m, name, name_len) == 0) found[k]++;
    }
    for (size_t k = 0; k < sizeof table / sizeof table[0]; k++) CHECK_EQ(found[k], 1);
    {
        const char *name = NULL;
        size_t name_len = 0;
        CHECK_ST(tg_policy_model_name(p, count, &name, &name_len), TG_E_INVALID);
        CHECK_ST(tg_policy_model_name(p, UINT32_MAX, &name, &name_len), TG_E_INVALID);
        CHECK_ST(tg_policy_model_name(NULL, 0, &name, &name_len), TG_E_NULL);
        CHECK_ST(tg_policy_model_name(p, 0, NULL, &name_len), TG_E_NULL);
        CHECK_ST(tg_policy_model_name(p, 0, &name, NULL), TG_E_NULL);
    }

    uint32_t rpm, rpd;
    /* exact bytes: model ids are case-sensitive, lengths are honoured */
    CHECK_ST(tg_policy_limits(p, TG_TIER_DEVELOPER, "deepseek-v3.1", 13, NULL, 0, &rpm, &rpd), TG_E_UNKNOWN_MODEL);
    CHECK_ST(tg_policy_limits(p, TG_TIER_DEVELOPER, "DeepSeek-V3.1X", 13, NULL, 0, &rpm, &rpd), TG_OK);
    CHECK_ST(tg_policy_limits(p, TG_TIER_DEVELOPER, "no-such-model", 13, NULL, 0, &rpm, &rpd), TG_E_UNKNOWN_MODEL);
    CHECK_ST(tg_policy_limits(p, 3, DSV31, strlen(DSV31), NULL, 0, &rpm, &rpd), TG_E_INVALID);
    CHECK_ST(tg_policy_limits(p, UINT32_MAX, DSV31, strlen(DSV31), NULL, 0, &rpm, &rpd), TG_E_INVALID);
    /* NULL for every pointer parameter */
    CHECK_ST(tg_policy_limits(NULL, TG_TIER_DEVELOPER, DSV31, strlen(DSV31), NULL, 0, &rpm, &rpd), TG_E_NULL);
    CHECK_ST(tg_policy_limits(p, TG_TIER_DEVELOPER, NULL, 5, NULL, 0, &rpm, &rpd), TG_E_NULL);
    CHECK_ST(tg_policy_limits(p, TG_TIER_DEVELOPER, DSV31, strlen(DSV31), NULL, 0, NULL, &rpd), TG_E_NULL);
    CHECK_ST(tg_policy_limits(p, TG_TIER_DEVELOPER, DSV31, strlen(DSV31), NULL, 0, &rpm, NULL), TG_E_NULL);
    CHECK_ST(tg_policy_limits(p, TG_TIER_ENTERPRISE, DSV31, strlen(DSV31), NULL, 4, &rpm, &rpd), TG_E_NULL);
    tg_policy_free(p);
}

static const char *POLICY_OK =
    "[models]\n"
    "\"m-small\" = { region = \"EU\" }\n"
    "\"DeepSeek-V3.1\" = { region = \"EU\", developer = \"DeepSeek\" }\n"
    "[tiers.free]\n"
    "\"m-small\" = { rpm = 2, rpd = 3 }\n"
    "[tiers.developer]\n"
    "\"m-small\" = { rpm = 5, rpd = 100 }\n"
    "\"DeepSeek-V3.1\" = { rpm = 40, rpd = 15000 }\n"
    "[tiers.enterprise]\n"
    "\"m-small\" = { rpm = 50, rpd = 1000 }\n"
    "[accounts.\"acme\"]\n"
    "\"m-small\" = { rpm = 70, rpd = 7000 }\n";

static void test_policy_parse_load(void) {
    tg_policy *p = NULL;
    char err[512];

    /* valid text: tiers and an enterprise plan come through */
    err[0] = 'x';
    CHECK_ST(tg_policy_parse(POLICY_OK, strlen(POLICY_OK), &p, err, sizeof err), TG_OK);
    REQUIRE(p != NULL);
    uint32_t rpm = 0, rpd = 0;
    CHECK_ST(tg_policy_limits(p, TG_TIER_FREE, "m-small", 7, NULL, 0, &rpm, &rpd), TG_OK);
    CHECK_EQ(rpm, 2);
    CHECK_EQ(rpd, 3);
    CHECK_ST(tg_policy_limits(p, TG_TIER_ENTERPRISE, "m-small", 7, "acme", 4, &rpm, &rpd), TG_OK);
    CHECK_EQ(rpm, 70);
    CHECK_ST(tg_policy_limits(p, TG_TIER_ENTERPRISE, "m-small", 7, "other", 5, &rpm, &rpd), TG_OK);
    CHECK_EQ(rpm, 50);
    CHECK_ST(tg_policy_limits(p, TG_TIER_FREE, DSV31, strlen(DSV31), NULL, 0, &rpm, &rpd), TG_E_NO_LIMIT);
    tg_policy_free(p);
    p = NULL;

    /* text is pointer + length: a longer buffer with junk after len parses the same */
    {
        size_t n = strlen(POLICY_OK);
        char *buf = malloc(n + 16);
        REQUIRE(buf != NULL);
        memcpy(buf, POLICY_OK, n);
        memcpy(buf + n, "\n[[[ junk !!\n", 14);
        CHECK_ST(tg_policy_parse(buf, n, &p, err, sizeof err), TG_OK);
        tg_policy_free(p);
        p = NULL;
        free(buf);
    }

    /* broken TOML on line 3: TG_E_POLICY, message names the line */
    const char *broken = "[models]\n\"m\" = { region = \"EU\" }\n[tiers.developer\n";
    memset(err, 0, sizeof err);
    CHECK_ST(tg_policy_parse(broken, strlen(broken), &p, err, sizeof err), TG_E_POLICY);
    CHECK(p == NULL);
    CHECK_STR_HAS(err, ":3");
    /* valid TOML, invalid policy on line 4 (rpm 0): file:line: field: reason */
    const char *bad_value = "[models]\n\"m\" = { region = \"EU\" }\n[tiers.developer]\n\"m\" = { rpm = 0, rpd = 5 }\n";
    memset(err, 0, sizeof err);
    CHECK_ST(tg_policy_parse(bad_value, strlen(bad_value), &p, err, sizeof err), TG_E_POLICY);
    CHECK_STR_HAS(err, ":4: tiers.developer.m.rpm: ");
    /* a tiny err buffer is still NUL-terminated inside its capacity */
    memset(err, 'Z', sizeof err);
    CHECK_ST(tg_policy_parse(bad_value, strlen(bad_value), &p, err, 8), TG_E_POLICY);
    CHECK(memchr(err, '\0', 8) != NULL);
    CHECK(err[8] == 'Z');
    /* no err buffer at all is fine */
    CHECK_ST(tg_policy_parse(bad_value, strlen(bad_value), &p, NULL, 0), TG_E_POLICY);
    /* NULLs */
    CHECK_ST(tg_policy_parse(NULL, 10, &p, err, sizeof err), TG_E_NULL);
    CHECK_ST(tg_policy_parse(POLICY_OK, strlen(POLICY_OK), NULL, err, sizeof err), TG_E_NULL);

    /* load: a real file, a missing file, NULLs */
    char path[512];
    snprintf(path, sizeof path, "%s/policy.toml", g_tmpdir);
    REQUIRE(write_file(path, POLICY_OK) == 0);
    CHECK_ST(tg_policy_load(path, &p, err, sizeof err), TG_OK);
    REQUIRE(p != NULL);
    CHECK_ST(tg_policy_limits(p, TG_TIER_DEVELOPER, "m-small", 7, NULL, 0, &rpm, &rpd), TG_OK);
    CHECK_EQ(rpm, 5);
    tg_policy_free(p);
    p = NULL;

    char missing[512];
    snprintf(missing, sizeof missing, "%s/does-not-exist.toml", g_tmpdir);
    memset(err, 0, sizeof err);
    CHECK_ST(tg_policy_load(missing, &p, err, sizeof err), TG_E_IO);
    CHECK(p == NULL);
    CHECK_STR_HAS(err, "does-not-exist.toml");

    /* a broken file: the message starts with the file's path and the line */
    snprintf(path, sizeof path, "%s/broken.toml", g_tmpdir);
    REQUIRE(write_file(path, bad_value) == 0);
    memset(err, 0, sizeof err);
    CHECK_ST(tg_policy_load(path, &p, err, sizeof err), TG_E_POLICY);
    char want[600];
    snprintf(want, sizeof want, "%s:4: ", path);
    CHECK_STR_HAS(err, want);

    CHECK_ST(tg_policy_load(NULL, &p, err, sizeof err), TG_E_NULL);
    CHECK_ST(tg_policy_load(path, NULL, err, sizeof err), TG_E_NULL);
}

static void test_region_sizes(void) {
    CHECK_EQ(tg_region_size(0), 0);
    CHECK_EQ(tg_region_size((1u << 30) + 1), 0);
    CHECK_EQ(tg_region_size(UINT32_MAX), 0);
    size_t s1 = tg_region_size(1), s8 = tg_region_size(8), s1024 = tg_region_size(1024);
    CHECK(s1 > 0 && s8 > s1 && s1024 > s8);
    CHECK_EQ(s8 % TG_REGION_ALIGN, 0);
    CHECK_EQ(tg_region_size(9) - s8, TG_BYTES_PER_SLOT);
    CHECK(tg_region_slots_for(s8) >= 8);
    CHECK(tg_region_slots_for(s1024) >= 1024);
    CHECK_EQ(tg_region_slots_for(0), 0);
    CHECK_EQ(tg_region_slots_for(s1 - 1), 0);
    CHECK_EQ(tg_region_slots_for(s1), 1);
    /* the slot count for a size is the largest that fits */
    uint32_t n = tg_region_slots_for(s1024);
    CHECK(tg_region_size(n) <= s1024);
    CHECK(tg_region_size(n + 1) > s1024);
}

static void test_limiter_new_and_stats(void) {
    tg_policy *p = NULL;
    REQUIRE(tg_policy_default(&p) == TG_OK);
    tg_limiter *l = NULL;
    CHECK_ST(tg_limiter_new(NULL, 16, &l), TG_E_NULL);
    CHECK_ST(tg_limiter_new(p, 16, NULL), TG_E_NULL);
    CHECK_ST(tg_limiter_new(p, 0, &l), TG_E_INVALID);
    CHECK_ST(tg_limiter_new(p, (1u << 30) + 1, &l), TG_E_INVALID);
    CHECK_ST(tg_limiter_new(p, 64, &l), TG_OK);
    /* the limiter keeps its own copy of the policy */
    tg_policy_free(p);
    REQUIRE(l != NULL);

    tg_stats st = {0};
    memset(&st, 0xAB, sizeof st);
    CHECK_ST(tg_limiter_stats(l, T0, &st), TG_OK);
    CHECK(st.slots >= 64);
    CHECK_EQ(st.used, 0);
    CHECK_EQ(st.table_full, 0);
    CHECK_EQ(st.region_bytes, tg_region_size(st.slots));
    CHECK_EQ(st.layout_version, TG_LAYOUT_VERSION);
    CHECK_ST(tg_limiter_stats(NULL, T0, &st), TG_E_NULL);
    CHECK_ST(tg_limiter_stats(l, T0, NULL), TG_E_NULL);

    /* used counts keys with counts for the current day; a peek counts nothing */
    tg_decision d;
    tg_request r = req_of("stats-peek", DSV31, TG_TIER_DEVELOPER, 0);
    CHECK_ST(tg_check(l, &r, T0 + 1000, &d), TG_OK);
    CHECK_ST(tg_limiter_stats(l, T0 + 1000, &st), TG_OK);
    CHECK_EQ(st.used, 0);
    const char *accts[] = {"stats-a", "stats-b", "stats-c"};
    for (int i = 0; i < 3; i++) {
        r = dev_req(accts[i], DSV31);
        CHECK_ST(tg_check(l, &r, T0 + 1000, &d), TG_OK);
    }
    r = dev_req("stats-a", "Qwen3-32B"); /* same account, other model: another key */
    CHECK_ST(tg_check(l, &r, T0 + 1000, &d), TG_OK);
    r = dev_req("stats-a", DSV31); /* an existing key: no new slot */
    CHECK_ST(tg_check(l, &r, T0 + 2000, &d), TG_OK);
    CHECK_ST(tg_limiter_stats(l, T0 + 2000, &st), TG_OK);
    CHECK_EQ(st.used, 4);
    CHECK_ST(tg_limiter_stats(l, T0 + MS_DAY + 5, &st), TG_OK);
    CHECK_EQ(st.used, 0);
    tg_limiter_free(l);
}

static void test_check_arguments(void) {
    tg_policy *p = NULL;
    REQUIRE(tg_policy_default(&p) == TG_OK);
    tg_limiter *l = NULL;
    REQUIRE(tg_limiter_new(p, 256, &l) == TG_OK);
    tg_decision d;
    tg_request r = dev_req("args", DSV31);
    const uint64_t now = T0 + 5000;

    CHECK_ST(tg_check(NULL, &r, now, &d), TG_E_NULL);
    CHECK_ST(tg_check(l, NULL, now, &d), TG_E_NULL);
    CHECK_ST(tg_check(l, &r, now, NULL), TG_E_NULL);
    CHECK_ST(tg_check_now(NULL, &r, &d), TG_E_NULL);
    CHECK_ST(tg_check_now(l, NULL, &d), TG_E_NULL);
    CHECK_ST(tg_check_now(l, &r, NULL), TG_E_NULL);
    r = dev_req("args", DSV31);
    r.account = NULL;
    CHECK_ST(tg_check(l, &r, now, &d), TG_E_NULL);
    r = dev_req("args", DSV31);
    r.model = NULL;
    CHECK_ST(tg_check(l, &r, now, &d), TG_E_NULL);

    /* account length: 1..=TG_ACCOUNT_MAX bytes */
    char acct[TG_ACCOUNT_MAX + 2];
    memset(acct, 'a', sizeof acct);
    acct[sizeof acct - 1] = '\0';
    r = dev_req("args", DSV31);
    r.account_len = 0;
    CHECK_ST(tg_check(l, &r, now, &d), TG_E_ACCOUNT);
    r.account = acct;
    r.account_len = TG_ACCOUNT_MAX + 1; /* 65 */
    CHECK_ST(tg_check(l, &r, now, &d), TG_E_ACCOUNT);
    r.account_len = TG_ACCOUNT_MAX; /* 64: fine */
    CHECK_ST(tg_check(l, &r, now, &d), TG_OK);
    CHECK_EQ(d.allowed, 1);
    /* accounts are bytes, not C strings: an embedded NUL makes a distinct key */
    r = dev_req("args", DSV31);
    r.account = "nul\0a";
    r.account_len = 5;
    CHECK_ST(tg_check(l, &r, now, &d), TG_OK);
    CHECK_EQ(d.minute_remaining, 29);
    r.account_len = 3; /* "nul": another key, fresh */
    CHECK_ST(tg_check(l, &r, now, &d), TG_OK);
    CHECK_EQ(d.minute_remaining, 29);

    /* a failed check leaves *out untouched */
    memset(&d, 0xA5, sizeof d);
    tg_decision sentinel = d;
    r = dev_req("args", "no-such-model");
    CHECK_ST(tg_check(l, &r, now, &d), TG_E_UNKNOWN_MODEL);
    CHECK(memcmp(&d, &sentinel, sizeof d) == 0);

    r = dev_req("args", DSV31);
    r.tier = 3;
    CHECK_ST(tg_check(l, &r, now, &d), TG_E_INVALID);
    r.tier = UINT32_MAX;
    CHECK_ST(tg_check(l, &r, now, &d), TG_E_INVALID);

    r = dev_req("args", "no-such-model");
    CHECK_ST(tg_check(l, &r, now, &d), TG_E_UNKNOWN_MODEL);
    r = dev_req("args", "");
    CHECK_ST(tg_check(l, &r, now, &d), TG_E_UNKNOWN_MODEL);
    char longmodel[TG_MODEL_NAME_MAX + 8];
    memset(longmodel, 'm', sizeof longmodel);
    longmodel[sizeof longmodel - 1] = '\0';
    r = dev_req("args", longmodel);
    CHECK_ST(tg_check(l, &r, now, &d), TG_E_UNKNOWN_MODEL);

    /* Free tier: no built-in numbers; Enterprise: no plan in the built-in policy */
    r = req_of("args", DSV31, TG_TIER_FREE, 1);
    CHECK_ST(tg_check(l, &r, now, &d), TG_E_NO_LIMIT);
    r = req_of("args", DSV31, TG_TIER_ENTERPRISE, 1);
    CHECK_ST(tg_check(l, &r, now, &d), TG_E_NO_LIMIT);

    /* a cost above the limit itself can never be admitted */
    r = req_of("args-cost", DSV31, TG_TIER_DEVELOPER, 31);
    CHECK_ST(tg_check(l, &r, now, &d), TG_E_COST_TOO_LARGE);
    r.cost = UINT32_MAX;
    CHECK_ST(tg_check(l, &r, now, &d), TG_E_COST_TOO_LARGE);
    r.cost = 30; /* exactly the limit: fine */
    CHECK_ST(tg_check(l, &r, now, &d), TG_OK);
    CHECK_EQ(d.allowed, 1);
    CHECK_EQ(d.minute_remaining, 0);
    r = req_of("args-cost2", DSV31, TG_TIER_DEVELOPER, 6);
    r.rpm = 10;
    r.rpd = 5; /* cost within rpm but above rpd */
    CHECK_ST(tg_check(l, &r, now, &d), TG_E_COST_TOO_LARGE);

    /* now beyond what the state can represent */
    r = dev_req("args", DSV31);
    CHECK_ST(tg_check(l, &r, UINT64_MAX, &d), TG_E_INVALID);

    tg_limiter_free(l);
    tg_policy_free(p);
}

static void test_minute_limit(void) {
    tg_policy *p = NULL;
    REQUIRE(tg_policy_default(&p) == TG_OK);
    tg_limiter *l = NULL;
    REQUIRE(tg_limiter_new(p, 256, &l) == TG_OK);
    tg_decision d;
    tg_request r = dev_req("minute", DSV31);
    const uint64_t minute = T0 + 7 * MS_MIN; /* 00:07 */
    const uint64_t mreset = minute / 1000 + 60;
    const uint64_t dreset = T0 / 1000 + 86400;

    for (uint32_t i = 0; i < 30; i++) {
        uint64_t now = minute + 10000 + i * 100; /* 00:07:10.0 .. 00:07:12.9 */
        CHECK_ST(tg_check(l, &r, now, &d), TG_OK);
        CHECK_EQ(d.allowed, 1);
        CHECK_EQ(d.limited_by, TG_LIMIT_NONE);
        CHECK_EQ(d.minute_limit, 30);
        CHECK_EQ(d.minute_remaining, 29 - i);
        CHECK_EQ(d.minute_reset, mreset);
        CHECK_EQ(d.day_limit, 15000);
        CHECK_EQ(d.day_remaining, 14999 - i);
        CHECK_EQ(d.day_reset, dreset);
        CHECK_EQ(d.retry_after, 0);
    }
    /* the 31st in the minute: denied by the minute window */
    const uint64_t now31 = minute + 10500; /* 49.5 s before the reset -> 50 */
    CHECK_ST(tg_check(l, &r, now31, &d), TG_OK);
    CHECK_EQ(d.allowed, 0);
    CHECK_EQ(d.limited_by, TG_LIMIT_MINUTE);
    CHECK_EQ(d.minute_remaining, 0);
    CHECK_EQ(d.minute_reset, mreset);
    CHECK_EQ(d.day_remaining, 14970); /* denied requests charge nothing */
    CHECK_EQ(d.retry_after, 50);
    CHECK_EQ(d.retry_after, secs_until(now31, mreset));
    /* the last millisecond of the minute: still denied, retry in 1 s */
    CHECK_ST(tg_check(l, &r, minute + MS_MIN - 1, &d), TG_OK);
    CHECK_EQ(d.allowed, 0);
    CHECK_EQ(d.retry_after, 1);
    CHECK_EQ(d.day_remaining, 14970);
    /* other keys are not affected */
    tg_request other = dev_req("minute-other", DSV31);
    CHECK_ST(tg_check(l, &other, now31, &d), TG_OK);
    CHECK_EQ(d.allowed, 1);
    CHECK_EQ(d.minute_remaining, 29);
    tg_request other_model = dev_req("minute", "DeepSeek-V3.1-Terminus");
    CHECK_ST(tg_check(l, &other_model, now31, &d), TG_OK);
    CHECK_EQ(d.allowed, 1);
    CHECK_EQ(d.minute_limit, 60);
    /* the next minute starts fresh; the day keeps counting */
    CHECK_ST(tg_check(l, &r, minute + MS_MIN, &d), TG_OK);
    CHECK_EQ(d.allowed, 1);
    CHECK_EQ(d.minute_remaining, 29);
    CHECK_EQ(d.minute_reset, mreset + 60);
    CHECK_EQ(d.day_remaining, 14969);

    tg_limiter_free(l);
    tg_policy_free(p);
}

static void test_peek(void) {
    tg_policy *p = NULL;
    REQUIRE(tg_policy_default(&p) == TG_OK);
    tg_limiter *l = NULL;
    REQUIRE(tg_limiter_new(p, 64, &l) == TG_OK);
    tg_decision d;
    const uint64_t now = T0 + 3 * MS_MIN + 1000;
    tg_request peek = req_of("peek", DSV31, TG_TIER_DEVELOPER, 0);
    tg_request one = dev_req("peek", DSV31);

    /* a peek on an unseen key shows the full quota, twice */
    for (int i = 0; i < 2; i++) {
        CHECK_ST(tg_check(l, &peek, now, &d), TG_OK);
        CHECK_EQ(d.allowed, 1);
        CHECK_EQ(d.minute_limit, 30);
        CHECK_EQ(d.minute_remaining, 30);
        CHECK_EQ(d.day_remaining, 15000);
    }
    for (int i = 0; i < 5; i++) CHECK_ST(tg_check(l, &one, now, &d), TG_OK);
    for (int i = 0; i < 3; i++) {
        CHECK_ST(tg_check(l, &peek, now, &d), TG_OK);
        CHECK_EQ(d.minute_remaining, 25);
        CHECK_EQ(d.day_remaining, 14995);
    }
    /* exhaust the minute: a peek shows the denial without charging */
    for (int i = 0; i < 25; i++) CHECK_ST(tg_check(l, &one, now, &d), TG_OK);
    CHECK_EQ(d.allowed, 1);
    CHECK_EQ(d.minute_remaining, 0);
    CHECK_ST(tg_check(l, &peek, now, &d), TG_OK);
    CHECK_EQ(d.minute_remaining, 0);
    CHECK_EQ(d.day_remaining, 14970);
    CHECK_EQ(d.allowed, 0);
    CHECK_EQ(d.limited_by, TG_LIMIT_MINUTE);
    CHECK_EQ(d.retry_after, secs_until(now, d.minute_reset));
    tg_limiter_free(l);
    tg_policy_free(p);
}

static void test_explicit_limits(void) {
    tg_policy *p = NULL;
    REQUIRE(tg_policy_default(&p) == TG_OK);
    tg_limiter *l = NULL;
    REQUIRE(tg_limiter_new(p, 64, &l) == TG_OK);
    tg_decision d;
    const uint64_t m0 = T0 + 100 * MS_MIN;

    /* rpm 3, rpd 5 override the policy's 30 / 15000 */
    tg_request r = dev_req("explicit", DSV31);
    r.rpm = 3;
    r.rpd = 5;
    for (uint32_t i = 0; i < 3; i++) {
        CHECK_ST(tg_check(l, &r, m0 + i, &d), TG_OK);
        CHECK_EQ(d.allowed, 1);
        CHECK_EQ(d.minute_limit, 3);
        CHECK_EQ(d.day_limit, 5);
        CHECK_EQ(d.minute_remaining, 2 - i);
    }
    CHECK_ST(tg_check(l, &r, m0 + 10, &d), TG_OK);
    CHECK_EQ(d.allowed, 0);
    CHECK_EQ(d.limited_by, TG_LIMIT_MINUTE);
    /* next minute: two more fit the day, then the day blocks */
    for (uint32_t i = 0; i < 2; i++) {
        CHECK_ST(tg_check(l, &r, m0 + MS_MIN + i, &d), TG_OK);
        CHECK_EQ(d.allowed, 1);
    }
    CHECK_EQ(d.day_remaining, 0);
    CHECK_EQ(d.minute_remaining, 1);
    CHECK_ST(tg_check(l, &r, m0 + MS_MIN + 5, &d), TG_OK);
    CHECK_EQ(d.allowed, 0);
    CHECK_EQ(d.limited_by, TG_LIMIT_DAY);
    CHECK_EQ(d.retry_after, secs_until(m0 + MS_MIN + 5, d.day_reset));

    /* only rpm explicit: rpd from the policy */
    r = dev_req("explicit-rpm", DSV31);
    r.rpm = 7;
    CHECK_ST(tg_check(l, &r, m0, &d), TG_OK);
    CHECK_EQ(d.minute_limit, 7);
    CHECK_EQ(d.day_limit, 15000);
    /* only rpd explicit: rpm from the policy */
    r = dev_req("explicit-rpd", DSV31);
    r.rpd = 99;
    CHECK_ST(tg_check(l, &r, m0, &d), TG_OK);
    CHECK_EQ(d.minute_limit, 30);
    CHECK_EQ(d.day_limit, 99);
    /* both explicit: the Free tier has numbers now */
    r = req_of("explicit-free", DSV31, TG_TIER_FREE, 1);
    r.rpm = 2;
    r.rpd = 4;
    CHECK_ST(tg_check(l, &r, m0, &d), TG_OK);
    CHECK_EQ(d.allowed, 1);
    CHECK_EQ(d.minute_limit, 2);
    /* one explicit, the other missing from the policy: still no limit */
    r = req_of("explicit-free", DSV31, TG_TIER_FREE, 1);
    r.rpm = 2;
    CHECK_ST(tg_check(l, &r, m0, &d), TG_E_NO_LIMIT);

    /* all or nothing with cost > 1: rpm 10, rpd 15 */
    r = dev_req("explicit-cost", DSV31);
    r.rpm = 10;
    r.rpd = 15;
    r.cost = 10;
    CHECK_ST(tg_check(l, &r, m0, &d), TG_OK);
    CHECK_EQ(d.allowed, 1);
    CHECK_EQ(d.day_remaining, 5);
    r.cost = 6; /* next minute: the minute has 10, the day only 5 */
    CHECK_ST(tg_check(l, &r, m0 + MS_MIN, &d), TG_OK);
    CHECK_EQ(d.allowed, 0);
    CHECK_EQ(d.limited_by, TG_LIMIT_DAY);
    r.cost = 0; /* the refused 6 were charged to neither window */
    CHECK_ST(tg_check(l, &r, m0 + MS_MIN, &d), TG_OK);
    CHECK_EQ(d.minute_remaining, 10);
    CHECK_EQ(d.day_remaining, 5);
    r.cost = 5;
    CHECK_ST(tg_check(l, &r, m0 + MS_MIN, &d), TG_OK);
    CHECK_EQ(d.allowed, 1);
    CHECK_EQ(d.minute_remaining, 5);
    CHECK_EQ(d.day_remaining, 0);

    tg_limiter_free(l);
    tg_policy_free(p);
}

static void test_day_limit(void) {
    tg_policy *p = NULL;
    REQUIRE(tg_policy_default(&p) == TG_OK);
    tg_limiter *l = NULL;
    REQUIRE(tg_limiter_new(p, 64, &l) == TG_OK);
    tg_decision d;
    tg_request r = dev_req("day", DSV31);
    const uint64_t day = T0 + 3 * MS_DAY;
    const uint64_t dreset = day / 1000 + 86400;

    /* 30 a minute for 500 minutes is the whole 15000 */
    uint32_t admitted = 0, wrong = 0;
    for (uint64_t m = 0; m < 500; m++) {
        for (uint32_t i = 0; i < 30; i++) {
            uint64_t now = day + m * MS_MIN + 1000 + i * 1000;
            if (tg_check(l, &r, now, &d) != TG_OK || !d.allowed) {
                wrong++;
                continue;
            }
            admitted++;
            if (d.day_remaining != 15000 - admitted || d.minute_remaining != 29 - i ||
                d.day_reset != dreset)
                wrong++;
        }
    }
    CHECK_EQ(admitted, 15000);
    CHECK_EQ(wrong, 0);
    /* minute 499 is full and the day is full: DAY wins */
    uint64_t now = day + 499 * MS_MIN + 59000;
    CHECK_ST(tg_check(l, &r, now, &d), TG_OK);
    CHECK_EQ(d.allowed, 0);
    CHECK_EQ(d.limited_by, TG_LIMIT_DAY);
    CHECK_EQ(d.day_remaining, 0);
    CHECK_EQ(d.retry_after, secs_until(now, dreset));
    /* a fresh minute does not help */
    now = day + 500 * MS_MIN + 30500;
    CHECK_ST(tg_check(l, &r, now, &d), TG_OK);
    CHECK_EQ(d.allowed, 0);
    CHECK_EQ(d.limited_by, TG_LIMIT_DAY);
    CHECK_EQ(d.minute_remaining, 30);
    CHECK_EQ(d.retry_after, secs_until(now, dreset));
    CHECK_EQ(d.retry_after, 86400 - 500 * 60 - 30);
    /* the last minute of the day */
    now = day + MS_DAY - 1;
    CHECK_ST(tg_check(l, &r, now, &d), TG_OK);
    CHECK_EQ(d.allowed, 0);
    CHECK_EQ(d.retry_after, 1);
    /* the next UTC day starts over */
    now = day + MS_DAY;
    CHECK_ST(tg_check(l, &r, now, &d), TG_OK);
    CHECK_EQ(d.allowed, 1);
    CHECK_EQ(d.day_remaining, 14999);
    CHECK_EQ(d.day_reset, dreset + 86400);
    tg_limiter_free(l);
    tg_policy_free(p);
}

/* admitted by this call? (any error status counts as not admitted) */
static int admitted(tg_limiter *l, const tg_request *r, uint64_t now) {
    tg_decision d;
    return tg_check(l, r, now, &d) == TG_OK && d.allowed;
}

static uint64_t clock_faults(const tg_limiter *l) {
    tg_stats st = {.size = sizeof st};
    return tg_limiter_stats(l, T0, &st) == TG_OK ? st.clock_faults : UINT64_MAX;
}

static void test_clock_backwards(void) {
    tg_policy *p = NULL;
    REQUIRE(tg_policy_default(&p) == TG_OK);
    tg_limiter *l = NULL;
    REQUIRE(tg_limiter_new(p, 64, &l) == TG_OK);
    tg_decision d;
    const uint64_t m = T0 + 42 * MS_MIN;

    /* minute window: use all 5 in minute m+1, then step back */
    tg_request r = dev_req("backwards", DSV31);
    r.rpm = 5;
    r.rpd = 1000;
    for (int i = 0; i < 5; i++) CHECK(admitted(l, &r, m + MS_MIN + 1000));
    /* within the clock-fault bound (60 s): nothing is given back */
    CHECK(!admitted(l, &r, m + 30000));
    CHECK(!admitted(l, &r, m));
    CHECK(!admitted(l, &r, m + MS_MIN + 500)); /* earlier within the same minute */
    CHECK_ST(tg_check(l, &r, m + MS_MIN + 2000, &d), TG_OK);
    CHECK_EQ(d.allowed, 0);
    CHECK_EQ(d.minute_remaining, 0);
    CHECK_EQ(d.day_remaining, 995);
    CHECK_EQ(clock_faults(l), 0);
    /* 43 minutes back is a clock fault: the 5 count in that minute now,
       so the key is refused there too, until that minute ends, not for 43 */
    CHECK_ST(tg_check(l, &r, T0, &d), TG_OK);
    CHECK_EQ(d.allowed, 0);
    CHECK_EQ(d.minute_remaining, 0);
    CHECK_EQ(d.minute_reset, T0 / 1000 + 60);
    CHECK_EQ(clock_faults(l), 1);
    CHECK(admitted(l, &r, T0 + MS_MIN));

    /* day window: use the whole day on day+1, then step back */
    tg_request rd = dev_req("backwards-day", DSV31);
    rd.rpm = 10;
    rd.rpd = 10;
    const uint64_t next_day = T0 + MS_DAY + 5 * MS_MIN;
    for (int i = 0; i < 10; i++) CHECK(admitted(l, &rd, next_day));
    CHECK(!admitted(l, &rd, next_day - 30000));
    /* past the bound, across midnight: refused all the same (the day's 10
       are carried into the earlier day), and once back on day+1 at most
       that one day's quota has been given back */
    uint32_t given_back = 0;
    for (uint64_t k = 1; k <= 30; k++) given_back += (uint32_t)admitted(l, &rd, next_day - k * 7 * MS_MIN);
    CHECK_EQ(given_back, 0);
    for (int i = 0; i < 10; i++) CHECK(admitted(l, &rd, next_day + 1000));
    CHECK_ST(tg_check(l, &rd, next_day + 1000, &d), TG_OK);
    CHECK_EQ(d.allowed, 0);
    CHECK_EQ(d.limited_by, TG_LIMIT_DAY);
    CHECK_EQ(d.day_remaining, 0);

    /* the bound is settable; NULL is a status */
    CHECK_ST(tg_limiter_set_max_skew(l, 86401), TG_E_INVALID);
    CHECK_ST(tg_limiter_set_max_skew(NULL, 60), TG_E_NULL);
    CHECK_ST(tg_limiter_set_max_skew(l, 3600), TG_OK);
    tg_limiter_free(l);
    tg_policy_free(p);
}

static void test_table_full(void) {
    tg_policy *p = NULL;
    REQUIRE(tg_policy_default(&p) == TG_OK);

    /* tiny caller-memory region */
    const size_t len = tg_region_size(4);
    REQUIRE(len > 0);
    void *mem = aligned_region(len);
    REQUIRE(mem != NULL);
    tg_limiter *l = NULL;
    CHECK_ST(tg_limiter_init_in(p, mem, len, &l), TG_OK);
    if (!l) {
        free(mem);
        tg_policy_free(p);
        return;
    }
    tg_stats st = {0};
    CHECK_ST(tg_limiter_stats(l, T0, &st), TG_OK);
    const uint32_t slots = st.slots;
    CHECK_EQ(slots, tg_region_slots_for(len));
    CHECK(slots >= 4);

    const uint64_t now = T0 + 9 * MS_MIN;
    uint32_t ok = 0, full = 0, other = 0;
    tg_decision d;
    char acct[32];
    for (uint32_t i = 0; i < slots + 12; i++) {
        snprintf(acct, sizeof acct, "full-%u", i);
        tg_request r = dev_req(acct, DSV31);
        tg_status s = tg_check(l, &r, now, &d);
        if (s == TG_OK && d.allowed) ok++;
        else if (s == TG_E_TABLE_FULL) full++;
        else other++;
    }
    CHECK_EQ(ok, slots); /* every slot usable */
    CHECK_EQ(full, 12);
    CHECK_EQ(other, 0);
    CHECK_ST(tg_limiter_stats(l, now, &st), TG_OK);
    CHECK_EQ(st.table_full, full);
    CHECK_EQ(st.used, slots);
    /* keys that hold a slot keep working while the table is full */
    tg_request first = dev_req("full-0", DSV31);
    CHECK_ST(tg_check(l, &first, now, &d), TG_OK);
    CHECK_EQ(d.minute_remaining, 28);
    /* a new key on the same account but another model needs a slot too */
    tg_request other_model = dev_req("full-0", "Qwen3-32B");
    CHECK_ST(tg_check(l, &other_model, now, &d), TG_E_TABLE_FULL);
    CHECK_ST(tg_limiter_stats(l, now, &st), TG_OK);
    CHECK_EQ(st.table_full, full + 1);
    tg_limiter_free(l);
    free(mem);

    /* the same through tg_limiter_new with 2 slots */
    REQUIRE(tg_limiter_new(p, 2, &l) == TG_OK);
    CHECK_ST(tg_limiter_stats(l, now, &st), TG_OK);
    uint32_t n = st.slots, full2 = 0;
    for (uint32_t i = 0; i < n + 3; i++) {
        snprintf(acct, sizeof acct, "full2-%u", i);
        tg_request r = dev_req(acct, DSV31);
        if (tg_check(l, &r, now, &d) == TG_E_TABLE_FULL) full2++;
    }
    CHECK_EQ(full2, 3);
    CHECK_ST(tg_limiter_stats(l, now, &st), TG_OK);
    CHECK_EQ(st.table_full, 3);
    tg_limiter_free(l);
    tg_policy_free(p);
}

/* Byte offset of the layout version in the region header: the u32 right
 * after the 8-byte magic (src/region.rs). */
#ifndef TG_TEST_VERSION_OFFSET
#define TG_TEST_VERSION_OFFSET 8
#endif

static void test_regions(void) {
    tg_policy *p = NULL;
    REQUIRE(tg_policy_default(&p) == TG_OK);
    const size_t len = tg_region_size(16);
    unsigned char *mem = aligned_region(len);
    REQUIRE(mem != NULL);
    tg_limiter *l = NULL, *l2 = NULL;

    /* NULLs, misalignment, too small */
    CHECK_ST(tg_limiter_init_in(NULL, mem, len, &l), TG_E_NULL);
    CHECK_ST(tg_limiter_init_in(p, NULL, len, &l), TG_E_NULL);
    CHECK_ST(tg_limiter_init_in(p, mem, len, NULL), TG_E_NULL);
    CHECK_ST(tg_limiter_init_in(p, mem + 8, len - 64, &l), TG_E_ALIGNMENT);
    CHECK_ST(tg_limiter_init_in(p, mem, 16, &l), TG_E_REGION_SIZE);
    CHECK_ST(tg_limiter_init_in(p, mem, 0, &l), TG_E_REGION_SIZE);
    CHECK_ST(tg_limiter_attach(NULL, mem, len, &l), TG_E_NULL);
    CHECK_ST(tg_limiter_attach(p, NULL, len, &l), TG_E_NULL);
    CHECK_ST(tg_limiter_attach(p, mem, len, NULL), TG_E_NULL);

    /* never formatted: not a region */
    CHECK_ST(tg_limiter_attach(p, mem, len, &l), TG_E_REGION_MAGIC);

    /* format, then attach a second limiter to the same bytes */
    CHECK_ST(tg_limiter_init_in(p, mem, len, &l), TG_OK);
    REQUIRE(l != NULL);
    CHECK_ST(tg_limiter_attach(p, mem, len, &l2), TG_OK);
    if (!l2) {
        tg_limiter_free(l);
        free(mem);
        tg_policy_free(p);
        return;
    }
    tg_decision d;
    const uint64_t now = T0 + 11 * MS_MIN;
    tg_request r = dev_req("shared", DSV31);
    CHECK_ST(tg_check(l, &r, now, &d), TG_OK);
    CHECK_EQ(d.minute_remaining, 29);
    CHECK_ST(tg_check(l2, &r, now, &d), TG_OK);
    CHECK_EQ(d.minute_remaining, 28);
    CHECK_ST(tg_check(l, &r, now, &d), TG_OK);
    CHECK_EQ(d.minute_remaining, 27);
    tg_stats s1 = {0}, s2 = {0};
    CHECK_ST(tg_limiter_stats(l, now, &s1), TG_OK);
    CHECK_ST(tg_limiter_stats(l2, now, &s2), TG_OK);
    CHECK_EQ(s1.used, 1);
    CHECK_EQ(s2.used, 1);
    CHECK_EQ(s1.slots, s2.slots);
    CHECK_EQ(s1.region_bytes, s2.region_bytes);
    tg_limiter_free(l2);
    l2 = NULL;
    tg_limiter_free(l); /* must not free caller memory */
    l = NULL;
    /* the memory still holds the counters: attach again */
    CHECK_ST(tg_limiter_attach(p, mem, len, &l), TG_OK);
    if (l) {
        CHECK_ST(tg_check(l, &r, now, &d), TG_OK);
        CHECK_EQ(d.minute_remaining, 26);
        tg_limiter_free(l);
        l = NULL;
    }

    /* wrong size, misaligned pointer */
    CHECK_ST(tg_limiter_attach(p, mem, len - 64, &l), TG_E_REGION_SIZE);
    CHECK_ST(tg_limiter_attach(p, mem, len - 1, &l), TG_E_REGION_SIZE);
    CHECK_ST(tg_limiter_attach(p, mem, 8, &l), TG_E_REGION_SIZE);
    CHECK_ST(tg_limiter_attach(p, mem + 8, len, &l), TG_E_ALIGNMENT);
    CHECK(l == NULL);

    /* wrong magic */
    unsigned char saved = mem[0];
    mem[0] ^= 0x5A;
    CHECK_ST(tg_limiter_attach(p, mem, len, &l), TG_E_REGION_MAGIC);
    mem[0] = saved;

    /* wrong layout version */
    uint32_t ver;
    memcpy(&ver, mem + TG_TEST_VERSION_OFFSET, sizeof ver);
    CHECK_EQ(ver, TG_LAYOUT_VERSION);
    uint32_t bad = ver + 1;
    memcpy(mem + TG_TEST_VERSION_OFFSET, &bad, sizeof bad);
    CHECK_ST(tg_limiter_attach(p, mem, len, &l), TG_E_REGION_VERSION);
    memcpy(mem + TG_TEST_VERSION_OFFSET, &ver, sizeof ver);

    /* header fields covered by the checksum (the slot count, after the
     * version and the header size): corrupt */
    mem[TG_TEST_VERSION_OFFSET + 8] ^= 1;
    CHECK_ST(tg_limiter_attach(p, mem, len, &l), TG_E_REGION_CORRUPT);
    mem[TG_TEST_VERSION_OFFSET + 8] ^= 1;

    /* restored: attaches again, counters intact */
    CHECK_ST(tg_limiter_attach(p, mem, len, &l), TG_OK);
    if (l) {
        r.cost = 0;
        CHECK_ST(tg_check(l, &r, now, &d), TG_OK);
        CHECK_EQ(d.minute_remaining, 26);
        tg_limiter_free(l);
        l = NULL;
    }
    /* re-formatting with init_in starts over */
    CHECK_ST(tg_limiter_init_in(p, mem, len, &l), TG_OK);
    if (l) {
        r.cost = 0;
        CHECK_ST(tg_check(l, &r, now, &d), TG_OK);
        CHECK_EQ(d.minute_remaining, 30);
        tg_limiter_free(l);
    }
    free(mem);
    tg_policy_free(p);
}

static void test_open_file(void) {
    tg_policy *p = NULL;
    REQUIRE(tg_policy_default(&p) == TG_OK);
    char path[512];
    snprintf(path, sizeof path, "%s/limits.region", g_tmpdir);
    tg_limiter *l = NULL, *l2 = NULL;
    tg_decision d;
    const uint64_t now = T0 + 13 * MS_MIN;
    tg_request r = dev_req("file", DSV31);

    CHECK_ST(tg_limiter_open(NULL, path, 32, TG_OPEN_CREATE, &l), TG_E_NULL);
    CHECK_ST(tg_limiter_open(p, NULL, 32, TG_OPEN_CREATE, &l), TG_E_NULL);
    CHECK_ST(tg_limiter_open(p, path, 32, TG_OPEN_CREATE, NULL), TG_E_NULL);
    /* missing file without CREATE */
    CHECK_ST(tg_limiter_open(p, path, 32, 0, &l), TG_E_IO);
    CHECK(access(path, F_OK) != 0);
    /* a directory that does not exist */
    char nodir[600];
    snprintf(nodir, sizeof nodir, "%s/no/such/dir/x.region", g_tmpdir);
    CHECK_ST(tg_limiter_open(p, nodir, 32, TG_OPEN_CREATE, &l), TG_E_IO);

    /* create */
    CHECK_ST(tg_limiter_open(p, path, 32, TG_OPEN_CREATE, &l), TG_OK);
    REQUIRE(l != NULL);
    struct stat sb;
    CHECK(stat(path, &sb) == 0 && (uint64_t)sb.st_size >= tg_region_size(32));
    for (int i = 0; i < 3; i++) CHECK_ST(tg_check(l, &r, now, &d), TG_OK);
    CHECK_EQ(d.minute_remaining, 27);
    /* a second limiter on the same file shares the counters */
    CHECK_ST(tg_limiter_open(p, path, 32, 0, &l2), TG_OK);
    if (l2) {
        CHECK_ST(tg_check(l2, &r, now, &d), TG_OK);
        CHECK_EQ(d.minute_remaining, 26);
        tg_limiter_free(l2);
        l2 = NULL;
    }
    /* read-only: sees the live counts, writes nothing, never creates */
    CHECK_ST(tg_limiter_open(p, path, 0, TG_OPEN_READ_ONLY | TG_OPEN_CREATE, &l2), TG_E_INVALID);
    CHECK_ST(tg_limiter_open(p, path, 32, TG_OPEN_READ_ONLY, &l2), TG_E_INVALID);
    CHECK_ST(tg_limiter_open(p, nodir, 0, TG_OPEN_READ_ONLY, &l2), TG_E_IO);
    CHECK_ST(tg_limiter_open(p, path, 0, TG_OPEN_READ_ONLY, &l2), TG_OK);
    if (l2) {
        CHECK_ST(tg_check(l2, &r, now, &d), TG_OK); /* lands in a private copy */
        CHECK_EQ(d.minute_remaining, 25);
        tg_limiter_free(l2);
        l2 = NULL;
    }
    r.cost = 0;
    CHECK_ST(tg_check(l, &r, now, &d), TG_OK);
    CHECK_EQ(d.minute_remaining, 26);
    r.cost = 1;
    tg_limiter_free(l);
    l = NULL;

    /* reopen: counters kept (CREATE on an existing file must not re-format) */
    CHECK_ST(tg_limiter_open(p, path, 32, TG_OPEN_CREATE, &l), TG_OK);
    if (l) {
        r.cost = 0;
        CHECK_ST(tg_check(l, &r, now, &d), TG_OK);
        CHECK_EQ(d.minute_remaining, 26);
        tg_stats st = {0};
        CHECK_ST(tg_limiter_stats(l, now, &st), TG_OK);
        CHECK_EQ(st.used, 1);
        CHECK(st.slots >= 32);
        tg_limiter_free(l);
        l = NULL;
    }
    CHECK_ST(tg_limiter_open(p, path, 32, 0, &l), TG_OK);
    if (l) {
        r.cost = 0;
        CHECK_ST(tg_check(l, &r, now, &d), TG_OK);
        CHECK_EQ(d.minute_remaining, 26);
        tg_limiter_free(l);
        l = NULL;
    }

    /* slots 0 takes the file as it is; another count is refused */
    CHECK_ST(tg_limiter_open(p, path, 0, 0, &l), TG_OK);
    if (l) {
        tg_stats st = {0};
        CHECK_ST(tg_limiter_stats(l, now, &st), TG_OK);
        CHECK_EQ(st.slots, 32);
        tg_limiter_free(l);
        l = NULL;
    }
    CHECK_ST(tg_limiter_open(p, path, 33, 0, &l), TG_E_REGION_SIZE);
    CHECK_ST(tg_limiter_open(p, path, 33, TG_OPEN_CREATE, &l), TG_E_REGION_SIZE);
    CHECK(l == NULL);
    /* unknown flags; creating needs a slot count */
    CHECK_ST(tg_limiter_open(p, path, 32, 0x80, &l), TG_E_INVALID);
    char fresh[600];
    snprintf(fresh, sizeof fresh, "%s/fresh.region", g_tmpdir);
    CHECK_ST(tg_limiter_open(p, fresh, 0, TG_OPEN_CREATE, &l), TG_E_INVALID);
    CHECK(access(fresh, F_OK) != 0);
    /* a truncated region file */
    {
        char trunc[600];
        snprintf(trunc, sizeof trunc, "%s/trunc.region", g_tmpdir);
        FILE *in = fopen(path, "rb"), *outf = fopen(trunc, "wb");
        REQUIRE(in != NULL && outf != NULL);
        static char chunk[1 << 16];
        size_t want = tg_region_size(32) - 500; /* the header and some, not the whole */
        REQUIRE(want < sizeof chunk);
        size_t got = fread(chunk, 1, want, in);
        CHECK_EQ(got, want);
        fwrite(chunk, 1, got, outf);
        fclose(in);
        fclose(outf);
        CHECK_ST(tg_limiter_open(p, trunc, 0, 0, &l), TG_E_REGION_SIZE);
        CHECK(l == NULL);
        unlink(trunc);
    }

    /* a file that is not a region */
    char junk[600];
    snprintf(junk, sizeof junk, "%s/junk.region", g_tmpdir);
    {
        char buf[8192];
        memset(buf, 'j', sizeof buf - 1);
        buf[sizeof buf - 1] = '\0';
        REQUIRE(write_file(junk, buf) == 0);
    }
    tg_status js = tg_limiter_open(p, junk, 32, 0, &l);
    CHECK(js == TG_E_REGION_MAGIC || js == TG_E_REGION_SIZE);
    if (js == TG_OK) tg_limiter_free(l);
    l = NULL;
    unlink(junk);
    unlink(path);
    tg_policy_free(p);
}

/* Processes sharing one file: the total admitted is exactly the limit. */
static void test_open_processes(void) {
    tg_policy *p = NULL;
    REQUIRE(tg_policy_default(&p) == TG_OK);
    char path[512];
    snprintf(path, sizeof path, "%s/procs.region", g_tmpdir);
    tg_limiter *l = NULL;
    tg_status s = tg_limiter_open(p, path, 64, TG_OPEN_CREATE, &l);
    CHECK_ST(s, TG_OK);
    if (s != TG_OK) {
        tg_policy_free(p);
        return;
    }
    tg_limiter_free(l);
    l = NULL;

    enum { PROCS = 3, TRIES = 100, LIMIT = 150 };
    const uint64_t now = T0 + 17 * MS_MIN;
    pid_t pids[PROCS];
    for (int i = 0; i < PROCS; i++) {
        pids[i] = fork();
        if (pids[i] == 0) {
            /* child: its own mapping of the file; exit code = number admitted */
            tg_limiter *cl = NULL;
            if (tg_limiter_open(p, path, 64, 0, &cl) != TG_OK) _exit(255);
            tg_request r = dev_req("procs", DSV31);
            r.rpm = LIMIT;
            r.rpd = LIMIT;
            int n = 0;
            for (int k = 0; k < TRIES; k++) n += admitted(cl, &r, now);
            tg_limiter_free(cl);
            _exit(n);
        }
    }
    int total = 0, bad = 0;
    for (int i = 0; i < PROCS; i++) {
        int status = 0;
        if (pids[i] < 0 || waitpid(pids[i], &status, 0) != pids[i] || !WIFEXITED(status) ||
            WEXITSTATUS(status) == 255)
            bad++;
        else
            total += WEXITSTATUS(status);
    }
    CHECK_EQ(bad, 0);
    CHECK_EQ(total, LIMIT);
    unlink(path);
    tg_policy_free(p);
}

/* Threads on one limiter: exactly the limit is admitted. */
struct thread_arg {
    tg_limiter *l;
    int admitted;
};

static void *hammer(void *vp) {
    struct thread_arg *a = vp;
    tg_request r = dev_req("threads", "Meta-Llama-3.1-8B-Instruct"); /* 1440 RPM */
    for (int k = 0; k < 1000; k++) a->admitted += admitted(a->l, &r, T0 + 19 * MS_MIN + (uint64_t)k);
    return NULL;
}

static void test_threads(void) {
    tg_policy *p = NULL;
    REQUIRE(tg_policy_default(&p) == TG_OK);
    tg_limiter *l = NULL;
    REQUIRE(tg_limiter_new(p, 64, &l) == TG_OK);
    enum { N = 4 };
    pthread_t th[N];
    struct thread_arg args[N];
    int started = 0;
    for (int i = 0; i < N; i++) {
        args[i].l = l;
        args[i].admitted = 0;
        if (pthread_create(&th[i], NULL, hammer, &args[i]) == 0) started++;
        else break;
    }
    int total = 0;
    for (int i = 0; i < started; i++) {
        pthread_join(th[i], NULL);
        total += args[i].admitted;
    }
    CHECK_EQ(started, N);
    CHECK_EQ(total, 1440); /* 4000 tries, exactly the RPM admitted */
    tg_limiter_free(l);
    tg_policy_free(p);
}

static void test_set_policy(void) {
    tg_policy *p = NULL, *p2 = NULL;
    REQUIRE(tg_policy_default(&p) == TG_OK);
    char err[256];
    REQUIRE(tg_policy_parse(POLICY_OK, strlen(POLICY_OK), &p2, err, sizeof err) == TG_OK);
    tg_limiter *l = NULL;
    REQUIRE(tg_limiter_new(p, 64, &l) == TG_OK);
    tg_decision d;
    const uint64_t now = T0 + 21 * MS_MIN;
    tg_request r = dev_req("setpol", DSV31);
    for (int i = 0; i < 3; i++) CHECK_ST(tg_check(l, &r, now, &d), TG_OK);
    CHECK_EQ(d.minute_remaining, 27);
    tg_request small = dev_req("setpol", "m-small");
    CHECK_ST(tg_check(l, &small, now, &d), TG_E_UNKNOWN_MODEL);

    CHECK_ST(tg_limiter_set_policy(NULL, p2), TG_E_NULL);
    CHECK_ST(tg_limiter_set_policy(l, NULL), TG_E_NULL);
    CHECK_ST(tg_limiter_set_policy(l, p2), TG_OK);
    tg_policy_free(p2); /* copied: freeing it must not matter */
    CHECK_ST(tg_check(l, &r, now, &d), TG_OK);
    CHECK_EQ(d.minute_limit, 40);
    CHECK_EQ(d.minute_remaining, 36); /* counters kept: 40 - 4 */
    CHECK_ST(tg_check(l, &small, now, &d), TG_OK);
    CHECK_EQ(d.minute_limit, 5);
    tg_request gone = dev_req("setpol", "Qwen3-32B"); /* not in the new policy */
    CHECK_ST(tg_check(l, &gone, now, &d), TG_E_UNKNOWN_MODEL);
    tg_request free_small = req_of("setpol-free", "m-small", TG_TIER_FREE, 1);
    CHECK_ST(tg_check(l, &free_small, now, &d), TG_OK);
    CHECK_EQ(d.minute_limit, 2);
    tg_request ent = req_of("acme", "m-small", TG_TIER_ENTERPRISE, 1);
    CHECK_ST(tg_check(l, &ent, now, &d), TG_OK);
    CHECK_EQ(d.minute_limit, 70);
    CHECK_EQ(d.day_limit, 7000);
    /* and back: counters still kept */
    CHECK_ST(tg_limiter_set_policy(l, p), TG_OK);
    CHECK_ST(tg_check(l, &r, now, &d), TG_OK);
    CHECK_EQ(d.minute_limit, 30);
    CHECK_EQ(d.minute_remaining, 25);
    tg_limiter_free(l);
    tg_policy_free(p);
}

/* A policy text naming n models "<prefix>-0" .. "<prefix>-(n-1)". */
static char *many_models(const char *prefix, int n) {
    size_t cap = 64 + (size_t)n * 64;
    char *t = malloc(cap);
    if (!t) return NULL;
    size_t len = (size_t)snprintf(t, cap, "[models]\n");
    for (int i = 0; i < n; i++) len += (size_t)snprintf(t + len, cap - len, "\"%s-%d\" = { region = \"EU\" }\n", prefix, i);
    return t;
}

/* The region remembers every model name it has seen (256 at most, so keys
 * keep their slots across policy changes); going past that is refused. */
static void test_model_table_full(void) {
    char *ta = many_models("a", 200), *tb = many_models("b", 200);
    REQUIRE(ta != NULL && tb != NULL);
    tg_policy *pa = NULL, *pb = NULL;
    char err[256];
    CHECK_ST(tg_policy_parse(ta, strlen(ta), &pa, err, sizeof err), TG_OK);
    CHECK_ST(tg_policy_parse(tb, strlen(tb), &pb, err, sizeof err), TG_OK);
    free(ta);
    free(tb);
    if (!pa || !pb) {
        tg_policy_free(pa);
        tg_policy_free(pb);
        return;
    }
    uint32_t count = 0;
    CHECK_ST(tg_policy_model_count(pa, &count), TG_OK);
    CHECK_EQ(count, 200);

    const size_t len = tg_region_size(16);
    void *mem = aligned_region(len);
    REQUIRE(mem != NULL);
    tg_limiter *l = NULL, *l2 = NULL;
    CHECK_ST(tg_limiter_init_in(pa, mem, len, &l), TG_OK);
    if (l) {
        CHECK_ST(tg_limiter_set_policy(l, pb), TG_E_MODEL_TABLE_FULL);
        CHECK_ST(tg_limiter_attach(pb, mem, len, &l2), TG_E_MODEL_TABLE_FULL);
        CHECK(l2 == NULL);
        /* the old policy stays in force */
        tg_request r = dev_req("mtf", "a-7");
        r.rpm = 3;
        r.rpd = 9;
        tg_decision d;
        CHECK_ST(tg_check(l, &r, T0 + 1000, &d), TG_OK);
        CHECK_EQ(d.minute_limit, 3);
        tg_request rb = dev_req("mtf", "b-7");
        rb.rpm = 3;
        rb.rpd = 9;
        CHECK_ST(tg_check(l, &rb, T0 + 1000, &d), TG_E_UNKNOWN_MODEL);
        tg_limiter_free(l);
    }
    /* a heap limiter of its own is fine with either */
    CHECK_ST(tg_limiter_new(pb, 8, &l), TG_OK);
    tg_limiter_free(l);
    free(mem);
    tg_policy_free(pa);
    tg_policy_free(pb);
}

static void test_check_now(void) {
    tg_policy *p = NULL;
    REQUIRE(tg_policy_default(&p) == TG_OK);
    tg_limiter *l = NULL;
    REQUIRE(tg_limiter_new(p, 16, &l) == TG_OK);
    uint64_t before = (uint64_t)time(NULL) * 1000;
    uint64_t ms = tg_now_ms();
    uint64_t after = ((uint64_t)time(NULL) + 1) * 1000;
    CHECK(ms + 1000 >= before && ms <= after);
    tg_decision d;
    tg_request r = dev_req("now", DSV31);
    CHECK_ST(tg_check_now(l, &r, &d), TG_OK);
    CHECK_EQ(d.allowed, 1);
    CHECK(d.minute_reset * 1000 > ms && d.minute_reset * 1000 <= ms + 2 * MS_MIN);
    CHECK_EQ(d.day_reset % 86400, 0);
    CHECK(d.day_reset * 1000 > ms);
    tg_limiter_free(l);
    tg_policy_free(p);
}

/* case-insensitive substring (header names are case-insensitive in HTTP) */
static int has_ci(const char *hay, const char *needle) {
    size_t n = strlen(needle);
    for (; *hay; hay++) {
        size_t i = 0;
        while (i < n && hay[i] && (hay[i] | 0x20) == (needle[i] | 0x20)) i++;
        if (i == n) return 1;
    }
    return 0;
}

static tg_decision sample_denied(void) {
    tg_decision d;
    memset(&d, 0, sizeof d);
    d.allowed = 0;
    d.limited_by = TG_LIMIT_MINUTE;
    d.minute_limit = 30;
    d.minute_remaining = 0;
    d.minute_reset = 1728000480;
    d.day_limit = 15000;
    d.day_remaining = 14970;
    d.day_reset = 1728086400;
    d.retry_after = 50;
    return d;
}

typedef tg_status (*render_fn)(const tg_decision *d, char *buf, size_t cap, size_t *written);

static tg_status render_body(const tg_decision *d, char *buf, size_t cap, size_t *written) {
    return tg_decision_error_body(d, DSV31, strlen(DSV31), buf, cap, written);
}

/* The buffer protocol, the same for all three renderers. */
static void check_buffer_protocol(render_fn fn, const tg_decision *d, const char *name) {
    char buf[2048];
    size_t need = 0, w = 0;
    fprintf(stderr, "  buffer protocol: %s\n", name);
    CHECK_ST(fn(d, buf, 0, &need), TG_E_BUFFER_TOO_SMALL);
    CHECK(need > 0 && need < sizeof buf - 1);
    if (!(need > 0 && need < sizeof buf - 1)) return;
    w = 0; /* NULL with capacity 0: a size query */
    CHECK_ST(fn(d, NULL, 0, &w), TG_E_BUFFER_TOO_SMALL);
    CHECK_EQ(w, need);
    w = 0;
    CHECK_ST(fn(d, buf, 1, &w), TG_E_BUFFER_TOO_SMALL);
    CHECK_EQ(w, need);
    w = 0;
    CHECK_ST(fn(d, buf, need - 1, &w), TG_E_BUFFER_TOO_SMALL);
    CHECK_EQ(w, need);
    /* exactly the size: fits, no NUL appended */
    memset(buf, '#', sizeof buf);
    CHECK_ST(fn(d, buf, need, &w), TG_OK);
    CHECK_EQ(w, need);
    CHECK(buf[need] == '#');
    CHECK(memchr(buf, '\0', need) == NULL);
    /* one more: NUL appended, not counted */
    memset(buf, '#', sizeof buf);
    CHECK_ST(fn(d, buf, need + 1, &w), TG_OK);
    CHECK_EQ(w, need);
    CHECK(buf[need] == '\0');
    CHECK_EQ(strlen(buf), need);
    /* NULLs */
    CHECK_ST(fn(NULL, buf, sizeof buf, &w), TG_E_NULL);
    CHECK_ST(fn(d, NULL, sizeof buf, &w), TG_E_NULL);
    CHECK_ST(fn(d, buf, sizeof buf, NULL), TG_E_NULL);
}

static tg_status render_headers(const tg_decision *d, char *buf, size_t cap, size_t *w) {
    return tg_decision_headers(d, buf, cap, w);
}
/* 10.5 s into the minute of sample_denied(): t counts from here */
#define IETF_NOW ((uint64_t)1728000420 * 1000 + 10500)

static tg_status render_ietf(const tg_decision *d, char *buf, size_t cap, size_t *w) {
    return tg_decision_ietf_headers(d, IETF_NOW, buf, cap, w);
}

static void test_renderers(void) {
    tg_decision d = sample_denied();
    char buf[2048];
    size_t w = 0;

    /* denied: six x-ratelimit-* lines plus retry-after, nothing else */
    CHECK_ST(tg_decision_headers(&d, buf, sizeof buf, &w), TG_OK);
    static const char *lines[] = {
        "x-ratelimit-limit-requests: 30\r\n",
        "x-ratelimit-remaining-requests: 0\r\n",
        "x-ratelimit-reset-requests: 1728000480\r\n",
        "x-ratelimit-limit-requests-day: 15000\r\n",
        "x-ratelimit-remaining-requests-day: 14970\r\n",
        "x-ratelimit-reset-requests-day: 1728086400\r\n",
        "retry-after: 50\r\n",
    };
    size_t total = 0;
    for (size_t i = 0; i < 7; i++) {
        CHECK_STR_HAS(buf, lines[i]);
        total += strlen(lines[i]);
    }
    CHECK_EQ(w, total);
    CHECK_EQ(strlen(buf), w);

    /* allowed: no retry-after */
    tg_decision a = d;
    a.allowed = 1;
    a.limited_by = TG_LIMIT_NONE;
    a.minute_remaining = 12;
    a.retry_after = 0;
    CHECK_ST(tg_decision_headers(&a, buf, sizeof buf, &w), TG_OK);
    CHECK_STR_HAS(buf, "x-ratelimit-remaining-requests: 12\r\n");
    CHECK(!has_ci(buf, "retry-after"));
    CHECK_EQ(w, total - strlen(lines[6]) - strlen("0") + strlen("12"));

    /* IETF draft fields (draft-ietf-httpapi-ratelimit-headers-10): one policy
     * per window; t = seconds from now_ms until that window resets */
    CHECK_ST(tg_decision_ietf_headers(&d, IETF_NOW, buf, sizeof buf, &w), TG_OK);
    CHECK_EQ(strlen(buf), w);
    CHECK(has_ci(buf, "ratelimit-policy: "));
    CHECK(has_ci(buf, "\nratelimit: ") || has_ci(buf, "\r\nratelimit: ") || strncmp(buf, "RateLimit: ", 11) == 0);
    CHECK(w >= 4 && buf[w - 2] == '\r' && buf[w - 1] == '\n');
    CHECK_STR_HAS(buf, "q=30");
    CHECK_STR_HAS(buf, "q=15000");
    CHECK_STR_HAS(buf, "r=0;t=50");          /* minute: 49.5 s rounded up */
    CHECK_STR_HAS(buf, "r=14970;t=85970");   /* day: 86400 - 420 - 10.5 s, rounded up */
    CHECK_ST(tg_decision_ietf_headers(NULL, IETF_NOW, buf, sizeof buf, &w), TG_E_NULL);

    /* the 429 body */
    CHECK_ST(tg_decision_error_body(&d, DSV31, strlen(DSV31), buf, sizeof buf, &w), TG_OK);
    CHECK_EQ(strlen(buf), w);
    CHECK(strncmp(buf, "{\"error\":{", 10) == 0);
    CHECK(w > 0 && buf[w - 1] == '}');
    CHECK_STR_HAS(buf, "\"type\":\"rate_limit_exceeded\"");
    CHECK_STR_HAS(buf, "\"code\":\"rate_limit_exceeded\"");
    CHECK_STR_HAS(buf, "\"param\":null");
    CHECK_STR_HAS(buf, "\"message\":\"");
    CHECK_STR_HAS(buf, DSV31);
    CHECK(has_ci(buf, "minute"));
    /* the day limit is named when it is the one hit */
    tg_decision dd = d;
    dd.limited_by = TG_LIMIT_DAY;
    dd.day_remaining = 0;
    CHECK_ST(tg_decision_error_body(&dd, DSV31, strlen(DSV31), buf, sizeof buf, &w), TG_OK);
    CHECK(has_ci(buf, "day"));
    /* model ids are bytes: JSON-escaped, length honoured */
    const char *odd = "we\"ird\\model\nX-trailing";
    CHECK_ST(tg_decision_error_body(&d, odd, 14, buf, sizeof buf, &w), TG_OK);
    CHECK_STR_HAS(buf, "we\\\"ird\\\\model\\"); /* the newline as \n or \u000a */
    CHECK(strstr(buf, "X-trailing") == NULL);
    CHECK(strchr(buf, '\n') == NULL);
    CHECK_ST(tg_decision_error_body(&d, NULL, 3, buf, sizeof buf, &w), TG_E_NULL);

    /* a decision with an unknown limited_by is not rendered */
    tg_decision weird = d;
    weird.limited_by = 7;
    CHECK_ST(tg_decision_headers(&weird, buf, sizeof buf, &w), TG_E_INVALID);
    CHECK_ST(tg_decision_ietf_headers(&weird, IETF_NOW, buf, sizeof buf, &w), TG_E_INVALID);
    CHECK_ST(tg_decision_error_body(&weird, DSV31, strlen(DSV31), buf, sizeof buf, &w), TG_E_INVALID);

    check_buffer_protocol(render_headers, &d, "tg_decision_headers");
    check_buffer_protocol(render_ietf, &d, "tg_decision_ietf_headers");
    check_buffer_protocol(render_body, &d, "tg_decision_error_body");
}

/* Account ids from API keys: the core's digest and its reading of the
 * Authorization header, the same in every binding. */
static void test_account_digest(void) {
    char out[TG_ACCOUNT_DIGEST_LEN + 1];
    size_t w = 0, start = 0, len = 0;

    /* hashlib.blake2b(b"sk-test", digest_size=16).hexdigest() */
    static const char want[] = "c341dda362e14f03d05c78a3a7c7a93a";
    CHECK_ST(tg_account_digest("sk-test", 7, out, sizeof out, &w), TG_OK);
    CHECK_EQ(w, TG_ACCOUNT_DIGEST_LEN);
    CHECK(strcmp(out, want) == 0);
    CHECK_ST(tg_account_digest("sk-test", 7, out, 8, &w), TG_E_BUFFER_TOO_SMALL);
    CHECK_EQ(w, TG_ACCOUNT_DIGEST_LEN);

    /* a key longer than any account id gets an id all the same */
    char key[200];
    memset(key, 'k', sizeof key);
    CHECK_ST(tg_account_digest(key, sizeof key, out, sizeof out, &w), TG_OK);
    CHECK_EQ(strlen(out), TG_ACCOUNT_DIGEST_LEN);

    static const char auth[] = " Bearer   sk-test \t";
    CHECK_ST(tg_bearer_key(auth, strlen(auth), &start, &len), TG_OK);
    CHECK(len == 7 && memcmp(auth + start, "sk-test", 7) == 0);
    memset(out, 'Z', sizeof out);
    CHECK_ST(tg_bearer_digest(auth, strlen(auth), out, sizeof out, &w), TG_OK);
    CHECK(strcmp(out, want) == 0);

    CHECK_ST(tg_bearer_key("Basic dXNlcg==", 14, &start, &len), TG_E_NO_ACCOUNT);
    CHECK_ST(tg_bearer_digest("Bearer  ", 8, out, sizeof out, &w), TG_E_NO_ACCOUNT);
    CHECK_EQ(w, 0);
    CHECK_ST(tg_bearer_key(NULL, 4, &start, &len), TG_E_NULL);
    CHECK_ST(tg_bearer_digest(auth, strlen(auth), out, sizeof out, NULL), TG_E_NULL);
}

/* The headers for a real decision round-trip through the renderer. */
static void test_real_decision_headers(void) {
    tg_policy *p = NULL;
    REQUIRE(tg_policy_default(&p) == TG_OK);
    tg_limiter *l = NULL;
    REQUIRE(tg_limiter_new(p, 16, &l) == TG_OK);
    tg_decision d;
    tg_request r = dev_req("render", DSV31);
    const uint64_t now = T0 + 7 * MS_MIN + 10500;
    for (int i = 0; i < 31; i++) CHECK_ST(tg_check(l, &r, now, &d), TG_OK);
    CHECK_EQ(d.allowed, 0);
    char buf[1024];
    size_t w;
    CHECK_ST(tg_decision_headers(&d, buf, sizeof buf, &w), TG_OK);
    char want[128];
    snprintf(want, sizeof want, "x-ratelimit-reset-requests: %" PRIu64 "\r\n", (T0 + 8 * MS_MIN) / 1000);
    CHECK_STR_HAS(buf, want);
    CHECK_STR_HAS(buf, "retry-after: 50\r\n");
    CHECK_STR_HAS(buf, "x-ratelimit-remaining-requests-day: 14970\r\n");
    tg_limiter_free(l);
    tg_policy_free(p);
}

/* A model resolved once (tg_model_find) stands for its name in tg_request
 * once `size` covers model_handle; older layouts are read without it. */
static void test_model_handle(void) {
    tg_policy *p = NULL, *p2 = NULL;
    REQUIRE(tg_policy_default(&p) == TG_OK);
    char err[256];
    REQUIRE(tg_policy_parse(POLICY_OK, strlen(POLICY_OK), &p2, err, sizeof err) == TG_OK);
    tg_limiter *l = NULL, *other = NULL;
    REQUIRE(tg_limiter_new(p, 64, &l) == TG_OK);
    REQUIRE(tg_limiter_new(p, 64, &other) == TG_OK);
    uint32_t h = 0;
    CHECK_ST(tg_model_find(NULL, DSV31, strlen(DSV31), &h), TG_E_NULL);
    CHECK_ST(tg_model_find(l, DSV31, strlen(DSV31), NULL), TG_E_NULL);
    CHECK_ST(tg_model_find(l, "no-such-model", 13, &h), TG_E_UNKNOWN_MODEL);
    CHECK_ST(tg_model_find(l, NULL, 0, &h), TG_E_UNKNOWN_MODEL);
    CHECK_ST(tg_model_find(l, DSV31, strlen(DSV31), &h), TG_OK);
    CHECK(h != 0);

    tg_decision d;
    tg_request byname = dev_req("handle", DSV31);
    tg_request byhandle = dev_req("handle", NULL);
    byhandle.size = sizeof byhandle;
    byhandle.model_handle = h;
    CHECK_ST(tg_check(l, &byname, T0, &d), TG_OK);
    CHECK_EQ(d.minute_remaining, 29);
    CHECK_ST(tg_check(l, &byhandle, T0, &d), TG_OK);
    CHECK_EQ(d.minute_remaining, 28); /* the same key */
    CHECK_EQ(d.minute_limit, 30);

    /* size 0 and the 0.2 layout do not read model_handle: by name */
    tg_request old = dev_req("handle", DSV31);
    old.model_handle = 0xDEAD;
    old.size = (uint32_t) offsetof(tg_request, model_handle);
    old.size = (old.size + (uint32_t) _Alignof(tg_request) - 1) / (uint32_t) _Alignof(tg_request)
               * (uint32_t) _Alignof(tg_request);
    CHECK_ST(tg_check(l, &old, T0, &d), TG_OK);
    CHECK_EQ(d.minute_remaining, 27);
    old.size = 0;
    CHECK_ST(tg_check(l, &old, T0, &d), TG_OK);
    CHECK_EQ(d.minute_remaining, 26);
    /* a size between layouts is no layout */
    old.size = (uint32_t) offsetof(tg_request, model_handle) + 2;
    CHECK_ST(tg_check(l, &old, T0, &d), TG_E_INVALID);

    /* handles are the limiter's own and its policy's */
    CHECK_ST(tg_check(other, &byhandle, T0, &d), TG_E_UNKNOWN_MODEL);
    byhandle.model_handle = h ^ 0x10000u;
    CHECK_ST(tg_check(l, &byhandle, T0, &d), TG_E_UNKNOWN_MODEL);
    byhandle.model_handle = h;
    REQUIRE(tg_limiter_set_policy(l, p2) == TG_OK);
    CHECK_ST(tg_check(l, &byhandle, T0, &d), TG_E_UNKNOWN_MODEL);
    CHECK_ST(tg_model_find(l, DSV31, strlen(DSV31), &h), TG_OK);
    byhandle.model_handle = h;
    CHECK_ST(tg_check(l, &byhandle, T0, &d), TG_OK);
    CHECK_EQ(d.minute_limit, 40);
    CHECK_EQ(d.minute_remaining, 35); /* counts kept across the policy change */

    tg_limiter_free(other);
    tg_limiter_free(l);
    tg_policy_free(p2);
    tg_policy_free(p);
}

/* One quota across hosts through a real redis-server (tests/c/run.sh starts
 * one and passes its URL in TOLLGATE_TEST_REDIS_URL): the options, connect,
 * the not-joined and not-leased statuses, blocking and TG_PENDING
 * decisions, the lease counters, disconnect. */
static void test_leases(void) {
    const char *url = getenv("TOLLGATE_TEST_REDIS_URL");
    if (!url) {
        printf("  (skipped: TOLLGATE_TEST_REDIS_URL is not set; tests/c/run.sh sets it)\n");
        return;
    }
    tg_policy *p = NULL;
    REQUIRE(tg_policy_default(&p) == TG_OK);
    /* Mid-minute tomorrow: every window is open by Redis's clock and the
     * run cannot cross a minute's end. */
    const uint64_t now = (tg_now_ms() / MS_MIN + 24 * 60) * MS_MIN + 30000;

    /* options by name: the core's one parser */
    tg_redis_options o;
    memset(&o, 0, sizeof o);
    o.size = sizeof o;
    CHECK_ST(tg_redis_options_set(&o, "hosts", 5, "3", 1), TG_OK);
    CHECK_EQ(o.hosts, 3);
    CHECK_ST(tg_redis_options_set(&o, "deadline", 8, "200ms", 5), TG_OK);
    CHECK_EQ(o.deadline_ms, 200);
    CHECK_ST(tg_redis_options_set(&o, "down", 4, "sideways", 8), TG_E_INVALID);
    CHECK_STR_HAS(tg_last_error(), "local, open or closed");
    CHECK_ST(tg_redis_options_set(&o, "colour", 6, "red", 3), TG_E_INVALID);
    CHECK_STR_HAS(tg_last_error(), "unknown option");
    CHECK_EQ(o.hosts, 3); /* unchanged by the failures */
    CHECK_ST(tg_redis_options_set(NULL, "hosts", 5, "3", 1), TG_E_NULL);
    o.hosts = 1;
    /* a deadline no loaded machine misses: a missed one would rightly
     * decide by the down policy, which is not what this test is about */
    o.deadline_ms = 2000;

    /* a local table cannot join; a leased one cannot decide until it does */
    tg_limiter *local = NULL, *l = NULL;
    REQUIRE(tg_limiter_new(p, 64, &local) == TG_OK);
    CHECK_ST(tg_limiter_connect(local, url, &o), TG_E_NOT_LEASED);
    CHECK_STR_HAS(tg_last_error(), "formatted for quota leases");
    CHECK_ST(tg_limiter_new_for_leases(p, 64, &l), TG_OK);
    CHECK(tg_region_size_for_leases(64) > tg_region_size(64));
    tg_request r = dev_req("c-leases", DSV31);
    r.size = sizeof r;
    tg_decision d;
    CHECK_ST(tg_check(l, &r, now, &d), TG_E_NOT_JOINED);
    tg_lease_stats st;
    memset(&st, 0, sizeof st);
    CHECK_ST(tg_limiter_lease_stats(l, &st), TG_E_NOT_JOINED);
    CHECK_ST(tg_limiter_connect(l, "http://nowhere", &o), TG_E_STORE);
    CHECK(tg_last_error()[0] != '\0');
    /* the same checks without contacting Redis (nginx -t in the master) */
    CHECK_ST(tg_redis_check(url, &o), TG_OK);
    CHECK(tg_last_error()[0] == '\0');
    CHECK_ST(tg_redis_check("redis://127.0.0.1:1/0", NULL), TG_OK);
    CHECK_ST(tg_redis_check("http://nowhere", &o), TG_E_STORE);
    CHECK_STR_HAS(tg_last_error(), "http://nowhere");
    CHECK_ST(tg_redis_check("redis+cluster://", &o), TG_E_STORE);
    CHECK(tg_last_error()[0] != '\0');
    CHECK_ST(tg_redis_check(NULL, &o), TG_E_NULL);
    CHECK_ST(tg_limiter_connect(l, NULL, &o), TG_E_NULL);
    tg_redis_options bad = o;
    bad.down = 7;
    CHECK_ST(tg_limiter_connect(l, url, &bad), TG_E_INVALID);
    CHECK_STR_HAS(tg_last_error(), "TG_DOWN_LOCAL");
    CHECK_ST(tg_redis_check(url, &bad), TG_E_INVALID);
    CHECK_STR_HAS(tg_last_error(), "TG_DOWN_LOCAL");
    bad = o;
    bad.size = 3;
    CHECK_ST(tg_redis_check(url, &bad), TG_E_INVALID);

    /* joined: a key is decided from Redis, then from its leases. A
     * no-wait decision that would need Redis is TG_PENDING, charges
     * nothing, and is decided by the same call without the flag. An account
     * of its own per run: Redis keeps counts across runs. */
    char account[64];
    snprintf(account, sizeof account, "c-leases-%ld-%llu", (long) getpid(),
             (unsigned long long) tg_now_ms());
    r.account = account;
    r.account_len = strlen(account);
    CHECK_ST(tg_limiter_connect(l, url, &o), TG_OK);
    uint32_t admitted = 0, pending = 0, waited = 0, minute_limit = 0;
    for (int i = 0; i < 25; i++) {
        r.flags = TG_REQUEST_NO_WAIT;
        tg_status s = tg_check(l, &r, now, &d);
        if (s == TG_PENDING) {
            pending++;
            r.flags = 0;
            s = tg_check(l, &r, now, &d);
            waited++;
        }
        CHECK_ST(s, TG_OK);
        admitted += d.allowed;
        minute_limit = d.minute_limit;
    }
    CHECK_EQ(admitted, 25);
    CHECK_EQ(minute_limit, 30);
    CHECK(pending >= 1);      /* the first decision had nothing held */
    CHECK(pending < 25);      /* and later ones spent leases */
    CHECK_EQ(d.minute_remaining, 5);
    r.flags = 8;              /* an unknown flag */
    CHECK_ST(tg_check(l, &r, now, &d), TG_E_INVALID);
    r.flags = 0;
    /* run into the minute's limit: refusals come from Redis's count */
    for (int i = 0; i < 10; i++) {
        CHECK_ST(tg_check(l, &r, now, &d), TG_OK);
        admitted += d.allowed;
    }
    CHECK_EQ(admitted, 30);
    CHECK_EQ(d.allowed, 0);
    CHECK_EQ(d.limited_by, TG_LIMIT_MINUTE);

    /* whole answers: the same no-wait protocol */
    tg_http_request hr;
    memset(&hr, 0, sizeof hr);
    hr.size = sizeof hr;
    hr.cost = 1;
    hr.method = "POST";
    hr.method_len = 4;
    char other[80];
    snprintf(other, sizeof other, "%s-answers", account);
    hr.account = other;
    hr.account_len = strlen(other);
    hr.tier = "developer";
    hr.tier_len = 9;
    const char *body = "{\"model\":\"DeepSeek-V3.1\"}";
    hr.body = body;
    hr.body_len = strlen(body);
    tg_answer a;
    memset(&a, 0, sizeof a);
    a.size = sizeof a;
    CHECK_ST(tg_answer_request(l, &hr, now, TG_ANSWER_NO_WAIT, 0, &a), TG_PENDING);
    CHECK_ST(tg_answer_request(l, &hr, now, 0, 0, &a), TG_OK);
    CHECK_EQ(a.http_status, 0);
    CHECK_EQ(a.decision.minute_remaining, 29);

    memset(&st, 0, sizeof st);
    st.size = sizeof st;
    CHECK_ST(tg_limiter_lease_stats(l, &st), TG_OK);
    CHECK_EQ(st.mode, TG_REDIS_LEASES);
    CHECK_EQ(st.down_policy, TG_DOWN_LOCAL);
    CHECK_EQ(st.redis_down, 0);
    CHECK_EQ(st.breaker, TG_BREAKER_CLOSED);
    CHECK_EQ(st.decisions, 25 + 10 + 1);
    CHECK_EQ(st.deferred, pending + 1);
    /* a key the store showed full is refused here until its re-check */
    CHECK_EQ(st.from_leases + st.refills + st.refused_locally, st.decisions);
    CHECK(st.refused_by_store >= 1);
    CHECK(st.refused_locally >= 1);
    CHECK_EQ(st.eviction_risk, 0);
    CHECK(st.store_calls >= st.refills);
    st.size = 4;
    CHECK_ST(tg_limiter_lease_stats(l, &st), TG_E_INVALID);

    CHECK_ST(tg_limiter_disconnect(l), TG_OK);
    CHECK_ST(tg_check(l, &r, now, &d), TG_E_NOT_JOINED);
    CHECK_ST(tg_limiter_disconnect(l), TG_OK); /* again: nothing to leave */
    CHECK_ST(tg_limiter_disconnect(NULL), TG_E_NULL);
    (void) waited;

    /* a leased file: TG_OPEN_LEASES formats it, and a local file refuses it */
    char path[600];
    snprintf(path, sizeof path, "%s/leases.region", g_tmpdir);
    tg_limiter *f = NULL, *g = NULL;
    CHECK_ST(tg_limiter_open(p, path, 64, TG_OPEN_CREATE | TG_OPEN_LEASES, &f), TG_OK);
    CHECK_ST(tg_limiter_open(p, path, 0, 0, &g), TG_OK);
    CHECK_ST(tg_check(g, &r, now, &d), TG_E_NOT_JOINED); /* the header says leases */
    tg_limiter_free(g);
    CHECK_ST(tg_limiter_open(p, path, 0, TG_OPEN_LEASES | TG_OPEN_READ_ONLY, &g), TG_E_INVALID);
    tg_limiter_free(f);
    unlink(path);
    snprintf(path, sizeof path, "%s/local.region", g_tmpdir);
    CHECK_ST(tg_limiter_open(p, path, 64, TG_OPEN_CREATE, &f), TG_OK);
    tg_limiter *h = NULL;
    CHECK_ST(tg_limiter_open(p, path, 0, TG_OPEN_LEASES, &h), TG_E_NOT_LEASED);
    tg_limiter_free(f);
    unlink(path);

    tg_limiter_free(l);
    tg_limiter_free(local);
    tg_policy_free(p);
}

/* One constructor that grows by options: every place a table lives, both
 * formats, the deprecated twins still working, and what it refuses. */
static void test_limiter_make(void) {
    tg_policy *p = NULL;
    REQUIRE(tg_policy_default(&p) == TG_OK);
    tg_limiter *l = NULL, *a = NULL;
    tg_limiter_options o;

    /* the heap, local then leased */
    memset(&o, 0, sizeof o);
    o.slots = 64;
    CHECK_ST(tg_limiter_make(p, &o, &l), TG_OK);
    CHECK_EQ(tg_limiter_is_leased(l), 0);
    tg_request r = dev_req("c-make", DSV31);
    tg_decision d;
    CHECK_ST(tg_check(l, &r, T0, &d), TG_OK);
    tg_limiter_free(l);
    l = NULL;
    o.size = sizeof o;
    o.flags = TG_OPEN_LEASES;
    CHECK_ST(tg_limiter_make(p, &o, &l), TG_OK);
    CHECK_EQ(tg_limiter_is_leased(l), 1);
    CHECK_ST(tg_check(l, &r, T0, &d), TG_E_NOT_JOINED);
    tg_limiter_free(l);
    l = NULL;
    CHECK_EQ(tg_limiter_is_leased(NULL), 0);

    /* caller memory: format for leases, then attach and learn the format */
    const size_t len = tg_region_size_for_leases(32);
    unsigned char *mem = aligned_region(len);
    REQUIRE(mem != NULL);
    CHECK_EQ(tg_region_slots_for_leases(len), 32);
    CHECK_EQ(tg_region_slots_for_leases(len - 1), 31);
    CHECK_EQ(tg_region_slots_for_leases(16), 0);
    memset(&o, 0, sizeof o);
    o.flags = TG_OPEN_LEASES;
    o.mem = mem;
    o.len = len;
    CHECK_ST(tg_limiter_make(p, &o, &l), TG_OK);
    CHECK_EQ(tg_limiter_is_leased(l), 1);
    o.flags = TG_OPEN_ATTACH;
    CHECK_ST(tg_limiter_make(p, &o, &a), TG_OK);
    CHECK_EQ(tg_limiter_is_leased(a), 1);
    tg_limiter_free(a);
    a = NULL;
    CHECK_ST(tg_limiter_attach(p, mem, len, &a), TG_OK);
    CHECK_EQ(tg_limiter_is_leased(a), 1);
    tg_limiter_free(a);
    a = NULL;
    tg_limiter_free(l);
    l = NULL;
    /* a local table attached as leases is refused */
    CHECK_ST(tg_limiter_init_in(p, mem, len, &l), TG_OK);
    CHECK_EQ(tg_limiter_is_leased(l), 0);
    o.flags = TG_OPEN_ATTACH | TG_OPEN_LEASES;
    CHECK_ST(tg_limiter_make(p, &o, &a), TG_E_NOT_LEASED);
    CHECK(a == NULL);
    tg_limiter_free(l);
    l = NULL;

    /* a file, as tg_limiter_open takes it */
    char path[600];
    snprintf(path, sizeof path, "%s/make.region", g_tmpdir);
    memset(&o, 0, sizeof o);
    o.path = path;
    o.slots = 64;
    o.flags = TG_OPEN_CREATE | TG_OPEN_LEASES;
    CHECK_ST(tg_limiter_make(p, &o, &l), TG_OK);
    CHECK_EQ(tg_limiter_is_leased(l), 1);
    tg_limiter_free(l);
    l = NULL;
    CHECK_ST(tg_limiter_open(p, path, 0, 0, &l), TG_OK);
    CHECK_EQ(tg_limiter_is_leased(l), 1);
    tg_limiter_free(l);
    l = NULL;
    unlink(path);

    /* the deprecated twins make the same tables */
    CHECK_ST(tg_limiter_new_for_leases(p, 64, &l), TG_OK);
    CHECK_EQ(tg_limiter_is_leased(l), 1);
    tg_limiter_free(l);
    l = NULL;
    CHECK_ST(tg_limiter_init_in_for_leases(p, mem, len, &l), TG_OK);
    CHECK_EQ(tg_limiter_is_leased(l), 1);
    tg_limiter_free(l);
    l = NULL;

    /* refused: NULLs, unknown bits and sizes, options that do not fit */
    memset(&o, 0, sizeof o);
    o.slots = 64;
    CHECK_ST(tg_limiter_make(NULL, &o, &l), TG_E_NULL);
    CHECK_ST(tg_limiter_make(p, NULL, &l), TG_E_NULL);
    CHECK_ST(tg_limiter_make(p, &o, NULL), TG_E_NULL);
    o.flags = 1u << 31;
    CHECK_ST(tg_limiter_make(p, &o, &l), TG_E_INVALID);
    CHECK_STR_HAS(tg_last_error(), "flags");
    o.flags = 0;
    o.size = 4;
    CHECK_ST(tg_limiter_make(p, &o, &l), TG_E_INVALID);
    o.size = 0;
    o.flags = TG_OPEN_CREATE; /* a file flag without a path */
    CHECK_ST(tg_limiter_make(p, &o, &l), TG_E_INVALID);
    o.flags = TG_OPEN_ATTACH; /* attach without memory */
    CHECK_ST(tg_limiter_make(p, &o, &l), TG_E_INVALID);
    o.flags = 0;
    o.mem = mem;
    o.len = len;
    o.path = path; /* two places at once */
    CHECK_ST(tg_limiter_make(p, &o, &l), TG_E_INVALID);
    o.path = NULL; /* slots with caller memory */
    CHECK_ST(tg_limiter_make(p, &o, &l), TG_E_INVALID);
    o.slots = 0;
    o.mem = mem + 8; /* misaligned: the region's own check */
    o.len = len - 64;
    CHECK_ST(tg_limiter_make(p, &o, &l), TG_E_ALIGNMENT);
    o.mem = NULL;
    o.len = 0; /* the heap with 0 slots */
    CHECK_ST(tg_limiter_make(p, &o, &l), TG_E_INVALID);
    CHECK(l == NULL);

    free(mem);
    tg_policy_free(p);
}

int main(void) {
    snprintf(g_tmpdir, sizeof g_tmpdir, "%s/tg-capi-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(g_tmpdir)) {
        perror("mkdtemp");
        return 2;
    }
    static const struct { const char *name; void (*fn)(void); } tests[] = {
        {"version", test_version},
        {"status_str", test_status_str},
        {"struct_sizes", test_struct_sizes},
        {"free_null", test_free_null},
        {"policy_default_and_limits", test_policy_default_and_limits},
        {"policy_parse_load", test_policy_parse_load},
        {"region_sizes", test_region_sizes},
        {"limiter_new_and_stats", test_limiter_new_and_stats},
        {"check_arguments", test_check_arguments},
        {"minute_limit", test_minute_limit},
        {"peek", test_peek},
        {"explicit_limits", test_explicit_limits},
        {"day_limit", test_day_limit},
        {"clock_backwards", test_clock_backwards},
        {"table_full", test_table_full},
        {"regions", test_regions},
        {"open_file", test_open_file},
        {"open_processes", test_open_processes},
        {"threads", test_threads},
        {"set_policy", test_set_policy},
        {"model_handle", test_model_handle},
        {"model_table_full", test_model_table_full},
        {"check_now", test_check_now},
        {"renderers", test_renderers},
        {"account_digest", test_account_digest},
        {"real_decision_headers", test_real_decision_headers},
        {"leases", test_leases},
        {"limiter_make", test_limiter_make},
        {"tokens", test_tokens},
        {"in_flight", test_in_flight},
    };
    for (size_t i = 0; i < sizeof tests / sizeof tests[0]; i++) {
        int before = g_fail;
        tests[i].fn();
        printf("%-28s %s\n", tests[i].name, g_fail == before ? "ok" : "FAILED");
        fflush(stdout);
    }
    /* best-effort cleanup of the temp dir's known files */
    char path[600];
    const char *files[] = {"policy.toml", "broken.toml", "limits.region", "junk.region", "procs.region"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", g_tmpdir, files[i]);
        unlink(path);
    }
    rmdir(g_tmpdir);
    printf("%d passed, %d failed\n", g_pass, g_fail);
    return g_fail == 0 ? 0 : 1;
}
