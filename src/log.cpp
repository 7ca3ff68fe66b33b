#include "dhp/log.hpp"

#include <spdlog/sinks/stdout_color_sinks.h>

#include <mutex>

#include "dhp/env.hpp"

namespace dhp {

std::shared_ptr<spdlog::logger> logger() {
  static std::once_flag once;
  static std::shared_ptr<spdlog::logger> instance;
  std::call_once(once, [] {
    instance = spdlog::stderr_color_mt("dhp");
    instance->set_pattern("[%H:%M:%S.%e] [dhp] [%^%l%$] %v");
    instance->set_level(spdlog::level::from_str(env::log_level()));
  });
  return instance;
}

}  // namespace dhp
