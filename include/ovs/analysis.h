/*
 * ovs analysis: heavy-tailed spectral analysis of weight matrices (the α of WeightWatcher /
 * Martin & Mahoney) used to choose which layers to fine-tune.
 *
 * Usage (C):
 *
 *     ovs_tensor layers[2] = {...};                 // (out, in) linears, (out, in, kh, kw) convs
 *     ovs_esd_options opt;
 *     ovs_esd_options_default(&opt);                // 1e-5 threshold, sqrt(0.5) conv scale, ...
 *     ovs_layer_alpha res[2];
 *     if (ovs_analyze_layers(res, layers, 2, &opt) != OVS_OK)   // only OOM / bad options fail
 *         fprintf(stderr, "%s\n", ovs_last_error());
 *     for (int i = 0; i < 2; i++)
 *         if (res[i].status == OVS_LAYER_OK) printf("%s %.3f\n", layers[i].name, res[i].alpha);
 *
 * The computation, per layer (WeightWatcher's defaults with fix_fingers="xmin_peak"):
 * - Linear W (out, in): λ = σ(W)², min(out, in) eigenvalues. A linear whose max/min dimension
 *   ratio is >= max_aspect is skipped (the paper's code; WeightWatcher does not skip).
 * - Conv W (out, in, kh, kw): every kernel position gives a slice matrix W[:, :, i, j] (out, in);
 *   the slices are scaled by conv_scale (sqrt(0.5)) and the squared singular values of all
 *   kh*kw slices are pooled into one spectrum of kh*kw*min(out, in) eigenvalues.
 * - Eigenvalues λ <= evals_thresh (1e-5) are dropped (the zeros left by pruning), the rest are
 *   sorted ascending: λ_0 <= ... <= λ_{N-1}.
 * - Power-law fit (Clauset et al.; continuous MLE): for a candidate xmin = λ_i with tail size
 *   n = N - i,   α_i = 1 + n / (Σ_{j>=i} ln λ_j - n ln λ_i),
 *   D_i = max_{0<=k<n} |1 - (λ_{i+k} / λ_i)^(1 - α_i) - k / n|   (only where α_i > 1),
 *   the candidate with the smallest D wins (the first on ties). Candidates never include
 *   λ_{N-1}. Which λ_i are candidates depends on xmin_mode (ovs_xmin_mode).
 * - Reported: α, xmin, D, σ = (α-1)/sqrt(n), λmax, α·log10(λmax), log10(λmax).
 *
 * Eigenvalues come from LAPACK in the linked OpenBLAS, in float64 like WeightWatcher's SVD:
 * by default as the eigenvalues of the smaller Gram matrix (dsyrk + dsyevd), or as squared
 * singular values (dgesdd, values only), the reference twin. Layers are analysed in parallel (OpenMP, one layer per thread,
 * OpenBLAS single-threaded inside). Problems of one layer (non-finite weights, fewer than 2
 * eigenvalues above the threshold, no valid fit) are reported in that layer's status; they
 * never fail the call.
 */
#ifndef OVS_ANALYSIS_H
#define OVS_ANALYSIS_H

#include "ovs/ovs.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Which eigenvalues may serve as xmin. p = 10^(left edge of the tallest of 100 equal bins of
 * the histogram of log10 λ, over the eigenvalues kept), as numpy.histogram bins it. */
typedef enum {
    OVS_XMIN_ALL = 0,            /* every λ_i, i < N-1 (WeightWatcher pl_package="ww", no fix_fingers) */
    OVS_XMIN_PEAK = 1,           /* 0.95 p <= λ_i <= 1.5 p (xmin_peak with the bound meant) */
    OVS_XMIN_PEAK_REFERENCE = 2, /* WeightWatcher/the paper's code via the powerlaw package:
                                    min(b, 1.5p) <= λ_i < max(b, 1.5p) with b = log10(0.95 p)
                                    (the bug: a log compared with λ), distinct values only,
                                    the largest such candidate dropped, >= 2 candidates left */
} ovs_xmin_mode;

/* How eigenvalues are computed; both in float64 from the float32 weights. */
typedef enum {
    OVS_ESD_GRAM = 0, /* eigenvalues of the min-side Gram matrix (dsyrk + dsyevd): fast */
    OVS_ESD_SVD = 1,  /* squared singular values (dgesdd, values only): the reference twin */
} ovs_esd_method;

