// Test of tollgate.hpp against the real library. Built and run by tests/c/run.sh:
//   g++ -std=c++17 -Wall -Wextra -Werror -Iinclude -Ibindings/cpp bindings/cpp/test_tollgate.cpp -ltollgate
// Times are explicit, so nothing depends on the wall clock. Last line: "N passed, M failed".
#include "tollgate.hpp"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <type_traits>
#include <unistd.h>
#include <vector>

namespace {

int g_pass = 0, g_fail = 0;

void report(bool ok, const char *file, int line, const std::string &what) {
    if (ok) {
        ++g_pass;
    } else {
        ++g_fail;
        std::fprintf(stderr, "%s:%d: FAIL: %s\n", file, line, what.c_str());
    }
}

#define CHECK(cond) report((cond), __FILE__, __LINE__, #cond)
#define CHECK_EQ(a, b)                                                                           \
    do {                                                                                         \
        auto a_ = (a);                                                                           \
        auto b_ = (b);                                                                           \
        report(a_ == b_, __FILE__, __LINE__,                                                     \
               std::string(#a " == " #b ": got ") + std::to_string(a_) + ", expected " + std::to_string(b_)); \
    } while (0)
// Runs stmt, expects tollgate::Error with the given code.
#define CHECK_THROWS(stmt, want)                                                                 \
    do {                                                                                         \
        tg_status got_ = TG_OK;                                                                  \
        try {                                                                                    \
            stmt;                                                                                \
        } catch (const tollgate::Error &e_) {                                                    \
            got_ = e_.code();                                                                    \
        }                                                                                        \
        report(got_ == (want), __FILE__, __LINE__,                                               \
               std::string(#stmt ": expected ") + tg_status_str(want) + ", got " +               \
                   (got_ == TG_OK ? "no exception" : tg_status_str(got_)));                      \
    } while (0)

constexpr uint64_t MS_MIN = 60000;
constexpr uint64_t MS_DAY = 86400000;
constexpr uint64_t T0 = 20000 * MS_DAY;  // a UTC midnight
constexpr const char *DSV31 = "DeepSeek-V3.1";

bool contains(const std::string &hay, const std::string &needle) { return hay.find(needle) != std::string::npos; }

// Owned, 64-byte aligned memory for caller-memory regions.
struct AlignedBuf {
    explicit AlignedBuf(size_t n) : len(n), p(std::aligned_alloc(TG_REGION_ALIGN, (n + 63) / 64 * 64)) {
        if (p) std::memset(p, 0, (n + 63) / 64 * 64);
    }
    ~AlignedBuf() { std::free(p); }
    AlignedBuf(const AlignedBuf &) = delete;
    AlignedBuf &operator=(const AlignedBuf &) = delete;
    size_t len;
    void *p;
};

void test_types() {
    // RAII handles are move-only.
    static_assert(!std::is_copy_constructible_v<tollgate::Policy>);
    static_assert(!std::is_copy_assignable_v<tollgate::Policy>);
    static_assert(std::is_nothrow_move_constructible_v<tollgate::Policy>);
    static_assert(std::is_nothrow_move_assignable_v<tollgate::Policy>);
    static_assert(!std::is_copy_constructible_v<tollgate::Limiter>);
    static_assert(!std::is_copy_assignable_v<tollgate::Limiter>);
    static_assert(std::is_nothrow_move_constructible_v<tollgate::Limiter>);
    static_assert(std::is_base_of_v<std::runtime_error, tollgate::Error>);
    CHECK_EQ(tollgate::version_number(), static_cast<uint32_t>(TG_VERSION_NUMBER));
    CHECK_EQ(tollgate::layout_version(), static_cast<uint32_t>(TG_LAYOUT_VERSION));
    CHECK(std::string(tollgate::version()).size() >= 5);
    CHECK(std::string(tollgate::status_str(TG_E_TABLE_FULL)) == tg_status_str(TG_E_TABLE_FULL));
    CHECK(tollgate::region_size(8) > 0);
    CHECK(tollgate::region_slots_for(tollgate::region_size(8)) >= 8);
    CHECK(tollgate::now_ms() > T0);
}

void test_policy() {
    auto p = tollgate::Policy::builtin();
    CHECK(static_cast<bool>(p));
    auto l = p.limits(tollgate::Tier::Developer, DSV31);
    CHECK_EQ(l.rpm, 30u);
    CHECK_EQ(l.rpd, 15000u);
    auto g = p.limits(tollgate::Tier::Developer, "Meta-Llama-3.1-8B-Instruct");
    CHECK_EQ(g.rpm, 1440u);
    CHECK_EQ(g.rpd, 288000u);
    CHECK_THROWS(p.limits(tollgate::Tier::Developer, "nope"), TG_E_UNKNOWN_MODEL);
    const auto models = p.models();
    CHECK_EQ(models.size(), size_t{12});
    bool has_dsv31 = false;
    for (const auto &m : models) has_dsv31 = has_dsv31 || m == DSV31;
    CHECK(has_dsv31);
    CHECK_THROWS(p.limits(tollgate::Tier::Free, DSV31), TG_E_NO_LIMIT);
    CHECK_THROWS(p.limits(static_cast<tollgate::Tier>(9), DSV31), TG_E_INVALID);

    // Parse errors carry the library's message with the line.
    const std::string broken = "[models]\n\"m\" = { region = \"EU\" }\n[tiers.developer]\n\"m\" = { rpm = 0, rpd = 5 }\n";
    try {
        (void)tollgate::Policy::parse(broken);
        report(false, __FILE__, __LINE__, "parse of a broken policy did not throw");
    } catch (const tollgate::Error &e) {
        CHECK_EQ(e.code(), TG_E_POLICY);
        CHECK(contains(e.detail(), ":4: tiers.developer.m.rpm"));
        CHECK(contains(e.what(), e.detail()));
        CHECK(contains(e.what(), e.status_str()));
    }
    CHECK_THROWS(tollgate::Policy::load("/nonexistent/tollgate/policy.toml"), TG_E_IO);

    const std::string text =
        "[models]\n\"m\" = { region = \"EU\" }\n[tiers.free]\n\"m\" = { rpm = 2, rpd = 3 }\n"
        "[tiers.developer]\n\"m\" = { rpm = 4, rpd = 40 }\n";
    auto q = tollgate::Policy::parse(text);
    CHECK_EQ(q.limits(tollgate::Tier::Free, "m").rpm, 2u);

    // Move: the source is empty and using it throws rather than crashing.
    auto moved = std::move(q);
    CHECK(static_cast<bool>(moved));
    CHECK(!static_cast<bool>(q));  // NOLINT(bugprone-use-after-move): testing the moved-from state
    CHECK_THROWS(q.limits(tollgate::Tier::Free, "m"), TG_E_NULL);
    CHECK_EQ(moved.limits(tollgate::Tier::Developer, "m").rpd, 40u);
}

void test_check_and_render() {
    auto policy = tollgate::Policy::builtin();
    tollgate::Limiter lim(policy, 256);
    tollgate::Request req;
    req.account = "cpp-acct";
    req.model = DSV31;
    const uint64_t now = T0 + 7 * MS_MIN + 10500;

    tollgate::Decision d;
    for (int i = 0; i < 30; ++i) {
        d = lim.check(req, now);
        CHECK(d.allowed);
    }
    CHECK_EQ(d.minute_remaining, 0u);
    CHECK_EQ(d.day_remaining, 14970u);
    d = lim.check(req, now);
    CHECK(!d.allowed);
    CHECK(d.limited_by == tollgate::LimitedBy::Minute);
    CHECK_EQ(d.retry_after, 50u);
    CHECK_EQ(d.minute_reset, (T0 + 8 * MS_MIN) / 1000);

    const std::string h = d.headers();
    CHECK(contains(h, "x-ratelimit-limit-requests: 30\r\n"));
    CHECK(contains(h, "x-ratelimit-remaining-requests: 0\r\n"));
    CHECK(contains(h, "x-ratelimit-remaining-requests-day: 14970\r\n"));
    CHECK(contains(h, "retry-after: 50\r\n"));
    CHECK(h.size() >= 2 && h.compare(h.size() - 2, 2, "\r\n") == 0);
    CHECK(h.find('\0') == std::string::npos);

    const std::string body = d.error_body(DSV31);
    CHECK(body.rfind("{\"error\":{", 0) == 0);
    CHECK(contains(body, "\"type\":\"rate_limit_exceeded\""));
    CHECK(contains(body, "\"code\":\"rate_limit_exceeded\""));
    CHECK(contains(body, DSV31));
    CHECK(body.back() == '}');

    const std::string ietf = d.ietf_headers(now);
    CHECK(contains(ietf, "RateLimit-Policy:") || contains(ietf, "ratelimit-policy:"));
    CHECK(contains(ietf, "r=0;t=50"));
    CHECK(!d.ietf_headers().empty());

    // A long model name makes a body bigger than the wrapper's first buffer guess.
    tollgate::Decision big = d;
    std::string long_model(600, 'x');
    const std::string body2 = big.error_body(long_model);
    CHECK(contains(body2, long_model));
    CHECK(body2.back() == '}');

    // Decision round trip through the C struct.
    tg_decision raw = d.to_c();
    CHECK_EQ(raw.allowed, 0u);
    CHECK_EQ(raw.limited_by, static_cast<uint32_t>(TG_LIMIT_MINUTE));
    auto back = tollgate::Decision::from_c(raw);
    CHECK(back.headers() == h);

    // Allowed: no retry-after.
    tollgate::Request other = req;
    other.account = "cpp-other";
    auto ok = lim.check(other, now);
    CHECK(ok.allowed);
    CHECK(!contains(ok.headers(), "retry-after"));

    // Peek: cost 0 counts nothing.
    tollgate::Request peek = other;
    peek.cost = 0;
    CHECK_EQ(lim.check(peek, now).minute_remaining, 29u);
    CHECK_EQ(lim.check(peek, now).minute_remaining, 29u);

    // Explicit limits.
    tollgate::Request expl = req;
    expl.account = "cpp-explicit";
    expl.rpm = 2;
    expl.rpd = 3;
    CHECK(lim.check(expl, now).allowed);
    CHECK(lim.check(expl, now).allowed);
    auto e3 = lim.check(expl, now);
    CHECK(!e3.allowed);
    CHECK_EQ(e3.minute_limit, 2u);
    CHECK(lim.check(expl, now + MS_MIN).allowed);
    auto e5 = lim.check(expl, now + MS_MIN);
    CHECK(!e5.allowed);
    CHECK(e5.limited_by == tollgate::LimitedBy::Day);

    // Error statuses as exceptions, and the non-throwing path.
    tollgate::Request bad = req;
    bad.model = "no-such-model";
    CHECK_THROWS(lim.check(bad, now), TG_E_UNKNOWN_MODEL);
    tollgate::Decision untouched;
    untouched.minute_limit = 12345;
    CHECK_EQ(lim.try_check(bad, now, untouched), TG_E_UNKNOWN_MODEL);
    CHECK_EQ(untouched.minute_limit, 12345u);
    CHECK_EQ(lim.try_check(req, now, untouched), TG_OK);
    CHECK_EQ(untouched.minute_limit, 30u);
    tollgate::Request free_tier = req;
    free_tier.tier = tollgate::Tier::Free;
    CHECK_THROWS(lim.check(free_tier, now), TG_E_NO_LIMIT);
    tollgate::Request empty_acct = req;
    empty_acct.account = std::string_view("x", 0);
    CHECK_THROWS(lim.check(empty_acct, now), TG_E_ACCOUNT);
    std::string acct65(65, 'a');
    tollgate::Request long_acct = req;
    long_acct.account = acct65;
    CHECK_THROWS(lim.check(long_acct, now), TG_E_ACCOUNT);
    tollgate::Request costly = req;
    costly.account = "cpp-cost";
    costly.cost = 31;
    CHECK_THROWS(lim.check(costly, now), TG_E_COST_TOO_LARGE);
    try {
        lim.check(bad, now);
    } catch (const std::runtime_error &e) {  // catchable as a standard exception too
        CHECK(contains(e.what(), tg_status_str(TG_E_UNKNOWN_MODEL)));
    }

    // string_view keys need no NUL: a view into the middle of a buffer.
    const std::string buf = "xxcpp-acctyy";
    tollgate::Request view = req;
    view.account = std::string_view(buf).substr(2, 8);  // "cpp-acct"
    view.cost = 0;
    auto v = lim.check(view, now);
    CHECK(!v.allowed);  // the same key as req: its minute is spent

    // Wall-clock form, in a table of its own: seen from today's clock the
    // keys above (counted on day 20000) are stale, so a key checked at the
    // real time may rightly take over one of their slots.
    tollgate::Limiter wall_lim(policy, 16);
    tollgate::Request wall = req;
    wall.account = "cpp-wall";
    CHECK(wall_lim.check(wall).allowed);

    // Stats.
    auto st = lim.stats(now);
    CHECK(st.slots >= 256u);
    CHECK(st.used >= 3u);
    CHECK_EQ(st.layout_version, static_cast<uint32_t>(TG_LAYOUT_VERSION));

    // Move the limiter: the counters go with it.
    tollgate::Limiter moved = std::move(lim);
    CHECK(!static_cast<bool>(lim));  // NOLINT(bugprone-use-after-move)
    CHECK_THROWS(lim.check(req, now), TG_E_NULL);
    CHECK(!moved.check(req, now).allowed);
}

void test_set_policy() {
    auto p1 = tollgate::Policy::builtin();
    tollgate::Limiter lim(p1, 64);
    tollgate::Request req;
    req.account = "cpp-setpol";
    req.model = DSV31;
    const uint64_t now = T0 + 3 * MS_MIN;
    for (int i = 0; i < 5; ++i) lim.check(req, now);
    {
        auto p2 = tollgate::Policy::parse(
            "[models]\n\"DeepSeek-V3.1\" = { region = \"EU\" }\n[tiers.developer]\n\"DeepSeek-V3.1\" = { rpm = 8, rpd = 80 }\n");
        lim.set_policy(p2);
    }  // p2 freed: the limiter holds a copy
    auto d = lim.check(req, now);
    CHECK_EQ(d.minute_limit, 8u);
    CHECK_EQ(d.minute_remaining, 2u);  // 8 - 6: counters kept
}

void test_regions() {
    auto policy = tollgate::Policy::builtin();
    const size_t len = tollgate::region_size(32);
    AlignedBuf mem(len);
    CHECK(mem.p != nullptr);
    CHECK_THROWS(tollgate::Limiter::attach(policy, mem.p, len), TG_E_REGION_MAGIC);
    auto a = tollgate::Limiter::init_in(policy, mem.p, len);
    auto b = tollgate::Limiter::attach(policy, mem.p, len);
    tollgate::Request req;
    req.account = "cpp-region";
    req.model = DSV31;
    const uint64_t now = T0 + 9 * MS_MIN;
    CHECK_EQ(a.check(req, now).minute_remaining, 29u);
    CHECK_EQ(b.check(req, now).minute_remaining, 28u);
    CHECK_THROWS(tollgate::Limiter::attach(policy, static_cast<char *>(mem.p) + 8, len - 64), TG_E_ALIGNMENT);

    // File-backed region: create, reopen, counters kept.
    char dir[] = "/tmp/tg-cpp-XXXXXX";
    CHECK(mkdtemp(dir) != nullptr);
    const std::string path = std::string(dir) + "/r.region";
    CHECK_THROWS(tollgate::Limiter::open(policy, path, 32, false), TG_E_IO);
    try {
        {
            auto f = tollgate::Limiter::open(policy, path, 32);
            f.check(req, now);
            f.check(req, now);
        }
        auto f = tollgate::Limiter::open(policy, path, 32, false);
        tollgate::Request peek = req;
        peek.cost = 0;
        CHECK_EQ(f.check(peek, now).minute_remaining, 28u);
    } catch (const tollgate::Error &e) {
        report(false, __FILE__, __LINE__, std::string("file region: ") + e.what());
    }
    unlink(path.c_str());
    rmdir(dir);
}

void test_threads() {
    auto policy = tollgate::Policy::builtin();
    tollgate::Limiter lim(policy, 64);
    const uint64_t now = T0 + 11 * MS_MIN;
    std::vector<int> admitted(4, 0);
    std::vector<std::thread> ts;
    for (size_t t = 0; t < admitted.size(); ++t) {
        ts.emplace_back([&lim, &admitted, t, now] {
            tollgate::Request r;
            r.account = "cpp-threads";
            r.model = "gpt-oss-120b";  // 150 RPM
            for (int k = 0; k < 100; ++k) {
                tollgate::Decision d;
                if (lim.try_check(r, now, d) == TG_OK && d.allowed) ++admitted[t];
            }
        });
    }
    for (auto &t : ts) t.join();
    int total = 0;
    for (int n : admitted) total += n;
    CHECK_EQ(total, 150);
}

}  // namespace

int main() {
    struct {
        const char *name;
        void (*fn)();
    } tests[] = {
        {"types", test_types},         {"policy", test_policy},   {"check_and_render", test_check_and_render},
        {"set_policy", test_set_policy}, {"regions", test_regions}, {"threads", test_threads},
    };
    for (auto &t : tests) {
        int before = g_fail;
        try {
            t.fn();
        } catch (const std::exception &e) {
            report(false, __FILE__, __LINE__, std::string(t.name) + ": unexpected exception: " + e.what());
        }
        std::printf("%-20s %s\n", t.name, g_fail == before ? "ok" : "FAILED");
    }
    std::printf("%d passed, %d failed\n", g_pass, g_fail);
    return g_fail == 0 ? 0 : 1;
}
