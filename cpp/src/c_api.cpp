// The C API (cpp/include/heterospec/heterospec.h) over the C++ engine: C structs in and out,
// exceptions turned into status codes and a per-thread message, one generation at a time.
#include "heterospec/heterospec.h"

#include <atomic>
#include <climits>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <new>
#include <string>
#include <thread>
#include <vector>

#include "ggml-backend.h"
#include "heterospec/engine.h"
#include "heterospec/errors.h"
#include "llama.h"
#include "sparse_prefill.h"

#ifndef HETEROSPEC_LLAMA_CPP_SOURCE
#define HETEROSPEC_LLAMA_CPP_SOURCE "unknown"
#endif

using namespace heterospec;

struct hs_engine {
    explicit hs_engine(const EngineOptions & o) : engine(o) {
        std::string names;
        for (const std::string & d : engine.drafters()) names += (names.empty() ? "" : ",") + d;
        drafters = names;
        description = engine.model_description();
        chat_template = engine.chat_template();
    }
    Engine engine;
    // Who uses the engine. A generation (or a profile measurement) owns it from start() to done,
    // one at a time; the others queue. hs_engine_free waits for every call inside the library.
    std::mutex mu;                      // guards what follows
    std::condition_variable cv;         // busy or inside changed, or closing was set
    bool busy = false;                  // a generation or a profile measurement owns the engine
    std::thread::id owner;              // the thread it runs on (its token callback's too)
    int64_t inside = 0;                 // other calls inside the library: queued ones, text calls
    std::atomic<bool> closing{false};   // hs_engine_free has begun: calls are refused
    bool free_on_release = false;       // freed from the owner's own callback: the owner frees it
    std::string drafters, description, chat_template;
};

struct hs_result {
    Result r;
    std::vector<int32_t> top_tokens;    // every token's alternatives, flattened
    std::vector<float> top_logprobs;
    std::vector<size_t> top_offset;
};

