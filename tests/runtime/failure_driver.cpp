// Failure scenarios for the MPI backend, run under mpirun -np 3 with a short
// DHP_COMM_TIMEOUT_S. Rank 1 fails mid-step; the survivors must end with a clear
// Communication error within the timeout, and the job must end (never hang).
//   exit: rank 1 throws in the middle of the step, catches it and calls exit(1) without
//         MPI_Finalize, while the others are inside an all_reduce.
//   hang: rank 1 never enters the all_reduce (sleeps far past the timeout).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <thread>

#include "dhp/error.hpp"
#include "dhp/runtime.hpp"

int main(int argc, char** argv) {
  const std::string scenario = argc > 1 ? argv[1] : "exit";
  dhp::MpiRuntime mpi;
  auto world = mpi.world();
  const int rank = world->rank();
  try {
    double value = 1.0;
    world->all_reduce(&value, &value, 1, dhp::DataType::F64, dhp::ReduceOp::Sum);  // healthy step
    if (rank == 1 && world->size() > 1) {
      if (scenario == "exit") throw std::runtime_error("simulated failure in rank 1's step");
      std::this_thread::sleep_for(std::chrono::seconds(120));
    }
    world->all_reduce(&value, &value, 1, dhp::DataType::F64, dhp::ReduceOp::Sum);
    std::printf("rank %d: second all_reduce completed (unexpected)\n", rank);
  } catch (const dhp::Error& e) {
    std::fprintf(stderr, "rank %d: %s\n", rank, e.what());
    dhp::abort_job(2, e.what());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "rank %d: %s; exiting without MPI_Finalize\n", rank, e.what());
    std::fflush(stderr);
    std::exit(1);
  }
  return 0;
}
