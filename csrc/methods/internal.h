/* Segmenter internals. */
#ifndef OVS_METHODS_INTERNAL_H
#define OVS_METHODS_INTERNAL_H

#include "ovs/methods.h"
#include "ovs/models.h"   /* the towers through their public accessors, never their structs */

struct ovs_segmenter {
    ovs_resnet *resnet;       /* borrowed; exactly one of resnet / vit */
    ovs_vit *vit;
    ovs_seg_config cfg;
    float *omega;             /* (1 + gh*gw)^2 NACLIP prior for the last grid */
    int64_t omega_gh, omega_gw;
    ovs_arena arena;          /* pipeline buffers (image, accumulators) for one call */
    ovs_arena work;           /* per-window buffers, reset for every window */
    float *keys;              /* (G, keys_dim) last window's keys (in work) when cfg.ks_thresh > 0 */
    int64_t keys_dim;
};


#endif
