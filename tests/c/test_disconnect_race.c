/* tg_limiter_connect and tg_limiter_disconnect while other threads decide on
 * the same handle (issue 15): a graceful shutdown disconnects while requests
 * are still in flight, and the header promises that only
 * tg_limiter_set_policy (and tg_limiter_set_max_skew) need the handle alone.
 *
 * Checker threads loop on tg_check (and tg_limiter_lease_stats, and a sibling
 * made by tg_limiter_share and freed at once) while the main thread connects
 * and disconnects the handle over and over, for a bounded time. Every
 * decision must be TG_OK (joined: the down policy or Redis decides) or
 * TG_E_NOT_JOINED (between a disconnect and the next connect); anything
 * else, a crash, or a sanitizer report is a failure. tests/c/run.sh builds
 * it under AddressSanitizer and, separately, ThreadSanitizer.
 *
 * Two phases: a closed port on 127.0.0.1 (Redis down, which is not an error:
 * decisions follow the down policy, TG_DOWN_OPEN here), then, when
 * TOLLGATE_TEST_REDIS_URL names a live server (run.sh starts one), that
 * server, where a disconnect also gives held units back. The last line
 * printed is "N passed, M failed". */
#define _POSIX_C_SOURCE 200809L

#include "tollgate.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int g_pass, g_fail;

