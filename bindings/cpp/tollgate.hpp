// tollgate.hpp - header-only C++17 wrapper over the tollgate C ABI (tollgate.h).
//
// Link with the C library as usual: `c++ -std=c++17 app.cpp $(pkg-config --cflags --libs tollgate)`.
//
// Design choices:
//  * Ownership: Policy and Limiter are move-only RAII handles (std::unique_ptr
//    with a deleter calling tg_policy_free / tg_limiter_free). A moved-from
//    handle is empty; using it throws Error(TG_E_NULL), it never crashes.
//    Answer and Decision are plain values (copies of the C structs).
//  * Errors: every non-OK tg_status becomes a thrown tollgate::Error, one class
//    (derived from std::runtime_error) with a code() accessor holding the
//    tg_status, status_str() the tg_status_str text, and detail() any message
//    the library wrote (a policy's "file:line: field: reason", a limiter
//    constructor's tg_last_error() text). There is no subclass per status.
//    Hot paths that would rather not pay for an exception call the try_*
//    forms, which return the status and never throw.
//  * Answers: the library renders every HTTP answer (status, headers, JSON
//    body) for every outcome; Limiter::answer and answer_for hand back an
//    Answer to send as it is. This header holds no answer text, parses no
//    client input and makes no decision: a binding only translates.
//  * Strings: keys, model names, methods, tiers and bodies are
//    std::string_view (passed as pointer + length, no NUL needed); file paths
//    are std::string because the C API wants NUL-terminated paths. Rendered
//    headers and bodies come back as std::string.
//  * Structs that grow: every C struct is value-initialised, so its leading
//    `size` is 0 (this header's layout).
#ifndef TOLLGATE_HPP
#define TOLLGATE_HPP

#include "tollgate.h"  // declares its functions extern "C" under C++

#include <cstddef>
#include <cstdint>
#include <exception>
#include <memory>
#include <optional>
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
    TokensMinute = TG_LIMIT_TOKENS_MINUTE,
    TokensDay = TG_LIMIT_TOKENS_DAY,
    InFlight = TG_LIMIT_IN_FLIGHT,
};

// How a request went (TG_OUTCOME_*), for logs and metrics; outcome_name() names it.
enum class Outcome : uint32_t {
    Passed = TG_OUTCOME_PASSED,
    Rejected = TG_OUTCOME_REJECTED,
    DryRun = TG_OUTCOME_DRY_RUN,
    TableFull = TG_OUTCOME_TABLE_FULL,
    UnknownModel = TG_OUTCOME_UNKNOWN_MODEL,
    BadRequest = TG_OUTCOME_BAD_REQUEST,
    NoLimit = TG_OUTCOME_NO_LIMIT,
    NoAccount = TG_OUTCOME_NO_ACCOUNT,
    Error = TG_OUTCOME_ERROR,
    NotLimited = TG_OUTCOME_NOT_LIMITED,
};

inline const char *status_str(tg_status s) noexcept { return tg_status_str(s); }
// "PASSED", "REJECTED", ...; "" for a value that is not an outcome.
inline const char *outcome_name(Outcome o) noexcept { return tg_outcome_name(static_cast<uint32_t>(o)); }

// Versions: the library's (at run time) and this header's (at build time).
inline uint32_t version_number() noexcept { return tg_version_number(); }
inline const char *version_string() noexcept { return tg_version_string(); }
inline const char *version() noexcept { return tg_version(); }  // the older name of version_string()
constexpr uint32_t header_version_number() noexcept { return TG_VERSION_NUMBER; }
constexpr const char *header_version_string() noexcept { return TG_VERSION_STRING; }

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

// For the limiter constructors: the library says in tg_last_error() why it
// failed. Its early TG_E_NULL return (an empty Policy here) leaves the
// previous call's message in place, so that one is not attached.
inline void made_or_throw(tg_status s) {
    if (s == TG_OK) return;
    const char *why = s == TG_E_NULL ? nullptr : tg_last_error();
    throw Error(s, why != nullptr ? std::string(why) : std::string());
}

