
/*
 * ngx_http_tollgate_module: per-(account, model) requests-per-minute and
 * requests-per-day limits for an OpenAI-compatible API.
 *
 * Every decision and every answer is libtollgate's, through its C ABI: this
 * module takes the steps in the order all bindings share (method, account,
 * the body's model, tier, check), hands what happened to tg_answer_for and
 * sends the status, headers and body the core renders.  It keeps the
 * limiter's region in an nginx shared zone or a region file mapped by the
 * master, so all workers share exact counters.  A zone joined to a quota
 * store (tollgate_redis) decides without waiting where it can; a decision
 * that needs a round trip to Redis is made on a thread pool while the
 * request is parked, so the event loop never waits for Redis.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <tollgate.h>


/* the metric label of every TG_OUTCOME_*, in their order (stable values) */
#if (TG_OUTCOME_PASSED != 0 || TG_OUTCOME_REJECTED != 1                      \
     || TG_OUTCOME_DRY_RUN != 2 || TG_OUTCOME_TABLE_FULL != 3                \
     || TG_OUTCOME_UNKNOWN_MODEL != 4 || TG_OUTCOME_BAD_REQUEST != 5         \
     || TG_OUTCOME_NO_LIMIT != 6 || TG_OUTCOME_NO_ACCOUNT != 7               \
     || TG_OUTCOME_ERROR != 8 || TG_OUTCOME_NOT_LIMITED != 9                 \
     || TG_OUTCOMES != 10)
#error "TG_OUTCOME_* changed: update ngx_http_tollgate_metric_outcomes"
#endif

#define NGX_HTTP_TOLLGATE_TABLE_OPEN      0
#define NGX_HTTP_TOLLGATE_TABLE_CLOSED    1

#define NGX_HTTP_TOLLGATE_NO_LIMIT_PASS   0
#define NGX_HTTP_TOLLGATE_NO_LIMIT_REFUSE 1

/* metric rows per zone; row 0 counts requests whose model is not (yet) in
 * the table, so the table cannot be grown by clients sending random names */
#define NGX_HTTP_TOLLGATE_ROWS            64

/* a spooled body is read back and scanned in chunks of this size */
#define NGX_HTTP_TOLLGATE_CHUNK           16384

/* client bytes shown per log field (more than any valid account or model),
 * and the room one escaped field takes: \xHH per byte, "..." if cut */
#define NGX_HTTP_TOLLGATE_LOG_MAX         64
#define NGX_HTTP_TOLLGATE_LOG_LEN         (NGX_HTTP_TOLLGATE_LOG_MAX * 4 + 3)

/* a worker joined to a store logs the lease layer's events this often (ms);
 * the library keeps its latest 64 (tg_limiter_lease_event), and one event's
 * text is cut to fit this room */
#define NGX_HTTP_TOLLGATE_EVENTS_EVERY    1000
#define NGX_HTTP_TOLLGATE_EVENTS_KEPT     64
#define NGX_HTTP_TOLLGATE_EVENT_LEN       1024


typedef struct {
    ngx_atomic_t                  count[TG_OUTCOMES];
    size_t                        len;
    u_char                        name[TG_MODEL_NAME_MAX];
} ngx_http_tollgate_row_t;


/* lives in the shared zone */
typedef struct {
    u_char                       *region;
    size_t                        region_len;
    ngx_uint_t                    leased;     /* formatted for leases */
    ngx_atomic_t                  nrows;
    ngx_http_tollgate_row_t       rows[NGX_HTTP_TOLLGATE_ROWS];
} ngx_http_tollgate_shctx_t;


/* one per tollgate_zone, per configuration cycle */
typedef struct {
    ngx_str_t                     name;
    ngx_str_t                     policy_path;
    ngx_str_t                     file;       /* NUL-terminated; empty: shm */
    ngx_str_t                     size_arg;
    ssize_t                       size;
    tg_policy                    *policy;
    tg_limiter                   *limiter;
    ngx_slab_pool_t              *shpool;
    ngx_http_tollgate_shctx_t    *sh;
    ngx_shm_zone_t               *shm_zone;

    /* where tollgate_zone is, for errors found after the http block */
    u_char                       *conf_file;
    ngx_uint_t                    conf_line;

    /* tollgate_redis: NUL-terminated; empty: a local table */
    ngx_str_t                     redis_url;
    tg_redis_options              redis_opts;

    /* this worker's: joined to the store, requests parked now, requests
     * that found the thread pool's queue full, the number of the last
     * lease event logged (tg_limiter_lease_event) */
    ngx_uint_t                    joined;
    ngx_uint_t                    parked;
    uint64_t                      park_failures;
    uint64_t                      event_seq;
} ngx_http_tollgate_zone_t;


typedef struct {
    ngx_array_t                   zones;  /* ngx_http_tollgate_zone_t * */
} ngx_http_tollgate_main_conf_t;



/*
 * The value of tollgate_account, _tier or _model: a lone variable ("$name")
 * is read by the index it was given at configuration time, with no copy;
 * anything else is a complex value.
 */
typedef struct {
    ngx_int_t                     index;
    ngx_http_complex_value_t     *cv;     /* NULL: a lone variable */
} ngx_http_tollgate_value_t;


typedef struct ngx_http_tollgate_ctx_s  ngx_http_tollgate_ctx_t;


typedef struct {
    ngx_http_tollgate_zone_t     *zone;
    ngx_http_tollgate_value_t    *account;
    ngx_http_tollgate_value_t    *tier;
    ngx_http_tollgate_value_t    *model;
    ngx_uint_t                    status_code;
    ngx_flag_t                    dry_run;
    ngx_uint_t                    table_full;
    ngx_uint_t                    no_limit;

#if (NGX_THREADS)
    ngx_thread_pool_t            *thread_pool;
#endif

    /* the one answer to every request whose method is not limited:
     * decided at configuration time, shared and never written */
    ngx_http_tollgate_ctx_t      *not_limited;
} ngx_http_tollgate_loc_conf_t;


struct ngx_http_tollgate_ctx_s {
    ngx_http_tollgate_zone_t     *zone;
    ngx_str_t                     model;
    ngx_str_t                     account;

    unsigned                      decided:1;
    unsigned                      failed:1;   /* no answer from the core */
    unsigned                      sent:1;
    unsigned                      headers_done:1;
    unsigned                      parked:1;   /* decided on a thread now */
    unsigned                      leased:1;   /* decided with the store */

    ngx_msec_t                    parked_at;
    ngx_msec_t                    waited;     /* parked for, ms */

    /* from here on written before it is read: not zeroed */
    tg_answer                     answer;     /* the core's, once decided */

#if (NGX_THREADS)
    /* while parked: a timer, so a worker shutting down gracefully waits
     * for the decision (ngx_event_no_timers_left) */
    ngx_event_t                   guard;
#endif

    /* the numbers of the answer's headers, which the response's header
     * list points at (tg_answer_header_fields) */
    u_char                        values[TG_ANSWER_HEADER_BYTES];
};


#if (NGX_THREADS)

/* a decision made on the thread pool: in the request's pool, which stays
 * while the request is parked (r->main->blocked) */
typedef struct {
    ngx_http_request_t           *request;
    ngx_http_tollgate_ctx_t      *ctx;
    tg_limiter                   *limiter;
    uint64_t                      now;
    tg_request                    req;
    tg_decision                   decision;
    tg_status                     status;
} ngx_http_tollgate_task_ctx_t;

#endif


static ngx_int_t ngx_http_tollgate_handler(ngx_http_request_t *r);
static void ngx_http_tollgate_body_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_tollgate_first_steps(ngx_http_request_t *r,
    ngx_http_tollgate_ctx_t *ctx, ngx_http_tollgate_loc_conf_t *tlcf);
static tg_status ngx_http_tollgate_body_model(ngx_http_request_t *r,
    ngx_http_tollgate_ctx_t *ctx);
static void ngx_http_tollgate_check(ngx_http_request_t *r,
    ngx_http_tollgate_ctx_t *ctx, ngx_http_tollgate_loc_conf_t *tlcf);
static void ngx_http_tollgate_decided(ngx_http_request_t *r,
    ngx_http_tollgate_ctx_t *ctx, ngx_http_tollgate_loc_conf_t *tlcf,
    tg_status st, tg_decision *decision);
static void ngx_http_tollgate_answer(ngx_http_request_t *r,
    ngx_http_tollgate_ctx_t *ctx, ngx_http_tollgate_loc_conf_t *tlcf,
    tg_status st, tg_decision *decision);
#if (NGX_THREADS)
static ngx_int_t ngx_http_tollgate_park(ngx_http_request_t *r,
    ngx_http_tollgate_ctx_t *ctx, ngx_http_tollgate_loc_conf_t *tlcf,
    tg_request *req, uint64_t now);
static void ngx_http_tollgate_thread_handler(void *data, ngx_log_t *log);
static void ngx_http_tollgate_thread_event_handler(ngx_event_t *ev);
static void ngx_http_tollgate_guard_handler(ngx_event_t *ev);
#endif
static ngx_int_t ngx_http_tollgate_send_refusal(ngx_http_request_t *r,
    ngx_http_tollgate_ctx_t *ctx);
static void ngx_http_tollgate_count(ngx_http_tollgate_zone_t *zone,
    ngx_str_t *model, ngx_uint_t outcome);
static ngx_int_t ngx_http_tollgate_add_rows(ngx_http_tollgate_zone_t *zone,
    ngx_log_t *log);
static ngx_http_tollgate_ctx_t *ngx_http_tollgate_get_ctx(
    ngx_http_request_t *r);
static void ngx_http_tollgate_cleanup(void *data);
static ngx_int_t ngx_http_tollgate_header_filter(ngx_http_request_t *r);
static ngx_int_t ngx_http_tollgate_add_headers(ngx_http_request_t *r,
    ngx_http_tollgate_ctx_t *ctx);
static ngx_int_t ngx_http_tollgate_value(ngx_http_request_t *r,
    ngx_http_tollgate_value_t *tv, ngx_str_t *value);

static u_char *ngx_http_tollgate_escape(u_char *dst, u_char *src,
    size_t len);
static ngx_str_t *ngx_http_tollgate_log_escape(ngx_str_t *dst, u_char *buf,
    ngx_str_t *src);

static ngx_int_t ngx_http_tollgate_metrics_handler(ngx_http_request_t *r);
static size_t ngx_http_tollgate_store_metrics_len(
    ngx_http_tollgate_main_conf_t *tmcf);
static u_char *ngx_http_tollgate_store_metrics(u_char *p,
    ngx_http_tollgate_main_conf_t *tmcf, ngx_http_request_t *r);

