// tollgate.hpp - header-only C++17 wrapper over the tollgate C ABI (tollgate.h).
//
// Link with the C library as usual: `c++ -std=c++17 app.cpp $(pkg-config --cflags --libs tollgate)`.
//
// Design choices:
//  * Ownership: Policy and Limiter are move-only RAII handles (std::unique_ptr
//    with a deleter calling tg_policy_free / tg_limiter_free). A moved-from
//    handle is empty; using it throws Error(TG_E_NULL), it never crashes.
//  * Errors: every non-OK tg_status becomes a thrown tollgate::Error, one class
//    (derived from std::runtime_error) with a code() accessor holding the
//    tg_status, status_str() the tg_status_str text, and detail() any message
//    the library wrote (policy file:line: field: reason). There is no subclass
//    per status: the statuses a server must react to (TG_E_UNKNOWN_MODEL ->
//    404, TG_E_TABLE_FULL -> fail open or closed, TG_E_NO_LIMIT) are told apart
//    by switching on code(). Hot paths that would rather not pay for an
//    exception on those outcomes call Limiter::try_check, which returns the
//    status and never throws.
//  * Strings: keys and model names are std::string_view (passed as pointer +
//    length, no NUL needed); file paths are std::string because the C API
//    wants NUL-terminated paths. Rendered headers and bodies come back as
//    std::string.
//  * No limiting logic lives here: every decision is the C library's.
#ifndef TOLLGATE_HPP
#define TOLLGATE_HPP

#include "tollgate.h"  // declares its functions extern "C" under C++

#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace tollgate {

enum class Tier : uint32_t {
    Free = TG_TIER_FREE,
    Developer = TG_TIER_DEVELOPER,
    Enterprise = TG_TIER_ENTERPRISE,
};

enum class LimitedBy : uint32_t {
    None = TG_LIMIT_NONE,
    Minute = TG_LIMIT_MINUTE,
    Day = TG_LIMIT_DAY,
};

inline const char *status_str(tg_status s) noexcept { return tg_status_str(s); }
inline uint32_t version_number() noexcept { return tg_version_number(); }
inline const char *version() noexcept { return tg_version(); }
inline uint32_t layout_version() noexcept { return tg_layout_version(); }
inline uint64_t now_ms() noexcept { return tg_now_ms(); }
inline size_t region_size(uint32_t slots) noexcept { return tg_region_size(slots); }
inline uint32_t region_slots_for(size_t len) noexcept { return tg_region_slots_for(len); }

class Error : public std::runtime_error {
public:
    explicit Error(tg_status code, std::string detail = std::string())
        : std::runtime_error(make_what(code, detail)), code_(code), detail_(std::move(detail)) {}

    tg_status code() const noexcept { return code_; }
    const char *status_str() const noexcept { return tg_status_str(code_); }
    const std::string &detail() const noexcept { return detail_; }

private:
    static std::string make_what(tg_status code, const std::string &detail) {
        std::string w = "tollgate: ";
        w += tg_status_str(code);
        if (!detail.empty()) {
            w += ": ";
            w += detail;
        }
        return w;
    }

    tg_status code_;
    std::string detail_;
};

namespace detail {

inline void ok_or_throw(tg_status s) {
    if (s != TG_OK) throw Error(s);
}

// Calls a C renderer, retrying once with the size it reported when the first
// buffer was too small (the library tells the exact size needed).
template <typename Render>
std::string render(Render &&fn) {
    std::string out(512, '\0');
    size_t written = 0;
    tg_status s = fn(&out[0], out.size(), &written);
    if (s == TG_E_BUFFER_TOO_SMALL) {
        out.assign(written + 1, '\0');
        s = fn(&out[0], out.size(), &written);
    }
    ok_or_throw(s);
    out.resize(written);
    return out;
}

struct PolicyDeleter {
    void operator()(tg_policy *p) const noexcept { tg_policy_free(p); }
};
struct LimiterDeleter {
    void operator()(tg_limiter *l) const noexcept { tg_limiter_free(l); }
};

}  // namespace detail

// One request to decide. The views must stay valid for the call only.
struct Request {
    std::string_view account;
    std::string_view model;
    Tier tier = Tier::Developer;
    uint32_t cost = 1;  // 0 = peek: look without counting
    uint32_t rpm = 0;   // explicit limits; 0 = from the policy
    uint32_t rpd = 0;

