// Cumulative meta-path top-K entropy (algorithm section 3). Pure logic.
//
// H_K(n): entropy of the K largest draft probabilities at node n, renormalised to sum to one.
// The meta path P* leads to the deepest-layer candidate with the highest q(token | parent);
// H(P*) sums H_K of the distributions along it, from the root to that candidate's parent.
// Low H(P*) marks a predictable context.
#pragma once

#include <cstddef>

#include "draft_tree.h"
#include "sampler.h"

namespace heterospec {

float topk_entropy(const TokenProb * top, size_t k);

// H(P*) of a drafted tree whose expanded nodes carry their H_K (DraftNode::h).
// Returns 0 for a tree with no candidates.
float meta_path_entropy(const DraftTree & tree);

}  // namespace heterospec
