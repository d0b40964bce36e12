/* The segmentation pipeline: normalise, resize, slide windows, cosine logits, upsample, average;
 * then the final resize to the input size fused with softmax / argmax. */
#include "methods/internal.h"
#include "ops/ops_internal.h"

#include <float.h>
#include <math.h>
#include <string.h>
#if defined(__AVX__)
#include <immintrin.h>
#endif

/* The bilinear taps (ovs_resize_bilinear_taps, as ovs_resize_bilinear with align_corners=False)
 * of the first H rows and W columns of an (in_h, in_w) -> (out_h, out_w) upsampling. */
typedef struct {
    int64_t *y0, *y1, *x0, *x1;  /* (H,), (H,), (W,), (W,) */
    float *ly0, *ly1, *lx0, *lx1;
} coeffs;

static int coeffs_alloc(coeffs *c, ovs_arena *a, int64_t in_h, int64_t in_w, int64_t out_h,
                        int64_t out_w, int64_t H, int64_t W) {
    /* int64 arrays are carved from float buffers (2 floats each) */
    c->y0 = (int64_t *)ovs_arena_floats(a, (size_t)H * 2);
    c->y1 = (int64_t *)ovs_arena_floats(a, (size_t)H * 2);
    c->x0 = (int64_t *)ovs_arena_floats(a, (size_t)W * 2);
    c->x1 = (int64_t *)ovs_arena_floats(a, (size_t)W * 2);
    c->ly0 = ovs_arena_floats(a, (size_t)H);
    c->ly1 = ovs_arena_floats(a, (size_t)H);
    c->lx0 = ovs_arena_floats(a, (size_t)W);
    c->lx1 = ovs_arena_floats(a, (size_t)W);
    if (!c->y0 || !c->y1 || !c->x0 || !c->x1 || !c->ly0 || !c->ly1 || !c->lx0 || !c->lx1)
        return OVS_ERR_NOMEM;
    int rc = ovs_resize_bilinear_taps(c->y0, c->y1, c->ly0, c->ly1, in_h, out_h, H, 0);
    return rc ? rc : ovs_resize_bilinear_taps(c->x0, c->x1, c->lx0, c->lx1, in_w, out_w, W, 0);
}

static inline float interp(const float *plane, int64_t w, const coeffs *c, int64_t Y, int64_t X) {
    const float *r0 = plane + c->y0[Y] * w, *r1 = plane + c->y1[Y] * w;
    return c->ly0[Y] * (c->lx0[X] * r0[c->x0[X]] + c->lx1[X] * r0[c->x1[X]]) +
           c->ly1[Y] * (c->lx0[X] * r1[c->x0[X]] + c->lx1[X] * r1[c->x1[X]]);
}

static int check_up(int64_t C, int64_t h, int64_t w, int64_t H, int64_t W, float logit_scale) {
    if (C <= 0 || h <= 0 || w <= 0 || H <= 0 || W <= 0)
        return ovs_set_error(OVS_ERR_ARG, "empty logits or output size");
    if (!isfinite(logit_scale)) return ovs_set_error(OVS_ERR_ARG, "logit_scale must be finite");
    return OVS_OK;
}

/* ---------------------------------------------------------------- block bounds
 * The label stage (below) keeps per block of LB x LB low-resolution cells only the classes that
 * can win in it, from each class's max / min over the block's (LB + 1)^2 corner values: value
 * rows r0 = ib LB .. r1 = min(r0 + LB, h - 1), columns likewise. class_block_row computes them
 * for one class and block row, with a non-finite flag (a sum of 0 * v: 0, or NaN); the label
 * stage streams the logits through it, or takes them precomputed (block_bounds) from the pass
 * that wrote the logits (accumulate_windows), which gives the same floats by construction. */
#define LB 8 /* cells per block side */

typedef struct {
    float *mx, *mn, *nan; /* (nbr, C, nb) each: block row, class, block */
    int64_t nbr, nb;
} block_bounds;

static inline int64_t block_rows(int64_t h) { return (h + LB - 1) / LB; }

/* The bounds of (C, h, w) logits in one flat buffer of ovs_seg_block_bounds_floats(C, h, w). */
static block_bounds bounds_view(float *buf, int64_t C, int64_t h, int64_t w) {
    const size_t n = (size_t)block_rows(h) * C * block_rows(w);
    return (block_bounds){.mx = buf, .mn = buf + n, .nan = buf + 2 * n, .nbr = block_rows(h), .nb = block_rows(w)};
}

static inline float min4(float a, float b, float c, float d) {
    const float x = a < b ? a : b, y = c < d ? c : d;
    return x < y ? x : y;
}
static inline float max4(float a, float b, float c, float d) {
    const float x = a > b ? a : b, y = c > d ? c : d;
    return x > y ? x : y;
}

#define CBR_CHUNK 32 /* columns kept in registers down the rows */
/* One class's column extrema over nrows rows (stride w), n <= CBR_CHUNK columns. */
static inline void column_bounds(const float *restrict p, int64_t nrows, int64_t w, int64_t n,
                                 float *restrict cmx, float *restrict cmn, float *restrict cnan) {
    float mx[CBR_CHUNK], mn[CBR_CHUNK], nan[CBR_CHUNK];
    for (int64_t j = 0; j < n; j++) {
        mx[j] = mn[j] = p[j];
        nan[j] = 0.0f * p[j];
    }
    for (int64_t r = 1; r < nrows; r++) {
        const float *restrict q = p + r * w;
        for (int64_t j = 0; j < n; j++) {
            const float v = q[j];
            mx[j] = v > mx[j] ? v : mx[j];
            mn[j] = v < mn[j] ? v : mn[j];
            nan[j] += 0.0f * v;
        }
    }
    for (int64_t j = 0; j < n; j++) cmx[j] = mx[j], cmn[j] = mn[j], cnan[j] = nan[j];
}

/* One class's block row: p points at its value row r0 (row stride w), nrows = r1 - r0 + 1; cmx,
 * cmn, cnan (w,) scratch; bx, bn, bnan (nb,) out. Plain comparisons (not fminf) so the loops
 * vectorise; 0 * v flags NaN and inf. */
static void class_block_row(const float *p, int64_t nrows, int64_t w, int64_t nb, float *cmx, float *cmn,
                            float *cnan, float *bx, float *bn, float *bnan) {
    /* per column over the rows, CBR_CHUNK columns at a time (a constant trip count: registers) */
    int64_t j0 = 0;
    for (; j0 + CBR_CHUNK <= w; j0 += CBR_CHUNK)
        column_bounds(p + j0, nrows, w, CBR_CHUNK, cmx + j0, cmn + j0, cnan + j0);
    if (j0 < w) column_bounds(p + j0, nrows, w, w - j0, cmx + j0, cmn + j0, cnan + j0);
    /* per block over its LB + 1 columns: a tree (independent chains) for full blocks; max and
     * min of finite values do not depend on the order, and a non-finite value makes the flag
     * NaN in any order (the block then keeps every class, whatever its max and min) */
    for (int64_t b = 0; b < nb; b++) {
        const int64_t c0 = b * LB, c1 = c0 + LB < w - 1 ? c0 + LB : w - 1;
        if (c1 - c0 == LB) {
            const float *x = cmx + c0, *m = cmn + c0, *z = cnan + c0;
            bx[b] = max4(max4(x[0], x[1], x[2], x[3]), max4(x[4], x[5], x[6], x[7]), x[8], x[8]);
            bn[b] = min4(min4(m[0], m[1], m[2], m[3]), min4(m[4], m[5], m[6], m[7]), m[8], m[8]);
            bnan[b] = (((z[0] + z[1]) + (z[2] + z[3])) + ((z[4] + z[5]) + (z[6] + z[7]))) + z[8];
            continue;
        }
        float mx = cmx[c0], mn = cmn[c0], nan = cnan[c0];
        for (int64_t j = c0 + 1; j <= c1; j++) {
            mx = cmx[j] > mx ? cmx[j] : mx;
            mn = cmn[j] < mn ? cmn[j] : mn;
            nan += cnan[j];
        }
        bx[b] = mx, bn[b] = mn, bnan[b] = nan;
    }
}

/* Where accumulate_windows puts each class's (Hp, Wp) plane: at logits + k Hp Wp, or (to != NULL)
 * bilinearly resized (ovs_resize_bilinear, align_corners=False, per plane as for all planes at
 * once) into to->out + k OH OW from a per-thread plane, counting non-finite plane values. */
typedef struct {
    float *out;
    int64_t OH, OW;
    int64_t nonfinite;
} resize_target;

/* logits (C, Hp, Wp) from the nwin windows' (C, gh, gw) logits smalls (window j's at
 * smalls + j C gh gw, its origin (wy[j], wx[j])): each upsampled bilinearly by the taps c (every
 * window has the same size), cropped to (h, w), summed in window order, divided by count. Per
 * element exactly what the element-wise form computes, 0 + interp_0 + interp_1 + ... then / count:
 * interp() separably, per class the horizontal pass of each source row once (lx0 a + lx1 b),
 * then per output row ly0 R[y0] + ly1 R[y1] - the same float operations in the same order (no
 * contraction under -std=c11), on contiguous rows that vectorise. Per class a band of rows at a
 * time (zero, every window's rows of the band, divide) so each value is written to memory once.
 * Classes in parallel; per thread one (nwin, gh, w) buffer. */
static int accumulate_windows(float *logits, int64_t C, int64_t Hp, int64_t Wp, const float *count,
                              const float *smalls, int64_t nwin, const int64_t *wy, const int64_t *wx,
                              int64_t gh, int64_t gw, int64_t h, int64_t w, const coeffs *c,
                              const block_bounds *bb, resize_target *to) {
    const int64_t G = gh * gw, HW = Hp * Wp;
    /* about 32 KiB of output rows, whole blocks of rows when the bounds are taken */
    int64_t band = Wp < 8192 ? 8192 / Wp : 1;
    if (bb) band = band > LB ? band / LB * LB : LB;
    ovs_region_error re = OVS_REGION_ERROR_INIT;
#pragma omp parallel num_threads(ovs_get_num_threads()) if (C > 1)
    {
        float *R = ovs_malloc(((size_t)nwin * gh * w + (bb ? 3 * (size_t)Wp : 0) + (to ? (size_t)HW : 0)) *
                              sizeof(float));
        if (!R) ovs_region_fail(&re, OVS_ERR_NOMEM, "window upsample: row buffers of %lld windows: %s",
                                (long long)nwin, ovs_last_error());
        float *col = R ? R + (size_t)nwin * gh * w : NULL;      /* (3, Wp) class_block_row scratch */
        float *own = to && R ? col + (bb ? 3 * Wp : 0) : NULL;  /* (Hp, Wp) this thread's plane */
        int64_t bad = 0;
#pragma omp for schedule(static)
        for (int64_t k = 0; k < C; k++) {
            if (!R) continue;
            for (int64_t j = 0; j < nwin; j++) {
                const float *plane = smalls + ((size_t)j * C + k) * G;
                float *Rj = R + (size_t)j * gh * w;
                for (int64_t i = 0; i < gh; i++) {
                    const float *src = plane + i * gw;
                    float *r = Rj + i * w;
                    for (int64_t x = 0; x < w; x++)
                        r[x] = c->lx0[x] * src[c->x0[x]] + c->lx1[x] * src[c->x1[x]];
                }
            }
            float *out = to ? own : logits + (size_t)k * HW;
            int64_t ib = 0; /* the next block row to bound */
            for (int64_t Y0 = 0; Y0 < Hp; Y0 += band) {
                const int64_t Y1 = Y0 + band < Hp ? Y0 + band : Hp;
                memset(out + Y0 * Wp, 0, (size_t)(Y1 - Y0) * Wp * sizeof(float));
                for (int64_t j = 0; j < nwin; j++) {
                    const int64_t ya = Y0 > wy[j] ? Y0 : wy[j], yb = Y1 < wy[j] + h ? Y1 : wy[j] + h;
                    const float *Rj = R + (size_t)j * gh * w;
                    for (int64_t Y = ya; Y < yb; Y++) {
                        const int64_t y = Y - wy[j];
                        const float *r0 = Rj + c->y0[y] * w, *r1 = Rj + c->y1[y] * w;
                        const float a = c->ly0[y], b = c->ly1[y];
                        float *row = out + Y * Wp + wx[j];
                        for (int64_t x = 0; x < w; x++) row[x] += a * r0[x] + b * r1[x];
                    }
                }
                float *o = out + Y0 * Wp;
                const float *n = count + Y0 * Wp;
                for (int64_t i = 0; i < (Y1 - Y0) * Wp; i++) o[i] /= n[i];
                /* block rows whose last value row is done, while the band is in cache */
                for (; bb && ib < bb->nbr; ib++) {
                    const int64_t r0 = ib * LB, r1 = r0 + LB < Hp - 1 ? r0 + LB : Hp - 1;
                    if (r1 >= Y1) break;
                    const size_t at = ((size_t)ib * C + k) * bb->nb;
                    class_block_row(out + r0 * Wp, r1 - r0 + 1, Wp, bb->nb, col, col + Wp, col + 2 * Wp,
                                    bb->mx + at, bb->mn + at, bb->nan + at);
                }
            }
            if (to) {
                for (int64_t i = 0; i < HW; i++) bad += !isfinite(out[i]);
                float *dst = to->out + (size_t)k * to->OH * to->OW;
                if (to->OH == Hp && to->OW == Wp) memcpy(dst, out, (size_t)HW * sizeof(float));
                else {
                    const int st = ovs_resize_bilinear(dst, out, 1, Hp, Wp, to->OH, to->OW, 0);
                    if (st) ovs_region_keep(&re, st);
                }
            }
        }
        if (to) {
#pragma omp atomic
            to->nonfinite += bad;
        }
        ovs_free(R);
    }
    return ovs_region_finish(&re);
}

