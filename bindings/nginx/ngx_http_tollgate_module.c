
/*
 * ngx_http_tollgate_module: per-(account, model) requests-per-minute and
 * requests-per-day limits for an OpenAI-compatible API.
 *
 * Every decision is made by libtollgate through its C ABI; this module only
 * finds the account, tier and model of a request, keeps the limiter's region
 * in an nginx shared zone or a region file mapped by the master (so all
 * workers share exact counters) and renders the answer.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <tollgate.h>


#define NGX_HTTP_TOLLGATE_PASSED          0
#define NGX_HTTP_TOLLGATE_REJECTED        1
#define NGX_HTTP_TOLLGATE_DRY_RUN         2
#define NGX_HTTP_TOLLGATE_TABLE_FULL      3
#define NGX_HTTP_TOLLGATE_UNKNOWN_MODEL   4
#define NGX_HTTP_TOLLGATE_BAD_REQUEST     5
#define NGX_HTTP_TOLLGATE_NO_LIMIT        6
#define NGX_HTTP_TOLLGATE_NO_ACCOUNT      7
#define NGX_HTTP_TOLLGATE_ERROR           8
#define NGX_HTTP_TOLLGATE_NOUTCOMES       9

#define NGX_HTTP_TOLLGATE_TABLE_OPEN      0
#define NGX_HTTP_TOLLGATE_TABLE_CLOSED    1

#define NGX_HTTP_TOLLGATE_NO_LIMIT_PASS   0
#define NGX_HTTP_TOLLGATE_NO_LIMIT_REFUSE 1

/* metric rows per zone; row 0 counts requests whose model is not (yet) in
 * the table, so the table cannot be grown by clients sending random names */
#define NGX_HTTP_TOLLGATE_ROWS            64

/* a spooled body is read back and scanned in chunks of this size */
#define NGX_HTTP_TOLLGATE_CHUNK           16384
#define NGX_HTTP_TOLLGATE_HEADERS_LEN     512
#define NGX_HTTP_TOLLGATE_HEADERS_MAX     8

/* client bytes shown per log field (more than any valid account or model),
 * and the room one escaped field takes: \xHH per byte, "..." if cut */
#define NGX_HTTP_TOLLGATE_LOG_MAX         64
#define NGX_HTTP_TOLLGATE_LOG_LEN         (NGX_HTTP_TOLLGATE_LOG_MAX * 4 + 3)

#define NGX_HTTP_TOLLGATE_STR_(x)         #x
#define NGX_HTTP_TOLLGATE_STR(x)          NGX_HTTP_TOLLGATE_STR_(x)


