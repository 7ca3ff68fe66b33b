// Bootstrap from mpirun / srun --mpi=pmix: the MPI world communicator (CPU buffers) and
// the process placement. The torchrun-style bootstrap (RANK, WORLD_SIZE, ... through
// LibTorch's c10d TCPStore) and the NCCL world live in the LibTorch / NCCL parts
// (include/dhp/torch.hpp, include/dhp/nccl.hpp).
#pragma once

#include <memory>
#include <string>

#include "dhp/communicator.hpp"

namespace dhp {

// Where this process sits. local_* count the processes on the same host.
struct ProcessInfo {
  int world_rank = 0;
  int world_size = 1;
  int local_rank = 0;
  int local_size = 1;
  std::string host;
};

#ifdef DHP_HAVE_MPI
// Owns MPI's lifetime for the process: MPI_Init_thread(MPI_THREAD_MULTIPLE) unless MPI is
// already initialised (then it leaves it to whoever did), MPI_Finalize at destruction if
// it initialised it. Thread level actually provided is logged; the runtime itself only
// calls MPI from one thread at a time, so MPI_THREAD_SERIALIZED is enough.
class MpiRuntime {
 public:
  MpiRuntime();
  ~MpiRuntime();
  MpiRuntime(const MpiRuntime&) = delete;
  MpiRuntime& operator=(const MpiRuntime&) = delete;

  const ProcessInfo& process() const { return process_; }
  int thread_level() const { return thread_level_; }
  // A new communicator over MPI_COMM_WORLD (a dup, with MPI_ERRORS_RETURN), named "world",
  // with env::comm_timeout().
  std::unique_ptr<Communicator> world() const;

 private:
  bool initialised_here_ = false;
  int thread_level_ = 0;
  ProcessInfo process_;
};

// Process placement from MPI (host names gathered over MPI_COMM_WORLD). Needs MPI
// initialised.
ProcessInfo mpi_process_info();
// A communicator over a dup of MPI_COMM_WORLD. Needs MPI initialised.
std::unique_ptr<Communicator> mpi_world_communicator();
#endif

// Ends every process of the job now, with `code` (MPI_Abort when MPI is initialised,
// std::_Exit otherwise). What a survivor calls after a Communication error: a dead peer
// leaves collectives that can never complete, and MPI_Finalize would wait for it.
[[noreturn]] void abort_job(int code, const std::string& reason) noexcept;

}  // namespace dhp