static ngx_int_t ngx_http_tollgate_status_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_tollgate_limited_by_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_tollgate_remaining_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_tollgate_redis_wait_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);

static ngx_int_t ngx_http_tollgate_init_zone(ngx_shm_zone_t *shm_zone,
    void *data);
static ngx_int_t ngx_http_tollgate_attach(ngx_shm_zone_t *shm_zone,
    ngx_http_tollgate_zone_t *zone);
static void ngx_http_tollgate_zone_cleanup(void *data);
static ngx_int_t ngx_http_tollgate_format_matches(
    ngx_http_tollgate_zone_t *zone, ngx_uint_t leased, ngx_log_t *log);
static ngx_int_t ngx_http_tollgate_open_file(ngx_conf_t *cf,
    ngx_http_tollgate_zone_t *zone);
static ngx_int_t ngx_http_tollgate_leased(tg_limiter *limiter);
static uint32_t ngx_http_tollgate_leased_slots(size_t size);

static ngx_int_t ngx_http_tollgate_add_variables(ngx_conf_t *cf);
static void *ngx_http_tollgate_create_main_conf(ngx_conf_t *cf);
static char *ngx_http_tollgate_init_main_conf(ngx_conf_t *cf, void *conf);
static void *ngx_http_tollgate_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_tollgate_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child);
static char *ngx_http_tollgate_value_slot(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_tollgate_zone(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_tollgate_redis(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_tollgate_thread_pool(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static char *ngx_http_tollgate(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_tollgate_metrics(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static ngx_int_t ngx_http_tollgate_init(ngx_conf_t *cf);
static ngx_int_t ngx_http_tollgate_init_process(ngx_cycle_t *cycle);
static void ngx_http_tollgate_exit_process(ngx_cycle_t *cycle);
static void ngx_http_tollgate_events_handler(ngx_event_t *ev);
static void ngx_http_tollgate_log_events(ngx_log_t *log);


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


static ngx_str_t  ngx_http_tollgate_limited_by[] = {
    ngx_string("NONE"),
    ngx_string("MINUTE"),
    ngx_string("DAY")
};


static ngx_conf_enum_t  ngx_http_tollgate_table_full_modes[] = {
    { ngx_string("open"), NGX_HTTP_TOLLGATE_TABLE_OPEN },
    { ngx_string("closed"), NGX_HTTP_TOLLGATE_TABLE_CLOSED },
    { ngx_null_string, 0 }
};


static ngx_conf_enum_t  ngx_http_tollgate_no_limit_modes[] = {
    { ngx_string("pass"), NGX_HTTP_TOLLGATE_NO_LIMIT_PASS },
    { ngx_string("refuse"), NGX_HTTP_TOLLGATE_NO_LIMIT_REFUSE },
    { ngx_null_string, 0 }
};


static ngx_conf_num_bounds_t  ngx_http_tollgate_status_bounds = {
    ngx_conf_check_num_bounds, 400, 599
};


static ngx_command_t  ngx_http_tollgate_commands[] = {

    { ngx_string("tollgate_zone"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_2MORE,
      ngx_http_tollgate_zone,
      0,
      0,
      NULL },

    { ngx_string("tollgate_redis"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_2MORE,
      ngx_http_tollgate_redis,
      0,
      0,
      NULL },

    { ngx_string("tollgate_thread_pool"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_tollgate_thread_pool,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("tollgate"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_tollgate,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("tollgate_account"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_tollgate_value_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_tollgate_loc_conf_t, account),
      NULL },

    { ngx_string("tollgate_tier"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_tollgate_value_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_tollgate_loc_conf_t, tier),
      NULL },

    { ngx_string("tollgate_model"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_tollgate_value_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_tollgate_loc_conf_t, model),
      NULL },

    { ngx_string("tollgate_status"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_tollgate_loc_conf_t, status_code),
      &ngx_http_tollgate_status_bounds },

    { ngx_string("tollgate_dry_run"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_tollgate_loc_conf_t, dry_run),
      NULL },

    { ngx_string("tollgate_table_full"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_enum_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_tollgate_loc_conf_t, table_full),
      &ngx_http_tollgate_table_full_modes },

    { ngx_string("tollgate_no_limit"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_enum_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_tollgate_loc_conf_t, no_limit),
      &ngx_http_tollgate_no_limit_modes },

    { ngx_string("tollgate_metrics"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_tollgate_metrics,
      0,
      0,
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_tollgate_module_ctx = {
    ngx_http_tollgate_add_variables,       /* preconfiguration */
    ngx_http_tollgate_init,                /* postconfiguration */

    ngx_http_tollgate_create_main_conf,    /* create main configuration */
    ngx_http_tollgate_init_main_conf,      /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    ngx_http_tollgate_create_loc_conf,     /* create location configuration */
    ngx_http_tollgate_merge_loc_conf       /* merge location configuration */
};


ngx_module_t  ngx_http_tollgate_module = {
    NGX_MODULE_V1,
    &ngx_http_tollgate_module_ctx,         /* module context */
    ngx_http_tollgate_commands,            /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    ngx_http_tollgate_init_process,        /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    ngx_http_tollgate_exit_process,        /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


static ngx_http_variable_t  ngx_http_tollgate_vars[] = {

    { ngx_string("tollgate_status"), NULL,
      ngx_http_tollgate_status_variable, 0, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("tollgate_limited_by"), NULL,
      ngx_http_tollgate_limited_by_variable, 0, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("tollgate_minute_remaining"), NULL,
      ngx_http_tollgate_remaining_variable,
      offsetof(tg_decision, minute_remaining), NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("tollgate_day_remaining"), NULL,
      ngx_http_tollgate_remaining_variable,
      offsetof(tg_decision, day_remaining), NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("tollgate_redis_wait"), NULL,
      ngx_http_tollgate_redis_wait_variable, 0, NGX_HTTP_VAR_NOCACHEABLE, 0 },

      ngx_http_null_variable
};


static ngx_http_output_header_filter_pt  ngx_http_next_header_filter;

/* this worker's timer logging the lease events of its joined zones; a timer
 * needs a connection-like data pointer (the event code's debug lines read
 * its fd) */
static ngx_event_t       ngx_http_tollgate_events_ev;
static ngx_connection_t  ngx_http_tollgate_events_conn;


static ngx_int_t
ngx_http_tollgate_handler(ngx_http_request_t *r)
{
    ngx_int_t                      rc;
    ngx_pool_cleanup_t            *cln;
    ngx_http_tollgate_ctx_t       *ctx;
    ngx_http_tollgate_loc_conf_t  *tlcf;

    if (r != r->main) {
        return NGX_DECLINED;
    }

    tlcf = ngx_http_get_module_loc_conf(r, ngx_http_tollgate_module);

    if (tlcf->zone == NULL) {
        return NGX_DECLINED;
    }

    ctx = ngx_http_tollgate_get_ctx(r);

    if (ctx == NULL
        && !tg_method_limited((const char *) r->method_name.data,
                              r->method_name.len))
    {
        /* passes unread and uncharged, with the answer decided already */

        cln = ngx_pool_cleanup_add(r->pool, 0);
        if (cln == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        cln->handler = ngx_http_tollgate_cleanup;
        cln->data = tlcf->not_limited;

        ngx_http_set_ctx(r, tlcf->not_limited, ngx_http_tollgate_module);

        ngx_http_tollgate_count(tlcf->zone, &tlcf->not_limited->model,
                                TG_OUTCOME_NOT_LIMITED);

        return NGX_DECLINED;
    }

    if (ctx == NULL) {
        ctx = ngx_palloc(r->pool, sizeof(ngx_http_tollgate_ctx_t));
        if (ctx == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        ngx_memzero(ctx, offsetof(ngx_http_tollgate_ctx_t, answer));

        /*
         * an internal redirect zeroes the module contexts; the cleanup
         * lets the decision be found again, so it is made once per request
         */

        cln = ngx_pool_cleanup_add(r->pool, 0);
        if (cln == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        cln->handler = ngx_http_tollgate_cleanup;
        cln->data = ctx;

        ctx->zone = tlcf->zone;

        ngx_http_set_ctx(r, ctx, ngx_http_tollgate_module);

        if (ngx_http_tollgate_first_steps(r, ctx, tlcf) == NGX_AGAIN) {

            /* the model is in the body: read it, then resume the phases */

            rc = ngx_http_read_client_request_body(r,
                                               ngx_http_tollgate_body_handler);

            if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
                return rc;
            }

            ngx_http_finalize_request(r, NGX_DONE);
            return NGX_DONE;
        }
    }

    if (ctx->parked) {
        /* decided on the thread pool; its completion runs the phases */
        return NGX_AGAIN;
    }

    if (!ctx->decided || ctx->answer.http_status == 0 || ctx->sent) {
        return NGX_DECLINED;
    }

    ctx->sent = 1;

    rc = ngx_http_tollgate_send_refusal(r, ctx);

    ngx_http_finalize_request(r, rc);

    return NGX_DONE;
}


static void
ngx_http_tollgate_body_handler(ngx_http_request_t *r)
{
    tg_status                      st;
    ngx_http_tollgate_ctx_t       *ctx;
    ngx_http_tollgate_loc_conf_t  *tlcf;

    ctx = ngx_http_get_module_ctx(r, ngx_http_tollgate_module);
    tlcf = ngx_http_get_module_loc_conf(r, ngx_http_tollgate_module);

    st = ngx_http_tollgate_body_model(r, ctx);

    if (st == TG_OK) {
        ngx_http_tollgate_check(r, ctx, tlcf);

    } else {
        ngx_http_tollgate_answer(r, ctx, tlcf, st, NULL);
    }

    r->write_event_handler = ngx_http_core_run_phases;
    ngx_http_core_run_phases(r);
}


/*
 * The steps before the body, in the order every binding takes them (the
 * order of tg_answer_request): the method (only what tg_method_limited()
 * names is limited; the rest passes unread: the handler's not_limited),
 * then the account.  NGX_AGAIN: the model is in the body, read it; NGX_OK:
 * ctx->answer is decided.
 */

static ngx_int_t
ngx_http_tollgate_first_steps(ngx_http_request_t *r,
    ngx_http_tollgate_ctx_t *ctx, ngx_http_tollgate_loc_conf_t *tlcf)
{
    if (tlcf->account == NULL) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "tollgate: \"tollgate_account\" is not set");
        ngx_http_tollgate_answer(r, ctx, tlcf, TG_E_INVALID, NULL);
        return NGX_OK;
    }

    if (ngx_http_tollgate_value(r, tlcf->account, &ctx->account) != NGX_OK) {
        ngx_http_tollgate_answer(r, ctx, tlcf, TG_E_INVALID, NULL);
        return NGX_OK;
    }

    if (ctx->account.len == 0) {
        ngx_http_tollgate_answer(r, ctx, tlcf, TG_E_NO_ACCOUNT, NULL);
        return NGX_OK;
    }

    if (tlcf->model == NULL) {
        return NGX_AGAIN;
    }

    if (ngx_http_tollgate_value(r, tlcf->model, &ctx->model) != NGX_OK) {
        ngx_http_tollgate_answer(r, ctx, tlcf, TG_E_INVALID, NULL);
        return NGX_OK;
    }

    if (ctx->model.len == 0) {
        /* the variable names no model: the core's "no model" answer */
        ngx_http_tollgate_answer(r, ctx, tlcf, TG_E_BODY_NO_MODEL, NULL);
        return NGX_OK;
    }

    ngx_http_tollgate_check(r, ctx, tlcf);

    return NGX_OK;
}


/* the steps after the model: the tier (tg_tier_parse), then tg_check */

static void
ngx_http_tollgate_check(ngx_http_request_t *r, ngx_http_tollgate_ctx_t *ctx,
    ngx_http_tollgate_loc_conf_t *tlcf)
{
    u_char                     buf[NGX_HTTP_TOLLGATE_LOG_LEN];
    uint32_t                   tier;
    uint64_t                   now;
    ngx_str_t                  value, v;
    tg_status                  st;
    tg_request                 req;
    tg_decision                decision;
    ngx_http_tollgate_zone_t  *zone;

    /* no tollgate_tier, or an empty value: the developer tier */
    tier = TG_TIER_DEVELOPER;

    if (tlcf->tier) {
        if (ngx_http_tollgate_value(r, tlcf->tier, &value) != NGX_OK) {
            ngx_http_tollgate_answer(r, ctx, tlcf, TG_E_INVALID, NULL);
            return;
        }

        if (value.len) {
            st = tg_tier_parse((const char *) value.data, value.len, &tier);

            if (st != TG_OK) {
                ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                              "tollgate: unknown tier \"%V\" "
                              "(free, developer or enterprise)",
                              ngx_http_tollgate_log_escape(&v, buf, &value));

                ngx_http_tollgate_answer(r, ctx, tlcf, st, NULL);
                return;
            }
        }
    }

    ngx_memzero(&req, sizeof(tg_request));
    ngx_memzero(&decision, sizeof(tg_decision));

    req.size = sizeof(tg_request);
    req.account = (const char *) ctx->account.data;
    req.account_len = ctx->account.len;
    req.model = (const char *) ctx->model.data;
    req.model_len = ctx->model.len;
    req.tier = tier;
    req.cost = 1;

    decision.size = sizeof(tg_decision);

    zone = ctx->zone;
    now = tg_now_ms();

    if (zone->redis_url.len) {
        /* never wait for Redis on the event loop: TG_PENDING (nothing
         * charged) parks the request and decides it on the thread pool */
        req.flags = TG_REQUEST_NO_WAIT;
        ctx->leased = 1;
    }

    st = tg_check(zone->limiter, &req, now, &decision);

#if (NGX_THREADS)
    if (st == TG_PENDING
        && ngx_http_tollgate_park(r, ctx, tlcf, &req, now) == NGX_OK)
    {
        return;
    }
#endif

    ngx_http_tollgate_decided(r, ctx, tlcf, st, &decision);
}


/* what tg_check said, on the event loop: logged, then answered */

static void
ngx_http_tollgate_decided(ngx_http_request_t *r, ngx_http_tollgate_ctx_t *ctx,
    ngx_http_tollgate_loc_conf_t *tlcf, tg_status st, tg_decision *decision)
{
    switch (st) {

    case TG_OK:
    case TG_E_UNKNOWN_MODEL:
    case TG_E_NO_LIMIT:
    case TG_E_TABLE_FULL:
    case TG_E_ACCOUNT:
    case TG_E_COST_TOO_LARGE:
        break;

    case TG_PENDING:
        /* could not be parked (logged): the core's answer to a failure */
        break;

    case TG_E_NOT_JOINED:
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "tollgate: zone \"%V\" is not joined to its store "
                      "in this worker (see the error at its start)",
                      &ctx->zone->name);
        break;

    default:
        /* the core answers it as its own failure (500) */
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "tollgate: tg_check() failed in zone \"%V\": %s",
                      &ctx->zone->name, tg_status_str(st));
        break;
    }

    ngx_http_tollgate_answer(r, ctx, tlcf, st, decision);
}


#if (NGX_THREADS)

/* a timer while parked, so that a graceful shutdown waits for it */
#define NGX_HTTP_TOLLGATE_GUARD  1000


/*
 * Parks the request (as nginx's own thread tasks do: r->main->blocked keeps
 * the request and its pool alive, r->aio holds its output) and decides the
 * same request on the thread pool, where tg_check may wait for Redis for
 * the store's deadline.  NGX_ERROR: not parked (no memory, or the pool's
 * queue is full: logged by ngx_thread_task_post), nothing was charged.
 */

static ngx_int_t
ngx_http_tollgate_park(ngx_http_request_t *r, ngx_http_tollgate_ctx_t *ctx,
    ngx_http_tollgate_loc_conf_t *tlcf, tg_request *req, uint64_t now)
{
    ngx_thread_task_t             *task;
    ngx_http_tollgate_zone_t      *zone;
    ngx_http_tollgate_task_ctx_t  *tc;

    zone = ctx->zone;

    task = ngx_thread_task_alloc(r->pool,
                                 sizeof(ngx_http_tollgate_task_ctx_t));
    if (task == NULL) {
        zone->park_failures++;
        return NGX_ERROR;
    }

    tc = task->ctx;

    tc->request = r;
    tc->ctx = ctx;
    tc->limiter = zone->limiter;
    tc->now = now;
    tc->status = TG_PENDING;

    /* the same request, allowed to wait; account and model point into
     * the request, which outlives the task */
    tc->req = *req;
    tc->req.flags = 0;

    ngx_memzero(&tc->decision, sizeof(tg_decision));
    tc->decision.size = sizeof(tg_decision);

    task->handler = ngx_http_tollgate_thread_handler;
    task->event.data = tc;
    task->event.handler = ngx_http_tollgate_thread_event_handler;

    if (tlcf->thread_pool == NULL
        || ngx_thread_task_post(tlcf->thread_pool, task) != NGX_OK)
    {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "tollgate: cannot hand a decision in zone \"%V\" "
                      "to the thread pool", &zone->name);
        zone->park_failures++;
        return NGX_ERROR;
    }

    r->main->blocked++;
    r->aio = 1;

    ctx->parked = 1;
    ctx->parked_at = ngx_current_msec;
    zone->parked++;

    ngx_memzero(&ctx->guard, sizeof(ngx_event_t));
    ctx->guard.handler = ngx_http_tollgate_guard_handler;
    ctx->guard.data = ctx;
    ctx->guard.log = r->connection->log;

    ngx_add_timer(&ctx->guard, NGX_HTTP_TOLLGATE_GUARD);

    return NGX_OK;
}


/* on a pool thread: the core only, nothing of nginx */

static void
ngx_http_tollgate_thread_handler(void *data, ngx_log_t *log)
{
    ngx_http_tollgate_task_ctx_t  *tc = data;

    tc->status = tg_check(tc->limiter, &tc->req, tc->now, &tc->decision);
}


/* back on the event loop with the decision: answer, then resume */

static void
ngx_http_tollgate_thread_event_handler(ngx_event_t *ev)
{
    ngx_connection_t              *c;
    ngx_http_request_t            *r;
    ngx_http_tollgate_ctx_t       *ctx;
    ngx_http_tollgate_task_ctx_t  *tc;
    ngx_http_tollgate_loc_conf_t  *tlcf;

    tc = ev->data;
    r = tc->request;
    ctx = tc->ctx;
    c = r->connection;

    ngx_http_set_log_request(c->log, r);

    r->main->blocked--;
    r->aio = 0;

    ctx->parked = 0;
    ctx->waited = ngx_current_msec - ctx->parked_at;
    ctx->zone->parked--;

    if (ctx->guard.timer_set) {
        ngx_del_timer(&ctx->guard);
    }

    /* the decision was made and charged: log and count it in any case */
    tlcf = ngx_http_get_module_loc_conf(r, ngx_http_tollgate_module);
    ngx_http_tollgate_decided(r, ctx, tlcf, tc->status, &tc->decision);

    if (c->error && r->write_event_handler == ngx_http_core_run_phases) {
        /* the client went away meanwhile */
        ngx_http_finalize_request(r, NGX_HTTP_CLIENT_CLOSED_REQUEST);

    } else {
        /* the phases, or the finalizer of a request terminated while
         * parked */
        r->write_event_handler(r);
    }

    ngx_http_run_posted_requests(c);
}


static void
ngx_http_tollgate_guard_handler(ngx_event_t *ev)
{
    ngx_http_tollgate_ctx_t  *ctx = ev->data;

    /* more requests parked than pool threads wait their turn */
    ngx_log_error(NGX_LOG_WARN, ev->log, 0,
                  "tollgate: a decision in zone \"%V\" has waited %M ms "
                  "for the thread pool and the store",
                  &ctx->zone->name, ngx_current_msec - ctx->parked_at);

    ngx_add_timer(ev, NGX_HTTP_TOLLGATE_GUARD);
}

#endif


/*
 * Asks the core for the whole answer to what happened (st: TG_OK with the
 * decision, a failed step's status, TG_E_NO_ACCOUNT, TG_E_NOT_LIMITED),
 * with the flags the directives set, then logs and counts it.
 */

static void
ngx_http_tollgate_answer(ngx_http_request_t *r, ngx_http_tollgate_ctx_t *ctx,
    ngx_http_tollgate_loc_conf_t *tlcf, tg_status st, tg_decision *decision)
{
    u_char                     abuf[NGX_HTTP_TOLLGATE_LOG_LEN];
    u_char                     mbuf[NGX_HTTP_TOLLGATE_LOG_LEN];
    uint32_t                   flags, by;
    ngx_str_t                  a, m;
    tg_status                  rc;
    tg_answer                 *answer;
    ngx_http_tollgate_zone_t  *zone;

    ctx->decided = 1;
    zone = ctx->zone;
    answer = &ctx->answer;

    flags = 0;

    if (tlcf->dry_run) {
        flags |= TG_ANSWER_DRY_RUN;
    }

    if (tlcf->no_limit == NGX_HTTP_TOLLGATE_NO_LIMIT_PASS) {
        flags |= TG_ANSWER_NO_LIMIT_PASS;
    }

    if (tlcf->table_full == NGX_HTTP_TOLLGATE_TABLE_OPEN) {
        flags |= TG_ANSWER_TABLE_FULL_OPEN;
    }

    if (st == TG_E_TABLE_FULL) {
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "tollgate: zone \"%V\" has no free slot for a new "
                      "key, account \"%V\", model \"%V\"", &zone->name,
                      ngx_http_tollgate_log_escape(&a, abuf, &ctx->account),
                      ngx_http_tollgate_log_escape(&m, mbuf, &ctx->model));

    } else if (st == TG_E_ACCOUNT) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "tollgate: unusable account id \"%V\" of %uz bytes "
                      "(1..%d allowed)",
                      ngx_http_tollgate_log_escape(&a, abuf, &ctx->account),
                      ctx->account.len, TG_ACCOUNT_MAX);
    }

    /* tg_answer_for writes the whole struct */
    answer->size = sizeof(tg_answer);

    rc = tg_answer_for(st, st == TG_OK ? decision : NULL,
                       (const char *) ctx->model.data, ctx->model.len,
                       flags, tlcf->status_code, answer);

    if (rc != TG_OK) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "tollgate: tg_answer_for() failed: %s",
                      tg_status_str(rc));

        /* nginx's own 500 (ngx_http_tollgate_send_refusal) */
        ngx_memzero(answer, sizeof(tg_answer));
        answer->size = sizeof(tg_answer);
        answer->http_status = NGX_HTTP_INTERNAL_SERVER_ERROR;
        answer->outcome = TG_OUTCOME_ERROR;
        ctx->failed = 1;
    }

    if (answer->would_status) {

        /* dry run: decided and reported, never refused */

        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "tollgate: dry run, would answer %uD (%s) "
                      "for account \"%V\", model \"%V\" in zone \"%V\"",
                      answer->would_status, tg_outcome_name(answer->outcome),
                      ngx_http_tollgate_log_escape(&a, abuf, &ctx->account),
                      ngx_http_tollgate_log_escape(&m, mbuf, &ctx->model),
                      &zone->name);

    } else if (answer->outcome == TG_OUTCOME_REJECTED) {
        by = answer->decision.limited_by;

        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "tollgate: rejected, account \"%V\", model \"%V\" "
                      "limited by %V in zone \"%V\"",
                      ngx_http_tollgate_log_escape(&a, abuf, &ctx->account),
                      ngx_http_tollgate_log_escape(&m, mbuf, &ctx->model),
                      &ngx_http_tollgate_limited_by[
                          by <= TG_LIMIT_DAY ? by : TG_LIMIT_NONE],
                      &zone->name);
    }

    ngx_http_tollgate_count(zone, &ctx->model, answer->outcome);
}


/*
 * Finds the model in the request body with the library's scanner, so the
 * module parses no client input itself.  TG_OK: ctx->model is set (it
 * points into the scan's memory, from the request pool); otherwise the
 * status to answer (the scanner's refusal, TG_E_INVALID for a failure).
 */

static tg_status
ngx_http_tollgate_body_model(ngx_http_request_t *r,
    ngx_http_tollgate_ctx_t *ctx)
{
    off_t           offset, saved;
    void           *mem;
    size_t          size, model_len;
    u_char         *chunk;
    ssize_t         n;
    ngx_buf_t      *b;
    tg_status       st;
    ngx_chain_t    *cl;
    tg_body_scan   *scan;
    const uint8_t  *model;

    size = tg_body_scan_size();

    /* the pool aligns to NGX_ALIGNMENT, at least TG_BODY_SCAN_ALIGN */
    mem = ngx_palloc(r->pool, size);
    if (mem == NULL) {
        return TG_E_INVALID;
    }

    st = tg_body_scan_init(mem, size, &scan);
    if (st != TG_OK) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "tollgate: tg_body_scan_init() failed: %s",
                      tg_status_str(st));
        return TG_E_INVALID;
    }

    chunk = NULL;

    for (cl = r->request_body ? r->request_body->bufs : NULL;
         cl && st == TG_OK;
         cl = cl->next)
    {
        b = cl->buf;

        if (ngx_buf_in_memory(b)) {
            st = tg_body_scan_feed(scan, b->pos, b->last - b->pos);
            continue;
        }

        if (!b->in_file) {
            continue;
        }

        /* spooled to a temporary file: scan it chunk by chunk */

        if (chunk == NULL) {
            chunk = ngx_palloc(r->pool, NGX_HTTP_TOLLGATE_CHUNK);
            if (chunk == NULL) {
                return TG_E_INVALID;
            }
        }

        /* ngx_read_file() moves the offset the body writer keeps */
        saved = b->file->offset;

        for (offset = b->file_pos; offset < b->file_last && st == TG_OK;
             offset += n)
        {
            size = (size_t) ngx_min(b->file_last - offset,
                                    NGX_HTTP_TOLLGATE_CHUNK);

            n = ngx_read_file(b->file, chunk, size, offset);

            if (n == NGX_ERROR || n == 0) {
                b->file->offset = saved;

                ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                              "tollgate: cannot read the request body "
                              "from \"%V\"", &b->file->name);
                return TG_E_INVALID;
            }

            st = tg_body_scan_feed(scan, chunk, n);
        }

        b->file->offset = saved;
    }

    if (st == TG_OK) {
        st = tg_body_scan_finish(scan, &model, &model_len);
    }

    if (st == TG_OK) {
        ctx->model.data = (u_char *) model;
        ctx->model.len = model_len;
    }

    return st;
}


