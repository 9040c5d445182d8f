// EAGLE-3 heads (architecture eagle3): what a head file declares, and whether it fits a target.
// Read from the GGUF header before llama.cpp loads anything: llama.cpp aborts the process on a
// head that does not fit its target (a width mismatch in the borrowed embedding, a layer it
// cannot extract), so every such mismatch is refused here, naming both files.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

struct gguf_context;

namespace heterospec {

struct Eagle3Head {
    std::vector<int32_t> layers;   // eagle3.target_layers: the target layers whose inputs it reads
    int64_t target_hidden = 0;     // eagle3.target_hidden_size
    int64_t n_embd = 0;            // the head's own width
    bool own_embedding = false;    // token_embd.weight (else it borrows the target's)
    bool own_output = false;       // output.weight (else it borrows the target's)
    bool vocab_map = false;        // d2t: a smaller draft vocabulary mapped onto the target's
};

// A GGUF file's header alone (throws std::invalid_argument on a corrupt or truncated file).
using GgufHeader = std::unique_ptr<gguf_context, void (*)(gguf_context *)>;
GgufHeader open_gguf_header(const std::string & path);
// The architecture a GGUF file declares ("" if none): "eagle3" and "dflash" mark heads.
std::string gguf_architecture(const std::string & path);
// Whether a GGUF architecture is a head that reads a target's layer features (eagle3, dflash).
bool is_head_architecture(const std::string & arch);
// A head's target layers (an int32 array under `key`; empty if absent or of another type).
std::vector<int32_t> target_layers(const gguf_context * c, const std::string & key);
// "[a, b, c]"
std::string layer_list(const std::vector<int32_t> & v);
// Reads a head's header (the file is checked as a GGUF first, by load_model's checks).
Eagle3Head read_eagle3_head(const std::string & path);

// What the check needs of the target.
struct Eagle3Target {
    std::string arch;
    int64_t n_layer = 0;
    int64_t n_embd = 0;
    bool rollback = true;   // false: a recurrent state verified over host checkpoints
};
// Throws std::invalid_argument naming both files and what differs.
void check_eagle3_head(const Eagle3Head & head, const Eagle3Target & target, const std::string & head_path,
                       const std::string & target_path);
// Whether llama.cpp gives the inputs of a target's layers (llama_set_embeddings_layer_inp) for
// this architecture at the pin: its graph must record them, or llama.cpp aborts.
bool serves_layer_features(const std::string & arch);

}  // namespace heterospec
