/* MaskFormer's semantic inference (include/ovs/m2f.h, ovs_mask_semantic), as Han et al.
 * (OpenTrans) and FC-CLIP run it after the transformer decoder, band by band of output rows.
 * Letters: Q queries, C classes, (h, w) mask logits, (Hu, Wu) the upsampled (padded input)
 * size, (Hc, Wc) the crop, (H, W) the output; a band is rows [y0, y1) of the output.
 *
 * Per band: the crop's rows that the band's resize taps read are upsampled from the mask
 * logits (only the crop's columns), resized to the band's rows (skipped when the crop is the
 * output size: a same-size bilinear resize is the identity), sigmoid, then one GEMM
 * probs^T (C, Q) @ sigmoid (Q, band pixels) into out[:, y0:y1]. Band bounds depend on the
 * shapes only, and every value is computed by the same expression as ovs_resize_bilinear, so
 * the result is that of the whole-array computation and independent of the thread count. */
#include "ovs/m2f.h"

#include <string.h>

/* Output pixels per band: the (Q, band) sigmoid buffer is 8 MiB for FC-CLIP's 250 queries. */
#define SEM_BAND_PIXELS 8192

/* One axis's bilinear taps (n outputs of an in -> out resize) in one allocation. */
typedef struct {
    int64_t *i0, *i1;
    float *w0, *w1;
} sem_taps;

static int taps_alloc(sem_taps *t, int64_t in, int64_t out, int64_t n) {
    size_t bytes = (size_t)n * (2 * sizeof(int64_t) + 2 * sizeof(float));
    char *p = ovs_malloc(bytes ? bytes : 1);
    if (!p) return ovs_set_error(OVS_ERR_NOMEM, "ovs_mask_semantic: out of memory (taps)");
    t->i0 = (int64_t *)p;
    t->i1 = t->i0 + n;
    t->w0 = (float *)(t->i1 + n);
    t->w1 = t->w0 + n;
    return ovs_resize_bilinear_taps(t->i0, t->i1, t->w0, t->w1, in, out, n, 0);
}

/* Row r of a bilinear resize of plane src (rows of `ld` floats, its first row being source
 * row `first`), taps ry (row) and cx (columns 0..n), as ovs_resize_bilinear evaluates it. */
static inline void resize_row(float *dst, const float *src, int64_t first, int64_t ld,
                              const sem_taps *ry, int64_t r, const sem_taps *cx, int64_t n) {
    const float *r0 = src + (ry->i0[r] - first) * ld, *r1 = src + (ry->i1[r] - first) * ld;
    const float wy0 = ry->w0[r], wy1 = ry->w1[r];
    for (int64_t j = 0; j < n; j++)
        dst[j] = wy0 * (cx->w0[j] * r0[cx->i0[j]] + cx->w1[j] * r0[cx->i1[j]]) +
                 wy1 * (cx->w0[j] * r1[cx->i0[j]] + cx->w1[j] * r1[cx->i1[j]]);
}

static int semantic_check(const char *op, const void *out, const float *masks, const float *probs,
                          int64_t Q, int64_t h, int64_t w, int64_t C, const int64_t up[2],
                          const int64_t crop[2], const int64_t size[2]) {
    if (!up || !crop || !size)
        return ovs_set_error(OVS_ERR_ARG, "%s: up, crop and size must not be NULL", op);
    if (Q < 1 || C < 1 || h < 1 || w < 1)
        return ovs_set_error(OVS_ERR_ARG, "%s: Q = %lld, C = %lld, h = %lld, w = %lld must be >= 1",
                             op, (long long)Q, (long long)C, (long long)h, (long long)w);
    if (up[0] < 1 || up[1] < 1 || size[0] < 1 || size[1] < 1)
        return ovs_set_error(OVS_ERR_ARG, "%s: the upsampled size %lldx%lld and the output size "
                             "%lldx%lld must be positive", op, (long long)up[0], (long long)up[1],
                             (long long)size[0], (long long)size[1]);
    if (crop[0] < 1 || crop[1] < 1 || crop[0] > up[0] || crop[1] > up[1])
        return ovs_set_error(OVS_ERR_ARG, "%s: the crop %lldx%lld must lie inside the upsampled "
                             "%lldx%lld", op, (long long)crop[0], (long long)crop[1],
                             (long long)up[0], (long long)up[1]);
    size_t n;
    if (ovs_mul_size(&n, (size_t)C, (size_t)size[0]) || ovs_mul_size(&n, n, (size_t)size[1]) ||
        ovs_mul_size(&n, n, sizeof(float)) || ovs_mul_size(&n, (size_t)Q, (size_t)up[0]) ||
        ovs_mul_size(&n, n, (size_t)up[1]) || ovs_mul_size(&n, n, sizeof(float)))
        return ovs_set_error(OVS_ERR_OVERFLOW, "%s: sizes overflow", op);
    if (!out || !masks || !probs)
        return ovs_set_error(OVS_ERR_ARG, "%s: out, masks and probs must not be NULL", op);
    return OVS_OK;
}