typedef struct {
    ngx_atomic_t                  count[NGX_HTTP_TOLLGATE_NOUTCOMES];
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


typedef struct {
    ngx_http_tollgate_zone_t     *zone;
    ngx_http_complex_value_t     *account;
    ngx_http_complex_value_t     *tier;
    ngx_http_complex_value_t     *model;
    ngx_uint_t                    status_code;
    ngx_flag_t                    dry_run;
    ngx_uint_t                    table_full;
    ngx_uint_t                    no_limit;
} ngx_http_tollgate_loc_conf_t;


typedef struct {
    ngx_http_tollgate_zone_t     *zone;
    ngx_str_t                     model;
    ngx_str_t                     account;
    ngx_str_t                     body;       /* refusal body */
    ngx_uint_t                    outcome;    /* NGX_HTTP_TOLLGATE_* */
    ngx_uint_t                    code;       /* refusal status, 0: pass */
    tg_decision                   decision;

    unsigned                      decided:1;
    unsigned                      has_decision:1;
    unsigned                      refused:1;
    unsigned                      sent:1;
    unsigned                      headers_done:1;
} ngx_http_tollgate_ctx_t;


static ngx_int_t ngx_http_tollgate_handler(ngx_http_request_t *r);
static void ngx_http_tollgate_body_handler(ngx_http_request_t *r);
static void ngx_http_tollgate_decide(ngx_http_request_t *r,
    ngx_http_tollgate_ctx_t *ctx, ngx_http_tollgate_loc_conf_t *tlcf);
static ngx_int_t ngx_http_tollgate_body_model(ngx_http_request_t *r,
    ngx_http_tollgate_ctx_t *ctx);
static ngx_int_t ngx_http_tollgate_tier(ngx_http_request_t *r,
    ngx_http_tollgate_loc_conf_t *tlcf, uint32_t *tier);
static ngx_int_t ngx_http_tollgate_refuse(ngx_http_request_t *r,
    ngx_http_tollgate_ctx_t *ctx, ngx_uint_t outcome, ngx_uint_t code,
    const char *type, const char *param, const char *code_name,
    const char *fmt, ngx_str_t *model);
static ngx_int_t ngx_http_tollgate_body_refuse(ngx_http_request_t *r,
    ngx_http_tollgate_ctx_t *ctx, tg_status st);
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

static u_char *ngx_http_tollgate_escape(u_char *dst, u_char *src, size_t len,
    ngx_uint_t prometheus);
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
static char *ngx_http_tollgate_zone(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_tollgate(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_tollgate_metrics(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static ngx_int_t ngx_http_tollgate_init(ngx_conf_t *cf);


static ngx_str_t  ngx_http_tollgate_outcomes[] = {
    ngx_string("PASSED"),
    ngx_string("REJECTED"),
    ngx_string("DRY_RUN"),
    ngx_string("TABLE_FULL"),
    ngx_string("UNKNOWN_MODEL"),
    ngx_string("BAD_REQUEST"),
    ngx_string("NO_LIMIT"),
    ngx_string("NO_ACCOUNT"),
    ngx_string("ERROR")
};


static ngx_str_t  ngx_http_tollgate_metric_outcomes[] = {
    ngx_string("passed"),
    ngx_string("rejected"),
    ngx_string("dry_run"),
    ngx_string("table_full"),
    ngx_string("unknown_model"),
    ngx_string("bad_request"),
    ngx_string("no_limit"),
    ngx_string("no_account"),
    ngx_string("error")
};


#define NGX_HTTP_TOLLGATE_DECISIONS_HELP                                      \
    "# HELP tollgate_decisions_total Requests decided, by zone, model and "  \
    "outcome.\n# TYPE tollgate_decisions_total counter\n"


static ngx_str_t  ngx_http_tollgate_table_metrics[] = {
    ngx_string("tollgate_table_slots"),
    ngx_string("tollgate_table_used"),
    ngx_string("tollgate_table_full_total"),
    ngx_string("tollgate_region_bytes")
};


static ngx_str_t  ngx_http_tollgate_table_help[] = {
    ngx_string("tollgate_table_slots Slots in the zone's table."),
    ngx_string("tollgate_table_used Slots holding a key counted today."),
    ngx_string("tollgate_table_full_total Requests that found no free "
               "slot."),
    ngx_string("tollgate_region_bytes Bytes of the zone's table.")
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
      ngx_http_set_complex_value_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_tollgate_loc_conf_t, account),
      NULL },

    { ngx_string("tollgate_tier"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_set_complex_value_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_tollgate_loc_conf_t, tier),
      NULL },

    { ngx_string("tollgate_model"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_set_complex_value_slot,
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

    if (ctx == NULL) {
        ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_tollgate_ctx_t));
        if (ctx == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

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

        if (tlcf->model == NULL) {

            /* the model is in the body: read it, then resume the phases */

            rc = ngx_http_read_client_request_body(r,
                                               ngx_http_tollgate_body_handler);

            if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
                return rc;
            }

            ngx_http_finalize_request(r, NGX_DONE);
            return NGX_DONE;
        }

        ngx_http_tollgate_decide(r, ctx, tlcf);
    }

    if (!ctx->decided || ctx->code == 0 || ctx->sent) {
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
    ngx_http_tollgate_ctx_t       *ctx;
    ngx_http_tollgate_loc_conf_t  *tlcf;

    ctx = ngx_http_get_module_ctx(r, ngx_http_tollgate_module);
    tlcf = ngx_http_get_module_loc_conf(r, ngx_http_tollgate_module);

    ngx_http_tollgate_decide(r, ctx, tlcf);

    r->write_event_handler = ngx_http_core_run_phases;
    ngx_http_core_run_phases(r);
}


static void
ngx_http_tollgate_decide(ngx_http_request_t *r, ngx_http_tollgate_ctx_t *ctx,
    ngx_http_tollgate_loc_conf_t *tlcf)
{
    u_char                    *p;
    u_char                     abuf[NGX_HTTP_TOLLGATE_LOG_LEN];
    u_char                     mbuf[NGX_HTTP_TOLLGATE_LOG_LEN];
    size_t                     len;
    uint32_t                   tier;
    ngx_str_t                  account, a, m;
    ngx_int_t                  rc;
    ngx_uint_t                 outcome, code;
    tg_status                  st;
    tg_request                 req;
    ngx_http_tollgate_zone_t  *zone;

    ctx->decided = 1;
    zone = ctx->zone;

    /* first, so every log line of this request can name the account */
    if (tlcf->account
        && ngx_http_complex_value(r, tlcf->account, &ctx->account) != NGX_OK)
    {
        goto failed;
    }

    account = ctx->account;

    if (tlcf->model == NULL) {
        rc = ngx_http_tollgate_body_model(r, ctx);

        if (rc != NGX_OK) {
            /* refused or failed: the reason is in ctx */
            goto done;
        }

    } else {
        if (ngx_http_complex_value(r, tlcf->model, &ctx->model) != NGX_OK) {
            goto failed;
        }

        if (ctx->model.len == 0) {
            (void) ngx_http_tollgate_refuse(r, ctx,
                                   NGX_HTTP_TOLLGATE_BAD_REQUEST,
                                   NGX_HTTP_BAD_REQUEST,
                                   "invalid_request_error", NULL, NULL,
                                   "you must provide a model parameter",
                                   NULL);
            goto done;
        }
    }

    if (tlcf->account == NULL) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "tollgate: \"tollgate_account\" is not set");
        goto failed;
    }

    if (ngx_http_tollgate_tier(r, tlcf, &tier) != NGX_OK) {
        goto failed;
    }

    ngx_memzero(&req, sizeof(tg_request));

    req.account = (const char *) account.data;
    req.account_len = account.len;
    req.model = (const char *) ctx->model.data;
    req.model_len = ctx->model.len;
    req.tier = tier;
    req.cost = 1;

    st = tg_check_now(zone->limiter, &req, &ctx->decision);

    switch (st) {

    case TG_OK:
        ctx->has_decision = 1;

        if (ctx->decision.allowed) {
            ctx->outcome = NGX_HTTP_TOLLGATE_PASSED;
            break;
        }

        ctx->outcome = NGX_HTTP_TOLLGATE_REJECTED;
        ctx->code = tlcf->status_code;

        if (tlcf->dry_run) {
            break;
        }

        len = NGX_HTTP_TOLLGATE_HEADERS_LEN;

        for ( ;; ) {
            p = ngx_pnalloc(r->pool, len + 1);
            if (p == NULL) {
                goto failed;
            }

            st = tg_decision_error_body(&ctx->decision,
                                        (const char *) ctx->model.data,
                                        ctx->model.len, (char *) p, len + 1,
                                        &len);
            if (st != TG_E_BUFFER_TOO_SMALL) {
                break;
            }
        }

        if (st != TG_OK) {
            ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                          "tollgate: tg_decision_error_body() failed: %s",
                          tg_status_str(st));
            goto failed;
        }

        ctx->body.data = p;
        ctx->body.len = len;
        break;

    case TG_E_UNKNOWN_MODEL:
        (void) ngx_http_tollgate_refuse(r, ctx,
                                  NGX_HTTP_TOLLGATE_UNKNOWN_MODEL,
                                  NGX_HTTP_NOT_FOUND,
                                  "invalid_request_error", NULL,
                                  "model_not_found",
                                  "The model `%s` does not exist or you do "
                                  "not have access to it.", &ctx->model);
        break;

    case TG_E_NO_LIMIT:

        /*
         * the policy sets no limit for this tier (or enterprise account)
         * and model: no numbers are invented, so either no limit at all
         * or no access
         */

        if (tlcf->no_limit == NGX_HTTP_TOLLGATE_NO_LIMIT_PASS) {
            ctx->outcome = NGX_HTTP_TOLLGATE_NO_LIMIT;
            break;
        }

        (void) ngx_http_tollgate_refuse(r, ctx, NGX_HTTP_TOLLGATE_NO_LIMIT,
                                  NGX_HTTP_FORBIDDEN,
                                  "invalid_request_error", NULL,
                                  "no_limit_configured",
                                  "No rate limit is configured for the model "
                                  "`%s` on your tier, so it is not available "
                                  "to you.", &ctx->model);
        break;

    case TG_E_TABLE_FULL:
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "tollgate: zone \"%V\" has no free slot for a new "
                      "key, account \"%V\", model \"%V\"", &zone->name,
                      ngx_http_tollgate_log_escape(&a, abuf, &account),
                      ngx_http_tollgate_log_escape(&m, mbuf, &ctx->model));

        if (tlcf->table_full == NGX_HTTP_TOLLGATE_TABLE_OPEN) {
            ctx->outcome = NGX_HTTP_TOLLGATE_TABLE_FULL;
            break;
        }

        (void) ngx_http_tollgate_refuse(r, ctx,
                                  NGX_HTTP_TOLLGATE_TABLE_FULL,
                                  NGX_HTTP_SERVICE_UNAVAILABLE,
                                  "server_error", NULL, "rate_limiter_full",
                                  "The rate limiter has no room to track "
                                  "this request right now; please retry "
                                  "shortly.", NULL);
        break;

    case TG_E_ACCOUNT:
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "tollgate: unusable account id \"%V\" of %uz bytes "
                      "(1..%d allowed)",
                      ngx_http_tollgate_log_escape(&a, abuf, &account),
                      account.len, TG_ACCOUNT_MAX);

        (void) ngx_http_tollgate_refuse(r, ctx,
                                  NGX_HTTP_TOLLGATE_NO_ACCOUNT,
                                  NGX_HTTP_UNAUTHORIZED,
                                  "invalid_request_error", NULL,
                                  "invalid_api_key",
                                  "You didn't provide a usable API key. "
                                  "Provide your API key in an Authorization "
                                  "header using Bearer auth "
                                  "(Authorization: Bearer YOUR_KEY).", NULL);
        break;

    default:
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "tollgate: tg_check() failed in zone \"%V\": %s",
                      &zone->name, tg_status_str(st));
        goto failed;
    }

    goto done;

