// Test of tollgate.hpp against the real library. Built and run by tests/c/run.sh:
//   g++ -std=c++17 -Wall -Wextra -Werror -Iinclude -Ibindings/cpp bindings/cpp/test_tollgate.cpp -ltollgate
//   ./test_tollgate [tests/conformance.json]   (or TOLLGATE_CONFORMANCE=<path>)
// Times are explicit, so nothing depends on the wall clock. Last line: "N passed, M failed".
#include "tollgate.hpp"

#include <nlohmann/json.hpp>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <regex>
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

    // Versions: this header's, at build time, and the library's, at run time
    // (one build here, so they agree).
    static_assert(tollgate::header_version_number() == TG_VERSION_NUMBER);
    CHECK(std::string(tollgate::header_version_string()) == TG_VERSION_STRING);
    CHECK(std::string(tollgate::version_string()) == tollgate::header_version_string());
    CHECK(std::string(tollgate::version()) == tollgate::version_string());

    // Answers are values, the body scan a move-only owner of its memory.
    static_assert(std::is_nothrow_copy_constructible_v<tollgate::Answer>);
    static_assert(std::is_nothrow_default_constructible_v<tollgate::Answer>);
    static_assert(!std::is_copy_constructible_v<tollgate::BodyScan>);
    static_assert(std::is_nothrow_move_constructible_v<tollgate::BodyScan>);
    static_assert(std::is_nothrow_move_assignable_v<tollgate::BodyScan>);
    static_assert(std::is_nothrow_destructible_v<tollgate::Limiter>);
    static_assert(std::is_nothrow_destructible_v<tollgate::BodyScan>);
    static_assert(TG_OUTCOMES == 10, "a new TG_OUTCOME_*: add it to tollgate::Outcome");
    for (uint32_t o = 0; o < TG_OUTCOMES; ++o) CHECK(std::strlen(tollgate::outcome_name(tollgate::Outcome(o))) > 0);
    CHECK(std::string(tollgate::outcome_name(tollgate::Outcome::DryRun)) == "DRY_RUN");
    CHECK(std::string(tollgate::outcome_name(tollgate::Outcome(TG_OUTCOMES))).empty());
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

