
/*
 * Metrics: the per-zone, per-model counts of outcomes in the shared zone,
 * and the Prometheus text page (tollgate_metrics) with them, the table's
 * stats and each joined worker's store counters.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_tollgate.h"


/* the metric label of every TG_OUTCOME_*, in their order (stable values) */
#if (TG_OUTCOME_PASSED != 0 || TG_OUTCOME_REJECTED != 1                      \
     || TG_OUTCOME_DRY_RUN != 2 || TG_OUTCOME_TABLE_FULL != 3                \
     || TG_OUTCOME_UNKNOWN_MODEL != 4 || TG_OUTCOME_BAD_REQUEST != 5         \
     || TG_OUTCOME_NO_LIMIT != 6 || TG_OUTCOME_NO_ACCOUNT != 7               \
     || TG_OUTCOME_ERROR != 8 || TG_OUTCOME_NOT_LIMITED != 9                 \
     || TG_OUTCOMES != 10)
#error "TG_OUTCOME_* changed: update ngx_http_tollgate_metric_outcomes"
#endif


static u_char *ngx_http_tollgate_in_flight_page(u_char *p,
    ngx_http_tollgate_main_conf_t *tmcf, tg_stats *stats);
static size_t ngx_http_tollgate_store_metrics_len(
    ngx_http_tollgate_main_conf_t *tmcf);
static u_char *ngx_http_tollgate_store_metrics(u_char *p,
    ngx_http_tollgate_main_conf_t *tmcf, ngx_http_request_t *r);
static u_char *ngx_http_tollgate_escape(u_char *dst, u_char *src,
    size_t len);
static void ngx_http_tollgate_row_label(ngx_http_tollgate_row_t *row,
    ngx_uint_t i, ngx_str_t *name);


/* indexed by TG_OUTCOME_* (checked above) */
static ngx_str_t  ngx_http_tollgate_metric_outcomes[TG_OUTCOMES] = {
    ngx_string("passed"),
    ngx_string("rejected"),
    ngx_string("dry_run"),
    ngx_string("table_full"),
    ngx_string("unknown_model"),
    ngx_string("bad_request"),
    ngx_string("no_limit"),
    ngx_string("no_account"),
    ngx_string("error"),
    ngx_string("not_limited")
};


#define NGX_HTTP_TOLLGATE_DECISIONS_HELP                                      \
    "# HELP tollgate_decisions_total Requests decided, by zone, model and "  \
    "outcome.\n# TYPE tollgate_decisions_total counter\n"


/* the token counters of each row: family, extra label, help */
#define NGX_HTTP_TOLLGATE_TOKEN_METRICS   3

static ngx_str_t  ngx_http_tollgate_token_metrics[] = {
    ngx_string("tollgate_tokens_reserved_total"),
    ngx_string("tollgate_tokens_settled_total"),
    ngx_string("tollgate_token_refusals_total")
};


static ngx_str_t  ngx_http_tollgate_token_help[] = {
    ngx_string("tollgate_tokens_reserved_total Tokens reserved at "
               "admission, by zone and model."),
    ngx_string("tollgate_tokens_settled_total Tokens charged once "
               "responses ended (their usage, or the rule for a response "
               "without it), by zone and model."),
    ngx_string("tollgate_token_refusals_total Requests refused on a token "
               "window (also counted as outcome \"rejected\"), by zone, "
               "model and window.")
};


#define NGX_HTTP_TOLLGATE_TABLE_METRICS   5

static ngx_str_t  ngx_http_tollgate_table_metrics[] = {
    ngx_string("tollgate_table_slots"),
    ngx_string("tollgate_table_used"),
    ngx_string("tollgate_table_full_total"),
    ngx_string("tollgate_region_bytes"),
    ngx_string("tollgate_clock_faults_total")
};


