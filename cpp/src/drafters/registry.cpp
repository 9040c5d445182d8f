// The drafters by name. A new drafter: its file, and a line here.
#include <stdexcept>

#include "drafters/dflash.h"
#include "drafters/draft_model.h"
#include "drafters/eagle3.h"
#include "drafters/drafter.h"
#include "drafters/hybrid.h"
#include "drafters/mtp.h"
#include "drafters/ngram.h"

namespace heterospec {

namespace {

// The paid drafter a hybrid tree merges n-grams into: the draft model's, else the EAGLE-3 head's
// or the DFlash draft's (given as the draft: the user's choice over the target's own MTP layers),
// else the MTP head's.
// The same object as that drafter's own entry: a model's context has one drafter keeping track of
// what its cache holds.
Drafter & paid_drafter(const std::vector<NamedDrafter> & made) {
    for (const char * name : {"model", "eagle3", "dflash", "mtp"})
        for (const NamedDrafter & d : made)
            if (d.name == name) return *d.drafter;
    throw std::logic_error("a hybrid drafter without a paid drafter");
}

struct Entry {
    const char * name;
    bool (*available)(const DrafterInputs &);
    std::unique_ptr<Drafter> (*make)(const DrafterInputs &, const std::vector<NamedDrafter> & made);
    const char * unavailable;   // what to do instead
};

const Entry kDrafters[] = {
    {"model", [](const DrafterInputs & in) { return in.draft_ctx != nullptr; },
     [](const DrafterInputs & in, const std::vector<NamedDrafter> &) -> std::unique_ptr<Drafter> {
         return std::make_unique<DraftModelDrafter>(in.draft_ctx, in.n_seq_max, *in.draft_cached); },
     "drafter 'model' needs a draft model (-md / draft=)"},
    {"mtp", [](const DrafterInputs & in) { return in.mtp_ctx != nullptr; },
     [](const DrafterInputs & in, const std::vector<NamedDrafter> &) -> std::unique_ptr<Drafter> {
         return std::make_unique<MtpDrafter>(in.target_ctx, in.mtp_ctx); },
     "drafter 'mtp' needs a target with MTP (nextn) layers that llama.cpp can run; this one has none "
     "(use drafter 'ngram', or a draft model with 'model')"},
    {"eagle3", [](const DrafterInputs & in) { return in.eagle3_ctx != nullptr; },
     [](const DrafterInputs & in, const std::vector<NamedDrafter> &) -> std::unique_ptr<Drafter> {
         return std::make_unique<Eagle3Drafter>(in.target_ctx, in.eagle3_ctx, in.eagle3_layers); },
     "drafter 'eagle3' needs an EAGLE-3 head (a GGUF of architecture eagle3) as the draft (-md / draft=)"},
    {"dflash", [](const DrafterInputs & in) { return in.dflash_ctx != nullptr; },
     [](const DrafterInputs & in, const std::vector<NamedDrafter> &) -> std::unique_ptr<Drafter> {
         return std::make_unique<DflashDrafter>(in.target_ctx, in.dflash_ctx, *in.dflash); },
     "drafter 'dflash' needs a DFlash draft (a GGUF of architecture dflash) as the draft (-md / draft=)"},
    {"ngram", [](const DrafterInputs &) { return true; },
     [](const DrafterInputs & in, const std::vector<NamedDrafter> &) -> std::unique_ptr<Drafter> { return std::make_unique<NgramDrafter>(*in.index); },
     ""},
    {"hybrid", [](const DrafterInputs & in) { return in.draft_ctx || in.eagle3_ctx || in.dflash_ctx || in.mtp_ctx; },
     [](const DrafterInputs & in, const std::vector<NamedDrafter> & made) -> std::unique_ptr<Drafter> {
         return std::make_unique<HybridDrafter>(paid_drafter(made), *in.index); },
     "drafter 'hybrid' needs a draft model, an EAGLE-3 head or a DFlash draft (-md / draft=), or a target with MTP (nextn) "
     "layers (use 'ngram')"},
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
        if (e.available(in)) out.push_back({e.name, e.make(in, out)});
    return out;
}

bool drafter_known(const std::string & name) { return find(name) != nullptr; }

// Only 'model', 'eagle3' and 'dflash' are known to be unavailable before the target is loaded (MTP layers
// live in it).
bool drafter_needs_model(const std::string & name) { return name == "model" || name == "eagle3" || name == "dflash"; }

std::string drafter_unavailable(const std::string & name) {
    const Entry * e = find(name);
    return e ? e->unavailable : "unknown drafter '" + name + "'";
}

}  // namespace heterospec
