#include "dflash_head.h"

#include <stdexcept>

#include "gguf.h"
#include "model.h"

namespace heterospec {

namespace {

bool get_bool(const gguf_context * c, const char * key, bool fallback) {
    const int64_t id = gguf_find_key(c, key);
    if (id < 0) return fallback;
    if (gguf_get_kv_type(c, id) == GGUF_TYPE_BOOL) return gguf_get_val_bool(c, id);
    if (gguf_get_kv_type(c, id) == GGUF_TYPE_STRING) return std::string(gguf_get_val_str(c, id)) == "true";
    return fallback;
}

}  // namespace

DflashHead read_dflash_head(const std::string & path) {
    GgufHeader g = open_gguf_header(path);
    const gguf_context * c = g.get();
    DflashHead h;
    h.layers = target_layers(c, "dflash.target_layers");
    get_int(c, "dflash.embedding_length", h.n_embd);
    get_int(c, "dflash.block_size", h.block_size);
    get_int(c, "tokenizer.ggml.mask_token_id", h.mask_token);
    h.causal = get_bool(c, "dflash.attention.causal", false);
    h.own_embedding = gguf_find_tensor(c, "token_embd.weight") >= 0;
    h.own_output = gguf_find_tensor(c, "output.weight") >= 0;
    // the variants the pin runs besides DFlash: their drafts are not per-position distributions
    if (gguf_find_tensor(c, "selector_hidden.weight") >= 0) h.variant = "DFlash2 (a selector lattice)";
    else if (gguf_find_tensor(c, "markov_w1.weight") >= 0) h.variant = "DSpark (a Markov head)";
    else if (gguf_find_key(c, "dflash.hyper_connection.count") >= 0) h.variant = "DSpark on DeepSeek-V4 stages";
    else if (gguf_find_tensor(c, "d2t") >= 0) h.variant = "a reduced draft vocabulary (d2t)";
    else if (gguf_find_key(c, "dflash.rope.dimension_sections") >= 0) h.variant = "a draft for an M-RoPE target";
    return h;
}

void check_dflash_head(const DflashHead & h, const Eagle3Target & t, int64_t n_vocab, const std::string & head_path,
                       const std::string & target_path) {
    const std::string both = "DFlash draft '" + head_path + "' and target '" + target_path + "': ";
    auto bad = [&](const std::string & why) { return std::invalid_argument(both + why); };
    if (!h.variant.empty()) throw bad("the draft is " + h.variant + ", which HeteroSpec does not drive yet");
    if (h.layers.empty()) throw bad("the draft names no target layers (dflash.target_layers)");
    for (int32_t l : h.layers)
        if (l < 0 || l >= t.n_layer)
            throw bad("the draft reads target layers " + layer_list(h.layers) + ", but the target has " +
                      std::to_string(t.n_layer) + " layers (0.." + std::to_string(t.n_layer - 1) + ")");
    if (h.n_embd != t.n_embd)
        throw bad("the draft's width " + std::to_string(h.n_embd) + " differs from the target's " +
                  std::to_string(t.n_embd) + " (DFlash reads the target's features at its own width)");
    if (h.block_size < 2) throw bad("the draft's block size " + std::to_string(h.block_size) + " is below 2");
    if (h.mask_token < 0 || h.mask_token >= n_vocab)
        throw bad("the draft has no mask token in the target's vocabulary (tokenizer.ggml.mask_token_id)");
    if (!serves_layer_features(t.arch))
        throw bad("llama.cpp at this pin cannot give the layer features a DFlash draft reads for architecture '" +
                  t.arch + "'");
    if (!t.rollback)
        throw bad("the target's recurrent state cannot be rolled back at this pin, and a DFlash draft reads its "
                  "features row by row: DFlash drafting needs rollback");
}

}  // namespace heterospec