static int window_average(float *logits, int64_t C, int64_t Hp, int64_t Wp, const float *smalls,
                          int64_t nwin, const int64_t *wy, const int64_t *wx, int64_t gh, int64_t gw,
                          int64_t wh, int64_t ww, int64_t h, int64_t w, int naive, const block_bounds *bb,
                          resize_target *to) {
    if (C <= 0 || Hp <= 0 || Wp <= 0 || nwin <= 0 || gh <= 0 || gw <= 0 || h <= 0 || w <= 0 || h > wh || w > ww)
        return ovs_set_error(OVS_ERR_ARG, "window average: empty or inconsistent sizes (%lld classes, map "
                             "%lldx%lld, %lld windows of %lldx%lld cropped to %lldx%lld)", (long long)C,
                             (long long)Hp, (long long)Wp, (long long)nwin, (long long)wh, (long long)ww,
                             (long long)h, (long long)w);
    for (int64_t j = 0; j < nwin; j++)
        if (wy[j] < 0 || wx[j] < 0 || wy[j] > Hp - h || wx[j] > Wp - w)
            return ovs_set_error(OVS_ERR_ARG, "window %lld at (%lld, %lld) of %lldx%lld leaves the %lldx%lld map",
                                 (long long)j, (long long)wy[j], (long long)wx[j], (long long)h, (long long)w,
                                 (long long)Hp, (long long)Wp);
    ovs_arena a;
    ovs_arena_init(&a);
    coeffs c;
    int rc;
    float *count = ovs_arena_floats(&a, (size_t)Hp * Wp);
    if (!count) { rc = OVS_ERR_NOMEM; goto done; }
    if ((rc = coeffs_alloc(&c, &a, gh, gw, wh, ww, h, w))) goto done;
    memset(count, 0, (size_t)Hp * Wp * sizeof(float));
    for (int64_t j = 0; j < nwin; j++)
        for (int64_t y = 0; y < h; y++)
            for (int64_t x = 0; x < w; x++) count[(wy[j] + y) * Wp + wx[j] + x] += 1.0f;
    for (int64_t i = 0; i < Hp * Wp; i++)
        if (count[i] == 0.0f) {
            rc = ovs_set_error(OVS_ERR_ARG, "window average: pixel (%lld, %lld) is in no window",
                               (long long)(i / Wp), (long long)(i % Wp));
            goto done;
        }
    if (!naive) {
        rc = accumulate_windows(logits, C, Hp, Wp, count, smalls, nwin, wy, wx, gh, gw, h, w, &c, bb, to);
        goto done;
    }
    /* the twin: window by window, every element by one interp(), then the average */
    const int64_t HW = Hp * Wp, G = gh * gw;
    memset(logits, 0, (size_t)C * HW * sizeof(float));
    for (int64_t j = 0; j < nwin; j++)
        for (int64_t k = 0; k < C; k++) {
            const float *plane = smalls + ((size_t)j * C + k) * G;
            for (int64_t y = 0; y < h; y++) {
                float *row = logits + (size_t)k * HW + (wy[j] + y) * Wp + wx[j];
                for (int64_t x = 0; x < w; x++) row[x] += interp(plane, gw, &c, y, x);
            }
        }
    for (int64_t k = 0; k < C; k++)
        for (int64_t i = 0; i < HW; i++) logits[(size_t)k * HW + i] /= count[i];
done:
    ovs_arena_free(&a);
    return rc;
}

int ovs_seg_window_average(float *logits, int64_t C, int64_t Hp, int64_t Wp, const float *smalls,
                           int64_t nwin, const int64_t *wy, const int64_t *wx, int64_t gh, int64_t gw,
                           int64_t wh, int64_t ww, int64_t h, int64_t w, int naive, float *bounds) {
    if (!bounds) return window_average(logits, C, Hp, Wp, smalls, nwin, wy, wx, gh, gw, wh, ww, h, w, naive, NULL, NULL);
    if (naive) return ovs_set_error(OVS_ERR_ARG, "window average: the twin takes no block bounds");
    const block_bounds bb = bounds_view(bounds, C, Hp, Wp);
    return window_average(logits, C, Hp, Wp, smalls, nwin, wy, wx, gh, gw, wh, ww, h, w, 0, &bb, NULL);
}

size_t ovs_seg_block_bounds_floats(int64_t C, int64_t h, int64_t w) {
    return 3 * (size_t)block_rows(h) * (size_t)C * (size_t)block_rows(w);
}

/* ovs_seg_logits, and with bb the block bounds of the logits for the label stage */
static int seg_logits(ovs_segmenter *s, float *logits, const uint8_t *image, int64_t H, int64_t W,
                   int64_t row_stride, int64_t pixel_stride, int64_t Hp, int64_t Wp,
                   const float mean[3], const float std[3], const float *classifier, int64_t C,
                      const block_bounds *bb, resize_target *to) {
    if (H <= 0 || W <= 0 || Hp <= 0 || Wp <= 0 || C <= 0)
        return ovs_set_error(OVS_ERR_ARG, "empty image or class list (%lldx%lld -> %lldx%lld, %lld classes)",
                             (long long)H, (long long)W, (long long)Hp, (long long)Wp, (long long)C);
    if (C > INT32_MAX / 4) return ovs_set_error(OVS_ERR_OVERFLOW, "too many classes");
    const int64_t p = ovs_segmenter_patch(s), E = ovs_segmenter_embed_dim(s);
    int rc;
    ovs_arena *a = &s->arena; /* reset by the caller (the fused call keeps its logits in it) */
    /* (3, Hp, Wp) normalised and resized. Resized straight from the uint8 input: a (3, H, W)
     * float copy of a 20000 x 20000 photo would take 4.8 GB for a 336-pixel result. */
    float *src = ovs_arena_floats(a, (size_t)3 * Hp * Wp);
    if (!src) return OVS_ERR_NOMEM;
    if (Hp != H || Wp != W)
        rc = ovs_resize_bilinear_u8_normalize(src, image, H, W, row_stride, pixel_stride, Hp, Wp,
                                              mean, std);
    else
        rc = ovs_normalize_u8(src, image, H, W, row_stride, pixel_stride, 0, 0, H, W, mean, std, 0);
    if (rc) return rc;
    /* window grid (mmseg slide_inference); a window never exceeds the image */
    const int64_t crop = s->cfg.crop, stride = s->cfg.stride;
    const int64_t grids_h = crop > 0 ? (Hp - crop + stride - 1 > 0 ? Hp - crop + stride - 1 : 0) / stride + 1 : 1;
    const int64_t grids_w = crop > 0 ? (Wp - crop + stride - 1 > 0 ? Wp - crop + stride - 1 : 0) / stride + 1 : 1;
    const int64_t max_h = crop > 0 && crop < Hp ? crop : Hp, max_w = crop > 0 && crop < Wp ? crop : Wp;
    const int64_t ph = (max_h + p - 1) / p * p, pw = (max_w + p - 1) / p * p;
    const int64_t G_max = (ph / p) * (pw / p);
    float *win = ovs_arena_floats(a, (size_t)3 * ph * pw);           /* (3, ph, pw) padded window */
    float *feats = ovs_arena_floats(a, (size_t)G_max * E);           /* (G, E) */
    /* every window has the size (max_h, max_w); their (C, G) logits are kept for one pass per class */
    const int64_t nwin = grids_h * grids_w;
    float *smalls = ovs_arena_floats(a, (size_t)nwin * C * G_max);   /* (nwin, C, G) window logits */
    int64_t *wy = (int64_t *)ovs_arena_floats(a, (size_t)nwin * 2), *wx = (int64_t *)ovs_arena_floats(a, (size_t)nwin * 2);
    if (!win || !feats || !smalls || !wy || !wx) return OVS_ERR_NOMEM;
    for (int64_t gi = 0; gi < grids_h; gi++) {
        for (int64_t gj = 0; gj < grids_w; gj++) {
            int64_t y1 = 0, x1 = 0, y2 = Hp, x2 = Wp;
            if (crop > 0) {
                y2 = gi * stride + crop < Hp ? gi * stride + crop : Hp;
                x2 = gj * stride + crop < Wp ? gj * stride + crop : Wp;
                y1 = y2 - crop > 0 ? y2 - crop : 0;
                x1 = x2 - crop > 0 ? x2 - crop : 0;
            }
            const int64_t h = y2 - y1, w = x2 - x1, G = G_max;
            const int64_t wh = ph, ww = pw;
            if (h != max_h || w != max_w) /* the grid above never does this */
                return ovs_set_error(OVS_ERR_ARG, "window %lldx%lld differs from %lldx%lld", (long long)h,
                                     (long long)w, (long long)max_h, (long long)max_w);
            float *small = smalls + (size_t)(gi * grids_w + gj) * C * G;   /* (C, G) */
            wy[gi * grids_w + gj] = y1, wx[gi * grids_w + gj] = x1;
            /* copy the window, zero-padded bottom/right */
            for (int64_t c = 0; c < 3; c++)
                for (int64_t y = 0; y < wh; y++) {
                    float *dst = win + ((size_t)c * wh + y) * ww;
                    if (y < h) {
                        memcpy(dst, src + ((size_t)c * Hp + y1 + y) * Wp + x1, (size_t)w * sizeof(float));
                        memset(dst + w, 0, (size_t)(ww - w) * sizeof(float));
                    } else {
                        memset(dst, 0, (size_t)ww * sizeof(float));
                    }
                }
            if ((rc = ovs_seg_dense_features(s, feats, win, wh, ww))) return rc;
            /* L2-normalise each position, then small (C, G) = classifier (C, E) @ feats^T */
#pragma omp parallel for schedule(static) if (G * E > 65536) num_threads(ovs_get_num_threads())
            for (int64_t g = 0; g < G; g++) {
                float *f = feats + g * E;
                double ss = 0;
                for (int64_t e = 0; e < E; e++) ss += (double)f[e] * f[e];
                const float inv = (float)(1.0 / fmax(sqrt(ss), 1e-12));
                for (int64_t e = 0; e < E; e++) f[e] *= inv;
            }
            const ovs_matrix fm = ovs_matrix_dense(feats, G, E);
            if ((rc = ovs_matmul_wt(small, G, classifier, E, &fm, C, 1.0f, 0.0f))) return rc;
            if (s->cfg.pd_thresh > 0 && (rc = ovs_seg_prompt_denoise(small, C, G, 100.0f, s->cfg.pd_thresh)))
                return rc;
            if (s->cfg.ks_thresh > 0) {
                if (!s->keys) return ovs_set_error(OVS_ERR_ARG, "key smoothing needs the maskclip head");
                if ((rc = ovs_seg_key_smooth(small, C, G, s->keys, s->keys_dim, 100.0f, s->cfg.ks_thresh))) return rc;
            }
        }
    }
    /* upsample each window's (C, gh, gw) -> (C, ph, pw) bilinearly, crop to (max_h, max_w),
     * accumulate in window order, average */
    return window_average(logits, C, Hp, Wp, smalls, nwin, wy, wx, ph / p, pw / p, ph, pw, max_h, max_w, 0, bb, to);
}

int ovs_seg_logits(ovs_segmenter *s, float *logits, const uint8_t *image, int64_t H, int64_t W,
                   int64_t row_stride, int64_t pixel_stride, int64_t Hp, int64_t Wp,
                   const float mean[3], const float std[3], const float *classifier, int64_t C) {
    ovs_arena_reset(&s->arena);
    return seg_logits(s, logits, image, H, W, row_stride, pixel_stride, Hp, Wp, mean, std, classifier, C, NULL,
                      NULL);
}

int ovs_seg_image_logits(ovs_segmenter *s, float *out, const uint8_t *image, int64_t H, int64_t W,
                         int64_t row_stride, int64_t pixel_stride, int64_t Hp, int64_t Wp,
                         const float mean[3], const float std[3], const float *classifier, int64_t C,
                         int64_t OH, int64_t OW, float logit_scale, int softmax, int64_t *nonfinite) {
    *nonfinite = 0;
    int rc = check_up(C, Hp, Wp, OH, OW, logit_scale);
    if (rc) return rc;
    ovs_arena_reset(&s->arena);
    resize_target to = {.out = out, .OH = OH, .OW = OW};
    if ((rc = seg_logits(s, NULL, image, H, W, row_stride, pixel_stride, Hp, Wp, mean, std, classifier, C, NULL,
                         &to)))
        return rc;
    if ((*nonfinite = to.nonfinite) || !softmax) return OVS_OK;
    const int64_t HW = OH * OW; /* as ovs_seg_upsample */
#pragma omp parallel for schedule(static) num_threads(ovs_get_num_threads())
    for (int64_t i = 0; i < HW; i++) ovs_softmax_scaled_vec(out + i, HW, out + i, HW, C, logit_scale);
    return OVS_OK;
}

/* The plain label stage: every class at every pixel. The naive twin of ovs_seg_labels. */
int ovs_seg_labels_naive(int32_t *labels, const float *logits, int64_t C, int64_t h, int64_t w,
                   int64_t H, int64_t W, float logit_scale, float bg_threshold, int32_t bg_label) {
    int rc = check_up(C, h, w, H, W, logit_scale);
    if (rc) return rc;
    ovs_arena a;
    ovs_arena_init(&a);
    coeffs c;
    if ((rc = coeffs_alloc(&c, &a, h, w, H, W, H, W))) goto done;
    const int64_t hw = h * w;
    ovs_region_error re = OVS_REGION_ERROR_INIT;
#pragma omp parallel num_threads(ovs_get_num_threads())
    {
        float *row = ovs_malloc((size_t)C * W * sizeof(float)); /* (C, W) interpolated row */
        if (!row) /* this thread's own message, with what it was for */
            ovs_region_fail(&re, OVS_ERR_NOMEM, "label stage: row buffer of %lld classes: %s", (long long)C,
                            ovs_last_error());
#pragma omp for schedule(dynamic, 4)
        for (int64_t Y = 0; Y < H; Y++) {
            if (!row) continue;
            for (int64_t k = 0; k < C; k++) {
                const float *plane = logits + (size_t)k * hw;
                float *r = row + k * W;
                for (int64_t X = 0; X < W; X++) r[X] = interp(plane, w, &c, Y, X);
            }
            int32_t *out = labels + Y * W;
            for (int64_t X = 0; X < W; X++) {
                float best = row[X];
                int32_t arg = 0;
                for (int64_t k = 1; k < C; k++)
                    if (row[k * W + X] > best) { best = row[k * W + X]; arg = (int32_t)k; }
                if (bg_threshold > 0) {
                    double sum = 0;
                    for (int64_t k = 0; k < C; k++) sum += exp((double)logit_scale * (row[k * W + X] - best));
                    if (1.0 / sum < bg_threshold) arg = bg_label;
                }
                out[X] = arg;
            }
        }
        ovs_free(row);
    }
    rc = ovs_region_finish(&re);
done:
    ovs_arena_free(&a);
    return rc;
}

