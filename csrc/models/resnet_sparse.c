/* Per-conv dense/sparse choice for the ModifiedResNet: the weight of each conv is held either
 * dense or as CSR (csrc/ops/sparse.c), and OVS_SPARSE_AUTO times both kernels on the running
 * CPU at the conv's real input size so that a conv only goes sparse where that is faster. */
#include "models/internal.h"

#include <string.h>
#include <time.h>

/* A conv whose weight keeps more than this fraction of non-zeros stays dense under AUTO
 * without timing: the sparse kernel streams 6 bytes and one scattered load per non-zero
 * against the dense GEMM's packed 4, and does not win there. */
#define SPARSE_MAX_DENSITY 0.85
/* AUTO switches a conv to sparse only if it is at least this much faster: timing noise, and
 * the sparse kernel's scratch (input copies, resolved offsets) evicts more of the next layer's
 * data in a whole forward than in the isolated timing. */
#define SPARSE_MIN_GAIN 0.85
#define SPARSE_TIMING_REPS 5

/* Every conv of the model in the order of ovs_resnet_conv_count, with its input size for an
 * (H, W) image; returns the count (convs may be NULL to count only). */
typedef struct {
    ovs_convbn *cb;
    int64_t H, W;             /* the conv's input extent */
} conv_site;

static int64_t conv_sites(ovs_resnet *m, int64_t H, int64_t W, conv_site *sites) {
    int64_t n = 0;
    const int64_t h1 = ovs_conv2d_out_size(H, 3, 2, 1, 1), w1 = ovs_conv2d_out_size(W, 3, 2, 1, 1);
    for (int i = 0; i < 3; i++, n++)
        if (sites) sites[n] = (conv_site){&m->stem[i], i == 0 ? H : h1, i == 0 ? W : w1};
    int64_t h = h1 / 2, w = w1 / 2, bi = 0;
    for (int s = 0; s < 4; s++)
        for (int64_t j = 0; j < m->cfg.layers[s]; j++, bi++) {
            ovs_bottleneck *b = &m->blocks[bi];
            const int64_t ho = ovs_bottleneck_out_size(m, b, h), wo = ovs_bottleneck_out_size(m, b, w);
            /* the CLIP shortcut pools before its 1x1; the DeepLab one strides in it */
            const int clip = m->cfg.style == OVS_RESNET_CLIP;
            if (sites) {
                sites[n] = (conv_site){&b->conv1, h, w};
                sites[n + 1] = (conv_site){&b->conv2, h, w};
                sites[n + 2] = (conv_site){&b->conv3, ho, wo};
                if (b->has_down) sites[n + 3] = (conv_site){&b->down, clip ? ho : h, clip ? wo : w};
            }
            n += 3 + (b->has_down != 0);
            h = ho;
            w = wo;
        }
    return n;
}

int64_t ovs_resnet_conv_count(const ovs_resnet *m) {
    return conv_sites((ovs_resnet *)m, 224, 224, NULL);
}

int ovs_resnet_conv_info(const ovs_resnet *m, int64_t i, ovs_conv_info *info) {
    const int64_t n = ovs_resnet_conv_count(m);
    if (i < 0 || i >= n)
        return ovs_set_error(OVS_ERR_ARG, "conv index %lld out of range 0..%lld", (long long)i,
                             (long long)(n - 1));
    conv_site *sites = ovs_malloc((size_t)n * sizeof *sites);
    if (!sites) return OVS_ERR_NOMEM;
    conv_sites((ovs_resnet *)m, 224, 224, sites);
    const ovs_convbn *cb = sites[i].cb;
    ovs_free(sites);
    info->name = cb->name;
    info->K = cb->K;
    info->C = cb->C;
    info->R = cb->R;
    info->S = cb->S;
    info->nnz = cb->nnz;
    info->sparse = cb->sparse;
    info->weight_bytes = cb->sparse ? ovs_csr_bytes(&cb->csr)
                                    : (size_t)cb->K * cb->C * cb->R * cb->S * sizeof(float);
    info->dense_ms = cb->dense_ms;
    info->sparse_ms = cb->sparse_ms;
    return OVS_OK;
}

/* Hold the weight dense (rebuilt from the CSR if needed, packed again). */
int ovs_convbn_make_dense(ovs_convbn *cb) {
    if (!cb->sparse) return OVS_OK;
    float *wt = NULL;
    int rc = ovs_convbn_weight_buffer(cb, &wt);
    if (rc) return rc;
    ovs_csr_to_dense(wt, &cb->csr);
    if ((rc = ovs_convbn_set_dense(cb, wt))) return rc;
    ovs_csr_free(&cb->csr);
    ovs_sparse_plan_free(cb->plan);
    cb->sparse = 0;
    return OVS_OK;
}

