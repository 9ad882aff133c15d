// Peer timing: oneDNN v3 batch normalization on one shape and layout — forward (training, inference, with
// the fused ReLU and add+ReLU flags) and backward (data and weights, with batch or global statistics).
// A copy of shared/peers/onednn3_bn.cpp (forward only) extended for bnorm's issue 12; built by
// scripts/peer_setup.sh next to the original.
//
// usage: onednn3_bn FMT MODE N C H W [REPS]
//   FMT: nchw | nhwc | nChw8c | nChw16c
//   MODE: train | infer | train_relu | infer_relu | train_addrelu | infer_addrelu | bwd | bwd_global
// Prints one JSON line: median seconds per call and effective bandwidth. `gbps` counts the tensors each
// call must move: forward 2 × tensor bytes (x read, y written), add+ReLU 3 (z read too), backward 3 (x
// and dy read, dx written).
#include <oneapi/dnnl/dnnl.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>
using namespace dnnl;

static void fill(memory &m, size_t n, float mu, float sd, unsigned seed) {
    float *p = (float *)m.get_data_handle();
    std::mt19937 rng(seed);
    std::normal_distribution<float> nd(mu, sd);
    for (size_t i = 0; i < n; i++) p[i] = nd(rng);
}

int main(int argc, char **argv) {
    if (argc < 7) { fprintf(stderr, "usage: %s FMT MODE N C H W [REPS]\n", argv[0]); return 2; }
    std::string fmt = argv[1], mode = argv[2];
    memory::dim N = atol(argv[3]), C = atol(argv[4]), H = atol(argv[5]), W = atol(argv[6]);
    int reps = argc > 7 ? atoi(argv[7]) : 20;
    memory::format_tag tag = fmt == "nchw" ? memory::format_tag::nchw
                           : fmt == "nhwc" ? memory::format_tag::nhwc
                           : fmt == "nChw8c" ? memory::format_tag::nChw8c
                           : fmt == "nChw16c" ? memory::format_tag::nChw16c
                           : memory::format_tag::undef;
    if (tag == memory::format_tag::undef) { fprintf(stderr, "bad FMT\n"); return 2; }
    bool bwd = mode == "bwd" || mode == "bwd_global";
    bool global = mode == "bwd_global" || mode.rfind("infer", 0) == 0;
    bool train = !global;
    bool relu = mode.find("_relu") != std::string::npos;
    bool addrelu = mode.find("_addrelu") != std::string::npos;
    if (!bwd && !relu && !addrelu && mode != "train" && mode != "infer") { fprintf(stderr, "bad MODE\n"); return 2; }
    engine eng(engine::kind::cpu, 0);
    stream s(eng);
    memory::desc md({N, C, H, W}, memory::data_type::f32, tag);
    auto flags = normalization_flags::use_scale | normalization_flags::use_shift;
    if (global) flags = flags | normalization_flags::use_global_stats;
    if (relu) flags = flags | normalization_flags::fuse_norm_relu;
    if (addrelu) flags = flags | normalization_flags::fuse_norm_add_relu;
    batch_normalization_forward::primitive_desc fpd(eng,
        train || bwd ? prop_kind::forward_training : prop_kind::forward_inference, md, md, 1e-5f, flags);
    memory src(fpd.src_desc(), eng), dst(fpd.dst_desc(), eng);
    memory::desc cmd({C}, memory::data_type::f32, memory::format_tag::x);
    memory scale(cmd, eng), shift(cmd, eng), mean(cmd, eng), var(cmd, eng);
    size_t nelem = fpd.src_desc().get_size() / sizeof(float);
    fill(src, nelem, 3.0f, 2.0f, 42);
    float *sc = (float *)scale.get_data_handle(), *sh = (float *)shift.get_data_handle();
    float *m = (float *)mean.get_data_handle(), *v = (float *)var.get_data_handle();
    for (int c = 0; c < C; c++) { sc[c] = 1.0f + 0.01f * c; sh[c] = 0.1f * c; m[c] = 3.0f; v[c] = 4.0f; }
    std::memset(dst.get_data_handle(), 0, fpd.dst_desc().get_size());
    std::unordered_map<int, memory> args = {{DNNL_ARG_SRC, src}, {DNNL_ARG_DST, dst}, {DNNL_ARG_SCALE, scale},
                                            {DNNL_ARG_SHIFT, shift}, {DNNL_ARG_MEAN, mean}, {DNNL_ARG_VARIANCE, var}};
    memory ws;
    if (fpd.workspace_desc().get_size()) { ws = memory(fpd.workspace_desc(), eng); args.insert({DNNL_ARG_WORKSPACE, ws}); }
    if (addrelu) { memory z(md, eng); fill(z, nelem, 0.0f, 1.0f, 7); args.insert({DNNL_ARG_SRC_1, z}); }
    primitive prim = batch_normalization_forward(fpd);
    double tensors = addrelu ? 3.0 : 2.0;
    if (bwd) {
        // One forward call produces the statistics (and any workspace) the backward pass takes.
        prim.execute(s, args);
        s.wait();
        batch_normalization_backward::primitive_desc bpd(eng, prop_kind::backward, md, md, md, 1e-5f, flags, fpd);
        memory diff_dst(md, eng), diff_src(md, eng), dscale(cmd, eng), dshift(cmd, eng);
        fill(diff_dst, nelem, 0.0f, 1.0f, 9);
        std::memset(diff_src.get_data_handle(), 0, md.get_size());
        args = {{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_DST, diff_dst}, {DNNL_ARG_SCALE, scale},
                {DNNL_ARG_MEAN, mean}, {DNNL_ARG_VARIANCE, var}, {DNNL_ARG_DIFF_SRC, diff_src},
                {DNNL_ARG_DIFF_SCALE, dscale}, {DNNL_ARG_DIFF_SHIFT, dshift}};
        if (ws) args.insert({DNNL_ARG_WORKSPACE, ws});
        prim = batch_normalization_backward(bpd);
        tensors = 3.0;
    }
    for (int i = 0; i < 3; i++) prim.execute(s, args);
    s.wait();
    std::vector<double> t;
    for (int i = 0; i < reps; i++) {
        auto t0 = std::chrono::steady_clock::now();
        prim.execute(s, args);
        s.wait();
        t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(t.begin(), t.end());
    double med = t[t.size() / 2];
    double bytes = tensors * (double)N * C * H * W * sizeof(float);
    printf("{\"impl\":\"onednn3\",\"fmt\":\"%s\",\"mode\":\"%s\",\"n\":%ld,\"c\":%ld,\"h\":%ld,\"w\":%ld,\"median_s\":%.6e,\"min_s\":%.6e,\"gbps\":%.2f,\"mean0\":%.6f,\"var0\":%.6f}\n",
           fmt.c_str(), mode.c_str(), (long)N, (long)C, (long)H, (long)W, med, t[0], bytes / med / 1e9, m[0], v[0]);
    return 0;
}
