#include "sparse_prefill.h"

#include <stdexcept>

namespace heterospec {

#ifdef LLAMA_HAS_SPARSE_PREFILL

bool sparse_prefill_available() { return true; }

static void set(llama_context * ctx, const SparsePrefillOptions & o, bool enabled) {
    llama_sparse_prefill_params p;
    p.enabled = enabled;
    p.alpha = o.alpha;
    p.row_frac = o.row_frac;
    p.window_frac = o.window_frac;
    p.k_max_frac = o.k_max_frac;
    p.min_ctx = o.min_ctx;
    llama_set_sparse_prefill(ctx, p);
}

SparsePrefillScope::SparsePrefillScope(llama_context * ctx, const SparsePrefillOptions & o)
    : ctx_(ctx), on_(o.on() && ctx) {
    if (!on_) return;
    llama_sparse_prefill_stats(ctx_, nullptr, nullptr);   // start counting afresh
    set(ctx_, o, true);
}

SparsePrefillScope::~SparsePrefillScope() {
    if (on_) set(ctx_, SparsePrefillOptions(), false);
}

double SparsePrefillScope::kept_fraction(int64_t * columns) {
    int64_t kept = 0, total = 0;
    if (on_) llama_sparse_prefill_stats(ctx_, &kept, &total);
    if (columns) *columns = total;
    return total > 0 ? double(kept) / double(total) : 1.0;
}

#else   // llama.cpp without the patch (HETEROSPEC_LLAMA_CPP_DIR at an unpatched tree)

bool sparse_prefill_available() { return false; }
SparsePrefillScope::SparsePrefillScope(llama_context * ctx, const SparsePrefillOptions & o) : ctx_(ctx), on_(false) {}
SparsePrefillScope::~SparsePrefillScope() = default;
double SparsePrefillScope::kept_fraction(int64_t * columns) {
    if (columns) *columns = 0;
    return 1.0;
}

#endif

void check_sparse_prefill(const SparsePrefillOptions & o) {
    if (o.on() && !sparse_prefill_available())
        throw std::invalid_argument(
            "sparse_prefill='sample' is unavailable: this build's llama.cpp lacks HeteroSpec's patch "
            "(third_party/patches/; a tree given with HETEROSPEC_LLAMA_CPP_DIR must carry it)");
}

}  // namespace heterospec