static ngx_str_t  ngx_http_tollgate_table_help[] = {
    ngx_string("tollgate_table_slots Slots in the zone's table."),
    ngx_string("tollgate_table_used Slots holding a key counted today."),
    ngx_string("tollgate_table_full_total Requests that found no free "
               "slot."),
    ngx_string("tollgate_region_bytes Bytes of the zone's table."),
    ngx_string("tollgate_clock_faults_total Decisions that met counts "
               "dated ahead of the clock and re-dated them.")
};


/* the in-flight counters of a table with the in-flight areas (tg_stats):
 * family, type, help; the releases have a line per cause */
#define NGX_HTTP_TOLLGATE_IN_FLIGHT_METRICS  3

static ngx_str_t  ngx_http_tollgate_in_flight_metrics[] = {
    ngx_string("tollgate_in_flight"),
    ngx_string("tollgate_in_flight_releases_total"),
    ngx_string("tollgate_in_flight_refusals_total")
};


static ngx_str_t  ngx_http_tollgate_in_flight_help[] = {
    ngx_string("tollgate_in_flight Requests admitted under an in-flight "
               "limit and not yet released, over every key."),
    ngx_string("tollgate_in_flight_releases_total In-flight units given "
               "back, by cause: completed (the response ended), aborted "
               "(cut short) or reclaimed (from a process found dead)."),
    ngx_string("tollgate_in_flight_refusals_total Requests refused for "
               "in-flight (also counted as outcome \"rejected\").")
};


/* what a worker joined to a zone's store reports (tollgate_metrics) */
typedef struct {
    tg_lease_stats                lease;
    uint64_t                      joined;
    uint64_t                      parked;
    uint64_t                      park_failures;
} ngx_http_tollgate_store_view_t;


typedef struct {
    ngx_str_t                     name;
    ngx_str_t                     help;
    char                         *type;
    size_t                        offset;  /* in the view */
    size_t                        size;    /* 4 or 8 bytes */
} ngx_http_tollgate_store_metric_t;


#define ngx_http_tollgate_store_metric(name, type, field, help)              \
    { ngx_string(name), ngx_string(help), type,                              \
      offsetof(ngx_http_tollgate_store_view_t, field),                       \
      sizeof(((ngx_http_tollgate_store_view_t *) 0)->field) }


