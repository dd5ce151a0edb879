
/*
 * What a request holds until its response has ended: a filter module of
 * its own, for the requests that hold a token reservation's ticket
 * (docs/tokens.md), an in-flight admission (docs/in-flight.md), or both.
 *
 * The header filter notes the status, and for a ticket, when the
 * upstream's body is not content-encoded, starts the core's usage scan
 * (tg_usage_scan_init) for its Content-Type.  The body filter feeds every
 * in-memory buffer to the scan as it passes and passes each chain on
 * unchanged: nothing is buffered, copied or delayed, so a stream's first
 * byte leaves when it would without the filter.  At the last buffer the
 * response has ended: how (tg_usage_scan_finish, or tg_usage_ending by the
 * status without a scan) settles the ticket (tg_settle) and releases the
 * admission (tg_release), before the last bytes reach the client, so the
 * client's next request finds the unit free.  A request that ends any
 * other way (client gone, upstream error or timeout mid-response,
 * finalized early) ends cut, from the main request's pool cleanup, which
 * runs once whatever finalizes the request.  Each ticket is settled and
 * each admission released exactly once.
 *
 * Placement: the module is ordered before ngx_http_copy_filter_module (see
 * `config`), where nginx puts the filters of add-on modules, so its body
 * filter runs after the copy filter and before the headers, gunzip,
 * addition, sub, charset, ssi, gzip and chunked filters: it sees the bytes
 * as the upstream sent them, before any filter changes them, and its
 * header filter sees the upstream's Content-Type and Content-Encoding.
 * Like gzip or sub it asks the copy filter for buffers in memory
 * (r->filter_need_in_memory), so a response spooled to a temporary file
 * (proxy_buffering on) is read in memory too.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_tollgate.h"


/* in the main request's pool, from the decision to the response's end */
struct ngx_http_tollgate_hold_s {
    tg_limiter                   *limiter;
    tg_ticket                     ticket;
    uint64_t                      admission; /* 0: none */
    ngx_http_tollgate_row_t      *row;       /* the model's metric row */
    tg_usage_scan                *scan;      /* NULL: no usage to read */
    ngx_log_t                    *log;
    ngx_uint_t                    status;    /* 0 until the header */

    unsigned                      has_ticket:1;
    unsigned                      header:1;
    unsigned                      ended:1;
};


static void ngx_http_tollgate_hold_end(ngx_http_tollgate_hold_t *t,
    uint32_t cut);
static void ngx_http_tollgate_hold_cleanup(void *data);
static ngx_http_tollgate_hold_t *ngx_http_tollgate_hold_get(
    ngx_http_request_t *r);
static ngx_int_t ngx_http_tollgate_tokens_header_filter(
    ngx_http_request_t *r);
static ngx_int_t ngx_http_tollgate_tokens_body_filter(ngx_http_request_t *r,
    ngx_chain_t *in);
static ngx_int_t ngx_http_tollgate_tokens_init(ngx_conf_t *cf);


static ngx_http_module_t  ngx_http_tollgate_tokens_module_ctx = {
    NULL,                                  /* preconfiguration */
    ngx_http_tollgate_tokens_init,         /* postconfiguration */

    NULL,                                  /* create main configuration */
    NULL,                                  /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    NULL,                                  /* create location configuration */
    NULL                                   /* merge location configuration */
};


