#include "drafters/dflash.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

#include "drafters/head.h"
#include "entropy.h"
#include "llama-ext.h"
#include "model.h"

namespace heterospec {

DflashDrafter::DflashDrafter(llama_context * target_ctx, llama_context * head_ctx, const DflashHead & head)
    : target_(target_ctx), head_(head_ctx), layers_(head.layers),
      width_(int32_t(head.layers.size()) * llama_model_n_embd(llama_get_model(target_ctx))),
      n_vocab_(llama_vocab_n_tokens(llama_model_get_vocab(llama_get_model(head_ctx)))),
      // a block is one ubatch (llama.cpp asserts it for non-causal attention): a small n_batch
      // drafts a shorter block
      block_(int32_t(std::min<int64_t>(head.block_size, llama_n_ubatch(head_ctx)))), mask_(int32_t(head.mask_token)),
      inj_cap_(int32_t(llama_n_batch(head_ctx))) {
    block_batch_ = llama_batch_init(block_, 0, 1);
    inj_ = llama_batch_init(inj_cap_, width_, 1);
    // the target gives these layers' inputs at every row of every pass
    for (int32_t l : layers_) llama_set_embeddings_layer_inp(target_, uint32_t(l), true);
    // the masked positions see each other both ways, unless the draft was trained causal
    llama_set_causal_attn(head_, head.causal);
}

DflashDrafter::~DflashDrafter() {
    llama_batch_free(block_batch_);
    llama_batch_free(inj_);
}

void DflashDrafter::decode(llama_batch & batch, const char * what) {
    const double t0 = now_ms();
    const int32_t rc = llama_decode(head_, batch);
    if (rc != 0)
        throw std::runtime_error(std::string("DFlash ") + what + " llama_decode failed (code " + std::to_string(rc) +
                                 ", " + std::to_string(batch.n_tokens) + " rows from position " +
                                 std::to_string(batch.pos[0]) + ", n_ctx " + std::to_string(llama_n_ctx(head_)) + ")");
    llama_synchronize(head_);
    llama_ms_ += now_ms() - t0;
}

void DflashDrafter::target_decoded(const int32_t * tokens, size_t n, llama_pos pos0, const int32_t * rows) {
    if (n == 0) return;
    const size_t w = size_t(width_);
    rows_pos0_ = pos0;
    n_rows_ = n;
    // A row at p depends on the text up to p alone: a rewind (another prompt, a re-run token)
    // drops the rows from pos0 on and continues. A gap (text the target ran without handing it
    // here) restarts the cache after it (inject_pending): worse drafts, never wrong ones.
    while (!pend_pos_.empty() && pend_pos_.back() >= pos0) {
        pend_pos_.pop_back();
        pend_f_.resize(pend_f_.size() - w);
    }
    text_.resize(size_t(pos0), -1);
    text_.insert(text_.end(), tokens, tokens + n);
    for (size_t k = 0; k < n; ++k) pend_pos_.push_back(pos0 + llama_pos(k));
    // the features go straight to the queue (one copy of a prompt's batch, not two)
    const size_t at = pend_f_.size();
    pend_f_.resize(at + n * w);
    layer_features(target_, layers_, rows, n, pend_f_.data() + at);
    if (record_)
        for (size_t k = 0; k < n; ++k)
            recorded_[int32_t(pos0) + int32_t(k)].assign(pend_f_.data() + at + k * w, pend_f_.data() + at + (k + 1) * w);
    if (pend_pos_.size() > kMaxPending) inject_pending();   // a prompt's rows, a batch at a time
}

size_t DflashDrafter::known_prefix(const std::vector<int32_t> & tokens) const {
    size_t k = 0;
    while (k < tokens.size() && k < text_.size() && tokens[k] == text_[k]) ++k;
    return k;
}

void DflashDrafter::inject_pending() {
    llama_memory_t mem = llama_get_memory(head_);
    if (pend_pos_.empty()) return;
    // llama.cpp wants a sequence's positions to continue its cells: after a gap (rows the
    // target never handed here) only the last unbroken run is injected, into an empty cache
    size_t start = 0;
    for (size_t k = 1; k < pend_pos_.size(); ++k)
        if (pend_pos_[k] != pend_pos_[k - 1] + 1) start = k;
    if (start > 0) {
        pend_pos_.erase(pend_pos_.begin(), pend_pos_.begin() + std::ptrdiff_t(start));
        pend_f_.erase(pend_f_.begin(), pend_f_.begin() + std::ptrdiff_t(start * size_t(width_)));
    }
    const llama_pos first = pend_pos_[0];
    // a rewound text's rows and a block's cells go; all of them when the rows do not continue
    llama_memory_seq_rm(mem, 0, start > 0 || llama_memory_seq_pos_max(mem, 0) < first - 1 ? -1 : first, -1);
    for (size_t i = 0; i < pend_pos_.size(); i += size_t(inj_cap_)) {
        const size_t m = std::min(size_t(inj_cap_), pend_pos_.size() - i);
        inj_.n_tokens = int32_t(m);
        std::memcpy(inj_.embd, pend_f_.data() + i * size_t(width_), sizeof(float) * m * size_t(width_));
        for (size_t k = 0; k < m; ++k) {
            inj_.pos[k] = pend_pos_[i + k];
            inj_.n_seq_id[k] = 1;
            inj_.seq_id[k][0] = 0;
            inj_.logits[k] = false;
        }
        decode(inj_, "injection");
    }
    pend_pos_.clear();
    pend_f_.clear();
}

void DflashDrafter::do_begin(const std::vector<int32_t> &, bool) {
    frontier_.clear();   // a generation that ended inside a step left its tree's nodes here
    inject_pending();
    calls_ = 0;
    llama_ms_ = 0;
}

void DflashDrafter::run_block(int32_t root, llama_pos root_pos, int32_t n) {
    llama_memory_seq_rm(llama_get_memory(head_), 0, root_pos, -1);
    block_batch_.n_tokens = n;
    for (int32_t i = 0; i < n; ++i) {
        block_batch_.token[i] = i == 0 ? root : mask_;
        block_batch_.pos[i] = root_pos + i;
        block_batch_.n_seq_id[i] = 1;
        block_batch_.seq_id[i][0] = 0;
        // every row an output, the root's too: the pin's dflash graph has no output-row
        // selection, and llama.cpp copies the first n_outputs rows it computed (as the pin's
        // driver asks for every row)
        block_batch_.logits[i] = true;
    }
    decode(block_batch_, "block");
    if (record_) {   // tests: the block's distributions (logits of rows 1..n-1), under -1 - root_pos
        std::vector<float> & rec = recorded_[-1 - int32_t(root_pos)];
        rec.clear();
        for (int32_t i = 1; i < n; ++i) {
            const float * l = llama_get_logits_ith(head_, i);
            rec.insert(rec.end(), l, l + n_vocab_);
        }
    }
    // the verified rows' features take these positions next
    llama_memory_seq_rm(llama_get_memory(head_), 0, root_pos, -1);
}

void DflashDrafter::do_start(DraftTree & tree, const DraftShape & shape, llama_pos root_pos, int32_t levels) {
    shape_ = shape;
    inject_pending();
    const int32_t n = std::min<int32_t>(block_, int32_t(llama_n_ctx(head_)) - root_pos);
    levels_ = std::max(0, n - 1);
    level_ = 0;
    frontier_.clear();
    first_choice_ = -1;
    if (levels_ == 0) return;
    run_block(tree[0].token, root_pos, n);
    calls_++;
    frontier_.push_back(0);
    expand_level(tree);
    first_choice_ = cand_.empty() ? -1 : cand_[0];
    extend(tree, levels - 1);
}

void DflashDrafter::expand_level(DraftTree & tree) {
    // level d reads the block's row d: the distribution of the token d places after the root
    softmax_top_k(llama_get_logits_ith(head_, level_ + 1), n_vocab_, shape_.branching, top_);
    const float h = topk_entropy(top_.data(), top_.size());
    cand_.clear();
    for (int32_t f : frontier_) {
        tree.set_entropy(f, h);
        for (const auto & tp : top_) {
            if (tp.p < shape_.p_min) break;   // sorted: the rest are lower still
            cand_.push_back(tree.add_or_merge(f, tp.id, tp.p, kFromDflash));
        }
    }
    ++level_;
    frontier_.clear();
    if (level_ < levels_) tree.top(cand_, size_t(std::max(1, shape_.width)), frontier_);
}

int32_t DflashDrafter::extend(DraftTree & tree, int32_t levels) {
    int32_t done = 0;
    for (; done < levels && !frontier_.empty(); ++done) expand_level(tree);
    return done;
}

void DflashDrafter::narrow_frontier(const std::vector<int32_t> & nodes) {
    check_on_frontier(nodes, frontier_);
    frontier_ = nodes;
}

int32_t DflashDrafter::fit_depth(int32_t depth, int32_t, llama_pos root_pos) const {
    // the block's cells: the root and its masks, within the draft's context
    const int32_t n = std::min<int32_t>(block_, int32_t(llama_n_ctx(head_)) - root_pos);
    return std::max(0, std::min(depth, n - 1));
}

void DflashDrafter::keep(size_t n_accepted) {
    frontier_.clear();
    if (n_rows_ == 0) return;
    const size_t last = std::min(n_accepted, n_rows_ - 1);
    const llama_pos cut = rows_pos0_ + llama_pos(last) + 1;   // the first rejected position
    while (!pend_pos_.empty() && pend_pos_.back() >= cut) {
        pend_pos_.pop_back();
        pend_f_.resize(pend_f_.size() - size_t(width_));
    }
    llama_memory_seq_rm(llama_get_memory(head_), 0, cut, -1);
    if (text_.size() > size_t(cut)) text_.resize(size_t(cut));
}

// A drafting step as it runs: one injected row and the block's pass (every level at once).
double DflashDrafter::time_level(int32_t) {
    const int32_t n = std::min<int32_t>(block_, int32_t(llama_n_ctx(head_)) - 1);
    const std::vector<float> zeros(size_t(width_), 0.0f);
    double best = 1e30;
    for (int rep = 0; rep < 3 && n >= 2; ++rep) {
        llama_memory_clear(llama_get_memory(head_), false);
        const double ms0 = llama_ms_;
        pend_pos_.assign(1, 0);
        pend_f_ = zeros;
        inject_pending();
        run_block(mask_, 1, n);
        best = std::min(best, llama_ms_ - ms0);
    }
    llama_memory_clear(llama_get_memory(head_), false);
    text_.clear();
    n_rows_ = 0;
    pend_pos_.clear();
    pend_f_.clear();
    llama_ms_ = 0;
    return n >= 2 ? best : 0.0;
}

}  // namespace heterospec
