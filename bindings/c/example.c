/* Tollgate from C: the built-in policy, one limiter, 31 requests from one
 * account to DeepSeek-V3.1 (30 requests per minute), and the HTTP answer for
 * the request that was refused.
 *
 *   cc example.c $(pkg-config --cflags --libs tollgate) -o example && ./example
 */
#include <stdio.h>
#include <string.h>
#include <tollgate.h>

int main(void) {
    tg_policy *policy = NULL;
    tg_limiter *limiter = NULL;
    tg_status s = tg_policy_default(&policy);
    if (s == TG_OK) s = tg_limiter_new(policy, 1024, &limiter);
    tg_policy_free(policy); /* the limiter keeps its own copy */
    if (s != TG_OK) {
        fprintf(stderr, "tollgate: %s\n", tg_status_str(s));
        return 1;
    }

    const char *account = "acct-42", *model = "DeepSeek-V3.1";
    tg_request req = {
        .account = account, .account_len = strlen(account),
        .model = model, .model_len = strlen(model),
        .tier = TG_TIER_DEVELOPER, .cost = 1, /* rpm = rpd = 0: from the policy */
    };
    /* One timestamp for all 31, so they land in the same minute window. */
    uint64_t now = tg_now_ms();
    tg_decision d;
    int allowed = 0, denied = 0;
    for (int i = 0; i < 31; i++) {
        s = tg_check(limiter, &req, now, &d);
        if (s != TG_OK) { /* e.g. TG_E_UNKNOWN_MODEL: answer 404, not 429 */
            fprintf(stderr, "tollgate: %s\n", tg_status_str(s));
            return 1;
        }
        if (d.allowed) allowed++; else denied++;
    }
    printf("%d allowed, %d denied (limited by %s)\n", allowed, denied,
           d.limited_by == TG_LIMIT_MINUTE ? "minute" : d.limited_by == TG_LIMIT_DAY ? "day" : "none");

    /* The last decision is the refusal: its headers and the 429 body. */
    char buf[1024];
    size_t n = 0;
    if (tg_decision_headers(&d, buf, sizeof buf, &n) != TG_OK) return 1;
    printf("HTTP/1.1 429 Too Many Requests\r\n%.*s\r\n", (int)n, buf);
    if (tg_decision_error_body(&d, model, strlen(model), buf, sizeof buf, &n) != TG_OK) return 1;
    printf("%.*s\n", (int)n, buf);

    tg_limiter_free(limiter);
    return 0;
}
