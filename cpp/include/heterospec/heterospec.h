/*
 * HeteroSpec's C API: exact speculative decoding of GGUF models, for apps that reach native code
 * through a C ABI (Swift, C#, Rust, Node, Kotlin, Python's ctypes).
 *
 * The output is exactly what the target model alone would produce: token for token under greedy
 * decoding, in distribution under sampling. A draft model, the target's own MTP head or n-grams
 * of earlier text propose tokens; the target verifies them in one pass.
 *
 *   hs_engine_params ep = hs_engine_default_params();
 *   ep.target.path = "model.gguf";
 *   hs_engine * engine = NULL;
 *   if (hs_engine_create(&ep, &engine) != HS_OK) { fprintf(stderr, "%s\n", hs_last_error()); ... }
 *   hs_generate_params gp = hs_generate_default_params();
 *   hs_result * result = NULL;
 *   hs_generate(engine, "def fibonacci(n):", &gp, on_token, NULL, &result);
 *   ... hs_result_text(result) ...
 *   hs_result_free(result);
 *   hs_engine_free(engine);
 *
 * Errors: every function that can fail returns an hs_status; HS_OK is 0. The message of the
 * calling thread's last failure is hs_last_error(). No C++ exception and no abort crosses this
 * API: bad input (a missing or corrupt GGUF, mismatched vocabularies, a prompt longer than the
 * context, out-of-range parameters) is an error code.
 *
 * Threads: an engine runs one generation at a time. Calls on one engine from several threads are
 * safe: hs_generate calls queue behind one another (each holds the engine from its prompt to its
 * last token; so does hs_cost_profile and hs_set_cost_profile). hs_cancel may be called from any
 * thread at any time, including from inside the token callback. Inside the callback the text
 * functions and the accessors may be called on its engine too, but a call that needs the engine
 * (hs_generate, hs_generate_tokens, hs_cost_profile, hs_set_cost_profile) would wait for itself:
 * it fails with HS_ERROR_INVALID_ARGUMENT. Distinct engines are independent. hs_last_error is per
 * thread.
 *
 * Strings: UTF-8, in and out. Strings the library returns stay valid until the object they came
 * from is freed (a result's text until hs_result_free), unless said otherwise.
 */
#ifndef HETEROSPEC_H
#define HETEROSPEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32) && !defined(HS_STATIC)
#    if defined(HS_BUILD)
#        define HS_API __declspec(dllexport)
#    else
#        define HS_API __declspec(dllimport)
#    endif
#else
#    define HS_API __attribute__((visibility("default")))
#endif

/* The version of this header. hs_version() gives the library's: an app checks that their major
 * versions agree (HS_VERSION_MAJOR changes when the ABI does). */
#define HS_VERSION_MAJOR 0
#define HS_VERSION_MINOR 1
#define HS_VERSION_PATCH 0
#define HS_VERSION "0.1.0"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct hs_engine hs_engine;
typedef struct hs_result hs_result;

typedef enum hs_status {
    HS_OK = 0,
    HS_ERROR_INVALID_ARGUMENT = 1,  /* a bad parameter, request or model (unsupported, mismatched) */
    HS_ERROR_FILE_NOT_FOUND = 2,    /* a model file that does not exist */
    HS_ERROR_RUNTIME = 3,           /* llama.cpp failed at run time (out of context, device error) */
    HS_ERROR_OUT_OF_MEMORY = 4,
    HS_ERROR_BUFFER_TOO_SMALL = 5,  /* the size needed was written to the size output */
    HS_ERROR_UNKNOWN = 6,
} hs_status;

/* The version of the library, "MAJOR.MINOR.PATCH". */
HS_API const char * hs_version(void);
/* The message of this thread's last failed call ("" if none). Valid until this thread's next call. */
HS_API const char * hs_last_error(void);
/* What the library was built with: llama.cpp's version and patches, the backends and devices. */
HS_API const char * hs_build_info(void);

/* ---- the engine ------------------------------------------------------------------------- */

