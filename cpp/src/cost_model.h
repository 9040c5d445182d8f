// Cost-aware allocation (beyond the paper; algorithm section 4). Pure logic.
//
// The engine measures, for the models and machine at hand, what verifying n tokens costs
// (t_verify(n), for a ladder of n) and what one draft pass costs. A step drafts one level at a
// time while another level can pay, then verifies the n best nodes (by draft value V) that
// maximise the step's surplus over the long-run rate R,
//     N* = argmax_n (1 + sum of the n best acceptance estimates) - R * (t_draft + t_verify(n + 1)),
// which maximises the long-run tokens per second (Dinkelbach); n = 0 is a plain step. A node is
// accepted when its parent is and the target then draws its token; that conditional chance is
// a logistic model of the node's draft probability q, the entropy of the distribution that
// drafted it, the HeteroSpec signal (the cumulative top-K entropy of its path, mapped to the
// entropy partition's bin) and how often the draft's first choice has been right lately in this
// generation, fitted online against what the target did. A node's estimate is the product of
// those chances along its path. When speculation loses all the same, it pauses for a number of
// steps that doubles while it keeps losing.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

namespace heterospec {

struct CostProfile {
    std::vector<int32_t> sizes;       // ladder of batch sizes n (ascending, starting at 1)
    std::vector<double> verify_ms;    // t_verify(n) for each size
    double draft_level_ms = 0;        // one draft pass over a frontier
    double checkpoint_ms = 0;         // what a step that verifies drafts pays beside its passes:
                                      // saving and restoring a recurrent state (checkpoint.h)
    bool block_levels = false;        // one draft pass gives every level (a DFlash block): levels
                                      // past the first cost nothing more

