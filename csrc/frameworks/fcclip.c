/* FC-CLIP's out-of-vocabulary mask pooling (include/ovs/m2f.h, ovs_fcclip_mask_pool):
 * fc-clip's visual_prediction_forward_resnet, CLIP's attention pool run with one query per
 * mask that attends only to the mask's pixels of the dense res5 map.
 * Letters: C res5 channels, (h, w) its extent, P = h w pixels, Q masks, E output width,
 * nh heads of F = C / nh channels, G the positional grid side.
 *
 * The keys are never formed: with q_h the scaled query of head h and k_j = Wk kv_j + bk,
 *   q_h . k_j[h] = kv_j . (Wk_h^T q_h) + q_h . bk_h,
 * and the second term is the same for every pixel, which the softmax over pixels cancels; so
 * the scores are one (P, C) x (C, nh) product instead of the (P, C) x (C, C) key projection.
 * The values are one Linear, the pooling one GEMM per head, the output projection a Linear. */
#include "ovs/m2f.h"

#include <math.h>
#include <string.h>

static int pool_check(const char *op, float *out, uint8_t *valid, const ovs_fcclip_attnpool *ap,
                      const float *res5, int64_t h, int64_t w, const float *masks, int64_t Q,
                      int64_t Hm, int64_t Wm) {
    if (!ap || !out || !valid || !res5 || !masks)
        return ovs_set_error(OVS_ERR_ARG, "%s: NULL argument", op);
    if (!ap->pos || !ap->wq || !ap->bq || !ap->wk || !ap->bk || !ap->wv || !ap->bv || !ap->wc ||
        !ap->bc)
        return ovs_set_error(OVS_ERR_ARG, "%s: a weight of the attention pool is NULL", op);
    if (ap->C < 1 || ap->E < 1 || ap->G < 1 || ap->heads < 1 || ap->C % ap->heads)
        return ovs_set_error(OVS_ERR_ARG, "%s: need C, E, G >= 1 and heads dividing C, got C = %lld, "
                             "E = %lld, G = %lld, heads = %lld", op, (long long)ap->C,
                             (long long)ap->E, (long long)ap->G, (long long)ap->heads);
    if (h < 1 || w < 1 || Q < 1 || Hm < 1 || Wm < 1)
        return ovs_set_error(OVS_ERR_ARG, "%s: empty input: res5 %lldx%lld, masks (%lld, %lld, %lld)",
                             op, (long long)h, (long long)w, (long long)Q, (long long)Hm,
                             (long long)Wm);
    size_t n;
    if (ovs_mul_size(&n, (size_t)h * (size_t)w, (size_t)ap->C) ||
        ovs_mul_size(&n, n, 4 * sizeof(float)) ||
        ovs_mul_size(&n, (size_t)Q, (size_t)h * (size_t)w + (size_t)ap->C + (size_t)Hm * (size_t)Wm))
        return ovs_set_error(OVS_ERR_OVERFLOW, "%s: sizes overflow", op);
    return OVS_OK;
}

/* mr (Q, P) = the mask logits resized to res5's extent; valid[q] = any pixel > 0. */
static int resized_masks(float *mr, uint8_t *valid, const float *masks, int64_t Q, int64_t Hm,
                         int64_t Wm, int64_t h, int64_t w, int naive) {
    int st = (naive ? ovs_resize_bilinear_naive : ovs_resize_bilinear)(mr, masks, Q, Hm, Wm, h,
                                                                       w, 0);
    if (st) return st;
    for (int64_t q = 0; q < Q; q++) {
        valid[q] = 0;
        for (int64_t j = 0; j < h * w; j++) valid[q] |= mr[q * h * w + j] > 0.0f;
    }
    return OVS_OK;
}

/* kv (P, C) = res5^T + the spatial positional embedding resized to (h, w). pr: (C, P) scratch,
 * sp: (C, G*G) scratch. */
static int keys_values(float *kv, float *pr, float *sp, const ovs_fcclip_attnpool *ap,
                       const float *res5, int64_t h, int64_t w, int naive) {
    const int64_t C = ap->C, G = ap->G, P = h * w;
    for (int64_t i = 0; i < G * G; i++)
        for (int64_t c = 0; c < C; c++) sp[c * G * G + i] = ap->pos[(1 + i) * C + c];
    int st = (naive ? ovs_resize_bilinear_naive : ovs_resize_bilinear)(pr, sp, C, G, G, h, w, 0);
    if (st) return st;
    for (int64_t j = 0; j < P; j++)
        for (int64_t c = 0; c < C; c++) kv[j * C + c] = res5[c * P + j] + pr[c * P + j];
    return OVS_OK;
}