/* One model. Names follow llama.cpp's flags. */
typedef struct hs_model_params {
    const char * path;              /* a GGUF file; NULL or "": none (for the draft) */
    int32_t n_gpu_layers;           /* -ngl: layers on the GPU, >= -1; -1 = all (ignored by CPU builds) */
} hs_model_params;

/* SampleAttention: adaptive sparse attention for the target's prompt processing. */
typedef struct hs_sparse_prefill_params {
    const char * mode;              /* "off" or "sample" */
    float alpha;                    /* attention mass to keep, (0, 1] */
    float row_frac;                 /* query rows sampled to score the columns, (0, 1] */
    float window_frac;              /* local window, fraction of the context, (0, 1] */
    float k_max_frac;               /* most columns selected besides the window, (0, 1] */
    int32_t min_ctx;                /* ubatches over fewer KV cells run dense */
    int32_t dense_tail;             /* the prompt's last tokens run dense */
} hs_sparse_prefill_params;

typedef struct hs_engine_params {
    hs_model_params target;
    hs_model_params draft;          /* draft.path NULL: no draft model */
    uint32_t n_ctx;                 /* -c: 0 = the model's training context, at most 4096; else 8..INT32_MAX */
    uint32_t n_batch;               /* -b: tokens per llama_decode call in prompt processing, 1..INT32_MAX */
    int32_t n_threads;              /* -t: 0 = one per physical core; at most 4 per logical CPU and 512 */
    int32_t n_threads_batch;        /* -tb: 0 = n_threads; the same bound */
    const char * flash_attn;        /* -fa: "on", "off" or "auto" */
    const char * cache_type_k;      /* -ctk: "f16", "q8_0", ... */
    const char * cache_type_v;      /* -ctv (quantized V needs flash attention) */
    const char * drafter;           /* "auto", "model", "mtp", "eagle3", "dflash", "ngram" or "hybrid" */
    int32_t max_nodes;              /* largest verification budget a call may use, 1..255 */
    hs_sparse_prefill_params sparse_prefill;
    bool verbose;                   /* forward llama.cpp's log to stderr */
} hs_engine_params;

/* The defaults (the Python Engine's and the CLI's). */
HS_API hs_engine_params hs_engine_default_params(void);

/* Loads the models and creates their contexts. On failure *out is NULL. */
HS_API hs_status hs_engine_create(const hs_engine_params * params, hs_engine ** out);
/* Frees an engine (NULL: nothing). Cancels a generation in progress and waits for it to return
 * (its result is the caller's); calls waiting for the engine in other threads fail with
 * HS_ERROR_RUNTIME. From inside the engine's own token callback it cancels the generation and
 * returns at once: the engine is freed when that hs_generate returns (until then, calls on it
 * fail). Any call on an engine after its free has returned is undefined, as with free(). */
HS_API void hs_engine_free(hs_engine * engine);

HS_API int32_t hs_n_vocab(const hs_engine * engine);
HS_API uint32_t hs_n_ctx(const hs_engine * engine);
HS_API bool hs_has_draft(const hs_engine * engine);
/* The target's MTP (nextn) head runs: drafter "mtp" is available. */
HS_API bool hs_has_mtp(const hs_engine * engine);
/* Whether any drafter can speculate with this engine (false: every call decodes plainly). */
HS_API bool hs_can_speculate(const hs_engine * engine);
/* The drafters this engine can speculate with, comma-separated ("" if none). */
HS_API const char * hs_drafters(const hs_engine * engine);
/* A one-line description of the models. */
HS_API const char * hs_model_description(const hs_engine * engine);

/* ---- text ------------------------------------------------------------------------------- */

/* Tokenizes `len` bytes of `text` (len < 0: up to its NUL; at most INT32_MAX / 2). Writes at most `n_max` tokens and the
 * count to *n_out; HS_ERROR_BUFFER_TOO_SMALL when they do not fit (*n_out: the count needed).
 * `add_special`: the model's BOS where it wants one; `parse_special`: "<|im_start|>" and the like
 * become their special tokens. */