/* ---------------------------------------------------------------- label stage
 * Exact argmax without evaluating every class at every pixel, in time sub-linear in the class
 * count. Output pixel (Y, X) interpolates the four corners of one low-resolution cell
 * (y0[Y], x0[X]) with convex weights, so for class k its value v_k lies in [lo_k - m, hi_k + m]
 * for lo/hi the min/max of k over any set of values containing the cell's corners, and m a bound
 * on the float rounding of the interpolation. With ref = max_k lo_k the pixel's best value is
 * >= ref - m, so a class with hi_k + m < ref - m can be neither the argmax nor tie with it.
 * Two levels of that bound:
 *   block: LB x LB cells (their (LB+1)^2 corner values): one streaming pass over the logits
 *          (per class a column max/min over the block's rows, then per block over its columns)
 *          keeps per block the classes that can win anywhere in it;
 *   cell:  the four corners of each cell, only over its block's candidates;
 * then per pixel only the cell's candidates (ascending, so ties still go to the lowest index)
 * are evaluated with the same interp() as the naive kernel: bit-identical labels.
 * The margin m is 16 ulp of the largest |value| of the block (of the block's candidates at the
 * cell level: the class giving the cell's ref is one of them).
 * For bg_threshold the softmax denominator sum_k exp(s (v_k - best)) is bracketed: over the
 * classes dropped at either level from their [lo - m, hi + m] ranges (exps in float with a 1e-5
 * relative slack), exactly over the cell's candidates. A block or cell whose lower bracket,
 * taken at the largest possible best, already exceeds 1 / bg_threshold is background
 * throughout; a pixel whose bracket straddles the threshold takes the naive kernel's sum over
 * every class. A block or cell with a non-finite value keeps every class (the naive kernel's
 * NaN/inf semantics). Work is parallel over block rows; buffers are per thread, O(C w). */
#define BSEL 64 /* blocks per keep mask */
#define CELL_MARGIN (16.0f * FLT_EPSILON) /* relative to the largest |value| in the bound */
#define EXP_SLACK 3e-5                    /* relative error of exp_up / exp_lo, see there */
#define THR_SLACK 1e-9                    /* bracket vs 1 / bg_threshold: too close to call */

/* Bounds of exp(x) for x <= 0 from ops_expf (relative error below 2e-7; inlined, where libm's
 * expf was a call: with bg_threshold and few classes most of the label stage's time) of x
 * rounded to float (|x| <= 87 after the clamp: argument error <= 87 * 6e-8 = 5.2e-6 relative in
 * exp), with room for the naive kernel's own float rounding of v - best (another 5.2e-6); terms
 * below exp(-87) are negligible against the sum (>= 1, the argmax's term). exp_both adds both
 * bounds of one x to *lo and *up from a single exp. */
static inline double exp_up(double x) {
    return (double)ops_expf((float)(x > -87.0 ? x : -87.0)) * (1.0 + EXP_SLACK);
}
static inline double exp_lo(double x) {
    return x > -87.0 ? (double)ops_expf((float)x) * (1.0 - EXP_SLACK) : 0.0;
}
static inline void exp_both(double x, double *lo, double *up) {
    const double e = (double)ops_expf((float)(x > -87.0 ? x : -87.0));
    *up += e * (1.0 + EXP_SLACK);
    *lo += x > -87.0 ? e * (1.0 - EXP_SLACK) : 0.0;
}


typedef struct {
    int64_t C, h, w, nb; /* nb blocks per block row */
    float s;             /* logit scale (> 0 with bg) */
    int bg;
    double inv_thr;      /* 1 / bg_threshold */
    int dominance;       /* argmax only: cells' candidates also tested pairwise (cell_dominated_out) */
    /* block row */
    float *colmax, *colmin, *colnan; /* (w,) one class's column max / min / non-finite flag */
    float *bmax, *bmin;              /* (C, nb) taken in a streaming pass */
    float *bref, *bmarg;             /* (nb,) max_k bmin_k; margin (NaN: non-finite block) */
    float *bnan;                     /* (nb,) one class's non-finite flags */
    int32_t *bcount, *bcand;         /* (nb,), (nb, C) candidates, ascending */
    double *bs_lo, *bs_hi;           /* (nb,) bracket of sum over dropped classes of exp(s (v - bref)) */
    unsigned char *ball_bg;          /* (nb,) background throughout */
    /* cell row: the arrays below marked (w,) are one cell row's slice of LB (label_row picks it);
     * a block row's cells are built block by block (each block's LB cell rows in turn: its
     * candidates' rows stay in L1 from one cell row to the next), then labelled row by row */
    float *cmin, *cmax;              /* (C, LB) one block's cells' corner min / max per candidate */
    float *cref;                     /* (w,) */
    int32_t *ccount, *ccand;         /* (w,); per cell its candidates at ccand + coff[cell] */
    int64_t *coff;                   /* (w,) a block's cells take its candidate count each, packed
                                      * (the same in every cell row of a block row) */
    int64_t rowcand;                 /* a cell row's candidates, all cells (ccand_all's row stride:
                                      * the rows packed too) */
    float *cref_all;                 /* (LB, w) */
    int32_t *ccount_all, *ccand_all; /* (LB, w), (LB rowcand <= LB w C) */
    size_t ccand_cap;                /* ccand_all's capacity */
    double *cs_all;                  /* (LB, 4 w) cs_lo, cs_hi, cs_lo_min, cs_hi_max */
    unsigned char *call_bg_all;      /* (LB, w), then call_fg's (LB, w) */
    float *bcmax;                    /* (nb, C) argmax only: the block maxima of bcand's classes */
    int32_t *tk;                     /* (C,) argmax only: the classes a block's cell row read */
    int32_t *seed;                   /* (nb, 2) argmax only: the classes of the last cell row's first
                                      * and last cref per block */
    double *cs_lo, *cs_hi;           /* (w,) bracket of sum over dropped classes of exp(s (v - cref)) */
    double *cs_lo_min, *cs_hi_max;   /* (w,) the same times the extremes of exp(s (cref - best)) */
    unsigned char *call_bg;          /* (w,) background at every pixel of the cell */
    unsigned char *call_fg;          /* (w,) with bg_threshold: background at none (the argmax) */
} label_work;

static void label_work_free(label_work *lw) {
    ovs_free(lw->colmax), ovs_free(lw->bmax), ovs_free(lw->bref), ovs_free(lw->bcount);
    ovs_free(lw->bs_lo), ovs_free(lw->ball_bg), ovs_free(lw->cref_all), ovs_free(lw->ccount_all);
    ovs_free(lw->ccand_all), ovs_free(lw->cs_all), ovs_free(lw->call_bg_all), ovs_free(lw->cmin);
    ovs_free(lw->coff), ovs_free(lw->bcmax), ovs_free(lw->tk), ovs_free(lw->seed);
}

/* The per-cell arrays of cell row r of the block row (0 <= r < LB). */
static void label_row(label_work *lw, int64_t r) {
    const int64_t w = lw->w;
    lw->cref = lw->cref_all + r * w;
    lw->ccount = lw->ccount_all + r * w;
    lw->ccand = lw->ccand_all + r * lw->rowcand;
    lw->cs_lo = lw->cs_all + r * 4 * w;
    lw->cs_hi = lw->cs_lo + w;
    lw->cs_lo_min = lw->cs_hi + w;
    lw->cs_hi_max = lw->cs_lo_min + w;
    lw->call_bg = lw->call_bg_all + r * w;
    lw->call_fg = lw->call_bg_all + LB * w + r * w;
}

static int label_work_alloc(label_work *lw) {
    const size_t C = (size_t)lw->C, w = (size_t)lw->w, nb = (size_t)lw->nb;
    lw->colmax = ovs_malloc(3 * w * sizeof(float));
    lw->bmax = ovs_malloc(2 * C * nb * sizeof(float));
    lw->bref = ovs_malloc(3 * nb * sizeof(float));
    lw->bcount = ovs_malloc((nb + nb * C) * sizeof(int32_t));
    lw->bs_lo = ovs_malloc(2 * nb * sizeof(double));
    lw->ball_bg = ovs_malloc(nb);
    lw->cref_all = ovs_malloc(LB * w * sizeof(float));
    lw->ccount_all = ovs_malloc(LB * w * sizeof(int32_t));
    lw->ccand_cap = LB * w * (C < 16 ? C : 16); /* grown by block_offsets when a block row needs it */
    lw->ccand_all = ovs_malloc(lw->ccand_cap * sizeof(int32_t));
    lw->coff = ovs_malloc(w * sizeof(int64_t));
    lw->bcmax = ovs_malloc(nb * C * sizeof(float));
    lw->tk = ovs_malloc(C * sizeof(int32_t));
    lw->seed = ovs_calloc(2 * nb, sizeof(int32_t)); /* class 0: any class gives a valid bound */
    lw->cs_all = ovs_malloc(LB * 4 * w * sizeof(double));
    lw->call_bg_all = ovs_malloc(2 * LB * w);
    lw->cmin = ovs_malloc(2 * C * LB * sizeof(float));
    if (!lw->cmin || !lw->colmax || !lw->bmax || !lw->bref || !lw->bcount || !lw->bs_lo || !lw->ball_bg ||
        !lw->cref_all || !lw->ccount_all || !lw->ccand_all || !lw->coff || !lw->bcmax || !lw->tk ||
        !lw->seed || !lw->cs_all || !lw->call_bg_all)
        return 0;
    lw->colmin = lw->colmax + w, lw->colnan = lw->colmin + w;
    lw->bmin = lw->bmax + C * nb;
    lw->bmarg = lw->bref + nb;
    lw->bnan = lw->bmarg + nb;
    lw->bcand = lw->bcount + nb;
    lw->bs_hi = lw->bs_lo + nb;
    lw->cmax = lw->cmin + C * LB;
    label_row(lw, 0);
    return 1;
}

/* Candidates of every block of block row ib: cell rows [ib LB, ib LB + LB), value rows
 * [ib LB, min(ib LB + LB, h - 1)]; block jb likewise over columns. Each class's block maxima /
 * minima from one streaming pass over its rows (class_block_row), or precomputed (pre). */
static void block_row_build(label_work *lw, const float *logits, int64_t ib, const block_bounds *pre) {
    const int64_t C = lw->C, h = lw->h, w = lw->w, nb = lw->nb, hw = h * w;
    const int64_t r0 = ib * LB, r1 = r0 + LB < h - 1 ? r0 + LB : h - 1;
    for (int64_t b = 0; b < nb; b++) {
        lw->bref[b] = -INFINITY;
        lw->bmarg[b] = 0.0f; /* largest |value|, then the margin */
        lw->bcount[b] = 0;
        lw->bs_lo[b] = lw->bs_hi[b] = 0.0;
        lw->ball_bg[b] = 0;
    }
    /* (C, nb) maxima / minima: the precomputed block row's in place, or taken here */
    const float *bmax = lw->bmax, *bmin = lw->bmin;
    if (pre) bmax = pre->mx + (size_t)ib * C * nb, bmin = pre->mn + (size_t)ib * C * nb;
    const int64_t span = (r1 - r0 + 1) * w; /* contiguous floats per class */
    for (int64_t k = 0; k < C; k++) {
        const float *bx = bmax + k * nb, *bn = bmin + k * nb, *bnan = lw->bnan;
        if (pre) {
            bnan = pre->nan + ((size_t)ib * C + k) * nb;
        } else {
            const float *p = logits + (size_t)k * hw + r0 * w;
            if (k + 1 < C) /* the next class's rows: a new stream every span floats */
                for (int64_t o = 0; o < span; o += 16) __builtin_prefetch(p + hw + o);
            class_block_row(p, r1 - r0 + 1, w, nb, lw->colmax, lw->colmin, lw->colnan, lw->bmax + k * nb,
                            lw->bmin + k * nb, lw->bnan);
        }
        for (int64_t b = 0; b < nb; b++) {
            const float mx = bx[b], mn = bn[b];
            lw->bref[b] = mn > lw->bref[b] ? mn : lw->bref[b];
            const float mag = fabsf(mx) > fabsf(mn) ? fabsf(mx) : fabsf(mn);
            lw->bmarg[b] = (mag > lw->bmarg[b] ? mag : lw->bmarg[b]) + bnan[b];
        }
    }
    for (int64_t b = 0; b < nb; b++)
        lw->bmarg[b] = isfinite(lw->bmarg[b]) ? lw->bmarg[b] * CELL_MARGIN : NAN;
    const double s = lw->s;
    if (!lw->bg) { /* argmax only: per class a keep mask over BSEL blocks, then its set bits */
        for (int64_t b0 = 0; b0 < nb; b0 += BSEL) {
            const int64_t n = nb - b0 < BSEL ? nb - b0 : BSEL;
            const float *m = lw->bmarg + b0, *ref = lw->bref + b0;
            for (int64_t k = 0; k < C; k++) {
                const float *bx = bmax + k * nb + b0;
                uint64_t keep = 0; /* the test of the loop below, branch-free */
                if (n == BSEL)
                    for (int j = 0; j < BSEL; j++) keep |= (uint64_t)(!(m[j] == m[j]) | (bx[j] + m[j] >= ref[j] - m[j])) << j;
                else
                    for (int64_t j = 0; j < n; j++) keep |= (uint64_t)(!(m[j] == m[j]) | (bx[j] + m[j] >= ref[j] - m[j])) << j;
                while (keep) {
                    const int64_t b = b0 + __builtin_ctzll(keep);
                    keep &= keep - 1;
                    lw->bcmax[b * C + lw->bcount[b]] = bmax[k * nb + b];
                    lw->bcand[b * C + lw->bcount[b]++] = (int32_t)k;
                }
            }
        }
        return;
    }
    for (int64_t k = 0; k < C; k++) {
        const float *bx = bmax + k * nb, *bn = bmin + k * nb;
        for (int64_t b = 0; b < nb; b++) {
            const float m = lw->bmarg[b], ref = lw->bref[b];
            if (!(m == m) || bx[b] + m >= ref - m) {
                lw->bcand[b * C + lw->bcount[b]++] = (int32_t)k;
            } else { /* s > 0 here: both exponents < 0 */
                lw->bs_hi[b] += exp_up(s * ((double)bx[b] + m - ref));
                lw->bs_lo[b] += exp_lo(s * ((double)bn[b] - m - ref));
            }
        }
    }
    for (int64_t b = 0; b < nb; b++) { /* background throughout: lower bracket at the largest best */
        const float m = lw->bmarg[b], ref = lw->bref[b];
        if (!(m == m)) continue;
        double lo = lw->bs_lo[b];
        float top = -INFINITY;
        for (int32_t t = 0; t < lw->bcount[b]; t++) {
            const int64_t k = lw->bcand[b * C + t];
            lo += exp_lo(s * ((double)bmin[k * nb + b] - m - ref));
            top = bmax[k * nb + b] > top ? bmax[k * nb + b] : top;
        }
        lw->ball_bg[b] = lo * exp_lo(s * ((double)ref - top - m)) > lw->inv_thr * (1 + THR_SLACK);
    }
}

