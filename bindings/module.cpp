// Python bindings: type conversion, GIL release around native work, error mapping.
// The option structs are bound field by field so that Python never restates a default.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/function.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include "ggml-backend.h"
#include "llama.h"

#include "heterospec/engine.h"
#include "heterospec/errors.h"
#include "draft_tree.h"
#include "eagle3_head.h"
#include "cost_model.h"
#include "entropy.h"
#include "path_batch.h"
#include "policy.h"
#include "sampler.h"
#include "sparse_prefill.h"
#include "suffix_index.h"
#include "topk.h"
#include "text_stream.h"
#include "verifier.h"

namespace nb = nanobind;
using namespace nb::literals;
using namespace heterospec;

using release_gil = nb::call_guard<nb::gil_scoped_release>;

namespace heterospec {
std::pair<std::vector<int32_t>, std::vector<float>>
llama_cpp_greedy(const std::string & path, const std::vector<int32_t> & prompt,
                 int32_t n_predict, uint32_t n_ctx, int32_t n_threads);
std::pair<std::vector<std::vector<float>>, std::vector<std::vector<float>>>
tree_vs_paths(const std::string & path, const std::vector<int32_t> & prompt,
              const std::vector<int32_t> & parents, const std::vector<int32_t> & tokens, int32_t n_threads);
}

