// HeteroSpec's allocation policy (algorithm section 4). Pure logic.
//
// Seven sorted thresholds split H(P*) into eight bins. For the three lowest (predictable)
// bins i = 0, 1, 2 the step drafts deeper, d + (alpha - i) levels, and verifies fewer nodes,
// round(gamma_i * N) + (alpha - i); bins 3..7 keep the base depth d and budget N.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace heterospec {

struct Allocation {
    int32_t depth;
    int32_t budget;
};

struct Policy {
    std::vector<float> thresholds;              // 7, ascending (fitted by `heterospec calibrate`)
    std::array<float, 3> gamma = {0.3f, 0.6f, 1.0f};

    // Built-in default, used without a calibration file: thresholds spread over the range of
    // H(P*) seen for top-4 trees of depth 4 (each H_K is at most log 4 ~ 1.39).
    static Policy builtin();

    // Throws std::invalid_argument unless there are 7 ascending finite thresholds and gammas in (0, 1].
    void validate() const;

    // Bin i holds thresholds[i-1] <= h < thresholds[i].
    int32_t bin(float h) const;
    static int32_t alpha(int32_t depth) { return (depth + 1) / 2; }
    Allocation decide(int32_t bin, int32_t depth, int32_t budget) const;
};

}  // namespace heterospec
