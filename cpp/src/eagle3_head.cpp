#include "eagle3_head.h"

#include <algorithm>
#include <memory>
#include <stdexcept>

#include "gguf.h"
#include "model.h"

namespace heterospec {

GgufHeader open_gguf_header(const std::string & path) {
    gguf_init_params gp = {/*no_alloc =*/ true, /*ctx =*/ nullptr};
    GgufHeader g(gguf_init_from_file(path.c_str(), gp), gguf_free);
    if (!g) throw std::invalid_argument("'" + path + "' is a corrupt or truncated GGUF file");
    return g;
}

std::string layer_list(const std::vector<int32_t> & v) {
    std::string s = "[";
    for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
    return s + "]";
}

bool is_head_architecture(const std::string & arch) { return arch == "eagle3" || arch == "dflash"; }

std::string gguf_architecture(const std::string & path) {
    GgufHeader g = open_gguf_header(path);
    const int64_t id = gguf_find_key(g.get(), "general.architecture");
    return id >= 0 && gguf_get_kv_type(g.get(), id) == GGUF_TYPE_STRING ? gguf_get_val_str(g.get(), id) : "";
}

std::vector<int32_t> target_layers(const gguf_context * c, const std::string & key) {
    const int64_t id = gguf_find_key(c, key.c_str());
    if (id < 0 || gguf_get_kv_type(c, id) != GGUF_TYPE_ARRAY ||
        (gguf_get_arr_type(c, id) != GGUF_TYPE_INT32 && gguf_get_arr_type(c, id) != GGUF_TYPE_UINT32))
        return {};
    const auto * v = static_cast<const int32_t *>(gguf_get_arr_data(c, id));
    return {v, v + gguf_get_arr_n(c, id)};
}

Eagle3Head read_eagle3_head(const std::string & path) {
    GgufHeader g = open_gguf_header(path);
    const gguf_context * c = g.get();
    Eagle3Head h;
    h.layers = target_layers(c, "eagle3.target_layers");
    get_int(c, "eagle3.target_hidden_size", h.target_hidden);
    get_int(c, "eagle3.embedding_length", h.n_embd);
    h.own_embedding = gguf_find_tensor(c, "token_embd.weight") >= 0;
    h.own_output = gguf_find_tensor(c, "output.weight") >= 0;
    h.vocab_map = gguf_find_tensor(c, "d2t") >= 0;
    return h;
}

bool serves_layer_features(const std::string & arch) {
    // the architectures whose graphs at the pin record res->t_layer_inp (src/models/*.cpp)
    static const char * const kArchs[] = {"llama", "nanbeige", "qwen3", "qwen3moe", "qwen3next", "qwen35",
                                          "qwen35moe", "qwen4exp", "gemma4", "deepseek4", "nemotron_h",
                                          "bailingmoe3", "gpt-oss", "lfm2", "minimax-m2", "mimo2"};
    return std::find(std::begin(kArchs), std::end(kArchs), arch) != std::end(kArchs);
}

void check_eagle3_head(const Eagle3Head & h, const Eagle3Target & t, const std::string & head_path,
                       const std::string & target_path) {
    const std::string both = "EAGLE-3 head '" + head_path + "' and target '" + target_path + "': ";
    auto bad = [&](const std::string & why) { return std::invalid_argument(both + why); };
    if (h.layers.size() != 3)
        throw bad("the head names " + std::to_string(h.layers.size()) +
                  " target layers (eagle3.target_layers); EAGLE-3 reads 3");
    for (int32_t l : h.layers)
        if (l < 0 || l >= t.n_layer)
            throw bad("the head reads target layers " + layer_list(h.layers) + ", but the target has " +
                      std::to_string(t.n_layer) + " layers (0.." + std::to_string(t.n_layer - 1) + ")");
    if (h.target_hidden != t.n_embd)
        throw bad("the head was made for a target of width " + std::to_string(h.target_hidden) +
                  " (eagle3.target_hidden_size); this target's is " + std::to_string(t.n_embd));
    if ((!h.own_embedding || !h.own_output) && h.n_embd != t.n_embd)
        throw bad("the head borrows the target's " + std::string(!h.own_embedding ? "token embedding" : "output matrix") +
                  " but its width " + std::to_string(h.n_embd) + " differs from the target's " +
                  std::to_string(t.n_embd));
    if (!serves_layer_features(t.arch))
        throw bad("llama.cpp at this pin cannot give the layer features an EAGLE-3 head reads for architecture '" +
                  t.arch + "'");
    if (!t.rollback)
        throw bad("the target's recurrent state cannot be rolled back at this pin, and an EAGLE-3 head reads its "
                  "features row by row: EAGLE-3 drafting needs rollback");
}

}  // namespace heterospec