    tg_request to_c() const noexcept {
        tg_request r{};
        r.account = account.data();
        r.account_len = account.size();
        r.model = model.data();
        r.model_len = model.size();
        r.tier = static_cast<uint32_t>(tier);
        r.cost = cost;
        r.rpm = rpm;
        r.rpd = rpd;
        return r;
    }
};

// What the limiter decided, plus the renderers for the HTTP answer.
struct Decision {
    bool allowed = false;
    LimitedBy limited_by = LimitedBy::None;
    uint32_t minute_limit = 0;
    uint32_t minute_remaining = 0;
    uint64_t minute_reset = 0;  // epoch seconds
    uint32_t day_limit = 0;
    uint32_t day_remaining = 0;
    uint64_t day_reset = 0;  // epoch seconds
    uint32_t retry_after = 0;  // seconds; 0 when allowed

    static Decision from_c(const tg_decision &d) noexcept {
        Decision o;
        o.allowed = d.allowed != 0;
        o.limited_by = static_cast<LimitedBy>(d.limited_by);
        o.minute_limit = d.minute_limit;
        o.minute_remaining = d.minute_remaining;
        o.minute_reset = d.minute_reset;
        o.day_limit = d.day_limit;
        o.day_remaining = d.day_remaining;
        o.day_reset = d.day_reset;
        o.retry_after = d.retry_after;
        return o;
    }

    tg_decision to_c() const noexcept {
        tg_decision d{};
        d.allowed = allowed ? 1u : 0u;
        d.limited_by = static_cast<uint32_t>(limited_by);
        d.minute_limit = minute_limit;
        d.minute_remaining = minute_remaining;
        d.minute_reset = minute_reset;
        d.day_limit = day_limit;
        d.day_remaining = day_remaining;
        d.day_reset = day_reset;
        d.retry_after = retry_after;
        return d;
    }

    // "name: value\r\n" lines: the six x-ratelimit-* headers, plus retry-after when denied.
    std::string headers() const {
        const tg_decision d = to_c();
        return detail::render([&](char *b, size_t cap, size_t *w) { return tg_decision_headers(&d, b, cap, w); });
    }

    // RateLimit-Policy / RateLimit fields (IETF draft), same line format; their
    // `t` (seconds until reset) is counted from now_ms.
    std::string ietf_headers(uint64_t now_ms) const {
        const tg_decision d = to_c();
        return detail::render(
            [&](char *b, size_t cap, size_t *w) { return tg_decision_ietf_headers(&d, now_ms, b, cap, w); });
    }
    std::string ietf_headers() const { return ietf_headers(tg_now_ms()); }

    // OpenAI-shaped 429 JSON body naming the model and the limit hit.
    std::string error_body(std::string_view model) const {
        const tg_decision d = to_c();
        return detail::render([&](char *b, size_t cap, size_t *w) {
            return tg_decision_error_body(&d, model.data(), model.size(), b, cap, w);
        });
    }
};

struct Limits {
    uint32_t rpm = 0;
    uint32_t rpd = 0;
};

struct Stats {
    uint32_t slots = 0;
    uint32_t used = 0;
    uint64_t table_full = 0;
    uint64_t region_bytes = 0;
    uint32_t layout_version = 0;
};

class Policy {
public:
    // The built-in policy (the Developer tier table).
    static Policy builtin() {
        tg_policy *p = nullptr;
        detail::ok_or_throw(tg_policy_default(&p));
        return Policy(p);
    }

    // Reads a TOML policy file; throws Error(TG_E_POLICY or TG_E_IO, "file:line: field: reason").
    static Policy load(const std::string &path) {
        char err[1024] = {0};
        tg_policy *p = nullptr;
        tg_status s = tg_policy_load(path.c_str(), &p, err, sizeof err);
        if (s != TG_OK) throw Error(s, err);
        return Policy(p);
    }

    static Policy parse(std::string_view toml) {
        char err[1024] = {0};
        tg_policy *p = nullptr;
        tg_status s = tg_policy_parse(toml.data(), toml.size(), &p, err, sizeof err);
        if (s != TG_OK) throw Error(s, err);
        return Policy(p);
    }

