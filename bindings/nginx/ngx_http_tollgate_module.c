
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
 *
 * This file: the directives, the configuration and the variables (the
 * files of the module: ngx_http_tollgate.h).
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_tollgate.h"


static ngx_int_t ngx_http_tollgate_status_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_tollgate_limited_by_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_tollgate_remaining_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_tollgate_redis_wait_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_tollgate_tokens_reserved_variable(
    ngx_http_request_t *r, ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_tollgate_bearer_digest_variable(
    ngx_http_request_t *r, ngx_http_variable_value_t *v, uintptr_t data);

static ngx_int_t ngx_http_tollgate_add_variables(ngx_conf_t *cf);
static void *ngx_http_tollgate_create_main_conf(ngx_conf_t *cf);
static char *ngx_http_tollgate_init_main_conf(ngx_conf_t *cf, void *conf);
static void *ngx_http_tollgate_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_tollgate_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child);
static char *ngx_http_tollgate_value_slot(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_tollgate_thread_pool(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static char *ngx_http_tollgate(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_tollgate_metrics(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);


ngx_str_t  ngx_http_tollgate_limited_by[] = {
    ngx_string("NONE"),
    ngx_string("MINUTE"),
    ngx_string("DAY"),
    ngx_string("TOKENS_MINUTE"),
    ngx_string("TOKENS_DAY"),
    ngx_string("IN_FLIGHT")
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

    { ngx_string("tollgate_tokens_reserved"), NULL,
      ngx_http_tollgate_tokens_reserved_variable, 0,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("tollgate_bearer_digest"), NULL,
      ngx_http_tollgate_bearer_digest_variable, 0, 0, 0 },

      ngx_http_null_variable
};


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

    if (by > TG_LIMIT_IN_FLIGHT) {
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


/* tokens the decision reserved, for a key with a token limit (0 when
 * refused) */

static ngx_int_t
ngx_http_tollgate_tokens_reserved_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    u_char                   *p;
    ngx_http_tollgate_ctx_t  *ctx;

    ctx = ngx_http_tollgate_get_ctx(r->main);

    if (ctx == NULL || !ctx->decided || !ctx->answer.tokens.has_tokens) {
        v->not_found = 1;
        return NGX_OK;
    }

    p = ngx_pnalloc(r->pool, NGX_INT32_LEN);
    if (p == NULL) {
        return NGX_ERROR;
    }

    v->len = ngx_sprintf(p, "%uD", ctx->answer.tokens.reserved) - p;
    v->valid = 1;
    v->no_cacheable = 0;
    v->not_found = 0;
    v->data = p;

    return NGX_OK;
}


/*
 * The account id of the request's bearer key, for tollgate_account: the
 * core reads the Authorization header and digests the key
 * (tg_bearer_digest), as every binding does, so a key of any length is one
 * account on every host sharing a table or a store; empty without a bearer
 * key (the core's 401).
 */

static ngx_int_t
ngx_http_tollgate_bearer_digest_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    u_char           *p;
    size_t            len;
    tg_status         st;
    ngx_table_elt_t  *h;

    h = r->headers_in.authorization;

    if (h == NULL) {
        v->not_found = 1;
        return NGX_OK;
    }

    p = ngx_pnalloc(r->pool, TG_ACCOUNT_DIGEST_LEN);
    if (p == NULL) {
        return NGX_ERROR;
    }

    st = tg_bearer_digest((const char *) h->value.data, h->value.len,
                          (char *) p, TG_ACCOUNT_DIGEST_LEN, &len);

    if (st == TG_E_NO_ACCOUNT) {
        v->not_found = 1;
        return NGX_OK;
    }

    if (st != TG_OK) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "tollgate: tg_bearer_digest() failed: %s",
                      tg_status_str(st));
        return NGX_ERROR;
    }

    v->len = len;
    v->valid = 1;
    v->no_cacheable = 0;
    v->not_found = 0;
    v->data = p;

    return NGX_OK;
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