#define CHECK(cond)                                                         \
    do {                                                                    \
        if (cond) g_pass++;                                                 \
        else {                                                              \
            g_fail++;                                                       \
            fprintf(stderr, "%s:%d: FAIL: %s\n", __FILE__, __LINE__, #cond); \
        }                                                                   \
    } while (0)

enum { CHECKERS = 4, ACCOUNTS = 16 };

/* Main thread only writes it after the workers are joined, or sets it
 * atomically: C11 atomics would do, __atomic keeps -std=c11 -pedantic
 * quiet on every compiler run.sh uses. */
static int g_stop;

static int stopped(void) { return __atomic_load_n(&g_stop, __ATOMIC_ACQUIRE); }

static uint64_t mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

struct checker {
    tg_limiter *l;
    const tg_policy *p;
    int id;
    uint64_t now;
    uint64_t ok, not_joined, other, shares;
    tg_status last_other;
};

static void *checker_main(void *vp) {
    struct checker *c = vp;
    char account[32];
    uint64_t n = 0;
    while (!stopped()) {
        snprintf(account, sizeof account, "race-%d-%d", c->id, (int)(n % ACCOUNTS));
        tg_request r;
        memset(&r, 0, sizeof r);
        r.size = sizeof r;
        r.account = account;
        r.account_len = strlen(account);
        r.model = "DeepSeek-V3.1";
        r.model_len = strlen(r.model);
        r.tier = TG_TIER_DEVELOPER;
        r.cost = 1;
        tg_decision d;
        tg_status s = tg_check(c->l, &r, c->now, &d);
        if (s == TG_OK) c->ok++;
        else if (s == TG_E_NOT_JOINED) c->not_joined++;
        else {
            c->other++;
            c->last_other = s;
        }
        if (n % 64 == 0) {
            /* the link's counters, read while it is being replaced */
            tg_lease_stats st;
            memset(&st, 0, sizeof st);
            st.size = sizeof st;
            s = tg_limiter_lease_stats(c->l, &st);
            if (s != TG_OK && s != TG_E_NOT_JOINED) {
                c->other++;
                c->last_other = s;
            }
        }
        if (c->id == 0 && n % 256 == 0) {
            /* a sibling shares whatever link is current; freeing it may drop
             * the last reference to a link the main thread already left */
            tg_limiter *sib = NULL;
            if (tg_limiter_share(c->l, c->p, &sib) == TG_OK) {
                s = tg_check(sib, &r, c->now, &d);
                if (s != TG_OK && s != TG_E_NOT_JOINED) {
                    c->other++;
                    c->last_other = s;
                }
                tg_limiter_free(sib);
                c->shares++;
            } else {
                c->other++;
                c->last_other = TG_E_INVALID;
            }
        }
        n++;
    }
    return NULL;
}

/* One phase: checkers decide on `l` while this thread connects it to `url`
 * and disconnects it again for `ms` milliseconds. */
static void race(const char *name, const char *url, uint64_t ms) {
    tg_policy *p = NULL;
    tg_limiter *l = NULL;
    CHECK(tg_policy_default(&p) == TG_OK);
    if (!p) return;
    tg_limiter_options lo;
    memset(&lo, 0, sizeof lo);
    lo.size = sizeof lo;
    lo.flags = TG_OPEN_LEASES;
    lo.slots = 1024;
    CHECK(tg_limiter_make(p, &lo, &l) == TG_OK);
    if (!l) {
        tg_policy_free(p);
        return;
    }
    tg_redis_options o;
    memset(&o, 0, sizeof o);
    o.size = sizeof o;
    o.down = TG_DOWN_OPEN; /* Redis down: admit (the decision is TG_OK either way) */
    o.hosts = 1;           /* no heartbeat round trip at connect */
    o.deadline_ms = 200;
    o.cooldown_ms = 1;

    __atomic_store_n(&g_stop, 0, __ATOMIC_RELEASE);
    /* Mid-minute tomorrow: every window is open by Redis's clock. */
    const uint64_t now = (tg_now_ms() / 60000 + 24 * 60) * 60000 + 30000;
    struct checker cs[CHECKERS];
    pthread_t th[CHECKERS];
    int started = 0;
    for (int i = 0; i < CHECKERS; i++) {
        memset(&cs[i], 0, sizeof cs[i]);
        cs[i].l = l;
        cs[i].p = p;
        cs[i].id = i;
        cs[i].now = now;
        if (pthread_create(&th[i], NULL, checker_main, &cs[i]) != 0) break;
        started++;
    }
    CHECK(started == CHECKERS);

    uint64_t cycles = 0, connect_fail = 0, disconnect_fail = 0;
    tg_status last_connect = TG_OK;
    const uint64_t end = mono_ms() + ms;
    while (mono_ms() < end) {
        tg_status s = tg_limiter_connect(l, url, &o);
        if (s != TG_OK) {
            connect_fail++;
            last_connect = s;
        }
        /* let some decisions through the new link (with Redis up, each
         * new key's first one waits for a round trip) */
        struct timespec joined = {0, 1000 * 1000}, pause = {0, 200 * 1000};
        nanosleep(&joined, NULL);
        if (cycles % 2 == 0) {
            /* and sometimes replace it while it is in use */
            s = tg_limiter_connect(l, url, &o);
            if (s != TG_OK) {
                connect_fail++;
                last_connect = s;
            }
        }
        if (tg_limiter_disconnect(l) != TG_OK) disconnect_fail++;
        nanosleep(&pause, NULL);
        cycles++;
    }
    __atomic_store_n(&g_stop, 1, __ATOMIC_RELEASE);
    uint64_t ok = 0, not_joined = 0, other = 0, shares = 0;
    for (int i = 0; i < started; i++) {
        pthread_join(th[i], NULL);
        ok += cs[i].ok;
        not_joined += cs[i].not_joined;
        other += cs[i].other;
        shares += cs[i].shares;
        if (cs[i].other)
            fprintf(stderr, "%s: checker %d: %" PRIu64 " unexpected statuses, last %d (%s)\n", name, i,
                    cs[i].other, cs[i].last_other, tg_status_str(cs[i].last_other));
    }
    if (connect_fail)
        fprintf(stderr, "%s: %" PRIu64 " connects failed, last %d (%s): %s\n", name, connect_fail,
                last_connect, tg_status_str(last_connect), tg_last_error());
    printf("%-14s %" PRIu64 " connect/disconnect cycles, %" PRIu64 " decisions (%" PRIu64
           " joined, %" PRIu64 " not joined), %" PRIu64 " siblings\n",
           name, cycles, ok + not_joined, ok, not_joined, shares);
    CHECK(cycles > 0);
    CHECK(connect_fail == 0);
    CHECK(disconnect_fail == 0);
    CHECK(other == 0);
    CHECK(ok > 0);         /* decisions went through a link */
    CHECK(not_joined > 0); /* and some found none */

    /* the handle is whole afterwards: join once more, decide, leave */
    tg_request r;
    memset(&r, 0, sizeof r);
    r.size = sizeof r;
    r.account = "race-after";
    r.account_len = strlen(r.account);
    r.model = "DeepSeek-V3.1";
    r.model_len = strlen(r.model);
    r.tier = TG_TIER_DEVELOPER;
    r.cost = 1;
    tg_decision d;
    CHECK(tg_check(l, &r, now, &d) == TG_E_NOT_JOINED);
    CHECK(tg_limiter_connect(l, url, &o) == TG_OK);
    CHECK(tg_check(l, &r, now, &d) == TG_OK);
    CHECK(tg_limiter_disconnect(l) == TG_OK);
    tg_limiter_free(l);
    tg_policy_free(p);
}

int main(void) {
    const char *env = getenv("TG_RACE_MS");
    uint64_t ms = env ? strtoull(env, NULL, 10) : 1500;
    /* Port 1 on loopback: nothing listens there (connection refused). */
    race("redis down", "redis://127.0.0.1:1/0", ms);
    const char *url = getenv("TOLLGATE_TEST_REDIS_URL");
    if (url) race("redis up", url, ms);
    else printf("redis up       (skipped: TOLLGATE_TEST_REDIS_URL is not set; tests/c/run.sh sets it)\n");
    printf("%d passed, %d failed\n", g_pass, g_fail);
    return g_fail == 0 ? 0 : 1;
}
