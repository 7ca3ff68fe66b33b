// Under mpirun: every rank adds rank + 1 through dhp's MPI world communicator.
#include <dhp/runtime.hpp>

#include <cstdio>
#include <span>
#include <vector>

int main() {
  dhp::MpiRuntime mpi;
  const auto world = mpi.world();
  std::vector<double> value{static_cast<double>(world->rank() + 1)};
  world->all_reduce(std::span<double>(value), dhp::ReduceOp::Sum);
  const int n = world->size();
  const double expected = n * (n + 1) / 2.0;
  std::printf("consumer: rank %d/%d all_reduce %.0f (expected %.0f)\n", world->rank(), n,
              value[0], expected);
  return value[0] == expected ? 0 : 1;
}