failed:

    (void) ngx_http_tollgate_refuse(r, ctx, NGX_HTTP_TOLLGATE_ERROR,
                                    NGX_HTTP_INTERNAL_SERVER_ERROR,
                                    "server_error", NULL, NULL,
                                    "The rate limiter failed on this "
                                    "request.", NULL);

done:

    outcome = ctx->outcome;
    code = ctx->code;

    if (tlcf->dry_run && code) {

        /* dry run: decide and report, never refuse */

        if (outcome == NGX_HTTP_TOLLGATE_REJECTED) {
            outcome = NGX_HTTP_TOLLGATE_DRY_RUN;
        }

        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "tollgate: dry run, would answer %ui (%V) "
                      "for account \"%V\", model \"%V\" in zone \"%V\"",
                      code, &ngx_http_tollgate_outcomes[ctx->outcome],
                      ngx_http_tollgate_log_escape(&a, abuf, &ctx->account),
                      ngx_http_tollgate_log_escape(&m, mbuf, &ctx->model),
                      &zone->name);

        ctx->outcome = outcome;
        ctx->code = 0;

    } else if (outcome == NGX_HTTP_TOLLGATE_REJECTED) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "tollgate: rejected, account \"%V\", model \"%V\" "
                      "limited by %V in zone \"%V\"",
                      ngx_http_tollgate_log_escape(&a, abuf, &ctx->account),
                      ngx_http_tollgate_log_escape(&m, mbuf, &ctx->model),
                      &ngx_http_tollgate_limited_by[
                          ctx->decision.limited_by <= TG_LIMIT_DAY
                          ? ctx->decision.limited_by : 0],
                      &zone->name);
    }

    ctx->refused = (ctx->code != 0);

    ngx_http_tollgate_count(zone, &ctx->model, outcome);
}


