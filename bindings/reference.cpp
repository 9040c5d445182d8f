// llama.cpp's own greedy loop (examples/simple), for tests: the engine's plain decoding must
// produce exactly these tokens. It uses llama.cpp's sampler, not ours.
#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "llama.h"
#include "model.h"

namespace heterospec {

// Also returns, per generated token, the gap between the two largest logits: where it is tiny,
// batch-shape rounding in llama.cpp's kernels can flip the argmax.
std::pair<std::vector<int32_t>, std::vector<float>>
llama_cpp_greedy(const std::string & path, const std::vector<int32_t> & prompt,
                 int32_t n_predict, uint32_t n_ctx, int32_t n_threads) {
    ModelOptions mo;
    mo.path = path;
    ModelPtr model = load_model(mo);
    const llama_vocab * vocab = llama_model_get_vocab(model.get());

    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = n_ctx;
    cp.n_batch = std::max<uint32_t>(uint32_t(prompt.size()), 1);
    cp.n_threads = cp.n_threads_batch = n_threads;
    ContextPtr ctx(llama_init_from_model(model.get(), cp));
    if (!ctx) throw std::runtime_error("reference: cannot create context");

    llama_sampler * smpl = llama_sampler_chain_init(llama_sampler_chain_default_params());
    llama_sampler_chain_add(smpl, llama_sampler_init_greedy());
    BatchPtr batch(llama_batch_ext_init(ctx.get()));

    std::vector<int32_t> out;
    std::vector<float> gaps;
    const int32_t n_vocab = llama_vocab_n_tokens(vocab);
    std::vector<int32_t> next = prompt;
    llama_pos n_pos = 0;
    while (int32_t(out.size()) < n_predict) {
        llama_batch_ext_clear(batch.get());
        for (size_t i = 0; i < next.size(); ++i) {
            const int32_t idx = llama_batch_ext_add_token(batch.get(), 0, next[i]);
            const llama_pos pos = n_pos + llama_pos(i);
            llama_batch_ext_set_pos(batch.get(), idx, &pos);
        }
        llama_batch_ext_set_output_logits(batch.get(), int32_t(next.size()) - 1, true);
        if (llama_process(ctx.get(), LLAMA_PROCESS_TYPE_DECODE, batch.get()) != 0) break;
        n_pos += llama_pos(next.size());
        const float * l = llama_get_logits_ith(ctx.get(), -1);
        float a = -INFINITY, b = -INFINITY;
        for (int32_t i = 0; i < n_vocab; ++i) {
            if (l[i] > a) { b = a; a = l[i]; } else if (l[i] > b) b = l[i];
        }
        const llama_token t = llama_sampler_sample(smpl, ctx.get(), -1);
        if (llama_vocab_is_eog(vocab, t)) break;
        out.push_back(t);
        gaps.push_back(a - b);
        if (uint32_t(n_pos) >= n_ctx) break;
        next.assign(1, t);
    }
    llama_sampler_free(smpl);
    return {out, gaps};
}

}  // namespace heterospec

// For tests: the target logits of every entry of one tree verification pass, next to the logits
// of decoding each entry's path on its own in a fresh single-sequence context.
#include "draft_tree.h"
#include "verifier.h"

namespace heterospec {

std::pair<std::vector<std::vector<float>>, std::vector<std::vector<float>>>
tree_vs_paths(const std::string & path, const std::vector<int32_t> & prompt,
              const std::vector<int32_t> & parents, const std::vector<int32_t> & tokens, int32_t n_threads) {
    ModelOptions mo;
    mo.path = path;
    ModelPtr model = load_model(mo);
    const int32_t n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model.get()));

    DraftTree tree;
    tree.reset(prompt.back());
    std::vector<int32_t> sel;
    for (size_t i = 0; i < tokens.size(); ++i) sel.push_back(tree.add(parents[i], tokens[i], 0.5f));
    TreeBatch tb;
    tb.build(tree, sel);

    // room for the prompt and the tree (long prompts test attention past 512 keys)
    const uint32_t n_ctx = std::max<uint32_t>(512, uint32_t(prompt.size() + tokens.size() + 255) / 256 * 256);
    ContextSpec spec{n_ctx, 512, 64, true, n_threads, n_threads, "auto", "f16", "f16"};
    ContextPtr ctx = make_context(model.get(), spec);
    CachedTokens cached;
    Verifier v(ctx.get(), 64, cached);
    std::vector<int32_t> prefix(prompt.begin(), prompt.end() - 1);
    v.begin(prefix, false);
    v.decode(tb, llama_pos(prefix.size()));
    std::vector<std::vector<float>> tree_rows(tokens.size() + 1), path_rows(tokens.size() + 1);
    for (int32_t e = 0; e < tb.size(); ++e) {
        const float * l = v.logits(e);
        tree_rows[size_t(tb.node[size_t(e)])].assign(l, l + n_vocab);
    }

    ContextSpec plain{n_ctx, n_ctx, 1, false, n_threads, n_threads, "auto", "f16", "f16"};   // each path in one batch
    for (int32_t n = 0; n < tree.size(); ++n) {
        std::vector<int32_t> seq;
        for (int32_t a = n; a > 0; a = tree[a].parent) seq.push_back(tree[a].token);
        seq.push_back(prompt.back());
        seq.insert(seq.end(), prefix.rbegin(), prefix.rend());
        std::reverse(seq.begin(), seq.end());
        ContextPtr c = make_context(model.get(), plain);
        BatchPtr b(llama_batch_ext_init(c.get()));
        for (size_t i = 0; i < seq.size(); ++i) {
            const int32_t idx = llama_batch_ext_add_token(b.get(), 0, seq[i]);
            const llama_pos pos = llama_pos(i);
            llama_batch_ext_set_pos(b.get(), idx, &pos);
        }
        llama_batch_ext_set_output_logits(b.get(), int32_t(seq.size()) - 1, true);
        if (llama_process(c.get(), LLAMA_PROCESS_TYPE_DECODE, b.get()) != 0) throw std::runtime_error("decode failed");
        const float * l = llama_get_logits_ith(c.get(), -1);
        path_rows[size_t(n)].assign(l, l + n_vocab);
    }
    return {tree_rows, path_rows};
}

}  // namespace heterospec
