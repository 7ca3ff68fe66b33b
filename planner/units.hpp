// Units the planner's figures are reported in.
#pragma once

namespace dhp {

inline constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;  // bytes

}  // namespace dhp