/* qd (C,) = (Wq (mean_j res5[:, j] + pos[0]) + bq) / sqrt(F), in double. */
static void scaled_query(double *qd, double *mean, const ovs_fcclip_attnpool *ap,
                         const float *res5, int64_t P) {
    const int64_t C = ap->C;
    const double scale = 1.0 / sqrt((double)(C / ap->heads));
    for (int64_t c = 0; c < C; c++) {
        double s = 0.0;
        for (int64_t j = 0; j < P; j++) s += res5[c * P + j];
        mean[c] = s / (double)P + ap->pos[c];
    }
    for (int64_t o = 0; o < C; o++) {
        double s = ap->bq[o];
        for (int64_t c = 0; c < C; c++) s += (double)ap->wq[o * C + c] * mean[c];
        qd[o] = s * scale;
    }
}

/* a (P,) = softmax of s[j * ld] over the pixels j with m[j] > 0, 0 elsewhere (all 0 for an
 * empty mask: torch gives NaN there, which FC-CLIP never reads). */
static void masked_softmax(float *a, const float *s, int64_t ld, const float *m, int64_t P) {
    float mx = -INFINITY;
    for (int64_t j = 0; j < P; j++)
        if (m[j] > 0.0f && s[j * ld] > mx) mx = s[j * ld];
    double sum = 0.0;
    for (int64_t j = 0; j < P; j++) {
        a[j] = m[j] > 0.0f ? expf(s[j * ld] - mx) : 0.0f;
        sum += a[j];
    }
    const float inv = sum > 0.0 ? (float)(1.0 / sum) : 0.0f;
    for (int64_t j = 0; j < P; j++) a[j] *= inv;
}

int ovs_fcclip_mask_pool(float *out, uint8_t *valid, const ovs_fcclip_attnpool *ap,
                         const float *res5, int64_t h, int64_t w, const float *masks, int64_t Q,
                         int64_t Hm, int64_t Wm) {
    static const char op[] = "ovs_fcclip_mask_pool";
    int st = pool_check(op, out, valid, ap, res5, h, w, masks, Q, Hm, Wm);
    if (st) return st;
    const int64_t C = ap->C, E = ap->E, G = ap->G, nh = ap->heads, F = C / nh, P = h * w;
    const size_t floats = (size_t)Q * P + 3 * (size_t)P * C + (size_t)C * G * G + (size_t)C * nh +
                          (size_t)P * nh + (size_t)Q * P + (size_t)Q * C;
    float *buf = ovs_malloc(floats * sizeof(float));
    double *qd = ovs_malloc(2 * (size_t)C * sizeof(double));
    if (!buf || !qd) {
        st = ovs_set_error(OVS_ERR_NOMEM, "%s: out of memory", op);
        goto done;
    }
    float *mr = buf;                       /* (Q, P) resized mask logits */
    float *kv = mr + (size_t)Q * P;        /* (P, C) keys and values before projection */
    float *v = kv + (size_t)P * C;         /* (P, C) values */
    float *pr = v + (size_t)P * C;         /* (C, P) resized positional embedding */
    float *sp = pr + (size_t)P * C;        /* (C, G*G) */
    float *kf = sp + (size_t)C * G * G;    /* (C, nh) folded keys */
    float *s = kf + (size_t)C * nh;        /* (P, nh) scores */
    float *a = s + (size_t)P * nh;         /* (Q, P) one head's attention */
    float *pooled = a + (size_t)Q * P;     /* (Q, C) */
    if ((st = resized_masks(mr, valid, masks, Q, Hm, Wm, h, w, 0)) ||
        (st = keys_values(kv, pr, sp, ap, res5, h, w, 0)))
        goto done;
    scaled_query(qd, qd + C, ap, res5, P);
    for (int64_t c = 0; c < C; c++)
        for (int64_t hh = 0; hh < nh; hh++) {
            double acc = 0.0;
            for (int64_t f = 0; f < F; f++)
                acc += qd[hh * F + f] * (double)ap->wk[(hh * F + f) * C + c];
            kf[c * nh + hh] = (float)acc;
        }
    const ovs_matrix wv = ovs_matrix_dense(ap->wv, C, C), wc = ovs_matrix_dense(ap->wc, E, C);
    if ((st = ovs_matmul(s, nh, kv, C, kf, nh, P, C, nh, 1.0f, 0.0f)) ||
        (st = ovs_linear_forward(v, kv, &wv, ap->bv, NULL, P, C, C, OVS_ACT_NONE)))
        goto done;
    const int threads = ovs_get_num_threads();
    for (int64_t hh = 0; hh < nh; hh++) {
#pragma omp parallel for schedule(static) num_threads(threads) if (Q * P >= 16384)
        for (int64_t q = 0; q < Q; q++) masked_softmax(a + q * P, s + hh, nh, mr + q * P, P);
        if ((st = ovs_matmul(pooled + hh * F, C, a, P, v + hh * F, C, Q, P, F, 1.0f, 0.0f)))
            goto done;
    }
    st = ovs_linear_forward(out, pooled, &wc, ap->bc, NULL, Q, C, E, OVS_ACT_NONE);
done:
    ovs_free(buf);
    ovs_free(qd);
    return st;
}

