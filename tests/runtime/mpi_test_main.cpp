// GoogleTest main for the multi-process runtime tests, run under mpirun: initialises MPI,
// prints every failure prefixed with its rank, and returns the same exit code on every
// rank (any rank failing fails the test).
#include <gtest/gtest.h>
#include <mpi.h>

#include <cstdio>

#include "dhp/runtime.hpp"
#include "runtime_test_util.hpp"

namespace {

dhp::Communicator* g_world = nullptr;

class RankFailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit RankFailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult& result) override {
    if (!result.failed()) return;
    std::fprintf(stderr, "[rank %d] FAILURE %s:%d\n%s\n", rank_,
                 result.file_name() ? result.file_name() : "?", result.line_number(),
                 result.summary());
    std::fflush(stderr);
  }

 private:
  int rank_;
};

}  // namespace

namespace dhp::testing {
Communicator& world() { return *g_world; }
}  // namespace dhp::testing

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  dhp::MpiRuntime mpi;
  auto world = mpi.world();
  g_world = world.get();
  auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
  if (world->rank() != 0) delete listeners.Release(listeners.default_result_printer());
  listeners.Append(new RankFailurePrinter(world->rank()));
  int failed = RUN_ALL_TESTS() != 0 ? 1 : 0;
  try {
    world->all_reduce(&failed, &failed, 1, dhp::DataType::I32, dhp::ReduceOp::Max);
  } catch (const std::exception& e) {
    dhp::abort_job(1, e.what());
  }
  if (world->rank() == 0)
    std::printf("world size %d: %s\n", world->size(), failed ? "FAILED" : "passed");
  g_world = nullptr;
  world.reset();
  return failed;
}