/*
 * Finds the model in the request body with the library's scanner, so the
 * module parses no client input itself.  NGX_OK: ctx->model is set (it
 * points into the scan's memory, from the request pool); anything else:
 * ctx holds the refusal.
 */

static ngx_int_t
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
        goto failed;
    }

    st = tg_body_scan_init(mem, size, &scan);
    if (st != TG_OK) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "tollgate: tg_body_scan_init() failed: %s",
                      tg_status_str(st));
        goto failed;
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
                goto failed;
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
                goto failed;
            }

            st = tg_body_scan_feed(scan, chunk, n);
        }

        b->file->offset = saved;
    }

    if (st == TG_OK) {
        st = tg_body_scan_finish(scan, &model, &model_len);
    }

    if (st != TG_OK) {
        return ngx_http_tollgate_body_refuse(r, ctx, st);
    }

    ctx->model.data = (u_char *) model;
    ctx->model.len = model_len;

    return NGX_OK;

failed:

    return ngx_http_tollgate_refuse(r, ctx, NGX_HTTP_TOLLGATE_ERROR,
                                    NGX_HTTP_INTERNAL_SERVER_ERROR,
                                    "server_error", NULL, NULL,
                                    "The rate limiter failed on this "
                                    "request.", NULL);
}


/* the 400 for a body the scanner refused */