/* a refusal: the core's status, headers and body */

static ngx_int_t
ngx_http_tollgate_send_refusal(ngx_http_request_t *r,
    ngx_http_tollgate_ctx_t *ctx)
{
    u_char                    *p;
    size_t                     len;
    tg_status                  st;
    ngx_http_complex_value_t   cv;

    /* the header filter adds nothing to this response, nor to a 500 */
    ctx->headers_done = 1;

    if (ctx->failed) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = ngx_pnalloc(r->pool, TG_ANSWER_BODY_MAX);
    if (p == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    st = tg_answer_body(&ctx->answer, (char *) p, TG_ANSWER_BODY_MAX, &len);

    if (st != TG_OK) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "tollgate: tg_answer_body() failed: %s",
                      tg_status_str(st));
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ngx_http_tollgate_add_headers(r, ctx) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* a complex value with no lengths is its value, as is */
    ngx_memzero(&cv, sizeof(ngx_http_complex_value_t));
    cv.value.data = p;
    cv.value.len = len;

    /* no type given: the content-type the core's headers set is kept */
    return ngx_http_send_response(r, ctx->answer.http_status, NULL, &cv);
}


static void
ngx_http_tollgate_count(ngx_http_tollgate_zone_t *zone, ngx_str_t *model,
    ngx_uint_t outcome)
{
    ngx_uint_t                  i, n;
    ngx_http_tollgate_row_t    *row;
    ngx_http_tollgate_shctx_t  *sh;

    if (outcome >= TG_OUTCOMES) {
        return;
    }

    sh = zone->sh;
    row = &sh->rows[0];

    n = sh->nrows;
    ngx_memory_barrier();

    for (i = 1; i < n; i++) {
        if (sh->rows[i].len == model->len
            && ngx_memcmp(sh->rows[i].name, model->data, model->len) == 0)
        {
            row = &sh->rows[i];
            break;
        }
    }

    (void) ngx_atomic_fetch_add(&row->count[outcome], 1);
}