namespace {

thread_local std::string last_error;

// A caller's buffer is too small (the size needed has been written out).
struct BufferTooSmall : std::runtime_error {
    using std::runtime_error::runtime_error;
};

hs_status fail(hs_status status, const std::string & message) {
    last_error = message;
    return status;
}

// Runs f, turning whatever it throws into a status: nothing crosses the C ABI.
template <typename F>
hs_status guarded(F && f) {
    try {
        last_error.clear();
        f();
        return HS_OK;
    } catch (const BufferTooSmall & e) {
        return fail(HS_ERROR_BUFFER_TOO_SMALL, e.what());
    } catch (const FileNotFound & e) {
        return fail(HS_ERROR_FILE_NOT_FOUND, e.what());
    } catch (const std::invalid_argument & e) {
        return fail(HS_ERROR_INVALID_ARGUMENT, e.what());
    } catch (const std::bad_alloc &) {
        return fail(HS_ERROR_OUT_OF_MEMORY, "out of memory");
    } catch (const std::exception & e) {
        return fail(HS_ERROR_RUNTIME, e.what());
    } catch (...) {
        return fail(HS_ERROR_UNKNOWN, "unknown error");
    }
}

void require(bool ok, const char * what) {
    if (!ok) throw std::invalid_argument(what);
}

// A call that reads the engine beside others (tokenize, detokenize, chat templates):
// hs_engine_free waits for it.
class Use {
public:
    explicit Use(hs_engine * e) : e_(e) {
        std::lock_guard<std::mutex> lock(e->mu);
        if (e->closing) throw std::runtime_error("the engine is being freed (hs_engine_free)");
        ++e->inside;
    }
    ~Use() {
        std::lock_guard<std::mutex> lock(e_->mu);
        --e_->inside;
        e_->cv.notify_all();
    }
    Use(const Use &) = delete;
    Use & operator=(const Use &) = delete;

private:
    hs_engine * e_;
};

// A generation or a profile measurement: owns the engine once those before it are done. A call
// from the owner's own token callback would wait for itself: it is refused. A call waiting when
// hs_engine_free begins is refused. When the owner's callback freed the engine, the owner frees
// it on its way out.
class Own {
public:
    explicit Own(hs_engine * e) : e_(e) {
        std::unique_lock<std::mutex> lock(e->mu);
        if (e->busy && e->owner == std::this_thread::get_id())
            throw std::invalid_argument("this thread's generation owns the engine: from inside its token callback "
                                        "only hs_cancel, hs_engine_free, the text functions and the accessors "
                                        "may be called on it");
        if (e->closing) throw std::runtime_error("the engine is being freed (hs_engine_free)");
        ++e->inside;
        e->cv.wait(lock, [e] { return !e->busy || e->closing; });
        --e->inside;
        if (e->closing) {
            e->cv.notify_all();
            throw std::runtime_error("the engine was freed (hs_engine_free) while this call waited for it");
        }
        e->busy = true;
        e->owner = std::this_thread::get_id();
    }
    ~Own() {
        bool free_it = false;
        {
            std::unique_lock<std::mutex> lock(e_->mu);
            e_->busy = false;
            e_->owner = std::thread::id();
            free_it = e_->free_on_release;
            e_->cv.notify_all();
            if (free_it) e_->cv.wait(lock, [this] { return e_->inside == 0; });
        }
        if (free_it) delete e_;
    }
    Own(const Own &) = delete;
    Own & operator=(const Own &) = delete;

private:
    hs_engine * e_;
};

std::string text_or(const char * s, const char * fallback) { return s ? s : fallback; }

EngineOptions engine_options(const hs_engine_params & p) {
    EngineOptions o;
    o.target.path = text_or(p.target.path, "");
    o.target.n_gpu_layers = p.target.n_gpu_layers;
    o.draft.path = text_or(p.draft.path, "");
    o.draft.n_gpu_layers = p.draft.n_gpu_layers;
    o.n_ctx = p.n_ctx;
    o.n_batch = p.n_batch;
    o.n_threads = p.n_threads;
    o.n_threads_batch = p.n_threads_batch;
    o.flash_attn = text_or(p.flash_attn, o.flash_attn.c_str());
    o.cache_type_k = text_or(p.cache_type_k, o.cache_type_k.c_str());
    o.cache_type_v = text_or(p.cache_type_v, o.cache_type_v.c_str());
    o.drafter = text_or(p.drafter, o.drafter.c_str());
    o.max_nodes = p.max_nodes;
    const hs_sparse_prefill_params & s = p.sparse_prefill;
    o.sparse_prefill.mode = text_or(s.mode, "off");
    o.sparse_prefill.alpha = s.alpha;
    o.sparse_prefill.row_frac = s.row_frac;
    o.sparse_prefill.window_frac = s.window_frac;
    o.sparse_prefill.k_max_frac = s.k_max_frac;
    o.sparse_prefill.min_ctx = s.min_ctx;
    o.sparse_prefill.dense_tail = s.dense_tail;
    o.verbose = p.verbose;
    return o;
}

GenerateParams generate_params(const hs_generate_params & p) {
    GenerateParams g;
    const hs_sampling_params & s = p.sampling;
    g.sampling.temperature = s.temperature;
    g.sampling.top_k = s.top_k;
    g.sampling.top_p = s.top_p;
    g.sampling.min_p = s.min_p;
    g.sampling.repeat_penalty = s.repeat_penalty;
    g.sampling.repeat_last_n = s.repeat_last_n;
    g.sampling.seed = s.seed;
    const hs_spec_params & t = p.spec;
    g.spec.mode = text_or(t.mode, "auto");
    g.spec.drafter = text_or(t.drafter, "");
    g.spec.depth = t.depth;
    g.spec.branching = t.branching;
    g.spec.width = t.width;
    g.spec.budget = t.budget;
    g.spec.n_max = t.n_max;
    g.spec.p_min = t.p_min;
    require(t.policy_thresholds || t.n_policy_thresholds == 0, "policy_thresholds is NULL but n_policy_thresholds is not 0");
    g.spec.policy_thresholds.assign(t.policy_thresholds, t.policy_thresholds + t.n_policy_thresholds);
    g.spec.policy_gamma.assign(t.policy_gamma, t.policy_gamma + 3);
    g.spec.cost_aware = t.cost_aware;
    g.max_tokens = p.max_tokens;
    require(p.stop || p.n_stop == 0, "stop is NULL but n_stop is not 0");
    for (size_t i = 0; i < p.n_stop; ++i) {
        require(p.stop[i] != nullptr, "a stop string is NULL");
        g.stop.emplace_back(p.stop[i]);
    }
    g.ignore_eos = p.ignore_eos;
    g.cache_prompt = p.cache_prompt;
    g.logprobs = p.logprobs;
    g.sparse_prefill = text_or(p.sparse_prefill, "");
    validate(g);
    return g;
}

// Copies `s` into the caller's buffer, NUL-terminated, or says how big it must be.
void copy_out(const std::string & s, char * buf, size_t buf_size, size_t * len_out) {
    require(len_out != nullptr, "len_out is NULL");
    require(buf != nullptr || buf_size == 0, "buf is NULL but buf_size is not 0");
    *len_out = s.size();
    if (s.size() + 1 > buf_size) throw BufferTooSmall("buffer too small");
    std::memcpy(buf, s.data(), s.size());
    buf[s.size()] = '\0';
}

hs_result * make_result(Result && r) {
    hs_result * out = new hs_result;
    out->r = std::move(r);
    for (const TokenLogprob & lp : out->r.logprobs) {
        out->top_offset.push_back(out->top_tokens.size());
        for (const auto & [token, logprob] : lp.top) {
            out->top_tokens.push_back(token);
            out->top_logprobs.push_back(logprob);
        }
    }
    out->top_offset.push_back(out->top_tokens.size());
    return out;
}

// Steps a started generation to its end, handing each new token and the text that became final
// with it to the callback; a callback that returns false cancels, and so does hs_engine_free
// (also when it came between taking the engine and start(), which forgets earlier cancels).
void stream(hs_engine & h, hs_token_callback callback, void * user_data) {
    Engine & e = h.engine;
    size_t seen = 0;
    bool stopped = false;
    for (;;) {
        if (h.closing) e.cancel();
        StepOutput out = e.step();
        if (callback && !stopped) {
            std::vector<int32_t> fresh = e.tokens_since(seen);
            seen += fresh.size();
            for (size_t i = 0; i < fresh.size() && !stopped; ++i) {   // the step's text comes with its last token
                const bool last = i + 1 == fresh.size();
                stopped = !callback(fresh[i], last ? out.text.c_str() : "", last ? out.text.size() : 0, user_data);
            }
            if (fresh.empty() && !out.text.empty())
                stopped = !callback(-1, out.text.c_str(), out.text.size(), user_data);
            if (stopped) e.cancel();
        }
        if (out.done) return;
    }
}

}  // namespace