/* One cell's corners a, b, c, d of one class: their min and max, and the cell's ref / mag updated;
 * 0 * corners flags NaN and inf in mag. */
static inline void corner_bounds(float a, float b, float c, float d, float *mn, float *mx, float *ref,
                                 float *mag) {
    const float lo = min4(a, b, c, d), hi = max4(a, b, c, d);
    const float am = fabsf(lo) > fabsf(hi) ? fabsf(lo) : fabsf(hi);
    *mn = lo, *mx = hi;
    *ref = lo > *ref ? lo : *ref;
    *mag = (am > *mag ? am : *mag) + 0.0f * (a + b + c + d);
}

/* corner_bounds of a full block's LB cells, written out over restrict arrays: calling
 * corner_bounds here did not vectorise (847 classes at 512x683: 7% slower, Zen 4). */
static inline void cell_corners_full(const float *restrict a, const float *restrict d, float *restrict mn,
                                     float *restrict mx, float *restrict ref, float *restrict mag) {
    for (int q = 0; q < LB; q++) {
        const float lo = min4(a[q], a[q + 1], d[q], d[q + 1]), hi = max4(a[q], a[q + 1], d[q], d[q + 1]);
        const float am = fabsf(lo) > fabsf(hi) ? fabsf(lo) : fabsf(hi);
        mn[q] = lo, mx[q] = hi;
        ref[q] = lo > ref[q] ? lo : ref[q];
        mag[q] = (am > mag[q] ? am : mag[q]) + 0.0f * (a[q] + a[q + 1] + d[q] + d[q + 1]);
    }
}

/* corner_bounds of cells c0 .. c0 + nc - 1 of one class (rows r0, r1 of its plane). A full
 * block away from the right edge has a fixed trip count (vectorised). */
static inline void cell_corners(const float *r0, const float *r1, int64_t c0, int64_t nc, int64_t last,
                                float *mn, float *mx, float *ref, float *mag) {
    if (nc == LB && c0 + LB <= last) {
        cell_corners_full(r0 + c0, r1 + c0, mn, mx, ref, mag);
        return;
    }
    for (int64_t q = 0; q < nc; q++) {
        const int64_t j = c0 + q, j1 = j < last ? j + 1 : last;
        corner_bounds(r0[j], r0[j1], r1[j], r1[j1], mn + q, mx + q, ref + q, mag + q);
    }
}

/* A cell's candidates cand[0..n) (ascending) without those that class d beats at all four
 * corners by more than 3 m (corners at a[0], a[1], b[0], b[1] of each class's plane, hw floats
 * apart). Within the cell every output value is a bilinear weighting of the corners, the same
 * weights for every class, so d's interpolated value minus such a class's is at least that
 * smallest corner difference less the two interpolations' rounding (m each, as at the cell
 * level; the difference's own rounding is below m / 8): d's value is the larger at every
 * output pixel of the cell, strictly, and that class is never the argmax there. The test
 * against the class that gives the cell's ref alone (a bilinear interpolant's extremes over
 * the cell are at its corners; the interval test compares corner maxima with corner minima
 * and keeps classes that cross d's range without ever reaching d: 847 near-tied classes left
 * several per cell). Returns the count left, d kept, order kept. */
static int32_t cell_dominated_out(int32_t *cand, int32_t n, int32_t d, const float *a, const float *b, int64_t hw,
                                  float m) {
    const float *pa = a + (size_t)d * hw, *pb = b + (size_t)d * hw, lim = 3.0f * m;
    const float d00 = pa[0], d01 = pa[1], d10 = pb[0], d11 = pb[1];
    int32_t k = 0;
    for (int32_t t = 0; t < n; t++) {
        const int32_t c = cand[t];
        if (c != d) {
            const float *qa = a + (size_t)c * hw, *qb = b + (size_t)c * hw;
            if (d00 - qa[0] > lim && d01 - qa[1] > lim && d10 - qb[0] > lim && d11 - qb[1] > lim) continue;
        }
        cand[k++] = c;
    }
    return k;
}

/* Argmax only, a full block with finite values: the candidates of its LB cells in cell row i,
 * reading the corners only of block candidates that the bounds cannot drop. m is the block's
 * margin (its largest |value| times CELL_MARGIN: at least each cell's), ref[q] starts at the
 * cell minimum of two seed classes (those that gave the previous cell row's first and last
 * cref here; any class gives a lower bound of the cell's ref). A class whose block maximum bx
 * has bx + m < min_q ref[q] - m has cell maximum + m < ref - m in every cell: the full test
 * drops it, unread. The classes read are tested against the final ref[q] (the full test with a
 * margin at least as wide and a ref at most as high: a superset of its candidates, ascending). */
static void cell_block_argmax(label_work *lw, const float *logits, int64_t i, int64_t i1, int64_t b,
                              int64_t c0) {
    const int64_t C = lw->C, h = lw->h, w = lw->w, hw = h * w;
    const int32_t *bc = lw->bcand + b * C, nbc = lw->bcount[b];
    const float *bx = lw->bcmax + b * C, m = lw->bmarg[b];
    int32_t *seed = lw->seed + 2 * b;
    float ref[LB], mag[LB], lo[LB], hi[LB];
    for (int q = 0; q < LB; q++) ref[q] = -INFINITY, mag[q] = 0.0f;
    for (int u = 0; u < 2; u++) {
        if (u == 1 && seed[1] == seed[0]) break;
        const float *r0 = logits + (size_t)seed[u] * hw + i * w;
        cell_corners_full(r0 + c0, r0 + (i1 - i) * w + c0, lo, hi, ref, mag);
    }
    float thr = ref[0];
    for (int q = 1; q < LB; q++) thr = ref[q] < thr ? ref[q] : thr;
    thr -= m;
    /* the classes to read first, branch-free: a data-dependent branch per candidate between
     * the reads flushed the loads in flight at each mispredict, exposing their latency one by
     * one (847 classes at 512x683: ~40% of the candidates are dropped, in no pattern) */
    int32_t n = 0;
    for (int32_t t = 0; t < nbc; t++) {
        lw->tk[n] = bc[t];
        n += !(bx[t] + m < thr);
    }
    for (int32_t t = 0; t < n; t++) {
        const float *r0 = logits + (size_t)lw->tk[t] * hw + i * w;
        if (i + 2 < h) { /* the row this block's next cell row adds (it runs next; without
                            * this prefetch 847 classes at 512x683 took 6-10% longer) */
            const float *n2 = r0 + 2 * w + c0;
            __builtin_prefetch(n2), __builtin_prefetch(n2 + LB);
        }
        cell_corners_full(r0 + c0, r0 + (i1 - i) * w + c0, lw->cmin + t * LB, lw->cmax + t * LB, ref, mag);
    }
    int32_t cnt[LB] = {0}, top[LB];
    for (int q = 0; q < LB; q++) top[q] = -1;
    int32_t *cc = lw->ccand + lw->coff[c0];
#if defined(__AVX__) && LB == 8
    /* the same float operations, 8 cells per instruction (all values finite here) */
    const __m256 vlo = _mm256_sub_ps(_mm256_loadu_ps(ref), _mm256_set1_ps(m)), vm = _mm256_set1_ps(m),
                 vref = _mm256_loadu_ps(ref);
    __m256i vtop = _mm256_set1_epi32(-1);
#endif
    for (int32_t t = 0; t < n; t++) {
        const float *mx = lw->cmax + t * LB, *mn = lw->cmin + t * LB;
#if defined(__AVX__) && LB == 8
        unsigned keep = (unsigned)_mm256_movemask_ps(
            _mm256_cmp_ps(_mm256_add_ps(_mm256_loadu_ps(mx), vm), vlo, _CMP_GE_OQ));
        if (lw->dominance)
            vtop = _mm256_castps_si256(_mm256_blendv_ps(
                _mm256_castsi256_ps(vtop), _mm256_castsi256_ps(_mm256_set1_epi32(lw->tk[t])),
                _mm256_cmp_ps(_mm256_loadu_ps(mn), vref, _CMP_EQ_OQ)));
#else
        unsigned keep = 0; /* the full test, branch-free */
        for (int q = 0; q < LB; q++) keep |= (unsigned)(mx[q] + m >= ref[q] - m) << q;
        if (lw->dominance)
            for (int q = 0; q < LB; q++) top[q] = mn[q] == ref[q] ? lw->tk[t] : top[q];
#endif
        if (mn[0] == ref[0]) seed[0] = lw->tk[t];
        if (mn[LB - 1] == ref[LB - 1]) seed[1] = lw->tk[t];
        while (keep) {
            const int q = __builtin_ctz(keep);
            keep &= keep - 1;
            cc[q * nbc + cnt[q]++] = lw->tk[t];
        }
    }
#if defined(__AVX__) && LB == 8
    if (lw->dominance) _mm256_storeu_si256((__m256i *)top, vtop);
#endif
    const float *r0 = logits + i * w + c0, *r1 = logits + i1 * w + c0;
    for (int q = 0; q < LB; q++) {
        if (cnt[q] == 0) /* cannot happen (the class giving ref is read and kept); be safe */
            for (int32_t t = 0; t < nbc; t++) cc[q * nbc + cnt[q]++] = bc[t];
        else if (lw->dominance && cnt[q] > 1 && top[q] >= 0)
            cnt[q] = cell_dominated_out(cc + q * nbc, cnt[q], top[q], r0 + q, r1 + q, hw, m);
        lw->ccount[c0 + q] = cnt[q], lw->cref[c0 + q] = ref[q];
    }
}

/* Where each cell's candidate list starts in a cell row's ccand (coff): packed (few pages
 * touched, whatever C), the same in every cell row of the block row; ccand_all grown to hold
 * LB such rows. 0 if it cannot be. */
static int block_offsets(label_work *lw) {
    int64_t off = 0;
    for (int64_t b = 0; b < lw->nb; b++) {
        const int64_t c0 = b * LB, nc = c0 + LB < lw->w ? LB : lw->w - c0;
        for (int64_t q = 0; q < nc; q++) lw->coff[c0 + q] = off + q * lw->bcount[b];
        off += nc * lw->bcount[b];
    }
    lw->rowcand = off;
    const size_t need = (size_t)(LB * off);
    if (need > lw->ccand_cap) {
        const size_t most = (size_t)(LB * lw->w * lw->C), cap = need + need / 2 < most ? need + need / 2 : most;
        ovs_free(lw->ccand_all);
        lw->ccand_all = ovs_malloc(cap * sizeof(int32_t));
        lw->ccand_cap = lw->ccand_all ? cap : 0;
        if (!lw->ccand_all) return 0;
    }
    return 1;
}

/* Candidates of the cells of block b in cell row i (the row's slice: label_row) among the
 * block's, and the cells' brackets: class-major over the block's candidates (contiguous
 * corners), into (candidates, LB) scratch. noinline: inlined, seg_labels' pixel loop compiled
 * slower (10 classes to 2048x2731, 1 thread: 12.4 -> 14 ms with GCC 12); called once per block
 * and cell row, the call costs nothing. */
__attribute__((noinline)) static void cell_row_block(label_work *lw, const float *logits, int64_t i,
                                                     int64_t b) {
    const int64_t C = lw->C, h = lw->h, w = lw->w, hw = h * w, last = w - 1;
    const int64_t i1 = i + 1 < h ? i + 1 : h - 1;
    const double s = lw->s;
    const int64_t c0 = b * LB, nc = c0 + LB < w ? LB : w - c0;
    const int32_t *bc = lw->bcand + b * C, nbc = lw->bcount[b];
    for (int64_t q = 0; q < nc; q++) {
        lw->cs_lo[c0 + q] = lw->cs_hi[c0 + q] = 0.0;
        lw->ccount[c0 + q] = 0;
        lw->call_bg[c0 + q] = lw->ball_bg[b];
        lw->call_fg[c0 + q] = 0;
    }
    if (lw->ball_bg[b]) return;
    if (!lw->bg && nc == LB && c0 + LB <= last && lw->bmarg[b] == lw->bmarg[b]) {
        cell_block_argmax(lw, logits, i, i1, b, c0);
        return;
    }
    float ref[LB], mag[LB];
    for (int q = 0; q < LB; q++) ref[q] = -INFINITY, mag[q] = 0.0f;
    for (int32_t t = 0; t < nbc; t++) {
        const float *r0 = logits + (size_t)bc[t] * hw + i * w;
        if (t + 4 < nbc) { /* each candidate's rows are lines far apart in (C, h, w): ask ahead */
            const float *n0 = logits + (size_t)bc[t + 4] * hw + i * w + c0;
            __builtin_prefetch(n0), __builtin_prefetch(n0 + LB);
            __builtin_prefetch(n0 + (i1 - i) * w), __builtin_prefetch(n0 + (i1 - i) * w + LB);
        }
        if (i + 2 < h) { /* the row this block's next cell row adds (it runs next) */
            const float *n2 = r0 + 2 * w + c0;
            __builtin_prefetch(n2), __builtin_prefetch(n2 + LB);
        }
        cell_corners(r0, r0 + (i1 - i) * w, c0, nc, last, lw->cmin + t * LB, lw->cmax + t * LB, ref, mag);
    }
    for (int64_t q = 0; q < nc; q++) {
        const int64_t j = c0 + q;
        const float m = isfinite(mag[q]) ? mag[q] * CELL_MARGIN : NAN, r = ref[q];
        int32_t *cc = lw->ccand + lw->coff[j], n = 0;
        double lo = 0, hi = 0, lo_all = 0, hi_cand = 0;
        float top = -INFINITY;
        for (int32_t t = 0; t < nbc; t++) {
            const float mx = lw->cmax[t * LB + q], mn = lw->cmin[t * LB + q];
            if (!(m == m) || mx + m >= r - m) {
                cc[n++] = bc[t];
                top = mx > top ? mx : top;
                if (lw->bg) {
                    lo_all += exp_lo(s * ((double)mn - m - r));
                    /* its term at most exp(s (mx + m - (r - m))): best >= r - m */
                    const double e = s * ((double)mx + 2.0 * m - r);
                    hi_cand += e <= 80.0 ? exp_up(e) : INFINITY;
                }
            } else if (lw->bg) {
                hi += exp_up(s * ((double)mx + m - r));
                lo += exp_lo(s * ((double)mn - m - r));
            }
        }
        if (n == 0) { /* cannot happen (the class giving ref is kept); be safe: all the block's,
                       * no cell bracket (lo, hi 0: the block's still bound the rest) */
            lo = hi = lo_all = 0;
            hi_cand = INFINITY; /* and no "background nowhere" */
            for (int32_t t = 0; t < nbc; t++) {
                cc[n++] = bc[t];
                top = lw->cmax[t * LB + q] > top ? lw->cmax[t * LB + q] : top;
            }
        }
        lw->ccount[j] = n;
        lw->cref[j] = r;
        if (!lw->bg || !(m == m)) continue;
        const double lo_thr = lw->inv_thr * (1 - THR_SLACK);
        if (n == C) { /* no class dropped: the candidates' terms bound the sum */
            lw->call_fg[j] = hi_cand < lo_thr;
            continue;
        }
        /* the block's dropped classes, rescaled from bref to r (>= bref: exponents <= 0) */
        lw->cs_lo[j] = lo + lw->bs_lo[b] * exp_lo(s * ((double)lw->bref[b] - r));
        lw->cs_hi[j] = hi + lw->bs_hi[b] * exp_up(s * ((double)lw->bref[b] - r));
        lo_all += lw->cs_lo[j];
        /* best in [r - m, top + m] */
        const double sc_min = exp_lo(s * ((double)r - top - m));
        lw->call_bg[j] = lo_all * sc_min > lw->inv_thr * (1 + THR_SLACK);
        lw->cs_lo_min[j] = lw->cs_lo[j] * sc_min;
        lw->cs_hi_max[j] = lw->cs_hi[j] * exp(s * (double)m) * (1.0 + EXP_SLACK);
        /* the per-pixel test's "phi + cs_hi_max < lo_thr: not background" (seg_labels) with
         * every candidate's term at its cell maximum: true at every pixel of the cell */
        lw->call_fg[j] = !lw->call_bg[j] && hi_cand + lw->cs_hi_max[j] < lo_thr;
    }
}