/*
 * Gives every model of the zone's policy a metric row; rows are only added,
 * so counters survive reloads that drop a model.
 */

static ngx_int_t
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


static ngx_http_tollgate_ctx_t *
ngx_http_tollgate_get_ctx(ngx_http_request_t *r)
{
    ngx_pool_cleanup_t       *cln;
    ngx_http_tollgate_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_tollgate_module);

    if (ctx || !(r->internal || r->filter_finalize)) {
        return ctx;
    }

    for (cln = r->pool->cleanup; cln; cln = cln->next) {
        if (cln->handler == ngx_http_tollgate_cleanup) {
            ctx = cln->data;
            ngx_http_set_ctx(r, ctx, ngx_http_tollgate_module);
            return ctx;
        }
    }

    return NULL;
}


static void
ngx_http_tollgate_cleanup(void *data)
{
    /* nothing to free: this cleanup only marks where the ctx is */
}


static ngx_int_t
ngx_http_tollgate_header_filter(ngx_http_request_t *r)
{
    ngx_http_tollgate_ctx_t  *ctx;

    if (r != r->main) {
        return ngx_http_next_header_filter(r);
    }

    ctx = ngx_http_tollgate_get_ctx(r);

    if (ctx == NULL || !ctx->decided || ctx->headers_done) {
        return ngx_http_next_header_filter(r);
    }

    ctx->headers_done = 1;

    if (ngx_http_tollgate_add_headers(r, ctx) != NGX_OK) {
        return NGX_ERROR;
    }

    return ngx_http_next_header_filter(r);
}


/*
 * The answer's headers, all at once from the core (tg_answer_header_fields):
 * the header list points at the core's static names and at the numbers in
 * ctx->values, which live as long as the request ($sent_http_* in the log).
 * They replace any the upstream sent under the same names; content-type is
 * nginx's own field.
 */

static ngx_int_t
ngx_http_tollgate_add_headers(ngx_http_request_t *r,
    ngx_http_tollgate_ctx_t *ctx)
{
    size_t            n;
    tg_status         st;
    ngx_uint_t        i, k;
    tg_header_field  *f, fields[TG_ANSWER_HEADERS_MAX];
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h, *header;

    if (ctx->failed) {
        return NGX_OK;
    }

    st = tg_answer_header_fields(&ctx->answer, fields, TG_ANSWER_HEADERS_MAX,
                                 (char *) ctx->values, TG_ANSWER_HEADER_BYTES,
                                 &n);

    if (st != TG_OK) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "tollgate: tg_answer_header_fields() failed: %s",
                      tg_status_str(st));
        return NGX_ERROR;
    }

    if (n == 0) {
        return NGX_OK;
    }

    /* one walk over the headers so far (the upstream's) */

    part = &r->headers_out.headers.part;
    header = part->elts;

    for (i = 0; /* void */ ; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                break;
            }

            part = part->next;
            header = part->elts;
            i = 0;
        }

        if (header[i].hash == 0) {
            continue;
        }

        for (k = 0; k < n; k++) {
            if (header[i].key.len == fields[k].name_len
                && ngx_strncasecmp(header[i].key.data,
                                   (u_char *) fields[k].name,
                                   fields[k].name_len) == 0)
            {
                header[i].hash = 0;
                break;
            }
        }
    }

    for (k = 0; k < n; k++) {
        f = &fields[k];

        if (f->name_len == sizeof("content-type") - 1
            && ngx_strncmp(f->name, "content-type", f->name_len) == 0)
        {
            r->headers_out.content_type.data = (u_char *) f->value;
            r->headers_out.content_type.len = f->value_len;
            r->headers_out.content_type_len = f->value_len;
            r->headers_out.content_type_lowcase = NULL;
            continue;
        }

        h = ngx_list_push(&r->headers_out.headers);
        if (h == NULL) {
            return NGX_ERROR;
        }

        /* the core's text is never written: nginx only reads header keys
         * and values of the response */
        h->hash = 1;
#if (nginx_version >= 1023000)
        h->next = NULL;
#endif
        h->key.data = (u_char *) f->name;
        h->key.len = f->name_len;
        h->lowcase_key = (u_char *) f->name;
        h->value.data = (u_char *) f->value;
        h->value.len = f->value_len;
    }

    return NGX_OK;
}