static ngx_http_tollgate_store_metric_t  ngx_http_tollgate_store_metrics_t[] =
{
    ngx_http_tollgate_store_metric("tollgate_store_joined", "gauge", joined,
        "1 if this worker is joined to the zone's store (0: see the error "
        "log)."),
    ngx_http_tollgate_store_metric("tollgate_store_down", "gauge",
        lease.redis_down,
        "1 when the last store call failed for want of Redis: the down "
        "policy decides beyond the units held."),
    ngx_http_tollgate_store_metric("tollgate_store_breaker", "gauge",
        lease.breaker,
        "The store's circuit breaker: 0 closed, 1 open, 2 half open."),
    ngx_http_tollgate_store_metric("tollgate_store_connections", "gauge",
        lease.connections, "Connections to Redis open now."),
    ngx_http_tollgate_store_metric("tollgate_store_hosts", "gauge",
        lease.hosts, "Hosts each quota is shared by (configured or live)."),
    ngx_http_tollgate_store_metric("tollgate_store_latency_microseconds",
        "gauge", lease.last_latency_us,
        "How long the last answered store call took."),
    ngx_http_tollgate_store_metric("tollgate_store_pending", "gauge",
        lease.pending,
        "Give-backs, pushes and recoveries waiting for Redis."),
    ngx_http_tollgate_store_metric("tollgate_store_parked", "gauge", parked,
        "Requests parked now, waiting for a decision that needs Redis."),
    ngx_http_tollgate_store_metric("tollgate_store_decisions_total",
        "counter", lease.decisions, "Decisions made with the store."),
    ngx_http_tollgate_store_metric("tollgate_store_from_leases_total",
        "counter", lease.from_leases,
        "Decisions made from units held, with no round trip."),
    ngx_http_tollgate_store_metric("tollgate_store_deferred_total",
        "counter", lease.deferred,
        "Requests that needed Redis and were parked off the event loop."),
    ngx_http_tollgate_store_metric("tollgate_store_park_failures_total",
        "counter", park_failures,
        "Requests that needed Redis and found no room in the thread "
        "pool's queue (answered 500)."),
    ngx_http_tollgate_store_metric("tollgate_store_refills_total",
        "counter", lease.refills, "Grants asked by decisions."),
    ngx_http_tollgate_store_metric("tollgate_store_top_ups_total",
        "counter", lease.top_ups,
        "Grants asked ahead by the lease thread for hot keys."),
    ngx_http_tollgate_store_metric("tollgate_store_granted_units_total",
        "counter", lease.granted_units, "Units granted by Redis."),
    ngx_http_tollgate_store_metric("tollgate_store_refused_total",
        "counter", lease.refused_by_store,
        "Grants of nothing: the key was at its global limit."),
    ngx_http_tollgate_store_metric("tollgate_store_refused_locally_total",
        "counter", lease.refused_locally,
        "Decisions refused without a round trip: Redis refused the key "
        "less than a second before."),
    ngx_http_tollgate_store_metric("tollgate_store_token_grants_total",
        "counter", lease.token_grants,
        "Token reservations Redis granted."),
    ngx_http_tollgate_store_metric("tollgate_store_token_refusals_total",
        "counter", lease.token_refusals,
        "Token reservations Redis refused: the token window was full."),
    ngx_http_tollgate_store_metric("tollgate_store_token_settles_total",
        "counter", lease.token_settles,
        "Settles that corrected Redis (a give-back or an excess)."),
    ngx_http_tollgate_store_metric("tollgate_store_eviction_risk",
        "gauge", lease.eviction_risk,
        "1 when Redis has a memory limit and a maxmemory-policy that can "
        "evict the limiter's counts (set noeviction)."),
    ngx_http_tollgate_store_metric("tollgate_store_evicted_keys_total",
        "counter", lease.evicted_keys,
        "Keys Redis evicted since this worker joined (any keys)."),
    ngx_http_tollgate_store_metric("tollgate_store_degraded_total",
        "counter", lease.degraded,
        "Decisions made by the down policy (fallbacks)."),
    ngx_http_tollgate_store_metric("tollgate_store_degraded_admitted_total",
        "counter", lease.degraded_admitted,
        "Of those, admitted."),
    ngx_http_tollgate_store_metric("tollgate_store_give_backs_total",
        "counter", lease.give_backs, "Unspent units given back."),
    ngx_http_tollgate_store_metric("tollgate_store_given_back_units_total",
        "counter", lease.given_back_units, "Units given back."),
    ngx_http_tollgate_store_metric("tollgate_store_pushes_total", "counter",
        lease.pushes, "Spends made while Redis was away, pushed."),
    ngx_http_tollgate_store_metric("tollgate_store_pushed_units_total",
        "counter", lease.pushed_units, "Units pushed."),
    ngx_http_tollgate_store_metric("tollgate_store_dropped_units_total",
        "counter", lease.dropped_units,
        "Units dropped after an outage rather than given back."),
    ngx_http_tollgate_store_metric("tollgate_store_calls_total", "counter",
        lease.store_calls, "Store calls made."),
    ngx_http_tollgate_store_metric("tollgate_store_failures_total",
        "counter", lease.store_failures, "Store calls that failed."),
    ngx_http_tollgate_store_metric("tollgate_store_timeouts_total",
        "counter", lease.store_timeouts,
        "Store calls that passed the deadline."),
    ngx_http_tollgate_store_metric("tollgate_store_circuit_open_total",
        "counter", lease.store_circuit_open,
        "Store calls failed at once by the open breaker."),
    ngx_http_tollgate_store_metric("tollgate_store_trips_total", "counter",
        lease.store_trips, "Times the breaker opened."),
    ngx_http_tollgate_store_metric("tollgate_store_connects_total",
        "counter", lease.store_connects, "Connections to Redis opened."),
    { ngx_null_string, ngx_null_string, NULL, 0, 0 }
};


