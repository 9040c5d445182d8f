#include "checkpoint.h"

#include <algorithm>
#include <stdexcept>

#include "model.h"

namespace heterospec {

void StateCheckpoint::save(llama_seq_id seq) {
    const double t0 = now_ms();
    const size_t size = llama_state_seq_get_size_ext(ctx_, seq, LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY);
    data_.resize(size);
    if (llama_state_seq_get_data_ext(ctx_, data_.data(), size, seq, LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY) != size)
        throw std::runtime_error("llama.cpp could not copy the target's recurrent state");
    valid_ = true;
    ms_ += now_ms() - t0;
}

void StateCheckpoint::restore(llama_seq_id seq) {
    if (!valid_) throw std::logic_error("no checkpoint to restore");
    const double t0 = now_ms();
    if (llama_state_seq_set_data_ext(ctx_, data_.data(), data_.size(), seq, LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY) == 0)
        throw std::runtime_error("llama.cpp could not restore the target's recurrent state");
    ms_ += now_ms() - t0;
}

double time_checkpoint(llama_context * ctx, llama_batch_ext * batch, int32_t token) {
    llama_memory_t mem = llama_get_memory(ctx);
    llama_memory_clear(mem, false);
    decode_run(ctx, batch, &token, 1, 0, 1, false, "profiling");
    StateCheckpoint c(ctx);
    double best = 1e30;
    for (int rep = 0; rep < 3; ++rep) {
        const double ms0 = c.ms();
        c.save(0);
        c.restore(0);
        best = std::min(best, c.ms() - ms0);
    }
    llama_memory_clear(mem, false);
    return best;
}

size_t recurrent_state_bytes(llama_context * ctx, llama_batch_ext * batch, int32_t token) {
    llama_memory_t mem = llama_get_memory(ctx);
    llama_memory_clear(mem, false);
    decode_run(ctx, batch, &token, 1, 0, 1, false, "profiling");
    const size_t bytes = llama_state_seq_get_size_ext(ctx, 0, LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY);
    llama_memory_clear(mem, false);
    return bytes;
}

}  // namespace heterospec
