// Decoding modes, resolved once per generation from SpecParams::mode.
#pragma once

#include <stdexcept>
#include <string>

namespace heterospec {

enum class Mode {
    ar,          // plain decoding
    chain,       // llama.cpp's draft-model chain
    tree,        // fixed tree shape and budget
    heterospec,  // the tree allocated per step (entropy bins; cost-aware or the paper's gamma)
};

// "auto" is heterospec, or plain decoding for a target whose memory cannot hold a draft tree
// (recurrent and hybrid models).
inline Mode resolve_mode(const std::string & name, bool trees) {
    Mode m;
    if (name == "auto") m = trees ? Mode::heterospec : Mode::ar;
    else if (name == "ar") m = Mode::ar;
    else if (name == "chain") m = Mode::chain;
    else if (name == "tree") m = Mode::tree;
    else if (name == "heterospec") m = Mode::heterospec;
    else throw std::logic_error("unvalidated mode '" + name + "'");   // config.cpp validates names
    if (m != Mode::ar && !trees)
        throw std::invalid_argument("mode '" + name + "' needs a target with attention-only memory: this one is "
                                    "recurrent or hybrid and cannot hold a draft tree (use mode 'ar')");
    return m;
}

inline const char * mode_name(Mode m) {
    switch (m) {
        case Mode::ar: return "ar";
        case Mode::chain: return "chain";
        case Mode::tree: return "tree";
        case Mode::heterospec: return "heterospec";
    }
    return "?";
}

}  // namespace heterospec
