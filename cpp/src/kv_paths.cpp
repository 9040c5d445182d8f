#include "kv_paths.h"

#include <stdexcept>
#include <string>

#include "model.h"

namespace heterospec {

void assign_frontier_sequences(const DraftTree & tree, const std::vector<int32_t> & frontier,
                               const std::vector<int32_t> & seq_of, int32_t n_seq, std::vector<uint8_t> & taken,
                               std::vector<int32_t> & seq_for,
                               const std::function<void(int32_t seq, int32_t parent)> & fresh) {
    taken.assign(size_t(n_seq), 0);
    seq_for.assign(frontier.size(), -1);
    for (size_t i = 0; i < frontier.size(); ++i) {
        const int32_t s = seq_of[size_t(tree[frontier[i]].parent)];
        if (s >= 0 && !taken[size_t(s)]) {
            taken[size_t(s)] = 1;
            seq_for[i] = s;
        }
    }
    size_t free_s = 0;
    for (size_t i = 0; i < frontier.size(); ++i) {
        if (seq_for[i] >= 0) continue;
        while (free_s < taken.size() && taken[free_s]) ++free_s;
        if (free_s == taken.size()) throw std::logic_error("a draft frontier wider than the sequences");
        taken[free_s] = 1;
        seq_for[i] = int32_t(free_s);
        fresh(seq_for[i], tree[frontier[i]].parent);
    }
}

llama_pos keep_prefix(llama_context * ctx, llama_pos keep) {
    llama_memory_t mem = llama_get_memory(ctx);
    // Recurrent state holds the end of the text only: it is kept when nothing is dropped. (Its
    // rollback planes undo the last verification batch, not an earlier generation's tokens.)
    const bool recurrent = has_recurrent_state(llama_get_model(ctx));
    bool ok = keep > 0 && (!recurrent || llama_memory_seq_pos_max(mem, 0) + 1 == keep) &&
              llama_memory_seq_rm(mem, 0, keep, -1);
    for (llama_seq_id s = 1; ok && s < llama_seq_id(llama_n_seq_max(ctx)); ++s) ok = llama_memory_seq_rm(mem, s, -1, -1);
    if (ok) return keep;
    llama_memory_clear(mem, false);
    return 0;
}

llama_pos KvPaths::reset(llama_pos keep) {
    live_ = 1;
    return keep_prefix(ctx_, keep);
}

void KvPaths::ensure_live(int32_t n) {
    if (n > n_seq_max_) throw std::logic_error("kv_paths: more path sequences than the context has");
    llama_memory_t mem = llama_get_memory(ctx_);
    for (; live_ < n; ++live_) llama_memory_seq_cp(mem, 0, live_, -1, -1);
}

void KvPaths::commit(llama_seq_id keep, llama_pos p0, llama_pos p_end) {
    if (keep < 0 || keep >= live_) throw std::logic_error("kv_paths: kept sequence is not live");
    llama_memory_t mem = llama_get_memory(ctx_);
    // a recurrent state rolls back through llama.cpp's snapshot planes (chains of at most n_rs_seq)
    if (!llama_memory_seq_rm(mem, keep, p_end, -1))
        throw std::runtime_error("llama.cpp could not roll the target's memory back to position " +
                                 std::to_string(p_end));
    for (llama_seq_id s = 0; s < live_; ++s) {
        if (s == keep) continue;
        llama_memory_seq_rm(mem, s, p0, -1);
        if (p_end > p0) llama_memory_seq_cp(mem, keep, s, p0, p_end);
    }
}

}  // namespace heterospec