NB_MODULE(_core, m) {
    m.doc() = "HeteroSpec native engine";

    // Where the numbers come from: the llama.cpp build and the devices it sees.
    m.def("build_info", []() {
        nb::dict d;
        d["sparse_prefill"] = sparse_prefill_available();
        d["llama_cpp"] = HETEROSPEC_LLAMA_CPP_SOURCE;
        d["system_info"] = std::string(llama_print_system_info());
        std::vector<std::string> devices;
        for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
            ggml_backend_dev_t dev = ggml_backend_dev_get(i);
            devices.push_back(std::string(ggml_backend_dev_name(dev)) + ": " + ggml_backend_dev_description(dev));
        }
        d["devices"] = devices;
        return d;
    });

    nb::register_exception_translator([](const std::exception_ptr & p, void *) {
        try {
            std::rethrow_exception(p);
        } catch (const FileNotFound & e) {
            PyErr_SetString(PyExc_FileNotFoundError, e.what());
        }
    });

    nb::class_<ModelOptions>(m, "ModelOptions")
        .def(nb::init<>())
        .def_rw("path", &ModelOptions::path)
        .def_rw("n_gpu_layers", &ModelOptions::n_gpu_layers);

    nb::class_<SparsePrefillOptions>(m, "SparsePrefillOptions")
        .def(nb::init<>())
        .def_rw("mode", &SparsePrefillOptions::mode)
        .def_rw("alpha", &SparsePrefillOptions::alpha)
        .def_rw("row_frac", &SparsePrefillOptions::row_frac)
        .def_rw("window_frac", &SparsePrefillOptions::window_frac)
        .def_rw("k_max_frac", &SparsePrefillOptions::k_max_frac)
        .def_rw("min_ctx", &SparsePrefillOptions::min_ctx)
        .def_rw("dense_tail", &SparsePrefillOptions::dense_tail);

    nb::class_<EngineOptions>(m, "EngineOptions")
        .def(nb::init<>())
        .def_rw("target", &EngineOptions::target)
        .def_rw("draft", &EngineOptions::draft)
        .def_rw("n_ctx", &EngineOptions::n_ctx)
        .def_rw("n_batch", &EngineOptions::n_batch)
        .def_rw("n_threads", &EngineOptions::n_threads)
        .def_rw("n_threads_batch", &EngineOptions::n_threads_batch)
        .def_rw("flash_attn", &EngineOptions::flash_attn)
        .def_rw("cache_type_k", &EngineOptions::cache_type_k)
        .def_rw("cache_type_v", &EngineOptions::cache_type_v)
        .def_rw("drafter", &EngineOptions::drafter)
        .def_rw("max_nodes", &EngineOptions::max_nodes)
        .def_rw("sparse_prefill", &EngineOptions::sparse_prefill)
        .def_rw("verbose", &EngineOptions::verbose);

    nb::class_<SamplingParams>(m, "SamplingParams")
        .def(nb::init<>())
        .def_rw("temperature", &SamplingParams::temperature)
        .def_rw("top_k", &SamplingParams::top_k)
        .def_rw("top_p", &SamplingParams::top_p)
        .def_rw("min_p", &SamplingParams::min_p)
        .def_rw("repeat_penalty", &SamplingParams::repeat_penalty)
        .def_rw("repeat_last_n", &SamplingParams::repeat_last_n)
        .def_rw("seed", &SamplingParams::seed);

    nb::class_<SpecParams>(m, "SpecParams")
        .def(nb::init<>())
        .def_rw("mode", &SpecParams::mode)
        .def_rw("drafter", &SpecParams::drafter)
        .def_rw("depth", &SpecParams::depth)
        .def_rw("branching", &SpecParams::branching)
        .def_rw("width", &SpecParams::width)
        .def_rw("budget", &SpecParams::budget)
        .def_rw("n_max", &SpecParams::n_max)
        .def_rw("p_min", &SpecParams::p_min)
        .def_rw("policy_thresholds", &SpecParams::policy_thresholds)
        .def_rw("policy_gamma", &SpecParams::policy_gamma)
        .def_rw("cost_aware", &SpecParams::cost_aware)
        .def_rw("trace", &SpecParams::trace);

    nb::class_<GenerateParams>(m, "GenerateParams")
        .def(nb::init<>())
        .def_rw("sampling", &GenerateParams::sampling)
        .def_rw("spec", &GenerateParams::spec)
        .def_rw("max_tokens", &GenerateParams::max_tokens)
        .def_rw("stop", &GenerateParams::stop)
        .def_rw("ignore_eos", &GenerateParams::ignore_eos)
        .def_rw("cache_prompt", &GenerateParams::cache_prompt)
        .def_rw("logprobs", &GenerateParams::logprobs)
        .def_rw("sparse_prefill", &GenerateParams::sparse_prefill);

    nb::class_<Stats>(m, "Stats")
        .def_ro("prompt_tokens", &Stats::prompt_tokens)
        .def_ro("cached_tokens", &Stats::cached_tokens)
        .def_ro("generated_tokens", &Stats::generated_tokens)
        .def_ro("prompt_ms", &Stats::prompt_ms)
        .def_ro("sparse_kept_fraction", &Stats::sparse_kept_fraction)
        .def_ro("sparse_columns", &Stats::sparse_columns)
        .def_ro("decode_ms", &Stats::decode_ms)
        .def_ro("mode", &Stats::mode)
        .def_ro("drafter", &Stats::drafter)
        .def_ro("accepted_model", &Stats::accepted_model)
        .def_ro("accepted_ngram", &Stats::accepted_ngram)
        .def_ro("accepted_mtp", &Stats::accepted_mtp)
        .def_ro("accepted_eagle3", &Stats::accepted_eagle3)
        .def_ro("accepted_dflash", &Stats::accepted_dflash)
        .def_ro("profile_scale", &Stats::profile_scale)
        .def_ro("accepted_draft", &Stats::accepted_draft)
        .def_ro("steps", &Stats::steps)
        .def_ro("target_calls", &Stats::target_calls)
        .def_ro("draft_calls", &Stats::draft_calls)
        .def_ro("nodes_verified", &Stats::nodes_verified)
        .def_ro("draft_ms", &Stats::draft_ms)
        .def_ro("verify_ms", &Stats::verify_ms)
        .def_ro("host_ms", &Stats::host_ms)
        .def_ro("predicted_steps", &Stats::predicted_steps)
        .def_ro("predicted_tokens", &Stats::predicted_tokens)
        .def_ro("realised_tokens", &Stats::realised_tokens)
        .def_prop_ro("mean_accepted", &Stats::mean_accepted)
        .def_prop_ro("mean_nodes", &Stats::mean_nodes)
        .def_prop_ro("prompt_tokens_per_second", &Stats::prompt_tokens_per_second)
        .def_prop_ro("tokens_per_second", &Stats::tokens_per_second);

    nb::class_<Result>(m, "Result")
        .def_ro("text", &Result::text)
        .def_ro("tokens", &Result::tokens)
        .def_ro("finish_reason", &Result::finish_reason)
        .def_ro("stats", &Result::stats)
        .def_prop_ro("trace", [](const Result & r) {
            std::vector<std::tuple<int32_t, int32_t, int32_t, int32_t, float, int32_t, float, int32_t, int32_t, int32_t>> out;
            for (const auto & t : r.trace) out.emplace_back(t.depth, t.nodes, t.accepted, t.rank, t.entropy, t.bin, t.predicted, t.levels, t.paths, t.batch);
            return out;
        })
        .def_prop_ro("logprobs", [](const Result & r) {
            std::vector<std::tuple<int32_t, float, std::vector<std::pair<int32_t, float>>>> out;
            for (const auto & l : r.logprobs) out.emplace_back(l.token, l.logprob, l.top);
            return out;
        });

    nb::class_<Engine>(m, "Engine")
        .def(nb::init<const EngineOptions &>(), "options"_a, release_gil())
        .def_prop_ro("n_vocab", &Engine::n_vocab)
        .def_prop_ro("n_ctx", &Engine::n_ctx)
        .def_prop_ro("has_draft", &Engine::has_draft)
        .def_prop_ro("has_mtp", &Engine::has_mtp)
        .def_prop_ro("drafters", &Engine::drafters)
        .def_prop_ro("can_speculate", &Engine::can_speculate)
        .def_prop_ro("description", &Engine::model_description)
        .def("tokenize", &Engine::tokenize, "text"_a, "add_special"_a, "parse_special"_a)
        .def("detokenize", &Engine::detokenize, "tokens"_a, "special"_a)
        .def("is_eog", &Engine::is_eog, "token"_a)
        .def_prop_ro("chat_template", &Engine::chat_template)
        .def_prop_ro("special_tokens", [](const Engine & e) {
            const SpecialTokens s = e.special_tokens();
            return nb::make_tuple(s.bos, s.eos, s.add_bos, s.add_eos);
        })
        .def("cancel", &Engine::cancel)
        .def("format_chat",
             [](const Engine & e, const std::vector<std::pair<std::string, std::string>> & msgs,
                bool add_generation_prompt, const std::string & tmpl) {
                 std::vector<ChatMessage> v;
                 for (const auto & [role, content] : msgs) v.push_back({role, content});
                 return e.format_chat(v, add_generation_prompt, tmpl);
             },
             "messages"_a, "add_generation_prompt"_a, "template"_a)
        .def("start", &Engine::start, "prompt"_a, "params"_a, release_gil())
        .def("step",
             [](Engine & e) {
                 StepOutput out;
                 {
                     nb::gil_scoped_release release;
                     out = e.step();
                 }
                 return nb::make_tuple(out.text, out.done);
             })
        .def("result", &Engine::result)
        .def("check", &Engine::check, "prompt"_a, "params"_a)
        .def("score", [](Engine & e, const std::vector<int32_t> & prompt, const std::vector<int32_t> & continuation,
                         bool cache_prompt, const std::string & sparse_prefill) {
            std::pair<std::vector<float>, Stats> r;
            {
                nb::gil_scoped_release release;
                r = e.score(prompt, continuation, cache_prompt, sparse_prefill);
            }
            const size_t n = r.first.size();
            float * data = new float[n];
            std::copy(r.first.begin(), r.first.end(), data);
            nb::capsule owner(data, [](void * p) noexcept { delete[] static_cast<float *>(p); });
            const size_t shape[2] = {continuation.size(), size_t(e.n_vocab())};
            return nb::make_tuple(nb::ndarray<nb::numpy, float, nb::ndim<2>>(data, 2, shape, owner), r.second);
        }, "prompt"_a, "continuation"_a, "cache_prompt"_a = false, "sparse_prefill"_a = "")
        .def("logprobs_since", [](const Engine & e, size_t from) {
            std::vector<std::tuple<int32_t, float, std::vector<std::pair<int32_t, float>>>> out;
            for (const auto & l : e.logprobs_since(from)) out.emplace_back(l.token, l.logprob, l.top);
            return out;
        }, "from"_a)
        .def("token_piece", [](const Engine & e, int32_t token) {
            const std::string s = e.token_piece(token);
            return nb::bytes(s.data(), s.size());
        }, "token"_a)
        .def("debug_kv_state", &Engine::debug_kv_state)
        .def("debug_n_past", &Engine::debug_n_past)
        .def("clear_ngram_memory", &Engine::clear_ngram_memory)
        .def("debug_wrong_rule", &Engine::debug_wrong_rule, "on"_a)
        .def("debug_record_states", &Engine::debug_record_states, "on"_a)
        .def("debug_states", &Engine::debug_states, "name"_a)
        .def("cost_profile", &Engine::cost_profile, "width"_a = 4, "fresh"_a = false, "progress"_a = nb::none(),
             release_gil())
        .def("set_cost_profile", &Engine::set_cost_profile, "sizes"_a, "verify_ms"_a, "draft_level_ms"_a,
             "projected"_a = false)
        .def("generate", &Engine::generate, "prompt"_a, "params"_a, release_gil());

    // Pure logic, exposed for unit tests.
    nb::module_ t = m.def_submodule("testing", "pure-logic units, for tests");
    t.def("sanitize_utf8", [](nb::bytes b) { return sanitize_utf8(std::string_view(b.c_str(), b.size())); });
    t.def("complete_utf8_prefix",
          [](nb::bytes b) { return complete_utf8_prefix(std::string_view(b.c_str(), b.size())); });

    t.def("llama_cpp_greedy", &llama_cpp_greedy, "path"_a, "prompt"_a, "n_predict"_a, "n_ctx"_a, "n_threads"_a,
          release_gil(), "llama.cpp's own greedy loop (examples/simple): tokens and top-2 logit gaps");

    t.def("check_eagle3_head", [](const std::vector<int32_t> & layers, int64_t target_hidden, int64_t n_embd,
                                  bool own_embedding, bool own_output, const std::string & arch, int64_t n_layer,
                                  int64_t target_n_embd, bool rollback) {
        Eagle3Head h;
        h.layers = layers;
        h.target_hidden = target_hidden;
        h.n_embd = n_embd;
        h.own_embedding = own_embedding;
        h.own_output = own_output;
        check_eagle3_head(h, {arch, n_layer, target_n_embd, rollback}, "head.gguf", "target.gguf");
    }, "layers"_a, "target_hidden"_a, "n_embd"_a, "own_embedding"_a, "own_output"_a, "arch"_a, "n_layer"_a,
       "target_n_embd"_a, "rollback"_a, "whether an EAGLE-3 head fits a target (raises ValueError if not)");

    t.def("tree_vs_paths", &tree_vs_paths, "path"_a, "prompt"_a, "parents"_a, "tokens"_a, "n_threads"_a,
          release_gil(), "logits of one tree pass, and of each path decoded alone (node order)");

    nb::class_<TextStream>(t, "TextStream")
        .def(nb::init<std::vector<std::string>>(), "stop"_a = std::vector<std::string>())
        .def("push", [](TextStream & s, nb::bytes b) { return s.push(std::string_view(b.c_str(), b.size())); })
        .def("take_ready", &TextStream::take_ready)
        .def("finish", &TextStream::finish)
        .def("text", &TextStream::text)
        .def_prop_ro("stopped", &TextStream::stopped);

    // the draft tree and its batch layout
    nb::class_<DraftTree>(t, "DraftTree")
        .def(nb::init<>())
        .def("reset", &DraftTree::reset, "root_token"_a)
        .def("add", &DraftTree::add, "parent"_a, "token"_a, "q"_a, "source"_a = uint8_t(kFromModel))
        .def("add_or_merge", &DraftTree::add_or_merge, "parent"_a, "token"_a, "q"_a, "source"_a)
        .def("set_entropy", &DraftTree::set_entropy, "node"_a, "h"_a)
        .def("__len__", &DraftTree::size)
        .def("node", [](const DraftTree & t, int32_t i) {
            if (i < 0 || i >= t.size()) throw nb::index_error();
            const DraftNode & n = t[i];
            return nb::make_tuple(n.token, n.parent, n.depth, n.q, n.v);
        })
        .def("source", [](const DraftTree & t, int32_t i) {
            if (i < 0 || i >= t.size()) throw nb::index_error();
            return t[i].source;
        })
        .def("select", [](const DraftTree & t, size_t n) { std::vector<int32_t> out; t.select(n, out); return out; })
        .def("select_one_path", [](const DraftTree & t, size_t n) {
            std::vector<int32_t> out; t.select(n, out); keep_one_path(t, out); return out; })
        .def("select_by", [](const DraftTree & t, const std::vector<float> & score, size_t n) {
            if (int32_t(score.size()) != t.size()) throw std::invalid_argument("one score per node");
            std::vector<int32_t> out; t.select_by(score, n, out); return out; })
        .def("top", [](const DraftTree & t, const std::vector<int32_t> & cand, size_t n) {
            std::vector<int32_t> out; t.top(cand, n, out); return out; });

    nb::class_<TreeBatch>(t, "TreeBatch")
        .def(nb::init<>())
        .def("build", &TreeBatch::build, "tree"_a, "selected"_a)
        .def_ro("node", &TreeBatch::node)
        .def_ro("token", &TreeBatch::token)
        .def_ro("depth", &TreeBatch::depth)
        .def_ro("parent", &TreeBatch::parent)
        .def_ro("rank", &TreeBatch::rank)
        .def_ro("path", &TreeBatch::path)
        .def_ro("n_paths", &TreeBatch::n_paths)
        .def("seqs_of", [](const TreeBatch & b, int32_t i) {
            return std::vector<int32_t>(b.seqs.begin() + b.seq_begin[size_t(i)], b.seqs.begin() + b.seq_begin[size_t(i) + 1]); })
        .def("children_of", [](const TreeBatch & b, int32_t i) {
            return std::vector<int32_t>(b.children.begin() + b.child_begin[size_t(i)], b.children.begin() + b.child_begin[size_t(i) + 1]); })
        .def("child_with_token", &TreeBatch::child_with_token);

    // the same batch laid out path by path, for recurrent state
    nb::class_<PathBatch>(t, "PathBatch")
        .def(nb::init<>())
        .def("build", &PathBatch::build, "batch"_a)
        .def_ro("n_paths", &PathBatch::n_paths)
        .def_ro("len", &PathBatch::len)
        .def_ro("token", &PathBatch::token)
        .def_ro("entry", &PathBatch::entry)
        .def_ro("row", &PathBatch::row)
        .def("outputs", &PathBatch::outputs, "row"_a);
    t.def("fit_path_batch", [](const DraftTree & tree, const std::vector<int32_t> & selected, int32_t max_paths,
                               int32_t max_depth, int32_t max_tokens) {
        std::vector<int32_t> kept, tokens;
        std::vector<uint8_t> scratch;
        fit_path_batch(tree, selected, max_paths, max_depth, max_tokens, kept, tokens, scratch);
        return nb::make_tuple(kept, tokens);
    }, "tree"_a, "selected"_a, "max_paths"_a, "max_depth"_a, "max_tokens"_a);
    t.def("paths_within", &paths_within, "state_bytes"_a, "planes"_a, "budget"_a, "most"_a);

    // the acceptance walk on synthetic logits: rows[e] holds entry e's logits, the target's
    // choice is their argmax; emitting `stop_token` ends generation
    t.def("walk_tree", [](const TreeBatch & tb, const std::vector<std::vector<float>> & rows, int32_t stop_token) {
        if (int32_t(rows.size()) != tb.size()) throw std::invalid_argument("one logits row per batch entry");
        std::vector<int32_t> emitted, accepted;
        const WalkResult w = walk_tree(
            tb, [&](int32_t e) {
                const auto & r = rows[size_t(e)];
                return int32_t(std::max_element(r.begin(), r.end()) - r.begin());
            },
            [&](int32_t y) { emitted.push_back(y); return y != stop_token; }, accepted);
        return nb::make_tuple(w.last, w.token, w.emitted, w.stopped, accepted, emitted);
    }, "batch"_a, "rows"_a, "stop_token"_a = -1);
    nb::class_<AcceptanceModel>(t, "AcceptanceModel")
        .def(nb::init<>())
        .def("estimate", [](const AcceptanceModel & m, float q, float h_parent, int32_t path_bin, float agreement) {
            return m.estimate({q, h_parent, path_bin, agreement, kFromModel}); }, "q"_a, "h_parent"_a, "path_bin"_a, "agreement"_a)
        .def("observe", [](AcceptanceModel & m, float q, float h_parent, int32_t path_bin, float agreement, bool accepted) {
            m.observe({q, h_parent, path_bin, agreement, kFromModel}, accepted); },
             "q"_a, "h_parent"_a, "path_bin"_a, "agreement"_a, "accepted"_a)
        .def("begin_generation", &AcceptanceModel::begin_generation);
    t.def("worth_extending", [](const std::vector<int32_t> & sizes, const std::vector<double> & verify_ms,
                                const std::vector<float> & values, const std::vector<float> & child_values,
                                int32_t max_budget, double spent_ms, double level_ms, bool block_levels) {
        CostProfile p{sizes, verify_ms, 0.0, 0.0, block_levels};
        std::vector<float> scratch;
        return worth_extending(p, values, child_values, max_budget, spent_ms, level_ms, 0.0, scratch);
    }, "sizes"_a, "verify_ms"_a, "values"_a, "child_values"_a, "max_budget"_a, "spent_ms"_a, "level_ms"_a,
       "block_levels"_a = false);

    // model-free drafting's memory
    nb::class_<SuffixIndex>(t, "SuffixIndex")
        .def(nb::init<size_t>(), "capacity"_a = SuffixIndex::kDefaultCapacity)
        .def("begin_document", &SuffixIndex::begin_document)
        .def("push", [](SuffixIndex & ix, const std::vector<int32_t> & tokens) { for (int32_t t : tokens) ix.push(t); })
        .def("__len__", &SuffixIndex::size)
        .def("match", [](const SuffixIndex & ix, size_t max_starts, size_t scan) {
            std::vector<int32_t> starts;
            const int32_t n = ix.match(max_starts, scan, starts);
            return nb::make_tuple(n, starts);
        }, "max_starts"_a = 16, "scan"_a = 64)
        .def("trie", [](const SuffixIndex & ix, const std::vector<int32_t> & starts, int32_t depth,
                        size_t max_nodes) {
            std::vector<TrieNode> out;
            continuation_trie(ix, starts, depth, max_nodes, out);
            std::vector<std::tuple<int32_t, int32_t, int32_t>> r;
            for (const TrieNode & n : out) r.push_back({n.token, n.parent, n.count});
            return r;
        }, "starts"_a, "depth"_a, "max_nodes"_a = size_t(256));

    t.def("topk_entropy", [](const std::vector<float> & probs) {
        std::vector<TokenProb> v;
        for (size_t i = 0; i < probs.size(); ++i) v.push_back({int32_t(i), probs[i]});
        return topk_entropy(v.data(), v.size());
    }, "probs"_a);
    t.def("meta_path_entropy", &meta_path_entropy, "tree"_a);
    t.def("policy_decide", [](const std::vector<float> & thresholds, const std::vector<float> & gamma, float h,
                              int32_t depth, int32_t budget) {
        Policy p;
        p.thresholds = thresholds;
        std::copy(gamma.begin(), gamma.end(), p.gamma.begin());
        p.validate();
        const int32_t b = p.bin(h);
        const Allocation a = p.decide(b, depth, budget);
        return nb::make_tuple(b, a.depth, a.budget);
    }, "thresholds"_a, "gamma"_a, "h"_a, "depth"_a, "budget"_a);

    t.def("choose_budget", [](const std::vector<int32_t> & sizes, const std::vector<double> & verify_ms,
                              const std::vector<float> & values, int32_t max_budget, double draft_ms,
                              double checkpoint_ms, std::optional<std::vector<int32_t>> batch_tokens) {
        CostProfile p{sizes, verify_ms, 0.0, checkpoint_ms};
        // uncalibrated: a node's acceptance estimate is its value V
        return choose_budget(p, values, max_budget, draft_ms, 0.0, batch_tokens ? &*batch_tokens : nullptr).budget;
    }, "sizes"_a, "verify_ms"_a, "values"_a, "max_budget"_a, "draft_ms"_a, "checkpoint_ms"_a = 0.0,
       "batch_tokens"_a = nb::none());
    t.def("worth_drafting", [](const std::vector<int32_t> & sizes, const std::vector<double> & verify_ms,
                               float top_value, int32_t max_budget, double spent_ms, double level_ms,
                               double checkpoint_ms, bool block_levels) {
        CostProfile p{sizes, verify_ms, 0.0, checkpoint_ms, block_levels};
        return worth_drafting(p, top_value, max_budget, spent_ms, level_ms);
    }, "sizes"_a, "verify_ms"_a, "top_value"_a, "max_budget"_a, "spent_ms"_a, "level_ms"_a, "checkpoint_ms"_a = 0.0,
       "block_levels"_a = false);
    t.def("worth_paid_levels", [](const std::vector<int32_t> & sizes, const std::vector<double> & verify_ms,
                                  const std::vector<float> & free_values, float agreement, int32_t max_budget,
                                  int32_t max_depth, double spent_ms, double level_ms, bool block_levels) {
        CostProfile p{sizes, verify_ms, 0.0, 0.0, block_levels};
        std::vector<float> scratch;
        return worth_paid_levels(p, free_values, agreement, max_budget, max_depth, spent_ms, level_ms, 0.0, scratch);
    }, "sizes"_a, "verify_ms"_a, "free_values"_a, "agreement"_a, "max_budget"_a, "max_depth"_a, "spent_ms"_a,
       "level_ms"_a, "block_levels"_a = false);

    // the cost model's paid-source state: its agreement estimate and the should_pay decision
    nb::class_<CostModel>(t, "CostModel")
        .def("__init__", [](CostModel * c, const std::vector<int32_t> & sizes, const std::vector<double> & verify_ms,
                            double draft_level_ms) {
            new (c) CostModel();
            c->profile = CostProfile{sizes, verify_ms, draft_level_ms, 0.0};
            c->projected = true;
        }, "sizes"_a, "verify_ms"_a, "draft_level_ms"_a)
        .def("should_pay", &CostModel::should_pay, "free_values"_a, "max_budget"_a, "max_depth"_a, "spent_ms"_a)
        .def("observe_paid_agreement", &CostModel::observe_paid_agreement, "agreed"_a)
        .def_prop_ro("paid_agreement", &CostModel::paid_agreement);

    t.def("softmax_top_k", [](nb::ndarray<const float, nb::ndim<1>, nb::c_contig, nb::device::cpu> logits, int32_t k) {
        std::vector<TokenProb> out;
        softmax_top_k(logits.data(), int32_t(logits.shape(0)), k, out);
        std::vector<std::pair<int32_t, float>> r;
        for (const auto & tp : out) r.push_back({tp.id, tp.p});
        return r;
    }, "logits"_a, "k"_a);

    nb::class_<Sampler>(t, "Sampler")
        .def(nb::init<const SamplingParams &, int32_t>(), "params"_a, "n_vocab"_a)
        .def("distribution",
             [](Sampler & s, nb::ndarray<const float, nb::ndim<1>, nb::c_contig, nb::device::cpu> logits,
                std::vector<int32_t> history) {
                 if (int64_t(logits.shape(0)) != s.n_vocab())
                     throw std::invalid_argument("logits must have n_vocab entries");
                 const auto & d = s.distribution(logits.data(), history.data(), history.size());
                 std::vector<std::pair<int32_t, float>> out;
                 for (const auto & tp : d) out.push_back({tp.id, tp.p});
                 return out;
             },
             "logits"_a, "history"_a = std::vector<int32_t>())
        .def("draw",
             [](Sampler & s, const std::vector<std::pair<int32_t, float>> & dist) {
                 std::vector<TokenProb> d;
                 for (const auto & [id, p] : dist) d.push_back({id, p});
                 return s.draw(d);
             },
             "dist"_a)
        .def_prop_ro("seed", &Sampler::seed);
}
