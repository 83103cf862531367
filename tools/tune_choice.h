// Choosing the inline threshold from a sweep's measurements. Header-only and pure, so
// the unit tests (tests/tune_test.cc) check it without running a sweep.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <vector>

namespace zerocan::tools {

// Payloads of at least the returned size go as their own frame; smaller ones inline.
// SIZE_MAX means "always inline".
//
// Candidates are "everything a frame", a cut between each pair of neighbouring sampled
// sizes (their geometric mean, rounded to a power of two), and "always inline". Each
// candidate is scored by its worst ratio, over the sampled sizes, of the cost it picks
// to the better of the two; the best score wins. Curves that tie over a range (common:
// end to end the two placements often differ by less than the noise) leave several
// candidates within `tie` of the best; the middle one of those is taken, so a second run
// with different noise still lands inside the tie.
inline size_t ChooseThreshold(const std::vector<size_t>& sizes,
                              const std::vector<double>& inline_cost,
                              const std::vector<double>& frame_cost, double tie = 0.03) {
  size_t n = std::min({sizes.size(), inline_cost.size(), frame_cost.size()});
  if (n == 0) return std::numeric_limits<size_t>::max();
  // candidate k: sizes[0..k) inline, sizes[k..n) frames; k = n is "always inline".
  std::vector<double> score(n + 1, 0);
  for (size_t k = 0; k <= n; ++k) {
    double worst = 0;
    for (size_t i = 0; i < n; ++i) {
      double best = std::min(inline_cost[i], frame_cost[i]);
      double chosen = i < k ? inline_cost[i] : frame_cost[i];
      worst = std::max(worst, best > 0 ? chosen / best : 1.0);
    }
    score[k] = worst;
  }
  double best_score = *std::min_element(score.begin(), score.end());
  std::vector<size_t> near;
  for (size_t k = 0; k <= n; ++k) {
    if (score[k] <= best_score * (1 + tie)) near.push_back(k);
  }
  size_t k = near[near.size() / 2];
  if (k == 0) return 1;  // even the smallest payload goes as a frame (0-byte ones stay inline)
  if (k == n) return std::numeric_limits<size_t>::max();
  double mid = std::sqrt(static_cast<double>(sizes[k - 1]) * static_cast<double>(sizes[k]));
  size_t cut = size_t{1} << static_cast<int>(std::lround(std::log2(mid)));
  // Keep the cut strictly between the two sampled sizes.
  if (cut <= sizes[k - 1]) cut = sizes[k - 1] + 1;
  if (cut > sizes[k]) cut = sizes[k];
  return cut;
}

}  // namespace zerocan::tools
