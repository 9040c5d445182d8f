#include "drafters/head.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

#include "entropy.h"
#include "kv_paths.h"
#include "llama-ext.h"
#include "model.h"
#include "topk.h"

namespace heterospec {

void layer_features(llama_context * target, const std::vector<int32_t> & layers, const int32_t * rows, size_t n,
                    float * out) {
    const size_t d = size_t(llama_model_n_embd(llama_get_model(target)));
    const size_t w = layers.size() * d;
    for (size_t j = 0; j < layers.size(); ++j) {
        const float * f = llama_get_embeddings_layer_inp(target, uint32_t(layers[j]));
        if (!f) throw std::runtime_error("the target gave no features of layer " + std::to_string(layers[j]));
        for (size_t k = 0; k < n; ++k)
            std::memcpy(out + k * w + j * d, f + size_t(rows ? rows[k] : int32_t(k)) * d, sizeof(float) * d);
    }
}

HeadDrafter::HeadDrafter(llama_context * target_ctx, llama_context * head_ctx, int32_t state_width, uint8_t source,
                         bool zero_state)
    : target_(target_ctx), head_(head_ctx),
      n_embd_(llama_model_n_embd_out(llama_get_model(head_ctx))),
      n_vocab_(llama_vocab_n_tokens(llama_model_get_vocab(llama_get_model(head_ctx)))),
      state_width_(state_width), source_(source), zero_state_(zero_state),
      batch_cap_(int32_t(llama_n_batch(head_ctx))), n_seq_(int32_t(llama_n_seq_max(head_ctx))) {
    batch_ = llama_batch_init(batch_cap_, 0, n_seq_);
    embd_.resize(size_t(batch_cap_) * size_t(n_embd_));
    h_last_.assign(size_t(state_width_), 0.0f);
    // the head's own state at its outputs: the input of the next level's row
    llama_set_embeddings_nextn(head_, true, /*masked=*/true);
}

HeadDrafter::~HeadDrafter() {
    batch_.embd = nullptr;   // ours, not llama.cpp's to free
    llama_batch_free(batch_);
}

void HeadDrafter::add_row(int32_t token, llama_pos pos, const float * h, int32_t seq, bool out) {
    const int32_t i = batch_.n_tokens++;
    batch_.token[i] = token;
    batch_.pos[i] = pos;
    batch_.n_seq_id[i] = 1;
    batch_.seq_id[i][0] = seq;
    batch_.logits[i] = out;
    std::memcpy(embd_.data() + size_t(i) * size_t(n_embd_), h, sizeof(float) * size_t(n_embd_));
}

void HeadDrafter::decode() {
    last_row_ = batch_.n_tokens - 1;
    batch_.embd = embd_.data();   // each row carries a token and a hidden state
    const double t0 = now_ms();
    const int32_t rc = llama_decode(head_, batch_);
    batch_.embd = nullptr;
    batch_.n_tokens = 0;
    if (rc != 0) {
        std::string d;
        llama_memory_t mem = llama_get_memory(head_);
        for (int32_t s = 0; s < n_seq_; ++s)
            if (llama_memory_seq_pos_max(mem, s) >= 0)
                d += " seq" + std::to_string(s) + "[" + std::to_string(llama_memory_seq_pos_min(mem, s)) + "," + std::to_string(llama_memory_seq_pos_max(mem, s)) + "]";
        d += " batch " + std::to_string(last_row_ + 1) + " rows from pos " + std::to_string(batch_.pos[0]) + " n_ctx " + std::to_string(llama_n_ctx(head_));
        throw std::runtime_error(std::string(name()) + " head llama_decode failed (code " + std::to_string(rc) + ")" + d);
    }
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
    // x_p pairs with s_{p-1}: the first token with the state kept from before.
    llama_memory_t mem = llama_get_memory(head_);
    size_t k0 = 0;
    if (h_last_pos_ != pos0 - 1 || pos0 == 0) {   // (the text's first token has no state before it)
        // A rewind into text it holds (a prompt that parts from the last text after pos0: the
        // target re-runs one token the head has, known_prefix) keeps its rows up to pos0 and
        // continues from there. Otherwise (the text's start, a state lost) it restarts here:
        // its drafts are worse, never wrong.
        const bool rewind = size_t(pos0) < text_.size() && text_[size_t(pos0)] == tokens[0] &&
                            (llama_memory_seq_pos_max(mem, 0) >= pos0 || (!pend_pos_.empty() && pend_pos_[0] <= pos0));
        while (!pend_pos_.empty() && pend_pos_.back() > (rewind ? pos0 : pos0 - 1)) {
            pend_pos_.pop_back();
            pend_tok_.pop_back();
            pend_h_.resize(pend_h_.size() - w);
        }
        llama_memory_seq_rm(mem, 0, rewind ? pos0 + 1 : pos0, -1);   // the other text's rows
        drop_paths();
        if (!rewind) std::fill(h_last_.begin(), h_last_.end(), 0.0f);
        k0 = rewind ? 1 : zero_state_ ? 0 : 1;
    }
    text_.resize(size_t(pos0), -1);   // -1: a position whose state it never had
    text_.insert(text_.end(), tokens, tokens + n);
    // The head runs these rows only when it next drafts (with its root, in one pass): a step
    // that drafts from n-grams alone costs it a copy, not a pass.
    for (size_t k = k0; k < n; ++k)
        queue(tokens[k], pos0 + llama_pos(k), k == 0 ? h_last_.data() : rows_.data() + (k - 1) * w);
    std::memcpy(h_last_.data(), rows_.data() + (n - 1) * w, sizeof(float) * w);
    h_last_pos_ = pos0 + llama_pos(n) - 1;   // until the walk says otherwise: everything
    if (pend_tok_.size() > kMaxPending) run_pending(nullptr, 0);   // bounded memory (prompts)
}

// Sequences 1.. hold a step's other paths, the committed text copied in (cells shared with
// sequence 0): they go after each step, and before the next text's rows (a generation that ended
// inside a step committed nothing here, and its paths would keep the old text's cells).
void HeadDrafter::drop_paths() {
    llama_memory_t mem = llama_get_memory(head_);
    for (int32_t s = 1; s < n_seq_; ++s) llama_memory_seq_rm(mem, s, -1, -1);
}

// The head continues a text where its last state is: a prompt that extends what it saw keeps it
// all; one that parts from it inside keeps the common part but one token, which the target runs
// again to give the head the state there (it keeps the last state only).
size_t HeadDrafter::known_prefix(const std::vector<int32_t> & tokens) const {
    size_t k = 0;
    while (k < tokens.size() && k < text_.size() && tokens[k] == text_[k]) ++k;
    return k == text_.size() ? k : (k > 0 ? k - 1 : 0);
}

void HeadDrafter::run_pending(const int32_t * root, llama_pos root_pos) {
    const size_t n = pend_tok_.size();
    // the rows continue the head's cache; where it lacks the text just before them (a prompt
    // cache hit on text the head never saw), it restarts from them: worse drafts, never wrong
    drop_paths();
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
            add_row(k < n ? pend_tok_[k] : *root, k < n ? pend_pos_[k] : root_pos, in + k * size_t(n_embd_), 0,
                    root && k == rows - 1);
        decode();
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
    drop_paths();
    std::memcpy(h_last_.data(), rows_.data() + last * size_t(state_width_), sizeof(float) * size_t(state_width_));
    h_last_pos_ = cut - 1;
    if (text_.size() > size_t(cut)) text_.resize(size_t(cut));
    frontier_.clear();
}

void HeadDrafter::expand(DraftTree & tree, int32_t node, int32_t row) {
    softmax_top_k(llama_get_logits_ith(head_, row), n_vocab_, shape_.branching, top_);
    tree.set_entropy(node, topk_entropy(top_.data(), top_.size()));
    for (const auto & tp : top_) {
        if (tp.p < shape_.p_min) break;   // sorted: the rest are lower still
        cand_.push_back(tree.add_or_merge(node, tp.id, tp.p, source_));
    }
    // the head's own state after this row: the input of its children's rows
    const float * h = llama_get_embeddings_nextn_ith(head_, row);
    if (!h) throw std::runtime_error(std::string("the ") + name() + " head gave no hidden state");
    node_h_.resize(size_t(tree.size()) * size_t(n_embd_));
    std::memcpy(node_h_.data() + size_t(node) * size_t(n_embd_), h, sizeof(float) * size_t(n_embd_));
}

void HeadDrafter::next_frontier(const DraftTree & tree) {
    tree.top(cand_, size_t(std::max(1, std::min(shape_.width, n_seq_))), frontier_);
}

void HeadDrafter::do_start(DraftTree & tree, const DraftShape & shape, llama_pos root_pos, int32_t levels) {
    shape_ = shape;
    root_pos_ = root_pos;
    if (h_last_pos_ != root_pos - 1) {
        std::fill(h_last_.begin(), h_last_.end(), 0.0f);
        pend_tok_.clear(); pend_pos_.clear(); pend_h_.clear();
    }
    // the rows the head has not run yet, and the root, in one pass (sequence 0)
    const int32_t root = tree[0].token;
    run_pending(&root, root_pos);
    calls_++;
    seq_of_.assign(size_t(tree.size()), -1);
    seq_of_[0] = 0;
    cand_.clear();
    expand(tree, 0, last_row_);
    first_choice_ = cand_.empty() ? -1 : cand_[0];
    next_frontier(tree);
    extend(tree, levels - 1);
}

int32_t HeadDrafter::extend(DraftTree & tree, int32_t levels) {
    int32_t done = 0;
    for (; done < levels && !frontier_.empty(); ++done) expand_frontier(tree);
    return done;
}

void HeadDrafter::expand_frontier(DraftTree & tree) {
    llama_memory_t mem = llama_get_memory(head_);
    const int32_t depth = tree[frontier_[0]].depth;
    const llama_pos step0 = root_pos_ + 1;   // the step's first draft position
    seq_of_.resize(size_t(tree.size()), -1);
    // free sequences get the committed text (sequence 0 holds it: when no frontier node descends
    // from its path, it keeps the text and drops only its draft cells) and the parent's path
    assign_frontier_sequences(tree, frontier_, seq_of_, n_seq_, taken_, seq_for_, [&](int32_t s, int32_t parent) {
        llama_memory_seq_rm(mem, s, s == 0 ? step0 : -1, -1);
        if (s != 0) llama_memory_seq_cp(mem, 0, s, -1, step0);
        if (parent != 0) llama_memory_seq_cp(mem, seq_of_[size_t(parent)], s, step0, root_pos_ + depth);
    });
    for (size_t i = 0; i < frontier_.size(); ++i) {
        const int32_t f = frontier_[i];
        seq_of_[size_t(f)] = seq_for_[i];
        add_row(tree[f].token, root_pos_ + depth, node_h_.data() + size_t(tree[f].parent) * size_t(n_embd_),
                seq_for_[i], true);
    }
    decode();
    calls_++;
    cand_.clear();
    for (size_t i = 0; i < frontier_.size(); ++i) expand(tree, frontier_[i], int32_t(i));
    next_frontier(tree);
}

int32_t HeadDrafter::fit_depth(int32_t depth, int32_t width, llama_pos root_pos) const {
    // each level beyond the first holds a cell per frontier node in the head's cache
    const int32_t room = int32_t(llama_n_ctx(head_)) - 1 - root_pos;
    if (room < 0) return 0;
    width = std::max(1, std::min(width, n_seq_));
    if (depth > 1 && width * (depth - 1) > room) depth = 1 + room / width;
    return depth;
}

void HeadDrafter::narrow_frontier(const std::vector<int32_t> & nodes) {
    check_on_frontier(nodes, frontier_);
    frontier_ = nodes;
}

// A level as it runs: a row per frontier node (up to `width`), each in a sequence of its own.
double HeadDrafter::time_level(int32_t width) {
    const int32_t token = std::max(0, llama_vocab_bos(llama_model_get_vocab(llama_get_model(head_))));
    const std::vector<float> zeros(size_t(n_embd_), 0.0f);
    const int32_t rows = std::max(1, std::min(width, n_seq_));
    double best = 1e30;
    for (int rep = 0; rep < 3; ++rep) {
        llama_memory_clear(llama_get_memory(head_), false);
        const double ms0 = llama_ms_;
        for (int32_t s = 0; s < rows; ++s) add_row(token, 0, zeros.data(), s, true);
        decode();
        best = std::min(best, llama_ms_ - ms0);
    }
    llama_memory_clear(llama_get_memory(head_), false);
    std::fill(h_last_.begin(), h_last_.end(), 0.0f);
    h_last_pos_ = -1;
    text_.clear();
    n_rows_ = 0;
    pend_tok_.clear(); pend_pos_.clear(); pend_h_.clear();
    llama_ms_ = 0;
    return best;
}

}  // namespace heterospec