/* labels[p] = the first c of the largest scores[c * ld + p], for p < n (numpy's argmax). */
static void argmax_columns(int32_t *labels, const float *scores, int64_t C, int64_t ld, int64_t n) {
    for (int64_t p = 0; p < n; p++) {
        float best = scores[p];
        int32_t arg = 0;
        for (int64_t c = 1; c < C; c++)
            if (scores[c * ld + p] > best) {
                best = scores[c * ld + p];
                arg = (int32_t)c;
            }
        labels[p] = arg;
    }
}

/* The band loop of ovs_mask_semantic (out) and ovs_mask_semantic_labels (labels: each band's
 * (C, band) scores go to a band buffer, then their argmax). */
static int semantic_bands(const char *op, float *out, int32_t *labels, const float *masks,
                          const float *probs, int64_t Q, int64_t h, int64_t w, int64_t C,
                          const int64_t up[2], const int64_t crop[2], const int64_t size[2]) {
    int st = semantic_check(op, labels ? (const void *)labels : (const void *)out, masks, probs, Q, h, w, C, up, crop,
                            size);
    if (st) return st;
    if (labels && C > INT32_MAX)
        return ovs_set_error(OVS_ERR_ARG, "%s: %lld classes do not fit int32 labels", op, (long long)C);
    const int64_t Hc = crop[0], Wc = crop[1], H = size[0], W = size[1];
    const int identity = Hc == H && Wc == W;
    const int64_t band = W >= SEM_BAND_PIXELS ? 1 : (SEM_BAND_PIXELS + W - 1) / W;
    /* crop rows one band reads: at most band * Hc / H + 2 (the taps are monotone) */
    const int64_t span = identity ? band : (band * Hc + H - 1) / H + 3;
    sem_taps uy = {0}, ux = {0}, ry = {0}, rx = {0};
    float *pt = NULL, *mid = NULL, *sig = NULL, *sc = NULL;
    if ((st = taps_alloc(&uy, h, up[0], Hc)) || (st = taps_alloc(&ux, w, up[1], Wc)) ||
        (!identity && ((st = taps_alloc(&ry, Hc, H, H)) || (st = taps_alloc(&rx, Wc, W, W)))))
        goto done;
    pt = ovs_malloc((size_t)C * (size_t)Q * sizeof(float));
    sig = ovs_malloc((size_t)Q * (size_t)(band < H ? band : H) * (size_t)W * sizeof(float));
    if (!identity) mid = ovs_malloc((size_t)Q * (size_t)(span < Hc ? span : Hc) * (size_t)Wc *
                                     sizeof(float));
    if (labels) sc = ovs_malloc((size_t)C * (size_t)(band < H ? band : H) * (size_t)W * sizeof(float));
    if (!pt || !sig || (!identity && !mid) || (labels && !sc)) {
        st = ovs_set_error(OVS_ERR_NOMEM, "%s: out of memory (band buffers)", op);
        goto done;
    }
    for (int64_t q = 0; q < Q; q++)
        for (int64_t c = 0; c < C; c++) pt[c * Q + q] = probs[q * C + c];
    const int threads = ovs_get_num_threads();
    for (int64_t y0 = 0; y0 < H; y0 += band) {
        const int64_t nb = H - y0 < band ? H - y0 : band, npix = nb * W;
        if (identity) {   /* crop rows y0..y0+nb are the band's rows */
#pragma omp parallel for schedule(static) num_threads(threads) if (Q * npix >= 32768)
            for (int64_t t = 0; t < Q * nb; t++) {
                const int64_t q = t / nb, y = t % nb;
                resize_row(sig + (q * nb + y) * W, masks + q * h * w, 0, w, &uy, y0 + y, &ux, Wc);
            }
        } else {
            const int64_t r0 = ry.i0[y0], nr = ry.i1[y0 + nb - 1] - r0 + 1;
            if (nr > (span < Hc ? span : Hc)) {   /* cannot happen: the taps are monotone */
                st = ovs_set_error(OVS_ERR_ARG, "%s: band rows %lld..%lld read %lld crop rows, "
                                   "over the %lld planned", op, (long long)y0,
                                   (long long)(y0 + nb), (long long)nr, (long long)span);
                goto done;
            }
#pragma omp parallel for schedule(static) num_threads(threads) if (Q * nr * Wc >= 32768)
            for (int64_t t = 0; t < Q * nr; t++) {
                const int64_t q = t / nr, r = t % nr;
                resize_row(mid + (q * nr + r) * Wc, masks + q * h * w, 0, w, &uy, r0 + r, &ux, Wc);
            }
#pragma omp parallel for schedule(static) num_threads(threads) if (Q * npix >= 32768)
            for (int64_t t = 0; t < Q * nb; t++) {
                const int64_t q = t / nb, y = t % nb;
                resize_row(sig + (q * nb + y) * W, mid + q * nr * Wc, r0, Wc, &ry, y0 + y, &rx, W);
            }
        }
        if ((st = ovs_sigmoid_inplace(sig, Q * npix))) goto done;
        if (!labels) {
            if ((st = ovs_matmul(out + y0 * W, H * W, pt, Q, sig, npix, C, Q, npix, 1.0f, 0.0f)))
                goto done;
            continue;
        }
        if ((st = ovs_matmul(sc, npix, pt, Q, sig, npix, C, Q, npix, 1.0f, 0.0f))) goto done;
        argmax_columns(labels + y0 * W, sc, C, npix, npix);
    }
done:
    OVS_FREE_ALL(uy.i0, ux.i0, ry.i0, rx.i0, pt, mid, sig, sc);
    return st;
}