void test_model_handle() {
    auto p = tollgate::Policy::builtin();
    tollgate::Limiter lim(p, 64);
    const uint32_t h = lim.model(DSV31);
    CHECK(h != 0u);
    tollgate::Request by_name;
    by_name.account = "cpp-handle";
    by_name.model = DSV31;
    tollgate::Request by_handle;
    by_handle.account = "cpp-handle";
    by_handle.model_handle = h;  // no name: the handle is the model
    CHECK_EQ(lim.check(by_name, T0).minute_remaining, 29u);
    CHECK_EQ(lim.check(by_handle, T0).minute_remaining, 28u);
    bool threw = false;
    try {
        lim.model("no-such-model");
    } catch (const tollgate::Error &e) {
        threw = e.code() == TG_E_UNKNOWN_MODEL;
    }
    CHECK(threw);
    lim.set_policy(p);
    tollgate::Decision d;
    CHECK_EQ(lim.try_check(by_handle, T0, d), TG_E_UNKNOWN_MODEL);  // stale
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

    // One constructor with Options, wherever the table lives; the format
    // read back from the header.
    tollgate::LimiterOptions leased;
    leased.leases = true;
    CHECK(!a.is_leased());
    CHECK(tollgate::Limiter::make(policy, 32, leased).is_leased());
    CHECK(!tollgate::Limiter::make(policy, 32, tollgate::LimiterOptions()).is_leased());
    const size_t leased_len = tg_region_size_for_leases(32);
    AlignedBuf leased_mem(leased_len);
    CHECK(leased_mem.p != nullptr);
    CHECK(tollgate::Limiter::init_in(policy, leased_mem.p, leased_len, leased).is_leased());
    CHECK(tollgate::Limiter::attach(policy, leased_mem.p, leased_len).is_leased());
    CHECK(tollgate::Limiter::init_in(policy, leased_mem.p, leased_len, leased, true).is_leased());
    CHECK_THROWS(tollgate::Limiter::init_in(policy, mem.p, len, leased, true), TG_E_NOT_LEASED);
    try {
        CHECK(tollgate::Limiter::open(policy, path, 32, leased).is_leased());
        CHECK(tollgate::Limiter::open(policy, path, 0, false).is_leased());
    } catch (const tollgate::Error &e) {
        report(false, __FILE__, __LINE__, std::string("leased file: ") + e.what());
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

// One quota across two "hosts" (two tables) through a real redis-server
// (tests/c/run.sh starts one: TOLLGATE_TEST_REDIS_URL), from threads that
// wait for Redis as a thread-per-request server does, in both modes.
void test_leases() {
    const char *url = std::getenv("TOLLGATE_TEST_REDIS_URL");
    if (!url) {
        std::printf("  (skipped: TOLLGATE_TEST_REDIS_URL is not set; tests/c/run.sh sets it)\n");
        return;
    }
    auto policy = tollgate::Policy::builtin();
    CHECK_THROWS(tollgate::RedisOptions().set("down", "maybe"), TG_E_INVALID);
    try {
        tollgate::RedisOptions().set("hosts", "0");
        report(false, __FILE__, __LINE__, "hosts=0 did not throw");
    } catch (const tollgate::Error &e) {
        CHECK(contains(e.detail(), "hosts"));
    }
    tollgate::Limiter local(policy, 64);
    CHECK_THROWS(local.connect(url), TG_E_NOT_LEASED);
    CHECK(!local.lease_stats().has_value());

    // Tomorrow, mid-minute: every window open by Redis's clock.
    const uint64_t now = (tg_now_ms() / MS_MIN + 24 * 60) * MS_MIN + 30000;
    for (const char *mode : {"leases", "exact"}) {
        tollgate::RedisOptions opts;
        // A deadline no loaded machine misses: this test is about exactness
        // (a missed deadline would rightly admit by the down policy).
        opts.set("hosts", "2").set("mode", mode).set("deadline", "2s");
        tollgate::LimiterOptions leased;
        leased.leases = true;
        tollgate::Limiter a = tollgate::Limiter::make(policy, 64, leased);
        tollgate::Limiter b = tollgate::Limiter::make(policy, 64, leased);
        tollgate::Request first;
        first.account = "cpp-not-joined";
        first.model = DSV31;
        CHECK_THROWS((void)a.check(first, now), TG_E_NOT_JOINED);
        a.connect(url, opts);
        b.connect(url, opts);
        const std::string account = std::string("cpp-leases-") + mode + "-" + std::to_string(getpid()) + "-" +
                                    std::to_string(tg_now_ms());
        // 4 threads per host, 20 tries each, on one 30 RPM key.
        std::vector<int> admitted(8, 0);
        std::vector<std::thread> ts;
        for (size_t t = 0; t < admitted.size(); ++t) {
            tollgate::Limiter &lim = t % 2 == 0 ? a : b;
            ts.emplace_back([&lim, &admitted, &account, t, now] {
                tollgate::Request r;
                r.account = account;
                r.model = DSV31;
                for (int k = 0; k < 20; ++k) {
                    tollgate::Decision d;
                    if (lim.try_check(r, now, d) == TG_OK && d.allowed) ++admitted[t];
                }
            });
        }
        for (auto &t : ts) t.join();
        int total = 0;
        for (int n : admitted) total += n;
        CHECK_EQ(total, 30);  // one quota over both hosts, and all of it
        CHECK_EQ(a.lease_stats()->degraded + b.lease_stats()->degraded, 0u);
        tollgate::Request r;
        r.account = account;
        r.model = DSV31;
        r.no_wait = true;
        tollgate::Decision d;
        const tg_status s = a.try_check(r, now, d);
        CHECK(s == TG_PENDING || (s == TG_OK && !d.allowed));
        const auto st = a.lease_stats();
        CHECK(st.has_value());
        if (st) {
            CHECK_EQ(st->mode, std::string(mode) == "exact" ? uint32_t{TG_REDIS_EXACT} : uint32_t{TG_REDIS_LEASES});
            CHECK_EQ(st->redis_down, 0u);
            CHECK(st->refused_by_store >= 1 || b.lease_stats()->refused_by_store >= 1);
        }
        a.disconnect();
        CHECK(!a.lease_stats().has_value());
    }
}

// Limiter constructors carry the library's reason (tg_last_error) in detail().
void test_constructor_errors() {
    auto policy = tollgate::Policy::builtin();
    const std::string missing = "/nonexistent-tollgate-cpp/dir/r.region";
    try {
        (void)tollgate::Limiter::open(policy, missing, 8, false);
        report(false, __FILE__, __LINE__, "open of a missing file did not throw");
    } catch (const tollgate::Error &e) {
        CHECK_EQ(e.code(), TG_E_IO);
        CHECK(contains(e.detail(), missing));
        CHECK(contains(e.what(), e.detail()));
    }
    try {
        tollgate::Limiter none(policy, 0);
        report(false, __FILE__, __LINE__, "a limiter of 0 slots did not throw");
    } catch (const tollgate::Error &e) {
        CHECK_EQ(e.code(), TG_E_INVALID);
        CHECK(!e.detail().empty());
    }
    const size_t len = tollgate::region_size(8);
    AlignedBuf mem(len);
    try {
        (void)tollgate::Limiter::attach(policy, mem.p, len);
        report(false, __FILE__, __LINE__, "attach to zeroed memory did not throw");
    } catch (const tollgate::Error &e) {
        CHECK_EQ(e.code(), TG_E_REGION_MAGIC);
        CHECK(!e.detail().empty());
    }
    // An empty policy right after a failure: TG_E_NULL, and not the message
    // of the failure before (the library leaves it in place on that path).
    auto gone = std::move(policy);
    try {
        tollgate::Limiter l(policy, 8);  // NOLINT(bugprone-use-after-move): testing the moved-from state
        report(false, __FILE__, __LINE__, "a limiter from an empty policy did not throw");
    } catch (const tollgate::Error &e) {
        CHECK_EQ(e.code(), TG_E_NULL);
        CHECK(e.detail().empty());
    }
    // And a success after a failure works as before.
    tollgate::Limiter ok(gone, 8);
    CHECK(static_cast<bool>(ok));
}

constexpr const char *TINY_POLICY =
    "[models]\n\"tiny\" = { region = \"EU\" }\n[tiers.developer]\n\"tiny\" = { rpm = 1, rpd = 10 }\n";

void test_answer() {
    auto policy = tollgate::Policy::parse(TINY_POLICY);
    tollgate::Limiter lim(policy, 64);
    const uint64_t now = T0 + 13 * MS_MIN;
    tollgate::HttpRequest r;
    r.account = "cpp-answer";
    r.body = R"({"model":"tiny","messages":[]})";

    const auto a = lim.answer(r, now);
    CHECK(a.passes());
    CHECK_EQ(a.http_status(), 0u);
    CHECK_EQ(a.would_status(), 0u);
    CHECK(a.outcome() == tollgate::Outcome::Passed);
    CHECK(std::string(a.outcome_name()) == "PASSED");
    CHECK(a.decision().has_value() && a.decision()->allowed && a.decision()->minute_remaining == 0);
    const auto ah = a.headers();
    CHECK_EQ(ah.size(), size_t{6});
    CHECK(!ah.empty() && ah.front().first == "x-ratelimit-limit-requests" && ah.front().second == "1");
    CHECK(a.body().empty());

    const auto b = lim.answer(r, now);
    CHECK_EQ(b.http_status(), 429u);
    CHECK(!b.passes());
    CHECK(b.outcome() == tollgate::Outcome::Rejected);
    CHECK(b.decision().has_value() && !b.decision()->allowed);
    const auto bh = b.headers();
    // every header but the six for tokens and the two for in-flight (the
    // key has neither limit)
    CHECK_EQ(bh.size(), size_t{TG_ANSWER_HEADERS_MAX} - 8);
    CHECK(!bh.empty() && bh.back() == std::make_pair(std::string("content-type"), std::string("application/json")));
    bool retry = false;
    bool should_retry = false;
    for (const auto &h : bh) {
        retry = retry || (h.first == "retry-after" && h.second == "60");
        // the minute's refusal: an SDK's retry after retry-after gets through
        should_retry = should_retry || (h.first == "x-should-retry" && h.second == "true");
    }
    CHECK(retry);
    CHECK(should_retry);
    // The one 429 body: the same whichever call renders it.
    CHECK(b.body() == b.decision()->error_body("tiny"));
    CHECK(tollgate::answer_for(*b.decision(), "tiny").body() == b.body());
    CHECK(tollgate::Answer(b.c()).body() == b.body());

    // Options.
    tollgate::Options dry;
    dry.dry_run = true;
    const auto c = lim.answer(r, now, dry);
    CHECK(c.passes());
    CHECK_EQ(c.would_status(), 429u);
    CHECK(c.outcome() == tollgate::Outcome::DryRun);
    CHECK_EQ(c.headers().size(), size_t{6});  // the six: no retry-after on a pass, no content-type
    CHECK(c.body().empty());
    tollgate::Options busy;
    busy.refuse_status = 503;
    CHECK_EQ(lim.answer(r, now, busy).http_status(), 503u);
    tollgate::Options bad;
    bad.refuse_status = 42;
    CHECK_THROWS(lim.answer(r, now, bad), TG_E_INVALID);
    tollgate::Answer untouched = b;
    CHECK_EQ(lim.try_answer(r, now, bad, untouched), TG_E_INVALID);
    CHECK_EQ(untouched.http_status(), 429u);

    // No account at all differs from an empty one: only the first is what
    // no_account_pass lets through.
    tollgate::Options pass;
    pass.no_account_pass = true;
    tollgate::HttpRequest anon = r;
    anon.account = std::nullopt;
    const auto n = lim.answer(anon, now, pass);
    CHECK(n.passes() && n.outcome() == tollgate::Outcome::NoAccount && n.headers().empty());
    anon.account = std::string_view();  // present, but empty (and a NULL data())
    const auto e = lim.answer(anon, now, pass);
    CHECK_EQ(e.http_status(), 401u);
    CHECK(e.outcome() == tollgate::Outcome::NoAccount);
    CHECK(!e.body().empty());

    // Methods that are not limited pass unread; a moved-from handle throws.
    tollgate::HttpRequest get = r;
    get.method = "GET";
    get.body = "not even JSON";
    const auto g = lim.answer(get, now);
    CHECK(g.passes() && g.outcome() == tollgate::Outcome::NotLimited && g.headers().empty());
    tollgate::Limiter moved = std::move(lim);
    CHECK_THROWS(lim.answer(r, now), TG_E_NULL);  // NOLINT(bugprone-use-after-move)
    CHECK(!moved.answer(r, now).passes());

    // The step-by-step form.
    const auto u = tollgate::answer_for(TG_E_UNKNOWN_MODEL, nullptr, "gpt-9");
    CHECK_EQ(u.http_status(), 404u);
    CHECK(u.outcome() == tollgate::Outcome::UnknownModel);
    CHECK(contains(u.body(), "gpt-9"));
    CHECK(!u.decision().has_value());
    CHECK_THROWS(tollgate::answer_for(TG_OK, nullptr, ""), TG_E_NULL);
    const auto nl = tollgate::answer_for(TG_E_NOT_LIMITED, nullptr, std::string_view());
    CHECK(nl.passes() && nl.outcome() == tollgate::Outcome::NotLimited);

    // Parts that are no answer's are refused, not trusted.
    tg_answer t = b.c();
    t.body_kind = 99;
    CHECK_THROWS(tollgate::Answer(t).body(), TG_E_INVALID);
    CHECK_THROWS(tollgate::Answer(t).headers(), TG_E_INVALID);

    // The one tier parser and the one rule of limited methods.
    CHECK(tollgate::parse_tier("Developer") == tollgate::Tier::Developer);
    CHECK(tollgate::parse_tier("FREE") == tollgate::Tier::Free);
    CHECK(tollgate::parse_tier("enterprise") == tollgate::Tier::Enterprise);
    CHECK_THROWS(tollgate::parse_tier("gold"), TG_E_INVALID);
    CHECK_THROWS(tollgate::parse_tier(std::string_view()), TG_E_INVALID);
    tollgate::Tier tier = tollgate::Tier::Enterprise;
    CHECK_EQ(tollgate::try_parse_tier("developer ", tier), TG_E_INVALID);
    CHECK(tier == tollgate::Tier::Enterprise);
    CHECK(tollgate::method_limited("POST"));
    CHECK(!tollgate::method_limited("post"));
    CHECK(!tollgate::method_limited("GET"));
    CHECK(!tollgate::method_limited(std::string_view()));
}

void test_body_scan() {
    tollgate::BodyScan scan;
    const std::string body = R"({"x":{"model":"nested"},"model":"DeepSeek-V3.1","y":[1,2]})";
    for (char ch : body) CHECK_EQ(scan.feed(std::string_view(&ch, 1)), TG_OK);
    std::string_view model;
    CHECK_EQ(scan.finish(model), TG_OK);
    CHECK(model == DSV31);

    scan.reset();
    tg_status st = scan.feed("[1]");
    if (st == TG_OK) st = scan.finish(model);
    CHECK_EQ(st, TG_E_BODY_NOT_JSON);
    CHECK_EQ(scan.feed("{}"), TG_E_BODY_NOT_JSON);  // sticky
    model = "unchanged";
    CHECK_EQ(scan.finish(model), TG_E_BODY_NOT_JSON);
    CHECK(model == "unchanged");

    scan.reset();
    CHECK_EQ(scan.feed(R"({"model":"a","Model":"b"})"), TG_OK);
    CHECK_EQ(scan.finish(model), TG_E_BODY_AMBIGUOUS_MODEL);

    tollgate::BodyScan other = std::move(scan);
    other.reset();
    CHECK_EQ(other.feed(R"({"model":"m"})"), TG_OK);
    CHECK_EQ(other.finish(model), TG_OK);
    CHECK(model == "m");
    CHECK_EQ(scan.feed("{}"), TG_E_NULL);  // NOLINT(bugprone-use-after-move)
    CHECK_THROWS(scan.reset(), TG_E_NULL);
}

// Tokens: the body's estimate reserved with the request, a Reservation that
// settles from the response's usage, or as cut when it goes out of scope.
void test_tokens() {
    const auto policy = tollgate::Policy::parse(
        "[models]\n\"m\" = { region = \"EU\" }\n"
        "[tiers.developer]\n\"m\" = { rpm = 100, rpd = 1000, tpm = 5000, tpd = 50000 }\n"
        "[tokens]\ndefault_max_output = 1000\n");
    const tollgate::Limiter lim(policy, 64);
    const uint64_t now = 1795741200000ULL;
    const std::string body = R"({"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":200})";
    tollgate::BodyScan scan;
    CHECK_EQ(scan.feed(body), TG_OK);
    std::string_view model;
    CHECK_EQ(scan.finish(model), TG_OK);
    tollgate::Request r;
    r.account = "cpp-tok";
    r.model = model;
    r.tokens = lim.estimate_tokens(scan.facts());
    CHECK_EQ(r.tokens, uint32_t((body.size() + 3) / 4 + 200));
    const auto d = lim.check(r, now);
    CHECK(d.allowed && d.tokens.has_value());
    CHECK_EQ(d.tokens->minute_remaining, 5000u - r.tokens);
    CHECK(d.tokens->has_ticket());
    {
        tollgate::Reservation res(lim, d);
        auto usage = tollgate::UsageScan::open("application/json");
        CHECK(usage.has_value());
        usage->feed(R"({"usage":{"prompt_tokens":20,"completion_tokens":30,"total_tokens":50}})");
        CHECK_EQ(res.settle(usage->finish(200, false)), uint64_t{50});
        CHECK(!res.held());
    }
    r.cost = 0;
    CHECK_EQ(lim.check(r, now).tokens->minute_remaining, 5000u - 50u);
    r.cost = 1;
    {
        // Gone out of scope unsettled (an exception, say): cut, kept.
        tollgate::Reservation res(lim, lim.check(r, now));
        CHECK(res.held());
    }
    r.cost = 0;
    CHECK_EQ(lim.check(r, now).tokens->minute_remaining, 5000u - 50u - r.tokens);
    CHECK(!tollgate::UsageScan::open("text/html").has_value());
    // Its answer carries the token headers.
    r.cost = 1;
    const auto d2 = lim.check(r, now);
    const auto a = tollgate::answer_for(TG_OK, &d2, "m");
    bool seen = false;
    for (const auto &h : a.headers()) seen = seen || h.first == "x-ratelimit-remaining-tokens";
    CHECK(seen);
    CHECK(a.decision()->tokens.has_value());
    tollgate::Reservation(lim, d2).settle(tollgate::UsageScan::open("application/json")->finish(500, false));
}

// In flight: a thread-per-request server holds each admission in a
// Reservation, which releases it however the handler leaves.
void test_in_flight() {
    const auto policy = tollgate::Policy::parse(
        "[models]\n\"m\" = { region = \"EU\" }\n"
        "[tiers.developer]\n\"m\" = { rpm = 100, rpd = 1000, max_in_flight = 2 }\n");
    const tollgate::Limiter lim(policy, 64);
    const uint64_t now = 1795741200000ULL;
    tollgate::Request r;
    r.account = "cpp-fly";
    r.model = "m";
    auto handler = [&](bool fail) {
        tollgate::Reservation res(lim, lim.check(r, now));
        if (fail) throw std::runtime_error("the handler failed");
        res.finish(TG_END_COMPLETE);
    };
    handler(false);
    bool thrown = false;
    try {
        handler(true);
    } catch (const std::runtime_error &) {
        thrown = true;
    }
    CHECK(thrown);
    {
        const auto a = lim.check(r, now);
        CHECK(a.allowed && a.in_flight && a.in_flight->admitted());
        CHECK_EQ(a.in_flight->limit, 2u);
        CHECK_EQ(a.in_flight->in_use, 1u);
        tollgate::Reservation ra(lim, a);
        tollgate::Reservation rb(lim, lim.check(r, now));
        const auto c = lim.check(r, now);
        CHECK(!c.allowed);
        CHECK(c.limited_by == tollgate::LimitedBy::InFlight);
        CHECK_EQ(c.retry_after, 0u);
        CHECK(!c.in_flight->admitted());
        const auto ans = tollgate::answer_for(TG_OK, &c, "m");
        CHECK_EQ(ans.http_status(), 429u);
        CHECK(ans.body().find("in_flight_limit_exceeded") != std::string::npos);
        tollgate::Reservation moved = std::move(rb);
        CHECK(!rb.held());  // NOLINT(bugprone-use-after-move)
        CHECK(moved.held());
    }
    // Both released by their guards: two at once again.
    tollgate::Reservation x(lim, lim.check(r, now)), y(lim, lim.check(r, now));
    CHECK(x.held() && y.held());
    x.finish(TG_END_COMPLETE);
    CHECK(!x.held());
    const auto st = lim.stats(now);
    CHECK(st.has_in_flight);
    CHECK_EQ(st.in_flight, uint64_t{1});
    CHECK_EQ(st.released_completed, uint64_t{2});
    CHECK_EQ(st.released_aborted, uint64_t{3});  // the throw, and the two guards
    CHECK_EQ(st.refused_in_flight, uint64_t{1});
    // tg_check has nowhere to put an admission: refused, nothing decided.
    tg_decision d{};
    const tg_request cr = r.to_c();
    CHECK_EQ(tg_check(lim.get(), &cr, now, &d), TG_E_NO_IN_FLIGHT);
    CHECK_THROWS(lim.release(0, TG_END_COMPLETE), TG_E_INVALID);
}

// Account ids from API keys: the library's digest, as every binding's.
void test_account_digest() {
    // hashlib.blake2b(b"sk-test", digest_size=16).hexdigest()
    const std::string want = "c341dda362e14f03d05c78a3a7c7a93a";
    CHECK(tollgate::account_digest("sk-test") == want);
    CHECK_EQ(tollgate::account_digest(std::string(164, 'k')).size(), size_t(TG_ACCOUNT_DIGEST_LEN));
    CHECK(tollgate::bearer_key("bearer  sk-test ") == std::optional<std::string_view>("sk-test"));
    CHECK(tollgate::bearer_digest("Bearer sk-test") == std::optional<std::string>(want));
    CHECK(!tollgate::bearer_key("Basic dXNlcg=="));
    CHECK(!tollgate::bearer_digest("Bearer "));
    CHECK(!tollgate::bearer_digest(std::string_view()));
}

// ---- The conformance table (tests/conformance.json), through this header.

using json = nlohmann::json;
constexpr uint64_t CONF_NOW = 1796126400000ULL;  // tests/conformance.rs's NOW
const char *g_conformance = nullptr;             // argv[1] or TOLLGATE_CONFORMANCE

// A received answer: status (200 = passed upstream), outcome, headers, body.
struct Got {
    uint32_t status = 0;
    std::string outcome;
    std::vector<std::pair<std::string, std::string>> headers;
    std::optional<std::string> body;
};

Got got_of(const tollgate::Answer &a) {
    Got g;
    g.status = a.passes() ? 200 : a.http_status();
    g.outcome = a.outcome_name();
    g.headers = a.headers();
    if (!a.passes()) g.body = a.body();
    return g;
}

// The table's rules (as tests/conformance.rs): strings starting "re:" are
// ECMAScript patterns searched for; objects have exactly the wanted keys,
// each matching; anything else is equal.
bool matches(const json &want, const json &got) {
    if (want.is_string() && got.is_string()) {
        const auto &w = want.get_ref<const std::string &>();
        const auto &g = got.get_ref<const std::string &>();
        if (w.rfind("re:", 0) == 0) return std::regex_search(g, std::regex(w.substr(3), std::regex::ECMAScript));
        return w == g;
    }
    if (want.is_object() && got.is_object()) {
        if (want.size() != got.size()) return false;
        for (const auto &kv : want.items()) {
            const auto g = got.find(kv.key());
            if (g == got.end() || !matches(kv.value(), *g)) return false;
        }
        return true;
    }
    return want == got;
}

// What differs between a case's expectation and the answer; empty = conforms.
std::vector<std::string> mismatches(const json &c, const Got &got) {
    std::vector<std::string> bad;
    const json &want = c.at("expect");
    if (got.status != want.at("status").get<uint32_t>())
        bad.push_back("status " + std::to_string(got.status) + ", want " + want.at("status").dump());
    if (got.outcome != want.at("outcome").get<std::string>())
        bad.push_back("outcome " + got.outcome + ", want " + want.at("outcome").dump());
    for (const auto &kv : want.at("headers").items()) {
        const std::pair<std::string, std::string> *h = nullptr;
        for (const auto &g : got.headers) {
            if (g.first == kv.key()) {
                h = &g;
                break;
            }
        }
        if (h == nullptr)
            bad.push_back("no header " + kv.key());
        else if (!matches(kv.value(), json(h->second)))
            bad.push_back("header " + kv.key() + ": " + h->second + ", want " + kv.value().dump());
    }
    if (want.contains("absent")) {
        for (const auto &a : want.at("absent")) {
            for (const auto &g : got.headers)
                if (g.first == a.get<std::string>()) bad.push_back("header " + g.first + " sent");
        }
    }
    const json wb = want.value("body", json());
    if (!got.body) {
        if (!wb.is_null()) bad.push_back("passed upstream, want body " + wb.dump());
    } else {
        const json parsed = json::parse(*got.body, nullptr, false);
        if (parsed.is_discarded())
            bad.push_back("body is not JSON: " + *got.body);
        else if (!matches(wb, parsed))
            bad.push_back("body " + *got.body + ", want " + wb.dump());
    }
    return bad;
}

struct CaseRequest {
    std::string method;
    std::optional<std::string> account;  // null in the table: no Authorization header
    std::string tier;
    std::string body;

    explicit CaseRequest(const json &c) {
        const json &r = c.at("request");
        method = r.at("method").get<std::string>();
        if (!r.at("account").is_null()) account = r.at("account").get<std::string>();
        tier = r.at("tier").get<std::string>();
        body = r.at("body").get<std::string>();
    }

    tollgate::HttpRequest http() const {
        tollgate::HttpRequest h;
        h.method = method;
        if (account) h.account = std::string_view(*account);
        h.tier = tier;
        h.body = body;
        return h;
    }
};

// The whole-body path: one Limiter::answer per request.
tollgate::Answer answer_in_one_call(const tollgate::Limiter &lim, const CaseRequest &r) {
    return lim.answer(r.http(), CONF_NOW);
}

// The streaming path (what nginx does): method, account, the body in
// 5-byte chunks through BodyScan, the tier, check, then answer_for.
tollgate::Answer answer_step_by_step(const tollgate::Limiter &lim, tollgate::BodyScan &scan, const CaseRequest &r) {
    if (!tollgate::method_limited(r.method)) return tollgate::answer_for(TG_E_NOT_LIMITED, nullptr, "");
    if (!r.account) return tollgate::answer_for(TG_E_NO_ACCOUNT, nullptr, "");
    scan.reset();
    tg_status st = TG_OK;
    const std::string_view body = r.body;
    for (size_t i = 0; i < body.size() && st == TG_OK; i += 5) st = scan.feed(body.substr(i, 5));
    std::string_view model;
    if (st == TG_OK) st = scan.finish(model);
    if (st != TG_OK) return tollgate::answer_for(st, nullptr, "");
    tollgate::Tier tier = tollgate::Tier::Developer;
    st = tollgate::try_parse_tier(r.tier, tier);
    if (st != TG_OK) return tollgate::answer_for(st, nullptr, model);
    tollgate::Request q;
    q.account = *r.account;
    q.model = model;
    q.tier = tier;
    q.tokens = lim.estimate_tokens(scan.facts());
    tollgate::Decision d;
    st = lim.try_check(q, CONF_NOW, d);
    return tollgate::answer_for(st, st == TG_OK ? &d : nullptr, model);
}

struct Table {
    std::filesystem::path policy;
    json cases;
};

std::optional<Table> load_table() {
    const std::string path = g_conformance != nullptr ? g_conformance : "tests/conformance.json";
    std::ifstream in(path);
    if (!in) {
        report(false, __FILE__, __LINE__, "cannot read the conformance table " + path);
        return std::nullopt;
    }
    const json doc = json::parse(in);
    // The table names its policy relative to the repository root, the
    // directory above the table's.
    const auto root = std::filesystem::absolute(path).parent_path().parent_path();
    return Table{root / doc.at("policy").get<std::string>(), doc.at("cases")};
}

void test_conformance() {
    const auto table = load_table();
    if (!table) return;
    CHECK(table->cases.is_array() && !table->cases.empty());
    const auto policy = tollgate::Policy::load(table->policy.string());
    tollgate::Limiter whole(policy, 1024), stepped(policy, 1024);
    tollgate::BodyScan scan;
    for (const auto &c : table->cases) {
        const std::string name = c.at("name").get<std::string>();
        const CaseRequest r(c);
        // The earlier requests each run to their end; the held ones until
        // the case's answers are in (their guards release them then).
        const uint64_t before = c.value("before", uint64_t{0});
        for (uint64_t i = 0; i < before; ++i) {
            tollgate::Reservation(whole, answer_in_one_call(whole, r)).finish(TG_END_COMPLETE);
            tollgate::Reservation(stepped, answer_step_by_step(stepped, scan, r)).finish(TG_END_COMPLETE);
        }
        std::vector<tollgate::Reservation> held;
        for (uint64_t i = 0; i < c.value("held", uint64_t{0}); ++i) {
            held.emplace_back(whole, answer_in_one_call(whole, r));
            held.emplace_back(stepped, answer_step_by_step(stepped, scan, r));
        }
        const struct {
            const char *path;
            tollgate::Answer answer;
        } got[] = {{"Limiter::answer", answer_in_one_call(whole, r)},
                   {"step by step", answer_step_by_step(stepped, scan, r)}};
        held.emplace_back(whole, got[0].answer);
        held.emplace_back(stepped, got[1].answer);
        for (const auto &g : got) {
            std::string why;
            for (const auto &m : mismatches(c, got_of(g.answer))) why += "\n    " + m;
            report(why.empty(), __FILE__, __LINE__, "conformance '" + name + "' (" + g.path + "):" + why);
        }
    }
    std::printf("conformance: %zu cases, 2 paths\n", table->cases.size());
}

// The table is not vacuous: a changed expectation is seen.
void test_conformance_catches_changes() {
    const auto table = load_table();
    if (!table) return;
    const auto policy = tollgate::Policy::load(table->policy.string());
    auto find = [&](const char *name) {
        for (const auto &c : table->cases)
            if (c.at("name") == name) return c;
        report(false, __FILE__, __LINE__, std::string("no case named ") + name);
        return json();
    };
    auto differs = [&](json c) {
        if (c.is_null()) return false;
        tollgate::Limiter lim(policy, 64);
        return !mismatches(c, got_of(answer_in_one_call(lim, CaseRequest(c)))).empty();
    };
    const json unknown = find("unknown model"), admitted = find("admitted");
    CHECK(!differs(unknown));
    CHECK(!differs(admitted));
    json c = unknown;
    c["expect"]["body"]["error"]["code"] = "something_else";
    CHECK(differs(c));
    c = unknown;
    c["expect"]["body"]["error"].erase("param");
    CHECK(differs(c));
    c = unknown;
    c["expect"]["status"] = 400;
    CHECK(differs(c));
    c = unknown;
    c["expect"]["outcome"] = "BAD_REQUEST";
    CHECK(differs(c));
    c = unknown;
    c["expect"]["absent"].push_back("content-type");
    CHECK(differs(c));
    c = admitted;
    c["expect"]["headers"]["x-ratelimit-remaining-requests"] = "28";
    CHECK(differs(c));
    c = admitted;
    c["expect"]["headers"]["x-ratelimit-reset-requests"] = "re:^[a-z]+$";
    CHECK(differs(c));
    c = admitted;
    c["expect"]["headers"]["x-not-sent"] = "1";
    CHECK(differs(c));
    c = admitted;
    c["expect"]["body"] = {{"error", nullptr}};
    CHECK(differs(c));
}

}  // namespace

int main(int argc, char **argv) {
    g_conformance = argc > 1 ? argv[1] : std::getenv("TOLLGATE_CONFORMANCE");
    struct {
        const char *name;
        void (*fn)();
    } tests[] = {
        {"types", test_types},
        {"policy", test_policy},
        {"check_and_render", test_check_and_render},
        {"set_policy", test_set_policy},
        {"model_handle", test_model_handle},
        {"regions", test_regions},
        {"threads", test_threads},
        {"leases", test_leases},
        {"constructor_errors", test_constructor_errors},
        {"answer", test_answer},
        {"body_scan", test_body_scan},
        {"tokens", test_tokens},
        {"account_digest", test_account_digest},
        {"in_flight", test_in_flight},
        {"conformance", test_conformance},
        {"conformance_changes", test_conformance_catches_changes},
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
