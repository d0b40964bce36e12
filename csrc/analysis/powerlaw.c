/* Power-law fit of an eigenvalue spectrum (Clauset, Shalizi & Newman 2009, continuous case),
 * with WeightWatcher's candidate restrictions. See include/ovs/analysis.h for the formulas.
 *
 * Letters: N = number of eigenvalues fitted (sorted ascending, all > 0), i = candidate index
 * (xmin = λ_i), n = N - i = tail size, k = position inside the tail.
 *
 * ovs_powerlaw_fit precomputes ln λ once and keeps the running tail sum Σ_{j>=i} ln λ_j, so a
 * candidate costs one pass of exp() over its tail; ovs_powerlaw_fit_naive recomputes the sum and
 * uses pow(λ_{i+k}/λ_i, 1-α) as WeightWatcher's WWFit does. Both give the same choice up to
 * float rounding (tests/test_analyze.py compares them). */
#include <math.h>
#include <string.h>

#include "ovs/analysis.h"

#define HIST_BINS 100

/* numpy.histogram(log10(evals), bins=100): index of the tallest bin (first on ties) and the bin
 * edges computed as numpy.linspace does (edge_b = b*step + first, last edge = max exactly), each
 * value placed by comparison with those edges (numpy's correction step), so the bin of every
 * value, and hence the peak, is numpy's. */
static double peak_of_log_histogram(const double *evals, int64_t N) {
    double first = log10(evals[0]), last = log10(evals[N - 1]);
    if (first == last) { first -= 0.5; last += 0.5; }
    double edges[HIST_BINS + 1];
    double step = (last - first) / HIST_BINS;
    for (int b = 0; b <= HIST_BINS; b++) edges[b] = (double)b * step + first;
    edges[HIST_BINS] = last;
    int64_t counts[HIST_BINS] = {0};
    for (int64_t j = 0; j < N; j++) {
        double x = log10(evals[j]);
        int64_t b = (int64_t)((x - first) / (last - first) * HIST_BINS);
        if (b < 0) b = 0;
        if (b >= HIST_BINS) b = HIST_BINS - 1;
        while (b > 0 && x < edges[b]) b--;
        while (b < HIST_BINS - 1 && x >= edges[b + 1]) b++;
        counts[b]++;
    }
    int best = 0;
    for (int b = 1; b < HIST_BINS; b++)
        if (counts[b] > counts[best]) best = b;
    return pow(10.0, edges[best]);
}

/* Mark candidates: cand[i] = 1 if λ_i may be xmin. Returns the number of candidates. */
static int64_t mark_candidates(unsigned char *cand, const double *evals, int64_t N, int mode,
                               double *peak_out) {
    memset(cand, 0, (size_t)N);
    *peak_out = NAN;
    if (N < 2) return 0;
    int64_t count = 0;
    if (mode == OVS_XMIN_ALL) {
        for (int64_t i = 0; i < N - 1; i++) cand[i] = 1;
        return N - 1;
    }
    double p = peak_of_log_histogram(evals, N);
    *peak_out = p;
    if (mode == OVS_XMIN_PEAK) {
        double lo = 0.95 * p, hi = 1.5 * p;
        for (int64_t i = 0; i < N - 1; i++)
            if (evals[i] >= lo && evals[i] <= hi) { cand[i] = 1; count++; }
        return count;
    }
    /* OVS_XMIN_PEAK_REFERENCE: powerlaw.Fit(xmin=(log10(0.95 p), 1.5 p)).find_xmin: values in
     * [min, max) of the pair, first index of each distinct value, the largest one dropped, and
     * fewer than 2 left means no fit. */
    double b = log10(0.95 * p), h = 1.5 * p;
    double lo = b < h ? b : h, hi = b < h ? h : b;
    int64_t last = -1;
    for (int64_t i = 0; i < N; i++) {
        if (!(evals[i] >= lo && evals[i] < hi)) continue;
        if (last >= 0 && evals[i] == evals[last]) continue;
        cand[i] = 1;
        last = i;
        count++;
    }
    if (last >= 0) { cand[last] = 0; count--; }
    if (count < 2) { memset(cand, 0, (size_t)N); return 0; }
    return count;
}

static int check_input(const double *evals, int64_t n, int mode) {
    if (n < 0) return ovs_set_error(OVS_ERR_ARG, "number of eigenvalues must be >= 0, got %lld", (long long)n);
    if (n > 0 && !evals) return ovs_set_error(OVS_ERR_ARG, "eigenvalues pointer is NULL");
    if (mode != OVS_XMIN_ALL && mode != OVS_XMIN_PEAK && mode != OVS_XMIN_PEAK_REFERENCE)
        return ovs_set_error(OVS_ERR_ARG, "xmin mode must be 0 (all), 1 (peak) or 2 (peak, reference code), got %d", mode);
    for (int64_t j = 0; j < n; j++) {
        if (!(evals[j] > 0.0) || !isfinite(evals[j]))
            return ovs_set_error(OVS_ERR_ARG, "eigenvalue %lld is %g: the fit needs finite values > 0",
                                 (long long)j, evals[j]);
        if (j > 0 && evals[j] < evals[j - 1])
            return ovs_set_error(OVS_ERR_ARG, "eigenvalues must be sorted ascending (value %lld: %g < %g)",
                                 (long long)j, evals[j], evals[j - 1]);
    }
    return OVS_OK;
}

