// The known name nearest to a misspelt one, for "did you mean" in errors: JSON fields and
// command-line options alike.
#pragma once

#include <cstddef>
#include <string_view>

namespace dhp::detail {

// Levenshtein distance: insertions, deletions and substitutions of one character each.
std::size_t edit_distance(std::string_view a, std::string_view b);

// Feed it every known name; best() is the nearest, when it is within a third of the word's
// length (at least 2 edits), so that "batchs" finds "batches" and "foo" finds nothing.
class ClosestName {
 public:
  explicit ClosestName(std::string_view word) : word_(word) {}
  void consider(std::string_view candidate);
  // Empty when no candidate is close enough.
  std::string_view best() const;

 private:
  std::string_view word_;
  std::string_view best_;
  std::size_t best_distance_ = 0;
};

}  // namespace dhp::detail