extern "C" {

const char * hs_version(void) { return HS_VERSION; }

const char * hs_last_error(void) { return last_error.c_str(); }

const char * hs_build_info(void) {
    try {
        static const std::string info = [] {
            std::string s = std::string("heterospec ") + HS_VERSION + "; llama.cpp " + HETEROSPEC_LLAMA_CPP_SOURCE +
                            "; sparse prefill " + (sparse_prefill_available() ? "yes" : "no") + "; devices:";
            for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
                ggml_backend_dev_t dev = ggml_backend_dev_get(i);
                s += std::string(" ") + text_or(ggml_backend_dev_name(dev), "?") + " (" +
                     text_or(ggml_backend_dev_description(dev), "") + ")";
            }
            return s + "; " + text_or(llama_print_system_info(), "");
        }();
        return info.c_str();
    } catch (...) {   // out of memory: the static is built on a later call
        return "heterospec " HS_VERSION;
    }
}

hs_engine_params hs_engine_default_params(void) {
    hs_engine_params p;
    std::memset(&p, 0, sizeof(p));
    try {   // nothing crosses the ABI, not even bad_alloc from building the defaults
        static const EngineOptions d;
        p.target.n_gpu_layers = d.target.n_gpu_layers;
        p.draft.n_gpu_layers = d.draft.n_gpu_layers;
        p.n_ctx = d.n_ctx;
        p.n_batch = d.n_batch;
        p.n_threads = d.n_threads;
        p.n_threads_batch = d.n_threads_batch;
        p.flash_attn = d.flash_attn.c_str();
        p.cache_type_k = d.cache_type_k.c_str();
        p.cache_type_v = d.cache_type_v.c_str();
        p.drafter = d.drafter.c_str();
        p.max_nodes = d.max_nodes;
        const SparsePrefillOptions & s = d.sparse_prefill;
        p.sparse_prefill = {s.mode.c_str(), s.alpha, s.row_frac, s.window_frac, s.k_max_frac, s.min_ctx, s.dense_tail};
        p.verbose = d.verbose;
    } catch (...) {   // out of memory: zeros, which the functions taking them refuse
    }
    return p;
}

