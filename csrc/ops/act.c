/* Activations: ReLU, exact GELU, QuickGELU, sigmoid, elementwise and in place, and their names table.
 * The per-row kernel ops_act_inplace is what linear/conv epilogues call inside their own
 * parallel loops; ovs_act_forward parallelises it over chunks. */
#include "ops/ops_internal.h"

/* x[i] = fn(x[i]) over x[0..n), one vectorised loop per activation. */
#define ACT_LOOP(fn) _Pragma("omp simd") for (int64_t i = 0; i < n; i++) x[i] = fn(x[i])

void ops_act_inplace(float *x, int64_t n, ovs_act act) {
    switch (act) {
    case OVS_ACT_RELU: ACT_LOOP(ops_relu); break;
    case OVS_ACT_GELU: ACT_LOOP(ops_gelu); break;
    case OVS_ACT_QUICKGELU: ACT_LOOP(ops_quickgelu); break;
    case OVS_ACT_SIGMOID: ACT_LOOP(ops_sigmoid); break;
    case OVS_ACT_NONE: break;
    }
}
#undef ACT_LOOP

int ops_act_check(const char *op, float *x, int64_t n, ovs_act act) {
    int st;
    if ((st = ops_check_nonneg(op, "n", n)) || (st = ops_check_act(op, act)) ||
        (st = ops_check_ptr(op, "x", x, n)))
        return st;
    return OVS_OK;
}

int ovs_act_forward(float *x, int64_t n, ovs_act act) {
    int st = ops_act_check("ovs_act_forward", x, n, act);
    if (st) return st;
    if (act == OVS_ACT_NONE || n == 0) return OVS_OK;
    /* Chunks of 4096 floats (16 KiB) keep each thread's slice in L1 and aligned to lines. */
    const int64_t chunk = 4096;
    int64_t nchunks = (n + chunk - 1) / chunk;
#pragma omp parallel for schedule(static) if (n >= OPS_PAR_MIN) num_threads(ovs_get_num_threads())
    for (int64_t c = 0; c < nchunks; c++) {
        int64_t lo = c * chunk, len = n - lo < chunk ? n - lo : chunk;
        ops_act_inplace(x + lo, len, act);
    }
    return OVS_OK;
}

int ovs_sigmoid_inplace(float *x, int64_t n) { return ovs_act_forward(x, n, OVS_ACT_SIGMOID); }

static const ovs_act_info act_table[] = {
    {"none", OVS_ACT_NONE, 0, "identity"},
    {"quickgelu", OVS_ACT_QUICKGELU, 1, "x * sigmoid(1.702 x), open_clip's QuickGELU (OpenAI weights)"},
    {"gelu", OVS_ACT_GELU, 1, "exact GELU, 0.5 x (1 + erf(x / sqrt 2)), torch.nn.GELU()"},
    {"relu", OVS_ACT_RELU, 0, "max(x, 0)"},
    {"sigmoid", OVS_ACT_SIGMOID, 0, "1 / (1 + exp(-x)), torch.sigmoid (mask probabilities)"},
};

#define NUM_ACTS (sizeof act_table / sizeof act_table[0])

const ovs_act_info *ovs_act_table(int64_t *count) { return *count = (int64_t)NUM_ACTS, act_table; }

const ovs_act_info *ovs_act_by_name(const char *name) {
    return ovs_table_find(act_table, NUM_ACTS, sizeof act_table[0], name);
}

const char *ovs_act_name(ovs_act act) {
    for (size_t i = 0; i < NUM_ACTS; i++)
        if (act_table[i].act == act) return act_table[i].name;
    return NULL;
}