static ngx_int_t
ngx_http_tollgate_body_refuse(ngx_http_request_t *r,
    ngx_http_tollgate_ctx_t *ctx, tg_status st)
{
    switch (st) {

    case TG_E_BODY_NO_MODEL:
        return ngx_http_tollgate_refuse(r, ctx, NGX_HTTP_TOLLGATE_BAD_REQUEST,
                                        NGX_HTTP_BAD_REQUEST,
                                        "invalid_request_error", NULL, NULL,
                                        "you must provide a model parameter",
                                        NULL);

    case TG_E_BODY_AMBIGUOUS_MODEL:

        /*
         * upstream parsers disagree on which of two "model" keys wins:
         * charging one and serving another would be a cheap model's price
         * for an expensive one
         */

        return ngx_http_tollgate_refuse(r, ctx, NGX_HTTP_TOLLGATE_BAD_REQUEST,
                                        NGX_HTTP_BAD_REQUEST,
                                        "invalid_request_error", "model",
                                        "ambiguous_model",
                                        "The request body names the model "
                                        "more than once (keys equal to "
                                        "\\\"model\\\" ignoring case or "
                                        "escapes); send exactly one "
                                        "\\\"model\\\" key.", NULL);

    case TG_E_BODY_TOO_DEEP:
        return ngx_http_tollgate_refuse(r, ctx, NGX_HTTP_TOLLGATE_BAD_REQUEST,
                                        NGX_HTTP_BAD_REQUEST,
                                        "invalid_request_error", NULL,
                                        "invalid_json",
                                        "The request body nests deeper than "
                                        NGX_HTTP_TOLLGATE_STR(
                                            TG_BODY_DEPTH_MAX)
                                        " levels.", NULL);

    case TG_E_BODY_NOT_JSON:
        return ngx_http_tollgate_refuse(r, ctx, NGX_HTTP_TOLLGATE_BAD_REQUEST,
                                        NGX_HTTP_BAD_REQUEST,
                                        "invalid_request_error", NULL, NULL,
                                        "We could not parse the JSON body of "
                                        "your request. The API expects a JSON "
                                        "object with a 'model' field.", NULL);

    default:
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "tollgate: body scan failed: %s", tg_status_str(st));

        return ngx_http_tollgate_refuse(r, ctx, NGX_HTTP_TOLLGATE_ERROR,
                                        NGX_HTTP_INTERNAL_SERVER_ERROR,
                                        "server_error", NULL, NULL,
                                        "The rate limiter failed on this "
                                        "request.", NULL);
    }
}


static ngx_int_t
ngx_http_tollgate_tier(ngx_http_request_t *r,
    ngx_http_tollgate_loc_conf_t *tlcf, uint32_t *tier)
{
    u_char     buf[NGX_HTTP_TOLLGATE_LOG_LEN];
    ngx_str_t  value, v;

    *tier = TG_TIER_DEVELOPER;

    if (tlcf->tier == NULL) {
        return NGX_OK;
    }

    if (ngx_http_complex_value(r, tlcf->tier, &value) != NGX_OK) {
        return NGX_ERROR;
    }

    if (value.len == 0) {
        return NGX_OK;
    }

    if (value.len == 4 && ngx_strncasecmp(value.data, (u_char *) "free", 4)
                          == 0)
    {
        *tier = TG_TIER_FREE;
        return NGX_OK;
    }

    if (value.len == 9
        && ngx_strncasecmp(value.data, (u_char *) "developer", 9) == 0)
    {
        return NGX_OK;
    }

    if (value.len == 10
        && ngx_strncasecmp(value.data, (u_char *) "enterprise", 10) == 0)
    {
        *tier = TG_TIER_ENTERPRISE;
        return NGX_OK;
    }

    ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                  "tollgate: unknown tier \"%V\" "
                  "(free, developer or enterprise)",
                  ngx_http_tollgate_log_escape(&v, buf, &value));

    return NGX_ERROR;
}


