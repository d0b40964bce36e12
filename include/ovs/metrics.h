/*
 * ovs metrics: the streaming confusion matrix of semantic segmentation and the scores
 * detectron2's SemSegEvaluator derives from it.
 *
 * Usage (C):
 *
 *     int64_t *conf = ovs_calloc((C + 1) * (C + 1), sizeof(int64_t));   // (C+1, C+1), zeroed
 *     for each image:
 *         ovs_confusion_accumulate(conf, pred, OVS_LABEL_I32, gt, OVS_LABEL_U8, H * W, C, 255);
 *     ovs_seg_scores s;
 *     double *iou = ..., *acc = ...;                                      // (C,) each
 *     ovs_confusion_scores(&s, iou, acc, conf, C, OVS_MIOU_PRESENT);
 *
 * Letters: C classes, P pixels. The matrix is (C+1, C+1) int64, row-major, ROWS = GROUND
 * TRUTH, COLUMNS = PREDICTION (the transpose of detectron2's internal `_conf_matrix`, whose
 * rows are predictions): conf[g * (C+1) + p] += 1 for each pixel. Ground-truth pixels equal to
 * the ignore label are counted in row C; predictions must be class indices 0..C-1, so column C
 * stays zero. Counting is exact integer arithmetic: the matrix of a dataset does not depend on
 * the order of images, the number of threads or how partial matrices are summed.
 *
 * Errors (OVS_ERR_ARG, message naming the first offending pixel and value): a ground-truth value
 * outside 0..C-1 that is not the ignore label, a prediction outside 0..C-1, C < 1, P < 0,
 * C + 1 squared overflowing.
 */
#ifndef OVS_METRICS_H
#define OVS_METRICS_H

#include "ovs/ovs.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Element type of a label map. */
typedef enum {
    OVS_LABEL_U8 = 0,
    OVS_LABEL_U16 = 1,
    OVS_LABEL_I32 = 2,
    OVS_LABEL_I64 = 3,
} ovs_label_type;

/* conf (C+1, C+1) += the confusion counts of one label-map pair of P pixels.
 *   conf          (C+1, C+1) int64, rows ground truth, columns prediction; accumulated into
 *   pred          (P,) predicted class per pixel, element type pred_type, values 0..C-1
 *   gt            (P,) ground-truth class per pixel, element type gt_type, 0..C-1 or ignore
 *   num_pixels    P
 *   num_classes   C (>= 1)
 *   ignore_label  ground-truth value counted in row C; any value (< 0 or >= C to mean anything)
 * On error `conf` is unchanged. Uses up to ovs_get_num_threads() threads when P is large
 * compared with the matrix (private matrices, summed at the end). */
int ovs_confusion_accumulate(int64_t *conf, const void *pred, ovs_label_type pred_type,
                             const void *gt, ovs_label_type gt_type, int64_t num_pixels,
                             int64_t num_classes, int64_t ignore_label);

/* The plain reference of ovs_confusion_accumulate (one pixel at a time, one thread). */
int ovs_confusion_accumulate_naive(int64_t *conf, const void *pred, ovs_label_type pred_type,
                                   const void *gt, ovs_label_type gt_type, int64_t num_pixels,
                                   int64_t num_classes, int64_t ignore_label);

/* How mIoU averages (the other scores do not depend on it):
 *   OVS_MIOU_PRESENT  mean IoU over classes present in the ground truth (detectron2 since commit
 *                     f3c1bc1, July 2022, and today). Classes that are only predicted get NaN
 *                     IoU and do not count.
 *   OVS_MIOU_UNION    sum of the IoU of classes present in the ground truth divided by the number
 *                     of classes present in the ground truth OR the prediction (detectron2 v0.6,
 *                     the last release wheel): a predicted-only class counts as IoU 0. This
 *                     equals mmsegmentation's nanmean(intersect / union). */
typedef enum {
    OVS_MIOU_PRESENT = 0,
    OVS_MIOU_UNION = 1,
} ovs_miou_convention;

/* Scores as fractions (detectron2 multiplies them by 100 when it reports them). Empty cases
 * follow detectron2's NumPy arithmetic: a mean over no class (mIoU, mACC) or over no pixel
 * (pACC) is NaN; fwIoU, an empty weighted sum, is 0. */
typedef struct {
    double miou;   /* mean IoU, see ovs_miou_convention */
    double fwiou;  /* sum over present classes of IoU_c * (GT pixels of c / all GT pixels) */
    double macc;   /* mean over present classes of TP_c / GT pixels of c */
    double pacc;   /* sum TP / all non-ignored GT pixels */
    int64_t classes_present;  /* classes with ground-truth pixels */
    int64_t classes_seen;     /* classes with ground-truth or predicted pixels */
} ovs_seg_scores;

/* Scores of a (C+1, C+1) confusion matrix (rows GT, columns prediction), exactly as
 * detectron2's SemSegEvaluator.evaluate: only the (C, C) block counts (ignored ground truth
 * and the unused prediction column C are left out).
 *   out   the summary
 *   iou   (C,) IoU_c = TP / (GT_c + PRED_c - TP) where GT_c > 0, else NaN
 *   acc   (C,) TP / GT_c where GT_c > 0, else NaN
 * OVS_ERR_ARG for C < 1 or a negative count. */
int ovs_confusion_scores(ovs_seg_scores *out, double *iou, double *acc, const int64_t *conf,
                         int64_t num_classes, ovs_miou_convention convention);

#ifdef __cplusplus
}
#endif
#endif /* OVS_METRICS_H */
