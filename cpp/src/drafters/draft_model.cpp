#include "drafters/draft_model.h"

#include <algorithm>
#include <stdexcept>
#include <string>

#include "entropy.h"
#include "topk.h"

namespace heterospec {

DraftModelDrafter::DraftModelDrafter(llama_context * ctx, int32_t n_seq_max, CachedTokens & cached)
    : ctx_(ctx), batch_(llama_batch_ext_init(ctx)), kv_(ctx, n_seq_max), cached_(cached),
      n_vocab_(llama_vocab_n_tokens(llama_model_get_vocab(llama_get_model(ctx)))) {}

void DraftModelDrafter::decode_or_throw() {
    llama_ms_ += decode_timed(ctx_, batch_.get(), "draft");
    calls_++;
}

void DraftModelDrafter::decode_committed(const std::vector<int32_t> & tokens, bool logits_for_last) {
    llama_ms_ += decode_run(ctx_, batch_.get(), tokens.data(), tokens.size(), n_past_, kv_.live(),
                            logits_for_last, "draft", &calls_);
    cached_.keep(size_t(n_past_));
    cached_.append(tokens.data(), tokens.size());
    n_past_ += llama_pos(tokens.size());
}

void DraftModelDrafter::do_begin(const std::vector<int32_t> & prefix, bool reuse) {
    frontier_.clear();   // a generation that ended inside a step left its tree's nodes here
    n_past_ = kv_.reset(llama_pos(reuse ? cached_.common_prefix(prefix) : 0));
    cached_.keep(size_t(n_past_));
    pending_.assign(prefix.begin() + n_past_, prefix.end());
    decode_committed(pending_, false);
    pending_.clear();
    calls_ = 0;
    llama_ms_ = 0;
}

void DraftModelDrafter::do_start(DraftTree & tree, const DraftShape & shape, llama_pos root_pos, int32_t levels) {
    if (n_past_ + llama_pos(pending_.size()) != root_pos)
        throw std::logic_error("draft cache out of step with the committed text");
    shape_ = shape;
    root_pos_ = root_pos;
    kv_.ensure_live(shape.width);
    const int32_t live = kv_.live();

    // the unseen committed tokens and the root, in every live sequence; logits for the root only
    pending_.push_back(tree[0].token);
    decode_committed(pending_, true);
    pending_.clear();

    seq_of_.assign(size_t(tree.size()), -1);
    seq_node_.assign(size_t(live), 0);   // every sequence holds the root's path
    softmax_top_k(llama_get_logits_ith(ctx_, -1), n_vocab_, shape.branching, root_top_);
    tree.set_entropy(0, topk_entropy(root_top_.data(), root_top_.size()));
    cand_.clear();
    for (const auto & tp : root_top_) {
        if (tp.p < shape.p_min) break;   // sorted: the rest are lower still
        cand_.push_back(tree.add_or_merge(0, tp.id, tp.p, kFromModel));
    }
    first_choice_ = cand_.empty() ? -1 : cand_[0];
    tree.top(cand_, size_t(shape.width), frontier_);
    extend(tree, levels - 1);
}

void DraftModelDrafter::narrow_frontier(const std::vector<int32_t> & nodes) {
    check_on_frontier(nodes, frontier_);
    frontier_ = nodes;
}

int32_t DraftModelDrafter::extend(DraftTree & tree, int32_t levels) {
    int32_t done = 0;
    for (; done < levels && !frontier_.empty(); ++done) expand_frontier(tree);
    return done;
}

void DraftModelDrafter::expand_frontier(DraftTree & tree) {
    llama_memory_t mem = llama_get_memory(ctx_);
    const int32_t depth = tree[frontier_[0]].depth;
    const llama_pos step0 = root_pos_ + 1;   // first position of this step's temporary cells
    seq_of_.resize(size_t(tree.size()), -1);

    // Sequences: a node's first frontier child inherits its sequence; the others take free ones.
    std::vector<int32_t> & seq_for = next_;
    assign_frontier_sequences(tree, frontier_, seq_of_, int32_t(seq_node_.size()), inherited_, seq_for,
                              [&](int32_t s, int32_t parent) {
        llama_memory_seq_rm(mem, s, step0, -1);
        if (parent != 0) llama_memory_seq_cp(mem, seq_of_[size_t(parent)], s, step0, root_pos_ + depth);
    });

    llama_batch_ext_clear(batch_.get());
    for (size_t i = 0; i < frontier_.size(); ++i) {
        const int32_t f = frontier_[i];
        seq_of_[size_t(f)] = seq_for[i];
        seq_node_[size_t(seq_for[i])] = f;
        const int32_t idx = llama_batch_ext_add_token(batch_.get(), seq_for[i], tree[f].token);
        const llama_pos pos = root_pos_ + depth;
        llama_batch_ext_set_pos(batch_.get(), idx, &pos);
        llama_batch_ext_set_output_logits(batch_.get(), idx, true);
    }
    decode_or_throw();

    cand_.clear();
    for (size_t i = 0; i < frontier_.size(); ++i) {
        softmax_top_k(llama_get_logits_ith(ctx_, int32_t(i)), n_vocab_, shape_.branching, top_);
        tree.set_entropy(frontier_[i], topk_entropy(top_.data(), top_.size()));
        for (const auto & tp : top_) {
            if (tp.p < shape_.p_min) break;
            cand_.push_back(tree.add_or_merge(frontier_[i], tp.id, tp.p, kFromModel));
        }
    }
    tree.top(cand_, size_t(shape_.width), frontier_);
}

void DraftModelDrafter::do_commit(const DraftTree & tree, const std::vector<int32_t> & accepted) {
    // the live sequence whose path shares the longest prefix with the accepted path
    int32_t best_seq = 0, best_len = 0;
    std::vector<int32_t> & chain = cand_;
    for (int32_t s = 0; s < int32_t(seq_node_.size()); ++s) {
        chain.clear();
        for (int32_t n = seq_node_[size_t(s)]; n > 0; n = tree[n].parent) chain.push_back(n);
        std::reverse(chain.begin(), chain.end());
        int32_t len = 0;
        while (len < int32_t(std::min(chain.size(), accepted.size())) && chain[size_t(len)] == accepted[size_t(len)]) ++len;
        if (len > best_len) { best_len = len; best_seq = s; }
    }
    kv_.commit(best_seq, root_pos_ + 1, root_pos_ + 1 + best_len);
    cached_.keep(size_t(root_pos_) + 1);
    for (int32_t i = 0; i < best_len; ++i) cached_.append(&tree[accepted[size_t(i)]].token, 1);
    n_past_ = root_pos_ + 1 + best_len;
    for (size_t i = size_t(best_len); i < accepted.size(); ++i) pending_.push_back(tree[accepted[i]].token);
    frontier_.clear();   // the step's tree is gone: nothing to extend until the next start
}

void DraftModelDrafter::do_defer(const DraftTree & tree, const std::vector<int32_t> & accepted) {
    first_choice_ = -1;
    frontier_.clear();
    pending_.push_back(tree[0].token);
    for (int32_t n : accepted) pending_.push_back(tree[n].token);
}

double DraftModelDrafter::time_level(int32_t width) {
    const int32_t token = std::max(0, llama_vocab_bos(llama_model_get_vocab(llama_get_model(ctx_))));
    time_pass(ctx_, batch_.get(), width, token);   // warm-up
    const double ms = time_pass(ctx_, batch_.get(), width, token);
    kv_.reset();
    cached_.clear();
    pending_.clear();
    n_past_ = 0;
    return ms;
}

int32_t DraftModelDrafter::fit_depth(int32_t depth, int32_t width, llama_pos root_pos) const {
    const int32_t room = int32_t(llama_n_ctx(ctx_)) - 1 - root_pos;
    if (room < 0) return 0;
    if (depth > 1 && width * (depth - 1) > room) depth = 1 + room / width;
    return depth;
}

}  // namespace heterospec
