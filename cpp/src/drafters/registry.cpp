// The drafters by name. A new drafter: its file, and a line here.
#include <stdexcept>

#include "drafters/draft_model.h"
#include "drafters/drafter.h"
#include "drafters/hybrid.h"
#include "drafters/ngram.h"

namespace heterospec {

namespace {

struct Entry {
    const char * name;
    bool needs_model;
    std::unique_ptr<Drafter> (*make)(const DrafterInputs &);
};

const Entry kDrafters[] = {
    {"model", true, [](const DrafterInputs & in) -> std::unique_ptr<Drafter> {
         return std::make_unique<DraftModelDrafter>(in.draft_ctx, in.n_seq_max, *in.draft_cached); }},
    {"ngram", false, [](const DrafterInputs & in) -> std::unique_ptr<Drafter> {
         return std::make_unique<NgramDrafter>(*in.index); }},
    {"hybrid", true, [](const DrafterInputs & in) -> std::unique_ptr<Drafter> {
         return std::make_unique<HybridDrafter>(in.draft_ctx, in.n_seq_max, *in.draft_cached, *in.index); }},
};

const Entry * find(const std::string & name) {
    for (const Entry & e : kDrafters)
        if (name == e.name) return &e;
    return nullptr;
}

}  // namespace

std::vector<NamedDrafter> make_drafters(const DrafterInputs & in) {
    std::vector<NamedDrafter> out;
    for (const Entry & e : kDrafters)
        if (!e.needs_model || in.draft_ctx) out.push_back({e.name, e.make(in)});
    return out;
}

bool drafter_known(const std::string & name) { return find(name) != nullptr; }

bool drafter_needs_model(const std::string & name) {
    const Entry * e = find(name);
    return e && e->needs_model;
}

}  // namespace heterospec
