#include "dhp/communicator.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "dhp/error.hpp"
#include "dhp/log.hpp"

namespace dhp {

const char* to_string(DataType t) noexcept {
  switch (t) {
    case DataType::F32:
      return "f32";
    case DataType::F64:
      return "f64";
    case DataType::BF16:
      return "bf16";
    case DataType::F16:
      return "f16";
    case DataType::I32:
      return "i32";
    case DataType::I64:
      return "i64";
    case DataType::U8:
      return "u8";
  }
  return "?";
}

const char* to_string(ReduceOp op) noexcept {
  switch (op) {
    case ReduceOp::Sum:
      return "sum";
    case ReduceOp::Max:
      return "max";
    case ReduceOp::Min:
      return "min";
  }
  return "?";
}

int data_type_size(DataType t) noexcept {
  switch (t) {
    case DataType::F32:
      return 4;
    case DataType::F64:
      return 8;
    case DataType::BF16:
      return 2;
    case DataType::F16:
      return 2;
    case DataType::I32:
      return 4;
    case DataType::I64:
      return 8;
    case DataType::U8:
      return 1;
  }
  return 0;
}

DataType data_type(kernels::DType t) noexcept {
  switch (t) {
    case kernels::DType::F32:
      return DataType::F32;
    case kernels::DType::F64:
      return DataType::F64;
    case kernels::DType::BF16:
      return DataType::BF16;
    case kernels::DType::F16:
      return DataType::F16;
  }
  return DataType::U8;
}

std::string group_name(const std::vector<int>& world_ranks) {
  constexpr std::size_t kShown = 16;  // keep error lines readable for 1000-rank groups
  if (world_ranks.size() <= kShown) return fmt::format("group[{}]", fmt::join(world_ranks, ","));
  const std::vector<int> head(world_ranks.begin(), world_ranks.begin() + kShown / 2);
  const std::vector<int> tail(world_ranks.end() - kShown / 2, world_ranks.end());
  return fmt::format("group[{},...({} more)...,{}]", fmt::join(head, ","),
                     world_ranks.size() - kShown, fmt::join(tail, ","));
}

Communicator::Communicator(int rank, int size, Device device, std::vector<int> world_ranks,
                           std::chrono::milliseconds timeout, std::string name)
    : rank_(rank),
      size_(size),
      device_(device),
      world_ranks_(std::move(world_ranks)),
      name_(name.empty() ? group_name(world_ranks_) : std::move(name)),
      timeout_(timeout) {
  DHP_CHECK(size_ >= 1 && rank_ >= 0 && rank_ < size_, Internal,
            "communicator rank {} outside [0, {})", rank_, size_);
  DHP_CHECK(static_cast<int>(world_ranks_.size()) == size_, Internal,
            "communicator of size {} given {} world ranks", size_, world_ranks_.size());
  DHP_CHECK(timeout_.count() > 0, InvalidArgument, "communicator timeout {} ms must be > 0",
            timeout_.count());
}

void Communicator::all_reduce(const void* send, void* recv, std::int64_t count, DataType type,
                              ReduceOp op) {
  iall_reduce(send, recv, count, type, op)->wait();
}

std::string Communicator::describe() const {
  return fmt::format("{} {} rank {}/{} (world rank {})", backend(), name_, rank_, size_,
                     world_ranks_[static_cast<std::size_t>(rank_)]);
}

void Communicator::set_timeout(std::chrono::milliseconds timeout) {
  DHP_CHECK(timeout.count() > 0, InvalidArgument, "{}: timeout {} ms must be > 0", describe(),
            timeout.count());
  timeout_ = timeout;
}

void Communicator::fail(const char* op, const std::string& what) const {
  const std::string message = fmt::format("{}: {} failed: {}", describe(), op, what);
  DHP_LOG_ERROR("{}", message);
  mark_aborted(fmt::format("{} failed: {}", op, what));
  throw Error(ErrorKind::Communication, message);
}

void Communicator::fail_argument(const char* op, const std::string& what) const {
  throw Error(ErrorKind::InvalidArgument,
              fmt::format("{}: {}: {} (nothing was sent; the communicator is still usable)",
                          describe(), op, what));
}

void Communicator::abandon(const char* op) const noexcept {
  if (aborted_) return;
  try {
    DHP_LOG_WARN("{}: {} abandoned before it completed: aborted", describe(), op);
    mark_aborted(fmt::format("{} was abandoned before it completed (an error unwound past it)", op));
  } catch (...) {
    mark_aborted("a request was abandoned before it completed");
  }
}

void Communicator::mark_aborted(const std::string& reason) const noexcept {
  if (aborted_) return;
  aborted_ = true;
  try {
    abort_reason_ = reason;
  } catch (...) {  // out of memory while failing: the flag alone still stops every call
  }
}

void Communicator::fail_timeout(const char* op, std::chrono::milliseconds elapsed,
                                std::chrono::milliseconds limit) const {
  fail(op, fmt::format("did not complete within the timeout ({:.1f} s elapsed, limit {:.1f} s; "
                       "a peer is hung, dead or called a different operation; raise "
                       "DHP_COMM_TIMEOUT_S if the step is just slow)",
                       elapsed.count() / 1000.0, limit.count() / 1000.0));
}

void Communicator::check_not_aborted(const char* op) const {
  if (!aborted_) return;
  throw Error(ErrorKind::Communication,
              fmt::format("{}: {} refused: the communicator was aborted ({}); peers may be "
                          "mid-operation, so nothing more can run on it: create a new one (or "
                          "end the job with dhp::abort_job)",
                          describe(), op, abort_reason_.empty() ? "abort()" : abort_reason_));
}

void Communicator::check_peer(const char* op, int peer) const {
  if (peer < 0 || peer >= size_)
    fail_argument(op, fmt::format("peer rank {} outside [0, {})", peer, size_));
}

}  // namespace dhp
