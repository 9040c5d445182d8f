// The engine's construction and its public API besides the decoding loop: model facts,
// tokenize/detokenize, chat templates, results and test hooks. The loop: request.cpp and the
// phase files it calls; the state they share: engine_impl.h.
#include "heterospec/engine.h"

#include <algorithm>
#include <stdexcept>

#include "eagle3_head.h"
#include "engine_impl.h"
#include "sparse_prefill.h"

namespace heterospec {

// A recurrent target (algorithm section 5, path_batch.h): the deepest path it verifies (llama.cpp
// keeps a copy of the state per token of it: n_rs_seq rollback planes), and how many paths (a
// sequence each, with its own state and planes), within a memory budget for those copies: a
// large hybrid's state (150 MB a copy for a 27B Qwen3.5) verifies chains, as llama.cpp does.
constexpr int32_t kMaxChain = 16;
constexpr int32_t kMaxPaths = 4;
constexpr size_t kPathsMemory = size_t(1) << 30;

Engine::Engine(const EngineOptions & options) : impl_(new Impl) {
    Impl & m = *impl_;
    validate(options);
    check_sparse_prefill(options.sparse_prefill);
    m.opts = options;
    set_log_verbose(options.verbose);

    m.target = load_target(options.target, m.mtp_error);
    if (!options.draft.path.empty()) {
        ModelPtr draft = load_model(options.draft, false, /*head_ok=*/true);
        check_same_vocab(m.target.get(), draft.get());
        const std::string arch = gguf_architecture(options.draft.path);
        if (is_head_architecture(arch)) {   // checked against the target below
            if (arch == "eagle3") m.eagle3 = read_eagle3_head(options.draft.path);
            else m.dflash = read_dflash_head(options.draft.path);
            m.head_arch = arch;
            m.head = std::move(draft);
        } else {
            // the draft's tree: one sequence per path, in one unified cache
            check_tree_capable(draft.get(), options.draft.path);
            m.draft = std::move(draft);
        }
    }
    m.vocab = llama_model_get_vocab(m.target.get());
    m.n_vocab = llama_vocab_n_tokens(m.vocab);

    ContextSpec spec;
    spec.n_ctx = options.n_ctx ? options.n_ctx : default_n_ctx(m.target.get());
    spec.n_batch = options.n_batch;
    spec.n_threads = options.n_threads > 0 ? options.n_threads : default_threads();
    spec.n_threads_batch = options.n_threads_batch > 0 ? options.n_threads_batch : spec.n_threads;
    spec.flash_attn = options.flash_attn;
    spec.cache_type_k = options.cache_type_k;
    spec.cache_type_v = options.cache_type_v;
    ContextSpec target_spec = spec;
    if (tree_capable(m.target.get())) {
        // one sequence per verified node; llama.cpp wants no more sequences than a batch holds
        m.n_seqs = std::min<int32_t>({options.max_nodes, int32_t(spec.n_ctx), int32_t(spec.n_batch)});
        target_spec.n_seq_max = uint32_t(m.n_seqs);
        target_spec.kv_unified = true;
        m.target_ctx = make_context(m.target.get(), target_spec);
        m.verification = Verification::trees;
        m.max_verify = m.n_seqs;
    } else {
        // recurrent state: a snapshot per token of a path to roll back to (the pin clamps the
        // planes to 0 where it cannot: then one sequence over host checkpoints), and a sequence
        // per path, as many as the state's size allows
        // (llama.cpp keeps a sequence's last n_rs_seq + 1 tokens in one ubatch and asserts that a
        // ubatch holds more: a small n_batch gets fewer planes; below 3, none, and checkpoints)
        const int32_t planes = std::min({options.max_nodes, kMaxChain, int32_t(spec.n_batch) - 2});
        target_spec.n_rs_seq = uint32_t(std::max(planes, 0));
        m.target_ctx = make_context(m.target.get(), target_spec);
        m.max_depth = int32_t(llama_n_rs_seq(m.target_ctx.get()));
        m.verification = m.max_depth > 0 ? Verification::paths : Verification::checkpoints;
        if (m.verification == Verification::checkpoints) m.max_depth = std::min(options.max_nodes, kMaxChain);
        m.max_verify = m.max_depth;
        if (m.verification == Verification::paths) {
            BatchPtr probe(llama_batch_ext_init(m.target_ctx.get()));
            const size_t state = recurrent_state_bytes(m.target_ctx.get(), probe.get(), std::max(0, llama_vocab_bos(m.vocab)));
            m.n_seqs = paths_within(state, m.max_depth, kPathsMemory, std::min(options.max_nodes, kMaxPaths));
            if (m.n_seqs > 1) {
                probe.reset();
                m.target_ctx.reset();
                target_spec.n_seq_max = uint32_t(m.n_seqs);
                target_spec.kv_unified = true;
                m.target_ctx = make_context(m.target.get(), target_spec);
                m.max_verify = std::min(options.max_nodes, m.n_seqs * m.max_depth);
            }
        }
    }
    // the draft model's tree: one sequence per path, in one unified cache
    spec.n_seq_max = uint32_t(m.n_seqs);
    spec.kv_unified = true;
    m.batch.reset(llama_batch_ext_init(m.target_ctx.get()));
    if (m.draft) m.draft_ctx = make_context(m.draft.get(), spec);
    const int32_t n_nextn = llama_model_n_layer_nextn(m.target.get());
    if (n_nextn > 1 && m.mtp_error.empty())   // llama.cpp's MTP graphs assert one block, except chained heads
        m.mtp_error = "this model has " + std::to_string(n_nextn) + " MTP heads; HeteroSpec drives one head "
                      "(chained heads, as in Step3.5, are not supported yet)";
    if (m.verification == Verification::checkpoints && n_nextn > 0 && m.mtp_error.empty())
        m.mtp_error = "this model's recurrent state cannot be rolled back at this pin, and its MTP head reads the "
                      "target's hidden states row by row: MTP drafting needs rollback";
    if (m.verification != Verification::none && m.mtp_error.empty() && n_nextn == 1)
        m.mtp_ctx = make_mtp_context(m.target.get(), spec, m.mtp_error);
    if (m.head) {
        const Eagle3Target t = Impl::eagle3_target(m.target.get(), m.verification);
        if (m.head_arch == "eagle3") {
            check_eagle3_head(m.eagle3, t, options.draft.path, options.target.path);
            m.head_ctx = make_head_context(m.head.get(), m.target_ctx.get(), spec);
        } else {
            check_dflash_head(m.dflash, t, m.n_vocab, options.draft.path, options.target.path);
            // one sequence: a step drafts one block, and its tree needs no more passes
            ContextSpec s = spec;
            s.n_seq_max = 1;
            m.head_ctx = make_head_context(m.head.get(), m.target_ctx.get(), s);
        }
    }
    if (m.verification != Verification::none) {
        const bool checkpoints = m.verification == Verification::checkpoints;
        const Verifier::Layout layout = checkpoints ? Verifier::Layout::checkpoints
                                      : m.verification == Verification::paths ? Verifier::Layout::paths
                                      : Verifier::Layout::tree;
        m.verifier.reset(new Verifier(m.target_ctx.get(), m.n_seqs, m.target_cached, layout));
        if (checkpoints)
            m.checkpoint_ms = time_checkpoint(m.target_ctx.get(), m.batch.get(), std::max(0, llama_vocab_bos(m.vocab)));
        DrafterInputs in;
        in.draft_ctx = m.draft_ctx.get();
        in.draft_cached = &m.draft_cached;
        in.target_ctx = m.target_ctx.get();
        in.mtp_ctx = m.mtp_ctx.get();
        in.eagle3_ctx = m.head_arch == "eagle3" ? m.head_ctx.get() : nullptr;
        in.eagle3_layers = m.eagle3.layers;
        in.dflash_ctx = m.head_arch == "dflash" ? m.head_ctx.get() : nullptr;
        in.dflash = &m.dflash;
        in.index = &m.index;
        in.n_seq_max = m.n_seqs;
        for (NamedDrafter & d : make_drafters(in))
            m.speculators.push_back({d.name, std::move(d.drafter), CostModel()});
    }
    // hybrid measured best with a draft model (benchmarks/README.md: 1.19x the draft model's
    // trees alone on the memory-bound pair)
    if (options.drafter != "auto" && !m.speculators.empty() && !m.find_speculator(options.drafter))
        throw std::invalid_argument(m.unavailable(options.drafter));
    // hybrid with a head too: n-grams always, the head's levels where they pay
    m.default_drafter = options.drafter != "auto" ? options.drafter
                      : m.draft || m.head_ctx || m.mtp_ctx ? "hybrid" : "ngram";
    // llama.cpp rounds a small context up (to 256 cells): the engine keeps to the size asked for
    m.n_ctx = std::min(spec.n_ctx, llama_n_ctx(m.target_ctx.get()));
}

// What the EAGLE-3 head check needs of the target.
Eagle3Target Engine::Impl::eagle3_target(const llama_model * target, Verification v) {
    char arch[64] = {0};
    llama_model_meta_val_str(target, "general.architecture", arch, sizeof(arch));
    return {arch, llama_model_n_layer(target), llama_model_n_embd(target), v != Verification::checkpoints};
}

std::string Engine::Impl::unavailable(const std::string & name) const {
    const std::string kind = head_arch == "eagle3" ? "an EAGLE-3 head" : "a DFlash draft";
    if (name == "model" && head)
        return "'" + opts.draft.path + "' is " + kind + ", not a draft model: use drafter '" + head_arch + "' (or 'hybrid')";
    if ((name == "eagle3" || name == "dflash") && (draft || (head && head_arch != name)))
        return "drafter '" + name + "' needs " + (name == "eagle3" ? "an EAGLE-3 head" : "a DFlash draft") +
               " as the draft; '" + opts.draft.path + "' is " + (draft ? "a draft model" : kind) +
               " (use drafter '" + (draft ? "model" : head_arch) + "' or 'hybrid')";
    return drafter_unavailable(name) + (name == "mtp" && !mtp_error.empty() ? ": " + mtp_error : "");
}

Engine::Impl::Speculator * Engine::Impl::find_speculator(const std::string & name) {
    for (Speculator & s : speculators)
        if (s.name == name) return &s;
    return nullptr;
}

Engine::~Engine() = default;

const EngineOptions & Engine::options() const { return impl_->opts; }
int32_t Engine::n_vocab() const { return impl_->n_vocab; }
uint32_t Engine::n_ctx() const { return impl_->n_ctx; }
bool Engine::has_draft() const { return bool(impl_->draft); }
bool Engine::has_mtp() const { return bool(impl_->mtp_ctx); }

std::vector<std::string> Engine::drafters() const {
    std::vector<std::string> out;
    for (const Impl::Speculator & s : impl_->speculators) out.push_back(s.name);
    return out;
}
bool Engine::can_speculate() const { return impl_->verifier != nullptr; }

std::string Engine::model_description() const {
    char buf[256];
    llama_model_desc(impl_->target.get(), buf, sizeof(buf));
    return buf;
}

std::vector<int32_t> Engine::tokenize(const std::string & text, bool add_special, bool parse_special) const {
    try {
        return tokenize_unchecked(text, add_special, parse_special);
    } catch (const std::out_of_range &) {
        // an SPM vocabulary without byte tokens meets a character it cannot spell
        throw std::invalid_argument("the model's vocabulary cannot encode this text");
    }
}

std::vector<int32_t> Engine::tokenize_unchecked(const std::string & text, bool add_special, bool parse_special) const {
    const llama_vocab * vocab = impl_->vocab;
    if (text.size() > size_t(INT32_MAX / 2)) throw std::invalid_argument("text too long to tokenize");
    std::vector<int32_t> out(text.size() + 8);
    int32_t n = llama_tokenize(vocab, text.data(), int32_t(text.size()), out.data(), int32_t(out.size()),
                               add_special, parse_special);
    if (n < 0) {
        if (n == INT32_MIN) throw std::invalid_argument("text too long to tokenize");
        out.resize(size_t(-n));
        n = llama_tokenize(vocab, text.data(), int32_t(text.size()), out.data(), int32_t(out.size()),
                           add_special, parse_special);
    }
    out.resize(size_t(std::max(n, 0)));
    return out;
}

std::string Engine::detokenize(const std::vector<int32_t> & tokens, bool special) const {
    for (int32_t t : tokens)
        if (t < 0 || t >= impl_->n_vocab)
            throw std::invalid_argument("token id " + std::to_string(t) + " is outside the vocabulary (0.." +
                                        std::to_string(impl_->n_vocab - 1) + ")");
    std::string out(tokens.size() * 8 + 16, '\0');
    int32_t n = llama_detokenize(impl_->vocab, tokens.data(), int32_t(tokens.size()), out.data(),
                                 int32_t(out.size()), false, special);
    if (n < 0) {
        out.resize(size_t(-n));
        n = llama_detokenize(impl_->vocab, tokens.data(), int32_t(tokens.size()), out.data(),
                             int32_t(out.size()), false, special);
    }
    out.resize(size_t(std::max(n, 0)));
    return sanitize_utf8(out);
}

bool Engine::is_eog(int32_t token) const {
    return token >= 0 && token < impl_->n_vocab && llama_vocab_is_eog(impl_->vocab, token);
}

std::string Engine::format_chat(const std::vector<ChatMessage> & messages, bool add_generation_prompt,
                                const std::string & tmpl) const {
    const char * t = tmpl.empty() ? llama_model_chat_template(impl_->target.get(), nullptr) : tmpl.c_str();
    if (!t) t = "chatml";  // llama.cpp's fallback for models without a template
    std::vector<llama_chat_message> msgs;
    size_t total = 0;
    for (const auto & m : messages) {
        msgs.push_back({m.role.c_str(), m.content.c_str()});
        total += m.role.size() + m.content.size();
    }
    std::vector<char> buf(total * 2 + 256);
    int32_t n = llama_chat_apply_template(t, msgs.data(), msgs.size(), add_generation_prompt, buf.data(), int32_t(buf.size()));
    if (n > int32_t(buf.size())) {
        buf.resize(size_t(n));
        n = llama_chat_apply_template(t, msgs.data(), msgs.size(), add_generation_prompt, buf.data(), int32_t(buf.size()));
    }
    if (n < 0)
        throw std::invalid_argument("the chat template is not one llama.cpp can apply; pass chat_template= "
                                    "with a built-in name such as 'chatml', 'llama3' or 'mistral-v7'");
    return std::string(buf.data(), size_t(n));
}

void Engine::debug_record_states(bool on) {
    std::lock_guard<std::mutex> lock(impl_->mu);
    for (Impl::Speculator & s : impl_->speculators) s.drafter->debug_record_states(on);
}

std::vector<std::pair<int32_t, std::vector<float>>> Engine::debug_states(const std::string & name) const {
    for (const Impl::Speculator & s : impl_->speculators)
        if (s.name == name) return s.drafter->debug_states();
    throw std::invalid_argument("no drafter '" + name + "' here");
}

std::vector<std::vector<std::pair<int32_t, int32_t>>> Engine::debug_kv_state() const {
    std::vector<std::vector<std::pair<int32_t, int32_t>>> out;
    for (llama_context * ctx : {impl_->target_ctx.get(), impl_->draft_ctx.get(), impl_->head_ctx.get()}) {
        if (!ctx) continue;
        llama_memory_t mem = llama_get_memory(ctx);
        std::vector<std::pair<int32_t, int32_t>> seqs;
        for (llama_seq_id s = 0; s < int32_t(llama_n_seq_max(ctx)); ++s)
            seqs.push_back({llama_memory_seq_pos_min(mem, s), llama_memory_seq_pos_max(mem, s)});
        out.push_back(seqs);
    }
    return out;
}

int32_t Engine::debug_n_past() const { return impl_->gen.n_past; }

void Engine::cancel() { impl_->cancel_requested = true; }

std::string Engine::chat_template() const {
    const char * t = llama_model_chat_template(impl_->target.get(), nullptr);
    return t ? t : "";
}

SpecialTokens Engine::special_tokens() const {
    const llama_vocab * v = impl_->vocab;
    return {llama_vocab_bos(v), llama_vocab_eos(v), llama_vocab_get_add_bos(v), llama_vocab_get_add_eos(v)};
}

void Engine::clear_ngram_memory() {
    std::lock_guard<std::mutex> lock(impl_->mu);
    Impl & m = *impl_;
    m.index = SuffixIndex(m.index.capacity());
    if (!m.gen.done) {   // a generation in progress keeps its own text
        m.index.begin_document();
        for (int32_t t : m.gen.history) m.index.push(t);
    }
}

void Engine::debug_wrong_rule(bool on) {
    std::lock_guard<std::mutex> lock(impl_->mu);
    impl_->wrong_rule = on;
}

std::vector<TokenLogprob> Engine::logprobs_since(size_t from) const {
    std::lock_guard<std::mutex> lock(impl_->mu);
    const auto & l = impl_->gen.logprobs;
    return from < l.size() ? std::vector<TokenLogprob>(l.begin() + std::ptrdiff_t(from), l.end()) : std::vector<TokenLogprob>();
}

std::vector<int32_t> Engine::tokens_since(size_t from) const {
    std::lock_guard<std::mutex> lock(impl_->mu);
    const auto & t = impl_->gen.tokens;
    return from < t.size() ? std::vector<int32_t>(t.begin() + std::ptrdiff_t(from), t.end()) : std::vector<int32_t>();
}

std::string Engine::token_piece(int32_t token) const {
    if (token < 0 || token >= impl_->n_vocab)
        throw std::invalid_argument("token id " + std::to_string(token) + " is outside the vocabulary");
    std::vector<char> buf(64);
    int32_t n = llama_token_to_piece(impl_->vocab, token, buf.data(), int32_t(buf.size()), 0, true);
    if (n < 0) {
        buf.resize(size_t(-n));
        n = llama_token_to_piece(impl_->vocab, token, buf.data(), int32_t(buf.size()), 0, true);
    }
    return std::string(buf.data(), size_t(std::max(n, 0)));
}

Result Engine::result() const {
    std::lock_guard<std::mutex> lock(impl_->mu);
    const Generation & g = impl_->gen;
    Result r;
    r.text = g.output;
    r.tokens = g.tokens;
    r.finish_reason = g.finish_reason;
    r.stats = g.stats;
    r.trace = g.trace;
    r.logprobs = g.logprobs;
    return r;
}

Result Engine::generate(const std::vector<int32_t> & prompt, const GenerateParams & params) {
    start(prompt, params);
    while (!step().done) {}
    return result();
}

}  // namespace heterospec
