
/*
 * The request path: the steps every binding takes (method, account, the
 * body's model, tier, check), a decision that must wait for Redis made on
 * the thread pool while the request is parked, and the core's answer sent:
 * a refusal, or the headers of a request passed on (the header filter).
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_tollgate.h"


/* a spooled body is read back and scanned in chunks of this size */
#define NGX_HTTP_TOLLGATE_CHUNK           16384

/* client bytes shown per log field (more than any valid account or model),
 * and the room one escaped field takes: \xHH per byte, "..." if cut */
#define NGX_HTTP_TOLLGATE_LOG_MAX         64
#define NGX_HTTP_TOLLGATE_LOG_LEN         (NGX_HTTP_TOLLGATE_LOG_MAX * 4 + 3)


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
    tg_tokens                     tokens;
    tg_in_flight                  in_flight;
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
    tg_status st, tg_decision *decision, tg_tokens *tokens,
    tg_in_flight *in_flight);
static void ngx_http_tollgate_answer(ngx_http_request_t *r,
    ngx_http_tollgate_ctx_t *ctx, ngx_http_tollgate_loc_conf_t *tlcf,
    tg_status st, tg_decision *decision, tg_tokens *tokens,
    tg_in_flight *in_flight);
static void ngx_http_tollgate_estimate(ngx_http_request_t *r,
    ngx_http_tollgate_ctx_t *ctx, tg_body_scan *scan);
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
static void ngx_http_tollgate_cleanup(void *data);
static ngx_int_t ngx_http_tollgate_header_filter(ngx_http_request_t *r);
static ngx_int_t ngx_http_tollgate_add_headers(ngx_http_request_t *r,
    ngx_http_tollgate_ctx_t *ctx);
static ngx_int_t ngx_http_tollgate_value(ngx_http_request_t *r,
    ngx_http_tollgate_value_t *tv, ngx_str_t *value);
static ngx_str_t *ngx_http_tollgate_log_escape(ngx_str_t *dst, u_char *buf,
    ngx_str_t *src);


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
        ngx_http_tollgate_answer(r, ctx, tlcf, st, NULL, NULL, NULL);
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
        ngx_http_tollgate_answer(r, ctx, tlcf, TG_E_INVALID, NULL, NULL, NULL);
        return NGX_OK;
    }

    if (ngx_http_tollgate_value(r, tlcf->account, &ctx->account) != NGX_OK) {
        ngx_http_tollgate_answer(r, ctx, tlcf, TG_E_INVALID, NULL, NULL, NULL);
        return NGX_OK;
    }

    if (ctx->account.len == 0) {
        ngx_http_tollgate_answer(r, ctx, tlcf, TG_E_NO_ACCOUNT, NULL,
                                 NULL, NULL);
        return NGX_OK;
    }

    if (tlcf->model == NULL) {
        return NGX_AGAIN;
    }

    if (ngx_http_tollgate_value(r, tlcf->model, &ctx->model) != NGX_OK) {
        ngx_http_tollgate_answer(r, ctx, tlcf, TG_E_INVALID, NULL, NULL, NULL);
        return NGX_OK;
    }

    if (ctx->model.len == 0) {
        /* the variable names no model: the core's "no model" answer */
        ngx_http_tollgate_answer(r, ctx, tlcf, TG_E_BODY_NO_MODEL, NULL,
                                 NULL, NULL);
        return NGX_OK;
    }

    /* the body is not read: a key with a token limit reserves the
     * estimate of an empty body (its output cap by default) */
    ngx_http_tollgate_estimate(r, ctx, NULL);

    ngx_http_tollgate_check(r, ctx, tlcf);

    return NGX_OK;
}


/* the steps after the model: the tier (tg_tier_parse), then the check
 * (tg_check_units: the windows, the tokens and the requests in flight) */

