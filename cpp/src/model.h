// Loading models and creating contexts: RAII over llama.cpp's handles, and every check that
// must happen before llama.cpp sees a file or an option (llama.cpp aborts on some bad input).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "heterospec/config.h"
#include "llama.h"

struct gguf_context;

namespace heterospec {

struct ModelDeleter { void operator()(llama_model * m) const { llama_model_free(m); } };
struct ContextDeleter { void operator()(llama_context * c) const { llama_free(c); } };
struct BatchDeleter { void operator()(llama_batch_ext * b) const { llama_batch_ext_free(b); } };
using ModelPtr = std::unique_ptr<llama_model, ModelDeleter>;
using ContextPtr = std::unique_ptr<llama_context, ContextDeleter>;
using BatchPtr = std::unique_ptr<llama_batch_ext, BatchDeleter>;

// llama.cpp's log goes through here: kept in a short buffer so that load errors can quote it,
// and forwarded to stderr only when verbose.
void set_log_verbose(bool verbose);
std::string recent_log_errors();   // the error/warning lines since the last clear
void clear_log();

// An integer metadata value of a GGUF header, whatever its stored integer type; false if absent
// or not an integer.
bool get_int(const gguf_context * g, const std::string & key, int64_t & out);

// Checks that `path` is a readable GGUF file (throws FileNotFound / std::invalid_argument),
// then loads it. Errors name the file and quote llama.cpp's reason. An EAGLE-3 head (which has
// an encoder) loads only where `head_ok` (as a draft).
ModelPtr load_model(const ModelOptions & opts, bool load_mtp = false, bool head_ok = false);
// The target: with its MTP (nextn) layers where llama.cpp can load them; where it cannot, without
// them, and `mtp_error` says why.
ModelPtr load_target(const ModelOptions & opts, std::string & mtp_error);

struct ContextSpec {
    uint32_t n_ctx;
    uint32_t n_batch;
    uint32_t n_seq_max = 1;
    bool kv_unified = false;
    int32_t n_threads;
    int32_t n_threads_batch;
    std::string flash_attn;
    std::string cache_type_k;
    std::string cache_type_v;
    uint32_t n_rs_seq = 0;      // recurrent-state rollback planes per sequence (0: none)
    bool mtp = false;           // a context of the model's MTP head (LLAMA_CONTEXT_TYPE_MTP)
    llama_context * other = nullptr;   // the target's, for a head that borrows its tensors (ctx_other)
};
ContextPtr make_context(llama_model * model, const ContextSpec & spec);
// The MTP head's context on `model` (one sequence), or null with `error` saying why not.
ContextPtr make_mtp_context(llama_model * model, const ContextSpec & spec, std::string & error);
// An EAGLE-3 head's context (a sequence per path of its trees, spec.n_seq_max), borrowing from the
// target's context what it lacks.
ContextPtr make_head_context(llama_model * head, llama_context * target, const ContextSpec & spec);

// Tree verification branches the KV cache by sequence: recurrent and hybrid memories cannot.
bool tree_capable(const llama_model * model);
void check_tree_capable(const llama_model * model, const std::string & path);
// Whether a memory cannot drop an arbitrary suffix (recurrent state, alone or in a hybrid).
bool has_recurrent_state(const llama_model * model);

// Throws std::invalid_argument naming the first difference (size, special tokens, token text).
void check_same_vocab(const llama_model * target, const llama_model * draft);

// Milliseconds on a steady clock.
double now_ms();

// Runs a decode batch to completion (synchronised, so that the time is real on GPUs too) and
// returns its duration in ms; throws std::runtime_error naming `who` if llama.cpp refuses it.
double decode_timed(llama_context * ctx, llama_batch_ext * batch, const char * who);

// Runs n committed tokens at positions pos0.. in sequences 0..n_seqs-1, in chunks of the
// context's batch size, with logits for the last token when asked. Returns the ms spent in
// llama.cpp; counts the decode calls in *calls when given.
double decode_run(llama_context * ctx, llama_batch_ext * batch, const int32_t * tokens, size_t n,
                  llama_pos pos0, int32_t n_seqs, bool logits_last, const char * who, int32_t * calls = nullptr);

// Times one pass of n tokens (all with logits) on an empty cache, best of a few; clears the
// cache afterwards.
double time_pass(llama_context * ctx, llama_batch_ext * batch, int32_t n, int32_t token);

// Default thread count: physical cores (llama.cpp's habit), at least 1.
int32_t default_threads();

// "auto" context size: the model's training context, capped so that big-context models do
// not allocate a huge cache by default.
uint32_t default_n_ctx(const llama_model * model);

}  // namespace heterospec
