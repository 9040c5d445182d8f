#include "verifier.h"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace heterospec {

WalkResult walk_tree(const TreeBatch & tb, const std::function<int32_t(int32_t)> & sample,
                     const std::function<bool(int32_t)> & emit, std::vector<int32_t> & accepted) {
    accepted.clear();
    WalkResult w;
    for (;;) {
        w.token = sample(w.last);
        const int32_t c = tb.child_with_token(w.last, w.token);
        w.emitted++;
        if (!emit(w.token)) {   // a drafted token that ends generation was accepted all the same
            if (c >= 0) accepted.push_back(c);
            w.stopped = true;
            return w;
        }
        if (c < 0) return w;
        accepted.push_back(c);
        w.last = c;
    }
}

Verifier::Verifier(llama_context * ctx, int32_t n_seq_max, CachedTokens & cached, Layout layout)
    : layout_(layout), ckpt_(layout == Layout::checkpoints ? new StateCheckpoint(ctx) : nullptr), ctx_(ctx),
      batch_(llama_batch_ext_init(ctx)), kv_(ctx, n_seq_max), cached_(cached) {}

void Verifier::run() { llama_ms_ += decode_timed(ctx_, batch_.get(), "target"); }

size_t Verifier::begin(const std::vector<int32_t> & prefix, bool reuse, size_t max_keep) {
    const size_t keep = size_t(kv_.reset(llama_pos(reuse ? std::min(cached_.common_prefix(prefix), max_keep) : 0)));
    cached_.keep(keep);
    llama_ms_ = 0;
    replay_.clear();
    if (ckpt_) ckpt_->invalidate();
    // a listener reads each chunk's hidden states before the next chunk replaces them
    const size_t chunk = listener_ ? llama_n_batch(ctx_) : prefix.size() + 1;
    for (size_t i = keep; i < prefix.size(); i += chunk) {
        const size_t m = std::min(chunk, prefix.size() - i);
        llama_ms_ += decode_run(ctx_, batch_.get(), prefix.data() + i, m, llama_pos(i), 1, false, "target");
        if (listener_) listener_->target_decoded(prefix.data() + i, m, llama_pos(i));
    }
    cached_.append(prefix.data() + keep, prefix.size() - keep);
    return keep;
}

void Verifier::decode(const TreeBatch & tb, llama_pos root_pos, int32_t n_seqs) {
    if (layout_ == Layout::paths) return decode_paths(tb, root_pos);
    n_seqs = std::min(std::max(n_seqs, tb.n_paths), kv_.n_seq_max());
    kv_.ensure_live(n_seqs);
    llama_batch_ext_clear(batch_.get());
    offset_ = 0;
    if (ckpt_) {
        if (tb.n_paths > 1) throw std::logic_error("checkpoint verification takes chains alone");
        // a batch too long with its replay: the replay runs first, on its own
        if (replay_.size() + size_t(tb.size()) > llama_n_batch(ctx_)) run_replay();
        // what a rejection returns to: the state before this batch (before its replay, if any)
        if (tb.size() > 1 && !ckpt_->valid()) ckpt_->save(0);
        add_replay();
    }
    for (int32_t i = 0; i < tb.size(); ++i) {
        const int32_t * s = tb.seqs.data() + tb.seq_begin[size_t(i)];
        const int32_t n = tb.seq_begin[size_t(i) + 1] - tb.seq_begin[size_t(i)];
        const int32_t idx = llama_batch_ext_add_token(batch_.get(), s[0], tb.token[size_t(i)]);
        if (idx != offset_ + i) throw std::logic_error("verification batch does not fit the context's batch size");
        for (int32_t j = 1; j < n; ++j) llama_batch_ext_add_seq(batch_.get(), idx, s[j]);
        // The root (on every path) also carries the unused sequences, so that every step of a
        // shape has the same sequence count and llama.cpp can reuse its compute graph.
        if (i == 0)
            for (int32_t j = tb.n_paths; j < n_seqs; ++j) llama_batch_ext_add_seq(batch_.get(), idx, j);
        const llama_pos pos = root_pos + tb.depth[size_t(i)];
        llama_batch_ext_set_pos(batch_.get(), idx, &pos);
        llama_batch_ext_set_output_logits(batch_.get(), idx, true);
    }
    batch_tokens_ = offset_ + tb.size();
    run();
}

