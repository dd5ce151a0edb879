
/*
 * ngx_http_tollgate_module: what its files share.  The module is split by
 * concern, as nginx splits its own larger modules:
 *
 *   ngx_http_tollgate_module.c   directives, configuration, variables
 *   ngx_http_tollgate_request.c  the request path: steps, decision, answer,
 *                                the thread pool, the header filter
 *   ngx_http_tollgate_zone.c     zones, region files, joining Redis
 *   ngx_http_tollgate_metrics.c  the metric rows and the Prometheus page
 *   ngx_http_tollgate_tokens.c   a filter module: a response's token usage
 *                                read as it passes, its reservation settled
 *                                and its in-flight admission released
 */


#ifndef _NGX_HTTP_TOLLGATE_H_INCLUDED_
#define _NGX_HTTP_TOLLGATE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <tollgate.h>


#define NGX_HTTP_TOLLGATE_TABLE_OPEN      0
#define NGX_HTTP_TOLLGATE_TABLE_CLOSED    1

#define NGX_HTTP_TOLLGATE_NO_LIMIT_PASS   0
#define NGX_HTTP_TOLLGATE_NO_LIMIT_REFUSE 1

/* metric rows per zone; row 0 counts requests whose model is not (yet) in
 * the table, so the table cannot be grown by clients sending random names */
#define NGX_HTTP_TOLLGATE_ROWS            64


typedef struct {
    ngx_atomic_t                  count[TG_OUTCOMES];
    /* tokens reserved at admission and charged when settled; refusals on
     * a token window (TG_LIMIT_TOKENS_MINUTE, _DAY), which are counted as
     * TG_OUTCOME_REJECTED too */
    ngx_atomic_t                  tokens_reserved;
    ngx_atomic_t                  tokens_settled;
    ngx_atomic_t                  token_refusals[2];
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
typedef struct ngx_http_tollgate_hold_s  ngx_http_tollgate_hold_t;


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

    /* tokens the body's estimate reserves on a key with a token limit
     * (tg_limiter_estimate_tokens); the reservation and the in-flight
     * admission held until the response has ended
     * (ngx_http_tollgate_tokens.c); NULL: none */
    uint32_t                      reserve;
    ngx_http_tollgate_hold_t     *hold;

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


extern ngx_module_t  ngx_http_tollgate_module;
extern ngx_module_t  ngx_http_tollgate_tokens_module;
extern ngx_str_t     ngx_http_tollgate_limited_by[];


ngx_int_t ngx_http_tollgate_init(ngx_conf_t *cf);
ngx_http_tollgate_ctx_t *ngx_http_tollgate_get_ctx(ngx_http_request_t *r);

char *ngx_http_tollgate_zone(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
char *ngx_http_tollgate_redis(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
ngx_int_t ngx_http_tollgate_open_file(ngx_conf_t *cf,
    ngx_http_tollgate_zone_t *zone);
ngx_int_t ngx_http_tollgate_init_process(ngx_cycle_t *cycle);
void ngx_http_tollgate_exit_process(ngx_cycle_t *cycle);

ngx_int_t ngx_http_tollgate_hold(ngx_http_request_t *r,
    ngx_http_tollgate_ctx_t *ctx);

ngx_int_t ngx_http_tollgate_metrics_handler(ngx_http_request_t *r);
void ngx_http_tollgate_count(ngx_http_tollgate_zone_t *zone,
    ngx_str_t *model, ngx_uint_t outcome);
ngx_http_tollgate_row_t *ngx_http_tollgate_row(ngx_http_tollgate_zone_t *zone,
    ngx_str_t *model);
ngx_int_t ngx_http_tollgate_add_rows(ngx_http_tollgate_zone_t *zone,
    ngx_log_t *log);


#endif /* _NGX_HTTP_TOLLGATE_H_INCLUDED_ */