hs_status hs_engine_create(const hs_engine_params * params, hs_engine ** out) {
    if (out) *out = nullptr;
    return guarded([&] {
        require(params != nullptr && out != nullptr, "params and out must not be NULL");
        *out = new hs_engine(engine_options(*params));
    });
}

void hs_engine_free(hs_engine * engine) {
    if (!engine) return;
    try {
        {
            std::unique_lock<std::mutex> lock(engine->mu);
            if (engine->closing) return;    // being freed already (by its own callback, or another thread)
            engine->closing = true;         // waiting and later calls are refused
            engine->engine.cancel();
            engine->cv.notify_all();
            if (engine->busy && engine->owner == std::this_thread::get_id()) {
                engine->free_on_release = true;     // from the generation's own callback: it frees the engine
                return;
            }
            engine->cv.wait(lock, [engine] { return !engine->busy && engine->inside == 0; });
        }
        delete engine;
    } catch (...) {   // a mutex that fails: leak the engine rather than throw across the ABI
    }
}

int32_t hs_n_vocab(const hs_engine * e) { return e ? e->engine.n_vocab() : 0; }
uint32_t hs_n_ctx(const hs_engine * e) { return e ? e->engine.n_ctx() : 0; }
bool hs_has_draft(const hs_engine * e) { return e && e->engine.has_draft(); }
bool hs_has_mtp(const hs_engine * e) { return e && e->engine.has_mtp(); }
bool hs_can_speculate(const hs_engine * e) { return e && e->engine.can_speculate(); }
const char * hs_drafters(const hs_engine * e) { return e ? e->drafters.c_str() : ""; }
const char * hs_model_description(const hs_engine * e) { return e ? e->description.c_str() : ""; }
const char * hs_chat_template(const hs_engine * e) { return e ? e->chat_template.c_str() : ""; }
bool hs_token_is_eog(const hs_engine * e, int32_t token) { return e && e->engine.is_eog(token); }

hs_status hs_tokenize(hs_engine * e, const char * text, int64_t len, bool add_special, bool parse_special,
                      int32_t * tokens, size_t n_max, size_t * n_out) {
    return guarded([&] {
        require(e && text && n_out, "engine, text and n_out must not be NULL");
        require(tokens || n_max == 0, "tokens is NULL but n_max is not 0");
        // the engine's limit, before copying: a wild len must not read gigabytes past the text
        require(len <= int64_t(INT32_MAX / 2), "len is too long to tokenize");
        Use use(e);
        const std::string s = len < 0 ? std::string(text) : std::string(text, size_t(len));
        const std::vector<int32_t> ids = e->engine.tokenize(s, add_special, parse_special);
        *n_out = ids.size();
        if (ids.size() > n_max) throw BufferTooSmall("token buffer too small");
        std::copy(ids.begin(), ids.end(), tokens);
    });
}