// Calls a C renderer, retrying once with the size it reported when the first
// buffer was too small (the library tells the exact size needed).
template <typename Render>
std::string render(Render &&fn, size_t first_guess = 512) {
    std::string out(first_guess, '\0');
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

// A pointer for a view, never NULL when the view is meant to be present:
// the C API reads a NULL account as "no account".
inline const char *present(std::string_view v) noexcept { return v.data() != nullptr ? v.data() : ""; }

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
    // Tokens this request reserves on a key with a token limit (its
    // estimate: BodyScan::estimate_tokens), and explicit token limits
    // (0 = from the policy). Settle the reservation with a Reservation.
    uint32_t tokens = 0;
    uint32_t tpm = 0;
    uint32_t tpd = 0;
    // A model resolved once (Limiter::model): when nonzero it is the model,
    // and `model` is not read.
    uint32_t model_handle = 0;
    // On a limiter joined to a quota store (Limiter::connect): never wait
    // for Redis; try_check then returns TG_PENDING (nothing charged) and the
    // caller decides again without it on a thread that may block. A
    // thread-per-request server leaves it false and waits (at most the
    // store's deadline).
    bool no_wait = false;

    tg_request to_c() const noexcept {
        tg_request r{};
        r.size = sizeof r;
        r.model_handle = model_handle;
        r.flags = no_wait ? TG_REQUEST_NO_WAIT : 0u;
        r.account = account.data();
        r.account_len = account.size();
        r.model = model.data();
        r.model_len = model.size();
        r.tier = static_cast<uint32_t>(tier);
        r.cost = cost;
        r.rpm = rpm;
        r.rpd = rpd;
        r.tokens = tokens;
        r.tpm = tpm;
        r.tpd = tpd;
        return r;
    }
};

// A key's token windows as one decision left them, and what it reserved
// (docs/tokens.md). `ticket` is all zero when nothing was reserved.
struct Tokens {
    uint32_t minute_limit = 0;
    uint32_t minute_remaining = 0;
    uint64_t minute_reset = 0;  // epoch seconds
    uint32_t day_limit = 0;
    uint32_t day_remaining = 0;
    uint64_t day_reset = 0;  // epoch seconds
    uint32_t reserved = 0;
    tg_ticket ticket{};

    bool has_ticket() const noexcept { return ticket.words[0] != 0 || ticket.words[1] != 0; }

    static std::optional<Tokens> from_c(const tg_tokens &t) noexcept {
        if (t.has_tokens == 0) return std::nullopt;
        Tokens o;
        o.minute_limit = t.minute_limit;
        o.minute_remaining = t.minute_remaining;
        o.minute_reset = t.minute_reset;
        o.day_limit = t.day_limit;
        o.day_remaining = t.day_remaining;
        o.day_reset = t.day_reset;
        o.reserved = t.reserved;
        o.ticket = t.ticket;
        return o;
    }

    tg_tokens to_c() const noexcept {
        tg_tokens t{};
        t.size = sizeof t;
        t.has_tokens = 1;
        t.minute_limit = minute_limit;
        t.minute_remaining = minute_remaining;
        t.minute_reset = minute_reset;
        t.day_limit = day_limit;
        t.day_remaining = day_remaining;
        t.day_reset = day_reset;
        t.reserved = reserved;
        t.ticket = ticket;
        return t;
    }
};

// A key's requests running at once as one decision left them
// (docs/in-flight.md). `admission` is 0 when not admitted (refused, a peek):
// otherwise release it once the request has ended (Reservation does).
struct InFlight {
    uint32_t limit = 0;
    uint32_t in_use = 0;  // this request included when admitted
    uint64_t admission = 0;

    bool admitted() const noexcept { return admission != 0; }

    static std::optional<InFlight> from_c(const tg_in_flight &f) noexcept {
        if (f.has_in_flight == 0) return std::nullopt;
        return InFlight{f.limit, f.in_use, f.admission};
    }