HS_API hs_status hs_tokenize(hs_engine * engine, const char * text, int64_t len, bool add_special,
                             bool parse_special, int32_t * tokens, size_t n_max, size_t * n_out);
/* Writes the text of `tokens` into buf (NUL-terminated) and its length in bytes to *len_out;
 * HS_ERROR_BUFFER_TOO_SMALL when it does not fit (*len_out: the length needed, without the NUL).
 * `special`: render special tokens. */
HS_API hs_status hs_detokenize(hs_engine * engine, const int32_t * tokens, size_t n_tokens, bool special,
                               char * buf, size_t buf_size, size_t * len_out);
/* Whether a token ends generation (EOS, EOT, ...). */
HS_API bool hs_token_is_eog(const hs_engine * engine, int32_t token);

typedef struct hs_chat_message {
    const char * role;              /* "system", "user", "assistant", ... */
    const char * content;
} hs_chat_message;

/* The Jinja chat template stored in the target GGUF ("" if none), for apps with their own Jinja
 * renderer. Valid until the engine is freed. */
HS_API const char * hs_chat_template(const hs_engine * engine);
/* Formats messages with llama.cpp's built-in templates: the one it recognises in the target's
 * template, or `tmpl` (a built-in name such as "chatml"; NULL: the model's). Output as for
 * hs_detokenize. */
HS_API hs_status hs_apply_chat_template(hs_engine * engine, const hs_chat_message * messages, size_t n_messages,
                                        bool add_generation_prompt, const char * tmpl, char * buf,
                                        size_t buf_size, size_t * len_out);

/* ---- generation ------------------------------------------------------------------------- */

typedef struct hs_sampling_params {
    float temperature;              /* <= 0: greedy */
    int32_t top_k;                  /* <= 0: off */
    float top_p;                    /* 1: off */
    float min_p;                    /* 0: off */
    float repeat_penalty;           /* 1: off */
    int32_t repeat_last_n;          /* -1: the whole context */
    uint64_t seed;                  /* UINT64_MAX: random */
} hs_sampling_params;

typedef struct hs_spec_params {
    const char * mode;              /* "auto", "ar" (plain), "chain", "tree" or "heterospec" */
    const char * drafter;           /* NULL or "": the engine's */
    int32_t depth, branching, width, budget;    /* tree shape and verification budget */
    int32_t n_max;                  /* chain: most draft tokens */
    float p_min;                    /* chain: stop below this draft probability */
    const float * policy_thresholds;    /* heterospec: 7 ascending entropy thresholds (NULL: built-in) */
    size_t n_policy_thresholds;
    float policy_gamma[3];          /* heterospec: each in (0, 1] (checked with the built-in thresholds too) */
    bool cost_aware;                /* choose each step's budget by measured cost */
} hs_spec_params;

typedef struct hs_generate_params {
    hs_sampling_params sampling;
    hs_spec_params spec;
    int32_t max_tokens;             /* < 0: until end of generation or a full context */
    const char * const * stop;      /* stop strings: the output ends before the first one */
    size_t n_stop;
    bool ignore_eos;
    bool cache_prompt;              /* reuse the KV of the prefix shared with the previous call */
    int32_t logprobs;               /* >= 0: log-probabilities with this many alternatives (<= 20); -1: none */
    const char * sparse_prefill;    /* this call's sparse prefill: "off", "sample"; NULL: the engine's */
} hs_generate_params;

HS_API hs_generate_params hs_generate_default_params(void);

/* Called for each generated token. `piece` (piece_len bytes, NUL-terminated) is the text that
 * became final with this token: it may be empty, since a multi-byte character or a possible stop
 * string is held back until it completes. The pieces, concatenated, are the result's text.
 * token is -1 for text released at the end with no new token. Return false to stop: the
 * generation ends with finish reason "cancelled". */
typedef bool (*hs_token_callback)(int32_t token, const char * piece, size_t piece_len, void * user_data);

