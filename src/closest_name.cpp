#include "closest_name.hpp"

#include <algorithm>
#include <vector>

namespace dhp::detail {

std::size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diagonal = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

void ClosestName::consider(std::string_view candidate) {
  const std::size_t d = edit_distance(word_, candidate);
  if (best_.empty() || d < best_distance_) {
    best_ = candidate;
    best_distance_ = d;
  }
}

std::string_view ClosestName::best() const {
  const std::size_t limit = std::max<std::size_t>(2, word_.size() / 3);
  return !best_.empty() && best_distance_ <= limit ? best_ : std::string_view();
}

}  // namespace dhp::detail