static void
ngx_http_tollgate_check(ngx_http_request_t *r, ngx_http_tollgate_ctx_t *ctx,
    ngx_http_tollgate_loc_conf_t *tlcf)
{
    u_char                     buf[NGX_HTTP_TOLLGATE_LOG_LEN];
    uint32_t                   tier;
    uint64_t                   now;
    ngx_str_t                  value, v;
    tg_status                  st;
    tg_tokens                  tokens;
    tg_request                 req;
    tg_decision                decision;
    tg_in_flight               in_flight;
    ngx_http_tollgate_zone_t  *zone;

    /* no tollgate_tier, or an empty value: the developer tier */
    tier = TG_TIER_DEVELOPER;

    if (tlcf->tier) {
        if (ngx_http_tollgate_value(r, tlcf->tier, &value) != NGX_OK) {
            ngx_http_tollgate_answer(r, ctx, tlcf, TG_E_INVALID, NULL,
                                     NULL, NULL);
            return;
        }

        if (value.len) {
            st = tg_tier_parse((const char *) value.data, value.len, &tier);

            if (st != TG_OK) {
                ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                              "tollgate: unknown tier \"%V\" "
                              "(free, developer or enterprise)",
                              ngx_http_tollgate_log_escape(&v, buf, &value));

                ngx_http_tollgate_answer(r, ctx, tlcf, st, NULL, NULL, NULL);
                return;
            }
        }
    }

    ngx_memzero(&req, sizeof(tg_request));
    ngx_memzero(&decision, sizeof(tg_decision));
    ngx_memzero(&tokens, sizeof(tg_tokens));
    ngx_memzero(&in_flight, sizeof(tg_in_flight));

    req.size = sizeof(tg_request);
    req.account = (const char *) ctx->account.data;
    req.account_len = ctx->account.len;
    req.model = (const char *) ctx->model.data;
    req.model_len = ctx->model.len;
    req.tier = tier;
    req.cost = 1;
    req.tokens = ctx->reserve;

    decision.size = sizeof(tg_decision);
    tokens.size = sizeof(tg_tokens);
    in_flight.size = sizeof(tg_in_flight);

    zone = ctx->zone;
    now = tg_now_ms();

    if (zone->redis_url.len) {
        /* never wait for Redis on the event loop: TG_PENDING (nothing
         * charged) parks the request and decides it on the thread pool */
        req.flags = TG_REQUEST_NO_WAIT;
        ctx->leased = 1;
    }

    st = tg_check_units(zone->limiter, &req, now, &decision, &tokens,
                        &in_flight);

#if (NGX_THREADS)
    if (st == TG_PENDING
        && ngx_http_tollgate_park(r, ctx, tlcf, &req, now) == NGX_OK)
    {
        return;
    }
#endif

    ngx_http_tollgate_decided(r, ctx, tlcf, st, &decision, &tokens,
                              &in_flight);
}


/* what tg_check_units said, on the event loop: logged, then answered */

