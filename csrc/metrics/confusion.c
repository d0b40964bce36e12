/* Streaming confusion matrix and detectron2's SemSegEvaluator scores (include/ovs/metrics.h).
 *
 * Letters: C classes, P pixels, K = C + 1 (matrix side: C classes + the ignore row).
 *
 * The fast path makes two passes over the label maps: a branch-free validation pass (any value
 * out of range -> the naive scan finds the first one for the message, nothing is counted), then
 * a counting pass in blocks of BLOCK pixels: index = gt_row * K + pred is computed for the block
 * in a vectorisable loop, then scattered into the matrix with run-length merging (label maps
 * are mostly runs of equal labels, so most pixels cost one compare instead of a dependent
 * read-modify-write of the same counter). Large maps are split over threads, each with a
 * private matrix, summed at the end; integer counts make the result independent of the split. */
#include "ovs/metrics.h"

#include <math.h>
#include <omp.h>
#include <string.h>

enum { BLOCK = 2048 };

/* Fast path limit: indices are int32, so K * K must fit. Larger C runs the naive kernel. */
#define FAST_MAX_K 46340

static int valid_type(ovs_label_type t) {
    return t == OVS_LABEL_U8 || t == OVS_LABEL_U16 || t == OVS_LABEL_I32 || t == OVS_LABEL_I64;
}

static inline int64_t load_label(const void *p, ovs_label_type t, int64_t i) {
    switch (t) {
    case OVS_LABEL_U8: return ((const uint8_t *)p)[i];
    case OVS_LABEL_U16: return ((const uint16_t *)p)[i];
    case OVS_LABEL_I32: return ((const int32_t *)p)[i];
    case OVS_LABEL_I64: return ((const int64_t *)p)[i];
    }
    return 0;
}

static int check_args(const int64_t *conf, const void *pred, ovs_label_type pred_type,
                      const void *gt, ovs_label_type gt_type, int64_t P, int64_t C) {
    size_t cells;
    if (C < 1) return ovs_set_error(OVS_ERR_ARG, "confusion: num_classes must be >= 1, got %lld", (long long)C);
    if (P < 0) return ovs_set_error(OVS_ERR_ARG, "confusion: num_pixels must be >= 0, got %lld", (long long)P);
    if (ovs_mul_size(&cells, (size_t)C + 1, (size_t)C + 1) || cells > (size_t)INT64_MAX / sizeof(int64_t))
        return ovs_set_error(OVS_ERR_OVERFLOW, "confusion: (num_classes + 1)^2 overflows for num_classes %lld",
                             (long long)C);
    if (!valid_type(pred_type) || !valid_type(gt_type))
        return ovs_set_error(OVS_ERR_ARG, "confusion: unknown label element type %d / %d", (int)pred_type,
                             (int)gt_type);
    if (!conf || (P > 0 && (!pred || !gt))) return ovs_set_error(OVS_ERR_ARG, "confusion: NULL buffer");
    return OVS_OK;
}

/* The first pixel whose value is out of range, as an error; OVS_OK if none. */
static int first_bad(const void *pred, ovs_label_type pred_type, const void *gt, ovs_label_type gt_type,
                     int64_t P, int64_t C, int64_t ignore) {
    for (int64_t i = 0; i < P; i++) {
        int64_t g = load_label(gt, gt_type, i);
        if (g != ignore && (g < 0 || g >= C))
            return ovs_set_error(OVS_ERR_ARG,
                                 "confusion: ground-truth label %lld at pixel %lld is outside the class "
                                 "range 0..%lld and is not the ignore label %lld",
                                 (long long)g, (long long)i, (long long)(C - 1), (long long)ignore);
        int64_t p = load_label(pred, pred_type, i);
        if (p < 0 || p >= C)
            return ovs_set_error(OVS_ERR_ARG,
                                 "confusion: predicted label %lld at pixel %lld is outside the class range "
                                 "0..%lld",
                                 (long long)p, (long long)i, (long long)(C - 1));
    }
    return OVS_OK;
}

int ovs_confusion_accumulate_naive(int64_t *conf, const void *pred, ovs_label_type pred_type,
                                   const void *gt, ovs_label_type gt_type, int64_t P, int64_t C,
                                   int64_t ignore) {
    int st = check_args(conf, pred, pred_type, gt, gt_type, P, C);
    if (st) return st;
    if ((st = first_bad(pred, pred_type, gt, gt_type, P, C, ignore))) return st;
    const int64_t K = C + 1;
    for (int64_t i = 0; i < P; i++) {
        int64_t g = load_label(gt, gt_type, i);
        int64_t p = load_label(pred, pred_type, i);
        conf[(g == ignore ? C : g) * K + p] += 1;
    }
    return OVS_OK;
}