void Verifier::decode_paths(const TreeBatch & tb, llama_pos root_pos) {
    pb_.build(tb);
    if (tb.n_paths > kv_.n_seq_max()) throw std::logic_error("verification batch has more paths than sequences");
    kv_.ensure_live(tb.n_paths);
    llama_batch_ext_clear(batch_.get());
    offset_ = 0;
    for (int32_t r = 0; r < pb_.rows(); ++r) {
        const int32_t idx = llama_batch_ext_add_token(batch_.get(), r / pb_.len, pb_.token[size_t(r)]);
        if (idx != r) throw std::logic_error("verification batch does not fit the context's batch size");
        const llama_pos pos = root_pos + r % pb_.len;
        llama_batch_ext_set_pos(batch_.get(), idx, &pos);
        llama_batch_ext_set_output_logits(batch_.get(), idx, pb_.outputs(r));
    }
    batch_tokens_ = pb_.rows();
    run();
}

void Verifier::run_replay() {
    llama_ms_ += decode_run(ctx_, batch_.get(), replay_.data(), replay_.size(), replay_pos_, 1, false, "target");
    cached_.keep(size_t(replay_pos_));
    cached_.append(replay_.data(), replay_.size());
    replay_.clear();
    ckpt_->invalidate();
}

void Verifier::add_replay() {
    for (size_t i = 0; i < replay_.size(); ++i) {
        llama_batch_ext_add_token(batch_.get(), 0, replay_[i]);
        const llama_pos pos = replay_pos_ + llama_pos(i);
        llama_batch_ext_set_pos(batch_.get(), int32_t(i), &pos);
    }
    offset_ = int32_t(replay_.size());
}

const float * Verifier::logits(int32_t entry) const {
    const float * l = llama_get_logits_ith(ctx_, row(entry));
    if (!l) throw std::runtime_error("no target logits for tree entry " + std::to_string(entry));
    return l;
}

void Verifier::accepted_path(const TreeBatch & tb, int32_t last_entry) {
    path_tokens_.clear();
    path_rows_.clear();
    // over recurrent state, the rows of the kept path's own sequence (its state is the one kept)
    const int32_t base = layout_ == Layout::paths ? tb.path[size_t(last_entry)] * pb_.len : 0;
    for (int32_t e = last_entry; e >= 0; e = tb.parent[size_t(e)]) {
        path_tokens_.push_back(tb.token[size_t(e)]);
        path_rows_.push_back(layout_ == Layout::paths ? base + tb.depth[size_t(e)] : offset_ + e);
    }
    std::reverse(path_tokens_.begin(), path_tokens_.end());
    std::reverse(path_rows_.begin(), path_rows_.end());
}

void Verifier::commit(const TreeBatch & tb, int32_t last_entry, llama_pos root_pos) {
    accepted_path(tb, last_entry);   // at positions root_pos..
    // the hidden states of the accepted path, before the next pass replaces them
    if (listener_) listener_->target_decoded(path_tokens_.data(), path_tokens_.size(), root_pos, path_rows_.data());
    if (ckpt_) return commit_over_checkpoint(tb, last_entry, root_pos);
    // A recurrent state cannot be cut to the prefix and extended: over it each other sequence is
    // dropped whole and becomes a copy of the kept one from position 0 (its state cell shared,
    // with its pending rollback: patch 0003; its attention cells: metadata only).
    const llama_pos from = layout_ == Layout::paths ? 0 : root_pos;
    kv_.commit(tb.path[size_t(last_entry)], from, root_pos + tb.depth[size_t(last_entry)] + 1);
    cached_.keep(size_t(root_pos));
    cached_.append(path_tokens_.data(), path_tokens_.size());
}

void Verifier::commit_over_checkpoint(const TreeBatch & tb, int32_t last_entry, llama_pos root_pos) {
    static constexpr size_t kMaxReplay = 64;   // beyond it, replay now: the batches stay small
    const llama_pos start = replay_.empty() ? root_pos : replay_pos_;   // the memory's end before this batch
    if (tb.depth[size_t(last_entry)] == tb.max_depth()) {
        // the whole chain accepted (or a plain step): the state is right as it is
        cached_.keep(size_t(start));
        cached_.append(replay_.data(), replay_.size());
        cached_.append(path_tokens_.data(), path_tokens_.size());
        replay_.clear();
        ckpt_->invalidate();
        return;
    }
    // back to the checkpoint; the committed tokens since then run with the next batch
    ckpt_->restore(0);
    llama_memory_t mem = llama_get_memory(ctx_);
    if (!llama_memory_seq_rm(mem, 0, start, -1))
        throw std::runtime_error("llama.cpp could not cut the target's memory at position " + std::to_string(start));
    cached_.keep(size_t(start));
    replay_pos_ = start;
    replay_.insert(replay_.end(), path_tokens_.begin(), path_tokens_.end());
    if (replay_.size() > kMaxReplay) run_replay();
}

}  // namespace heterospec