/* the value of tollgate_account, _tier or _model for this request */

static ngx_int_t
ngx_http_tollgate_value(ngx_http_request_t *r, ngx_http_tollgate_value_t *tv,
    ngx_str_t *value)
{
    ngx_http_variable_value_t  *vv;

    if (tv->cv) {
        return ngx_http_complex_value(r, tv->cv, value);
    }

    /* as a complex value of one variable reads it, without the copy */
    vv = ngx_http_get_flushed_variable(r, tv->index);

    if (vv == NULL) {
        return NGX_ERROR;
    }

    if (vv->not_found) {
        ngx_str_null(value);
        return NGX_OK;
    }

    value->data = vv->data;
    value->len = vv->len;

    return NGX_OK;
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


/*
 * Client bytes for a log line, in the style of nginx's own log escaping:
 * control bytes, non-ASCII, '"' and '\\' as \xHH, cut after
 * NGX_HTTP_TOLLGATE_LOG_MAX bytes with "...", so no client can forge a log
 * line, send escape sequences to a terminal or flood the log.  buf holds
 * NGX_HTTP_TOLLGATE_LOG_LEN bytes; returns dst, which points into it.
 */

static ngx_str_t *
ngx_http_tollgate_log_escape(ngx_str_t *dst, u_char *buf, ngx_str_t *src)
{
    u_char   c, *p;
    size_t   i, n;

    static u_char  hex[] = "0123456789ABCDEF";

    n = ngx_min(src->len, NGX_HTTP_TOLLGATE_LOG_MAX);
    p = buf;

    for (i = 0; i < n; i++) {
        c = src->data[i];

        if (c < 0x20 || c >= 0x7f || c == '"' || c == '\\') {
            *p++ = '\\';
            *p++ = 'x';
            *p++ = hex[c >> 4];
            *p++ = hex[c & 0xf];

        } else {
            *p++ = c;
        }
    }

    if (src->len > n) {
        p = ngx_cpymem(p, "...", 3);
    }

    dst->data = buf;
    dst->len = p - buf;

    return dst;
}


static ngx_int_t
ngx_http_tollgate_metrics_handler(ngx_http_request_t *r)
{
    u_char                         *p;
    size_t                          len, line;
    ngx_int_t                       rc;
    ngx_buf_t                      *b;
    ngx_str_t                       name;
    tg_stats                       *stats;
    tg_status                       st;
    ngx_uint_t                      z, i, k, n;
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

    for (k = 0; k < NGX_HTTP_TOLLGATE_TABLE_METRICS; k++) {
        len += sizeof("# HELP \n# TYPE  counter\n")
               + ngx_http_tollgate_table_help[k].len
               + ngx_http_tollgate_table_metrics[k].len;
    }

    len += ngx_http_tollgate_store_metrics_len(tmcf);

    for (z = 0; z < tmcf->zones.nelts; z++) {
        line = sizeof("tollgate_decisions_total{zone=\"\",model=\"\","
                      "outcome=\"unknown_model\"} \n")
               + zones[z]->name.len * 6 + TG_MODEL_NAME_MAX * 6
               + NGX_ATOMIC_T_LEN;

        len += line * NGX_HTTP_TOLLGATE_ROWS * TG_OUTCOMES
               + NGX_HTTP_TOLLGATE_TABLE_METRICS
                 * (sizeof("tollgate_clock_faults_total{zone=\"\"} \n")
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

            if (i == 0) {
                ngx_str_set(&name, "(other)");

            } else {
                name.data = row->name;
                name.len = row->len;
            }

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


static ngx_int_t
ngx_http_tollgate_status_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    const char               *name;
    ngx_http_tollgate_ctx_t  *ctx;

    ctx = ngx_http_tollgate_get_ctx(r->main);

    if (ctx == NULL || !ctx->decided) {
        v->not_found = 1;
        return NGX_OK;
    }

    /* the core's name of the outcome, a static string */
    name = tg_outcome_name(ctx->answer.outcome);

    v->len = ngx_strlen(name);
    v->valid = 1;
    v->no_cacheable = 0;
    v->not_found = 0;
    v->data = (u_char *) name;

    return NGX_OK;
}


static ngx_int_t
ngx_http_tollgate_limited_by_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_uint_t                by;
    ngx_http_tollgate_ctx_t  *ctx;

    ctx = ngx_http_tollgate_get_ctx(r->main);

    if (ctx == NULL || !ctx->decided || !ctx->answer.has_decision) {
        v->not_found = 1;
        return NGX_OK;
    }

    by = ctx->answer.decision.limited_by;

    if (by > TG_LIMIT_DAY) {
        by = TG_LIMIT_NONE;
    }

    v->len = ngx_http_tollgate_limited_by[by].len;
    v->valid = 1;
    v->no_cacheable = 0;
    v->not_found = 0;
    v->data = ngx_http_tollgate_limited_by[by].data;

    return NGX_OK;
}


static ngx_int_t
ngx_http_tollgate_remaining_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    u_char                   *p;
    uint32_t                  value;
    ngx_http_tollgate_ctx_t  *ctx;

    ctx = ngx_http_tollgate_get_ctx(r->main);

    if (ctx == NULL || !ctx->decided || !ctx->answer.has_decision) {
        v->not_found = 1;
        return NGX_OK;
    }

    p = ngx_pnalloc(r->pool, NGX_INT32_LEN);
    if (p == NULL) {
        return NGX_ERROR;
    }

    value = *(uint32_t *) ((u_char *) &ctx->answer.decision + data);

    v->len = ngx_sprintf(p, "%uD", value) - p;
    v->valid = 1;
    v->no_cacheable = 0;
    v->not_found = 0;
    v->data = p;

    return NGX_OK;
}


/* milliseconds the request was parked waiting for Redis (0: decided on
 * the event loop); only for a zone joined to a store */

static ngx_int_t
ngx_http_tollgate_redis_wait_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    u_char                   *p;
    ngx_http_tollgate_ctx_t  *ctx;

    ctx = ngx_http_tollgate_get_ctx(r->main);

    if (ctx == NULL || !ctx->decided || !ctx->leased) {
        v->not_found = 1;
        return NGX_OK;
    }

    p = ngx_pnalloc(r->pool, NGX_INT_T_LEN);
    if (p == NULL) {
        return NGX_ERROR;
    }

    v->len = ngx_sprintf(p, "%M", ctx->waited) - p;
    v->valid = 1;
    v->no_cacheable = 0;
    v->not_found = 0;
    v->data = p;

    return NGX_OK;
}


static ngx_int_t
ngx_http_tollgate_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_http_tollgate_zone_t  *ozone = data;

    u_char                     *mem;
    size_t                      len, size;
    uint32_t                    slots;
    tg_status                   st;
    ngx_slab_pool_t            *shpool;
    ngx_http_tollgate_zone_t   *zone;
    ngx_http_tollgate_shctx_t  *sh;

    zone = shm_zone->data;

    if (ozone) {
        /* reload with the same zone: its counters carry over */
        zone->sh = ozone->sh;
        zone->shpool = ozone->shpool;

        if (zone->file.len) {
            /* the table is the file's, opened with the configuration */
            return ngx_http_tollgate_add_rows(zone, shm_zone->shm.log);
        }

        return ngx_http_tollgate_attach(shm_zone, zone);
    }

    shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;
    zone->shpool = shpool;

    if (shm_zone->shm.exists) {
        zone->sh = shpool->data;

        if (zone->file.len) {
            return ngx_http_tollgate_add_rows(zone, shm_zone->shm.log);
        }

        return ngx_http_tollgate_attach(shm_zone, zone);
    }

    sh = ngx_slab_calloc(shpool, sizeof(ngx_http_tollgate_shctx_t));
    if (sh == NULL) {
        ngx_log_error(NGX_LOG_EMERG, shm_zone->shm.log, 0,
                      "tollgate_zone \"%V\" is too small", &zone->name);
        return NGX_ERROR;
    }

    zone->sh = sh;
    sh->nrows = 1;

    len = sizeof(" in tollgate_zone \"\"") + shm_zone->shm.name.len;

    shpool->log_ctx = ngx_slab_alloc(shpool, len);
    if (shpool->log_ctx == NULL) {
        return NGX_ERROR;
    }

    ngx_sprintf(shpool->log_ctx, " in tollgate_zone \"%V\"%Z",
                &shm_zone->shm.name);

    if (zone->file.len) {
        /* a file zone keeps only its metric rows in shared memory */
        shpool->data = sh;

        return ngx_http_tollgate_add_rows(zone, shm_zone->shm.log);
    }

    /*
     * The region takes the largest run of free pages; slab pages are page
     * aligned, more than TG_REGION_ALIGN asks.
     */

    mem = NULL;
    size = 0;

    ngx_shmtx_lock(&shpool->mutex);

    shpool->log_nomem = 0;

    for (len = shpool->pfree * ngx_pagesize; len >= ngx_pagesize;
         len -= ngx_pagesize)
    {
        slots = tg_region_slots_for(len);
        if (slots == 0) {
            break;
        }

        /* a leased table takes the whole run: the core fits its slots
         * and their lease state into it */
        size = zone->redis_url.len ? len : tg_region_size(slots);

        mem = ngx_slab_alloc_locked(shpool, size);
        if (mem) {
            break;
        }
    }

    shpool->log_nomem = 1;

    ngx_shmtx_unlock(&shpool->mutex);

    if (mem == NULL) {
        ngx_log_error(NGX_LOG_EMERG, shm_zone->shm.log, 0,
                      "tollgate_zone \"%V\" is too small to hold a table",
                      &zone->name);
        return NGX_ERROR;
    }

    if (zone->redis_url.len) {
        st = tg_limiter_init_in_for_leases(zone->policy, mem, size,
                                           &zone->limiter);
    } else {
        st = tg_limiter_init_in(zone->policy, mem, size, &zone->limiter);
    }

    if (st != TG_OK) {
        ngx_log_error(NGX_LOG_EMERG, shm_zone->shm.log, 0,
                      "tollgate_zone \"%V\": tg_limiter_init_in() failed: %s",
                      &zone->name, tg_last_error());
        return NGX_ERROR;
    }

    sh->region = mem;
    sh->region_len = size;
    sh->leased = zone->redis_url.len ? 1 : 0;

    shpool->data = sh;

    return ngx_http_tollgate_add_rows(zone, shm_zone->shm.log);
}


