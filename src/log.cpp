#include "dhp/log.hpp"

#include <spdlog/sinks/stdout_color_sinks.h>

#include <mutex>

#include "dhp/env.hpp"

namespace dhp {

std::shared_ptr<spdlog::logger> logger() {
  static std::once_flag once;
  static std::shared_ptr<spdlog::logger> instance;
  std::call_once(once, [] {
    // Several modules of one process may each link dhp's static libraries (the Python
    // package's two extension modules) and share spdlog's registry: the first one
    // registers the logger, the others use it.
    instance = spdlog::get("dhp");
    if (instance != nullptr) return;
    try {
      instance = spdlog::stderr_color_mt("dhp");
    } catch (const spdlog::spdlog_ex&) {
      instance = spdlog::get("dhp");
      return;
    }
    instance->set_pattern("[%H:%M:%S.%e] [dhp] [%^%l%$] %v");
    instance->set_level(spdlog::level::from_str(env::log_level()));
  });
  return instance;
}

}  // namespace dhp