static void
ngx_http_tollgate_decided(ngx_http_request_t *r, ngx_http_tollgate_ctx_t *ctx,
    ngx_http_tollgate_loc_conf_t *tlcf, tg_status st, tg_decision *decision,
    tg_tokens *tokens, tg_in_flight *in_flight)
{
    switch (st) {

    case TG_OK:
    case TG_E_UNKNOWN_MODEL:
    case TG_E_NO_LIMIT:
    case TG_E_TABLE_FULL:
    case TG_E_ACCOUNT:
    case TG_E_COST_TOO_LARGE:
    case TG_E_TOKENS_TOO_LARGE:
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
                      "tollgate: tg_check_units() failed in zone \"%V\": %s",
                      &ctx->zone->name, tg_status_str(st));
        break;
    }

    ngx_http_tollgate_answer(r, ctx, tlcf, st, decision, tokens, in_flight);
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

    ngx_memzero(&tc->tokens, sizeof(tg_tokens));
    tc->tokens.size = sizeof(tg_tokens);

    ngx_memzero(&tc->in_flight, sizeof(tg_in_flight));
    tc->in_flight.size = sizeof(tg_in_flight);

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

    tc->status = tg_check_units(tc->limiter, &tc->req, tc->now,
                                &tc->decision, &tc->tokens, &tc->in_flight);
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
    ngx_http_tollgate_decided(r, ctx, tlcf, tc->status, &tc->decision,
                              &tc->tokens, &tc->in_flight);

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
    ngx_http_tollgate_loc_conf_t *tlcf, tg_status st, tg_decision *decision,
    tg_tokens *tokens, tg_in_flight *in_flight)
{
    u_char                     abuf[NGX_HTTP_TOLLGATE_LOG_LEN];
    u_char                     mbuf[NGX_HTTP_TOLLGATE_LOG_LEN];
    uint32_t                   flags, by;
    ngx_str_t                  a, m;
    tg_status                  rc;
    tg_answer                 *answer;
    ngx_http_tollgate_row_t   *row;
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

    /* tg_answer_for_units writes the whole struct */
    answer->size = sizeof(tg_answer);

    rc = tg_answer_for_units(st, st == TG_OK ? decision : NULL,
                             st == TG_OK ? tokens : NULL,
                             st == TG_OK ? in_flight : NULL,
                             (const char *) ctx->model.data, ctx->model.len,
                             flags, tlcf->status_code, answer);

    if (rc != TG_OK) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "tollgate: tg_answer_for_units() failed: %s",
                      tg_status_str(rc));

        /* nginx's own 500 (ngx_http_tollgate_send_refusal) */
        ngx_memzero(answer, sizeof(tg_answer));
        answer->size = sizeof(tg_answer);
        answer->http_status = NGX_HTTP_INTERNAL_SERVER_ERROR;
        answer->outcome = TG_OUTCOME_ERROR;
        ctx->failed = 1;
    }

    /*
     * a reservation and an admission: held until the response has ended
     * (the 500 above too), then settled and released
     */

    if (st == TG_OK && rc != TG_OK) {
        if (tokens) {
            answer->tokens = *tokens;
        }

        if (in_flight) {
            answer->in_flight = *in_flight;
        }
    }

    if (st == TG_OK && ngx_http_tollgate_hold(r, ctx) != NGX_OK) {
        /* released already: the request must not run without its unit */
        ngx_memzero(answer, sizeof(tg_answer));
        answer->size = sizeof(tg_answer);
        answer->http_status = NGX_HTTP_INTERNAL_SERVER_ERROR;
        answer->outcome = TG_OUTCOME_ERROR;
        ctx->failed = 1;
    }

    if (st != TG_OK && in_flight && in_flight->admission) {
        /* not answered as a decision, so not passed on: nothing would
         * release a unit the core took */
        (void) tg_release(zone->limiter, in_flight->admission,
                          TG_END_FAILED, NULL);
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
                          by <= TG_LIMIT_IN_FLIGHT ? by : TG_LIMIT_NONE],
                      &zone->name);
    }

    ngx_http_tollgate_count(zone, &ctx->model, answer->outcome);

    if (!answer->tokens.has_tokens) {
        return;
    }

    row = ngx_http_tollgate_row(zone, &ctx->model);

    if (answer->tokens.reserved) {
        (void) ngx_atomic_fetch_add(&row->tokens_reserved,
                                    answer->tokens.reserved);
    }

    if (answer->outcome == TG_OUTCOME_REJECTED) {
        by = answer->decision.limited_by;

        if (by == TG_LIMIT_TOKENS_MINUTE || by == TG_LIMIT_TOKENS_DAY) {
            (void) ngx_atomic_fetch_add(
                       &row->token_refusals[by - TG_LIMIT_TOKENS_MINUTE], 1);
        }
    }
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

        ngx_http_tollgate_estimate(r, ctx, scan);
    }

    return st;
}


/*
 * The tokens the request reserves if its key has a token limit: the core's
 * estimate (tg_limiter_estimate_tokens) from the facts of the body the
 * scan read (tg_body_facts), or of an empty body when scan is NULL.  A key
 * without a token limit ignores it.
 */

static void
ngx_http_tollgate_estimate(ngx_http_request_t *r,
    ngx_http_tollgate_ctx_t *ctx, tg_body_scan *scan)
{
    tg_status           st;
    tg_body_scan_facts  facts;

    ngx_memzero(&facts, sizeof(tg_body_scan_facts));
    facts.size = sizeof(tg_body_scan_facts);

    st = scan ? tg_body_facts(scan, &facts) : TG_OK;

    if (st == TG_OK) {
        st = tg_limiter_estimate_tokens(ctx->zone->limiter, &facts,
                                        &ctx->reserve);
    }

    if (st != TG_OK) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "tollgate: no token estimate: %s", tg_status_str(st));
        ctx->reserve = 0;
    }
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


ngx_http_tollgate_ctx_t *
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


/* postconfiguration: this file's phase handler and header filter */

ngx_int_t
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