/* The naive kernel's test 1 / sum < bg_threshold at pixel (Y, X): every class's term, first
 * bracketed in float (decides unless the sum is within 3e-5 of 1 / bg_threshold), else the
 * naive kernel's double sum in its order. */
static int bg_exact(const float *logits, int64_t C, int64_t hw, int64_t w, const coeffs *c, int64_t Y,
                    int64_t X, float best, float s, float bg_threshold, double inv_thr) {
    double lo = 0, hi = 0;
    for (int64_t k = 0; k < C; k++) {
        exp_both((double)s * (interp(logits + (size_t)k * hw, w, c, Y, X) - best), &lo, &hi);
    }
    if (lo > inv_thr * (1 + THR_SLACK)) return 1;
    if (hi < inv_thr * (1 - THR_SLACK)) return 0;
    double all = 0;
    for (int64_t k = 0; k < C; k++) all += exp((double)s * (interp(logits + (size_t)k * hw, w, c, Y, X) - best));
    return 1.0 / all < bg_threshold;
}

/* When the naive kernel is as fast, or the bracket does not apply (it needs s > 0):
 * - fewer output pixels than cells (downsampling) under 16 classes, 24 with bg_threshold (AMD
 *   Zen 4, 336x448 to 168x224 .. 320x427, 1 thread; argmax: the cells took 2.2-2.8x the naive
 *   time with 3 classes, 1.0-1.3x with 10, 0.47-0.73x with 30, 0.12-0.21x with 150, 0.03-0.08x
 *   with 847, 312 -> 13 ms to 256x341; bg_threshold 0.3: 1.45-1.65x with 16 classes, 0.78-0.92x
 *   with 30, 0.03-0.04x with 847);
 * - with bg_threshold, under 16 classes and under 4 output pixels per cell: the per-cell
 *   brackets cost more than they save (336x448 -> 512x683, 3-10 classes: 1.2-1.25x the naive
 *   kernel's time; 16: 0.97x; 24: 0.74x; at 9 pixels per cell 0.7-0.86x from 3 classes up). */
static int labels_take_naive(int64_t C, int64_t h, int64_t w, int64_t H, int64_t W, float logit_scale,
                             float bg_threshold) {
    if (C <= 2 || (H * W < h * w && C < (bg_threshold > 0 ? 24 : 16))) return 1;
    if (!(bg_threshold > 0)) return 0;
    return !(logit_scale > 0) || (C < 16 && H * W < 4 * h * w);
}

#if defined(__AVX__)
#if defined(__AVX2__) && defined(__FMA__)
/* ops_expf (ops_internal.h) on 8 lanes: its float operations in its order (fmaf is one rounding,
 * as _mm256_fmadd_ps; n is integer-valued, so truncating it is exact), bitwise its results;
 * bg_run_all's scalar calls did not vectorise (GCC 12: scalar vfmadd213ss; 10 classes to
 * 2048x2731 with bg_threshold spent ~60% of its time there). */
static inline __m256 expf8(__m256 x) {
    __m256 xc = _mm256_max_ps(_mm256_set1_ps(-87.0f), x);   /* x < -87 ? -87 : x, NaN kept */
    xc = _mm256_min_ps(_mm256_set1_ps(88.0f), xc);          /* xc > 88 ? 88 : xc, NaN kept */
    const __m256 big = _mm256_set1_ps(12582912.0f);
    const __m256 n = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(xc, _mm256_set1_ps(1.44269504088896341f)), big), big);
    __m256 r = _mm256_fmadd_ps(n, _mm256_set1_ps(-0.693359375f), xc);
    r = _mm256_fmadd_ps(n, _mm256_set1_ps(2.12194440e-4f), r);
    __m256 q = _mm256_set1_ps(1.0f / 5040.0f);
    q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(1.0f / 720.0f));
    q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(1.0f / 120.0f));
    q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(1.0f / 24.0f));
    q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(1.0f / 6.0f));
    q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(0.5f));
    q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(1.0f));
    q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(1.0f));
    const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(n), _mm256_set1_epi32(127)), 23);
    __m256 y = _mm256_mul_ps(q, _mm256_castsi256_ps(bits));
    y = _mm256_blendv_ps(y, _mm256_setzero_ps(), _mm256_cmp_ps(x, _mm256_set1_ps(-87.0f), _CMP_LT_OQ));
    return _mm256_blendv_ps(y, _mm256_set1_ps(INFINITY), _mm256_cmp_ps(x, _mm256_set1_ps(88.7f), _CMP_GT_OQ));
}
#endif

/* interp() of one class at 8 output pixels of a row run (one cell: the class's four corners at
 * p[o0 + x0], p[o0 + x1], p[o1 + x0], p[o1 + x1]; the pixels' lx0 / lx1 in a0 / a1, the row's
 * ly0 / ly1 in y0 / y1): interp()'s float operations in its order, 8 pixels per instruction. */
static inline __m256 interp8(__m256 a0, __m256 a1, __m256 y0, __m256 y1, const float *p, int64_t o0,
                             int64_t o1, int64_t x0, int64_t x1) {
    return _mm256_add_ps(_mm256_mul_ps(y0, _mm256_add_ps(_mm256_mul_ps(a0, _mm256_set1_ps(p[o0 + x0])),
                                                         _mm256_mul_ps(a1, _mm256_set1_ps(p[o0 + x1])))),
                         _mm256_mul_ps(y1, _mm256_add_ps(_mm256_mul_ps(a0, _mm256_set1_ps(p[o1 + x0])),
                                                         _mm256_mul_ps(a1, _mm256_set1_ps(p[o1 + x1])))));
}

/* The running argmax of 8 pixels over classes taken in ascending order: class k's values v
 * replace best (and k the lanes of arg) where they are larger; > keeps the first maximum, as
 * the scalar loops; the first class (first != 0) starts both. */
static inline void argmax8(__m256 v, int32_t k, int first, __m256 *best, __m256 *arg) {
    const __m256 kv = _mm256_castsi256_ps(_mm256_set1_epi32(k));
    if (first) {
        *best = v, *arg = kv;
        return;
    }
    const __m256 gt = _mm256_cmp_ps(v, *best, _CMP_GT_OQ);
    *best = _mm256_blendv_ps(*best, v, gt);
    *arg = _mm256_blendv_ps(*arg, kv, gt);
}
#endif

#define BCHUNK 16 /* blocks whose cells, then pixels, are labelled together (seg_labels) */
#define ROW_CAND 8 /* a cell's candidates up to which its row runs are pruned first */
/* Output pixels per cell from which the cells' candidates are also tested pairwise: each
 * candidate that survives costs every pixel of the cell an interpolation, and the test costs
 * four corner loads per candidate (Zen 4, 336x448 logits: to 512x683, 2.3 pixels a cell, the
 * label stage took 1.1x the time with it, 10 and 847 classes) */
#define DOMINANCE_PIXELS 8
/* Argmax labels of the run of output pixels of row Y from X on that share X's source columns
 * (one cell), n <= ROW_CAND candidates; returns the run's end. Along the row each class is
 * (in exact arithmetic) a convex combination of its values e0, e1 at the cell's two source
 * columns (ly0 p00 + ly1 p10 and ly0 p01 + ly1 p11): a candidate whose max(e0, e1) + m is
 * below another's min(e0, e1) - m cannot win anywhere in the run (m, the block's margin, covers
 * the float rounding of interp() and of e0, e1, as at the cell level). The survivors, still
 * ascending, are evaluated per pixel with interp(); one survivor labels the run outright. */
static int64_t row_run_argmax(int32_t *out, const float *logits, int64_t hw, int64_t w, const int64_t *xs,
                              const coeffs *c, int64_t Y, int64_t X, const int32_t *cand, int32_t n, float m) {
    const int64_t x0 = c->x0[X], x1 = c->x1[X];
    const int64_t end = xs[x0 + 1]; /* x1 is a function of x0: the run is x0's output columns */
    const float ly0 = c->ly0[Y], ly1 = c->ly1[Y];
    const int64_t o0 = c->y0[Y] * w, o1 = c->y1[Y] * w;
    float lo[ROW_CAND], hi[ROW_CAND], ref = -INFINITY;
    for (int32_t t = 0; t < n; t++) {
        const float *p = logits + (size_t)cand[t] * hw;
        const float e0 = ly0 * p[o0 + x0] + ly1 * p[o1 + x0], e1 = ly0 * p[o0 + x1] + ly1 * p[o1 + x1];
        lo[t] = e0 < e1 ? e0 : e1, hi[t] = e0 < e1 ? e1 : e0;
        ref = lo[t] > ref ? lo[t] : ref;
    }
    int32_t keep[ROW_CAND], nk = 0;
    for (int32_t t = 0; t < n; t++)
        if (hi[t] + m >= ref - m) keep[nk++] = cand[t];
    if (nk == 1) {
        for (int64_t x = X; x < end; x++) out[x] = keep[0];
        return end;
    }
#if defined(__AVX__)
    /* interp()'s float operations in its order, 8 pixels of the run per instruction (the four
     * corners are the run's, one broadcast each); > keeps the first maximum, as below */
    const __m256 vy0 = _mm256_set1_ps(ly0), vy1 = _mm256_set1_ps(ly1);
    for (int64_t x = X; x < end; x += 8) {
        const int64_t nx = end - x < 8 ? end - x : 8;
        const __m256i lanes = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)nx),
                                                 _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        const __m256 a0 = _mm256_maskload_ps(c->lx0 + x, lanes), a1 = _mm256_maskload_ps(c->lx1 + x, lanes);
        __m256 best = _mm256_setzero_ps(), arg = _mm256_setzero_ps();
        for (int32_t t = 0; t < nk; t++)
            argmax8(interp8(a0, a1, vy0, vy1, logits + (size_t)keep[t] * hw, o0, o1, x0, x1), keep[t], t == 0,
                    &best, &arg);
        int32_t lab[8]; /* a masked store is slow on AMD cores */
        _mm256_storeu_si256((__m256i *)lab, _mm256_castps_si256(arg));
        for (int64_t i = 0; i < nx; i++) out[x + i] = lab[i];
    }
#else
    for (int64_t x = X; x < end; x++) {
        float best = interp(logits + (size_t)keep[0] * hw, w, c, Y, x);
        int32_t arg = keep[0];
        for (int32_t t = 1; t < nk; t++) {
            const float v = interp(logits + (size_t)keep[t] * hw, w, c, Y, x);
            if (v > best) { best = v; arg = keep[t]; }
        }
        out[x] = arg;
    }
#endif
    return end;
}

/* The naive kernel's test 1 / sum < bg_threshold at one pixel from float sums lo, up of its C
 * ops_expf terms (lo without the clamped ones), bracketed with `slack`; where that straddles the
 * threshold (or a value is not finite: bad), the naive kernel's double sum in its order over
 * the pixel's values v[k * stride] and best. Shared by bg_run_all and labels_bg_rows. */
static inline int bg_below(float lo, float up, int bad, double slack, double hi_thr, double lo_thr,
                           const float *v, int64_t stride, int64_t C, float best, float s, float bg_threshold) {
    if (!bad && (double)lo * (1.0 - slack) > hi_thr) return 1;
    if (!bad && (double)up * (1.0 + slack) < lo_thr) return 0;
    double sum = 0;
    for (int64_t k = 0; k < C; k++) sum += exp((double)s * (v[k * stride] - best));
    return 1.0 / sum < bg_threshold;
}

/* With bg_threshold and at most BG_ALL classes, a cell that is not background throughout takes
 * the naive kernel's arithmetic over every class, 8 output pixels of a row run at a time: with
 * few classes the cells' brackets rarely decide, and per pixel every class's exp was taken anyway
 * (10 classes to 2048x2731: most of the label stage's time). */
#define BG_ALL 32
/* The run of output pixels of row Y from X on that share X's source columns (one cell whose
 * values are finite), every class: values by interp()'s float operations in its order, the
 * argmax by > in class order (the first maximum), then 1 / sum_k exp(s (v_k - best)) <
 * bg_threshold bracketed from float sums of ops_expf terms (per term the slack of exp_up /
 * exp_lo; s (v - best) rounded to float is exactly (float)((double)s (v - best)); the float
 * sum of C positive terms adds at most C 2^-24 relative: C 1.2e-7 more slack), the naive
 * kernel's double sum where the bracket straddles the threshold. Returns the run's end. */