typedef struct {
    double evals_thresh; /* drop λ <= this; default 1e-5 */
    double conv_scale;   /* conv slices are multiplied by this before the SVD; default sqrt(0.5) */
    double max_aspect;   /* skip a linear with max/min dim >= this; <= 0 never skips; default 8 */
    int xmin_mode;       /* ovs_xmin_mode; default OVS_XMIN_PEAK */
    int method;          /* ovs_esd_method; default OVS_ESD_GRAM */
} ovs_esd_options;

void ovs_esd_options_default(ovs_esd_options *opt);

/* Per-layer outcome. Not an error code of the call: the call succeeds and reports these. */
typedef enum {
    OVS_LAYER_OK = 0,
    OVS_LAYER_SKIPPED_ASPECT = 1, /* a linear with max/min dim >= max_aspect */
    OVS_LAYER_NONFINITE = 2,      /* NaN or infinite weights */
    OVS_LAYER_TOO_FEW = 3,        /* fewer than 2 eigenvalues above evals_thresh (all-zero layers) */
    OVS_LAYER_NO_FIT = 4,         /* no candidate xmin gave α > 1 (or too few candidates) */
    OVS_LAYER_SVD_FAILED = 5,     /* LAPACK did not converge */
    OVS_LAYER_UNSUPPORTED = 6,    /* neither 2-D nor 4-D, or an empty dimension */
} ovs_layer_status;

/* Power-law fit of one spectrum. Fields other than status/n are NaN unless status is OK. */
typedef struct {
    int status;             /* OVS_LAYER_OK, OVS_LAYER_TOO_FEW or OVS_LAYER_NO_FIT */
    double alpha;           /* fitted exponent */
    double xmin;            /* chosen xmin (an eigenvalue) */
    double D;               /* KS distance at xmin */
    double sigma;           /* (α - 1) / sqrt(num_tail) */
    int64_t num_tail;       /* eigenvalues >= xmin */
    int64_t num_candidates; /* candidate xmins examined */
    double peak;            /* p of the xmin_peak modes (NaN in OVS_XMIN_ALL) */
} ovs_powerlaw;

/* Fit evals[0..n) (sorted ascending, every value > 0 and finite) with the given mode.
 * Returns OVS_ERR_ARG for unsorted/non-positive input or a bad mode, OVS_ERR_NOMEM; otherwise
 * OVS_OK with the outcome in out->status. */
int ovs_powerlaw_fit(ovs_powerlaw *out, const double *evals, int64_t n, int xmin_mode);
/* The same by the formulas term by term (pow, sums recomputed per candidate): the test twin. */
int ovs_powerlaw_fit_naive(ovs_powerlaw *out, const double *evals, int64_t n, int xmin_mode);

/* Number of eigenvalues of a weight's spectrum (before thresholding): min(out,in) for a 2-D
 * weight, kh*kw*min(out,in) for a 4-D one; -1 (error set) for another shape or overflow. */
int64_t ovs_esd_size(const ovs_tensor *w);

/* All eigenvalues of w's spectrum, ascending, into evals[0..ovs_esd_size(w)). conv_scale and
 * method as in ovs_esd_options. OVS_ERR_ARG (bad shape/method), OVS_ERR_NOMEM,
 * OVS_ERR_UNSUPPORTED (LAPACK failed to converge). Non-finite weights are not checked here
 * (ovs_analyze_layers does). With OVS_ESD_GRAM, eigenvalues at the roundoff level (~1e-16 λmax)
 * may come out slightly negative; they fall under any threshold > 0 like the SVD's zeros. */
int ovs_esd_compute(double *evals, const ovs_tensor *w, double conv_scale, int method);

typedef struct {
    int status;              /* ovs_layer_status */
    ovs_powerlaw fit;        /* the fit (fit.status mirrors status when the fit ran) */
    int64_t num_evals;       /* eigenvalues in the spectrum (before thresholding) */
    int64_t num_kept;        /* eigenvalues > evals_thresh */
    double lambda_max;       /* largest eigenvalue (NaN if none) */
    double alpha_weighted;   /* α log10(λmax) */
    double log_spectral_norm;/* log10(λmax) */
} ovs_layer_alpha;

/* Analyse layers[0..count) into out[0..count). Fails only for bad options (OVS_ERR_ARG) or when
 * memory runs out (OVS_ERR_NOMEM); per-layer problems go to out[i].status. */
int ovs_analyze_layers(ovs_layer_alpha *out, const ovs_tensor *layers, int64_t count,
                       const ovs_esd_options *opt);

/* A short description of a layer status ("ok", "non-finite weights", ...). */
const char *ovs_layer_status_name(int status);

#ifdef __cplusplus
}
#endif
#endif /* OVS_ANALYSIS_H */