/* ---------------------------------------------------------------- fast kernel, per element type */
/* any_bad_<t>: 1 if some value of x[0..n) is out of 0..C-1 and (when has_ignore) not `ignore`.
 * gt_rows_<t>: row[i] = (x[i] == ignore ? C : x[i]) * K, for validated input.
 * add_pred_<t>: idx[i] = row[i] + x[i], for validated input. */
#define DEFINE_KERNELS(T, NAME)                                                                  \
    static int any_bad_##NAME(const T *x, int64_t n, int64_t C, int has_ignore, int64_t ignore) { \
        int bad = 0;                                                                             \
        for (int64_t i = 0; i < n; i++) {                                                        \
            int64_t v = (int64_t)x[i];                                                           \
            bad |= (uint64_t)v >= (uint64_t)C && !(has_ignore && v == ignore);                   \
        }                                                                                        \
        return bad;                                                                              \
    }                                                                                            \
    static void gt_rows_##NAME(int32_t *row, const T *x, int64_t n, int64_t C, int64_t ignore) { \
        const int32_t K = (int32_t)(C + 1), c32 = (int32_t)C;                                    \
        for (int64_t i = 0; i < n; i++) {                                                        \
            int32_t g = (int64_t)x[i] == ignore ? c32 : (int32_t)x[i];                           \
            row[i] = g * K;                                                                      \
        }                                                                                        \
    }                                                                                            \
    static void add_pred_##NAME(int32_t *idx, const T *x, int64_t n) {                           \
        for (int64_t i = 0; i < n; i++) idx[i] += (int32_t)x[i];                                 \
    }

DEFINE_KERNELS(uint8_t, u8)
DEFINE_KERNELS(uint16_t, u16)
DEFINE_KERNELS(int32_t, i32)
DEFINE_KERNELS(int64_t, i64)

static size_t elem_size(ovs_label_type t) {
    return t == OVS_LABEL_U8 ? 1 : t == OVS_LABEL_U16 ? 2 : t == OVS_LABEL_I32 ? 4 : 8;
}

static const void *offset(const void *p, ovs_label_type t, int64_t i) {
    return (const char *)p + (size_t)i * elem_size(t);
}

static int any_bad(const void *x, ovs_label_type t, int64_t n, int64_t C, int has_ignore, int64_t ignore) {
    switch (t) {
    case OVS_LABEL_U8: return any_bad_u8(x, n, C, has_ignore, ignore);
    case OVS_LABEL_U16: return any_bad_u16(x, n, C, has_ignore, ignore);
    case OVS_LABEL_I32: return any_bad_i32(x, n, C, has_ignore, ignore);
    case OVS_LABEL_I64: return any_bad_i64(x, n, C, has_ignore, ignore);
    }
    return 1;
}

/* conf += counts of pixels [0, n) of the (validated) maps; idx is BLOCK int32 scratch. */
static void count_range(int64_t *conf, const void *pred, ovs_label_type pred_type, const void *gt,
                        ovs_label_type gt_type, int64_t n, int64_t C, int64_t ignore, int32_t *idx) {
    for (int64_t b0 = 0; b0 < n; b0 += BLOCK) {
        int64_t m = n - b0 < BLOCK ? n - b0 : BLOCK;
        const void *g = offset(gt, gt_type, b0), *p = offset(pred, pred_type, b0);
        switch (gt_type) {
        case OVS_LABEL_U8: gt_rows_u8(idx, g, m, C, ignore); break;
        case OVS_LABEL_U16: gt_rows_u16(idx, g, m, C, ignore); break;
        case OVS_LABEL_I32: gt_rows_i32(idx, g, m, C, ignore); break;
        case OVS_LABEL_I64: gt_rows_i64(idx, g, m, C, ignore); break;
        }
        switch (pred_type) {
        case OVS_LABEL_U8: add_pred_u8(idx, p, m); break;
        case OVS_LABEL_U16: add_pred_u16(idx, p, m); break;
        case OVS_LABEL_I32: add_pred_i32(idx, p, m); break;
        case OVS_LABEL_I64: add_pred_i64(idx, p, m); break;
        }
        int32_t cur = idx[0];
        int64_t run = 1;
        for (int64_t i = 1; i < m; i++) {
            if (idx[i] == cur) {
                run++;
            } else {
                conf[cur] += run;
                cur = idx[i];
                run = 1;
            }
        }
        conf[cur] += run;
    }
}