    tg_in_flight to_c() const noexcept {
        tg_in_flight f{};
        f.size = sizeof f;
        f.has_in_flight = 1;
        f.limit = limit;
        f.in_use = in_use;
        f.admission = admission;
        return f;
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
    // The token windows, when the key has a token limit.
    std::optional<Tokens> tokens;
    // The requests in flight, when the key has an in-flight limit.
    std::optional<InFlight> in_flight;

    static Decision from_c(const tg_decision &d, const tg_tokens *t = nullptr,
                           const tg_in_flight *f = nullptr) noexcept {
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
        if (t != nullptr) o.tokens = Tokens::from_c(*t);
        if (f != nullptr) o.in_flight = InFlight::from_c(*f);
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

// What the gateway's operator chose where the answer is a choice
// (the TG_ANSWER_* flags and the refusal status).
struct Options {
    uint32_t refuse_status = 0;    // status of a refusal over a limit: 100..999, or 0 for the library's (429)
    bool dry_run = false;          // decide and report, never refuse
    bool no_limit_pass = false;    // no limit for the tier: pass instead of 403
    bool table_full_open = false;  // table full: pass (fail open) instead of 503
    bool no_account_pass = false;  // no account id: pass unlimited instead of 401
    bool no_wait = false;          // joined limiter: TG_PENDING from try_answer rather than wait for Redis

    uint32_t flags() const noexcept {
        return (dry_run ? TG_ANSWER_DRY_RUN : 0u) | (no_limit_pass ? TG_ANSWER_NO_LIMIT_PASS : 0u) |
               (table_full_open ? TG_ANSWER_TABLE_FULL_OPEN : 0u) |
               (no_account_pass ? TG_ANSWER_NO_ACCOUNT_PASS : 0u) | (no_wait ? TG_ANSWER_NO_WAIT : 0u);
    }
};

// A request as an HTTP binding holding the whole body sees it. The views
// must stay valid for the call only.
struct HttpRequest {
    std::string_view method = "POST";
    std::optional<std::string_view> account;  // std::nullopt: the request carries no API key
    std::string_view tier = "developer";      // the tier's name, any case
    std::string_view body;                    // the whole body
    uint32_t cost = 1;                        // 0 = look without counting

    tg_http_request to_c() const noexcept {
        tg_http_request r{};
        r.cost = cost;
        r.method = method.data();
        r.method_len = method.size();
        if (account) {
            r.account = detail::present(*account);
            r.account_len = account->size();
        }
        r.tier = tier.data();
        r.tier_len = tier.size();
        r.body = body.data();
        r.body_len = body.size();
        return r;
    }
};

// The whole HTTP answer to one request, as the library decided and renders
// it. http_status() 0 (passes()) means: send the request upstream and add
// headers() to the upstream's response; otherwise answer with that status,
// headers() and body().
class Answer {
public:
    // An answer that passes with no headers (what try_answer leaves alone).
    Answer() noexcept : a_{} {}
    explicit Answer(const tg_answer &a) noexcept : a_(a) {}

    uint32_t http_status() const noexcept { return a_.http_status; }
    bool passes() const noexcept { return a_.http_status == 0; }
    // In a dry run, the status that was not sent; 0 otherwise.
    uint32_t would_status() const noexcept { return a_.would_status; }
    Outcome outcome() const noexcept { return static_cast<Outcome>(a_.outcome); }
    const char *outcome_name() const noexcept { return tg_outcome_name(a_.outcome); }
    // The limiter's decision, when there was one.
    std::optional<Decision> decision() const noexcept {
        if (a_.has_decision == 0) return std::nullopt;
        return Decision::from_c(a_.decision, &a_.tokens, &a_.in_flight);
    }

    // (name, value) pairs in order; names are lower case.
    std::vector<std::pair<std::string, std::string>> headers() const {
        struct Sink {
            std::vector<std::pair<std::string, std::string>> out;
            std::exception_ptr failed;
        } sink;
        // Nothing may unwind through the library: a failure to store a
        // header stops the walk and is rethrown here.
        const tg_header_fn collect = [](void *ctx, const char *name, size_t name_len, const char *value,
                                        size_t value_len) noexcept -> int {
            auto *s = static_cast<Sink *>(ctx);
            try {
                s->out.emplace_back(std::string(name, name_len), std::string(value, value_len));
                return 0;
            } catch (...) {
                s->failed = std::current_exception();
                return 1;
            }
        };
        const tg_status st = tg_answer_headers(&a_, collect, &sink);
        if (sink.failed) std::rethrow_exception(sink.failed);
        detail::ok_or_throw(st);
        return std::move(sink.out);
    }

    // The JSON body; empty for an answer that passes.
    std::string body() const {
        return detail::render([&](char *b, size_t cap, size_t *w) { return tg_answer_body(&a_, b, cap, w); },
                              TG_ANSWER_BODY_MAX);
    }

    const tg_answer &c() const noexcept { return a_; }

private:
    tg_answer a_;
};

// The answer for what happened to a request, for callers that take the
// steps themselves (a streaming body: BodyScan, parse_tier, Limiter::check):
// `status` TG_OK with the decision, the status of a failed check, body scan
// or tier parse, TG_E_NO_ACCOUNT or TG_E_NOT_LIMITED. `model` is the
// client's model string (echoed, cut by the library). The try_ form
// returns the status (`out` set only on TG_OK); answer_for throws Error,
// for bad arguments only (TG_OK without a decision, an invalid refusal status).
inline tg_status try_answer_for(tg_status status, const Decision *decision, std::string_view model,
                                const Options &opts, Answer &out) noexcept {
    tg_decision d{};
    if (decision != nullptr) d = decision->to_c();
    tg_tokens t{};
    if (decision != nullptr && decision->tokens) t = decision->tokens->to_c();
    tg_in_flight f{};
    if (decision != nullptr && decision->in_flight) f = decision->in_flight->to_c();
    tg_answer a{};
    a.size = sizeof a;
    const tg_status s = tg_answer_for_units(status, decision != nullptr ? &d : nullptr,
                                            decision != nullptr && decision->tokens ? &t : nullptr,
                                            decision != nullptr && decision->in_flight ? &f : nullptr, model.data(),
                                            model.size(), opts.flags(), opts.refuse_status, &a);
    if (s == TG_OK) out = Answer(a);
    return s;
}
inline Answer answer_for(tg_status status, const Decision *decision, std::string_view model,
                         const Options &opts = Options()) {
    Answer a;
    detail::ok_or_throw(try_answer_for(status, decision, model, opts, a));
    return a;
}
inline Answer answer_for(const Decision &decision, std::string_view model, const Options &opts = Options()) {
    return answer_for(TG_OK, &decision, model, opts);
}

// The one tier parser ("free", "developer", "enterprise", any case):
// TG_E_INVALID for anything else, `out` then untouched.
inline tg_status try_parse_tier(std::string_view name, Tier &out) noexcept {
    uint32_t t = 0;
    const tg_status s = tg_tier_parse(name.data(), name.size(), &t);
    if (s == TG_OK) out = static_cast<Tier>(t);
    return s;
}
inline Tier parse_tier(std::string_view name) {
    Tier t = Tier::Developer;
    detail::ok_or_throw(try_parse_tier(name, t));
    return t;
}

// Whether requests with this method are limited; those that are not pass
// unlimited and unread (answer_for(TG_E_NOT_LIMITED, ...)).
inline bool method_limited(std::string_view method) noexcept {
    return tg_method_limited(method.data(), method.size()) != 0;
}

// The account id for an API key: TG_ACCOUNT_DIGEST_LEN hex digits of its
// BLAKE2b digest, whatever the key's length; nginx's $tollgate_bearer_digest,
// Python's bearer_token_digest and the tower layer's bearer_digest give the
// same id, so hosts sharing a table or a store count one key once.
inline std::string account_digest(std::string_view key) {
    return detail::render([&](char *buf, size_t cap, size_t *w) {
        return tg_account_digest(key.data(), key.size(), buf, cap, w);
    }, TG_ACCOUNT_DIGEST_LEN + 1);
}

// The API key of an Authorization header's value ("Bearer <key>", as the
// library reads it), or nothing: a request without an account.
inline std::optional<std::string_view> bearer_key(std::string_view authorization) {
    size_t start = 0, len = 0;
    const tg_status s = tg_bearer_key(authorization.data(), authorization.size(), &start, &len);
    if (s == TG_E_NO_ACCOUNT) return std::nullopt;
    detail::ok_or_throw(s);
    return authorization.substr(start, len);
}

// account_digest of the bearer key of an Authorization header's value: the
// account id to limit by, or nothing without a key (answer_for(TG_E_NO_ACCOUNT)).
inline std::optional<std::string> bearer_digest(std::string_view authorization) {
    std::string out(TG_ACCOUNT_DIGEST_LEN + 1, '\0');
    size_t written = 0;
    const tg_status s =
        tg_bearer_digest(authorization.data(), authorization.size(), &out[0], out.size(), &written);
    if (s == TG_E_NO_ACCOUNT) return std::nullopt;
    detail::ok_or_throw(s);
    out.resize(written);
    return out;
}

// The streaming scan of one request body for its model, in memory this
// object owns (fixed size, whatever the body). Move-only; one thread at a
// time. feed/finish return the library's status: TG_OK, or the TG_E_BODY_*
// refusal to hand to answer_for.
class BodyScan {
public:
    BodyScan() : mem_(new std::max_align_t[words()]) { reset(); }
    // A moved-from scan is empty: feed/finish give TG_E_NULL, reset throws it.
    BodyScan(BodyScan &&o) noexcept : mem_(std::move(o.mem_)), scan_(std::exchange(o.scan_, nullptr)) {}
    BodyScan &operator=(BodyScan &&o) noexcept {
        mem_ = std::move(o.mem_);
        scan_ = std::exchange(o.scan_, nullptr);
        return *this;
    }

    // Starts over for the next body.
    void reset() {
        tg_body_scan *s = nullptr;
        detail::ok_or_throw(tg_body_scan_init(mem_.get(), words() * sizeof(std::max_align_t), &s));
        scan_ = s;
    }

    // The next bytes of the body, split anywhere. A refusal is sticky.
    tg_status feed(std::string_view chunk) noexcept {
        return tg_body_scan_feed(scan_, reinterpret_cast<const uint8_t *>(chunk.data()), chunk.size());
    }

    // The body has ended: on TG_OK `model` views the decoded model inside
    // this object, valid until reset() or destruction.
    tg_status finish(std::string_view &model) noexcept {
        const uint8_t *m = nullptr;
        size_t n = 0;
        const tg_status s = tg_body_scan_finish(scan_, &m, &n);
        if (s == TG_OK) model = std::string_view(reinterpret_cast<const char *>(m), n);
        return s;
    }

    // What the token estimate needs from the body (after finish gave
    // TG_OK): Limiter::estimate_tokens turns it into Request::tokens.
    tg_body_scan_facts facts() const {
        tg_body_scan_facts f{};
        f.size = sizeof f;
        detail::ok_or_throw(tg_body_facts(scan_, &f));
        return f;
    }

private:
    static_assert(TG_BODY_SCAN_ALIGN <= alignof(std::max_align_t), "scan memory alignment");
    static size_t words() noexcept {
        return (tg_body_scan_size() + sizeof(std::max_align_t) - 1) / sizeof(std::max_align_t);
    }
    std::unique_ptr<std::max_align_t[]> mem_;
    tg_body_scan *scan_ = nullptr;  // points into mem_, so it survives a move
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
    uint64_t clock_faults = 0;  // decisions that met counts dated beyond the clock-fault bound
    // Requests in flight and their releases by cause (a table with the
    // in-flight areas; all 0 otherwise).
    bool has_in_flight = false;
    uint64_t in_flight = 0;
    uint64_t released_completed = 0;
    uint64_t released_aborted = 0;
    uint64_t reclaimed = 0;  // from processes found dead
    uint64_t refused_in_flight = 0;
};

// How a limiter joins a quota store (Limiter::connect). Options are set by
// name and text, through the library's one parser of them: "mode" (leases,
// exact), "down" (local, open, closed), "hosts", "deadline" ("50ms"),
// "refill_interval", "idle_after", "max_lease", "max_connections",
// "trip_after", "cooldown", "max_cooldown". set() throws Error
// (TG_E_INVALID) with the library's words for a bad name or value.
class RedisOptions {
public:
    RedisOptions &set(std::string_view name, std::string_view value) {
        const tg_status s = tg_redis_options_set(&o_, name.data(), name.size(), value.data(), value.size());
        if (s != TG_OK) throw Error(s, tg_last_error());
        return *this;
    }
    const tg_redis_options &c() const noexcept { return o_; }

private:
    tg_redis_options o_{};
};

// What a joined limiter did (refills, fallbacks, Redis latency...): the C
// struct, whose fields are documented in tollgate.h.
using LeaseStats = tg_lease_stats;

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

// How Limiter::make, open and init_in make a table (tg_limiter_make): its
// format now, more options as the library grows them; where the table
// lives is the call's.
struct LimiterOptions {
    // A table of quota leases, for one quota across hosts (connect before
    // deciding; tg_region_size_for_leases bytes): TG_OPEN_LEASES.
    bool leases = false;
    // A file: create and format it when missing (TG_OPEN_CREATE).
    bool create = true;
};

// A limiter: thread-safe; one per process (or several over shared memory).
// The constructors throw Error with the library's reason (tg_last_error) as detail().
class Limiter {
public:
    // Private heap region with room for `slots` (account, model) keys.
    Limiter(const Policy &policy, uint32_t slots) {
        tg_limiter *l = nullptr;
        detail::made_or_throw(tg_limiter_new(policy.get(), slots, &l));
        l_.reset(l);
    }

    // Formats caller memory (aligned to TG_REGION_ALIGN) as a fresh region;
    // the memory stays the caller's and must outlive the Limiter.
    static Limiter init_in(const Policy &policy, void *mem, size_t len) {
        tg_limiter *l = nullptr;
        detail::made_or_throw(tg_limiter_init_in(policy.get(), mem, len, &l));
        return Limiter(l);
    }

    // Reuses an already formatted region (counters kept).
    static Limiter attach(const Policy &policy, void *mem, size_t len) {
        tg_limiter *l = nullptr;
        detail::made_or_throw(tg_limiter_attach(policy.get(), mem, len, &l));
        return Limiter(l);
    }

    // File-backed region shared by processes; create formats it when missing.
    static Limiter open(const Policy &policy, const std::string &path, uint32_t slots, bool create = true) {
        tg_limiter *l = nullptr;
        detail::made_or_throw(
            tg_limiter_open(policy.get(), path.c_str(), slots, create ? TG_OPEN_CREATE : 0u, &l));
        return Limiter(l);
    }

    // The one constructor that takes LimiterOptions, wherever the table lives: on
    // the heap (`slots`), in a file (`path`), in caller memory (formatted,
    // or attached to with `attach`).
    static Limiter make(const Policy &policy, uint32_t slots, const LimiterOptions &o) {
        tg_limiter_options c{};
        c.size = sizeof c;
        c.flags = flags_of(o, false);
        c.slots = slots;
        return made(policy, c);
    }
    static Limiter open(const Policy &policy, const std::string &path, uint32_t slots, const LimiterOptions &o) {
        tg_limiter_options c{};
        c.size = sizeof c;
        c.flags = flags_of(o, true);
        c.slots = slots;
        c.path = path.c_str();
        return made(policy, c);
    }
    static Limiter init_in(const Policy &policy, void *mem, size_t len, const LimiterOptions &o,
                           bool attach = false) {
        tg_limiter_options c{};
        c.size = sizeof c;
        c.flags = flags_of(o, false) | (attach ? TG_OPEN_ATTACH : 0u);
        c.mem = mem;
        c.len = len;
        return made(policy, c);
    }

    // Deprecated since 0.4 (kept): make / init_in / open with LimiterOptions::leases.
    [[deprecated("use Limiter::make with LimiterOptions::leases")]]
    static Limiter for_leases(const Policy &policy, uint32_t slots) {
        LimiterOptions o;
        o.leases = true;
        return make(policy, slots, o);
    }
    [[deprecated("use Limiter::init_in with LimiterOptions::leases")]]
    static Limiter init_in_for_leases(const Policy &policy, void *mem, size_t len) {
        LimiterOptions o;
        o.leases = true;
        return init_in(policy, mem, len, o);
    }
    [[deprecated("use Limiter::open with LimiterOptions::leases")]]
    static Limiter open_for_leases(const Policy &policy, const std::string &path, uint32_t slots,
                                   bool create = true) {
        LimiterOptions o;
        o.leases = true;
        o.create = create;
        return open(policy, path, slots, o);
    }

    // Whether the table holds quota leases (tg_limiter_is_leased): read from
    // its header, so an attached or opened table says what it was made as.
    bool is_leased() const noexcept { return tg_limiter_is_leased(l_.get()) != 0; }

    // Joins a quota store: "redis://host:port/db" or
    // "redis+cluster://host:port,host:port". Redis down is not an error (the
    // down policy decides until it answers). Not while other threads use
    // the limiter; in a forking server, in each child after the fork.
    void connect(const std::string &url, const RedisOptions &opts = RedisOptions()) {
        detail::made_or_throw(tg_limiter_connect(l_.get(), url.c_str(), &opts.c()));
    }
    // Leaves it: unspent units go back to Redis.
    void disconnect() { detail::ok_or_throw(tg_limiter_disconnect(l_.get())); }
    // The lease layer's counters; nullopt when not joined.
    std::optional<LeaseStats> lease_stats() const {
        LeaseStats s{};
        const tg_status st = tg_limiter_lease_stats(l_.get(), &s);
        if (st == TG_E_NOT_JOINED) return std::nullopt;
        detail::ok_or_throw(st);
        return s;
    }

    // A policy model resolved once, for Request::model_handle: requests that
    // carry it skip the lookup by name. Valid until set_policy; throws Error
    // (TG_E_UNKNOWN_MODEL) for a model the policy does not have.
    uint32_t model(std::string_view name) const {
        uint32_t h = 0;
        detail::ok_or_throw(tg_model_find(l_.get(), name.data(), name.size(), &h));
        return h;
    }

    // Swaps the policy; counters are kept (model handles go stale).
    void set_policy(const Policy &policy) { detail::ok_or_throw(tg_limiter_set_policy(l_.get(), policy.get())); }

    Stats stats(uint64_t now_ms) const {
        tg_stats s{};
        s.size = sizeof s;
        detail::ok_or_throw(tg_limiter_stats(l_.get(), now_ms, &s));
        return Stats{s.slots,        s.used,
                     s.table_full,   s.region_bytes,
                     s.layout_version, s.clock_faults,
                     s.has_in_flight != 0, s.in_flight,
                     s.released_completed, s.released_aborted,
                     s.reclaimed,    s.refused_in_flight};
    }
    Stats stats() const { return stats(tg_now_ms()); }

    // Decides one request at now_ms (epoch milliseconds); throws on any error status.
    Decision check(const Request &req, uint64_t now_ms) const {
        Decision d;
        detail::ok_or_throw(try_check(req, now_ms, d));
        return d;
    }

    // Same, at the current wall-clock time.
    Decision check(const Request &req) const { return check(req, tg_now_ms()); }

    // Non-throwing form: returns the status; `out` is set only on TG_OK.
    // On a key with a token limit `out.tokens` holds the reservation; on
    // one with an in-flight limit `out.in_flight` holds the admission. Hold
    // both in a Reservation until the response has ended.
    tg_status try_check(const Request &req, uint64_t now_ms, Decision &out) const noexcept {
        const tg_request r = req.to_c();
        tg_decision d{};
        tg_tokens t{};
        t.size = sizeof t;
        tg_in_flight f{};
        f.size = sizeof f;
        tg_status s = tg_check_units(l_.get(), &r, now_ms, &d, &t, &f);
        if (s == TG_OK) out = Decision::from_c(d, &t, &f);
        return s;
    }

    // Releases an admission (InFlight::admission) once its request has
    // ended (`ending`: TG_END_*, TG_END_CUT counted as aborted): returns
    // the key's requests still running. Release each once; Reservation
    // does it for you.
    uint32_t release(uint64_t admission, uint32_t ending) const {
        uint32_t left = 0;
        detail::ok_or_throw(tg_release(l_.get(), admission, ending, &left));
        return left;
    }

    // Settles a reservation once its response has ended (TG_END_*; `used`
    // read for TG_END_USAGE): returns the tokens the key is charged in the
    // end. Settle each ticket once; Reservation does it for you.
    uint64_t settle(const tg_ticket &ticket, uint32_t ending, uint64_t used, uint64_t now_ms) const {
        uint64_t charged = 0;
        detail::ok_or_throw(tg_settle(l_.get(), &ticket, ending, used, now_ms, &charged));
        return charged;
    }

    // The tokens a request whose body `scan` read (finished) reserves.
    uint32_t estimate_tokens(const tg_body_scan_facts &facts) const {
        uint32_t n = 0;
        detail::ok_or_throw(tg_limiter_estimate_tokens(l_.get(), &facts, &n));
        return n;
    }

    // The whole answer to one HTTP request at now_ms, every step in the order
    // all bindings share (method, account, body model, tier, check). Every
    // outcome, refusals included, is an Answer; Error only for bad arguments
    // (an empty handle, an invalid refusal status).
    Answer answer(const HttpRequest &req, uint64_t now_ms, const Options &opts = Options()) const {
        Answer a;
        detail::ok_or_throw(try_answer(req, now_ms, opts, a));
        return a;
    }
    Answer answer(const HttpRequest &req) const { return answer(req, tg_now_ms()); }

    // Non-throwing form: returns the status; `out` is set only on TG_OK.
    tg_status try_answer(const HttpRequest &req, uint64_t now_ms, const Options &opts, Answer &out) const noexcept {
        const tg_http_request r = req.to_c();
        tg_answer a{};
        a.size = sizeof a;
        const tg_status s = tg_answer_request(l_.get(), &r, now_ms, opts.flags(), opts.refuse_status, &a);
        if (s == TG_OK) out = Answer(a);
        return s;
    }

    tg_limiter *get() const noexcept { return l_.get(); }
    explicit operator bool() const noexcept { return l_ != nullptr; }

private:
    explicit Limiter(tg_limiter *l) noexcept : l_(l) {}
    static uint32_t flags_of(const LimiterOptions &o, bool file) noexcept {
        return (o.leases ? TG_OPEN_LEASES : 0u) | (file && o.create ? TG_OPEN_CREATE : 0u);
    }
    static Limiter made(const Policy &policy, const tg_limiter_options &c) {
        tg_limiter *l = nullptr;
        detail::made_or_throw(tg_limiter_make(policy.get(), &c, &l));
        return Limiter(l);
    }
    std::unique_ptr<tg_limiter, detail::LimiterDeleter> l_;
};

// The streaming read of one response's token usage, in memory this object
// owns. Construct it from the response's Content-Type (std::nullopt from
// open() when it is neither JSON nor SSE: nothing to read), feed() every
// body chunk as it passes, and finish() says how the response ended.
class UsageScan {
public:
    static std::optional<UsageScan> open(std::string_view content_type) {
        UsageScan u;
        tg_usage_scan *s = nullptr;
        const tg_status st = tg_usage_scan_init(u.mem_.get(), words() * sizeof(std::max_align_t),
                                                content_type.data(), content_type.size(), &s);
        if (st == TG_E_UNSUPPORTED) return std::nullopt;
        detail::ok_or_throw(st);
        u.scan_ = s;
        return u;
    }
    // A response that cannot be read stops being read (it ends as one
    // without usage); never an error for the caller.
    void feed(std::string_view chunk) noexcept {
        if (scan_ != nullptr)
            (void) tg_usage_scan_feed(scan_, reinterpret_cast<const uint8_t *>(chunk.data()), chunk.size());
    }
    // How the response (HTTP status `status`; `cut` if it did not end
    // normally) ended: `ending` and `total` are what settling takes.
    tg_usage finish(uint32_t status, bool cut) noexcept {
        tg_usage u{};
        u.size = sizeof u;
        if (scan_ == nullptr || tg_usage_scan_finish(scan_, status, cut ? 1u : 0u, &u) != TG_OK) {
            u.ending = tg_usage_ending(status, cut ? 1u : 0u);
            u.total = 0;
        }
        return u;
    }

private:
    static_assert(TG_USAGE_SCAN_ALIGN <= alignof(std::max_align_t), "scan memory alignment");
    UsageScan() : mem_(new std::max_align_t[words()]) {}
    static size_t words() noexcept {
        return (tg_usage_scan_size() + sizeof(std::max_align_t) - 1) / sizeof(std::max_align_t);
    }
    std::unique_ptr<std::max_align_t[]> mem_;
    tg_usage_scan *scan_ = nullptr;  // points into mem_, so it survives a move
};

// RAII for what a request holds until its response ends, in a
// thread-per-request server: a token reservation and an in-flight unit.
// Ends both exactly once: with the response's ending (settle(), finish()),
// or as cut (TG_END_CUT: tokens by the policy's on_cut, by default kept;
// the unit released, counted aborted) if the guard is destroyed first (an
// exception, an early return, a client gone). Move-only.
class Reservation {
public:
    Reservation(const Limiter &limiter, const Decision &d) noexcept : l_(&limiter) {
        if (d.tokens && d.tokens->has_ticket()) ticket_ = d.tokens->ticket;
        if (d.in_flight) admission_ = d.in_flight->admission;
    }
    // What an answer that passes holds (nothing for any other answer).
    Reservation(const Limiter &limiter, const Answer &a) noexcept : l_(&limiter) {
        if (const auto d = a.decision()) *this = Reservation(limiter, *d);
    }
    Reservation(Reservation &&o) noexcept
        : l_(o.l_), ticket_(std::exchange(o.ticket_, std::nullopt)), admission_(std::exchange(o.admission_, 0)) {}
    Reservation &operator=(Reservation &&o) noexcept {
        if (this != &o) {
            end(TG_END_CUT, 0);
            l_ = o.l_;
            ticket_ = std::exchange(o.ticket_, std::nullopt);
            admission_ = std::exchange(o.admission_, 0);
        }
        return *this;
    }
    Reservation(const Reservation &) = delete;
    Reservation &operator=(const Reservation &) = delete;
    ~Reservation() { end(TG_END_CUT, 0); }

    // Whether there is a reservation left to settle or a unit to release.
    bool held() const noexcept { return ticket_.has_value() || admission_ != 0; }
    // Settles and releases with how the response ended (UsageScan::finish);
    // returns the tokens charged, 0 if no tokens were held.
    uint64_t settle(const tg_usage &u) noexcept { return end(u.ending, u.total); }
    // The same for a response whose usage was not read: TG_END_COMPLETE,
    // TG_END_FAILED or TG_END_CUT.
    void finish(uint32_t ending) noexcept { (void) end(ending, 0); }

private:
    uint64_t end(uint32_t ending, uint64_t used) noexcept {
        uint64_t charged = 0;
        if (ticket_) {
            const tg_ticket t = *ticket_;
            ticket_.reset();
            (void) tg_settle(l_->get(), &t, ending, used, tg_now_ms(), &charged);
        }
        if (admission_ != 0) (void) tg_release(l_->get(), std::exchange(admission_, 0), ending, nullptr);
        return charged;
    }
    const Limiter *l_;
    std::optional<tg_ticket> ticket_;
    uint64_t admission_ = 0;
};

}  // namespace tollgate

#endif  // TOLLGATE_HPP
