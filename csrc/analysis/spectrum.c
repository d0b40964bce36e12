/* Empirical spectral densities of weight layers and the per-layer α analysis.
 *
 * Letters: O = output channels (rows of W), C = input channels, KH, KW = kernel size,
 * S = KH*KW slices, R = min(O, C) singular values per slice, E = S*R eigenvalues per layer.
 *
 * A row-major (O, C) slice is, read column-major, the (C, O) matrix Wᵀ with leading dimension C;
 * it has the same singular values, so slices go to LAPACK without a transpose. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "analysis/lapack.h"
#include "ovs/analysis.h"

void ovs_esd_options_default(ovs_esd_options *opt) {
    opt->evals_thresh = 1e-5;
    opt->conv_scale = sqrt(0.5);
    opt->max_aspect = 8.0;
    opt->xmin_mode = OVS_XMIN_PEAK;
    opt->method = OVS_ESD_GRAM;
}

const char *ovs_layer_status_name(int status) {
    switch (status) {
    case OVS_LAYER_OK: return "ok";
    case OVS_LAYER_SKIPPED_ASPECT: return "skipped: aspect ratio";
    case OVS_LAYER_NONFINITE: return "non-finite weights";
    case OVS_LAYER_TOO_FEW: return "fewer than 2 eigenvalues above the threshold";
    case OVS_LAYER_NO_FIT: return "no power-law fit (no candidate xmin with alpha > 1)";
    case OVS_LAYER_SVD_FAILED: return "SVD did not converge";
    case OVS_LAYER_UNSUPPORTED: return "unsupported shape";
    default: return "unknown status";
    }
}

/* Shape of a layer as (O, C, S); 0 on success, OVS_ERR_ARG for another rank or an empty dim. */
static int layer_dims(const ovs_tensor *w, int64_t *O, int64_t *C, int64_t *S) {
    if (w->ndim == 2) {
        *O = w->shape[0]; *C = w->shape[1]; *S = 1;
    } else if (w->ndim == 4) {
        *O = w->shape[0]; *C = w->shape[1];
        if (w->shape[2] <= 0 || w->shape[3] <= 0 || w->shape[2] > INT32_MAX / w->shape[3])
            return ovs_set_error(OVS_ERR_ARG, "%s: kernel size %lldx%lld is not usable",
                                 w->name ? w->name : "weight", (long long)w->shape[2], (long long)w->shape[3]);
        *S = w->shape[2] * w->shape[3];
    } else {
        return ovs_set_error(OVS_ERR_ARG, "%s: a spectrum needs a 2-D (linear) or 4-D (conv) weight, got %d dims",
                             w->name ? w->name : "weight", w->ndim);
    }
    if (*O <= 0 || *C <= 0 || *O > INT32_MAX || *C > INT32_MAX)
        return ovs_set_error(OVS_ERR_ARG, "%s: matrix dims %lldx%lld must be in 1..2^31-1",
                             w->name ? w->name : "weight", (long long)*O, (long long)*C);
    return OVS_OK;
}

