// Cost-aware budget (beyond the paper; algorithm section 4). Pure logic.
//
// The engine measures, for the models and machine at hand, what verifying n tokens costs
// (t_verify(n), for a ladder of n) and what one draft level costs. Each step it picks the
// budget that maximises expected tokens per second,
//     N* = argmax_n (1 + sum of the n best acceptance estimates) / (t_draft + t_verify(n + 1)),
// where a node's acceptance estimate comes from its draft value V, calibrated online against
// what the target actually accepted. Budgets snap to the ladder so that llama.cpp can reuse
// its compute graphs. When even the best budget is expected to be slower than plain decoding,
// speculation pauses for a number of steps that doubles while it keeps losing.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

namespace heterospec {

struct CostProfile {
    std::vector<int32_t> sizes;       // ladder of batch sizes n (ascending, starting at 1)
    std::vector<double> verify_ms;    // t_verify(n) for each size
    double draft_level_ms = 0;        // one draft pass over a frontier

    bool empty() const { return sizes.empty(); }
    // t_verify(n), interpolated linearly between ladder sizes.
    double verify(int32_t n) const;
};

// Maps a draft value V to the probability that the target accepts the node, from counts kept
// in bins of log V. Starts from the prior P(accept) = V.
class AcceptanceModel {
public:
    static constexpr int kBins = 24;
    float estimate(float v) const;
    void observe(float v, bool accepted);
    void reset();

private:
    static int bin_of(float v);
    std::array<double, kBins> seen_{};
    std::array<double, kBins> accepted_{};
};

struct BudgetChoice {
    int32_t budget;         // nodes to verify (0: a plain step)
    double expected_tokens; // 1 + sum of acceptance estimates
    double expected_rate;   // tokens per ms
};

// The budget (0, a ladder size minus the root, or all the nodes there are, at most max_budget)
// that maximises expected tokens per ms given the drafting time already spent, for nodes whose
// values are given best first. Ladder sizes keep llama.cpp's compute graphs reusable.
BudgetChoice choose_budget(const CostProfile & profile, const AcceptanceModel & acc,
                           const std::vector<float> & values_best_first, int32_t max_budget,
                           double draft_ms);

// Whether drafting on is worth it once the first level is drafted: the best expected rate of a
// chain whose every token is as likely accepted as the best first-level node (a = acceptance
// estimate of `top_value`, so the k-th node counts a^k), paying `level_ms` per further level,
// against plain decoding. Cuts a hopeless step to one draft pass instead of a whole tree.
bool worth_drafting(const CostProfile & profile, const AcceptanceModel & acc, float top_value,
                    int32_t max_budget, double spent_ms, double level_ms);

// Whether drafting one more level can raise the step's best expected rate. `values` are the
// drafted nodes' values, best first; `child_values` guess the next level's (a frontier node's
// child taken as confident as the node was of its own parent: V * q). The level costs level_ms.
bool worth_extending(const CostProfile & profile, const AcceptanceModel & acc, const std::vector<float> & values,
                     const std::vector<float> & child_values, int32_t max_budget, double spent_ms, double level_ms);

// Pauses speculation while it does not pay: after a losing step, the next `pause` steps run
// plain, and `pause` doubles (up to a cap) each time speculation loses again.
class SpeculationGate {
public:
    bool speculate();                 // call once per step
    void report(bool paid);           // after a speculative step
    void reset() { wait_ = 0; pause_ = 1; }

private:
    int32_t wait_ = 0;
    int32_t pause_ = 1;
};

// The cost-aware allocation's state, kept across generations (same models, same machine): the
// measured profile, the acceptance calibration, the realised costs and the gate. The engine asks
// it before drafting, after each draft level and before verifying, and reports each step.
class CostModel {
public:
    CostProfile profile;
    AcceptanceModel acceptance;
    bool projected = false;   // another device's profile: steps are judged by it, not the clock

    // Realised costs: one draft pass, and t_verify(n) scaled by what verification really costs
    // (longer contexts, masks) against the empty-cache profile.
    double level_ms() const { return level_ms_ > 0 ? level_ms_ : profile.draft_level_ms; }
    double verify_ms(int32_t n) const { return (verify_scale_ > 0 ? verify_scale_ : 1.0) * profile.verify(n); }
    // Drafting time spent so far in a step: the clock's, or the profiled device's.
    double spent_ms(int32_t draft_passes, double clock_ms) const {
        return projected ? draft_passes * profile.draft_level_ms : clock_ms;
    }

    // Before drafting: false runs a plain step (speculation paused, or no tree up to max_depth
    // could beat plain decoding even if every token were accepted).
    bool should_draft(int32_t max_depth);
    // After the first level: whether a chain as confident as the best first-level node could pay.
    bool worth_drafting(float top_value, int32_t max_budget, double spent_ms) const;
    // After each level: whether one more level can raise the expected rate.
    bool worth_extending(const std::vector<float> & values, const std::vector<float> & child_values,
                         int32_t max_budget, double spent_ms) const;
    // Nodes to verify among `values` (best first).
    BudgetChoice choose(const std::vector<float> & values, int32_t max_budget, double spent_ms) const;

    // After a step that drafted: the values of the verified nodes and whether each was accepted
    // (calibration), and the realised costs and tokens (gate).
    void observe_node(float value, bool accepted) { acceptance.observe(value, accepted); }
    void observe_step(int32_t emitted, int32_t draft_passes, double draft_ms, int32_t verified_tokens,
                      double verified_ms);

private:
    SpeculationGate gate_;
    double level_ms_ = -1;       // EMA of realised drafting time per draft pass
    double verify_scale_ = -1;   // EMA of realised / profiled verification time
    double spec_tokens_ = 0, spec_ms_ = 0;   // decayed sums over speculative steps: realised rate
};

}  // namespace heterospec