static int64_t bg_run_all(int32_t *out, const float *logits, int64_t C, int64_t hw, int64_t w,
                          const int64_t *xs, const coeffs *c, int64_t Y, int64_t X, float s,
                          float bg_threshold, int32_t bg_label, double inv_thr) {
    const int64_t x0 = c->x0[X], x1 = c->x1[X], end = xs[x0 + 1];
    const int64_t o0 = c->y0[Y] * w, o1 = c->y1[Y] * w;
    const float ly0 = c->ly0[Y], ly1 = c->ly1[Y];
    const double slack = EXP_SLACK + (double)C * 1.2e-7;
    const double hi_thr = inv_thr * (1 + THR_SLACK), lo_thr = inv_thr * (1 - THR_SLACK);
    float v[BG_ALL][8];
    for (int64_t xb = X; xb < end; xb += 8) {
        const int64_t nx = end - xb < 8 ? end - xb : 8;
        float l0[8], l1[8], best[8], up[8], lo[8];
        int32_t arg[8];
        for (int i = 0; i < 8; i++) {
            const int64_t x = i < nx ? xb + i : xb; /* lanes past the run repeat its first pixel */
            l0[i] = c->lx0[x], l1[i] = c->lx1[x];
        }
#if defined(__AVX__)
        {
            const __m256 a0 = _mm256_loadu_ps(l0), a1 = _mm256_loadu_ps(l1);
            const __m256 vy0 = _mm256_set1_ps(ly0), vy1 = _mm256_set1_ps(ly1);
            __m256 vb = _mm256_setzero_ps(), va = _mm256_setzero_ps();
            for (int64_t k = 0; k < C; k++) {
                const __m256 val = interp8(a0, a1, vy0, vy1, logits + (size_t)k * hw, o0, o1, x0, x1);
                _mm256_storeu_ps(v[k], val);
                argmax8(val, (int32_t)k, k == 0, &vb, &va);
            }
            _mm256_storeu_ps(best, vb);
            _mm256_storeu_si256((__m256i *)arg, _mm256_castps_si256(va));
        }
#else
        for (int64_t k = 0; k < C; k++) {
            const float *p = logits + (size_t)k * hw;
            const float a = p[o0 + x0], b = p[o0 + x1], d = p[o1 + x0], e = p[o1 + x1];
            for (int i = 0; i < 8; i++) {
                const float val = ly0 * (l0[i] * a + l1[i] * b) + ly1 * (l0[i] * d + l1[i] * e);
                v[k][i] = val;
                const int gt = k == 0 || val > best[i];
                best[i] = gt ? val : best[i];
                arg[i] = gt ? (int32_t)k : arg[i];
            }
        }
#endif
#if defined(__AVX2__) && defined(__FMA__)
        {   /* the loop below, 8 lanes per instruction (the same operations) */
            const __m256 vs = _mm256_set1_ps(s), vb = _mm256_loadu_ps(best), lim = _mm256_set1_ps(-87.0f);
            __m256 vu = _mm256_setzero_ps(), vl = vu;
            for (int64_t k = 0; k < C; k++) {
                const __m256 x = _mm256_mul_ps(vs, _mm256_sub_ps(_mm256_loadu_ps(v[k]), vb));
                const __m256 gt = _mm256_cmp_ps(x, lim, _CMP_GT_OQ), ex = expf8(_mm256_blendv_ps(lim, x, gt));
                vu = _mm256_add_ps(vu, ex);
                vl = _mm256_add_ps(vl, _mm256_and_ps(ex, gt));
            }
            _mm256_storeu_ps(up, vu);
            _mm256_storeu_ps(lo, vl);
        }
#else
        for (int i = 0; i < 8; i++) up[i] = lo[i] = 0.0f;
        for (int64_t k = 0; k < C; k++)
            for (int i = 0; i < 8; i++) {
                const float x = s * (v[k][i] - best[i]);
                const float ex = ops_expf(x > -87.0f ? x : -87.0f);
                up[i] += ex;
                lo[i] += x > -87.0f ? ex : 0.0f;
            }
#endif
        for (int64_t i = 0; i < nx; i++)
            out[xb + i] = bg_below(lo[i], up[i], 0, slack, hi_thr, lo_thr, &v[0][i], 8, C, best[i], s, bg_threshold)
                              ? bg_label : arg[i];
    }
    return end;
}

/* With bg_threshold (logit scale > 0), 3..BG_ALL classes, upsampling, and fewer than 3 output
 * pixels per cell along a row (bg_run_all's runs would be short): every class at every pixel
 * as the naive kernel, row by row and separably, each pass over a whole output row so that it
 * vectorises. Per class, the horizontal pass of a source row (lx0 r[x0] + lx1 r[x1], kept for
 * the output rows that read it), then per output row ly0 h0 + ly1 h1: interp()'s operations in
 * its order. Argmax by > in class order; the bracket of bg_run_all (float sums of ops_expf
 * terms, EXP_SLACK + C 1.2e-7), and the naive kernel's double sum where it straddles the
 * threshold or a value is not finite (0 * v flags them). Before, this case ran the naive
 * kernel (under 16 classes) or the cells' brackets, which rarely decide with few classes: 10
 * and 20 classes to 512x683 took 5-10x the time without bg_threshold. */
static int labels_bg_rows(int32_t *labels, const float *logits, int64_t C, int64_t h, int64_t w, int64_t H,
                          int64_t W, float s, float bg_threshold, int32_t bg_label) {
    ovs_arena a;
    ovs_arena_init(&a);
    coeffs c;
    int rc = coeffs_alloc(&c, &a, h, w, H, W, H, W);
    if (rc) goto done;
    const int64_t hw = h * w;
    const double inv_thr = 1.0 / (double)bg_threshold, slack = EXP_SLACK + (double)C * 1.2e-7;
    const double hi_thr = inv_thr * (1 + THR_SLACK), lo_thr = inv_thr * (1 - THR_SLACK);
    ovs_region_error re = OVS_REGION_ERROR_INIT;
#pragma omp parallel num_threads(ovs_get_num_threads())
    {
        /* (2, C, W) two source rows' horizontal passes, (C, W) the output row's values, then
         * per pixel best, up, lo, bad (floats) and arg (int32) */
        float *buf = ovs_malloc(((size_t)3 * C + 5) * (size_t)W * sizeof(float));
        if (!buf)
            ovs_region_fail(&re, OVS_ERR_NOMEM, "label stage: row buffers of %lld classes: %s", (long long)C,
                            ovs_last_error());
        float *hr[2] = {NULL, NULL}, *v = NULL, *best = NULL, *up = NULL, *lo = NULL, *bad = NULL;
        int32_t *arg = NULL;
        int64_t held[2] = {-1, -1};
        if (buf) {
            hr[0] = buf, hr[1] = buf + C * W, v = hr[1] + C * W, best = v + C * W;
            up = best + W, lo = up + W, bad = lo + W, arg = (int32_t *)(bad + W);
        }
#pragma omp for schedule(dynamic, 8)
        for (int64_t Y = 0; Y < H; Y++) {
            if (!buf) continue;
            const float *hy[2];
            for (int u = 0; u < 2; u++) { /* source rows y0, y1: held, or made in the slot the other does not hold */
                const int64_t y = u ? c.y1[Y] : c.y0[Y], other = u ? c.y0[Y] : c.y1[Y];
                int slot = held[0] == y ? 0 : held[1] == y ? 1 : -1;
                if (slot < 0) {
                    slot = held[0] == other ? 1 : 0;
                    for (int64_t k = 0; k < C; k++) {
                        const float *r = logits + (size_t)k * hw + y * w;
                        float *d = hr[slot] + k * W;
                        for (int64_t X = 0; X < W; X++) d[X] = c.lx0[X] * r[c.x0[X]] + c.lx1[X] * r[c.x1[X]];
                    }
                    held[slot] = y;
                }
                hy[u] = hr[slot];
            }
            const float ly0 = c.ly0[Y], ly1 = c.ly1[Y];
            for (int64_t k = 0; k < C; k++) {
                const float *p0 = hy[0] + k * W, *p1 = hy[1] + k * W;
                float *vk = v + k * W;
                for (int64_t X = 0; X < W; X++) vk[X] = ly0 * p0[X] + ly1 * p1[X];
            }
            for (int64_t X = 0; X < W; X++) {
                best[X] = v[X], arg[X] = 0, bad[X] = 0.0f * v[X];
                up[X] = lo[X] = 0.0f;
            }
            for (int64_t k = 1; k < C; k++) {
                const float *vk = v + k * W;
                for (int64_t X = 0; X < W; X++) {
                    const int gt = vk[X] > best[X];
                    best[X] = gt ? vk[X] : best[X];
                    arg[X] = gt ? (int32_t)k : arg[X];
                    bad[X] += 0.0f * vk[X];
                }
            }
            for (int64_t k = 0; k < C; k++) {
                const float *vk = v + k * W;
                for (int64_t X = 0; X < W; X++) {
                    const float x = s * (vk[X] - best[X]);
                    const float e = ops_expf(x > -87.0f ? x : -87.0f);
                    up[X] += e;
                    lo[X] += x > -87.0f ? e : 0.0f;
                }
            }
            int32_t *out = labels + Y * W;
            for (int64_t X = 0; X < W; X++)
                out[X] = bg_below(lo[X], up[X], bad[X] != 0.0f, slack, hi_thr, lo_thr, v + X, W, C, best[X], s,
                                  bg_threshold) ? bg_label : arg[X];
        }
        ovs_free(buf);
    }
    rc = ovs_region_finish(&re);
done:
    ovs_arena_free(&a);
    return rc;
}

/* Whether cell j of the current cell row has one label at all its pixels (background
 * throughout, or a single candidate and, with bg_threshold, background nowhere), and which. */
static inline int cell_one(const label_work *lw, int64_t j, int bg, int32_t bg_label, int32_t *label) {
    if (lw->call_bg[j]) {
        *label = bg_label;
        return 1;
    }
    if ((!bg || lw->call_fg[j]) && lw->ccount[j] == 1) {
        *label = lw->ccand[lw->coff[j]];
        return 1;
    }
    return 0;
}