void
ngx_http_tollgate_count(ngx_http_tollgate_zone_t *zone, ngx_str_t *model,
    ngx_uint_t outcome)
{
    ngx_http_tollgate_row_t  *row;

    if (outcome >= TG_OUTCOMES) {
        return;
    }

    row = ngx_http_tollgate_row(zone, model);

    (void) ngx_atomic_fetch_add(&row->count[outcome], 1);
}


/* the model label of row `i`: row 0 counts the models without a row */

static void
ngx_http_tollgate_row_label(ngx_http_tollgate_row_t *row, ngx_uint_t i,
    ngx_str_t *name)
{
    if (i == 0) {
        ngx_str_set(name, "(other)");
        return;
    }

    name->data = row->name;
    name->len = row->len;
}


/* the model's metric row, or "(other)"; rows never move or go away */

ngx_http_tollgate_row_t *
ngx_http_tollgate_row(ngx_http_tollgate_zone_t *zone, ngx_str_t *model)
{
    ngx_uint_t                  i, n;
    ngx_http_tollgate_shctx_t  *sh;

    sh = zone->sh;

    n = sh->nrows;
    ngx_memory_barrier();

    for (i = 1; i < n; i++) {
        if (sh->rows[i].len == model->len
            && ngx_memcmp(sh->rows[i].name, model->data, model->len) == 0)
        {
            return &sh->rows[i];
        }
    }

    return &sh->rows[0];
}


/*
 * Gives every model of the zone's policy a metric row; rows are only added,
 * so counters survive reloads that drop a model.
 */

ngx_int_t
ngx_http_tollgate_add_rows(ngx_http_tollgate_zone_t *zone, ngx_log_t *log)
{
    size_t                      len;
    uint32_t                    count, m;
    tg_status                   st;
    ngx_uint_t                  i, n;
    const char                 *name;
    ngx_http_tollgate_row_t    *row;
    ngx_http_tollgate_shctx_t  *sh;

    st = tg_policy_model_count(zone->policy, &count);
    if (st != TG_OK) {
        ngx_log_error(NGX_LOG_EMERG, log, 0,
                      "tollgate_zone \"%V\": tg_policy_model_count() "
                      "failed: %s", &zone->name, tg_status_str(st));
        return NGX_ERROR;
    }

    sh = zone->sh;

    ngx_shmtx_lock(&zone->shpool->mutex);

    for (m = 0; m < count; m++) {
        st = tg_policy_model_name(zone->policy, m, &name, &len);
        if (st != TG_OK || len == 0 || len > TG_MODEL_NAME_MAX) {
            continue;
        }

        n = sh->nrows;

        for (i = 1; i < n; i++) {
            if (sh->rows[i].len == len
                && ngx_memcmp(sh->rows[i].name, name, len) == 0)
            {
                break;
            }
        }

        if (i < n) {
            continue;
        }

        if (n == NGX_HTTP_TOLLGATE_ROWS) {
            ngx_log_error(NGX_LOG_WARN, log, 0,
                          "tollgate_zone \"%V\": more than %d models, "
                          "the rest are counted as \"(other)\"",
                          &zone->name, NGX_HTTP_TOLLGATE_ROWS - 1);
            break;
        }

        row = &sh->rows[n];
        ngx_memcpy(row->name, name, len);
        row->len = len;

        /* workers read nrows without the lock: the name goes first */
        ngx_memory_barrier();
        sh->nrows = n + 1;
    }

    ngx_shmtx_unlock(&zone->shpool->mutex);

    return NGX_OK;
}