    // The limits the policy yields; the account matters for enterprise plans only.
    Limits limits(Tier tier, std::string_view model, std::string_view account = std::string_view()) const {
        Limits l;
        detail::ok_or_throw(tg_policy_limits(p_.get(), static_cast<uint32_t>(tier), model.data(), model.size(),
                                             account.data(), account.size(), &l.rpm, &l.rpd));
        return l;
    }

    // The model ids the policy names, in the policy's order.
    std::vector<std::string> models() const {
        uint32_t n = 0;
        detail::ok_or_throw(tg_policy_model_count(p_.get(), &n));
        std::vector<std::string> out;
        out.reserve(n);
        for (uint32_t i = 0; i < n; ++i) {
            const char *name = nullptr;
            size_t len = 0;
            detail::ok_or_throw(tg_policy_model_name(p_.get(), i, &name, &len));
            out.emplace_back(name, len);
        }
        return out;
    }

    const tg_policy *get() const noexcept { return p_.get(); }
    explicit operator bool() const noexcept { return p_ != nullptr; }

private:
    explicit Policy(tg_policy *p) noexcept : p_(p) {}
    std::unique_ptr<tg_policy, detail::PolicyDeleter> p_;
};

// A limiter: thread-safe; one per process (or several over shared memory).
class Limiter {
public:
    // Private heap region with room for `slots` (account, model) keys.
    Limiter(const Policy &policy, uint32_t slots) {
        tg_limiter *l = nullptr;
        detail::ok_or_throw(tg_limiter_new(policy.get(), slots, &l));
        l_.reset(l);
    }

    // Formats caller memory (aligned to TG_REGION_ALIGN) as a fresh region;
    // the memory stays the caller's and must outlive the Limiter.
    static Limiter init_in(const Policy &policy, void *mem, size_t len) {
        tg_limiter *l = nullptr;
        detail::ok_or_throw(tg_limiter_init_in(policy.get(), mem, len, &l));
        return Limiter(l);
    }

    // Reuses an already formatted region (counters kept).
    static Limiter attach(const Policy &policy, void *mem, size_t len) {
        tg_limiter *l = nullptr;
        detail::ok_or_throw(tg_limiter_attach(policy.get(), mem, len, &l));
        return Limiter(l);
    }

    // File-backed region shared by processes; create formats it when missing.
    static Limiter open(const Policy &policy, const std::string &path, uint32_t slots, bool create = true) {
        tg_limiter *l = nullptr;
        detail::ok_or_throw(tg_limiter_open(policy.get(), path.c_str(), slots, create ? TG_OPEN_CREATE : 0u, &l));
        return Limiter(l);
    }

    // Swaps the policy; counters are kept.
    void set_policy(const Policy &policy) { detail::ok_or_throw(tg_limiter_set_policy(l_.get(), policy.get())); }

    Stats stats(uint64_t now_ms) const {
        tg_stats s{};
        detail::ok_or_throw(tg_limiter_stats(l_.get(), now_ms, &s));
        return Stats{s.slots, s.used, s.table_full, s.region_bytes, s.layout_version};
    }
    Stats stats() const { return stats(tg_now_ms()); }

    // Decides one request at now_ms (epoch milliseconds); throws on any error status.
    Decision check(const Request &req, uint64_t now_ms) {
        Decision d;
        detail::ok_or_throw(try_check(req, now_ms, d));
        return d;
    }

    // Same, at the current wall-clock time.
    Decision check(const Request &req) {
        const tg_request r = req.to_c();
        tg_decision d{};
        detail::ok_or_throw(tg_check_now(l_.get(), &r, &d));
        return Decision::from_c(d);
    }

    // Non-throwing form: returns the status; `out` is set only on TG_OK.
    tg_status try_check(const Request &req, uint64_t now_ms, Decision &out) noexcept {
        const tg_request r = req.to_c();
        tg_decision d{};
        tg_status s = tg_check(l_.get(), &r, now_ms, &d);
        if (s == TG_OK) out = Decision::from_c(d);
        return s;
    }

    tg_limiter *get() const noexcept { return l_.get(); }
    explicit operator bool() const noexcept { return l_ != nullptr; }

private:
    explicit Limiter(tg_limiter *l) noexcept : l_(l) {}
    std::unique_ptr<tg_limiter, detail::LimiterDeleter> l_;
};

}  // namespace tollgate

#endif  // TOLLGATE_HPP
