// The prompt cache: which tokens a context's KV cache holds in sequence 0, from position 0 on,
// so that the next request keeps the longest common prefix and processes only the rest (a
// chat's next turn pays for its new message, not for the whole history again).
//
// One record per llama_context, shared by everything that decodes into it (the verifier and the
// plain loop on the target; the model and hybrid drafters on the draft). Each keeps it in step
// with what it commits; anything that clears or spoils the cache clears the record.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace heterospec {

class CachedTokens {
public:
    // How many leading tokens of `tokens` the cache holds already.
    size_t common_prefix(const std::vector<int32_t> & tokens) const {
        const size_t n = std::min(tokens.size(), tokens_.size());
        size_t i = 0;
        while (i < n && tokens[i] == tokens_[i]) ++i;
        return i;
    }
    // The cache keeps positions [0, n) only.
    void keep(size_t n) {
        if (n < tokens_.size()) tokens_.resize(n);
    }
    // `n` tokens decoded at positions size().. and kept.
    void append(const int32_t * tokens, size_t n) { tokens_.insert(tokens_.end(), tokens, tokens + n); }
    void clear() { tokens_.clear(); }
    size_t size() const { return tokens_.size(); }

private:
    std::vector<int32_t> tokens_;
};

}  // namespace heterospec