static ngx_int_t
ngx_http_tollgate_attach(ngx_shm_zone_t *shm_zone,
    ngx_http_tollgate_zone_t *zone)
{
    tg_status  st;

    if (zone->sh == NULL || zone->sh->region == NULL) {
        ngx_log_error(NGX_LOG_EMERG, shm_zone->shm.log, 0,
                      "tollgate_zone \"%V\" holds no table", &zone->name);
        return NGX_ERROR;
    }

    st = tg_limiter_attach(zone->policy, zone->sh->region,
                           zone->sh->region_len, &zone->limiter);

    if (st != TG_OK) {
        ngx_log_error(NGX_LOG_EMERG, shm_zone->shm.log, 0,
                      "tollgate_zone \"%V\": tg_limiter_attach() failed: %s",
                      &zone->name, tg_last_error());
        return NGX_ERROR;
    }

    if (ngx_http_tollgate_format_matches(zone, zone->sh->leased,
                                         shm_zone->shm.log)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    return ngx_http_tollgate_add_rows(zone, shm_zone->shm.log);
}


/*
 * A table is formatted for leases when it is made, never afterwards: a
 * zone whose table (kept over a reload, or a file) has the other format
 * than tollgate_redis asks for is refused, in words.
 */

static ngx_int_t
ngx_http_tollgate_format_matches(ngx_http_tollgate_zone_t *zone,
    ngx_uint_t leased, ngx_log_t *log)
{
    if (leased && zone->redis_url.len == 0) {
        ngx_log_error(NGX_LOG_EMERG, log, 0,
                      "tollgate_zone \"%V\" holds a table formatted for "
                      "quota leases (one quota across hosts): add "
                      "\"tollgate_redis zone=%V URL;\", or give the zone "
                      "a new %s for a local table in %s:%ui",
                      &zone->name, &zone->name,
                      zone->file.len ? "file" : "name or size",
                      zone->conf_file, zone->conf_line);
        return NGX_ERROR;
    }

    if (!leased && zone->redis_url.len) {
        ngx_log_error(NGX_LOG_EMERG, log, 0,
                      "tollgate_redis: zone \"%V\" holds a local table, "
                      "not one formatted for quota leases: give the zone "
                      "a new %s (a table is formatted when it is made) "
                      "in %s:%ui", &zone->name,
                      zone->file.len ? "file" : "name or size",
                      zone->conf_file, zone->conf_line);
        return NGX_ERROR;
    }

    return NGX_OK;
}


/*
 * Maps the zone's region file, creating it with the slots "size" holds if
 * it is missing (without "size" the file must exist and is taken as it
 * is).  The master does this once the http block is read (when every
 * tollgate_redis is known), before it forks: workers inherit the
 * MAP_SHARED mapping, so every worker, the workers of older cycles still
 * finishing requests after a reload, a new binary after USR2 and the
 * tollgate command all count in the same table, and the worker user needs
 * no access to the file of its own.
 */

static ngx_int_t
ngx_http_tollgate_open_file(ngx_conf_t *cf, ngx_http_tollgate_zone_t *zone)
{
    u_char       err[1024];
    uint32_t     slots, flags;
    tg_status    st;
    tg_limiter  *probe;

    slots = 0;
    flags = 0;

    if (zone->size) {
        slots = zone->redis_url.len
                ? ngx_http_tollgate_leased_slots((size_t) zone->size)
                : tg_region_slots_for((size_t) zone->size);

        if (slots == 0) {
            ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                          "tollgate_zone \"%V\" is too small to hold "
                          "a table in %s:%ui",
                          &zone->name, zone->conf_file, zone->conf_line);
            return NGX_ERROR;
        }

        flags |= TG_OPEN_CREATE;
    }

    if (zone->redis_url.len) {
        flags |= TG_OPEN_LEASES;
    }

    st = tg_limiter_open(zone->policy, (const char *) zone->file.data, slots,
                         flags, &zone->limiter);

    if (st == TG_OK) {

        if (zone->redis_url.len) {
            return NGX_OK;
        }

        /* a leased file opens without the flag too: say so now, not with
         * every request */

        if (ngx_http_tollgate_leased(zone->limiter) == 1) {
            (void) ngx_http_tollgate_format_matches(zone, 1, cf->log);
            return NGX_ERROR;
        }

        return NGX_OK;
    }

    (void) ngx_cpystrn(err, (u_char *) tg_last_error(), sizeof(err));

    if (st == TG_E_REGION_SIZE) {
        probe = NULL;

        /* a file of the other format has a slot count of its own: the
         * format is what the operator needs to hear */

        if (zone->redis_url.len) {
            if (tg_limiter_open(zone->policy, (const char *) zone->file.data,
                                0, TG_OPEN_LEASES, &probe)
                == TG_E_NOT_LEASED)
            {
                (void) ngx_cpystrn(err, (u_char *) tg_last_error(),
                                   sizeof(err));
                slots = 0;

            } else {
                tg_limiter_free(probe);
            }

        } else if (tg_limiter_open(zone->policy,
                                   (const char *) zone->file.data, 0, 0,
                                   &probe)
                   == TG_OK)
        {
            if (ngx_http_tollgate_leased(probe) == 1) {
                tg_limiter_free(probe);
                (void) ngx_http_tollgate_format_matches(zone, 1, cf->log);
                return NGX_ERROR;
            }

            tg_limiter_free(probe);
        }
    }

    /* the core's words: path, OS reason, sizes, what to do */

    if (slots == 0) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "tollgate_zone \"%V\": cannot open file \"%V\": "
                      "%s in %s:%ui", &zone->name, &zone->file,
                      err, zone->conf_file, zone->conf_line);
        return NGX_ERROR;
    }

    /* "0 slots" in the core's words is a zone without "size" here */

    ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                  "tollgate_zone \"%V\": cannot open file \"%V\" with "
                  "the %uD slots \"%V\" holds: %s%s in %s:%ui",
                  &zone->name, &zone->file, slots, &zone->size_arg,
                  err,
                  st == TG_E_REGION_SIZE
                  ? " (in nginx, 0 slots is a zone without \"size\")"
                  : "", zone->conf_file, zone->conf_line);

    return NGX_ERROR;
}


/*
 * 1 if the table is formatted for leases, 0 if not, -1 if its stats fail:
 * a leased table is tg_region_size_for_leases(slots) bytes (tg_stats), a
 * local one tg_region_size(slots).
 */

static ngx_int_t
ngx_http_tollgate_leased(tg_limiter *limiter)
{
    tg_stats  stats;

    stats.size = sizeof(tg_stats);

    if (tg_limiter_stats(limiter, tg_now_ms(), &stats) != TG_OK) {
        return -1;
    }

    return stats.region_bytes != tg_region_size(stats.slots)
           && stats.region_bytes == tg_region_size_for_leases(stats.slots);
}


/* the most slots a leased table of at most "size" bytes holds */

static uint32_t
ngx_http_tollgate_leased_slots(size_t size)
{
    uint32_t  lo, hi, mid;

    lo = 0;
    hi = tg_region_slots_for(size);

    while (lo < hi) {
        mid = lo + (hi - lo + 1) / 2;

        if (tg_region_size_for_leases(mid) <= size) {
            lo = mid;

        } else {
            hi = mid - 1;
        }
    }

    return lo;
}


static void
ngx_http_tollgate_zone_cleanup(void *data)
{
    ngx_http_tollgate_zone_t  *zone = data;

    /* the handles only; the region stays in the shared zone or the file */

    tg_limiter_free(zone->limiter);
    zone->limiter = NULL;

    tg_policy_free(zone->policy);
    zone->policy = NULL;
}


static ngx_int_t
ngx_http_tollgate_add_variables(ngx_conf_t *cf)
{
    ngx_http_variable_t  *var, *v;

    for (v = ngx_http_tollgate_vars; v->name.len; v++) {
        var = ngx_http_add_variable(cf, &v->name, v->flags);
        if (var == NULL) {
            return NGX_ERROR;
        }

        var->get_handler = v->get_handler;
        var->data = v->data;
    }

    return NGX_OK;
}


static void *
ngx_http_tollgate_create_main_conf(ngx_conf_t *cf)
{
    ngx_http_tollgate_main_conf_t  *tmcf;

    tmcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_tollgate_main_conf_t));
    if (tmcf == NULL) {
        return NULL;
    }

    if (ngx_array_init(&tmcf->zones, cf->pool, 1,
                       sizeof(ngx_http_tollgate_zone_t *))
        != NGX_OK)
    {
        return NULL;
    }

    return tmcf;
}


/* the http block is read: every tollgate_redis is known, so file zones
 * can be opened in the format they need */

static char *
ngx_http_tollgate_init_main_conf(ngx_conf_t *cf, void *conf)
{
    ngx_http_tollgate_main_conf_t  *tmcf = conf;

    ngx_uint_t                  z;
    ngx_http_tollgate_zone_t  **zones;

    zones = tmcf->zones.elts;

    for (z = 0; z < tmcf->zones.nelts; z++) {
        if (zones[z]->file.len
            && ngx_http_tollgate_open_file(cf, zones[z]) != NGX_OK)
        {
            return NGX_CONF_ERROR;
        }
    }

    return NGX_CONF_OK;
}


static void *
ngx_http_tollgate_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_tollgate_loc_conf_t  *conf;

    conf = ngx_pcalloc(cf->pool, sizeof(ngx_http_tollgate_loc_conf_t));
    if (conf == NULL) {
        return NULL;
    }

    conf->zone = NGX_CONF_UNSET_PTR;
    conf->account = NGX_CONF_UNSET_PTR;
    conf->tier = NGX_CONF_UNSET_PTR;
    conf->model = NGX_CONF_UNSET_PTR;
    conf->status_code = NGX_CONF_UNSET_UINT;
    conf->dry_run = NGX_CONF_UNSET;
    conf->table_full = NGX_CONF_UNSET_UINT;
    conf->no_limit = NGX_CONF_UNSET_UINT;