ngx_int_t
ngx_http_tollgate_metrics_handler(ngx_http_request_t *r)
{
    u_char                         *p;
    size_t                          len, line;
    ngx_int_t                       rc;
    ngx_buf_t                      *b;
    ngx_str_t                       name;
    tg_stats                       *stats;
    tg_status                       st;
    ngx_uint_t                      z, i, k, n, w;
    ngx_chain_t                     out;
    ngx_http_tollgate_row_t        *row;
    ngx_http_tollgate_zone_t      **zones, *zone;
    ngx_http_tollgate_shctx_t      *sh;
    ngx_http_tollgate_main_conf_t  *tmcf;

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        return NGX_HTTP_NOT_ALLOWED;
    }

    rc = ngx_http_discard_request_body(r);

    if (rc != NGX_OK) {
        return rc;
    }

    tmcf = ngx_http_get_module_main_conf(r, ngx_http_tollgate_module);
    zones = tmcf->zones.elts;

    len = sizeof(NGX_HTTP_TOLLGATE_DECISIONS_HELP);

    for (k = 0; k < NGX_HTTP_TOLLGATE_TOKEN_METRICS; k++) {
        len += sizeof("# HELP \n# TYPE  counter\n")
               + ngx_http_tollgate_token_help[k].len
               + ngx_http_tollgate_token_metrics[k].len;
    }

    for (k = 0; k < NGX_HTTP_TOLLGATE_TABLE_METRICS; k++) {
        len += sizeof("# HELP \n# TYPE  counter\n")
               + ngx_http_tollgate_table_help[k].len
               + ngx_http_tollgate_table_metrics[k].len;
    }

    for (k = 0; k < NGX_HTTP_TOLLGATE_IN_FLIGHT_METRICS; k++) {
        len += sizeof("# HELP \n# TYPE  counter\n")
               + ngx_http_tollgate_in_flight_help[k].len
               + ngx_http_tollgate_in_flight_metrics[k].len;
    }

    len += ngx_http_tollgate_store_metrics_len(tmcf);

    for (z = 0; z < tmcf->zones.nelts; z++) {
        line = sizeof("tollgate_decisions_total{zone=\"\",model=\"\","
                      "outcome=\"unknown_model\"} \n")
               + zones[z]->name.len * 6 + TG_MODEL_NAME_MAX * 6
               + NGX_ATOMIC_T_LEN;

        /* the token lines are shorter: four per row */
        len += line * NGX_HTTP_TOLLGATE_ROWS * (TG_OUTCOMES + 4)
               + NGX_HTTP_TOLLGATE_TABLE_METRICS
                 * (sizeof("tollgate_clock_faults_total{zone=\"\"} \n")
                      + zones[z]->name.len * 6 + NGX_INT64_LEN);

        /* five in-flight lines: the gauge, three causes, the refusals */
        len += 5 * (sizeof("tollgate_in_flight_releases_total{zone=\"\","
                           "cause=\"completed\"} \n")
                    + zones[z]->name.len * 6 + NGX_INT64_LEN);
    }

    b = ngx_create_temp_buf(r->pool, len);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = b->last;

    p = ngx_cpymem(p, NGX_HTTP_TOLLGATE_DECISIONS_HELP,
                   sizeof(NGX_HTTP_TOLLGATE_DECISIONS_HELP) - 1);

    for (z = 0; z < tmcf->zones.nelts; z++) {
        zone = zones[z];
        sh = zone->sh;

        n = sh->nrows;
        ngx_memory_barrier();

        for (i = 0; i < n; i++) {
            row = &sh->rows[i];
            ngx_http_tollgate_row_label(row, i, &name);

            for (k = 0; k < TG_OUTCOMES; k++) {
                p = ngx_cpymem(p, "tollgate_decisions_total{zone=\"",
                               sizeof("tollgate_decisions_total{zone=\"")
                               - 1);
                p = ngx_http_tollgate_escape(p, zone->name.data,
                                             zone->name.len);
                p = ngx_cpymem(p, "\",model=\"", sizeof("\",model=\"") - 1);
                p = ngx_http_tollgate_escape(p, name.data, name.len);
                p = ngx_sprintf(p, "\",outcome=\"%V\"} %uA\n",
                                &ngx_http_tollgate_metric_outcomes[k],
                                row->count[k]);
            }
        }
    }

    /* one family at a time, as the text format wants: refusals have a
     * line per window */

    for (k = 0; k < NGX_HTTP_TOLLGATE_TOKEN_METRICS; k++) {
        p = ngx_sprintf(p, "# HELP %V\n# TYPE %V counter\n",
                        &ngx_http_tollgate_token_help[k],
                        &ngx_http_tollgate_token_metrics[k]);

        for (z = 0; z < tmcf->zones.nelts; z++) {
            zone = zones[z];
            sh = zone->sh;

            n = sh->nrows;
            ngx_memory_barrier();

            for (i = 0; i < n; i++) {
                row = &sh->rows[i];
                ngx_http_tollgate_row_label(row, i, &name);

                for (w = 0; w < (k == 2 ? 2 : 1); w++) {
                    p = ngx_sprintf(p, "%V{zone=\"",
                                    &ngx_http_tollgate_token_metrics[k]);
                    p = ngx_http_tollgate_escape(p, zone->name.data,
                                                 zone->name.len);
                    p = ngx_cpymem(p, "\",model=\"",
                                   sizeof("\",model=\"") - 1);
                    p = ngx_http_tollgate_escape(p, name.data, name.len);
                    p = ngx_sprintf(p, "%s} %uA\n",
                                    k < 2 ? "\""
                                    : w == 0 ? "\",window=\"minute\""
                                    : "\",window=\"day\"",
                                    k == 0 ? row->tokens_reserved
                                    : k == 1 ? row->tokens_settled
                                    : row->token_refusals[w]);
                }
            }
        }
    }

    /* each call walks the whole table: once per zone */

    stats = ngx_palloc(r->pool, (tmcf->zones.nelts + 1) * sizeof(tg_stats));
    if (stats == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    for (z = 0; z < tmcf->zones.nelts; z++) {
        stats[z].size = sizeof(tg_stats);
        st = tg_limiter_stats(zones[z]->limiter, tg_now_ms(), &stats[z]);

        if (st != TG_OK) {
            ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                          "tollgate: tg_limiter_stats() failed "
                          "in zone \"%V\": %s",
                          &zones[z]->name, tg_status_str(st));
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    for (k = 0; k < NGX_HTTP_TOLLGATE_TABLE_METRICS; k++) {
        p = ngx_sprintf(p, "# HELP %V\n# TYPE %V %s\n",
                        &ngx_http_tollgate_table_help[k],
                        &ngx_http_tollgate_table_metrics[k],
                        (k == 2 || k == 4) ? "counter" : "gauge");

        for (z = 0; z < tmcf->zones.nelts; z++) {
            p = ngx_sprintf(p, "%V{zone=\"",
                            &ngx_http_tollgate_table_metrics[k]);
            p = ngx_http_tollgate_escape(p, zones[z]->name.data,
                                         zones[z]->name.len);
            p = ngx_sprintf(p, "\"} %uL\n",
                            k == 0 ? (uint64_t) stats[z].slots
                            : k == 1 ? (uint64_t) stats[z].used
                            : k == 2 ? stats[z].table_full
                            : k == 3 ? stats[z].region_bytes
                            : stats[z].clock_faults);
        }
    }

    p = ngx_http_tollgate_in_flight_page(p, tmcf, stats);

    p = ngx_http_tollgate_store_metrics(p, tmcf, r);
    if (p == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b->last = p;
    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    r->headers_out.status = NGX_HTTP_OK;
    r->headers_out.content_length_n = b->last - b->pos;
    ngx_str_set(&r->headers_out.content_type,
                "text/plain; version=0.0.4; charset=utf-8");
    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->headers_out.content_type_lowcase = NULL;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


/*
 * The in-flight families (tg_stats), for the zones whose table has the
 * in-flight areas: a table formatted before them has nothing to show
 */

static u_char *
ngx_http_tollgate_in_flight_page(u_char *p,
    ngx_http_tollgate_main_conf_t *tmcf, tg_stats *stats)
{
    uint64_t                    v;
    ngx_uint_t                  z, k, c, n;
    ngx_http_tollgate_zone_t  **zones;

    static char  *causes[] = { "completed", "aborted", "reclaimed" };

    zones = tmcf->zones.elts;
    n = 0;

    for (z = 0; z < tmcf->zones.nelts; z++) {
        if (stats[z].has_in_flight) {
            n++;
        }
    }

    if (n == 0) {
        return p;
    }

    for (k = 0; k < NGX_HTTP_TOLLGATE_IN_FLIGHT_METRICS; k++) {
        p = ngx_sprintf(p, "# HELP %V\n# TYPE %V %s\n",
                        &ngx_http_tollgate_in_flight_help[k],
                        &ngx_http_tollgate_in_flight_metrics[k],
                        k == 0 ? "gauge" : "counter");

        for (z = 0; z < tmcf->zones.nelts; z++) {
            if (!stats[z].has_in_flight) {
                continue;
            }

            for (c = 0; c < (k == 1 ? 3 : 1); c++) {
                v = k == 0 ? stats[z].in_flight
                    : k == 2 ? stats[z].refused_in_flight
                    : c == 0 ? stats[z].released_completed
                    : c == 1 ? stats[z].released_aborted
                    : stats[z].reclaimed;

                p = ngx_sprintf(p, "%V{zone=\"",
                                &ngx_http_tollgate_in_flight_metrics[k]);
                p = ngx_http_tollgate_escape(p, zones[z]->name.data,
                                             zones[z]->name.len);

                if (k == 1) {
                    p = ngx_sprintf(p, "\",cause=\"%s\"} %uL\n",
                                    causes[c], v);

                } else {
                    p = ngx_sprintf(p, "\"} %uL\n", v);
                }
            }
        }
    }

    return p;
}


/* room for the store metrics of every zone joined to one */

static size_t
ngx_http_tollgate_store_metrics_len(ngx_http_tollgate_main_conf_t *tmcf)
{
    size_t                             len, line;
    ngx_uint_t                         z, n;
    ngx_http_tollgate_zone_t         **zones;
    ngx_http_tollgate_store_metric_t  *m;

    zones = tmcf->zones.elts;
    len = 0;
    line = 0;
    n = 0;

    for (z = 0; z < tmcf->zones.nelts; z++) {
        if (zones[z]->redis_url.len) {
            line += sizeof("{zone=\"\",pid=\"\",mode=\"leases\","
                           "down=\"closed\"} \n")
                    + zones[z]->name.len * 2 + NGX_INT64_LEN * 2;
            n++;
        }
    }

    if (n == 0) {
        return 0;
    }

    len += sizeof("# HELP tollgate_store_info \n# TYPE tollgate_store_info "
                  "gauge\ntollgate_store_info") + 64
           + line + sizeof("tollgate_store_info") * n;

    for (m = ngx_http_tollgate_store_metrics_t; m->name.len; m++) {
        len += sizeof("# HELP  \n# TYPE  counter\n") + m->name.len * 2
               + m->help.len + line + m->name.len * n;
    }

    return len;
}


/*
 * The lease layer's counters of this worker (tg_limiter_lease_stats), per
 * zone joined to a store: each worker joins on its own, so each answers
 * with its own numbers, labelled with its pid.
 */

static u_char *
ngx_http_tollgate_store_metrics(u_char *p, ngx_http_tollgate_main_conf_t *tmcf,
    ngx_http_request_t *r)
{
    u_char                            *f;
    uint64_t                           v;
    tg_status                          st;
    ngx_uint_t                         z, n;
    ngx_http_tollgate_zone_t         **zones, *zone;
    ngx_http_tollgate_store_view_t    *views;
    ngx_http_tollgate_store_metric_t  *m;

    zones = tmcf->zones.elts;
    n = 0;

    for (z = 0; z < tmcf->zones.nelts; z++) {
        if (zones[z]->redis_url.len) {
            n++;
        }
    }

    if (n == 0) {
        return p;
    }

    /* one snapshot per zone, so every line of a zone agrees */
    views = ngx_palloc(r->pool, n * sizeof(ngx_http_tollgate_store_view_t));
    if (views == NULL) {
        return NULL;
    }

    n = 0;

    for (z = 0; z < tmcf->zones.nelts; z++) {
        zone = zones[z];

        if (zone->redis_url.len == 0) {
            continue;
        }

        ngx_memzero(&views[n], sizeof(ngx_http_tollgate_store_view_t));
        views[n].lease.size = sizeof(tg_lease_stats);
        views[n].parked = zone->parked;
        views[n].park_failures = zone->park_failures;

        if (zone->joined) {
            st = tg_limiter_lease_stats(zone->limiter, &views[n].lease);

            if (st == TG_OK) {
                views[n].joined = 1;

            } else {
                ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                              "tollgate: tg_limiter_lease_stats() failed "
                              "in zone \"%V\": %s",
                              &zone->name, tg_status_str(st));
            }
        }

        n++;
    }

    p = ngx_cpymem(p, "# HELP tollgate_store_info The store's mode and down "
                   "policy.\n# TYPE tollgate_store_info gauge\n",
                   sizeof("# HELP tollgate_store_info The store's mode and "
                          "down policy.\n# TYPE tollgate_store_info gauge\n")
                   - 1);

    for (z = 0, n = 0; z < tmcf->zones.nelts; z++) {
        zone = zones[z];

        if (zone->redis_url.len == 0) {
            continue;
        }

        p = ngx_cpymem(p, "tollgate_store_info{zone=\"",
                       sizeof("tollgate_store_info{zone=\"") - 1);
        p = ngx_http_tollgate_escape(p, zone->name.data, zone->name.len);
        p = ngx_sprintf(p, "\",pid=\"%P\",mode=\"%s\",down=\"%s\"} %uL\n",
                        ngx_pid,
                        views[n].lease.mode == TG_REDIS_EXACT
                        ? "exact" : "leases",
                        views[n].lease.down_policy == TG_DOWN_OPEN ? "open"
                        : views[n].lease.down_policy == TG_DOWN_CLOSED
                          ? "closed" : "local",
                        views[n].joined);
        n++;
    }

    for (m = ngx_http_tollgate_store_metrics_t; m->name.len; m++) {
        p = ngx_sprintf(p, "# HELP %V %V\n# TYPE %V %s\n",
                        &m->name, &m->help, &m->name, m->type);

        for (z = 0, n = 0; z < tmcf->zones.nelts; z++) {
            zone = zones[z];

            if (zone->redis_url.len == 0) {
                continue;
            }

            f = (u_char *) &views[n] + m->offset;
            v = m->size == sizeof(uint32_t) ? *(uint32_t *) f
                                            : *(uint64_t *) f;

            p = ngx_sprintf(p, "%V{zone=\"", &m->name);
            p = ngx_http_tollgate_escape(p, zone->name.data, zone->name.len);
            p = ngx_sprintf(p, "\",pid=\"%P\"} %uL\n", ngx_pid, v);
            n++;
        }
    }

    return p;
}


/*
 * Escapes a Prometheus label value (the exposition format's rule: \\, \"
 * and \n; other control bytes become '?'); dst needs room for 2 bytes per
 * source byte.
 */

static u_char *
ngx_http_tollgate_escape(u_char *dst, u_char *src, size_t len)
{
    u_char  c;

    while (len--) {
        c = *src++;

        if (c == '"' || c == '\\') {
            *dst++ = '\\';
            *dst++ = c;

        } else if (c == '\n') {
            *dst++ = '\\';
            *dst++ = 'n';

        } else if (c < 0x20 || c == 0x7f) {
            *dst++ = '?';

        } else {
            *dst++ = c;
        }
    }

    return dst;
}
