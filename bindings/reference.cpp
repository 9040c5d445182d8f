// llama.cpp's own greedy loop (examples/simple), for tests: the engine's plain decoding must
// produce exactly these tokens. It uses llama.cpp's sampler, not ours.
#include <stdexcept>
#include <string>
#include <vector>

#include "llama.h"
#include "model.h"

namespace heterospec {

std::vector<int32_t> llama_cpp_greedy(const std::string & path, const std::vector<int32_t> & prompt,
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
        const llama_token t = llama_sampler_sample(smpl, ctx.get(), -1);
        if (llama_vocab_is_eog(vocab, t)) break;
        out.push_back(t);
        if (uint32_t(n_pos) >= n_ctx) break;
        next.assign(1, t);
    }
    llama_sampler_free(smpl);
    return out;
}

}  // namespace heterospec
