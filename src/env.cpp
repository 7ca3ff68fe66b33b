#include "dhp/env.hpp"

#include <cerrno>
#include <climits>
#include <cstdlib>
#include <filesystem>

#include "dhp/error.hpp"

namespace dhp::env {

std::int64_t get_int(const char* name, std::int64_t default_value) {
  const char* text = std::getenv(name);
  if (text == nullptr || *text == '\0') return default_value;
  char* end = nullptr;
  errno = 0;
  const long long value = std::strtoll(text, &end, 10);
  DHP_CHECK(errno == 0 && end != nullptr && *end == '\0', InvalidArgument,
            "environment variable {}='{}' is not an integer", name, text);
  return value;
}

double get_double(const char* name, double default_value) {
  const char* text = std::getenv(name);
  if (text == nullptr || *text == '\0') return default_value;
  char* end = nullptr;
  errno = 0;
  const double value = std::strtod(text, &end);
  DHP_CHECK(errno == 0 && end != nullptr && *end == '\0', InvalidArgument,
            "environment variable {}='{}' is not a number", name, text);
  return value;
}

std::string get_string(const char* name, const std::string& default_value) {
  const char* text = std::getenv(name);
  return (text == nullptr || *text == '\0') ? default_value : std::string(text);
}

std::string log_level() { return get_string("DHP_LOG_LEVEL", "warn"); }

std::string attention_impl() {
  std::string impl = get_string("DHP_ATTENTION_IMPL", "auto");
  DHP_CHECK(impl == "auto" || impl == "cpu" || impl == "cuda", InvalidArgument,
            "DHP_ATTENTION_IMPL='{}': expected auto, cpu or cuda", impl);
  return impl;
}

std::chrono::milliseconds comm_timeout() {
  const double seconds = get_double("DHP_COMM_TIMEOUT_S", 300.0);
  DHP_CHECK(seconds > 0, InvalidArgument, "DHP_COMM_TIMEOUT_S={} must be > 0", seconds);
  return std::chrono::milliseconds(static_cast<std::int64_t>(seconds * 1000.0));
}

int group_pool_size() {
  const auto n = get_int("DHP_GROUP_POOL_SIZE", 64);
  DHP_CHECK(n >= 1, InvalidArgument, "DHP_GROUP_POOL_SIZE={} must be >= 1", n);
  return static_cast<int>(n);
}

double grad_bucket_mb() {
  const double mb = get_double("DHP_GRAD_BUCKET_MB", 25.0);
  DHP_CHECK(mb > 0 && mb <= 1 << 20, InvalidArgument,
            "DHP_GRAD_BUCKET_MB={} must be in (0, 1048576]", mb);
  return mb;
}

std::int64_t mpi_max_count() {
  const auto n = get_int("DHP_MPI_MAX_COUNT", INT_MAX);
  DHP_CHECK(n >= 1 && n <= INT_MAX, InvalidArgument, "DHP_MPI_MAX_COUNT={} must be in [1, {}]",
            n, INT_MAX);
  return n;
}

std::string data_dir() {
  namespace fs = std::filesystem;
  const std::string explicit_dir = get_string("DHP_DATA_DIR", "");
  if (!explicit_dir.empty()) return explicit_dir;
#ifdef DHP_SOURCE_DIR
  const fs::path in_repo = fs::path(DHP_SOURCE_DIR) / "data";
  if (fs::exists(in_repo / "activitynet_captions_train_modified.json")) return in_repo.string();
  const fs::path shared = fs::path(DHP_SOURCE_DIR) / ".." / "shared" / "data";
  if (fs::exists(shared)) return shared.lexically_normal().string();
#endif
  return "data";
}

int planner_threads() {
  const auto n = get_int("DHP_PLANNER_THREADS", 1);
  DHP_CHECK(n >= 1, InvalidArgument, "DHP_PLANNER_THREADS={} must be >= 1", n);
  return static_cast<int>(n);
}

}  // namespace dhp::env