int ovs_fcclip_mask_pool_naive(float *out, uint8_t *valid, const ovs_fcclip_attnpool *ap,
                               const float *res5, int64_t h, int64_t w, const float *masks,
                               int64_t Q, int64_t Hm, int64_t Wm) {
    static const char op[] = "ovs_fcclip_mask_pool_naive";
    int st = pool_check(op, out, valid, ap, res5, h, w, masks, Q, Hm, Wm);
    if (st) return st;
    const int64_t C = ap->C, E = ap->E, G = ap->G, nh = ap->heads, F = C / nh, P = h * w;
    float *mr = ovs_malloc((size_t)Q * P * sizeof(float));
    float *kv = ovs_malloc((size_t)P * C * sizeof(float));
    float *pr = ovs_malloc((size_t)P * C * sizeof(float));
    float *sp = ovs_malloc((size_t)C * G * G * sizeof(float));
    double *k = ovs_malloc((size_t)P * C * sizeof(double));
    double *v = ovs_malloc((size_t)P * C * sizeof(double));
    double *qd = ovs_malloc(2 * (size_t)C * sizeof(double));
    double *att = ovs_malloc((size_t)P * sizeof(double));
    double *pooled = ovs_malloc((size_t)C * sizeof(double));
    if (!mr || !kv || !pr || !sp || !k || !v || !qd || !att || !pooled) {
        st = ovs_set_error(OVS_ERR_NOMEM, "%s: out of memory", op);
        goto done;
    }
    if ((st = resized_masks(mr, valid, masks, Q, Hm, Wm, h, w, 1)) ||
        (st = keys_values(kv, pr, sp, ap, res5, h, w, 1)))
        goto done;
    scaled_query(qd, qd + C, ap, res5, P);
    for (int64_t j = 0; j < P; j++)   /* k = kv Wk^T + bk, v = kv Wv^T + bv */
        for (int64_t o = 0; o < C; o++) {
            double sk = ap->bk[o], sv = ap->bv[o];
            for (int64_t c = 0; c < C; c++) {
                sk += (double)kv[j * C + c] * ap->wk[o * C + c];
                sv += (double)kv[j * C + c] * ap->wv[o * C + c];
            }
            k[j * C + o] = sk;
            v[j * C + o] = sv;
        }
    for (int64_t q = 0; q < Q; q++) {
        for (int64_t hh = 0; hh < nh; hh++) {
            double mx = -INFINITY, sum = 0.0;
            for (int64_t j = 0; j < P; j++) {
                double s = 0.0;
                for (int64_t f = 0; f < F; f++) s += qd[hh * F + f] * k[j * C + hh * F + f];
                att[j] = s;
                if (mr[q * P + j] > 0.0f && s > mx) mx = s;
            }
            for (int64_t j = 0; j < P; j++) {
                att[j] = mr[q * P + j] > 0.0f ? exp(att[j] - mx) : 0.0;
                sum += att[j];
            }
            for (int64_t f = 0; f < F; f++) {
                double acc = 0.0;
                for (int64_t j = 0; j < P; j++) acc += att[j] * v[j * C + hh * F + f];
                pooled[hh * F + f] = sum > 0.0 ? acc / sum : 0.0;
            }
        }
        for (int64_t e = 0; e < E; e++) {
            double acc = ap->bc[e];
            for (int64_t c = 0; c < C; c++) acc += (double)ap->wc[e * C + c] * pooled[c];
            out[q * E + e] = (float)acc;
        }
    }
done:
    ovs_free(mr);
    ovs_free(kv);
    ovs_free(pr);
    ovs_free(sp);
    ovs_free(k);
    ovs_free(v);
    ovs_free(qd);
    ovs_free(att);
    ovs_free(pooled);
    return st;
}
