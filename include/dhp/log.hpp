// Logging through spdlog. The level comes from DHP_LOG_LEVEL (see env.hpp); every
// runtime log line carries the group and rank it concerns.
#pragma once

#include <spdlog/spdlog.h>

#include <memory>

namespace dhp {

// The library's logger ("dhp"), created on first use with the level from the environment.
std::shared_ptr<spdlog::logger> logger();

}  // namespace dhp

#define DHP_LOG_TRACE(...) ::dhp::logger()->trace(__VA_ARGS__)
#define DHP_LOG_DEBUG(...) ::dhp::logger()->debug(__VA_ARGS__)
#define DHP_LOG_INFO(...) ::dhp::logger()->info(__VA_ARGS__)
#define DHP_LOG_WARN(...) ::dhp::logger()->warn(__VA_ARGS__)
#define DHP_LOG_ERROR(...) ::dhp::logger()->error(__VA_ARGS__)