/*
 * Records a refusal answered with an OpenAI-shaped error body.  fmt is
 * JSON-safe text that may hold one "%s", replaced by arg JSON-escaped.
 * Returns NGX_DECLINED, so callers can return it as "no model found".
 */

static ngx_int_t
ngx_http_tollgate_refuse(ngx_http_request_t *r, ngx_http_tollgate_ctx_t *ctx,
    ngx_uint_t outcome, ngx_uint_t code, const char *type, const char *param,
    const char *code_name, const char *fmt, ngx_str_t *arg)
{
    u_char      *p, *s;
    size_t       len;
    const char  *q;

    ctx->outcome = outcome;
    ctx->code = code;

    len = sizeof("{\"error\":{\"message\":\"\",\"type\":\"\","
                 "\"param\":\"\",\"code\":\"\"}}") - 1
          + ngx_strlen(fmt) + ngx_strlen(type)
          + (param ? ngx_strlen(param) : sizeof("null") - 1)
          + (code_name ? ngx_strlen(code_name) : sizeof("null") - 1);

    if (arg) {
        /* every byte escapes to at most \u00XX */
        len += arg->len * 6;
    }

    p = ngx_pnalloc(r->pool, len);
    if (p == NULL) {
        ngx_str_null(&ctx->body);
        return NGX_DECLINED;
    }

    s = ngx_cpymem(p, "{\"error\":{\"message\":\"",
                   sizeof("{\"error\":{\"message\":\"") - 1);

    for (q = fmt; *q; q++) {
        if (q[0] == '%' && q[1] == 's' && arg) {
            s = ngx_http_tollgate_escape(s, arg->data, arg->len, 0);
            q++;
            continue;
        }

        *s++ = (u_char) *q;
    }

    s = ngx_sprintf(s, "\",\"type\":\"%s\",\"param\":", type);

    if (param) {
        s = ngx_sprintf(s, "\"%s\",\"code\":", param);

    } else {
        s = ngx_cpymem(s, "null,\"code\":", sizeof("null,\"code\":") - 1);
    }

    if (code_name) {
        s = ngx_sprintf(s, "\"%s\"}}", code_name);

    } else {
        s = ngx_cpymem(s, "null}}", sizeof("null}}") - 1);
    }

    ctx->body.data = p;
    ctx->body.len = s - p;

    return NGX_DECLINED;
}


