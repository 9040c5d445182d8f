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

// What the target's memory lets a step verify: a tree over an attention cache (a coupled
// sequence per path), a tree over a recurrent state llama.cpp rolls back through its snapshot
// planes (n_rs_seq), each path a sequence of its own (path_batch.h), a chain over a host
// checkpoint of a recurrent state the pin cannot roll back (checkpoint.h), or nothing but plain
// decoding.
enum class Verification { trees, paths, checkpoints, none };

inline bool one_path(Verification v) { return v == Verification::checkpoints; }

// "auto" is heterospec, or plain decoding for a target that cannot verify drafts.
inline Mode resolve_mode(const std::string & name, Verification v) {
    Mode m;
    if (name == "auto") m = v != Verification::none ? Mode::heterospec : Mode::ar;
    else if (name == "ar") m = Mode::ar;
    else if (name == "chain") m = Mode::chain;
    else if (name == "tree") m = Mode::tree;
    else if (name == "heterospec") m = Mode::heterospec;
    else throw std::logic_error("unvalidated mode '" + name + "'");   // config.cpp validates names
    if (m != Mode::ar && v == Verification::none)
        throw std::invalid_argument("mode '" + name + "' cannot run on this target: its recurrent state cannot be "
                                    "rolled back by llama.cpp at this pin, so rejected drafts could not be undone "
                                    "(use mode 'ar')");
    if (m == Mode::tree && one_path(v))
        throw std::invalid_argument("mode 'tree' needs a target whose memory holds a tree: this target's recurrent "
                                    "state is checkpointed and verifies chains (use 'chain', or 'heterospec', which "
                                    "allocates chains)");
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
