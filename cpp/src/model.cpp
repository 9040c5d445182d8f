#include "model.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <set>
#include <string_view>
#include <thread>
#include <unordered_set>
#include <utility>

#include "eagle3_head.h"
#include "gguf.h"
#include "heterospec/errors.h"

namespace heterospec {

// ---------------------------------------------------------------------------------- logging

namespace {

struct LogState {
    std::mutex mu;
    bool verbose = false;
    bool last_kept = false;          // whether the previous line was an error/warning
    std::deque<std::string> lines;   // recent error and warning lines
};

LogState & log_state() {
    static LogState s;
    return s;
}

void log_callback(ggml_log_level level, const char * text, void *) {
    LogState & s = log_state();
    std::lock_guard<std::mutex> lock(s.mu);
    if (s.verbose) fputs(text, stderr);
    const bool keep = level == GGML_LOG_LEVEL_ERROR || level == GGML_LOG_LEVEL_WARN ||
                      (level == GGML_LOG_LEVEL_CONT && s.last_kept);
    s.last_kept = keep;
    if (!keep) return;
    std::string line(text);
    while (!line.empty() && (line.back() == '\n' || line.back() == ' ')) line.pop_back();
    if (line.empty()) return;
    s.lines.push_back(std::move(line));
    if (s.lines.size() > 8) s.lines.pop_front();
}

void ensure_backend() {
    static std::once_flag once;
    std::call_once(once, [] {
        llama_log_set(log_callback, nullptr);
        llama_backend_init();
    });
}

}  // namespace

void set_log_verbose(bool verbose) {
    ensure_backend();
    std::lock_guard<std::mutex> lock(log_state().mu);
    log_state().verbose = verbose;
}

std::string recent_log_errors() {
    std::lock_guard<std::mutex> lock(log_state().mu);
    std::string out;
    for (const auto & l : log_state().lines) {
        if (!out.empty()) out += "; ";
        out += l;
    }
    return out;
}

void clear_log() {
    std::lock_guard<std::mutex> lock(log_state().mu);
    log_state().lines.clear();
}

// ---------------------------------------------------------------------------------- loading

namespace {

std::string quote_log(const std::string & prefix) {
    std::string log = recent_log_errors();
    return log.empty() ? prefix : prefix + " (llama.cpp: " + log + ")";
}


// Metadata that llama.cpp asserts on (killing the process) instead of failing the load.
void check_model_shape(const gguf_context * g, const std::string & path) {
    auto bad = [&](const std::string & why) { return std::invalid_argument("'" + path + "' cannot be used: " + why); };
    const std::string arch = gguf_get_val_str(g, gguf_find_key(g, "general.architecture"));
    int64_t n_layer = 0, n_head = 0, n_head_kv = 0, n_embd = 0, n_rot = 0, key_len = 0;
    if (get_int(g, arch + ".block_count", n_layer) && (n_layer < 1 || n_layer > 512))
        throw bad("it declares " + std::to_string(n_layer) + " layers (1 to 512 are supported)");
    const bool has_head = get_int(g, arch + ".attention.head_count", n_head) && n_head > 0;
    if (has_head && get_int(g, arch + ".attention.head_count_kv", n_head_kv) && (n_head_kv <= 0 || n_head % n_head_kv != 0))
        throw bad("its head count " + std::to_string(n_head) + " is not a multiple of its KV head count " +
                  std::to_string(n_head_kv));
    if (get_int(g, arch + ".rope.dimension_count", n_rot) && n_rot % 2 != 0)
        throw bad("its rotary dimension count is odd");
    if (has_head && get_int(g, arch + ".embedding_length", n_embd) && !get_int(g, arch + ".attention.key_length", key_len)) {
        if (n_embd % n_head != 0) throw bad("its embedding length is not a multiple of its head count");
        if ((n_embd / n_head) % 2 != 0 && n_rot == 0) throw bad("its attention head size is odd");
    }

    const int64_t tok = gguf_find_key(g, "tokenizer.ggml.tokens");
    if (tok >= 0 && gguf_get_kv_type(g, tok) == GGUF_TYPE_ARRAY && gguf_get_arr_type(g, tok) == GGUF_TYPE_STRING) {
        std::unordered_set<std::string_view> seen;
        const size_t n = gguf_get_arr_n(g, tok);
        for (size_t i = 0; i < n; ++i)
            if (!seen.insert(gguf_get_arr_str(g, tok, i)).second)
                throw bad("its vocabulary lists the token text '" + std::string(gguf_get_arr_str(g, tok, i)) + "' twice");
    }

    for (int64_t i = 0; i < gguf_get_n_tensors(g); ++i) {
        const ggml_type t = gguf_get_tensor_type(g, i);
        const int64_t * ne = gguf_get_tensor_ne(g, i);
        const bool one_d = ne[1] == 1 && ne[2] == 1 && ne[3] == 1;
        const bool is_int = t == GGML_TYPE_I8 || t == GGML_TYPE_I16 || t == GGML_TYPE_I32 || t == GGML_TYPE_I64;
        // a head's vocabulary map is integers by design (llama.cpp asserts I64)
        const bool d2t = is_head_architecture(arch) && std::string(gguf_get_tensor_name(g, i)) == "d2t" && t == GGML_TYPE_I64;
        if (d2t) continue;
        if (is_int || (one_d && t != GGML_TYPE_F32))
            throw bad(std::string("tensor '") + gguf_get_tensor_name(g, i) + "' is stored as " + ggml_type_name(t) +
                      (one_d ? " (1-D tensors must be F32)" : " (weights must be float or quantized)"));
    }
}

// Reads the GGUF header and tensor table without loading weights, and checks that every
// tensor's data lies inside the file: llama.cpp memory-maps the file, and reading past its
// end would kill the process (SIGBUS) instead of failing.
void check_gguf(const std::string & path) {
    namespace fs = std::filesystem;
    std::error_code ec;
    if (!fs::exists(path, ec)) throw FileNotFound("model file not found: '" + path + "'");
    if (!fs::is_regular_file(path, ec)) throw std::invalid_argument("model path is not a file: '" + path + "'");
    const uint64_t file_size = fs::file_size(path, ec);

    char magic[4] = {0, 0, 0, 0};
    {
        std::ifstream f(path, std::ios::binary);
        if (!f) throw std::invalid_argument("cannot open model file '" + path + "'");
        f.read(magic, 4);
    }
    if (std::memcmp(magic, "GGUF", 4) != 0)
        throw std::invalid_argument("'" + path + "' is not a GGUF file (it does not start with 'GGUF')");

    gguf_init_params gp = {/*no_alloc =*/ true, /*ctx =*/ nullptr};
    gguf_context * g = gguf_init_from_file(path.c_str(), gp);
    if (!g) throw std::invalid_argument(quote_log("'" + path + "' is a corrupt or truncated GGUF file"));
    std::unique_ptr<gguf_context, void (*)(gguf_context *)> guard(g, gguf_free);

    const int64_t arch_key = gguf_find_key(g, "general.architecture");
    if (arch_key < 0 || gguf_get_kv_type(g, arch_key) != GGUF_TYPE_STRING)
        throw std::invalid_argument("'" + path + "' has no general.architecture: not a model file");

    check_model_shape(g, path);

    uint64_t data_end = 0;
    const uint64_t data_offset = gguf_get_data_offset(g);
    for (int64_t i = 0; i < gguf_get_n_tensors(g); ++i)
        data_end = std::max<uint64_t>(data_end, data_offset + gguf_get_tensor_offset(g, i) + gguf_get_tensor_size(g, i));
    if (data_end > file_size)
        throw std::invalid_argument("'" + path + "' is truncated: its tensors need " + std::to_string(data_end) +
                                    " bytes but the file has " + std::to_string(file_size));
}

}  // namespace

// An integer metadata value, whatever its stored integer type; false if absent or not an integer.
bool get_int(const gguf_context * g, const std::string & key, int64_t & out) {
    const int64_t id = gguf_find_key(g, key.c_str());
    if (id < 0) return false;
    switch (gguf_get_kv_type(g, id)) {
        case GGUF_TYPE_UINT8:  out = gguf_get_val_u8(g, id);  return true;
        case GGUF_TYPE_INT8:   out = gguf_get_val_i8(g, id);  return true;
        case GGUF_TYPE_UINT16: out = gguf_get_val_u16(g, id); return true;
        case GGUF_TYPE_INT16:  out = gguf_get_val_i16(g, id); return true;
        case GGUF_TYPE_UINT32: out = gguf_get_val_u32(g, id); return true;
        case GGUF_TYPE_INT32:  out = gguf_get_val_i32(g, id); return true;
        case GGUF_TYPE_UINT64: out = int64_t(gguf_get_val_u64(g, id)); return true;
        case GGUF_TYPE_INT64:  out = gguf_get_val_i64(g, id); return true;
        default: return false;
    }
}

ModelPtr load_model(const ModelOptions & opts, bool load_mtp, bool head_ok) {
    ensure_backend();
    check_gguf(opts.path);
    const std::string arch = gguf_architecture(opts.path);
    const bool head = is_head_architecture(arch);
    if (head && !head_ok)
        throw std::invalid_argument("'" + opts.path + "' is " + (arch == "eagle3" ? "an EAGLE-3 head" : "a DFlash draft") +
                                    " (architecture " + arch + "), not a model that "
                                    "generates alone: give it as the draft (draft= / -md) of the target it was trained for");
    clear_log();

    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = opts.n_gpu_layers;
    mp.load_mtp = load_mtp;
    ModelPtr model(llama_model_load_from_file(opts.path.c_str(), mp));
    if (!model) throw std::invalid_argument(quote_log("failed to load model '" + opts.path + "'"));

    const llama_vocab * vocab = llama_model_get_vocab(model.get());
    if (!llama_model_has_decoder(model.get()) || (llama_model_has_encoder(model.get()) && !head))
        throw std::invalid_argument("'" + opts.path + "' is not a decoder-only language model; "
                                    "encoder and encoder-decoder models are not supported");
    if (llama_vocab_type(vocab) == LLAMA_VOCAB_TYPE_NONE || llama_vocab_n_tokens(vocab) <= 0)
        throw std::invalid_argument("'" + opts.path + "' has no vocabulary");
    return model;
}

ModelPtr load_target(const ModelOptions & opts, std::string & mtp_error) {
    try {
        return load_model(opts, true);
    } catch (const std::invalid_argument & e) {
        ModelPtr model = load_model(opts, false);   // a bad file fails here again, with its own reason
        mtp_error = std::string("llama.cpp could not load its MTP layers (") + e.what() + ")";
        return model;
    }
}

namespace {

ggml_type cache_type(const std::string & name, const char * flag) {
    static const ggml_type allowed[] = {GGML_TYPE_F32, GGML_TYPE_F16, GGML_TYPE_BF16, GGML_TYPE_Q8_0,
                                        GGML_TYPE_Q4_0, GGML_TYPE_Q4_1, GGML_TYPE_IQ4_NL,
                                        GGML_TYPE_Q5_0, GGML_TYPE_Q5_1};
    std::string names;
    for (ggml_type t : allowed) {
        if (name == ggml_type_name(t)) return t;
        names += std::string(names.empty() ? "" : ", ") + ggml_type_name(t);
    }
    throw std::invalid_argument(std::string(flag) + ": unsupported KV cache type '" + name + "' (one of " + names + ")");
}

llama_flash_attn_type flash_attn_type(const std::string & v) {
    if (v == "auto") return LLAMA_FLASH_ATTN_TYPE_AUTO;
    if (v == "on") return LLAMA_FLASH_ATTN_TYPE_ENABLED;
    if (v == "off") return LLAMA_FLASH_ATTN_TYPE_DISABLED;
    throw std::invalid_argument("flash_attn must be 'on', 'off' or 'auto', not '" + v + "'");
}

}  // namespace

ContextPtr make_context(llama_model * model, const ContextSpec & spec) {
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = spec.n_ctx;
    cp.n_batch = spec.n_batch;
    cp.n_ubatch = spec.n_batch;
    cp.n_seq_max = spec.n_seq_max;
    cp.n_rs_seq = spec.n_rs_seq;
    cp.ctx_type = spec.mtp ? LLAMA_CONTEXT_TYPE_MTP : LLAMA_CONTEXT_TYPE_DEFAULT;
    cp.kv_unified = spec.kv_unified;
    cp.swa_full = true;   // sliding-window models keep every cell a path may need
    cp.n_threads = spec.n_threads;
    cp.n_threads_batch = spec.n_threads_batch;
    cp.flash_attn_type = flash_attn_type(spec.flash_attn);
    cp.type_k = cache_type(spec.cache_type_k, "cache_type_k");
    cp.type_v = cache_type(spec.cache_type_v, "cache_type_v");
    if (ggml_is_quantized(cp.type_v) && cp.flash_attn_type == LLAMA_FLASH_ATTN_TYPE_DISABLED)
        throw std::invalid_argument("a quantized V cache (cache_type_v=" + spec.cache_type_v +
                                    ") needs flash attention: use flash_attn='on' or 'auto'");
    cp.ctx_other = spec.other;
    cp.no_perf = true;
    clear_log();
    ContextPtr ctx(llama_init_from_model(model, cp));
    if (!ctx) throw std::runtime_error(quote_log("failed to create a llama.cpp context"));
    return ctx;
}

ContextPtr make_mtp_context(llama_model * model, const ContextSpec & spec, std::string & error) {
    ContextSpec s = spec;
    s.mtp = true;
    s.n_seq_max = 1;
    s.kv_unified = false;
    s.n_rs_seq = 0;
    try {
        return make_context(model, s);
    } catch (const std::runtime_error & e) {
        error = std::string("llama.cpp could not run its MTP head (") + e.what() + ")";
        return nullptr;
    }
}

ContextPtr make_head_context(llama_model * head, llama_context * target, const ContextSpec & spec) {
    ContextSpec s = spec;   // a sequence per frontier node, in one unified cache (spec's n_seq_max)
    s.kv_unified = true;
    s.n_rs_seq = 0;
    s.other = target;
    return make_context(head, s);
}

bool has_recurrent_state(const llama_model * model) {
    return llama_model_is_recurrent(model) || llama_model_is_hybrid(model);
}

bool tree_capable(const llama_model * model) { return !has_recurrent_state(model); }

void check_tree_capable(const llama_model * model, const std::string & path) {
    if (!tree_capable(model))
        throw std::invalid_argument("'" + path + "' has a recurrent or hybrid memory, which cannot hold a draft "
                                    "tree; speculative decoding needs attention-only models (use it without a draft)");
}

// ---------------------------------------------------------------------------------- vocab

void check_same_vocab(const llama_model * target, const llama_model * draft) {
    const llama_vocab * vt = llama_model_get_vocab(target);
    const llama_vocab * vd = llama_model_get_vocab(draft);
    auto differ = [](const std::string & what) {
        return std::invalid_argument("the draft model's vocabulary differs from the target's: " + what);
    };
    const int32_t nt = llama_vocab_n_tokens(vt), nd = llama_vocab_n_tokens(vd);
    if (nt != nd) throw differ("size " + std::to_string(nd) + " vs " + std::to_string(nt) + " tokens");
    if (llama_vocab_type(vt) != llama_vocab_type(vd)) throw differ("tokenizer type");

    using Getter = llama_token (*)(const llama_vocab *);
    const std::pair<const char *, Getter> specials[] = {
        {"BOS", llama_vocab_bos}, {"EOS", llama_vocab_eos}, {"EOT", llama_vocab_eot},
        {"SEP", llama_vocab_sep}, {"NL", llama_vocab_nl}, {"PAD", llama_vocab_pad}};
    for (const auto & [name, get] : specials)
        if (get(vt) != get(vd))
            throw differ(std::string(name) + " token is " + std::to_string(get(vd)) + " vs " + std::to_string(get(vt)));
    if (llama_vocab_get_add_bos(vt) != llama_vocab_get_add_bos(vd)) throw differ("whether BOS is added");
    for (llama_token t = 0; t < nt; ++t) {
        if (llama_vocab_is_eog(vt, t) != llama_vocab_is_eog(vd, t))
            throw differ("token " + std::to_string(t) + " ends generation in one model only");
        const char * a = llama_vocab_get_text(vt, t);
        const char * b = llama_vocab_get_text(vd, t);
        if (std::strcmp(a ? a : "", b ? b : "") != 0)
            throw differ("token " + std::to_string(t) + " is '" + std::string(b ? b : "") + "' in the draft but '" +
                         std::string(a ? a : "") + "' in the target");
    }
}

// ---------------------------------------------------------------------------------- decoding

double now_ms() {
    using namespace std::chrono;
    return duration<double, std::milli>(steady_clock::now().time_since_epoch()).count();
}

double decode_timed(llama_context * ctx, llama_batch_ext * batch, const char * who) {
    const double t0 = now_ms();
    const int32_t rc = llama_process(ctx, LLAMA_PROCESS_TYPE_DECODE, batch);
    if (rc != 0) throw std::runtime_error(std::string(who) + " llama_decode failed (code " + std::to_string(rc) + ")");
    llama_synchronize(ctx);
    return now_ms() - t0;
}

double decode_run(llama_context * ctx, llama_batch_ext * batch, const int32_t * tokens, size_t n,
                  llama_pos pos0, int32_t n_seqs, bool logits_last, const char * who, int32_t * calls) {
    const size_t n_batch = llama_n_batch(ctx);
    double ms = 0;
    for (size_t i = 0; i < n; i += n_batch) {
        const size_t m = std::min(n_batch, n - i);
        llama_batch_ext_clear(batch);
        for (size_t j = 0; j < m; ++j) {
            const int32_t idx = llama_batch_ext_add_token(batch, 0, tokens[i + j]);
            for (llama_seq_id s = 1; s < n_seqs; ++s) llama_batch_ext_add_seq(batch, idx, s);
            const llama_pos pos = pos0 + llama_pos(i + j);
            llama_batch_ext_set_pos(batch, idx, &pos);
        }
        if (logits_last && i + m == n) llama_batch_ext_set_output_logits(batch, int32_t(m) - 1, true);
        ms += decode_timed(ctx, batch, who);
        if (calls) ++*calls;
    }
    return ms;
}

double time_pass(llama_context * ctx, llama_batch_ext * batch, int32_t n, int32_t token) {
    double best = 1e30;
    for (int rep = 0; rep < 3; ++rep) {
        llama_memory_clear(llama_get_memory(ctx), false);
        llama_batch_ext_clear(batch);
        for (int32_t i = 0; i < n; ++i) {
            const int32_t idx = llama_batch_ext_add_token(batch, 0, token);
            const llama_pos pos = i;
            llama_batch_ext_set_pos(batch, idx, &pos);
            llama_batch_ext_set_output_logits(batch, idx, true);
        }
        best = std::min(best, decode_timed(ctx, batch, "profiling"));
    }
    llama_memory_clear(llama_get_memory(ctx), false);
    return best;
}

// ---------------------------------------------------------------------------------- defaults

int32_t default_threads() {
    // physical cores: distinct (package, core) pairs on Linux; logical CPUs elsewhere
    std::ifstream f("/proc/cpuinfo");
    std::set<std::pair<std::string, std::string>> cores;
    std::string line, phys;
    while (std::getline(f, line)) {
        auto value = [&] { auto p = line.find(':'); return p == std::string::npos ? std::string() : line.substr(p + 1); };
        if (line.rfind("physical id", 0) == 0) phys = value();
        else if (line.rfind("core id", 0) == 0) cores.insert({phys, value()});
    }
    int32_t n = cores.empty() ? int32_t(std::thread::hardware_concurrency()) : int32_t(cores.size());
    return std::max(1, n);
}

uint32_t default_n_ctx(const llama_model * model) {
    const int32_t train = llama_model_n_ctx_train(model);
    return train > 0 ? uint32_t(std::min(train, 4096)) : 4096u;
}

}  // namespace heterospec