static ngx_int_t
ngx_http_tollgate_send_refusal(ngx_http_request_t *r,
    ngx_http_tollgate_ctx_t *ctx)
{
    ngx_str_t                 type;
    ngx_http_complex_value_t  cv;

    if (ctx->body.data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* a complex value with no lengths is its value, as is */
    ngx_memzero(&cv, sizeof(ngx_http_complex_value_t));
    cv.value = ctx->body;

    ngx_str_set(&type, "application/json");

    return ngx_http_send_response(r, ctx->code, &type, &cv);
}


static void
ngx_http_tollgate_count(ngx_http_tollgate_zone_t *zone, ngx_str_t *model,
    ngx_uint_t outcome)
{
    ngx_uint_t                  i, n;
    ngx_http_tollgate_row_t    *row;
    ngx_http_tollgate_shctx_t  *sh;

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

    if (ctx == NULL || !ctx->has_decision || ctx->headers_done) {
        return ngx_http_next_header_filter(r);
    }

    ctx->headers_done = 1;

    if (ngx_http_tollgate_add_headers(r, ctx) != NGX_OK) {
        return NGX_ERROR;
    }

    return ngx_http_next_header_filter(r);
}


static ngx_int_t
ngx_http_tollgate_add_headers(ngx_http_request_t *r,
    ngx_http_tollgate_ctx_t *ctx)
{
    u_char            c, *p, *last, *colon, *eol;
    u_char            buf[NGX_HTTP_TOLLGATE_HEADERS_LEN];
    size_t            len;
    tg_status         st;
    ngx_str_t         names[NGX_HTTP_TOLLGATE_HEADERS_MAX];
    ngx_str_t         values[NGX_HTTP_TOLLGATE_HEADERS_MAX];
    ngx_uint_t        i, k, n;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h, *header;

    p = buf;
    st = tg_decision_headers(&ctx->decision, (char *) buf, sizeof(buf), &len);

    if (st == TG_E_BUFFER_TOO_SMALL) {
        p = ngx_pnalloc(r->pool, len + 1);
        if (p == NULL) {
            return NGX_ERROR;
        }

        st = tg_decision_headers(&ctx->decision, (char *) p, len + 1, &len);
    }

    if (st != TG_OK) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "tollgate: tg_decision_headers() failed: %s",
                      tg_status_str(st));
        return NGX_ERROR;
    }

    /* the headers outlive this call ($sent_http_* in the log): copy them */

    if (p == buf) {
        p = ngx_pnalloc(r->pool, len);
        if (p == NULL) {
            return NGX_ERROR;
        }

        ngx_memcpy(p, buf, len);
    }

    last = p + len;

    /* "name: value\r\n" lines, the names already lowercase */

    for (n = 0; p < last && n < NGX_HTTP_TOLLGATE_HEADERS_MAX; p = eol + 2) {
        colon = memchr(p, ':', last - p);
        if (colon == NULL) {
            break;
        }

        eol = memchr(colon, '\r', last - colon);
        if (eol == NULL || eol + 1 == last || eol[1] != '\n') {
            break;
        }

        names[n].data = p;
        names[n].len = colon - p;

        /* Retry-After only goes with a refusal, not a dry run's pass */
        if (!ctx->refused && names[n].len == sizeof("retry-after") - 1
            && ngx_strncmp(p, "retry-after", names[n].len) == 0)
        {
            continue;
        }

        for (colon++; colon < eol && *colon == ' '; colon++) {
            /* void */
        }

        values[n].data = colon;
        values[n].len = eol - colon;
        n++;
    }

    /* ours replace any the upstream sent under the same names */

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

        if (header[i].hash == 0 || header[i].key.len == 0) {
            continue;
        }

        /* a quick test first: our names start with "x" or "r" */
        c = header[i].key.data[0] | 0x20;

        if (c != 'x' && c != 'r') {
            continue;
        }

        for (k = 0; k < n; k++) {
            if (header[i].key.len == names[k].len
                && ngx_strncasecmp(header[i].key.data, names[k].data,
                                   names[k].len)
                   == 0)
            {
                header[i].hash = 0;
                break;
            }
        }
    }

    for (k = 0; k < n; k++) {
        h = ngx_list_push(&r->headers_out.headers);
        if (h == NULL) {
            return NGX_ERROR;
        }

        h->hash = 1;
#if (nginx_version >= 1023000)
        h->next = NULL;
#endif
        h->key = names[k];
        h->lowcase_key = names[k].data;
        h->value = values[k];
    }

    return NGX_OK;
}


/*
 * Escapes for a JSON string or a Prometheus label value; dst needs room
 * for 6 bytes per source byte.
 */

