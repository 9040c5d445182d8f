// Host checkpoints of a target's recurrent state, for recurrent memories the pin cannot roll
// back (mamba, mamba2, and hybrids outside llm_arch_supports_rs_rollback: granitehybrid, jamba,
// falcon-h1, ...). A speculative step saves the state (llama.cpp's PARTIAL_ONLY sequence state:
// the recurrent part; attention cells are cut with seq_rm) before its verification pass; when
// the target rejects part of the chain, the state is restored and the tokens committed since
// the checkpoint are replayed, riding along in the next pass's batch (llama-server replays them
// the same way). Both copies cost time the allocation prices (CostProfile::checkpoint_ms).
#pragma once

#include <cstdint>
#include <vector>

#include "llama.h"

namespace heterospec {

class StateCheckpoint {
public:
    explicit StateCheckpoint(llama_context * ctx) : ctx_(ctx) {}
    // Copies sequence `seq`'s recurrent state to the host.
    void save(llama_seq_id seq);
    // Puts the saved state back into sequence `seq` (throws when llama.cpp refuses it).
    void restore(llama_seq_id seq);
    bool valid() const { return valid_; }
    void invalidate() { valid_ = false; }
    // Milliseconds spent saving and restoring so far.
    double ms() const { return ms_; }

private:
    llama_context * ctx_;
    std::vector<uint8_t> data_;
    bool valid_ = false;
    double ms_ = 0;
};

// What a save and a restore of sequence 0's state cost (ms, the best of three): measured once a
// token has made the state exist; clears the context's memory.
double time_checkpoint(llama_context * ctx, llama_batch_ext * batch, int32_t token);
// The bytes of one copy of sequence 0's recurrent state, after running `token` (clears the memory).
size_t recurrent_state_bytes(llama_context * ctx, llama_batch_ext * batch, int32_t token);

}  // namespace heterospec
