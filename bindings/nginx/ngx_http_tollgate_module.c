
/*
 * ngx_http_tollgate_module: per-(account, model) requests-per-minute and
 * requests-per-day limits for an OpenAI-compatible API.
 *
 * Every decision and every answer is libtollgate's, through its C ABI: this
 * module takes the steps in the order all bindings share (method, account,
 * the body's model, tier, check), hands what happened to tg_answer_for and
 * sends the status, headers and body the core renders.  It keeps the
 * limiter's region in an nginx shared zone or a region file mapped by the
 * master, so all workers share exact counters.
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


typedef struct {
    ngx_atomic_t                  count[TG_OUTCOMES];
    size_t                        len;
    u_char                        name[TG_MODEL_NAME_MAX];
} ngx_http_tollgate_row_t;


/* lives in the shared zone */
typedef struct {
    u_char                       *region;
    size_t                        region_len;
    ngx_atomic_t                  nrows;
    ngx_http_tollgate_row_t       rows[NGX_HTTP_TOLLGATE_ROWS];
} ngx_http_tollgate_shctx_t;


/* one per tollgate_zone, per configuration cycle */
typedef struct {
    ngx_str_t                     name;
    ngx_str_t                     policy_path;
    ngx_str_t                     file;       /* NUL-terminated; empty: shm */
    tg_policy                    *policy;
    tg_limiter                   *limiter;
    ngx_slab_pool_t              *shpool;
    ngx_http_tollgate_shctx_t    *sh;
    ngx_shm_zone_t               *shm_zone;
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

    /* from here on written before it is read: not zeroed */
    tg_answer                     answer;     /* the core's, once decided */

    /* the numbers of the answer's headers, which the response's header
     * list points at (tg_answer_header_fields) */
    u_char                        values[TG_ANSWER_HEADER_BYTES];
};


static ngx_int_t ngx_http_tollgate_handler(ngx_http_request_t *r);
static void ngx_http_tollgate_body_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_tollgate_first_steps(ngx_http_request_t *r,
    ngx_http_tollgate_ctx_t *ctx, ngx_http_tollgate_loc_conf_t *tlcf);
static tg_status ngx_http_tollgate_body_model(ngx_http_request_t *r,
    ngx_http_tollgate_ctx_t *ctx);
static void ngx_http_tollgate_check(ngx_http_request_t *r,
    ngx_http_tollgate_ctx_t *ctx, ngx_http_tollgate_loc_conf_t *tlcf);
static void ngx_http_tollgate_answer(ngx_http_request_t *r,
    ngx_http_tollgate_ctx_t *ctx, ngx_http_tollgate_loc_conf_t *tlcf,
    tg_status st, tg_decision *decision);
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

static ngx_int_t ngx_http_tollgate_status_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_tollgate_limited_by_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_tollgate_remaining_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);

static ngx_int_t ngx_http_tollgate_init_zone(ngx_shm_zone_t *shm_zone,
    void *data);
static ngx_int_t ngx_http_tollgate_attach(ngx_shm_zone_t *shm_zone,
    ngx_http_tollgate_zone_t *zone);
static void ngx_http_tollgate_zone_cleanup(void *data);
static ngx_int_t ngx_http_tollgate_open_file(ngx_conf_t *cf,
    ngx_http_tollgate_zone_t *zone, ngx_str_t *size_arg, ssize_t size);

static ngx_int_t ngx_http_tollgate_add_variables(ngx_conf_t *cf);
static void *ngx_http_tollgate_create_main_conf(ngx_conf_t *cf);
static void *ngx_http_tollgate_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_tollgate_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child);
static char *ngx_http_tollgate_value_slot(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_tollgate_zone(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_tollgate(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_tollgate_metrics(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static ngx_int_t ngx_http_tollgate_init(ngx_conf_t *cf);


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
    NULL,                                  /* init main configuration */

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
    NULL,                                  /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    NULL,                                  /* exit process */
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

      ngx_http_null_variable
};


static ngx_http_output_header_filter_pt  ngx_http_next_header_filter;


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
    u_char        buf[NGX_HTTP_TOLLGATE_LOG_LEN];
    uint32_t      tier;
    ngx_str_t     value, v;
    tg_status     st;
    tg_request    req;
    tg_decision   decision;

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

    st = tg_check_now(ctx->zone->limiter, &req, &decision);

    switch (st) {

    case TG_OK:
    case TG_E_UNKNOWN_MODEL:
    case TG_E_NO_LIMIT:
    case TG_E_TABLE_FULL:
    case TG_E_ACCOUNT:
    case TG_E_COST_TOO_LARGE:
        break;

    default:
        /* the core answers it as its own failure (500) */
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "tollgate: tg_check() failed in zone \"%V\": %s",
                      &ctx->zone->name, tg_status_str(st));
        break;
    }

    ngx_http_tollgate_answer(r, ctx, tlcf, st, &decision);
}


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

        size = tg_region_size(slots);

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

    st = tg_limiter_init_in(zone->policy, mem, size, &zone->limiter);

    if (st != TG_OK) {
        ngx_log_error(NGX_LOG_EMERG, shm_zone->shm.log, 0,
                      "tollgate_zone \"%V\": tg_limiter_init_in() failed: %s",
                      &zone->name, tg_last_error());
        return NGX_ERROR;
    }

    sh->region = mem;
    sh->region_len = size;

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

    return ngx_http_tollgate_add_rows(zone, shm_zone->shm.log);
}


/*
 * Maps the zone's region file, creating it with the slots "size" holds if
 * it is missing (without "size" the file must exist and is taken as it
 * is).  The master does this while it reads the configuration, before it
 * forks: workers inherit the MAP_SHARED mapping, so every worker, the
 * workers of older cycles still finishing requests after a reload, a new
 * binary after USR2 and the tollgate command all count in the same table,
 * and the worker user needs no access to the file of its own.
 */

static ngx_int_t
ngx_http_tollgate_open_file(ngx_conf_t *cf, ngx_http_tollgate_zone_t *zone,
    ngx_str_t *size_arg, ssize_t size)
{
    uint32_t   slots;
    tg_status  st;

    slots = 0;

    if (size) {
        slots = tg_region_slots_for((size_t) size);

        if (slots == 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "tollgate_zone \"%V\" is too small to hold "
                               "a table", &zone->name);
            return NGX_ERROR;
        }
    }

    st = tg_limiter_open(zone->policy, (const char *) zone->file.data, slots,
                         slots ? TG_OPEN_CREATE : 0, &zone->limiter);

    if (st == TG_OK) {
        return NGX_OK;
    }

    /* the core's words: path, OS reason, sizes, what to do */

    if (slots == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "tollgate_zone \"%V\": cannot open file \"%V\": "
                           "%s", &zone->name, &zone->file, tg_last_error());
        return NGX_ERROR;
    }

    /* "0 slots" in the core's words is a zone without "size" here */

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "tollgate_zone \"%V\": cannot open file \"%V\" with "
                       "the %uD slots \"%V\" holds: %s%s",
                       &zone->name, &zone->file, slots, size_arg,
                       tg_last_error(),
                       st == TG_E_REGION_SIZE
                       ? " (in nginx, 0 slots is a zone without \"size\")"
                       : "");

    return NGX_ERROR;
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

    if (file.len
        && ngx_http_tollgate_open_file(cf, zone, &size_arg, size) != NGX_OK)
    {
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