static void fit_reset(ovs_powerlaw *out) {
    out->status = OVS_LAYER_NO_FIT;
    out->alpha = out->xmin = out->D = out->sigma = out->peak = NAN;
    out->num_tail = 0;
    out->num_candidates = 0;
}

static void fit_finish(ovs_powerlaw *out, const double *evals, int64_t N, int64_t best,
                       double alpha, double D) {
    if (best < 0) { out->status = OVS_LAYER_NO_FIT; return; }
    out->status = OVS_LAYER_OK;
    out->alpha = alpha;
    out->D = D;
    out->xmin = evals[best];
    /* WeightWatcher's num_pl_spikes: eigenvalues >= xmin (duplicates of xmin included) */
    int64_t first = best;
    while (first > 0 && evals[first - 1] == evals[best]) first--;
    out->num_tail = N - first;
    out->sigma = (alpha - 1.0) / sqrt((double)(N - best));
}

int ovs_powerlaw_fit(ovs_powerlaw *out, const double *evals, int64_t N, int mode) {
    int st = check_input(evals, N, mode);
    if (st) return st;
    fit_reset(out);
    if (N < 2) { out->status = OVS_LAYER_TOO_FEW; return OVS_OK; }
    size_t bytes;
    if (ovs_mul_size(&bytes, (size_t)N, sizeof(double) + 1))
        return ovs_set_error(OVS_ERR_OVERFLOW, "%lld eigenvalues: workspace size overflows", (long long)N);
    double *logs = ovs_malloc(bytes); /* (N,) ln λ, then (N,) candidate flags */
    if (!logs) return ovs_set_error(OVS_ERR_NOMEM, "out of memory for a power-law fit of %lld eigenvalues", (long long)N);
    unsigned char *cand = (unsigned char *)(logs + N);
    out->num_candidates = mark_candidates(cand, evals, N, mode, &out->peak);

    double tail_sum = 0.0; /* Σ_{j>=i} ln λ_j, grown from the top as i decreases */
    for (int64_t j = 0; j < N; j++) logs[j] = log(evals[j]);
    double best_D = INFINITY, best_alpha = NAN;
    int64_t best = -1;
    /* walk i downwards for the running sum, but keep the first (lowest i) minimum as argmin */
    for (int64_t i = N - 1; i >= 0; i--) {
        tail_sum += logs[i];
        if (!cand[i]) continue;
        double n = (double)(N - i);
        double alpha = 1.0 + n / (tail_sum - n * logs[i]);
        if (!(alpha > 1.0) || !isfinite(alpha)) continue;
        double e = 1.0 - alpha, D = 0.0, li = logs[i];
        for (int64_t k = 0; k < N - i; k++) {
            double d = fabs(1.0 - exp(e * (logs[i + k] - li)) - (double)k / n);
            if (d > D) D = d;
        }
        if (D <= best_D) { best_D = D; best_alpha = alpha; best = i; }
    }
    fit_finish(out, evals, N, best, best_alpha, best_D);
    ovs_free(logs);
    return OVS_OK;
}

int ovs_powerlaw_fit_naive(ovs_powerlaw *out, const double *evals, int64_t N, int mode) {
    int st = check_input(evals, N, mode);
    if (st) return st;
    fit_reset(out);
    if (N < 2) { out->status = OVS_LAYER_TOO_FEW; return OVS_OK; }
    unsigned char *cand = ovs_malloc((size_t)N);
    if (!cand) return ovs_set_error(OVS_ERR_NOMEM, "out of memory for a power-law fit of %lld eigenvalues", (long long)N);
    out->num_candidates = mark_candidates(cand, evals, N, mode, &out->peak);
    double best_D = INFINITY, best_alpha = NAN;
    int64_t best = -1;
    for (int64_t i = 0; i < N; i++) {
        if (!cand[i]) continue;
        double n = (double)(N - i), s = 0.0;
        for (int64_t j = i; j < N; j++) s += log(evals[j]);
        double alpha = 1.0 + n / (s - n * log(evals[i]));
        if (!(alpha > 1.0) || !isfinite(alpha)) continue;
        double D = 0.0;
        for (int64_t k = 0; k < N - i; k++) {
            double d = fabs(1.0 - pow(evals[i + k] / evals[i], 1.0 - alpha) - (double)k / n);
            if (d > D) D = d;
        }
        if (D < best_D) { best_D = D; best_alpha = alpha; best = i; }
    }
    fit_finish(out, evals, N, best, best_alpha, best_D);
    ovs_free(cand);
    return OVS_OK;
}