/* Generates from a text prompt (tokenized with add_special and parse_special, as the Python
 * Engine does). `callback` may be NULL. On success *out holds the result (free it with
 * hs_result_free); on failure it is NULL. */
HS_API hs_status hs_generate(hs_engine * engine, const char * prompt, const hs_generate_params * params,
                             hs_token_callback callback, void * user_data, hs_result ** out);
/* The same from prompt tokens. */
HS_API hs_status hs_generate_tokens(hs_engine * engine, const int32_t * prompt, size_t n_prompt,
                                    const hs_generate_params * params, hs_token_callback callback,
                                    void * user_data, hs_result ** out);
/* Ends the generation in progress at its next step (finish reason "cancelled"). Any thread. */
HS_API void hs_cancel(hs_engine * engine);

/* ---- results ---------------------------------------------------------------------------- */

typedef struct hs_stats {
    int32_t prompt_tokens;
    int32_t cached_tokens;          /* prompt tokens reused from the previous call */
    int32_t generated_tokens;
    double prompt_ms;               /* prompt processing, up to the first token */
    double decode_ms;               /* everything after the first token */
    double tokens_per_second;       /* decoding: tokens after the first per second */
    const char * mode;              /* the mode that ran: "ar", "chain", "tree", "heterospec" */
    const char * drafter;           /* the drafter that ran ("" for "ar") */
    int32_t steps;                  /* decoding steps (one target pass each) */
    int32_t target_calls;
    int32_t draft_calls;
    int64_t nodes_verified;         /* draft nodes sent to the target */
    int32_t accepted_draft;         /* accepted draft tokens, whatever their source */
    int32_t accepted_model, accepted_ngram, accepted_mtp;
    double mean_accepted;           /* tokens per step (tau) */
    double draft_ms, verify_ms, host_ms;
    double sparse_kept_fraction;    /* sparse prefill: share of attention columns kept */
    int32_t accepted_eagle3;        /* accepted draft tokens proposed by an EAGLE-3 head */
    int32_t accepted_dflash;        /* accepted draft tokens proposed by a DFlash draft */
} hs_stats;

typedef struct hs_token_logprob {
    int32_t token;
    float logprob;
    size_t n_top;                   /* the alternatives, most likely first */
    const int32_t * top_tokens;
    const float * top_logprobs;
} hs_token_logprob;

HS_API void hs_result_free(hs_result * result);
/* The generated text (stop strings excluded), NUL-terminated; its length in bytes to *len if not NULL. */
HS_API const char * hs_result_text(const hs_result * result, size_t * len);
/* The generated tokens (end-of-generation token excluded) and their count. */
HS_API const int32_t * hs_result_tokens(const hs_result * result, size_t * n);
/* "stop", "length" or "cancelled". */
HS_API const char * hs_result_finish_reason(const hs_result * result);
HS_API hs_stats hs_result_stats(const hs_result * result);
/* Per generated token when params.logprobs >= 0 (else 0 of them). i < the count. */
HS_API size_t hs_result_n_logprobs(const hs_result * result);
HS_API hs_token_logprob hs_result_logprob(const hs_result * result, size_t i);

/* ---- the cost profile ------------------------------------------------------------------- */

/* What verification and drafting cost on this machine, measured once per engine (fresh: again):
 * batch sizes and t_verify(n) in ms, and one draft level in ms. Writes at most n_max entries and
 * the count to *n_out; HS_ERROR_BUFFER_TOO_SMALL when they do not fit. */
HS_API hs_status hs_cost_profile(hs_engine * engine, int32_t width, bool fresh, int32_t * sizes, double * verify_ms,
                                 size_t n_max, size_t * n_out, double * draft_level_ms);
/* Installs a profile measured earlier (apps cache it per model and machine). `projected`: another
 * device's profile, taken as it is. */
HS_API hs_status hs_set_cost_profile(hs_engine * engine, const int32_t * sizes, const double * verify_ms, size_t n,
                                     double draft_level_ms, bool projected);

#ifdef __cplusplus
}
#endif

#endif /* HETEROSPEC_H */
