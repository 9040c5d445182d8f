#include "drafters/head.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

#include "entropy.h"
#include "llama-ext.h"
#include "model.h"
#include "topk.h"

namespace heterospec {

HeadDrafter::HeadDrafter(llama_context * target_ctx, llama_context * head_ctx, int32_t state_width, uint8_t source,
                         bool zero_state)
    : target_(target_ctx), head_(head_ctx),
      n_embd_(llama_model_n_embd_out(llama_get_model(head_ctx))),
      n_vocab_(llama_vocab_n_tokens(llama_model_get_vocab(llama_get_model(head_ctx)))),
      state_width_(state_width), source_(source), zero_state_(zero_state),
      batch_cap_(int32_t(llama_n_batch(head_ctx))) {
    batch_ = llama_batch_init(batch_cap_, 0, 1);
    embd_.resize(size_t(batch_cap_) * size_t(n_embd_));
    h_last_.assign(size_t(state_width_), 0.0f);
    // the head's own state at its outputs: the input of the next level's row
    llama_set_embeddings_nextn(head_, true, /*masked=*/true);
}

HeadDrafter::~HeadDrafter() {
    batch_.embd = nullptr;   // ours, not llama.cpp's to free
    llama_batch_free(batch_);
}

void HeadDrafter::add_row(int32_t token, llama_pos pos, const float * h) {
    const int32_t i = batch_.n_tokens++;
    batch_.token[i] = token;
    batch_.pos[i] = pos;
    batch_.n_seq_id[i] = 1;
    batch_.seq_id[i][0] = 0;
    batch_.logits[i] = false;
    std::memcpy(embd_.data() + size_t(i) * size_t(n_embd_), h, sizeof(float) * size_t(n_embd_));
}

void HeadDrafter::decode(size_t n_rows, bool logits_last) {
    if (logits_last && n_rows) batch_.logits[n_rows - 1] = true;
    last_row_ = int32_t(n_rows) - 1;
    batch_.embd = embd_.data();   // each row carries a token and a hidden state
    const double t0 = now_ms();
    const int32_t rc = llama_decode(head_, batch_);
    batch_.embd = nullptr;
    batch_.n_tokens = 0;
    if (rc != 0) throw std::runtime_error(std::string(name()) + " head llama_decode failed (code " + std::to_string(rc) + ")");
    llama_synchronize(head_);
    llama_ms_ += now_ms() - t0;
}

void HeadDrafter::queue(int32_t token, llama_pos pos, const float * h) {
    pend_tok_.push_back(token);
    pend_pos_.push_back(pos);
    pend_h_.insert(pend_h_.end(), h, h + state_width_);
}

void HeadDrafter::target_decoded(const int32_t * tokens, size_t n, llama_pos pos0, const int32_t * rows) {
    if (n == 0) return;
    const size_t w = size_t(state_width_);
    rows_.resize(n * w);
    target_states(rows, n, rows_.data());
    rows_pos0_ = pos0;
    n_rows_ = n;
    if (record_)
        for (size_t k = 0; k < n; ++k)
            recorded_[int32_t(pos0) + int32_t(k)].assign(rows_.data() + k * w, rows_.data() + (k + 1) * w);
    // x_p pairs with s_{p-1}: the first token with the state kept from before. Where that is
    // lost (the text's start, a cold prompt cache, a generation that ended inside a step) the
    // head restarts here: its drafts are worse, never wrong.
    const bool restart = h_last_pos_ != pos0 - 1;
    if (restart) {
        std::fill(h_last_.begin(), h_last_.end(), 0.0f);
        pend_tok_.clear(); pend_pos_.clear(); pend_h_.clear();
    }
    // The head runs these rows only when it next drafts (with its root, in one pass): a step
    // that drafts from n-grams alone costs it a copy, not a pass.
    for (size_t k = (restart && !zero_state_) ? 1 : 0; k < n; ++k)
        queue(tokens[k], pos0 + llama_pos(k), k == 0 ? h_last_.data() : rows_.data() + (k - 1) * w);
    std::memcpy(h_last_.data(), rows_.data() + (n - 1) * w, sizeof(float) * w);
    h_last_pos_ = pos0 + llama_pos(n) - 1;   // until the walk says otherwise: everything
    if (pend_tok_.size() > kMaxPending) run_pending(nullptr, 0);   // bounded memory (prompts)
}

void HeadDrafter::run_pending(const int32_t * root, llama_pos root_pos) {
    const size_t n = pend_tok_.size();
    // the rows continue the head's cache; where it lacks the text just before them (a prompt
    // cache hit on text the head never saw), it restarts from them: worse drafts, never wrong
    llama_memory_t mem = llama_get_memory(head_);
    const llama_pos first = n ? pend_pos_[0] : root_pos;
    llama_memory_seq_rm(mem, 0, llama_memory_seq_pos_max(mem, 0) < first - 1 ? -1 : first, -1);
    const size_t rows = n + (root ? 1 : 0);
    inputs_.assign(pend_h_.begin(), pend_h_.end());
    if (root) inputs_.insert(inputs_.end(), h_last_.begin(), h_last_.end());
    const float * in = rows ? head_inputs(inputs_.data(), rows) : nullptr;
    for (size_t i = 0; i < rows; i += size_t(batch_cap_)) {
        const size_t m = std::min(size_t(batch_cap_), rows - i);
        for (size_t k = i; k < i + m; ++k)
            add_row(k < n ? pend_tok_[k] : *root, k < n ? pend_pos_[k] : root_pos, in + k * size_t(n_embd_));
        decode(m, root && i + m == rows);
    }
    pend_tok_.clear(); pend_pos_.clear(); pend_h_.clear();
}

void HeadDrafter::keep(size_t n_accepted) {
    if (n_rows_ == 0) return;
    const size_t last = std::min(n_accepted, n_rows_ - 1);
    const llama_pos cut = rows_pos0_ + llama_pos(last) + 1;   // the first rejected position
    while (!pend_pos_.empty() && pend_pos_.back() >= cut) {
        pend_pos_.pop_back();
        pend_tok_.pop_back();
        pend_h_.resize(pend_h_.size() - size_t(state_width_));
    }
    llama_memory_seq_rm(llama_get_memory(head_), 0, cut, -1);   // rows the head ran already
    std::memcpy(h_last_.data(), rows_.data() + last * size_t(state_width_), sizeof(float) * size_t(state_width_));
    h_last_pos_ = cut - 1;
    frontier_.clear();
}

void HeadDrafter::expand(DraftTree & tree, int32_t node, const float * logits) {
    softmax_top_k(logits, n_vocab_, shape_.branching, top_);
    tree.set_entropy(node, topk_entropy(top_.data(), top_.size()));
    cand_.clear();
    for (const auto & tp : top_) {
        if (tp.p < shape_.p_min) break;   // sorted: the rest are lower still
        cand_.push_back(tree.add_or_merge(node, tp.id, tp.p, source_));
    }
    frontier_.assign(cand_.begin(), cand_.begin() + std::min<size_t>(cand_.size(), 1));
    // the head's own state after this row: the input of its child's row
    const float * h = llama_get_embeddings_nextn_ith(head_, last_row_);
    if (!h) throw std::runtime_error(std::string("the ") + name() + " head gave no hidden state");
    h_frontier_.assign(h, h + n_embd_);
}

void HeadDrafter::do_start(DraftTree & tree, const DraftShape & shape, llama_pos root_pos, int32_t levels) {
    shape_ = shape;
    root_pos_ = root_pos;
    if (h_last_pos_ != root_pos - 1) {
        std::fill(h_last_.begin(), h_last_.end(), 0.0f);
        pend_tok_.clear(); pend_pos_.clear(); pend_h_.clear();
    }
    // the rows the head has not run yet, and the root, in one pass
    const int32_t root = tree[0].token;
    run_pending(&root, root_pos);
    calls_++;
    expand(tree, 0, llama_get_logits_ith(head_, -1));
    first_choice_ = cand_.empty() ? -1 : cand_[0];
    extend(tree, levels - 1);
}

int32_t HeadDrafter::extend(DraftTree & tree, int32_t levels) {
    int32_t done = 0;
    for (; done < levels && !frontier_.empty(); ++done) {
        const int32_t f = frontier_[0];
        add_row(tree[f].token, root_pos_ + tree[f].depth, h_frontier_.data());
        decode(1, true);
        calls_++;
        expand(tree, f, llama_get_logits_ith(head_, -1));
    }
    return done;
}

void HeadDrafter::narrow_frontier(const std::vector<int32_t> & nodes) {
    check_on_frontier(nodes, frontier_);
    frontier_ = nodes;
}

double HeadDrafter::time_level(int32_t) {
    const int32_t token = std::max(0, llama_vocab_bos(llama_model_get_vocab(llama_get_model(head_))));
    const std::vector<float> zeros(size_t(n_embd_), 0.0f);
    double best = 1e30;
    for (int rep = 0; rep < 3; ++rep) {
        llama_memory_clear(llama_get_memory(head_), false);
        const double ms0 = llama_ms_;
        add_row(token, 0, zeros.data());
        decode(1, true);
        best = std::min(best, llama_ms_ - ms0);
    }
    llama_memory_clear(llama_get_memory(head_), false);
    std::fill(h_last_.begin(), h_last_.end(), 0.0f);
    h_last_pos_ = -1;
    n_rows_ = 0;
    pend_tok_.clear(); pend_pos_.clear(); pend_h_.clear();
    llama_ms_ = 0;
    return best;
}

}  // namespace heterospec