int ovs_confusion_accumulate(int64_t *conf, const void *pred, ovs_label_type pred_type, const void *gt,
                             ovs_label_type gt_type, int64_t P, int64_t C, int64_t ignore) {
    int st = check_args(conf, pred, pred_type, gt, gt_type, P, C);
    if (st) return st;
    const int64_t K = C + 1;
    if (K > FAST_MAX_K) return ovs_confusion_accumulate_naive(conf, pred, pred_type, gt, gt_type, P, C, ignore);
    if (P == 0) return OVS_OK;

    /* Validation pass (branch-free per block; the naive scan names the first bad pixel). */
    int bad = 0;
    for (int64_t b0 = 0; b0 < P && !bad; b0 += 1 << 16) {
        int64_t m = P - b0 < (1 << 16) ? P - b0 : (1 << 16);
        bad = any_bad(offset(gt, gt_type, b0), gt_type, m, C, 1, ignore) ||
              any_bad(offset(pred, pred_type, b0), pred_type, m, C, 0, 0);
    }
    if (bad) return first_bad(pred, pred_type, gt, gt_type, P, C, ignore);

    /* Threads only when each one has many pixels per cell of its private matrix. */
    int64_t cells = K * K;
    int threads = ovs_get_num_threads();
    int64_t by_size = P / (4 * cells > (1 << 18) ? 4 * cells : (1 << 18));
    if (threads > by_size) threads = (int)by_size;
    if (threads <= 1) {
        int32_t idx[BLOCK];
        count_range(conf, pred, pred_type, gt, gt_type, P, C, ignore, idx);
        return OVS_OK;
    }
    size_t bytes;
    if (ovs_mul3_size(&bytes, (size_t)threads, (size_t)cells, sizeof(int64_t)))
        return ovs_set_error(OVS_ERR_OVERFLOW, "confusion: private matrices overflow");
    int64_t *priv = ovs_calloc((size_t)threads * (size_t)cells, sizeof(int64_t)); /* (threads, K, K) */
    if (!priv) return ovs_set_error(OVS_ERR_NOMEM, "confusion: out of memory for %d private matrices of %lld cells",
                                    threads, (long long)cells);
    #pragma omp parallel num_threads(threads)
    {
        int t = omp_get_thread_num(), nt = omp_get_num_threads();
        int64_t lo = P * t / nt, hi = P * (t + 1) / nt;
        int32_t idx[BLOCK];
        count_range(priv + (size_t)t * (size_t)cells, offset(pred, pred_type, lo), pred_type,
                    offset(gt, gt_type, lo), gt_type, hi - lo, C, ignore, idx);
    }
    for (int t = 0; t < threads; t++) {
        const int64_t *m = priv + (size_t)t * (size_t)cells;
        for (int64_t i = 0; i < cells; i++) conf[i] += m[i];
    }
    ovs_free(priv);
    return OVS_OK;
}

/* ---------------------------------------------------------------- scores */
int ovs_confusion_scores(ovs_seg_scores *out, double *iou, double *acc, const int64_t *conf, int64_t C,
                         ovs_miou_convention convention) {
    if (C < 1) return ovs_set_error(OVS_ERR_ARG, "scores: num_classes must be >= 1, got %lld", (long long)C);
    if (convention != OVS_MIOU_PRESENT && convention != OVS_MIOU_UNION)
        return ovs_set_error(OVS_ERR_ARG, "scores: unknown mIoU convention %d", (int)convention);
    if (!out || !iou || !acc || !conf) return ovs_set_error(OVS_ERR_ARG, "scores: NULL buffer");
    const int64_t K = C + 1;
    for (int64_t i = 0; i < K * K; i++)
        if (conf[i] < 0)
            return ovs_set_error(OVS_ERR_ARG, "scores: confusion matrix entry (%lld, %lld) is negative (%lld)",
                                 (long long)(i / K), (long long)(i % K), (long long)conf[i]);
    /* Integer sums over the (C, C) block: exact, as detectron2's int64 np.sum before astype. */
    int64_t total_gt = 0, total_tp = 0, present = 0, seen = 0;
    for (int64_t c = 0; c < C; c++) {
        int64_t gt = 0;
        for (int64_t p = 0; p < C; p++) gt += conf[c * K + p];
        total_gt += gt;
        total_tp += conf[c * K + c];
    }
    double sum_iou = 0, sum_acc = 0, fw = 0;
    for (int64_t c = 0; c < C; c++) {
        int64_t gt = 0, pr = 0, tp = conf[c * K + c];
        for (int64_t p = 0; p < C; p++) gt += conf[c * K + p];
        for (int64_t g = 0; g < C; g++) pr += conf[g * K + c];
        iou[c] = acc[c] = NAN;
        if (gt + pr > 0) seen++;
        if (gt > 0) {
            double union_ = (double)gt + (double)pr - (double)tp;
            present++;
            acc[c] = (double)tp / (double)gt;
            iou[c] = (double)tp / union_;
            sum_acc += acc[c];
            sum_iou += iou[c];
            fw += iou[c] * ((double)gt / (double)total_gt);
        }
    }
    out->classes_present = present;
    out->classes_seen = seen;
    out->macc = present ? sum_acc / (double)present : NAN;
    /* detectron2's empty cases: a 0/0 mean is NaN, an empty weighted sum is 0. */
    int64_t denom = convention == OVS_MIOU_PRESENT ? present : seen;
    out->miou = denom ? sum_iou / (double)denom : NAN;
    out->fwiou = fw;
    out->pacc = total_gt ? (double)total_tp / (double)total_gt : NAN;
    return OVS_OK;
}
