#include "policy.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace heterospec {

Policy Policy::builtin() {
    Policy p;
    p.thresholds = {0.3f, 0.6f, 0.9f, 1.2f, 1.6f, 2.0f, 2.6f};
    return p;
}

void Policy::validate() const {
    if (thresholds.size() != 7) throw std::invalid_argument("a policy needs 7 thresholds");
    for (size_t i = 0; i < thresholds.size(); ++i) {
        if (!std::isfinite(thresholds[i])) throw std::invalid_argument("policy thresholds must be finite");
        if (i > 0 && thresholds[i] < thresholds[i - 1])
            throw std::invalid_argument("policy thresholds must be in ascending order");
    }
    for (float g : gamma)
        if (!(g > 0.0f && g <= 1.0f)) throw std::invalid_argument("policy gamma values must be in (0, 1]");
}

int32_t Policy::bin(float h) const {
    return int32_t(std::upper_bound(thresholds.begin(), thresholds.end(), h) - thresholds.begin());
}

Allocation Policy::decide(int32_t b, int32_t depth, int32_t budget) const {
    if (b > 2) return {depth, budget};
    const int32_t extra = alpha(depth) - b;
    return {depth + extra, std::max<int32_t>(1, int32_t(std::lround(gamma[size_t(b)] * float(budget))) + extra)};
}

}  // namespace heterospec