int64_t ovs_esd_size(const ovs_tensor *w) {
    int64_t O = 0, C = 0, S = 0;
    if (layer_dims(w, &O, &C, &S)) return -1;
    int64_t R = O < C ? O : C;
    size_t e;
    if (ovs_mul_size(&e, (size_t)S, (size_t)R) || e > (size_t)INT64_MAX / sizeof(double)) {
        ovs_set_error(OVS_ERR_OVERFLOW, "%s: spectrum size overflows", w->name ? w->name : "weight");
        return -1;
    }
    return (int64_t)e;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Singular values of every slice by dgesdd (values only): the reference method. */
static int esd_svd(double *evals, const ovs_tensor *w, double scale, int64_t O, int64_t C, int64_t S,
                   int64_t R, size_t oc) {
    int m = (int)C, n = (int)O, lda = m, one = 1, info = 0, lwork = -1, iquery = 0, st = OVS_OK;
    double query = 0.0, dummy = 0.0;
    OVS_LAPACK(dgesdd)("N", &m, &n, &dummy, &lda, &dummy, &dummy, &one, &dummy, &one, &query, &lwork,
                       &iquery, &info, 1);
    if (info != 0 || !(query >= 1.0) || query > (double)INT32_MAX)
        return ovs_set_error(OVS_ERR_UNSUPPORTED, "%s: LAPACK dgesdd workspace query failed (info %d)", w->name, info);
    lwork = (int)query;
    double *a = ovs_malloc(oc * sizeof(double));       /* (O, C) row-major = (C, O) column-major */
    double *work = ovs_malloc((size_t)lwork * sizeof(double));
    int *iwork = ovs_malloc((size_t)(8 * R) * sizeof(int));
    if (!a || !work || !iwork) {
        st = ovs_set_error(OVS_ERR_NOMEM, "%s: out of memory for the SVD of a %lldx%lld matrix", w->name,
                           (long long)O, (long long)C);
        goto done;
    }
    for (int64_t s = 0; s < S; s++) {
        const float *src = w->data + s;  /* slice s: element (o, c) at (o*C + c)*S + s */
        for (size_t j = 0; j < oc; j++) a[j] = (double)src[j * (size_t)S] * scale;
        double *sv = evals + s * R;
        OVS_LAPACK(dgesdd)("N", &m, &n, a, &lda, sv, &dummy, &one, &dummy, &one, work, &lwork, iwork,
                           &info, 1);
        if (info != 0) {
            st = ovs_set_error(OVS_ERR_UNSUPPORTED, "%s: LAPACK dgesdd failed (info %d)", w->name, info);
            goto done;
        }
        for (int64_t r = 0; r < R; r++) sv[r] = sv[r] * sv[r];
    }
done:
    ovs_free(a);
    ovs_free(work);
    ovs_free(iwork);
    return st;
}

/* Eigenvalues of the R x R Gram matrix of every slice (dsyrk, then dsyevd values only): the
 * fast method. λ(G) = σ(W)²; in float64 the absolute error is ~1e-16 λmax, far below the 1e-5
 * threshold, so the kept eigenvalues match the SVD's to ~1e-10 relative. */
static int esd_gram(double *evals, const ovs_tensor *w, double scale, int64_t O, int64_t C, int64_t S,
                    int64_t R, size_t oc) {
    int r = (int)R, k = (int)(O < C ? C : O), lda = (int)C, info = 0, lwork = -1, liwork = -1, st = OVS_OK;
    const char *trans = C <= O ? "N" : "T";   /* A = Wᵀ (C, O) col-major: C<=O: A Aᵀ = WᵀW, else AᵀA = WWᵀ */
    double query = 0.0, dummy = 0.0, one = 1.0, zero = 0.0;
    int iquery = 0;
    OVS_LAPACK(dsyevd)("N", "U", &r, &dummy, &r, &dummy, &query, &lwork, &iquery, &liwork, &info, 1, 1);
    if (info != 0 || !(query >= 1.0) || query > (double)INT32_MAX || iquery < 1)
        return ovs_set_error(OVS_ERR_UNSUPPORTED, "%s: LAPACK dsyevd workspace query failed (info %d)", w->name, info);
    lwork = (int)query;
    liwork = iquery;
    size_t rr = (size_t)R * (size_t)R;
    double *a = ovs_malloc(oc * sizeof(double));       /* (C, O) column-major slice */
    double *g = ovs_malloc(rr * sizeof(double));       /* (R, R) Gram matrix, upper triangle */
    double *work = ovs_malloc((size_t)lwork * sizeof(double));
    int *iwork = ovs_malloc((size_t)liwork * sizeof(int));
    if (!a || !g || !work || !iwork) {
        st = ovs_set_error(OVS_ERR_NOMEM, "%s: out of memory for the spectrum of a %lldx%lld matrix", w->name,
                           (long long)O, (long long)C);
        goto done;
    }
    for (int64_t s = 0; s < S; s++) {
        const float *src = w->data + s;
        for (size_t j = 0; j < oc; j++) a[j] = (double)src[j * (size_t)S] * scale;
        OVS_LAPACK(dsyrk)("U", trans, &r, &k, &one, a, &lda, &zero, g, &r, 1, 1);
        OVS_LAPACK(dsyevd)("N", "U", &r, g, &r, evals + s * R, work, &lwork, iwork, &liwork, &info, 1, 1);
        if (info != 0) {
            st = ovs_set_error(OVS_ERR_UNSUPPORTED, "%s: LAPACK dsyevd failed (info %d)", w->name, info);
            goto done;
        }
    }
done:
    ovs_free(a);
    ovs_free(g);
    ovs_free(work);
    ovs_free(iwork);
    return st;
}

int ovs_esd_compute(double *evals, const ovs_tensor *w, double conv_scale, int method) {
    int64_t O, C, S;
    int st = layer_dims(w, &O, &C, &S);
    if (st) return st;
    if (method != OVS_ESD_GRAM && method != OVS_ESD_SVD)
        return ovs_set_error(OVS_ERR_ARG, "spectrum method must be 0 (Gram) or 1 (SVD), got %d", method);
    int64_t R = O < C ? O : C;
    double scale = w->ndim == 4 ? conv_scale : 1.0;
    size_t oc;
    if (ovs_mul_size(&oc, (size_t)O, (size_t)C) || oc > (size_t)INT64_MAX / sizeof(double))
        return ovs_set_error(OVS_ERR_OVERFLOW, "%s: %lldx%lld slice is too large", w->name, (long long)O, (long long)C);
    st = method == OVS_ESD_SVD ? esd_svd(evals, w, scale, O, C, S, R, oc)
                               : esd_gram(evals, w, scale, O, C, S, R, oc);
    if (st) return st;
    qsort(evals, (size_t)(S * R), sizeof(double), cmp_double);
    return OVS_OK;
}

static int all_finite(const float *x, size_t n) {
    int ok = 1;
    for (size_t j = 0; j < n; j++) ok &= isfinite(x[j]) != 0;
    return ok;
}

static void result_reset(ovs_layer_alpha *r) {
    memset(r, 0, sizeof *r);
    r->fit.status = OVS_LAYER_NO_FIT;
    r->fit.alpha = r->fit.xmin = r->fit.D = r->fit.sigma = r->fit.peak = NAN;
    r->lambda_max = r->alpha_weighted = r->log_spectral_norm = NAN;
}

/* One layer; returns a hard error (OVS_ERR_NOMEM, ...) or OVS_OK with r->status set. */
static int analyze_one(ovs_layer_alpha *r, const ovs_tensor *w, const ovs_esd_options *opt) {
    result_reset(r);
    int64_t O, C, S;
    if (layer_dims(w, &O, &C, &S)) { r->status = OVS_LAYER_UNSUPPORTED; return OVS_OK; }
    if (w->ndim == 2 && opt->max_aspect > 0) {
        double big = (double)(O > C ? O : C), small = (double)(O < C ? O : C);
        if (big / small >= opt->max_aspect) { r->status = OVS_LAYER_SKIPPED_ASPECT; return OVS_OK; }
    }
    int64_t E = ovs_esd_size(w);
    if (E < 0) return OVS_ERR_OVERFLOW;
    r->num_evals = E;
    if (!all_finite(w->data, (size_t)O * (size_t)C * (size_t)S)) { r->status = OVS_LAYER_NONFINITE; return OVS_OK; }
    double *evals = ovs_malloc((size_t)E * sizeof(double));
    if (!evals) return ovs_set_error(OVS_ERR_NOMEM, "%s: out of memory for %lld eigenvalues", w->name, (long long)E);
    int st = ovs_esd_compute(evals, w, opt->conv_scale, opt->method);
    if (st == OVS_ERR_UNSUPPORTED) { r->status = OVS_LAYER_SVD_FAILED; st = OVS_OK; goto done; }
    if (st) goto done;
    r->lambda_max = evals[E - 1];
    r->log_spectral_norm = log10(r->lambda_max);
    int64_t first = 0;
    while (first < E && !(evals[first] > opt->evals_thresh)) first++;
    r->num_kept = E - first;
    if (r->num_kept < 2) { r->status = OVS_LAYER_TOO_FEW; r->fit.status = OVS_LAYER_TOO_FEW; goto done; }
    st = ovs_powerlaw_fit(&r->fit, evals + first, r->num_kept, opt->xmin_mode);
    if (st) {   /* name the layer in the fit's message */
        char msg[OVS_ERROR_CAP];
        snprintf(msg, sizeof msg, "%s", ovs_last_error());
        ovs_set_error(st, "%s: %s", w->name ? w->name : "layer", msg);
        goto done;
    }
    r->status = r->fit.status;
    if (r->status == OVS_LAYER_OK) r->alpha_weighted = r->fit.alpha * r->log_spectral_norm;
done:
    ovs_free(evals);
    return st;
}

typedef struct { double cost; int64_t index; } layer_order;

static int cmp_cost_desc(const void *a, const void *b) {
    double x = ((const layer_order *)a)->cost, y = ((const layer_order *)b)->cost;
    return (x < y) - (x > y);
}

int ovs_analyze_layers(ovs_layer_alpha *out, const ovs_tensor *layers, int64_t count,
                       const ovs_esd_options *opt) {
    if (count < 0) return ovs_set_error(OVS_ERR_ARG, "layer count must be >= 0, got %lld", (long long)count);
    if (count == 0) return OVS_OK;
    if (!out || !layers || !opt) return ovs_set_error(OVS_ERR_ARG, "NULL argument to ovs_analyze_layers");
    if (!(opt->evals_thresh >= 0) || !isfinite(opt->evals_thresh))
        return ovs_set_error(OVS_ERR_ARG, "evals_thresh must be a finite number >= 0, got %g", opt->evals_thresh);
    if (!isfinite(opt->conv_scale) || !(opt->conv_scale > 0))
        return ovs_set_error(OVS_ERR_ARG, "conv_scale must be a finite number > 0, got %g", opt->conv_scale);
    if (isnan(opt->max_aspect))
        return ovs_set_error(OVS_ERR_ARG, "max_aspect must be a number (<= 0 disables the skip), got NaN");
    if (opt->method != OVS_ESD_GRAM && opt->method != OVS_ESD_SVD)
        return ovs_set_error(OVS_ERR_ARG, "spectrum method must be 0 (Gram) or 1 (SVD), got %d", opt->method);
    if (opt->xmin_mode < OVS_XMIN_ALL || opt->xmin_mode > OVS_XMIN_PEAK_REFERENCE)
        return ovs_set_error(OVS_ERR_ARG, "xmin_mode must be 0, 1 or 2, got %d", opt->xmin_mode);
    size_t bytes;
    if (ovs_mul_size(&bytes, (size_t)count, sizeof(layer_order)))
        return ovs_set_error(OVS_ERR_OVERFLOW, "%lld layers: size overflows", (long long)count);
    layer_order *order = ovs_malloc(bytes); /* (count,) biggest SVD first */
    if (!order) return ovs_set_error(OVS_ERR_NOMEM, "out of memory for %lld layers", (long long)count);
    for (int64_t i = 0; i < count; i++) {
        int64_t O = 0, C = 0, S = 0;
        double cost = 0.0;
        if (!layer_dims(&layers[i], &O, &C, &S)) {
            double mn = (double)(O < C ? O : C);
            cost = (double)S * (double)O * (double)C * mn;
        }
        order[i].cost = cost;
        order[i].index = i;
    }
    qsort(order, (size_t)count, sizeof *order, cmp_cost_desc);
    /* A worker's failure (with its message naming the layer) reaches this thread through re. */
    ovs_region_error re = OVS_REGION_ERROR_INIT;
#pragma omp parallel for schedule(dynamic, 1) num_threads(ovs_get_num_threads())
    for (int64_t t = 0; t < count; t++) {
        if (ovs_region_failed(&re)) continue;
        int64_t i = order[t].index;
        ovs_region_keep(&re, analyze_one(&out[i], &layers[i], opt));
    }
    int st = ovs_region_finish(&re);
    ovs_free(order);
    return st;
}
