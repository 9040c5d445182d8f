// DFlash drafts (architecture dflash): what a draft file declares, and whether it fits a target.
// Read from the GGUF header before llama.cpp loads anything, like EAGLE-3 heads (eagle3_head.h):
// llama.cpp aborts on a draft whose feature width or layers do not match, so every mismatch is
// refused here, naming both files.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "eagle3_head.h"

namespace heterospec {

struct DflashHead {
    std::vector<int32_t> layers;   // dflash.target_layers: the target layers whose inputs it reads
    int64_t n_embd = 0;            // its width: the target's (fc maps layers x n_embd to n_embd)
    int64_t block_size = 16;       // dflash.block_size: the root and block_size - 1 masked positions
    int64_t mask_token = -1;       // tokenizer.ggml.mask_token_id: the token of a masked position
    bool causal = false;           // dflash.attention.causal: attention inside the block is causal
    bool own_embedding = false;    // token_embd.weight (else it borrows the target's)
    bool own_output = false;       // output.weight (else it borrows the target's)
    std::string variant;           // "" (DFlash), or a variant this engine does not drive yet
};

DflashHead read_dflash_head(const std::string & path);

// Throws std::invalid_argument naming both files and what differs. `n_vocab`: the target's.
void check_dflash_head(const DflashHead & head, const Eagle3Target & target, int64_t n_vocab,
                       const std::string & head_path, const std::string & target_path);

}  // namespace heterospec