ngx_module_t  ngx_http_tollgate_tokens_module = {
    NGX_MODULE_V1,
    &ngx_http_tollgate_tokens_module_ctx,  /* module context */
    NULL,                                  /* module directives */
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


static ngx_http_output_header_filter_pt  ngx_http_next_header_filter;
static ngx_http_output_body_filter_pt    ngx_http_next_body_filter;


/*
 * The decision reserved tokens (ctx->answer.tokens.ticket) or admitted the
 * request in flight (ctx->answer.in_flight.admission): hold them until the
 * response has ended.  Called once per request, by the request path, right
 * after the answer, on the main request.  NGX_ERROR: an admission could not
 * be held, so it was released at once, with any ticket, and the request
 * must not run (answered 500): a unit that nothing releases would stay
 * taken until the process dies.
 */

ngx_int_t
ngx_http_tollgate_hold(ngx_http_request_t *r, ngx_http_tollgate_ctx_t *ctx)
{
    uint32_t                   cut, ending;
    uint64_t                   charged;
    tg_status                  st;
    tg_ticket                 *ticket;
    ngx_uint_t                 has_ticket;
    ngx_pool_cleanup_t        *cln;
    ngx_http_tollgate_row_t   *row;
    ngx_http_tollgate_hold_t  *t;

    ticket = &ctx->answer.tokens.ticket;

    has_ticket = ctx->answer.tokens.has_tokens
                 && (ticket->words[0] != 0 || ticket->words[1] != 0);

    if (!has_ticket && ctx->answer.in_flight.admission == 0) {
        return NGX_OK;
    }

    cln = ngx_pool_cleanup_add(r->pool, sizeof(ngx_http_tollgate_hold_t));

    if (cln == NULL) {

        if (ctx->answer.in_flight.admission) {
            /* answered 500 here, not passed on: a failed response */
            cut = 0;
            ending = tg_usage_ending(NGX_HTTP_INTERNAL_SERVER_ERROR, 0);

            st = tg_release(ctx->zone->limiter,
                            ctx->answer.in_flight.admission, ending, NULL);

            ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                          "tollgate: no memory to hold an in-flight "
                          "admission, released: %s", tg_status_str(st));

        } else {
            /* cannot wait for the response: settled now as cut (by
             * default the reservation is kept, the safe direction) */
            cut = 1;
            ending = tg_usage_ending(0, 1);
        }

        if (has_ticket) {
            charged = 0;

            st = tg_settle(ctx->zone->limiter, ticket, ending, 0,
                           tg_now_ms(), &charged);

            if (st == TG_OK) {
                row = ngx_http_tollgate_row(ctx->zone, &ctx->model);
                (void) ngx_atomic_fetch_add(&row->tokens_settled, charged);
            }

            ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                          "tollgate: no memory to hold a token reservation, "
                          "settled as %s: %s", cut ? "cut" : "failed",
                          tg_status_str(st));
        }

        return ctx->answer.in_flight.admission ? NGX_ERROR : NGX_OK;
    }

    t = cln->data;

    ngx_memzero(t, sizeof(ngx_http_tollgate_hold_t));

    t->limiter = ctx->zone->limiter;
    t->admission = ctx->answer.in_flight.admission;
    t->row = ngx_http_tollgate_row(ctx->zone, &ctx->model);
    t->log = r->connection->log;

    if (has_ticket) {
        t->ticket = *ticket;
        t->has_ticket = 1;
    }

    cln->handler = ngx_http_tollgate_hold_cleanup;

    ctx->hold = t;

    return NGX_OK;
}


/*
 * The response has ended (cut: not to its last buffer): settles the ticket
 * and releases the admission once, with the one ending the core's rule
 * gives (the usage scan's, or the status's)
 */

static void
ngx_http_tollgate_hold_end(ngx_http_tollgate_hold_t *t, uint32_t cut)
{
    uint32_t   ending, in_use;
    uint64_t   used, charged;
    tg_usage   usage;
    tg_status  st;

    if (t->ended) {
        return;
    }

    t->ended = 1;

    if (t->scan) {
        ngx_memzero(&usage, sizeof(tg_usage));
        usage.size = sizeof(tg_usage);

        (void) tg_usage_scan_finish(t->scan, t->status, cut, &usage);

        ending = usage.ending;
        used = usage.total;

    } else {
        ending = tg_usage_ending(t->status, cut);
        used = 0;
    }

    if (t->admission) {
        in_use = 0;

        st = tg_release(t->limiter, t->admission, ending, &in_use);

        if (st != TG_OK) {
            ngx_log_error(NGX_LOG_ERR, t->log, 0,
                          "tollgate: tg_release() failed: %s",
                          tg_status_str(st));

        } else {
            ngx_log_debug3(NGX_LOG_DEBUG_HTTP, t->log, 0,
                           "tollgate: released, status %ui, ending %uD, "
                           "in flight %uD", t->status, ending, in_use);
        }
    }

    if (!t->has_ticket) {
        return;
    }

    charged = 0;

    st = tg_settle(t->limiter, &t->ticket, ending, used, tg_now_ms(),
                   &charged);

    if (st != TG_OK) {
        ngx_log_error(NGX_LOG_ERR, t->log, 0,
                      "tollgate: tg_settle() failed: %s",
                      tg_status_str(st));
        return;
    }

    (void) ngx_atomic_fetch_add(&t->row->tokens_settled, charged);

    ngx_log_debug4(NGX_LOG_DEBUG_HTTP, t->log, 0,
                   "tollgate: settled, status %ui, ending %uD, used %uL, "
                   "charged %uL", t->status, ending, used, charged);
}


/*
 * The main request's pool is destroyed, however it was finalized: if the
 * last buffer never passed, the response was cut
 */

static void
ngx_http_tollgate_hold_cleanup(void *data)
{
    ngx_http_tollgate_hold_t  *t = data;

    ngx_http_tollgate_hold_end(t, 1);
}


/* what the main request holds until its response ends, or NULL */