hs_status hs_detokenize(hs_engine * e, const int32_t * tokens, size_t n_tokens, bool special, char * buf,
                        size_t buf_size, size_t * len_out) {
    return guarded([&] {
        require(e && (tokens || n_tokens == 0), "engine and tokens must not be NULL");
        require(n_tokens <= size_t(INT32_MAX / 8), "n_tokens is too large");
        Use use(e);
        copy_out(e->engine.detokenize(std::vector<int32_t>(tokens, tokens + n_tokens), special), buf, buf_size, len_out);
    });
}

hs_status hs_apply_chat_template(hs_engine * e, const hs_chat_message * messages, size_t n_messages,
                                 bool add_generation_prompt, const char * tmpl, char * buf, size_t buf_size,
                                 size_t * len_out) {
    return guarded([&] {
        require(e && (messages || n_messages == 0), "engine and messages must not be NULL");
        Use use(e);
        std::vector<ChatMessage> msgs;
        for (size_t i = 0; i < n_messages; ++i) {
            require(messages[i].role && messages[i].content, "a message's role or content is NULL");
            msgs.push_back({messages[i].role, messages[i].content});
        }
        copy_out(e->engine.format_chat(msgs, add_generation_prompt, text_or(tmpl, "")), buf, buf_size, len_out);
    });
}

hs_generate_params hs_generate_default_params(void) {
    hs_generate_params p;
    std::memset(&p, 0, sizeof(p));
    try {   // nothing crosses the ABI, not even bad_alloc from building the defaults
        static const GenerateParams d;
        const SamplingParams & s = d.sampling;
        p.sampling = {s.temperature, s.top_k, s.top_p, s.min_p, s.repeat_penalty, s.repeat_last_n, s.seed};
        const SpecParams & t = d.spec;
        p.spec.mode = t.mode.c_str();
        p.spec.drafter = nullptr;
        p.spec.depth = t.depth;
        p.spec.branching = t.branching;
        p.spec.width = t.width;
        p.spec.budget = t.budget;
        p.spec.n_max = t.n_max;
        p.spec.p_min = t.p_min;
        std::copy(t.policy_gamma.begin(), t.policy_gamma.end(), p.spec.policy_gamma);
        p.spec.cost_aware = t.cost_aware;
        p.max_tokens = d.max_tokens;
        p.ignore_eos = d.ignore_eos;
        p.cache_prompt = d.cache_prompt;
        p.logprobs = d.logprobs;
    } catch (...) {   // out of memory: zeros, which the functions taking them refuse
    }
    return p;
}

hs_status hs_generate_tokens(hs_engine * e, const int32_t * prompt, size_t n_prompt, const hs_generate_params * params,
                             hs_token_callback callback, void * user_data, hs_result ** out) {
    if (out) *out = nullptr;
    return guarded([&] {
        require(e && params && out, "engine, params and out must not be NULL");
        require(prompt || n_prompt == 0, "prompt is NULL but n_prompt is not 0");
        const GenerateParams g = generate_params(*params);
        if (n_prompt > e->engine.n_ctx())   // before copying: a wild count must not read far past the prompt
            throw std::invalid_argument("the prompt has " + std::to_string(n_prompt) + " tokens but the context holds " +
                                        std::to_string(e->engine.n_ctx()) + "; shorten it or raise n_ctx (-c)");
        const std::vector<int32_t> tokens(prompt, prompt + n_prompt);
        Own own(e);     // may free the engine on its way out (hs_engine_free from the callback)
        e->engine.start(tokens, g);
        stream(*e, callback, user_data);
        *out = make_result(e->engine.result());
    });
}

hs_status hs_generate(hs_engine * e, const char * prompt, const hs_generate_params * params,
                      hs_token_callback callback, void * user_data, hs_result ** out) {
    if (out) *out = nullptr;
    std::vector<int32_t> tokens;
    const hs_status st = guarded([&] {
        require(e && prompt, "engine and prompt must not be NULL");
        Use use(e);
        tokens = e->engine.tokenize(prompt, true, true);
    });
    if (st != HS_OK) return st;
    return hs_generate_tokens(e, tokens.data(), tokens.size(), params, callback, user_data, out);
}

void hs_cancel(hs_engine * e) {
    if (e) e->engine.cancel();
}

void hs_result_free(hs_result * r) { delete r; }