/* Build the CSR from the packed weight (unpacked into a temporary; keeping the dense weight:
 * convbn_drop_dense finishes the switch). */
/* A conv held sparse also gets its (packed) dense weight, the CSR kept: convbn_time runs both. */
static int convbn_dense_for_timing(ovs_convbn *cb) {
    if (cb->weight) return OVS_OK;
    float *wt = NULL;
    int rc = ovs_convbn_weight_buffer(cb, &wt);
    if (rc) return rc;
    ovs_csr_to_dense(wt, &cb->csr);
    return ovs_convbn_set_dense(cb, wt);
}

static int convbn_build_csr(ovs_convbn *cb) {
    if (cb->csr.row_ptr) return OVS_OK;
    const int64_t L = cb->C * cb->R * cb->S;
    float *wt = ovs_malloc((size_t)cb->K * (size_t)L * sizeof(float));
    if (!wt) return ovs_set_error(OVS_ERR_NOMEM, "out of memory for the dense weight of %s", cb->name);
    int rc = ovs_conv2d_unpack(wt, &cb->w);
    if (!rc) rc = ovs_csr_from_dense(&cb->csr, wt, cb->K, L);
    ovs_free(wt);
    return rc;
}

static void convbn_drop_dense(ovs_convbn *cb) {
    ovs_free(cb->weight);
    cb->weight = NULL;
    cb->w = ovs_matrix_dense(NULL, cb->K, cb->C * cb->R * cb->S);
    cb->sparse = 1;
}

static int convbn_can_sparse(const ovs_convbn *cb) {
    return cb->p.stride_h == 1 && cb->p.stride_w == 1 && cb->p.groups == 1 &&
           cb->C * cb->R * cb->S <= 65536;
}

/* Dense without asking the kernels: DENSE mode, convs the sparse kernel cannot run, and
 * under AUTO those above SPARSE_MAX_DENSITY. */
static int convbn_stays_dense(const ovs_convbn *cb, ovs_sparse_mode mode) {
    const double density = (double)cb->nnz / ((double)cb->K * cb->C * cb->R * cb->S);
    return mode == OVS_SPARSE_DENSE || !convbn_can_sparse(cb) ||
           (mode == OVS_SPARSE_AUTO && density > SPARSE_MAX_DENSITY);
}