int ovs_mask_semantic(float *out, const float *masks, const float *probs, int64_t Q, int64_t h,
                      int64_t w, int64_t C, const int64_t up[2], const int64_t crop[2],
                      const int64_t size[2]) {
    return semantic_bands("ovs_mask_semantic", out, NULL, masks, probs, Q, h, w, C, up, crop, size);
}

int ovs_mask_semantic_labels(int32_t *labels, const float *masks, const float *probs, int64_t Q,
                             int64_t h, int64_t w, int64_t C, const int64_t up[2],
                             const int64_t crop[2], const int64_t size[2]) {
    return semantic_bands("ovs_mask_semantic_labels", NULL, labels, masks, probs, Q, h, w, C, up,
                          crop, size);
}

int ovs_mask_semantic_naive(float *out, const float *masks, const float *probs, int64_t Q,
                            int64_t h, int64_t w, int64_t C, const int64_t up[2],
                            const int64_t crop[2], const int64_t size[2]) {
    static const char op[] = "ovs_mask_semantic_naive";
    int st = semantic_check(op, out, masks, probs, Q, h, w, C, up, crop, size);
    if (st) return st;
    const int64_t Hu = up[0], Wu = up[1], Hc = crop[0], Wc = crop[1], H = size[0], W = size[1];
    ovs_arena a;   /* the four buffers below, freed together */
    ovs_arena_init(&a);
    float *full = ovs_arena_floats(&a, (size_t)Q * (size_t)Hu * (size_t)Wu);
    float *cr = ovs_arena_floats(&a, (size_t)Q * (size_t)Hc * (size_t)Wc);
    float *res = ovs_arena_floats(&a, (size_t)Q * (size_t)H * (size_t)W);
    float *pt = ovs_arena_floats(&a, (size_t)C * (size_t)Q);
    if (!full || !cr || !res || !pt) {
        st = ovs_set_error(OVS_ERR_NOMEM, "%s: out of memory", op);
        goto done;
    }
    if ((st = ovs_resize_bilinear_naive(full, masks, Q, h, w, Hu, Wu, 0))) goto done;
    for (int64_t q = 0; q < Q; q++)
        for (int64_t y = 0; y < Hc; y++)
            memcpy(cr + (q * Hc + y) * Wc, full + (q * Hu + y) * Wu, (size_t)Wc * sizeof(float));
    if ((st = ovs_resize_bilinear_naive(res, cr, Q, Hc, Wc, H, W, 0)) ||
        (st = ovs_act_forward_naive(res, Q * H * W, OVS_ACT_SIGMOID)))
        goto done;
    for (int64_t q = 0; q < Q; q++)
        for (int64_t c = 0; c < C; c++) pt[c * Q + q] = probs[q * C + c];
    st = ovs_matmul_naive(out, H * W, pt, Q, res, H * W, C, Q, H * W, 1.0f, 0.0f);
done:
    ovs_arena_free(&a);
    return st;
}

int ovs_mask_semantic_labels_naive(int32_t *labels, const float *masks, const float *probs,
                                   int64_t Q, int64_t h, int64_t w, int64_t C,
                                   const int64_t up[2], const int64_t crop[2],
                                   const int64_t size[2]) {
    static const char op[] = "ovs_mask_semantic_labels_naive";
    int st = semantic_check(op, labels, masks, probs, Q, h, w, C, up, crop, size);
    if (st) return st;
    const int64_t n = size[0] * size[1];
    float *scores = ovs_malloc((size_t)C * (size_t)n * sizeof(float));
    if (!scores) return ovs_set_error(OVS_ERR_NOMEM, "%s: out of memory", op);
    if (!(st = ovs_mask_semantic_naive(scores, masks, probs, Q, h, w, C, up, crop, size)))
        argmax_columns(labels, scores, C, n, n);
    ovs_free(scores);
    return st;
}