    bool empty() const { return sizes.empty(); }
    // What drafting d levels costs in passes of draft_level_ms.
    int32_t level_passes(int32_t d) const { return block_levels ? (d > 0 ? 1 : 0) : d; }
    // t_verify(n), interpolated linearly between ladder sizes.
    double verify(int32_t n) const;
};

// What the acceptance model sees of a draft node.
struct NodeFeatures {
    float q;              // draft probability of its token given its parent path
    float h_parent;       // top-K entropy of the draft distribution that proposed it
    int32_t path_bin;     // entropy partition bin of its path entropy (-1: none)
    float agreement;      // how often the draft's first choice was the target's token lately (0..1)
    uint8_t source;       // who proposed it: DraftSource bits (n-gram drafts behave differently)
};

// The chance that the target accepts a node once it has accepted its parent: logistic in the
// logit of q, the entropies and the recent agreement, plus a bias of the generation at hand,
// fitted by online gradient steps (the generation's term faster, and from zero each time).
// Starts at q itself, so that an uncalibrated node's estimate along its path is its value V. A
// draft's confidence alone misleads both ways: in repetitive text a small draft is often right
// while unsure, and some texts are harder for it than others.
class AcceptanceModel {
public:
    static constexpr int kEntropyBins = 8;     // the policy's partition
    float estimate(const NodeFeatures & x) const;
    void observe(const NodeFeatures & x, bool accepted);
    void begin_generation() { generation_bias_ = 0.0; }

private:
    // bias, logit q, agreement, parent entropy, n-gram only, model and n-gram, path entropy bins
    static constexpr int kFeatures = 6 + kEntropyBins;
    double score(const NodeFeatures & x) const;
    std::array<double, kFeatures> w_{0.0, 1.0};
    double generation_bias_ = 0.0;
};

struct BudgetChoice {
    int32_t budget;         // nodes to verify (0: a plain step)
    double expected_tokens; // 1 + sum of acceptance estimates
    double expected_rate;   // tokens per ms
    double score;           // what the choice maximised (see choose_budget)
};

// The budget (0 to max_budget nodes, at most as many as there are) for nodes whose acceptance
// estimates are given in selection order (best first), given the drafting time already spent;
// t_verify between ladder sizes is interpolated. (Rebuilding llama.cpp's graph for a new batch
// size measured below 1% of a step on CPU: LLAMA_GRAPH_REUSE_DISABLE=1 left plain decoding of
// the padded 300M target at 12.8 ms per token. To be measured on a GPU.) With the
// long-run rate R (tokens per ms, > 0) the score is the step's surplus, expected tokens -
// R * time: maximising it each step maximises the long-run rate. Without one (R <= 0) it is the
// step's own expected rate.
// `batch_tokens[n]`, when given, is what verifying n nodes runs (n + 1 without it: the root and
// the nodes; more over recurrent state, where each path runs apart: path_batch.h).
BudgetChoice choose_budget(const CostProfile & profile, const std::vector<float> & accept, int32_t max_budget,
                           double draft_ms, double long_run_rate = 0.0,
                           const std::vector<int32_t> * batch_tokens = nullptr);

// Whether drafting on is worth it once the first level is drafted: the best expected rate of a
// chain whose every token is accepted with probability `a` (the best first-level node's
// estimate, so the k-th node counts a^k), paying `level_ms` per further level, against plain
// decoding. Cuts a hopeless step to one draft pass instead of a whole tree.
bool worth_drafting(const CostProfile & profile, float a, int32_t max_budget, double spent_ms, double level_ms,
                    int32_t max_depth = INT32_MAX);

// Whether drafting one more level can raise the step's best score: how many of the guessed
// children would be among the nodes chosen then (0: do not extend). `accept` are the drafted
// nodes' estimates, best first; `child_accept` guess the next level's, one per frontier node.
// The level costs level_ms. `scratch` is working space, reused between calls.
int32_t worth_extending(const CostProfile & profile, const std::vector<float> & accept,
                        const std::vector<float> & child_accept, int32_t max_budget, double spent_ms, double level_ms,
                        double long_run_rate, std::vector<float> & scratch);

// Whether paid drafting levels (a draft model's, a head's) can raise a step's score over the
// free nodes alone, before paying for any: a chain of paid nodes whose k-th is accepted with
// chance a^k (a: how often the paid source's first choice has been right lately), one level
// each at level_ms, up to max_depth, joins the free nodes' estimates (best first). Optimistic
// where both sources would propose the same tokens: the paid gate judges the realised gain.
bool worth_paid_levels(const CostProfile & profile, const std::vector<float> & free_accept, float a,
                       int32_t max_budget, int32_t max_depth, double spent_ms, double level_ms,
                       double long_run_rate, std::vector<float> & scratch);

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

// What one step cost and gave, for the cost model.
struct StepRecord {
    bool drafted = false;      // it verified a drafted tree (not a plain step, nor one cut after its
                               // first level); with paid_apart: one with free nodes
    int32_t emitted = 1;
    int32_t draft_passes = 0;
    double draft_ms = 0;
    int32_t verified_tokens = 1;
    double verify_ms = 0;
    double checkpoint_ms = 0;  // saving and restoring the target's state (not verification's time)
    // A drafter with free sources that paid for levels this step: the tokens only the paid
    // source proposed and what its levels cost, judged apart (observe_paid); the step's gate
    // then sees the step without them.
    bool paid_apart = false;
    int32_t paid_tokens = 0;
    double paid_ms = 0;
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
    // (longer contexts, masks, a busy machine) against the empty-cache profile, apart for one
    // token (ggml's matrix-vector path) and for several (its matrix kernels).
    double level_ms() const { return level_ms_ > 0 ? level_ms_ : profile.draft_level_ms; }
    double verify_ms(int32_t n) const { return costs().verify(n); }
    const CostProfile & costs() const { return realised_.empty() ? profile : realised_; }
    // Drafting time spent so far in a step: the clock's, or the profiled device's.
    double spent_ms(int32_t draft_passes, double clock_ms) const {
        return projected ? draft_passes * profile.draft_level_ms : clock_ms;
    }
    // Tokens per ms over the recent steps of cost-aware generations, plain ones included (0
    // before any).
    double long_run_rate() const { return all_ms_ > 0 ? all_tokens_ / all_ms_ : 0.0; }
    // Realised over profiled verification time, one-token passes or batches, whichever is
    // further from 1 (1 before any step).
    double profile_scale() const;
    // How often the draft's first choice at the root was the target's token, over this
    // generation's recent steps (starting from the engine's long-run figure).
    float agreement() const { return float(agreement_); }
    void begin_generation() {
        agreement_ = long_agreement_;
        acceptance.begin_generation();
    }
    void observe_agreement(bool agreed);