static double now_ms(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

/* Fastest of SPARSE_TIMING_REPS runs of each kernel, interleaved, on the given buffers. With
 * one thread the kernels run on the calling thread and are timed by its CPU clock, which time
 * spent preempted by other processes does not inflate (on a shared machine the wall clock
 * turned whole layers' decisions into coin flips); with more, by the wall clock. */
static int convbn_time(ovs_convbn *cb, int64_t H, int64_t W, float *in, float *out,
                       float *scratch) {
    double best_d = 1e300, best_s = 1e300;
    const clockid_t clock = ovs_get_num_threads() == 1 ? CLOCK_THREAD_CPUTIME_ID : CLOCK_MONOTONIC;
    int rc;
    for (int r = 0; r < SPARSE_TIMING_REPS; r++) {
        double t0 = now_ms(clock);
        if ((rc = ovs_conv2d_forward(out, in, &cb->w, cb->bias, NULL, 1, cb->C, H, W, cb->K, cb->R,
                                     cb->S, &cb->p, OVS_ACT_RELU, scratch)))
            return rc;
        double t1 = now_ms(clock);
        if ((rc = ovs_conv2d_sparse_forward_planned(out, in, &cb->csr, cb->bias, NULL, 1, cb->C,
                                                    H, W, cb->K, cb->R, cb->S, &cb->p,
                                                    OVS_ACT_RELU, scratch, cb->plan)))
            return rc;
        double t2 = now_ms(clock);
        if (t1 - t0 < best_d) best_d = t1 - t0;
        if (t2 - t1 < best_s) best_s = t2 - t1;
    }
    cb->dense_ms = best_d;
    cb->sparse_ms = best_s;
    return OVS_OK;
}

int ovs_resnet_sparsify(ovs_resnet *m, ovs_sparse_mode mode, int64_t H, int64_t W) {
    if (mode != OVS_SPARSE_DENSE && mode != OVS_SPARSE_ALL && mode != OVS_SPARSE_AUTO)
        return ovs_set_error(OVS_ERR_ARG, "sparse mode must be 0 (dense), 1 (all) or 2 (auto), got %d",
                             (int)mode);
    if (mode == OVS_SPARSE_AUTO && (H < 32 || W < 32 || H > 8192 || W > 8192))
        return ovs_set_error(OVS_ERR_ARG, "calibration size must be 32..8192, got %lldx%lld",
                             (long long)H, (long long)W);
    if (mode != OVS_SPARSE_AUTO) H = W = 224;
    const int64_t n = conv_sites(m, H, W, NULL);
    conv_site *sites = ovs_malloc((size_t)n * sizeof *sites);
    if (!sites) return OVS_ERR_NOMEM;
    conv_sites(m, H, W, sites);
    int rc = OVS_OK;
    float *in = NULL, *out = NULL, *scratch = NULL;
    /* A conv that stays dense is made dense here; the others keep the form they have (a
     * weight loaded as CSR is never expanded unless the timing below needs it). */
    for (int64_t i = 0; i < n; i++) {
        ovs_convbn *cb = sites[i].cb;
        cb->dense_ms = cb->sparse_ms = 0;
        if (convbn_stays_dense(cb, mode)) {
            if ((rc = ovs_convbn_make_dense(cb))) goto done;
            ovs_csr_free(&cb->csr);
            ovs_sparse_plan_free(cb->plan);
        }
    }
    m->sparse_on = 0;
    for (int64_t i = 0; i < m->nblocks; i++) { /* the kernels may change: recomputed on use */
        ovs_free(m->blocks[i].kconst);
        m->blocks[i].kconst = NULL;
    }
    if (mode == OVS_SPARSE_DENSE) goto done;
    if (mode == OVS_SPARSE_AUTO) {
        size_t nin = 0, nout = 0, nscr = 1;
        for (int64_t i = 0; i < n; i++) {
            const ovs_convbn *cb = sites[i].cb;
            const int64_t h = sites[i].H, w = sites[i].W;
            const int64_t P = ovs_conv2d_out_size(h, cb->R, cb->p.stride_h, cb->p.pad_h, cb->p.dil_h);
            const int64_t Q = ovs_conv2d_out_size(w, cb->S, cb->p.stride_w, cb->p.pad_w, cb->p.dil_w);
            size_t a = (size_t)cb->C * h * w, o = (size_t)cb->K * P * Q;
            size_t s1 = ovs_conv2d_scratch_floats(cb->C, h, w, cb->K, cb->R, cb->S, &cb->p);
            size_t s2 = ovs_conv2d_sparse_scratch_floats(cb->C, h, w, cb->K, cb->R, cb->S, cb->nnz,
                                                         &cb->p);
            if (a > nin) nin = a;
            if (o > nout) nout = o;
            if (s1 > nscr) nscr = s1;
            if (s2 > nscr) nscr = s2;
        }
        in = ovs_malloc(nin * sizeof(float));
        out = ovs_malloc(nout * sizeof(float));
        scratch = ovs_malloc(nscr * sizeof(float));
        if (!in || !out || !scratch) { rc = OVS_ERR_NOMEM; goto done; }
        uint32_t state = 12345u;  /* activations in [0, 1) as after a ReLU; no denormals */
        for (size_t i = 0; i < nin; i++) {
            state = state * 1664525u + 1013904223u;
            in[i] = (float)(state >> 8) * (1.0f / 16777216.0f);
        }
    }
    for (int64_t i = 0; i < n; i++) {
        ovs_convbn *cb = sites[i].cb;
        if (convbn_stays_dense(cb, mode)) continue;
        if (mode == OVS_SPARSE_AUTO) {
            /* the timing needs both forms: a conv loaded sparse gets its dense weight for
             * the time of the comparison (kept only if dense wins) */
            if ((rc = convbn_build_csr(cb)) || (rc = convbn_dense_for_timing(cb))) goto done;
            if ((rc = convbn_time(cb, sites[i].H, sites[i].W, in, out, scratch))) goto done;
            if (!(cb->sparse_ms < SPARSE_MIN_GAIN * cb->dense_ms)) {
                ovs_csr_free(&cb->csr);
                ovs_sparse_plan_free(cb->plan);
                cb->sparse = 0;
                continue;
            }
        } else if ((rc = convbn_build_csr(cb))) {
            goto done;
        }
        if (cb->weight) convbn_drop_dense(cb);
        cb->sparse = 1;
    }
    m->sparse_on = mode != OVS_SPARSE_DENSE;
done:
    ovs_free(in);
    ovs_free(out);
    ovs_free(scratch);
    ovs_free(sites);
    return rc;
}