static u_char *
ngx_http_tollgate_escape(u_char *dst, u_char *src, size_t len,
    ngx_uint_t prometheus)
{
    u_char  c;

    static u_char  hex[] = "0123456789abcdef";

    while (len--) {
        c = *src++;

        if (c == '"' || c == '\\') {
            *dst++ = '\\';
            *dst++ = c;

        } else if (c == '\n') {
            *dst++ = '\\';
            *dst++ = 'n';

        } else if (c < 0x20 || c == 0x7f) {
            if (prometheus) {
                *dst++ = '?';

            } else {
                dst = ngx_cpymem(dst, "\\u00", 4);
                *dst++ = hex[c >> 4];
                *dst++ = hex[c & 0xf];
            }

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

    for (k = 0; k < 4; k++) {
        len += sizeof("# HELP \n# TYPE  counter\n")
               + ngx_http_tollgate_table_help[k].len
               + ngx_http_tollgate_table_metrics[k].len;
    }

    for (z = 0; z < tmcf->zones.nelts; z++) {
        line = sizeof("tollgate_decisions_total{zone=\"\",model=\"\","
                      "outcome=\"unknown_model\"} \n")
               + zones[z]->name.len * 6 + TG_MODEL_NAME_MAX * 6
               + NGX_ATOMIC_T_LEN;

        len += line * NGX_HTTP_TOLLGATE_ROWS * NGX_HTTP_TOLLGATE_NOUTCOMES
               + 4 * (sizeof("tollgate_table_full_total{zone=\"\"} \n")
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

            for (k = 0; k < NGX_HTTP_TOLLGATE_NOUTCOMES; k++) {
                p = ngx_cpymem(p, "tollgate_decisions_total{zone=\"",
                               sizeof("tollgate_decisions_total{zone=\"")
                               - 1);
                p = ngx_http_tollgate_escape(p, zone->name.data,
                                             zone->name.len, 1);
                p = ngx_cpymem(p, "\",model=\"", sizeof("\",model=\"") - 1);
                p = ngx_http_tollgate_escape(p, name.data, name.len, 1);
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

    for (k = 0; k < 4; k++) {
        p = ngx_sprintf(p, "# HELP %V\n# TYPE %V %s\n",
                        &ngx_http_tollgate_table_help[k],
                        &ngx_http_tollgate_table_metrics[k],
                        k == 2 ? "counter" : "gauge");

        for (z = 0; z < tmcf->zones.nelts; z++) {
            p = ngx_sprintf(p, "%V{zone=\"",
                            &ngx_http_tollgate_table_metrics[k]);
            p = ngx_http_tollgate_escape(p, zones[z]->name.data,
                                         zones[z]->name.len, 1);
            p = ngx_sprintf(p, "\"} %uL\n",
                            k == 0 ? (uint64_t) stats[z].slots
                            : k == 1 ? (uint64_t) stats[z].used
                            : k == 2 ? stats[z].table_full
                            : stats[z].region_bytes);
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
    ngx_http_tollgate_ctx_t  *ctx;

    ctx = ngx_http_tollgate_get_ctx(r->main);

    if (ctx == NULL || !ctx->decided) {
        v->not_found = 1;
        return NGX_OK;
    }

    v->len = ngx_http_tollgate_outcomes[ctx->outcome].len;
    v->valid = 1;
    v->no_cacheable = 0;
    v->not_found = 0;
    v->data = ngx_http_tollgate_outcomes[ctx->outcome].data;

    return NGX_OK;
}


static ngx_int_t
ngx_http_tollgate_limited_by_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_uint_t                by;
    ngx_http_tollgate_ctx_t  *ctx;

    ctx = ngx_http_tollgate_get_ctx(r->main);

    if (ctx == NULL || !ctx->has_decision) {
        v->not_found = 1;
        return NGX_OK;
    }

    by = ctx->decision.limited_by;

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

    if (ctx == NULL || !ctx->has_decision) {
        v->not_found = 1;
        return NGX_OK;
    }

    p = ngx_pnalloc(r->pool, NGX_INT32_LEN);
    if (p == NULL) {
        return NGX_ERROR;
    }

    value = *(uint32_t *) ((u_char *) &ctx->decision + data);

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
                      &zone->name, tg_status_str(st));
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
                      &zone->name, tg_status_str(st));
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
    uint32_t     slots, found;
    tg_stats     stats;
    tg_status    st;
    tg_limiter  *other;

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

    if (st == TG_E_REGION_SIZE && slots) {

        /* an intact table of another size: say which, so it can be resized */

        found = 0;

        if (tg_limiter_open(zone->policy, (const char *) zone->file.data, 0,
                            0, &other)
            == TG_OK)
        {
            stats.size = sizeof(tg_stats);

            if (tg_limiter_stats(other, tg_now_ms(), &stats) == TG_OK) {
                found = stats.slots;
            }

            tg_limiter_free(other);
        }

        if (found) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "tollgate_zone \"%V\": file \"%V\" holds a "
                               "table of %uD slots, \"%V\" asks for %uD: "
                               "%s; resize it with \"tollgate resize %V NEW "
                               "--slots %uD\" and point \"file\" at NEW, or "
                               "leave \"size\" out to take the file as it is",
                               &zone->name, &zone->file, found, size_arg,
                               slots, tg_status_str(st), &zone->file, slots);
            return NGX_ERROR;
        }
    }

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "tollgate_zone \"%V\": cannot open file \"%V\": %s",
                       &zone->name, &zone->file, tg_status_str(st));

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