#if (NGX_THREADS)
    conf->thread_pool = NGX_CONF_UNSET_PTR;
#endif

    return conf;
}


static char *
ngx_http_tollgate_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_http_tollgate_loc_conf_t  *prev = parent;
    ngx_http_tollgate_loc_conf_t  *conf = child;

    tg_status                 st;
    ngx_http_tollgate_ctx_t  *nl;

    ngx_conf_merge_ptr_value(conf->zone, prev->zone, NULL);
    ngx_conf_merge_ptr_value(conf->account, prev->account, NULL);
    ngx_conf_merge_ptr_value(conf->tier, prev->tier, NULL);
    ngx_conf_merge_ptr_value(conf->model, prev->model, NULL);
    ngx_conf_merge_uint_value(conf->status_code, prev->status_code,
                              NGX_HTTP_TOO_MANY_REQUESTS);
    ngx_conf_merge_value(conf->dry_run, prev->dry_run, 0);
    ngx_conf_merge_uint_value(conf->table_full, prev->table_full,
                              NGX_HTTP_TOLLGATE_TABLE_CLOSED);
    ngx_conf_merge_uint_value(conf->no_limit, prev->no_limit,
                              NGX_HTTP_TOLLGATE_NO_LIMIT_REFUSE);

#if (NGX_THREADS)
    ngx_conf_merge_ptr_value(conf->thread_pool, prev->thread_pool, NULL);

    if (conf->zone && conf->zone->redis_url.len && conf->thread_pool == NULL)
    {
        /* "default", which nginx makes (32 threads) when it is not
         * declared, as for "aio threads" */
        conf->thread_pool = ngx_thread_pool_add(cf, NULL);
        if (conf->thread_pool == NULL) {
            return NGX_CONF_ERROR;
        }
    }
#endif

    if (conf->zone == NULL) {
        return NGX_CONF_OK;
    }

    nl = ngx_pcalloc(cf->pool, sizeof(ngx_http_tollgate_ctx_t));
    if (nl == NULL) {
        return NGX_CONF_ERROR;
    }

    nl->zone = conf->zone;
    nl->answer.size = sizeof(tg_answer);

    st = tg_answer_for(TG_E_NOT_LIMITED, NULL, NULL, 0, 0,
                       conf->status_code, &nl->answer);

    /* an answer that passes with no headers: nothing ever writes to it */
    if (st != TG_OK || nl->answer.http_status != 0
        || nl->answer.has_decision)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "tollgate: tg_answer_for() failed: %s",
                           tg_status_str(st));
        return NGX_CONF_ERROR;
    }

    nl->decided = 1;
    nl->headers_done = 1;
    conf->not_limited = nl;

    return NGX_CONF_OK;
}


/*
 * tollgate_account, _tier and _model: a value with variables, as
 * ngx_http_set_complex_value_slot takes it; a lone "$name" is kept as the
 * variable's index.
 */

static char *
ngx_http_tollgate_value_slot(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    char  *p = conf;

    u_char                              c;
    ngx_str_t                          *value, name;
    ngx_uint_t                          i;
    ngx_http_tollgate_value_t         **field, *tv;
    ngx_http_compile_complex_value_t    ccv;

    field = (ngx_http_tollgate_value_t **) (p + cmd->offset);

    if (*field != NGX_CONF_UNSET_PTR && *field != NULL) {
        return "is duplicate";
    }

    tv = ngx_pcalloc(cf->pool, sizeof(ngx_http_tollgate_value_t));
    if (tv == NULL) {
        return NGX_CONF_ERROR;
    }

    value = cf->args->elts;

    /* "$name": letters, digits and '_', not a regex capture ("$1") */

    name.data = value[1].data + 1;
    name.len = value[1].len > 1 ? value[1].len - 1 : 0;

    for (i = 0; i < name.len; i++) {
        c = ngx_tolower(name.data[i]);

        if (!((c >= 'a' && c <= 'z') || c == '_'
              || (i > 0 && c >= '0' && c <= '9')))
        {
            break;
        }
    }

    if (name.len && value[1].data[0] == '$' && i == name.len) {
        tv->index = ngx_http_get_variable_index(cf, &name);

        if (tv->index == NGX_ERROR) {
            return NGX_CONF_ERROR;
        }

        *field = tv;
        return NGX_CONF_OK;
    }

    tv->cv = ngx_palloc(cf->pool, sizeof(ngx_http_complex_value_t));
    if (tv->cv == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memzero(&ccv, sizeof(ngx_http_compile_complex_value_t));

    ccv.cf = cf;
    ccv.value = &value[1];
    ccv.complex_value = tv->cv;

    if (ngx_http_compile_complex_value(&ccv) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    *field = tv;

    return NGX_CONF_OK;
}


static char *
ngx_http_tollgate_zone(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_tollgate_main_conf_t  *tmcf = conf;

    char                       err[1024];
    u_char                    *path;
    ssize_t                    size;
    ngx_str_t                 *value, name, policy, file, s, size_arg;
    tg_status                  st;
    ngx_uint_t                 i;
    ngx_shm_zone_t            *shm_zone;
    ngx_pool_cleanup_t        *cln;
    ngx_http_tollgate_zone_t  *zone, **zp;

    value = cf->args->elts;

    size = 0;
    ngx_str_null(&name);
    ngx_str_null(&policy);
    ngx_str_null(&file);
    ngx_str_null(&size_arg);

    for (i = 1; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "name=", 5) == 0) {
            name.data = value[i].data + 5;
            name.len = value[i].len - 5;
            continue;
        }

        if (ngx_strncmp(value[i].data, "size=", 5) == 0) {
            s.data = value[i].data + 5;
            s.len = value[i].len - 5;

            size = ngx_parse_size(&s);

            if (size == NGX_ERROR) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid zone size \"%V\"", &value[i]);
                return NGX_CONF_ERROR;
            }

            if (size < (ssize_t) (8 * ngx_pagesize)) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "zone \"%V\" is too small", &value[i]);
                return NGX_CONF_ERROR;
            }

            size_arg = value[i];
            continue;
        }

        if (ngx_strncmp(value[i].data, "file=", 5) == 0) {
            file.data = value[i].data + 5;
            file.len = value[i].len - 5;

            if (file.len == 0) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid file \"%V\"", &value[i]);
                return NGX_CONF_ERROR;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "policy=", 7) == 0) {
            policy.data = value[i].data + 7;
            policy.len = value[i].len - 7;

            if (policy.len == 0) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid policy \"%V\"", &value[i]);
                return NGX_CONF_ERROR;
            }

            continue;
        }

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid parameter \"%V\"", &value[i]);
        return NGX_CONF_ERROR;
    }

    if (name.len == 0 || (size == 0 && file.len == 0)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V\" must have \"name\" and \"size\" parameters",
                           &cmd->name);
        return NGX_CONF_ERROR;
    }

    zone = ngx_pcalloc(cf->pool, sizeof(ngx_http_tollgate_zone_t));
    if (zone == NULL) {
        return NGX_CONF_ERROR;
    }

    zone->name = name;
    zone->size = size;
    zone->size_arg = size_arg;
    zone->conf_file = cf->conf_file->file.name.data;
    zone->conf_line = cf->conf_file->line;

    /* frees the handles when this configuration's cycle goes away */
    cln = ngx_pool_cleanup_add(cf->pool, 0);
    if (cln == NULL) {
        return NGX_CONF_ERROR;
    }

    cln->handler = ngx_http_tollgate_zone_cleanup;
    cln->data = zone;

    err[0] = '\0';

    if (policy.len) {
        if (ngx_conf_full_name(cf->cycle, &policy, 1) != NGX_OK) {
            return NGX_CONF_ERROR;
        }

        path = ngx_pnalloc(cf->pool, policy.len + 1);
        if (path == NULL) {
            return NGX_CONF_ERROR;
        }

        (void) ngx_cpystrn(path, policy.data, policy.len + 1);

        zone->policy_path = policy;

        st = tg_policy_load((const char *) path, &zone->policy, err,
                            sizeof(err));

    } else {
        st = tg_policy_default(&zone->policy);
    }

    if (st != TG_OK) {
        err[sizeof(err) - 1] = '\0';

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "tollgate_zone \"%V\": invalid policy: %s",
                           &name, err[0] ? err : tg_status_str(st));
        return NGX_CONF_ERROR;
    }

    if (file.len) {
        if (ngx_conf_full_name(cf->cycle, &file, 0) != NGX_OK) {
            return NGX_CONF_ERROR;
        }

        zone->file.data = ngx_pnalloc(cf->pool, file.len + 1);
        if (zone->file.data == NULL) {
            return NGX_CONF_ERROR;
        }

        (void) ngx_cpystrn(zone->file.data, file.data, file.len + 1);
        zone->file.len = file.len;
    }

    /*
     * A file zone keeps its metric rows in a small shared zone of the
     * same name; 8 pages is too small for a zone holding a table, so a
     * zone that changes kind on reload is never taken for the old one.
     */

    shm_zone = ngx_shared_memory_add(cf, &name,
                                     file.len ? 8 * ngx_pagesize
                                              : (size_t) size,
                                     &ngx_http_tollgate_module);
    if (shm_zone == NULL) {
        return NGX_CONF_ERROR;
    }

    if (shm_zone->data) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "duplicate tollgate_zone \"%V\"", &name);
        return NGX_CONF_ERROR;
    }

    shm_zone->init = ngx_http_tollgate_init_zone;
    shm_zone->data = zone;
    zone->shm_zone = shm_zone;

    zp = ngx_array_push(&tmcf->zones);
    if (zp == NULL) {
        return NGX_CONF_ERROR;
    }

    *zp = zone;

    return NGX_CONF_OK;
}


/*
 * tollgate_redis zone=NAME URL [option=value ...]: the zone's table is
 * formatted for quota leases and every worker joins the store at URL.  The
 * options go to the core's parser (tg_redis_options_set) one by one, and
 * the URL and options to tg_redis_check, so errors are the core's words;
 * nothing connects until the workers start.
 */