/* ovs_seg_labels; pre: the logits' block bounds, NULL to take them in a streaming pass */
static int seg_labels(int32_t *labels, const float *logits, int64_t C, int64_t h, int64_t w, int64_t H,
                      int64_t W, float logit_scale, float bg_threshold, int32_t bg_label,
                      const block_bounds *pre) {
    int rc = check_up(C, h, w, H, W, logit_scale);
    if (rc) return rc;
    const int bg = bg_threshold > 0;
    if (bg && logit_scale > 0 && C > 2 && C <= BG_ALL && H * W >= h * w && W < 3 * w && W <= ((int64_t)1 << 24))
        return labels_bg_rows(labels, logits, C, h, w, H, W, logit_scale, bg_threshold, bg_label);
    if (labels_take_naive(C, h, w, H, W, logit_scale, bg_threshold))
        return ovs_seg_labels_naive(labels, logits, C, h, w, H, W, logit_scale, bg_threshold, bg_label);
    ovs_arena a;
    ovs_arena_init(&a);
    coeffs c;
    if ((rc = coeffs_alloc(&c, &a, h, w, H, W, H, W))) goto done;
    /* output rows whose top source row is i: [ys[i], ys[i + 1]) (y0 is non-decreasing) */
    int64_t *ys = (int64_t *)ovs_arena_floats(&a, (size_t)(h + 1) * 2);
    if (!ys) { rc = OVS_ERR_NOMEM; goto done; }
    for (int64_t i = 0, Y = 0; i <= h; i++) {
        while (Y < H && c.y0[Y] < i) Y++;
        ys[i] = Y;
    }
    /* output columns whose left source column is j: [xs[j], xs[j + 1]) (x0 is non-decreasing) */
    int64_t *xs = (int64_t *)ovs_arena_floats(&a, (size_t)(w + 1) * 2);
    if (!xs) { rc = OVS_ERR_NOMEM; goto done; }
    for (int64_t j = 0, X = 0; j <= w; j++) {
        while (X < W && c.x0[X] < j) X++;
        xs[j] = X;
    }
    const int64_t hw = h * w, nbr = (h + LB - 1) / LB;
    const double inv_thr = bg ? 1.0 / (double)bg_threshold : 0.0;
    /* row runs of >= 3 pixels per cell on average: pruning a run's candidates pays (at 1.5 it
     * costs ~10%, Zen 4); with bg_threshold in cells that are background nowhere */
    const int row_runs = W >= 3 * w;
    /* bg_run_all over runs of >= 3 pixels per cell on average (at 2.3, 30 classes to 512x683, it
     * took 1.08x the brackets' time; at 3, 1024x1365, 0.74x; 10 and 20 classes to 2048x2731
     * 0.39x and 0.33x: Zen 4, 1 thread) */
    const int bg_runs = bg && C <= BG_ALL && W >= 3 * w;
    ovs_region_error re = OVS_REGION_ERROR_INIT;
#pragma omp parallel num_threads(ovs_get_num_threads())
    {
        label_work lw = {.C = C, .h = h, .w = w, .nb = (w + LB - 1) / LB, .s = logit_scale, .bg = bg,
                         .inv_thr = inv_thr, .dominance = H * W >= DOMINANCE_PIXELS * h * w};
        int ok = label_work_alloc(&lw);
        if (!ok) /* this thread's own message, with what it was for */
            ovs_region_fail(&re, OVS_ERR_NOMEM, "label stage: block buffers of %lld classes: %s", (long long)C,
                            ovs_last_error());
#pragma omp for schedule(dynamic, 1)
        for (int64_t ib = 0; ib < nbr; ib++) {
            const int64_t i_end = ib * LB + LB < h ? ib * LB + LB : h;
            if (!ok || ys[ib * LB] == ys[i_end]) continue; /* no output row in this block row */
            block_row_build(&lw, logits, ib, pre);
            if (!block_offsets(&lw)) {
                ovs_region_fail(&re, OVS_ERR_NOMEM, "label stage: candidate lists of %lld classes: %s",
                                (long long)C, ovs_last_error());
                ok = 0;
                continue;
            }
            /* BCHUNK blocks at a time: their cells, block by block, then their pixels (the
             * candidates' rows still in L2) */
            for (int64_t b0 = 0; b0 < lw.nb; b0 += BCHUNK) {
                const int64_t b1 = b0 + BCHUNK < lw.nb ? b0 + BCHUNK : lw.nb;
                for (int64_t b = b0; b < b1; b++) {
                    if (b + 1 < lw.nb) { /* the next block's candidates' rows, while this one runs */
                        const int32_t *nbc = lw.bcand + (b + 1) * C;
                        const int64_t r1 = i_end < h ? i_end : h - 1;
                        for (int32_t t = 0; t < lw.bcount[b + 1]; t++)
                            for (int64_t r = ib * LB; r <= r1; r++) {
                                const float *q = logits + (size_t)nbc[t] * hw + r * w + (b + 1) * LB;
                                __builtin_prefetch(q), __builtin_prefetch(q + LB);
                            }
                    }
                    for (int64_t i = ib * LB; i < i_end; i++) {
                        if (ys[i] == ys[i + 1]) continue;
                        label_row(&lw, i - ib * LB);
                        cell_row_block(&lw, logits, i, b);
                    }
                }
                /* output columns [xa, xb): the pixels whose left source column is in the chunk */
                const int64_t xa = xs[b0 * LB], xb = xs[b1 * LB < w ? b1 * LB : w];
                for (int64_t i = ib * LB; i < i_end; i++) {
                    if (ys[i] == ys[i + 1]) continue;
                    label_row(&lw, i - ib * LB);
                    for (int64_t Y = ys[i]; Y < ys[i + 1]; Y++) {
                        int32_t *out = labels + Y * W;
                        for (int64_t X = xa; X < xb; X++) {
                            const int64_t j = c.x0[X];
                            /* A cell of one label (background throughout, or argmax with a
                             * single candidate): its pixels of this row, and those of the cells
                             * after it with the same one label, filled as one run (pixel by
                             * pixel this loop was ~45% of 10 classes to 2048x2731, 1 thread) */
                            int32_t one, next;
                            if (cell_one(&lw, j, bg, bg_label, &one)) {
                                int64_t j1 = j + 1;
                                while (j1 < w && xs[j1] < xb && cell_one(&lw, j1, bg, bg_label, &next) && next == one)
                                    j1++;
                                const int64_t e = j1 < w && xs[j1] < xb ? xs[j1] : xb;
                                for (; X < e; X++) out[X] = one;
                                X--;
                                continue;
                            }
                            const int32_t *cand = lw.ccand + lw.coff[j], n = lw.ccount[j];
                            /* argmax only, or background nowhere in the cell: the argmax's labels */
                            if (row_runs && (!bg || lw.call_fg[j]) && n <= ROW_CAND && isfinite(lw.bmarg[j / LB])) {
                                X = row_run_argmax(out, logits, hw, w, xs, &c, Y, X, cand, n, lw.bmarg[j / LB]) - 1;
                                continue;
                            }
                            if (bg_runs && isfinite(lw.bmarg[j / LB])) {
                                X = bg_run_all(out, logits, C, hw, w, xs, &c, Y, X, logit_scale, bg_threshold,
                                               bg_label, inv_thr) - 1;
                                continue;
                            }
                            float best = interp(logits + (size_t)cand[0] * hw, w, &c, Y, X);
                            int32_t arg = cand[0];
                            for (int32_t t = 1; t < n; t++) {
                                const float v = interp(logits + (size_t)cand[t] * hw, w, &c, Y, X);
                                if (v > best) { best = v; arg = cand[t]; }
                            }
                            if (bg) {
                                int below; /* the naive test: 1 / sum < bg_threshold */
                                if (n == C) { /* every class: the naive kernel's sum, in its order */
                                    double sum = 0;
                                    for (int32_t t = 0; t < n; t++)
                                        sum += exp((double)logit_scale *
                                                   (interp(logits + (size_t)cand[t] * hw, w, &c, Y, X) - best));
                                    below = 1.0 / sum < bg_threshold;
                                } else {
                                    /* the candidates' terms bracketed (the argmax's is exp(0) = 1), the
                                     * dropped classes' first at the cell's extremes of best, then at
                                     * this pixel's; the naive kernel's sum only if still too close */
                                    double plo = 1.0, phi = 1.0;
                                    for (int32_t t = 0; t < n; t++) {
                                        if (cand[t] == arg) continue;
                                        exp_both((double)logit_scale *
                                                     (interp(logits + (size_t)cand[t] * hw, w, &c, Y, X) - best),
                                                 &plo, &phi);
                                    }
                                    const double hi_thr = inv_thr * (1 + THR_SLACK), lo_thr = inv_thr * (1 - THR_SLACK);
                                    if (plo + lw.cs_lo_min[j] > hi_thr) below = 1;
                                    else if (phi + lw.cs_hi_max[j] < lo_thr) below = 0;
                                    else {
                                        /* exp(s (cref - best)), s (cref - best) <= s m: about 1 */
                                        double el = 0.0, eu = 0.0;
                                        exp_both((double)logit_scale * ((double)lw.cref[j] - best), &el, &eu);
                                        if (plo + lw.cs_lo[j] * el > hi_thr) below = 1;
                                        else if (phi + lw.cs_hi[j] * eu < lo_thr) below = 0;
                                        else below = bg_exact(logits, C, hw, w, &c, Y, X, best, logit_scale,
                                                              bg_threshold, inv_thr);
                                    }
                                }
                                if (below) arg = bg_label;
                            }
                            out[X] = arg;
                        }
                    }
                }
            }
        }
        label_work_free(&lw);
    }
    rc = ovs_region_finish(&re);
done:
    ovs_arena_free(&a);
    return rc;
}

int ovs_seg_labels(int32_t *labels, const float *logits, int64_t C, int64_t h, int64_t w,
                   int64_t H, int64_t W, float logit_scale, float bg_threshold, int32_t bg_label) {
    return seg_labels(labels, logits, C, h, w, H, W, logit_scale, bg_threshold, bg_label, NULL);
}

int ovs_seg_labels_bounded(int32_t *labels, const float *logits, int64_t C, int64_t h, int64_t w, int64_t H,
                           int64_t W, float logit_scale, float bg_threshold, int32_t bg_label,
                           const float *bounds) {
    const block_bounds bb = bounds_view((float *)bounds, C, h, w); /* read only */
    return seg_labels(labels, logits, C, h, w, H, W, logit_scale, bg_threshold, bg_label, &bb);
}

#define KEEP_LOGITS_FLOATS ((size_t)128 << 20) /* 512 MiB of logits kept between calls at most */

int ovs_seg_image_labels(ovs_segmenter *s, int32_t *labels, const uint8_t *image, int64_t H, int64_t W,
                         int64_t row_stride, int64_t pixel_stride, int64_t Hp, int64_t Wp,
                         const float mean[3], const float std[3], const float *classifier, int64_t C,
                         int64_t OH, int64_t OW, float logit_scale, float bg_threshold, int32_t bg_label,
                         int64_t *nonfinite) {
    *nonfinite = 0;
    int rc = check_up(C, Hp, Wp, OH, OW, logit_scale);
    if (rc) return rc;
    const int64_t HW = Hp * Wp;
    if (C > (int64_t)(SIZE_MAX / sizeof(float)) / HW)
        return ovs_set_error(OVS_ERR_OVERFLOW, "logits of %lld classes at %lldx%lld overflow", (long long)C,
                             (long long)Hp, (long long)Wp);
    const int fast = !labels_take_naive(C, Hp, Wp, OH, OW, logit_scale, bg_threshold);
    /* the logits and bounds live in the segmenter's arena: kept between calls, so a steady
     * stream of images does not fault in (and the kernel zero) C Hp Wp fresh floats per call */
    ovs_arena_reset(&s->arena);
    float *map = ovs_arena_floats(&s->arena, (size_t)C * HW), *bounds = NULL;
    if (!map) {
        rc = ovs_set_error(OVS_ERR_NOMEM, "out of memory for the (%lld, %lld, %lld) logits", (long long)C,
                           (long long)Hp, (long long)Wp);
        goto done;
    }
    if (fast && !(bounds = ovs_arena_floats(&s->arena, ovs_seg_block_bounds_floats(C, Hp, Wp)))) {
        rc = ovs_set_error(OVS_ERR_NOMEM, "out of memory for the logits' block bounds");
        goto done;
    }
    const block_bounds bb = fast ? bounds_view(bounds, C, Hp, Wp) : (block_bounds){0};
    const size_t nbb = (size_t)bb.nbr * C * bb.nb;
    if ((rc = seg_logits(s, map, image, H, W, row_stride, pixel_stride, Hp, Wp, mean, std, classifier, C,
                         fast ? &bb : NULL, NULL)))
        goto done;
    /* non-finite logits: counted for the caller's message, no labels */
    int any = 0;
    if (fast) {
        for (size_t i = 0; i < nbb && !any; i++) any = bb.nan[i] != 0.0f;
    } else {
        for (size_t i = 0; i < (size_t)C * HW && !any; i++) any = !isfinite(map[i]);
    }
    if (any) {
        for (size_t i = 0; i < (size_t)C * HW; i++) *nonfinite += !isfinite(map[i]);
        goto done;
    }
    rc = seg_labels(labels, map, C, Hp, Wp, OH, OW, logit_scale, bg_threshold, bg_label, fast ? &bb : NULL);
done:
    if ((size_t)C * HW > KEEP_LOGITS_FLOATS) ovs_segmenter_release_workspace(s); /* too big to keep */
    return rc;
}

void ovs_segmenter_release_workspace(ovs_segmenter *s) {
    ovs_arena_free(&s->arena);
    ovs_arena_free(&s->work);
    ovs_arena_init(&s->arena);
    ovs_arena_init(&s->work);
}

/* ---------------------------------------------------------------- grouped label stage
 * SCLIP's postprocess_result: softmax over queries, max over each class's queries, area filter,
 * probability threshold. See include/ovs/methods.h. */
static int check_groups(const int32_t *qc, int64_t Q, int64_t C) {
    if (C <= 0 || C > Q) return ovs_set_error(OVS_ERR_ARG, "need 1 <= classes <= queries, got %lld classes for %lld queries",
                                              (long long)C, (long long)Q);
    if (C > INT32_MAX) return ovs_set_error(OVS_ERR_OVERFLOW, "too many classes");
    unsigned char *seen = ovs_malloc((size_t)C);
    if (!seen) return ovs_set_error(OVS_ERR_NOMEM, "out of memory");
    memset(seen, 0, (size_t)C);
    int rc = OVS_OK;
    for (int64_t q = 0; q < Q && !rc; q++) {
        if (qc[q] < 0 || qc[q] >= C)
            rc = ovs_set_error(OVS_ERR_ARG, "query %lld maps to class %d, outside 0..%lld", (long long)q, (int)qc[q],
                               (long long)C - 1);
        else seen[qc[q]] = 1;
    }
    for (int64_t c = 0; c < C && !rc; c++)
        if (!seen[c]) rc = ovs_set_error(OVS_ERR_ARG, "class %lld has no query", (long long)c);
    ovs_free(seen);
    return rc;
}

/* Class probabilities (C,) of one pixel from its Q contiguous query logits v: softmax of s * v
 * over queries (float exps, double sum, as ovs_seg_upsample), then max per class. e: (Q,) scratch. */
static inline void class_probs(float *P, float *e, const float *v, int64_t Q, const int32_t *qc, int64_t C,
                               float s) {
    ovs_softmax_scaled_vec(e, 1, v, 1, Q, s);
    for (int64_t c = 0; c < C; c++) P[c] = 0.0f; /* probabilities are >= 0: 0 is max's identity */
    for (int64_t q = 0; q < Q; q++)
        if (e[q] > P[qc[q]]) P[qc[q]] = e[q];
}

static inline int32_t argmax_first(const float *P, int64_t C, float *best) {
    int32_t arg = 0;
    float b = P[0];
    for (int64_t c = 1; c < C; c++)
        if (P[c] > b) { b = P[c]; arg = (int32_t)c; }
    *best = b;
    return arg;
}

/* keep[c] for classes c >= 1 from their argmax areas (SCLIP: area > area_thd * sum of areas,
 * in float32 as torch computes it); keep[0] = 1. Returns the number of removed classes. */
static int64_t area_keep(unsigned char *keep, const int64_t *area, int64_t C, float area_thd) {
    int64_t total = 0, removed = 0;
    for (int64_t c = 1; c < C; c++) total += area[c];
    const float lim = area_thd * (float)total;
    keep[0] = 1;
    for (int64_t c = 1; c < C; c++) {
        keep[c] = (float)area[c] > lim;
        removed += !keep[c];
    }
    return removed;
}

int ovs_seg_labels_grouped_naive(int32_t *labels, const float *logits, int64_t Q, int64_t h,
                                 int64_t w, int64_t H, int64_t W, const int32_t *qc, int64_t C,
                                 float s, float prob_thd, int32_t bg_label, float area_thd) {
    int rc = check_up(Q, h, w, H, W, s);
    if (rc || (rc = check_groups(qc, Q, C))) return rc;
    const int64_t HW = H * W;
    float *probs = ovs_malloc((size_t)Q * HW * sizeof(float));
    float *P = ovs_malloc((size_t)C * HW * sizeof(float));
    int64_t *area = ovs_malloc((size_t)C * sizeof(int64_t));
    unsigned char *keep = ovs_malloc((size_t)C);
    if (!probs || !P || !area || !keep) {
        rc = ovs_set_error(OVS_ERR_NOMEM, "out of memory for (%lld, %lld, %lld) probabilities", (long long)Q,
                           (long long)H, (long long)W);
        goto done;
    }
    /* seg_logits = softmax(logit_scale * logits) over queries */
    if ((rc = ovs_seg_upsample(probs, logits, Q, h, w, H, W, s, 1))) goto done;
    /* seg_logits = (seg_logits * one_hot(query_idx)).max(1): class max over its queries */
    for (int64_t c = 0; c < C; c++) memset(P + (size_t)c * HW, 0, (size_t)HW * sizeof(float));
    for (int64_t q = 0; q < Q; q++) {
        float *dst = P + (size_t)qc[q] * HW;
        const float *src = probs + (size_t)q * HW;
        for (int64_t i = 0; i < HW; i++)
            if (src[i] > dst[i]) dst[i] = src[i];
    }
    if (area_thd >= 0) { /* area of each class's argmax; zero the small foreground classes */
        memset(area, 0, (size_t)C * sizeof(int64_t));
        for (int64_t i = 0; i < HW; i++) {
            int32_t arg = 0;
            float b = P[i];
            for (int64_t c = 1; c < C; c++)
                if (P[(size_t)c * HW + i] > b) { b = P[(size_t)c * HW + i]; arg = (int32_t)c; }
            area[arg]++;
        }
        area_keep(keep, area, C, area_thd);
        for (int64_t c = 1; c < C; c++)
            if (!keep[c]) memset(P + (size_t)c * HW, 0, (size_t)HW * sizeof(float));
    }
    /* seg_pred = argmax; seg_pred[max < prob_thd] = bg */
    for (int64_t i = 0; i < HW; i++) {
        int32_t arg = 0;
        float b = P[i];
        for (int64_t c = 1; c < C; c++)
            if (P[(size_t)c * HW + i] > b) { b = P[(size_t)c * HW + i]; arg = (int32_t)c; }
        labels[i] = b < prob_thd ? bg_label : arg;
    }
done:
    ovs_free(probs);
    ovs_free(P);
    ovs_free(area);
    ovs_free(keep);
    return rc;
}