static ngx_http_tollgate_hold_t *
ngx_http_tollgate_hold_get(ngx_http_request_t *r)
{
    ngx_http_tollgate_ctx_t  *ctx;

    if (r != r->main) {
        return NULL;
    }

    /* found again after an internal redirect zeroed the module contexts */
    ctx = ngx_http_tollgate_get_ctx(r);

    if (ctx == NULL || ctx->hold == NULL || ctx->hold->ended) {
        return NULL;
    }

    return ctx->hold;
}


static ngx_int_t
ngx_http_tollgate_tokens_header_filter(ngx_http_request_t *r)
{
    void                        *mem;
    size_t                       size;
    tg_status                    st;
    ngx_table_elt_t             *ce;
    ngx_http_tollgate_hold_t    *t;

    t = ngx_http_tollgate_hold_get(r);

    if (t == NULL || t->header) {
        return ngx_http_next_header_filter(r);
    }

    t->header = 1;
    t->status = r->headers_out.status;

    if (r->header_only) {
        /* no body will pass; a client known gone has not had it */
        ngx_http_tollgate_hold_end(t, r->connection->error);
        return ngx_http_next_header_filter(r);
    }

    if (!t->has_ticket) {
        /* an admission alone ends by the status: no usage to read */
        return ngx_http_next_header_filter(r);
    }

    ce = r->headers_out.content_encoding;

    if (ce && ce->hash && ce->value.len
        && !(ce->value.len == sizeof("identity") - 1
             && ngx_strncasecmp(ce->value.data, (u_char *) "identity",
                                ce->value.len) == 0))
    {
        /* gzip and the like: the core reads decoded bytes only */
        return ngx_http_next_header_filter(r);
    }

    size = tg_usage_scan_size();

    mem = ngx_pmemalign(r->pool, size, TG_USAGE_SCAN_ALIGN);
    if (mem == NULL) {
        return NGX_ERROR;
    }

    st = tg_usage_scan_init(mem, size,
                            (const char *) r->headers_out.content_type.data,
                            r->headers_out.content_type.len, &t->scan);

    if (st == TG_OK) {
        /* as gzip and sub do: the copy filter reads a body spooled to a
         * file into memory */
        r->filter_need_in_memory = 1;

    } else {
        /* TG_E_UNSUPPORTED: neither JSON nor SSE, no usage to read */
        t->scan = NULL;

        if (st != TG_E_UNSUPPORTED) {
            ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                          "tollgate: tg_usage_scan_init() failed: %s",
                          tg_status_str(st));
        }
    }

    return ngx_http_next_header_filter(r);
}


static ngx_int_t
ngx_http_tollgate_tokens_body_filter(ngx_http_request_t *r, ngx_chain_t *in)
{
    size_t                       len;
    ngx_buf_t                   *b;
    tg_status                    st;
    ngx_uint_t                   last;
    ngx_chain_t                 *cl;
    ngx_http_tollgate_hold_t    *t;

    t = ngx_http_tollgate_hold_get(r);

    if (t == NULL || in == NULL) {
        return ngx_http_next_body_filter(r, in);
    }

    last = 0;

    for (cl = in; cl; cl = cl->next) {
        b = cl->buf;

        if (b->last_buf) {
            last = 1;
        }

        if (t->scan == NULL) {
            continue;
        }

        if (ngx_buf_in_memory(b)) {
            len = b->last - b->pos;

            if (len == 0) {
                continue;
            }

            st = tg_usage_scan_feed(t->scan, b->pos, len);

            if (st != TG_OK) {
                /* TG_E_USAGE: final, settled as if no usage came */
                ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                               "tollgate: response usage unreadable: %s",
                               tg_last_error());
            }

            continue;
        }

        if (ngx_buf_size(b)) {
            /* only in a file: these bytes cannot be read here, so the
             * usage cannot be either */
            ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                          "tollgate: response body in a file, "
                          "its usage is not read");
            t->scan = NULL;
        }
    }

    if (last) {
        /* before the last bytes reach the client, so its next request
         * sees the settled count and the unit free; a client known gone
         * will not have them: cut */
        ngx_http_tollgate_hold_end(t, r->connection->error);
    }

    return ngx_http_next_body_filter(r, in);
}


static ngx_int_t
ngx_http_tollgate_tokens_init(ngx_conf_t *cf)
{
    ngx_http_next_header_filter = ngx_http_top_header_filter;
    ngx_http_top_header_filter = ngx_http_tollgate_tokens_header_filter;

    ngx_http_next_body_filter = ngx_http_top_body_filter;
    ngx_http_top_body_filter = ngx_http_tollgate_tokens_body_filter;

    return NGX_OK;
}
