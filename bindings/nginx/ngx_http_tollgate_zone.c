
/*
 * Zones: the table in an nginx shared zone or a region file mapped by the
 * master (tollgate_zone), and its quota store (tollgate_redis), which each
 * worker joins after the fork and whose events it logs.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_tollgate.h"


/* a worker joined to a store logs the lease layer's events this often (ms);
 * the library keeps its latest 64 (tg_limiter_lease_event), and one event's
 * text is cut to fit this room */
#define NGX_HTTP_TOLLGATE_EVENTS_EVERY    1000
#define NGX_HTTP_TOLLGATE_EVENTS_KEPT     64
#define NGX_HTTP_TOLLGATE_EVENT_LEN       1024


static ngx_int_t ngx_http_tollgate_init_zone(ngx_shm_zone_t *shm_zone,
    void *data);
static ngx_int_t ngx_http_tollgate_attach(ngx_shm_zone_t *shm_zone,
    ngx_http_tollgate_zone_t *zone);
static void ngx_http_tollgate_zone_cleanup(void *data);
static ngx_int_t ngx_http_tollgate_format_matches(
    ngx_http_tollgate_zone_t *zone, ngx_uint_t leased, ngx_log_t *log);
static void ngx_http_tollgate_events_handler(ngx_event_t *ev);
static void ngx_http_tollgate_log_events(ngx_log_t *log);


/* this worker's timer logging the lease events of its joined zones; a timer
 * needs a connection-like data pointer (the event code's debug lines read
 * its fd) */
static ngx_event_t       ngx_http_tollgate_events_ev;
static ngx_connection_t  ngx_http_tollgate_events_conn;


char *
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

char *
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


static ngx_int_t
ngx_http_tollgate_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_http_tollgate_zone_t  *ozone = data;

    u_char                     *mem;
    size_t                      len, size;
    uint32_t                    slots;
    tg_status                   st;
    ngx_slab_pool_t            *shpool;
    tg_limiter_options          opts;
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

    ngx_memzero(&opts, sizeof(tg_limiter_options));
    opts.size = sizeof(tg_limiter_options);
    opts.flags = zone->redis_url.len ? TG_OPEN_LEASES : 0;
    opts.mem = mem;
    opts.len = size;

    st = tg_limiter_make(zone->policy, &opts, &zone->limiter);

    if (st != TG_OK) {
        ngx_log_error(NGX_LOG_EMERG, shm_zone->shm.log, 0,
                      "tollgate_zone \"%V\": tg_limiter_make() failed: %s",
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

ngx_int_t
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
                ? tg_region_slots_for_leases((size_t) zone->size)
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

        if (tg_limiter_is_leased(zone->limiter)) {
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
            if (tg_limiter_is_leased(probe)) {
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


/*
 * Each worker joins the store itself, after the fork: the link is a thread
 * of the process (tg_limiter_connect), and the master never has one.
 * Redis down, or answering an error (BUSY, LOADING, NOAUTH), is not an
 * error here: the worker joins, the down policy decides until Redis
 * serves, and the lease events say so in the error log (a timer of the
 * worker, ngx_http_tollgate_events_handler).
 */

ngx_int_t
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

void
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