static char *
ngx_http_tollgate_redis(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
#if (NGX_THREADS)
    ngx_http_tollgate_main_conf_t  *tmcf = conf;

    u_char                     *eq;
    ngx_str_t                  *value, name, url;
    tg_status                   st;
    ngx_uint_t                  i, z;
    tg_redis_options            opts;
    ngx_http_tollgate_zone_t  **zones, *zone;

    value = cf->args->elts;

    if (value[1].len <= 5 || ngx_strncmp(value[1].data, "zone=", 5) != 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V\" takes zone=NAME first, not \"%V\"",
                           &cmd->name, &value[1]);
        return NGX_CONF_ERROR;
    }

    name.data = value[1].data + 5;
    name.len = value[1].len - 5;

    zone = NULL;
    zones = tmcf->zones.elts;

    for (z = 0; z < tmcf->zones.nelts; z++) {
        if (zones[z]->name.len == name.len
            && ngx_strncmp(zones[z]->name.data, name.data, name.len) == 0)
        {
            zone = zones[z];
            break;
        }
    }

    if (zone == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "unknown tollgate_zone \"%V\" (declare it before "
                           "\"%V\")", &name, &cmd->name);
        return NGX_CONF_ERROR;
    }

    if (zone->redis_url.len) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "zone \"%V\" has a \"%V\" already",
                           &name, &cmd->name);
        return NGX_CONF_ERROR;
    }

    ngx_memzero(&opts, sizeof(tg_redis_options));
    opts.size = sizeof(tg_redis_options);

    for (i = 3; i < cf->args->nelts; i++) {
        eq = ngx_strlchr(value[i].data, value[i].data + value[i].len, '=');

        if (eq == NULL || eq == value[i].data) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid parameter \"%V\" (options are "
                               "name=value)", &value[i]);
            return NGX_CONF_ERROR;
        }

        st = tg_redis_options_set(&opts, (const char *) value[i].data,
                                  eq - value[i].data, (const char *) eq + 1,
                                  value[i].data + value[i].len - eq - 1);

        if (st != TG_OK) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "%V: zone \"%V\": invalid option \"%V\": %s",
                               &cmd->name, &name, &value[i],
                               tg_last_error());
            return NGX_CONF_ERROR;
        }
    }

    url.len = value[2].len;
    url.data = ngx_pnalloc(cf->pool, url.len + 1);
    if (url.data == NULL) {
        return NGX_CONF_ERROR;
    }

    (void) ngx_cpystrn(url.data, value[2].data, url.len + 1);

    /* the URL and options as tg_limiter_connect will take them, without
     * contacting Redis: the master never joins */
    st = tg_redis_check((const char *) url.data, &opts);

    if (st != TG_OK) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "%V: zone \"%V\": %s",
                           &cmd->name, &name, tg_last_error());
        return NGX_CONF_ERROR;
    }

    zone->redis_url = url;
    zone->redis_opts = opts;

    return NGX_CONF_OK;

#else

    return "needs nginx built --with-threads: requests wait for Redis "
           "on a thread pool";

#endif
}


/* tollgate_thread_pool NAME: where requests wait for Redis, as "aio
 * threads=NAME" names its pool (an undeclared "default" has 32 threads) */

static char *
ngx_http_tollgate_thread_pool(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
#if (NGX_THREADS)
    ngx_http_tollgate_loc_conf_t  *tlcf = conf;

    ngx_str_t  *value;

    if (tlcf->thread_pool != NGX_CONF_UNSET_PTR) {
        return "is duplicate";
    }

    value = cf->args->elts;

    tlcf->thread_pool = ngx_thread_pool_add(cf, &value[1]);
    if (tlcf->thread_pool == NULL) {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;

#else

    return "needs nginx built --with-threads";

#endif
}


static char *
ngx_http_tollgate(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_tollgate_loc_conf_t  *tlcf = conf;

    ngx_str_t       *value;
    ngx_shm_zone_t  *shm_zone;

    if (tlcf->zone != NGX_CONF_UNSET_PTR) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (ngx_strcmp(value[1].data, "off") == 0) {
        tlcf->zone = NULL;
        return NGX_CONF_OK;
    }

    shm_zone = ngx_shared_memory_add(cf, &value[1], 0,
                                     &ngx_http_tollgate_module);
    if (shm_zone == NULL) {
        return NGX_CONF_ERROR;
    }

    if (shm_zone->data == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "unknown tollgate_zone \"%V\"", &value[1]);
        return NGX_CONF_ERROR;
    }

    tlcf->zone = shm_zone->data;

    return NGX_CONF_OK;
}


static char *
ngx_http_tollgate_metrics(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_core_loc_conf_t  *clcf;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    clcf->handler = ngx_http_tollgate_metrics_handler;

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_tollgate_init(ngx_conf_t *cf)
{
    ngx_http_handler_pt        *h;
    ngx_http_core_main_conf_t  *cmcf;

    cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);

    /* after access checks, so refused clients are not charged */
    h = ngx_array_push(&cmcf->phases[NGX_HTTP_PRECONTENT_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_http_tollgate_handler;

    ngx_http_next_header_filter = ngx_http_top_header_filter;
    ngx_http_top_header_filter = ngx_http_tollgate_header_filter;

    return NGX_OK;
}


/*
 * Each worker joins the store itself, after the fork: the link is a thread
 * of the process (tg_limiter_connect), and the master never has one.
 * Redis down, or answering an error (BUSY, LOADING, NOAUTH), is not an
 * error here: the worker joins, the down policy decides until Redis
 * serves, and the lease events say so in the error log (a timer of the
 * worker, ngx_http_tollgate_events_handler).
 */

static ngx_int_t
ngx_http_tollgate_init_process(ngx_cycle_t *cycle)
{
    tg_status                       st;
    ngx_uint_t                      z, joined;
    ngx_event_t                    *ev;
    ngx_http_tollgate_zone_t      **zones, *zone;
    ngx_http_tollgate_main_conf_t  *tmcf;

    if (ngx_process != NGX_PROCESS_WORKER
        && ngx_process != NGX_PROCESS_SINGLE)
    {
        /* the cache manager and loader decide nothing */
        return NGX_OK;
    }

    tmcf = ngx_http_cycle_get_module_main_conf(cycle,
                                               ngx_http_tollgate_module);
    if (tmcf == NULL) {
        return NGX_OK;
    }

    zones = tmcf->zones.elts;
    joined = 0;

    for (z = 0; z < tmcf->zones.nelts; z++) {
        zone = zones[z];

        if (zone->redis_url.len == 0 || zone->limiter == NULL) {
            continue;
        }

        st = tg_limiter_connect(zone->limiter,
                                (const char *) zone->redis_url.data,
                                &zone->redis_opts);

        if (st != TG_OK) {
            /*
             * not Redis being away or answering errors (joined anyway):
             * the URL or options, which the configuration check passed,
             * or the process (no thread); the URL is not logged, it may
             * hold a password
             */
            ngx_log_error(NGX_LOG_EMERG, cycle->log, 0,
                          "tollgate_redis: zone \"%V\" cannot join its "
                          "store: %s; its requests are answered 500 until "
                          "a reload", &zone->name, tg_last_error());
            continue;
        }

        zone->joined = 1;
        zone->event_seq = 0;
        joined = 1;
    }

    if (!joined) {
        return NGX_OK;
    }

    /* what joining found (Redis unreachable, BUSY, an eviction policy) is
     * logged now; later events each second */
    ngx_http_tollgate_log_events(cycle->log);

    ngx_http_tollgate_events_conn.fd = (ngx_socket_t) -1;

    ev = &ngx_http_tollgate_events_ev;
    ev->handler = ngx_http_tollgate_events_handler;
    ev->data = &ngx_http_tollgate_events_conn;
    ev->log = cycle->log;
    /* never keeps a worker that shuts down gracefully */
    ev->cancelable = 1;

    ngx_add_timer(ev, NGX_HTTP_TOLLGATE_EVENTS_EVERY);

    return NGX_OK;
}


static void
ngx_http_tollgate_events_handler(ngx_event_t *ev)
{
    ngx_http_tollgate_log_events(ev->log);

    ngx_add_timer(ev, NGX_HTTP_TOLLGATE_EVENTS_EVERY);
}


/*
 * Logs each lease event of this worker's joined zones once, in order: the
 * library only queues them (its threads log nothing of nginx's), and each
 * zone remembers the number of the last one logged.  Levels: TG_LOG_ERROR
 * (counts may be lost) at error, TG_LOG_WARN (the down policy decides, an
 * eviction policy to fix) at warn, TG_LOG_INFO (back to normal) at notice.
 */

static void
ngx_http_tollgate_log_events(ngx_log_t *log)
{
    char                            text[NGX_HTTP_TOLLGATE_EVENT_LEN];
    uint32_t                        level;
    tg_status                       st;
    ngx_uint_t                      z, n, lvl;
    ngx_http_tollgate_zone_t      **zones, *zone;
    ngx_http_tollgate_main_conf_t  *tmcf;

    /* the running cycle's, so a timer never reads a freed configuration
     * (in a single process a reload replaces it) */
    tmcf = ngx_http_cycle_get_module_main_conf(ngx_cycle,
                                               ngx_http_tollgate_module);
    if (tmcf == NULL) {
        return;
    }

    zones = tmcf->zones.elts;

    for (z = 0; z < tmcf->zones.nelts; z++) {
        zone = zones[z];

        if (!zone->joined) {
            continue;
        }

        for (n = 0; n < NGX_HTTP_TOLLGATE_EVENTS_KEPT; n++) {
            st = tg_limiter_lease_event(zone->limiter, &zone->event_seq,
                                        &level, text, sizeof(text));

            if (st != TG_OK || level == 0) {
                break;
            }

            switch (level) {

            case TG_LOG_ERROR:
                lvl = NGX_LOG_ERR;
                break;

            case TG_LOG_WARN:
                lvl = NGX_LOG_WARN;
                break;

            default:
                lvl = NGX_LOG_NOTICE;
                break;
            }

            ngx_log_error(lvl, log, 0, "tollgate_redis: zone \"%V\": %s",
                          &zone->name, text);
        }
    }
}


/* gives this worker's unspent units back (each call under the deadline),
 * after logging the lease events not logged yet */

static void
ngx_http_tollgate_exit_process(ngx_cycle_t *cycle)
{
    ngx_uint_t                      z;
    ngx_http_tollgate_zone_t      **zones;
    ngx_http_tollgate_main_conf_t  *tmcf;

    tmcf = ngx_http_cycle_get_module_main_conf(cycle,
                                               ngx_http_tollgate_module);
    if (tmcf == NULL) {
        return;
    }

    ngx_http_tollgate_log_events(cycle->log);

    zones = tmcf->zones.elts;

    for (z = 0; z < tmcf->zones.nelts; z++) {
        if (zones[z]->joined) {
            (void) tg_limiter_disconnect(zones[z]->limiter);
            zones[z]->joined = 0;
        }
    }
}