    // Before drafting: false runs a plain step (speculation paused, or no tree up to max_depth
    // could beat plain decoding even if every token were accepted). `paid`: its levels cost a
    // model pass each (else they are free).
    bool should_draft(int32_t max_depth, bool paid = true);
    // For a drafter with free sources too: whether to pay for a first paid level on top of the
    // free nodes whose estimates are `free_accept` (best first). Paused apart while paid levels
    // lose, so that losing model drafts do not mute winning free ones.
    bool should_pay(const std::vector<float> & free_accept, int32_t max_budget, int32_t max_depth, double spent_ms);
    // How often the paid source's first choice was right, over its recent steps.
    float paid_agreement() const { return float(paid_agreement_); }
    void observe_paid_agreement(bool agreed) { paid_agreement_ = 0.9 * paid_agreement_ + 0.1 * (agreed ? 1.0 : 0.0); }
    // After the first level: whether a chain as confident as the best first-level node could pay
    // (`paid`: further levels cost a pass each).
    bool worth_drafting(float top_accept, int32_t max_budget, double spent_ms, bool paid = true,
                        int32_t max_depth = INT32_MAX) const;
    // After each level: how many frontier nodes are worth expanding (0: stop drafting).
    int32_t worth_extending(const std::vector<float> & accept, const std::vector<float> & child_accept,
                         int32_t max_budget, double spent_ms) const;
    // Nodes to verify among those whose estimates are `accept` (selection order); see
    // choose_budget for `batch_tokens`.
    BudgetChoice choose(const std::vector<float> & accept, int32_t max_budget, double spent_ms,
                        const std::vector<int32_t> * batch_tokens = nullptr) const;

    // After each step: nodes whose fate the step revealed (value, path entropy bin, accepted)
    // for calibration, and the realised costs and tokens.
    void observe_node(const NodeFeatures & x, bool accepted) { acceptance.observe(x, accepted); }
    void observe_step(const StepRecord & r);

private:
    SpeculationGate gate_;
    SpeculationGate paid_gate_;                 // paid levels beside free sources
    double paid_tokens_ = 1, paid_ms_ = 0;      // their decayed gain and cost (a prior of one
                                                // free token: one unlucky first step does not
                                                // pause them)
    // A paid source's first choice is seen only in steps that pay for it: while none does, the
    // estimate drifts back to this prior, so that a source never drafted yet, or judged by a few
    // unlucky steps, is tried again now and then (at 0.5 a draft model beside n-grams never was,
    // and so never showed that it pays).
    static constexpr double kPaidAgreementPrior = 0.7;
    double paid_agreement_ = kPaidAgreementPrior;
    double level_ms_ = -1;       // EMA of realised drafting time per draft pass
    double verify_scale_[2] = {-1, -1};   // EMAs of realised / profiled verification time: 1, >1 tokens
    CostProfile realised_;                // the profile with those scales applied (empty until seen)
    mutable std::vector<float> scratch_;  // worth_extending's working space
    void rescale();
    void observe_paid(int32_t paid_tokens, double paid_ms);
    double spec_tokens_ = 0, spec_ms_ = 0;   // decayed sums over speculative steps: realised rate
    double all_tokens_ = 0, all_ms_ = 0;     // the same over every step
    double agreement_ = 0.5, long_agreement_ = 0.5;   // EMAs: this generation's, and all steps' 
};

}  // namespace heterospec