int ovs_seg_labels_grouped(int32_t *labels, const float *logits, int64_t Q, int64_t h, int64_t w,
                           int64_t H, int64_t W, const int32_t *qc, int64_t C, float s,
                           float prob_thd, int32_t bg_label, float area_thd) {
    int rc = check_up(Q, h, w, H, W, s);
    if (rc || (rc = check_groups(qc, Q, C))) return rc;
    ovs_arena a;
    ovs_arena_init(&a);
    coeffs c;
    const int64_t hw = h * w, HW = H * W;
    unsigned char *below = ovs_malloc((size_t)HW), *keep = ovs_malloc((size_t)C);
    int64_t *area = ovs_malloc((size_t)C * sizeof(int64_t));
    ovs_region_error re = OVS_REGION_ERROR_INIT;
    int64_t removed = 0;
    if (!below || !keep || !area) {
        rc = ovs_set_error(OVS_ERR_NOMEM, "out of memory for the grouped label stage");
        goto done;
    }
    if ((rc = coeffs_alloc(&c, &a, h, w, H, W, H, W))) goto done;
    memset(area, 0, (size_t)C * sizeof(int64_t));
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 1) {
            if (area_thd < 0 || !(removed = area_keep(keep, area, C, area_thd))) break;
        }
#pragma omp parallel num_threads(ovs_get_num_threads())
        {
            /* (W, Q) interpolated row (each pixel's queries contiguous), (C,) class probabilities,
             * (Q,) exps, (C,) local areas */
            float *row = ovs_malloc(((size_t)Q * W + (size_t)C + (size_t)Q + (size_t)Q * 64) * sizeof(float));
            int64_t *la = pass == 0 ? ovs_malloc((size_t)C * sizeof(int64_t)) : NULL;
            if (!row || (pass == 0 && !la)) { /* this thread's own message, with what it was for */
                ovs_region_fail(&re, OVS_ERR_NOMEM, "grouped label stage: row buffer of %lld queries: %s",
                                (long long)Q, ovs_last_error());
            } else if (la) {
                memset(la, 0, (size_t)C * sizeof(int64_t));
            }
            float *P = row ? row + (size_t)Q * W : NULL, *ex = P ? P + C : NULL;
#pragma omp for schedule(dynamic, 4)
            for (int64_t Y = 0; Y < H; Y++) {
                if (!row || (pass == 0 && !la)) continue;
                int32_t *out = labels + Y * W;
                if (pass == 1) { /* only rows holding a removed class's pixel */
                    int64_t X = 0;
                    while (X < W && keep[out[X]]) X++;
                    if (X == W) continue;
                }
                {   /* (Q, W) rows, vectorisable, then transposed to (W, Q) in cache-sized blocks */
                    float *tmp = ex + Q; /* (Q, TB) */
                    const int64_t TB = 64;
                    for (int64_t X0 = 0; X0 < W; X0 += TB) {
                        const int64_t nb = W - X0 < TB ? W - X0 : TB;
                        const float ly0 = c.ly0[Y], ly1 = c.ly1[Y];
                        for (int64_t q = 0; q < Q; q++) {
                            const float *plane = logits + (size_t)q * hw;
                            const float *r0 = plane + c.y0[Y] * w, *r1 = plane + c.y1[Y] * w;
                            float *t = tmp + q * TB;
                            for (int64_t b = 0; b < nb; b++) {
                                const int64_t X = X0 + b;
                                t[b] = ly0 * (c.lx0[X] * r0[c.x0[X]] + c.lx1[X] * r0[c.x1[X]]) +
                                       ly1 * (c.lx0[X] * r1[c.x0[X]] + c.lx1[X] * r1[c.x1[X]]);
                            }
                        }
                        for (int64_t b = 0; b < nb; b++)
                            for (int64_t q = 0; q < Q; q++) row[(X0 + b) * Q + q] = tmp[q * TB + b];
                    }
                }
                for (int64_t X = 0; X < W; X++) {
                    if (pass == 1 && keep[out[X]]) continue;
                    class_probs(P, ex, row + X * Q, Q, qc, C, s);
                    if (pass == 1)
                        for (int64_t k = 1; k < C; k++)
                            if (!keep[k]) P[k] = 0.0f;
                    float best;
                    const int32_t arg = argmax_first(P, C, &best);
                    out[X] = arg;
                    below[Y * W + X] = best < prob_thd;
                    if (la) la[arg]++;
                }
            }
            if (la) {
#pragma omp critical(ovs_grouped_area)
                for (int64_t k = 0; k < C; k++) area[k] += la[k];
            }
            ovs_free(row);
            ovs_free(la);
        }
        if ((rc = ovs_region_finish(&re))) goto done;
    }
    if (prob_thd > 0)
        for (int64_t i = 0; i < HW; i++)
            if (below[i]) labels[i] = bg_label;
done:
    ovs_arena_free(&a);
    ovs_free(below);
    ovs_free(keep);
    ovs_free(area);
    return rc;
}

int ovs_seg_prompt_denoise(float *logits, int64_t C, int64_t n, float scale, float thresh) {
    if (C <= 0 || n <= 0) return ovs_set_error(OVS_ERR_ARG, "empty logits (%lld, %lld)", (long long)C, (long long)n);
    if (!isfinite(scale) || !isfinite(thresh)) return ovs_set_error(OVS_ERR_ARG, "scale and thresh must be finite");
    float *mx = ovs_malloc((size_t)2 * C * sizeof(float)); /* (C,) max probability, (C,) one column */
    if (!mx) return ovs_set_error(OVS_ERR_NOMEM, "out of memory");
    float *p = mx + C;
    for (int64_t k = 0; k < C; k++) mx[k] = 0.0f;
    for (int64_t g = 0; g < n; g++) {
        ovs_softmax_scaled_vec(p, 1, logits + g, n, C, scale);
        for (int64_t k = 0; k < C; k++)
            if (p[k] > mx[k]) mx[k] = p[k];
    }
    for (int64_t k = 0; k < C; k++)
        if (mx[k] < thresh)
            for (int64_t g = 0; g < n; g++) logits[k * n + g] = -100.0f;
    ovs_free(mx);
    return OVS_OK;
}


int ovs_seg_key_smooth(float *logits, int64_t C, int64_t n, const float *keys, int64_t Dk, float scale,
                       float thresh) {
    if (C <= 0 || n <= 0 || Dk <= 0)
        return ovs_set_error(OVS_ERR_ARG, "empty logits or keys (%lld, %lld, %lld)", (long long)C, (long long)n,
                             (long long)Dk);
    if (!isfinite(scale) || !isfinite(thresh)) return ovs_set_error(OVS_ERR_ARG, "scale and thresh must be finite");
    if (n > INT32_MAX / 4 || C > INT32_MAX / 4 || Dk > INT32_MAX / 4)
        return ovs_set_error(OVS_ERR_OVERFLOW, "key smoothing sizes too large");
    size_t nn;
    if (ovs_mul_size(&nn, (size_t)n, (size_t)n)) return ovs_set_error(OVS_ERR_OVERFLOW, "key smoothing: %lld positions", (long long)n);
    float *kn = ovs_malloc((size_t)n * Dk * sizeof(float));  /* (n, Dk) normalised keys */
    float *w = ovs_malloc(nn * sizeof(float));                /* (n, n) similarities */
    float *p = ovs_malloc((size_t)C * n * sizeof(float));     /* (C, n) probabilities */
    float *sm = ovs_malloc((size_t)C * n * sizeof(float));    /* (C, n) p @ W^T */
    int rc = OVS_OK;
    if (!kn || !w || !p || !sm) {
        rc = ovs_set_error(OVS_ERR_NOMEM, "out of memory for key smoothing over %lld positions", (long long)n);
        goto done;
    }
    /* p = softmax(scale * logits) over classes, per position */
    for (int64_t g = 0; g < n; g++) ovs_softmax_scaled_vec(p + g, n, logits + g, n, C, scale);
    /* each key channel L2-normalised over the positions (F.normalize(k, p=2), dim 1, eps 1e-12) */
    for (int64_t d = 0; d < Dk; d++) {
        double ss = 0;
        for (int64_t g = 0; g < n; g++) ss += (double)keys[g * Dk + d] * keys[g * Dk + d];
        const float inv = (float)(1.0 / fmax(sqrt(ss), 1e-12));
        for (int64_t g = 0; g < n; g++) kn[g * Dk + d] = keys[g * Dk + d] * inv;
    }
    /* W = kn kn^T; sm (C, n) = p (C, n) @ W^T (W is symmetric) */
    const ovs_matrix km = ovs_matrix_dense(kn, n, Dk), wm = ovs_matrix_dense(w, n, n);
    if ((rc = ovs_matmul_wt(w, n, kn, Dk, &km, n, 1.0f, 0.0f)) ||
        (rc = ovs_matmul_wt(sm, n, p, n, &wm, C, 1.0f, 0.0f)))
        goto done;
    for (int64_t g = 0; g < n; g++) {
        float mx = p[g];
        for (int64_t k = 1; k < C; k++) mx = p[k * n + g] > mx ? p[k * n + g] : mx;
        const int sel = mx < thresh;
        for (int64_t k = 0; k < C; k++) logits[k * n + g] = sel ? sm[k * n + g] : p[k * n + g];
    }
done:
    ovs_free(kn);
    ovs_free(w);
    ovs_free(p);
    ovs_free(sm);
    return rc;
}

int ovs_seg_upsample(float *out, const float *logits, int64_t C, int64_t h, int64_t w, int64_t H,
                     int64_t W, float logit_scale, int softmax) {
    int rc = check_up(C, h, w, H, W, logit_scale);
    if (rc) return rc;
    if (h == H && w == W) memcpy(out, logits, (size_t)C * H * W * sizeof(float));
    else if ((rc = ovs_resize_bilinear(out, logits, C, h, w, H, W, 0))) return rc;
    if (!softmax) return OVS_OK;
    const int64_t HW = H * W;
#pragma omp parallel for schedule(static) num_threads(ovs_get_num_threads())
    for (int64_t i = 0; i < HW; i++) ovs_softmax_scaled_vec(out + i, HW, out + i, HW, C, logit_scale);
    return OVS_OK;
}

/* ---------------------------------------------------------------- label stage with PAMR
 * The class logits are refined at the output size (NACLIP's order: upsample, PAMR, softmax),
 * a block of classes at a time: upsample the block, propagate it, fold it into a running
 * per-pixel maximum, argmax and softmax denominator. Memory: the affinity (P, H, W), two
 * block buffers and (H, W) running state, never (C, H, W). */
int ovs_seg_labels_pamr(int32_t *labels, const float *logits, int64_t C, int64_t h, int64_t w,
                        const float *guide, int64_t K, int64_t H, int64_t W,
                        const int64_t *dilations, int64_t ND, int64_t steps, float logit_scale,
                        float bg_threshold, int32_t bg_label) {
    int rc = check_up(C, h, w, H, W, logit_scale);
    if (rc) return rc;
    if ((rc = ops_pamr_check("ovs_seg_labels_pamr", C, K, H, W, dilations, ND, steps))) return rc;
    const int bg = bg_threshold > 0;
    const int64_t HW = H * W, P = 8 * ND, B = ovs_pamr_block(C, H, W);
    float *aff = ovs_malloc((size_t)P * HW * sizeof(float));   /* (P, H, W) */
    float *blk = ovs_malloc((size_t)B * HW * sizeof(float));   /* (B, H, W) upsampled, refined */
    float *tmp = ovs_malloc((size_t)B * HW * sizeof(float));   /* (B, H, W) ping-pong */
    float *best = ovs_malloc((size_t)HW * sizeof(float));      /* (H, W) running max */
    double *den = bg ? ovs_malloc((size_t)HW * sizeof(double)) : NULL; /* (H, W) sum exp(s (v - best)) */
    if (!aff || !blk || !tmp || !best || (bg && !den)) {
        rc = ovs_set_error(OVS_ERR_NOMEM, "out of memory for PAMR on %lldx%lld pixels "
                           "(%lld bytes of affinity)", (long long)H, (long long)W,
                           (long long)(P * HW * 4));
        goto done;
    }
    if ((rc = ovs_pamr_affinity(aff, guide, K, H, W, dilations, ND))) goto done;
    const double s = logit_scale;
    for (int64_t c0 = 0; c0 < C; c0 += B) {
        const int64_t nb = C - c0 < B ? C - c0 : B;
        if (h == H && w == W) memcpy(blk, logits + c0 * HW, (size_t)nb * HW * sizeof(float));
        else if ((rc = ovs_resize_bilinear(blk, logits + c0 * h * w, nb, h, w, H, W, 0))) goto done;
        if ((rc = ovs_pamr_propagate(blk, blk, aff, nb, H, W, dilations, ND, steps, tmp))) goto done;
#pragma omp parallel for schedule(static) num_threads(ovs_get_num_threads())
        for (int64_t i = 0; i < HW; i++) {
            int64_t k = 0;
            if (c0 == 0) { /* class 0 opens the running state */
                best[i] = blk[i];
                labels[i] = 0;
                if (bg) den[i] = 1.0;
                k = 1;
            }
            for (; k < nb; k++) {
                const float v = blk[k * HW + i];
                if (v > best[i]) {
                    if (bg) den[i] = den[i] * exp(s * ((double)best[i] - v)) + 1.0;
                    best[i] = v;
                    labels[i] = (int32_t)(c0 + k);
                } else if (bg) {
                    den[i] += exp(s * ((double)v - best[i]));
                }
            }
        }
    }
    if (bg) {
#pragma omp parallel for schedule(static) num_threads(ovs_get_num_threads())
        for (int64_t i = 0; i < HW; i++)
            if (1.0 / den[i] < bg_threshold) labels[i] = bg_label;
    }
done:
    ovs_free(aff);
    ovs_free(blk);
    ovs_free(tmp);
    ovs_free(best);
    ovs_free(den);
    return rc;
}
