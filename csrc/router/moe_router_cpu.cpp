// Router CPU kernel: fp32 logits -> sigmoid -> (+bias, group mask) -> top-k -> renormalise -> scale, + counts.
// Same arithmetic, in the same order, as the CUDA kernel, so both choose identical experts and weights.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <vector>

#include "router/moe_router_common.h"

namespace nk::router {
namespace {

// sigmoid evaluated in fp64 and rounded once to fp32 (the reference does the same).
inline float sigmoid_rn(float x) { return static_cast<float>(1.0 / (1.0 + std::exp(-static_cast<double>(x)))); }

struct Scratch {
  explicit Scratch(const RouterArgs& a)
      : score(a.num_experts), selection(a.num_experts), keys(a.num_experts), group_keys(a.n_group),
        keep_group(a.n_group) {}
  std::vector<float> score;          // [E] unbiased sigmoid scores
  std::vector<float> selection;      // [E] score + bias
  std::vector<uint64_t> keys;        // [E] selection keys
  std::vector<uint64_t> group_keys;  // [G]
  std::vector<char> keep_group;      // [G]
};

// Group-limited selection (DeepSeek-V3): group score = sum of the group's top-2 selection scores; experts
// outside the best `topk_group` groups get the key of -inf.
void mask_groups(const RouterArgs& a, Scratch& s) {
  const int group_size = a.num_experts / a.n_group;
  for (int g = 0; g < a.n_group; ++g) {
    uint64_t key1 = 0, key2 = 0;
    float top1 = 0.f, top2 = 0.f;
    for (int e = g * group_size; e < (g + 1) * group_size; ++e) {
      const uint64_t key = make_key(s.selection[e], e);
      if (key > key1) {
        key2 = key1, top2 = top1;
        key1 = key, top1 = s.selection[e];
      } else if (key > key2) {
        key2 = key, top2 = s.selection[e];
      }
    }
    const float group_score = group_size >= 2 ? top1 + top2 : top1;
    s.group_keys[g] = make_key(group_score, g);
  }
  std::partial_sort(s.group_keys.begin(), s.group_keys.begin() + a.topk_group, s.group_keys.end(),
                    std::greater<uint64_t>());
  std::fill(s.keep_group.begin(), s.keep_group.end(), 0);
  for (int i = 0; i < a.topk_group; ++i) s.keep_group[key_index(s.group_keys[i])] = 1;
  constexpr float kMasked = -std::numeric_limits<float>::infinity();
  for (int e = 0; e < a.num_experts; ++e)
    s.keys[e] = make_key(s.keep_group[e / group_size] ? s.selection[e] : kMasked, e);
}

void route_token(const RouterArgs& a, int64_t t, Scratch& s) {
  const int num_experts = a.num_experts, top_k = a.top_k;
  const float* logits_row = a.logits + t * num_experts;  // [E]
  for (int e = 0; e < num_experts; ++e) {
    s.score[e] = sigmoid_rn(logits_row[e]);
    s.selection[e] = s.score[e] + a.bias[e];
  }
  if (a.n_group > 1) {
    mask_groups(a, s);
  } else {
    for (int e = 0; e < num_experts; ++e) s.keys[e] = make_key(s.selection[e], e);
  }
  std::partial_sort(s.keys.begin(), s.keys.begin() + top_k, s.keys.end(), std::greater<uint64_t>());
  float sum = 0.f;  // in selection order, like the CUDA kernel
  for (int r = 0; r < top_k; ++r) sum += s.score[key_index(s.keys[r])];
  const float denom = sum + kRenormEps;
  int32_t* idx_row = a.topk_idx + t * top_k;     // [k]
  float* weight_row = a.topk_weight + t * top_k;  // [k]
  for (int r = 0; r < top_k; ++r) {
    const uint32_t e = key_index(s.keys[r]);
    idx_row[r] = static_cast<int32_t>(e);
    weight_row[r] = s.score[e] / denom * a.scale;
  }
}

}  // namespace

void moe_router_cpu(const RouterArgs& a) {
  constexpr int64_t kGrainTokens = 32;
  at::parallel_for(0, a.num_tokens, kGrainTokens, [&](int64_t begin, int64_t end) {
    Scratch scratch(a);
    for (int64_t t = begin; t < end; ++t) route_token(a, t, scratch);
  });
  std::fill(a.counts, a.counts + a.num_experts, 0);
  const int64_t picks = a.num_tokens * a.top_k;
  for (int64_t i = 0; i < picks; ++i) ++a.counts[a.topk_idx[i]];
}

}  // namespace nk::router