const char * hs_result_text(const hs_result * r, size_t * len) {
    if (len) *len = r ? r->r.text.size() : 0;
    return r ? r->r.text.c_str() : "";
}

const int32_t * hs_result_tokens(const hs_result * r, size_t * n) {
    if (n) *n = r ? r->r.tokens.size() : 0;
    return r ? r->r.tokens.data() : nullptr;
}

const char * hs_result_finish_reason(const hs_result * r) { return r ? r->r.finish_reason.c_str() : ""; }

hs_stats hs_result_stats(const hs_result * r) {
    hs_stats o;
    std::memset(&o, 0, sizeof(o));
    o.mode = o.drafter = "";
    if (!r) return o;
    const Stats & s = r->r.stats;
    o.prompt_tokens = s.prompt_tokens;
    o.cached_tokens = s.cached_tokens;
    o.generated_tokens = s.generated_tokens;
    o.prompt_ms = s.prompt_ms;
    o.decode_ms = s.decode_ms;
    o.tokens_per_second = s.tokens_per_second();
    o.mode = s.mode.c_str();
    o.drafter = s.drafter.c_str();
    o.steps = s.steps;
    o.target_calls = s.target_calls;
    o.draft_calls = s.draft_calls;
    o.nodes_verified = s.nodes_verified;
    o.accepted_draft = s.accepted_draft;
    o.accepted_model = s.accepted_model;
    o.accepted_ngram = s.accepted_ngram;
    o.accepted_mtp = s.accepted_mtp;
    o.accepted_eagle3 = s.accepted_eagle3;
    o.accepted_dflash = s.accepted_dflash;
    o.mean_accepted = s.mean_accepted();
    o.draft_ms = s.draft_ms;
    o.verify_ms = s.verify_ms;
    o.host_ms = s.host_ms;
    o.sparse_kept_fraction = s.sparse_kept_fraction;
    return o;
}

size_t hs_result_n_logprobs(const hs_result * r) { return r ? r->r.logprobs.size() : 0; }

hs_token_logprob hs_result_logprob(const hs_result * r, size_t i) {
    hs_token_logprob o = {-1, 0.0f, 0, nullptr, nullptr};
    if (!r || i >= r->r.logprobs.size()) return o;
    const size_t at = r->top_offset[i];
    o.token = r->r.logprobs[i].token;
    o.logprob = r->r.logprobs[i].logprob;
    o.n_top = r->top_offset[i + 1] - at;
    o.top_tokens = o.n_top ? r->top_tokens.data() + at : nullptr;
    o.top_logprobs = o.n_top ? r->top_logprobs.data() + at : nullptr;
    return o;
}

hs_status hs_cost_profile(hs_engine * e, int32_t width, bool fresh, int32_t * sizes, double * verify_ms,
                          size_t n_max, size_t * n_out, double * draft_level_ms) {
    return guarded([&] {
        require(e && n_out, "engine and n_out must not be NULL");
        require((sizes && verify_ms) || n_max == 0, "sizes and verify_ms must not be NULL");
        require(width >= 1 && width <= 64, "width must be in 1..64");
        Own own(e);
        const auto [n, ms, level] = e->engine.cost_profile(width, fresh);
        *n_out = n.size();
        if (draft_level_ms) *draft_level_ms = level;
        if (n.size() > n_max) throw BufferTooSmall("profile buffers too small");
        std::copy(n.begin(), n.end(), sizes);
        std::copy(ms.begin(), ms.end(), verify_ms);
    });
}

hs_status hs_set_cost_profile(hs_engine * e, const int32_t * sizes, const double * verify_ms, size_t n,
                              double draft_level_ms, bool projected) {
    return guarded([&] {
        require(e && ((sizes && verify_ms) || n == 0), "engine, sizes and verify_ms must not be NULL");
        Own own(e);
        e->engine.set_cost_profile(std::vector<int32_t>(sizes, sizes + n), std::vector<double>(verify_ms, verify_ms + n),
                                   draft_level_ms, projected);
    });
}

}  // extern "C"
