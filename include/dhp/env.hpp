// Every environment knob dhp reads, declared in one place with its default.
// docs/environment.md lists them for users; keep the two in sync.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace dhp::env {

// DHP_LOG_LEVEL: trace|debug|info|warn|error|critical|off (default: warn)
std::string log_level();
// DHP_ATTENTION_IMPL: auto|cpu|cuda (default: auto = from the tensors' device)
std::string attention_impl();
// DHP_COMM_TIMEOUT_S: seconds before a collective is declared hung (default: 300)
std::chrono::milliseconds comm_timeout();
// DHP_GROUP_POOL_SIZE: most group communicators kept alive (default: 64)
int group_pool_size();
// DHP_MPI_MAX_COUNT: most elements one MPI call carries before the MPI backend splits a
// reduction or describes a move with a derived datatype (default and maximum: INT_MAX)
std::int64_t mpi_max_count();
// DHP_GRAD_BUCKET_MB: size of a gradient-sync bucket in MiB (default: 25, as PyTorch DDP)
double grad_bucket_mb();
// DHP_DATA_DIR: where the raw length data lives (default: <repo>/data, then ../shared/data)
std::string data_dir();
// DHP_PLANNER_THREADS: threads the async planner may use (default: 1)
int planner_threads();

// Reads an integer / floating / string variable with a default; throws dhp::Error
// (InvalidArgument) naming the variable when its value does not parse.
std::int64_t get_int(const char* name, std::int64_t default_value);
double get_double(const char* name, double default_value);
std::string get_string(const char* name, const std::string& default_value);

}  // namespace dhp::env
